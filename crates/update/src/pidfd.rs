//! Taking descriptors out of another process (pidfd_open + pidfd_getfd): how an update
//! gets hold of the old version's sockets, which stay open in the old processes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd for host process `pid`.
pub(crate) fn open(pid: i32) -> std::io::Result<OwnedFd> {
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
pub(crate) fn take(pidfd: &OwnedFd, fd: i32) -> std::io::Result<OwnedFd> {
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
