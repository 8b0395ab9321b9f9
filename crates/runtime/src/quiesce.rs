//! Quiescence (paper §4): the barrier threads park at, the decision whether a blocking
//! call is a quiescent point, startup-completion detection, and the controller that
//! brings every thread of the process to its quiescent point.
//!
//! Steady state costs a few plain stores and one atomic load per wrapped call: no
//! syscall, no clock read for untimed calls. All the work happens when `QUIESCING` is set
//! (or before startup completes).

use crate::calls::Call;
use crate::threads::{self, Slot, IN_CALL, PARKED, RUNNING, TID_PENDING};
use crate::{errno, futex, stack, symbolize};
use mcr_protocol::{CallStack, Laggard};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub static QUIESCING: AtomicBool = AtomicBool::new(false);
/// Bumped on every resume; parked threads sleep on it.
static RESUME_GEN: AtomicU32 = AtomicU32::new(0);
/// Bumped on every park; the controller sleeps on it.
static PARK_EVENTS: AtomicU32 = AtomicU32::new(0);

pub static STARTUP_DONE: AtomicBool = AtomicBool::new(false);

/// How many waits that return at once a process's startup goes past before the next one
/// completes it anyway: setup makes a few (nginx's epoll self-test, httpd's read of
/// /dev/null); a server started under load, whose event loop finds clients waiting each
/// time, would otherwise never complete its startup.
const READY_WAITS: u32 = 16;
static READY_WAITS_LEFT: AtomicU32 = AtomicU32::new(READY_WAITS);

/// Whether startup may go past one more wait that returns at once (counted).
pub fn may_pass_a_ready_wait() -> bool {
    READY_WAITS_LEFT.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
}
/// Nanoseconds from the constructor to startup completion.
pub static STARTUP_NS: AtomicU64 = AtomicU64::new(0);

/// Quiescent-point IDs from the profile; `None`: the default rule.
static PROFILE: OnceLock<Option<HashSet<u64>>> = OnceLock::new();

/// Whether the hot path may use the asymmetric fence (membarrier registered).
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);

/// A wrapper publishes "I am in a call" and then reads QUIESCING; the controller sets
/// QUIESCING and then reads every thread's state. One side must fence. Instead of a
/// locked instruction on every wrapped call, the controller (rarely) makes every running
/// thread fence with membarrier(PRIVATE_EXPEDITED); the hot path keeps a compiler fence.
pub fn init_asymmetric_fence() {
    // SAFETY: membarrier registration for this process takes no pointer.
    let ok = unsafe {
        crate::sys!(libc::SYS_membarrier, 1 << 4 /* REGISTER_PRIVATE_EXPEDITED */, 0, 0)
    } == 0;
    ASYMMETRIC.store(ok, SeqCst);
}

fn fence_all_threads() {
    if ASYMMETRIC.load(SeqCst) {
        // SAFETY: MEMBARRIER_CMD_PRIVATE_EXPEDITED takes no pointer.
        unsafe { crate::sys!(libc::SYS_membarrier, 1 << 3, 0, 0) };
    }
}

/// Publish that the thread entered a wrapped call (ordered before its next load of
/// QUIESCING).
#[inline(always)]
pub fn publish_in_call(slot: &Slot) {
    if ASYMMETRIC.load(Relaxed) {
        slot.state.store(IN_CALL, Relaxed);
        std::sync::atomic::compiler_fence(SeqCst);
    } else {
        slot.state.store(IN_CALL, SeqCst);
    }
}

/// Whether a wrapped call must take the slow path (quiescing, startup not complete, or a
/// resume handler waiting for the main thread's next quiescent point).
#[inline(always)]
pub fn slow_path_needed() -> bool {
    QUIESCING.load(Relaxed) || !STARTUP_DONE.load(Relaxed) || crate::resume::DEFERRED.load(Relaxed) != 0
}

/// An update's new version, until its first resume: its threads park where the old
/// version's state will be put under them.
static HELD_FOR_UPDATE: AtomicBool = AtomicBool::new(false);

/// Start held: threads park at their first quiescent point (an update's new version).
pub fn hold_from_start() {
    HELD_FOR_UPDATE.store(true, SeqCst);
    QUIESCING.store(true, SeqCst);
}

/// Whether a thread that parks now wakes up on another state than the one it computed its
/// call's arguments from (an update's new version, held since its start).
pub fn held_for_update() -> bool {
    HELD_FOR_UPDATE.load(SeqCst)
}

pub fn set_profile(ids: Option<HashSet<u64>>) {
    let _ = PROFILE.set(ids);
}

fn profile() -> Option<&'static HashSet<u64>> {
    PROFILE.get().and_then(Option::as_ref)
}

fn fd_is_blocking(fd: i32) -> bool {
    if crate::control::is_control_thread(threads::gettid()) {
        // The control thread has a descriptor table of its own: ask the kernel about the
        // program's (the thread group's) descriptor, in /proc or, where there is none (a
        // process that chroot'ed), through a borrowed copy.
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|info| {
                info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
            })
            .or_else(|| crate::borrow::with_program_fd(fd, crate::rawfd::status_flags).flatten().map(i64::from));
        return flags.is_some_and(|fl| fl & libc::O_NONBLOCK as i64 == 0);
    }
    crate::rawfd::status_flags(fd).is_some_and(|fl| fl & libc::O_NONBLOCK == 0)
}

/// Whether the program thread in `slot` is reading something that ends by itself: a
/// regular file, a directory or a block device. Such a read says nothing about where the
/// thread waits, so it does not complete the process's startup: counted, a shell reading
/// its script completed startup before `exec server` even ran (mcr run --detach returned
/// with the shell, and the server was then found unregistered). It stays a place to park
/// (a respawned process is held in a read of a descriptor fstat calls a regular file).
fn reads_what_ends_by_itself(slot: &Slot) -> bool {
    let call = Call::from_index(slot.call.load(Acquire));
    call.depends_on_fd()
        && crate::rawfd::file_type(slot.object.load(Acquire) as i32)
            .is_some_and(|t| matches!(t, libc::S_IFREG | libc::S_IFDIR | libc::S_IFBLK))
}

/// Whether the wrapped call `slot` is in is a quiescent point. Profile: by call-stack ID.
/// Default: every wrapped call, except reads on non-blocking fds.
pub fn is_quiescent_point(slot: &Slot) -> bool {
    let call = Call::from_index(slot.call.load(Acquire));
    match profile() {
        Some(ids) => {
            let addrs = stack::walk_vec(slot.frame.load(Acquire));
            let cs = symbolize::call_stack(Some(call.name()), &addrs);
            mcr_callstack::parse_id(&cs.id).is_some_and(|id| ids.contains(&id))
        }
        None => !call.depends_on_fd() || fd_is_blocking(slot.object.load(Acquire) as i32),
    }
}

/// Called by a thread entering a wrapped call, only while `QUIESCING` is set or startup
/// is not complete. Returns whether the call is a quiescent point.
pub fn on_enter_slow(slot: &Slot) -> bool {
    let qp = {
        let _internal = threads::InternalGuard::enter();
        let _errno = errno::ErrnoGuard::save();
        let qp = is_quiescent_point(slot);
        if qp && !STARTUP_DONE.load(Acquire) && !reads_what_ends_by_itself(slot) {
            note_startup_qp(slot);
        }
        qp
    };
    // A resume handler that asked to be called again, at the main thread's next quiescent
    // point (not in a condition wait: the program holds the mutex there).
    if qp && !QUIESCING.load(Acquire) && !Call::from_index(slot.call.load(Acquire)).is_condvar() {
        crate::resume::run_deferred(slot);
    }
    qp
}

fn note_startup_qp(slot: &Slot) {
    if !slot.reached_qp.load(Relaxed) {
        crate::keys::on_first_quiescent_point(slot);
        slot.qp_stack.store(&stack::walk_vec(slot.frame.load(Relaxed)));
        slot.qp_call.store(slot.call.load(Relaxed), Relaxed);
        slot.reached_qp.store(true, Release);
    }
    complete_startup_if_all_reached();
}

/// A thread left the table (it exited): if it was the last one that had not reached a
/// quiescent point, the process's startup is complete now. The others, blocked at theirs,
/// would not look again (seen under load: httpd's thread that starts the workers exits
/// before it ever waits, and the process never completed startup).
pub fn thread_left() {
    // A process whose last tracked thread leaves is exiting, not starting.
    if crate::is_active() && !STARTUP_DONE.load(Acquire) && threads::used().next().is_some() {
        let _internal = threads::InternalGuard::enter();
        let _errno = errno::ErrnoGuard::save();
        complete_startup_if_all_reached();
    }
}

fn complete_startup_if_all_reached() {
    let all = startup_complete(threads::used().map(|(_, s)| (s.tid.load(Acquire), s.reached_qp.load(Acquire))));
    if all && !STARTUP_DONE.swap(true, AcqRel) {
        if let Some(conflict) = crate::replay::finish_startup() {
            crate::replay::fail(conflict);
        }
        STARTUP_NS.store(crate::since_start_ns(), Release);
        crate::attributes::snapshot_at_startup();
        // Armed before the supervisor hears of it: from then on every write is counted.
        crate::dirty::arm();
        // After arming: what the runtime opened for it is startup's too.
        crate::startup_log::note_startup_end();
        crate::control::notify_startup_complete();
    }
}

/// Whether a process whose threads are `(tid, reached a quiescent point)` has completed
/// startup: every thread reached one, and none is still being created (a thread
/// pthread_create reserved a slot for, not started yet, has its startup ahead of it).
fn startup_complete(mut threads: impl Iterator<Item = (i32, bool)>) -> bool {
    threads.all(|(tid, reached)| tid != TID_PENDING && reached)
}

/// Hold the calling thread at the barrier until resume. The program's signal handlers
/// still run meanwhile (the futex wait is interruptible); errno is preserved, also across
/// the wait for the resume handlers.
pub fn park(slot: &Slot) {
    let _errno = errno::ErrnoGuard::save();
    // Blocks parked in the thread's cache are free, but its allocator's metadata counts
    // them live until they go back to their spans: the update lists the heap from it.
    crate::heap::flush_own_cache();
    crate::keys::on_park(slot);
    slot.state.store(PARKED, SeqCst);
    PARK_EVENTS.fetch_add(1, SeqCst);
    futex::wake(&PARK_EVENTS, 1);
    loop {
        let gen = RESUME_GEN.load(SeqCst);
        if !QUIESCING.load(SeqCst) {
            break;
        }
        if crate::resume::respawn_due(slot) {
            crate::resume::run_respawn(slot);
            continue;
        }
        futex::wait(&RESUME_GEN, gen, None);
    }
    slot.state.store(IN_CALL, SeqCst);
    crate::attributes::on_unpark(slot.is_main.load(Acquire));
    crate::keys::on_unpark(slot.is_main.load(Acquire));
    crate::resume::after_park(slot);
}

/// Wake the parked threads without resuming them (they look for work, then park again).
pub fn wake_parked() {
    RESUME_GEN.fetch_add(1, SeqCst);
    futex::wake(&RESUME_GEN, i32::MAX);
}

/// In a process a respawn handler just forked (its main thread parked, held until
/// commit): it has no quiescent point to reach, so its startup is complete now, and its
/// control thread starts for the update to talk to it.
pub fn respawned_child_ready() {
    STARTUP_NS.store(crate::since_start_ns(), Release);
    crate::attributes::snapshot_at_startup();
    STARTUP_DONE.store(true, SeqCst);
    crate::dirty::arm();
    crate::control::ensure_started();
    // What the runtime opened for the two above is startup's too.
    crate::startup_log::note_startup_end();
    crate::control::notify_startup_complete();
}

pub fn resume() {
    if HELD_FOR_UPDATE.swap(false, SeqCst) {
        // The update moved what it moves: the addresses kept free for it are the
        // program's again.
        crate::held_ranges::release();
        crate::placed_blocks::forget_held();
    }
    QUIESCING.store(false, SeqCst);
    RESUME_GEN.fetch_add(1, SeqCst);
    futex::wake(&RESUME_GEN, i32::MAX);
}

fn kick(slot: &Slot) {
    let call = Call::from_index(slot.call.load(Acquire));
    if call.is_condvar() {
        // Condition variables do not return on signals: wake the waiters instead (a
        // spurious wakeup, which POSIX allows and correct programs loop on).
        slot.kicked.store(true, SeqCst);
        let cond = slot.object.load(Acquire) as *mut libc::pthread_cond_t;
        if !cond.is_null() {
            // SAFETY: the condition variable the thread published on entering its wait, which
            // it is in (the caller saw IN_CALL): POSIX forbids destroying one a thread waits
            // on. The thread may leave the wait between that look and this broadcast; a
            // program that then destroys and frees the variable at once races with us, a
            // window this accepts (the broadcast of a live one is only a spurious wakeup).
            unsafe { crate::real::pthread_cond_broadcast()(cond) };
        }
    } else {
        // The kick is a real-time signal, and those queue: one per send. A thread that
        // cannot take it for a while (stopped, or not scheduled on a loaded machine) would
        // collect one every REKICK_AFTER, which the kernel charges to its user's pending
        // signal limit (RLIMIT_SIGPENDING, shared by all that user's processes: exhausted,
        // every process of the user fails to queue signals) and which it then has to
        // handle one by one before it gets on. One kick in flight is enough: its handler
        // allows the next (for the race where it lands before the call blocks).
        let tid = slot.tid.load(Acquire);
        if tid > 0 && !slot.kick_in_flight.swap(true, SeqCst) {
            // SAFETY: signalling a thread of our own process.
            let sent = unsafe { crate::sys!(libc::SYS_tgkill, libc::getpid(), tid, crate::signals::kick_signal()) };
            if sent != 0 {
                slot.kick_in_flight.store(false, SeqCst);
            }
        }
    }
}

/// Whether thread `tid` of this process lives. Asked of the kernel with a null signal,
/// not of /proc: a process that `chroot`ed has no /proc, and every thread read as dead
/// there (its slots were freed, and a quiesce then found nobody to park and reported the
/// running process quiesced).
fn thread_alive(tid: i32) -> bool {
    // SAFETY: tgkill with signal 0 delivers nothing; it only checks that the thread exists.
    tid > 0 && unsafe { crate::sys!(libc::SYS_tgkill, crate::pid(), tid, 0) } == 0
}

/// Threads that died without telling us (pthread_cancel, raw exit) free their slot.
fn prune_dead() {
    for (i, s) in threads::used() {
        let tid = s.tid.load(Acquire);
        if tid != TID_PENDING && !thread_alive(tid) {
            threads::release(i as u32);
        }
    }
}

pub struct Outcome {
    pub elapsed: Duration,
    pub threads: usize,
    pub laggards: Vec<Laggard>,
}

/// How often a quiesce looks for threads that died without telling.
const PRUNE_EVERY: Duration = Duration::from_millis(50);
/// How long a quiesce waits for a thread to park before kicking again: a kick can land
/// in the window between a thread's check and its system call, and be lost there.
const REKICK_AFTER: Duration = Duration::from_micros(200);

/// What a quiesce must do about one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Parked at its quiescent point.
    Nothing,
    /// Blocked in a wrapped call that is a quiescent point: kick it out of the call, and
    /// it parks.
    Kick,
    /// Running, not started yet, or blocked in a call that is not a quiescent point: wait
    /// until it reaches one.
    Wait,
}

/// What a quiesce must do about a thread in `state`; `at_quiescent_point` is asked only
/// for a thread blocked in a call (it may walk and symbolize its stack).
fn need(state: u32, at_quiescent_point: impl FnOnce() -> bool) -> Need {
    match state {
        PARKED => Need::Nothing,
        IN_CALL if at_quiescent_point() => Need::Kick,
        _ => Need::Wait,
    }
}

/// Where a quiesce stands after a look at the thread table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Every thread is parked.
    Quiesced,
    /// Some are not, and the time is up: release them all.
    TimedOut,
    KeepWaiting,
}

/// `waiting` threads are not parked yet, `elapsed` into a quiesce allowed `timeout`. A
/// process found quiescent at the deadline is quiescent.
fn verdict(waiting: usize, elapsed: Duration, timeout: Duration) -> Verdict {
    if waiting == 0 {
        Verdict::Quiesced
    } else if elapsed >= timeout {
        Verdict::TimedOut
    } else {
        Verdict::KeepWaiting
    }
}

/// Bring every thread to a quiescent point within `timeout`. On failure every thread is
/// released again and the laggards say where they are, a report done in time for the
/// asker's `answer_by_ns` (CLOCK_MONOTONIC), if it set one.
pub fn quiesce(timeout: Duration, answer_by_ns: Option<u64>) -> Outcome {
    let t0 = Instant::now();
    prune_dead();
    QUIESCING.store(true, SeqCst);
    fence_all_threads();
    let mut last_prune = Instant::now();
    // What the threads were doing a while into the quiesce: a failed one's report says
    // what each laggard did since (ran, waited for a CPU, bypassed quiescence).
    let mut activity: Option<Vec<Activity>> = None;
    loop {
        let mut waiting = 0usize;
        let mut total = 0usize;
        for (_, s) in threads::used() {
            total += 1;
            match need(s.state.load(SeqCst), || is_quiescent_point(s)) {
                Need::Nothing => {}
                Need::Kick => {
                    waiting += 1;
                    kick(s);
                }
                Need::Wait => waiting += 1,
            }
        }
        match verdict(waiting, t0.elapsed(), timeout) {
            Verdict::Quiesced => {
                // What the controller itself (an update's allocations) and the shared path
                // hold back counts as live too: the update lists the heap from now on.
                crate::heap::flush_own_cache();
                crate::heap::flush_shared_cache();
                return Outcome { elapsed: t0.elapsed(), threads: total, laggards: Vec::new() };
            }
            Verdict::TimedOut => {
                let report_by = Instant::now() + report_time(answer_by_ns, crate::monotonic_ns());
                let laggards = describe_laggards(activity.as_deref(), report_by);
                resume();
                return Outcome { elapsed: t0.elapsed(), threads: total, laggards };
            }
            Verdict::KeepWaiting => {}
        }
        if activity.is_none() && t0.elapsed() >= timeout / 5 {
            activity = Some(threads::used().map(|(_, s)| Activity::now(s)).collect());
        }
        if last_prune.elapsed() > PRUNE_EVERY {
            prune_dead();
            last_prune = Instant::now();
        }
        // Sleep until a thread parks, or kick again.
        let ev = PARK_EVENTS.load(SeqCst);
        futex::wait(&PARK_EVENTS, ev, Some(REKICK_AFTER));
    }
}

/// One thread's counters at one moment of a quiesce.
struct Activity {
    tid: i32,
    at: Instant,
    sched: Option<mcr_procfs::task::SchedTimes>,
    untracked_internal: u32,
    untracked_in_handler: u32,
    calls_entered: u32,
    call_restarts: u32,
    accept_gate_passes: u32,
    parks: u32,
}

impl Activity {
    fn now(s: &Slot) -> Self {
        let tid = s.tid.load(Acquire);
        Self {
            tid,
            at: Instant::now(),
            sched: mcr_procfs::task::sched_times(mcr_procfs::Process::Current, tid).ok(),
            untracked_internal: s.untracked_internal.load(Relaxed),
            untracked_in_handler: s.untracked_in_handler.load(Relaxed),
            calls_entered: s.calls_entered.load(Relaxed),
            call_restarts: s.call_restarts.load(Relaxed),
            accept_gate_passes: s.accept_gate_passes.load(Relaxed),
            parks: PARK_EVENTS.load(Relaxed),
        }
    }

    /// What the thread did from `self` to `later`, for a laggard's report.
    fn since(&self, later: &Activity) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut out = format!("; in the last {} ms", later.at.duration_since(self.at).as_millis());
        if let (Some(a), Some(b)) = (self.sched, later.sched) {
            out.push_str(&format!(
                " it ran {:.1} ms and waited {:.1} ms for a CPU",
                ms(b.on_cpu_ns.saturating_sub(a.on_cpu_ns)),
                ms(b.waiting_for_cpu_ns.saturating_sub(a.waiting_for_cpu_ns))
            ));
        }
        out.push_str(&format!(
            ", entered {} wrapped calls, restarted {} after a kick, passed the drain's accept gate {} times \
             (threads of the process parked {} times meanwhile)",
            later.calls_entered.wrapping_sub(self.calls_entered),
            later.call_restarts.wrapping_sub(self.call_restarts),
            later.accept_gate_passes.wrapping_sub(self.accept_gate_passes),
            later.parks.wrapping_sub(self.parks)
        ));
        let status = std::fs::read_to_string(format!("/proc/self/task/{}/status", self.tid)).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map_or("?", str::trim).to_string();
        out.push_str(&format!(
            "; kernel state {}, context switches {} voluntary, {} not",
            field("State:"),
            field("voluntary_ctxt_switches:"),
            field("nonvoluntary_ctxt_switches:")
        ));
        let internal = later.untracked_internal.wrapping_sub(self.untracked_internal);
        let in_handler = later.untracked_in_handler.wrapping_sub(self.untracked_in_handler);
        if internal + in_handler > 0 {
            out.push_str(&format!(
                ", and made {internal} wrapped calls marked runtime-internal and {in_handler} from a signal \
                 handler (those bypass quiescence)"
            ));
        }
        out
    }
}

/// How long a failed quiesce's report may take, from `now_ns`, for its answer to reach
/// the asker by `answer_by_ns` (both CLOCK_MONOTONIC): what is left until then, less what
/// sending it takes. The report waits for threads (a probe's answer, a look at a thread
/// between two system calls), and on a loaded machine every such wait is a wait for a CPU:
/// unbounded, a report came after the supervisor had given up on the process, and said
/// nothing of its laggards.
fn report_time(answer_by_ns: Option<u64>, now_ns: u64) -> Duration {
    match answer_by_ns {
        Some(by) => Duration::from_nanos(by.saturating_sub(now_ns)).saturating_sub(REPORT_SEND_MARGIN),
        None => REPORT_TIME_UNASKED,
    }
}

/// What a report leaves, before the asker's deadline, for finishing and sending itself
/// (symbolizing stacks, the reply's way to the supervisor on a loaded machine).
const REPORT_SEND_MARGIN: Duration = Duration::from_millis(200);
/// How long a report may take when the asker set no deadline.
const REPORT_TIME_UNASKED: Duration = Duration::from_millis(250);

/// The laggards, each with why it lags and where it is, found by `report_by`. The threads
/// running outside any wrapped call are probed all at once, and their answers awaited
/// together: one that does not answer (not scheduled meanwhile) costs the others no time.
fn describe_laggards(earlier: Option<&[Activity]>, report_by: Instant) -> Vec<Laggard> {
    let pid = crate::pid();
    // Each laggard so far, its slot, and the probe of one running outside any call.
    let mut found: Vec<(Laggard, &Slot, Option<Probe>)> = Vec::new();
    for (_, s) in threads::used() {
        let tid = s.tid.load(Acquire);
        let state = s.state.load(SeqCst);
        if state == PARKED {
            continue;
        }
        let call = Call::from_index(s.call.load(Acquire));
        let (reason, stack, probe) = if tid == TID_PENDING {
            ("created by pthread_create but never started".to_string(), None, None)
        } else if state == IN_CALL {
            let st = symbolize::call_stack(Some(call.name()), &stack::walk_vec(s.frame.load(Acquire)));
            let qp = is_quiescent_point(s);
            let mut reason = blocked_reason(call, qp);
            if qp {
                reason.push_str(&kick_state(tid, s));
            }
            (reason, Some(st), None)
        } else {
            // Looked at before the probe, which interrupts a system call the thread is in;
            // for half the time left at most, the other half is the probe's.
            let now = Instant::now();
            let (reason, stack) = describe_running(tid, now + report_by.saturating_duration_since(now) / 2);
            (reason, stack, Some(Probe { sent: send_probe(tid, s), last_call: call }))
        };
        found.push((Laggard { pid, tid, reason, stack }, s, probe));
    }
    let mut out = Vec::new();
    for (mut laggard, s, probe) in found {
        if let Some(Probe { sent, last_call }) = probe {
            let probed = sent.and_then(|seq| probe_answer(s, seq, report_by));
            let at = probed.as_ref().map_or(String::new(), |st| format!(" at {}", st.summary(8)));
            laggard.reason = format!("{}{at}; its last wrapped call was {}", laggard.reason, last_call.name());
            laggard.stack = probed.or(laggard.stack);
        }
        if let Some(before) = earlier.and_then(|e| e.iter().find(|a| a.tid == laggard.tid)) {
            laggard.reason.push_str(&before.since(&Activity::now(s)));
        }
        out.push(laggard);
    }
    // Threads of the process the runtime never saw (made with raw clone, or that never
    // made a wrapped call) cannot be parked either.
    let known: HashSet<i32> = threads::used().map(|(_, s)| s.tid.load(Acquire)).collect();
    let tasks = crate::procdir::numbers(c"/proc/self/task");
    let runtimes = |tid| crate::control::is_control_thread(tid) || crate::profiling::is_sampler_thread(tid);
    for tid in unseen_threads(&tasks, &known, runtimes) {
        let (reason, stack) = describe_running(tid, report_by);
        out.push(Laggard { pid, tid, reason: format!("{reason}; never made a wrapped call"), stack });
    }
    out
}

/// The probe of a laggard running outside any wrapped call.
struct Probe {
    /// The probe count to wait past; None: no probe could be sent.
    sent: Option<u32>,
    last_call: Call,
}

/// Ask a thread that runs outside any wrapped call where it is: a kick marked as a probe,
/// whose handler records the program counter and frame pointer it interrupted (and
/// nothing else). Returns the probe count to wait past ([`probe_answer`]), None when no
/// probe could be sent. A probe an earlier report sent and the thread has not taken yet
/// (it got no CPU since) is the one to wait for: it stays marked until taken, so a late
/// handler takes it for a probe, not for a kick.
fn send_probe(tid: i32, slot: &Slot) -> Option<u32> {
    let sig = crate::signals::kick_signal();
    // Only where the kick's disposition is ours: elsewhere (a sandboxed process, which
    // never installed it) the signal's default action would end the process.
    if tid <= 0 || sig <= 0 || crate::is_sandboxed() || crate::signals::kick_handler_installed() != Some(true) {
        return None;
    }
    // Read before the mark: the handler clears the mark before it counts.
    let seq = slot.probe_seq.load(SeqCst);
    if slot.probe.load(SeqCst) {
        return Some(seq);
    }
    if slot.kick_in_flight.swap(true, SeqCst) {
        return None;
    }
    // No signal in flight now: nothing counts meanwhile.
    let seq = slot.probe_seq.load(SeqCst);
    slot.probe.store(true, SeqCst);
    // SAFETY: signalling a thread of our own process.
    if unsafe { crate::sys!(libc::SYS_tgkill, libc::getpid(), tid, sig) } != 0 {
        slot.probe.store(false, SeqCst);
        slot.kick_in_flight.store(false, SeqCst);
        return None;
    }
    Some(seq)
}

/// The call stack where the thread probed past count `seq` was, walked from the registers
/// its handler recorded; None when it did not take the probe by `until`. A running thread
/// takes it at its next return to user mode, which on a loaded machine waits for a CPU
/// (more than 20 ms, seen); the report's own deadline is the bound.
fn probe_answer(slot: &Slot, seq: u32, until: Instant) -> Option<CallStack> {
    while slot.probe_seq.load(SeqCst) == seq && Instant::now() < until {
        std::thread::sleep(PROBE_POLL);
    }
    if slot.probe_seq.load(SeqCst) == seq {
        return None;
    }
    let pc = slot.probe_pc.load(SeqCst);
    let mut raw = vec![pc];
    raw.extend(stack::walk_vec(slot.probe_fp.load(SeqCst)));
    Some(symbolize::call_stack(None, &raw))
}

/// How often [`probe_answer`] looks whether the thread took the probe.
const PROBE_POLL: Duration = Duration::from_millis(1);

/// Where the kick to a thread that did not react stands, for the report: whether the
/// thread blocks the kick signal, whether one is pending for it, whether the runtime
/// thinks one is in flight.
fn kick_state(tid: i32, slot: &Slot) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    let bit = |field: &str| {
        let mask =
            status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        let k = crate::signals::kick_signal();
        mask.map(|m| k > 0 && m & (1u64 << (k - 1)) != 0)
    };
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    // A kick pending and not blocked is taken at the thread's next return to user mode:
    // the kernel state (and where in the kernel it waits) says why that is not happening.
    let kernel_state = status.lines().find_map(|l| l.strip_prefix("State:")).map_or("unknown", str::trim).to_string();
    let wchan = std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).unwrap_or_default();
    format!(
        " (kick signal blocked: {}, pending: {}, in flight: {}, handled by mcr: {}; kernel state {kernel_state}, \
         waiting in {})",
        yes_no(bit("SigBlk:")),
        yes_no(bit("SigPnd:")),
        if slot.kick_in_flight.load(Acquire) { "yes" } else { "no" },
        yes_no(crate::signals::kick_handler_installed()),
        if wchan.trim().is_empty() || wchan.trim() == "0" { "-" } else { wchan.trim() }
    )
}

/// Why a thread blocked in `call` has not parked.
fn blocked_reason(call: Call, at_quiescent_point: bool) -> String {
    if at_quiescent_point {
        format!("blocked in {} (a quiescent point) and did not react to the kick", call.name())
    } else {
        format!("blocked in {} (not a quiescent point: waiting for it to return)", call.name())
    }
}

/// The threads among `tasks` (the process's, from /proc) that the thread table does not
/// know (`known`) and that are not the runtime's own.
fn unseen_threads(tasks: &[i32], known: &HashSet<i32>, is_runtime_thread: impl Fn(i32) -> bool) -> Vec<i32> {
    tasks.iter().copied().filter(|tid| !known.contains(tid) && !is_runtime_thread(*tid)).collect()
}

/// Where a thread outside any wrapped call is: the kernel tells its system call and
/// program counter in /proc. Looks again until `until` at the latest.
fn describe_running(tid: i32, until: Instant) -> (String, Option<CallStack>) {
    let read = || std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
    let mut text = read();
    // A thread that loops on a system call mcr does not wrap (a raw nanosleep) is runnable
    // for a moment between two calls, and reads as running then (often, on a loaded
    // machine): look again a few times for the call it keeps making.
    for _ in 1..RUNNING_LOOKS {
        if !text.starts_with("running") || Instant::now() >= until {
            break;
        }
        std::thread::sleep(RUNNING_LOOK_GAP);
        text = read();
    }
    let (reason, pc) = running_state(&text);
    let stack = pc.map(|pc| CallStack { id: String::new(), frames: vec![symbolize::frame_at(pc)] });
    (reason, stack)
}

/// How often, and how far apart, [`describe_running`] looks at a thread that reads as
/// running (~10 ms per laggard, only once a quiesce has failed; each gap is a wait for a
/// CPU too, on a loaded machine).
const RUNNING_LOOKS: u32 = 10;
const RUNNING_LOOK_GAP: Duration = Duration::from_millis(1);

/// A thread outside any wrapped call, from its /proc/…/syscall text ("running", or the
/// system call number, its arguments, stack pointer and program counter): why it is not
/// parked, and its program counter when known.
fn running_state(syscall: &str) -> (String, Option<usize>) {
    let fields: Vec<&str> = syscall.split_whitespace().collect();
    let pc = fields.last().and_then(|s| usize::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    let reason = match fields.first() {
        Some(&"running") => "running outside any wrapped call".to_string(),
        Some(nr) if nr.parse::<i64>().is_ok() => {
            format!("in system call {nr}, which mcr does not wrap (not a quiescent point)")
        }
        _ => "running outside any wrapped call".to_string(),
    };
    (reason, pc)
}

pub fn is_quiesced() -> bool {
    QUIESCING.load(SeqCst) && all_parked(threads::used().map(|(_, s)| s.state.load(SeqCst)))
}

/// Whether threads in these states are all parked (a process with none is quiescent).
fn all_parked(mut states: impl Iterator<Item = u32>) -> bool {
    states.all(|st| st == PARKED)
}

pub fn reset_after_fork() {
    // An update's new version holds every process at its first quiescent point until
    // commit, fork children included.
    QUIESCING.store(crate::replay::active(), SeqCst);
    STARTUP_DONE.store(false, SeqCst);
    READY_WAITS_LEFT.store(READY_WAITS, SeqCst);
    // membarrier registration belongs to the parent's address space.
    init_asymmetric_fence();
}

/// For the thread's own use after an EINTR: was it our kick, not the program's signal?
pub fn take_kick(slot: &Slot, local: &threads::Local, program_signals_at_entry: u32) -> bool {
    slot.kicked.swap(false, SeqCst) && local.program_signals() == program_signals_at_entry
}

pub fn state_running(slot: &Slot) {
    slot.state.store(RUNNING, Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_completes_when_every_started_thread_reached_a_quiescent_point() {
        assert!(startup_complete([(10, true), (11, true)].into_iter()));
        assert!(!startup_complete([(10, true), (11, false)].into_iter()), "a thread still starting up");
        assert!(
            !startup_complete([(10, true), (TID_PENDING, true)].into_iter()),
            "a thread pthread_create has not started yet has its startup ahead"
        );
        assert!(startup_complete(core::iter::empty()), "nothing left to wait for");
    }

    #[test]
    fn only_threads_blocked_at_a_quiescent_point_are_kicked() {
        let asked = core::cell::Cell::new(false);
        let qp = |answer: bool| {
            asked.set(false);
            let asked = &asked;
            move || {
                asked.set(true);
                answer
            }
        };
        assert_eq!(need(PARKED, qp(true)), Need::Nothing);
        assert!(!asked.get(), "a parked thread's stack is not walked");
        assert_eq!(need(IN_CALL, qp(true)), Need::Kick);
        assert_eq!(need(IN_CALL, qp(false)), Need::Wait, "a read mid-request: wait for it to return");
        assert_eq!(need(RUNNING, qp(true)), Need::Wait, "running code reaches its next call by itself");
        assert!(!asked.get(), "a running thread is not asked about");
    }

    #[test]
    fn a_quiesce_ends_when_nobody_waits_or_the_time_is_up() {
        let ms = Duration::from_millis;
        assert_eq!(verdict(0, ms(10), ms(1000)), Verdict::Quiesced);
        assert_eq!(verdict(2, ms(10), ms(1000)), Verdict::KeepWaiting);
        assert_eq!(verdict(2, ms(1000), ms(1000)), Verdict::TimedOut);
        assert_eq!(verdict(0, ms(5000), ms(1000)), Verdict::Quiesced, "quiescent at the deadline is quiescent");
        assert_eq!(verdict(1, ms(0), ms(0)), Verdict::TimedOut, "no time at all: one look");
    }

    #[test]
    fn a_report_ends_in_time_for_its_answer_to_reach_the_asker() {
        let ms = |n: u64| n * 1_000_000;
        assert_eq!(report_time(Some(ms(1500)), ms(1000)), Duration::from_millis(500) - REPORT_SEND_MARGIN);
        assert_eq!(report_time(Some(ms(1100)), ms(1000)), Duration::ZERO, "too late for waiting: report what is known");
        assert_eq!(report_time(Some(ms(900)), ms(1000)), Duration::ZERO, "past the deadline");
        assert_eq!(report_time(None, ms(1000)), REPORT_TIME_UNASKED);
    }

    #[test]
    fn quiesced_means_every_thread_parked() {
        assert!(all_parked([PARKED, PARKED].into_iter()));
        assert!(!all_parked([PARKED, IN_CALL].into_iter()));
        assert!(!all_parked([RUNNING].into_iter()));
        assert!(all_parked(core::iter::empty()));
    }

    #[test]
    fn threads_the_table_never_saw_are_found_except_the_runtimes_own() {
        let known: HashSet<i32> = [10, 11].into_iter().collect();
        let unseen = unseen_threads(&[10, 11, 12, 13, 14], &known, |tid| tid == 13);
        assert_eq!(unseen, vec![12, 14]);
    }

    #[test]
    fn laggard_reasons_say_whether_the_thread_was_at_a_quiescent_point() {
        assert_eq!(
            blocked_reason(Call::Accept, true),
            "blocked in accept (a quiescent point) and did not react to the kick"
        );
        assert_eq!(
            blocked_reason(Call::Read, false),
            "blocked in read (not a quiescent point: waiting for it to return)"
        );
    }

    #[test]
    fn a_running_thread_is_described_from_its_syscall_file() {
        assert_eq!(running_state("running\n"), ("running outside any wrapped call".to_string(), None));
        let (reason, pc) = running_state("35 0x7ffd1000 0x0 0x0 0x0 0x0 0x0 0x7ffd0f00 0x7f12345678\n");
        assert_eq!(reason, "in system call 35, which mcr does not wrap (not a quiescent point)");
        assert_eq!(pc, Some(0x7f12345678));
        assert_eq!(running_state(""), ("running outside any wrapped call".to_string(), None), "the thread is gone");
    }
}
