//! The entry points `include/mcr.h` reaches through weak references.

use super::c_string;
use crate::replay;
use libc::{c_char, c_int};

/// `MCR_ADD_REINIT_HANDLER(fn)`: keep `fn` for replay conflicts.
///
/// # Safety
/// mcr.h's contract: `name` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mcr_runtime_add_reinit_handler(
    handler: Option<replay::ReinitHandler>,
    name: *const c_char,
) -> c_int {
    let Some(h) = handler else { return -1 };
    // SAFETY: the caller's contract.
    let name = unsafe { c_string(name) };
    if replay::add_handler(h, name) {
        0
    } else {
        -1
    }
}

/// `mcr_is_live_update()`.
#[no_mangle]
pub extern "C" fn mcr_runtime_is_live_update() -> c_int {
    c_int::from(replay::started_as_update())
}

/// `mcr_translate(obj, old_ptr)`: the new version's address for an address of the old
/// version, while an object handler runs (null when there is none). `obj` is not read.
#[no_mangle]
pub extern "C" fn mcr_runtime_translate(
    _obj: *const crate::transfer::McrObj,
    old_ptr: *const libc::c_void,
) -> *mut libc::c_void {
    if old_ptr.is_null() {
        return std::ptr::null_mut();
    }
    match crate::transfer::translate(old_ptr as usize as u64) {
        Some(a) => a as usize as *mut libc::c_void,
        None => std::ptr::null_mut(),
    }
}

/// `MCR_ADD_OBJ_HANDLER(what, fn)`: keep `fn` for the state transfer.
///
/// # Safety
/// mcr.h's contract: `what` and `name` are null or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn mcr_runtime_add_obj_handler(
    what: *const c_char,
    handler: Option<crate::transfer::ObjHandler>,
    name: *const c_char,
) -> c_int {
    let Some(h) = handler else { return -1 };
    if what.is_null() {
        return -1;
    }
    // SAFETY: the caller's contract, for both strings.
    let (what, name) = unsafe { (c_string(what), c_string(name)) };
    crate::transfer::add_obj_handler(what, h, name);
    0
}

/// `MCR_ADD_RESUME_HANDLER(fn)`: run `fn` on the main thread once the update commits.
#[no_mangle]
pub extern "C" fn mcr_runtime_add_resume_handler(
    handler: Option<crate::resume::ResumeHandler>,
    _name: *const c_char,
) -> c_int {
    match handler {
        Some(h) if crate::resume::add(h) => 0,
        _ => -1,
    }
}

/// `MCR_ADD_RESPAWN_HANDLER(fn)`: recreate a per-connection process during an update.
#[no_mangle]
pub extern "C" fn mcr_runtime_add_respawn_handler(
    handler: Option<crate::resume::RespawnHandler>,
    _name: *const c_char,
) -> c_int {
    match handler {
        Some(h) if crate::resume::add_respawn(h) => 0,
        _ => -1,
    }
}

/// `MCR_ADD_IDLE_CHECK(fn)`: which connections hold no program state (for adoption).
#[no_mangle]
pub extern "C" fn mcr_runtime_add_idle_check(check: Option<crate::resume::IdleCheck>, _name: *const c_char) -> c_int {
    match check {
        Some(f) if crate::resume::add_idle_check(f) => 0,
        _ => -1,
    }
}

/// `mcr_adopted_fds(fds, max)`: the connections this version must adopt as new ones.
///
/// # Safety
/// mcr.h's contract: `fds` is null or an array of `max` writable ints.
#[no_mangle]
pub unsafe extern "C" fn mcr_runtime_adopted_fds(fds: *mut c_int, max: c_int) -> c_int {
    let len = if fds.is_null() { 0 } else { max.max(0) as usize };
    // SAFETY: non-null `fds` holds `max` ints the caller lets us write (its contract), and
    // nothing else refers to them during the call.
    let out: &mut [c_int] = if len == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(fds, len) } };
    crate::resume::adopted(out) as c_int
}
