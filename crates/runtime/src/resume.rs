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

pub type ResumeHandler = unsafe extern "C" fn();

const MAX_HANDLERS: usize = 16;
/// Registered from constructors before main, read after commit: no allocation, no lock.
static HANDLERS: [AtomicUsize; MAX_HANDLERS] = [const { AtomicUsize::new(0) }; MAX_HANDLERS];
/// 1 from commit until the main thread's handlers return. The other threads wait on it
/// as they leave their parking place: the handlers see the state the transfer left, not
/// one the program's other threads are already changing (a worker popping a queue the
/// handler is about to fill).
static HOLDING: AtomicU32 = AtomicU32::new(0);

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
    let saved = (slot.call.load(Acquire), slot.object.load(Acquire), slot.frame.load(Acquire), slot.state.load(Acquire));
    let errno = crate::errno::get();
    for h in &HANDLERS {
        let f = h.load(Acquire);
        if f == 0 {
            break;
        }
        // SAFETY: a `void (*)(void)` the program registered through MCR_ADD_RESUME_HANDLER
        // (the only writer of HANDLERS), called on its own main thread at a quiescent point.
        unsafe { std::mem::transmute::<usize, ResumeHandler>(f)() };
    }
    slot.call.store(saved.0, Release);
    slot.object.store(saved.1, Release);
    slot.frame.store(saved.2, Release);
    slot.state.store(saved.3, Release);
    crate::errno::set(errno);
    HOLDING.store(0, Release);
    futex::wake(&HOLDING, i32::MAX);
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

/// Control thread: have the parked main thread run the respawn handler for `fd`, and
/// wait for the child's PID.
pub fn respawn(pid: i32, fd: i32) -> Result<i32, String> {
    if RESPAWN_HANDLER.load(Acquire) == 0 {
        return Err("the new version has no MCR_ADD_RESPAWN_HANDLER to recreate a per-connection process".into());
    }
    let main_parked = threads::used().any(|(_, s)| s.is_main.load(Acquire) && s.state.load(Acquire) == threads::PARKED);
    if !main_parked || !crate::quiesce::QUIESCING.load(Acquire) {
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
    let saved = (slot.call.load(Acquire), slot.object.load(Acquire), slot.frame.load(Acquire), slot.state.load(Acquire));
    let errno = crate::errno::get();
    let (pid, fd) = (RESPAWN_PID.load(Acquire), RESPAWN_FD.load(Acquire));
    FORK_TARGET.store(pid, Release);
    // SAFETY: the `pid_t (*)(int)` the program registered through MCR_ADD_RESPAWN_HANDLER,
    // called on its main thread at a quiescent point, with a descriptor it owns now.
    let r = unsafe { std::mem::transmute::<usize, RespawnHandler>(RESPAWN_HANDLER.load(Acquire))(fd) };
    FORK_TARGET.store(0, Release);
    slot.call.store(saved.0, Release);
    slot.object.store(saved.1, Release);
    slot.frame.store(saved.2, Release);
    slot.state.store(saved.3, Release);
    crate::errno::set(errno);
    // SAFETY: getpid cannot fail.
    if r == 0 && unsafe { libc::getpid() } == pid {
        RESPAWN_STATE.store(0, Release);
        crate::quiesce::respawned_child_ready();
        return;
    }
    RESPAWN_RESULT.store(r, Release);
    RESPAWN_STATE.store(DONE, Release);
    futex::wake(&RESPAWN_STATE, 1);
}
