//! An update's new server, executed ahead and held in this constructor until its go.
//!
//! The staged supervisor (`supervisor/src/staging.rs`) executes the new version's first
//! process while the old version still serves: fork, exec, the loading and relocation of
//! its libraries (nginx: ~4 ms) come off the paused clock. The process then waits here,
//! before the runtime does anything that depends on the paused old version (its replay
//! log, the descriptors its startup created), on the socket `MCR_GO_FD` names. The go
//! brings the startup descriptors (SCM_RIGHTS) and the number each takes; the socket
//! closing first means the update ended before its go: the process exits at once,
//! having run no line of the program.
//!
//! Packets: the first holds the count and the target numbers (little-endian u32, then
//! i32 each); those after it carry the descriptors, in order, [`FDS_PER_PACKET`] at most.

/// The kernel's SCM_MAX_FD is 253.
const FDS_PER_PACKET: usize = 250;

/// Descriptor numbers a go may name at most.
const MAX_TARGETS: usize = 1 << 16;

/// In the constructor: when this process was executed ahead (`MCR_GO_FD` holds a number),
/// wait for the go and put its descriptors at their numbers. The variable's digits are
/// overwritten in place (same length: the initial stack keeps its layout), so that a
/// program that executes itself again does not take one of its own sockets for a go.
pub fn wait_for_go() {
    let Some(fd) = take_go_fd() else { return };
    let go = receive(fd);
    // SAFETY: the go socket, inherited for this alone, used no more (closed before the
    // placing: its number may be one of the targets).
    unsafe { crate::rawfd::close(fd) };
    match go {
        Some((targets, fds)) => place(&targets, &fds),
        None => {
            // SAFETY: leaving before the program ran: nothing of it to flush or run.
            unsafe { libc::_exit(0) };
        }
    }
}

/// The number in `MCR_GO_FD`, then marked used.
fn take_go_fd() -> Option<i32> {
    crate::take_env(mcr_protocol::env::GO_FD)?.parse::<i32>().ok().filter(|&fd| fd > 2)
}

/// The targets and the descriptors (in order); None when the socket closed first or the
/// packets make no sense.
fn receive(sock: i32) -> Option<(Vec<i32>, Vec<i32>)> {
    let mut buf = vec![0u8; 4 + 4 * MAX_TARGETS];
    let (n, stray) = packet(sock, &mut buf)?;
    close_all(&stray);
    let count = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    if n == 0 || count > MAX_TARGETS || n != 4 + 4 * count {
        return None;
    }
    let targets: Vec<i32> =
        buf.get(4..n)?.chunks_exact(4).filter_map(|b| b.try_into().ok().map(i32::from_le_bytes)).collect();
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let (n, more) = packet(sock, &mut buf)?;
        if n == 0 && more.is_empty() {
            close_all(&fds);
            return None;
        }
        fds.extend(more);
    }
    if fds.len() != count {
        close_all(&fds);
        return None;
    }
    Some((targets, fds))
}

/// One packet into `buf` with its descriptors (close-on-exec); None on an error. The
/// supervisor's `scm_rights::receive` does the same through libc's recvmsg, which inside
/// the runtime is the program's entry point (interposed): here the raw system call.
fn packet(sock: i32, buf: &mut [u8]) -> Option<(usize, Vec<i32>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_PACKET * core::mem::size_of::<i32>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below to live locals.
    let mut hdr: libc::msghdr = unsafe { core::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = space;
    let n = loop {
        // SAFETY: `hdr` points at live buffers for the duration of the call. Raw: the
        // exported recvmsg is the program's.
        let n = unsafe { crate::sys!(libc::SYS_recvmsg, sock, &mut hdr as *mut libc::msghdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 || crate::errno::get() != libc::EINTR {
            break n;
        }
    };
    if n < 0 || hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` (msg_controllen bytes); the CMSG macros walk it
    // within those bounds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                for i in 0..bytes / core::mem::size_of::<i32>() {
                    fds.push(data.add(i).read_unaligned());
                }
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    Some((n as usize, fds))
}

fn close_all(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: descriptors the go brought, ours alone.
        unsafe { crate::rawfd::close(fd) };
    }
}

/// Each descriptor `fds[i]` at `targets[i]`, inheritable as the program gets it; the
/// copies received go. Moved above every target first, so that placing one never lands
/// on another not placed yet.
fn place(targets: &[i32], fds: &[i32]) {
    let above = targets.iter().chain(fds).copied().max().map_or(3, |m| m + 1);
    let moved: Vec<i32> = fds.iter().map(|&fd| crate::rawfd::dup_at_least(fd, above).unwrap_or(-1)).collect();
    close_all(fds);
    for (&from, &to) in moved.iter().zip(targets) {
        // SAFETY: `from` is a copy of a descriptor the go brought, and `to` a number the
        // old version's startup used: nothing of this process holds it yet (the program
        // has not run; the runtime's own are in its reserved range, kept clear of these).
        if from >= 0 && !unsafe { crate::rawfd::dup_onto(from, to, 0) } {
            crate::diag::warn(&format!("cannot place the update's descriptor {to}"));
        }
    }
    close_all(&moved);
}
