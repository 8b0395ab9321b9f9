//! Both builds' type models, loaded before the old version is paused.
//!
//! The transfer reads the DWARF of every program it moves state between. Loaded there,
//! that is on the paused clock: parsing nginx's takes ~0.45 s per build (every update to
//! a build no update used before), and even the cached model, ~0.9 MB of JSON, ~50 ms.
//! `mcr update` starts loading them as it launches the new version ahead, while the old
//! version still serves ([`Preparation`]), and waits for them before it pauses anything;
//! the transfer then takes them from here ([`model`]). A model prepared for a file that
//! changed since (another file at the path: a rebuild) is not used.

use mcr_typemodel::{Program, TypeModelError};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Which file a model was made from: (device, inode, size, modification time).
type Identity = (u64, u64, u64, i64, i64);

fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The models prepared by this process, by canonical path.
static PREPARED: Mutex<BTreeMap<PathBuf, (Identity, Arc<Program>)>> = Mutex::new(BTreeMap::new());

/// A running preparation; [`Preparation::wait`] (or dropping it) waits for it to end.
pub struct Preparation(Option<JoinHandle<()>>);

impl Preparation {
    /// Loads the models of `programs` on a thread of its own. The process must not fork
    /// until it ended (the update's launch forks: it runs before).
    pub fn start(programs: Vec<PathBuf>) -> Self {
        let thread = std::thread::Builder::new().name("mcr-types".into()).spawn(move || {
            for path in programs {
                let path = canonical(&path);
                if PREPARED.lock().map_or(true, |p| p.contains_key(&path)) {
                    continue;
                }
                let Some(before) = identity(&path) else { continue };
                // A build that cannot be read fails in the transfer as before, which says why.
                let Ok(model) = Program::load_cached(&path) else { continue };
                if identity(&path) == Some(before) {
                    if let Ok(mut p) = PREPARED.lock() {
                        p.insert(path, (before, Arc::new(model)));
                    }
                }
            }
        });
        Preparation(thread.ok())
    }

    /// Wait until every model is loaded (or failed to).
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Preparation {
    fn drop(&mut self) {
        self.join();
    }
}

/// The type model of the build at `path`: the prepared one if it is of the file there
/// now, else loaded (through the cache of models).
pub(crate) fn model(path: &Path) -> Result<Arc<Program>, TypeModelError> {
    let path = canonical(path);
    let prepared = PREPARED.lock().ok().and_then(|p| p.get(&path).cloned());
    match prepared {
        Some((made_from, model)) if identity(&path) == Some(made_from) => Ok(model),
        _ => Program::load_cached(&path).map(Arc::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_model_is_used_only_for_the_file_it_was_made_from() {
        let dir = std::env::temp_dir().join(format!("mcr-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("prog");
        std::fs::write(dir.join("prog.c"), "struct s { int a; long b; } g;\nint main(void) { return g.a; }\n").unwrap();
        let cc = std::process::Command::new("cc").arg("-g").arg("-o").arg(&exe).arg(dir.join("prog.c")).status();
        assert!(cc.unwrap().success(), "cc -g");
        Preparation::start(vec![exe.clone()]).wait();
        let first = model(&exe).unwrap();
        assert!(Arc::ptr_eq(&first, &model(&exe).unwrap()), "the prepared model is taken");
        // Another file at the path (a rebuild): loaded anew, not the prepared one.
        let replacement = dir.join("prog.new");
        std::fs::copy(&exe, &replacement).unwrap();
        std::fs::rename(&replacement, &exe).unwrap();
        assert!(!Arc::ptr_eq(&first, &model(&exe).unwrap()), "a model of a replaced file was used");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
