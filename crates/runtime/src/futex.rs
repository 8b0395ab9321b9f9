//! futex(2) on an AtomicU32, private to the process.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the u32 behind a live reference, and `tsp` is null or
    // points to `ts`, a live local.
    unsafe {
        crate::sys!(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, tsp);
    }
}

pub fn wake(word: &AtomicU32, n: i32) {
    wake_addr(word.as_ptr(), n);
}

/// FUTEX_WAKE on an address whose memory the waiter may free as soon as it sees the
/// store that preceded this wake (a handshake): the kernel takes a private futex's
/// address only as a key, and never reads it.
pub fn wake_addr(addr: *const u32, n: i32) {
    // SAFETY: FUTEX_WAKE reads no memory (see above); a bad address is an error, not a fault.
    unsafe {
        crate::sys!(libc::SYS_futex, addr, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, n);
    }
}
