//! The kick signal and the program's view of signals.
//!
//! The runtime reserves one real-time signal (default SIGRTMAX-1, `MCR_KICK_SIGNAL` to
//! change it) to interrupt threads blocked in wrapped calls. It is installed without
//! SA_RESTART so every blocking call returns EINTR, and kept out of every mask the
//! program sets. The program's own handlers run through a trampoline that counts them per
//! thread: that count is how a wrapper knows an EINTR belongs to the program.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::*};

static KICK: AtomicI32 = AtomicI32::new(0);
/// The program's handler and flags per signal, as it installed them.
pub static PROGRAM_HANDLER: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];
pub static PROGRAM_FLAGS: [AtomicI32; 65] = [const { AtomicI32::new(0) }; 65];
/// Whether the kernel-side handler for the signal is our trampoline.
pub static TRAMPOLINED: [AtomicI32; 65] = [const { AtomicI32::new(0) }; 65];

pub fn kick_signal() -> i32 {
    KICK.load(Relaxed)
}

extern "C" fn on_kick(_sig: libc::c_int) {
    if let Some(i) = crate::threads::current_index() {
        crate::threads::SLOTS[i as usize].kicked.store(true, SeqCst);
    }
}

/// Runs the program's handler for `sig` after counting it for this thread.
pub extern "C" fn trampoline(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    crate::threads::note_program_signal();
    let Some(idx) = usize::try_from(sig).ok().filter(|&s| s < 65) else { return };
    let h = PROGRAM_HANDLER[idx].load(Acquire);
    let flags = PROGRAM_FLAGS[idx].load(Acquire);
    if flags & libc::SA_RESETHAND != 0 {
        // The kernel already reset the disposition; keep the program's view in step.
        PROGRAM_HANDLER[idx].store(libc::SIG_DFL, Release);
        TRAMPOLINED[idx].store(0, Release);
    }
    if h == libc::SIG_DFL || h == libc::SIG_IGN || h == 0 {
        return;
    }
    // SAFETY: `h` is the handler the program installed for this signal, with the calling
    // convention its flags declare.
    crate::threads::in_handler(crate::stack::frame_address(), || unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = core::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = core::mem::transmute(h);
            f(sig);
        }
    });
}

pub fn install_kick(sig: i32) {
    KICK.store(sig, Relaxed);
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (one atomic
    // store through a thread-local index).
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = 0; // no SA_RESTART: interrupted calls must return EINTR
        libc::sigemptyset(&mut sa.sa_mask);
        crate::real::sigaction()(sig, &sa, core::ptr::null_mut());
    }
}

/// A copy of `set` without the kick signal, or None for a null set.
pub fn without_kick(set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if set.is_null() {
        return None;
    }
    // SAFETY: the program passed a valid sigset for the call it is making.
    let mut s = unsafe { *set };
    let k = kick_signal();
    if k > 0 {
        // SAFETY: valid sigset.
        unsafe { libc::sigdelset(&mut s, k) };
    }
    Some(s)
}
