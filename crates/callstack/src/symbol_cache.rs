//! Symbol tables prepared ahead of the processes that need them.
//!
//! Every process under mcr names the functions of its startup call stacks, and an update's
//! new version does so on the paused clock: parsing the ELF symbol tables of nginx, libc
//! and libcrypto took ~1.2 ms of every nginx restart. `mcr update` writes the tables of
//! the new program and of the modules the old version's call stacks pass through into a
//! directory while the old version still serves; the new version's processes read them
//! back (`ModuleSymbols::from_bytes`, a copy) and parse ELF only for a module missing
//! there.
//!
//! An entry is named after the module's path and its file's identity (device, inode,
//! size, modification time), so a rebuilt or replaced file is never taken for the one a
//! table was made from; entries are written whole under a temporary name and renamed,
//! so a reader sees a whole table or none.

use crate::symbols::{ModuleSymbols, SymbolError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries kept: the oldest go when a write finds more (a table is 10-300 kB).
const MAX_ENTRIES: usize = 256;

/// A directory of prepared symbol tables.
#[derive(Debug, Clone)]
pub struct SymbolCache {
    dir: PathBuf,
}

impl SymbolCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the table of `module` as it is now on disk goes (`None`: no such file).
    fn entry(&self, module: &Path) -> Option<PathBuf> {
        let m = std::fs::metadata(module).ok()?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let identity = [m.dev(), m.ino(), m.size(), m.mtime() as u64, m.mtime_nsec() as u64];
        let bytes =
            module.as_os_str().as_encoded_bytes().iter().copied().chain(identity.iter().flat_map(|v| v.to_le_bytes()));
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Some(self.dir.join(format!("{h:016x}.sym")))
    }

    /// The prepared table of `module`, if one was made from the file now at its path.
    pub fn get(&self, module: &Path) -> Option<ModuleSymbols> {
        ModuleSymbols::from_bytes(&std::fs::read(self.entry(module)?).ok()?)
    }

    /// `module`'s table: the prepared one, else parsed from the file.
    pub fn load(&self, module: &Path) -> Result<ModuleSymbols, SymbolError> {
        match self.get(module) {
            Some(t) => Ok(t),
            None => ModuleSymbols::load(module),
        }
    }

    /// Makes sure `module`'s table is there; returns whether it had to be written.
    pub fn prepare(&self, module: &Path) -> Result<bool, SymbolError> {
        let io = |source| SymbolError::Read { path: module.display().to_string(), source };
        let entry = self.entry(module).ok_or_else(|| io(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        if entry.exists() {
            return Ok(false);
        }
        let table = ModuleSymbols::load(module)?;
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        self.prune();
        let tmp = entry.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, table.to_bytes()).and_then(|()| std::fs::rename(&tmp, &entry)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        Ok(true)
    }

    /// Removes the oldest entries past [`MAX_ENTRIES`], and temporary files a writer that
    /// was killed left (older than a minute).
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> =
            dir.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect();
        let abandoned = |(when, p): &(std::time::SystemTime, PathBuf)| {
            p.extension().is_some_and(|x| x != "sym")
                && when.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60))
        };
        for (_, p) in entries.iter().filter(|e| abandoned(e)) {
            let _ = std::fs::remove_file(p);
        }
        entries.retain(|(_, p)| p.extension().is_some_and(|x| x == "sym"));
        if entries.len() < MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, p) in entries.iter().take(entries.len() + 1 - MAX_ENTRIES) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc() -> PathBuf {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .find_map(|l| l.split_whitespace().nth(5).filter(|p| p.contains("libc.so")).map(PathBuf::from))
            .expect("libc mapped")
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mcr-symcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_prepared_table_answers_as_the_elf_file_does() {
        let dir = scratch("same");
        let cache = SymbolCache::new(&dir);
        let libc = libc();
        assert!(cache.get(&libc).is_none(), "nothing prepared yet");
        assert!(cache.prepare(&libc).unwrap(), "written the first time");
        assert!(!cache.prepare(&libc).unwrap(), "there the second time");
        let (parsed, read) = (ModuleSymbols::load(&libc).unwrap(), cache.get(&libc).expect("prepared"));
        assert_eq!(read.len(), parsed.len());
        assert_eq!(read.first_load_vaddr, parsed.first_load_vaddr);
        let malloc = parsed.address_of("malloc").unwrap();
        assert_eq!(read.address_of("malloc"), Some(malloc));
        for a in [malloc, malloc + 7, malloc + 0x10000, 0x1000] {
            assert_eq!(read.lookup(a), parsed.lookup(a));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_changed_since_its_table_was_made_is_parsed_again() {
        let dir = scratch("stale");
        let cache = SymbolCache::new(&dir);
        let exe = dir.join("copy-of-libc.so");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(libc(), &exe).unwrap();
        cache.prepare(&exe).unwrap();
        assert!(cache.get(&exe).is_some());
        // Another file at the same path (a new build installed over the old one).
        std::fs::copy(std::env::current_exe().unwrap(), dir.join("new")).unwrap();
        std::fs::rename(dir.join("new"), &exe).unwrap();
        assert!(cache.get(&exe).is_none(), "a table of the replaced file must not be used");
        let fresh = cache.load(&exe).unwrap();
        assert_eq!(fresh.len(), ModuleSymbols::load(&exe).unwrap().len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_table_is_not_used() {
        let libc = libc();
        let bytes = ModuleSymbols::load(&libc).unwrap().to_bytes();
        assert!(ModuleSymbols::from_bytes(&bytes).is_some());
        assert!(ModuleSymbols::from_bytes(&bytes[..bytes.len() - 1]).is_none(), "cut short");
        assert!(ModuleSymbols::from_bytes(&bytes[..40]).is_none(), "cut in the entries");
        let mut other = bytes.clone();
        other[6] = b'9';
        assert!(ModuleSymbols::from_bytes(&other).is_none(), "another format version");
        let mut bad_name = bytes;
        // The first entry's name end, far past the names.
        bad_name[32 + 20..32 + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ModuleSymbols::from_bytes(&bad_name).is_none(), "a name out of bounds");
    }
}
