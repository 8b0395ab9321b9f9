//! The live blocks of a process, listed from its allocator's metadata, with lookup by
//! any address inside a block (a pointer into the middle of a buffer finds the buffer).

use crate::memory::{MemoryError, ReadMemory};
use mcr_alloc::remote::{self, Source};
use mcr_alloc::{BlockInfo, SLOTS};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

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

/// For units whose blocks sit on a grid (an allocator span: blocks of one size class at
/// multiples of its size): a table per unit from grid cell to block.
#[derive(Debug, Default)]
struct Grid {
    /// Parallel to [`HeapIndex::units`]: the grid's step and where the unit's cells start
    /// in `cells`; step 0: no grid, search.
    steps: Vec<(u32, u32)>,
    /// Per cell: 0, or 1 + the position (from the unit's first block) of the block
    /// starting there. A lookup is then two reads.
    cells: Vec<u16>,
}

/// A block as the index keeps it, in 8 bytes (a heap of millions of blocks makes a list
/// of tens of megabytes, written afresh at every update: 24-byte [`Object`]s cost three
/// times the page faults): its offset in its 64 KiB unit (the unit is known from
/// [`HeapIndex::units`]), its startup bit and its size.
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

    fn object(self, unit: u64) -> Object {
        self.at(unit << UNIT_SHIFT)
    }

    /// The block, in the unit that starts at `base`.
    #[inline]
    fn at(self, base: u64) -> Object {
        Object { addr: base | self.offset(), size: self.0 & (Self::STARTUP - 1), startup: self.0 & Self::STARTUP != 0 }
    }
}

/// The blocks of a [`HeapIndex`] in address order ([`HeapIndex::range`]).
pub struct Blocks<'a> {
    index: &'a HeapIndex,
    pos: usize,
    end: usize,
    /// The unit of the block at `pos` (once `pos` reached `unit_end`: looked up again).
    k: usize,
    unit_base: u64,
    unit_end: usize,
}

impl Iterator for Blocks<'_> {
    type Item = Object;

    #[inline]
    fn next(&mut self) -> Option<Object> {
        if self.pos >= self.end {
            return None;
        }
        if self.pos >= self.unit_end {
            let units = &self.index.units;
            while units.get(self.k + 1).is_some_and(|&(_, f)| f as usize <= self.pos) {
                self.k += 1;
            }
            self.unit_base = units.get(self.k).map_or(0, |&(u, _)| u << UNIT_SHIFT);
            self.unit_end = self.index.unit_end(self.k);
        }
        let b = *self.index.blocks.get(self.pos)?;
        self.pos += 1;
        Some(b.at(self.unit_base))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end.saturating_sub(self.pos);
        (n, Some(n))
    }
}

#[derive(Debug, Default)]
pub struct HeapIndex {
    /// Sorted by address, never overlapping.
    blocks: Vec<Packed>,
    /// The positions of the startup blocks.
    startup: Vec<u32>,
    /// For each 64 KiB unit of the address space where a block starts (ascending), the
    /// position of the first block starting there: a lookup searches a short, cache-warm
    /// table and then one unit's blocks, not the whole index (the walk of a layout update
    /// looks up every pointer it follows; millions of blocks make a plain binary search
    /// miss the cache at every step).
    units: Vec<(u64, u32)>,
    /// Made once lookups are many (a walk that goes through the heap; an update that
    /// seals it looks up a few pointers only, and the grid of millions of blocks costs
    /// tens of milliseconds to make).
    grid: OnceLock<Grid>,
    lookups: AtomicUsize,
    /// Bytes of the heap's spans read to build the index (its blocks' memory, kept).
    pub scanned_bytes: u64,
}

/// Blocks are grouped by 64 KiB units of address (the allocator's span size) for lookup.
const UNIT_SHIFT: u32 = 16;
const UNIT_SIZE: u64 = 1 << UNIT_SHIFT;
/// A unit gets a grid when it has this many blocks (fewer are found as fast by a search)
/// on a grid at least this fine (at most 4096 cells: what a position offset in u16 holds).
const MIN_GRID_BLOCKS: usize = 8;
const MIN_GRID_STEP: u64 = 16;

/// Lookups before the grid is made.
const GRID_AFTER_LOOKUPS: usize = 4096;

impl Grid {
    /// The block containing `addr` found through the grid of unit `k` (whose first block
    /// is at position `first`), when there is a grid and a block starts in `addr`'s cell;
    /// `None`: search.
    fn find(&self, blocks: &[Packed], k: usize, (unit, first): (u64, u32), addr: u64) -> Option<usize> {
        let &(step, at) = self.steps.get(k)?;
        if step == 0 {
            return None;
        }
        let cell = (addr & (UNIT_SIZE - 1)) / u64::from(step);
        let i = *self.cells.get(at as usize + cell as usize)?;
        let i = (i as usize).checked_sub(1)? + first as usize;
        let o = blocks[i].object(unit);
        (addr < o.end() || addr == o.addr).then_some(i)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Read in pieces at most this large.
const CHUNK: u64 = 1 << 20;

/// An empty list with room for every block the regions' spans can hold (an upper bound:
/// 4 096 per span in use), in huge pages where the kernel allows: a heap of millions of
/// blocks otherwise pays a page fault per 4 KiB of the list while it grows. Room never
/// written costs no memory.
fn with_room_for(reader: &Reader) -> Vec<Packed> {
    const PER_SPAN: usize = mcr_alloc::SPAN_SIZE / 16;
    let spans: usize = (0..SLOTS).filter_map(|slot| remote::region_hwm(reader, slot).ok()).sum();
    const MAX_ROOM: usize = 1 << 26;
    let room = spans.saturating_mul(PER_SPAN).min(MAX_ROOM);
    let mut v: Vec<Packed> = Vec::new();
    if v.try_reserve_exact(room).is_err() {
        return Vec::new();
    }
    // The whole pages inside the allocation (madvise wants page-aligned ranges).
    let (at, bytes) = (v.as_mut_ptr() as usize, v.capacity() * std::mem::size_of::<Packed>());
    let start = at.next_multiple_of(4096);
    let end = (at + bytes) & !4095;
    if end > start + (4 << 20) {
        // SAFETY: advice on whole pages of the Vec's own allocation (which it owns until it
        // is dropped); MADV_HUGEPAGE changes how its pages are backed, never their contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v
}

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

impl HeapIndex {
    /// The live blocks of every heap region of the process behind `mem` (regions are found
    /// at their fixed places in the heap window; `_maps` is not needed any more).
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
        let mut blocks = with_room_for(&reader);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        // The allocator lists blocks by address (regions by slot, spans and blocks in
        // order): the index's order and its units come with the listing, as long as no
        // block starts before the previous one's end (then `from_objects` sorts it out).
        // Each later pass over millions of blocks would cost milliseconds.
        let mut units: Vec<(u64, u32)> = Vec::new();
        let mut startup: Vec<u32> = Vec::new();
        let mut in_order = true;
        let mut last_end = 0;
        for slot in 0..SLOTS {
            // A slot with no region of this process reads as nothing (unmapped, or no
            // magic): skipped.
            let _ = remote::visit(
                &reader,
                slot,
                |b| {
                    let o = Object::from(b);
                    in_order &= o.addr >= last_end;
                    last_end = o.end().max(o.addr + 1);
                    let unit = o.addr >> UNIT_SHIFT;
                    if units.last().is_none_or(|&(u, _)| u != unit) {
                        units.push((unit, blocks.len() as u32));
                    }
                    if o.startup {
                        startup.push(blocks.len() as u32);
                    }
                    blocks.push(Packed::new(&o));
                },
                |start, len| match runs.last_mut() {
                    Some(last) if last.1 == start as u64 => last.1 += len as u64,
                    _ => runs.push((start as u64, (start + len) as u64)),
                },
            );
        }
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
            let mut objects = Vec::with_capacity(blocks.len());
            let mut k = 0;
            for (i, b) in blocks.iter().enumerate() {
                while units.get(k + 1).is_some_and(|&(_, f)| f as usize <= i) {
                    k += 1;
                }
                objects.push(b.object(units[k].0));
            }
            return Ok(Self::from_objects(objects, scanned));
        }
        Ok(Self::with_units(blocks, startup, units, scanned))
    }

    pub fn from_objects(mut objects: Vec<Object>, scanned_bytes: u64) -> Self {
        if !objects.is_sorted_by_key(|o| o.addr) {
            objects.sort_unstable_by_key(|o| o.addr);
        }
        // A block's header can never lie inside another live block; if memory says so
        // (a stale copy the program made itself), keep the enclosing block. In place: an
        // index of millions of blocks is not built twice.
        objects.dedup_by(|o, kept| o.addr < kept.end());
        // Each unit's first block, found by a search from the previous one (thousands of
        // units, millions of blocks: not a pass over every block).
        let mut units: Vec<(u64, u32)> = Vec::new();
        let mut i = 0;
        while let Some(o) = objects.get(i) {
            let unit = o.addr >> UNIT_SHIFT;
            units.push((unit, i as u32));
            i += objects[i..].partition_point(|o| o.addr >> UNIT_SHIFT == unit);
        }
        let startup = objects.iter().enumerate().filter(|(_, o)| o.startup).map(|(i, _)| i as u32).collect();
        Self::with_units(objects.iter().map(Packed::new).collect(), startup, units, scanned_bytes)
    }

    fn with_units(blocks: Vec<Packed>, startup: Vec<u32>, units: Vec<(u64, u32)>, scanned_bytes: u64) -> Self {
        Self { blocks, startup, units, grid: OnceLock::new(), lookups: AtomicUsize::new(0), scanned_bytes }
    }

    fn make_grid(&self) -> Grid {
        let units = &self.units;
        let (mut steps, mut cells) = (Vec::with_capacity(units.len()), Vec::new());
        for (k, &(_, first)) in units.iter().enumerate() {
            let blocks = &self.blocks[first as usize..self.unit_end(k)];
            // The grid's step: what every block's offset in the unit is a multiple of.
            let step = blocks.iter().fold(0u64, |g, b| gcd(g, b.offset()));
            if blocks.len() < MIN_GRID_BLOCKS || step < MIN_GRID_STEP {
                steps.push((0, 0));
                continue;
            }
            let at = cells.len();
            cells.resize(at + (UNIT_SIZE / step) as usize, 0);
            for (i, b) in blocks.iter().enumerate() {
                cells[at + (b.offset() / step) as usize] = i as u16 + 1;
            }
            steps.push((step as u32, at as u32));
        }
        Grid { steps, cells }
    }

    /// Where the blocks of unit `k` end in [`HeapIndex::blocks`].
    fn unit_end(&self, k: usize) -> usize {
        self.units.get(k + 1).map_or(self.blocks.len(), |&(_, f)| f as usize)
    }

    /// The unit (its number: address >> 16) of the block at position `pos`.
    fn unit_at(&self, pos: usize) -> u64 {
        let k = self.units.partition_point(|&(_, f)| f as usize <= pos);
        self.units.get(k.wrapping_sub(1)).map_or(0, |&(u, _)| u)
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The block at position `pos` (in address order; see [`HeapIndex::locate`]).
    ///
    /// # Panics
    /// When `pos` is not below [`HeapIndex::len`].
    pub fn get(&self, pos: usize) -> Object {
        self.blocks[pos].object(self.unit_at(pos))
    }

    /// Every block, in address order.
    pub fn iter(&self) -> Blocks<'_> {
        self.range(0, self.blocks.len())
    }

    /// The blocks at positions `[start, end)`, in address order.
    pub fn range(&self, start: usize, end: usize) -> Blocks<'_> {
        let end = end.min(self.blocks.len());
        let k = self.units.partition_point(|&(_, f)| f as usize <= start).saturating_sub(1);
        Blocks { index: self, pos: start, end, k, unit_base: 0, unit_end: 0 }
    }

    /// The startup blocks, in address order (a few among millions: not a pass over all).
    pub fn startup_blocks(&self) -> impl Iterator<Item = Object> + '_ {
        self.startup.iter().map(|&pos| self.get(pos as usize))
    }

    /// The first block of each 64 KiB unit of address space that holds any: one block per
    /// unit, for questions whose answer is the same for every block of a unit (which heap
    /// region it is in).
    pub fn unit_firsts(&self) -> impl Iterator<Item = Object> + '_ {
        self.units.iter().filter_map(|&(u, i)| Some(self.blocks.get(i as usize)?.object(u)))
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
        let unit = addr >> UNIT_SHIFT;
        let k = self.units.partition_point(|&(u, _)| u <= unit);
        let &(u, first) = self.units.get(k.checked_sub(1)?)?;
        if u == unit {
            let grid = match self.grid.get() {
                Some(g) => Some(g),
                None if self.lookups.fetch_add(1, Relaxed) >= GRID_AFTER_LOOKUPS => {
                    Some(self.grid.get_or_init(|| self.make_grid()))
                }
                None => None,
            };
            if let Some(i) = grid.and_then(|g| g.find(&self.blocks, k - 1, (u, first), addr)) {
                return Some((i, self.blocks[i].object(u)));
            }
        }
        let end = self.unit_end(k - 1);
        // In `addr`'s own unit: the last block there starting at or before it (or, when
        // none does, the last one of an earlier unit); past it: the last block of the
        // nearest unit before.
        let i = if u == unit {
            let (first, offset) = (first as usize, addr & (UNIT_SIZE - 1));
            first + self.blocks[first..end].partition_point(|b| b.offset() <= offset)
        } else {
            end
        };
        let i = i.checked_sub(1)?;
        let o = if i >= first as usize { self.blocks[i].object(u) } else { self.get(i) };
        (addr < o.end() || addr == o.addr).then_some((i, o))
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
    fn a_unit_of_one_size_class_is_looked_up_on_its_grid_and_agrees_with_a_search() {
        // A span of 48-byte blocks (some free), each asking for fewer bytes; then a unit
        // whose blocks are on no grid finer than 8 bytes (searched).
        let mut objects: Vec<Object> = (0..1365u64)
            .filter(|k| k % 3 != 1)
            .map(|k| Object { addr: 0x7_0000 + k * 48, size: 40, startup: false })
            .collect();
        objects.extend((0..20u64).map(|k| Object { addr: 0x8_0008 + k * 24, size: 16, startup: false }));
        let idx = HeapIndex::from_objects(objects.clone(), 0);
        assert!(idx.grid.get().is_none(), "made when lookups are many");
        let grid = idx.grid.get_or_init(|| idx.make_grid());
        assert_eq!(grid.steps.iter().filter(|s| s.0 != 0).count(), 1, "one grid: {:?}", grid.steps);
        for addr in (0x6_fff0..0x8_0300).step_by(4) {
            let searched = objects.iter().position(|o| o.addr <= addr && addr < o.end());
            assert_eq!(idx.locate(addr), searched, "{addr:#x}");
        }
    }
}
