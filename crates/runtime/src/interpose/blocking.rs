//! Wrapped blocking calls (DESIGN.md "Quiescence"). Each wrapper records which call the
//! thread is in, runs the real call, and when the call was interrupted by the runtime's
//! kick (not by the program's own signal) parks the thread and re-enters the call with
//! the time that remained, so the program sees the call's original semantics.

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
    crate::monotonic_ns() as i64
}

/// The duration `ts` holds, in nanoseconds (None for null).
///
/// # Safety
/// `ts` is null or points to a readable timespec.
unsafe fn ts_ns(ts: *const timespec) -> Option<i64> {
    // SAFETY: null or readable (the caller's contract).
    unsafe { ts.as_ref() }.map(|t| t.tv_sec * 1_000_000_000 + t.tv_nsec)
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
/// Steady state (started, not quiescing): one TLS lookup, five plain stores, two relaxed
/// loads, the call, one store; errno is never touched.
#[inline(always)]
pub fn blocking<T: PartialEq + Default>(
    call: Call,
    object: usize,
    fp: usize,
    timeout_ns: Option<i64>,
    attempt: impl FnMut(Option<i64>) -> T,
    interrupted: impl Fn(&T) -> bool,
) -> Outcome<T> {
    blocking_watching(call, object, Watched::Nothing, fp, timeout_ns, attempt, interrupted)
}

/// The descriptors an event-loop wait watches, looked at only before startup completed.
#[derive(Clone, Copy)]
pub enum Watched {
    Nothing,
    /// An epoll instance: what is registered in it.
    Epoll(c_int),
    /// A poll set as the program passed it.
    Poll(*const pollfd, nfds_t),
    /// A select's sets as the program passed them (the wrapper's copy), and its `nfds`.
    Select(*const FdSets, c_int),
}

impl Watched {
    /// Whether one of the watched descriptors is a listening socket with a client waiting.
    fn a_listener_with_a_client(self) -> bool {
        match self {
            Watched::Nothing => false,
            Watched::Epoll(ep) => {
                let _internal = threads::InternalGuard::enter();
                let _errno = crate::errno::ErrnoGuard::save();
                let info = mcr_procfs::fd::info(mcr_procfs::Process::Current, ep).unwrap_or_default();
                info.epoll.iter().any(|i| crate::rawfd::listener_with_a_client(i.fd))
            }
            Watched::Poll(fds, n) if !fds.is_null() => (0..n as usize).any(|i| {
                // SAFETY: `fds` points to `n` pollfds (the program's poll contract).
                let p = unsafe { *fds.add(i) };
                p.fd >= 0 && p.events & libc::POLLIN != 0 && crate::rawfd::listener_with_a_client(p.fd)
            }),
            Watched::Poll(..) => false,
            Watched::Select(sets, n) => {
                // SAFETY: the select wrapper's own copy, alive while its call runs.
                let sets = unsafe { sets.as_ref() };
                sets.is_some_and(|sets| sets.readable(n).any(crate::rawfd::listener_with_a_client))
            }
        }
    }

    /// What the thread's slot records while it waits: the set and its length (the control
    /// thread reads the set to tell an event loop from a thread serving a connection).
    fn recorded(self, object: usize) -> (usize, usize) {
        match self {
            Watched::Poll(fds, n) => (fds as usize, n as usize),
            Watched::Select(sets, n) => (sets as usize, n.max(0) as usize),
            Watched::Nothing | Watched::Epoll(_) => (object, 0),
        }
    }
}

/// [`blocking`] for a wait on a set of descriptors (`watched`).
#[inline(always)]
pub fn blocking_watching<T: PartialEq + Default>(
    call: Call,
    object: usize,
    watched: Watched,
    fp: usize,
    timeout_ns: Option<i64>,
    mut attempt: impl FnMut(Option<i64>) -> T,
    interrupted: impl Fn(&T) -> bool,
) -> Outcome<T> {
    let local = threads::local();
    if local.in_signal_handler(fp) {
        count_untracked(local, true);
        return Outcome::Done(attempt(None));
    }
    let Some(slot) = crate::tracked_slot(local) else {
        count_untracked(local, false);
        return Outcome::Done(attempt(None));
    };
    if !quiesce::STARTUP_DONE.load(Relaxed) {
        if let Some(r) = returned_at_once(call, object, watched, fp, timeout_ns, &mut attempt) {
            return Outcome::Done(r);
        }
    }
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    // Only this thread writes it: a load and a store, no atomic read-modify-write.
    slot.calls_entered.store(slot.calls_entered.load(Relaxed).wrapping_add(1), Relaxed);
    let mut first = true;
    let (recorded, set_len) = watched.recorded(object);
    loop {
        let signals = local.program_signals();
        slot.call.store(call as u32, Relaxed);
        slot.object.store(recorded, Relaxed);
        slot.set_len.store(set_len, Relaxed);
        slot.frame.store(fp, Relaxed);
        slot.kicked.store(false, Relaxed);
        quiesce::publish_in_call(slot);
        if quiesce::slow_path_needed() && quiesce::on_enter_slow(slot) && QUIESCING.load(SeqCst) {
            let took_state = quiesce::held_for_update();
            quiesce::park(slot);
            if local.program_signals() != signals {
                quiesce::state_running(slot);
                return Outcome::ProgramSignal { left_ns: time_left(deadline, now_ns()) };
            }
            // An update's new version wakes up on the old version's state, and the wait it
            // parked in was set up from its own: the timeout from its own (empty) timers,
            // say (nginx's worker then waited forever while a rate-limited download's timer,
            // transferred, was due). The wait ends at once, as an early timeout, or, for a
            // wait with none, as an interrupted one: the loop looks at its state again.
            if took_state && call.waits_for_events() {
                if timeout_ns.is_none() {
                    quiesce::state_running(slot);
                    return Outcome::ProgramSignal { left_ns: None };
                }
                let r = attempt(Some(0));
                quiesce::state_running(slot);
                return Outcome::Done(r);
            }
        }
        let left = if first { None } else { time_left(deadline, now_ns()) };
        let r = attempt(left);
        if interrupted(&r) && quiesce::take_kick(slot, local, signals) {
            // Our kick: the loop entry parks the thread (if this is a quiescent point)
            // and the call starts again with the time that was left.
            slot.call_restarts.store(slot.call_restarts.load(Relaxed).wrapping_add(1), Relaxed);
            first = false;
            continue;
        }
        quiesce::state_running(slot);
        return Outcome::Done(r);
    }
}

/// Before startup completed: the result of a wait that returns at once, run as it is,
/// for it is not where the thread waits. Completing startup there (or parking an update's
/// new version there) would end startup in the middle of the program's setup: nginx's
/// worker tests its epoll with a wait that returns at once (`ngx_epoll_test_rdhup`) before
/// it makes its connections, and an update's new worker, parked there, went on with that
/// setup over the old worker's state (it took two old connections for its own listening
/// socket and channel, and kept the previous version's whole configuration alive: 1.1 MB
/// more per update); httpd's master reads /dev/null before it forks its children, and its
/// startup ended without them. An event-loop wait is asked with no time left (what it
/// reports is what the call would have: the program asked for a wait that may end at
/// once); a read runs when its descriptor is ready. Not where the old version's threads
/// wait (an update's new version parks there, whatever is ready: the events are the old
/// version's clients'), and at most [`quiesce::may_pass_a_ready_wait`] times.
///
/// Never a wait for clients: an accept, or a wait watching a listening socket a client
/// waits on. That is the server's loop, and its startup ends there: a server started while
/// clients wait (restarted under load) would otherwise serve them within its startup,
/// and what they change would count as what the startup computed (an update whose new
/// startup computes 0 connections rolled back on the old one's 1). And an update's new
/// version takes no client from the listening sockets it shares with the old version,
/// wherever its threads wait: until the commit the clients are the old version's, and a
/// rolled-back new version dies with those it took (their connections reset). Where the
/// old threads wait says nothing when a load kept every old worker busy with a client at
/// the quiesce (forkd: none was parked in accept).
#[cold]
#[inline(never)]
fn returned_at_once<T: PartialEq + Default>(
    call: Call,
    object: usize,
    watched: Watched,
    fp: usize,
    timeout_ns: Option<i64>,
    attempt: &mut impl FnMut(Option<i64>) -> T,
) -> Option<T> {
    let asks = call.can_ask_without_waiting() && timeout_ns != Some(0);
    if !(asks || call.depends_on_fd())
        || matches!(call, Call::Accept | Call::Accept4)
        || crate::replay::old_version_waits_here(call, fp) == Some(true)
        || watched.a_listener_with_a_client()
        || !quiesce::may_pass_a_ready_wait()
    {
        return None;
    }
    if asks {
        let r = attempt(Some(0));
        return (r != T::default()).then_some(r);
    }
    let mut p = pollfd { fd: object as c_int, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd on the stack, no wait.
    (unsafe { real::poll()(&mut p, 1, 0) } > 0).then(|| attempt(None))
}

/// A program thread's wrapped call that bypassed quiescence, for the report of a quiesce
/// the thread did not join.
#[cold]
fn count_untracked(local: &threads::Local, in_handler: bool) {
    if let Some(slot) = local.claimed_slot() {
        let counter = if in_handler { &slot.untracked_in_handler } else { &slot.untracked_internal };
        counter.fetch_add(1, Relaxed);
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
//
// Each wrapper runs the real call with the caller's own arguments, unchanged (the
// caller's contract is libc's for that call), or with a replacement said where it is
// made: a live local timespec holding the time left, a live copy of a signal mask
// without the kick signal (null stays null).

/// A mask argument without the kick signal: a live copy, or null for null.
fn mask_ptr(copy: &Option<sigset_t>) -> *const sigset_t {
    copy.as_ref().map_or(core::ptr::null(), |m| m as *const sigset_t)
}

/// # Safety
/// accept(2)'s contract: `addr` and `len` are null, or valid for accept to write.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let f = real::accept();
    // SAFETY: the caller's own arguments, unchanged.
    let call = || unsafe { f(fd, addr, len) };
    let r = finish_int(blocking(
        Call::Accept,
        fd as usize,
        frame_address(),
        None,
        |_| drain::gate_accept(fd).unwrap_or_else(call),
        int_eintr,
    ));
    if r >= 0 {
        drain::note_accepted(r);
    }
    r
}

/// # Safety
/// accept4(2)'s contract: `addr` and `len` are null, or valid for accept4 to write.
#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let f = real::accept4();
    // SAFETY: the caller's own arguments, unchanged.
    let call = || unsafe { f(fd, addr, len, flags) };
    let r = finish_int(blocking(
        Call::Accept4,
        fd as usize,
        frame_address(),
        None,
        |_| drain::gate_accept(fd).unwrap_or_else(call),
        int_eintr,
    ));
    if r >= 0 {
        drain::note_accepted(r);
    }
    r
}

/// # Safety
/// read(2)'s contract: `buf` points to `n` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let f = real::read();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(fd, buf, n) };
    finish_ssize(blocking(Call::Read, fd as usize, frame_address(), None, call, ssize_eintr))
}

/// # Safety
/// As for [`read`], with `buflen` the size of `buf` (the fortified read's check).
#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        crate::diag::fatal(&[b"*** buffer overflow detected ***: read"]);
    }
    let f = real::read();
    // SAFETY: the caller's own arguments, unchanged; `n` fits in `buf` (checked above).
    let call = |_| unsafe { f(fd, buf, n) };
    finish_ssize(blocking(Call::Read, fd as usize, frame_address(), None, call, ssize_eintr))
}

/// # Safety
/// readv(2)'s contract: `iov` points to `cnt` iovecs, each of writable memory.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    let f = real::readv();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(fd, iov, cnt) };
    finish_ssize(blocking(Call::Readv, fd as usize, frame_address(), None, call, ssize_eintr))
}

/// # Safety
/// recv(2)'s contract: `buf` points to `n` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    let f = real::recv();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(fd, buf, n, flags) };
    finish_ssize(blocking(Call::Recv, fd as usize, frame_address(), None, call, ssize_eintr))
}

/// # Safety
/// recvfrom(2)'s contract: `buf` points to `n` writable bytes; `a` and `l` are null, or
/// valid for recvfrom to write.
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
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(fd, buf, n, flags, a, l) };
    finish_ssize(blocking(Call::Recvfrom, fd as usize, frame_address(), None, call, ssize_eintr))
}

/// # Safety
/// recvmsg(2)'s contract: `msg` points to a msghdr whose buffers are writable.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let f = real::recvmsg();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(fd, msg, flags) };
    finish_ssize(blocking(Call::Recvmsg, fd as usize, frame_address(), None, call, ssize_eintr))
}

// ---- event loops ----

/// # Safety
/// epoll_wait(2)'s contract: `ev` points to `max` writable epoll_events.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, ev: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    let f = real::epoll_wait();
    // SAFETY: the caller's own arguments, the timeout shortened to the time left.
    let call = |l: Option<i64>| unsafe { f(ep, ev, max, l.map_or(timeout, ns_ms)) };
    let watched = Watched::Epoll(ep);
    finish_int(blocking_watching(Call::EpollWait, 0, watched, frame_address(), ms_ns(timeout), call, int_eintr))
}

/// # Safety
/// epoll_pwait(2)'s contract: `ev` points to `max` writable epoll_events, `mask` is null or
/// a readable sigset.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    ep: c_int,
    ev: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    let f = real::epoll_pwait();
    // SAFETY: `mask` is null or readable (the caller's contract).
    let m = unsafe { without_kick(mask) };
    let mp = mask_ptr(&m);
    // SAFETY: the caller's own arguments, the timeout shortened to the time left, the mask
    // a live copy (or null).
    let call = |l: Option<i64>| unsafe { f(ep, ev, max, l.map_or(timeout, ns_ms), mp) };
    let watched = Watched::Epoll(ep);
    finish_int(blocking_watching(Call::EpollPwait, 0, watched, frame_address(), ms_ns(timeout), call, int_eintr))
}

/// # Safety
/// epoll_pwait2(2)'s contract: `ev` points to `max` writable epoll_events, `ts` and `mask`
/// are null or readable.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    ep: c_int,
    ev: *mut epoll_event,
    max: c_int,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    let f = real::epoll_pwait2();
    // SAFETY: `mask` and `ts` are null or readable (the caller's contract).
    let (m, timeout) = unsafe { (without_kick(mask), ts_ns(ts)) };
    let mp = mask_ptr(&m);
    // SAFETY: the caller's own arguments, or a live local timespec with the time left; the
    // mask a live copy (or null).
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(ep, ev, max, ts, mp),
            Some(ns) => f(ep, ev, max, &ns_ts(ns), mp),
        }
    };
    let watched = Watched::Epoll(ep);
    finish_int(blocking_watching(Call::EpollPwait2, 0, watched, frame_address(), timeout, call, int_eintr))
}

/// # Safety
/// poll(2)'s contract: `fds` points to `n` writable pollfds.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    let f = real::poll();
    // SAFETY: the caller's own arguments, the timeout shortened to the time left.
    let call = |l: Option<i64>| unsafe { f(fds, n, l.map_or(timeout, ns_ms)) };
    let watched = Watched::Poll(fds, n);
    finish_int(blocking_watching(Call::Poll, 0, watched, frame_address(), ms_ns(timeout), call, int_eintr))
}

/// # Safety
/// As for [`poll`], with `fdslen` the size of `fds` in bytes (the fortified poll's check).
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
    if fdslen / core::mem::size_of::<pollfd>() < n as usize {
        crate::diag::fatal(&[b"*** buffer overflow detected ***: poll"]);
    }
    let f = real::poll();
    // SAFETY: the caller's own arguments (`n` pollfds fit in `fds`, checked above), the
    // timeout shortened to the time left.
    let call = |l: Option<i64>| unsafe { f(fds, n, l.map_or(timeout, ns_ms)) };
    let watched = Watched::Poll(fds, n);
    finish_int(blocking_watching(Call::Poll, 0, watched, frame_address(), ms_ns(timeout), call, int_eintr))
}

/// # Safety
/// ppoll(2)'s contract: `fds` points to `n` writable pollfds, `ts` and `mask` are null or
/// readable.
#[no_mangle]
pub unsafe extern "C" fn ppoll(fds: *mut pollfd, n: nfds_t, ts: *const timespec, mask: *const sigset_t) -> c_int {
    let f = real::ppoll();
    // SAFETY: `mask` and `ts` are null or readable (the caller's contract).
    let (m, timeout) = unsafe { (without_kick(mask), ts_ns(ts)) };
    let mp = mask_ptr(&m);
    // SAFETY: the caller's own arguments, or a live local timespec with the time left; the
    // mask a live copy (or null).
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(fds, n, ts, mp),
            Some(ns) => f(fds, n, &ns_ts(ns), mp),
        }
    };
    let watched = Watched::Poll(fds, n);
    finish_int(blocking_watching(Call::Ppoll, 0, watched, frame_address(), timeout, call, int_eintr))
}

/// The three sets of a select call, as the program passed them: select() clears the sets
/// it is given, so a call made again needs the originals. `repr(C)`, plain integers: the
/// control thread reads `saved` from the waiting thread's stack (`drain`).
#[repr(C)]
pub struct FdSets {
    /// The program's read, write and exception sets (null: none).
    ptrs: [*mut fd_set; 3],
    /// Their contents as passed (empty where there is none).
    pub saved: [fd_set; 3],
}

impl FdSets {
    /// # Safety
    /// Each pointer is null or points to an fd_set that stays readable and writable while
    /// the copy is used.
    unsafe fn save(r: *mut fd_set, w: *mut fd_set, x: *mut fd_set) -> Self {
        // SAFETY: an all-zero fd_set is the empty set.
        let empty: fd_set = unsafe { core::mem::zeroed() };
        // SAFETY: null or readable (the caller's contract); fd_set is Copy.
        let copy = |p: *mut fd_set| unsafe { p.as_ref() }.copied().unwrap_or(empty);
        Self { ptrs: [r, w, x], saved: [copy(r), copy(w), copy(x)] }
    }

    /// Put the program's sets back.
    fn restore(&self) {
        for (&p, v) in self.ptrs.iter().zip(&self.saved) {
            if !p.is_null() {
                // SAFETY: `p` was non-null and stays writable (the contract of `save`).
                unsafe { *p = *v };
            }
        }
    }

    fn any(&self) -> bool {
        self.ptrs.iter().any(|p| !p.is_null())
    }

    /// The descriptors below `n` in the read set.
    fn readable(&self, n: c_int) -> impl Iterator<Item = c_int> + '_ {
        set_members(&self.saved[0], n)
    }
}

/// The descriptors below `n` in `set`.
pub fn set_members(set: &fd_set, n: c_int) -> impl Iterator<Item = c_int> + '_ {
    // SAFETY: FD_ISSET reads a bit of `set`, below FD_SETSIZE.
    (0..n.clamp(0, libc::FD_SETSIZE as c_int)).filter(move |&fd| unsafe { libc::FD_ISSET(fd, set) })
}

/// # Safety
/// select(2)'s contract: `r`, `w`, `x` are null or writable fd_sets, `tv` null or a
/// writable timeval.
#[no_mangle]
pub unsafe extern "C" fn select(n: c_int, r: *mut fd_set, w: *mut fd_set, x: *mut fd_set, tv: *mut timeval) -> c_int {
    let f = real::select();
    // SAFETY: the caller's contract, for as long as this call runs.
    let sets = unsafe { FdSets::save(r, w, x) };
    // SAFETY: null or readable (the caller's contract).
    let timeout = unsafe { tv.as_ref() }.map(|t| t.tv_sec * 1_000_000_000 + t.tv_usec * 1000);
    let call = |l: Option<i64>| {
        if let Some(ns) = l {
            sets.restore();
            // SAFETY: a time is left only when there was a timeout: `tv` is non-null and
            // writable (select itself writes it).
            unsafe { *tv = timeval { tv_sec: (ns / 1_000_000_000) as _, tv_usec: ((ns % 1_000_000_000) / 1000) as _ } };
        } else if !tv.is_null() || sets.any() {
            sets.restore();
        }
        // SAFETY: the caller's own arguments (its sets and timeout as it passed them, or
        // with the time left).
        unsafe { f(n, r, w, x, tv) }
    };
    let watched = Watched::Select(&sets, n);
    finish_int(blocking_watching(Call::Select, 0, watched, frame_address(), timeout, call, int_eintr))
}

/// # Safety
/// pselect(2)'s contract: `r`, `w`, `x` are null or writable fd_sets, `ts` and `mask` null or
/// readable.
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
    // SAFETY: the caller's contract, for as long as this call runs.
    let (sets, m, timeout) = unsafe { (FdSets::save(r, w, x), without_kick(mask), ts_ns(ts)) };
    let mp = mask_ptr(&m);
    let call = |l: Option<i64>| {
        sets.restore();
        // SAFETY: the caller's own arguments, or a live local timespec with the time left;
        // the mask a live copy (or null).
        unsafe {
            match l {
                None => f(n, r, w, x, ts, mp),
                Some(ns) => f(n, r, w, x, &ns_ts(ns), mp),
            }
        }
    };
    let watched = Watched::Select(&sets, n);
    finish_int(blocking_watching(Call::Pselect, 0, watched, frame_address(), timeout, call, int_eintr))
}

// ---- sleeping ----

/// # Safety
/// nanosleep(2)'s contract: `req` points to a readable timespec, `rem` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    let f = real::nanosleep();
    // SAFETY: null or readable (the caller's contract).
    let timeout = unsafe { ts_ns(req) };
    // SAFETY: the caller's own arguments, or a live local timespec with the time left.
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(req, rem),
            Some(ns) => f(&ns_ts(ns), rem),
        }
    };
    match blocking(Call::Nanosleep, 0, frame_address(), timeout, call, int_eintr) {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { left_ns } => {
            // Interrupted while parked: what is left of the sleep (nothing once the time is
            // up); the caller usually sleeps again with `rem`.
            if !rem.is_null() {
                // SAFETY: non-null `rem` is writable (the caller's contract).
                unsafe { *rem = ns_ts(left_ns.unwrap_or(0)) };
            }
            errno::set(EINTR);
            -1
        }
    }
}

/// # Safety
/// clock_nanosleep(2)'s contract: `req` points to a readable timespec, `rem` is null or
/// writable.
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
    // SAFETY: null or readable (the caller's contract).
    let timeout = if relative { unsafe { ts_ns(req) } } else { None };
    // SAFETY: the caller's own arguments, or a live local timespec with the time left.
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(clock, flags, req, rem),
            Some(ns) => f(clock, flags, &ns_ts(ns), rem),
        }
    };
    match blocking(Call::ClockNanosleep, 0, frame_address(), timeout, call, |r| *r == EINTR) {
        Outcome::Done(r) => r,
        Outcome::ProgramSignal { left_ns } => {
            // As nanosleep; an absolute sleep leaves `rem` alone, as the kernel does.
            if relative && !rem.is_null() {
                // SAFETY: non-null `rem` is writable (the caller's contract).
                unsafe { *rem = ns_ts(left_ns.unwrap_or(0)) };
            }
            EINTR
        }
    }
}

/// # Safety
/// sleep(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    let f = real::nanosleep();
    let total = secs as i64 * 1_000_000_000;
    let mut rem = timespec { tv_sec: 0, tv_nsec: 0 };
    let call = |l: Option<i64>| {
        // SAFETY: a live local request, and `rem`, a live local.
        unsafe { f(&ns_ts(l.unwrap_or(total)), &mut rem) }
    };
    match blocking(Call::Sleep, 0, frame_address(), Some(total), call, int_eintr) {
        Outcome::Done(0) => 0,
        Outcome::Done(_) => unslept_seconds(rem.tv_sec * 1_000_000_000 + rem.tv_nsec),
        Outcome::ProgramSignal { left_ns } => unslept_seconds(left_ns.unwrap_or(0)),
    }
}

/// # Safety
/// usleep(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn usleep(usecs: libc::useconds_t) -> c_int {
    let f = real::nanosleep();
    let total = usecs as i64 * 1000;
    // SAFETY: a live local request, and no `rem`.
    let call = |l: Option<i64>| unsafe { f(&ns_ts(l.unwrap_or(total)), core::ptr::null_mut()) };
    finish_int(blocking(Call::Usleep, 0, frame_address(), Some(total), call, int_eintr))
}

// ---- condition variables and semaphores ----

/// Condition variables restart on signals, so the controller wakes them with a broadcast
/// instead. A woken thread parks with the mutex released (as the wait itself would hold
/// it) and returns as a spurious wakeup, which every correct caller loops on.
///
/// # Safety
/// `mutex` is the mutex `cond` waits with, locked by the calling thread (the wait's
/// contract); `wait` is the real wait on them.
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
        // SAFETY: the calling thread holds `mutex` (the caller's contract): released while
        // parked, as the wait itself would, and taken again before returning.
        unsafe { real::pthread_mutex_unlock()(mutex) };
        quiesce::park(slot);
        // SAFETY: as above.
        unsafe { real::pthread_mutex_lock()(mutex) };
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

/// # Safety
/// pthread_cond_wait(3)'s contract: `c` and `m` are initialized, `m` locked by the caller.
#[no_mangle]
pub unsafe extern "C" fn pthread_cond_wait(c: *mut libc::pthread_cond_t, m: *mut libc::pthread_mutex_t) -> c_int {
    let f = real::pthread_cond_wait();
    // SAFETY: the caller's own arguments, unchanged, under its contract (which is
    // cond_common's too).
    unsafe { cond_common(Call::CondWait, c, m, frame_address(), || f(c, m)) }
}

/// # Safety
/// pthread_cond_timedwait(3)'s contract: `c` and `m` are initialized, `m` locked by the
/// caller, `abs` a readable timespec.
#[no_mangle]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    abs: *const timespec,
) -> c_int {
    let f = real::pthread_cond_timedwait();
    // SAFETY: as in pthread_cond_wait.
    unsafe { cond_common(Call::CondTimedwait, c, m, frame_address(), || f(c, m, abs)) }
}

/// # Safety
/// pthread_cond_clockwait(3)'s contract: `c` and `m` are initialized, `m` locked by the
/// caller, `abs` a readable timespec.
#[no_mangle]
pub unsafe extern "C" fn pthread_cond_clockwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    clock: clockid_t,
    abs: *const timespec,
) -> c_int {
    let f = real::pthread_cond_clockwait();
    // SAFETY: as in pthread_cond_wait.
    unsafe { cond_common(Call::CondClockwait, c, m, frame_address(), || f(c, m, clock, abs)) }
}

/// # Safety
/// sem_wait(3)'s contract: `s` is an initialized semaphore.
#[no_mangle]
pub unsafe extern "C" fn sem_wait(s: *mut sem_t) -> c_int {
    let f = real::sem_wait();
    // SAFETY: the caller's own argument, unchanged.
    let call = |_| unsafe { f(s) };
    finish_int(blocking(Call::SemWait, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// sem_timedwait(3)'s contract: `s` is an initialized semaphore, `abs` a readable timespec.
#[no_mangle]
pub unsafe extern "C" fn sem_timedwait(s: *mut sem_t, abs: *const timespec) -> c_int {
    let f = real::sem_timedwait();
    // SAFETY: the caller's own arguments, unchanged (an absolute time needs no adjusting).
    let call = |_| unsafe { f(s, abs) };
    finish_int(blocking(Call::SemTimedwait, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// sem_clockwait(3)'s contract: `s` is an initialized semaphore, `abs` a readable timespec.
#[no_mangle]
pub unsafe extern "C" fn sem_clockwait(s: *mut sem_t, clock: clockid_t, abs: *const timespec) -> c_int {
    let f = real::sem_clockwait();
    // SAFETY: the caller's own arguments, unchanged (an absolute time needs no adjusting).
    let call = |_| unsafe { f(s, clock, abs) };
    finish_int(blocking(Call::SemClockwait, 0, frame_address(), None, call, int_eintr))
}

// ---- signals ----

/// # Safety
/// sigsuspend(2)'s contract: `mask` points to a readable sigset.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const sigset_t) -> c_int {
    let f = real::sigsuspend();
    // SAFETY: null or readable (the caller's contract).
    let m = unsafe { without_kick(mask) };
    let mp = mask_ptr(&m);
    // SAFETY: a live copy of the caller's mask (null, as the caller passed it, lets the
    // kernel report EFAULT).
    let call = |_| unsafe { f(mp) };
    finish_int(blocking(Call::Sigsuspend, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// sigwaitinfo(2)'s contract: `set` points to a readable sigset, `info` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn sigwaitinfo(set: *const sigset_t, info: *mut siginfo_t) -> c_int {
    let f = real::sigwaitinfo();
    // SAFETY: null or readable (the caller's contract).
    let s = unsafe { without_kick(set) };
    let sp = mask_ptr(&s);
    // SAFETY: a live copy of the caller's set (or its null), and its `info`.
    let call = |_| unsafe { f(sp, info) };
    finish_int(blocking(Call::Sigwaitinfo, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// sigtimedwait(2)'s contract: `set` points to a readable sigset, `info` is null or
/// writable, `ts` null or readable.
#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(set: *const sigset_t, info: *mut siginfo_t, ts: *const timespec) -> c_int {
    let f = real::sigtimedwait();
    // SAFETY: null or readable (the caller's contract).
    let (s, timeout) = unsafe { (without_kick(set), ts_ns(ts)) };
    let sp = mask_ptr(&s);
    // SAFETY: a live copy of the caller's set (or its null), its `info`, and its timeout
    // or a live local timespec with the time left.
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(sp, info, ts),
            Some(ns) => f(sp, info, &ns_ts(ns)),
        }
    };
    finish_int(blocking(Call::Sigtimedwait, 0, frame_address(), timeout, call, int_eintr))
}

/// glibc's sigwait retries EINTR internally (bypassing any wrapper), so it is rebuilt
/// here on sigwaitinfo, keeping its contract: it never fails with EINTR.
///
/// # Safety
/// sigwait(3)'s contract: `set` points to a readable sigset, `sig` to a writable int.
#[no_mangle]
pub unsafe extern "C" fn sigwait(set: *const sigset_t, sig: *mut c_int) -> c_int {
    let f = real::sigwaitinfo();
    // SAFETY: null or readable (the caller's contract).
    let s = unsafe { without_kick(set) };
    let sp = mask_ptr(&s);
    loop {
        // SAFETY: a live copy of the caller's set (or its null), and no siginfo.
        let call = |_| unsafe { f(sp, core::ptr::null_mut()) };
        match blocking(Call::Sigwait, 0, frame_address(), None, call, int_eintr) {
            Outcome::Done(r) if r > 0 => {
                if !sig.is_null() {
                    // SAFETY: non-null `sig` is writable (the caller's contract).
                    unsafe { *sig = r };
                }
                return 0;
            }
            Outcome::Done(_) if errno::get() != EINTR => return errno::get(),
            _ => continue,
        }
    }
}

/// # Safety
/// pause(2)'s contract (no arguments).
#[no_mangle]
pub unsafe extern "C" fn pause() -> c_int {
    let f = real::pause();
    // SAFETY: no arguments.
    let call = |_| unsafe { f() };
    finish_int(blocking(Call::Pause, 0, frame_address(), None, call, int_eintr))
}

// ---- child processes ----

/// # Safety
/// wait(2)'s contract: `status` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut c_int) -> pid_t {
    let f = real::wait();
    // SAFETY: the caller's own argument, unchanged.
    let call = |_| unsafe { f(status) };
    finish_int(blocking(Call::Wait, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// waitpid(2)'s contract: `status` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    let f = real::waitpid();
    if options & libc::WNOHANG != 0 {
        // SAFETY: the caller's own arguments, unchanged; with WNOHANG it does not wait.
        return unsafe { f(pid, status, options) };
    }
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(pid, status, options) };
    finish_int(blocking(Call::Waitpid, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// waitid(2)'s contract: `info` points to a writable siginfo_t.
#[no_mangle]
pub unsafe extern "C" fn waitid(idtype: idtype_t, id: id_t, info: *mut siginfo_t, options: c_int) -> c_int {
    let f = real::waitid();
    if options & libc::WNOHANG != 0 {
        // SAFETY: the caller's own arguments, unchanged; with WNOHANG it does not wait.
        return unsafe { f(idtype, id, info, options) };
    }
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(idtype, id, info, options) };
    finish_int(blocking(Call::Waitid, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// wait3(2)'s contract: `status` and `ru` are null or writable.
#[no_mangle]
pub unsafe extern "C" fn wait3(status: *mut c_int, options: c_int, ru: *mut rusage) -> pid_t {
    let f = real::wait3();
    if options & libc::WNOHANG != 0 {
        // SAFETY: the caller's own arguments, unchanged; with WNOHANG it does not wait.
        return unsafe { f(status, options, ru) };
    }
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(status, options, ru) };
    finish_int(blocking(Call::Wait3, 0, frame_address(), None, call, int_eintr))
}

/// # Safety
/// wait4(2)'s contract: `status` and `ru` are null or writable.
#[no_mangle]
pub unsafe extern "C" fn wait4(pid: pid_t, status: *mut c_int, options: c_int, ru: *mut rusage) -> pid_t {
    let f = real::wait4();
    if options & libc::WNOHANG != 0 {
        // SAFETY: the caller's own arguments, unchanged; with WNOHANG it does not wait.
        return unsafe { f(pid, status, options, ru) };
    }
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(pid, status, options, ru) };
    finish_int(blocking(Call::Wait4, 0, frame_address(), None, call, int_eintr))
}

// ---- System V IPC ----

/// # Safety
/// semop(2)'s contract: `ops` points to `n` readable sembufs.
#[no_mangle]
pub unsafe extern "C" fn semop(id: c_int, ops: *mut sembuf, n: size_t) -> c_int {
    let f = real::semop();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(id, ops, n) };
    let r = finish_int(blocking(Call::Semop, 0, frame_address(), None, call, int_eintr));
    // SAFETY: `ops` points to `n` readable sembufs (the caller's contract).
    unsafe { note_undo(r, ops, n) };
    r
}

/// A semop that succeeded with SEM_UNDO after startup left an adjustment the kernel
/// applies when this process exits: it cannot move to the new version, so the preflight
/// names it (the wrapper notes it as something set after startup).
///
/// # Safety
/// `ops` points to `n` readable sembufs.
unsafe fn note_undo(r: c_int, ops: *const sembuf, n: size_t) {
    if r != 0 || ops.is_null() {
        return;
    }
    // SAFETY: see above.
    let ops = unsafe { core::slice::from_raw_parts(ops, n) };
    if ops.iter().any(|o| o.sem_flg as c_int & libc::SEM_UNDO != 0) {
        let e = errno::get();
        crate::attributes::note_set_after_startup(mcr_protocol::SEM_UNDO_ADJUSTMENT, None);
        errno::set(e);
    }
}

/// # Safety
/// semtimedop(2)'s contract: `ops` points to `n` readable sembufs, `ts` is null or readable.
#[no_mangle]
pub unsafe extern "C" fn semtimedop(id: c_int, ops: *mut sembuf, n: size_t, ts: *const timespec) -> c_int {
    let f = real::semtimedop();
    // SAFETY: null or readable (the caller's contract).
    let timeout = unsafe { ts_ns(ts) };
    // SAFETY: the caller's own arguments, or a live local timespec with the time left.
    let call = |l: Option<i64>| unsafe {
        match l {
            None => f(id, ops, n, ts),
            Some(ns) => f(id, ops, n, &ns_ts(ns)),
        }
    };
    let r = finish_int(blocking(Call::Semtimedop, 0, frame_address(), timeout, call, int_eintr));
    // SAFETY: `ops` points to `n` readable sembufs (the caller's contract).
    unsafe { note_undo(r, ops, n) };
    r
}

/// # Safety
/// msgrcv(2)'s contract: `p` points to a writable message buffer of `sz` bytes of text.
#[no_mangle]
pub unsafe extern "C" fn msgrcv(id: c_int, p: *mut c_void, sz: size_t, typ: c_long, flg: c_int) -> ssize_t {
    let f = real::msgrcv();
    // SAFETY: the caller's own arguments, unchanged.
    let call = |_| unsafe { f(id, p, sz, typ, flg) };
    finish_ssize(blocking(Call::Msgrcv, 0, frame_address(), None, call, ssize_eintr))
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
        // SAFETY: a live timespec, and null.
        unsafe {
            assert_eq!(ts_ns(&ts), Some(1_500_000_123));
            assert_eq!(ts_ns(core::ptr::null()), None);
        }
    }
}
