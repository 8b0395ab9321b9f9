//! Draining before an update: the process stops accepting connections (they wait in the
//! listening socket's backlog, which the next version inherits) and reports the client
//! connections it still holds, so `mcr update` can let in-flight requests finish before
//! it quiesces. A connection-per-request client then never sees an update.
//!
//! Accept gating costs one relaxed load per accept outside a drain.

use crate::futex;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU32, Ordering::*};

/// 1 while draining. Threads blocked in a drained accept() wait on this word.
static DRAINING: AtomicU32 = AtomicU32::new(0);

/// How long a non-blocking accept() that the drain refused sleeps before saying EAGAIN:
/// a level-triggered event loop sees its listener readable again at once and would
/// otherwise spin on a core while it finishes its connections.
const REFUSED_ACCEPT_PAUSE_NS: i64 = 1_000_000;

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

/// The client connections this process holds: stream sockets created after startup
/// (not by a recorded startup operation, not inherited, not the runtime's), connected
/// (not listening). `known` are the descriptors startup accounts for.
pub fn open_connections(known: &BTreeSet<i32>) -> Vec<i32> {
    let mut candidates: Vec<(i32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if fd < 3 || known.contains(&fd) {
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
        return Vec::new(); // the common idle case costs no /proc/net parsing
    }
    let mut connected = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            connected.extend(text.lines().skip(1).filter_map(tcp_connection_inode));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/unix") {
        connected.extend(text.lines().skip(1).filter_map(unix_connection_inode));
    }
    let mut fds: Vec<i32> = candidates.into_iter().filter(|(_, ino)| connected.contains(ino)).map(|(fd, _)| fd).collect();
    fds.sort_unstable();
    fds
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Inode of a /proc/net/tcp{,6} line whose socket carries a connection: any state but
/// LISTEN (0A) and CLOSE (07).
fn tcp_connection_inode(line: &str) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let state = *f.get(3)?;
    if state.eq_ignore_ascii_case("0A") || state == "07" {
        return None;
    }
    f.get(9)?.parse().ok()
}

/// Inode of a /proc/net/unix line for a connected stream socket (not listening).
fn unix_connection_inode(line: &str) -> Option<u64> {
    // Num RefCount Protocol Flags Type St Inode [Path]
    let f: Vec<&str> = line.split_whitespace().collect();
    let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
    let kind = u32::from_str_radix(f.get(4)?, 16).ok()?;
    let st = *f.get(5)?;
    const ACCEPTCON: u32 = 1 << 16;
    if kind != libc::SOCK_STREAM as u32 || flags & ACCEPTCON != 0 || st != "03" {
        return None;
    }
    f.get(6)?.parse().ok()
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
    let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else { return false };
    let Some(inode) = socket_inode(&target.to_string_lossy()) else { return false };
    let listening = |path: &str, f: fn(&str) -> Option<u64>| {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().skip(1).filter_map(f).any(|i| i == inode))
    };
    listening("/proc/self/net/tcp", tcp_listen_inode) || listening("/proc/self/net/tcp6", tcp_listen_inode)
}

fn tcp_listen_inode(line: &str) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if !f.get(3)?.eq_ignore_ascii_case("0A") {
        return None;
    }
    f.get(9)?.parse().ok()
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
    fn tcp_lines_tell_connections_from_listeners() {
        let listen = "   0: 0100007F:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0";
        let est = "   1: 0100007F:1B58 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 41299 1 0000000000000000 20 4 30 10 -1";
        let closed = "   2: 0100007F:1B58 0100007F:D2F2 07 00000000:00000000 00:00000000 00000000     0        0 41300 1 0000000000000000 20 4 30 10 -1";
        let close_wait = "   3: 0100007F:1B58 0100007F:D2F4 08 00000000:00000000 00:00000000 00000000     0        0 41301 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(tcp_connection_inode(listen), None);
        assert_eq!(tcp_listen_inode(listen), Some(41234));
        assert_eq!(tcp_connection_inode(est), Some(41299));
        assert_eq!(tcp_listen_inode(est), None);
        assert_eq!(tcp_connection_inode(closed), None);
        assert_eq!(tcp_connection_inode(close_wait), Some(41301), "a half-closed connection still owes a reply");
    }

    #[test]
    fn unix_lines_tell_connected_streams() {
        let listening = "0000000000000000: 00000002 00000000 00010000 0001 01 52311 /run/x.sock";
        let connected = "0000000000000000: 00000003 00000000 00000000 0001 03 52312 /run/x.sock";
        let dgram = "0000000000000000: 00000002 00000000 00000000 0002 03 52313";
        assert_eq!(unix_connection_inode(listening), None);
        assert_eq!(unix_connection_inode(connected), Some(52312));
        assert_eq!(unix_connection_inode(dgram), None);
    }

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
