//! The plan: for every type the walk reached, how its objects become the new version's
//! (`mcr-typemodel`'s transformation plans, or the new version's object handler); for
//! every reached block, its size in the new version and where it goes there: the new
//! version's own startup block of the same identity (`startup::place`), or a fresh one.
//! Nothing is written yet.

use crate::hints::normalize;
use crate::startup::{self, Candidate, Placement, StartupKey, StartupTables, Unmatched};
use crate::transfer::{conflict, TransferError};
use crate::walk::{is_byte, Reached};
use mcr_typemodel::transform::{root_name, Plan};
use mcr_typemodel::{Program, Type, TypeId};
use std::collections::HashMap;

/// How objects of one old type become objects of the new version.
#[derive(Debug)]
pub struct TypePlan {
    /// The new version's type of the same kind and name.
    pub new_ty: TypeId,
    /// The automatic transformation; `None` when there is none but the new version's
    /// object handler builds the object (it starts zeroed).
    pub transform: Option<Plan>,
    /// One object's size in each version: blocks hold arrays of them.
    pub old_stride: u64,
    pub new_stride: u64,
    /// The new version's `MCR_ADD_OBJ_HANDLER` for the type, as written.
    pub handler: Option<String>,
}

/// Where one reached block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    /// The old block's address.
    pub old: u64,
    /// Bytes it needs in the new version.
    pub size: u64,
    /// Its objects' sizes in each version; 0 for a block copied as bytes.
    pub old_stride: u64,
    pub new_stride: u64,
    pub placement: Placement,
}

/// What the transfer will do with what the walk reached.
#[derive(Debug, Default)]
pub struct TransferPlan {
    /// By old type (typedefs stripped), for the typed blocks that are not bytes.
    pub types: HashMap<TypeId, TypePlan>,
    /// Every reached block, in address order.
    pub blocks: Vec<BlockPlan>,
    /// Old startup blocks that get a fresh block instead of their counterpart, and why.
    pub unmatched: Vec<(u64, Unmatched)>,
}

impl TransferPlan {
    /// The type plan of a block reached as `ty`, when it has one.
    pub fn of(&self, ty: Option<TypeId>) -> Option<&TypePlan> {
        self.types.get(&ty?)
    }
}

/// Plan the transfer of `reached` from `old` to `new`. `handlers`: the new version's
/// object handlers ([`crate::hints::object_handlers`]); `startup`: both versions' startup
/// tables; `new_startup_block`: the size of the new version's live startup block at an
/// address.
pub fn plan(
    old: &Program,
    new: &Program,
    reached: &Reached,
    handlers: &HashMap<String, String>,
    startup: Option<&StartupTables>,
    new_startup_block: &mut dyn FnMut(u64) -> Option<u64>,
) -> Result<TransferPlan, TransferError> {
    let mut types: HashMap<TypeId, TypePlan> = HashMap::new();
    let mut counterparts = HashMap::new();
    let mut sized: Vec<(u64, u64, u64, u64)> = Vec::with_capacity(reached.blocks.len());
    for (addr, b) in &reached.blocks {
        let (old_stride, new_stride) = match b.reach.ty() {
            Some(t) if !is_byte(old, t) && old.size_of(t).unwrap_or(0) > 0 => {
                if let std::collections::hash_map::Entry::Vacant(slot) = types.entry(t) {
                    let Some(nt) = counterpart(old, t, new, &mut counterparts) else {
                        return Err(conflict(
                            reached.path_of(*addr),
                            format!("type {} has no counterpart in the new version", old.type_name(t)),
                        ));
                    };
                    let handler = handlers.get(&normalize(&root_name(new, nt))).cloned();
                    let (transform, old_stride, new_stride) = match Plan::with_root(old, t, new, nt, &root_name(old, t))
                    {
                        Ok(plan) => {
                            let (o, n) = (plan.old_size, plan.new_size);
                            (Some(plan), o, n)
                        }
                        Err(_) if handler.is_some() => {
                            (None, old.size_of(t).unwrap_or(0), new.size_of(nt).unwrap_or(0))
                        }
                        Err(e) => {
                            return Err(conflict(
                                reached.path_of(*addr),
                                format!("cannot transform {}: {e}", old.type_name(t)),
                            ))
                        }
                    };
                    slot.insert(TypePlan { new_ty: nt, transform, old_stride, new_stride, handler });
                }
                let p = &types[&t];
                (p.old_stride, p.new_stride)
            }
            _ => (0, 0),
        };
        let size = match b.obj.size.checked_div(old_stride) {
            None => b.obj.size,
            Some(n) => n * new_stride + b.obj.size % old_stride,
        };
        sized.push((*addr, size, old_stride, new_stride));
    }
    // Startup objects go into the new version's own startup blocks with the same
    // call-stack ID, thread and ordinal; everything else into fresh blocks.
    let cands: Vec<Candidate> = sized
        .iter()
        .map(|&(addr, needed, ..)| Candidate { addr, startup: reached.blocks[&addr].obj.startup, needed })
        .collect();
    let (places, unmatched) = startup::place(&cands, startup, new_startup_block);
    let blocks = sized
        .into_iter()
        .zip(places)
        .map(|((old, size, old_stride, new_stride), placement)| BlockPlan {
            old,
            size,
            old_stride,
            new_stride,
            placement,
        })
        .collect();
    Ok(TransferPlan { types, blocks, unmatched })
}

/// For a report: why the old startup block at `addr` gets a fresh block.
pub fn describe_unmatched(reached: &Reached, tables: Option<&StartupTables>, addr: u64, why: &Unmatched) -> String {
    let path = reached.path_of(addr);
    let site = |k: &StartupKey| match tables.and_then(|t| t.old.site(k.stack)) {
        Some(s) => format!("{k}, {s}"),
        None => k.to_string(),
    };
    match why {
        Unmatched::NoRecord => format!(
            "{path}: startup block {addr:#x} reallocated: no allocation record (its call stack stops inside a library, short of the program's code, or it predates mcr's runtime)"
        ),
        Unmatched::NoCounterpart(k) => {
            format!("{path}: startup block {addr:#x} ({}) has no counterpart in the new version's startup; reallocated", site(k))
        }
        Unmatched::TooSmall { key, have, need } => format!(
            "{path}: startup block {addr:#x} ({}) reallocated: the new version's counterpart has {have} bytes, the transferred object needs {need}",
            site(key)
        ),
    }
}

/// The new version's type for an old one: same kind and name.
pub(crate) fn counterpart(
    old: &Program,
    ty: TypeId,
    new: &Program,
    cache: &mut HashMap<TypeId, Option<TypeId>>,
) -> Option<TypeId> {
    if let Some(c) = cache.get(&ty) {
        return *c;
    }
    let want = old.strip(ty);
    let found = match old.ty(want) {
        Type::Pointer { pointee, .. } => {
            let inner = counterpart(old, *pointee, new, cache);
            new.types.iter().position(
                |t| matches!(t, Type::Pointer { pointee: p, .. } if Some(new.strip(*p)) == inner.map(|i| new.strip(i))),
            )
        }
        other => {
            let name = root_name(old, want);
            let kind = std::mem::discriminant(other);
            new.types
                .iter()
                .enumerate()
                .filter(|(_, t)| std::mem::discriminant(*t) == kind)
                .find(|(i, t)| {
                    root_name(new, *i as TypeId) == name
                        && !matches!(t, Type::Struct(c) | Type::Union(c) if c.incomplete)
                })
                .map(|(i, _)| i)
        }
    }
    .map(|i| i as TypeId);
    cache.insert(ty, found);
    found
}
