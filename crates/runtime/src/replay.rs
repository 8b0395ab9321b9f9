//! Mutable reinitialization (paper §5): in the new version of an update, every startup
//! operation is compared with the old version's startup log.
//!
//! * A match on an object the new version inherited (a listening socket, an open file)
//!   is *replayed*: the call is not made again and returns the old result, so the new
//!   version holds the old object at the same number.
//! * Matches on process-local objects (epoll, eventfd, pipes, socketpairs), identities
//!   (setsid, setuid) and forks run live: their contents belong to the new version (an
//!   epoll's registered data are its pointers). New descriptors land at the old numbers.
//! * An unmatched operation runs live, unless it reconfigures an inherited object: that
//!   is a conflict. So is an inherited object the new version never claims (a dropped
//!   listener), found when the process completes startup.
//!
//! A conflict is reported to the supervisor and the process exits: the update rolls back.

use crate::sync::SpinLock;
use crate::{stack, symbolize, threads};
use mcr_protocol::{OpArg, ProcessLog, ReplayConflict, StartupOp};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::*};

/// Exit status of a process that hit a replay conflict.
pub const CONFLICT_EXIT: i32 = 86;

struct Replay {
    /// The old version's operations, by the PID that made them, with a consumed mark.
    ops: HashMap<i32, Vec<(StartupOp, bool)>>,
    /// Descriptors inherited from the old version (open at exec).
    inherited: BTreeSet<i32>,
    /// Inherited descriptors a replayed operation handed to the new version.
    claimed: BTreeSet<i32>,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// This process (or its ancestor) was started as an update's new version.
static WAS_UPDATE: AtomicBool = AtomicBool::new(false);

/// `struct mcr_conflict` of include/mcr.h.
#[repr(C)]
pub struct CConflict {
    kind: libc::c_int,
    pid: libc::c_int,
    call: *const libc::c_char,
    reason: *const libc::c_char,
    stack: *const libc::c_char,
}

pub type ReinitHandler = extern "C" fn(*const CConflict) -> libc::c_int;
pub const MISMATCH: libc::c_int = 1;
pub const DROPPED: libc::c_int = 2;

static HANDLERS: SpinLock<Vec<(ReinitHandler, String)>> = SpinLock::new(Vec::new());

pub fn add_handler(h: ReinitHandler, name: String) -> bool {
    let mut v = HANDLERS.lock();
    if v.len() >= 64 {
        return false;
    }
    v.push((h, name));
    true
}

pub fn started_as_update() -> bool {
    WAS_UPDATE.load(Relaxed)
}

/// Ask the program's reinit handlers about a conflict; true when one accepts it.
fn resolved_by_handler(kind: libc::c_int, c: &ReplayConflict) -> bool {
    let handlers: Vec<(ReinitHandler, String)> = HANDLERS.lock().clone();
    if handlers.is_empty() {
        return false;
    }
    let op = c.new_op.as_ref().or(c.old_op.as_ref());
    let cstr = |s: String| std::ffi::CString::new(s.replace('\0', "?")).unwrap_or_default();
    let call = cstr(op.map(|o| o.call.clone()).unwrap_or_default());
    let reason = cstr(c.reason.clone());
    let stack = cstr(op.map(|o| o.stack.summary(16)).unwrap_or_default());
    let cc = CConflict { kind, pid: c.pid, call: call.as_ptr(), reason: reason.as_ptr(), stack: stack.as_ptr() };
    // The handler is program code: let its own calls through untracked.
    handlers.iter().any(|(h, name)| {
        let accepted = h(&cc) != 0;
        if accepted {
            crate::diag::warn(&format!("replay conflict resolved by reinit handler {name}: {}", c.reason));
        }
        accepted
    })
}
static STATE: SpinLock<Option<Replay>> = SpinLock::new(None);

#[inline(always)]
pub fn active() -> bool {
    ACTIVE.load(Relaxed)
}

/// Load the old version's logs (constructor of the new version's first process).
pub fn load(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the replay log {path}: {e}"))?;
    let logs: Vec<ProcessLog> = serde_json::from_str(&text).map_err(|e| format!("bad replay log {path}: {e}"))?;
    let mut ops: HashMap<i32, Vec<(StartupOp, bool)>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for p in logs {
        for op in p.log.into_iter().flat_map(|l| l.ops) {
            if seen.insert((op.pid, op.seq)) {
                ops.entry(op.pid).or_default().push((op, false));
            }
        }
    }
    for v in ops.values_mut() {
        v.sort_by_key(|(o, _)| o.seq);
    }
    let inherited = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|&fd| fd > 2).collect())
        .unwrap_or_default();
    *STATE.lock() = Some(Replay { ops, inherited, claimed: BTreeSet::new() });
    ACTIVE.store(true, SeqCst);
    WAS_UPDATE.store(true, SeqCst);
    Ok(())
}

/// Whether a later operation of the old version (in any process: numbers are shared by
/// the whole tree) created `fd` again, so the inherited object at that number is not the
/// one `op` created (a file opened and closed at startup, its number reused by a pipe).
fn reused_later(ops: &HashMap<i32, Vec<(StartupOp, bool)>>, op: &StartupOp, fd: i32) -> bool {
    ops.values().flatten().any(|(o, _)| o.seq > op.seq && o.fds.contains(&fd))
}

/// Calls whose objects are always recreated by the new version.
fn always_live(call: &str) -> bool {
    matches!(
        call,
        "epoll_create"
            | "epoll_create1"
            | "epoll_ctl"
            | "eventfd"
            | "timerfd_create"
            | "inotify_init"
            | "inotify_init1"
            | "socketpair"
            | "pipe"
            | "pipe2"
            | "setsid"
            | "setuid"
            | "setgid"
            | "chroot"
            | "fork"
            | "pthread_create"
            | "close"
            | "dup"
            | "fcntl"
    )
}

/// Calls that only configure an existing object (their first argument).
fn configures(call: &str) -> bool {
    matches!(call, "bind" | "listen" | "setsockopt")
}

pub enum Decision {
    /// Do not make the call: return this result (the object is inherited).
    Replay(i64),
    /// Make the call; place created descriptors at these numbers when free.
    Live(Vec<i32>),
    Conflict(Box<ReplayConflict>),
}

fn new_op(call: &str, stack: mcr_protocol::CallStack, args: &[OpArg]) -> StartupOp {
    StartupOp {
        pid: crate::pid(),
        seq: 0,
        call: call.to_string(),
        stack,
        args: args.to_vec(),
        result: 0,
        errno: 0,
        fds: vec![],
    }
}

/// Decide what to do with a startup operation of the new version.
pub fn decide(call: &'static str, fp: usize, args: &[OpArg]) -> Decision {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let cs = symbolize::call_stack(Some(call), &stack::walk_vec(fp));
    let pid = crate::pid();
    let mut guard = STATE.lock();
    let Some(r) = guard.as_mut() else { return Decision::Live(vec![]) };
    let Replay { ops, inherited, claimed } = r;
    let inherited_live = |fd: i32| inherited.contains(&fd) && crate::startup_log::fd_in_use(fd);
    let list = ops.entry(pid).or_default();
    let found = list.iter_mut().find(|(o, used)| !*used && o.call == call && o.stack.id == cs.id && o.args == args);
    let decision = match found {
        Some((old, used)) => {
            *used = true;
            let old = old.clone();
            if always_live(call) {
                Decision::Live(old.fds.clone())
            } else if configures(call) {
                match args.first() {
                    Some(OpArg::Fd(fd)) if inherited_live(*fd) => Decision::Replay(old.result),
                    _ => Decision::Live(vec![]),
                }
            } else if !old.fds.is_empty()
                && old.fds.iter().all(|&fd| inherited_live(fd) && !reused_later(ops, &old, fd))
            {
                claimed.extend(old.fds.iter().copied());
                Decision::Replay(old.result)
            } else {
                Decision::Live(old.fds.clone())
            }
        }
        None => {
            let touched = args.iter().find_map(|a| match a {
                OpArg::Fd(fd) if configures(call) && inherited_live(*fd) => Some(*fd),
                _ => None,
            });
            match touched {
                Some(fd) => {
                    let closest =
                        list.iter().find(|(o, _)| o.call == call && o.stack.id == cs.id).map(|(o, _)| o.clone());
                    Decision::Conflict(Box::new(ReplayConflict {
                        pid,
                        reason: format!(
                            "{call} on fd {fd}, which the new version inherited from the old one, matches no operation of the old version (different arguments or call site)"
                        ),
                        new_op: Some(new_op(call, cs, args)),
                        old_op: closest,
                    }))
                }
                None => Decision::Live(vec![]),
            }
        }
    };
    drop(guard);
    match decision {
        Decision::Conflict(c) if resolved_by_handler(MISMATCH, &c) => Decision::Live(vec![]),
        d => d,
    }
}

/// At startup completion: an inherited object created by an operation of this process's
/// old counterpart that the new version never claimed would be dropped (a listener the
/// new version does not open): a conflict. Otherwise close every inherited descriptor
/// nothing claimed.
pub fn finish_startup() -> Option<ReplayConflict> {
    if !active() {
        return None;
    }
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let pid = crate::pid();
    let mut guard = STATE.lock();
    let r = guard.as_mut()?;
    let mut conflict = None;
    let mut dropped: Vec<ReplayConflict> = Vec::new();
    if let Some(list) = r.ops.get(&pid) {
        for (op, used) in list {
            if !*used
                && !always_live(&op.call)
                && op
                    .fds
                    .iter()
                    .any(|fd| r.inherited.contains(fd) && !r.claimed.contains(fd) && crate::startup_log::fd_in_use(*fd))
            {
                dropped.push(ReplayConflict {
                    pid,
                    reason: format!(
                        "the old version's {}(…) = fd {} is still in use, but the new version never makes that call: the object would be dropped",
                        op.call, op.result
                    ),
                    new_op: None,
                    old_op: Some(op.clone()),
                });
            }
        }
    }
    // Handlers run without the lock: they are program code.
    drop(guard);
    for c in dropped {
        if !resolved_by_handler(DROPPED, &c) {
            conflict = Some(c);
            break;
        }
    }
    let mut guard = STATE.lock();
    let r = guard.as_mut()?;
    if conflict.is_none() {
        for &fd in r.inherited.iter() {
            if !r.claimed.contains(&fd) && crate::startup_log::in_reserved_range(fd) {
                // SAFETY: closing an inherited descriptor no part of the new version uses.
                unsafe { crate::sys!(libc::SYS_close, fd) };
            }
        }
    }
    drop(guard);
    conflict
}

/// Report a conflict to the supervisor, then exit: the update rolls back.
pub fn fail(conflict: ReplayConflict) -> ! {
    crate::diag::warn(&format!("replay conflict: {}", conflict.reason));
    crate::control::send_event(&mcr_protocol::RuntimeEvent::ReplayConflict { conflict });
    // SAFETY: immediate exit; nothing of the new version may run on.
    unsafe { libc::_exit(CONFLICT_EXIT) }
}

/// The PID (fork) or TID (pthread_create) the old version's matching call produced, for
/// the new process or thread to take.
pub fn creation_target(call: &'static str, fp: usize) -> Option<i32> {
    if !active() {
        return None;
    }
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let cs = symbolize::call_stack(Some(call), &stack::walk_vec(fp));
    let pid = crate::pid();
    let guard = STATE.lock();
    let t = guard.as_ref().and_then(|r| {
        r.ops
            .get(&pid)?
            .iter()
            .find(|(o, used)| !*used && o.call == call && o.stack.id == cs.id)
            .map(|(o, _)| o.result as i32)
    });
    drop(guard);
    t
}

/// Ask the kernel for `pid` as the next PID of this namespace.
pub fn request_pid(pid: i32) {
    if pid > 1 {
        set_last_pid(pid - 1);
    }
}

/// The namespace's last allocated PID (None when unreadable).
pub fn last_pid() -> Option<i32> {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|s| s.trim().parse().ok())
}

/// Set ns_last_pid (needs CAP_SYS_ADMIN in the namespace; silently nothing otherwise).
/// The runtime's own file access is never recorded as a startup operation.
pub fn set_last_pid(v: i32) {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/proc/sys/kernel/ns_last_pid") {
        use std::io::Write;
        let _ = write!(f, "{v}");
    }
}

/// Run `f` (which creates a runtime thread) with TIDs taken from the top of the PID
/// range, so the runtime's threads never take a PID the program's processes would get:
/// a replayed fork must be able to get the PID its old counterpart had.
pub fn with_high_tids<R>(f: impl FnOnce() -> R) -> R {
    // Only an update's new version needs it (its forks must get exact PIDs); elsewhere
    // moving ns_last_pid would only hand high PIDs to forks racing with it.
    if !crate::control::in_pid_namespace() || !active() {
        return f();
    }
    let pid_max = {
        let _internal = threads::InternalGuard::enter();
        let _errno = crate::errno::ErrnoGuard::save();
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(32768)
    };
    let _serialized = crate::startup_log::pid_hint_lock();
    let Some(prev) = last_pid() else { return f() };
    set_last_pid(pid_max - pid_max / 16);
    let r = f();
    set_last_pid(prev);
    r
}

/// Whether `fd` holds an inherited object no operation of the new version has claimed;
/// if so it is claimed now, for a live object recreated at its number to replace it.
pub fn take_inherited_number(fd: i32) -> bool {
    if !active() {
        return false;
    }
    let mut guard = STATE.lock();
    let Some(r) = guard.as_mut() else { return false };
    if r.inherited.contains(&fd) && !r.claimed.contains(&fd) {
        r.claimed.insert(fd);
        true
    } else {
        false
    }
}

pub fn deactivate() {
    ACTIVE.store(false, SeqCst);
}

pub fn reset_after_fork() {
    STATE.force_unlock();
    HANDLERS.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_startup_leaves_the_thread_tracked_when_no_log_is_loaded() {
        // Active, but no log in STATE: the early return must still restore the flag.
        ACTIVE.store(true, SeqCst);
        let conflict = finish_startup();
        ACTIVE.store(false, SeqCst);
        assert!(conflict.is_none());
        assert!(!threads::is_internal(), "the thread stayed runtime-internal: no later call of it is tracked");
    }
}
