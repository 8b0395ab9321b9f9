//! Wrapped blocking calls (DESIGN.md "Quiescence"). Each wrapper records which call the
//! thread is in, runs the real call, and when the call was interrupted by the runtime's
//! kick (not by the program's own signal) parks the thread and re-enters the call with
//! the time that remained, so the program sees the call's original semantics.

#![allow(clippy::missing_safety_doc)]

use crate::calls::Call;
use crate::quiesce::{self, QUIESCING};
use crate::signals::without_kick;
use crate::stack::frame_address;
use crate::threads;
use crate::{drain, errno, real};
use libc::{
    c_int, c_long, c_uint, c_void, clockid_t, epoll_event, fd_set, id_t, idtype_t, iovec, msghdr, nfds_t, pid_t,
    pollfd, rusage, sem_t, sembuf, siginfo_t, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec, timeval, EINTR,
};
use std::sync::atomic::Ordering::*;

pub enum Outcome<T> {
    Done(T),
    /// A signal of the program's own was handled while the thread was parked: the call
    /// must report EINTR as if the signal had interrupted it. `left_ns`: what remained of
    /// its relative timeout when it resumed (None: it had none). The time parked counts,
    /// as it does for a process the kernel stopped and continued.
    ProgramSignal {
        left_ns: Option<i64>,
    },
}

/// Nanoseconds from `now` to `deadline` (both CLOCK_MONOTONIC), never negative.
fn time_left(deadline: Option<i64>, now: i64) -> Option<i64> {
    deadline.map(|d| d.saturating_sub(now).max(0))
}

/// sleep()'s answer for `ns` not slept: whole seconds, rounded up so a caller that sleeps
/// again with it never wakes early.
fn unslept_seconds(ns: i64) -> c_uint {
    let secs = ns.max(0).saturating_add(999_999_999) / 1_000_000_000;
    secs.min(c_uint::MAX as i64) as c_uint
}

fn now_ns() -> i64 {
    let mut ts = timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; vDSO call, no system call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn ts_ns(ts: *const timespec) -> Option<i64> {
    // SAFETY: the caller passed this pointer to a libc call that reads it too.
    (!ts.is_null()).then(|| unsafe { (*ts).tv_sec * 1_000_000_000 + (*ts).tv_nsec })
}

fn ns_ts(ns: i64) -> timespec {
    timespec { tv_sec: (ns / 1_000_000_000) as _, tv_nsec: (ns % 1_000_000_000) as _ }
}

fn ms_ns(ms: c_int) -> Option<i64> {
    (ms >= 0).then(|| ms as i64 * 1_000_000)
}

/// Milliseconds left, rounded up so a wait never ends early.
fn ns_ms(ns: i64) -> c_int {
    (ns.saturating_add(999_999) / 1_000_000).min(c_int::MAX as i64) as c_int
}

/// The core of every signal-interruptible wrapper. `timeout_ns` is the relative timeout
/// (None: none or absolute); `attempt(None)` runs the call with the program's own
/// arguments, `attempt(Some(ns))` with `ns` left; `interrupted` tells an EINTR result
/// (and reads errno only for a failed call).
///
/// Steady state (started, not quiescing): one TLS lookup, four plain stores, two relaxed
/// loads, the call, one store; errno is never touched.
#[inline(always)]
pub fn blocking<T>(
    call: Call,
    object: usize,
    fp: usize,
    timeout_ns: Option<i64>,
    mut attempt: impl FnMut(Option<i64>) -> T,
    interrupted: impl Fn(&T) -> bool,
) -> Outcome<T> {
    let local = threads::local();
    if local.in_signal_handler(fp) {
        return Outcome::Done(attempt(None));
    }
    let Some(slot) = crate::tracked_slot(local) else { return Outcome::Done(attempt(None)) };
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    let mut first = true;
    loop {
        let signals = local.program_signals();
        slot.call.store(call as u32, Relaxed);
        slot.object.store(object, Relaxed);
        slot.frame.store(fp, Relaxed);
        slot.kicked.store(false, Relaxed);
        quiesce::publish_in_call(slot);
        if quiesce::slow_path_needed() && quiesce::on_enter_slow(slot) && QUIESCING.load(SeqCst) {
            quiesce::park(slot);
            if local.program_signals() != signals {
                quiesce::state_running(slot);
                return Outcome::ProgramSignal { left_ns: time_left(deadline, now_ns()) };
            }
        }
        let left = if first { None } else { time_left(deadline, now_ns()) };
        let r = attempt(left);
        if interrupted(&r) && quiesce::take_kick(slot, local, signals) {
            // Our kick: the loop entry parks the thread (if this is a quiescent point)
            // and the call starts again with the time that was left.
            first = false;
            continue;
        }
        quiesce::state_running(slot);
        return Outcome::Done(r);
    }
}

fn eintr_minus1(r: &impl PartialEq<i64>) -> bool {
    *r == -1 && errno::get() == EINTR
}

/// `-1`/EINTR for wrappers that return int and use errno.
fn finish_int(o: Outcome<c_int>) -> c_int {
    match o {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { .. } => {
            errno::set(EINTR);
            -1
        }
    }
}

fn finish_ssize(o: Outcome<ssize_t>) -> ssize_t {
    match o {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { .. } => {
            errno::set(EINTR);
            -1
        }
    }
}

struct I(i64);
impl PartialEq<i64> for I {
    fn eq(&self, o: &i64) -> bool {
        self.0 == *o
    }
}

fn int_eintr(r: &c_int) -> bool {
    eintr_minus1(&I(*r as i64))
}

fn ssize_eintr(r: &ssize_t) -> bool {
    eintr_minus1(&I(*r as i64))
}

// ---- sockets and descriptors ----

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let f = real::accept();
    let r = finish_int(blocking(
        Call::Accept,
        fd as usize,
        frame_address(),
        None,
        |_| drain::gate_accept(fd).unwrap_or_else(|| f(fd, addr, len)),
        int_eintr,
    ));
    if r >= 0 {
        drain::note_accepted(r);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let f = real::accept4();
    let r = finish_int(blocking(
        Call::Accept4,
        fd as usize,
        frame_address(),
        None,
        |_| drain::gate_accept(fd).unwrap_or_else(|| f(fd, addr, len, flags)),
        int_eintr,
    ));
    if r >= 0 {
        drain::note_accepted(r);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let f = real::read();
    finish_ssize(blocking(Call::Read, fd as usize, frame_address(), None, |_| f(fd, buf, n), ssize_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        crate::diag::fatal(&[b"*** buffer overflow detected ***: read"]);
    }
    let f = real::read();
    finish_ssize(blocking(Call::Read, fd as usize, frame_address(), None, |_| f(fd, buf, n), ssize_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    let f = real::readv();
    finish_ssize(blocking(Call::Readv, fd as usize, frame_address(), None, |_| f(fd, iov, cnt), ssize_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    let f = real::recv();
    finish_ssize(blocking(Call::Recv, fd as usize, frame_address(), None, |_| f(fd, buf, n, flags), ssize_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    a: *mut sockaddr,
    l: *mut socklen_t,
) -> ssize_t {
    let f = real::recvfrom();
    finish_ssize(blocking(
        Call::Recvfrom,
        fd as usize,
        frame_address(),
        None,
        |_| f(fd, buf, n, flags, a, l),
        ssize_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let f = real::recvmsg();
    finish_ssize(blocking(Call::Recvmsg, fd as usize, frame_address(), None, |_| f(fd, msg, flags), ssize_eintr))
}

// ---- event loops ----

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, ev: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    let f = real::epoll_wait();
    finish_int(blocking(
        Call::EpollWait,
        0,
        frame_address(),
        ms_ns(timeout),
        |l| f(ep, ev, max, l.map_or(timeout, ns_ms)),
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    ev: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    let f = real::epoll_pwait();
    let m = without_kick(mask);
    let mp = m.as_ref().map_or(core::ptr::null(), |m| m as *const sigset_t);
    finish_int(blocking(
        Call::EpollPwait,
        0,
        frame_address(),
        ms_ns(timeout),
        |l| f(ep, ev, max, l.map_or(timeout, ns_ms), mp),
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    ep: c_int,
    ev: *mut epoll_event,
    max: c_int,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    let f = real::epoll_pwait2();
    let m = without_kick(mask);
    let mp = m.as_ref().map_or(core::ptr::null(), |m| m as *const sigset_t);
    finish_int(blocking(
        Call::EpollPwait2,
        0,
        frame_address(),
        ts_ns(ts),
        |l| match l {
            None => f(ep, ev, max, ts, mp),
            Some(ns) => f(ep, ev, max, &ns_ts(ns), mp),
        },
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    let f = real::poll();
    finish_int(blocking(
        Call::Poll,
        0,
        frame_address(),
        ms_ns(timeout),
        |l| f(fds, n, l.map_or(timeout, ns_ms)),
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
    if fdslen / core::mem::size_of::<pollfd>() < n as usize {
        crate::diag::fatal(&[b"*** buffer overflow detected ***: poll"]);
    }
    let f = real::poll();
    finish_int(blocking(
        Call::Poll,
        0,
        frame_address(),
        ms_ns(timeout),
        |l| f(fds, n, l.map_or(timeout, ns_ms)),
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(fds: *mut pollfd, n: nfds_t, ts: *const timespec, mask: *const sigset_t) -> c_int {
    let f = real::ppoll();
    let m = without_kick(mask);
    let mp = m.as_ref().map_or(core::ptr::null(), |m| m as *const sigset_t);
    finish_int(blocking(
        Call::Ppoll,
        0,
        frame_address(),
        ts_ns(ts),
        |l| match l {
            None => f(fds, n, ts, mp),
            Some(ns) => f(fds, n, &ns_ts(ns), mp),
        },
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn select(n: c_int, r: *mut fd_set, w: *mut fd_set, x: *mut fd_set, tv: *mut timeval) -> c_int {
    let f = real::select();
    // select() clears the sets it is given, so a re-entry needs the program's originals.
    let (r0, w0, x0) = (r.as_ref().copied(), w.as_ref().copied(), x.as_ref().copied());
    let timeout = (!tv.is_null()).then(|| (*tv).tv_sec * 1_000_000_000 + (*tv).tv_usec * 1000);
    finish_int(blocking(
        Call::Select,
        0,
        frame_address(),
        timeout,
        |l| {
            if let Some(ns) = l {
                restore_sets(r, r0, w, w0, x, x0);
                *tv = timeval { tv_sec: (ns / 1_000_000_000) as _, tv_usec: ((ns % 1_000_000_000) / 1000) as _ };
            } else if !tv.is_null() || r0.is_some() {
                restore_sets(r, r0, w, w0, x, x0);
            }
            f(n, r, w, x, tv)
        },
        int_eintr,
    ))
}

unsafe fn restore_sets(
    r: *mut fd_set,
    r0: Option<fd_set>,
    w: *mut fd_set,
    w0: Option<fd_set>,
    x: *mut fd_set,
    x0: Option<fd_set>,
) {
    for (p, v) in [(r, r0), (w, w0), (x, x0)] {
        if let Some(v) = v {
            *p = v;
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    x: *mut fd_set,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    let f = real::pselect();
    let m = without_kick(mask);
    let mp = m.as_ref().map_or(core::ptr::null(), |m| m as *const sigset_t);
    let (r0, w0, x0) = (r.as_ref().copied(), w.as_ref().copied(), x.as_ref().copied());
    finish_int(blocking(
        Call::Pselect,
        0,
        frame_address(),
        ts_ns(ts),
        |l| {
            restore_sets(r, r0, w, w0, x, x0);
            match l {
                None => f(n, r, w, x, ts, mp),
                Some(ns) => f(n, r, w, x, &ns_ts(ns), mp),
            }
        },
        int_eintr,
    ))
}

// ---- sleeping ----

#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    let f = real::nanosleep();
    match blocking(
        Call::Nanosleep,
        0,
        frame_address(),
        ts_ns(req),
        |l| match l {
            None => f(req, rem),
            Some(ns) => f(&ns_ts(ns), rem),
        },
        int_eintr,
    ) {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { left_ns } => {
            // Interrupted while parked: what is left of the sleep (nothing once the time is
            // up); the caller usually sleeps again with `rem`.
            if !rem.is_null() {
                *rem = ns_ts(left_ns.unwrap_or(0));
            }
            errno::set(EINTR);
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn clock_nanosleep(
    clock: clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    let f = real::clock_nanosleep();
    // Returns the error number instead of setting errno; absolute sleeps need no adjusting.
    let relative = flags & libc::TIMER_ABSTIME == 0;
    match blocking(
        Call::ClockNanosleep,
        0,
        frame_address(),
        if relative { ts_ns(req) } else { None },
        |l| match l {
            None => f(clock, flags, req, rem),
            Some(ns) => f(clock, flags, &ns_ts(ns), rem),
        },
        |r| *r == EINTR,
    ) {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { left_ns } => {
            // As nanosleep; an absolute sleep leaves `rem` alone, as the kernel does.
            if relative && !rem.is_null() {
                *rem = ns_ts(left_ns.unwrap_or(0));
            }
            EINTR
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    let f = real::nanosleep();
    let req = timespec { tv_sec: secs as _, tv_nsec: 0 };
    let mut rem = timespec { tv_sec: 0, tv_nsec: 0 };
    match blocking(
        Call::Sleep,
        0,
        frame_address(),
        ts_ns(&req),
        |l| {
            let r = ns_ts(l.unwrap_or(secs as i64 * 1_000_000_000));
            f(&r, &mut rem)
        },
        int_eintr,
    ) {
        Outcome::Done(0) => 0,
        Outcome::Done(_) => unslept_seconds(rem.tv_sec * 1_000_000_000 + rem.tv_nsec),
        Outcome::ProgramSignal { left_ns } => unslept_seconds(left_ns.unwrap_or(0)),
    }
}

#[no_mangle]
pub unsafe extern "C" fn usleep(usecs: libc::useconds_t) -> c_int {
    let f = real::nanosleep();
    let total = usecs as i64 * 1000;
    finish_int(blocking(
        Call::Usleep,
        0,
        frame_address(),
        Some(total),
        |l| f(&ns_ts(l.unwrap_or(total)), core::ptr::null_mut()),
        int_eintr,
    ))
}

// ---- condition variables and semaphores ----

/// Condition variables restart on signals, so the controller wakes them with a broadcast
/// instead. A woken thread parks with the mutex released (as the wait itself would hold
/// it) and returns as a spurious wakeup, which every correct caller loops on.
#[inline(always)]
unsafe fn cond_common(
    call: Call,
    cond: *mut libc::pthread_cond_t,
    mutex: *mut libc::pthread_mutex_t,
    fp: usize,
    wait: impl FnOnce() -> c_int,
) -> c_int {
    let local = threads::local();
    if local.in_signal_handler(fp) {
        return wait();
    }
    let Some(slot) = crate::tracked_slot(local) else { return wait() };
    slot.call.store(call as u32, Relaxed);
    slot.object.store(cond as usize, Relaxed);
    slot.frame.store(fp, Relaxed);
    slot.kicked.store(false, Relaxed);
    quiesce::publish_in_call(slot);
    let park_unlocked = |slot| {
        real::pthread_mutex_unlock()(mutex);
        quiesce::park(slot);
        real::pthread_mutex_lock()(mutex);
    };
    if quiesce::slow_path_needed() && quiesce::on_enter_slow(slot) && QUIESCING.load(SeqCst) {
        park_unlocked(slot);
        quiesce::state_running(slot);
        return 0;
    }
    let r = wait();
    if slot.kicked.swap(false, SeqCst) && QUIESCING.load(SeqCst) && quiesce::on_enter_slow(slot) {
        park_unlocked(slot);
    }
    quiesce::state_running(slot);
    r
}

#[no_mangle]
pub unsafe extern "C" fn pthread_cond_wait(c: *mut libc::pthread_cond_t, m: *mut libc::pthread_mutex_t) -> c_int {
    let f = real::pthread_cond_wait();
    cond_common(Call::CondWait, c, m, frame_address(), || f(c, m))
}

#[no_mangle]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    abs: *const timespec,
) -> c_int {
    let f = real::pthread_cond_timedwait();
    cond_common(Call::CondTimedwait, c, m, frame_address(), || f(c, m, abs))
}

#[no_mangle]
pub unsafe extern "C" fn pthread_cond_clockwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    clock: clockid_t,
    abs: *const timespec,
) -> c_int {
    let f = real::pthread_cond_clockwait();
    cond_common(Call::CondClockwait, c, m, frame_address(), || f(c, m, clock, abs))
}

#[no_mangle]
pub unsafe extern "C" fn sem_wait(s: *mut sem_t) -> c_int {
    let f = real::sem_wait();
    finish_int(blocking(Call::SemWait, 0, frame_address(), None, |_| f(s), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn sem_timedwait(s: *mut sem_t, abs: *const timespec) -> c_int {
    let f = real::sem_timedwait();
    finish_int(blocking(Call::SemTimedwait, 0, frame_address(), None, |_| f(s, abs), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn sem_clockwait(s: *mut sem_t, clock: clockid_t, abs: *const timespec) -> c_int {
    let f = real::sem_clockwait();
    finish_int(blocking(Call::SemClockwait, 0, frame_address(), None, |_| f(s, clock, abs), int_eintr))
}

// ---- signals ----

#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const sigset_t) -> c_int {
    let f = real::sigsuspend();
    let m = without_kick(mask).unwrap_or_else(|| *mask);
    finish_int(blocking(Call::Sigsuspend, 0, frame_address(), None, |_| f(&m), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn sigwaitinfo(set: *const sigset_t, info: *mut siginfo_t) -> c_int {
    let f = real::sigwaitinfo();
    let s = without_kick(set).unwrap_or_else(|| *set);
    finish_int(blocking(Call::Sigwaitinfo, 0, frame_address(), None, |_| f(&s, info), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(set: *const sigset_t, info: *mut siginfo_t, ts: *const timespec) -> c_int {
    let f = real::sigtimedwait();
    let s = without_kick(set).unwrap_or_else(|| *set);
    finish_int(blocking(
        Call::Sigtimedwait,
        0,
        frame_address(),
        ts_ns(ts),
        |l| match l {
            None => f(&s, info, ts),
            Some(ns) => f(&s, info, &ns_ts(ns)),
        },
        int_eintr,
    ))
}

/// glibc's sigwait retries EINTR internally (bypassing any wrapper), so it is rebuilt
/// here on sigwaitinfo, keeping its contract: it never fails with EINTR.
#[no_mangle]
pub unsafe extern "C" fn sigwait(set: *const sigset_t, sig: *mut c_int) -> c_int {
    let f = real::sigwaitinfo();
    let s = without_kick(set).unwrap_or_else(|| *set);
    loop {
        match blocking(Call::Sigwait, 0, frame_address(), None, |_| f(&s, core::ptr::null_mut()), int_eintr) {
            Outcome::Done(r) if r > 0 => {
                if !sig.is_null() {
                    *sig = r;
                }
                return 0;
            }
            Outcome::Done(_) if errno::get() != EINTR => return errno::get(),
            _ => continue,
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn pause() -> c_int {
    let f = real::pause();
    finish_int(blocking(Call::Pause, 0, frame_address(), None, |_| f(), int_eintr))
}

// ---- child processes ----

#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut c_int) -> pid_t {
    let f = real::wait();
    finish_int(blocking(Call::Wait, 0, frame_address(), None, |_| f(status), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    let f = real::waitpid();
    finish_int(blocking(Call::Waitpid, 0, frame_address(), None, |_| f(pid, status, options), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn waitid(idtype: idtype_t, id: id_t, info: *mut siginfo_t, options: c_int) -> c_int {
    let f = real::waitid();
    finish_int(blocking(Call::Waitid, 0, frame_address(), None, |_| f(idtype, id, info, options), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn wait3(status: *mut c_int, options: c_int, ru: *mut rusage) -> pid_t {
    let f = real::wait3();
    finish_int(blocking(Call::Wait3, 0, frame_address(), None, |_| f(status, options, ru), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn wait4(pid: pid_t, status: *mut c_int, options: c_int, ru: *mut rusage) -> pid_t {
    let f = real::wait4();
    finish_int(blocking(Call::Wait4, 0, frame_address(), None, |_| f(pid, status, options, ru), int_eintr))
}

// ---- System V IPC ----

#[no_mangle]
pub unsafe extern "C" fn semop(id: c_int, ops: *mut sembuf, n: size_t) -> c_int {
    let f = real::semop();
    finish_int(blocking(Call::Semop, 0, frame_address(), None, |_| f(id, ops, n), int_eintr))
}

#[no_mangle]
pub unsafe extern "C" fn semtimedop(id: c_int, ops: *mut sembuf, n: size_t, ts: *const timespec) -> c_int {
    let f = real::semtimedop();
    finish_int(blocking(
        Call::Semtimedop,
        0,
        frame_address(),
        ts_ns(ts),
        |l| match l {
            None => f(id, ops, n, ts),
            Some(ns) => f(id, ops, n, &ns_ts(ns)),
        },
        int_eintr,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn msgrcv(id: c_int, p: *mut c_void, sz: size_t, typ: c_long, flg: c_int) -> ssize_t {
    let f = real::msgrcv();
    finish_ssize(blocking(Call::Msgrcv, 0, frame_address(), None, |_| f(id, p, sz, typ, flg), ssize_eintr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_milliseconds_round_up_so_waits_never_end_early() {
        assert_eq!(ns_ms(0), 0);
        assert_eq!(ns_ms(1), 1);
        assert_eq!(ns_ms(1_000_000), 1);
        assert_eq!(ns_ms(1_000_001), 2);
        assert_eq!(ns_ms(i64::MAX), c_int::MAX);
    }

    #[test]
    fn time_left_counts_down_to_zero_and_stays_there() {
        assert_eq!(time_left(None, 5), None, "no timeout, nothing left to report");
        assert_eq!(time_left(Some(3_000), 1_000), Some(2_000));
        assert_eq!(time_left(Some(3_000), 3_000), Some(0));
        assert_eq!(time_left(Some(3_000), 9_000), Some(0), "parked past the deadline: the time is up");
        assert_eq!(time_left(Some(i64::MIN), i64::MAX), Some(0));
    }

    #[test]
    fn unslept_seconds_round_up_so_sleep_never_ends_early() {
        assert_eq!(unslept_seconds(0), 0, "the time is up: sleep() says it slept it all");
        assert_eq!(unslept_seconds(1), 1);
        assert_eq!(unslept_seconds(2_000_000_000), 2);
        assert_eq!(unslept_seconds(2_000_000_001), 3);
        assert_eq!(unslept_seconds(-5), 0);
        assert_eq!(unslept_seconds(i64::MAX), c_uint::MAX);
    }

    #[test]
    fn timeouts_convert_both_ways() {
        assert_eq!(ms_ns(-1), None);
        assert_eq!(ms_ns(250), Some(250_000_000));
        let ts = ns_ts(1_500_000_123);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (1, 500_000_123));
        assert_eq!(ts_ns(&ts), Some(1_500_000_123));
        assert_eq!(ts_ns(core::ptr::null()), None);
    }
}
