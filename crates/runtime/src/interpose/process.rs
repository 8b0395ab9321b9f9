//! Thread creation and exit: every thread of the program gets a slot in the thread table
//! *before* it starts, so startup completion and quiescence never miss a thread that has
//! not run yet.

use crate::interpose::startup::replay_decision;
use crate::real;
use crate::replay;
use crate::stack::{frame_address, walk};
use crate::startup_log::recording;
use crate::threads::{self, MAX_STACK, SLOTS, TID_PENDING};
use libc::{c_int, c_void, pthread_attr_t, pthread_t};
use std::sync::atomic::{AtomicU32, Ordering::*};

struct Start {
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
    slot: u32,
    /// During startup the creator waits for the thread's TID (to record it, and in an
    /// update's replay to check the thread got its old counterpart's TID); the creator
    /// then owns and frees this. Otherwise the thread frees it.
    handshake: bool,
    /// TID the thread must have (replay), 0 for any.
    target: i32,
    /// Set by the thread: its TID, or minus its TID when it is not `target` and the
    /// thread leaves without running the program's routine.
    tid: AtomicU32,
}

extern "C" fn thread_start(p: *mut c_void) -> *mut c_void {
    let start = p as *const Start;
    // SAFETY: `p` is the Start pthread_create below made for this thread. With a
    // handshake the creator keeps it alive until it sees our store to `tid`, the last
    // access through `s`; without one it is ours, freed below after its last use.
    let s = unsafe { &*start };
    let (routine, arg, slot, handshake, target) = (s.routine, s.arg, s.slot, s.handshake, s.target);
    if handshake {
        let tid = threads::gettid();
        let ok = target == 0 || tid == target;
        let word = s.tid.as_ptr();
        s.tid.store(if ok { tid } else { -tid } as u32, SeqCst);
        // The creator may free the Start from here on: wake it by address only.
        crate::futex::wake_addr(word, 1);
        if !ok {
            return core::ptr::null_mut();
        }
    } else {
        // SAFETY: leaked by pthread_create for this thread alone (no handshake), and `s`
        // is not used after.
        drop(unsafe { Box::from_raw(start as *mut Start) });
    }
    threads::adopt(slot);
    let ret = routine(arg);
    threads::forget_current();
    crate::last_thread::thread_ending(false);
    ret
}

extern "C" {
    fn pthread_attr_getdetachstate(attr: *const pthread_attr_t, state: *mut c_int) -> c_int;
}

/// How often a replayed pthread_create tries for its old TID before settling for another.
const TID_TRIES: usize = 64;

/// # Safety
/// pthread_create(3)'s contract: `thread` points to a writable pthread_t, `attr` is null or
/// an initialized attribute object, and `routine` may be called with `arg` on a new
/// thread.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> c_int {
    let f = real::pthread_create();
    if !crate::is_active() || threads::is_internal() {
        // SAFETY: the caller's own arguments, unchanged.
        return unsafe { f(thread, attr, routine, arg) };
    }
    // The creator counts towards startup completion from now on: without a slot of its
    // own (no wrapped call made yet) startup would complete as soon as the new thread
    // reaches its quiescent point, while the creator is still starting more threads.
    let _ = crate::tracked_slot(threads::local());
    let Some(slot) = threads::claim(TID_PENDING) else {
        // SAFETY: the caller's own arguments, unchanged.
        return unsafe { f(thread, attr, routine, arg) };
    };
    // SAFETY: the caller's `thread` and `attr`; our start routine, which runs the caller's
    // `routine` with `arg` once it took `start`, a Start that stays alive for it (see
    // thread_start).
    let create = |start: *const Start| unsafe { f(thread, attr, thread_start, start as *mut c_void) };
    let fp = frame_address();
    let s = &SLOTS[slot as usize];
    let mut buf = [0usize; MAX_STACK];
    let n = walk(fp, &mut buf);
    s.creation_stack.store(&buf[..n]);
    s.start_routine.store(routine as usize, Relaxed);
    if !recording() {
        let start =
            Box::into_raw(Box::new(Start { routine, arg, slot, handshake: false, target: 0, tid: AtomicU32::new(0) }));
        let rc = create(start);
        if rc != 0 {
            // SAFETY: no thread was created: the Start leaked just above is still ours.
            drop(unsafe { Box::from_raw(start) });
            threads::release(slot);
        }
        return rc;
    }
    // Startup: the thread is a startup operation, recorded with its TID; in an update's
    // replay it takes the TID its old counterpart had (as a replayed fork takes its PID).
    let mut target = replay::creation_target("pthread_create", fp).unwrap_or(0);
    if target != 0 {
        let _ = replay_decision("pthread_create", fp, &[]);
    }
    let mut detached = 0;
    if !attr.is_null() {
        // SAFETY: a non-null `attr` is an initialized attribute object (the caller's
        // contract); `detached` is a live local.
        unsafe { pthread_attr_getdetachstate(attr, &mut detached) };
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        if target == 0 {
            crate::replay::let_unmade_processes_come_first();
        }
        // The namespace's next PIDs are only a hint, taken under this lock.
        let guard = (target != 0).then(crate::startup_log::pid_hint_lock);
        // Out of reach (tried enough, or too far ahead of the last PID given for a process
        // that may not ask for it): burning PIDs towards it would cost the new version's
        // startup ~50 µs a try for nothing (130 ms per httpd update, whose children run
        // as nobody).
        let reachable = || replay::request_pid(target, TID_TRIES.saturating_sub(attempt) as i32);
        if target != 0 && (attempt > TID_TRIES || !reachable()) {
            crate::diag::warn(&format!(
                "replay: a thread could not get TID {target} as in the old version; it runs with another"
            ));
            target = 0;
        }
        // Kept here until the thread says its TID (its last access).
        let start = Box::new(Start { routine, arg, slot, handshake: true, target, tid: AtomicU32::new(0) });
        let rc = create(&*start);
        drop(guard);
        if rc != 0 {
            threads::release(slot);
            return rc;
        }
        while start.tid.load(SeqCst) == 0 {
            crate::futex::wait(&start.tid, 0, None);
        }
        let tid = start.tid.load(SeqCst) as i32;
        drop(start);
        if tid > 0 {
            crate::startup_log::record("pthread_create", fp, Vec::new(), tid as i64, 0, vec![]);
            return 0;
        }
        // The thread took another TID and left without running program code.
        if detached != libc::PTHREAD_CREATE_DETACHED {
            // SAFETY: `thread` holds the thread just created (the successful create wrote
            // it there), joinable and not joined yet.
            unsafe { libc::pthread_join(*thread, core::ptr::null_mut()) };
        }
    }
}

/// # Safety
/// pthread_exit(3)'s contract: called on a thread pthread_create started (or the main
/// thread), with nothing on its stack that must be dropped.
#[no_mangle]
pub unsafe extern "C" fn pthread_exit(ret: *mut c_void) -> ! {
    let is_main = threads::gettid() == crate::pid();
    threads::forget_current();
    crate::last_thread::thread_ending(is_main);
    // SAFETY: the caller's own argument, under its contract.
    unsafe { real::pthread_exit()(ret) }
}

pub extern "C" fn atfork_prepare() {
    crate::alloc::lock();
}

pub extern "C" fn atfork_parent() {
    crate::alloc::unlock();
}

pub extern "C" fn atfork_child() {
    crate::after_fork_in_child();
}
