//! libmcr.so, the mcr runtime, preloaded into every process of a server run by mcr.
//!
//! Layout: `interpose/` is the thin unsafe FFI layer (exported libc symbols); the other
//! modules hold the logic: the thread table (`threads`), quiescence (`quiesce`), the
//! supervisor link (`control`), stack walking and symbolization, signals.
//!
//! Without `MCR_RUNTIME_SOCKET` in the environment the runtime is inert: every
//! interposed function forwards straight to libc.

// A panic aborts the server the runtime is loaded into (panic = "abort"): no code path of
// the runtime may panic on purpose. Tests may.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable))]

/// A raw system call. `libc::syscall` is variadic: an `i32` argument would leave the
/// upper half of its register undefined, so every argument is widened to `c_long` here.
#[macro_export]
macro_rules! sys {
    ($nr:expr $(, $arg:expr)* $(,)?) => {
        libc::syscall($nr $(, ($arg) as libc::c_long)*)
    };
}

mod alloc;
mod attributes;
mod borrow;
mod calls;
mod control;
mod diag;
mod dirty;
mod drain;
mod errno;
mod futex;
mod heap;
mod held_launch;
mod held_ranges;
mod interpose;
mod keys;
mod last_thread;
mod mappings;
mod own_memory;
mod own_pages;
mod peers;
mod placed_blocks;
mod procdir;
mod profiling;
mod quiesce;
mod rawfd;
mod real;
mod replay;
mod resume;
mod signals;
mod stack;
mod startup_heap;
mod startup_log;
mod symbolize;
mod sync;
mod threads;
mod tls;
mod transfer;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::*};
use std::sync::OnceLock;

#[global_allocator]
static ALLOCATOR: alloc::RuntimeAllocator = alloc::RuntimeAllocator;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static START_NS: AtomicU64 = AtomicU64::new(0);
static PID: AtomicI32 = AtomicI32::new(0);
static RUNTIME_PATH: OnceLock<String> = OnceLock::new();

pub(crate) fn is_active() -> bool {
    ACTIVE.load(Relaxed)
}

/// Set once the process installed a seccomp filter. The filter binds the program's threads
/// (not the control thread, started before it), and the runtime cannot know what it
/// forbids: sshd's kills a thread on `process_vm_readv`, `prlimit64` or `userfaultfd`,
/// any of which the runtime's work on a program thread may make. So from then on the
/// runtime does nothing on program threads beyond the calls they make themselves: no
/// quiescence (the process never completes startup, and an update refuses it), no startup
/// log, no memory files for the heap, nothing after a fork but the allocator's own reset.
static SANDBOXED: AtomicBool = AtomicBool::new(false);

pub(crate) fn is_sandboxed() -> bool {
    SANDBOXED.load(Relaxed)
}

/// The program installed a seccomp filter (see [`SANDBOXED`]).
pub(crate) fn enter_sandbox() {
    SANDBOXED.store(true, SeqCst);
    ACTIVE.store(false, SeqCst);
    heap::HEAP.enter_sandbox();
}

/// Set by a thread about to fork a child into namespaces of its own (a raw `clone` with
/// namespace flags, made a fork by `interpose::clone`): the child cannot reach the
/// supervisor (its control socket is in the old network namespace) and would take PID 1
/// of its own PID namespace, so it starts passive, as a sandboxed process does.
static NEXT_CHILD_PASSIVE: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_next_child_passive(on: bool) {
    NEXT_CHILD_PASSIVE.store(on, SeqCst);
}

pub(crate) fn pid() -> i32 {
    PID.load(Relaxed)
}

/// The calling thread's slot when it is a tracked program thread; starts the control
/// thread on the process's first wrapped call.
#[inline(always)]
pub(crate) fn tracked_slot(l: &threads::Local) -> Option<&'static threads::Slot> {
    if !ACTIVE.load(Relaxed) || l.is_internal() {
        return None;
    }
    control::ensure_started();
    l.slot()
}

/// `clock`'s time in nanoseconds; 0 when it cannot be read (the CPU clock of a thread
/// that exited).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub(crate) fn since_start_ns() -> u64 {
    monotonic_ns().saturating_sub(START_NS.load(Relaxed))
}

pub(crate) fn is_runtime_module(path: Option<&str>) -> bool {
    matches!((path, RUNTIME_PATH.get()), (Some(p), Some(me)) if p == me)
}

/// One step of what a fork child redoes: `module`'s process-wide state made right for
/// the child.
struct ForkReset {
    /// Only the tests read it: they check the registry against the sources.
    #[cfg_attr(not(test), allow(dead_code))]
    module: &'static str,
    run: fn(),
}

/// Everything a fork child redoes before the program's code runs on in it, in this
/// order. Only the forking thread survives a fork: a lock another thread held stays
/// held, and every per-process fact (PID, threads, descriptors, connections) is the
/// parent's. Every module with such state has its step here (a module with a
/// [`sync::SpinLock`] static must unlock it in its `reset_after_fork`, and be listed:
/// `tests::every_module_with_a_lock_resets_it_after_fork` checks both).
///
/// Order constraints:
/// - `alloc` first: every later step may allocate, and the prepare handler held the
///   allocator's lock across the fork.
/// - `pid` before anything that reports or compares PIDs (dirty's status, the Hello).
/// - `drain` before `quiesce`: it reads the parent's STARTUP_DONE, which `quiesce`
///   clears.
/// - the locks (`dirty` … `transfer`) before `profiling` and `control`, which take them
///   (symbolization, the startup log, the thread table).
/// - `control` after every step whose state the supervisor may ask about as soon as the
///   child registers (its status: threads, startup, dirty tracking).
/// - `profiling announce` last: it reports over the connection `control` just made.
static AFTER_FORK: &[ForkReset] = &[
    ForkReset { module: "alloc", run: alloc::reset_after_fork },
    ForkReset { module: "pid", run: note_own_pid },
    ForkReset { module: "tls", run: tls::reset_after_fork },
    ForkReset { module: "drain", run: drain::reset_after_fork },
    ForkReset { module: "dirty", run: dirty::reset_after_fork },
    ForkReset { module: "own_memory", run: own_memory::reset_after_fork },
    ForkReset { module: "threads", run: threads::reset_after_fork },
    ForkReset { module: "quiesce", run: quiesce::reset_after_fork },
    ForkReset { module: "symbolize", run: symbolize::reset_after_fork },
    ForkReset { module: "startup_log", run: startup_log::reset_after_fork },
    ForkReset { module: "startup_heap", run: startup_heap::reset_after_fork },
    ForkReset { module: "mappings", run: mappings::reset_after_fork },
    ForkReset { module: "held_ranges", run: held_ranges::reset_after_fork },
    ForkReset { module: "placed_blocks", run: placed_blocks::reset_after_fork },
    ForkReset { module: "keys", run: keys::reset_after_fork },
    ForkReset { module: "replay", run: replay::reset_after_fork },
    ForkReset { module: "transfer", run: transfer::reset_after_fork },
    ForkReset { module: "attributes", run: attributes::reset_after_fork },
    ForkReset { module: "profiling", run: profiling::reset_after_fork },
    ForkReset { module: "control", run: control::reset_after_fork },
    ForkReset { module: "profiling announce", run: profiling::announce_child },
];

/// In a fork child, from the `pthread_atfork` child handler: [`AFTER_FORK`], in order.
/// In a child the runtime does not follow: passive, as a sandboxed process.
pub(crate) fn become_passive() {
    SANDBOXED.store(true, SeqCst);
    ACTIVE.store(false, SeqCst);
    heap::HEAP.enter_sandbox();
}

/// Whether the fork under way makes a child the runtime leaves passive.
pub(crate) fn next_child_passive() -> bool {
    NEXT_CHILD_PASSIVE.load(SeqCst)
}

pub(crate) fn after_fork_in_child() {
    if NEXT_CHILD_PASSIVE.swap(false, SeqCst) {
        become_passive();
    }
    if is_sandboxed() {
        // The other steps make system calls (a new control connection, membarrier) the
        // sandbox may forbid; the child stays as passive as its parent.
        alloc::reset_after_fork();
        note_own_pid();
        return;
    }
    for step in AFTER_FORK {
        (step.run)();
    }
}

/// START_NS stays: a fork child's startup counts from the exec of the program, so a
/// daemon's worker reports the server's whole startup, parent's part included.
fn note_own_pid() {
    // SAFETY: getpid has no preconditions and cannot fail.
    PID.store(unsafe { libc::getpid() }, Relaxed);
}

/// A variable mcr set, unless it is empty or unused (`-` repeated: the supervisor keeps
/// each of its variables as long in every version of an instance).
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty() && !v.starts_with('-'))
}

/// [`env`] for a variable meant for the process mcr launched alone (an update's replay
/// log, the go of a held launch): read, then marked unused in place (`-` over every byte:
/// the same length, so the initial stack keeps its layout). A program that executes
/// itself again (sshd, once per connection) runs as a fresh process of the version.
/// Only in the constructor, before any thread of the program exists.
pub(crate) fn take_env(name: &str) -> Option<String> {
    let key = std::ffi::CString::new(name).ok()?;
    // SAFETY: getenv with a NUL-terminated name, before the program has threads.
    let value = unsafe { libc::getenv(key.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv's result is a NUL-terminated string inside the environment.
    let bytes = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    let text = std::str::from_utf8(bytes).ok().filter(|v| !v.is_empty() && !v.starts_with('-'))?.to_string();
    // SAFETY: the bytes of that same string, written over with as many bytes.
    unsafe { core::ptr::write_bytes(value.cast::<u8>(), b'-', bytes.len()) };
    Some(text)
}

/// Constructor. Kept to libc-level work: read the environment, install the kick signal,
/// connect to the supervisor. Threads start later, at the first wrapped call.
extern "C" fn init() {
    if runtime_socket_set() {
        own_pages::init();
    }
    heap::init_hooks();
    // An update's new server executed ahead waits here for its go; its startup counts
    // from then.
    held_launch::wait_for_go();
    START_NS.store(monotonic_ns(), Relaxed);
    note_own_pid();
    let Some(socket) = env(mcr_protocol::env::RUNTIME_SOCKET) else { return };
    tls::init();
    let _internal = threads::InternalGuard::enter();
    dirty::note_env();
    diag::DEBUG.store(env(mcr_protocol::env::DEBUG).as_deref() == Some("1"), Relaxed);
    if let Some(log) = env(mcr_protocol::env::INSTANCE_LOG) {
        let _ = diag::LOG_PATH.set(log.into_bytes().into_iter().chain(std::iter::once(0)).collect());
    }
    // Read once for the constructor's steps that look at the mappings.
    let maps = mcr_procfs::maps::read(mcr_procfs::Process::Current).unwrap_or_default();
    if let Some(name) = own_module_path() {
        let path = std::fs::canonicalize(&name).map(|p| p.display().to_string()).unwrap_or(name);
        let _ = RUNTIME_PATH.set(path);
    }
    let profile = env(mcr_protocol::env::PROFILE).and_then(|p| match mcr_callstack::Profile::load(p.as_ref()) {
        Ok(pr) => Some(pr.ids()),
        Err(e) => {
            diag::warn(&format!("{e}; using the default quiescent points"));
            None
        }
    });
    quiesce::set_profile(profile);
    profiling::init_from_env();
    borrow::init_from_env(env(mcr_protocol::env::TEST_BORROW_HOLD_MS).as_deref());
    let kick =
        env(mcr_protocol::env::KICK_SIGNAL).and_then(|s| s.parse::<i32>().ok()).unwrap_or_else(|| libc::SIGRTMAX() - 1);
    control::set_socket_name(socket.into_bytes());
    control::note_pid_namespace();
    startup_log::init_reserved_range();
    startup_log::note_inherited();
    startup_heap::init(&maps);
    // Before the Hello: once it is sent the supervisor reads this process's /proc files,
    // which holds its address space, and the kernel then makes the registration wait for
    // an RCU grace period (12-16 ms of every restart, both CPUs idle); alone with its
    // address space, the process registers at once. Harmless if no supervisor answers.
    quiesce::init_asymmetric_fence();
    if control::register(false) {
        if let Some(path) = take_env(mcr_protocol::env::REPLAY) {
            if let Err(reason) = replay::load(&path) {
                replay::fail(mcr_protocol::ReplayConflict { pid: pid(), reason, new_op: None, old_op: None });
            }
            quiesce::hold_from_start();
        }
        signals::install_kick(kick);
        // SAFETY: pthread_atfork only records the three handlers, functions of this library,
        // which is never unloaded.
        unsafe {
            libc::pthread_atfork(
                Some(interpose::process::atfork_prepare),
                Some(interpose::process::atfork_parent),
                Some(interpose::process::atfork_child),
            )
        };
        ACTIVE.store(true, SeqCst);
        diag::debug(|| format!("registered pid {}", pid()));
    } else {
        diag::warn("cannot reach the mcr supervisor; this process runs unmanaged");
    }
}

/// [`mcr_protocol::env::RUNTIME_SOCKET`] for libc.
const RUNTIME_SOCKET_VAR: &std::ffi::CStr = c"MCR_RUNTIME_SOCKET";

/// Whether mcr launched this process (without the supervisor's socket the library is only
/// the allocator). libc's getenv: no code of this library runs before [`own_pages::init`].
fn runtime_socket_set() -> bool {
    // SAFETY: a NUL-terminated name; the constructor runs before the program has threads.
    let value = unsafe { libc::getenv(RUNTIME_SOCKET_VAR.as_ptr()) };
    // SAFETY: getenv's result is null or a NUL-terminated string inside the environment.
    !value.is_null() && !matches!(unsafe { *value } as u8, 0 | b'-')
}

/// The path ld.so loaded this library from.
fn own_module_path() -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    // SAFETY: dladdr reads no memory at the address (one of our own functions) and writes
    // `info`, a live local.
    if unsafe { libc::dladdr(init as *const libc::c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: a non-null dli_fname is the NUL-terminated name ld.so keeps for the loaded
    // module, alive as long as it stays loaded (this library is never unloaded).
    Some(unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned())
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The runtime's sources, as (module name, text): `interpose/fds.rs` is `fds`.
    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).expect("the runtime's src directory").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    out.push((name, std::fs::read_to_string(&p).expect("a source file")));
                }
            }
        }
        let mut out = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    /// The names of the `static NAME: …SpinLock<…>` items of a source text.
    fn spin_locks(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                let rest = l.trim_start().trim_start_matches("pub ").strip_prefix("static ")?;
                let (name, ty) = rest.split_once(':')?;
                ty.trim_start().trim_start_matches("crate::sync::").starts_with("SpinLock<").then(|| name.to_string())
            })
            .collect()
    }

    #[test]
    fn every_module_with_a_lock_resets_it_after_fork() {
        let listed: Vec<&str> = AFTER_FORK.iter().map(|s| s.module).collect();
        let mut checked = 0;
        for (module, text) in sources() {
            let locks = spin_locks(&text);
            if locks.is_empty() {
                continue;
            }
            checked += 1;
            assert!(listed.contains(&module.as_str()), "{module} has locks {locks:?} but no step in AFTER_FORK");
            let reset = text
                .split("pub fn reset_after_fork()")
                .nth(1)
                .unwrap_or_else(|| panic!("{module} has locks {locks:?} but no reset_after_fork"));
            let body = reset.split("\n}\n").next().unwrap_or_default();
            for lock in &locks {
                assert!(
                    body.contains(&format!("{lock}.force_unlock()")),
                    "{module}::reset_after_fork does not unlock {lock}: a fork while another thread held it would \
                     leave it locked forever in the child"
                );
            }
        }
        assert!(checked >= 8, "the source scan found only {checked} modules with locks");
    }

    #[test]
    fn the_constructor_looks_for_the_supervisors_variable() {
        assert_eq!(RUNTIME_SOCKET_VAR.to_str(), Ok(mcr_protocol::env::RUNTIME_SOCKET));
    }

    #[test]
    fn the_allocator_is_reset_first_and_the_announcement_made_last() {
        assert_eq!(AFTER_FORK.first().map(|s| s.module), Some("alloc"));
        assert_eq!(AFTER_FORK.last().map(|s| s.module), Some("profiling announce"));
        let at = |m: &str| AFTER_FORK.iter().position(|s| s.module == m);
        assert!(at("drain") < at("quiesce"), "drain reads the STARTUP_DONE quiesce clears");
        assert!(at("pid") < at("control"), "the Hello carries the child's own PID");
    }
}
