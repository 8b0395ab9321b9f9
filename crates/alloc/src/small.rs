//! Small blocks: thread caches, claims from a span's live bitmap, and the partial lists.
//!
//! A small span is in one of three states (`layout::State`):
//! * Owned: one thread cache's current span; only that cache sets its bits (claims).
//! * Listed: on its class's partial list in its region; nobody claims from it.
//! * Full: neither; it was full when its owner let it go.
//!
//! Anyone clears bits (frees). The free that takes a Full span below capacity lists it; the
//! free that empties a Listed span takes it off the list and gives it back to the span pool.
//! Transitions out of Full race between the owner (which may take its span back when a free
//! made room while it was letting go) and freers (which list it): both compare-exchange from
//! Full, so exactly one wins. Listing, unlisting and popping happen under the class lock.

use crate::bitmap;
use crate::class::{bin_capacity, block_index, blocks_per_span, refill_batch, size_of_class, BIN_CAPACITY};
use crate::geometry::{slot_of, span_addr, span_index, SPAN_SIZE};
use crate::heap::Heap;
use crate::layout::{next_life, state_of, with_state, Bin, Kind, SpanEntry, State, ThreadCache, FIRST_DATA_SPAN};
use crate::lock::Guard;
use crate::view::Region;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

impl Heap {
    /// Pops a block of class `class` from `cache`, refilling it when empty.
    #[inline(always)]
    pub(crate) fn alloc_small(&self, cache: &ThreadCache, class: usize) -> Option<NonNull<u8>> {
        let bin = cache.bins.get(class)?;
        let n = bin.count.load(Relaxed) as usize;
        if n > 0 {
            if let Some(top) = bin.blocks.get(n - 1) {
                bin.count.store(n as u32 - 1, Relaxed);
                return NonNull::new(top.load(Relaxed) as *mut u8);
            }
        }
        self.refill(bin, class)
    }

    /// Pushes block `addr` (of class `class`) on `cache`, flushing the older half when full.
    #[inline(always)]
    pub(crate) fn free_small(&self, cache: &ThreadCache, class: usize, addr: usize) {
        let Some(bin) = cache.bins.get(class) else { return };
        let mut n = bin.count.load(Relaxed) as usize;
        if n >= bin_capacity(class) {
            n = self.flush(bin, bin_capacity(class) / 2);
        }
        match bin.blocks.get(n) {
            Some(slot) => {
                slot.store(addr as u64, Relaxed);
                bin.count.store(n as u32 + 1, Relaxed);
            }
            None => self.release_cold(addr),
        }
    }

    #[cold]
    fn release_cold(&self, addr: usize) {
        self.release_block(addr);
    }

    /// Gives back all but the `keep` most recently freed blocks of `bin`; returns the count left.
    #[cold]
    pub(crate) fn flush(&self, bin: &Bin, keep: usize) -> usize {
        let n = (bin.count.load(Relaxed) as usize).min(BIN_CAPACITY);
        let keep = keep.min(n);
        let drop = n - keep;
        for slot in bin.blocks.iter().take(drop) {
            self.release_block(slot.load(Relaxed) as usize);
        }
        for i in 0..keep {
            if let (Some(from), Some(to)) = (bin.blocks.get(drop + i), bin.blocks.get(i)) {
                to.store(from.load(Relaxed), Relaxed);
            }
        }
        bin.count.store(keep as u32, Relaxed);
        keep
    }

    #[cold]
    #[inline(never)]
    fn refill(&self, bin: &Bin, class: usize) -> Option<NonNull<u8>> {
        if !self.ready() {
            return None;
        }
        let batch = refill_batch(class);
        loop {
            let current = bin.current.load(Relaxed) as usize;
            if current != 0 {
                if self.claim_into(bin, current, class, batch) > 0 {
                    let n = bin.count.load(Relaxed) as usize;
                    let top = bin.blocks.get(n.checked_sub(1)?)?;
                    bin.count.store(n as u32 - 1, Relaxed);
                    return NonNull::new(top.load(Relaxed) as *mut u8);
                }
                bin.current.store(0, Relaxed);
                if self.let_go(current, class, true) {
                    bin.current.store(current as u64, Relaxed);
                    continue;
                }
            }
            let span = self.take_span(class)?;
            bin.current.store(span as u64, Relaxed);
        }
    }

    /// Claims up to `batch` free blocks of the span at `span` (owned by `bin`) into `bin`,
    /// lowest address on top; returns how many.
    fn claim_into(&self, bin: &Bin, span: usize, class: usize, batch: usize) -> usize {
        let Some((region, index, entry)) = self.span_entry(span) else { return 0 };
        let Some(bits) = region.live(index) else { return 0 };
        let mut claimed = [0u16; BIN_CAPACITY / 2];
        let want = batch.min(claimed.len());
        let got = bitmap::claim(bits, blocks_per_span(class), claimed.get_mut(..want).unwrap_or_default());
        if got == 0 {
            return 0;
        }
        entry.live.fetch_add(got as u32, SeqCst);
        let size = size_of_class(class);
        let mut n = bin.count.load(Relaxed) as usize;
        for &i in claimed.iter().take(got).rev() {
            if let Some(slot) = bin.blocks.get(n) {
                slot.store((span + usize::from(i) * size) as u64, Relaxed);
                n += 1;
            } else {
                // cannot happen (refills start from an empty bin): never lose a block
                self.release_block(span + usize::from(i) * size);
            }
        }
        bin.count.store(n as u32, Relaxed);
        got
    }

    /// The owner lets its span go: exhausted (`exhausted`, it may take it back at once if a
    /// free made room meanwhile: returns true) or releasing its cache.
    pub(crate) fn let_go(&self, span: usize, class: usize, exhausted: bool) -> bool {
        let Some((region, index, entry)) = self.span_entry(span) else { return false };
        let cap = blocks_per_span(class) as u32;
        // the owner's word: nobody else changes an Owned span's state
        let full = with_state(entry.state.load(SeqCst), State::Full);
        entry.state.store(full, SeqCst);
        let live = entry.live.load(SeqCst);
        if exhausted {
            if live < cap && entry.state.compare_exchange(full, with_state(full, State::Owned), SeqCst, Relaxed).is_ok()
            {
                return true;
            }
        } else if live < cap {
            self.list(region, index, class, full);
        }
        false
    }

    /// A Full span may have room: list it (whoever wins the Full -> Listed race from the
    /// state word `full` it saw), and give it back to the pool if it emptied meanwhile.
    fn list(&self, region: Region<'_>, index: usize, class: usize, full: u32) {
        let h = region.header();
        let Some(lock) = h.class_lock.get(class) else { return };
        let Some(entry) = region.span(index) else { return };
        let empty = {
            let _g = Guard::lock(lock);
            if entry.state.compare_exchange(full, with_state(full, State::Listed), SeqCst, Relaxed).is_err() {
                return;
            }
            push_partial(region, class, index);
            entry.live.load(SeqCst) == 0 && unlink_partial(region, class, index)
        };
        if empty {
            self.release_spans(region, index, 1);
        }
    }

    /// Returns block `addr` to its span's bitmap, listing or freeing the span as needed.
    pub(crate) fn release_block(&self, addr: usize) {
        let Some((region, index, entry)) = self.span_entry(addr) else { return };
        if entry.kind.load(Acquire) != Kind::Small as u8 {
            return;
        }
        let class = entry.class.load(Relaxed) as usize;
        let Some(bits) = region.live(index) else { return };
        let block = block_index(class, addr & (SPAN_SIZE - 1));
        if !bitmap::release(bits, block) {
            return; // double free: the bit was clear already
        }
        let cap = blocks_per_span(class) as u32;
        let before = entry.live.fetch_sub(1, SeqCst);
        let word = entry.state.load(SeqCst);
        if before == cap && state_of(word) == State::Full {
            self.list(region, index, class, word);
        } else if before == 1 && state_of(word) == State::Listed {
            let empty = {
                let Some(lock) = region.header().class_lock.get(class) else { return };
                let _g = Guard::lock(lock);
                state_of(entry.state.load(SeqCst)) == State::Listed
                    && entry.kind.load(Relaxed) == Kind::Small as u8
                    && entry.class.load(Relaxed) as usize == class
                    && entry.live.load(SeqCst) == 0
                    && unlink_partial(region, class, index)
            };
            if empty {
                self.release_spans(region, index, 1);
            }
        }
    }

    /// A span of class `class` for a cache to own: a listed one (any active region, in slot
    /// order: a previous version's memory is reused first), else a fresh one.
    fn take_span(&self, class: usize) -> Option<usize> {
        for slot in self.active_slots() {
            let Some(region) = self.active_region(slot) else { continue };
            let h = region.header();
            if h.partial.get(class).is_none_or(|head| head.load(Relaxed) == 0) {
                continue;
            }
            let Some(lock) = h.class_lock.get(class) else { continue };
            let _g = Guard::lock(lock);
            let head = h.partial.get(class)?.load(Relaxed) as usize;
            if head != 0 && unlink_partial(region, class, head) {
                if let Some(entry) = region.span(head) {
                    entry.state.store(with_state(entry.state.load(SeqCst), State::Owned), SeqCst);
                    return Some(span_addr(region.base(), head));
                }
            }
        }
        let (region, index, _zero) = self.carve(1, 1)?;
        let entry = region.span(index)?;
        entry.class.store(class as u8, Relaxed);
        entry.live.store(0, Relaxed);
        entry.link.store(0, Relaxed);
        entry.prev.store(0, Relaxed);
        entry.state.store(next_life(entry.state.load(SeqCst), State::Owned), SeqCst);
        entry.kind.store(Kind::Small as u8, Release);
        Some(span_addr(region.base(), index))
    }

    /// Releases every block and the current span of each bin of `cache`.
    pub(crate) fn empty_cache(&self, cache: &ThreadCache) {
        for (class, bin) in cache.bins.iter().enumerate() {
            self.flush(bin, 0);
            let current = bin.current.swap(0, Relaxed) as usize;
            if current != 0 {
                self.let_go(current, class, false);
            }
        }
    }

    /// Gives a thread's cache back (thread exit): its blocks return to their spans and the
    /// slot can serve another thread.
    pub fn release_thread_cache(&self, cache: &ThreadCache) {
        self.empty_cache(cache);
        free_cache_slot(self, cache);
    }

    /// [`Heap::flush_thread_cache`] for the cache of the shared path (threads without a
    /// cache, signal handlers).
    pub fn flush_shared_cache(&self) {
        self.with_shared(|cache| self.flush_thread_cache(cache));
    }

    /// Returns the blocks parked in `cache` to their spans (the cache stays usable). After
    /// this, `visit` and `block_of` see none of them as live: the runtime calls it for each
    /// thread when it parks for an update.
    pub fn flush_thread_cache(&self, cache: &ThreadCache) {
        for bin in cache.bins.iter() {
            self.flush(bin, 0);
        }
    }

    /// Region, span index and entry of the span holding `addr`, in an active region.
    #[inline]
    pub(crate) fn span_entry(&self, addr: usize) -> Option<(Region<'_>, usize, &SpanEntry)> {
        let region = self.active_region(slot_of(addr)?)?;
        let index = span_index(addr);
        if index < FIRST_DATA_SPAN {
            return None;
        }
        let entry = region.span(index)?;
        Some((region, index, entry))
    }
}

fn free_cache_slot(heap: &Heap, cache: &ThreadCache) {
    let base = cache.region.load(Relaxed) as usize;
    let Some(region) = slot_of(base).and_then(|slot| heap.readable(slot)) else { return };
    let index = cache.index.load(Relaxed) as usize;
    if let Some(word) = region.header().caches_in_use.get(index / 64) {
        word.fetch_and(!(1u64 << (index % 64)), AcqRel);
    }
}

/// Puts span `index` at the head of its class's partial list (class lock held).
pub(crate) fn push_partial(region: Region<'_>, class: usize, index: usize) {
    let h = region.header();
    let (Some(head), Some(entry)) = (h.partial.get(class), region.span(index)) else { return };
    let old = head.load(Relaxed) as usize;
    entry.link.store(old as u32, Relaxed);
    entry.prev.store(0, Relaxed);
    if let Some(next) = region.span(old).filter(|_| old != 0) {
        next.prev.store(index as u32, Relaxed);
    }
    head.store(index as u32, Relaxed);
}

/// Takes span `index` off its class's partial list (class lock held); false if it is not on
/// it (a corrupt link is left alone rather than followed).
pub(crate) fn unlink_partial(region: Region<'_>, class: usize, index: usize) -> bool {
    let h = region.header();
    let (Some(head), Some(entry)) = (h.partial.get(class), region.span(index)) else { return false };
    let next = entry.link.load(Relaxed) as usize;
    let prev = entry.prev.load(Relaxed) as usize;
    if prev == 0 {
        if head.load(Relaxed) as usize != index {
            return false;
        }
        head.store(next as u32, Relaxed);
    } else {
        match region.span(prev) {
            Some(p) if p.link.load(Relaxed) as usize == index => p.link.store(next as u32, Relaxed),
            _ => return false,
        }
    }
    if next != 0 {
        if let Some(n) = region.span(next) {
            n.prev.store(prev as u32, Relaxed);
        }
    }
    entry.link.store(0, Relaxed);
    entry.prev.store(0, Relaxed);
    true
}
