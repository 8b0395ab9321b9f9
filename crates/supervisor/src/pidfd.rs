//! Process descriptors (pidfds): taking descriptors out of another process
//! (pidfd_getfd), knowing a socket's peer process, and whether a process exited. An update
//! gets hold of the old version's sockets this way (they stay open in the old processes),
//! and a new version's supervisor the old one's instance lock.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd for host process `pid`.
pub fn open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) } as i32;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A copy, in this process (close-on-exec), of descriptor `fd` of the process `pidfd`
/// refers to.
pub fn take(pidfd: &OwnedFd, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags,
    // and returns a new descriptor or -1.
    let copy = unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd() as libc::c_long, fd as libc::c_long, 0 as libc::c_long)
    } as i32;
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `SO_PEERPIDFD` (Linux 6.5), not in every libc release yet.
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the peer of connected Unix socket `socket` (for a connection to a
/// listening socket: the process that listens). Unlike a PID, it names that very process
/// whatever PID namespace it lives in.
pub fn of_peer(socket: &impl AsRawFd) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a live local.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process `pidfd` refers to has exited (a pidfd polls readable then).
pub fn exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: polling one descriptor we own, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLIN != 0 }
}
