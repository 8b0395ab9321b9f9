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
use mcr_protocol::{CallStack, OpArg, ProcessLog, ReplayConflict, StartupBlock, StartupMapping, StartupOp};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::*};

/// Exit status of a process that hit a replay conflict.
pub const CONFLICT_EXIT: i32 = 86;

/// The old version's startup as the new version's replay consumes it. Pure bookkeeping:
/// what is open in the process, and where a call was made from, come in as arguments,
/// so tests drive it with synthetic operations.
struct Replay {
    /// The old version's operations, by the PID that made them, with a consumed mark.
    ops: HashMap<i32, Vec<(StartupOp, bool)>>,
    /// Descriptors inherited from the old version (open at exec).
    inherited: BTreeSet<i32>,
    /// Inherited descriptors a replayed operation handed to the new version.
    claimed: BTreeSet<i32>,
    /// Inherited numbers that hold an object of the new version's now (created live and
    /// placed there): not the inherited object, and not to be closed as unclaimed.
    recreated: BTreeSet<i32>,
    /// The mappings the old processes' startups made where the kernel chose, by the
    /// process and thread that made them and that thread's count.
    mapped_at_startup: HashMap<(i32, i32, u32), StartupMapping>,
    /// The heap blocks the old processes' startups allocated, by the process and thread
    /// that allocated them and that thread's count, as their allocating process has them.
    allocated_at_startup: HashMap<(i32, i32, u32), StartupBlock>,
}

/// The heap block that thread `tid` of old process `pid` allocated as its `seq`th during
/// startup.
pub fn startup_block(pid: i32, tid: i32, seq: u32) -> Option<StartupBlock> {
    STATE.lock().as_ref()?.allocated_at_startup.get(&(pid, tid, seq)).copied()
}

/// The mapping that thread `tid` of old process `pid` made as its `seq`th during startup
/// and let the kernel place.
pub fn startup_mapping(pid: i32, tid: i32, seq: u32) -> Option<StartupMapping> {
    STATE.lock().as_ref()?.mapped_at_startup.get(&(pid, tid, seq)).copied()
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

/// An update's new version: where the old version's threads wait (call-stack IDs).
static OLD_WAITS: std::sync::OnceLock<std::collections::HashSet<u64>> = std::sync::OnceLock::new();

/// Whether a wait at `call` from the frame `fp` is one the old version's threads wait
/// at; `None` outside an update's new version, or when the old version named none.
pub fn old_version_waits_here(call: crate::calls::Call, fp: usize) -> Option<bool> {
    let ids = OLD_WAITS.get().filter(|ids| !ids.is_empty())?;
    let _internal = threads::InternalGuard::enter();
    let cs = symbolize::call_stack(Some(call.name()), &stack::walk_vec(fp));
    Some(mcr_callstack::parse_id(&cs.id).is_some_and(|id| ids.contains(&id)))
}

#[inline(always)]
pub fn active() -> bool {
    ACTIVE.load(Relaxed)
}

/// Load the old version's logs (constructor of the new version's first process).
pub fn load(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the replay log {path}: {e}"))?;
    crate::symbolize::use_prepared_tables(std::path::Path::new(path));
    let logs: Vec<ProcessLog> = serde_json::from_str(&text).map_err(|e| format!("bad replay log {path}: {e}"))?;
    let waits = logs.iter().flat_map(|l| l.log.iter().flat_map(|l| &l.waits_at));
    let _ = OLD_WAITS.set(waits.filter_map(|id| mcr_callstack::parse_id(id)).collect());
    // Before the program maps anything: the old version's memory goes back to its
    // addresses (startup's mappings, `mappings::old_place`; what was mapped after it,
    // by the transfer).
    let startup_mapped = logs.iter().flat_map(|l| l.log.iter().flat_map(|l| &l.mapped_at_startup));
    let after_startup = logs.iter().flat_map(|l| l.log.iter().flat_map(|l| l.after_startup.mapped.iter().copied()));
    crate::held_ranges::hold(startup_mapped.map(|m| (m.start, m.start + m.len)).chain(after_startup));
    let inherited = crate::procdir::numbers(c"/proc/self/fd").into_iter().filter(|&fd| fd > 2).collect();
    *STATE.lock() = Some(Replay::new(logs, inherited));
    ACTIVE.store(true, SeqCst);
    WAS_UPDATE.store(true, SeqCst);
    Ok(())
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

#[derive(Debug)]
pub enum Decision {
    /// Do not make the call: return this result (the object is inherited).
    Replay(i64),
    /// Make the call; place created descriptors at these numbers when free.
    Live(Vec<i32>),
    Conflict(Box<ReplayConflict>),
}

impl Replay {
    /// From the old version's logs (an operation a fork child's log repeats from its
    /// parent's counts once) and the descriptors this process inherited.
    fn new(logs: Vec<ProcessLog>, inherited: BTreeSet<i32>) -> Self {
        let mut ops: HashMap<i32, Vec<(StartupOp, bool)>> = HashMap::new();
        let mut seen = BTreeSet::new();
        let mut mapped_at_startup: HashMap<(i32, i32, u32), StartupMapping> = HashMap::new();
        let mut allocated_at_startup: HashMap<(i32, i32, u32), StartupBlock> = HashMap::new();
        for p in logs {
            // Each process lists the blocks it allocated itself: whether one is still live
            // is its allocating process's to say.
            for b in p.log.iter().flat_map(|l| &l.allocated_at_startup).filter(|b| b.pid == p.pid) {
                allocated_at_startup.insert((b.pid, b.tid, b.seq), *b);
            }
            // A fork child's log repeats its parent's mappings (the same keys).
            for m in p.log.iter().flat_map(|l| &l.mapped_at_startup) {
                mapped_at_startup.insert((m.pid, m.tid, m.seq), *m);
            }
            for op in p.log.into_iter().flat_map(|l| l.ops) {
                if seen.insert((op.pid, op.seq)) {
                    ops.entry(op.pid).or_default().push((op, false));
                }
            }
        }
        for v in ops.values_mut() {
            v.sort_by_key(|(o, _)| o.seq);
        }
        Replay {
            ops,
            inherited,
            claimed: BTreeSet::new(),
            recreated: BTreeSet::new(),
            mapped_at_startup,
            allocated_at_startup,
        }
    }

    /// Whether a later operation of the old version (in any process: numbers are shared
    /// by the whole tree) created `fd` again, so the inherited object at that number is
    /// not the one `op` created (a file opened and closed at startup, its number reused by
    /// a pipe).
    fn reused_later(&self, op: &StartupOp, fd: i32) -> bool {
        self.ops.values().flatten().any(|(o, _)| o.seq > op.seq && o.fds.contains(&fd))
    }

    /// What to do with operation `call` of process `pid`, made from `stack` with `args`;
    /// `is_open(fd)`: whether `fd` is open in the process now. A match is consumed.
    fn decide(
        &mut self,
        pid: i32,
        call: &str,
        stack: &CallStack,
        args: &[OpArg],
        is_open: impl Fn(i32) -> bool,
    ) -> Decision {
        let inherited_live = |fd: i32| self.inherited.contains(&fd) && !self.recreated.contains(&fd) && is_open(fd);
        let list = self.ops.get(&pid).map(Vec::as_slice).unwrap_or_default();
        let Some(index) =
            list.iter().position(|(o, used)| !*used && o.call == call && o.stack.id == stack.id && o.args == args)
        else {
            let touched = args.iter().find_map(|a| match a {
                OpArg::Fd(fd) if configures(call) && inherited_live(*fd) => Some(*fd),
                _ => None,
            });
            let Some(fd) = touched else { return Decision::Live(vec![]) };
            let closest = list.iter().find(|(o, _)| o.call == call && o.stack.id == stack.id).map(|(o, _)| o.clone());
            return Decision::Conflict(Box::new(ReplayConflict {
                pid,
                reason: format!(
                    "{call} on fd {fd}, which the new version inherited from the old one, matches no operation of the old version (different arguments or call site)"
                ),
                new_op: Some(new_op(pid, call, stack.clone(), args)),
                old_op: closest,
            }));
        };
        let old = list[index].0.clone();
        // Made live and placed at the old numbers: where one is inherited and its object is
        // gone (closed meanwhile), the number is the new object's from now on (one still
        // open is taken over by the placement: `take_inherited_number`).
        let freed = |fds: &[i32]| -> Vec<i32> {
            fds.iter().copied().filter(|&fd| self.inherited.contains(&fd) && !is_open(fd)).collect()
        };
        let decision = if always_live(call) {
            let freed = freed(&old.fds);
            self.recreated.extend(freed);
            Decision::Live(old.fds.clone())
        } else if configures(call) {
            match args.first() {
                Some(OpArg::Fd(fd)) if inherited_live(*fd) => Decision::Replay(old.result),
                _ => Decision::Live(vec![]),
            }
        } else if !old.fds.is_empty() && old.fds.iter().all(|&fd| inherited_live(fd) && !self.reused_later(&old, fd)) {
            self.claimed.extend(old.fds.iter().copied());
            Decision::Replay(old.result)
        } else {
            let freed = freed(&old.fds);
            self.recreated.extend(freed);
            Decision::Live(old.fds.clone())
        };
        if let Some(entry) = self.ops.get_mut(&pid).and_then(|l| l.get_mut(index)) {
            entry.1 = true;
        }
        decision
    }

    /// At startup completion of process `pid`: every old operation of its counterpart
    /// that the new version never made again and whose inherited object is still open
    /// and unclaimed (it would be dropped).
    fn dropped(&self, pid: i32, is_open: impl Fn(i32) -> bool) -> Vec<ReplayConflict> {
        let unclaimed_open = |fd: &i32| self.inherited.contains(fd) && !self.claimed.contains(fd) && is_open(*fd);
        self.ops
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|(op, used)| !*used && !always_live(&op.call) && op.fds.iter().any(unclaimed_open))
            .map(|(op, _)| ReplayConflict {
                pid,
                reason: format!(
                    "the old version's {}(…) = fd {} is still in use, but the new version never makes that call: the object would be dropped",
                    op.call, op.result
                ),
                new_op: None,
                old_op: Some(op.clone()),
            })
            .collect()
    }

    /// The inherited descriptors nothing claimed, among those `closable` accepts.
    fn unclaimed(&self, closable: impl Fn(i32) -> bool) -> Vec<i32> {
        self.inherited.iter().copied().filter(|&fd| self.hides(fd) && closable(fd)).collect()
    }

    /// Whether `fd` is inherited and neither handed over by a replay nor made again.
    fn hides(&self, fd: i32) -> bool {
        self.inherited.contains(&fd) && !self.claimed.contains(&fd) && !self.recreated.contains(&fd)
    }

    /// What the unconsumed old operation `call` of `pid` from the same call stack
    /// returned (a child's PID, a thread's TID).
    fn creation_target(&self, pid: i32, call: &str, stack_id: &str) -> Option<i32> {
        self.ops
            .get(&pid)?
            .iter()
            .find(|(o, used)| !*used && o.call == call && o.stack.id == stack_id)
            .map(|(o, _)| o.result as i32)
    }

    /// Claim `fd` when it holds an inherited object nothing claimed yet.
    fn take_inherited_number(&mut self, fd: i32) -> bool {
        let taken = self.inherited.contains(&fd) && self.claimed.insert(fd);
        if taken {
            self.recreated.insert(fd);
        }
        taken
    }
}

fn new_op(pid: i32, call: &str, stack: CallStack, args: &[OpArg]) -> StartupOp {
    StartupOp { pid, seq: 0, call: call.to_string(), stack, args: args.to_vec(), result: 0, errno: 0, fds: vec![] }
}

/// Decide what to do with a startup operation of the new version.
pub fn decide(call: &'static str, fp: usize, args: &[OpArg]) -> Decision {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let cs = symbolize::call_stack(Some(call), &stack::walk_vec(fp));
    let decision = match STATE.lock().as_mut() {
        Some(r) => r.decide(crate::pid(), call, &cs, args, crate::rawfd::is_open),
        None => return Decision::Live(vec![]),
    };
    // Handlers run without the lock: they are program code.
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
    let dropped = STATE.lock().as_ref()?.dropped(crate::pid(), crate::rawfd::is_open);
    // Handlers run without the lock: they are program code.
    for c in dropped {
        if !resolved_by_handler(DROPPED, &c) {
            return Some(c);
        }
    }
    let unclaimed = STATE.lock().as_ref()?.unclaimed(crate::startup_log::in_reserved_range);
    for fd in unclaimed {
        // SAFETY: an inherited descriptor no operation of the new version claimed, in the
        // reserved range, where the program gets numbers only from the runtime: nobody
        // uses it.
        unsafe { crate::rawfd::close(fd) };
    }
    None
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
    STATE.lock().as_ref()?.creation_target(crate::pid(), call, &cs.id)
}

/// Ask the kernel for `pid` as the next PID of this namespace. False when the process
/// may not (ns_last_pid needs CAP_SYS_ADMIN: httpd's children run as nobody) and `pid`
/// is not within `burnable` PIDs ahead of the last one given, which is the only other way
/// to get it (creating and ending that many threads first, ~50 µs each), or when that
/// would burn the PID of a process of the old tree not made yet: httpd's first child,
/// reaching for its threads' old TIDs, took its sibling's PID before the master forked
/// it, and the update rolled back ("the new version's processes {3, 5} do not match").
pub fn request_pid(pid: i32, burnable: i32) -> bool {
    if pid <= 1 {
        return true;
    }
    if set_last_pid(pid - 1) {
        return true;
    }
    let Some(last) = last_pid() else { return false };
    last < pid && pid - last <= burnable && !unmade_process_between(last, pid)
}

/// How long a thread made with whatever TID the kernel gives waits for the process of
/// the old tree that the next PID belongs to.
const UNMADE_PROCESS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Before a thread is made with whatever TID the kernel gives (the runtime's own, or a
/// program thread whose old TID is out of reach) during a replay: while the namespace's
/// next PID is one a process of the old tree had and no process has yet (its parent has
/// not forked it yet), wait for it, bounded. Else the thread takes that PID and the
/// process comes up with another one: httpd's first child started the runtime's thread
/// before the master forked its sibling, which then got PID 7, not 6, and the update
/// rolled back ("the new version's processes {3, 5} do not match the old version's
/// {3, 5, 6}") one time in five.
pub fn let_unmade_processes_come_first() {
    if !active() {
        return;
    }
    let give_up = std::time::Instant::now() + UNMADE_PROCESS_WAIT;
    while let Some(last) = last_pid() {
        if !unmade_process_between(last, last.saturating_add(2)) || std::time::Instant::now() > give_up {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether a PID in (lo, hi) is one a process of the old version's tree had (it made
/// startup operations, or a fork returned it) and no process has in this namespace now.
fn unmade_process_between(lo: i32, hi: i32) -> bool {
    let pids: Vec<i32> = {
        let g = STATE.lock();
        let Some(r) = g.as_ref() else { return false };
        let made = r.ops.keys().copied();
        let forked =
            r.ops.values().flatten().filter(|(o, _)| o.call == "fork" && o.result > 0).map(|(o, _)| o.result as i32);
        made.chain(forked).filter(|&p| lo < p && p < hi).collect()
    };
    let _errno = crate::errno::ErrnoGuard::save();
    pids.into_iter().any(|p| {
        // SAFETY: signal 0 only checks that the process exists (EPERM: it does). Raw: the
        // program's `kill` is interposed.
        let r = unsafe { crate::sys!(libc::SYS_kill, p, 0) };
        r != 0 && crate::errno::get() == libc::ESRCH
    })
}

/// The namespace's last allocated PID (None when unreadable).
pub fn last_pid() -> Option<i32> {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").ok().and_then(|s| s.trim().parse().ok())
}

/// Set ns_last_pid (needs CAP_SYS_ADMIN in the namespace; silently nothing otherwise).
/// The runtime's own file access is never recorded as a startup operation.
pub fn set_last_pid(v: i32) -> bool {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/proc/sys/kernel/ns_last_pid") else {
        return false;
    };
    use std::io::Write;
    write!(f, "{v}").is_ok()
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
    // Internal: the set it inserts into allocates, and a startup allocation of the
    // program's asks this module (`startup_block`) under the same lock.
    let _internal = threads::InternalGuard::enter();
    STATE.lock().as_mut().is_some_and(|r| r.take_inherited_number(fd))
}

/// An update's new version during its startup: the inherited startup descriptors (in the
/// reserved range) no replayed operation handed to the program yet. The program has not
/// made them (in the old version's startup they did not exist yet at this point), so they
/// are not its to close: `close`, `close_range` and `closefrom` leave them. sshd closes
/// every descriptor above stderr first thing in `main`: its listening socket, inherited to
/// be handed back by the replay of its `socket()`, was gone, and the new version made an
/// unbound socket of its own (its `bind` and `listen` replayed): after the commit nobody
/// listened. Empty outside an update's startup (one load).
pub fn hidden_inherited() -> Vec<i32> {
    if !active() {
        return Vec::new();
    }
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    STATE.lock().as_ref().map_or_else(Vec::new, |r| {
        r.unclaimed(|fd| crate::startup_log::in_reserved_range(fd) && crate::rawfd::is_open(fd))
    })
}

/// Whether `fd` is one of [`hidden_inherited`].
pub fn hides(fd: i32) -> bool {
    if !active() || !crate::startup_log::in_reserved_range(fd) {
        return false;
    }
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    STATE.lock().as_ref().is_some_and(|r| r.hides(fd)) && crate::rawfd::is_open(fd)
}

pub fn deactivate() {
    ACTIVE.store(false, SeqCst);
    // Only startup asks where the old version put its blocks and mappings: nginx's are
    // some 3 000, a few hundred kB in every process of the new version.
    let _internal = threads::InternalGuard::enter();
    if let Some(r) = STATE.lock().as_mut() {
        r.allocated_at_startup = HashMap::new();
        r.mapped_at_startup = HashMap::new();
    }
}

pub fn reset_after_fork() {
    STATE.force_unlock();
    HANDLERS.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcr_protocol::StartupLog;

    const PID: i32 = 100;
    const MAIN: &str = "00000000000000aa";
    const HELPER: &str = "00000000000000bb";

    fn stack(id: &str) -> CallStack {
        CallStack { id: id.into(), frames: vec![] }
    }

    fn op(seq: u32, call: &str, stack_id: &str, args: Vec<OpArg>, result: i64, fds: Vec<i32>) -> StartupOp {
        StartupOp { pid: PID, seq, call: call.into(), stack: stack(stack_id), args, result, errno: 0, fds }
    }

    fn replay(ops: Vec<StartupOp>, inherited: &[i32]) -> Replay {
        let log = StartupLog {
            complete: true,
            ops,
            unreplayable: vec![],
            after_startup: Default::default(),
            waits_at: vec![],
            mapped_at_startup: vec![],
            allocated_at_startup: vec![],
        };
        let logs = vec![ProcessLog {
            pid: PID,
            command_line: vec![],
            log: Some(log),
            error: None,
            registration: 0,
            refresh: None,
        }];
        Replay::new(logs, inherited.iter().copied().collect())
    }

    fn tcp() -> Vec<OpArg> {
        vec![OpArg::Int(2), OpArg::Int(1), OpArg::Int(0)]
    }

    fn bind(fd: i32, port: &str) -> Vec<OpArg> {
        vec![OpArg::Fd(fd), OpArg::Bytes(port.into())]
    }

    /// kvd's startup: a listener (socket, bind, listen) at reserved fd 1000, an epoll.
    fn kvd() -> Vec<StartupOp> {
        vec![
            op(0, "socket", MAIN, tcp(), 1000, vec![1000]),
            op(1, "bind", MAIN, bind(1000, "1f90"), 0, vec![]),
            op(2, "listen", MAIN, vec![OpArg::Fd(1000), OpArg::Int(128)], 0, vec![]),
            op(3, "epoll_create1", MAIN, vec![OpArg::Int(0)], 999, vec![999]),
        ]
    }

    fn all_open(_: i32) -> bool {
        true
    }

    #[test]
    fn the_same_startup_replays_inherited_objects_and_recreates_process_local_ones() {
        let mut r = replay(kvd(), &[999, 1000]);
        let s = stack(MAIN);
        assert!(matches!(r.decide(PID, "socket", &s, &tcp(), all_open), Decision::Replay(1000)));
        assert!(matches!(r.decide(PID, "bind", &s, &bind(1000, "1f90"), all_open), Decision::Replay(0)));
        let listen = [OpArg::Fd(1000), OpArg::Int(128)];
        assert!(matches!(r.decide(PID, "listen", &s, &listen, all_open), Decision::Replay(0)));
        match r.decide(PID, "epoll_create1", &s, &[OpArg::Int(0)], all_open) {
            Decision::Live(at) => assert_eq!(at, vec![999], "an epoll is recreated, at its old number"),
            d => panic!("epoll_create1: {d:?}"),
        }
        assert_eq!(r.claimed, BTreeSet::from([1000]), "only the listener was handed over");
        assert!(r.dropped(PID, all_open).is_empty());
        assert_eq!(r.unclaimed(|_| true), vec![999], "the old epoll is left to close");
    }

    /// An inherited listener the program closed before its `socket()` (only possible when
    /// it bypasses the runtime's close): the socket is made again at the old number, and
    /// that socket is the program's: its `bind` and `listen` run (replayed, they left it
    /// unbound, and nobody listened after the commit), and it is not closed as an unclaimed
    /// inherited descriptor at startup completion.
    #[test]
    fn a_socket_made_again_where_the_inherited_one_was_closed_is_configured_for_real() {
        let mut r = replay(kvd(), &[999, 1000]);
        let s = stack(MAIN);
        let open = |fd: i32| fd != 1000;
        match r.decide(PID, "socket", &s, &tcp(), open) {
            Decision::Live(at) => assert_eq!(at, vec![1000]),
            d => panic!("socket: {d:?}"),
        }
        let all_open = |_: i32| true;
        assert!(matches!(r.decide(PID, "bind", &s, &bind(1000, "1f90"), all_open), Decision::Live(_)));
        let listen = [OpArg::Fd(1000), OpArg::Int(128)];
        assert!(matches!(r.decide(PID, "listen", &s, &listen, all_open), Decision::Live(_)));
        assert_eq!(r.unclaimed(|_| true), vec![999], "the socket made again is not closed");
    }

    #[test]
    fn a_matched_operation_is_consumed_so_a_second_one_runs_live() {
        let mut r = replay(kvd(), &[1000]);
        let s = stack(MAIN);
        assert!(matches!(r.decide(PID, "socket", &s, &tcp(), all_open), Decision::Replay(1000)));
        match r.decide(PID, "socket", &s, &tcp(), all_open) {
            Decision::Live(at) => assert!(at.is_empty(), "{at:?}"),
            d => panic!("a second socket: {d:?}"),
        }
    }

    #[test]
    fn a_different_call_site_or_process_does_not_match() {
        let mut r = replay(kvd(), &[1000]);
        assert!(
            matches!(r.decide(PID, "socket", &stack(HELPER), &tcp(), all_open), Decision::Live(ref v) if v.is_empty())
        );
        assert!(
            matches!(r.decide(PID + 1, "socket", &stack(MAIN), &tcp(), all_open), Decision::Live(ref v) if v.is_empty())
        );
        assert!(r.claimed.is_empty());
    }

    #[test]
    fn reconfiguring_an_inherited_object_differently_is_a_conflict_naming_the_closest_old_call() {
        let mut r = replay(kvd(), &[1000]);
        let s = stack(MAIN);
        assert!(matches!(r.decide(PID, "socket", &s, &tcp(), all_open), Decision::Replay(1000)));
        match r.decide(PID, "bind", &s, &bind(1000, "1f91"), all_open) {
            Decision::Conflict(c) => {
                assert!(c.reason.contains("bind on fd 1000"), "{}", c.reason);
                assert_eq!(c.new_op.as_ref().map(|o| o.args.clone()), Some(bind(1000, "1f91")));
                assert_eq!(c.old_op.as_ref().map(|o| o.args.clone()), Some(bind(1000, "1f90")));
            }
            d => panic!("a bind to another port: {d:?}"),
        }
        // Configuring a descriptor that is not inherited (or no longer open) is the new
        // version's own business.
        assert!(matches!(r.decide(PID, "bind", &s, &bind(5, "1f91"), all_open), Decision::Live(_)));
        assert!(matches!(r.decide(PID, "bind", &s, &bind(1000, "1f91"), |_| false), Decision::Live(_)));
    }

    #[test]
    fn a_configuring_call_on_a_descriptor_that_is_not_inherited_runs_live() {
        let mut r = replay(kvd(), &[]);
        let s = stack(MAIN);
        assert!(matches!(r.decide(PID, "socket", &s, &tcp(), all_open), Decision::Live(ref at) if at == &[1000]));
        assert!(
            matches!(r.decide(PID, "bind", &s, &bind(1000, "1f90"), all_open), Decision::Live(ref at) if at.is_empty())
        );
    }

    #[test]
    fn an_object_whose_number_a_later_operation_reused_is_recreated() {
        // A config file opened and closed at startup; a pipe took its number later.
        let ops = vec![
            op(0, "open", MAIN, vec![OpArg::Str("/etc/kvd.conf".into()), OpArg::Int(0)], 1000, vec![1000]),
            op(1, "close", MAIN, vec![OpArg::Fd(1000)], 0, vec![]),
            op(2, "pipe", MAIN, vec![OpArg::Int(0)], 0, vec![1000, 998]),
        ];
        let mut r = replay(ops, &[998, 1000]);
        let open_args = [OpArg::Str("/etc/kvd.conf".into()), OpArg::Int(0)];
        match r.decide(PID, "open", &stack(MAIN), &open_args, all_open) {
            Decision::Live(at) => assert_eq!(at, vec![1000]),
            d => panic!("the reopened file: {d:?}"),
        }
        assert!(r.claimed.is_empty(), "the inherited pipe end at 1000 is not the file");
    }

    #[test]
    fn an_inherited_object_the_new_version_never_claims_would_be_dropped() {
        let mut r = replay(kvd(), &[999, 1000]);
        // The new version makes only the epoll.
        let _ = r.decide(PID, "epoll_create1", &stack(MAIN), &[OpArg::Int(0)], all_open);
        let dropped = r.dropped(PID, all_open);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert_eq!(dropped[0].old_op.as_ref().map(|o| o.call.as_str()), Some("socket"));
        assert!(dropped[0].reason.contains("socket(…) = fd 1000"), "{}", dropped[0].reason);
        assert!(r.dropped(PID, |fd| fd != 1000).is_empty(), "a listener closed meanwhile is not dropped by us");
        assert!(r.dropped(PID + 1, all_open).is_empty(), "another process's operations are its own");
    }

    #[test]
    fn only_unclaimed_inherited_numbers_are_closed_or_taken() {
        let mut r = replay(kvd(), &[7, 999, 1000]);
        let _ = r.decide(PID, "socket", &stack(MAIN), &tcp(), all_open);
        assert_eq!(r.unclaimed(|fd| fd > 900), vec![999], "in the reserved range, not claimed");
        assert!(r.take_inherited_number(999), "a recreated epoll takes the old one's number");
        assert!(!r.take_inherited_number(999), "only once");
        assert!(!r.take_inherited_number(1000), "the listener was claimed by its replay");
        assert!(!r.take_inherited_number(5), "not inherited");
        assert!(r.unclaimed(|fd| fd > 900).is_empty());
    }

    #[test]
    fn forks_and_threads_take_the_pid_of_their_unconsumed_counterpart() {
        let ops = vec![
            op(0, "fork", MAIN, vec![], 42, vec![]),
            op(1, "fork", MAIN, vec![], 43, vec![]),
            op(2, "pthread_create", HELPER, vec![], 44, vec![]),
        ];
        let mut r = replay(ops, &[]);
        assert_eq!(r.creation_target(PID, "fork", MAIN), Some(42));
        let _ = r.decide(PID, "fork", &stack(MAIN), &[], all_open);
        assert_eq!(r.creation_target(PID, "fork", MAIN), Some(43), "the first fork was consumed");
        assert_eq!(r.creation_target(PID, "pthread_create", HELPER), Some(44));
        assert_eq!(r.creation_target(PID, "pthread_create", MAIN), None, "another call site");
        assert_eq!(r.creation_target(PID + 1, "fork", MAIN), None);
    }

    #[test]
    fn logs_that_repeat_a_parents_operations_count_them_once_in_order() {
        // A fork child's log starts with its parent's operations (same pid and seq).
        let parent =
            vec![op(1, "bind", MAIN, bind(1000, "1f90"), 0, vec![]), op(0, "socket", MAIN, tcp(), 1000, vec![1000])];
        let child = vec![
            op(0, "socket", MAIN, tcp(), 1000, vec![1000]),
            StartupOp { pid: PID + 1, ..op(0, "setsid", MAIN, vec![], 0, vec![]) },
        ];
        let as_log = |ops: Vec<StartupOp>| ProcessLog {
            pid: PID,
            command_line: vec![],
            log: Some(StartupLog {
                complete: true,
                ops,
                unreplayable: vec![],
                after_startup: Default::default(),
                waits_at: vec![],
                mapped_at_startup: vec![],
                allocated_at_startup: vec![],
            }),
            error: None,
            registration: 0,
            refresh: None,
        };
        let r = Replay::new(vec![as_log(parent), as_log(child)], BTreeSet::new());
        let calls = |pid| r.ops.get(&pid).map(|l| l.iter().map(|(o, _)| o.call.clone()).collect::<Vec<_>>());
        assert_eq!(calls(PID), Some(vec!["socket".to_string(), "bind".to_string()]));
        assert_eq!(calls(PID + 1), Some(vec!["setsid".to_string()]));
    }

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
