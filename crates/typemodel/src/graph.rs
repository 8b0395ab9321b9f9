//! Graph operations on the type table: deduplication by structural identity.

use crate::model::{Composite, Type, TypeId};
use std::collections::HashMap;

/// Rewrites every type reference held by `t`.
pub(crate) fn map_ids(t: &mut Type, mut f: impl FnMut(TypeId) -> TypeId) {
    match t {
        Type::Pointer { pointee, .. } => *pointee = f(*pointee),
        Type::Struct(c) | Type::Union(c) => {
            for m in c.members.iter_mut() {
                m.ty = f(m.ty);
            }
        }
        Type::Array { element, .. } => *element = f(*element),
        Type::Typedef { target, .. } | Type::Qualified { target, .. } => *target = f(*target),
        Type::Function { ret, params, .. } => {
            *ret = f(*ret);
            for p in params.iter_mut() {
                *p = f(*p);
            }
        }
        Type::Void | Type::Base { .. } | Type::Enum { .. } | Type::Unknown { .. } => {}
    }
}

/// The type references held by `t`, in order.
pub(crate) fn ids(t: &Type) -> Vec<TypeId> {
    let mut v = Vec::new();
    let mut t = t.clone();
    map_ids(&mut t, |id| {
        v.push(id);
        id
    });
    v
}

/// Merges structurally identical types (coarsest partition stable under the
/// references, so recursive types like `struct kv_node { struct kv_node *next; }` from
/// different compilation units become one), then points declarations (`struct foo;`) at
/// the definition of the same name when there is exactly one. Returns the new table and
/// the old-id -> new-id map. Node 0 stays `void`.
pub(crate) fn minimize(types: Vec<Type>) -> (Vec<Type>, Vec<TypeId>) {
    let (types, map1) = refine(types);
    // Redirect incomplete structs/unions to their unique definition.
    let mut defs: HashMap<(bool, &str), Vec<TypeId>> = HashMap::new();
    for (i, t) in types.iter().enumerate() {
        if let Some((is_union, c)) = composite(t) {
            if let (false, Some(n)) = (c.incomplete, c.name.as_deref()) {
                defs.entry((is_union, n)).or_default().push(i as TypeId);
            }
        }
    }
    let mut redirect: Vec<TypeId> = (0..types.len() as TypeId).collect();
    let mut any = false;
    for (i, t) in types.iter().enumerate() {
        if let Some((is_union, c)) = composite(t) {
            if let (true, Some(n)) = (c.incomplete, c.name.as_deref()) {
                if let Some([only]) = defs.get(&(is_union, n)).map(Vec::as_slice) {
                    redirect[i] = *only;
                    any = true;
                }
            }
        }
    }
    if !any {
        return (types, map1);
    }
    let mut types = types;
    for t in types.iter_mut() {
        map_ids(t, |id| redirect.get(id as usize).copied().unwrap_or(id));
    }
    let (types, map2) = refine(types);
    let map = map1
        .iter()
        .map(|&m| {
            let r = redirect.get(m as usize).copied().unwrap_or(m);
            map2.get(r as usize).copied().unwrap_or(0)
        })
        .collect();
    (types, map)
}

fn composite(t: &Type) -> Option<(bool, &Composite)> {
    match t {
        Type::Struct(c) => Some((false, c)),
        Type::Union(c) => Some((true, c)),
        _ => None,
    }
}

fn refine(types: Vec<Type>) -> (Vec<Type>, Vec<TypeId>) {
    let n = types.len();
    let clamp = |id: TypeId| if (id as usize) < n { id } else { 0 };
    // Initial partition: the node's own label (references erased). Void stays class 0.
    let mut class: Vec<u32> = Vec::with_capacity(n);
    let mut labels: HashMap<Type, u32> = HashMap::new();
    labels.insert(Type::Void, 0);
    for t in &types {
        let mut l = t.clone();
        map_ids(&mut l, |_| 0);
        let next = labels.len() as u32;
        class.push(*labels.entry(l).or_insert(next));
    }
    let children: Vec<Vec<TypeId>> = types.iter().map(|t| ids(t).into_iter().map(clamp).collect()).collect();
    let mut count = labels.len();
    loop {
        let mut sigs: HashMap<(u32, Vec<u32>), u32> = HashMap::new();
        let mut next = Vec::with_capacity(n);
        for i in 0..n {
            let key = (class[i], children[i].iter().map(|&c| class[c as usize]).collect::<Vec<_>>());
            let len = sigs.len() as u32;
            next.push(*sigs.entry(key).or_insert(len));
        }
        let new_count = sigs.len();
        class = next;
        if new_count == count {
            break;
        }
        count = new_count;
    }
    // One representative per class, in order of first appearance; void first.
    let mut new_id: HashMap<u32, TypeId> = HashMap::new();
    let mut out: Vec<Type> = vec![Type::Void];
    let void_class = types.iter().position(|t| *t == Type::Void).map(|i| class[i]);
    if let Some(vc) = void_class {
        new_id.insert(vc, 0);
    }
    let mut reps: Vec<usize> = Vec::new();
    for i in 0..n {
        if let std::collections::hash_map::Entry::Vacant(e) = new_id.entry(class[i]) {
            e.insert(out.len() as TypeId);
            out.push(types[i].clone());
            reps.push(i);
        }
    }
    let map: Vec<TypeId> = (0..n).map(|i| new_id[&class[i]]).collect();
    for t in out.iter_mut().skip(1) {
        map_ids(t, |id| map[clamp(id) as usize]);
    }
    (out, map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Encoding, Member};

    fn node(name: &str, int: TypeId, ptr: TypeId) -> Type {
        Type::Struct(Composite {
            name: Some(name.into()),
            size: 16,
            incomplete: false,
            members: vec![
                Member { name: Some("v".into()), ty: int, offset: 0, bit_size: None, bit_offset: None },
                Member { name: Some("next".into()), ty: ptr, offset: 8, bit_size: None, bit_offset: None },
            ],
        })
    }

    #[test]
    fn recursive_struct_from_two_units_is_one_type() {
        let int = Type::Base { name: "int".into(), size: 4, encoding: Encoding::Signed };
        // Unit A: 1 int, 2 node, 3 ptr->2; unit B: 4 int, 5 ptr->6, 6 node.
        let types = vec![
            Type::Void,
            int.clone(),
            node("n", 1, 3),
            Type::Pointer { pointee: 2, size: 8 },
            int,
            Type::Pointer { pointee: 6, size: 8 },
            node("n", 4, 5),
        ];
        let (out, map) = minimize(types);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(map[2], map[6]);
        assert_eq!(map[3], map[5]);
        assert_eq!(map[1], map[4]);
    }

    #[test]
    fn declaration_points_at_the_definition() {
        let decl = Type::Struct(Composite { name: Some("n".into()), size: 0, members: vec![], incomplete: true });
        let int = Type::Base { name: "int".into(), size: 4, encoding: Encoding::Signed };
        let types = vec![
            Type::Void,
            int,
            node("n", 1, 3),
            Type::Pointer { pointee: 2, size: 8 },
            decl,
            Type::Pointer { pointee: 4, size: 8 },
        ];
        let (out, map) = minimize(types);
        assert_eq!(map[5], map[3], "{out:?}");
        assert_eq!(map[4], map[2]);
    }

    #[test]
    fn same_name_different_layout_stays_apart() {
        let int = Type::Base { name: "int".into(), size: 4, encoding: Encoding::Signed };
        let long = Type::Base { name: "long".into(), size: 8, encoding: Encoding::Signed };
        let types = vec![
            Type::Void,
            int,
            long,
            node("n", 1, 5),
            node("n", 2, 6),
            Type::Pointer { pointee: 3, size: 8 },
            Type::Pointer { pointee: 4, size: 8 },
        ];
        let (out, map) = minimize(types);
        assert_ne!(map[3], map[4], "{out:?}");
    }
}
