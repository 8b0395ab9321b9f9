//! Typed views of region memory: the one place that turns a region's base address into
//! references (its header, span table, bitmaps, thread caches), and that touches the bytes of
//! blocks (zeroing for calloc, copying for realloc). Everything else in the engine is safe
//! code over these views.
//!
//! Soundness rests on one invariant, kept by `Heap`: a [`Region`] is only created for a slot
//! whose pieces under the view's extent (`extent::Extent`) the heap keeps mapped readable
//! and writable for as long as the view's lifetime (the borrow of the heap). The heap
//! replaces such a mapping only by another readable and writable one (fork freezing,
//! commit, retirement), grows it but never shrinks it, and unmaps only when dropped; every
//! accessor stays inside the view's extent. All views
//! are atomics, and memory of all zeroes is a valid value for every one of them, so the
//! contents may change under the view (other threads, or a remap) without breaking Rust's
//! rules.

#![allow(unsafe_code)]

use crate::class::BITMAP_WORDS;
use crate::extent::Extent;
use crate::geometry::{SLOT_SIZE, SPANS_PER_REGION};
use crate::layout::{
    RegionHeader, SpanEntry, ThreadCache, FIRST_DATA_SPAN, INFO_STRIDE, OFF_CACHES, OFF_COMMITTED_MAP, OFF_FREE_MAP,
    OFF_INFO, OFF_LIVE, OFF_SPANS, THREAD_CACHES,
};
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU16, AtomicU64};

/// The metadata of the region at `base`, valid for `'h`, as far as it is mapped.
#[derive(Clone, Copy)]
pub(crate) struct Region<'h> {
    base: usize,
    extent: Extent,
    _heap: PhantomData<&'h ()>,
}

// Every view below covers memory inside [base, base + SLOT_SIZE), as the layout's
// compile-time checks guarantee.
const _: () = {
    assert!(OFF_CACHES + THREAD_CACHES * core::mem::size_of::<ThreadCache>() <= SLOT_SIZE);
    assert!(OFF_LIVE + SPANS_PER_REGION * BITMAP_WORDS * 8 <= OFF_CACHES);
    assert!(OFF_INFO + SPANS_PER_REGION * INFO_STRIDE <= SLOT_SIZE);
    assert!(OFF_INFO.is_multiple_of(2) && INFO_STRIDE.is_multiple_of(2));
    assert!(core::mem::align_of::<RegionHeader>() <= 4096);
    assert!(OFF_SPANS.is_multiple_of(core::mem::align_of::<SpanEntry>()));
    assert!(OFF_FREE_MAP.is_multiple_of(8) && OFF_COMMITTED_MAP.is_multiple_of(8) && OFF_LIVE.is_multiple_of(8));
    assert!(OFF_CACHES.is_multiple_of(core::mem::align_of::<ThreadCache>()));
    assert!(core::mem::size_of::<ThreadCache>().is_multiple_of(core::mem::align_of::<ThreadCache>()));
};

impl<'h> Region<'h> {
    /// # Safety
    /// `base` is the base of a slot (aligned to `SLOT_SIZE`) whose pieces under `extent`
    /// (`Extent::pieces`) stay mapped readable and writable for `'h`.
    #[inline]
    pub(crate) unsafe fn new(base: usize, extent: Extent) -> Region<'h> {
        Region { base, extent, _heap: PhantomData }
    }

    #[inline]
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// How far the region was mapped when this view was made.
    #[inline]
    pub(crate) fn extent(&self) -> Extent {
        self.extent
    }

    /// Whether span `index` is a data span within the mapped part.
    #[inline]
    fn mapped_span(&self, index: usize) -> bool {
        (FIRST_DATA_SPAN..self.extent.spans.min(SPANS_PER_REGION)).contains(&index)
    }

    #[inline]
    pub(crate) fn header(&self) -> &'h RegionHeader {
        // SAFETY: the header is at the region's base, which is page aligned and mapped
        // readable and writable for 'h (type invariant); all-zero bytes are a valid header.
        unsafe { &*(self.base as *const RegionHeader) }
    }

    /// The span-table entry of data span `index`, if mapped.
    #[inline]
    pub(crate) fn span(&self, index: usize) -> Option<&'h SpanEntry> {
        if !self.mapped_span(index) {
            return None;
        }
        // SAFETY: the entry of a data span below the extent lies in the mapped part of the
        // span table (Extent::pieces), inside the slot (checked above), aligned; any bytes
        // are valid atomics.
        Some(unsafe { &*((self.base + OFF_SPANS + index * core::mem::size_of::<SpanEntry>()) as *const SpanEntry) })
    }

    /// One bit per span: in the pool.
    #[inline]
    pub(crate) fn free_map(&self) -> &'h [AtomicU64] {
        // SAFETY: as for `spans`: SPANS_PER_REGION bits at OFF_FREE_MAP, inside the region.
        unsafe { core::slice::from_raw_parts((self.base + OFF_FREE_MAP) as *const AtomicU64, SPANS_PER_REGION / 64) }
    }

    /// One bit per span: in the pool with its pages still committed.
    #[inline]
    pub(crate) fn committed_map(&self) -> &'h [AtomicU64] {
        // SAFETY: as for `free_map`, at OFF_COMMITTED_MAP.
        unsafe {
            core::slice::from_raw_parts((self.base + OFF_COMMITTED_MAP) as *const AtomicU64, SPANS_PER_REGION / 64)
        }
    }

    /// The live bitmap of span `index`.
    #[inline]
    pub(crate) fn live(&self, index: usize) -> Option<&'h [AtomicU64; BITMAP_WORDS]> {
        if !self.mapped_span(index) {
            return None;
        }
        let addr = self.base + OFF_LIVE + index * BITMAP_WORDS * 8;
        // SAFETY: a data span below the extent: the 512 bytes lie in the mapped part of the
        // live-bitmap area; 8-byte aligned; any bytes are valid atomics.
        Some(unsafe { &*(addr as *const [AtomicU64; BITMAP_WORDS]) })
    }

    /// The block info of span `index`: one `u16` per block.
    #[inline]
    pub(crate) fn info(&self, index: usize) -> Option<&'h [AtomicU16; INFO_STRIDE / 2]> {
        if !self.mapped_span(index) {
            return None;
        }
        let addr = self.base + OFF_INFO + index * INFO_STRIDE;
        // SAFETY: a data span below the extent: the INFO_STRIDE bytes lie in the mapped part
        // of the info area (checked above); 2-byte aligned; any bytes are valid atomics.
        Some(unsafe { &*(addr as *const [AtomicU16; INFO_STRIDE / 2]) })
    }

    /// The mapped part of the thread-cache table.
    #[inline]
    pub(crate) fn caches(&self) -> &'h [ThreadCache] {
        // SAFETY: the first `extent.caches` (at most THREAD_CACHES) caches at OFF_CACHES lie
        // in the mapped part of the cache area, inside the slot (checked above), aligned;
        // any bytes are valid (atomics only).
        unsafe {
            core::slice::from_raw_parts(
                (self.base + OFF_CACHES) as *const ThreadCache,
                self.extent.caches.min(THREAD_CACHES),
            )
        }
    }
}

/// Sets `len` bytes at `addr` to zero.
///
/// # Safety
/// The range is inside a mapped region and no one else reads or writes it meanwhile (a block
/// the caller just allocated).
#[inline]
pub(crate) unsafe fn zero(addr: usize, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len) }
}

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
/// Both ranges are mapped, do not overlap, `dst` belongs to the caller alone (just allocated)
/// and nobody writes `src` meanwhile (the caller's live block).
#[inline]
pub(crate) unsafe fn copy(src: usize, dst: usize, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) }
}

/// Copies the page at `src` to `dst` unless it is all zeroes (then `dst`, fresh anonymous
/// memory, is left untouched and stays unpopulated). The source is read with atomic loads:
/// other threads may be writing it.
///
/// # Safety
/// Both pages are mapped, page aligned; `dst` belongs to the caller alone.
pub(crate) unsafe fn copy_page_if_nonzero(src: usize, dst: usize) {
    const WORDS: usize = crate::geometry::PAGE_SIZE / 8;
    // SAFETY: `src` is a mapped, aligned page (caller); AtomicU64 views of it are sound
    // whatever other threads do.
    let from = unsafe { &*(src as *const [AtomicU64; WORDS]) };
    if from.iter().all(|w| w.load(core::sync::atomic::Ordering::Relaxed) == 0) {
        return;
    }
    for (i, w) in from.iter().enumerate() {
        // SAFETY: `dst` is a mapped page the caller owns.
        unsafe { ((dst as *mut u64).add(i)).write(w.load(core::sync::atomic::Ordering::Relaxed)) };
    }
}
