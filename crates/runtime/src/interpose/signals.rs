//! sigaction/signal/sigprocmask and friends: the program keeps its semantics, the kick
//! signal stays unblocked and ours.

#![allow(clippy::missing_safety_doc)]

use crate::signals::{kick_signal, trampoline, without_kick, PROGRAM_FLAGS, PROGRAM_HANDLER, TRAMPOLINED};
use crate::{errno, real};
use libc::{c_int, sigset_t};
use std::sync::atomic::Ordering::*;

fn active() -> bool {
    kick_signal() > 0
}

#[no_mangle]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    let f = real::sigaction();
    if !active() || !(1..65).contains(&sig) {
        return f(sig, act, old);
    }
    let idx = sig as usize;
    if sig == kick_signal() {
        // Reserved: pretend the program's action was installed, but keep ours.
        if !old.is_null() {
            *old = core::mem::zeroed();
            (*old).sa_sigaction = PROGRAM_HANDLER[idx].load(Acquire);
            (*old).sa_flags = PROGRAM_FLAGS[idx].load(Acquire);
        }
        if !act.is_null() {
            PROGRAM_HANDLER[idx].store((*act).sa_sigaction, Release);
            PROGRAM_FLAGS[idx].store((*act).sa_flags, Release);
        }
        return 0;
    }
    let mut prev: libc::sigaction = core::mem::zeroed();
    let rc = if act.is_null() {
        f(sig, core::ptr::null(), &mut prev)
    } else {
        let h = (*act).sa_sigaction;
        let mut new = *act;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            new.sa_sigaction = trampoline as *const () as usize;
            new.sa_flags |= libc::SA_SIGINFO;
        }
        // Publish the program's handler before the kernel can call the trampoline.
        let (old_h, old_f) = (PROGRAM_HANDLER[idx].load(Acquire), PROGRAM_FLAGS[idx].load(Acquire));
        PROGRAM_HANDLER[idx].store(h, Release);
        PROGRAM_FLAGS[idx].store((*act).sa_flags, Release);
        let rc = f(sig, &new, &mut prev);
        if rc != 0 {
            PROGRAM_HANDLER[idx].store(old_h, Release);
            PROGRAM_FLAGS[idx].store(old_f, Release);
        } else {
            TRAMPOLINED[idx].store(i32::from(new.sa_sigaction == trampoline as *const () as usize), Release);
        }
        // The previous action as the program knew it.
        if rc == 0 && prev.sa_sigaction == trampoline as *const () as usize {
            prev.sa_sigaction = old_h;
            prev.sa_flags = old_f;
        }
        rc
    };
    if rc == 0 && act.is_null() && prev.sa_sigaction == trampoline as *const () as usize {
        prev.sa_sigaction = PROGRAM_HANDLER[idx].load(Acquire);
        prev.sa_flags = PROGRAM_FLAGS[idx].load(Acquire);
    }
    if rc == 0 && !old.is_null() {
        *old = prev;
    }
    rc
}

/// glibc's signal() calls its internal sigaction, bypassing ours: rebuild it (BSD
/// semantics, as glibc: SA_RESTART).
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    let mut sa: libc::sigaction = core::mem::zeroed();
    sa.sa_sigaction = handler;
    sa.sa_flags = libc::SA_RESTART;
    libc::sigemptyset(&mut sa.sa_mask);
    libc::sigaddset(&mut sa.sa_mask, sig);
    let mut old: libc::sigaction = core::mem::zeroed();
    if sigaction(sig, &sa, &mut old) != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

unsafe fn mask_call(
    f: unsafe extern "C" fn(c_int, *const sigset_t, *mut sigset_t) -> c_int,
    how: c_int,
    set: *const sigset_t,
    old: *mut sigset_t,
) -> c_int {
    if !active() || set.is_null() || how == libc::SIG_UNBLOCK {
        return f(how, set, old);
    }
    let s = without_kick(set).unwrap_or_else(|| *set);
    f(how, &s, old)
}

#[no_mangle]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    mask_call(real::sigprocmask(), how, set, old)
}

#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    mask_call(real::pthread_sigmask(), how, set, old)
}

#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int {
    let f = real::signalfd();
    if !active() || mask.is_null() {
        return f(fd, mask, flags);
    }
    let s = without_kick(mask).unwrap_or_else(|| *mask);
    let e = errno::get();
    let r = f(fd, &s, flags);
    if r >= 0 {
        errno::set(e);
    }
    r
}
