//! The transfer's roots (paper §6): the main binary's globals. An old global moves into
//! the new version's global of the same name (and compilation unit, for a static) when
//! the old process wrote it since startup; otherwise what the new version's own startup
//! put there stays. Constants and thread-locals are not roots.

use crate::transfer::Pair;
use mcr_heap::{MemoryError, ReadMemory};
use mcr_typemodel::transform::same_bytes;
use mcr_typemodel::{Encoding, Global, Location, Program, Qualifier, Type, TypeId};
use std::collections::HashMap;

/// An old global the transfer carries into the new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// How reports name it: `counter`, `kvd.c:items` for a static.
    pub name: String,
    /// As declared (`items`): how hints name it.
    pub plain: String,
    pub old_ty: TypeId,
    pub new_ty: TypeId,
    /// Run-time addresses in the old and the new process.
    pub old_addr: u64,
    pub new_addr: u64,
    /// Its bytes in the old process.
    pub bytes: Vec<u8>,
}

/// The old version's globals, sorted out.
#[derive(Debug, Default)]
pub struct Roots {
    /// Written since startup, and the new version has them: carried over, in the order
    /// the old program declares them.
    pub globals: Vec<Root>,
    /// Not written since startup: left as the new version's startup made them.
    pub clean: usize,
    /// The new version no longer has them: their data is dropped (display names).
    pub dropped: Vec<String>,
    /// Integer fields of clean struct globals that both startups computed (the build set
    /// another value), to different values.
    pub recomputed: Vec<Recomputed>,
}

/// A value both versions' startups computed, differently ([`Roots::recomputed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recomputed {
    /// `ngx_http_copy_filter_module.ctx_index`.
    pub path: String,
    pub old: i128,
    pub new: i128,
}

/// Sort the old version's globals into roots, clean ones and dropped ones, reading the
/// roots' bytes.
pub fn collect(pair: &Pair) -> Result<Roots, MemoryError> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let mut roots = Roots::default();
    // By name, the first of a name (nginx has thousands of globals: a search per global,
    // naming every new global each time, was a third of its transfer's CPU).
    let mut new_globals: HashMap<(String, bool), &Global> = HashMap::with_capacity(new.globals.len());
    for n in &new.globals {
        new_globals.entry((n.display_name(), n.is_tls())).or_insert(n);
    }
    for g in &old.globals {
        let Some(size) = g.size else { continue };
        if size == 0 || is_const(old, g.ty) {
            continue;
        }
        let name = g.display_name();
        let Some(&ng) = new_globals.get(&(name.clone(), g.is_tls())) else {
            roots.dropped.push(name);
            continue;
        };
        if ng.size.is_none() {
            continue;
        }
        let (old_addr, new_addr) = match (g.location, ng.location) {
            (Location::Address { address }, Location::Address { address: naddr }) => {
                let old_addr = pair.old.image.bias + address;
                if pair.dirty.is_some_and(|written| !written(old_addr, size)) {
                    roots.clean += 1;
                    let new_addr = pair.new.image.bias + naddr;
                    roots.recomputed.extend(recomputed(pair, g.ty, ng.ty, (address, old_addr, new_addr), size, &name));
                    continue;
                }
                (old_addr, pair.new.image.bias + naddr)
            }
            // The main thread's: always carried (a few bytes, not dirty-tracked).
            (Location::Tls { offset }, Location::Tls { offset: noffset }) => {
                match (pair.old.image.tls_block, pair.new.image.tls_block) {
                    (Some(old_block), Some(new_block)) => (old_block + offset, new_block + noffset),
                    _ => {
                        roots.dropped.push(name);
                        continue;
                    }
                }
            }
            _ => continue,
        };
        let bytes = read_vec(pair.old_mem, old_addr, size)?;
        roots.globals.push(Root {
            name,
            plain: g.name.clone(),
            old_ty: g.ty,
            new_ty: ng.ty,
            old_addr,
            new_addr,
            bytes,
        });
    }
    Ok(roots)
}

/// The integer fields of a clean struct global that both startups computed, to
/// different values. The new version keeps what its startup computed in a global the old
/// one did not write since: right for its own state, not for the state that moves, when
/// that was built with the old value (nginx's module numbers, `ctx_index`: its update 22
/// -> 23 adds a module, every later number shifts, and moved requests index the old
/// configuration arrays with the new numbers: a worker crashed). A value the build set
/// (the old binary's initial data) is the build's, and a scalar global (a counter, a
/// start time) is not compared: only fields of structs, where such numbers live, and not
/// times in them ([`is_time`]).
fn recomputed(
    pair: &Pair,
    old_ty: TypeId,
    new_ty: TypeId,
    (link, old_addr, new_addr): (u64, u64, u64),
    size: u64,
    name: &str,
) -> Vec<Recomputed> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let (Some(initial), Some(new_mem)) = (pair.initial, pair.new_mem) else { return Vec::new() };
    if !matches!(old.ty(old.strip(old_ty)), Type::Struct(_)) || !same_bytes(old, old_ty, new, new_ty) {
        return Vec::new();
    }
    let (Ok(now), Some(built), Ok(theirs)) =
        (read_vec(pair.old_mem, old_addr, size), initial(link, size), read_vec(new_mem, new_addr, size))
    else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    integer_fields(old, old_ty, 0, name.to_string(), &mut fields, 0);
    let value = |b: &[u8], (off, len, signed): (u64, u64, bool)| -> Option<i128> {
        let raw = b.get(off as usize..(off + len) as usize)?;
        let mut w = [0u8; 16];
        w[..raw.len()].copy_from_slice(raw);
        let v = i128::from_le_bytes(w);
        let bits = 8 * len as u32;
        Some(if signed && bits < 128 && v >> (bits - 1) & 1 == 1 { v - (1i128 << bits) } else { v })
    };
    fields
        .into_iter()
        .filter_map(|(path, f)| {
            let (o, b, n) = (value(&now, f)?, value(&built, f)?, value(&theirs, f)?);
            (o != b && o != n).then_some(Recomputed { path, old: o, new: n })
        })
        .collect()
}

/// Integer fields of type `ty` at `offset` (bitfields, unions and arrays of more than 64
/// elements left out): (path, (offset, size, signed)).
fn integer_fields(
    p: &Program,
    ty: TypeId,
    offset: u64,
    path: String,
    out: &mut Vec<(String, (u64, u64, bool))>,
    depth: u32,
) {
    if depth > 8 || out.len() > 4096 || is_time(p, ty) {
        return;
    }
    match p.ty(p.strip(ty)) {
        Type::Base { size, encoding, .. } if *size <= 16 && !matches!(encoding, Encoding::Float | Encoding::Other) => {
            out.push((path, (offset, *size, encoding.is_signed())));
        }
        Type::Enum { size, signed, .. } if *size <= 16 => out.push((path, (offset, *size, *signed))),
        Type::Struct(c) => {
            for m in c.members.iter().filter(|m| m.bit_size.is_none()) {
                let field = match &m.name {
                    Some(n) => format!("{path}.{n}"),
                    None => path.clone(),
                };
                integer_fields(p, m.ty, offset + m.offset, field, out, depth + 1);
            }
        }
        Type::Array { element, counts } => {
            let (Some(n), Some(each)) = (counts.iter().try_fold(1u64, |a, c| c.map(|c| a * c)), p.size_of(*element))
            else {
                return;
            };
            if n <= 64 {
                for i in 0..n {
                    integer_fields(p, *element, offset + i * each, format!("{path}[{i}]"), out, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// A time: each startup reads the clock, so the two startups' values differ without
/// meaning anything the moved state was built with (libevent's timer event in a global
/// holds the time it fires: `struct timeval`).
fn is_time(p: &Program, mut ty: TypeId) -> bool {
    const TIME_TYPEDEFS: [&str; 7] =
        ["time_t", "__time_t", "suseconds_t", "__suseconds_t", "__syscall_slong_t", "clock_t", "__clock_t"];
    for _ in 0..16 {
        match p.ty(ty) {
            Type::Typedef { name, .. } if TIME_TYPEDEFS.contains(&name.as_str()) => return true,
            Type::Typedef { target, .. } | Type::Qualified { target, .. } => ty = *target,
            Type::Struct(c) => return matches!(c.name.as_deref(), Some("timeval" | "timespec")),
            _ => return false,
        }
    }
    false
}

/// A `const` object (read-only data: nothing to carry over).
pub(crate) fn is_const(p: &Program, mut ty: TypeId) -> bool {
    for _ in 0..16 {
        match p.ty(ty) {
            Type::Qualified { qualifier: Qualifier::Const, .. } => return true,
            Type::Qualified { target, .. } | Type::Typedef { target, .. } => ty = *target,
            _ => return false,
        }
    }
    false
}

pub(crate) fn read_vec(mem: &dyn ReadMemory, addr: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
    let mut b = vec![0u8; len as usize];
    mem.read(addr, &mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::Recomputed;
    use crate::testing::{list_program, World, HEAD, NEW_BIAS, NEW_HEAD};
    use mcr_typemodel::{Location, Qualifier, Type};

    /// `head`, `count`, a constant, a thread-local, and `gone` (old only).
    fn world() -> World {
        let make = |grown| {
            list_program(grown, |b, ids| {
                b.global("count", 0x40_1010, ids.int);
                let c = b.add(Type::Qualified { qualifier: Qualifier::Const, target: ids.int });
                b.global("limit", 0x40_1020, c);
                b.global("tls", 0, ids.int).location = Location::Tls { offset: 0 };
                if !grown {
                    b.global("gone", 0x40_1030, ids.long);
                }
            })
        };
        let mut w = World::new(make(false), make(true));
        w.set_global("head", &0x1234u64.to_ne_bytes());
        w.set_global("count", &42i32.to_ne_bytes());
        w.set_global("limit", &1i32.to_ne_bytes());
        w.set_global("gone", &5u64.to_ne_bytes());
        w
    }

    #[test]
    fn globals_written_since_startup_are_roots_the_others_are_clean_or_dropped() {
        let mut w = world();
        w.written = Some(vec![(HEAD, HEAD + 8), (0x40_1020, 0x40_1040)]);
        let (roots, _) = w.walk().expect("walk");
        let names: Vec<&str> = roots.globals.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["head"], "count was not written; the constant is never a root");
        let head = &roots.globals[0];
        assert_eq!((head.old_addr, head.new_addr), (HEAD, NEW_HEAD + NEW_BIAS), "run-time addresses, load bias added");
        assert_eq!(head.bytes, 0x1234u64.to_ne_bytes());
        assert_eq!(roots.clean, 1, "count");
        assert_eq!(roots.dropped, ["tls", "gone"], "dropped whether written or not; a thread-local without its block");
    }

    #[test]
    fn the_main_threads_thread_locals_are_roots_at_their_blocks() {
        let mut w = world();
        w.written = Some(vec![]);
        let (old_block, new_block) = (0x7000_0000, 0x7100_0040);
        w.tls_blocks = Some((old_block, new_block));
        w.old_proc.mem.write(old_block, &7i32.to_ne_bytes());
        let (roots, _) = w.walk().expect("walk");
        let tls: Vec<_> = roots.globals.iter().filter(|r| r.name == "tls").collect();
        assert_eq!(tls.len(), 1, "written or not, a thread-local is carried: {:?}", roots.dropped);
        assert_eq!((tls[0].old_addr, tls[0].new_addr), (old_block, new_block));
        assert_eq!(tls[0].bytes, 7i32.to_ne_bytes());
        assert_eq!(roots.dropped, ["gone"]);
    }

    #[test]
    fn without_dirty_tracking_every_global_counts_as_written() {
        let mut w = world();
        let (roots, _) = w.walk().expect("walk");
        let names: Vec<&str> = roots.globals.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["head", "count"]);
        assert_eq!(roots.globals[1].bytes, 42i32.to_ne_bytes());
        assert_eq!((roots.clean, roots.dropped.len()), (0, 2));
    }

    /// A time in a clean struct global (libevent's timer event: when it fires) differs
    /// between any two startups and is not compared; the number beside it still is.
    #[test]
    fn a_time_both_startups_read_from_the_clock_is_not_a_recomputed_number() {
        let make = || {
            list_program(false, |b, ids| {
                let time = b.add(Type::Typedef { name: "__time_t".into(), target: ids.long });
                let usec = b.add(Type::Typedef { name: "__suseconds_t".into(), target: ids.long });
                let tv = b.strukt("timeval", 16, &[("tv_sec", time, 0), ("tv_usec", usec, 8)]);
                let ev = b.strukt("event", 24, &[("index", ids.long, 0), ("ev_timeout", tv, 8)]);
                b.global("tick_event", 0x40_10b0, ev);
            })
        };
        let event = |index: u64, sec: u64, usec: u64| crate::testing::words(&[index, sec, usec]);
        let run = |old: Vec<u8>, new: Vec<u8>| {
            let mut w = World::new(make(), make());
            w.written = Some(vec![]);
            w.set_global("tick_event", &old);
            w.set_new_global("tick_event", &new);
            w.initial_data = Some((0x40_10b0, vec![0; 24]));
            w.walk().expect("walk").0.recomputed
        };
        assert!(run(event(3, 100, 82408), event(3, 101, 106408)).is_empty());
        let found = run(event(3, 100, 82408), event(4, 101, 106408));
        assert_eq!(found, vec![Recomputed { path: "tick_event.index".into(), old: 3, new: 4 }]);
    }

    /// A field of a clean struct global that both startups computed, to different values,
    /// refuses the update, naming it (nginx's module numbers: a new module shifts them);
    /// a value the build set, an unchanged one, and a scalar global are not compared.
    #[test]
    fn a_number_both_startups_computed_differently_refuses_the_update() {
        let make = || {
            list_program(false, |b, ids| {
                let m = b.strukt("module", 8, &[("index", ids.int, 0), ("ctx_index", ids.int, 4)]);
                b.global("copy_filter", 0x40_1090, m);
                b.global("modules_n", 0x40_10a0, ids.int);
            })
        };
        let module = |i: i32, c: i32| [i.to_ne_bytes(), c.to_ne_bytes()].concat();
        let run = |old: Vec<u8>, new: Vec<u8>| {
            let mut w = World::new(make(), make());
            w.written = Some(vec![]);
            w.set_global("copy_filter", &old);
            w.set_new_global("copy_filter", &new);
            w.set_global("modules_n", &40i32.to_ne_bytes());
            w.set_new_global("modules_n", &41i32.to_ne_bytes());
            // The build leaves both numbers unset (-1); the scalar is zero.
            w.initial_data = Some((0x40_1090, [module(-1, -1), vec![0; 8], 0i32.to_ne_bytes().to_vec()].concat()));
            let recomputed = w.walk().expect("walk").0.recomputed;
            (recomputed, w.transfer().map(|_| ()))
        };
        let (found, refused) = run(module(12, 41), module(12, 42));
        assert_eq!(found, vec![Recomputed { path: "copy_filter.ctx_index".into(), old: 41, new: 42 }]);
        match refused {
            Err(crate::TransferError::Conflict { path, reason }) => {
                assert_eq!(path, "copy_filter.ctx_index");
                assert!(reason.contains("set it to 41, the new version's to 42"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let (same, ok) = run(module(12, 41), module(12, 41));
        assert!(same.is_empty() && ok.is_ok(), "the same number: {same:?} {ok:?}");
        let (built, _) = run(module(-1, -1), module(-1, 7));
        assert!(built.is_empty(), "the build's value, not the old startup's: {built:?}");
    }
}
