//! Draining before an update: the process stops accepting connections (they wait in the
//! listening socket's backlog, which the next version inherits) and reports the client
//! connections it still holds, so `mcr update` can let in-flight requests finish before
//! it quiesces. A connection-per-request client then never sees an update.
//!
//! Accept gating costs one relaxed load per accept outside a drain.

use crate::futex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering::*};

/// 1 while draining. Threads blocked in a drained accept() wait on this word.
static DRAINING: AtomicU32 = AtomicU32::new(0);

/// How long a non-blocking accept() that the drain refused sleeps before saying EAGAIN:
/// a level-triggered event loop sees its listener readable again at once and would
/// otherwise spin on a core while it finishes its connections.
const REFUSED_ACCEPT_PAUSE_NS: i64 = 1_000_000;

/// Descriptors accept() returned (or an update installed as moved connections) and
/// not closed since: client connections, as opposed to a socketpair or a socket received
/// over a channel (nginx passes its workers' channels that way), which are not clients.
const TRACKED_FDS: usize = 1 << 16;
static ACCEPTED: [std::sync::atomic::AtomicU8; TRACKED_FDS] =
    [const { std::sync::atomic::AtomicU8::new(0) }; TRACKED_FDS];

#[inline(always)]
pub fn note_accepted(fd: libc::c_int) {
    if let Some(a) = usize::try_from(fd).ok().and_then(|i| ACCEPTED.get(i)) {
        a.store(1, Relaxed);
    }
}

#[inline(always)]
pub fn note_closed(fd: libc::c_int) {
    if let Some(a) = usize::try_from(fd).ok().and_then(|i| ACCEPTED.get(i)) {
        if a.load(Relaxed) != 0 {
            a.store(0, Relaxed);
        }
    }
}

/// `new` now refers to what `old` refers to.
pub fn note_duplicated(old: libc::c_int, new: libc::c_int) {
    let was = usize::try_from(old).ok().and_then(|i| ACCEPTED.get(i)).is_some_and(|a| a.load(Relaxed) != 0);
    if was {
        note_accepted(new);
    } else {
        note_closed(new);
    }
}

pub fn note_closed_range(first: u32, last: u32) {
    let hi = (last as usize).min(TRACKED_FDS - 1);
    for a in ACCEPTED.iter().take(hi + 1).skip(first as usize) {
        if a.load(Relaxed) != 0 {
            a.store(0, Relaxed);
        }
    }
}

fn was_accepted(fd: i32) -> bool {
    usize::try_from(fd).ok().and_then(|i| ACCEPTED.get(i)).is_some_and(|a| a.load(Relaxed) != 0)
}

/// This process was forked after its parent completed startup.
pub static VOLATILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a fork child, before `quiesce` clears STARTUP_DONE: a child forked once the parent's
/// startup was over (a per-connection child) is volatile, as no startup of a new version
/// recreates it.
pub fn reset_after_fork() {
    if crate::quiesce::STARTUP_DONE.load(SeqCst) {
        VOLATILE.store(true, SeqCst);
    }
}

pub fn start() {
    DRAINING.store(1, SeqCst);
}

/// End a drain (resume after a rollback): blocked accepts go on, and edge-triggered
/// registrations of listeners are re-armed so connections that queued meanwhile are
/// reported again.
pub fn end() {
    if DRAINING.swap(0, SeqCst) != 0 {
        futex::wake(&DRAINING, i32::MAX);
        rearm_edge_triggered_listeners();
    }
}

/// Called by the accept wrappers before the real call. `Some(r)` is what accept returns
/// instead (errno set): EAGAIN on a non-blocking listener, EINTR when a signal ended the
/// wait of a blocking one (the wrapper then parks on the runtime's kick, or reports the
/// program's signal as accept would). `None`: accept normally.
#[inline(always)]
pub fn gate_accept(fd: libc::c_int) -> Option<libc::c_int> {
    if DRAINING.load(Relaxed) == 0 {
        return None;
    }
    gate_accept_slow(fd)
}

#[cold]
fn gate_accept_slow(fd: libc::c_int) -> Option<libc::c_int> {
    // SAFETY: F_GETFL on a descriptor the program passed to accept.
    let flags = unsafe { crate::sys!(libc::SYS_fcntl, fd, libc::F_GETFL) };
    if flags < 0 {
        return None; // let the real accept report the bad descriptor
    }
    if flags as i32 & libc::O_NONBLOCK != 0 {
        let ts = libc::timespec { tv_sec: 0, tv_nsec: REFUSED_ACCEPT_PAUSE_NS };
        // SAFETY: raw nanosleep with a valid timespec; an interruption just ends it early.
        unsafe {
            crate::sys!(libc::SYS_nanosleep, &ts as *const libc::timespec, core::ptr::null_mut::<libc::timespec>())
        };
        crate::errno::set(libc::EAGAIN);
        return Some(-1);
    }
    loop {
        if DRAINING.load(SeqCst) == 0 {
            return None;
        }
        // SAFETY: FUTEX_WAIT on our own aligned word; the kernel restarts it after a
        // handler installed with SA_RESTART, exactly as it would restart accept().
        let r = unsafe {
            crate::sys!(
                libc::SYS_futex,
                DRAINING.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                1,
                core::ptr::null::<libc::timespec>()
            )
        };
        if r < 0 && crate::errno::get() == libc::EINTR {
            crate::errno::set(libc::EINTR);
            return Some(-1);
        }
    }
}

/// The client connections this process holds: sockets accept() returned after startup
/// (not by a recorded startup operation, not inherited, not the runtime's), still
/// connected (`known` are the descriptors startup accounts for); and whether some accepted
/// socket lost its client (reset: no peer any more). A per-connection process with none of
/// the first and some of the second has finished its session and only has to notice.
pub fn connections(known: &BTreeSet<i32>) -> (Vec<i32>, bool) {
    let mut candidates: Vec<i32> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if fd < 3 || known.contains(&fd) || !was_accepted(fd) {
                continue;
            }
            if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:[")) {
                candidates.push(fd);
            }
        }
    }
    // Look at each through a copy in our own table (the control thread's table is
    // private): cheaper than /proc/net/tcp, which lists every socket of the host.
    let mut dead = false;
    let mut fds: Vec<i32> = candidates
        .into_iter()
        .filter(|&fd| {
            let live = with_program_fd(fd, |c| {
                let stream = socket_int_option(c, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
                let listening = socket_int_option(c, libc::SO_ACCEPTCONN) != Some(0);
                // SAFETY: getpeername into a local buffer of the size we pass.
                let peer = unsafe {
                    let mut addr: libc::sockaddr_storage = core::mem::zeroed();
                    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    crate::sys!(
                        libc::SYS_getpeername,
                        c,
                        &mut addr as *mut libc::sockaddr_storage,
                        &mut len as *mut libc::socklen_t
                    ) == 0
                };
                (stream && !listening, peer)
            });
            match live {
                Some((true, true)) => true,
                Some((true, false)) => {
                    dead = true;
                    false
                }
                _ => false,
            }
        })
        .collect();
    fds.sort_unstable();
    (fds, dead)
}

/// Run `f` on a copy, in the control thread's own table, of the program's descriptor
/// `fd` (None when it cannot be had).
fn with_program_fd<R>(fd: i32, f: impl FnOnce(i32) -> R) -> Option<R> {
    // SAFETY: a pidfd of our own process and a copy of one of its descriptors, both
    // closed before returning.
    unsafe {
        let pidfd = crate::sys!(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let c = crate::sys!(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        crate::sys!(libc::SYS_close, pidfd);
        if c < 0 {
            return None;
        }
        let r = f(c);
        crate::sys!(libc::SYS_close, c);
        Some(r)
    }
}

fn socket_int_option(sock: i32, opt: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the size we pass.
    let r = unsafe {
        crate::sys!(
            libc::SYS_getsockopt,
            sock,
            libc::SOL_SOCKET,
            opt,
            &mut v as *mut libc::c_int,
            &mut len as *mut libc::socklen_t
        )
    };
    (r == 0).then_some(v)
}

/// The descriptors some epoll instance of this process watches: a connection an event
/// loop serves (its state lives in memory the update can move), as opposed to one a
/// thread is serving on its stack.
pub fn watched_by_epoll() -> BTreeSet<i32> {
    mcr_protocol::epoll_registrations("self").into_iter().map(|r| r.fd).collect()
}

/// After a drain ends, an edge-triggered listener that became readable while accept()
/// was refused would never be reported again; EPOLL_CTL_MOD with the same events makes
/// epoll look at it afresh. Registrations are read back from /proc/self/fdinfo.
fn rearm_edge_triggered_listeners() {
    for reg in mcr_protocol::epoll_registrations("self") {
        if reg.events & libc::EPOLLET as u32 == 0 || !is_listener(reg.fd) {
            continue;
        }
        let mut ev = libc::epoll_event { events: reg.events, u64: reg.data };
        // SAFETY: re-registering an existing item with its own events and data; the
        // calling thread is the control thread, whose private fd table lacks these
        // descriptors, hence the program's table through the process's pidfd below.
        unsafe { modify_in_program_table(reg.epfd, reg.fd, &mut ev) };
    }
}

fn is_listener(fd: i32) -> bool {
    with_program_fd(fd, |c| socket_int_option(c, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0)).unwrap_or(false)
}

/// The control thread has a private descriptor table; borrow the program's descriptors
/// through a pidfd for one epoll_ctl. The epoll item is keyed by the target's number, so
/// the copy of the target must sit at the same number in our table.
unsafe fn modify_in_program_table(epfd: i32, fd: i32, ev: &mut libc::epoll_event) {
    let pidfd = crate::sys!(libc::SYS_pidfd_open, libc::getpid(), 0);
    if pidfd < 0 {
        return;
    }
    let ep = crate::sys!(libc::SYS_pidfd_getfd, pidfd, epfd, 0);
    let target = crate::sys!(libc::SYS_pidfd_getfd, pidfd, fd, 0);
    // Never clobber a descriptor of our own (the control socket) to make room.
    let occupied = target as i32 != fd && crate::sys!(libc::SYS_fcntl, fd, libc::F_GETFD) >= 0;
    if ep >= 0 && target >= 0 && !occupied {
        let at = if target as i32 == fd { fd } else { crate::sys!(libc::SYS_dup3, target, fd, libc::O_CLOEXEC) as i32 };
        if at == fd {
            crate::sys!(libc::SYS_epoll_ctl, ep, libc::EPOLL_CTL_MOD, fd, ev as *mut libc::epoll_event);
            if target as i32 != fd {
                crate::sys!(libc::SYS_close, fd);
            }
        }
    }
    for f in [target, ep, pidfd] {
        if f >= 0 && f as i32 != fd {
            crate::sys!(libc::SYS_close, f);
        }
    }
}
