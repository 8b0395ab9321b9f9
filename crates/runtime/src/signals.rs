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

extern "C" fn on_kick(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(i) = crate::threads::current_index() {
        let slot = &crate::threads::SLOTS[i as usize];
        if slot.probe.swap(false, SeqCst) {
            // A report asks where this thread runs: nothing else changes for it.
            let (pc, fp) = interrupted_at(ctx);
            slot.probe_pc.store(pc, SeqCst);
            slot.probe_fp.store(fp, SeqCst);
            slot.probe_seq.fetch_add(1, SeqCst);
        } else {
            slot.kicked.store(true, SeqCst);
        }
        slot.kick_in_flight.store(false, SeqCst);
    }
}

/// The program counter and frame pointer the signal interrupted.
#[cfg(target_arch = "x86_64")]
fn interrupted_at(ctx: *mut libc::c_void) -> (usize, usize) {
    if ctx.is_null() {
        return (0, 0);
    }
    // SAFETY: with SA_SIGINFO the kernel passes the interrupted context as a ucontext_t,
    // valid for the handler's duration; only two saved registers are read.
    unsafe {
        let uc = &*(ctx as *const libc::ucontext_t);
        (uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize, uc.uc_mcontext.gregs[libc::REG_RBP as usize] as usize)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn interrupted_at(_ctx: *mut libc::c_void) -> (usize, usize) {
    (0, 0)
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
    // No SA_RESTART: interrupted calls must return EINTR.
    let sa = new_sigaction(on_kick as *const () as usize, libc::SA_SIGINFO, sigset_with(&[]));
    // SAFETY: libc's own sigaction (ours would refuse the reserved signal), with a live
    // sigaction and no old one; the handler is async-signal-safe (one atomic store
    // through a thread-local index).
    unsafe { crate::real::sigaction()(sig, &sa, core::ptr::null_mut()) };
}

/// Whether the kick signal still runs the runtime's handler (None: cannot tell), for the
/// report of a thread that did not react to it.
pub fn kick_handler_installed() -> Option<bool> {
    let sig = kick_signal();
    if sig <= 0 {
        return None;
    }
    let mut old = new_sigaction(libc::SIG_DFL, 0, sigset_with(&[]));
    // SAFETY: a query only (no new action), writing into `old`, a live local.
    let rc = unsafe { crate::real::sigaction()(sig, core::ptr::null(), &mut old) };
    (rc == 0).then_some(old.sa_sigaction == on_kick as *const () as usize)
}

/// A `struct sigaction` for `handler` (a function's address, SIG_DFL or SIG_IGN).
pub fn new_sigaction(handler: libc::sighandler_t, flags: libc::c_int, mask: libc::sigset_t) -> libc::sigaction {
    // SAFETY: struct sigaction is plain data (a handler address, a mask of bits, flags, a
    // restorer pointer): all zeroes is a valid value (SIG_DFL, empty mask, no restorer).
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    sa.sa_mask = mask;
    sa
}

/// The set of `sigs` (invalid numbers are left out).
pub fn sigset_with(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is an array of bits, valid zeroed; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset write only `set`, a live local.
    unsafe {
        libc::sigemptyset(&mut set);
        for &sig in sigs {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// The set of every signal.
pub fn full_sigset() -> libc::sigset_t {
    let mut set = sigset_with(&[]);
    // SAFETY: sigfillset writes only `set`, a live local.
    unsafe { libc::sigfillset(&mut set) };
    set
}

/// Change the calling thread's signal mask with libc's own pthread_sigmask (ours keeps
/// the kick signal out of every mask), `how` being SIG_BLOCK, SIG_UNBLOCK or SIG_SETMASK;
/// returns the mask before.
pub fn set_thread_mask(how: libc::c_int, set: &libc::sigset_t) -> libc::sigset_t {
    let mut old = sigset_with(&[]);
    // SAFETY: pthread_sigmask reads `set` and writes `old`, both live.
    unsafe { crate::real::pthread_sigmask()(how, set, &mut old) };
    old
}

/// A copy of `set` without the kick signal, or None for a null set.
///
/// # Safety
/// `set` is null or points to a valid sigset_t.
pub unsafe fn without_kick(set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    // SAFETY: null or a valid sigset (the caller's contract); sigset_t is Copy.
    let mut s = unsafe { set.as_ref() }.copied()?;
    let k = kick_signal();
    if k > 0 {
        // SAFETY: sigdelset writes only `s`, a live local.
        unsafe { libc::sigdelset(&mut s, k) };
    }
    Some(s)
}
