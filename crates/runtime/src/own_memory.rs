//! The runtime's own anonymous memory: the chunks and large blocks of its allocator
//! (`crate::alloc`) and the stacks of its threads.
//!
//! None of it is the program's state, and the kernel cannot tell it from the program's
//! (adjacent anonymous mappings even merge). Arming write-tracking at startup
//! (`crate::dirty`) leaves these ranges out: write-protecting memory never touched builds
//! page tables for all of it, and the control thread's 8 MiB stack alone was more than a
//! third of what each nginx process armed on its update's clock.
//!
//! Lock-free (a fixed table of ranges claimed by compare-and-swap), so that the allocator
//! may note a mapping whatever else holds a lock, and a fork child finds it consistent.

use std::sync::atomic::{AtomicU64, Ordering::*};

/// Ranges noted at most; past that a mapping is simply not noted (it is then armed like
/// the program's memory, which costs time, never correctness).
const CAPACITY: usize = 128;

/// A start of 0 is a free entry; bit 0 of the end marks a thread's stack.
static STARTS: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];
static ENDS: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];
const STACK: u64 = 1;

fn note(start: u64, len: u64, flags: u64) {
    if start == 0 || len == 0 {
        return;
    }
    for (s, e) in STARTS.iter().zip(&ENDS) {
        // The end is written before the start is published; a reader that sees the start
        // sees its end.
        if s.load(Relaxed) == 0 && e.compare_exchange(0, (start + len) | flags, AcqRel, Relaxed).is_ok() {
            s.store(start, Release);
            return;
        }
    }
}

/// The allocator mapped `[start, start + len)` for the runtime.
pub fn add(start: u64, len: u64) {
    note(start, len, 0);
}

/// A runtime thread's stack (with its guard page) is `[start, start + len)`.
pub fn add_stack(start: u64, len: u64) {
    note(start, len, STACK);
}

/// The mapping at `start` was given back.
pub fn remove(start: u64) {
    for (s, e) in STARTS.iter().zip(&ENDS) {
        if start != 0 && s.compare_exchange(start, 0, AcqRel, Relaxed).is_ok() {
            e.store(0, Release);
            return;
        }
    }
}

/// Every noted range, (start, end), sorted.
pub fn ranges() -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = STARTS
        .iter()
        .zip(&ENDS)
        .filter_map(|(s, e)| {
            let start = s.load(Acquire);
            (start != 0).then(|| (start, e.load(Acquire) & !STACK))
        })
        .filter(|&(s, e)| s < e)
        .collect();
    out.sort_unstable();
    out
}

/// In a fork child: the runtime's threads did not come along, and their stacks (which
/// nothing will ever use again) go, as glibc's own would be reused.
pub fn reset_after_fork() {
    for (s, e) in STARTS.iter().zip(&ENDS) {
        let (start, end) = (s.load(Acquire), e.load(Acquire));
        if start != 0 && end & STACK != 0 {
            let end = end & !STACK;
            // SAFETY: a stack the runtime mapped for one of its threads, none of which
            // exists in this child; nothing of the program is in it. Raw: the exported
            // munmap is the program's.
            unsafe { crate::sys!(libc::SYS_munmap, start as usize, (end - start) as usize) };
            s.store(0, Release);
            e.store(0, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_come_back_sorted_and_go_when_removed() {
        // Addresses no other test notes (the allocator's own come and go meanwhile).
        let base = 0x7e00_0000_0000u64;
        add(base + 0x10_0000, 0x1000);
        add_stack(base, 0x8000);
        let mine = |r: &[(u64, u64)]| {
            r.iter().copied().filter(|&(s, _)| s >= base && s < base + 0x100_0000).collect::<Vec<_>>()
        };
        assert_eq!(mine(&ranges()), vec![(base, base + 0x8000), (base + 0x10_0000, base + 0x10_1000)]);
        remove(base + 0x10_0000);
        remove(base);
        assert!(mine(&ranges()).is_empty());
    }
}
