//! Addresses → function names and call-stack IDs, inside the process. Module symbol
//! tables are loaded lazily and cached; the module map is re-read when an address falls
//! outside every known module (a library loaded with dlopen).

use crate::sync::SpinLock;
use mcr_callstack::{ModuleSymbols, SymbolCache};
use mcr_protocol::{CallStack, Frame};
use std::collections::HashMap;
use std::path::Path;

struct Module {
    start: u64,
    end: u64,
    base: u64,
    path: String,
}

#[derive(Default)]
struct Cache {
    modules: Vec<Module>,
    symbols: HashMap<String, Option<ModuleSymbols>>,
}

static CACHE: SpinLock<Option<Cache>> = SpinLock::new(None);

/// The tables `mcr update` prepared for this version (set when it is an update's).
static PREPARED: std::sync::OnceLock<SymbolCache> = std::sync::OnceLock::new();

/// This process is an update's new version, whose replay log is `replay_log`: the symbol
/// tables prepared for it are in its instance directory (read instead of parsing ELF
/// symbol tables on the restart's clock).
pub fn use_prepared_tables(replay_log: &Path) {
    if let Some(dir) = replay_log.parent() {
        let _ = PREPARED.set(SymbolCache::new(dir.join(mcr_protocol::instance::SYMBOL_TABLES)));
    }
}

fn load_symbols(path: &str) -> Option<ModuleSymbols> {
    match PREPARED.get() {
        Some(prepared) => prepared.load(Path::new(path)).ok(),
        None => ModuleSymbols::load(Path::new(path)).ok(),
    }
}

fn read_maps() -> Vec<Module> {
    let maps = mcr_procfs::maps::read(mcr_procfs::Process::Current).unwrap_or_default();
    let mut bases: HashMap<&str, u64> = HashMap::new();
    let mut out = Vec::new();
    for m in &maps {
        let Some(path) = m.file() else { continue };
        let base = *bases.entry(path).or_insert(m.start);
        if m.executable {
            out.push(Module { start: m.start, end: m.end, base, path: path.to_string() });
        }
    }
    out
}

impl Cache {
    fn module_of(&mut self, addr: u64) -> Option<usize> {
        let find = |mods: &[Module]| mods.iter().position(|m| addr >= m.start && addr < m.end);
        if let Some(i) = find(&self.modules) {
            return Some(i);
        }
        // In a chroot without /proc the map cannot be read again: keep the one from before.
        let fresh = read_maps();
        if !fresh.is_empty() {
            self.modules = fresh;
        }
        find(&self.modules)
    }

    fn module_path(&mut self, addr: u64) -> Option<&str> {
        self.module_of(addr).map(|i| self.modules[i].path.as_str())
    }

    fn frame(&mut self, addr: u64, is_return_address: bool) -> Frame {
        let Some(i) = self.module_of(addr) else {
            return Frame { address: addr, function: None, module: None, module_offset: 0 };
        };
        let (base, path) = (self.modules[i].base, self.modules[i].path.clone());
        let syms = self.symbols.entry(path.clone()).or_insert_with(|| load_symbols(&path));
        // A return address points after the call; the call itself is one byte earlier.
        let lookup = if is_return_address { addr.saturating_sub(1) } else { addr };
        let function = syms.as_ref().and_then(|s| {
            let bias = base.wrapping_sub(s.first_load_vaddr);
            s.lookup(lookup.wrapping_sub(bias)).map(str::to_string)
        });
        Frame { address: addr, function, module: Some(path), module_offset: addr - base }
    }
}

/// Whether a user other than the file's owner and group may still read `path` (every
/// directory above it searchable by others, the file readable by others).
fn others_can_read(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).ok();
    mode(path).is_some_and(|m| m & 0o004 != 0)
        && path.ancestors().skip(1).all(|d| d.as_os_str().is_empty() || mode(d).is_some_and(|m| m & 0o001 != 0))
}

/// Before the process gives up its access to its own files (setuid to another user): load
/// the symbol tables of the modules it maps that others cannot read (a binary under
/// `/root`). Without them its call stacks are named by offset from then on: Apache
/// httpd's children (`nobody`) did, so their waits never matched a profile's quiescent
/// points and a profiled httpd never completed startup. Modules others can read stay
/// loaded lazily (each child would otherwise hold every library's table). Not before a
/// chroot: sshd chroots every connection's pre-authentication child, which would pay for
/// every table; a chrooted process's stacks stay unnamed (vsftpd's sessions).
pub fn load_before_losing_access() {
    // The runtime's own reads of the files are not the program's operations (nothing of
    // them is recorded, nothing symbolized: that would take the cache's lock again), and
    // the lock is not held while the tables are read.
    let _internal = crate::threads::InternalGuard::enter();
    let modules = read_maps();
    let wanted: Vec<String> = {
        let guard = CACHE.lock();
        let known = |p: &str| guard.as_ref().is_some_and(|c| c.symbols.contains_key(p));
        let mut paths: Vec<String> = modules.iter().map(|m| m.path.clone()).collect();
        paths.dedup();
        paths.into_iter().filter(|p| !known(p) && !others_can_read(Path::new(p))).collect()
    };
    let loaded: Vec<(String, Option<ModuleSymbols>)> =
        wanted.into_iter().map(|p| (p.clone(), load_symbols(&p))).collect();
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(Cache::default);
    if !modules.is_empty() {
        cache.modules = modules;
    }
    cache.symbols.extend(loaded);
}

/// Symbolize return addresses (innermost first) and compute the call-stack ID, whose
/// first name is the wrapped call (`call`), if any.
pub fn call_stack(call: Option<&str>, addrs: &[usize]) -> CallStack {
    let frames: Vec<Frame> = {
        let _internal = crate::threads::InternalGuard::enter();
        let mut guard = CACHE.lock();
        let cache = guard.get_or_insert_with(Cache::default);
        // The runtime's own frames are left out before their names are looked up: loading
        // its symbol table (megabytes) cost a failed quiesce's report 30 ms of CPU, which
        // on a loaded machine made it come too late.
        addrs
            .iter()
            .filter_map(|&a| {
                let runtimes = crate::is_runtime_module(cache.module_path(a as u64));
                (!runtimes).then(|| cache.frame(a as u64, true))
            })
            .collect()
    };
    let id = stack_id_of(call, &frames);
    CallStack { id: mcr_callstack::format_id(id), frames }
}

pub fn stack_id_of(call: Option<&str>, frames: &[Frame]) -> u64 {
    let names: Vec<String> = call
        .map(str::to_string)
        .into_iter()
        .chain(
            frames
                .iter()
                .map(|f| f.function.clone().unwrap_or_else(|| mcr_callstack::unknown_frame_name(f.module.as_deref()))),
        )
        .collect();
    mcr_callstack::stack_id(names.iter().map(String::as_str))
}

/// Symbolize a single program counter (not a return address).
pub fn frame_at(pc: usize) -> Frame {
    let _internal = crate::threads::InternalGuard::enter();
    CACHE.lock().get_or_insert_with(Cache::default).frame(pc as u64, false)
}

/// The function that starts exactly at `addr` (a signal handler, say): its module's path
/// and its name; None for an address inside a function or in no named one.
pub fn function_starting_at(addr: usize) -> Option<(String, String)> {
    let _internal = crate::threads::InternalGuard::enter();
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(Cache::default);
    let frame = cache.frame(addr as u64, false);
    let (module, function) = (frame.module?, frame.function?);
    (cache.address_of(&module, &function)? == addr).then_some((module, function))
}

/// The address of function `name` of the loaded module `module` (static functions too).
pub fn address_of(module: &str, name: &str) -> Option<usize> {
    let _internal = crate::threads::InternalGuard::enter();
    CACHE.lock().get_or_insert_with(Cache::default).address_of(module, name)
}

impl Cache {
    fn address_of(&mut self, module: &str, name: &str) -> Option<usize> {
        if !self.modules.iter().any(|m| m.path == module) {
            self.modules = read_maps();
        }
        let base = self.modules.iter().find(|m| m.path == module)?.base;
        let syms = self.symbols.entry(module.to_string()).or_insert_with(|| load_symbols(module));
        let s = syms.as_ref()?;
        let bias = base.wrapping_sub(s.first_load_vaddr);
        Some(s.address_of(name)?.wrapping_add(bias) as usize)
    }
}

pub fn reset_after_fork() {
    CACHE.force_unlock();
}
