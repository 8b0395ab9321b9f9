//! Keep the runtime's own descriptors (the supervisor connection) out of the program's
//! reach: they live at the top of the fd space below 1024, `close` and `close_range`
//! pretend they are not open, and a `dup2` onto one moves ours away first. Programs that
//! close every fd at startup (daemons do) therefore keep their connection to mcr. So do
//! an update's new version's inherited startup descriptors until the replay hands them to
//! the program (`replay::hidden_inherited`).

use crate::borrow::{self, Closing};
use crate::control::{is_reserved_fd, relocate_reserved_fd, reserved_fds};
use crate::{drain, errno, real};
use libc::{c_int, c_uint};

/// # Safety
/// close(2)'s contract: `fd` is the caller's to close (nothing else uses it after).
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if is_reserved_fd(fd) || crate::replay::hides(fd) {
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
        .chain(crate::replay::hidden_inherited())
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
    ours.dedup();
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

/// `getsockopt`, with the peer credentials of a socket connected within the old version
/// as the program read them before the update (`crate::peers`).
///
/// # Safety
/// getsockopt(2)'s contract: `val` points to `*len` writable bytes, `len` to a socklen_t.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut libc::c_void,
    len: *mut libc::socklen_t,
) -> c_int {
    // SAFETY: the caller's own arguments, unchanged (its contract).
    let r = unsafe { real::getsockopt()(fd, level, name, val, len) };
    if r == 0 && level == libc::SOL_SOCKET && name == libc::SO_PEERCRED && crate::peers::any() {
        // SAFETY: the call succeeded, so `len` is readable and `val` holds `*len` bytes.
        unsafe { fix_peer_pid(fd, val, len) };
    }
    r
}

/// # Safety
/// `len` points to the length getsockopt wrote, `val` to that many bytes.
unsafe fn fix_peer_pid(fd: c_int, val: *mut libc::c_void, len: *const libc::socklen_t) {
    // SAFETY: see the function's contract.
    if (unsafe { *len } as usize) < core::mem::size_of::<libc::ucred>() {
        return;
    }
    let cred = val.cast::<libc::ucred>();
    // SAFETY: at least one ucred's bytes (checked above); it may be unaligned.
    if unsafe { core::ptr::read_unaligned(cred) }.pid != 0 {
        return;
    }
    // SAFETY: struct stat is plain data, all-zero a valid value.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into the local.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return;
    }
    if let Some(pid) = crate::peers::pid_of(st.st_ino) {
        // SAFETY: as above; only the pid field changes.
        unsafe {
            let mut c = core::ptr::read_unaligned(cred);
            c.pid = pid;
            core::ptr::write_unaligned(cred, c);
        }
    }
}
