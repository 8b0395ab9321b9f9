//! Which parts of a region's slot are mapped. A region keeps its whole slot as its address
//! range (every offset of `layout` stands), but maps only what its spans and thread caches
//! in use need, plus some headroom, and grows the mappings in place when it carves beyond
//! them: address space counts against `RLIMIT_AS` whether touched or not (vsftpd sets
//! 100 MB in its session processes), and a 64 GiB reservation per region exhausted it.
//!
//! An [`Extent`] says how far a region is mapped: its span-indexed areas (span table, live
//! bitmaps, block info, data) for spans `FIRST_DATA_SPAN..spans`, its first `caches`
//! thread caches, and always the header and the free-span maps. The mapped ranges are a
//! function of the extent alone, so a successor that reads the extent from the old
//! region's header maps exactly what the old process mapped.

use crate::class::BITMAP_WORDS;
use crate::geometry::{PAGE_SIZE, SPANS_PER_REGION, SPAN_SIZE};
use crate::layout::{
    SpanEntry, ThreadCache, FIRST_DATA_SPAN, INFO_STRIDE, OFF_CACHES, OFF_COMMITTED_MAP, OFF_DATA, OFF_FREE_MAP,
    OFF_INFO, OFF_LIVE, OFF_SPANS, THREAD_CACHES,
};

/// Spans are mapped in steps of this many (8 MiB of data): every span-indexed area then
/// grows by whole pages.
pub const GROW_SPANS: usize = 128;
/// The largest step a growth takes when it may (64 MiB of data); a step that the
/// address-space limit refuses is retried with just what is needed.
const MAX_STEP_SPANS: usize = 1024;
/// Thread caches are mapped in steps of this many (about 300 KiB).
pub const CACHE_STEP: usize = 16;

const _: () = {
    assert!((GROW_SPANS * core::mem::size_of::<SpanEntry>()).is_multiple_of(PAGE_SIZE));
    assert!((GROW_SPANS * BITMAP_WORDS * 8).is_multiple_of(PAGE_SIZE));
    assert!((GROW_SPANS * INFO_STRIDE).is_multiple_of(PAGE_SIZE));
    assert!(FIRST_DATA_SPAN.is_multiple_of(GROW_SPANS) && SPANS_PER_REGION.is_multiple_of(GROW_SPANS));
    assert!(OFF_SPANS.is_multiple_of(PAGE_SIZE) && OFF_FREE_MAP.is_multiple_of(PAGE_SIZE));
    assert!(OFF_LIVE.is_multiple_of(PAGE_SIZE) && OFF_CACHES.is_multiple_of(PAGE_SIZE));
    assert!(OFF_INFO.is_multiple_of(PAGE_SIZE) && OFF_DATA.is_multiple_of(PAGE_SIZE));
    assert!(THREAD_CACHES.is_multiple_of(CACHE_STEP));
};

/// How far a region is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Spans below this are mapped (data and their metadata).
    pub spans: usize,
    /// Thread caches below this are mapped.
    pub caches: usize,
}

/// The areas of a region, in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Header,
    SpanTable,
    FreeMaps,
    Live,
    Caches,
    Info,
    Data,
}

const AREAS: [Area; 7] =
    [Area::Header, Area::SpanTable, Area::FreeMaps, Area::Live, Area::Caches, Area::Info, Area::Data];

/// The part of an area of `stride` bytes per span at `offset` that spans
/// `FIRST_DATA_SPAN..spans` use.
const fn per_span(offset: usize, stride: usize, spans: usize) -> (usize, usize) {
    (offset + FIRST_DATA_SPAN * stride, (offset + spans * stride).next_multiple_of(PAGE_SIZE))
}

impl Area {
    /// The offsets `[start, end)` of the area's mapped part under `e`.
    fn range(self, e: Extent) -> (usize, usize) {
        match self {
            Area::Header => (0, OFF_SPANS),
            Area::SpanTable => per_span(OFF_SPANS, core::mem::size_of::<SpanEntry>(), e.spans),
            Area::FreeMaps => (OFF_FREE_MAP, (OFF_COMMITTED_MAP + SPANS_PER_REGION / 8).next_multiple_of(PAGE_SIZE)),
            Area::Live => per_span(OFF_LIVE, BITMAP_WORDS * 8, e.spans),
            Area::Caches => {
                (OFF_CACHES, (OFF_CACHES + e.caches * core::mem::size_of::<ThreadCache>()).next_multiple_of(PAGE_SIZE))
            }
            Area::Info => per_span(OFF_INFO, INFO_STRIDE, e.spans),
            Area::Data => (OFF_DATA, e.spans * SPAN_SIZE),
        }
    }
}

impl Extent {
    /// What a new region maps: 8 MiB of data spans and 16 thread caches (about 10 MiB in all).
    pub const INITIAL: Extent = Extent { spans: FIRST_DATA_SPAN + GROW_SPANS, caches: CACHE_STEP };

    /// Whether this is an extent a region can have (a header may hold anything).
    pub fn is_valid(self) -> bool {
        self.spans > FIRST_DATA_SPAN
            && self.spans <= SPANS_PER_REGION
            && self.spans.is_multiple_of(GROW_SPANS)
            && self.caches > 0
            && self.caches <= THREAD_CACHES
            && self.caches.is_multiple_of(CACHE_STEP)
    }

    /// The mapped ranges as offsets in the region, in increasing order, none empty.
    pub fn pieces(self) -> impl Iterator<Item = (usize, usize)> + Clone {
        AREAS.into_iter().map(move |a| a.range(self)).filter(|(s, e)| s < e)
    }

    /// The mapped ranges that intersect `[start, end)` (offsets), clipped to it.
    pub fn pieces_within(self, start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
        self.pieces().map(move |(s, e)| (s.max(start), e.min(end))).filter(|(s, e)| s < e)
    }

    /// Bytes mapped.
    pub fn bytes(self) -> usize {
        self.pieces().map(|(s, e)| e - s).sum()
    }

    /// For each area, the range `[old end, new end)` that growing from `self` to `to` maps
    /// (offsets), skipping areas that do not grow.
    pub(crate) fn growth(self, to: Extent) -> impl Iterator<Item = (usize, usize)> {
        AREAS.into_iter().map(move |a| (a.range(self).1, a.range(to).1)).filter(|(old, new)| old < new)
    }

    /// The extents to try, most generous first, for spans below `needed` to be mapped:
    /// a step in proportion to what is mapped already (fewer growths for a large heap),
    /// then just what is needed.
    pub(crate) fn span_targets(self, needed: usize) -> [Extent; 2] {
        let least = needed.next_multiple_of(GROW_SPANS).clamp(self.spans, SPANS_PER_REGION);
        let step = ((self.spans - FIRST_DATA_SPAN) / 2).next_multiple_of(GROW_SPANS).clamp(GROW_SPANS, MAX_STEP_SPANS);
        let generous = (self.spans + step).max(least).min(SPANS_PER_REGION);
        [Extent { spans: generous, ..self }, Extent { spans: least, ..self }]
    }

    /// Packed into one word (spans low, caches high), 0 for none.
    pub(crate) fn pack(this: Option<Extent>) -> u64 {
        this.map_or(0, |e| e.spans as u64 | (e.caches as u64) << 32)
    }

    /// The extent `pack` stored (only valid extents are stored: this is on the path of
    /// every `free`, so it checks nothing else).
    #[inline]
    pub(crate) fn unpack(word: u64) -> Option<Extent> {
        (word != 0).then_some(Extent { spans: (word & 0xffff_ffff) as usize, caches: (word >> 32) as usize })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn pieces_are_ordered_disjoint_page_aligned_and_small_at_first() {
        for e in [Extent::INITIAL, Extent { spans: SPANS_PER_REGION, caches: THREAD_CACHES }] {
            assert!(e.is_valid());
            let pieces: Vec<_> = e.pieces().collect();
            assert_eq!(pieces.len(), 7);
            for w in pieces.windows(2) {
                assert!(w[0].1 <= w[1].0, "{pieces:x?}");
            }
            for (s, end) in &pieces {
                assert!(s.is_multiple_of(PAGE_SIZE) && end.is_multiple_of(PAGE_SIZE));
                assert!(*end <= crate::geometry::SLOT_SIZE);
            }
        }
        let initial = Extent::INITIAL.bytes();
        assert!(initial < 12 << 20, "{initial}");
        assert!(initial > 8 << 20);
    }

    #[test]
    fn growth_covers_exactly_the_difference() {
        let from = Extent::INITIAL;
        for to in [Extent { spans: from.spans + GROW_SPANS, ..from }, Extent { caches: 2 * CACHE_STEP, ..from }] {
            let grown: usize = from.growth(to).map(|(s, e)| e - s).sum();
            assert_eq!(grown, to.bytes() - from.bytes());
            // every growth starts where a piece of `from` ends
            for (s, _) in from.growth(to) {
                assert!(from.pieces().any(|(_, end)| end == s));
            }
        }
    }

    #[test]
    fn span_targets_grow_in_proportion_and_never_past_the_slot() {
        let e = Extent::INITIAL;
        let [generous, least] = e.span_targets(e.spans + 1);
        assert_eq!(least.spans, e.spans + GROW_SPANS);
        assert_eq!(generous.spans, e.spans + GROW_SPANS);
        let big = Extent { spans: FIRST_DATA_SPAN + 100 * GROW_SPANS, ..e };
        let [generous, least] = big.span_targets(big.spans + 1);
        assert_eq!(least.spans, big.spans + GROW_SPANS);
        assert_eq!(generous.spans, big.spans + MAX_STEP_SPANS);
        let [generous, least] = big.span_targets(SPANS_PER_REGION);
        assert_eq!((generous.spans, least.spans), (SPANS_PER_REGION, SPANS_PER_REGION));
        assert!(generous.is_valid() && least.is_valid());
    }

    #[test]
    fn packing_round_trips_and_refuses_nonsense() {
        assert_eq!(Extent::unpack(Extent::pack(Some(Extent::INITIAL))), Some(Extent::INITIAL));
        assert_eq!(Extent::unpack(0), None);
        assert!(!Extent { spans: FIRST_DATA_SPAN + 1, caches: 16 }.is_valid());
        assert!(!Extent { spans: SPANS_PER_REGION, caches: 0 }.is_valid());
        assert!(!Extent { spans: SPANS_PER_REGION + GROW_SPANS, caches: 16 }.is_valid());
    }
}
