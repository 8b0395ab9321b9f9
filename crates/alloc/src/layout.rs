//! The region layout: what lives at which offset from a region's base. Everything here is
//! `#[repr(C)]`, made of atomics only (any thread, and after adoption any process, may read
//! it), and position-dependent but process-independent: a reference is a span index or an
//! absolute address inside the window, never a pointer into process-local memory. So a
//! process that maps a region at its address can read and adopt it as it is.
//!
//! ```text
//! +0          RegionHeader (magic, layout version, locks, high-water mark, partial lists,
//!             segment table, thread-cache slot bitmap)
//! +64 KiB     span table: 32 B per 64 KiB span (1 Mi spans: 32 MiB)
//! +32.06 MiB  free-span bitmap (1 bit per span)
//! +32.19 MiB  committed-free-span bitmap (free spans whose pages were not given back)
//! +33 MiB     live bitmaps: 512 B per span, one bit per 16-byte block
//! +545 MiB    thread caches: THREAD_CACHES x ThreadCache (19 KiB each)
//! +1 GiB      block info: 8 KiB per span, a u16 per block (what the program asked for)
//! +16 GiB     data spans (span index FIRST_DATA_SPAN onwards)
//! ```
//! Only the parts for the spans and caches in use are mapped (see `extent`); the header
//! says how far (`mapped_spans`, `mapped_caches`).

use crate::class::{BIN_CAPACITY, BITMAP_WORDS, CLASSES};
use crate::geometry::{SLOT_SIZE, SPANS_PER_REGION, SPAN_SIZE};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// "mcr-heap" in the first word of every region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"mcr-heap");
/// Bumped whenever anything in this file changes: a region of another layout is refused.
pub const LAYOUT_VERSION: u64 = 3;

/// Thread caches per region.
pub const THREAD_CACHES: usize = 4096;
/// Segments per region (see `RegionHeader::segments`).
pub const MAX_SEGMENTS: usize = 64;

pub const OFF_SPANS: usize = 64 * 1024;
pub const OFF_FREE_MAP: usize = OFF_SPANS + SPANS_PER_REGION * core::mem::size_of::<SpanEntry>();
pub const OFF_COMMITTED_MAP: usize = OFF_FREE_MAP + SPANS_PER_REGION / 8;
pub const OFF_LIVE: usize = (OFF_COMMITTED_MAP + SPANS_PER_REGION / 8).next_multiple_of(1 << 20);
pub const OFF_CACHES: usize = OFF_LIVE + SPANS_PER_REGION * BITMAP_WORDS * 8;
pub const OFF_INFO: usize = 1 << 30;
/// Bytes of block info per span: a `u16` per block of the smallest class.
pub const INFO_STRIDE: usize = SPAN_SIZE / 16 * 2;
pub const OFF_DATA: usize = 16 << 30;
/// The first span that holds blocks; spans below hold the metadata.
pub const FIRST_DATA_SPAN: usize = OFF_DATA / SPAN_SIZE;

const _: () = {
    assert!(core::mem::size_of::<RegionHeader>() <= OFF_SPANS);
    assert!(core::mem::size_of::<SpanEntry>() == 32);
    assert!(OFF_CACHES + THREAD_CACHES * core::mem::size_of::<ThreadCache>() <= OFF_INFO);
    assert!(OFF_INFO + SPANS_PER_REGION * INFO_STRIDE <= OFF_DATA);
    assert!(OFF_DATA < SLOT_SIZE);
    assert!(OFF_LIVE.is_multiple_of(4096) && OFF_CACHES.is_multiple_of(4096));
    assert!(THREAD_CACHES.is_multiple_of(64));
};

/// The first bytes of a region.
#[repr(C)]
pub struct RegionHeader {
    pub magic: AtomicU64,
    pub layout: AtomicU64,
    /// The region's own base address (a region is only valid there).
    pub base: AtomicU64,
    /// How many times a process adopted this region (diagnostics).
    pub adoptions: AtomicU64,
    /// First span never carved: everything from here to the end of the slot reads as zero.
    pub hwm: AtomicU32,
    /// Guards the span pool (free and committed maps, counts, hwm) and the segment table.
    pub span_lock: AtomicU32,
    /// Spans below the hwm in the pool.
    pub free_spans: AtomicU32,
    /// Of which still committed (their pages were not given back yet).
    pub committed_free_spans: AtomicU32,
    /// Word of the free map where the lowest free span may be.
    pub free_hint: AtomicU32,
    /// Segments in `segments`.
    pub segment_count: AtomicU32,
    /// How far the owning process maps the region (`extent::Extent`): spans below
    /// `mapped_spans` and their metadata, the first `mapped_caches` thread caches. Written
    /// after the mapping grew, so a reader that sees a value finds it mapped.
    pub mapped_spans: AtomicU32,
    pub mapped_caches: AtomicU32,
    /// Per class: guards the partial list (links and states of listed spans).
    pub class_lock: [AtomicU32; CLASSES],
    /// Per class: first span of the list of spans with free blocks that no thread owns (0 = none).
    pub partial: [AtomicU32; CLASSES],
    /// First span of each segment: segment `i` covers spans `segments[i]..segments[i+1]` (the
    /// last to the end of the slot). Each segment is backed by its own memfd (file offset =
    /// offset in the region), so a fork can freeze the ones in use and start a fresh one.
    pub segments: [AtomicU32; MAX_SEGMENTS],
    /// One bit per thread cache in use.
    pub caches_in_use: [AtomicU64; THREAD_CACHES / 64],
}

/// What a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// In the pool (or never carved).
    Free = 0,
    /// Carved into blocks of one size class.
    Small = 1,
    /// First span of a large run.
    LargeHead = 2,
    /// Another span of a large run.
    LargeTail = 3,
}

impl Kind {
    pub fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Small,
            2 => Kind::LargeHead,
            3 => Kind::LargeTail,
            _ => Kind::Free,
        }
    }
}

/// Who may claim blocks of a small span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// No owner, not listed: it was full when its owner let it go.
    Full = 0,
    /// A thread cache's current span: only that cache claims blocks from it.
    Owned = 1,
    /// On its class's partial list.
    Listed = 2,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        match v {
            1 => State::Owned,
            2 => State::Listed,
            _ => State::Full,
        }
    }
}

/// Span flag: the span's bytes are known to read as zero (never used, or given back in a way
/// that zeroes), so `calloc` of a large run need not clear it.
pub const FLAG_ZERO: u8 = 1;

/// One entry of the span table.
#[repr(C)]
pub struct SpanEntry {
    pub kind: AtomicU8,
    pub class: AtomicU8,
    pub flags: AtomicU8,
    _pad: AtomicU8,
    /// Small: `State` in the low byte, above it a sequence number bumped each time the span
    /// is carved anew, so that a compare-exchange from a state read earlier cannot succeed on
    /// a later life of the span (ABA).
    pub state: AtomicU32,
    /// Small: blocks whose live bit is set (blocks in thread caches included).
    pub live: AtomicU32,
    /// Small: next span on the partial list (0 = end). Large head: run length in spans.
    /// Large tail: distance back to the head.
    pub link: AtomicU32,
    /// Small: previous span on the partial list (0 = this is the head).
    pub prev: AtomicU32,
    /// Large head: the block info (see [`BlockInfo`](crate::BlockInfo)): bytes asked for
    /// (low, high word), then flags.
    pub large_requested: [AtomicU32; 2],
    pub large_flags: AtomicU32,
}

/// The state in a span's state word.
#[inline]
pub fn state_of(word: u32) -> State {
    State::from_u8(word as u8)
}

/// The state word `word` with its state replaced by `state` (same life of the span).
#[inline]
pub fn with_state(word: u32, state: State) -> u32 {
    (word & !0xff) | state as u32
}

/// The state word of the next life of a span whose word is `word`.
#[inline]
pub fn next_life(word: u32, state: State) -> u32 {
    (word & !0xff).wrapping_add(0x100) | state as u32
}

/// A thread's cache of free blocks per class.
#[repr(C)]
pub struct Bin {
    pub count: AtomicU32,
    _pad: AtomicU32,
    /// Address of the span this cache claims blocks from (0 = none).
    pub current: AtomicU64,
    /// A stack of free blocks: `blocks[..count]`, the top is the most recently freed.
    pub blocks: [AtomicU64; BIN_CAPACITY],
}

/// A thread cache, in the region of the process that created it so that a successor can
/// give its blocks back (adoption) and a fork child can drop the caches of threads it does
/// not have.
///
/// The runtime holds a `&ThreadCache` per thread (in its own TLS) and passes it to every
/// allocation call. A cache serves one thread at a time and must not be re-entered (a
/// signal handler that allocates while the same thread is inside the allocator must use
/// the shared path, `None`).
#[repr(C)]
pub struct ThreadCache {
    /// Base of the region that holds this cache.
    pub(crate) region: AtomicU64,
    /// Index in that region's cache table.
    pub(crate) index: AtomicU32,
    /// Thread id of the owner (diagnostics).
    pub(crate) tid: AtomicU32,
    pub(crate) bins: [Bin; CLASSES],
}
