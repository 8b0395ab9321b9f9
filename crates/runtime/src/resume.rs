//! `MCR_ADD_RESUME_HANDLER`: the new version's way back into the sessions the old version
//! was serving from a thread's stack (paper §3: a reinit handler "restores a quiescent
//! state not automatically recreated at startup").
//!
//! A thread that served a connection in the old version was parked in the middle of that
//! session (a blocking read in a worker's loop). Its stack is not moved; the session's
//! heap state and its connection are. The matching thread of the new version is parked at
//! the quiescent point its startup reached (an accept, a condition wait), knowing nothing
//! of the session. The program's resume handler, run once per process on its main thread
//! right after the update commits, hands the moved sessions back to its own code (queue
//! them for the workers, or serve the one this process was serving).
//!
//! It runs on the program's thread, not on the control thread: it may take the program's
//! locks, and it may serve a session for as long as the client stays, exactly as the old
//! thread did. The process's other threads stay parked until it returns.

use crate::futex;
use crate::threads::{self, Slot};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize};

/// Returns 0 when done; non-zero to be called again at the main thread's next quiescent
/// point (the program had not finished setting up where its main thread was parked).
pub type ResumeHandler = unsafe extern "C" fn() -> libc::c_int;

const MAX_HANDLERS: usize = 16;
/// Registered from constructors before main, read after commit: no allocation, no lock.
static HANDLERS: [AtomicUsize; MAX_HANDLERS] = [const { AtomicUsize::new(0) }; MAX_HANDLERS];
/// 1 from commit until the main thread's handlers return. The other threads wait on it
/// as they leave their parking place: the handlers see the state the transfer left, not
/// one the program's other threads are already changing (a worker popping a queue the
/// handler is about to fill).
static HOLDING: AtomicU32 = AtomicU32::new(0);
/// Handlers (bit i: HANDLERS[i]) that asked to be called again. Checked by the wrappers'
/// slow-path test, so it costs the hot path one relaxed load.
pub static DEFERRED: AtomicU32 = AtomicU32::new(0);

pub fn add(h: ResumeHandler) -> bool {
    HANDLERS.iter().any(|slot| slot.compare_exchange(0, h as usize, AcqRel, Acquire).is_ok())
}

/// The update that started this process commits (before its threads are released):
/// arrange for the handlers to run on the main thread. Only when that thread is parked:
/// a main thread that has exited would never release the others.
pub fn commit() {
    let main_parked = threads::used().any(|(_, s)| s.is_main.load(Acquire) && s.state.load(Acquire) == threads::PARKED);
    if HANDLERS[0].load(Acquire) != 0 && main_parked {
        HOLDING.store(1, Release);
    }
}

/// Called by every thread leaving its parking place. The main thread of a process whose
/// update just committed runs the program's resume handlers, then puts back what the
/// wrapper published about the call it is in (the handlers' own wrapped calls overwrote
/// it), so that call proceeds as if nothing had happened; then it releases the others.
pub fn after_park(slot: &Slot) {
    if HOLDING.load(Acquire) == 0 {
        return;
    }
    if !slot.is_main.load(Acquire) {
        while HOLDING.load(Acquire) != 0 {
            futex::wait(&HOLDING, 1, None);
        }
        return;
    }
    let again = run_handlers(slot, u32::MAX);
    DEFERRED.store(again, Release);
    HOLDING.store(0, Release);
    futex::wake(&HOLDING, i32::MAX);
}

/// A wrapped call of the main thread that is a quiescent point, after commit: run the
/// handlers that asked to be called again (the other threads run meanwhile).
pub fn run_deferred(slot: &Slot) {
    let mask = DEFERRED.load(Acquire);
    if mask == 0 || !slot.is_main.load(Relaxed) {
        return;
    }
    let again = run_handlers(slot, mask);
    DEFERRED.store(again, Release);
}

/// Run the handlers in `mask` on this (main) thread; returns those that asked to be called
/// again. What the wrapper published about its call is put back afterwards (the handlers'
/// own wrapped calls overwrite it), so that call proceeds as if nothing had happened.
fn run_handlers(slot: &Slot, mask: u32) -> u32 {
    keeping_published_call(slot, || {
        let mut again = 0;
        for (i, h) in HANDLERS.iter().enumerate() {
            let f = h.load(Acquire);
            if f == 0 {
                break;
            }
            if mask & (1 << i) == 0 {
                continue;
            }
            // SAFETY: an `int (*)(void)` the program registered through MCR_ADD_RESUME_HANDLER
            // (the only writer of HANDLERS), called on its own main thread at a quiescent point.
            if unsafe { std::mem::transmute::<usize, ResumeHandler>(f)() } != 0 {
                again |= 1 << i;
            }
        }
        again
    })
}

/// Run program code `f` on a thread parked in a wrapped call, then put back what the
/// wrapper published about that call (and errno): the program's own wrapped calls in `f`
/// overwrite them, and the call must proceed as if nothing had happened.
fn keeping_published_call<R>(slot: &Slot, f: impl FnOnce() -> R) -> R {
    let saved =
        (slot.call.load(Acquire), slot.object.load(Acquire), slot.frame.load(Acquire), slot.state.load(Acquire));
    let _errno = crate::errno::ErrnoGuard::save();
    let r = f();
    slot.call.store(saved.0, Release);
    slot.object.store(saved.1, Release);
    slot.frame.store(saved.2, Release);
    slot.state.store(saved.3, Release);
    r
}

// ---- Respawn: processes the old version forked after startup (one per connection) ----
//
// Nothing in the new version's startup recreates a per-connection process. Before the
// state transfer, `mcr update` installs the connection in the new parent and asks it to
// respawn the child: the parent's main thread, parked, runs the program's respawn
// handler, which forks as its accept loop would. The fork takes the old child's PID, so
// the state transfer pairs the two like any other processes; the child stays parked
// until commit, when its resume handler serves the moved session.

pub type RespawnHandler = unsafe extern "C" fn(libc::c_int) -> libc::pid_t;

static RESPAWN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// 0 idle; REQUESTED: the control thread asks the main thread; DONE: its answer is in
/// RESPAWN_RESULT.
static RESPAWN_STATE: AtomicU32 = AtomicU32::new(0);
const REQUESTED: u32 = 1;
const DONE: u32 = 2;
static RESPAWN_PID: AtomicI32 = AtomicI32::new(0);
static RESPAWN_FD: AtomicI32 = AtomicI32::new(-1);
static RESPAWN_RESULT: AtomicI32 = AtomicI32::new(0);
/// The PID the program's next fork must give its child (0: none).
static FORK_TARGET: AtomicI32 = AtomicI32::new(0);

pub fn add_respawn(h: RespawnHandler) -> bool {
    RESPAWN_HANDLER.compare_exchange(0, h as usize, AcqRel, Acquire).is_ok()
}

/// For the fork wrapper: the PID this fork's child must get, during a respawn.
pub fn fork_target() -> Option<i32> {
    Some(FORK_TARGET.load(Acquire)).filter(|&p| p > 0)
}

/// How long a respawn waits for the main thread to be back in its parking place.
const MAIN_PARKS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Control thread: have the parked main thread run the respawn handler for `fd`, and
/// wait for the child's PID.
pub fn respawn(pid: i32, fd: i32) -> Result<i32, String> {
    if RESPAWN_HANDLER.load(Acquire) == 0 {
        return Err("the new version has no MCR_ADD_RESPAWN_HANDLER to recreate a per-connection process".into());
    }
    // The main thread may be out of its parking place for a moment (a signal handler runs
    // there, or it is going back after the previous respawn): wait for it, bounded.
    let main_parked =
        || threads::used().any(|(_, s)| s.is_main.load(Acquire) && s.state.load(Acquire) == threads::PARKED);
    let give_up = std::time::Instant::now() + MAIN_PARKS_WITHIN;
    while !main_parked() && crate::quiesce::QUIESCING.load(Acquire) && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if !main_parked() || !crate::quiesce::QUIESCING.load(Acquire) {
        return Err("the process's main thread is not parked: it cannot respawn a process now".into());
    }
    RESPAWN_PID.store(pid, Release);
    RESPAWN_FD.store(fd, Release);
    RESPAWN_STATE.store(REQUESTED, Release);
    crate::quiesce::wake_parked();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while RESPAWN_STATE.load(Acquire) != DONE {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("the respawn handler did not return within 10 s".into());
        }
        futex::wait(&RESPAWN_STATE, REQUESTED, Some(left));
    }
    RESPAWN_STATE.store(0, Release);
    match RESPAWN_RESULT.load(Acquire) {
        r if r == pid => Ok(r),
        r if r > 0 => Err(format!("the respawned process got PID {r}, not {pid}")),
        r => Err(format!("the respawn handler failed (it returned {r})")),
    }
}

/// Main thread, parked: whether the control thread asked for a respawn.
pub fn respawn_due(slot: &Slot) -> bool {
    RESPAWN_STATE.load(Acquire) == REQUESTED && slot.is_main.load(Relaxed)
}

/// Main thread, parked: run the respawn handler. In the child it returns into the parking
/// loop, held like every process of the new version until commit.
pub fn run_respawn(slot: &Slot) {
    let (pid, fd) = (RESPAWN_PID.load(Acquire), RESPAWN_FD.load(Acquire));
    FORK_TARGET.store(pid, Release);
    // SAFETY: the `pid_t (*)(int)` the program registered through MCR_ADD_RESPAWN_HANDLER,
    // called on its main thread at a quiescent point, with a descriptor it owns now.
    let r = keeping_published_call(slot, || unsafe {
        std::mem::transmute::<usize, RespawnHandler>(RESPAWN_HANDLER.load(Acquire))(fd)
    });
    FORK_TARGET.store(0, Release);
    // SAFETY: getpid has no preconditions.
    if r == 0 && unsafe { libc::getpid() } == pid {
        RESPAWN_STATE.store(0, Release);
        crate::quiesce::respawned_child_ready();
        return;
    }
    RESPAWN_RESULT.store(r, Release);
    RESPAWN_STATE.store(DONE, Release);
    futex::wake(&RESPAWN_STATE, 1);
}

// ---- Adoption: connections whose state stayed behind (--fresh-state) ----
//
// A server whose heap mcr cannot trace (nginx) still keeps its idle connections across an
// update: the old build's idle check says which connections hold no program state (a
// keep-alive connection between requests), mcr moves those, and the new build's resume
// handler takes them up as if just accepted.

pub type IdleCheck = unsafe extern "C" fn(libc::c_int) -> libc::c_int;

static IDLE_CHECK: AtomicUsize = AtomicUsize::new(0);
const MAX_ADOPTED: usize = 65536;
/// Descriptors installed for adoption, in order; read by the program after commit.
static ADOPTED: [AtomicI32; MAX_ADOPTED] = [const { AtomicI32::new(0) }; MAX_ADOPTED];
static ADOPTED_LEN: AtomicUsize = AtomicUsize::new(0);

pub fn add_idle_check(f: IdleCheck) -> bool {
    IDLE_CHECK.compare_exchange(0, f as usize, AcqRel, Acquire).is_ok()
}

/// For a drain: whether the program has an idle check, and which of `fds` are busy. The
/// check runs program code, so only while every thread of the process is parked; before
/// that, a connection with output the kernel has not sent yet counts as busy.
pub fn busy_connections(fds: &[i32]) -> (bool, Vec<i32>) {
    let f = IDLE_CHECK.load(Acquire);
    if f == 0 {
        return (false, Vec::new());
    }
    let quiesced = crate::quiesce::is_quiesced();
    let busy = fds
        .iter()
        .copied()
        .filter(|&fd| {
            if quiesced {
                // SAFETY: the program's `int (*)(int)` from MCR_ADD_IDLE_CHECK, called while
                // all its threads are parked at quiescent points (nothing else runs).
                unsafe { std::mem::transmute::<usize, IdleCheck>(f)(fd) == 0 }
            } else {
                // The control thread's table is its own: ask through a copy.
                crate::borrow::with_program_fd(fd, unsent_bytes).unwrap_or(0) > 0
            }
        })
        .collect();
    (true, busy)
}

fn unsent_bytes(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int into `n`, a live local; any descriptor number is
    // valid (the kernel checks it).
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc < 0 {
        0
    } else {
        n
    }
}

pub fn note_adopted(fd: i32) {
    let i = ADOPTED_LEN.fetch_add(1, AcqRel);
    if i < MAX_ADOPTED {
        ADOPTED[i].store(fd, Release);
    }
}

/// `mcr_adopted_fds`: copy up to `max` adopted descriptors to `out`; returns how many
/// there are in all.
pub fn adopted(out: &mut [i32]) -> usize {
    let n = ADOPTED_LEN.load(Acquire).min(MAX_ADOPTED);
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        *slot = ADOPTED[i].load(Acquire);
    }
    n
}
