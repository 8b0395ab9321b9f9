//! The transfer's roots (paper §6): the main binary's globals. An old global moves into
//! the new version's global of the same name (and compilation unit, for a static) when
//! the old process wrote it since startup; otherwise what the new version's own startup
//! put there stays. Constants and thread-locals are not roots.

use crate::transfer::Pair;
use mcr_heap::{MemoryError, ReadMemory};
use mcr_typemodel::{Program, Qualifier, Type, TypeId};

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
        let (Some(addr), Some(size)) = (g.address(), g.size) else { continue };
        if size == 0 || is_const(old, g.ty) {
            continue;
        }
        let name = g.display_name();
        let Some(ng) = new.globals.iter().find(|n| n.display_name() == name && !n.is_tls()) else {
            roots.dropped.push(name);
            continue;
        };
        let (Some(naddr), Some(_)) = (ng.address(), ng.size) else { continue };
        let old_addr = pair.old.image.bias + addr;
        if pair.dirty.is_some_and(|written| !written(old_addr, size)) {
            roots.clean += 1;
            continue;
        }
        let bytes = read_vec(pair.old_mem, old_addr, size)?;
        roots.globals.push(Root {
            name,
            plain: g.name.clone(),
            old_ty: g.ty,
            new_ty: ng.ty,
            old_addr,
            new_addr: pair.new.image.bias + naddr,
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
