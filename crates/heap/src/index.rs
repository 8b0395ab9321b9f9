//! The live blocks of a process, listed from its allocator's metadata, with lookup by
//! any address inside a block (a pointer into the middle of a buffer finds the buffer).
//!
//! The index keeps the allocator's own description of a span of small blocks (its size
//! class, a copy of its live bits and of its per-slot info words), not an entry per block:
//! building it costs a copy of the metadata, whatever the number of blocks (an update
//! that changes no type must not pay per object, and millions of 8-byte entries cost tens
//! of milliseconds of fresh memory alone). A block's position (a dense key for tables per
//! block) is its rank among the live bits, found with a count per bitmap word.

use crate::memory::{MemoryError, ReadMemory};
use mcr_alloc::remote::{self, SmallSpan, Source};
use mcr_alloc::{BlockInfo, SLOTS};

/// A live heap block of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// Address of the first byte the program uses.
    pub addr: u64,
    /// Bytes the program asked for.
    pub size: u64,
    /// Allocated before the process completed startup.
    pub startup: bool,
}

impl Object {
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

impl From<BlockInfo> for Object {
    fn from(b: BlockInfo) -> Object {
        Object { addr: b.start as u64, size: b.requested as u64, startup: b.startup }
    }
}

/// A block listed one by one (large blocks, and indexes made from a list), in 8 bytes: its
/// offset in its 64 KiB unit (the unit is known from [`Unit`]), its startup bit and its
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packed(u64);

impl Packed {
    const SIZE_BITS: u32 = 47;
    const STARTUP: u64 = 1 << Self::SIZE_BITS;

    fn new(o: &Object) -> Packed {
        // 128 TiB: more than any process can map.
        let size = o.size.min(Self::STARTUP - 1);
        Packed(((o.addr & (UNIT_SIZE - 1)) << 48) | if o.startup { Self::STARTUP } else { 0 } | size)
    }

    fn offset(self) -> u64 {
        self.0 >> 48
    }

    /// The block, in the unit that starts at `base`.
    #[inline]
    fn at(self, base: u64) -> Object {
        Object { addr: base | self.offset(), size: self.0 & (Self::STARTUP - 1), startup: self.0 & Self::STARTUP != 0 }
    }
}

/// How a unit's blocks are kept.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An allocator span: slot `i` (below `slots`) is the block at `base + i * step`, live
    /// when bit `i` of `bits[words..]` is set; its info word is `info[info + i]`. `recip`:
    /// 2^32 / step rounded up, for the slot of an offset without a division.
    Grid { step: u32, recip: u32, slots: u32, words: u32, info: u32 },
    /// Blocks listed in `listed[at..at + count]`.
    List { at: u32 },
}

/// A 64 KiB unit of address space where blocks start.
#[derive(Debug, Clone, Copy)]
struct Unit {
    /// Its number: address >> 16.
    number: u64,
    /// The position of its first block, and how many start in it.
    first: u32,
    count: u32,
    kind: Kind,
}

impl Unit {
    fn base(&self) -> u64 {
        self.number << UNIT_SHIFT
    }

    fn end(&self) -> usize {
        self.first as usize + self.count as usize
    }
}

/// Where an iteration through a grid unit is: the bitmap word and its bits not taken yet.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    word: usize,
    bits: u64,
}

/// The blocks of a [`HeapIndex`] in address order ([`HeapIndex::range`]).
pub struct Blocks<'a> {
    index: &'a HeapIndex,
    pos: usize,
    end: usize,
    /// The unit of the block at `pos`, and where in it the next block is (`None`: not
    /// looked up yet).
    k: usize,
    cursor: Option<Cursor>,
}

impl Iterator for Blocks<'_> {
    type Item = Object;

    #[inline]
    fn next(&mut self) -> Option<Object> {
        if self.pos >= self.end {
            return None;
        }
        let units = &self.index.units;
        while units.get(self.k).is_some_and(|u| u.end() <= self.pos) {
            self.k += 1;
            self.cursor = None;
        }
        let u = units.get(self.k)?;
        let o = match u.kind {
            Kind::List { at } => self.index.listed.get(at as usize + self.pos - u.first as usize)?.at(u.base()),
            Kind::Grid { words, .. } => {
                let mut c = match self.cursor {
                    Some(c) => c,
                    None => {
                        let (word, bit) = self.index.select(u, self.pos - u.first as usize)?;
                        Cursor { word, bits: self.index.bits[word] & (u64::MAX << bit) }
                    }
                };
                while c.bits == 0 {
                    c.word += 1;
                    c.bits = *self.index.bits.get(c.word)?;
                }
                let slot = (c.word - words as usize) * 64 + c.bits.trailing_zeros() as usize;
                c.bits &= c.bits - 1;
                self.cursor = Some(c);
                self.index.slot_object(u, slot)
            }
        };
        self.pos += 1;
        Some(o)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.saturating_sub(self.pos);
        (n, Some(n))
    }
}

#[derive(Debug, Default)]
pub struct HeapIndex {
    /// Sorted by address, each with at least one block; blocks never overlap.
    units: Vec<Unit>,
    /// The live bits of the grid units.
    bits: Vec<u64>,
    /// Per word of `bits`: the position of the first block it holds (live bits before it).
    ranks: Vec<u32>,
    /// The info words of the grid units' slots.
    info: Vec<u16>,
    listed: Vec<Packed>,
    /// The positions of the startup blocks.
    startup: Vec<u32>,
    len: usize,
    /// Bytes of the heap's spans read to build the index (its blocks' memory, kept).
    pub scanned_bytes: u64,
}

/// Blocks are grouped by 64 KiB units of address (the allocator's span size) for lookup.
const UNIT_SHIFT: u32 = 16;
const UNIT_SIZE: u64 = 1 << UNIT_SHIFT;

/// Read in pieces at most this large.
const CHUNK: u64 = 1 << 20;

/// A [`ReadMemory`] as the allocator's reader wants it.
struct Reader<'m>(&'m dyn ReadMemory);

impl Source for Reader<'_> {
    fn read(&self, addr: usize, buf: &mut [u8]) -> bool {
        self.0.read(addr as u64, buf).is_ok()
    }
}

/// How the process behind `mem` maps its heap region in `slot` (checked header), if it has
/// one there.
pub(crate) fn region_layout(mem: &dyn ReadMemory, slot: usize) -> Option<remote::RegionLayout> {
    remote::region_layout(&Reader(mem), slot).ok()
}

/// The live block of the process behind `mem` that contains `addr`, from its allocator's
/// metadata.
pub fn block_at(mem: &dyn ReadMemory, addr: u64) -> Option<Object> {
    remote::block_of(&Reader(mem), usize::try_from(addr).ok()?).map(Object::from)
}

/// 2^32 / `step` rounded up: `slot_of` then divides any offset in a 64 KiB unit by `step`
/// exactly (offset < 2^16 and step <= 2^16 keep the rounding error below one).
fn recip(step: u64) -> u32 {
    (1u64 << 32).div_ceil(step.max(1)).min(u64::from(u32::MAX)) as u32
}

/// `offset / step`, for an offset in a unit, through [`recip`] of `step`.
#[inline]
fn slot_of(offset: u64, recip: u32) -> usize {
    ((offset * u64::from(recip)) >> 32) as usize
}

/// The position of the `n`-th (from 0) set bit of `w`: the byte that holds it by counts,
/// then the bit (at most 8 + 7 steps, not 63).
fn nth_set_bit(w: u64, mut n: u32) -> Option<u32> {
    for byte in 0..8 {
        let mut b = (w >> (byte * 8)) & 0xff;
        let c = b.count_ones();
        if n < c {
            for _ in 0..n {
                b &= b - 1;
            }
            return Some(byte * 8 + b.trailing_zeros());
        }
        n -= c;
    }
    None
}

#[cfg(test)]
#[test]
fn an_offset_is_divided_by_a_step_through_its_reciprocal_exactly() {
    for step in [16u64, 24, 48, 80, 112, 1008, 4096, 8192, 21845, 32768, 65536] {
        let r = recip(step);
        for offset in (0..UNIT_SIZE).step_by(7).chain([UNIT_SIZE - 1, step - 1, step]) {
            assert_eq!(slot_of(offset, r), (offset / step) as usize, "{offset} / {step}");
        }
    }
}

#[cfg(test)]
#[test]
fn nth_set_bit_finds_the_nth_set_bit() {
    for w in [1u64, 0x8000_0000_0000_0000, 0xf0f0_0000_0001_8001, u64::MAX, 0x0123_4567_89ab_cdef] {
        let bits: Vec<u32> = (0..64).filter(|b| w & (1 << b) != 0).collect();
        for (n, &b) in bits.iter().enumerate() {
            assert_eq!(nth_set_bit(w, n as u32), Some(b), "{w:#x} {n}");
        }
        assert_eq!(nth_set_bit(w, bits.len() as u32), None);
    }
    assert_eq!(nth_set_bit(0, 0), None);
}

impl HeapIndex {
    /// The live blocks of every heap region of the process behind `mem` (regions are found
    /// at their fixed places in the heap window).
    pub fn scan(mem: &dyn ReadMemory) -> Result<Self, MemoryError> {
        Self::scan_inner(mem, None)
    }

    /// Like [`HeapIndex::scan`], with the extents of the spans that hold blocks (pieces of
    /// at most 1 MiB, for a [`crate::Snapshot::lazy`]: reading a block is then a copy, not
    /// a system call per block, once its piece was read).
    pub fn scan_with_extents(mem: &dyn ReadMemory) -> Result<(Self, Vec<(u64, u64)>), MemoryError> {
        let mut extents = Vec::new();
        let idx = Self::scan_inner(mem, Some(&mut extents))?;
        Ok((idx, extents))
    }

    fn scan_inner(mem: &dyn ReadMemory, extents: Option<&mut Vec<(u64, u64)>>) -> Result<Self, MemoryError> {
        let reader = Reader(mem);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        // The allocator lists spans by address (regions by slot, spans in order): the
        // index's order comes with the listing, as long as no block starts before the
        // previous one's end (then `from_objects` sorts it out). The index, whether that
        // holds, and the end of the last block pushed: shared by the two visitors.
        let state = std::cell::RefCell::new((HeapIndex::default(), true, 0u64));
        let ordered = |start: u64, end: u64| {
            let mut s = state.borrow_mut();
            s.1 &= start >= s.2;
            s.2 = end;
        };
        for slot in 0..SLOTS {
            // A slot with no region of this process reads as nothing (unmapped, or no
            // magic): skipped.
            let _ = remote::visit_spans(
                &reader,
                slot,
                |sp| {
                    ordered(sp.start as u64, (sp.start + sp.slots * sp.size) as u64);
                    state.borrow_mut().0.push_span(&sp);
                },
                |b| {
                    let o = Object::from(b);
                    ordered(o.addr, o.end().max(o.addr + 1));
                    state.borrow_mut().0.push_listed(&[o]);
                },
                |start, len| match runs.last_mut() {
                    Some(last) if last.1 == start as u64 => last.1 += len as u64,
                    _ => runs.push((start as u64, (start + len) as u64)),
                },
            );
        }
        let (mut idx, in_order, _) = state.into_inner();
        let mut scanned = 0;
        if let Some(extents) = extents {
            for (start, end) in runs {
                let mut at = start;
                while at < end {
                    let len = (end - at).min(CHUNK);
                    extents.push((at, at + len));
                    scanned += len;
                    at += len;
                }
            }
        }
        if !in_order {
            return Ok(Self::from_objects(idx.iter().collect(), scanned));
        }
        idx.scanned_bytes = scanned;
        Ok(idx)
    }

    /// Adds a span of small blocks (after every unit already in the index).
    fn push_span(&mut self, sp: &SmallSpan<'_>) {
        let count: u32 = sp.live.iter().map(|w| w.count_ones()).sum();
        if count == 0 {
            return;
        }
        let (words, info) = (self.bits.len() as u32, self.info.len() as u32);
        let mut rank = self.len as u32;
        for &w in sp.live {
            self.bits.push(w);
            self.ranks.push(rank);
            rank += w.count_ones();
        }
        self.info.extend_from_slice(sp.info);
        let unit = Unit {
            number: sp.start as u64 >> UNIT_SHIFT,
            first: self.len as u32,
            count,
            kind: Kind::Grid {
                step: sp.size as u32,
                recip: recip(sp.size as u64),
                slots: sp.slots as u32,
                words,
                info,
            },
        };
        // Startup blocks are few: only a span whose info words have any startup bit is
        // looked at block by block.
        if sp.info.iter().fold(0, |a, &w| a | w) & remote::INFO_STARTUP != 0 {
            let (mut pos, mut k) = (self.len as u32, 0);
            for (w, &word) in sp.live.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let slot = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if sp.info.get(slot).is_some_and(|&i| i & remote::INFO_STARTUP != 0) {
                        self.startup.push(pos + k);
                    }
                    k += 1;
                }
            }
            pos += k;
            debug_assert_eq!(pos, self.len as u32 + count);
        }
        self.units.push(unit);
        self.len += count as usize;
    }

    /// Adds blocks listed one by one, sorted, not overlapping (after every block already
    /// in the index).
    fn push_listed(&mut self, objects: &[Object]) {
        let mut i = 0;
        while let Some(o) = objects.get(i) {
            let number = o.addr >> UNIT_SHIFT;
            let n = objects[i..].partition_point(|o| o.addr >> UNIT_SHIFT == number);
            let at = self.listed.len() as u32;
            for (k, o) in objects[i..i + n].iter().enumerate() {
                if o.startup {
                    self.startup.push((self.len + k) as u32);
                }
                self.listed.push(Packed::new(o));
            }
            match self.units.last_mut() {
                // The same unit as the last listed blocks (blocks pushed one by one).
                Some(u) if u.number == number && matches!(u.kind, Kind::List { .. }) => u.count += n as u32,
                _ => self.units.push(Unit { number, first: self.len as u32, count: n as u32, kind: Kind::List { at } }),
            }
            self.len += n;
            i += n;
        }
    }

    pub fn from_objects(mut objects: Vec<Object>, scanned_bytes: u64) -> Self {
        if !objects.is_sorted_by_key(|o| o.addr) {
            objects.sort_unstable_by_key(|o| o.addr);
        }
        // A block's header can never lie inside another live block; if memory says so
        // (a stale copy the program made itself), keep the enclosing block. In place: an
        // index of millions of blocks is not built twice.
        objects.dedup_by(|o, kept| o.addr < kept.end());
        let mut idx = HeapIndex { scanned_bytes, ..HeapIndex::default() };
        idx.push_listed(&objects);
        idx
    }

    /// The block in slot `slot` of grid unit `u`.
    #[inline]
    fn slot_object(&self, u: &Unit, slot: usize) -> Object {
        let Kind::Grid { step, info, .. } = u.kind else { return Object { addr: 0, size: 0, startup: false } };
        let word = self.info.get(info as usize + slot).copied().unwrap_or(0);
        let (requested, startup) = remote::small_block(step as usize, word);
        Object { addr: u.base() + slot as u64 * u64::from(step), size: requested as u64, startup }
    }

    /// Grid unit `u`'s `n`-th block (from 0): the word of `bits` and the bit in it.
    fn select(&self, u: &Unit, n: usize) -> Option<(usize, u32)> {
        let Kind::Grid { slots, words, .. } = u.kind else { return None };
        let (start, end) = (words as usize, words as usize + (slots as usize).div_ceil(64));
        let target = u.first as usize + n;
        let w = start + self.ranks.get(start..end)?.partition_point(|&r| r as usize <= target) - 1;
        let bit = nth_set_bit(self.bits[w], (target - self.ranks[w] as usize) as u32)?;
        Some((w, bit))
    }

    /// The `n`-th block (from 0) of unit `k`.
    fn block_of_unit(&self, k: usize, n: usize) -> Option<Object> {
        let u = self.units.get(k)?;
        match u.kind {
            Kind::List { at } => Some(self.listed.get(at as usize + n)?.at(u.base())),
            Kind::Grid { words, .. } => {
                let (w, bit) = self.select(u, n)?;
                Some(self.slot_object(u, (w - words as usize) * 64 + bit as usize))
            }
        }
    }

    /// The unit of the block at position `pos`.
    fn unit_at(&self, pos: usize) -> usize {
        self.units.partition_point(|u| u.first as usize <= pos).saturating_sub(1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block at position `pos` (in address order; see [`HeapIndex::locate`]).
    ///
    /// # Panics
    /// When `pos` is not below [`HeapIndex::len`].
    pub fn get(&self, pos: usize) -> Object {
        let k = self.unit_at(pos);
        self.units
            .get(k)
            .and_then(|u| self.block_of_unit(k, pos.checked_sub(u.first as usize)?))
            .expect("a position below the index's length")
    }

    /// Every block, in address order.
    pub fn iter(&self) -> Blocks<'_> {
        self.range(0, self.len)
    }

    /// The blocks at positions `[start, end)`, in address order.
    pub fn range(&self, start: usize, end: usize) -> Blocks<'_> {
        let end = end.min(self.len);
        Blocks { index: self, pos: start, end, k: self.unit_at(start), cursor: None }
    }

    /// The startup blocks, in address order (a few among millions: not a pass over all).
    pub fn startup_blocks(&self) -> impl Iterator<Item = Object> + '_ {
        self.startup.iter().map(|&pos| self.get(pos as usize))
    }

    /// The first block of each 64 KiB unit of address space that holds any: one block per
    /// unit, for questions whose answer is the same for every block of a unit (which heap
    /// region it is in).
    pub fn unit_firsts(&self) -> impl Iterator<Item = Object> + '_ {
        (0..self.units.len()).filter_map(|k| self.block_of_unit(k, 0))
    }

    /// For each 64 KiB unit of address space where blocks start: from its first block's
    /// address to its last block's end (in address order; a large block's end may lie
    /// in a later unit). What lies between two blocks of a unit is free.
    pub fn unit_extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.units.iter().enumerate().filter_map(|(k, u)| {
            let first = self.block_of_unit(k, 0)?;
            let last = self.block_of_unit(k, (u.count as usize).checked_sub(1)?)?;
            Some((first.addr, last.end().max(first.addr)))
        })
    }

    /// The block containing `addr` (its first byte up to, not including, its end; a
    /// zero-sized block contains its own address).
    pub fn containing(&self, addr: u64) -> Option<Object> {
        self.find(addr).map(|(_, o)| o)
    }

    /// The position in [`HeapIndex::objects`] of the block containing `addr`: a key for
    /// tables that hold something per block (dense, no hashing).
    pub fn locate(&self, addr: u64) -> Option<usize> {
        self.find(addr).map(|(i, _)| i)
    }

    /// [`HeapIndex::locate`], with the block.
    pub fn find(&self, addr: u64) -> Option<(usize, Object)> {
        let number = addr >> UNIT_SHIFT;
        let k = self.units.partition_point(|u| u.number <= number).checked_sub(1)?;
        let u = &self.units[k];
        let contains = |o: &Object| addr < o.end() || addr == o.addr;
        // The candidate: the last block starting at or before `addr`, as (unit, n-th).
        let (k, n) = if u.number != number {
            // Past the unit: only a block of it that reaches this far.
            (k, u.count as usize - 1)
        } else {
            let offset = addr & (UNIT_SIZE - 1);
            match u.kind {
                Kind::Grid { recip, slots, words, .. } => {
                    // A span holds nothing but its own slots.
                    let slot = slot_of(offset, recip);
                    if slot >= slots as usize {
                        return None;
                    }
                    let w = words as usize + slot / 64;
                    let word = self.bits[w];
                    if word & (1 << (slot % 64)) == 0 {
                        return None;
                    }
                    let pos = self.ranks[w] as usize + (word & ((1u64 << (slot % 64)) - 1)).count_ones() as usize;
                    let o = self.slot_object(u, slot);
                    return contains(&o).then_some((pos, o));
                }
                Kind::List { at } => {
                    let listed = &self.listed[at as usize..at as usize + u.count as usize];
                    match listed.partition_point(|b| b.offset() <= offset).checked_sub(1) {
                        Some(n) => (k, n),
                        // Before the unit's first block: the last one of the unit before.
                        None => {
                            let k = k.checked_sub(1)?;
                            (k, self.units[k].count as usize - 1)
                        }
                    }
                }
            }
        };
        let o = self.block_of_unit(k, n)?;
        contains(&o).then(|| (self.units[k].first as usize + n, o))
    }

    /// The block starting exactly at `addr`.
    pub fn starting_at(&self, addr: u64) -> Option<Object> {
        self.containing(addr).filter(|o| o.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_pointers_find_their_block() {
        let idx = HeapIndex::from_objects(
            vec![
                Object { addr: 0x2000, size: 0x100, startup: false },
                Object { addr: 0x1000, size: 0x10, startup: true },
                Object { addr: 0x3000, size: 0, startup: false },
            ],
            0,
        );
        assert_eq!(idx.containing(0x1000).map(|o| o.addr), Some(0x1000));
        assert_eq!(idx.containing(0x100f).map(|o| o.addr), Some(0x1000));
        assert_eq!(idx.containing(0x1010), None, "one past the end belongs to no block");
        assert_eq!(idx.containing(0x20ff).map(|o| o.addr), Some(0x2000));
        assert_eq!(idx.containing(0x0fff), None);
        assert_eq!(idx.containing(0x3000).map(|o| o.addr), Some(0x3000));
        assert_eq!(idx.starting_at(0x2000).map(|o| o.size), Some(0x100));
        assert_eq!(idx.starting_at(0x2008), None);
    }

    #[test]
    fn blocks_come_back_as_they_went_in_whatever_unit_they_are_in() {
        // Blocks in three units (one large, one at a unit's last byte), startup or not.
        let objects = vec![
            Object { addr: 0x7f00_0001_0000, size: 0x10, startup: true },
            Object { addr: 0x7f00_0001_fff8, size: 8, startup: false },
            Object { addr: 0x7f00_0002_0010, size: 0x4_0000_0000, startup: false },
            Object { addr: 0x7f05_0000_0000, size: 0, startup: true },
        ];
        let idx = HeapIndex::from_objects(objects.clone(), 0);
        assert_eq!(idx.iter().collect::<Vec<_>>(), objects);
        assert_eq!((0..4).map(|i| idx.get(i)).collect::<Vec<_>>(), objects);
        assert_eq!(idx.range(1, 3).collect::<Vec<_>>(), objects[1..3]);
        assert_eq!(idx.range(3, 9).collect::<Vec<_>>(), objects[3..]);
        assert_eq!(idx.unit_firsts().collect::<Vec<_>>(), [objects[0], objects[2], objects[3]]);
        assert_eq!(
            idx.unit_extents().collect::<Vec<_>>(),
            [
                (objects[0].addr, objects[1].end()),
                (objects[2].addr, objects[2].end()),
                (objects[3].addr, objects[3].addr)
            ]
        );
        assert_eq!(idx.startup_blocks().collect::<Vec<_>>(), [objects[0], objects[3]]);
        assert_eq!(idx.containing(0x7f00_0003_0000), Some(objects[2]));
        assert_eq!(idx.starting_at(0x7f05_0000_0000), Some(objects[3]));
    }

    #[test]
    fn lookups_cross_units_to_the_block_that_spans_them() {
        // A large block over several 64 KiB units, small ones before and after, a unit
        // with no block start in between.
        let idx = HeapIndex::from_objects(
            vec![
                Object { addr: 0x1_0000, size: 0x10, startup: false },
                Object { addr: 0x1_fff0, size: 0x3_0000, startup: false },
                Object { addr: 0x5_0000, size: 0x20, startup: false },
                Object { addr: 0x5_0040, size: 0x20, startup: false },
            ],
            0,
        );
        assert_eq!(idx.locate(0x1_0008), Some(0));
        assert_eq!(idx.locate(0x1_0010), None);
        assert_eq!(idx.locate(0x1_fff0), Some(1));
        assert_eq!(idx.locate(0x3_8000), Some(1), "a unit where no block starts");
        assert_eq!(idx.locate(0x4_ffef), Some(1), "the block's last byte");
        assert_eq!(idx.locate(0x4_fff0), None);
        assert_eq!(idx.locate(0x5_0000), Some(2));
        assert_eq!(idx.locate(0x5_0030), None);
        assert_eq!(idx.locate(0x5_005f), Some(3));
        assert_eq!(idx.locate(0x9_0000), None);
        assert_eq!(idx.locate(0xfff), None);
        assert_eq!(HeapIndex::default().locate(0x1000), None);
    }

    #[test]
    fn a_span_is_indexed_from_its_live_bits_and_agrees_with_a_list_of_its_blocks() {
        // A span of 48-byte slots (some free, one made at startup, each asking for 40
        // bytes but one asking for none), a large block listed after it, another span.
        let slots = 1365usize;
        let mut live = vec![0u64; slots.div_ceil(64)];
        let mut info = vec![8u16; slots];
        info[8] |= remote::INFO_STARTUP;
        info[9] = 48;
        for k in (0..slots).filter(|k| k % 3 != 1) {
            live[k / 64] |= 1 << (k % 64);
        }
        fn span<'a>(start: usize, live: &'a [u64], info: &'a [u16]) -> SmallSpan<'a> {
            SmallSpan { start, size: 48, slots: info.len(), live, info }
        }
        let large = Object { addr: 0x9_0000, size: 0x2_0000, startup: false };
        let mut idx = HeapIndex::default();
        idx.push_span(&span(0x7_0000, &live, &info));
        idx.push_listed(&[large]);
        idx.push_span(&span(0xb_0000, &live[..1], &info[..64]));
        let mut objects: Vec<Object> = (0..slots)
            .filter(|k| k % 3 != 1)
            .map(|k| Object { addr: 0x7_0000 + k as u64 * 48, size: if k == 9 { 0 } else { 40 }, startup: k == 8 })
            .collect();
        objects.push(large);
        objects.extend((0..64).filter(|k| k % 3 != 1).map(|k| Object {
            addr: 0xb_0000 + k * 48,
            size: if k == 9 { 0 } else { 40 },
            startup: k == 8,
        }));
        let list = HeapIndex::from_objects(objects.clone(), 0);
        assert_eq!(idx.len(), objects.len());
        assert_eq!(idx.iter().collect::<Vec<_>>(), objects);
        for start in [0, 1, 63, 64, 500, objects.len() - 44, objects.len() - 1] {
            assert_eq!(
                idx.range(start, start + 70).collect::<Vec<_>>(),
                list.range(start, start + 70).collect::<Vec<_>>()
            );
            assert_eq!(idx.get(start), objects[start]);
        }
        assert_eq!(idx.startup_blocks().collect::<Vec<_>>(), list.startup_blocks().collect::<Vec<_>>());
        assert_eq!(idx.startup_blocks().count(), 2);
        assert_eq!(idx.unit_extents().collect::<Vec<_>>(), list.unit_extents().collect::<Vec<_>>());
        assert_eq!(idx.unit_firsts().collect::<Vec<_>>(), list.unit_firsts().collect::<Vec<_>>());
        for addr in (0x6_fff0..0xc_0000).step_by(4) {
            assert_eq!(idx.find(addr), list.find(addr), "{addr:#x}");
        }
    }
}
