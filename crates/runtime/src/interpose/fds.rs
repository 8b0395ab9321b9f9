//! Keep the runtime's own descriptors (the supervisor connection) out of the program's
//! reach: they live at the top of the fd space below 1024, `close` and `close_range`
//! pretend they are not open, and a `dup2` onto one moves ours away first. Programs that
//! close every fd at startup (daemons do) therefore keep their connection to mcr.

#![allow(clippy::missing_safety_doc)]

use crate::control::{is_reserved_fd, relocate_reserved_fd, reserved_fds};
use crate::{drain, errno, real};
use libc::{c_int, c_uint};

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if is_reserved_fd(fd) {
        errno::set(libc::EBADF);
        return -1;
    }
    drain::note_closed(fd);
    real::close()(fd)
}

/// close_range over [first, last] minus our descriptors.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let f = real::close_range();
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        drain::note_closed_range(first, last);
    }
    let mut ours: Vec<c_uint> = reserved_fds()
        .into_iter()
        .filter(|&fd| fd >= 0)
        .map(|fd| fd as c_uint)
        .filter(|&fd| fd >= first && fd <= last)
        .collect();
    if ours.is_empty() {
        return f(first, last, flags);
    }
    ours.sort_unstable();
    let mut lo = first;
    for fd in ours {
        if fd > lo {
            let r = f(lo, fd - 1, flags);
            if r != 0 {
                return r;
            }
        }
        lo = fd + 1;
    }
    if lo <= last && lo != 0 {
        return f(lo, last, flags);
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    close_range(low.max(0) as c_uint, c_uint::MAX, 0);
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if is_reserved_fd(new) && old != new {
        relocate_reserved_fd(new);
    }
    let r = real::dup2()(old, new);
    if r >= 0 && old != new {
        drain::note_duplicated(old, new);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if is_reserved_fd(new) && old != new {
        relocate_reserved_fd(new);
    }
    let r = real::dup3()(old, new, flags);
    if r >= 0 {
        drain::note_duplicated(old, new);
    }
    r
}
