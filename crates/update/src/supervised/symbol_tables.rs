//! The new version's symbol tables, prepared while the old version still serves.
//!
//! Each process of the new version names the functions on its startup call stacks (replay
//! matches them against the old version's log), on the restart's clock: parsing the ELF
//! symbol tables of nginx, libc and libcrypto took ~1.2 ms of each nginx restart. A thread
//! writes them into the instance directory's prepared tables (`mcr_callstack::SymbolCache`)
//! from the preflight on; the new version's runtime reads them there, and parses a module
//! itself only if its table is not ready (best effort: nothing waits for this).

use crate::version::HostPids;
use mcr_callstack::SymbolCache;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// A running preparation; dropping it waits for the table being written (no half-written
/// temporary file is left behind when the update ends first).
pub struct Preparation(Option<JoinHandle<()>>);

impl Preparation {
    /// Prepares the tables of `program` (the new version's executable) and of every module
    /// the old version's processes `old` have mapped, but the runtime's own
    /// (`runtime_lib`, whose frames are never named).
    pub fn start(tables: SymbolCache, program: &Path, runtime_lib: &Path, old: &HostPids) -> Self {
        let modules = modules(program, runtime_lib, old);
        let thread = std::thread::Builder::new().name("mcr-symbols".into()).spawn(move || {
            for m in modules {
                // A module that cannot be read is parsed (and fails) in the new process as
                // before: nothing to report here.
                let _ = tables.prepare(&m);
            }
        });
        Self(thread.ok())
    }
}

impl Drop for Preparation {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// The program first (the one module an update always changes), then the old processes'
/// executable modules, by their paths as the processes see them (which is what the new
/// version's runtime looks up).
fn modules(program: &Path, runtime_lib: &Path, old: &HostPids) -> Vec<PathBuf> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (program, runtime_lib) = (canonical(program), canonical(runtime_lib));
    let mut seen = BTreeSet::from([program.clone(), runtime_lib]);
    let mut out = vec![program];
    for &host in old.values() {
        for m in mcr_procfs::maps::read(mcr_procfs::Process::Pid(host)).unwrap_or_default() {
            if let Some(path) = m.file().filter(|_| m.executable).map(PathBuf::from) {
                if seen.insert(path.clone()) {
                    out.push(path);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_comes_first_and_the_runtime_never() {
        let me = std::process::id() as i32;
        let exe = std::env::current_exe().unwrap();
        let libc = mcr_procfs::maps::read(mcr_procfs::Process::Current)
            .unwrap()
            .into_iter()
            .find_map(|m| m.file().filter(|f| f.contains("libc.so") && m.executable).map(PathBuf::from))
            .expect("libc mapped");
        let old = HostPids::from([(1, me)]);
        let list = modules(Path::new("/bin/sh"), &libc, &old);
        assert_eq!(list[0], std::fs::canonicalize("/bin/sh").unwrap());
        assert!(list.contains(&exe), "{list:?}");
        assert!(!list.contains(&libc), "the runtime's module is left out: {list:?}");
        assert_eq!(list.len(), list.iter().collect::<BTreeSet<_>>().len(), "each once");
    }
}
