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
static ACCEPTED: [std::sync::atomic::AtomicU8; TRACKED_FDS] = [const { std::sync::atomic::AtomicU8::new(0) }; TRACKED_FDS];

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
        unsafe { crate::sys!(libc::SYS_nanosleep, &ts as *const libc::timespec, core::ptr::null_mut::<libc::timespec>()) };
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
            crate::sys!(libc::SYS_futex, DRAINING.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 1, core::ptr::null::<libc::timespec>())
        };
        if r < 0 && crate::errno::get() == libc::EINTR {
            crate::errno::set(libc::EINTR);
            return Some(-1);
        }
    }
}

/// The client connections this process holds: sockets accept() returned after startup
/// (not by a recorded startup operation, not inherited, not the runtime's), still
/// connected. `known` are the descriptors startup accounts for.
pub fn open_connections(known: &BTreeSet<i32>) -> Vec<i32> {
    let mut candidates: Vec<(i32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if fd < 3 || known.contains(&fd) || !was_accepted(fd) {
                continue;
            }
            if let Ok(target) = std::fs::read_link(e.path()) {
                if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                    candidates.push((fd, inode));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Vec::new();
    }
    // Look at each through a copy in our own table (the control thread's table is
    // private): cheaper than /proc/net/tcp, which lists every socket of the host.
    // SAFETY: pidfd of our own process.
    let pidfd = unsafe { crate::sys!(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
    if pidfd < 0 {
        return candidates.into_iter().map(|(fd, _)| fd).collect();
    }
    let mut fds: Vec<i32> = candidates.into_iter().map(|(fd, _)| fd).filter(|&fd| is_connected_stream(pidfd, fd)).collect();
    // SAFETY: our own pidfd.
    unsafe { crate::sys!(libc::SYS_close, pidfd) };
    fds.sort_unstable();
    fds
}

/// A connected stream socket (not a listener, not a datagram socket).
fn is_connected_stream(pidfd: i32, fd: i32) -> bool {
    // SAFETY: a copy of the program's descriptor in our table, probed and closed.
    unsafe {
        let c = crate::sys!(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        if c < 0 {
            return false;
        }
        let int_opt = |opt: i32| {
            let mut v: libc::c_int = 0;
            let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let r = crate::sys!(libc::SYS_getsockopt, c, libc::SOL_SOCKET, opt, &mut v as *mut libc::c_int, &mut len as *mut libc::socklen_t);
            (r == 0).then_some(v)
        };
        let stream = int_opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM);
        let listening = int_opt(libc::SO_ACCEPTCONN) != Some(0);
        let mut addr: libc::sockaddr_storage = core::mem::zeroed();
        let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let peer = crate::sys!(libc::SYS_getpeername, c, &mut addr as *mut libc::sockaddr_storage, &mut len as *mut libc::socklen_t) == 0;
        crate::sys!(libc::SYS_close, c);
        stream && !listening && peer
    }
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The descriptors some epoll instance of this process watches: a connection an event
/// loop serves (its state lives in memory the update can move), as opposed to one a
/// thread is serving on its stack.
pub fn watched_by_epoll() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return out };
    for e in dir.flatten() {
        let Some(epfd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]") {
            continue;
        }
        if let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")) {
            out.extend(info.lines().filter_map(parse_epoll_registration).map(|r| r.fd));
        }
    }
    out
}

/// After a drain ends, an edge-triggered listener that became readable while accept()
/// was refused would never be reported again; EPOLL_CTL_MOD with the same events makes
/// epoll look at it afresh. Registrations are read back from /proc/self/fdinfo.
fn rearm_edge_triggered_listeners() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    for e in dir.flatten() {
        let Some(epfd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]") {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")) else { continue };
        for reg in info.lines().filter_map(parse_epoll_registration) {
            if reg.events & libc::EPOLLET as u32 == 0 || !is_listener(reg.fd) {
                continue;
            }
            let mut ev = libc::epoll_event { events: reg.events, u64: reg.data };
            // SAFETY: re-registering an existing item with its own events and data; the
            // calling thread is the control thread, whose private fd table lacks these
            // descriptors, hence the program's table through the process's pidfd below.
            unsafe { modify_in_program_table(epfd, reg.fd, &mut ev) };
        }
    }
}

fn is_listener(fd: i32) -> bool {
    // SAFETY: a copy of the program's descriptor through our own pidfd, probed, closed.
    unsafe {
        let pidfd = crate::sys!(libc::SYS_pidfd_open, libc::getpid(), 0) as i32;
        if pidfd < 0 {
            return false;
        }
        let c = crate::sys!(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        crate::sys!(libc::SYS_close, pidfd);
        if c < 0 {
            return false;
        }
        let mut v: libc::c_int = 0;
        let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = crate::sys!(libc::SYS_getsockopt, c, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, &mut v as *mut libc::c_int, &mut len as *mut libc::socklen_t);
        crate::sys!(libc::SYS_close, c);
        r == 0 && v != 0
    }
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

#[derive(Debug, PartialEq)]
struct EpollRegistration {
    fd: i32,
    events: u32,
    data: u64,
}

/// `tfd:        5 events:       19 data:                0  pos:0 ino:... sdev:...`
fn parse_epoll_registration(line: &str) -> Option<EpollRegistration> {
    let mut it = line.split_whitespace();
    if it.next()? != "tfd:" {
        return None;
    }
    let fd = it.next()?.parse().ok()?;
    if it.next()? != "events:" {
        return None;
    }
    let events = u32::from_str_radix(it.next()?, 16).ok()?;
    if it.next()? != "data:" {
        return None;
    }
    let data = u64::from_str_radix(it.next()?, 16).ok()?;
    Some(EpollRegistration { fd, events, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo_lines_parse() {
        let l = "tfd:        5 events:   80000019 data:     7ffff7a01234  pos:0 ino:2a3 sdev:8";
        assert_eq!(
            parse_epoll_registration(l),
            Some(EpollRegistration { fd: 5, events: 0x8000_0019, data: 0x7fff_f7a0_1234 })
        );
        assert_eq!(parse_epoll_registration("pos:\t0"), None);
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
    }
}
