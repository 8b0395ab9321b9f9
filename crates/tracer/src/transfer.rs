//! One process's transfer, phase by phase: the roots ([`crate::roots`]), the walk from
//! them ([`crate::walk`]), the plan ([`crate::plan`]), the write ([`crate::write`]).

use crate::census::{Census, PointerCensus};
use crate::hints::{object_handlers, Hints};
use crate::image::Image;
use crate::plan::{describe_unmatched, plan};
use crate::startup::{Placement, StartupTables};
use crate::target::{startup_block_size, Target, TargetError};
use crate::write::{Destinations, Writer};
use crate::{roots, untouched, untyped, walk, write};
use mcr_heap::{HeapIndex, MemoryError, ReadMemory};
use mcr_typemodel::Program;
use std::time::Instant;

/// At most this many reasons for reallocated startup objects go into a report.
const MAX_STARTUP_NOTES: usize = 16;

/// One version's binary and where it is loaded.
pub struct Version<'a> {
    pub prog: &'a Program,
    pub image: Image,
}

/// An old process and its new counterpart.
pub struct Pair<'a> {
    pub old: Version<'a>,
    pub old_mem: &'a dyn ReadMemory,
    pub heap: &'a HeapIndex,
    pub new: Version<'a>,
    /// Whether old memory `[addr, addr + len)` was written since startup; `None` when
    /// nothing tracked writes (everything counts as written).
    pub dirty: Option<&'a dyn Fn(u64, u64) -> bool>,
    /// Both versions' startup allocations, to match startup objects (`None`: every
    /// reached block is reallocated).
    pub startup: Option<&'a StartupTables>,
    /// The new process's memory, read-only (string literals are looked for in its
    /// binary); `None`: pointers to literals move only as the new startup set them.
    pub new_mem: Option<&'a dyn ReadMemory>,
    /// Whether the old heap block at an address is in a region the new process adopted
    /// (mapped at the same address, its blocks the new process's own); `None`: nothing was
    /// adopted, every block goes to a fresh or matched block.
    pub adopted: Option<&'a dyn Fn(u64) -> bool>,
    /// Where the old process's main stack (its arguments and environment) is in the new
    /// one ([`crate::StackMap`]); `None`: at the same addresses.
    pub stack: Option<&'a crate::StackMap>,
    /// Whether the new process has memory of the same kind as the old one at an address
    /// outside the heap, the binary and the main stack (libraries, threads' stacks and
    /// what startup mapped keep their addresses: a pointer there keeps its value), else
    /// what differs; `None`: not checked.
    pub same_memory: Option<&'a dyn Fn(u64) -> Result<(), String>>,
    /// The old binary's initial bytes (its data, zeros past it) at a link-time address,
    /// to tell values startup computed from values the build set; `None`: unknown.
    pub initial: Option<&'a dyn Fn(u64, u64) -> Option<Vec<u8>>>,
    /// Count the pointers the transfer traces ([`PointerCensus`]), with whether an
    /// address is in one of the old process's shared libraries; the whole state is then
    /// walked (an update that changes no type would walk only a part of it).
    pub census: Option<&'a dyn Fn(u64) -> bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {reason}")]
    Conflict { path: String, reason: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the new version: {0}")]
    Target(#[from] TargetError),
    #[error("the new version: asked for {asked} blocks, got {got}")]
    Allocated { asked: usize, got: usize },
    /// The new version's object handler failed on `object` (a global's name, or the type
    /// of the heap objects it was given).
    #[error("{object}: {source}")]
    Handler {
        object: String,
        #[source]
        source: TargetError,
    },
}

pub(crate) fn conflict(path: impl Into<String>, reason: impl Into<String>) -> TransferError {
    TransferError::Conflict { path: path.into(), reason: reason.into() }
}

/// What a transfer did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Globals copied into the new version (written since startup).
    pub globals: usize,
    /// Globals left as the new version's startup made them (not written since startup).
    pub globals_clean: usize,
    /// Globals of the old version the new one no longer has: their data is dropped.
    pub globals_dropped: Vec<String>,
    /// Heap blocks carried into the new version (fresh blocks, startup blocks of the new
    /// version matched with old ones, and blocks of the adopted heap that stay where they
    /// are), and the bytes written into them.
    pub objects: usize,
    pub bytes: u64,
    /// Old startup objects matched with the new version's startup block of the same
    /// call-stack ID, thread and ordinal (reused: not reallocated, nothing leaked).
    pub startup_matched: usize,
    /// Of those, how many kept what the new version's startup put in them (the old
    /// version never wrote them since startup).
    pub startup_kept: usize,
    /// Old startup objects reallocated instead (no counterpart, or one too small), and
    /// why (the first few).
    pub startup_reallocated: usize,
    pub startup_notes: Vec<String>,
    /// Live heap blocks in the old process (reached or not).
    pub live_objects: usize,
    /// Objects an MCR_ADD_OBJ_HANDLER of the new version adjusted.
    pub handled: usize,
    /// Of the objects carried, those that stayed where they were in the adopted old heap
    /// (not copied; rewritten only where they changed), and the bytes rewritten in them.
    #[serde(default)]
    pub in_place: usize,
    #[serde(default)]
    pub in_place_bytes: u64,
    /// Old blocks of the adopted heap the new process freed (copied elsewhere, or no
    /// longer reached).
    #[serde(default)]
    pub old_freed: usize,
    /// Blocks kept where they are because memory mcr cannot type (a union, a `void *`
    /// target's bytes, an integer) holds their address (conservative tracing).
    #[serde(default)]
    pub pinned: usize,
    /// Of those, blocks a library allocated at startup that the new version's startup
    /// allocated at the same address (its code holds them there: one object, not two).
    #[serde(default)]
    pub held_by_new_startup: usize,
    /// Live blocks of the adopted heap the transfer neither walked nor wrote (an update
    /// that changes no type: they stay where they are, as they are), and the heap bytes
    /// that were only checked for addresses that move ([`crate::untouched`]: their blocks
    /// and the free slots between them).
    #[serde(default)]
    pub untouched: usize,
    #[serde(default)]
    pub untouched_bytes: u64,
    /// Why the walk went through every reachable block instead (a type changes, or an
    /// untouched block would have held an address that moves), when it did.
    #[serde(default)]
    pub walked_all: Option<String>,
    /// Where the time went, in milliseconds: the walk (and the plan) of the blocks, the
    /// check of the untouched ones, the write of the new version's blocks and globals.
    #[serde(default)]
    pub walk_ms: f64,
    #[serde(default)]
    pub check_ms: f64,
    #[serde(default)]
    pub write_ms: f64,
    pub warnings: Vec<String>,
    /// The pointers traced, precise and likely (`mcr update --count-pointers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointers: Option<PointerCensus>,
}

impl Report {
    /// Add another process's figures to these.
    pub fn add(&mut self, o: &Report) {
        self.globals += o.globals;
        self.globals_clean += o.globals_clean;
        self.globals_dropped.extend(o.globals_dropped.iter().cloned());
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.live_objects += o.live_objects;
        self.handled += o.handled;
        self.in_place += o.in_place;
        self.in_place_bytes += o.in_place_bytes;
        self.old_freed += o.old_freed;
        self.pinned += o.pinned;
        self.held_by_new_startup += o.held_by_new_startup;
        self.untouched += o.untouched;
        self.untouched_bytes += o.untouched_bytes;
        if self.walked_all.is_none() {
            self.walked_all.clone_from(&o.walked_all);
        }
        self.walk_ms += o.walk_ms;
        self.check_ms += o.check_ms;
        self.write_ms += o.write_ms;
        self.startup_matched += o.startup_matched;
        self.startup_kept += o.startup_kept;
        self.startup_reallocated += o.startup_reallocated;
        self.startup_notes.extend(o.startup_notes.iter().cloned());
        self.warnings.extend(o.warnings.iter().cloned());
        if let Some(p) = &o.pointers {
            self.pointers.get_or_insert_with(PointerCensus::default).add(p);
        }
    }
}

/// The result: what moved where, for relocating what the kernel holds (epoll data).
pub struct Transfer {
    moved: Destinations,
    pub report: Report,
    /// The new values of the words [`transfer_with_words`] was given, in their order.
    pub words: Vec<u64>,
}

impl Transfer {
    /// The new value of `v` if it points into a block this transfer moved.
    pub fn relocate(&self, heap: &HeapIndex, v: u64) -> Option<u64> {
        let (pos, o) = heap.find(v)?;
        let o = &o;
        self.moved.get_at(pos, o)?.at(v - o.addr)
    }
}

/// Move the state of one old process into its new counterpart.
pub fn transfer(pair: &Pair, target: &mut dyn Target) -> Result<Transfer, TransferError> {
    transfer_with_words(pair, target, &[])
}

/// [`transfer`], and relocate `words`: (label, value) pairs the old process holds outside
/// its memory (a pthread key's value, which only its thread can read), each taken as an
/// untyped pointer: into a heap block, to where that block went (the block moves with
/// the state); into the old binary, to the same symbol (or string literal) in the new
/// one; anything else stays as it is (libraries sit at the same addresses in both
/// versions; an integer is not an address of anything the old version owns). One that
/// cannot be relocated is a conflict named by its label.
pub fn transfer_with_words(
    pair: &Pair,
    target: &mut dyn Target,
    words: &[(String, u64)],
) -> Result<Transfer, TransferError> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let hints = Hints::of_builds(old, new);
    let mut report = Report {
        live_objects: pair.heap.len(),
        warnings: hints.unresolved.iter().map(|u| format!("hint ignored: {u}")).collect(),
        ..Report::default()
    };
    let roots = roots::collect(pair)?;
    if let Some(c) = roots.recomputed.first() {
        return Err(conflict(
            &c.path,
            format!(
                "the old version's startup set it to {}, the new version's to {}{}: the state that moves was built \
                 with the old value (an index, a count: nginx numbers its modules so, and a new module shifts them), \
                 and the new code would read it with the new one (mcr keeps what a new startup computes in a global \
                 the old version did not write since), so it may read that state wrong",
                c.old,
                c.new,
                match roots.recomputed.len() {
                    1 => String::new(),
                    n => format!(" ({} more such values)", n - 1),
                }
            ),
        ));
    }
    report.globals_clean = roots.clean;
    report.globals_dropped = roots.dropped;

    let adopted = |a: u64| pair.adopted.is_some_and(|f| f(a));
    let handlers = object_handlers(new);
    let walk_plan = |seal: &dyn Fn(&mcr_heap::Object, mcr_typemodel::TypeId) -> bool| {
        // A block of bytes stays as it is unless it holds an address in the old binary
        // (which the write would relocate: see `Writer::relocate_binary_words`).
        let keep = |bytes: &[u8]| pair.old.image.addresses_in(bytes).next().is_none();
        let keep: Option<&walk::KeepBytes<'_>> = pair.adopted.is_some().then_some(&keep);
        // Only a block of the adopted heap is where the new version's code expects it.
        let held = match (pair.startup, pair.adopted) {
            (Some(s), Some(_)) => &s.held[..],
            _ => &[],
        };
        let reached =
            walk::walk(old, pair.old_mem, pair.heap, &hints, &roots.globals, words, held, &adopted, seal, keep)?;
        let plan =
            plan(old, new, &reached, &handlers, pair.startup, &adopted, &mut |b| startup_block_size(&*target, b))?;
        Ok::<_, TransferError>((reached, plan))
    };
    // An update that changes no type leaves the adopted heap as it is: the walk stops at
    // its blocks, then a scan makes sure none of those it left holds an address that
    // moves; if one does, everything is walked (`untouched`).
    let mut sealed = None;
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
    report.walked_all = match pair.census {
        Some(_) => Some("--count-pointers".into()),
        None => untouched::why_walk_all(pair, &hints, &handlers),
    };
    if report.walked_all.is_none() {
        let sealer = untouched::Sealer::new(old, new, &adopted);
        let started = Instant::now();
        let (reached, plan) = walk_plan(&|o, t| sealer.seals(o, t))?;
        report.walk_ms += ms(started);
        let started = Instant::now();
        let checked = untouched::check(pair, &reached, &plan);
        report.check_ms = ms(started);
        match checked {
            Ok(checked) => {
                report.untouched = checked.blocks;
                report.untouched_bytes = checked.bytes;
                sealed = Some((reached, plan));
            }
            Err(why) => report.walked_all = Some(why),
        }
    }
    let untouched = sealed.is_some();
    let started = Instant::now();
    let (reached, plan) = match sealed {
        Some(done) => done,
        None => walk_plan(&|_, _| false)?,
    };
    report.walk_ms += ms(started);
    if let Some(library) = pair.census {
        let binary = |v: u64| pair.old.image.contains(v);
        let census = Census::new(old, pair.heap, &hints, &binary, library);
        report.pointers = Some(census.count(&roots.globals, words, &reached));
    }
    let started = Instant::now();
    report.pinned = reached.pinned.len();
    report.held_by_new_startup = reached.pinned.values().filter(|p| p.held).count();
    report.warnings.extend(untyped::check(pair, &hints, &reached)?);
    report.startup_reallocated = plan.unmatched.len();
    report.startup_notes = plan
        .unmatched
        .iter()
        .take(MAX_STARTUP_NOTES)
        .map(|(a, why)| describe_unmatched(&reached, pair.startup, *a, why))
        .collect();

    let moved = write::allocate(target, &plan, pair.heap.len(), &reached.kept)?;
    let moved = if untouched { moved.others_stay() } else { moved };
    let relocations = if handlers.is_empty() { Vec::new() } else { write::relocations(pair, &reached, &moved) };
    let writer = Writer {
        pair,
        hints: &hints,
        reached: &reached,
        plan: &plan,
        moved: &moved,
        handlers: &handlers,
        relocations: &relocations,
        literals: Default::default(),
        literal_moves: Default::default(),
    };
    writer.blocks(target, &mut report)?;
    writer.globals(target, &roots.globals, &mut report)?;
    // The adopted old blocks that did not stay where they are were copied elsewhere (or
    // were not reached: the state no longer holds them): the new process frees them.
    // When the walk sealed the heap, what it did not reach stays.
    let heap = pair.heap;
    let in_place = plan.blocks.iter().filter(|b| b.placement == Placement::InPlace).map(|b| b.pos);
    report.in_place = in_place.clone().count() + reached.kept.len();
    let garbage: Vec<u64> = if untouched {
        // What was copied elsewhere, and the old startup objects nothing reaches (the
        // check made sure no untouched block points into a startup object: the walk would
        // have found it): each update's startup otherwise left its garbage for good.
        let unreached_startup = heap.startup_blocks().filter(|o| !reached.blocks.contains_key(&o.addr)).map(|o| o.addr);
        plan.blocks
            .iter()
            .filter(|b| b.placement != Placement::InPlace)
            .map(|b| b.old)
            .chain(unreached_startup)
            .filter(|&a| adopted(a))
            .collect()
    } else {
        // By heap index position (a set of millions of addresses cost a sixth of a layout
        // update of 1 000 000 keys).
        let mut stayed = vec![false; heap.len()];
        for pos in in_place.chain(reached.kept.iter().map(|k| k.1)) {
            if let Some(s) = stayed.get_mut(pos as usize) {
                *s = true;
            }
        }
        heap.iter().zip(&stayed).filter(|(o, &s)| !s && adopted(o.addr)).map(|(o, _)| o.addr).collect()
    };
    if !garbage.is_empty() {
        target.free(&garbage)?;
    }
    report.write_ms = ms(started);
    report.old_freed = garbage.len();
    let words = words
        .iter()
        .map(|(label, v)| writer.relocate_word_root(*v, label).map_err(|reason| conflict(label, reason)))
        .collect::<Result<_, _>>()?;
    Ok(Transfer { moved, report, words })
}

#[cfg(test)]
mod tests {
    use super::{transfer_with_words, TransferError};
    use crate::startup::StartupKey;
    use crate::target::TargetError;
    use crate::testing::{
        list_program, new_list, node, old_list, pool_and_cfg, pool_with_arena, words, World, HEAD, NEW_BIAS, NEW_HEAD,
        NEW_HEAP, OLD_HEAP,
    };
    use mcr_protocol::Relocation;
    use mcr_typemodel::SymbolKind;

    fn grown_list() -> World {
        World::new(list_program(false, |_, _| {}), list_program(true, |_, _| {}))
    }

    #[test]
    fn in_an_adopted_heap_an_update_that_changes_no_type_leaves_every_block_untouched() {
        let mut w = World::new(list_program(false, |_, _| {}), list_program(false, |_, _| {}));
        w.adopted_heap = true;
        let unreached = w.old_proc.block(&node(9, 0), false);
        let startup_garbage = w.old_proc.block(&node(8, 0), true);
        let old = old_list(&mut w, &[1, 2, -3]);
        let t = w.transfer().expect("transfer");
        assert!(w.new_proc.allocations.iter().all(|a| a.is_empty()), "nothing allocated: {:?}", w.new_proc.allocations);
        let heap_writes: Vec<_> = w.new_proc.writes.iter().filter(|(a, _)| *a >= OLD_HEAP).collect();
        assert!(heap_writes.is_empty(), "no heap block is written: {heap_writes:x?}");
        let mem = &w.new_proc.mem;
        assert_eq!(mem.u64(w.new_global("head")), old[0], "head points to the first node where it was");
        assert_eq!((mem.i32(old[1]), mem.u64(old[1] + 8)), (2, old[2]), "the second node, its value and link");
        let r = &t.report;
        assert_eq!(r.walked_all, None);
        // The bytes read: from the first block to the last one's end (a startup block and
        // the free space between blocks included).
        assert_eq!((r.objects, r.in_place, r.old_freed, r.untouched, r.untouched_bytes), (0, 0, 1, 4, 144), "{r:?}");
        assert_eq!(
            w.new_proc.freed,
            [startup_garbage],
            "an unreached block may be what only an untouched one leads to, so it is kept; an old startup object \
             nothing points to is garbage"
        );
        assert_eq!(mem.i32(unreached), 9);
        let heap = w.old_proc.heap();
        assert_eq!(t.relocate(&heap, old[2] + 8), Some(old[2] + 8), "untouched: addresses stay");
    }

    #[test]
    fn in_an_adopted_heap_an_untouched_block_holding_an_address_that_moves_makes_the_walk_go_everywhere() {
        let program = || {
            list_program(false, |b, ids| {
                pool_and_cfg(b, ids);
                b.symbol("head", HEAD, 8, SymbolKind::Object);
            })
        };
        let mut w = World::new(program(), program());
        w.adopted_heap = true;
        let (pool, other) = pool_with_arena(&mut w);
        w.set_global("cfg", &(pool + 56).to_ne_bytes());
        let old = old_list(&mut w, &[1, 2]);
        let unreached = w.old_proc.block(&node(9, 0), false);
        // The arena's last word: the address of `head`, a global, which the new binary
        // has elsewhere.
        w.old_proc.mem.write(pool + 64, &HEAD.to_ne_bytes());
        let t = w.transfer().expect("transfer");
        let r = &t.report;
        let why = r.walked_all.as_deref().unwrap_or_default();
        assert!(why.contains(&format!("the heap block at {pool:#x} holds {HEAD:#x} at offset 64")), "{why}");
        assert!(why.contains("old binary"), "{why}");
        assert_eq!((r.objects, r.in_place, r.pinned, r.old_freed, r.untouched), (4, 4, 1, 1, 0), "{r:?}");
        let mem = &w.new_proc.mem;
        assert_eq!(mem.u64(pool + 64), HEAD + NEW_BIAS, "the word now holds where head is in the new binary");
        assert_eq!(mem.u64(pool + 40), other, "the arena's word still points to the block, which stayed");
        assert_eq!(mem.u64(w.new_global("head")), old[0]);
        assert_eq!(w.new_proc.freed, [unreached], "walked everywhere: what nothing reaches is freed");
    }

    #[test]
    fn in_an_adopted_heap_a_pool_block_stays_as_it_is_with_what_its_arena_points_to() {
        let make = |grown| {
            list_program(false, |b, ids| {
                pool_and_cfg(b, ids);
                // A type that changes: the walk goes through every block.
                let s = b.strukt("changes", if grown { 16 } else { 8 }, &[("a", ids.long, 0)]);
                b.global("changes", 0x40_1100, s);
            })
        };
        let mut w = World::new(make(false), make(false));
        w.adopted_heap = true;
        let (pool, other) = pool_with_arena(&mut w);
        w.set_global("cfg", &(pool + 56).to_ne_bytes());
        let t = w.transfer().expect("code only");
        assert_eq!((t.report.untouched, t.report.objects), (2, 0), "{:?}", t.report);

        let mut w = World::new(make(false), make(true));
        w.adopted_heap = true;
        let (pool, other2) = pool_with_arena(&mut w);
        assert_eq!(other2, other);
        w.set_global("cfg", &(pool + 56).to_ne_bytes());
        let t = w.transfer().expect("transfer");
        let r = &t.report;
        assert_eq!(r.walked_all.as_deref(), Some("struct changes changes layout"));
        assert_eq!((r.objects, r.in_place, r.pinned, r.old_freed, r.untouched), (2, 2, 1, 0, 0), "{r:?}");
        assert!(!w.new_proc.wrote(pool, 72) && !w.new_proc.wrote(other, 16), "{:x?}", w.new_proc.writes);
        let mem = &w.new_proc.mem;
        assert_eq!(mem.u64(w.new_global("cfg")), pool + 56, "the object carved from the arena, where it was");
        assert_eq!(mem.u64(pool + 40), other, "the arena's word still points to the block, which stayed");
    }

    #[test]
    fn in_an_adopted_heap_blocks_reached_only_as_bytes_stay_unlisted_unless_they_need_rewriting() {
        let program = |grown| {
            list_program(grown, |b, ids| {
                let text = b.ptr(ids.char);
                let base = if grown { 0x40_1900 } else { 0x40_1100 };
                b.global("name", base, text);
                b.global("code", base + 8, text);
                b.global("alias", base + 16, text);
                b.symbol("head", if grown { NEW_HEAD } else { HEAD }, 8, SymbolKind::Object);
            })
        };
        let mut w = World::new(program(false), program(true));
        w.adopted_heap = true;
        let nodes = old_list(&mut w, &[1, 2]);
        let name = w.old_proc.block(b"a key, 16 bytes\0", false);
        // Bytes holding an address in the old binary: rewritten, so listed after all.
        let code = w.old_proc.block(&words(&[7, HEAD]), false);
        w.set_global("name", &name.to_ne_bytes());
        w.set_global("code", &code.to_ne_bytes());
        // The second node, reached as bytes before the list's typed pointers reach it.
        w.set_global("alias", &nodes[1].to_ne_bytes());
        let t = w.transfer().expect("transfer");
        let r = &t.report;
        // Carried: the two grown nodes and the code written (24 + 24 + 16 bytes), the name
        // kept; in place: the code and the name; freed: the old nodes.
        assert_eq!((r.objects, r.bytes, r.in_place, r.old_freed), (4, 64, 2, 2), "{r:?}");
        assert!(!w.new_proc.wrote(name, 16), "the kept block is not written: {:x?}", w.new_proc.writes);
        let mem = &w.new_proc.mem;
        assert_eq!(mem.u64(w.new_global("name")), name, "it stays where it was");
        assert_eq!(mem.bytes(name, 16).expect("kept"), b"a key, 16 bytes\0");
        assert_eq!(mem.u64(code + 8), NEW_HEAD + NEW_BIAS, "the binary address in the bytes: where head is now");
        let list = new_list(&w);
        assert_eq!(list.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 2], "the node reached as bytes first grew too");
        assert_eq!(mem.u64(w.new_global("alias")), list[1].1, "and the bytes pointer follows it");
    }

    #[test]
    fn in_an_adopted_heap_blocks_whose_type_grew_move_and_their_old_blocks_are_freed() {
        let mut w = grown_list();
        w.adopted_heap = true;
        let old = old_list(&mut w, &[1, 2, -3]);
        let t = w.transfer().expect("transfer");
        let new = new_list(&w);
        assert_eq!(new.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 2, -3]);
        assert!(new.iter().all(|n| n.1 >= NEW_HEAP), "grown nodes do not fit where they were: {new:x?}");
        let mut freed = w.new_proc.freed.clone();
        freed.sort();
        let mut want = old.clone();
        want.sort();
        assert_eq!(freed, want, "every old node was copied out, so freed");
        assert_eq!((t.report.in_place, t.report.old_freed), (0, 3));
    }

    #[test]
    fn in_an_adopted_heap_blocks_whose_type_shrank_move_too() {
        // A smaller object left in its block would read, at the next update, as one object
        // and a stray tail: the block's size is what objects are counted by.
        let mut w = World::new(list_program(true, |_, _| {}), list_program(false, |_, _| {}));
        w.adopted_heap = true;
        let mut next = 0u64;
        for v in [8i64, 7] {
            let mut bytes = v.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&[0; 8]);
            bytes.extend_from_slice(&next.to_ne_bytes());
            next = w.old_proc.block(&bytes, false);
        }
        w.set_global("head", &next.to_ne_bytes());
        let t = w.transfer().expect("transfer");
        assert_eq!((t.report.objects, t.report.in_place, t.report.old_freed), (2, 0, 2), "{:?}", t.report);
    }

    #[test]
    fn a_list_whose_node_gains_a_field_and_widens_an_int_is_rebuilt_node_by_node() {
        let mut w = grown_list();
        let unreached = w.old_proc.block(&node(9, 0), false);
        let old = old_list(&mut w, &[1, 2, -3]);
        let t = w.transfer().expect("transfer");
        let new = new_list(&w);
        assert_eq!(new.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 2, -3], "values carried, sign kept");
        assert!(new.iter().all(|n| n.1 >= NEW_HEAP), "every node in a fresh block: {new:x?}");
        assert!(new.iter().all(|n| w.new_proc.mem.i32(n.1 + 8) == 0), "the added field zeroed");
        assert_eq!(w.new_proc.allocations, [vec![24, 24, 24]], "one allocation per node, at the new size");
        let r = &t.report;
        assert_eq!((r.objects, r.bytes, r.globals, r.live_objects), (3, 72, 1, 4), "{r:?}");
        let heap = w.old_proc.heap();
        for (o, n) in old.iter().zip(&new) {
            assert_eq!(t.relocate(&heap, *o), Some(n.1), "where the old node went");
        }
        assert_eq!(t.relocate(&heap, unreached), None, "an unreached block does not move");
    }

    #[test]
    fn a_global_not_written_since_startup_keeps_what_the_new_startup_made() {
        let make = |grown| {
            list_program(grown, |b, ids| {
                b.global("count", 0x40_1010, ids.int);
            })
        };
        let run = |written: Vec<(u64, u64)>| {
            let mut w = World::new(make(false), make(true));
            old_list(&mut w, &[5]);
            w.set_global("count", &42i32.to_ne_bytes());
            w.set_new_global("count", &7i32.to_ne_bytes());
            w.written = Some(written);
            let t = w.transfer().expect("transfer");
            (w.new_proc.mem.i32(w.new_global("count")), new_list(&w).len(), t.report)
        };
        let (count, nodes, r) = run(vec![(HEAD, HEAD + 8)]);
        assert_eq!((count, nodes), (7, 1), "count clean: the new startup's value stays; head written: moved");
        assert_eq!((r.globals, r.globals_clean), (1, 1), "{r:?}");
        let (count, _, r) = run(vec![(HEAD, HEAD + 8), (0x40_1010, 0x40_1014)]);
        assert_eq!(count, 42, "written since startup: the old value wins");
        assert_eq!((r.globals, r.globals_clean), (2, 0), "{r:?}");
        let (_, nodes, r) = run(vec![]);
        assert_eq!((nodes, r.objects, r.globals_clean), (0, 0, 2), "nothing written: nothing reached, nothing moved");
    }

    #[test]
    fn a_global_the_new_version_dropped_is_reported() {
        let old = list_program(false, |b, ids| {
            b.global("gone", 0x40_1020, ids.long);
        });
        let mut w = World::new(old, list_program(true, |_, _| {}));
        old_list(&mut w, &[1]);
        w.set_global("gone", &5u64.to_ne_bytes());
        let t = w.transfer().expect("transfer");
        assert_eq!(t.report.globals_dropped, ["gone"]);
        assert_eq!(t.report.globals, 1);
    }

    #[test]
    fn a_void_pointer_target_is_copied_as_bytes() {
        let make = |grown| {
            list_program(grown, |b, _| {
                let v = b.void_ptr();
                b.global("blob", 0x40_1030, v);
            })
        };
        let mut w = World::new(make(false), make(true));
        old_list(&mut w, &[1]);
        let data: Vec<u8> = (0..40).collect();
        let blob = w.old_proc.block(&data, false);
        w.set_global("blob", &blob.to_ne_bytes());
        let t = w.transfer().expect("transfer");
        let at = w.new_proc.mem.u64(w.new_global("blob"));
        assert!(at >= NEW_HEAP && at != blob, "the void * follows its block: {at:#x}");
        assert_eq!(w.new_proc.mem.bytes(at, 40), Some(data), "the bytes as they were");
        assert_eq!(t.report.objects, 2);
    }

    #[test]
    fn words_held_outside_memory_move_like_void_pointers() {
        let make = |grown| {
            list_program(grown, |b, ids| {
                let at = if grown { 0x40_2100 } else { 0x40_2000 };
                b.global("target", at, ids.long);
                b.symbol("target", at, 8, SymbolKind::Object);
            })
        };
        let mut w = World::new(make(false), make(true));
        old_list(&mut w, &[1]);
        w.set_global("target", &42u64.to_ne_bytes());
        let data: Vec<u8> = (0..24).collect();
        let blob = w.old_proc.block(&data, false);
        let library = 0x7fff_f7a0_1234;
        let words: Vec<(String, u64)> =
            [("a global", 0x40_2004), ("a block", blob + 8), ("a library", library), ("null", 0)]
                .into_iter()
                .map(|(l, v)| (l.to_string(), v))
                .collect();
        let t = w.with_pair(|pair, np| transfer_with_words(pair, np, &words)).expect("transfer");
        assert_eq!(t.words[0], 0x40_2104 + NEW_BIAS, "the same global, the same offset, in the new binary");
        let block = t.words[1] - 8;
        assert!(block >= NEW_HEAP, "the block only the word reaches moved with it: {block:#x}");
        assert_eq!(w.new_proc.mem.bytes(block, 24), Some(data), "as bytes");
        assert_eq!(&t.words[2..], [library, 0], "not the old version's: as it is");
        assert_eq!(t.report.objects, 2, "the list's node and the block");

        let mut w = World::new(make(false), make(true));
        old_list(&mut w, &[1]);
        w.set_global("target", &42u64.to_ne_bytes());
        let nowhere = [("pthread key 3".to_string(), 0x40_3000)];
        match w.with_pair(|pair, np| transfer_with_words(pair, np, &nowhere)) {
            Err(TransferError::Conflict { path, reason }) => {
                assert_eq!(path, "pthread key 3");
                assert!(reason.contains("no symbol") && !reason.starts_with("pthread key"), "{reason}");
            }
            other => panic!("expected a conflict, got {:?}", other.map(|t| t.words)),
        }
    }

    #[test]
    fn a_union_holding_a_heap_address_stops_the_transfer_until_a_hint_types_it() {
        let make = |grown, hint: Option<&str>| {
            list_program(grown, |b, ids| {
                let u = b.union("val", 8, &[("n", ids.long), ("p", ids.node_ptr)]);
                let slot = b.strukt("slot", 16, &[("kind", ids.int, 0), ("v", u, 8)]);
                b.global("last", 0x40_1040, slot);
                if let Some(h) = hint {
                    b.hint(h);
                }
            })
        };
        let setup = |hint| {
            let mut w = World::new(make(false, None), make(true, hint));
            let nodes = old_list(&mut w, &[1, 2]);
            w.set_global("last", &words(&[1, nodes[1]]));
            (w, nodes)
        };
        let (mut w, nodes) = setup(None);
        match w.transfer() {
            Err(TransferError::Conflict { path, reason }) => {
                assert_eq!(path, "last.v+0");
                assert!(reason.contains("a union holds") && reason.contains(&format!("{:#x}", nodes[1])), "{reason}");
                assert!(reason.contains("MCR_POINTS_TO"), "names the annotation that resolves it: {reason}");
            }
            other => panic!("expected a conflict, got {:?}", other.map(|t| t.report)),
        }
        assert!(w.new_proc.writes.is_empty(), "nothing written into the new process");

        let (mut w, _) = setup(Some("points_to last.v=struct node"));
        w.transfer().expect("hinted: the union word is a typed pointer");
        let new = new_list(&w);
        let last = w.new_global("last");
        assert_eq!(w.new_proc.mem.u64(last + 8), new[1].1, "the union word follows the second node");
        assert_eq!(w.new_proc.mem.i32(last), 1);
    }

    #[test]
    fn startup_objects_are_matched_kept_or_reallocated() {
        let mut w = grown_list();
        // head -> n1 (startup, written) -> n3 (startup, no counterpart) -> n2 (startup, clean).
        let n2 = w.old_proc.block(&node(2, 0), true);
        let n3 = w.old_proc.block(&node(3, n2), true);
        let n1 = w.old_proc.block(&node(1, n3), true);
        w.set_global("head", &n1.to_ne_bytes());
        let grown = |val: i64| -> Vec<u8> {
            let mut b = words(&[val as u64, 0, 0]);
            b[8..12].copy_from_slice(&77i32.to_ne_bytes());
            b
        };
        let m1 = w.new_proc.startup_block(&grown(10));
        let m2 = w.new_proc.startup_block(&grown(20));
        w.startup_tables(&[(n1, 1), (n2, 2), (n3, 3)], &[(m1, 1), (m2, 2)]);
        w.written = Some(vec![(HEAD, HEAD + 8), (n1, n1 + 16), (n3, n3 + 16)]);
        let t = w.transfer().expect("transfer");
        let r = &t.report;
        assert_eq!((r.objects, r.startup_matched, r.startup_kept, r.startup_reallocated), (3, 2, 1, 1), "{r:?}");
        assert!(r.startup_notes[0].contains("has no counterpart in the new version's startup"), "{r:?}");
        let new = new_list(&w);
        assert_eq!(new.len(), 3, "{new:x?}");
        assert_eq!(new[0], (1, m1), "matched and written since startup: the old contents, in the new startup's block");
        assert!(new[1].1 != m1 && new[1].1 != m2 && new[1].0 == 3, "no counterpart: a fresh block");
        assert_eq!(new[2], (20, m2), "matched, never written: the new startup's contents stay");
        assert!(!w.new_proc.wrote(m2, 24), "the kept block is not written");
        assert_eq!(w.new_proc.allocations, [vec![24]], "one fresh block");
        assert_eq!(w.new_proc.adopted, [(new[1].1, StartupKey { stack: 3, thread: 1, ordinal: 0 })]);
    }

    #[test]
    fn object_handlers_get_the_old_bytes_and_where_everything_went() {
        let new = list_program(true, |b, _| b.hint("handler struct node"));
        let mut w = World::new(list_program(false, |_, _| {}), new);
        let old = old_list(&mut w, &[1, 2]);
        let t = w.transfer().expect("transfer");
        let new = new_list(&w);
        assert_eq!(t.report.handled, 2);
        let calls = &w.new_proc.handler_calls;
        assert_eq!(calls.len(), 1, "one call for every object of the type: {calls:?}");
        assert_eq!(calls[0].what, "struct node");
        let mut objects = calls[0].objects.clone();
        objects.sort_by_key(|o| o.1);
        let mut want = vec![(node(1, old[1]), new[0].1, 24), (node(2, 0), new[1].1, 24)];
        want.sort_by_key(|o| o.1);
        assert_eq!(objects, want, "each object's old bytes, its new address and size");
        let relocs = &calls[0].relocations;
        for (o, n) in old.iter().zip(&new) {
            assert!(
                relocs.contains(&Relocation { old: *o, len: 16, new: n.1, old_stride: 16, new_stride: 24 }),
                "{relocs:?}"
            );
        }
        assert!(relocs.iter().any(|r| r.old == HEAD && r.new == NEW_HEAD + NEW_BIAS), "and the globals: {relocs:?}");
        assert!(relocs.windows(2).all(|p| p[0].old < p[1].old), "sorted");
    }

    #[test]
    fn a_failing_object_handler_names_what_it_was_given() {
        let new = list_program(true, |b, _| b.hint("handler struct node"));
        let mut w = World::new(list_program(false, |_, _| {}), new);
        old_list(&mut w, &[1]);
        w.new_proc.handler_failure = Some("handler returned -1".into());
        let e = w.transfer().err().expect("the handler failed");
        assert!(matches!(&e, TransferError::Handler { object, .. } if object == "struct node"), "{e:?}");
        assert_eq!(e.to_string(), "struct node: handler returned -1");
    }

    #[test]
    fn the_new_processs_failures_say_what_failed() {
        let mut w = grown_list();
        old_list(&mut w, &[1, 2]);
        w.new_proc.short_allocation = true;
        let e = w.transfer().err().expect("short allocation");
        assert!(matches!(e, TransferError::Allocated { asked: 2, got: 1 }), "{e:?}");

        let mut w = grown_list();
        old_list(&mut w, &[1]);
        let head = w.new_global("head");
        w.new_proc = Default::default();
        let e = w.transfer().err().expect("the new global is not mapped");
        assert!(matches!(&e, TransferError::Target(TargetError::Read { addr, len: 8, .. }) if *addr == head), "{e:?}");
        assert_eq!(e.to_string(), format!("the new version: reading 8 bytes at {head:#x}: not mapped"));
    }
}
