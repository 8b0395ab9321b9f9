//! The C `errno` of the calling thread. Hooks save and restore it around their own work
//! so the program sees exactly what the real call set.

pub fn get() -> i32 {
    // SAFETY: __errno_location always returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

pub fn set(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v }
}
