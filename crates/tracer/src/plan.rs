//! The plan: for every type the walk reached, how its objects become the new version's
//! (`mcr-typemodel`'s transformation plans, or the new version's object handler); for
//! every reached block, its size in the new version and where it goes there: the new
//! version's own startup block of the same identity (`startup::place`), or a fresh one.
//! Nothing is written yet.

use crate::hints::normalize;
use crate::startup::{self, Candidate, Placement, StartupKey, StartupTables, Unmatched};
use crate::transfer::{conflict, TransferError};
use crate::walk::{is_byte, typed_objects, Embedded, Reached};
use mcr_typemodel::transform::{root_name, same_bytes, Plan};
use mcr_typemodel::{Program, Type, TypeId};
use std::collections::{HashMap, HashSet};

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
    /// The old block's address, and its position in the heap index.
    pub old: u64,
    pub pos: u32,
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
/// tables; `adopted`: whether an old block is in the heap the new process adopted (there at
/// the same address); `new_startup_block`: the size of the new version's live startup
/// block at an address.
pub fn plan(
    old: &Program,
    new: &Program,
    reached: &Reached,
    handlers: &HashMap<String, String>,
    startup: Option<&StartupTables>,
    adopted: &dyn Fn(u64) -> bool,
    new_startup_block: &mut dyn FnMut(u64) -> Option<u64>,
) -> Result<TransferPlan, TransferError> {
    check_embedded(old, new, reached)?;
    let mut types: HashMap<TypeId, TypePlan> = HashMap::new();
    let mut counterparts = HashMap::new();
    let mut sized: Vec<(u64, u64, u64, u64)> = Vec::with_capacity(reached.blocks.len());
    // Blocks come in runs of one type (a table's nodes): its stride looked up once a run.
    let mut last: Option<(TypeId, (u64, u64))> = None;
    for (addr, b) in &reached.blocks {
        let (old_stride, new_stride) = match b.reach.ty() {
            Some(t) if last.is_some_and(|(lt, _)| lt == t) => last.map(|(_, s)| s).unwrap_or_default(),
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
                last = Some((t, (p.old_stride, p.new_stride)));
                (p.old_stride, p.new_stride)
            }
            _ => (0, 0),
        };
        let size = match b.reach.ty().filter(|_| old_stride > 0) {
            None => b.obj.size,
            Some(t) => {
                let n = typed_objects(old, t, b.obj.size);
                let rest = b.obj.size - n * old_stride;
                // Objects followed by other data (a pool's arena after its header): what
                // points into that data is not known, so it cannot move.
                if old_stride != new_stride && rest >= 8 {
                    return Err(conflict(
                        reached.path_of(*addr),
                        format!(
                            "the heap block at {addr:#x} holds a {t_name} followed by {rest} bytes of other data (a \
                             pool's arena, a flexible array member's elements); mcr cannot tell what points into them, \
                             so it cannot move them for {t_name} to change size ({old_stride} -> {new_stride} bytes)",
                            t_name = old.type_name(t)
                        ),
                    ));
                }
                n * new_stride + rest
            }
        };
        sized.push((*addr, size, old_stride, new_stride));
    }
    // Startup objects go into the new version's own startup blocks with the same
    // call-stack ID, thread and ordinal; everything else into fresh blocks.
    let cands: Vec<Candidate> = sized
        .iter()
        .zip(reached.blocks.values())
        .map(|(&(addr, needed, ..), b)| Candidate { addr, startup: b.obj.startup, needed })
        .collect();
    let (places, unmatched) = startup::place(&cands, startup, new_startup_block);
    let blocks = sized
        .into_iter()
        .zip(places)
        .zip(reached.blocks.values())
        .map(|(((addr, size, old_stride, new_stride), placement), b)| {
            // A block made after startup that the new process already has (the adopted
            // heap) stays there when its size does not change: a block's size is what the
            // next update reads its objects by, so one that shrank in place would show a
            // stray tail (a 32-byte object in a 48-byte block reads as one and a third).
            // A pinned block (memory mcr cannot type may point to it) must stay, startup
            // object or not.
            let same_size = adopted(addr) && size == b.obj.size;
            let pinned = if reached.pinned.is_empty() { None } else { reached.pinned.get(&addr) };
            let stays = same_size && (pinned.is_some() || placement == Placement::Fresh { identity: None });
            // What a word mcr cannot type points to cannot be updated either: it stays
            // where it is, so its layout must not change at all (an interior address would
            // name another field). Its pointers are rewritten in place like any block's:
            // what they point to may change.
            let changed = || {
                b.reach
                    .ty()
                    .and_then(|t| types.get(&t).map(|p| (t, p)))
                    .filter(|(t, p)| !mcr_typemodel::transform::same_bytes(old, *t, new, p.new_ty))
            };
            if let Some((pin, changed)) = pinned.map(|p| (p, changed())).filter(|(_, c)| !stays || c.is_some()) {
                if pin.held {
                    let what = match changed {
                        Some((t, _)) => format!("its type {} changes", old.type_name(t)),
                        None => format!("it changes size ({} -> {size} bytes)", b.obj.size),
                    };
                    return Err(conflict(
                        pin.place.clone(),
                        format!(
                            "{} ({}), made inside a library in the same place of its thread's startup; the new \
                             code holds it at that address, so it must stay there, as it is, but {what}",
                            pin.holds,
                            reached.path_of(addr),
                        ),
                    ));
                }
                let what = match changed {
                    Some((t, _)) if stays => format!("its type {} changes", old.type_name(t)),
                    Some((t, _)) => {
                        format!("its type {} changes size ({} -> {size} bytes)", old.type_name(t), b.obj.size)
                    }
                    None if !adopted(addr) => "this process's heap is not adopted (it was forked after startup)".into(),
                    None => format!("its size changes ({} -> {size} bytes)", b.obj.size),
                };
                return Err(conflict(
                    pin.place.clone(),
                    format!(
                        "{}, the address of the heap block at {addr:#x} ({}); mcr cannot tell whether it is a \
                         pointer, so the block must stay where it is, as it is, but {what} (declare the field with \
                         its pointer type, or annotate it with MCR_POINTS_TO or MCR_OPAQUE from mcr.h)",
                        pin.holds,
                        reached.path_of(addr),
                    ),
                ));
            }
            Ok(BlockPlan {
                old: addr,
                pos: b.pos,
                size,
                old_stride,
                new_stride,
                placement: if stays { Placement::InPlace } else { placement },
            })
        })
        .collect::<Result<Vec<BlockPlan>, _>>()?;
    // A startup block that stays where it is (pinned, in the adopted heap) is not
    // reallocated, counterpart or not.
    let mut unmatched = unmatched;
    unmatched.retain(|(a, _)| {
        blocks.binary_search_by_key(a, |b| b.old).map_or(true, |i| blocks[i].placement != Placement::InPlace)
    });
    Ok(TransferPlan { types, blocks, unmatched })
}

/// Objects inside memory mcr cannot type (a pool's arena: [`Reached::embedded`]) stay where
/// they are, as they are, and so does what they point to (the conservative scan of that
/// memory pins it): none of the types they are made of may change layout; mcr cannot
/// tell where each such object is, to rebuild it, nor move what surrounds it. Nor may
/// the types of what the walk guessed they lead to ([`Reached::beside`]), or, where it
/// could not guess that (too many), any type they lead to.
fn check_embedded(old: &Program, new: &Program, reached: &Reached) -> Result<(), TransferError> {
    if reached.embedded.is_empty() {
        return Ok(());
    }
    let names = (&TypeNames::of(old), &TypeNames::of(new));
    let (mut made_of, mut leads_to) = (HashSet::new(), HashSet::new());
    let refuse = |e: &Embedded, changes: String| {
        // How the walk came to the block, when that is another way than this pointer.
        let (what, block) = (old.type_name(e.ty), e.block);
        let path = reached.path_of(block);
        let via = if path == e.place { String::new() } else { format!(" ({path})") };
        Err(conflict(
            e.place.clone(),
            format!(
                "points {} bytes into the heap block at {block:#x}{via}, to a {what} among other data (a pool's \
                 arena, a buffer): mcr cannot tell the objects there apart, so it leaves them where they are, as \
                 they are, with what they point to, but {changes} (keep the type as it is, or allocate its objects \
                 with malloc)",
                e.offset,
            ),
        ))
    };
    let made = |changed: TypeId, ty: TypeId| {
        if changed == ty {
            format!("{} changes layout", old.type_name(ty))
        } else {
            format!("{}, which a {} is made of, changes layout", old.type_name(changed), old.type_name(ty))
        }
    };
    for e in &reached.embedded {
        let visited = if e.bounded { &mut made_of } else { &mut leads_to };
        let Some(changed) = first_changed(old, new, e.ty, names, !e.bounded, visited) else { continue };
        let changes = if e.bounded || changed == e.ty {
            made(changed, e.ty)
        } else {
            format!(
                "the memory next to it looks like more of them, too many to follow, and {}, which a {} leads to, \
                 changes layout",
                old.type_name(changed),
                old.type_name(e.ty)
            )
        };
        return refuse(e, changes);
    }
    for b in &reached.beside {
        let Some(changed) = first_changed(old, new, b.ty, names, false, &mut made_of) else { continue };
        let e = &reached.embedded[b.next_to];
        let changes = format!(
            "it (or memory next to it that looks like more of them: an array whose length mcr cannot know) \
             leads to what looks like a {} at {:#x}, and {}",
            old.type_name(b.ty),
            b.addr,
            made(changed, b.ty)
        );
        return refuse(e, changes);
    }
    Ok(())
}

/// Named structs, unions and typedefs of a program, by kind and name: every complete
/// definition (two compilation units may define different types of the same name).
struct TypeNames(HashMap<(u8, String), Vec<TypeId>>);

impl TypeNames {
    fn of(p: &Program) -> TypeNames {
        let mut names: HashMap<(u8, String), Vec<TypeId>> = HashMap::new();
        for (i, t) in p.types.iter().enumerate() {
            let key = match t {
                Type::Struct(c) if !c.incomplete => c.name.clone().map(|n| (0, n)),
                Type::Union(c) if !c.incomplete => c.name.clone().map(|n| (1, n)),
                Type::Typedef { name, .. } => Some((2, name.clone())),
                _ => None,
            };
            if let Some(k) = key {
                names.entry(k).or_default().push(i as TypeId);
            }
        }
        TypeNames(names)
    }

    fn get(&self, kind: u8, name: &str) -> &[TypeId] {
        self.0.get(&(kind, name.to_string())).map_or(&[], Vec::as_slice)
    }
}

/// The first type `ty` is made of or (`pointees`) points to (itself included) whose
/// objects hold other bytes in the new version: a named struct or union, or a typedef of
/// an anonymous one, that the new version defines under the same name, never with the
/// same layout. Types already in `visited` are not looked at again.
fn first_changed(
    old: &Program,
    new: &Program,
    ty: TypeId,
    (old_names, new_names): (&TypeNames, &TypeNames),
    pointees: bool,
    visited: &mut HashSet<TypeId>,
) -> Option<TypeId> {
    let mut todo = vec![ty];
    while let Some(t) = todo.pop() {
        if !visited.insert(t) {
            continue;
        }
        let changed = |kind: u8, name: &str| {
            let news = new_names.get(kind, name);
            !news.is_empty() && news.iter().all(|&n| !same_bytes(old, t, new, n))
        };
        match old.ty(t) {
            Type::Typedef { name, target } => {
                let anonymous =
                    matches!(old.ty(old.strip(*target)), Type::Struct(c) | Type::Union(c) if c.name.is_none());
                if anonymous && changed(2, name) {
                    return Some(t);
                }
                todo.push(*target);
            }
            Type::Qualified { target, .. } => todo.push(*target),
            Type::Array { element, .. } => todo.push(*element),
            // Code is not data: what a function takes is no object of the program's.
            Type::Pointer { pointee, .. }
                if pointees && !matches!(old.ty(old.strip(*pointee)), Type::Function { .. }) =>
            {
                todo.push(*pointee)
            }
            Type::Struct(c) | Type::Union(c) => {
                let kind = u8::from(matches!(old.ty(t), Type::Union(_)));
                match &c.name {
                    // A declaration: what the program defines under that name.
                    Some(name) if c.incomplete => todo.extend(old_names.get(kind, name)),
                    Some(name) if changed(kind, name) => return Some(t),
                    _ => {}
                }
                todo.extend(c.members.iter().rev().map(|m| m.ty));
            }
            _ => {}
        }
    }
    None
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
        Type::Struct(c) | Type::Union(c) if c.name.is_none() => anonymous_counterpart(old, want, new),
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

/// An anonymous struct or union has no name to be found by: the typedef that names it
/// (`typedef struct { … } scoreboard;`) does, else its members' names, the same in both
/// versions (of several such aggregates, one of the same size first). Found by name, every
/// anonymous aggregate was the new program's first one: httpd's 24-byte scoreboard "changed
/// size" to a 16-byte struct of another header in an update to the same build.
fn anonymous_counterpart(old: &Program, want: TypeId, new: &Program) -> Option<usize> {
    let kind = std::mem::discriminant(old.ty(want));
    let anonymous = |p: &Program, t: TypeId| {
        matches!(p.ty(t), Type::Struct(c) | Type::Union(c) if c.name.is_none() && !c.incomplete)
            && std::mem::discriminant(p.ty(t)) == kind
    };
    let typedef_of = old.types.iter().find_map(|t| match t {
        Type::Typedef { name, target } if *target == want => Some(name),
        _ => None,
    });
    if let Some(name) = typedef_of {
        return new.types.iter().find_map(|t| match t {
            Type::Typedef { name: n, target } if n == name && anonymous(new, *target) => Some(*target as usize),
            _ => None,
        });
    }
    let members = |p: &Program, t: TypeId| match p.ty(t) {
        Type::Struct(c) | Type::Union(c) => c.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let (names, size) = (members(old, want), old.size_of(want));
    let alike: Vec<usize> =
        (0..new.types.len()).filter(|&i| anonymous(new, i as TypeId) && members(new, i as TypeId) == names).collect();
    alike.iter().copied().find(|&i| new.size_of(i as TypeId) == size).or_else(|| alike.first().copied())
}

#[cfg(test)]
mod tests {
    use super::describe_unmatched;
    use crate::startup::{Placement, StartupKey, Unmatched};
    use crate::testing::{list_program, node, pool_and_cfg, pool_and_other, words, Build, Ids, World, HEAD};
    use crate::transfer::TransferError;
    use mcr_typemodel::{Program, TypeId};

    fn grown_list() -> World {
        World::new(list_program(false, |_, _| {}), list_program(true, |_, _| {}))
    }

    #[test]
    fn blocks_of_a_changed_type_get_their_new_size_arrays_and_tails_included() {
        let mut w = World::new(
            list_program(false, |b, _| {
                let v = b.void_ptr();
                b.global("blob", 0x40_1030, v);
            }),
            list_program(true, |b, _| {
                let v = b.void_ptr();
                b.global("blob", 0x40_1030, v);
            }),
        );
        // Two nodes and 4 bytes more, behind one typed pointer.
        let mut two = [node(1, 0), node(2, 0)].concat();
        two.extend_from_slice(&[1, 2, 3, 4]);
        let array = w.old_proc.block(&two, false);
        w.set_global("head", &array.to_ne_bytes());
        let blob = w.old_proc.block(&[7; 10], false);
        w.set_global("blob", &blob.to_ne_bytes());
        let (reached, plan) = w.plan().expect("plan");
        let by_old = |a: u64| *plan.blocks.iter().find(|b| b.old == a).expect("planned");
        let a = by_old(array);
        assert_eq!((a.size, a.old_stride, a.new_stride), (2 * 24 + 4, 16, 24));
        assert_eq!(by_old(blob).size, 10, "copied as bytes: same size");
        assert_eq!((by_old(blob).old_stride, by_old(blob).new_stride), (0, 0));
        assert!(plan.blocks.iter().all(|b| b.placement == Placement::Fresh { identity: None }));
        let t = plan.of(reached.blocks[&array].reach.ty()).expect("a plan for struct node");
        assert_eq!(w.new.type_name(t.new_ty), "struct node");
        assert!(t.transform.as_ref().is_some_and(|p| (p.old_size, p.new_size) == (16, 24)) && t.handler.is_none());
        assert!(plan.of(reached.blocks[&blob].reach.ty()).is_none());
    }

    #[test]
    fn startup_blocks_go_to_their_counterpart_when_it_is_big_enough() {
        let mut w = grown_list();
        let n3 = w.old_proc.block(&node(3, 0), false);
        let n2 = w.old_proc.block(&node(2, n3), true);
        let n1 = w.old_proc.block(&node(1, n2), true);
        w.set_global("head", &n1.to_ne_bytes());
        let m1 = w.new_proc.startup_block(&[0; 24]);
        let m2 = w.new_proc.startup_block(&[0; 8]);
        w.startup_tables(&[(n1, 1), (n2, 2)], &[(m1, 1), (m2, 2)]);
        let (reached, plan) = w.plan().expect("plan");
        let key = |stack| StartupKey { stack, thread: 1, ordinal: 0 };
        let place = |a: u64| plan.blocks.iter().find(|b| b.old == a).expect("planned").placement;
        assert_eq!(place(n1), Placement::Matched { new: m1, key: key(1) });
        assert_eq!(place(n2), Placement::Fresh { identity: Some(key(2)) }, "its counterpart is too small");
        assert_eq!(place(n3), Placement::Fresh { identity: None }, "not a startup block");
        assert_eq!(plan.unmatched, [(n2, Unmatched::TooSmall { key: key(2), have: 8, need: 24 })]);
        assert_eq!(
            describe_unmatched(&reached, w.startup.as_ref(), n2, &plan.unmatched[0].1),
            format!(
                "head -> node.next: startup block {n2:#x} (call stack 0000000000000002 #0 of thread 1, alloc_2) \
                 reallocated: the new version's counterpart has 8 bytes, the transferred object needs 24"
            )
        );
    }

    /// The list program whose node is `{ <val> val; struct node *next; }`, its name `tag`.
    fn node_program(tag: &str, val: impl FnOnce(&mut Build) -> TypeId, hints: &[&str]) -> Program {
        let mut b = Build::default();
        let v = val(&mut b);
        let node = b.reserve();
        let p = b.ptr(node);
        b.set(node, Build::composite_struct(tag, 16, &[("val", v, 0), ("next", p, 8)]));
        b.global("head", HEAD, p);
        for h in hints {
            b.hint(h);
        }
        b.done()
    }

    fn money(b: &mut Build) -> TypeId {
        let long = b.long();
        b.strukt("money", 8, &[("cents", long, 0)])
    }

    fn conflict(w: &mut World) -> (String, String) {
        match w.plan() {
            Err(TransferError::Conflict { path, reason }) => (path, reason),
            other => panic!("expected a conflict, got {:?}", other.map(|p| p.1)),
        }
    }

    #[test]
    fn a_type_the_new_version_lacks_or_cannot_be_transformed_to_is_a_conflict() {
        let old = || node_program("node", |b| b.int(), &[]);
        let mut w = World::new(old(), node_program("item", |b| b.int(), &[]));
        let n = w.old_proc.block(&words(&[1, 0]), false);
        w.set_global("head", &n.to_ne_bytes());
        assert_eq!(conflict(&mut w), ("head".into(), "type struct node has no counterpart in the new version".into()));

        let mut w = World::new(old(), node_program("node", money, &[]));
        let n = w.old_proc.block(&words(&[1, 0]), false);
        w.set_global("head", &n.to_ne_bytes());
        let (path, reason) = conflict(&mut w);
        assert_eq!(path, "head");
        assert!(reason.starts_with("cannot transform struct node: node.val: int becomes struct money"), "{reason}");
    }

    #[test]
    fn objects_followed_by_other_data_cannot_change_size() {
        // `head` reaches a node followed by 40 bytes of something else (a pool's arena).
        let mut w = grown_list();
        let mut bytes = node(1, 0);
        bytes.extend_from_slice(&words(&[5, 6, 7, 8, 9]));
        let n = w.old_proc.block(&bytes, false);
        w.set_global("head", &n.to_ne_bytes());
        let (path, reason) = conflict(&mut w);
        assert_eq!(path, "head");
        assert_eq!(
            reason,
            format!(
                "the heap block at {n:#x} holds a struct node followed by 40 bytes of other data (a pool's arena, a \
                 flexible array member's elements); mcr cannot tell what points into them, so it cannot move them \
                 for struct node to change size (16 -> 24 bytes)"
            )
        );
        // The same block in a version where the node does not change stays as it is.
        let mut w = World::new(list_program(false, |_, _| {}), list_program(false, |_, _| {}));
        let n = w.old_proc.block(&bytes, false);
        w.set_global("head", &n.to_ne_bytes());
        let (_, plan) = w.plan().expect("unchanged");
        assert_eq!((plan.blocks[0].size, plan.blocks[0].old_stride), (56, 16));
    }

    /// `cfg` points 24 bytes into a pool block whose arena (from byte 16) holds `arena`:
    /// a struct cfg carved from it (the first two words), then what follows. The pool.
    fn cfg_in_a_pool(w: &mut World, arena: impl Fn(u64) -> Vec<u64>) -> u64 {
        w.adopted_heap = true;
        let pool = w.old_proc.next_block();
        let mut all = vec![0, 0, 7];
        all.extend(arena(pool));
        all[0] = all.len() as u64 * 8;
        assert_eq!(w.old_proc.block(&words(&all), false), pool);
        w.set_global("pool", &pool.to_ne_bytes());
        w.set_global("cfg", &(pool + 24).to_ne_bytes());
        pool
    }

    /// The transfer's conflict (the heap adopted: memory mcr cannot type pins blocks).
    fn refused(w: &mut World) -> (String, String) {
        match w.transfer() {
            Err(TransferError::Conflict { path, reason }) => (path, reason),
            other => panic!("expected a conflict, got {:?}", other.map(|_| ())),
        }
    }

    fn pool_world(grown: bool) -> World {
        World::new(list_program(false, pool_and_cfg), list_program(grown, pool_and_cfg))
    }

    #[test]
    fn an_object_carved_from_a_pool_cannot_change() {
        // struct cfg grows a field in the new version: it cannot, where it is.
        let changed = |b: &mut Build, ids: Ids| {
            pool_and_other(b, ids);
            let cfg = b.strukt("cfg", 24, &[("n", ids.long, 0), ("first", ids.node_ptr, 8), ("m", ids.long, 16)]);
            let p = b.ptr(cfg);
            b.global("cfg", 0x40_1080, p);
        };
        let mut w = World::new(list_program(false, pool_and_cfg), list_program(false, changed));
        let pool = cfg_in_a_pool(&mut w, |_| vec![5, 0, 0, 0]);
        let (path, reason) = refused(&mut w);
        assert_eq!(path, "cfg");
        assert_eq!(
            reason,
            format!(
                "points 24 bytes into the heap block at {pool:#x} (pool), to a struct cfg among other data (a pool's \
                 arena, a buffer): mcr cannot tell the objects there apart, so it leaves them where they are, as \
                 they are, with what they point to, but struct cfg changes layout (keep the type as it is, or \
                 allocate its objects with malloc)"
            )
        );
    }

    /// The message of a conflict for the cfg at 24 bytes into `pool` that leads to a
    /// struct node at `node`, which changes.
    fn leads_to_a_changed_node(pool: u64, node: u64) -> String {
        format!(
            "points 24 bytes into the heap block at {pool:#x} (pool), to a struct cfg among other data (a pool's \
             arena, a buffer): mcr cannot tell the objects there apart, so it leaves them where they are, as they \
             are, with what they point to, but it (or memory next to it that looks like more of them: an array \
             whose length mcr cannot know) leads to what looks like a struct node at {node:#x}, and struct node \
             changes layout (keep the type as it is, or allocate its objects with malloc)"
        )
    }

    #[test]
    fn what_an_object_carved_from_a_pool_leads_to_cannot_change() {
        // struct node changes; the cfg in the pool points to no node (nothing next to it
        // looks like another cfg): nothing it leads to changes, the pool stays as it is.
        let mut w = pool_world(true);
        cfg_in_a_pool(&mut w, |_| vec![5, 0, 0, 0]);
        w.transfer().expect("no node in the pool's reach");

        // It points to a node of its own block: carved from the pool too, it cannot change.
        let mut w = pool_world(true);
        let pool = cfg_in_a_pool(&mut w, |pool| vec![5, pool + 40, 3, 0, 0, 0]);
        assert_eq!(refused(&mut w), ("cfg".to_string(), leads_to_a_changed_node(pool, pool + 40)));

        // It points to a node block of its own: pinned by the pool's scan, it stays as it
        // is, and cannot change either.
        let mut w = pool_world(true);
        let n = w.old_proc.block(&node(4, 0), false);
        let pool = cfg_in_a_pool(&mut w, |_| vec![5, n, 0, 0]);
        assert_eq!(refused(&mut w), ("cfg".to_string(), leads_to_a_changed_node(pool, n)));

        // The same blocks where struct node does not change: the pool stays, the node too.
        let mut w = pool_world(false);
        let n = w.old_proc.block(&node(4, 0), false);
        cfg_in_a_pool(&mut w, |pool| vec![5, n, 0, 0, 6, pool + 24]);
        w.transfer().expect("nothing in the pool changes");
    }

    #[test]
    fn an_object_carved_from_a_pool_next_to_more_of_its_kind_cannot_lead_to_a_changed_type() {
        // After the cfg, memory that looks like another cfg whose `first` holds a heap
        // address: the pointer may be into an array of them, whose other elements lead to
        // nodes no typed pointer reaches. struct node changes: refused, naming why.
        let mut w = pool_world(true);
        let n = w.old_proc.block(&node(4, 0), false);
        let pool = cfg_in_a_pool(&mut w, |_| vec![5, 0, 9, n]);
        assert_eq!(refused(&mut w), ("cfg".to_string(), leads_to_a_changed_node(pool, n)));
        // What follows holds no address where a cfg holds its pointer: not a cfg.
        let mut w = pool_world(true);
        cfg_in_a_pool(&mut w, |_| vec![5, 0, 9, 0x6d6f_6e6b_6579]);
        w.transfer().expect("text after the cfg");
    }

    #[test]
    fn a_type_only_its_handler_can_transform_is_left_to_the_handler() {
        let old = node_program("node", |b| b.int(), &[]);
        let mut w = World::new(old, node_program("node", money, &["handler struct node"]));
        let n = w.old_proc.block(&words(&[1, 0]), false);
        w.set_global("head", &n.to_ne_bytes());
        let (reached, plan) = w.plan().expect("the handler builds it");
        let t = plan.of(reached.blocks[&n].reach.ty()).expect("planned");
        assert!(t.transform.is_none());
        assert_eq!((t.old_stride, t.new_stride, t.handler.as_deref()), (16, 16, Some("struct node")));
    }

    /// Anonymous aggregates are told apart by the typedef that names them, else by their
    /// members' names, not taken for the first anonymous one of the new program.
    #[test]
    fn an_anonymous_struct_is_found_by_its_typedef_or_its_members() {
        use crate::testing::members;
        use mcr_typemodel::{Composite, Type};
        let anonymous = |size, fields: &[(&str, TypeId, u64)]| {
            Type::Struct(Composite { name: None, size, members: members(fields), incomplete: false })
        };
        let make = || {
            let mut b = Build::default();
            let (int, long) = (b.int(), b.long());
            let other = b.add(anonymous(16, &[("a", long, 0), ("b", long, 8)]));
            let board = b.add(anonymous(24, &[("g", long, 0), ("p", long, 8), ("s", long, 16)]));
            let inner = b.add(anonymous(8, &[("x", int, 0), ("y", int, 4)]));
            b.add(Type::Typedef { name: "scoreboard".into(), target: board });
            (b.done(), [other, board, inner])
        };
        let (old, [_, old_board, old_inner]) = make();
        let (new, [_, new_board, new_inner]) = make();
        let find = |t| super::counterpart(&old, t, &new, &mut std::collections::HashMap::new());
        assert_eq!(find(old_board), Some(new_board), "by its typedef");
        assert_eq!(find(old_inner), Some(new_inner), "by its members");
    }
}
