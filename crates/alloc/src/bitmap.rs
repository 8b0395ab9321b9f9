//! A span's live bitmap: bit `i` is set while block `i` is allocated (or parked in a thread
//! cache). Only the span's owner sets bits (claims); anyone clears them (frees). So a claim
//! can read a word, pick free bits and set them with one `fetch_or` without losing a
//! concurrent clear, and never takes a bit someone else took.

use crate::class::BITMAP_WORDS;
use crate::geometry::BitIter;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{AcqRel, Relaxed};

pub(crate) type Bitmap = [AtomicU64; BITMAP_WORDS];

/// Mask of the valid bits of word `w` for a span of `cap` blocks.
#[inline]
fn valid_bits(w: usize, cap: usize) -> u64 {
    let first = w * 64;
    if first + 64 <= cap {
        u64::MAX
    } else if first >= cap {
        0
    } else {
        (1u64 << (cap - first)) - 1
    }
}

/// Claims up to `out.len()` free blocks among the first `cap`, lowest index first, writing
/// their indices to `out`; returns how many. The caller must own the span.
pub(crate) fn claim(bits: &Bitmap, cap: usize, out: &mut [u16]) -> usize {
    let want = out.len();
    let mut got = 0;
    for (w, word) in bits.iter().enumerate().take(cap.div_ceil(64)) {
        if got >= want {
            break;
        }
        let mut free = !word.load(Relaxed) & valid_bits(w, cap);
        if free == 0 {
            continue;
        }
        let mut mask = 0u64;
        while free != 0 && got < want {
            let lowest = free & free.wrapping_neg();
            mask |= lowest;
            free ^= lowest;
            if let Some(slot) = out.get_mut(got) {
                *slot = (w * 64 + lowest.trailing_zeros() as usize) as u16;
            }
            got += 1;
        }
        // Acquire pairs with the Release of the free that cleared a bit: the block's last
        // writes by its previous user happen before its next user's.
        word.fetch_or(mask, AcqRel);
    }
    got
}

/// Clears the bit of block `index`; false if it was clear already (a double free, ignored).
#[inline]
pub(crate) fn release(bits: &Bitmap, index: usize) -> bool {
    let bit = 1u64 << (index % 64);
    match bits.get(index / 64) {
        Some(word) => word.fetch_and(!bit, AcqRel) & bit != 0,
        None => false,
    }
}

#[inline]
pub(crate) fn is_set(bits: &Bitmap, index: usize) -> bool {
    bits.get(index / 64).is_some_and(|w| w.load(Relaxed) >> (index % 64) & 1 == 1)
}

/// Number of set bits among the first `cap`.
pub(crate) fn count(bits: &Bitmap, cap: usize) -> u32 {
    bits.iter()
        .enumerate()
        .take(cap.div_ceil(64))
        .map(|(w, word)| (word.load(Relaxed) & valid_bits(w, cap)).count_ones())
        .sum()
}

/// Calls `f` with the index of every set bit among the first `cap`, in increasing order.
pub(crate) fn for_each_set(bits: &Bitmap, cap: usize, mut f: impl FnMut(usize)) {
    for (w, word) in bits.iter().enumerate().take(cap.div_ceil(64)) {
        for b in BitIter(word.load(Relaxed) & valid_bits(w, cap)) {
            f(w * 64 + b);
        }
    }
}

/// Clears every bit (a span going back to the pool has none set; this also wipes bits past
/// `cap` that a former class may have left).
pub(crate) fn clear(bits: &Bitmap) {
    for w in bits {
        w.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn bitmap() -> Bitmap {
        core::array::from_fn(|_| AtomicU64::new(0))
    }

    #[test]
    fn claims_lowest_first_and_never_past_capacity() {
        let bits = bitmap();
        let mut out = [0u16; 10];
        assert_eq!(claim(&bits, 70, &mut out), 10);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(count(&bits, 70), 10);
        let mut big = [0u16; 100];
        assert_eq!(claim(&bits, 70, &mut big), 60);
        assert_eq!(&big[..60], &(10..70).collect::<Vec<u16>>()[..]);
        assert_eq!(claim(&bits, 70, &mut big), 0, "full");
        assert!(!is_set(&bits, 70));
        assert_eq!(count(&bits, 70), 70);
    }

    #[test]
    fn release_reports_double_frees_and_claims_reuse_holes() {
        let bits = bitmap();
        let mut out = [0u16; 128];
        assert_eq!(claim(&bits, 128, &mut out), 128);
        assert!(release(&bits, 5));
        assert!(!release(&bits, 5), "second free of the same block");
        assert!(release(&bits, 100));
        assert!(!release(&bits, 4096), "out of range");
        let mut two = [0u16; 3];
        assert_eq!(claim(&bits, 128, &mut two), 2);
        assert_eq!(&two[..2], &[5, 100]);
    }

    #[test]
    fn visits_in_order() {
        let bits = bitmap();
        let mut out = [0u16; 200];
        claim(&bits, 200, &mut out);
        for i in (0..200).filter(|i| i % 3 != 0) {
            release(&bits, i);
        }
        let mut seen = Vec::new();
        for_each_set(&bits, 200, |i| seen.push(i));
        assert_eq!(seen, (0..200).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        assert_eq!(count(&bits, 200) as usize, seen.len());
        clear(&bits);
        assert_eq!(count(&bits, 4096), 0);
    }

    #[test]
    fn concurrent_frees_never_lose_a_claim() {
        // the owner claims while other threads free: every block is handed out once
        let bits = bitmap();
        let cap = 4096;
        let mut first = [0u16; 4096];
        assert_eq!(claim(&bits, cap, &mut first), cap);
        let freed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..3 {
                let bits = &bits;
                let freed = &freed;
                s.spawn(move || {
                    for i in (t..cap).step_by(3) {
                        assert!(release(bits, i));
                        freed.lock().unwrap().push(i);
                    }
                });
            }
            let mut again = Vec::new();
            let mut out = [0u16; 37];
            while again.len() < cap {
                let n = claim(&bits, cap, &mut out);
                again.extend(out[..n].iter().map(|&i| i as usize));
            }
            again.sort_unstable();
            again.dedup();
            assert_eq!(again.len(), cap, "a block was claimed twice");
        });
        assert_eq!(freed.into_inner().unwrap().len(), cap);
    }
}
