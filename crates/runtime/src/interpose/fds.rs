//! Keep the runtime's own descriptors (the supervisor connection) out of the program's
//! reach: they live at the top of the fd space below 1024, `close` and `close_range`
//! pretend they are not open, and a `dup2` onto one moves ours away first. Programs that
//! close every fd at startup (daemons do) therefore keep their connection to mcr.

use crate::borrow::{self, Closing};
use crate::control::{is_reserved_fd, relocate_reserved_fd, reserved_fds};
use crate::{drain, errno, real};
use libc::{c_int, c_uint};

/// # Safety
/// close(2)'s contract: `fd` is the caller's to close (nothing else uses it after).
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if is_reserved_fd(fd) {
        errno::set(libc::EBADF);
        return -1;
    }
    drain::note_closed(fd);
    let _closing = borrow::begin_close(Closing::One(fd));
    // SAFETY: the caller's descriptor, not one of ours (checked above); its contract.
    unsafe { real::close()(fd) }
}

/// close_range over [first, last] minus our descriptors.
///
/// # Safety
/// close_range(2)'s contract: the descriptors in the range are the caller's to close.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let f = real::close_range();
    let closes = flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0;
    if closes {
        drain::note_closed_range(first, last);
    }
    let _closing = closes.then(|| borrow::begin_close(Closing::Range(first, last)));
    let mut ours: Vec<c_uint> = reserved_fds()
        .into_iter()
        .filter(|&fd| fd >= 0)
        .map(|fd| fd as c_uint)
        .filter(|&fd| fd >= first && fd <= last)
        .collect();
    // Each sub-range is part of the caller's range and holds none of ours: the caller's
    // contract covers closing it.
    let close = |lo: c_uint, hi: c_uint| {
        // SAFETY: see above.
        unsafe { f(lo, hi, flags) }
    };
    if ours.is_empty() {
        return close(first, last);
    }
    ours.sort_unstable();
    let mut lo = first;
    for fd in ours {
        if fd > lo {
            let r = close(lo, fd - 1);
            if r != 0 {
                return r;
            }
        }
        lo = fd + 1;
    }
    if lo <= last && lo != 0 {
        return close(lo, last);
    }
    0
}

/// # Safety
/// closefrom(3)'s contract: every descriptor from `low` up is the caller's to close.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    // SAFETY: the same range, under the same contract.
    unsafe { close_range(low.max(0) as c_uint, c_uint::MAX, 0) };
}

/// # Safety
/// dup2(2)'s contract: `new` is the caller's to replace.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if is_reserved_fd(new) && old != new {
        relocate_reserved_fd(new);
    }
    // Replacing `new` closes what it held.
    let _closing = (old != new).then(|| borrow::begin_close(Closing::One(new)));
    // SAFETY: the caller's arguments; ours no longer sits at `new` (moved above).
    let r = unsafe { real::dup2()(old, new) };
    if r >= 0 && old != new {
        drain::note_duplicated(old, new);
    }
    r
}

/// # Safety
/// dup3(2)'s contract: `new` is the caller's to replace.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if is_reserved_fd(new) && old != new {
        relocate_reserved_fd(new);
    }
    // Replacing `new` closes what it held.
    let _closing = borrow::begin_close(Closing::One(new));
    // SAFETY: the caller's arguments; ours no longer sits at `new` (moved above).
    let r = unsafe { real::dup3()(old, new, flags) };
    if r >= 0 {
        drain::note_duplicated(old, new);
    }
    r
}
