//! Profiling mode (`mcr profile`, paper §4): statistical profiling of the wrapped
//! blocking calls.
//!
//! A sampler thread, started next to the control thread only when `MCR_PROFILING` is
//! set, wakes every period and looks at the thread table: for every thread inside a
//! wrapped call it walks the stack from the frame the wrapper published and counts one
//! sample for that (call, stack). Time in a call is samples × period. The wrappers
//! themselves do nothing more than in the steady state (they already publish the call
//! and their frame for quiescence), so a run without profiling pays nothing, and a run
//! with it pays the sampler's own CPU time, which the report states.
//!
//! The data goes to the supervisor twice: the control thread answers `ProfileSnapshot`,
//! and the sampler pushes a report every `PUSH_EVERY` so a process that exits leaves its
//! last one behind.

use crate::calls::Call;
use crate::sync::SpinLock;
use crate::threads::{self, IN_CALL, PARKED, TID_PENDING};
use crate::{clock_ns, monotonic_ns, stack, symbolize};
use core::cell::Cell;
use mcr_protocol::{ProcessProfile, ProfileSite, RuntimeEvent, ThreadProfile};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::*};
use std::time::Duration;

/// Sampling period in µs; 0: profiling is off.
static PERIOD_US: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);
static SAMPLER_TID: AtomicI32 = AtomicI32::new(0);
static SAMPLER_CPU_NS: AtomicU64 = AtomicU64::new(0);
const PUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct ThreadAgg {
    tid: i32,
    main: bool,
    creation: Vec<usize>,
    routine: usize,
    first_seen_ns: u64,
    last_seen_ns: u64,
    alive: bool,
    cpu_ns: u64,
    wakeups: u64,
    running: u64,
    sites: HashMap<(u32, Vec<usize>), u64>,
}

#[derive(Default)]
struct Agg {
    /// By (slot index, slot generation): one entry per thread life.
    threads: BTreeMap<(usize, u64), ThreadAgg>,
    ticks: u64,
}

static AGG: SpinLock<Option<Agg>> = SpinLock::new(None);
/// Serializes ticks (the sampler's and the one a snapshot makes).
static TICK: SpinLock<()> = SpinLock::new(());
/// The stacks walked at the last tick, by thread: (call, wrapper frame, stack).
type Walks = HashMap<(usize, u64), (u32, usize, Vec<usize>)>;
static LAST_WALK: SpinLock<Option<Walks>> = SpinLock::new(None);
/// Where this process was forked, walked in the child (innermost first; empty: not a
/// fork child, or the fork was not seen).
static FORK_STACK: SpinLock<Option<Vec<usize>>> = SpinLock::new(None);

thread_local! {
    /// Frame of the `fork` wrapper while the thread is inside it (0 otherwise). In the
    /// child it is the same stack, so the child can walk where it was forked from.
    static FORK_FP: Cell<usize> = const { Cell::new(0) };
}

pub fn init_from_env() {
    let period =
        std::env::var(mcr_protocol::env::PROFILING).ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    PERIOD_US.store(period.clamp(if period == 0 { 0 } else { 100 }, 1_000_000), SeqCst);
}

#[inline(always)]
pub fn enabled() -> bool {
    PERIOD_US.load(Relaxed) != 0
}

pub fn is_sampler_thread(tid: i32) -> bool {
    tid != 0 && SAMPLER_TID.load(Relaxed) == tid
}

/// Held by the `fork` wrapper for the duration of the call.
pub struct ForkNote(());

impl ForkNote {
    #[inline(always)]
    pub fn new(fp: usize) -> Self {
        if enabled() {
            FORK_FP.with(|c| c.set(fp));
        }
        ForkNote(())
    }
}

impl Drop for ForkNote {
    #[inline(always)]
    fn drop(&mut self) {
        if enabled() {
            FORK_FP.with(|c| c.set(0));
        }
    }
}

/// In a fork child (only the forking thread exists): forget the parent's samples and
/// remember where the fork was made. Async-signal-safe work only, plus the runtime's own
/// allocator (reset by the fork handlers before this runs).
pub fn reset_after_fork() {
    if !enabled() {
        return;
    }
    STARTED.store(false, SeqCst);
    SAMPLER_TID.store(0, SeqCst);
    SAMPLER_CPU_NS.store(0, SeqCst);
    AGG.force_unlock();
    TICK.force_unlock();
    FORK_STACK.force_unlock();
    LAST_WALK.force_unlock();
    *AGG.lock() = None;
    *LAST_WALK.lock() = None;
    let fp = FORK_FP.with(|c| c.replace(0));
    // A fork libc made internally (daemon(), say) bypassed the wrapper: walk from here,
    // through libc's frames, which is the best that is known.
    let from = if fp != 0 { fp } else { stack::frame_address() };
    *FORK_STACK.lock() = Some(stack::walk_vec(from));
}

/// In a fork child, once registered: report at once where the process was forked, so a
/// child that exits before its sampler's first report still has its class.
pub fn announce_child() {
    if !enabled() {
        return;
    }
    tick();
    let report = snapshot_now(false);
    crate::control::send_event(&RuntimeEvent::ProfileReport { profile: report });
}

/// Start the sampler (called by the control thread once it runs). A no-op unless
/// profiling.
pub fn start_sampler() {
    if !enabled() || STARTED.swap(true, SeqCst) {
        return;
    }
    // Started from the control thread, it inherits its fully blocked signal mask and
    // private descriptor table.
    if !threads::spawn_detached(sampler_main) {
        crate::diag::warn("profiling: cannot start the sampler thread; this process is not profiled");
    }
}

/// The CPU-time clock of thread `tid` of this process (the kernel's
/// MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)).
fn thread_cpu_clock(tid: i32) -> libc::clockid_t {
    ((!tid) << 3) | 6
}

fn voluntary_switches(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).and_then(|v| v.trim().parse().ok())
}

extern "C" fn sampler_main(_: *mut libc::c_void) -> *mut libc::c_void {
    // For the whole life of this thread: none of its calls is the program's.
    let _internal = threads::InternalGuard::enter();
    SAMPLER_TID.store(threads::gettid(), SeqCst);
    // SAFETY: prctl(PR_SET_NAME) reads a NUL-terminated static string and names the calling
    // thread; failure is harmless.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"mcr-profiler".as_ptr()) };
    let period = Duration::from_micros(PERIOD_US.load(SeqCst));
    let mut last_push: Option<u64> = None;
    loop {
        tick();
        let now = monotonic_ns();
        let due = match last_push {
            Some(t) => now.saturating_sub(t) >= PUSH_EVERY.as_nanos() as u64,
            None => true,
        };
        if due {
            SAMPLER_CPU_NS.store(clock_ns(libc::CLOCK_THREAD_CPUTIME_ID), SeqCst);
            let report = snapshot_now(false);
            if !crate::control::send_event(&RuntimeEvent::ProfileReport { profile: report }) {
                // The supervisor is gone: nobody to report to.
                return core::ptr::null_mut();
            }
            last_push = Some(now);
        }
        SAMPLER_CPU_NS.store(clock_ns(libc::CLOCK_THREAD_CPUTIME_ID), SeqCst);
        std::thread::sleep(period);
    }
}

/// What a tick saw a thread do.
enum Sample {
    Blocked(u32, Vec<usize>),
    Running,
    /// It left its call while its stack was walked: alive, but no sample.
    Moved,
}

/// One thread at one tick: (slot, generation), tid, is main, sample.
type Seen = ((usize, u64), i32, bool, Sample);

/// One sample of every thread of the process.
fn tick() {
    let _serial = TICK.lock();
    let now = monotonic_ns();
    // Walk the stacks first, without holding the table's lock (each frame is a system call).
    let mut seen: Vec<Seen> = Vec::new();
    // A thread still in the call (and from the frame) of the last tick has the same
    // stack: walking it again would only cost system calls.
    let last = LAST_WALK.lock().take().unwrap_or_default();
    let mut walked: Walks = HashMap::new();
    for (i, s) in threads::used() {
        let tid = s.tid.load(Acquire);
        if tid == TID_PENDING {
            continue;
        }
        let gen = s.generation.load(Acquire);
        let st = s.state.load(Acquire);
        let site = if st == IN_CALL || st == PARKED {
            let call = s.call.load(Acquire);
            let fp = s.frame.load(Acquire);
            let raw = match last.get(&(i, gen)) {
                Some((c, f, raw)) if *c == call && *f == fp => raw.clone(),
                _ => stack::walk_vec(fp),
            };
            // The thread may have left the call while we walked: keep the sample only if
            // it is still in the same call from the same frame.
            let same = s.state.load(Acquire) == st
                && s.call.load(Acquire) == call
                && s.frame.load(Acquire) == fp
                && s.generation.load(Acquire) == gen;
            if same {
                walked.insert((i, gen), (call, fp, raw.clone()));
                Sample::Blocked(call, raw)
            } else {
                Sample::Moved
            }
        } else {
            Sample::Running
        };
        seen.push(((i, gen), tid, s.is_main.load(Relaxed), site));
    }
    *LAST_WALK.lock() = Some(walked);
    let mut g = AGG.lock();
    let agg = g.get_or_insert_with(Agg::default);
    agg.ticks += 1;
    for t in agg.threads.values_mut() {
        t.alive = false;
    }
    for (key, tid, main, site) in seen {
        let t = agg.threads.entry(key).or_insert_with(|| {
            let s = &threads::SLOTS[key.0];
            ThreadAgg {
                tid,
                main,
                creation: s.creation_stack.load(),
                routine: s.start_routine.load(Relaxed),
                first_seen_ns: now,
                ..ThreadAgg::default()
            }
        });
        t.alive = true;
        t.last_seen_ns = now;
        t.main = main;
        match site {
            Sample::Blocked(call, raw) => *t.sites.entry((call, raw)).or_insert(0) += 1,
            Sample::Running => t.running += 1,
            Sample::Moved => {}
        }
    }
}

/// A snapshot, symbolized. `fresh`: sample once more first (the state right now).
pub fn snapshot_now(fresh: bool) -> ProcessProfile {
    if fresh {
        tick();
    }
    let _internal = threads::InternalGuard::enter();
    // Copy the raw data out, then symbolize without holding the lock.
    struct Raw {
        tid: i32,
        main: bool,
        creation: Vec<usize>,
        routine: usize,
        first: u64,
        last: u64,
        alive: bool,
        cpu_ns: u64,
        wakeups: u64,
        running: u64,
        sites: Vec<((u32, Vec<usize>), u64)>,
    }
    let (raws, ticks) = {
        let mut g = AGG.lock();
        let agg = g.get_or_insert_with(Agg::default);
        for t in agg.threads.values_mut().filter(|t| t.alive) {
            let ns = clock_ns(thread_cpu_clock(t.tid));
            if ns > 0 {
                t.cpu_ns = ns;
            }
            if let Some(w) = voluntary_switches(t.tid) {
                t.wakeups = w;
            }
        }
        let raws: Vec<Raw> = agg
            .threads
            .values()
            .map(|t| Raw {
                tid: t.tid,
                main: t.main,
                creation: if t.main { Vec::new() } else { t.creation.clone() },
                routine: t.routine,
                first: t.first_seen_ns,
                last: t.last_seen_ns,
                alive: t.alive,
                cpu_ns: t.cpu_ns,
                wakeups: t.wakeups,
                running: t.running,
                sites: t.sites.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            })
            .collect();
        (raws, agg.ticks)
    };
    let fork_stack = FORK_STACK.lock().clone().map(|raw| symbolize::call_stack(Some("fork"), &raw));
    let threads_out = raws
        .into_iter()
        .map(|r| ThreadProfile {
            tid: r.tid,
            main: r.main,
            creation_stack: (!r.main).then(|| symbolize::call_stack(Some("pthread_create"), &r.creation)),
            start_routine: (r.routine != 0).then(|| symbolize::frame_at(r.routine).display_name()),
            alive: r.alive,
            first_seen_ms: r.first as f64 / 1e6,
            last_seen_ms: r.last as f64 / 1e6,
            cpu_ms: r.cpu_ns as f64 / 1e6,
            wakeups: r.wakeups,
            running_samples: r.running,
            sites: r
                .sites
                .into_iter()
                .map(|((call, raw), samples)| {
                    let name = Call::from_index(call).name();
                    ProfileSite { call: name.to_string(), stack: symbolize::call_stack(Some(name), &raw), samples }
                })
                .collect(),
        })
        .collect();
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
    ProcessProfile {
        pid: crate::pid(),
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() },
        exe,
        fork_stack,
        period_us: PERIOD_US.load(Relaxed),
        ticks,
        taken_ms: monotonic_ns() as f64 / 1e6,
        sampler_cpu_ms: SAMPLER_CPU_NS.load(SeqCst) as f64 / 1e6,
        process_cpu_ms: clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) as f64 / 1e6,
        startup_complete: crate::quiesce::STARTUP_DONE.load(Acquire),
        alive: true,
        threads: threads_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_clock_matches_the_kernel_encoding() {
        // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED): ~tid << 3 | PERTHREAD(4) | SCHED(2).
        assert_eq!(thread_cpu_clock(1), -10);
        let tid = threads::gettid();
        assert!(clock_ns(thread_cpu_clock(tid)) > 0, "our own thread's CPU clock reads");
    }
}
