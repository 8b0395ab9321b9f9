//! The malloc family and the queries mcr makes of the heap.

#![allow(unsafe_code)]

use crate::bitmap;
use crate::class::{aligned_class, block_index, blocks_per_span, class_of, size_of_class, CLASSES, MAX_SMALL};
use crate::geometry::{slot_of, span_addr, span_index, SPANS_PER_REGION, SPAN_SIZE};
use crate::heap::Heap;
use crate::layout::{Kind, ThreadCache, FIRST_DATA_SPAN};
use crate::view::{self, Region};
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Acquire, Relaxed};

/// What the heap knows of a live block, metadata only: where it is, how much of it the
/// program may use, how much it asked for, and the one bit the runtime keeps per block
/// (mcr: allocated during the process's startup). No header: the requested size and the
/// bit live out of band (a `u16` per small block, the span entry of a large run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub start: usize,
    /// Bytes usable from `start` (the class size, or the whole run).
    pub usable: usize,
    /// Bytes asked for (`usable` for a block nobody described with [`Heap::set_info`]).
    pub requested: usize,
    pub startup: bool,
}

/// The `u16` of a small block: `usable - requested` below, the startup bit on top.
pub(crate) const INFO_STARTUP: u16 = 1 << 15;
const INFO_SLACK: u16 = INFO_STARTUP - 1;
/// The large head's flag word: the startup bit.
pub(crate) const LARGE_STARTUP: u32 = 1;

pub(crate) fn small_info(start: usize, usable: usize, word: u16) -> BlockInfo {
    BlockInfo {
        start,
        usable,
        requested: usable.saturating_sub((word & INFO_SLACK) as usize),
        startup: word & INFO_STARTUP != 0,
    }
}

pub(crate) fn large_info(start: usize, usable: usize, lo: u32, hi: u32, flags: u32) -> BlockInfo {
    let requested = ((hi as usize) << 32) | lo as usize;
    BlockInfo {
        start,
        usable,
        requested: if requested == 0 || requested > usable { usable } else { requested },
        startup: flags & LARGE_STARTUP != 0,
    }
}

/// A block found from a pointer into it.
#[derive(Clone, Copy)]
enum Block<'h> {
    Small { start: usize, size: usize },
    Large { region: Region<'h>, head: usize, spans: usize },
}

impl Block<'_> {
    fn start(&self) -> usize {
        match *self {
            Block::Small { start, .. } => start,
            Block::Large { region, head, .. } => span_addr(region.base(), head),
        }
    }

    fn size(&self) -> usize {
        match *self {
            Block::Small { size, .. } => size,
            Block::Large { spans, .. } => spans * SPAN_SIZE,
        }
    }
}

impl Heap {
    /// `malloc`: a block of at least `size` bytes, 16-byte aligned (`None`: out of memory, or
    /// not initialized). `cache`: the calling thread's cache, or `None` for the shared path
    /// (a lock; for threads without a cache, and signal handlers).
    #[inline]
    pub fn malloc(&self, cache: Option<&ThreadCache>, size: usize) -> Option<NonNull<u8>> {
        if size <= MAX_SMALL {
            self.small(cache, class_of(size))
        } else {
            self.alloc_large(size, 1).and_then(|(addr, _)| NonNull::new(addr as *mut u8))
        }
    }

    #[inline]
    fn small(&self, cache: Option<&ThreadCache>, class: usize) -> Option<NonNull<u8>> {
        match cache {
            Some(cache) => self.alloc_small(cache, class),
            None => self.with_shared(|cache| self.alloc_small(cache, class)).flatten(),
        }
    }

    /// `calloc`: `count * size` zeroed bytes (`None` on overflow too).
    pub fn calloc(&self, cache: Option<&ThreadCache>, count: usize, size: usize) -> Option<NonNull<u8>> {
        let total = count.checked_mul(size)?;
        if total <= MAX_SMALL {
            let p = self.small(cache, class_of(total))?;
            // SAFETY: a block of at least `total` bytes just allocated: ours alone.
            unsafe { view::zero(p.as_ptr() as usize, total) };
            Some(p)
        } else {
            let (addr, zero) = self.alloc_large(total, 1)?;
            if !zero {
                // SAFETY: as above, a run of at least `total` bytes.
                unsafe { view::zero(addr, total) };
            }
            NonNull::new(addr as *mut u8)
        }
    }

    /// `free`. Null, a pointer outside this heap's active regions, or one that is not the
    /// start of a block is ignored, as is (when it can be seen) a second free of a block.
    ///
    /// # Safety
    /// `ptr` is not freed twice, and nobody uses the block afterwards; otherwise the block
    /// may be handed out twice.
    #[inline]
    pub unsafe fn free(&self, cache: Option<&ThreadCache>, ptr: *mut u8) {
        let addr = ptr as usize;
        let Some((region, index, entry)) = self.span_entry(addr) else { return };
        match Kind::from_u8(entry.kind.load(Acquire)) {
            Kind::Small => {
                let class = entry.class.load(Relaxed) as usize;
                let offset = addr & (SPAN_SIZE - 1);
                let block = block_index(class, offset);
                if block * size_of_class(class) != offset || block >= blocks_per_span(class) {
                    return;
                }
                match cache {
                    Some(cache) => self.free_small(cache, class, addr),
                    None => {
                        self.with_shared(|cache| self.free_small(cache, class, addr));
                    }
                }
            }
            Kind::LargeHead if addr == span_addr(region.base(), index) => self.free_large(region, index),
            _ => {}
        }
    }

    /// `realloc` (glibc's semantics): null `ptr` allocates; `size` 0 frees `ptr` and returns
    /// `None`; otherwise a block of at least `size` bytes with the old contents, `ptr` itself
    /// when it fits in place (shrinking keeps the block unless it would waste more than half
    /// of it; a large block grows in place into free spans after it). `None` when out of
    /// memory or when `ptr` is not a live block of this heap: `ptr` is then untouched.
    ///
    /// # Safety
    /// As for [`Heap::free`]: `ptr` is a live block (or foreign, or null), and nobody else
    /// writes it during the call.
    pub unsafe fn realloc(&self, cache: Option<&ThreadCache>, ptr: *mut u8, size: usize) -> Option<NonNull<u8>> {
        let addr = ptr as usize;
        if addr == 0 {
            return self.malloc(cache, size);
        }
        let block = self.block_starting_at(addr)?;
        if size == 0 {
            // SAFETY: forwarded from the caller.
            unsafe { self.free(cache, ptr) };
            return None;
        }
        match block {
            Block::Small { size: usable, .. } => {
                if size <= usable && 2 * size_of_class(class_of(size)) > usable {
                    return NonNull::new(ptr);
                }
            }
            Block::Large { region, head, spans } if size > MAX_SMALL => {
                let want = size.div_ceil(SPAN_SIZE);
                if want <= spans {
                    self.shrink_large(region, head, spans, want);
                    return NonNull::new(ptr);
                }
                if self.grow_large(region, head, spans, want) {
                    return NonNull::new(ptr);
                }
            }
            Block::Large { .. } => {}
        }
        let new = self.malloc(cache, size)?;
        // SAFETY: `new` was just allocated (ours alone, at least `size` bytes), `ptr` is the
        // caller's live block of `block.size()` bytes; distinct blocks never overlap.
        unsafe { view::copy(addr, new.as_ptr() as usize, block.size().min(size)) };
        // SAFETY: forwarded from the caller.
        unsafe { self.free(cache, ptr) };
        Some(new)
    }

    /// `memalign` / `aligned_alloc` / `posix_memalign`: `size` bytes aligned to `align`, a
    /// power of two (`None` otherwise). Up to 16 KiB blocks come from a size class whose
    /// size is a multiple of `align`; larger ones from span runs aligned to
    /// `max(align, 64 KiB)`.
    pub fn memalign(&self, cache: Option<&ThreadCache>, align: usize, size: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            return None;
        }
        if align <= 16 {
            return self.malloc(cache, size);
        }
        let need = size.max(align);
        if need <= MAX_SMALL {
            let class = aligned_class(class_of(need), align)?;
            return self.small(cache, class);
        }
        let spans = (align / SPAN_SIZE).max(1);
        self.alloc_large(size.max(1), spans).and_then(|(addr, _)| NonNull::new(addr as *mut u8))
    }

    /// `malloc_usable_size`: bytes usable from `ptr` to the end of its block (0 for null or
    /// a pointer this heap does not know).
    pub fn usable_size(&self, ptr: *const u8) -> usize {
        match self.block_of(ptr as usize) {
            Some((start, size)) => start + size - ptr as usize,
            None => 0,
        }
    }

    /// Records what the program asked for when it got the block at `ptr` (which an
    /// allocation call of this heap just returned, or `realloc` kept in place): `requested`
    /// bytes, and the runtime's bit. Costs one span-entry load and one store; a pointer that
    /// is not a block start of an active region is ignored.
    #[inline]
    pub fn set_info(&self, ptr: NonNull<u8>, requested: usize, startup: bool) {
        let addr = ptr.as_ptr() as usize;
        let Some(region) = slot_of(addr).and_then(|s| self.active_region(s)) else { return };
        let index = span_index(addr);
        let Some(entry) = region.span(index) else { return };
        match Kind::from_u8(entry.kind.load(Acquire)) {
            Kind::Small => {
                let class = entry.class.load(Relaxed) as usize;
                let usable = size_of_class(class);
                let block = block_index(class, addr & (SPAN_SIZE - 1));
                let slack = usable.saturating_sub(requested).min(INFO_SLACK as usize) as u16;
                if let Some(word) = region.info(index).and_then(|i| i.get(block)) {
                    word.store(slack | if startup { INFO_STARTUP } else { 0 }, Relaxed);
                }
            }
            Kind::LargeHead if addr == span_addr(region.base(), index) => {
                entry.large_requested[0].store(requested as u32, Relaxed);
                entry.large_requested[1].store((requested >> 32) as u32, Relaxed);
                entry.large_flags.store(if startup { LARGE_STARTUP } else { 0 }, Relaxed);
            }
            _ => {}
        }
    }

    /// The live block containing `addr` with what [`Heap::set_info`] recorded for it.
    pub fn info_of(&self, addr: usize) -> Option<BlockInfo> {
        let region = self.readable(slot_of(addr)?)?;
        match block_in(region, addr)? {
            Block::Small { start, size } => {
                let index = span_index(start);
                let block = (start & (SPAN_SIZE - 1)) / size;
                let word = region.info(index)?.get(block)?.load(Relaxed);
                Some(small_info(start, size, word))
            }
            Block::Large { region, head, spans } => {
                let e = region.span(head)?;
                Some(large_info(
                    span_addr(region.base(), head),
                    spans * SPAN_SIZE,
                    e.large_requested[0].load(Relaxed),
                    e.large_requested[1].load(Relaxed),
                    e.large_flags.load(Relaxed),
                ))
            }
        }
    }

    /// The live block containing `addr` (interior pointers included): its start and size.
    /// O(1): the slot and span by shifts, the block by a multiply, one bit test. Works on
    /// any readable region (own, adopted, or mapped from a previous version). Blocks parked
    /// in thread caches count as live (see [`Heap::flush_thread_cache`]).
    pub fn block_of(&self, addr: usize) -> Option<(usize, usize)> {
        let region = self.readable(slot_of(addr)?)?;
        let b = block_in(region, addr)?;
        Some((b.start(), b.size()))
    }

    /// The block that starts exactly at `addr`, in an active region.
    fn block_starting_at(&self, addr: usize) -> Option<Block<'_>> {
        let region = self.active_region(slot_of(addr)?)?;
        block_in(region, addr).filter(|b| b.start() == addr)
    }

    /// Calls `f(start, size)` for every live block of the region in `slot`, in address
    /// order, reading only the metadata (span table and live bitmaps); returns how many.
    /// Blocks parked in thread caches count as live.
    pub fn visit(&self, slot: usize, mut f: impl FnMut(usize, usize)) -> usize {
        let Some(region) = self.readable(slot) else { return 0 };
        let hwm = (region.header().hwm.load(Acquire) as usize).min(SPANS_PER_REGION);
        let mut count = 0;
        let mut s = FIRST_DATA_SPAN;
        while s < hwm {
            let Some(entry) = region.span(s) else { break };
            match Kind::from_u8(entry.kind.load(Acquire)) {
                Kind::Small => {
                    let class = entry.class.load(Relaxed) as usize;
                    let size = size_of_class(class);
                    if let (Some(bits), true) = (region.live(s), class < CLASSES) {
                        let base = span_addr(region.base(), s);
                        bitmap::for_each_set(bits, blocks_per_span(class), |i| {
                            f(base + i * size, size);
                            count += 1;
                        });
                    }
                    s += 1;
                }
                Kind::LargeHead => {
                    let n = (entry.link.load(Relaxed) as usize).max(1);
                    f(span_addr(region.base(), s), n * SPAN_SIZE);
                    count += 1;
                    s += n;
                }
                Kind::LargeTail | Kind::Free => s += 1,
            }
        }
        count
    }
}

/// The live block of `region` containing `addr`.
fn block_in(region: Region<'_>, addr: usize) -> Option<Block<'_>> {
    let index = span_index(addr);
    if index < FIRST_DATA_SPAN {
        return None;
    }
    let entry = region.span(index)?;
    match Kind::from_u8(entry.kind.load(Acquire)) {
        Kind::Small => {
            let class = entry.class.load(Relaxed) as usize;
            if class >= CLASSES {
                return None;
            }
            let block = block_index(class, addr & (SPAN_SIZE - 1));
            if block >= blocks_per_span(class) || !bitmap::is_set(region.live(index)?, block) {
                return None;
            }
            let size = size_of_class(class);
            Some(Block::Small { start: span_addr(region.base(), index) + block * size, size })
        }
        Kind::LargeHead => {
            let spans = entry.link.load(Relaxed) as usize;
            (spans > 0).then_some(Block::Large { region, head: index, spans })
        }
        Kind::LargeTail => {
            let back = entry.link.load(Relaxed) as usize;
            let head = index.checked_sub(back).filter(|&h| back > 0 && h >= FIRST_DATA_SPAN)?;
            let h = region.span(head)?;
            let spans = h.link.load(Relaxed) as usize;
            (h.kind.load(Acquire) == Kind::LargeHead as u8 && head + spans > index).then_some(Block::Large {
                region,
                head,
                spans,
            })
        }
        Kind::Free => None,
    }
}
