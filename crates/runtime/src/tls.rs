//! Where the program's own thread-local variables (`__thread` in the executable) live for
//! the process's main thread, so an update can move them like globals (the state suite's
//! `tls-var`: they were lost).
//!
//! The executable's TLS block is static TLS: at a fixed distance from each thread's
//! thread pointer. That distance is read once, in the constructor (on the main thread,
//! from `dl_iterate_phdr`'s `dlpi_tls_data` for the executable), and the thread pointer
//! of the process's main thread is noted then and again in a fork child (whose one
//! thread is the one that forked). x86-64: the thread pointer is `pthread_self()`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The block's address minus the thread pointer (0: the executable has no TLS).
static BLOCK_FROM_TP: AtomicU64 = AtomicU64::new(0);
static MAIN_TP: AtomicU64 = AtomicU64::new(0);

fn thread_pointer() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

extern "C" fn first_module(info: *mut libc::dl_phdr_info, _size: libc::size_t, out: *mut libc::c_void) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the call, and
    // `out` is the `*mut u64` the caller below passed.
    unsafe {
        *out.cast::<u64>() = (*info).dlpi_tls_data as u64;
    }
    // The first module is the executable: stop there.
    1
}

/// In the constructor, on the main thread.
pub fn init() {
    let mut block: u64 = 0;
    // SAFETY: the callback writes one u64 through the pointer to `block`, a live local.
    unsafe { libc::dl_iterate_phdr(Some(first_module), (&mut block as *mut u64).cast()) };
    let tp = thread_pointer();
    MAIN_TP.store(tp, Relaxed);
    if block != 0 {
        BLOCK_FROM_TP.store(block.wrapping_sub(tp), Relaxed);
    }
}

/// In a fork child: its only thread is its main thread now.
pub fn reset_after_fork() {
    MAIN_TP.store(thread_pointer(), Relaxed);
}

/// The executable's TLS block of the main thread, if the executable has one.
pub fn main_thread_block() -> Option<u64> {
    let off = BLOCK_FROM_TP.load(Relaxed);
    (off != 0).then(|| MAIN_TP.load(Relaxed).wrapping_add(off))
}
