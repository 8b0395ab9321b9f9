//! sigaction/signal/sigprocmask and friends: the program keeps its semantics, the kick
//! signal stays unblocked and ours.

use crate::signals::{
    kick_signal, new_sigaction, sigset_with, trampoline, without_kick, PROGRAM_FLAGS, PROGRAM_HANDLER, TRAMPOLINED,
};
use crate::{errno, real};
use libc::{c_int, sigset_t};
use std::sync::atomic::Ordering::*;

fn active() -> bool {
    kick_signal() > 0
}

/// # Safety
/// sigaction(2)'s contract: `act` is null or points to a readable sigaction, `old` null or
/// to a writable one.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act_ptr: *const libc::sigaction,
    old_ptr: *mut libc::sigaction,
) -> c_int {
    let f = real::sigaction();
    if !active() || !(1..65).contains(&sig) {
        // SAFETY: the caller's own arguments, unchanged.
        return unsafe { f(sig, act_ptr, old_ptr) };
    }
    // A copy, read before `old` is written: C lets both point to the same struct.
    // SAFETY: null or valid for reading (the caller's contract).
    let act = unsafe { act_ptr.as_ref() }.copied();
    let report_old = |action: libc::sigaction| {
        if !old_ptr.is_null() {
            // SAFETY: non-null `old` is valid for writing (the caller's contract).
            unsafe { old_ptr.write(action) };
        }
    };
    let call = |act: Option<&libc::sigaction>, prev: &mut libc::sigaction| {
        let act = act.map_or(core::ptr::null(), |a| a as *const libc::sigaction);
        // SAFETY: libc's sigaction with a live (or null) action and a live out-struct.
        unsafe { f(sig, act, prev) }
    };
    let idx = sig as usize;
    if sig == kick_signal() {
        // Reserved: pretend the program's action was installed, but keep ours.
        report_old(new_sigaction(
            PROGRAM_HANDLER[idx].load(Acquire),
            PROGRAM_FLAGS[idx].load(Acquire),
            sigset_with(&[]),
        ));
        if let Some(act) = act {
            PROGRAM_HANDLER[idx].store(act.sa_sigaction, Release);
            PROGRAM_FLAGS[idx].store(act.sa_flags, Release);
        }
        return 0;
    }
    let trampoline = trampoline as *const () as usize;
    let mut prev = new_sigaction(libc::SIG_DFL, 0, sigset_with(&[]));
    let rc = match act {
        None => call(None, &mut prev),
        Some(act) => {
            let h = act.sa_sigaction;
            let mut new = act;
            if h != libc::SIG_DFL && h != libc::SIG_IGN {
                new.sa_sigaction = trampoline;
                new.sa_flags |= libc::SA_SIGINFO;
            }
            // Publish the program's handler before the kernel can call the trampoline.
            let (old_h, old_f) = (PROGRAM_HANDLER[idx].load(Acquire), PROGRAM_FLAGS[idx].load(Acquire));
            PROGRAM_HANDLER[idx].store(h, Release);
            PROGRAM_FLAGS[idx].store(act.sa_flags, Release);
            let rc = call(Some(&new), &mut prev);
            if rc != 0 {
                PROGRAM_HANDLER[idx].store(old_h, Release);
                PROGRAM_FLAGS[idx].store(old_f, Release);
            } else {
                TRAMPOLINED[idx].store(i32::from(new.sa_sigaction == trampoline), Release);
            }
            // The previous action as the program knew it.
            if rc == 0 && prev.sa_sigaction == trampoline {
                prev.sa_sigaction = old_h;
                prev.sa_flags = old_f;
            }
            rc
        }
    };
    if rc == 0 && act.is_none() && prev.sa_sigaction == trampoline {
        prev.sa_sigaction = PROGRAM_HANDLER[idx].load(Acquire);
        prev.sa_flags = PROGRAM_FLAGS[idx].load(Acquire);
    }
    if rc == 0 {
        report_old(prev);
    }
    rc
}

/// glibc's signal() calls its internal sigaction, bypassing ours: rebuild it (BSD
/// semantics, as glibc: SA_RESTART).
///
/// # Safety
/// signal(2)'s contract: `handler` is SIG_DFL, SIG_IGN or a function taking an int.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    let sa = new_sigaction(handler, libc::SA_RESTART, sigset_with(&[sig]));
    let mut old = new_sigaction(libc::SIG_DFL, 0, sigset_with(&[]));
    // SAFETY: our sigaction with two live structs; `handler` as the caller promised.
    if unsafe { sigaction(sig, &sa, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// # Safety
/// `set` is null or points to a readable sigset, `old` null or to a writable one.
unsafe fn mask_call(
    f: unsafe extern "C" fn(c_int, *const sigset_t, *mut sigset_t) -> c_int,
    how: c_int,
    set: *const sigset_t,
    old: *mut sigset_t,
) -> c_int {
    if !active() || how == libc::SIG_UNBLOCK {
        // SAFETY: the caller's own arguments, unchanged.
        return unsafe { f(how, set, old) };
    }
    // SAFETY: the caller's contract.
    match unsafe { without_kick(set) } {
        // SAFETY: a live copy of the caller's set, and the caller's `old`.
        Some(s) => unsafe { f(how, &s, old) },
        // SAFETY: the caller's own arguments, unchanged (no set: only `old` is written).
        None => unsafe { f(how, set, old) },
    }
}

/// # Safety
/// sigprocmask(2)'s contract: `set` is null or readable, `old` null or writable.
#[no_mangle]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: the caller's contract is mask_call's.
    unsafe { mask_call(real::sigprocmask(), how, set, old) }
}

/// # Safety
/// pthread_sigmask(3)'s contract: `set` is null or readable, `old` null or writable.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: the caller's contract is mask_call's.
    unsafe { mask_call(real::pthread_sigmask(), how, set, old) }
}

/// # Safety
/// signalfd(2)'s contract: `mask` points to a readable sigset.
#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int {
    let f = real::signalfd();
    // SAFETY: `mask` is null or readable (the caller's contract).
    let copy = if active() { unsafe { without_kick(mask) } } else { None };
    let Some(s) = copy else {
        // SAFETY: the caller's own arguments, unchanged.
        return unsafe { f(fd, mask, flags) };
    };
    let e = errno::get();
    // SAFETY: a live copy of the caller's mask.
    let r = unsafe { f(fd, &s, flags) };
    if r >= 0 {
        errno::set(e);
    }
    r
}
