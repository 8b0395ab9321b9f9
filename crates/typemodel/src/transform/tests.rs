//! The transformation rules on synthetic type graphs.

use super::*;
use std::convert::Infallible;

/// Builds a synthetic program: `types[0]` is void.
struct B(Program);

impl B {
    fn new() -> B {
        let mut p = Program::empty("synthetic".into());
        p.types.push(Type::Void);
        p.has_debug_info = true;
        B(p)
    }
    fn add(&mut self, t: Type) -> TypeId {
        self.0.types.push(t);
        (self.0.types.len() - 1) as TypeId
    }
    fn int(&mut self, name: &str, size: u64, signed: bool) -> TypeId {
        let encoding = if signed { Encoding::Signed } else { Encoding::Unsigned };
        self.add(Type::Base { name: name.into(), size, encoding })
    }
    fn char_type(&mut self, name: &str, signed: bool) -> TypeId {
        let encoding = if signed { Encoding::SignedChar } else { Encoding::UnsignedChar };
        self.add(Type::Base { name: name.into(), size: 1, encoding })
    }
    fn ptr(&mut self, to: TypeId) -> TypeId {
        self.add(Type::Pointer { pointee: to, size: 8 })
    }
    fn strukt(&mut self, name: &str, size: u64, members: &[(&str, TypeId, u64)]) -> TypeId {
        self.add(Type::Struct(composite(name, size, members)))
    }
    fn bits(&mut self, name: &str, size: u64, members: &[(&str, TypeId, u64, u64)]) -> TypeId {
        // (name, type, bit offset, bit size)
        let members = members
            .iter()
            .map(|(n, t, bo, bs)| Member {
                name: Some(n.to_string()),
                ty: *t,
                offset: bo / 8,
                bit_size: Some(*bs),
                bit_offset: Some(*bo),
            })
            .collect();
        self.add(Type::Struct(Composite { name: Some(name.into()), size, members, incomplete: false }))
    }
    fn array(&mut self, element: TypeId, counts: &[Option<u64>]) -> TypeId {
        self.add(Type::Array { element, counts: counts.to_vec() })
    }
    fn enumeration(&mut self, name: &str, items: &[(&str, i64)]) -> TypeId {
        let enumerators = items.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        self.add(Type::Enum { name: Some(name.into()), size: 4, signed: false, enumerators })
    }
}

fn composite(name: &str, size: u64, members: &[(&str, TypeId, u64)]) -> Composite {
    let members = members
        .iter()
        .map(|(n, t, o)| Member { name: Some(n.to_string()), ty: *t, offset: *o, bit_size: None, bit_offset: None })
        .collect();
    Composite { name: Some(name.into()), size, members, incomplete: false }
}

fn no_pointers(_: PointerSite) -> Result<u64, Infallible> {
    panic!("no pointer expected")
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn run(plan: &Plan, old: &[u8]) -> Result<Vec<u8>, TransformError> {
    let mut new = vec![0xAAu8; plan.new_len(old.len() as u64) as usize];
    plan.apply(old, &mut new, &mut no_pointers)?;
    Ok(new)
}

/// kvd's change: `int hits` widened to `long`, moved before `hash`, `created_tick` added.
fn kv_node_pair() -> (Program, TypeId, Program, TypeId) {
    let mut o = B::new();
    let (ou, oi) = (o.int("unsigned int", 4, false), o.int("int", 4, true));
    let oc = o.int("char", 1, true);
    let ocp = o.ptr(oc);
    let onode = o.strukt("kv_node", 32, &[("key", ocp, 0), ("value", ocp, 8), ("hash", ou, 16), ("hits", oi, 20)]);
    let onp = o.ptr(onode);
    if let Type::Struct(c) = &mut o.0.types[onode as usize] {
        c.members.push(Member { name: Some("next".into()), ty: onp, offset: 24, bit_size: None, bit_offset: None });
    }
    let mut n = B::new();
    let (nu, nl) = (n.int("unsigned int", 4, false), n.int("long int", 8, true));
    let nc = n.int("char", 1, true);
    let ncp = n.ptr(nc);
    let nnode = n.strukt(
        "kv_node",
        48,
        &[("key", ncp, 0), ("value", ncp, 8), ("hits", nl, 16), ("hash", nu, 24), ("created_tick", nl, 32)],
    );
    let nnp = n.ptr(nnode);
    if let Type::Struct(c) = &mut n.0.types[nnode as usize] {
        c.members.push(Member { name: Some("next".into()), ty: nnp, offset: 40, bit_size: None, bit_offset: None });
    }
    (o.0, onode, n.0, nnode)
}

#[test]
fn fields_by_name_widened_reordered_added_zeroed_pointers_relocated() {
    let (o, ot, n, nt) = kv_node_pair();
    let plan = Plan::new(&o, ot, &n, nt).expect("automatic");
    assert_eq!((plan.old_size, plan.new_size), (32, 48));
    let mut old = vec![0u8; 32];
    put(&mut old, 0, &0x1000u64.to_le_bytes());
    put(&mut old, 8, &0x2000u64.to_le_bytes());
    put(&mut old, 16, &0xdeadbeefu32.to_le_bytes());
    put(&mut old, 20, &(-7i32).to_le_bytes());
    put(&mut old, 24, &0u64.to_le_bytes()); // null next: no relocation call
    let mut new = vec![0xAAu8; 48];
    let mut seen = Vec::new();
    plan.apply(&old, &mut new, &mut |site: PointerSite| -> Result<u64, Infallible> {
        seen.push((site.path.to_string(), site.old_value, site.old_pointee, site.new_pointee));
        Ok(site.old_value + 0x10)
    })
    .unwrap();
    assert_eq!(u64::from_le_bytes(new[0..8].try_into().unwrap()), 0x1010);
    assert_eq!(u64::from_le_bytes(new[8..16].try_into().unwrap()), 0x2010);
    assert_eq!(i64::from_le_bytes(new[16..24].try_into().unwrap()), -7, "hits sign-extended");
    assert_eq!(u32::from_le_bytes(new[24..28].try_into().unwrap()), 0xdeadbeef);
    assert_eq!(i64::from_le_bytes(new[32..40].try_into().unwrap()), 0, "created_tick zeroed");
    assert_eq!(u64::from_le_bytes(new[40..48].try_into().unwrap()), 0, "null stays null");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "kv_node.key");
    assert!(matches!(seen[0].2, Pointee::Data { .. }));
    let rule = |p: &str| plan.rules.iter().find(|r| r.path == p).map(|r| r.rule.clone());
    assert_eq!(
        rule("kv_node.hits"),
        Some(Rule::IntConverted {
            from: "int".into(),
            to: "long int".into(),
            checked: false,
            old_offset: 20,
            new_offset: 16
        })
    );
    assert_eq!(rule("kv_node.hash"), Some(Rule::Copied { old_offset: 16, new_offset: 24 }));
    assert_eq!(rule("kv_node.created_tick"), Some(Rule::Added { ty: "long int".into(), offset: 32 }));
    assert!(matches!(rule("kv_node.next"), Some(Rule::PointerRelocated { function: false, .. })));
    assert_eq!(rule("kv_node.key"), None, "unchanged field at the same place: no rule");
}

#[test]
fn narrowing_is_range_checked_and_names_the_field() {
    let mut o = B::new();
    let l = o.int("long int", 8, true);
    let ot = o.strukt("kv_node", 8, &[("hits", l, 0)]);
    let mut n = B::new();
    let i = n.int("int", 4, true);
    let nt = n.strukt("kv_node", 4, &[("hits", i, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert!(matches!(&plan.rules[0].rule, Rule::IntConverted { checked: true, .. }));
    let new = run(&plan, &(-5i64).to_le_bytes()).unwrap();
    assert_eq!(i32::from_le_bytes(new[..4].try_into().unwrap()), -5);
    let err = run(&plan, &(1i64 << 40).to_le_bytes()).unwrap_err();
    assert!(
        matches!(&err, TransformError::OutOfRange { path, bits: 32, signed: true, .. } if path == "kv_node.hits"),
        "{err}"
    );
    assert!(err.to_string().contains("kv_node.hits"), "{err}");
}

#[test]
fn sign_conversion_is_range_checked() {
    let mut o = B::new();
    let u = o.int("unsigned int", 4, false);
    let ot = o.strukt("s", 4, &[("n", u, 0)]);
    let mut n = B::new();
    let i = n.int("int", 4, true);
    let nt = n.strukt("s", 4, &[("n", i, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert_eq!(run(&plan, &7u32.to_le_bytes()).unwrap()[..4], 7i32.to_le_bytes());
    assert!(matches!(run(&plan, &3_000_000_000u32.to_le_bytes()), Err(TransformError::OutOfRange { .. })));
    // And back: a negative value does not fit an unsigned.
    let back = Plan::new(&n.0, nt, &o.0, ot).unwrap();
    assert!(matches!(run(&back, &(-1i32).to_le_bytes()), Err(TransformError::OutOfRange { .. })));
    // unsigned int -> long: always fits, no check needed.
    let mut w = B::new();
    let l = w.int("long int", 8, true);
    let wt = w.strukt("s", 8, &[("n", l, 0)]);
    let widen = Plan::new(&o.0, ot, &w.0, wt).unwrap();
    assert!(matches!(&widen.rules[0].rule, Rule::IntConverted { checked: false, .. }));
    assert_eq!(run(&widen, &u32::MAX.to_le_bytes()).unwrap(), (u32::MAX as i64).to_le_bytes());
}

#[test]
fn a_char_that_changes_signedness_keeps_its_byte() {
    let mut o = B::new();
    let c = o.char_type("char", true);
    let ot = o.strukt("s", 1, &[("c", c, 0)]);
    let mut n = B::new();
    let u = n.char_type("unsigned char", false);
    let nt = n.strukt("s", 1, &[("c", u, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert_eq!(run(&plan, &[0xff]).unwrap(), [0xff], "char -1 is unsigned char 255");
    let back = Plan::new(&n.0, nt, &o.0, ot).unwrap();
    assert_eq!(run(&back, &[0x80]).unwrap(), [0x80]);
    // A char that widens is still an integer conversion: -1 does not fit an unsigned short.
    let mut w = B::new();
    let us = w.int("short unsigned int", 2, false);
    let wt = w.strukt("s", 2, &[("c", us, 0)]);
    let widen = Plan::new(&o.0, ot, &w.0, wt).unwrap();
    assert!(matches!(run(&widen, &[0xff]), Err(TransformError::OutOfRange { .. })));
}

#[test]
fn enums_are_mapped_by_enumerator_name() {
    let mut o = B::new();
    let oe = o.enumeration("state", &[("IDLE", 0), ("BUSY", 1), ("GONE", 2)]);
    let ot = o.strukt("s", 4, &[("st", oe, 0)]);
    let mut n = B::new();
    let ne = n.enumeration("state", &[("NEW", 0), ("IDLE", 1), ("BUSY", 2)]);
    let nt = n.strukt("s", 4, &[("st", ne, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert_eq!(
        plan.rules[0].rule,
        Rule::EnumByName {
            removed: vec!["GONE".into()],
            added: vec!["NEW".into()],
            renumbered: vec!["IDLE".into(), "BUSY".into()]
        }
    );
    assert_eq!(run(&plan, &0u32.to_le_bytes()).unwrap(), 1u32.to_le_bytes(), "IDLE 0 -> 1");
    assert_eq!(run(&plan, &1u32.to_le_bytes()).unwrap(), 2u32.to_le_bytes(), "BUSY 1 -> 2");
    let err = run(&plan, &2u32.to_le_bytes()).unwrap_err();
    assert!(
        matches!(&err, TransformError::EnumeratorRemoved { path, name } if path == "s.st" && name == "GONE"),
        "{err}"
    );
    assert!(matches!(run(&plan, &9u32.to_le_bytes()), Err(TransformError::UnknownEnumValue { value: 9, .. })));
    // Only additions: values are kept, even those that are no enumerator (flag sets).
    let mut a = B::new();
    let ae = a.enumeration("state", &[("IDLE", 0), ("BUSY", 1), ("GONE", 2), ("LATE", 3)]);
    let at = a.strukt("s", 4, &[("st", ae, 0)]);
    let plan = Plan::new(&o.0, ot, &a.0, at).unwrap();
    assert_eq!(run(&plan, &9u32.to_le_bytes()).unwrap(), 9u32.to_le_bytes());
}

#[test]
fn arrays_are_extended_with_zeros_and_truncated_only_when_the_rest_is_zero() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let a4 = o.array(i, &[Some(4)]);
    let ot = o.strukt("s", 16, &[("a", a4, 0)]);
    let mut n = B::new();
    let ni = n.int("int", 4, true);
    let a6 = n.array(ni, &[Some(6)]);
    let a2 = n.array(ni, &[Some(2)]);
    let n6 = n.strukt("s", 24, &[("a", a6, 0)]);
    let n2 = n.strukt("t", 8, &[("a", a2, 0)]);
    let old: Vec<u8> = [1i32, 2, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let grow = Plan::new(&o.0, ot, &n.0, n6).unwrap();
    assert_eq!(grow.rules[0].rule, Rule::ArrayResized { old_count: 4, new_count: 6 });
    let out = run(&grow, &old).unwrap();
    assert_eq!(out, [1i32, 2, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let shrink = Plan::with_root(&o.0, ot, &n.0, n2, "s").unwrap();
    assert_eq!(run(&shrink, &old).unwrap(), old[..8]);
    let full: Vec<u8> = [1i32, 2, 3, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(matches!(run(&shrink, &full), Err(TransformError::Truncated { path, .. }) if path == "s.a"));
}

#[test]
fn array_elements_are_converted_with_the_index_in_errors() {
    let mut o = B::new();
    let l = o.int("long int", 8, true);
    let a = o.array(l, &[Some(3)]);
    let ot = o.strukt("s", 24, &[("a", a, 0)]);
    let mut n = B::new();
    let i = n.int("int", 4, true);
    let na = n.array(i, &[Some(3)]);
    let nt = n.strukt("s", 12, &[("a", na, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    let old: Vec<u8> = [1i64, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(run(&plan, &old).unwrap(), [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    let bad: Vec<u8> = [1i64, 1 << 33, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let err = run(&plan, &bad).unwrap_err();
    assert!(matches!(&err, TransformError::OutOfRange { path, .. } if path == "s.a[1]"), "{err}");
}

#[test]
fn multi_dimensional_arrays() {
    let mut o = B::new();
    let s = o.int("short int", 2, true);
    let m = o.array(s, &[Some(2), Some(3)]);
    let ot = o.strukt("grid", 12, &[("cells", m, 0)]);
    let mut n = B::new();
    let i = n.int("int", 4, true);
    let nm = n.array(i, &[Some(2), Some(4)]);
    let nt = n.strukt("grid", 32, &[("cells", nm, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    let old: Vec<u8> = [1i16, 2, 3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    let want: Vec<u8> = [1i32, 2, 3, 0, 4, 5, 6, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(run(&plan, &old).unwrap(), want);
}

#[test]
fn bitfields_move_and_are_range_checked() {
    let mut o = B::new();
    let u = o.int("unsigned int", 4, false);
    // struct f { unsigned a:3; unsigned b:5; }
    let ot = o.bits("f", 4, &[("a", u, 0, 3), ("b", u, 3, 5)]);
    let mut n = B::new();
    let nu = n.int("unsigned int", 4, false);
    // struct f { unsigned b:5; unsigned a:4; }
    let nt = n.bits("f", 4, &[("b", nu, 0, 5), ("a", nu, 5, 4)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    let old = (5u32 | (17 << 3)).to_le_bytes();
    let mut new = vec![0u8; 4];
    plan.apply(&old, &mut new, &mut no_pointers).unwrap();
    let v = u32::from_le_bytes(new[..4].try_into().unwrap());
    assert_eq!(v & 0x1f, 17, "b");
    assert_eq!((v >> 5) & 0xf, 5, "a");
    // Narrowing a bitfield: a:3 -> a:2 is checked.
    let mut m = B::new();
    let mu = m.int("unsigned int", 4, false);
    let mt = m.bits("f", 4, &[("a", mu, 0, 2), ("b", mu, 2, 5)]);
    let narrow = Plan::new(&o.0, ot, &m.0, mt).unwrap();
    assert!(matches!(run(&narrow, &old), Err(TransformError::OutOfRange { path, bits: 2, .. }) if path == "f.a"));
    assert!(run(&narrow, &(3u32 | (1 << 3)).to_le_bytes()).is_ok());
    // A bitfield becoming a plain int keeps its value.
    let mut p = B::new();
    let pi = p.int("int", 4, true);
    let pt = p.strukt("f", 8, &[("a", pi, 0), ("b", pi, 4)]);
    let plain = Plan::new(&o.0, ot, &p.0, pt).unwrap();
    let out = run(&plain, &old).unwrap();
    assert_eq!(out, [5i32, 17].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
}

#[test]
fn nested_structs_are_transformed_in_place() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let inner = o.strukt("inner", 4, &[("x", i, 0)]);
    let ot = o.strukt("outer", 8, &[("in", inner, 0), ("y", i, 4)]);
    let mut n = B::new();
    let ni = n.int("int", 4, true);
    let ninner = n.strukt("inner", 8, &[("w", ni, 0), ("x", ni, 4)]);
    let nt = n.strukt("outer", 12, &[("in", ninner, 0), ("y", ni, 8)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    let old: Vec<u8> = [11i32, 22].iter().flat_map(|v| v.to_le_bytes()).collect();
    let out = run(&plan, &old).unwrap();
    assert_eq!(out, [0i32, 11, 22].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    assert!(plan.rules.iter().any(|r| r.path == "outer.in.w" && matches!(r.rule, Rule::Added { .. })));
    assert!(plan
        .rules
        .iter()
        .any(|r| r.path == "outer.in.x" && r.rule == Rule::Copied { old_offset: 0, new_offset: 4 }));
}

#[test]
fn typedefd_integers_convert_through_the_typedef() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let pid = o.add(Type::Typedef { name: "pid_t".into(), target: i });
    let cpid = o.add(Type::Qualified { qualifier: Qualifier::Const, target: pid });
    let ot = o.strukt("s", 4, &[("owner", cpid, 0)]);
    let mut n = B::new();
    let l = n.int("long int", 8, true);
    let npid = n.add(Type::Typedef { name: "pid64_t".into(), target: l });
    let nt = n.strukt("s", 8, &[("owner", npid, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert_eq!(
        plan.rules[0].rule,
        Rule::IntConverted {
            from: "const pid_t".into(),
            to: "pid64_t".into(),
            checked: false,
            old_offset: 0,
            new_offset: 0
        }
    );
    assert_eq!(run(&plan, &(-3i32).to_le_bytes()).unwrap(), (-3i64).to_le_bytes());
    // Same typedef on both sides: identity.
    let same = Plan::new(&o.0, ot, &o.0, ot).unwrap();
    assert!(same.identity && same.rules.is_empty());
}

#[test]
fn function_and_void_pointers_are_handed_to_the_caller() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let f = o.add(Type::Function { ret: i, params: vec![i], variadic: false });
    let fp = o.ptr(f);
    let vp = o.ptr(0);
    let ot = o.strukt("h", 16, &[("cb", fp, 0), ("data", vp, 8)]);
    let plan = Plan::new(&o.0, ot, &o.0, ot).unwrap();
    let mut old = vec![0u8; 16];
    put(&mut old, 0, &0x401000u64.to_le_bytes());
    put(&mut old, 8, &0x7f00u64.to_le_bytes());
    let mut new = vec![0u8; 16];
    let mut kinds = Vec::new();
    plan.apply(&old, &mut new, &mut |s: PointerSite| -> Result<u64, String> {
        kinds.push(s.new_pointee);
        match s.new_pointee {
            Pointee::Function => Ok(0x501000),
            _ => Ok(s.old_value),
        }
    })
    .unwrap();
    assert_eq!(kinds, vec![Pointee::Function, Pointee::Void]);
    assert_eq!(u64::from_le_bytes(new[0..8].try_into().unwrap()), 0x501000);
    assert_eq!(u64::from_le_bytes(new[8..16].try_into().unwrap()), 0x7f00);
    // A relocation failure names the field.
    let err =
        plan.apply(&old, &mut new, &mut |_s: PointerSite| -> Result<u64, String> { Err("no such symbol".into()) });
    assert!(matches!(err, Err(TransformError::Relocate { path, .. }) if path == "h.cb"));
}

#[test]
fn incompatible_kinds_need_a_handler() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let ip = o.ptr(i);
    let u = o.add(Type::Union(composite("u", 4, &[("i", i, 0)])));
    let inner = o.strukt("in", 4, &[("x", i, 0)]);
    let ot = o.strukt("s", 20, &[("a", i, 0), ("b", i, 4), ("c", u, 8), ("d", inner, 12), ("e", ip, 12)]);
    let mut n = B::new();
    let ni = n.int("int", 4, true);
    let nl = n.int("long int", 8, true);
    let nip = n.ptr(ni);
    let ninner = n.strukt("in", 4, &[("x", ni, 0)]);
    let nu = n.add(Type::Union(composite("u", 8, &[("i", ni, 0), ("l", nl, 0)])));
    let nun = n.add(Type::Union(composite("in", 4, &[("x", ni, 0)])));
    let nt = n.strukt("s", 40, &[("a", ninner, 0), ("b", nip, 8), ("c", nu, 16), ("d", nun, 24), ("e", ni, 28)]);
    let err = Plan::new(&o.0, ot, &n.0, nt).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["s.a", "s.b", "s.c", "s.d", "s.e"], "{err}");
    assert!(err.problems[0].reason.contains("from integer to struct"), "{err}");
    assert!(err.problems[1].reason.contains("from integer to pointer"), "{err}");
    assert!(err.problems[2].reason.contains("union"), "{err}");
    assert!(err.problems[3].reason.contains("from struct to union"), "{err}");
    // An unchanged union is copied as opaque bytes.
    let same = Plan::new(&o.0, u, &o.0, u).unwrap();
    assert!(same.identity);
}

#[test]
fn flexible_array_member_follows_the_object_length() {
    let mut o = B::new();
    let i = o.int("int", 4, true);
    let fa = o.array(i, &[None]);
    let ot = o.strukt("msg", 4, &[("len", i, 0), ("data", fa, 4)]);
    let mut n = B::new();
    let ni = n.int("int", 4, true);
    let nl = n.int("long int", 8, true);
    let nfa = n.array(nl, &[None]);
    let nt = n.strukt("msg", 16, &[("len", ni, 0), ("flags", ni, 4), ("data", nfa, 8)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    let old: Vec<u8> = [2i32, 7, -8].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(plan.new_len(12), 24);
    let out = run(&plan, &old).unwrap();
    let mut want = Vec::new();
    want.extend(2i32.to_le_bytes());
    want.extend(0i32.to_le_bytes());
    want.extend(7i64.to_le_bytes());
    want.extend((-8i64).to_le_bytes());
    assert_eq!(out, want);
}

#[test]
fn float_to_double_and_back() {
    let mut o = B::new();
    let d = o.add(Type::Base { name: "double".into(), size: 8, encoding: Encoding::Float });
    let ot = o.strukt("s", 8, &[("x", d, 0)]);
    let mut n = B::new();
    let f = n.add(Type::Base { name: "float".into(), size: 4, encoding: Encoding::Float });
    let nt = n.strukt("s", 4, &[("x", f, 0)]);
    let plan = Plan::new(&o.0, ot, &n.0, nt).unwrap();
    assert_eq!(run(&plan, &1.5f64.to_le_bytes()).unwrap(), 1.5f32.to_le_bytes());
    assert!(matches!(run(&plan, &0.1f64.to_le_bytes()), Err(TransformError::FloatPrecision { .. })));
}

#[test]
fn short_buffers_are_errors_not_panics() {
    let (o, ot, n, nt) = kv_node_pair();
    let plan = Plan::new(&o, ot, &n, nt).unwrap();
    let mut small = vec![0u8; 8];
    assert!(matches!(
        plan.apply(&[0u8; 32], &mut small, &mut no_pointers),
        Err(TransformError::Size { which: "new", .. })
    ));
    let mut big = vec![0u8; 48];
    assert!(matches!(
        plan.apply(&[0u8; 4], &mut big, &mut no_pointers),
        Err(TransformError::Size { which: "old", .. })
    ));
}

#[test]
fn layout_lists_pointer_slots_and_opaque_regions() {
    let mut b = B::new();
    let i = b.int("int", 4, true);
    let ul = b.int("long unsigned int", 8, false);
    let c = b.add(Type::Base { name: "char".into(), size: 1, encoding: Encoding::SignedChar });
    let buf = b.array(c, &[Some(16)]);
    let vp = b.ptr(0);
    let u = b.add(Type::Union(composite("u", 8, &[("i", i, 0)])));
    let node = b.strukt("node", 0, &[]);
    let np = b.ptr(node);
    let pair = b.array(np, &[Some(2)]);
    let f = b.add(Type::Function { ret: 0, params: vec![], variadic: false });
    let fp = b.ptr(f);
    let t = b.strukt(
        "node",
        72,
        &[
            ("n", i, 0),
            ("buf", buf, 4),
            ("data", vp, 24),
            ("u", u, 32),
            ("kids", pair, 40),
            ("cb", fp, 56),
            ("ticks", ul, 64),
        ],
    );
    let l = b.0.layout(t, "node");
    let ptrs: Vec<(u64, &str)> = l.pointers.iter().map(|p| (p.offset, p.path.as_str())).collect();
    assert_eq!(ptrs, [(40, "node.kids[0]"), (48, "node.kids[1]"), (56, "node.cb")]);
    assert_eq!(l.pointers[2].pointee, Pointee::Function);
    let opaque: Vec<(u64, u64, OpaqueReason)> = l.opaque.iter().map(|r| (r.offset, r.len, r.reason)).collect();
    assert_eq!(
        opaque,
        [
            (4, 16, OpaqueReason::CharArray),
            (24, 8, OpaqueReason::VoidPointer),
            (32, 8, OpaqueReason::Union),
            (64, 8, OpaqueReason::PointerSizedInteger)
        ]
    );
}
