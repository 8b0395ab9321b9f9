//! The write: every reached block rebuilt in the new layout (fields by name, pointers
//! relocated: heap pointers to where their block went, tags kept; pointers into the old
//! binary and function pointers to the same symbol in the new one), written into its new
//! block; the new version's object handlers run on what they registered for; then the
//! globals, which now can point at the blocks. Only the new process is written.

use crate::hints::{field_suffix, key, normalize, tag_note, Hints, Tagged};
use crate::image::translate;
use crate::plan::{BlockPlan, TransferPlan, TypePlan};
use crate::roots::Root;
use crate::startup::{self, Placement, StartupKey};
use crate::target::Target;
use crate::transfer::{conflict, Pair, Report, TransferError};
use crate::walk::{typed_objects, Block, Reached};
use mcr_heap::ReadMemory;
use mcr_protocol::Relocation;
use mcr_typemodel::transform::{root_name, same_type, Plan, PointerSite};
use mcr_typemodel::{OpaqueReason, Pointee, Program, Type, TypeId};
use std::collections::{BTreeMap, HashMap};

/// Where one old block went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub new: u64,
    pub old_stride: u64,
    pub new_stride: u64,
}

impl Moved {
    /// New address for `offset` bytes into the old block.
    pub fn at(&self, offset: u64) -> Option<u64> {
        if self.old_stride == self.new_stride || self.old_stride == 0 {
            return Some(self.new + offset);
        }
        let (i, within) = (offset / self.old_stride, offset % self.old_stride);
        (within == 0).then_some(self.new + i * self.new_stride)
    }
}

/// In [`Destinations::by_pos`]: a block kept where it is ([`Reached::kept`]).
const STAYS: u32 = u32::MAX;

/// Where the reached blocks went, by old address; the blocks the walk did not go through
/// stay where they are when the walk sealed the adopted heap ([`crate::untouched`]).
#[derive(Debug, Default)]
pub struct Destinations {
    /// In the plan's order (old addresses ascending).
    blocks: Vec<(u64, Moved)>,
    /// By heap index position: 0, or 1 + the block's place in `blocks` (what the write
    /// looks up for every pointer it relocates: no search, no hashing).
    by_pos: Vec<u32>,
    others_stay: bool,
}

impl Destinations {
    /// Where the old block at `addr` went; `None`: the transfer did not carry it.
    pub fn get(&self, addr: &u64) -> Option<Moved> {
        let stays = Moved { new: *addr, old_stride: 0, new_stride: 0 };
        let i = self.blocks.binary_search_by_key(addr, |b| b.0).ok();
        i.map(|i| self.blocks[i].1).or_else(|| self.others_stay.then_some(stays))
    }

    /// [`Destinations::get`] for the block `o` at heap index position `pos`.
    pub fn get_at(&self, pos: usize, o: &mcr_heap::Object) -> Option<Moved> {
        let stays = Moved { new: o.addr, old_stride: 0, new_stride: 0 };
        match self.by_pos.get(pos).copied().unwrap_or(0) {
            STAYS => Some(stays),
            0 => self.others_stay.then_some(stays),
            i => self.blocks.get(i as usize - 1).map(|b| b.1),
        }
    }

    /// Where the `i`th block of the plan went.
    pub fn nth(&self, i: usize) -> Moved {
        self.blocks[i].1
    }

    /// The blocks the transfer placed, by old address.
    pub fn placed(&self) -> impl Iterator<Item = (&u64, &Moved)> {
        self.blocks.iter().map(|(a, m)| (a, m))
    }

    /// Blocks not placed stay where they are (an adopted heap the walk sealed).
    pub fn others_stay(mut self) -> Self {
        self.others_stay = true;
        self
    }
}

/// Allocate the fresh blocks `plan` asks for in the new process: where every reached
/// block goes (fresh, or its matched startup block). `heap_len`: how many blocks the old
/// heap index lists; `kept`: blocks that stay as they are ([`Reached::kept`]).
pub fn allocate(
    target: &mut dyn Target,
    plan: &TransferPlan,
    heap_len: usize,
    kept: &[(u64, u32)],
) -> Result<Destinations, TransferError> {
    let fresh: Vec<u64> =
        plan.blocks.iter().filter(|b| matches!(b.placement, Placement::Fresh { .. })).map(|b| b.size).collect();
    let got = if fresh.is_empty() { Vec::new() } else { target.allocate(&fresh)? };
    if got.len() != fresh.len() {
        return Err(TransferError::Allocated { asked: fresh.len(), got: got.len() });
    }
    let mut got = got.into_iter();
    let mut by_pos = vec![0u32; heap_len];
    let blocks = plan
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let new = match b.placement {
                Placement::Matched { new, .. } => new,
                Placement::Fresh { .. } => got.next().unwrap_or_default(),
                Placement::InPlace => b.old,
            };
            if let Some(slot) = by_pos.get_mut(b.pos as usize) {
                *slot = i as u32 + 1;
            }
            (b.old, Moved { new, old_stride: b.old_stride, new_stride: b.new_stride })
        })
        .collect();
    for &(_, pos) in kept {
        if let Some(slot) = by_pos.get_mut(pos as usize) {
            *slot = STAYS;
        }
    }
    Ok(Destinations { blocks, by_pos, others_stay: false })
}

/// Where everything went, for the handlers' `mcr_translate()`: the heap blocks the
/// transfer moved and the main binary's globals the new version has.
pub fn relocations(pair: &Pair, reached: &Reached, moved: &Destinations) -> Vec<Relocation> {
    let heap = pair.heap;
    let blocks = moved
        .placed()
        .zip(reached.blocks.values())
        .map(|((a, m), b)| Relocation {
            old: *a,
            len: b.obj.size,
            new: m.new,
            old_stride: m.old_stride,
            new_stride: m.new_stride,
        })
        // Blocks kept as they are translate to themselves.
        .chain(reached.kept.iter().filter_map(|&(a, pos)| {
            let len = ((pos as usize) < heap.len()).then(|| heap.get(pos as usize).size)?;
            Some(Relocation { old: a, len, new: a, old_stride: 0, new_stride: 0 })
        }))
        .collect();
    relocation_table(pair.old.prog, pair.old.image.bias, pair.new.prog, pair.new.image.bias, blocks)
}

/// Every old object whose new address the transfer knows: the heap blocks it moved
/// (`heap`) and the main binary's globals the new version has (by name; link-time
/// addresses plus each binary's load bias), sorted by old address.
pub(crate) fn relocation_table(
    old: &Program,
    old_bias: u64,
    new: &Program,
    new_bias: u64,
    mut heap: Vec<Relocation>,
) -> Vec<Relocation> {
    let news: HashMap<String, &mcr_typemodel::Global> =
        new.globals.iter().filter(|g| !g.is_tls()).map(|g| (g.display_name(), g)).collect();
    // One element of an array, or the whole object.
    let element = |p: &Program, t: TypeId| match p.ty(p.strip(t)) {
        Type::Array { element, .. } => p.size_of(*element),
        _ => p.size_of(t),
    };
    for g in &old.globals {
        let (Some(addr), Some(len)) = (g.address(), g.size) else { continue };
        let Some(ng) = news.get(&g.display_name()) else { continue };
        let (Some(naddr), Some(nlen)) = (ng.address(), ng.size) else { continue };
        // Offsets carry over when the type did not change; else only element starts do.
        let (old_stride, new_stride) = if same_type(old, g.ty, new, ng.ty) {
            (0, 0)
        } else {
            (element(old, g.ty).unwrap_or(len), element(new, ng.ty).unwrap_or(nlen))
        };
        heap.push(Relocation { old: old_bias + addr, len, new: new_bias + naddr, old_stride, new_stride });
    }
    mcr_protocol::relocation::sorted(heap)
}

/// A block rebuilt in the new layout.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub bytes: Vec<u8>,
    /// Its heap pointers (offset, relocated value): what a matched block the old version
    /// never wrote must agree with to keep the new contents (listed for matched blocks
    /// only).
    pub heap_sites: Vec<(usize, u64)>,
}

/// Objects for one object handler: (old bytes, new address, new size).
type HandlerObjects = Vec<(Vec<u8>, u64, u64)>;

/// Everything the write needs, from the phases before it.
pub struct Writer<'w, 'a> {
    pub pair: &'w Pair<'a>,
    pub hints: &'w Hints,
    pub reached: &'w Reached,
    pub plan: &'w TransferPlan,
    pub moved: &'w Destinations,
    /// The new version's object handlers ([`crate::hints::object_handlers`]).
    pub handlers: &'w HashMap<String, String>,
    /// For the handlers' `mcr_translate()`; empty when there are no handlers.
    pub relocations: &'w [Relocation],
    /// The new binary's read-only bytes, read at the first pointer to a string literal.
    pub literals: std::cell::OnceCell<Option<crate::literal::ReadOnlyBytes>>,
    /// Where each old literal address went (or that it went nowhere), found once.
    pub literal_moves: std::cell::RefCell<HashMap<u64, Option<u64>>>,
}

impl Writer<'_, '_> {
    /// Where a pointer of the old process points in the new one.
    fn relocate_data(&self, v: u64, path: &str) -> Result<u64, String> {
        let pair = self.pair;
        if let Some((pos, o)) = pair.heap.find(v) {
            let o = &o;
            let m =
                self.moved.get_at(pos, o).ok_or_else(|| format!("{path}: points to a heap block mcr did not move"))?;
            return m.at(v - o.addr).ok_or_else(|| {
                format!("{path}: {v:#x} points into the middle of an element whose type changed{}", tag_note(v, o.addr))
            });
        }
        if pair.old.image.contains(v) {
            return translate(pair.old.prog, &pair.old.image, pair.new.prog, &pair.new.image, v)
                .or_else(|| self.relocate_literal(v))
                .ok_or_else(|| format!("{path}: points into the old binary at {v:#x}, where no symbol is"));
        }
        if let Some(stack) = pair.stack.filter(|m| m.covers(v)) {
            return stack.relocate(v).map_err(|why| format!("{path}: {why}"));
        }
        // Libraries, threads' stacks and other mappings sit at the same addresses in both
        // versions, when the new version has the same kind of memory there.
        if let Some(same) = pair.same_memory {
            same(v).map_err(|why| format!("{path}: {why}"))?;
        }
        Ok(v)
    }

    /// A word outside the old process's memory ([`crate::transfer::transfer_with_words`]):
    /// relocated as a `void *`, without a path of its own (the caller names it).
    pub fn relocate_word_root(&self, v: u64, label: &str) -> Result<u64, String> {
        if v == 0 {
            return Ok(0);
        }
        self.relocate_data(v, label).map_err(|e| e.strip_prefix(&format!("{label}: ")).unwrap_or(&e).to_string())
    }

    /// A pointer into the old binary's read-only data where no symbol is (a string
    /// literal): the new binary's one copy of the same string.
    fn relocate_literal(&self, v: u64) -> Option<u64> {
        // Pool memory holds the same few literals many times over (nginx's log actions).
        if let Some(&known) = self.literal_moves.borrow().get(&v) {
            return known;
        }
        let found = self.find_literal(v);
        self.literal_moves.borrow_mut().insert(v, found);
        found
    }

    /// The C string (through its NUL) at `v` in the old binary's read-only data, if `v`
    /// is there.
    fn old_literal(&self, v: u64) -> Option<Vec<u8>> {
        let (_, end) = self.pair.old.image.readonly_range(v)?;
        crate::literal::c_string_at(self.pair.old_mem, v, end)
    }

    fn find_literal(&self, v: u64) -> Option<u64> {
        let pair = self.pair;
        let text = self.old_literal(v)?;
        let new_mem = pair.new_mem?;
        let bytes = self.literals.get_or_init(|| Some(crate::literal::ReadOnlyBytes::read(&pair.new.image, new_mem)));
        // Where the old copy would be in the new binary, were nothing moved.
        let near = v.wrapping_sub(pair.old.image.bias).wrapping_add(pair.new.image.bias);
        bytes.as_ref()?.find(&text, near)
    }

    /// A typed or `void *` pointer: relocated, with its tag when an MCR_TAGGED hint
    /// names it (masked off to relocate, put back on the new address).
    fn relocate_tagged(&self, v: u64, path: &str) -> Result<u64, String> {
        let tags = &self.hints.tagged;
        let Some(t) = (!tags.is_empty()).then(|| tags.get(&normalize(path))).flatten() else {
            return self.relocate_data(v, path);
        };
        let (p, tag) = t.split(v);
        if p == 0 {
            return Ok(v);
        }
        let n = self.relocate_data(p, path)?;
        t.join(n, tag).ok_or_else(|| {
            format!("{path}: the new address {n:#x} has a low bit set, so it cannot carry the tag of {}", t.written)
        })
    }

    /// A word [`hinted_words`] found: relocated (with its tag) if it points into the heap.
    fn relocate_word(&self, v: u64, tag: &Option<Tagged>, path: &str) -> Result<Option<u64>, String> {
        let (p, bits) = tag.as_ref().map_or((v, 0), |t| t.split(v));
        if p == 0 || self.pair.heap.containing(p).is_none() {
            return Ok(None);
        }
        let n = self.relocate_data(p, path)?;
        match tag {
            Some(t) => t
                .join(n, bits)
                .map(Some)
                .ok_or_else(|| format!("{path}: the new address {n:#x} cannot carry the tag of {}", t.written)),
            None => Ok(Some(n)),
        }
    }

    /// A function pointer: the same symbol in the new binary.
    fn relocate_function(&self, s: &PointerSite) -> Result<u64, String> {
        let pair = self.pair;
        translate(pair.old.prog, &pair.old.image, pair.new.prog, &pair.new.image, s.old_value)
            .ok_or_else(|| format!("{}: function pointer {:#x} has no counterpart", s.path, s.old_value))
    }

    /// The block `block` in the new layout, `bp.size` bytes.
    pub fn rebuild(&self, block: &Block, bp: &BlockPlan) -> Result<Rebuilt, TransferError> {
        let (old, new) = (self.pair.old.prog, self.pair.new.prog);
        let old_bytes = self.reached.blocks.bytes(block);
        let mut out = Rebuilt { bytes: vec![0u8; bp.size as usize], heap_sites: Vec::new() };
        let Some(tp) = self.plan.of(block.reach.ty()) else {
            // Untyped: copied as bytes (a heap address in them pins its block, which stays
            // where it is), with what points into the old binary relocated.
            out.bytes.copy_from_slice(old_bytes);
            self.relocate_binary_words(&mut out.bytes, bp.old, 0)?;
            return Ok(out);
        };
        // Typed, but only the program's handler can build it: starts zeroed.
        let Some(plan) = &tp.transform else { return Ok(out) };
        let (os, ns) = (plan.old_size as usize, plan.new_size as usize);
        let t = block.reach.ty().expect("typed");
        let n = typed_objects(old, t, old_bytes.len() as u64) as usize;
        let hinted = !self.hints.points_to.is_empty() || !self.hints.tagged.is_empty();
        let fix =
            if hinted { hinted_words(old, t, new, tp.new_ty, &root_name(old, t), self.hints) } else { Vec::new() };
        let here = || self.reached.path_of(bp.old);
        // Only a matched startup block compares its heap pointers with what is there.
        let want_sites = matches!(bp.placement, Placement::Matched { .. });
        for k in 0..n {
            let sites = &mut out.heap_sites;
            plan.apply(
                &old_bytes[k * os..(k + 1) * os],
                &mut out.bytes[k * ns..(k + 1) * ns],
                &mut |s: PointerSite| match s.old_pointee {
                    Pointee::Function => self.relocate_function(&s),
                    _ => {
                        let v = self.relocate_tagged(s.old_value, s.path)?;
                        if want_sites && self.pair.heap.containing(s.old_value).is_some() {
                            sites.push((k * ns + s.new_offset as usize, v));
                        }
                        Ok(v)
                    }
                },
            )
            .map_err(|e| conflict(here(), e.to_string()))?;
            for (oo, no, tag) in &fix {
                let (oo, no) = (*oo, *no);
                let v = u64::from_ne_bytes(old_bytes[k * os + oo..k * os + oo + 8].try_into().expect("8 bytes"));
                if let Some(nv) = self.relocate_word(v, tag, "").map_err(|e| conflict(here(), e))? {
                    out.bytes[k * ns + no..k * ns + no + 8].copy_from_slice(&nv.to_ne_bytes());
                    out.heap_sites.push((k * ns + no, nv));
                }
            }
        }
        let tail = &old_bytes[n * os..];
        out.bytes[n * ns..n * ns + tail.len()].copy_from_slice(tail);
        self.relocate_binary_words(&mut out.bytes[n * ns..n * ns + tail.len()], bp.old, (n * os) as u64)?;
        Ok(out)
    }

    /// Memory mcr cannot type (an untyped block, the bytes past a block's last whole
    /// object): each aligned word that holds an address in the old binary (a function, a
    /// global, a string literal: nginx keeps its handlers and module pointers in pool
    /// memory reached through `void *`) is taken for a pointer and relocated to the same
    /// symbol or string in the new binary; one with no counterpart stops the update.
    /// Binaries load at addresses no integer a program keeps is likely to hold (with
    /// ASLR off, `0x5555_5555_xxxx`), so data is not mistaken for a pointer in practice.
    /// `bytes` are those of the old block at `block` from offset `from` (8-aligned, like
    /// every heap block).
    fn relocate_binary_words(&self, bytes: &mut [u8], block: u64, from: u64) -> Result<(), TransferError> {
        let found: Vec<(usize, u64)> = self.pair.old.image.addresses_in(bytes).collect();
        for (i, v) in found {
            let offset = from + 8 * i as u64;
            let n = self.relocate_data(v, "").map_err(|e| {
                conflict(
                    format!("{}+{offset} (the heap block at {block:#x})", self.reached.path_of(block)),
                    format!(
                        "memory mcr cannot type holds {v:#x}, an address in the old binary: {}",
                        e.trim_start_matches(": ")
                    ),
                )
            })?;
            bytes[8 * i..8 * i + 8].copy_from_slice(&n.to_ne_bytes());
        }
        Ok(())
    }

    /// Rebuild every reached block and write it into the new process; fresh blocks
    /// standing for old startup objects take over their identity; the object handlers
    /// run on what they registered for.
    pub fn blocks(&self, target: &mut dyn Target, report: &mut Report) -> Result<(), TransferError> {
        let mut for_handlers: BTreeMap<String, HandlerObjects> = BTreeMap::new();
        // The plan lists the reached blocks in the walk's order (by address).
        debug_assert_eq!(self.plan.blocks.len(), self.reached.blocks.len());
        for (i, (bp, block)) in self.plan.blocks.iter().zip(self.reached.blocks.values()).enumerate() {
            let tp = self.plan.of(block.reach.ty());
            let handler_only = tp.is_some_and(|p| p.transform.is_none());
            let out = self.rebuild(block, bp)?;
            let new_addr = self.moved.nth(i).new;
            let write = match bp.placement {
                Placement::Fresh { .. } => true,
                // Already there with the old bytes: only a change is written (and what a
                // handler is registered for goes to it, changed or not).
                Placement::InPlace => {
                    let same = self.reached.blocks.bytes(block).get(..out.bytes.len()) == Some(&out.bytes[..]);
                    let handled = tp.is_some_and(|p| p.handler.is_some());
                    if !same {
                        report.in_place_bytes += out.bytes.len() as u64;
                    }
                    !same || handled
                }
                Placement::Matched { new: at, .. } => {
                    report.startup_matched += 1;
                    // Written since startup: the old contents win. Never written: the new
                    // version's startup made the same object, its contents stay, unless its
                    // pointers disagree with the transferred state, or only a handler knows
                    // what the object holds.
                    let clean = self.pair.dirty.is_some_and(|d| !d(block.obj.addr, block.obj.size));
                    let keep = clean && !handler_only && {
                        let mut cur = vec![0u8; out.bytes.len()];
                        target.read(at, &mut cur)?;
                        startup::keeps_new_contents(&out.heap_sites, &cur)
                    };
                    if keep {
                        report.startup_kept += 1;
                    }
                    !keep
                }
            };
            if !write {
                continue;
            }
            // The handler registered for the type gets every object in the block.
            let handler = tp.filter(|tp| tp.old_stride > 0).and_then(|tp| Some((tp.handler.as_ref()?, tp)));
            if let Some((what, &TypePlan { old_stride: os, new_stride: ns, .. })) = handler {
                let list = for_handlers.entry(what.clone()).or_default();
                let objects = block.reach.ty().map_or(0, |t| typed_objects(self.pair.old.prog, t, block.obj.size));
                for k in 0..objects {
                    let (o, n) = ((k * os) as usize, new_addr + k * ns);
                    list.push((self.reached.blocks.bytes(block)[o..o + os as usize].to_vec(), n, ns));
                }
            }
            report.bytes += out.bytes.len() as u64;
            target.write_owned(new_addr, out.bytes)?;
        }
        // Fresh blocks standing for old startup objects take over their identity: the next
        // update matches them rather than copying them again (and leaking its own).
        let adopted: Vec<(u64, StartupKey)> = self
            .plan
            .blocks
            .iter()
            .filter_map(|b| match b.placement {
                Placement::Fresh { identity: Some(k) } => Some((self.moved.get(&b.old)?.new, k)),
                _ => None,
            })
            .collect();
        if !adopted.is_empty() {
            target.flush()?;
            target.adopt_startup(&adopted)?;
        }
        // Carried: the blocks written or kept where they are.
        report.objects = self.plan.blocks.len() + self.reached.kept.len();
        target.flush()?;
        for (what, objs) in &for_handlers {
            target
                .run_handlers(what, objs, self.relocations)
                .map_err(|source| TransferError::Handler { object: what.clone(), source })?;
            report.handled += objs.len();
        }
        Ok(())
    }

    /// Write the globals into the new process, transformed, their pointers relocated.
    pub fn globals(&self, target: &mut dyn Target, roots: &[Root], report: &mut Report) -> Result<(), TransferError> {
        for r in roots {
            self.global(target, r, report)?;
        }
        target.flush()?;
        Ok(())
    }

    fn global(&self, target: &mut dyn Target, r: &Root, report: &mut Report) -> Result<(), TransferError> {
        let pair = self.pair;
        let (old, new) = (pair.old.prog, pair.new.prog);
        let handler = self.handlers.get(&normalize(&r.plain)).cloned();
        let handler_failed = |source| TransferError::Handler { object: r.name.clone(), source };
        let plan = match Plan::with_root(old, r.old_ty, new, r.new_ty, &r.name) {
            Ok(p) => p,
            // The program's handler builds it from the old bytes.
            Err(_) if handler.is_some() => {
                let len = new.size_of(r.new_ty).unwrap_or(0);
                target
                    .run_handlers(
                        handler.as_deref().unwrap_or_default(),
                        &[(r.bytes.clone(), r.new_addr, len)],
                        self.relocations,
                    )
                    .map_err(handler_failed)?;
                report.handled += 1;
                report.globals += 1;
                return Ok(());
            }
            Err(e) => return Err(conflict(&r.name, e.to_string())),
        };
        let mut cur = vec![0u8; plan.new_len(r.bytes.len() as u64) as usize];
        target.read(r.new_addr, &mut cur)?;
        let before = cur.clone();
        let reader: &dyn Target = &*target;
        // Pointers to a string literal the new binary does not have: (offset in the new
        // global, the old string), given a kept copy once the transform is done.
        let mut unmatched_literals: Vec<(usize, Vec<u8>)> = Vec::new();
        plan.apply(&r.bytes, &mut cur, &mut |s: PointerSite| {
            let got = match s.old_pointee {
                Pointee::Function => self.relocate_function(&s),
                _ => self.relocate_tagged(s.old_value, s.path),
            };
            got.or_else(|e| {
                // A pointer to a string literal (no symbol): the new version's startup
                // set the same global to its own copy of the same string.
                let o = s.new_offset as usize;
                let mine = u64::from_ne_bytes(before[o..o + 8].try_into().expect("8 bytes"));
                if pair.old.image.contains(s.old_value) && same_c_string(pair.old_mem, s.old_value, reader, mine) {
                    Ok(mine)
                } else if let Some(text) = self.old_literal(s.old_value) {
                    // A string literal of the old build that the new one does not have
                    // (httpd's version string): a copy of its bytes, made below.
                    unmatched_literals.push((s.new_offset as usize, text));
                    Ok(0)
                } else {
                    Err(e)
                }
            })
        })
        .map_err(|e| conflict(&r.name, e.to_string()))?;
        if !unmatched_literals.is_empty() {
            let sizes: Vec<u64> = unmatched_literals.iter().map(|(_, t)| t.len() as u64).collect();
            let copies = target.allocate(&sizes)?;
            for ((offset, text), at) in unmatched_literals.into_iter().zip(copies) {
                report.warnings.push(format!(
                    "{}: pointed to the string {:?} of the old build, which the new build does not have: it now \
                     points to a copy of it",
                    r.name,
                    String::from_utf8_lossy(&text[..text.len().saturating_sub(1)])
                ));
                target.write_owned(at, text)?;
                cur[offset..offset + 8].copy_from_slice(&at.to_ne_bytes());
            }
        }
        for (oo, no, tag) in hinted_words(old, r.old_ty, new, r.new_ty, &r.plain, self.hints) {
            let v = u64::from_ne_bytes(r.bytes[oo..oo + 8].try_into().expect("8 bytes"));
            if let Some(nv) = self.relocate_word(v, &tag, &r.name).map_err(|e| conflict(&r.name, e))? {
                cur[no..no + 8].copy_from_slice(&nv.to_ne_bytes());
            }
        }
        if cur != before {
            target.write(r.new_addr, &cur)?;
        }
        if let Some(what) = &handler {
            target
                .run_handlers(what, &[(r.bytes.clone(), r.new_addr, cur.len() as u64)], self.relocations)
                .map_err(handler_failed)?;
            report.handled += 1;
        }
        report.globals += 1;
        Ok(())
    }
}

/// Words a `MCR_POINTS_TO` or `MCR_TAGGED` hint makes pointers although their type is
/// opaque (a union, an integer): (offset in the old object, offset in the new, the tag),
/// for the transform to relocate. (`void *` fields need nothing: the transform relocates
/// every pointer, tags included.)
fn hinted_words(
    old: &Program,
    ot: TypeId,
    new: &Program,
    nt: TypeId,
    root: &str,
    hints: &Hints,
) -> Vec<(usize, usize, Option<Tagged>)> {
    if hints.points_to.is_empty() && hints.tagged.is_empty() {
        return Vec::new();
    }
    let (ol, nl) = (old.layout(ot, &root_name(old, ot)), new.layout(nt, &root_name(new, nt)));
    let mut out = Vec::new();
    for r in ol.opaque.iter().filter(|r| !matches!(r.reason, OpaqueReason::VoidPointer | OpaqueReason::CharArray)) {
        let key = key(root, &r.path);
        let tag = hints.tagged.get(&key);
        if !(hints.points_to.contains_key(&key) || tag.is_some()) || hints.opaque.contains(&key) || r.len < 8 {
            continue;
        }
        if let Some(n) = nl.opaque.iter().find(|n| field_suffix(&n.path) == field_suffix(&r.path) && n.len >= 8) {
            out.push((r.offset as usize, n.offset as usize, tag.cloned()));
        }
    }
    out
}

/// Same NUL-terminated string at both addresses (up to 4 KiB)?
fn same_c_string(old: &dyn ReadMemory, a: u64, new: &dyn Target, b: u64) -> bool {
    let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
    for k in 0..64u64 {
        if old.read(a + k * 64, &mut x).is_err() || new.read(b + k * 64, &mut y).is_err() || x != y {
            return false;
        }
        if x.contains(&0) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{relocation_table, BlockPlan, Moved, Placement, StartupKey};
    use crate::testing::{list_program, node, old_list, words, Build, Ids, World, NEW_BIAS, NEW_HEAP};
    use crate::transfer::TransferError;
    use mcr_protocol::relocation::translate;
    use mcr_protocol::Relocation;
    use mcr_typemodel::{Composite, Encoding, Global, Location, Member, Program, SymbolKind, Type};

    /// A program with `int counter`, `static struct item items[4]` (in kvd.c) and a
    /// thread-local, `struct item` being `{ int a; }` or, with `grown`, `{ long z; int a; }`.
    fn program(grown: bool, base: u64) -> Program {
        let mut p = Program::empty("/x".into());
        p.has_debug_info = true;
        p.types.push(Type::Base { name: "int".into(), size: 4, encoding: Encoding::Signed }); // 0
        p.types.push(Type::Base { name: "long".into(), size: 8, encoding: Encoding::Signed }); // 1
        let members = if grown {
            vec![
                Member { name: Some("z".into()), ty: 1, offset: 0, bit_size: None, bit_offset: None },
                Member { name: Some("a".into()), ty: 0, offset: 8, bit_size: None, bit_offset: None },
            ]
        } else {
            vec![Member { name: Some("a".into()), ty: 0, offset: 0, bit_size: None, bit_offset: None }]
        };
        let size = if grown { 16 } else { 4 };
        p.types.push(Type::Struct(Composite { name: Some("item".into()), size, members, incomplete: false })); // 2
        p.types.push(Type::Array { element: 2, counts: vec![Some(4)] }); // 3
        let g = |name: &str, unit: &str, is_static: bool, location: Location, size: u64, ty: u32| Global {
            name: name.into(),
            unit: unit.into(),
            function: None,
            is_static,
            location,
            size: Some(size),
            ty,
        };
        p.globals.push(g("counter", "a.c", false, Location::Address { address: base }, 4, 0));
        p.globals.push(g("items", "kvd.c", true, Location::Address { address: base + 0x100 }, size * 4, 3));
        p.globals.push(g("tls", "a.c", false, Location::Tls { offset: 0 }, 4, 0));
        p
    }

    #[test]
    fn handlers_translate_pointers_into_globals_and_moved_blocks() {
        let (old, new) = (program(false, 0x4000), program(true, 0x6000));
        let block = Relocation { old: 0x55_0000, len: 64, new: 0x77_0000, old_stride: 0, new_stride: 0 };
        let t = relocation_table(&old, 0x1000, &new, 0x2000, vec![block]);
        assert_eq!(t.len(), 3, "counter, items and the block; not the thread-local: {t:?}");
        assert!(t.windows(2).all(|w| w[0].old < w[1].old), "sorted");
        // counter: same type, any offset.
        assert_eq!(translate(&t, 0x5000), Some(0x8000));
        assert_eq!(translate(&t, 0x5002), Some(0x8002));
        // items: struct item grew from 4 to 16 bytes; element starts translate.
        assert_eq!(translate(&t, 0x5100), Some(0x8100));
        assert_eq!(translate(&t, 0x5100 + 3 * 4), Some(0x8100 + 3 * 16));
        assert_eq!(translate(&t, 0x5100 + 2), None, "inside an element whose layout changed");
        assert_eq!(translate(&t, 0x5100 + 16), None, "past the old array");
        // The heap block, interior.
        assert_eq!(translate(&t, 0x55_0010), Some(0x77_0010));
        assert_eq!(translate(&t, 0x55_0040), None);
        assert_eq!(translate(&t, 0x1234), None);
    }

    #[test]
    fn pointers_into_moved_arrays_follow_their_element() {
        let m = Moved { new: 0x9000, old_stride: 24, new_stride: 40 };
        assert_eq!(m.at(0), Some(0x9000));
        assert_eq!(m.at(48), Some(0x9000 + 80), "third element");
        assert_eq!(m.at(50), None, "inside an element whose layout changed");
        let same = Moved { new: 0x9000, old_stride: 16, new_stride: 16 };
        assert_eq!(same.at(50), Some(0x9000 + 50));
        let bytes = Moved { new: 0x9000, old_stride: 0, new_stride: 0 };
        assert_eq!(bytes.at(7), Some(0x9007));
    }

    fn world(more: impl Fn(&mut Build, Ids)) -> World {
        World::new(list_program(false, &more), list_program(true, &more))
    }

    fn conflict<T>(r: Result<T, TransferError>) -> (String, String) {
        match r {
            Err(TransferError::Conflict { path, reason }) => (path, reason),
            Err(e) => panic!("expected a conflict, got {e:?}"),
            Ok(_) => panic!("expected a conflict"),
        }
    }

    #[test]
    fn a_rebuilt_node_carries_its_value_and_points_where_the_next_node_went() {
        let mut w = world(|_, _| {});
        let nodes = old_list(&mut w, &[-1, 2]);
        w.with_writer(|writer, _, moved, _| {
            // As if matched with a startup block of the new version: its heap pointers listed.
            let plan = |a: u64| BlockPlan {
                placement: Placement::Matched { new: 0x7000, key: StartupKey { stack: 1, thread: 0, ordinal: 0 } },
                ..*writer.plan.blocks.iter().find(|b| b.old == a).expect("planned")
            };
            let first = writer.rebuild(&writer.reached.blocks[&nodes[0]], &plan(nodes[0]))?;
            let next = moved.get(&nodes[1]).expect("moved").new;
            assert_eq!(first.bytes, words(&[-1i64 as u64, 0, next]), "val widened with its sign, extra zeroed");
            assert_eq!(first.heap_sites, [(16, next)], "where the heap pointer landed, and its value");
            let last = writer.rebuild(&writer.reached.blocks[&nodes[1]], &plan(nodes[1]))?;
            assert_eq!((last.bytes, last.heap_sites), (words(&[2, 0, 0]), vec![]), "null stays null");
            Ok(())
        })
        .expect("rebuild");
    }

    /// `void (*cb)(void)` and `struct ops { void (*cb)(void); } *ops`; functions `on_get`
    /// and `on_set`, in another order in the new binary, and `gone` only in the old one.
    fn callbacks(grown: bool) -> impl Fn(&mut Build, Ids) {
        move |b: &mut Build, _: Ids| {
            let f = b.fn_ptr();
            b.global("cb", 0x40_1070, f);
            let ops = b.strukt("ops", 8, &[("cb", f, 0)]);
            let p = b.ptr(ops);
            b.global("ops", 0x40_1078, p);
            let order: &[(&str, u64)] = if grown {
                &[("on_set", 0x40_2000), ("on_get", 0x40_2080)]
            } else {
                &[("on_get", 0x40_2000), ("on_set", 0x40_2040), ("gone", 0x40_2100)]
            };
            for &(name, at) in order {
                b.symbol(name, at, 0x40, SymbolKind::Function);
            }
        }
    }

    #[test]
    fn function_pointers_go_to_the_same_function_in_the_new_binary() {
        let mut w = World::new(list_program(false, callbacks(false)), list_program(true, callbacks(true)));
        w.set_global("cb", &0x40_2000u64.to_ne_bytes());
        let ops = w.old_proc.block(&0x40_2040u64.to_ne_bytes(), false);
        w.set_global("ops", &ops.to_ne_bytes());
        w.transfer().expect("transfer");
        let mem = &w.new_proc.mem;
        assert_eq!(mem.u64(w.new_global("cb")), NEW_BIAS + 0x40_2080, "on_get, in the global");
        assert_eq!(mem.u64(mem.u64(w.new_global("ops"))), NEW_BIAS + 0x40_2000, "on_set, in the heap block");

        let mut w = World::new(list_program(false, callbacks(false)), list_program(true, callbacks(true)));
        w.set_global("cb", &0x40_2100u64.to_ne_bytes());
        let (path, reason) = conflict(w.transfer());
        assert_eq!(path, "cb");
        assert!(reason.contains("function pointer 0x402100 has no counterpart"), "{reason}");
    }

    #[test]
    fn tagged_pointers_keep_their_tags() {
        let tags = |b: &mut Build, ids: Ids| {
            b.global("word", 0x40_1060, ids.long);
            for h in ["tagged node.next=1", "tagged head=1", "tagged word=2", "points_to word=struct node"] {
                b.hint(h);
            }
        };
        let mut w = world(tags);
        let n2 = w.old_proc.block(&node(2, 0), false);
        let n1 = w.old_proc.block(&node(1, n2 | 1), false);
        w.set_global("head", &(n1 | 1).to_ne_bytes());
        w.set_global("word", &(n2 | 3).to_ne_bytes());
        w.transfer().expect("transfer");
        let mem = &w.new_proc.mem;
        let head = mem.u64(w.new_global("head"));
        assert_eq!(head & 1, 1, "the global's tag");
        let first = head & !1;
        assert_eq!(mem.i64(first), 1);
        let next = mem.u64(first + 16);
        assert_eq!(next & 1, 1, "the heap block's tag");
        assert_eq!(mem.i64(next & !1), 2);
        assert_eq!(mem.u64(w.new_global("word")), (next & !1) | 3, "the hinted integer's two-bit tag");
    }

    #[test]
    fn a_pointer_into_an_element_whose_layout_changed_is_a_conflict() {
        let mut w = world(|b, ids| {
            let p = b.ptr(ids.char);
            b.global("cursor", 0x40_1090, p);
        });
        let nodes = old_list(&mut w, &[1]);
        w.set_global("cursor", &(nodes[0] + 4).to_ne_bytes());
        let (path, reason) = conflict(w.transfer());
        assert_eq!(path, "cursor");
        assert!(reason.contains("points into the middle of an element whose type changed"), "{reason}");
    }

    #[test]
    fn a_string_literal_pointer_goes_to_the_new_versions_copy_of_the_same_string() {
        let literal = |b: &mut Build, ids: Ids| {
            let p = b.ptr(ids.char);
            b.global("greeting", 0x40_1080, p);
        };
        let run = |new_text: &[u8]| {
            let mut w = world(literal);
            w.old_proc.mem.write(0x40_3000, b"hello\0");
            w.set_global("greeting", &0x40_3000u64.to_ne_bytes());
            let copy = NEW_BIAS + 0x40_3010;
            w.new_proc.mem.write(copy, new_text);
            w.set_new_global("greeting", &copy.to_ne_bytes());
            let r = w.transfer();
            let got = w.new_proc.mem.u64(w.new_global("greeting"));
            (r, got, copy, w.new_proc.mem.bytes(got, 6))
        };
        let (r, got, copy, _) = run(b"hello\0");
        r.expect("the same string");
        assert_eq!(got, copy, "the new version's own copy");
        // The new build has another string there (httpd's version string): the old one is
        // kept as a copy, and the report says so.
        let (r, got, _, bytes) = run(b"hullo\0");
        let t = r.expect("a kept copy");
        assert!(got >= NEW_HEAP, "a block of the new heap: {got:#x}");
        assert_eq!(bytes.as_deref(), Some(&b"hello\0"[..]));
        assert!(t.report.warnings.iter().any(|w| w.contains("greeting") && w.contains("\"hello\"")), "{:?}", t.report);
    }

    /// Set after startup (the new version's startup left the global null): the new
    /// binary's copy of the string, found in its read-only data (of two, the one nearest
    /// the old one's place); none is refused.
    #[test]
    fn a_string_literal_pointer_set_after_startup_goes_to_the_new_binarys_copy() {
        let literal = |b: &mut Build, ids: Ids| {
            let p = b.ptr(ids.char);
            b.global("greeting", 0x40_1080, p);
        };
        let run = |copies: &[u64]| {
            let mut w = world(literal);
            // Whole pages of read-only data in both binaries.
            w.old_proc.mem.write(0x40_3000, &[0; 4096]);
            w.old_proc.mem.write(0x40_3000, b"hello\0");
            w.set_global("greeting", &0x40_3000u64.to_ne_bytes());
            w.new_proc.mem.write(NEW_BIAS + 0x40_3000, &[0; 4096]);
            for &at in copies {
                w.new_proc.mem.write(NEW_BIAS + at, b"hello\0");
            }
            let r = w.transfer().map(|_| ());
            (r, w.new_proc.mem.u64(w.new_global("greeting")))
        };
        let (r, got) = run(&[0x40_3020]);
        r.expect("one copy");
        assert_eq!(got, NEW_BIAS + 0x40_3020);
        let (r, got) = run(&[0x40_3040, 0x40_3010]);
        r.expect("two copies");
        assert_eq!(got, NEW_BIAS + 0x40_3010, "the nearest");
        let (r, got) = run(&[]);
        r.expect("none: a kept copy of the old string");
        assert!(got >= NEW_HEAP, "a block of the new heap: {got:#x}");
    }

    /// A pointer into the main stack (nginx keeps `argv` and the end of the environment
    /// strings in globals) goes where the stack map says, and is refused, naming the
    /// global, where it has no counterpart: kept as it is, it would point to other data in
    /// the new process.
    #[test]
    fn a_pointer_into_the_main_stack_goes_where_the_new_stack_has_it() {
        use crate::stack::{StackLayout, StackMap};
        let argv = |b: &mut Build, ids: Ids| {
            let p = b.ptr(ids.char);
            let pp = b.ptr(p);
            b.global("saved_argv", 0x40_1080, pp);
        };
        let old = StackLayout {
            low: 0x7fff_fffd_e000,
            top: 0x7fff_ffff_f000,
            start_stack: 0x7fff_ffff_e000,
            arg_start: 0x7fff_ffff_e400,
            arg_end: 0x7fff_ffff_e440,
            env_start: 0x7fff_ffff_e440,
            env_end: 0x7fff_ffff_efd0,
        };
        let run = |new: StackLayout, value: u64| {
            let mut w = world(argv);
            let map = StackMap::between(old, new, None);
            w.stack = Some(map);
            w.set_global("saved_argv", &value.to_ne_bytes());
            let r = w.transfer().map(|_| ());
            (r, w.new_proc.mem.u64(w.new_global("saved_argv")))
        };
        let (r, got) = run(old, old.start_stack + 8);
        r.expect("same layout");
        assert_eq!(got, old.start_stack + 8);
        let elsewhere = StackLayout { start_stack: old.start_stack - 16, arg_start: old.arg_start - 16, ..old };
        let (path, reason) = conflict(run(elsewhere, old.start_stack + 8).0);
        assert_eq!(path, "saved_argv");
        assert!(reason.contains("main stack") && reason.contains("laid out elsewhere"), "{reason}");
    }

    /// A pointer into memory outside the heap, the binary and the main stack keeps its
    /// value, where the new process has the same kind of memory there; elsewhere it is
    /// refused, naming it: kept, it would point into whatever the new version has there
    /// (httpd's worker queue pointer, into the new scoreboard: the children crashed).
    #[test]
    fn a_pointer_into_other_memory_keeps_its_value_only_where_the_new_process_has_the_same() {
        let pool = |b: &mut Build, ids: Ids| {
            let p = b.ptr(ids.long);
            b.global("queue", 0x40_1080, p);
        };
        let run = |missing: Option<(u64, u64)>| {
            let mut w = world(pool);
            w.not_in_new = missing;
            w.set_global("queue", &0x7000_0040u64.to_ne_bytes());
            let r = w.transfer().map(|_| ());
            (r, w.new_proc.mem.u64(w.new_global("queue")))
        };
        let (r, got) = run(None);
        r.expect("the same memory there");
        assert_eq!(got, 0x7000_0040);
        let (path, reason) = conflict(run(Some((0x7000_0000, 0x7000_1000))).0);
        assert_eq!(path, "queue");
        assert!(reason.contains("nothing of the kind at 0x70000040"), "{reason}");
    }
}
