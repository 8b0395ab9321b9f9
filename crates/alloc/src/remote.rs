//! Reading a region of another process from its bytes alone: the live blocks and what the
//! program asked for, from the span table, the live bitmaps and the block info at their
//! fixed offsets, never from the blocks themselves. This is how mcr's update lists the old
//! version's heap (through `/proc/PID/mem` or `process_vm_readv`) without mapping it, and
//! how it asks about one block of the new version.
//!
//! A region another process writes meanwhile may be read half-updated; the update reads a
//! quiesced process, and every value read is bounds-checked, so bad bytes give wrong
//! answers, never a panic.

use crate::api::{large_info, small_info, BlockInfo};
use crate::class::{block_index, blocks_per_span, size_of_class, BITMAP_WORDS, CLASSES};
use crate::extent::Extent;
use crate::geometry::{slot_base, slot_of, span_addr, span_index, SPANS_PER_REGION, SPAN_SIZE};
use crate::layout::MAX_SEGMENTS;
use crate::layout::{
    Kind, RegionHeader, SpanEntry, FIRST_DATA_SPAN, INFO_STRIDE, LAYOUT_VERSION, MAGIC, OFF_INFO, OFF_LIVE, OFF_SPANS,
};
use core::mem::{offset_of, size_of};

/// Read access to another address space.
pub trait Source {
    /// Fills `buf` with the bytes at `addr`; false when they cannot be read.
    fn read(&self, addr: usize, buf: &mut [u8]) -> bool;
}

/// Why a slot holds no region this engine can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("the header of the region in slot {slot} cannot be read")]
    Unreadable { slot: usize },
    #[error("slot {slot} holds no mcr heap region (first word {magic:#x})")]
    NotARegion { slot: usize, magic: u64 },
    #[error("the region in slot {slot} has layout version {found}, this engine reads version {LAYOUT_VERSION}")]
    Layout { slot: usize, found: u64 },
}

fn u64_at(src: &dyn Source, addr: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    src.read(addr, &mut b).then(|| u64::from_ne_bytes(b))
}

fn u32_in(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(off..off + 4) {
        b.copy_from_slice(s);
    }
    u32::from_ne_bytes(b)
}

/// A span entry as read.
#[derive(Clone, Copy)]
struct Entry {
    kind: Kind,
    class: usize,
    link: usize,
    requested: [u32; 2],
    flags: u32,
}

impl Entry {
    fn parse(b: &[u8]) -> Entry {
        let byte = |off: usize| b.get(off).copied().unwrap_or(0);
        Entry {
            kind: Kind::from_u8(byte(offset_of!(SpanEntry, kind))),
            class: byte(offset_of!(SpanEntry, class)) as usize,
            link: u32_in(b, offset_of!(SpanEntry, link)) as usize,
            requested: [
                u32_in(b, offset_of!(SpanEntry, large_requested)),
                u32_in(b, offset_of!(SpanEntry, large_requested) + 4),
            ],
            flags: u32_in(b, offset_of!(SpanEntry, large_flags)),
        }
    }
}

const ENTRY: usize = size_of::<SpanEntry>();

fn entry(src: &dyn Source, base: usize, index: usize) -> Option<Entry> {
    let mut b = [0u8; ENTRY];
    src.read(base + OFF_SPANS + index * ENTRY, &mut b).then(|| Entry::parse(&b))
}

fn info_word(src: &dyn Source, base: usize, span: usize, block: usize) -> Option<u16> {
    let mut b = [0u8; 2];
    src.read(base + OFF_INFO + span * INFO_STRIDE + block * 2, &mut b).then(|| u16::from_ne_bytes(b))
}

/// Checks the header of the region in `slot`; its high-water mark (first span never used).
pub fn region_hwm(src: &dyn Source, slot: usize) -> Result<usize, RemoteError> {
    let base = slot_base(slot);
    let magic = u64_at(src, base + offset_of!(RegionHeader, magic)).ok_or(RemoteError::Unreadable { slot })?;
    if magic != MAGIC {
        return Err(RemoteError::NotARegion { slot, magic });
    }
    let found = u64_at(src, base + offset_of!(RegionHeader, layout)).ok_or(RemoteError::Unreadable { slot })?;
    if found != LAYOUT_VERSION {
        return Err(RemoteError::Layout { slot, found });
    }
    let mut b = [0u8; 4];
    if !src.read(base + offset_of!(RegionHeader, hwm), &mut b) {
        return Err(RemoteError::Unreadable { slot });
    }
    Ok((u32::from_ne_bytes(b) as usize).clamp(FIRST_DATA_SPAN, SPANS_PER_REGION))
}

/// How another process maps its region in a slot: its extent and where each of its
/// segments starts (span index in the region). What a successor needs to map the region at
/// the same address (`Heap::map_segment`) before the update brings the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionLayout {
    pub extent: Extent,
    pub segment_count: usize,
    pub segments: [u32; MAX_SEGMENTS],
}

impl RegionLayout {
    /// The start span of each segment, in order.
    pub fn segment_starts(&self) -> &[u32] {
        self.segments.get(..self.segment_count).unwrap_or_default()
    }
}

/// The layout of the region in `slot` of the address space `src` (header checked).
pub fn region_layout(src: &dyn Source, slot: usize) -> Result<RegionLayout, RemoteError> {
    region_hwm(src, slot)?;
    let base = slot_base(slot);
    let mut counts = [0u8; 12];
    if !src.read(base + offset_of!(RegionHeader, segment_count), &mut counts) {
        return Err(RemoteError::Unreadable { slot });
    }
    let segment_count = u32_in(&counts, 0) as usize;
    let extent = Extent { spans: u32_in(&counts, 4) as usize, caches: u32_in(&counts, 8) as usize };
    if !(1..=MAX_SEGMENTS).contains(&segment_count) || !extent.is_valid() {
        return Err(RemoteError::Unreadable { slot });
    }
    let mut raw = [0u8; MAX_SEGMENTS * 4];
    let raw = raw.get_mut(..segment_count * 4).unwrap_or_default();
    if !src.read(base + offset_of!(RegionHeader, segments), raw) {
        return Err(RemoteError::Unreadable { slot });
    }
    let mut segments = [0u32; MAX_SEGMENTS];
    for (i, s) in segments.iter_mut().take(segment_count).enumerate() {
        *s = u32_in(raw, i * 4);
    }
    Ok(RegionLayout { extent, segment_count, segments })
}

/// The live block containing `addr` in the address space `src`, if `addr` is in a region.
pub fn block_of(src: &dyn Source, addr: usize) -> Option<BlockInfo> {
    let base = slot_base(slot_of(addr)?);
    let index = span_index(addr);
    if index < FIRST_DATA_SPAN {
        return None;
    }
    // Only spans below the high-water mark hold blocks, and only they are sure to be mapped
    // (a region maps its slot only in part): nothing above it is read.
    let mut hwm = [0u8; 4];
    if !src.read(base + offset_of!(RegionHeader, hwm), &mut hwm) || index >= u32::from_ne_bytes(hwm) as usize {
        return None;
    }
    let e = entry(src, base, index)?;
    match e.kind {
        Kind::Small => {
            if e.class >= CLASSES {
                return None;
            }
            let block = block_index(e.class, addr & (SPAN_SIZE - 1));
            if block >= blocks_per_span(e.class) {
                return None;
            }
            let word = u64_at(src, base + OFF_LIVE + index * BITMAP_WORDS * 8 + block / 64 * 8)?;
            if word & (1 << (block % 64)) == 0 {
                return None;
            }
            let size = size_of_class(e.class);
            let start = span_addr(base, index) + block * size;
            Some(small_info(start, size, info_word(src, base, index, block)?))
        }
        Kind::LargeHead => large(base, index, e),
        Kind::LargeTail => {
            let head = index.checked_sub(e.link).filter(|&h| e.link > 0 && h >= FIRST_DATA_SPAN)?;
            let h = entry(src, base, head)?;
            (h.kind == Kind::LargeHead && head + h.link > index).then(|| large(base, head, h)).flatten()
        }
        Kind::Free => None,
    }
}

fn large(base: usize, head: usize, e: Entry) -> Option<BlockInfo> {
    (e.link > 0).then(|| large_info(span_addr(base, head), e.link * SPAN_SIZE, e.requested[0], e.requested[1], e.flags))
}

/// A span of small blocks as [`visit_spans`] reads it: slot `i` (below `slots`) is the
/// block at `start + i * size`, live when bit `i` of `live` is set; `info` holds each
/// slot's info word ([`small_block`]). Slices of the visitor's own buffers, valid during
/// the call.
pub struct SmallSpan<'a> {
    pub start: usize,
    pub size: usize,
    pub slots: usize,
    /// Live bits, 64 per little-endian word, bits at or above `slots` cleared.
    pub live: &'a [u64],
    /// `slots` info words.
    pub info: &'a [u16],
}

/// The startup bit of a small block's info word ([`SmallSpan::info`]).
pub const INFO_STARTUP: u16 = crate::api::INFO_STARTUP;

/// What the info word of a small block of `usable` bytes says: (bytes requested, made at
/// startup).
pub fn small_block(usable: usize, word: u16) -> (usize, bool) {
    let b = small_info(0, usable, word);
    (b.requested, b.startup)
}

/// Calls `small` for every span of small blocks of the region in `slot` of `src` that holds
/// a live block and `large` for every live large block, in address order, and
/// `span(start, len)` for every span run that holds blocks (what a reader may want to copy
/// in bulk). Reads only metadata: 32 bytes per span used, 512 bytes of live bits and two
/// bytes per slot of each small span. Blocks parked in the process's thread caches count
/// as live.
pub fn visit_spans(
    src: &dyn Source,
    slot: usize,
    mut small: impl FnMut(SmallSpan<'_>),
    mut large_block: impl FnMut(BlockInfo),
    mut span: impl FnMut(usize, usize),
) -> Result<(), RemoteError> {
    let hwm = region_hwm(src, slot)?;
    let base = slot_base(slot);
    const BATCH: usize = 64;
    let mut entries = [0u8; BATCH * ENTRY];
    let mut live_bytes = [0u8; BITMAP_WORDS * 8];
    let mut live = [0u64; BITMAP_WORDS];
    let mut info_bytes = [0u8; INFO_STRIDE];
    let mut info = [0u16; INFO_STRIDE / 2];
    let (mut batch_start, mut batch_len) = (0, 0);
    let mut s = FIRST_DATA_SPAN;
    while s < hwm {
        if !(batch_start..batch_start + batch_len).contains(&s) {
            batch_len = (hwm - s).min(BATCH);
            if !src.read(base + OFF_SPANS + s * ENTRY, entries.get_mut(..batch_len * ENTRY).unwrap_or_default()) {
                return Err(RemoteError::Unreadable { slot });
            }
            batch_start = s;
        }
        let at = (s - batch_start) * ENTRY;
        let e = Entry::parse(entries.get(at..at + ENTRY).unwrap_or_default());
        match e.kind {
            Kind::Small if e.class < CLASSES => {
                let n = blocks_per_span(e.class).min(INFO_STRIDE / 2);
                let words = n.div_ceil(64);
                let info_bytes = info_bytes.get_mut(..n * 2).unwrap_or_default();
                if src.read(base + OFF_LIVE + s * BITMAP_WORDS * 8, &mut live_bytes)
                    && src.read(base + OFF_INFO + s * INFO_STRIDE, info_bytes)
                {
                    for (w, chunk) in live.iter_mut().zip(live_bytes.chunks_exact(8)).take(words) {
                        *w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                    }
                    // Bits past the last slot are not blocks.
                    if let Some(last) = live.get_mut(words.wrapping_sub(1)).filter(|_| !n.is_multiple_of(64)) {
                        *last &= (1u64 << (n % 64)) - 1;
                    }
                    let any = live.iter().take(words).fold(0, |a, w| a | w);
                    if any != 0 {
                        for (i, c) in info.iter_mut().zip(info_bytes.chunks_exact(2)) {
                            *i = u16::from_ne_bytes(c.try_into().unwrap_or([0; 2]));
                        }
                        let start = span_addr(base, s);
                        small(SmallSpan {
                            start,
                            size: size_of_class(e.class),
                            slots: n,
                            live: live.get(..words).unwrap_or_default(),
                            info: info.get(..n).unwrap_or_default(),
                        });
                        span(start, SPAN_SIZE);
                    }
                }
                s += 1;
            }
            Kind::LargeHead if e.link > 0 => {
                if let Some(b) = large(base, s, e) {
                    span(b.start, b.requested.next_multiple_of(4096).min(b.usable));
                    large_block(b);
                }
                s += e.link;
            }
            _ => s += 1,
        }
    }
    Ok(())
}

/// Calls `f` for every live block of the region in `slot` of `src`, in address order, and
/// `span(start, len)` for every span run that holds blocks ([`visit_spans`], block by
/// block); returns how many blocks.
pub fn visit(
    src: &dyn Source,
    slot: usize,
    mut f: impl FnMut(BlockInfo),
    span: impl FnMut(usize, usize),
) -> Result<usize, RemoteError> {
    let count = core::cell::Cell::new(0);
    let f = core::cell::RefCell::new(&mut f);
    visit_spans(
        src,
        slot,
        |sp| {
            for (w, &word) in sp.live.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let word = sp.info.get(b).copied().unwrap_or(0);
                    (f.borrow_mut())(small_info(sp.start + b * sp.size, sp.size, word));
                    count.set(count.get() + 1);
                }
            }
        },
        |b| {
            (f.borrow_mut())(b);
            count.set(count.get() + 1);
        },
        span,
    )?;
    Ok(count.get())
}
