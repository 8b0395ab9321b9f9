//! Blocks of unknown type that may be of a type the update changes.
//!
//! The walk types a block only through typed pointers. One that only untyped words lead
//! to (a `void *`, a word the kernel holds such as epoll data, an integer) moves as bytes
//! or stays where it is, as it is: right, unless its type changed, for the new version
//! would then read the old layout as its own. mcr cannot know such a block's type, but it
//! knows which types the update changes that no typed path from a global reaches (objects
//! of those can only be behind untyped memory: `mcr check` marks them NEEDS HANDLER), and
//! what their objects look like: their size (the allocator keeps the size asked for) and
//! where their pointers are. A block of such a size whose pointer fields all hold null or
//! an address, at least one an address, is taken for one of them and stops the update.
//! One that only fits by size (the type has no pointer, or they are all null) cannot be
//! told from data: a warning says so.

use crate::hints::Hints;
use crate::preview::display;
use crate::transfer::{conflict, Pair, TransferError};
use crate::walk::{Reach, Reached};
use mcr_typemodel::diff::reachable_named;
use mcr_typemodel::transform::{root_name, same_bytes};
use mcr_typemodel::{Pointee, Program, Type, TypeId};
use std::collections::{BTreeMap, HashSet};

/// A type the update changes whose objects only untyped memory can lead to.
#[derive(Debug)]
struct Suspect {
    name: String,
    old_size: u64,
    new_size: u64,
    /// Offsets of its data and function pointers (every element's, in one object).
    pointers: Vec<(u64, Pointee)>,
}

/// Whether a block's bytes look like an array of a suspect type.
#[derive(Debug, PartialEq, Eq)]
enum Fit {
    No,
    /// Its size fits, and nothing else can be checked.
    BySize,
    /// Its size fits and its pointer fields hold addresses (or null).
    Looks,
}

/// The old version's named structs whose layout changes in the new one (what their
/// pointers point to aside: a pointee that changed is a suspect of its own) and that
/// neither a typed path from a global nor an `MCR_POINTS_TO` hint leads to.
fn suspects(old: &Program, new: &Program, hints: &Hints) -> Vec<Suspect> {
    let reached = reachable_named(old, &old.globals.iter().map(|g| g.ty).collect::<Vec<_>>());
    let hinted: HashSet<String> = hints.points_to.values().map(|&t| display(old, t)).collect();
    let new_types = new.named_types();
    let mut out = Vec::new();
    let mut names: Vec<(String, Vec<TypeId>)> = old.named_types().into_iter().collect();
    names.sort();
    for (name, old_ids) in names {
        if reached.contains(&name) || hinted.contains(&name) {
            continue;
        }
        let Some(new_ids) = new_types.get(&name) else { continue };
        // Several definitions under one name (different compilation units): paired in
        // order, as `mcr check` pairs them.
        for (&ot, &nt) in old_ids.iter().zip(new_ids) {
            let old_size = old.size_of(ot).unwrap_or(0);
            if !matches!(old.ty(ot), Type::Struct(_)) || old_size == 0 || same_bytes(old, ot, new, nt) {
                continue;
            }
            let layout = old.layout(ot, &root_name(old, ot));
            let pointers = layout
                .pointers
                .iter()
                .filter(|s| s.pointee != Pointee::Void && s.offset + 8 <= old_size)
                .map(|s| (s.offset, s.pointee))
                .collect();
            out.push(Suspect { name: name.clone(), old_size, new_size: new.size_of(nt).unwrap_or(0), pointers });
        }
    }
    out
}

/// Whether `bytes` (a whole block) may be an array of `s`: `plausible` says whether a
/// non-null pointer field's value may be what the field points to.
fn fit(bytes: &[u8], s: &Suspect, plausible: &dyn Fn(u64, &Pointee) -> bool) -> Fit {
    let len = bytes.len() as u64;
    if len == 0 || !len.is_multiple_of(s.old_size) {
        return Fit::No;
    }
    let mut addresses = 0;
    for base in (0..len).step_by(s.old_size as usize) {
        for (off, pointee) in &s.pointers {
            let at = (base + off) as usize;
            let v = u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            if v == 0 {
                continue;
            }
            if !plausible(v, pointee) {
                return Fit::No;
            }
            addresses += 1;
        }
    }
    if addresses > 0 {
        Fit::Looks
    } else {
        Fit::BySize
    }
}

/// Stop the update when a block the walk could not type looks like an object of a type
/// the update changes and that only untyped memory leads to; the warnings for blocks that
/// only fit such a type by size.
pub(crate) fn check(pair: &Pair, hints: &Hints, reached: &Reached) -> Result<Vec<String>, TransferError> {
    let mut untyped = reached.blocks.values().filter(|b| b.reach == Reach::Opaque).peekable();
    if untyped.peek().is_none() {
        return Ok(Vec::new());
    }
    let suspects = suspects(pair.old.prog, pair.new.prog, hints);
    if suspects.is_empty() {
        return Ok(Vec::new());
    }
    let readable = |v: u64| pair.old_mem.read(v, &mut [0u8]).is_ok();
    let plausible = |v: u64, pointee: &Pointee| match pointee {
        Pointee::Function => pair.old.image.contains(v) || readable(v),
        _ => pair.heap.containing(v).is_some() || pair.old.image.contains(v) || readable(v),
    };
    // By suspect: how many blocks fit by size only, and the first one's path.
    let mut by_size: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for b in untyped {
        for s in &suspects {
            match fit(reached.blocks.bytes(b), s, &plausible) {
                Fit::No => {}
                Fit::Looks => {
                    return Err(conflict(
                        reached.path_of(b.obj.addr),
                        format!(
                            "the heap block at {:#x} ({} bytes), which only memory mcr cannot type leads to, looks \
                             like {} (its size fits and its pointer fields hold addresses); no typed pointer from a \
                             global leads to objects of that type, and the new version changes it ({} -> {} bytes): \
                             mcr cannot transform a block whose type it does not know (give the pointer that leads \
                             to it its type, or annotate it with MCR_POINTS_TO from mcr.h)",
                            b.obj.addr,
                            b.obj.size,
                            if b.obj.size == s.old_size { s.name.clone() } else { format!("an array of {}", s.name) },
                            s.old_size,
                            s.new_size
                        ),
                    ))
                }
                Fit::BySize => {
                    by_size.entry(&s.name).or_insert_with(|| (0, reached.path_of(b.obj.addr))).0 += 1;
                }
            }
        }
    }
    Ok(by_size
        .into_iter()
        .map(|(name, (n, first))| {
            format!(
                "{n} heap block(s) only memory mcr cannot type leads to (the first: {first}) have the size of {name}, \
                 which the new version changes and no typed pointer from a global leads to; mcr cannot tell whether \
                 they are one and moves them as they are"
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::testing::{list_program, words, Build, Ids, World};
    use crate::transfer::TransferError;

    /// `struct ctx { long seed; char *name; }` (`grown`: `{ long created; long seed; char
    /// *name; }`), reached only through `void *blob`; `more` adds to it.
    fn ctx_program(grown: bool, more: &'static [&'static str]) -> mcr_typemodel::Program {
        list_program(false, move |b: &mut Build, ids: Ids| {
            let name = b.ptr(ids.char);
            if grown {
                b.strukt("ctx", 24, &[("created", ids.long, 0), ("seed", ids.long, 8), ("name", name, 16)]);
            } else {
                b.strukt("ctx", 16, &[("seed", ids.long, 0), ("name", name, 8)]);
            }
            let v = b.void_ptr();
            b.global("blob", 0x40_1030, v);
            for h in more {
                b.hint(h);
            }
        })
    }

    fn world(more: &'static [&'static str]) -> World {
        let mut w = World::new(ctx_program(false, more), ctx_program(true, more));
        w.adopted_heap = true;
        w
    }

    #[test]
    fn a_block_only_a_void_pointer_leads_to_that_looks_like_a_changed_type_stops_the_update() {
        let mut w = world(&[]);
        let name = w.old_proc.block(b"voidkv\0", false);
        let ctx = w.old_proc.block(&words(&[42, name]), false);
        w.set_global("blob", &ctx.to_ne_bytes());
        let (path, reason) = match w.transfer().map(|t| t.report) {
            Err(TransferError::Conflict { path, reason }) => (path, reason),
            other => panic!("expected a conflict, got {other:?}"),
        };
        assert_eq!(path, "blob (void *)");
        assert!(
            reason.starts_with(&format!("the heap block at {ctx:#x} (16 bytes), which only memory mcr cannot type")),
            "{reason}"
        );
        assert!(reason.contains("looks like struct ctx") && reason.contains("(16 -> 24 bytes)"), "{reason}");
        assert!(reason.contains("MCR_POINTS_TO"), "the annotation that resolves it: {reason}");
    }

    #[test]
    fn a_block_of_the_same_size_whose_pointer_fields_hold_no_address_is_not_one() {
        let mut w = world(&[]);
        // Text where the name pointer would be: not an address.
        let text = w.old_proc.block(b"value 1 with spa", false);
        w.set_global("blob", &text.to_ne_bytes());
        let t = w.transfer().expect("a string, not a struct ctx");
        assert!(t.report.warnings.is_empty(), "{:?}", t.report.warnings);
        assert_eq!(w.new_proc.mem.bytes(text, 16).expect("in place"), b"value 1 with spa");
    }

    #[test]
    fn a_block_that_fits_by_size_alone_is_a_warning() {
        let mut w = world(&[]);
        let zeros = w.old_proc.block(&words(&[7, 0]), false);
        w.set_global("blob", &zeros.to_ne_bytes());
        let t = w.transfer().expect("nothing says it is a struct ctx");
        assert_eq!(
            t.report.warnings,
            ["1 heap block(s) only memory mcr cannot type leads to (the first: blob (void *)) have the size of \
              struct ctx, which the new version changes and no typed pointer from a global leads to; mcr cannot \
              tell whether they are one and moves them as they are"]
        );
    }

    #[test]
    fn with_mcr_points_to_the_block_is_typed_and_transformed() {
        let mut w = world(&["points_to blob=struct ctx"]);
        let name = w.old_proc.block(b"voidkv\0", false);
        let ctx = w.old_proc.block(&words(&[42, name]), false);
        w.set_global("blob", &ctx.to_ne_bytes());
        let t = w.transfer().expect("the hint types it");
        assert!(t.report.warnings.is_empty(), "{:?}", t.report.warnings);
        let mem = &w.new_proc.mem;
        let moved = mem.u64(w.new_global("blob"));
        assert_ne!(moved, ctx, "grown: it no longer fits where it was");
        assert_eq!((mem.u64(moved), mem.u64(moved + 8), mem.u64(moved + 16)), (0, 42, name), "in the new layout");
    }

    #[test]
    fn a_changed_type_a_typed_pointer_leads_to_is_not_suspected() {
        // struct node grows, and a global leads to it: a node-shaped block behind the
        // void * is not taken for one (typed nodes are found as such).
        let make = |grown| {
            list_program(grown, |b, _| {
                let v = b.void_ptr();
                b.global("blob", 0x40_1030, v);
            })
        };
        let mut w = World::new(make(false), make(true));
        w.adopted_heap = true;
        let other = w.old_proc.block(b"x\0", false);
        let shaped = w.old_proc.block(&words(&[1, other]), false);
        w.set_global("blob", &shaped.to_ne_bytes());
        let t = w.transfer().expect("struct node is reached from head");
        assert!(t.report.warnings.is_empty(), "{:?}", t.report.warnings);
    }
}
