//! An update that changes no type leaves the adopted heap as it is (issue 13: "an update
//! that changes no type touches no heap object").
//!
//! The new process maps the old heap at its own addresses, so an object whose type did
//! not change is already right where it is, with one exception: words that hold an
//! address of something that is *not* at the same place in the new process: the old
//! binary (functions, globals, string literals: each build lays them out anew), the old
//! main stack where its layout shifts, and the heap blocks the transfer does move (old
//! startup objects go into the new startup's blocks). The walk therefore stops at the
//! first block of the adopted heap a typed pointer reaches (it is *sealed*: not read, not
//! scanned, and nothing only it leads to is walked), and this module then checks, word
//! by word and at memory speed, that no block the walk did not go through holds such an
//! address. If one does (it may be a pointer that must be rewritten), the transfer walks
//! everything, as for an update that changes types. Blocks the walk did not reach are
//! kept: the old version held them, and mcr cannot tell garbage from what only a sealed
//! block leads to.
//!
//! Sealing is only tried when nothing can need rewriting beyond what the check sees: no
//! type of the program changes layout (so no object anywhere needs a transformation, and
//! nothing untyped memory leads to can be of a changed type), the new version has no
//! object handler (it asked to see every object of its types), no `MCR_TAGGED` hint (a
//! tag in a pointer's high bits hides the address from the check), and every live block
//! is in the adopted heap (a block in a heap that is not adopted must be copied, and
//! only the walk finds it).

use crate::hints::Hints;
use crate::plan::{counterpart, TransferPlan};
use crate::startup::Placement;
use crate::transfer::Pair;
use crate::walk::Reached;
use crate::{Image, StackMap};
use mcr_heap::Object;
use mcr_typemodel::transform::{same_bytes, same_type};
use mcr_typemodel::{Program, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;

/// Why the walk must go through every block, or `None` when it may seal.
pub(crate) fn why_walk_all(pair: &Pair, hints: &Hints, handlers: &HashMap<String, String>) -> Option<String> {
    let Some(adopted) = pair.adopted else { return Some("the old heap is not adopted".into()) };
    if !handlers.is_empty() {
        return Some("the new version has object handlers".into());
    }
    if !hints.tagged.is_empty() {
        return Some("MCR_TAGGED hints".into());
    }
    // Regions are adopted whole, and a 64 KiB unit lies in one region: a block per unit.
    if let Some(o) = pair.heap.unit_firsts().find(|o| !adopted(o.addr)) {
        return Some(format!("the heap block at {:#x} is not in the adopted heap", o.addr));
    }
    first_layout_change(pair.old.prog, pair.new.prog).map(|name| format!("{name} changes layout"))
}

/// The first named type of `old` whose objects the new version lays out differently
/// (several definitions under one name are paired in order, as `mcr check` does).
fn first_layout_change(old: &Program, new: &Program) -> Option<String> {
    let new_types = new.named_types();
    let mut names: Vec<(String, Vec<TypeId>)> = old.named_types().into_iter().collect();
    names.sort();
    names.into_iter().find_map(|(name, old_ids)| {
        let new_ids = new_types.get(&name)?;
        let changed = old_ids.len() != new_ids.len()
            || old_ids.iter().zip(new_ids).any(|(&ot, &nt)| !same_bytes(old, ot, new, nt));
        changed.then_some(name)
    })
}

/// Which blocks the walk may seal: made after startup (a startup object goes into the new
/// startup's block), in the adopted heap, reached as a type that is the same in the new
/// version, and so is every type it leads to.
pub(crate) struct Sealer<'p> {
    old: &'p Program,
    new: &'p Program,
    adopted: &'p dyn Fn(u64) -> bool,
    same: RefCell<HashMap<TypeId, bool>>,
    counterparts: RefCell<HashMap<TypeId, Option<TypeId>>>,
}

impl<'p> Sealer<'p> {
    pub(crate) fn new(old: &'p Program, new: &'p Program, adopted: &'p dyn Fn(u64) -> bool) -> Self {
        Sealer { old, new, adopted, same: RefCell::default(), counterparts: RefCell::default() }
    }

    pub(crate) fn seals(&self, obj: &Object, ty: TypeId) -> bool {
        if obj.startup || !(self.adopted)(obj.addr) {
            return false;
        }
        if let Some(&s) = self.same.borrow().get(&ty) {
            return s;
        }
        let nt = counterpart(self.old, ty, self.new, &mut self.counterparts.borrow_mut());
        let s = nt.is_some_and(|nt| same_type(self.old, ty, self.new, nt));
        self.same.borrow_mut().insert(ty, s);
        s
    }
}

/// Addresses whose meaning differs in the new process, as the check looks for them.
struct Moving<'a> {
    image: &'a Image,
    stack: Option<&'a StackMap>,
    image_bounds: (u64, u64),
    /// Heap blocks that move (reached and not staying) and every startup block (what
    /// points to one must go through the walk, which matches it with the new startup's
    /// block), sorted, with the pages they touch for a fast "no".
    blocks: Vec<(u64, u64)>,
    pages: PageSet,
}

impl Moving<'_> {
    /// The address ranges outside which no word needs a closer look (the old binary's
    /// bounds, the old main stack, the pages of moving blocks), as (start, length): the
    /// check runs over every word of the heap, and most words (data, pointers to blocks
    /// that stay) fail three subtractions and compares.
    fn coarse(&self) -> [(u64, u64); 3] {
        let (lo, hi) = self.image_bounds;
        let stack = self.stack.map_or((0, 0), |s| s.bounds());
        let pages = self.pages.bounds();
        [(lo, hi.saturating_sub(lo)), (stack.0, stack.1.saturating_sub(stack.0)), (pages.0, pages.1 - pages.0)]
    }

    /// What `v` is, if a word holding it may need rewriting.
    fn what(&self, v: u64) -> Option<String> {
        let (lo, hi) = self.image_bounds;
        if (lo..hi).contains(&v) && self.image.contains(v) {
            return Some("an address in the old binary".into());
        }
        if let Some(stack) = self.stack.filter(|m| m.covers(v)) {
            if stack.relocate(v) != Ok(v) {
                return Some("an address in the old main stack, which moves".into());
            }
        }
        if self.pages.has(v) {
            let i = self.blocks.partition_point(|&(start, _)| start <= v);
            if let Some(&(start, end)) = i.checked_sub(1).map(|i| &self.blocks[i]) {
                if v < end || v == start {
                    return Some(format!("an address in the heap block at {start:#x}, which the transfer moves"));
                }
            }
        }
        None
    }
}

/// Pages (4 KiB) of a range of addresses, as a bitmap: most heap pointers are to pages
/// with no moving block, and the bitmap says so without a search.
struct PageSet {
    first: u64,
    bits: Vec<u64>,
}

impl PageSet {
    const SHIFT: u32 = 12;
    /// More pages than this between the lowest and the highest (a bitmap of 32 MiB):
    /// every address in between counts as a candidate, which the search then settles.
    const MAX_PAGES: u64 = 1 << 28;

    fn of(blocks: &[(u64, u64)]) -> PageSet {
        let (Some(&(lo, _)), Some(hi)) = (blocks.first(), blocks.iter().map(|b| b.1).max()) else {
            return PageSet { first: u64::MAX, bits: Vec::new() };
        };
        let (first, last) = (lo >> Self::SHIFT, hi >> Self::SHIFT);
        if last - first >= Self::MAX_PAGES {
            return PageSet { first, bits: vec![u64::MAX; (Self::MAX_PAGES / 64) as usize] };
        }
        let mut bits = vec![0u64; ((last - first) / 64 + 1) as usize];
        for &(s, e) in blocks {
            for p in (s >> Self::SHIFT)..=(e.max(s + 1) - 1) >> Self::SHIFT {
                let i = p - first;
                bits[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        PageSet { first, bits }
    }

    /// The addresses the bitmap covers: `[start, end)`.
    fn bounds(&self) -> (u64, u64) {
        if self.bits.is_empty() {
            return (0, 0);
        }
        let start = self.first << Self::SHIFT;
        (start, start.saturating_add((self.bits.len() as u64 * 64) << Self::SHIFT))
    }

    fn has(&self, v: u64) -> bool {
        let Some(i) = (v >> Self::SHIFT).checked_sub(self.first) else { return false };
        self.bits.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What the check looked at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Live blocks made after startup the walk did not go through (sealed, or not
    /// reached), and their bytes.
    pub blocks: usize,
    pub bytes: u64,
}

/// Bytes read at once by the check.
const BATCH: u64 = 1 << 20;

/// Neighbouring blocks to check (`objects[first..end]`, less the walked and startup ones),
/// spanning at most [`BATCH`] bytes unless one block is larger, with their bytes when the
/// reader holds them in memory (the adopted heap's memfds, mapped): those are checked on
/// two threads, the others read and checked one batch at a time (the heap is read once,
/// and not kept).
struct Batch<'a> {
    first: usize,
    end: usize,
    mapped: Option<&'a [u8]>,
}

/// What the check skips: blocks the walk went through (`walked`, sorted), and startup
/// objects the walk did not reach: they are freed (nothing it does not walk may point
/// into one: see `Moving::blocks`), so their bytes do not matter. Asked of blocks in
/// address order, it follows them through `walked` with a cursor (millions of blocks).
struct Skips<'w> {
    walked: &'w [u64],
}

impl<'w> Skips<'w> {
    /// For blocks from `from` on.
    fn from(walked: &'w [u64], from: u64) -> Self {
        Skips { walked: &walked[walked.partition_point(|&a| a < from)..] }
    }

    fn skips(&mut self, o: &Object) -> bool {
        while self.walked.first().is_some_and(|&a| a < o.addr) {
            self.walked = &self.walked[1..];
        }
        o.startup || self.walked.first() == Some(&o.addr)
    }
}

/// The first word of the batch `objects` (whose bytes, from its first block's address,
/// are `bytes`) that may need rewriting: (its address, what it is).
fn check_batch(
    m: &Moving,
    mut objects: impl Iterator<Item = Object>,
    walked: &[u64],
    bytes: &[u8],
) -> Result<(), (u64, String)> {
    let Some(first) = objects.next() else { return Ok(()) };
    let start = first.addr;
    let coarse = m.coarse();
    let mut skips = Skips::from(walked, start);
    for o in std::iter::once(first).chain(objects).filter(|o| !skips.skips(o)) {
        let at = (o.addr - start) as usize;
        let Some(block) = bytes.get(at..at + o.size as usize) else { continue };
        for (k, w) in block.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            if !coarse.iter().any(|&(lo, len)| v.wrapping_sub(lo) < len) {
                continue;
            }
            if let Some(what) = m.what(v) {
                let msg = format!("the heap block at {:#x} holds {v:#x} at offset {} ({what})", o.addr, k * 8);
                return Err((o.addr + k as u64 * 8, msg));
            }
        }
    }
    Ok(())
}

/// Check that no live block the walk did not go through holds an address whose meaning
/// differs in the new process: `Ok` with what was checked, or `Err` with the first such
/// word (the transfer then walks everything).
pub(crate) fn check(pair: &Pair, reached: &Reached, plan: &TransferPlan) -> Result<Checked, String> {
    let heap = pair.heap;
    let mut moving: Vec<(u64, u64)> = plan
        .blocks
        .iter()
        .filter(|b| b.placement != Placement::InPlace)
        .map(|b| (b.old, b.old + reached.blocks[&b.old].obj.size))
        .chain(heap.startup_blocks().map(|o| (o.addr, o.end())))
        .collect();
    moving.sort_unstable();
    moving.dedup();
    let ranges = pair.old.image.ranges();
    let image_bounds =
        (ranges.iter().map(|r| r.0).min().unwrap_or(u64::MAX), ranges.iter().map(|r| r.1).max().unwrap_or(0));
    let pages = PageSet::of(&moving);
    let m = Moving { image: &pair.old.image, stack: pair.stack, image_bounds, blocks: moving, pages };
    let walked: Vec<u64> = reached.blocks.keys().copied().collect();
    let mut checked = Checked::default();
    let mut batches: Vec<Batch> = Vec::new();
    // The batch being gathered: the positions and addresses of its first and last blocks
    // to check.
    let mut open: Option<((usize, u64), (usize, u64))> = None;
    let close = |((first, a), (last, z)): ((usize, u64), (usize, u64))| Batch {
        first,
        end: last + 1,
        mapped: pair.old_mem.slice(a, (z - a) as usize),
    };
    let mut skips = Skips::from(&walked, 0);
    for (i, o) in heap.iter().enumerate() {
        if skips.skips(&o) {
            continue;
        }
        open = match open {
            Some((first, last)) if o.end() - first.1 > BATCH => {
                batches.push(close((first, last)));
                Some(((i, o.addr), (i, o.end())))
            }
            Some((first, _)) => Some((first, (i, o.end()))),
            None => Some(((i, o.addr), (i, o.end()))),
        };
        checked.blocks += 1;
        checked.bytes += o.size;
    }
    batches.extend(open.map(close));
    let (mapped, unmapped): (Vec<&Batch>, Vec<&Batch>) = batches.iter().partition(|b| b.mapped.is_some());
    let scan = |part: &[&Batch]| {
        part.iter().try_for_each(|b| check_batch(&m, heap.range(b.first, b.end), &walked, b.mapped.unwrap_or_default()))
    };
    let (mine, theirs) = mapped.split_at(mapped.len() / 2);
    let found = std::thread::scope(|s| {
        let other = s.spawn(|| scan(theirs));
        let mut buf = Vec::new();
        let read = unmapped.iter().try_for_each(|b| {
            let (start, end) = (heap.get(b.first).addr, heap.get(b.end - 1).end());
            buf.resize((end - start) as usize, 0);
            if let Err(e) = pair.old_mem.read_once(start, &mut buf) {
                return Err((start, format!("the heap at {start:#x}: {e}")));
            }
            check_batch(&m, heap.range(b.first, b.end), &walked, &buf)
        });
        // The lowest address found, whichever part found it: the same answer every time.
        [scan(mine), read, other.join().unwrap_or_else(|_| Err((0, "the check's thread panicked".into())))]
            .into_iter()
            .filter_map(Result::err)
            .min_by_key(|(at, _)| *at)
    });
    match found {
        Some((_, what)) => Err(what),
        None => Ok(checked),
    }
}

#[cfg(test)]
mod tests {
    use super::{PageSet, Skips};
    use mcr_heap::Object;

    #[test]
    fn the_check_skips_walked_and_startup_blocks_in_address_order() {
        let o = |addr, startup| Object { addr, size: 16, startup };
        let walked = [0x20, 0x40, 0x90];
        let mut s = Skips::from(&walked, 0);
        let got: Vec<bool> =
            [o(0x10, false), o(0x20, false), o(0x30, true), o(0x50, false), o(0x90, false), o(0xa0, false)]
                .iter()
                .map(|b| s.skips(b))
                .collect();
        assert_eq!(got, [false, true, true, false, true, false]);
        let mut s = Skips::from(&walked, 0x40);
        assert!(s.skips(&o(0x40, false)) && !s.skips(&o(0x80, false)));
    }

    #[test]
    fn a_page_set_holds_the_pages_its_blocks_touch_and_no_other() {
        let s = PageSet::of(&[(0x10_0ff8, 0x10_1008), (0x20_0000, 0x20_0010)]);
        for v in [0x10_0000, 0x10_0ff8, 0x10_1fff, 0x20_0000, 0x20_0fff] {
            assert!(s.has(v), "{v:#x}");
        }
        for v in [0xf_ffff, 0x10_2000, 0x1f_ffff, 0x20_1000, 0, u64::MAX] {
            assert!(!s.has(v), "{v:#x}");
        }
        assert!(!PageSet::of(&[]).has(0x1000));
    }
}
