//! The type model of mcr: what a C binary's DWARF says about its data.
//!
//! - [`Program::load`] reads a binary (and its split debug file) into globals, statics,
//!   thread-locals, the C type graph (deduplicated across compilation units) and the
//!   ELF symbol table; [`Cache`] keeps the result per build ID.
//! - [`diff()`] compares two builds: what changed and whether mcr can transform it.
//! - [`transform::Plan`] is the transformation of one old type into one new type,
//!   applied to bytes; [`Program::layout`] tells a tracer where the pointers are.
//!
//! Addresses are link-time addresses: add the load bias of a PIE.

pub mod cache;
pub mod diff;
mod dwarf;
mod error;
mod graph;
mod model;
pub mod transform;

pub use cache::Cache;
pub use diff::{diff, diff_with, Annotations, Diff};
pub use dwarf::{read_hints, DEBUG_DIRS};
pub use error::TypeModelError;
pub use model::*;

use object::Object;
use std::path::Path;

impl Program {
    /// Reads a binary's symbols and DWARF. A binary without debug info loads as an empty
    /// model with `has_debug_info == false` and a warning; a malformed one is an error.
    pub fn load(path: &Path) -> Result<Program, TypeModelError> {
        dwarf::load(path)
    }

    /// [`Program::load`] through the default cache (`$XDG_CACHE_HOME/mcr/types`), or
    /// without one when no cache directory can be named.
    pub fn load_cached(path: &Path) -> Result<Program, TypeModelError> {
        match Cache::default_location() {
            Some(c) => c.load(path),
            None => Program::load(path),
        }
    }
}

/// The GNU build ID of a binary (lowercase hex), without reading its DWARF.
pub fn read_build_id(path: &Path) -> Result<Option<String>, TypeModelError> {
    let file = std::fs::File::open(path).map_err(|e| TypeModelError::Io { path: path.to_path_buf(), source: e })?;
    // Read as needed (the headers and the note), not the whole binary: nginx's is 6.5 MB,
    // read twice by every `mcr update`.
    let data = object::ReadCache::new(file);
    let file = object::File::parse(&data)
        .map_err(|e| TypeModelError::NotElf { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(file.build_id().ok().flatten().map(|id| id.iter().map(|b| format!("{b:02x}")).collect()))
}
