//! The span pool of each region (free spans below the high-water mark, some still
//! committed), carving runs of spans, large blocks, and giving memory back.

#![allow(unsafe_code)]

use crate::bitmap;
use crate::extent::GROW_SPANS;
use crate::geometry::{span_addr, SLOT_SIZE, SPANS_PER_REGION, SPAN_SIZE};
use crate::heap::{segment_of, segment_range, Heap, Role, SegmentBacking};
use crate::layout::{Kind, FIRST_DATA_SPAN, FLAG_ZERO, MAX_SEGMENTS};
use crate::lock::Guard;
use crate::os::{self, Backing, Decommit};
use crate::view::Region;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use rustix::fd::AsFd;

/// Free spans a region keeps committed (ready for reuse without page faults) before freeing
/// more gives their memory back at once: 4 MiB.
pub(crate) const COMMITTED_LIMIT: u32 = 64;
/// A run this long (1 MiB) is given back at once when freed.
pub(crate) const DECOMMIT_RUN: usize = 16;

impl Heap {
    /// A run of `n` spans whose first index is a multiple of `align` (spans), from the pool
    /// of an adopted region, else from the own region's pool or above its high-water mark.
    /// Returns the region, the first span, and whether the run reads as zero.
    pub(crate) fn carve(&self, n: usize, align: usize) -> Option<(Region<'_>, usize, bool)> {
        if n == 0 || n > SPANS_PER_REGION - FIRST_DATA_SPAN {
            return None;
        }
        let own = self.own.load(Acquire) as usize;
        for slot in self.active_slots() {
            if slot == own {
                continue;
            }
            let Some(region) = self.active_region(slot) else { continue };
            if region.header().free_spans.load(Relaxed) < n as u32 {
                continue;
            }
            let _g = Guard::lock(&region.header().span_lock);
            if self.role(slot) != Role::Adopted {
                continue; // retired meanwhile
            }
            let Some(region) = self.current(slot, region) else { continue };
            if let Some(start) = take_from_pool(region, n, align) {
                return Some((region, start, run_is_zero(region, start, n)));
            }
        }
        for _ in 0..2 {
            let own = self.own.load(Acquire) as usize;
            let region = self.active_region(own)?;
            {
                let _g = Guard::lock(&region.header().span_lock);
                let region = self.current(own, region)?;
                if let Some(start) = take_from_pool(region, n, align) {
                    return Some((region, start, run_is_zero(region, start, n)));
                }
                match self.take_above_hwm(region, own, n, align) {
                    Some((grown, start)) => return Some((grown, start, true)),
                    // the slot has room but its mapping cannot grow (the address-space
                    // limit, or something mapped in the way): a small run may still find
                    // room in a new region's initial mapping; a large one fails, as
                    // malloc would, rather than start regions that cannot hold it either
                    None if self.fits_in_slot(region, n, align) && n + align > GROW_SPANS => return None,
                    None => {}
                }
            }
            if !self.grow_own(own) {
                return None;
            }
        }
        None
    }

    /// Whether a run of `n` spans aligned to `align` fits above the high-water mark of
    /// `region`'s slot.
    fn fits_in_slot(&self, region: Region<'_>, n: usize, align: usize) -> bool {
        let hwm = region.header().hwm.load(Relaxed) as usize;
        hwm.checked_next_multiple_of(align.max(1))
            .and_then(|start| start.checked_add(n))
            .is_some_and(|end| end <= SPANS_PER_REGION)
    }

    /// Carves at the high-water mark of the own region (span lock held), growing its
    /// mapping if the run ends beyond it. The alignment gap goes to the pool. Returns the
    /// region's view (which covers the run) and the first span.
    fn take_above_hwm<'h>(
        &'h self,
        region: Region<'h>,
        slot: usize,
        n: usize,
        align: usize,
    ) -> Option<(Region<'h>, usize)> {
        let region = self.current(slot, region)?;
        let h = region.header();
        let hwm = h.hwm.load(Relaxed) as usize;
        let start = hwm.checked_next_multiple_of(align.max(1))?;
        if start.checked_add(n)? > SPANS_PER_REGION {
            return None;
        }
        if self.fresh_segment.load(Relaxed) {
            self.start_fresh_segment(region, slot, hwm);
        }
        let region = self.grow_spans(slot, region, start + n)?;
        for gap in hwm..start {
            if let Some(e) = region.span(gap) {
                e.flags.store(FLAG_ZERO, Relaxed);
            }
            set_bit(region.free_map(), gap);
            h.free_spans.fetch_add(1, Relaxed);
        }
        if start > hwm {
            h.free_hint.fetch_min((hwm / 64) as u32, Relaxed);
        }
        for s in start..start + n {
            if let Some(e) = region.span(s) {
                e.flags.store(0, Relaxed);
            }
        }
        h.hwm.store((start + n) as u32, Release);
        Some((region, start))
    }

    /// After a fork froze the own region's last segment: back the region from `hwm` on by a
    /// new memfd, shared, so that fresh spans are again in memory a successor can map
    /// without copying (span lock held). On any failure the spans stay in the frozen
    /// segment: correct, only copied at the next update.
    fn start_fresh_segment(&self, region: Region<'_>, slot: usize, hwm: usize) {
        self.fresh_segment.store(false, Relaxed);
        if self.anonymous.load(Relaxed) {
            return;
        }
        let h = region.header();
        let count = (h.segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS);
        let last = count.saturating_sub(1);
        let last_start = h.segments.get(last).map_or(0, |s| s.load(Relaxed) as usize);
        // an empty frozen segment (nothing carved since it started) is replaced, not kept
        let replace_last = last > 0 && last_start == hwm;
        if !replace_last && count >= MAX_SEGMENTS {
            return;
        }
        if self.backing(slot, last) == SegmentBacking::SharedMemfd {
            return; // not frozen
        }
        let offset = hwm * SPAN_SIZE;
        let mapped_end = region.extent().spans * SPAN_SIZE;
        if offset >= mapped_end {
            return; // nothing mapped above the mark: the next growth extends the last segment
        }
        let Ok(fd) = os::memfd(SLOT_SIZE as u64) else { return };
        // SAFETY: nothing at or above the high-water mark is in use (no block was ever
        // carved there, and the span lock keeps others from carving now), so replacing the
        // mapping there (up to the end of the mapped part) changes no byte anyone reads:
        // both read as zero.
        let mapped = unsafe {
            os::map(
                region.base() + offset,
                mapped_end - offset,
                Backing::Memfd { fd: fd.as_fd(), offset: offset as u64, shared: true },
                true,
            )
        };
        if mapped.is_err() {
            return;
        }
        let index = if replace_last {
            last
        } else {
            if let Some(s) = h.segments.get(count) {
                s.store(hwm as u32, Relaxed);
            }
            h.segment_count.store(count as u32 + 1, Release);
            count
        };
        self.set_backing(slot, index, SegmentBacking::SharedMemfd);
        self.stats_created.fetch_add(1, Relaxed);
    }

    /// Gives spans `start..start + n` of `region` back to its pool (they belong to the
    /// caller: a freed large run, or an emptied small span), giving their memory back to the
    /// system if the pool holds enough committed spans already or the run is long.
    pub(crate) fn release_spans(&self, region: Region<'_>, start: usize, n: usize) {
        let h = region.header();
        let decommit =
            n >= DECOMMIT_RUN || h.committed_free_spans.load(Relaxed) as usize + n > COMMITTED_LIMIT as usize;
        let zeroed = decommit && self.decommit(region, start, n);
        for s in start..start + n {
            let Some(e) = region.span(s) else { continue };
            if e.kind.load(Relaxed) == Kind::Small as u8 {
                if let Some(bits) = region.live(s) {
                    bitmap::clear(bits);
                }
            }
            e.kind.store(Kind::Free as u8, Release);
            e.class.store(0, Relaxed);
            e.live.store(0, Relaxed);
            e.link.store(0, Relaxed);
            e.prev.store(0, Relaxed);
            e.flags.store(if zeroed { FLAG_ZERO } else { 0 }, Relaxed);
        }
        let _g = Guard::lock(&h.span_lock);
        for s in start..start + n {
            set_bit(region.free_map(), s);
            if !decommit {
                set_bit(region.committed_map(), s);
            }
        }
        h.free_spans.fetch_add(n as u32, Relaxed);
        if !decommit {
            h.committed_free_spans.fetch_add(n as u32, Relaxed);
        }
        h.free_hint.fetch_min((start / 64) as u32, Relaxed);
    }

    /// Gives the memory of spans `start..start + n` back, segment by segment as each is
    /// mapped here; true if they read as zero afterwards.
    pub(crate) fn decommit(&self, region: Region<'_>, start: usize, n: usize) -> bool {
        let Some(slot) = crate::geometry::slot_of(region.base()) else { return false };
        let mut zeroed = true;
        let mut s = start;
        while s < start + n {
            let index = segment_of(region, s);
            let seg_end = segment_range(region, index).map_or(start + n, |(_, end)| (end - region.base()) / SPAN_SIZE);
            let end = seg_end.clamp(s + 1, start + n);
            let how = match self.backing(slot, index) {
                SegmentBacking::SharedMemfd => Decommit::Remove,
                SegmentBacking::PrivateMemfd => {
                    zeroed = false; // the memfd's bytes show through again
                    Decommit::DontNeed
                }
                SegmentBacking::Anonymous => Decommit::DontNeed,
            };
            // SAFETY: the spans belong to the caller (freed, not yet in the pool).
            if unsafe { os::decommit(span_addr(region.base(), s), (end - s) * SPAN_SIZE, how) }.is_err() {
                zeroed = false;
            }
            s = end;
        }
        zeroed
    }

    /// A large block: a run of spans, aligned to `align` spans.
    pub(crate) fn alloc_large(&self, size: usize, align: usize) -> Option<(usize, bool)> {
        if !self.ready() {
            return None;
        }
        let n = size.checked_add(SPAN_SIZE - 1)? / SPAN_SIZE;
        let (region, start, zero) = self.carve(n.max(1), align)?;
        mark_run(region, start, n.max(1));
        Some((span_addr(region.base(), start), zero))
    }

    /// Frees the large run whose head is span `head`.
    pub(crate) fn free_large(&self, region: Region<'_>, head: usize) {
        let Some(entry) = region.span(head) else { return };
        let n = entry.link.load(Relaxed) as usize;
        if n == 0 || head + n > SPANS_PER_REGION {
            return;
        }
        self.release_spans(region, head, n);
    }

    /// Grows the large run at `head` from `old` to `new` spans in place if the spans after it
    /// are free (or it ends at the own region's high-water mark).
    pub(crate) fn grow_large(&self, region: Region<'_>, head: usize, old: usize, new: usize) -> bool {
        let h = region.header();
        let end = head + old;
        let want = head + new;
        if want > SPANS_PER_REGION {
            return false;
        }
        let slot = crate::geometry::slot_of(region.base()).unwrap_or(usize::MAX);
        let region = {
            let _g = Guard::lock(&h.span_lock);
            let Some(region) = self.current(slot, region) else { return false };
            let hwm = h.hwm.load(Relaxed) as usize;
            let pooled_end = want.min(hwm);
            if !(end..pooled_end).all(|s| test_bit(region.free_map(), s)) {
                return false;
            }
            let above = want > hwm;
            if above && (self.role(slot) != Role::Own || self.fresh_segment.load(Relaxed)) {
                return false;
            }
            // spans above the high-water mark may lie past what the region maps
            let region = if above {
                match self.grow_spans(slot, region, want) {
                    Some(grown) => grown,
                    None => return false,
                }
            } else {
                region
            };
            for s in end..pooled_end {
                clear_bit(region.free_map(), s);
                if clear_bit(region.committed_map(), s) {
                    h.committed_free_spans.fetch_sub(1, Relaxed);
                }
                h.free_spans.fetch_sub(1, Relaxed);
            }
            if above {
                h.hwm.store(want as u32, Release);
            }
            region
        };
        for s in end..want {
            if let Some(e) = region.span(s) {
                e.flags.store(0, Relaxed);
                e.link.store((s - head) as u32, Relaxed);
                e.kind.store(Kind::LargeTail as u8, Release);
            }
        }
        if let Some(e) = region.span(head) {
            e.link.store(new as u32, Release);
        }
        true
    }

    /// Shrinks the large run at `head` from `old` to `new` spans, giving the tail back.
    pub(crate) fn shrink_large(&self, region: Region<'_>, head: usize, old: usize, new: usize) {
        if new == 0 || new >= old {
            return;
        }
        if let Some(e) = region.span(head) {
            e.link.store(new as u32, Release);
        }
        self.release_spans(region, head + new, old - new);
    }
}

/// Marks spans `start..start + n` as a large run.
fn mark_run(region: Region<'_>, start: usize, n: usize) {
    for k in 1..n {
        if let Some(e) = region.span(start + k) {
            e.link.store(k as u32, Relaxed);
            e.flags.store(0, Relaxed);
            e.kind.store(Kind::LargeTail as u8, Release);
        }
    }
    if let Some(e) = region.span(start) {
        e.link.store(n as u32, Relaxed);
        e.flags.store(0, Relaxed);
        e.kind.store(Kind::LargeHead as u8, Release);
    }
}

/// Whether every span of the run reads as zero (clears the flags: the caller writes next).
fn run_is_zero(region: Region<'_>, start: usize, n: usize) -> bool {
    let mut zero = true;
    for s in start..start + n {
        if let Some(e) = region.span(s) {
            zero &= e.flags.swap(0, Relaxed) & FLAG_ZERO != 0;
        }
    }
    zero
}

/// First fit of `n` free spans aligned to `align` below the high-water mark (span lock
/// held); takes them out of the pool.
pub(crate) fn take_from_pool(region: Region<'_>, n: usize, align: usize) -> Option<usize> {
    let h = region.header();
    if (h.free_spans.load(Relaxed) as usize) < n {
        return None;
    }
    let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
    let free = region.free_map();
    let hint = (h.free_hint.load(Relaxed) as usize).max(FIRST_DATA_SPAN / 64);
    let start = find_run(free, hint, hwm, n, align.max(1))?;
    for s in start..start + n {
        clear_bit(free, s);
        if clear_bit(region.committed_map(), s) {
            h.committed_free_spans.fetch_sub(1, Relaxed);
        }
    }
    h.free_spans.fetch_sub(n as u32, Relaxed);
    if n == 1 {
        h.free_hint.store((start / 64) as u32, Relaxed);
    }
    Some(start)
}

/// The first run of `n` set bits below `limit` starting at a multiple of `align`, searching
/// from word `from` (all words below hold no set bit).
pub(crate) fn find_run(map: &[AtomicU64], from: usize, limit: usize, n: usize, align: usize) -> Option<usize> {
    let words = limit.div_ceil(64);
    let mut run_start = 0;
    let mut run_len = 0;
    for w in from..words {
        let word = map.get(w)?.load(Relaxed);
        if word == 0 {
            run_len = 0;
            continue;
        }
        if n == 1 && align == 1 {
            let s = w * 64 + word.trailing_zeros() as usize;
            return (s < limit).then_some(s);
        }
        for b in 0..64 {
            let s = w * 64 + b;
            if s >= limit {
                return None;
            }
            if word >> b & 1 == 1 {
                if run_len == 0 {
                    if s % align != 0 {
                        continue;
                    }
                    run_start = s;
                }
                run_len += 1;
                if run_len == n {
                    return Some(run_start);
                }
            } else {
                run_len = 0;
            }
        }
    }
    None
}

pub(crate) fn set_bit(map: &[AtomicU64], i: usize) {
    if let Some(w) = map.get(i / 64) {
        w.fetch_or(1 << (i % 64), Relaxed);
    }
}

/// Clears bit `i`; true if it was set.
pub(crate) fn clear_bit(map: &[AtomicU64], i: usize) -> bool {
    map.get(i / 64).is_some_and(|w| w.fetch_and(!(1 << (i % 64)), Relaxed) >> (i % 64) & 1 == 1)
}

pub(crate) fn test_bit(map: &[AtomicU64], i: usize) -> bool {
    map.get(i / 64).is_some_and(|w| w.load(Relaxed) >> (i % 64) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(bits: &[usize]) -> std::vec::Vec<AtomicU64> {
        let m: std::vec::Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        for &b in bits {
            set_bit(&m, b);
        }
        m
    }

    #[test]
    fn first_fit_runs() {
        let m = map(&[3, 5, 6, 7, 64, 65, 66, 67, 130]);
        assert_eq!(find_run(&m, 0, 512, 1, 1), Some(3));
        assert_eq!(find_run(&m, 0, 512, 2, 1), Some(5));
        assert_eq!(find_run(&m, 0, 512, 3, 1), Some(5));
        assert_eq!(find_run(&m, 0, 512, 4, 1), Some(64));
        assert_eq!(find_run(&m, 0, 512, 2, 2), Some(6));
        assert_eq!(find_run(&m, 0, 512, 3, 4), Some(64));
        assert_eq!(find_run(&m, 0, 512, 5, 1), None);
        assert_eq!(find_run(&m, 0, 100, 1, 128), None);
        assert_eq!(find_run(&m, 0, 131, 1, 2), Some(6));
        assert_eq!(find_run(&m, 2, 512, 1, 1), Some(130));
        assert_eq!(find_run(&m, 0, 4, 1, 1), Some(3));
        assert_eq!(find_run(&m, 0, 3, 1, 1), None, "the hwm bounds the search");
        // runs across a word boundary
        let m = map(&[62, 63, 64, 65]);
        assert_eq!(find_run(&m, 0, 512, 4, 1), Some(62));
        assert_eq!(find_run(&m, 0, 512, 4, 2), Some(62));
        assert_eq!(find_run(&m, 0, 512, 3, 4), None);
    }

    #[test]
    fn bits() {
        let m = map(&[]);
        assert!(!test_bit(&m, 9));
        set_bit(&m, 9);
        assert!(test_bit(&m, 9));
        assert!(clear_bit(&m, 9));
        assert!(!clear_bit(&m, 9));
        assert!(!clear_bit(&m, 100_000), "out of range");
    }
}
