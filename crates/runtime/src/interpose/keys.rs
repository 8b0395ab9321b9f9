//! `pthread_key_create` and `pthread_key_delete`: forwarded to glibc, and the keys the
//! program makes noted in [`crate::keys`], so an update recreates those made after startup.

use crate::keys;
use crate::real;
use libc::{c_int, c_void, pthread_key_t};

/// # Safety
/// pthread_key_create(3)'s contract: `key` points to a writable pthread_key_t, and
/// `destructor` is null or a function taking the value.
#[no_mangle]
pub unsafe extern "C" fn pthread_key_create(
    key: *mut pthread_key_t,
    destructor: Option<unsafe extern "C" fn(*mut c_void)>,
) -> c_int {
    // SAFETY: the caller's arguments (its contract).
    let rc = unsafe { real::pthread_key_create()(key, destructor) };
    if rc == 0 && keys::noting() {
        // SAFETY: on success glibc wrote the key through `key` (the caller's pointer).
        keys::note_created(unsafe { *key }, destructor.map_or(0, |d| d as usize));
    }
    rc
}

/// # Safety
/// pthread_key_delete(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn pthread_key_delete(key: pthread_key_t) -> c_int {
    // SAFETY: the caller's argument (its contract).
    let rc = unsafe { real::pthread_key_delete()(key) };
    if rc == 0 && keys::noting() {
        keys::note_deleted(key);
    }
    rc
}
