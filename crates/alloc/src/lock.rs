//! A spin lock on a word of region memory (so it travels with the region: adoption resets
//! it) that yields the CPU after a few spins. Held only for short list and pool operations;
//! `fork` takes every one of them in the prepare hook and releases them in both processes.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicU32};

const SPINS_BEFORE_YIELD: u32 = 64;

/// Set in a sandboxed process: a wait for a lock makes no system call (sshd's seccomp
/// filter kills a thread on `sched_yield`; the holder may be the runtime's own thread,
/// which no filter binds).
static SPIN_ONLY: AtomicBool = AtomicBool::new(false);

/// From now on, lock waits only spin.
pub(crate) fn spin_only() {
    SPIN_ONLY.store(true, Relaxed);
}

pub(crate) fn acquire(word: &AtomicU32) {
    let mut spins = 0u32;
    loop {
        if word.load(Relaxed) == 0 && word.compare_exchange_weak(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        spins = spins.wrapping_add(1);
        if spins >= SPINS_BEFORE_YIELD && !SPIN_ONLY.load(Relaxed) {
            rustix::thread::sched_yield();
        } else {
            core::hint::spin_loop();
        }
    }
}

pub(crate) fn release(word: &AtomicU32) {
    word.store(0, Release);
}

/// Holds the lock until dropped.
pub(crate) struct Guard<'a>(&'a AtomicU32);

impl<'a> Guard<'a> {
    #[inline]
    pub(crate) fn lock(word: &'a AtomicU32) -> Guard<'a> {
        acquire(word);
        Guard(word)
    }
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        release(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn excludes() {
        let lock = AtomicU32::new(0);
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = Guard::lock(&lock);
                        // a non-atomic read-modify-write made of two atomic steps: any overlap
                        // of two holders would lose an increment
                        let v = counter.load(Relaxed);
                        counter.store(v + 1, Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Relaxed), 40_000);
        assert_eq!(lock.load(Relaxed), 0);
    }
}
