//! The startup log (paper §5, DESIGN.md "Startup log and replay"): from exec until the
//! process completes startup, every operation that creates or configures an immutable
//! object is recorded with its call stack, its arguments in a comparable form, and its
//! result. Descriptors created during startup move to a reserved range at the top of the
//! fd space, so their numbers are never reused by the program and a later version can
//! inherit them at the same numbers.
//!
//! Recording costs a stack walk per operation, only during startup; afterwards every
//! interposed operation costs two relaxed loads.

use crate::quiesce::STARTUP_DONE;
use crate::sync::SpinLock;
use crate::{rawfd, stack, symbolize, threads};
use mcr_protocol::{AfterStartup, OpArg, StartupLog, StartupOp};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::*};

#[derive(Clone)]
struct RawOp {
    pid: i32,
    seq: u32,
    call: &'static str,
    stack: Vec<usize>,
    args: Vec<OpArg>,
    result: i64,
    errno: i32,
    fds: Vec<i32>,
}

static LOG: SpinLock<Vec<RawOp>> = SpinLock::new(Vec::new());
/// Descriptors the process had before its startup began (inherited across exec or fork):
/// they belong to an ancestor's log.
/// With what each was (its /proc/self/fd link), so a later descriptor that reuses the
/// number of a closed inherited one is not mistaken for it.
static INHERITED: SpinLock<Vec<(i32, String)>> = SpinLock::new(Vec::new());
/// Descriptors open when the process completed startup (with their /proc/self/fd links),
/// recorded or not: libc opens some on its own during startup (a locale file, the syslog
/// socket), and the new version's startup makes its own. What is open later and was not
/// open then (at the same number, as the same object) was made after startup.
static AT_STARTUP_END: SpinLock<Vec<(i32, String)>> = SpinLock::new(Vec::new());
static SEQ: AtomicU32 = AtomicU32::new(0);
/// Next reserved descriptor number to try (counts down), in a MAP_SHARED page that fork
/// children share, so numbers are unique across the whole process tree (a later version
/// inherits every process's descriptors into one fd table). Until the page exists, a
/// process-local fallback.
static LOCAL_NEXT: AtomicI32 = AtomicI32::new(0);
static SHARED_NEXT: std::sync::atomic::AtomicPtr<AtomicI32> = std::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Lock word in the same shared page: serializes the processes of the tree that move
/// ns_last_pid (a replayed fork wanting an exact PID, a runtime thread wanting a high
/// TID), so one's hint is never undone by another's.
pub fn pid_hint_lock() -> PidHintGuard {
    let p = SHARED_NEXT.load(Relaxed);
    if p.is_null() {
        return PidHintGuard(None);
    }
    // SAFETY: the shared page holds the counter at offset 0 and this lock at offset 4.
    let lock: &'static std::sync::atomic::AtomicU32 = unsafe { &*(p as *const std::sync::atomic::AtomicU32).add(1) };
    let t0 = std::time::Instant::now();
    while lock.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
        // A holder that died (killed mid-fork) must not wedge everyone else.
        if t0.elapsed() > std::time::Duration::from_millis(200) {
            return PidHintGuard(None);
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    }
    PidHintGuard(Some(lock))
}

pub struct PidHintGuard(Option<&'static std::sync::atomic::AtomicU32>);

impl PidHintGuard {
    /// In a fork child: the parent releases the lock, not us.
    pub fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for PidHintGuard {
    fn drop(&mut self) {
        if let Some(l) = self.0 {
            l.store(0, Release);
        }
    }
}

fn next_counter() -> &'static AtomicI32 {
    let p = SHARED_NEXT.load(Relaxed);
    if p.is_null() {
        &LOCAL_NEXT
    } else {
        // SAFETY: a non-null SHARED_NEXT is the start of the shared page, mapped for the
        // life of the process, never unmapped, and used only through atomics.
        unsafe { &*p }
    }
}
/// The range [RESERVED_FLOOR, RESERVED_TOP] holds the program's startup descriptors; the
/// runtime's own descriptors sit above it.
static RESERVED_TOP: AtomicI32 = AtomicI32::new(0);
const RESERVED_SPAN: i32 = 512;
/// Descriptors at the top kept for the runtime itself (control socket, wake eventfd).
pub const RUNTIME_FDS: i32 = 16;

/// Whether the calling thread's operation must be recorded now.
#[inline(always)]
pub fn recording() -> bool {
    crate::is_active() && !STARTUP_DONE.load(Relaxed) && !threads::is_internal()
}

pub fn init_reserved_range() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `rl`, a live local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let top = (rl.rlim_cur.min(1024) as i32) - RUNTIME_FDS - 1;
    RESERVED_TOP.store(top, Relaxed);
    LOCAL_NEXT.store(top, Relaxed);
    // SAFETY: a fresh shared anonymous page, used only as one AtomicI32.
    unsafe {
        let p = libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p != libc::MAP_FAILED {
            let counter = p as *mut AtomicI32;
            (*counter).store(top, Relaxed);
            SHARED_NEXT.store(counter, Relaxed);
        }
    }
}

/// Move a descriptor created during startup to the reserved range, keeping its
/// close-on-exec flag. Descriptors 0-2 stay (daemons reopen them on purpose).
pub fn reserve(fd: i32) -> i32 {
    let top = RESERVED_TOP.load(Relaxed);
    if fd < 3 || top <= 3 || (fd <= top && fd > top - RESERVED_SPAN) {
        return fd;
    }
    let floor = (top - RESERVED_SPAN).max(3);
    let cloexec = rawfd::cloexec_of(fd);
    for _ in 0..RESERVED_SPAN {
        let next = next_counter();
        let mut target = next.fetch_sub(1, Relaxed);
        if target < floor {
            next.store(top, Relaxed);
            target = top;
        }
        if rawfd::is_open(target) {
            continue;
        }
        // SAFETY: `target` was just seen free, and `fd` is a descriptor the program's call
        // just created, which the program has not seen yet: the runtime still owns both.
        if unsafe { rawfd::dup_onto(fd, target, cloexec) } {
            // SAFETY: as above; the program gets `target` instead.
            unsafe { rawfd::close(fd) };
            return target;
        }
    }
    fd
}

pub fn in_reserved_range(fd: i32) -> bool {
    let top = RESERVED_TOP.load(Relaxed);
    fd <= top && fd > top - RESERVED_SPAN
}

/// Move a new descriptor to `target` (the number its old counterpart had) when that is
/// free, else reserve it as usual.
pub fn place(fd: i32, target: i32) -> i32 {
    if fd == target {
        return fd;
    }
    // An update's inherited copy of the very object this call recreates (an epoll, a
    // pipe) gives its number up: the new object takes the old number, so values the
    // state transfer copies (a global holding the epoll fd) stay right.
    if target < 3 || (rawfd::is_open(target) && !crate::replay::take_inherited_number(target)) {
        return reserve(fd);
    }
    // SAFETY: `target` is free, or holds the old version's inherited copy of the object
    // this call recreates, which replay just gave up (nothing of the new version uses
    // it); `fd` was just created by the program's call, which has not returned it yet.
    if unsafe { rawfd::dup_onto(fd, target, rawfd::cloexec_of(fd)) } {
        // SAFETY: as above; the program gets `target` instead.
        unsafe { rawfd::close(fd) };
        return target;
    }
    reserve(fd)
}

/// Record one operation made from the wrapper whose frame is `fp`. errno is left as the
/// call set it.
pub fn record(call: &'static str, fp: usize, args: Vec<OpArg>, result: i64, errno: i32, fds: Vec<i32>) {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let op = RawOp {
        pid: crate::pid(),
        seq: SEQ.fetch_add(1, Relaxed),
        call,
        stack: stack::walk_vec(fp),
        args,
        result,
        errno,
        fds,
    };
    LOG.lock().push(op);
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log as the supervisor sees it: symbolized, with what startup left unaccounted for.
pub fn snapshot() -> StartupLog {
    // Copy out under the lock, symbolize without it.
    let raw: Vec<RawOp> = LOG.lock().clone();
    let ops: Vec<StartupOp> = raw
        .into_iter()
        .map(|o| StartupOp {
            pid: o.pid,
            seq: o.seq,
            call: o.call.to_string(),
            stack: symbolize::call_stack(Some(o.call), &o.stack),
            args: o.args,
            result: o.result,
            errno: o.errno,
            fds: o.fds,
        })
        .collect();
    let complete = STARTUP_DONE.load(Acquire);
    let unreplayable = if complete { unaccounted(&ops) } else { Vec::new() };
    let after_startup = if complete { after_startup(&ops) } else { AfterStartup::default() };
    StartupLog {
        complete,
        ops,
        unreplayable,
        after_startup,
        waits_at: waits_at(),
        mapped_at_startup: crate::mappings::at_startup(),
        allocated_at_startup: crate::startup_heap::blocks(),
    }
}

/// What of [`snapshot`] changes after startup, without symbolizing the operations again.
pub fn refresh() -> mcr_protocol::StartupLogRefresh {
    let ops = LOG.lock().len();
    let blocks = crate::startup_heap::blocks();
    mcr_protocol::StartupLogRefresh {
        complete: STARTUP_DONE.load(Acquire),
        ops,
        mapped_at_startup: crate::mappings::at_startup().len(),
        allocated_at_startup: blocks.len(),
        live: blocks.iter().enumerate().filter(|(_, b)| b.live).map(|(i, _)| i as u32).collect(),
        waits_at: waits_at(),
    }
}

/// Where this process's threads wait: each one's current wait when it is in one, else the
/// quiescent point its startup ended at (call-stack IDs, for an update's new version).
fn waits_at() -> Vec<String> {
    let mut ids: Vec<String> =
        threads::used().filter_map(|(_, s)| s.current_wait().or_else(|| s.startup_wait()).map(|cs| cs.id)).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// What this process holds that came after its startup, for the update's preflight.
fn after_startup(ops: &[StartupOp]) -> AfterStartup {
    let own = crate::pid();
    let startup_threads: BTreeSet<i32> = ops
        .iter()
        .filter(|o| o.call == "pthread_create" && o.pid == own && o.result > 0)
        .map(|o| o.result as i32)
        .chain([own])
        .collect();
    let (connections, lost_client) = crate::drain::connections(&startup_fds());
    AfterStartup {
        mapped: crate::mappings::snapshot(),
        forked: crate::drain::VOLATILE.load(SeqCst),
        connections,
        lost_client,
        threads: threads::created_after(&startup_threads),
        keys: crate::keys::report(),
    }
}

/// Descriptors startup accounts for: created by a recorded operation and not closed
/// since, inherited at exec or fork, 0-2, and the runtime's own.
fn known_fds(live_ops: impl Iterator<Item = (bool, Vec<i32>, Option<i32>)>) -> BTreeSet<i32> {
    let mut live = known_from_log(live_ops);
    live.extend(crate::control::reserved_fds());
    let inherited = INHERITED.lock().clone();
    live.extend(
        inherited.into_iter().filter(|(fd, was)| fd_link(*fd).as_deref() == Some(was.as_str())).map(|(fd, _)| fd),
    );
    live
}

/// 0-2 and what the recorded operations `(is a close, fds made, fd closed)` left open.
fn known_from_log(live_ops: impl IntoIterator<Item = (bool, Vec<i32>, Option<i32>)>) -> BTreeSet<i32> {
    let mut live: BTreeSet<i32> = (0..3).collect();
    for (is_close, fds, closed) in live_ops {
        if is_close {
            if let Some(fd) = closed {
                live.remove(&fd);
            }
        } else {
            live.extend(fds);
        }
    }
    live
}

fn closed_fd(args: &[OpArg]) -> Option<i32> {
    match args.first() {
        Some(OpArg::Fd(fd)) => Some(*fd),
        _ => None,
    }
}

/// The startup-accounted descriptors of this process, from the raw log.
pub fn startup_fds() -> BTreeSet<i32> {
    let raw: Vec<(bool, Vec<i32>, Option<i32>)> =
        LOG.lock().iter().map(|o| (o.call == "close", o.fds.clone(), closed_fd(&o.args))).collect();
    known_fds(raw.into_iter())
}

/// When the process completes startup: what is open now is startup's (or inherited).
pub fn note_startup_end() {
    let _internal = threads::InternalGuard::enter();
    let fds = open_fds_with_links();
    *AT_STARTUP_END.lock() = fds;
    ENDED_IN.store(crate::pid(), Release);
}

/// The process whose startup end AT_STARTUP_END holds (a fork child has its parent's
/// until its own startup ends).
static ENDED_IN: AtomicI32 = AtomicI32::new(0);

/// The descriptors this process made after its startup and still holds, other than
/// client connections (`client`, which the update moves as such): what no startup of a
/// new version recreates. Read from the program's descriptor table.
pub fn made_after_startup(client: impl Fn(i32) -> bool) -> Vec<i32> {
    let mut open = open_fds_with_links();
    if ENDED_IN.load(Acquire) != crate::pid() {
        // Startup is still ending here (a process an update's respawn handler forked can
        // stay in its dirty-tracking arming): what that arming holds open is the
        // runtime's, not the program's.
        open.retain(|(_, link)| !crate::dirty::is_arming_descriptor(link));
    }
    let at_end = AT_STARTUP_END.lock().clone();
    not_from_startup(&open, &startup_fds(), &at_end, client)
}

/// Of the descriptors `open` now (number, link), those startup does not account for:
/// neither `known` (a recorded startup operation made it, inherited, 0-2, the runtime's)
/// nor open as the same object when startup ended (`at_end`), nor a client connection (`client`).
fn not_from_startup(
    open: &[(i32, String)],
    known: &BTreeSet<i32>,
    at_end: &[(i32, String)],
    client: impl Fn(i32) -> bool,
) -> Vec<i32> {
    let mut out: Vec<i32> = open
        .iter()
        .filter(|(fd, link)| !known.contains(fd) && !client(*fd) && !at_end.iter().any(|(f, l)| f == fd && l == link))
        .map(|(fd, _)| *fd)
        .collect();
    out.sort_unstable();
    out
}

/// The program's open descriptors with their links.
fn open_fds_with_links() -> Vec<(i32, String)> {
    open_fds().into_iter().filter_map(|fd| Some((fd, fd_link(fd)?))).collect()
}

/// Descriptors open now that no recorded operation created (0-2 and the runtime's own
/// excepted). Computed against the live fd table, so call it at (or soon after) startup
/// completion.
fn unaccounted(ops: &[StartupOp]) -> Vec<String> {
    let known = known_fds(ops.iter().map(|o| (o.call == "close", o.fds.clone(), closed_fd(&o.args))));
    let mut out = Vec::new();
    {
        let mut fds = crate::procdir::numbers(c"/proc/self/fd");
        fds.sort_unstable();
        for fd in fds {
            if known.contains(&fd) {
                continue;
            }
            let target =
                std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default();
            if target.is_empty() {
                continue; // closed since
            }
            out.push(format!(
                "fd {fd} -> {target}: not created by an operation mcr records (libc-internal or not interposed)"
            ));
        }
    }
    out
}

fn fd_link(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

fn open_fds() -> Vec<i32> {
    crate::procdir::numbers(c"/proc/self/fd")
}

/// At exec (constructor) and fork: whatever is open now was inherited.
pub fn note_inherited() {
    let _internal = threads::InternalGuard::enter();
    let fds = open_fds_with_links();
    *INHERITED.lock() = fds;
}

/// A fork child's log starts as its parent's (the objects it inherited were made by
/// those operations, tagged with the parent's PID): a daemon's first process exits, but
/// the listening sockets it created live on in its children, and so does their record.
pub fn reset_after_fork() {
    LOG.force_unlock();
    INHERITED.force_unlock();
    AT_STARTUP_END.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(list: &[(i32, &str)]) -> Vec<(i32, String)> {
        list.iter().map(|(fd, l)| (*fd, l.to_string())).collect()
    }

    #[test]
    fn startup_descriptors_closed_ones_and_the_runtimes_are_not_post_startup() {
        // Startup made 1000 (socket) and 999 (pipe, closed again); 0-2 are always startup's.
        let known =
            known_from_log(vec![(false, vec![1000], None), (false, vec![999, 998], None), (true, vec![], Some(999))]);
        assert!(known.contains(&1000) && known.contains(&998) && !known.contains(&999));
        let now = open(&[
            (0, "/dev/null"),
            (1000, "socket:[1]"),
            (998, "pipe:[2]"),
            (3, "pipe:[7]"),
            (4, "pipe:[7]"),
            (5, "socket:[8]"),
            (999, "anon_inode:[eventfd]"),
        ]);
        let client = |fd| fd == 5;
        assert_eq!(not_from_startup(&now, &known, &[], client), vec![3, 4, 999]);
    }

    #[test]
    fn what_was_open_as_the_same_object_when_startup_ended_is_startups() {
        let known: BTreeSet<i32> = (0..3).collect();
        let at_end = open(&[(3, "/usr/share/zoneinfo/UTC"), (4, "pipe:[10]")]);
        // 3 is the same file still; 4 was closed after startup and the number reused.
        let now = open(&[(3, "/usr/share/zoneinfo/UTC"), (4, "pipe:[11]"), (6, "/tmp/f")]);
        assert_eq!(not_from_startup(&now, &known, &at_end, |_| false), vec![4, 6]);
    }
}
