//! futex(2) on an AtomicU32, private to the process.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 we own.
    unsafe {
        crate::sys!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, tsp);
    }
}

pub fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        crate::sys!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}
