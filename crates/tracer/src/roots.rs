//! The transfer's roots (paper §6): the main binary's globals. An old global moves into
//! the new version's global of the same name (and compilation unit, for a static) when
//! the old process wrote it since startup; otherwise what the new version's own startup
//! put there stays. Constants and thread-locals are not roots.

use crate::transfer::Pair;
use mcr_heap::{MemoryError, ReadMemory};
use mcr_typemodel::{Location, Program, Qualifier, Type, TypeId};

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
}

/// Sort the old version's globals into roots, clean ones and dropped ones, reading the
/// roots' bytes.
pub fn collect(pair: &Pair) -> Result<Roots, MemoryError> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let mut roots = Roots::default();
    for g in &old.globals {
        let Some(size) = g.size else { continue };
        if size == 0 || is_const(old, g.ty) {
            continue;
        }
        let name = g.display_name();
        let Some(ng) = new.globals.iter().find(|n| n.display_name() == name && n.is_tls() == g.is_tls()) else {
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
}
