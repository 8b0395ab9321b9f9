//! Raw system calls on descriptor numbers. They never go back through libc's entry
//! points (which are the runtime's own interposed ones), and pass the kernel no memory.
//!
//! Those that only look at a number, or make a new descriptor, are safe: the kernel
//! checks the number. Those that close one (close, dup3 onto an open number) are
//! `unsafe`: closing a descriptor some other code still uses (the program's, or a std
//! file of the runtime's) breaks that code's I/O safety, so their callers say whose
//! descriptor it is.

/// The descriptor flags (FD_CLOEXEC) of `fd`; None when it is not open.
pub fn fd_flags(fd: i32) -> Option<i32> {
    // SAFETY: fcntl(F_GETFD) takes no pointer and changes nothing; any number is valid.
    let r = unsafe { crate::sys!(libc::SYS_fcntl, fd, libc::F_GETFD) };
    (r >= 0).then_some(r as i32)
}

/// Whether `fd` is open in the calling thread's descriptor table.
pub fn is_open(fd: i32) -> bool {
    fd_flags(fd).is_some()
}

/// The file status flags (O_NONBLOCK, …) of `fd`; None when it is not open.
pub fn status_flags(fd: i32) -> Option<i32> {
    // SAFETY: fcntl(F_GETFL) takes no pointer and changes nothing; any number is valid.
    let r = unsafe { crate::sys!(libc::SYS_fcntl, fd, libc::F_GETFL) };
    (r >= 0).then_some(r as i32)
}

/// The file type bits (`st_mode & S_IFMT`) of what `fd` refers to; None when it is not open.
pub fn file_type(fd: i32) -> Option<u32> {
    let mut st = core::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one `struct stat` into `st`, a live local of that size.
    let r = unsafe { crate::sys!(libc::SYS_fstat, fd, st.as_mut_ptr()) };
    // SAFETY: zero-initialised, and filled by the kernel when fstat succeeded.
    (r == 0).then(|| unsafe { st.assume_init() }.st_mode & libc::S_IFMT)
}

/// O_CLOEXEC when `fd` is close-on-exec (for dup3 to keep it so), else 0.
pub fn cloexec_of(fd: i32) -> i32 {
    match fd_flags(fd) {
        Some(f) if f & libc::FD_CLOEXEC != 0 => libc::O_CLOEXEC,
        _ => 0,
    }
}

/// A close-on-exec copy of `fd` at the lowest free number at least `min`.
pub fn dup_at_least(fd: i32, min: i32) -> Option<i32> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no pointer and only creates a descriptor at a
    // free number; it closes nothing.
    let r = unsafe { crate::sys!(libc::SYS_fcntl, fd, libc::F_DUPFD_CLOEXEC, min) };
    (r >= 0).then_some(r as i32)
}

/// A pidfd for this process (to borrow the program's descriptors from a thread with a
/// table of its own).
pub fn pidfd_of_self() -> Option<i32> {
    // SAFETY: getpid has no preconditions; pidfd_open takes no pointer and creates a
    // descriptor.
    let r = unsafe { crate::sys!(libc::SYS_pidfd_open, libc::getpid(), 0) };
    (r >= 0).then_some(r as i32)
}

/// A copy, in the calling thread's table, of descriptor `fd` of the process `pidfd` refers
/// to.
pub fn copy_from(pidfd: i32, fd: i32) -> Option<i32> {
    // SAFETY: pidfd_getfd takes no pointer and creates a descriptor.
    let r = unsafe { crate::sys!(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    (r >= 0).then_some(r as i32)
}

/// Close `fd`, ignoring errors.
///
/// # Safety
/// `fd` is the caller's own: no other code uses it after this (or it is not open).
pub unsafe fn close(fd: i32) {
    // SAFETY: close takes no pointer; the caller owns `fd`.
    unsafe { crate::sys!(libc::SYS_close, fd) };
}

/// Make `target` refer to what `fd` refers to (dup3 with `flags`); true when it did.
///
/// # Safety
/// `target` is free, or the caller's own to replace: dup3 closes what was there.
pub unsafe fn dup_onto(fd: i32, target: i32, flags: i32) -> bool {
    // SAFETY: dup3 takes no pointer; the caller owns (or found free) `target`.
    unsafe { crate::sys!(libc::SYS_dup3, fd, target, flags) == target as i64 }
}

/// A close-on-exec stream socket connected to the abstract unix socket `name` (the
/// supervisor's, an update's descriptor channel).
pub fn connect_abstract(name: &[u8]) -> std::io::Result<i32> {
    let mut addr = libc::sockaddr_un { sun_family: libc::AF_UNIX as libc::sa_family_t, sun_path: [0; 108] };
    // The leading NUL of an abstract name, then the name.
    if name.len() + 1 > addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, &b) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    let len = core::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: socket takes no pointer and creates a descriptor.
    let fd = unsafe { crate::sys!(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) } as i32;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: connect reads `len` bytes at `addr`, a live local sockaddr_un at least that
    // long (checked above).
    if unsafe { crate::sys!(libc::SYS_connect, fd, &addr as *const libc::sockaddr_un, len) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: the socket made above, ours alone.
        unsafe { close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// Who holds the other end of a connected Unix socket, as the kernel recorded it when the
/// connection was made: (pid, uid). The pid is 0 when that process lies outside this
/// process's PID namespace.
pub fn peer_credentials(fd: i32) -> Option<(i32, u32)> {
    let cred = socket_option(fd, libc::SO_PEERCRED, libc::ucred { pid: 0, uid: 0, gid: 0 })?;
    Some((cred.pid, cred.uid))
}

/// A SOL_SOCKET option of `fd` that the kernel writes as a `T` (plain data); None when
/// `fd` is no socket or the option is not there.
fn socket_option<T: Copy>(fd: i32, opt: i32, mut value: T) -> Option<T> {
    let mut len = core::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a live local of that
    // size, and updates `len`; a number that is not a socket fails with ENOTSOCK.
    let r = unsafe {
        crate::sys!(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut value as *mut T,
            &mut len as *mut libc::socklen_t
        )
    };
    (r == 0).then_some(value)
}

/// An int-valued SOL_SOCKET option of `fd` (SO_TYPE, SO_ACCEPTCONN); None when `fd` is no
/// socket.
pub fn socket_int_option(fd: i32, opt: i32) -> Option<i32> {
    socket_option(fd, opt, 0 as libc::c_int)
}

/// Whether `fd` is a listening socket with a connection waiting to be accepted.
pub fn listener_with_a_client(fd: i32) -> bool {
    if socket_int_option(fd, libc::SO_ACCEPTCONN).unwrap_or(0) == 0 {
        return false;
    }
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, a live local; no wait.
    (unsafe { crate::sys!(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) }) == 1
}

/// Whether `uid` may command this process's runtime: root, or the user the process runs as.
pub fn trusted_peer_uid(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_probed_copied_and_closed() {
        let copy = dup_at_least(2, 700).expect("stderr is open in the test");
        assert!(copy >= 700 && is_open(copy));
        assert_eq!(cloexec_of(copy), libc::O_CLOEXEC, "dup_at_least makes close-on-exec copies");
        let other = dup_at_least(2, 900).expect("a second copy");
        // SAFETY: `other` is this test's own, to replace.
        assert!(unsafe { dup_onto(copy, other, 0) });
        assert_eq!(cloexec_of(other), 0, "dup3 without O_CLOEXEC");
        // SAFETY: both are this test's own.
        unsafe {
            close(copy);
            close(other);
        }
        assert!(!is_open(copy) && fd_flags(copy).is_none() && status_flags(copy).is_none());
    }
}
