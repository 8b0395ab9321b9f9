//! Type models cached per build ID, so an update does not reparse DWARF.
//!
//! One JSON file per build ID in `$XDG_CACHE_HOME/mcr/types/` (else
//! `~/.cache/mcr/types/`). An entry that does not parse, has another format version or
//! names another build ID is ignored and rewritten. Binaries without a build ID are
//! never cached.

use crate::error::TypeModelError;
use crate::model::Program;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped whenever [`Program`]'s serialized form or the loader's output changes.
const FORMAT: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    program: Program,
}

/// A directory of cached type models.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/mcr/types`, else `$HOME/.cache/mcr/types`; `None` if neither
    /// variable is set.
    pub fn default_location() -> Option<Cache> {
        let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
        };
        Some(Cache::new(base.join("mcr").join("types")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, build_id: &str) -> Option<PathBuf> {
        build_id.chars().all(|c| c.is_ascii_hexdigit()).then(|| self.dir.join(format!("{build_id}.json")))
    }

    /// The cached model for `build_id`, if a valid entry exists.
    pub fn get(&self, build_id: &str) -> Option<Program> {
        let text = std::fs::read(self.entry_path(build_id)?).ok()?;
        let e: Entry = serde_json::from_slice(&text).ok()?;
        (e.format == FORMAT && e.program.build_id.as_deref() == Some(build_id)).then_some(e.program)
    }

    /// Stores `prog` (no-op without a build ID). Written to a temporary file and
    /// renamed, so readers never see half an entry.
    pub fn put(&self, prog: &Program) -> std::io::Result<()> {
        let Some(path) = prog.build_id.as_deref().and_then(|id| self.entry_path(id)) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", prog.build_id.as_deref().unwrap_or(""), std::process::id()));
        let e = Entry { format: FORMAT, program: prog.clone() };
        let bytes = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// Loads `path` from the cache when its build ID has a valid entry, else parses it
    /// and stores the result (a failure to write the cache is not an error).
    pub fn load(&self, path: &Path) -> Result<Program, TypeModelError> {
        if let Some(id) = crate::read_build_id(path)? {
            if let Some(mut p) = self.get(&id) {
                p.path = path.to_path_buf();
                return Ok(p);
            }
        }
        let p = Program::load(path)?;
        let _ = self.put(&p);
        Ok(p)
    }
}
