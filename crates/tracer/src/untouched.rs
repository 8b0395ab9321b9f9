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
use mcr_heap::{HeapIndex, Object};
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
    /// reached).
    pub blocks: usize,
    /// The heap bytes read: every unit of blocks from its first block to its last one's
    /// end, free slots between them included.
    pub bytes: u64,
}

/// Bytes of the heap one piece of the check covers (units of blocks, merged while they
/// are contiguous): the pieces are shared between two threads.
const PIECE: u64 = 1 << 20;

/// Words scanned between two looks at whether any of them was a candidate: the inner loop
/// has no branch per word, and most stretches of a heap hold none.
const STRETCH: usize = 32;

/// What the check skips: startup blocks (they are freed when the walk did not reach them,
/// and nothing it does not walk may point into one: see `Moving::blocks`, so their bytes
/// do not matter) and the blocks the walk went through (`walked`, sorted: their words were
/// traced precisely).
fn skipped(o: &Object, walked: &[u64]) -> bool {
    o.startup || walked.binary_search(&o.addr).is_ok()
}

/// The first word of `bytes` (the heap from `start` on: whole units of blocks, with the
/// free slots between them) that lies in a live block the check does not skip and may
/// need rewriting: (its address, what it is). The scan reads every word at memory speed;
/// only a word that falls in one of the coarse ranges is looked at closer, and only a
/// word whose value may need rewriting is matched to its block (a free slot's stale
/// bytes, the slack after a block's requested size and skipped blocks do not count).
fn check_bytes(m: &Moving, heap: &HeapIndex, walked: &[u64], start: u64, bytes: &[u8]) -> Result<(), (u64, String)> {
    let [(a, al), (b, bl), (c, cl)] = m.coarse();
    let candidate = |v: u64| (v.wrapping_sub(a) < al) | (v.wrapping_sub(b) < bl) | (v.wrapping_sub(c) < cl);
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("8 bytes"));
    for (s, stretch) in bytes.chunks(STRETCH * 8).enumerate() {
        if !stretch.chunks_exact(8).fold(false, |any, w| any | candidate(word(w))) {
            continue;
        }
        for (k, w) in stretch.chunks_exact(8).enumerate() {
            let v = word(w);
            if !candidate(v) {
                continue;
            }
            let Some(what) = m.what(v) else { continue };
            let at = start + ((s * STRETCH + k) * 8) as u64;
            match heap.containing(at) {
                Some(o) if !skipped(&o, walked) => {
                    let msg =
                        format!("the heap block at {:#x} holds {v:#x} at offset {} ({what})", o.addr, at - o.addr);
                    return Err((at, msg));
                }
                _ => {}
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
    // Counted from the index and the few blocks skipped, not block by block: an update
    // that changes no type must not cost a pass over millions of blocks.
    let walked_blocks = reached.blocks.values().filter(|b| !b.obj.startup && heap.starting_at(b.obj.addr).is_some());
    let skipped = heap.startup_blocks().count() + walked_blocks.count();
    let mut checked = Checked { blocks: heap.len().saturating_sub(skipped), bytes: 0 };
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for (start, end) in heap.unit_extents() {
        match pieces.last_mut() {
            Some(last) if last.1 == start && end - last.0 <= PIECE => last.1 = end,
            _ => pieces.push((start, end)),
        }
    }
    // Memory the reader holds (the adopted heap's memfds, mapped) is checked on two
    // threads; the rest is read and checked one piece at a time on this one (the heap is
    // read once, and not kept).
    checked.bytes = pieces.iter().map(|(start, end)| end - start).sum();
    let (mapped, unmapped): (Vec<_>, Vec<_>) = pieces
        .iter()
        .map(|&(start, end)| (start, end, pair.old_mem.slice(start, (end - start) as usize)))
        .partition(|p| p.2.is_some());
    let scan = |part: &[(u64, u64, Option<&[u8]>)]| {
        part.iter().try_for_each(|&(start, _, bytes)| check_bytes(&m, heap, &walked, start, bytes.unwrap_or_default()))
    };
    let (mine, theirs) = mapped.split_at(mapped.len() / 2);
    let found = std::thread::scope(|s| {
        let other = s.spawn(|| scan(theirs));
        let mut buf = Vec::new();
        let read = unmapped.iter().try_for_each(|&(start, end, _)| {
            buf.resize((end - start) as usize, 0);
            if let Err(e) = pair.old_mem.read_once(start, &mut buf) {
                return Err((start, format!("the heap at {start:#x}: {e}")));
            }
            check_bytes(&m, heap, &walked, start, &buf)
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
    use super::PageSet;

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
