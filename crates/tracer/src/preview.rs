//! What [`crate::transfer()`] will do with memory DWARF cannot type, worked out offline from
//! the two builds alone (for `mcr check`): the walk the transfer makes from the globals
//! through typed pointers, made over types instead of a process, reading the hints the
//! transfer reads ([`Hints::of_builds`]) and matching them the way it does.

use crate::hints::{field_suffix, key, Hints};
use crate::roots::is_const;
use mcr_typemodel::diff::{reachable_named, Annotations, Diff, Word, WordHint};
use mcr_typemodel::transform::root_name;
use mcr_typemodel::{OpaqueReason, Pointee, Program, Type, TypeId};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// Nesting limit (malformed DWARF can describe cycles by value).
const MAX_DEPTH: usize = 64;

/// A type's name as `mcr check` lists changed types (`struct kv_node`; the typedef for an
/// anonymous aggregate behind one).
pub(crate) fn display(p: &Program, t: TypeId) -> String {
    let s = p.strip(t);
    match p.ty(s) {
        Type::Struct(c) | Type::Union(c) if c.name.is_none() => p.type_name(t),
        _ => p.type_name(s),
    }
}

/// The union that starts `off` bytes into an object of type `t`, if one does.
fn union_at(p: &Program, t: TypeId, off: u64, depth: usize) -> Option<TypeId> {
    if depth > MAX_DEPTH {
        return None;
    }
    let s = p.strip(t);
    match p.ty(s) {
        Type::Union(_) if off == 0 => Some(s),
        Type::Struct(c) => c.members.iter().filter(|m| m.bit_size.is_none()).find_map(|m| {
            let size = p.size_of(m.ty).unwrap_or(0);
            (off >= m.offset && off < m.offset + size.max(1))
                .then(|| union_at(p, m.ty, off - m.offset, depth + 1))
                .flatten()
        }),
        Type::Array { element, .. } => {
            let es = p.size_of(*element).filter(|&n| n > 0)?;
            union_at(p, *element, off % es, depth + 1)
        }
        _ => None,
    }
}

/// The types a union's pointer members (also inside its struct members) point to:
/// `void` for a `void *`; function pointers left out (they never point into the heap).
fn pointer_members(p: &Program, t: TypeId, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match p.ty(p.strip(t)) {
        Type::Pointer { pointee, .. } => {
            let name = match p.ty(p.strip(*pointee)) {
                Type::Function { .. } => return,
                Type::Void | Type::Unknown { .. } => "void".to_string(),
                Type::Struct(c) | Type::Union(c) if c.incomplete => "void".to_string(),
                _ => display(p, *pointee),
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Type::Struct(c) | Type::Union(c) => {
            for m in &c.members {
                pointer_members(p, m.ty, out, depth + 1);
            }
        }
        Type::Array { element, .. } => pointer_members(p, *element, out, depth + 1),
        _ => {}
    }
}

/// What `mcr check` reports: the two builds compared as an update would meet them, with
/// their hints applied. Without DWARF in both there is nothing to hint (the diff then says
/// which build lacks it).
pub fn compare(old: &Program, new: &Program) -> Diff {
    let notes = if old.has_debug_info && new.has_debug_info { annotations(old, new) } else { Default::default() };
    mcr_typemodel::diff_with(old, new, &notes)
}

/// The hints of the update from `old` to `new`, and what they and DWARF make of the
/// words the transfer will meet: every word a hint covers, every union with pointer
/// members, the types only hints lead to, and the hints that lead nowhere.
pub fn annotations(old: &Program, new: &Program) -> Annotations {
    let hints = Hints::of_builds(old, new);
    let mut notes = Annotations {
        warnings: hints.unresolved.iter().map(|u| format!("hint ignored: {u}")).collect(),
        ..Default::default()
    };
    let mut used: HashSet<String> = HashSet::new();
    // Containers to scan: (type, hint root, the global holding it).
    let mut queue: VecDeque<(TypeId, String, Option<String>)> = VecDeque::new();
    let mut seen: HashSet<TypeId> = HashSet::new();
    let mut hint_targets: Vec<(TypeId, String)> = Vec::new();
    let mut roots: Vec<TypeId> = Vec::new();
    // The transfer's roots: the globals the new version still has.
    let new_names: HashSet<String> = new.globals.iter().filter(|n| !n.is_tls()).map(|n| n.display_name()).collect();
    for g in &old.globals {
        let (Some(_), Some(size)) = (g.address(), g.size) else { continue };
        if size == 0 || is_const(old, g.ty) {
            continue;
        }
        let name = g.display_name();
        if !new_names.contains(&name) {
            continue;
        }
        roots.push(g.ty);
        queue.push_back((old.strip(g.ty), g.name.clone(), Some(name)));
    }
    while let Some((t, hint_root, global)) = queue.pop_front() {
        let layout = old.layout(t, &root_name(old, t));
        let mut next = |ty: TypeId, queue: &mut VecDeque<(TypeId, String, Option<String>)>| {
            let s = old.strip(ty);
            if seen.insert(s) {
                queue.push_back((s, root_name(old, s), None));
            }
        };
        for slot in &layout.pointers {
            if let Pointee::Data { ty } = slot.pointee {
                next(ty, &mut queue);
                // A typed pointer with a tag: relocated like any other, its tag kept.
                let k = key(&hint_root, &slot.path);
                if hints.tagged.contains_key(&k) {
                    used.insert(k);
                }
            }
        }
        let mut words_here: HashSet<String> = HashSet::new();
        for r in &layout.opaque {
            let k = key(&hint_root, &r.path);
            // Array elements share one hint (and one line).
            let suffix = crate::hints::normalize(field_suffix(&r.path));
            let path = match &global {
                Some(g) => format!("{g}{suffix}"),
                None => format!("{hint_root}{suffix}"),
            };
            if !words_here.insert(path.clone()) {
                continue;
            }
            let mut candidates = Vec::new();
            if r.reason == OpaqueReason::Union {
                if let Some(u) = union_at(old, t, r.offset, 0) {
                    pointer_members(old, u, &mut candidates, 0);
                }
            }
            let (mut written, from) = match hints.written.get(&k) {
                Some((w, o)) => (w.clone(), o.describe().to_string()),
                None => (String::new(), String::new()),
            };
            if let Some(t) = hints.tagged.get(&k) {
                used.insert(k.clone());
                if !written.is_empty() {
                    written = format!("{written} with {}", t.written);
                }
            }
            let hint = if hints.opaque.contains(&k) {
                Some(WordHint::Opaque { written, from })
            } else if let Some(&ty) = hints.points_to.get(&k) {
                next(ty, &mut queue);
                hint_targets.push((old.strip(ty), written.clone()));
                Some(WordHint::PointsTo { ty: display(old, ty), written, from })
            } else {
                None
            };
            if hint.is_some() {
                used.insert(k.clone());
            } else if candidates.is_empty() {
                continue;
            }
            notes.words.push(Word { path, global: global.clone(), hint_where: k, reason: r.reason, candidates, hint });
        }
    }
    // Types only hints lead to.
    let typed = reachable_named(old, &roots);
    let mut hinted: BTreeMap<String, String> = BTreeMap::new();
    for (t, written) in &hint_targets {
        for name in reachable_named(old, &[*t]) {
            if !typed.contains(&name) {
                hinted.entry(name).or_insert_with(|| written.clone());
            }
        }
    }
    notes.hinted_types = hinted;
    let mut unused: Vec<String> = hints
        .written
        .iter()
        .filter(|(k, _)| !used.contains(*k))
        .map(|(_, (w, o))| (w, o))
        .chain(hints.tagged.iter().filter(|(k, _)| !used.contains(*k)).map(|(_, t)| (&t.written, &t.origin)))
        .map(|(w, o)| {
            format!(
                "hint {w} in {}: names no pointer, union, void * or integer that the update reaches from the globals; it has \
                 no effect (check WHERE: a global's name, or struct-tag.field)",
                o.describe()
            )
        })
        .collect();
    unused.sort();
    notes.warnings.extend(unused);
    notes
}
