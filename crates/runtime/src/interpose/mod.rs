//! The FFI layer: libc symbols exported by libmcr.so that shadow the program's libc.
//! Everything here is `unsafe extern "C"`; the logic lives in the safe modules above.
//!
//! Safety, once for the whole layer: each exported function replaces a libc function of
//! the same name, so its caller's contract is libc's for that function (every `# Safety`
//! section names it and what it means for the pointers). The wrappers hand the real
//! function the caller's own arguments, or replacements that are valid for as long as the
//! call runs (a local timespec with the time left, a copy of a signal mask without the
//! kick signal): the SAFETY comments say which.

use libc::{c_char, c_void};

pub mod annotations;
pub mod attributes;
pub mod blocking;
pub mod clone;
pub mod fds;
pub mod keys;
pub mod malloc;
pub mod memory;
pub mod process;
pub mod signals;
pub mod startup;

/// The C string at `p` (lossily UTF-8), or "" for null.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, and NUL-terminated (the caller's contract).
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The `len` bytes at `p`, or None for null or more than `max` bytes.
///
/// # Safety
/// `p` is null or points to `len` readable bytes that stay valid during the call.
pub(crate) unsafe fn c_bytes<'a>(p: *const c_void, len: usize, max: usize) -> Option<&'a [u8]> {
    if p.is_null() || len > max {
        return None;
    }
    // SAFETY: non-null and `len` readable bytes (the caller's contract); u8 has no
    // invalid values and no alignment.
    Some(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}
