//! One packet with descriptors alongside (SCM_RIGHTS), on a SOCK_SEQPACKET socket: the
//! init's link to its supervisor (`init_link`) and a staged supervisor's go (`staging`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A new SOCK_SEQPACKET socketpair, both ends close-on-exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into a live local array.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Send `payload` with copies of `fds` (the caller keeps its own) in one packet; `flags`
/// are sendmsg's (MSG_NOSIGNAL is added). Interrupted sends are retried.
pub(crate) fn send(sock: RawFd, payload: &[u8], fds: &[RawFd], flags: i32) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below to live locals.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space;
        // SAFETY: the control buffer holds CMSG_SPACE(fds) bytes, room for one header and
        // the descriptors copied into its data.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: hdr points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock, &hdr, flags | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// What one receive got.
pub(crate) struct Packet {
    /// Bytes of the payload (0 with no descriptors: the other end is closed).
    pub len: usize,
    /// Its descriptors, close-on-exec, now ours.
    pub fds: Vec<OwnedFd>,
    /// More descriptors came than `max_fds` had room for (the kernel closed the rest).
    pub truncated: bool,
}

/// Receive one packet into `buf`, with at most `max_fds` descriptors; `flags` are
/// recvmsg's (MSG_CMSG_CLOEXEC is added). Interrupted receives are retried.
pub(crate) fn receive(sock: RawFd, buf: &mut [u8], max_fds: usize, flags: i32) -> io::Result<Packet> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below to live locals.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = space;
    let len = loop {
        // SAFETY: hdr points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut hdr, flags | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control` (bounded by
    // msg_controllen); each SCM_RIGHTS payload is an array of fresh descriptors now owned
    // by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    Ok(Packet { len, fds, truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0 })
}
