//! Draining before an update: the process stops accepting connections (they wait in the
//! listening socket's backlog, which the next version inherits) and reports the client
//! connections it still holds, so `mcr update` can let in-flight requests finish before
//! it quiesces. A connection-per-request client then never sees an update.
//!
//! Accept gating costs one relaxed load per accept outside a drain.

use crate::borrow::with_program_fd;
use crate::{futex, rawfd};
use mcr_protocol::RuntimeReply;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::*};

/// 1 while draining. Threads blocked in a drained accept() wait on this word.
static DRAINING: AtomicU32 = AtomicU32::new(0);

/// How long a non-blocking accept() that the drain refused sleeps before saying EAGAIN:
/// a level-triggered event loop sees its listener readable again at once and would
/// otherwise spin on a core while it finishes its connections.
const REFUSED_ACCEPT_PAUSE_NS: i64 = 1_000_000;

/// Descriptor numbers below this are tracked (one byte each); higher ones never count as
/// client connections.
const TRACKED_FDS: usize = 1 << 16;

/// Which descriptors accept() returned (or an update installed as moved connections) and
/// were not closed since: client connections, as opposed to a socketpair or a socket
/// received over a channel (nginx passes its workers' channels that way), which are not
/// clients. Marked without a lock from the wrappers of accept, close and dup.
struct AcceptedFds {
    marks: [AtomicU8; TRACKED_FDS],
}

impl AcceptedFds {
    const fn new() -> Self {
        Self { marks: [const { AtomicU8::new(0) }; TRACKED_FDS] }
    }

    fn mark(&self, fd: i32) -> Option<&AtomicU8> {
        usize::try_from(fd).ok().and_then(|i| self.marks.get(i))
    }

    #[inline(always)]
    fn accepted(&self, fd: i32) {
        if let Some(m) = self.mark(fd) {
            m.store(1, Relaxed);
        }
    }

    /// A store only when the mark is set: closes of other descriptors (most of them)
    /// leave the cache line shared.
    #[inline(always)]
    fn closed(&self, fd: i32) {
        if let Some(m) = self.mark(fd) {
            if m.load(Relaxed) != 0 {
                m.store(0, Relaxed);
            }
        }
    }

    /// `new` now refers to what `old` refers to.
    fn duplicated(&self, old: i32, new: i32) {
        if self.contains(old) {
            self.accepted(new);
        } else {
            self.closed(new);
        }
    }

    fn closed_range(&self, first: u32, last: u32) {
        let hi = (last as usize).min(TRACKED_FDS - 1);
        for m in self.marks.iter().take(hi + 1).skip(first as usize) {
            if m.load(Relaxed) != 0 {
                m.store(0, Relaxed);
            }
        }
    }

    fn contains(&self, fd: i32) -> bool {
        self.mark(fd).is_some_and(|m| m.load(Relaxed) != 0)
    }
}

static ACCEPTED: AcceptedFds = AcceptedFds::new();

#[inline(always)]
pub fn note_accepted(fd: libc::c_int) {
    ACCEPTED.accepted(fd);
}

#[inline(always)]
pub fn note_closed(fd: libc::c_int) {
    ACCEPTED.closed(fd);
}

/// `new` now refers to what `old` refers to.
pub fn note_duplicated(old: libc::c_int, new: libc::c_int) {
    ACCEPTED.duplicated(old, new);
}

pub fn note_closed_range(first: u32, last: u32) {
    ACCEPTED.closed_range(first, last);
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

/// What a drain does to an accept() on a listener with these file status flags (negative:
/// not a descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// Let the real accept run (and report the bad descriptor).
    Proceed,
    /// Non-blocking: refuse with EAGAIN, as if no connection were queued.
    Refuse,
    /// Blocking: wait until the drain ends, as accept would wait for a connection.
    Hold,
}

fn gate(flags: i64) -> Gate {
    if flags < 0 {
        Gate::Proceed
    } else if flags as i32 & libc::O_NONBLOCK != 0 {
        Gate::Refuse
    } else {
        Gate::Hold
    }
}

/// Counts a pass of the calling thread through the accept gate, for a quiesce's report.
fn note_gate_pass() {
    if let Some(slot) = crate::threads::local().claimed_slot() {
        slot.accept_gate_passes.store(slot.accept_gate_passes.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

#[cold]
fn gate_accept_slow(fd: libc::c_int) -> Option<libc::c_int> {
    note_gate_pass();
    match gate(crate::rawfd::status_flags(fd).map_or(-1, i64::from)) {
        Gate::Proceed => return None,
        Gate::Hold => {}
        Gate::Refuse => {
            let ts = libc::timespec { tv_sec: 0, tv_nsec: REFUSED_ACCEPT_PAUSE_NS };
            // SAFETY: raw nanosleep with a valid timespec; an interruption just ends it early.
            unsafe {
                crate::sys!(libc::SYS_nanosleep, &ts as *const libc::timespec, core::ptr::null_mut::<libc::timespec>())
            };
            crate::errno::set(libc::EAGAIN);
            return Some(-1);
        }
    }
    loop {
        if DRAINING.load(SeqCst) == 0 {
            return None;
        }
        note_gate_pass();
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
    for fd in crate::procdir::numbers(c"/proc/self/fd") {
        if !may_be_client(fd, known, &ACCEPTED) {
            continue;
        }
        if std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|t| t.to_string_lossy().starts_with("socket:["))
        {
            candidates.push(fd);
        }
    }
    // Look at each through a copy in our own table (the control thread's table is
    // private): cheaper than /proc/net/tcp, which lists every socket of the host.
    let mut dead = false;
    let mut fds: Vec<i32> = candidates
        .into_iter()
        .filter(|&fd| {
            let seen = with_program_fd(fd, |c| {
                let stream = crate::rawfd::socket_int_option(c, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
                let listening = crate::rawfd::socket_int_option(c, libc::SO_ACCEPTCONN) != Some(0);
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
                Socket { stream, listening, peer }
            });
            match seen.map(Socket::connection) {
                Some(Connection::Client) => true,
                Some(Connection::LostClient) => {
                    dead = true;
                    false
                }
                Some(Connection::NotClient) | None => false,
            }
        })
        .collect();
    fds.sort_unstable();
    (fds, dead)
}

/// Whether `fd` may hold a client connection: accepted (and not closed since), not 0-2,
/// not one startup accounts for (`known`).
fn may_be_client(fd: i32, known: &BTreeSet<i32>, accepted: &AcceptedFds) -> bool {
    fd >= 3 && !known.contains(&fd) && accepted.contains(fd)
}

/// What the kernel says about an accepted socket.
#[derive(Clone, Copy, Debug)]
struct Socket {
    stream: bool,
    listening: bool,
    /// It still has a peer (getpeername succeeds).
    peer: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    /// A connected stream: a client the process still serves.
    Client,
    /// A stream whose client is gone (reset).
    LostClient,
    /// Not a client connection (a listener, a datagram socket).
    NotClient,
}

impl Socket {
    fn connection(self) -> Connection {
        match (self.stream && !self.listening, self.peer) {
            (true, true) => Connection::Client,
            (true, false) => Connection::LostClient,
            (false, _) => Connection::NotClient,
        }
    }
}

/// The `Drain` command: stop accepting, and tell the update which connections this
/// process holds.
pub fn drain() -> RuntimeReply {
    start();
    let startup = crate::startup_log::startup_fds();
    let (fds, lost_client) = connections(&startup);
    let watched = if fds.is_empty() { Default::default() } else { watched_by_epoll() };
    // Each set-waiting thread's set is read once, not once per connection (a poll loop
    // with a thousand connections).
    let loops: BTreeMap<usize, BTreeSet<i32>> = if fds.is_empty() { BTreeMap::new() } else { event_loops(&startup) };
    let unwatched_served: BTreeSet<i32> =
        fds.iter().copied().filter(|fd| !watched.contains(fd) && served_by_a_thread(*fd, &loops)).collect();
    let (idle_check, busy) = crate::resume::busy_connections(&fds);
    drain_reply(fds, lost_client, VOLATILE.load(SeqCst), &unwatched_served, idle_check, busy)
}

/// Whether a program thread may be serving `fd` from its stack (a thread per connection):
/// one waits reading it, or waits on a poll or select set that may hold it, or runs
/// outside any wrapped call, where what it serves cannot be told (never so once the
/// process is quiesced). A connection no epoll watches and no thread serves is held in
/// the program's memory, and moves with it. A poll or select whose set holds a listening
/// socket is an event loop (it accepts, and keeps its connections in the program's
/// memory, where its next round finds them): what its set holds is the loop's, not a
/// thread's; any other set may be a thread's wait in the middle of a session.
/// `loops`: the sets of the threads waiting in an event loop's poll or select, by slot
/// ([`event_loops`]).
fn served_by_a_thread(fd: i32, loops: &BTreeMap<usize, BTreeSet<i32>>) -> bool {
    use crate::calls::Call;
    use crate::threads::{self, RUNNING, TID_PENDING};
    threads::used().any(|(i, s)| {
        if s.tid.load(Acquire) == TID_PENDING {
            return false;
        }
        if s.state.load(SeqCst) == RUNNING {
            return true;
        }
        let call = Call::from_index(s.call.load(Acquire));
        if call.watches_a_set() {
            return !loops.get(&i).is_some_and(|set| set.contains(&fd));
        }
        call.depends_on_fd() && s.object.load(Acquire) == fd as usize
    })
}

/// For each thread waiting in a poll or select that is an event loop ([`event_loop_set`]),
/// by slot: the descriptors its set watches.
fn event_loops(startup: &BTreeSet<i32>) -> BTreeMap<usize, BTreeSet<i32>> {
    crate::threads::used()
        .filter(|(_, s)| crate::calls::Call::from_index(s.call.load(Acquire)).watches_a_set())
        .filter_map(|(i, s)| Some((i, event_loop_set(s, startup)?)))
        .collect()
}

/// The descriptors the poll or select `s` waits in watches, when the set holds a listening
/// socket made during startup (`startup`: listeners are, and only they are looked at);
/// `None` when it holds none, or cannot be read as it stands (the thread came out of the
/// call meanwhile).
fn event_loop_set(s: &crate::threads::Slot, startup: &BTreeSet<i32>) -> Option<BTreeSet<i32>> {
    use crate::calls::Call;
    let entered = s.calls_entered.load(Acquire);
    let call = Call::from_index(s.call.load(Acquire));
    let (at, len) = (s.object.load(Acquire), s.set_len.load(Acquire));
    let set = match call {
        Call::Poll | Call::Ppoll => poll_set(at, len)?,
        Call::Select | Call::Pselect => select_set(at, len)?,
        _ => return None,
    };
    // Read while the thread stayed in the same call: the set is the one it waits on.
    let same = s.calls_entered.load(Acquire) == entered && s.state.load(SeqCst) != crate::threads::RUNNING;
    // The control thread's descriptor table is its own: each is looked at through a copy.
    let listening = |fd: &i32| {
        with_program_fd(*fd, |c| crate::rawfd::socket_int_option(c, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0))
            .unwrap_or(false)
    };
    (same && set.iter().filter(|fd| startup.contains(fd)).any(listening)).then_some(set)
}

/// Pollfds a set may hold before it is taken for something else than an event loop's.
const MAX_POLL_SET: usize = 1 << 16;

/// The descriptors of the `len` pollfds at `at` (the program's array).
fn poll_set(at: usize, len: usize) -> Option<BTreeSet<i32>> {
    if at == 0 || len > MAX_POLL_SET {
        return None;
    }
    let size = core::mem::size_of::<libc::pollfd>();
    let mut bytes = vec![0u8; len * size];
    if !crate::stack::read_own(at, &mut bytes) {
        return None;
    }
    let fd_at = |c: &[u8]| i32::from_ne_bytes(c.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0xff; 4]));
    Some(bytes.chunks_exact(size).map(fd_at).filter(|&fd| fd >= 0).collect())
}

/// The descriptors below `n` in the read and write sets of the select wrapper's copy at
/// `at` (`interpose::blocking::FdSets`).
fn select_set(at: usize, n: usize) -> Option<BTreeSet<i32>> {
    use crate::interpose::blocking::{set_members, FdSets};
    if at == 0 {
        return None;
    }
    let size = core::mem::size_of::<libc::fd_set>();
    let mut bytes = vec![0u8; 2 * size];
    if !crate::stack::read_own(at + core::mem::offset_of!(FdSets, saved), &mut bytes) {
        return None;
    }
    let n = n.min(libc::FD_SETSIZE) as i32;
    let mut set = BTreeSet::new();
    for chunk in bytes.chunks_exact(size) {
        // SAFETY: an fd_set is plain integers: an all-zero one is the empty set, and any
        // bytes copied over it are a set.
        let mut fds: libc::fd_set = unsafe { core::mem::zeroed() };
        // SAFETY: `chunk` is `size` bytes, the size of `fds`; the two do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), (&mut fds as *mut libc::fd_set).cast(), size) };
        set.extend(set_members(&fds, n));
    }
    Some(set)
}

/// The reply to `Drain`: of the client connections `fds`, those no epoll watches and a
/// thread may serve on its stack are pinned. A volatile process (forked per connection
/// after startup) with no connection left whose client went away has finished its session.
fn drain_reply(
    fds: Vec<i32>,
    lost_client: bool,
    volatile: bool,
    pinned: &BTreeSet<i32>,
    idle_check: bool,
    busy: Vec<i32>,
) -> RuntimeReply {
    RuntimeReply::Connections {
        pinned: fds.iter().copied().filter(|fd| pinned.contains(fd)).collect(),
        finished: volatile && fds.is_empty() && lost_client,
        fds,
        volatile,
        idle_check,
        busy,
    }
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
        if !needs_rearm(reg.events, || is_listener(reg.fd)) {
            continue;
        }
        // Re-registering an existing item with its own events and data, from the control
        // thread, whose private fd table lacks these descriptors.
        let mut ev = libc::epoll_event { events: reg.events, u64: reg.data };
        modify_in_program_table(reg.epfd, reg.fd, &mut ev);
    }
}

/// Only edge-triggered registrations of listeners miss what queued during a drain (a
/// level-triggered one reports a readable listener again by itself).
fn needs_rearm(events: u32, is_listener: impl FnOnce() -> bool) -> bool {
    events & libc::EPOLLET as u32 != 0 && is_listener()
}

fn is_listener(fd: i32) -> bool {
    with_program_fd(fd, |c| crate::rawfd::socket_int_option(c, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0))
        .unwrap_or(false)
}

/// The control thread has a private descriptor table; borrow the program's descriptors
/// through a pidfd for one epoll_ctl. The epoll item is keyed by the target's number, so
/// the copy of the target must sit at the same number in our table.
fn modify_in_program_table(epfd: i32, fd: i32, ev: &mut libc::epoll_event) {
    with_program_fd(fd, |target| {
        // The epoll instance is copied unguarded: a copy keeping it alive past the
        // program's close of it changes nothing the program can see.
        let Some(pidfd) = rawfd::pidfd_of_self() else { return };
        let ep = rawfd::copy_from(pidfd, epfd);
        // SAFETY: the pidfd was made just above, for this call only.
        unsafe { rawfd::close(pidfd) };
        let Some(ep) = ep else { return };
        let at_fd = target == fd
            // Never clobber a descriptor of our own (the control socket) to make room.
            || (!rawfd::is_open(fd)
                // SAFETY: `fd` is free in this thread's table (just checked), and `target`
                // our own copy.
                && unsafe { rawfd::dup_onto(target, fd, libc::O_CLOEXEC) });
        if at_fd {
            // SAFETY: epoll_ctl reads `ev`, a live exclusive reference, and gets two
            // descriptors of ours.
            unsafe { crate::sys!(libc::SYS_epoll_ctl, ep, libc::EPOLL_CTL_MOD, fd, ev as *mut libc::epoll_event) };
            if target != fd {
                // SAFETY: the copy dup_onto placed at `fd` in our own table just above.
                unsafe { rawfd::close(fd) };
            }
        }
        // SAFETY: our copy of the epoll instance, made above.
        unsafe { rawfd::close(ep) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_descriptors_are_followed_through_close_dup_and_close_range() {
        let t = Box::new(AcceptedFds::new());
        t.accepted(7);
        assert!(t.contains(7) && !t.contains(8));
        t.duplicated(7, 9);
        assert!(t.contains(9), "a dup of a connection is a connection");
        t.duplicated(8, 9);
        assert!(!t.contains(9), "a dup of something else over it replaces it");
        t.closed(7);
        assert!(!t.contains(7));
        for fd in [3, 4, 5, 100] {
            t.accepted(fd);
        }
        t.closed_range(4, 99);
        assert!(t.contains(3) && !t.contains(4) && !t.contains(5) && t.contains(100));
        t.closed_range(0, u32::MAX);
        assert!(!t.contains(3) && !t.contains(100), "a range past the table is cut at its end");
    }

    #[test]
    fn numbers_outside_the_table_are_never_connections() {
        let t = Box::new(AcceptedFds::new());
        t.accepted(-1);
        t.accepted(TRACKED_FDS as i32);
        assert!(!t.contains(-1) && !t.contains(TRACKED_FDS as i32));
        t.duplicated(-1, 5);
        assert!(!t.contains(5));
    }

    #[test]
    fn only_accepted_descriptors_startup_does_not_account_for_may_be_clients() {
        let t = Box::new(AcceptedFds::new());
        for fd in [1, 5, 6] {
            t.accepted(fd);
        }
        let known: BTreeSet<i32> = [6].into_iter().collect();
        assert!(may_be_client(5, &known, &t));
        assert!(!may_be_client(6, &known, &t), "startup accounts for it (an inherited connection)");
        assert!(!may_be_client(1, &known, &t), "0-2 are never clients");
        assert!(!may_be_client(7, &known, &t), "never accepted: a socketpair, a received channel");
    }

    #[test]
    fn connected_streams_are_clients_and_those_without_a_peer_lost_theirs() {
        let sock = |stream, listening, peer| Socket { stream, listening, peer }.connection();
        assert_eq!(sock(true, false, true), Connection::Client);
        assert_eq!(sock(true, false, false), Connection::LostClient);
        assert_eq!(sock(true, true, false), Connection::NotClient, "a listener");
        assert_eq!(sock(false, false, true), Connection::NotClient, "a connected datagram socket");
    }

    #[test]
    fn accepts_are_refused_held_or_let_through_by_the_listeners_flags() {
        assert_eq!(gate(-1), Gate::Proceed, "the real accept reports the bad descriptor");
        assert_eq!(gate(libc::O_RDWR as i64), Gate::Hold);
        assert_eq!(gate((libc::O_RDWR | libc::O_NONBLOCK) as i64), Gate::Refuse);
    }

    #[test]
    fn the_drain_reply_pins_what_threads_serve_and_finishes_idle_volatile_processes() {
        let served: BTreeSet<i32> = [7].into_iter().collect();
        match drain_reply(vec![7, 8], false, false, &served, true, vec![8]) {
            RuntimeReply::Connections { pinned, finished, fds, volatile, idle_check, busy } => {
                assert_eq!(pinned, vec![7], "7 is served on a thread's stack");
                assert_eq!((fds, busy), (vec![7, 8], vec![8]));
                assert!(!finished && !volatile && idle_check);
            }
            r => panic!("{r:?}"),
        }
        let finished = |fds: Vec<i32>, lost, volatile| match drain_reply(fds, lost, volatile, &served, false, vec![]) {
            RuntimeReply::Connections { finished, .. } => finished,
            r => panic!("{r:?}"),
        };
        assert!(finished(vec![], true, true), "a per-connection child whose client left");
        assert!(!finished(vec![], true, false), "a process startup made is never finished");
        assert!(!finished(vec![7], true, true), "it still serves a client");
        assert!(!finished(vec![], false, true), "no client ever left: not a finished session");
    }

    #[test]
    fn only_edge_triggered_listeners_are_rearmed() {
        let et = libc::EPOLLIN as u32 | libc::EPOLLET as u32;
        assert!(needs_rearm(et, || true));
        assert!(!needs_rearm(et, || false), "an edge-triggered connection");
        assert!(!needs_rearm(libc::EPOLLIN as u32, || panic!("level-triggered: not even asked")));
    }
}
