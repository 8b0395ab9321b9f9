//! fork: every lock is taken before and released after in both processes; the segments
//! mapped shared are frozen (remapped copy-on-write over their own memfd: same bytes, no
//! copy) so that parent and child each see the heap as of the fork and write private pages
//! from then on; both carve fresh spans into a new memfd segment; the child gives back the
//! caches of the threads it does not have.

#![allow(unsafe_code)]

use crate::extent::{Extent, GROW_SPANS};
use crate::geometry::{PAGE_SIZE, SPANS_PER_REGION};
use crate::heap::{first_mapping, mapped_within, segment_range, Heap, SegmentBacking};
use crate::layout::{ThreadCache, FIRST_DATA_SPAN, MAX_SEGMENTS};
use crate::lock;
use crate::os::{self, Backing};
use crate::view::{self, Region};
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use rustix::fd::AsFd;

impl Heap {
    /// Call right before `fork` (in the runtime's fork wrapper, or a `pthread_atfork` prepare
    /// handler), then [`Heap::fork_parent`] in the parent and [`Heap::fork_child`] in the
    /// child. Holds every lock of the heap across the fork.
    pub fn fork_prepare(&self) {
        if !self.ready() {
            return;
        }
        // the lock order of the whole engine: shared cache, heap, then per region (in slot
        // order) the class locks and the span lock
        lock::acquire(&self.shared_lock);
        lock::acquire(&self.lock);
        for slot in self.active_slots() {
            let Some(region) = self.active_region(slot) else { continue };
            let h = region.header();
            for l in h.class_lock.iter() {
                lock::acquire(l);
            }
            lock::acquire(&h.span_lock);
        }
        self.freeze_shared_segments();
    }

    /// In the parent after `fork` (or after a failed `fork`).
    pub fn fork_parent(&self) {
        if self.ready() {
            self.unlock_all();
        }
    }

    /// The process installed a sandbox (a seccomp filter) that may forbid any system call
    /// the heap would make of its own: from now on it grows with anonymous memory only
    /// (no memory files; the spans a fork froze stay in their segment, which is correct and
    /// only copied at the next update), and its lock waits spin without yielding.
    pub fn enter_sandbox(&self) {
        self.anonymous.store(true, Relaxed);
        self.fresh_segment.store(false, Relaxed);
        crate::lock::spin_only();
    }

    /// In the child after `fork`, on the forking thread (`keep`: its cache, which stays
    /// valid; every other thread cache is given back, those threads do not exist here).
    pub fn fork_child(&self, keep: Option<&ThreadCache>) {
        if !self.ready() {
            return;
        }
        self.unlock_all();
        let shared = self.shared_cache();
        for slot in self.active_slots() {
            let Some(region) = self.active_region(slot) else { continue };
            for (w, word) in region.header().caches_in_use.iter().enumerate() {
                for b in crate::geometry::BitIter(word.load(Acquire)) {
                    let Some(cache) = region.caches().get(w * 64 + b) else { continue };
                    let kept = keep.is_some_and(|k| core::ptr::eq(k, cache))
                        || shared.is_some_and(|s| core::ptr::eq(s, cache));
                    if !kept {
                        self.empty_cache(cache);
                        word.fetch_and(!(1u64 << b), AcqRel);
                    }
                }
            }
        }
    }

    fn unlock_all(&self) {
        for slot in self.active_slots() {
            let Some(region) = self.active_region(slot) else { continue };
            let h = region.header();
            lock::release(&h.span_lock);
            for l in h.class_lock.iter() {
                lock::release(l);
            }
        }
        lock::release(&self.lock);
        lock::release(&self.shared_lock);
    }

    /// Freezes every segment mapped shared (all locks held).
    fn freeze_shared_segments(&self) {
        let own = self.own.load(Acquire) as usize;
        for slot in self.active_slots() {
            let Some(region) = self.active_region(slot) else { continue };
            let count = (region.header().segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS);
            for index in 0..count {
                if self.backing(slot, index) != SegmentBacking::SharedMemfd {
                    continue;
                }
                let Some((start, end)) = segment_range(region, index) else { continue };
                if self.remap_private(region, start, end) {
                    self.set_backing(slot, index, SegmentBacking::PrivateMemfd);
                    self.stats_frozen.fetch_add(1, Relaxed);
                } else {
                    self.copy_to_anonymous(region, start, end);
                    self.set_backing(slot, index, SegmentBacking::Anonymous);
                    self.stats_copied.fetch_add(1, Relaxed);
                }
                if slot == own {
                    self.fresh_segment.store(true, Relaxed);
                }
            }
        }
    }

    /// Maps the pieces of segment [start, end) copy-on-write over the memfd they show,
    /// reopened through /proc/self/map_files of its first mapping (the descriptor is closed
    /// again right away). That mapping may have been split since it was made (dirty tracking
    /// registers the used part of a region's data with its userfaultfd): the reopen then
    /// names the part that holds its start.
    fn remap_private(&self, region: Region<'_>, start: usize, end: usize) -> bool {
        let Some((first, first_end)) = first_mapping(region, start, end) else { return true };
        let Ok(fd) = os::open_map_files(None, first, first_end, false) else { return false };
        for (s, e) in mapped_within(region, start, end) {
            let offset = (s - region.base()) as u64;
            // SAFETY: the same bytes appear at the same addresses (the memfd's, which the
            // shared mapping showed); a store racing with the remap lands either in the memfd
            // before it or in a private copy after it, and both processes then see it.
            let mapped = unsafe { os::map(s, e - s, Backing::Memfd { fd: fd.as_fd(), offset, shared: false }, true) };
            if mapped.is_err() {
                // pieces remapped so far show the same bytes, privately: still correct for
                // them; the caller copies the segment instead
                return false;
            }
        }
        true
    }

    /// Fallback when the memfd cannot be reopened (the process lacks CAP_CHECKPOINT_RESTORE,
    /// e.g. after dropping privileges): the used part of each piece of [start, end) is
    /// copied into anonymous memory that replaces the piece. Costs a copy of the segment,
    /// and a store another thread makes during the copy may be lost: the runtime avoids it
    /// by calling [`Heap::unshare`] while the process still has the capability.
    fn copy_to_anonymous(&self, region: Region<'_>, start: usize, end: usize) {
        let hwm = (region.header().hwm.load(Relaxed) as usize).clamp(FIRST_DATA_SPAN + 1, SPANS_PER_REGION);
        // The span-indexed areas are used up to the high-water mark only: reading the rest
        // from a memfd would allocate its holes. It reads as zero, as the fresh copy does.
        let used = Extent { spans: hwm.next_multiple_of(GROW_SPANS).min(region.extent().spans), ..region.extent() };
        let base = region.base();
        for (s, e) in mapped_within(region, start, end) {
            let len = e - s;
            let Ok(tmp) = os::map_anywhere(len) else { return };
            for (us, ue) in used.pieces_within(s - base, e - base) {
                let mut page = base + us;
                while page < base + ue {
                    // SAFETY: both pages are mapped (ours: the heap piece, and the fresh copy
                    // nobody else knows); the source is read with atomic loads.
                    unsafe { view::copy_page_if_nonzero(page, tmp + (page - s)) };
                    page += PAGE_SIZE;
                }
            }
            // SAFETY: the copy holds the piece's bytes; it replaces them in one call.
            if unsafe { os::move_mapping(tmp, len, s) }.is_err() {
                // SAFETY: our own temporary mapping.
                unsafe { os::unmap(tmp, len) };
                return;
            }
        }
    }

    /// Makes the own region fork-proof without /proc/self/map_files: freezes every segment
    /// mapped shared (as a fork would) and backs fresh spans by anonymous memory from then
    /// on. The runtime calls it before the process gives up the capability to reopen its
    /// memfds (setuid, capset): later forks then need nothing. Updates copy the pages
    /// written afterwards.
    pub fn unshare(&self) {
        if !self.ready() {
            return;
        }
        self.fork_prepare();
        // fresh spans above the high-water mark now land in the frozen last segment: private
        // pages, read as zero, never shared with a child
        self.anonymous.store(true, Relaxed);
        self.fresh_segment.store(false, Relaxed);
        self.fork_parent();
    }
}
