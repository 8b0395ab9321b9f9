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
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicU32, AtomicUsize};

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
