//! Thread creation and exit: every thread of the program gets a slot in the thread table
//! *before* it starts, so startup completion and quiescence never miss a thread that has
//! not run yet.

#![allow(clippy::missing_safety_doc)]

use crate::stack::{frame_address, walk};
use crate::threads::{self, MAX_STACK, SLOTS, TID_PENDING};
use crate::real;
use libc::{c_int, c_void, pthread_attr_t, pthread_t};
use std::sync::atomic::Ordering::*;

struct Start {
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
    slot: u32,
}

extern "C" fn thread_start(p: *mut c_void) -> *mut c_void {
    // SAFETY: `p` is the Box<Start> leaked by pthread_create below, consumed once.
    let start = unsafe { Box::from_raw(p as *mut Start) };
    threads::adopt(start.slot);
    let ret = (start.routine)(start.arg);
    threads::forget_current();
    ret
}

#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pthread_t,
    attr: *const pthread_attr_t,
    routine: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> c_int {
    let f = real::pthread_create();
    if !crate::is_active() || threads::is_internal() {
        return f(thread, attr, routine, arg);
    }
    let Some(slot) = threads::claim(TID_PENDING) else { return f(thread, attr, routine, arg) };
    let s = &SLOTS[slot as usize];
    let mut buf = [0usize; MAX_STACK];
    let n = walk(frame_address(), &mut buf);
    s.creation_stack.store(&buf[..n]);
    s.start_routine.store(routine as usize, Relaxed);
    let start = Box::into_raw(Box::new(Start { routine, arg, slot }));
    let rc = f(thread, attr, thread_start, start.cast());
    if rc != 0 {
        drop(Box::from_raw(start));
        threads::release(slot);
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn pthread_exit(ret: *mut c_void) -> ! {
    threads::forget_current();
    real::pthread_exit()(ret);
    // SAFETY: pthread_exit does not return.
    core::hint::unreachable_unchecked()
}

pub extern "C" fn atfork_prepare() {
    crate::alloc::lock();
}

pub extern "C" fn atfork_parent() {
    crate::alloc::unlock();
}

pub extern "C" fn atfork_child() {
    crate::alloc::reset_after_fork();
    crate::after_fork_in_child();
}
