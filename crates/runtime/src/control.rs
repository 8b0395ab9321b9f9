//! The process's link to its supervisor: registration (in the constructor and in every
//! fork child) and the control thread that answers the supervisor's commands. The thread
//! starts lazily, at the process's first wrapped call, so life before `main` stays
//! minimal; it blocks every signal so none of the program's signals is ever delivered
//! to it.

use crate::calls::Call;
use crate::quiesce;
use crate::rawfd;
use crate::symbolize;
use crate::threads::{self, IN_CALL, PARKED, TID_PENDING};
use mcr_protocol::{
    CallStack, RuntimeCommand, RuntimeCommandKind, RuntimeEvent, RuntimeReply, ThreadInfo, ThreadState,
};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};
use std::sync::OnceLock;
use std::time::Duration;

static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);
/// Serializes messages from the control thread and from program threads (startup
/// completion, replay conflicts) on the one socket.
static WRITE_LOCK: crate::sync::SpinLock<()> = crate::sync::SpinLock::new(());
static STARTED: AtomicBool = AtomicBool::new(false);
static CONTROL_TID: AtomicI32 = AtomicI32::new(0);
/// The control socket's number in the control thread's own descriptor table.
static PRIVATE_FD: AtomicI32 = AtomicI32::new(-1);
/// Read once in the constructor: programs rewrite their environment (nginx workers keep
/// only TZ), and this must still be known when the supervisor goes away.
static IN_PID_NAMESPACE: AtomicBool = AtomicBool::new(false);

pub fn note_pid_namespace() {
    IN_PID_NAMESPACE.store(std::env::var_os(mcr_protocol::env::PID_NAMESPACE).is_some_and(|v| v == "1"), SeqCst);
}

pub fn in_pid_namespace() -> bool {
    IN_PID_NAMESPACE.load(SeqCst)
}
static SOCKET_NAME: OnceLock<Vec<u8>> = OnceLock::new();

pub fn set_socket_name(name: Vec<u8>) {
    let _ = SOCKET_NAME.set(name);
}

pub fn reserved_fds() -> [i32; 2] {
    [CONTROL_FD.load(Relaxed), crate::dirty::fd()]
}

pub fn is_reserved_fd(fd: i32) -> bool {
    fd >= 0 && reserved_fds().contains(&fd)
}

pub fn is_control_thread(tid: i32) -> bool {
    CONTROL_TID.load(Relaxed) == tid
}

/// Move `fd` to the highest free number below min(RLIMIT_NOFILE, 1024), so it stays out
/// of the way of the program's own numbering (and of select()'s FD_SETSIZE). Returns its
/// new number (the old one is closed), or `fd` when no number is free.
///
/// # Safety
/// `fd` is the runtime's own descriptor, which nothing else uses.
pub(crate) unsafe fn move_to_reserved(fd: i32) -> i32 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `rl`, a live local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let top = (rl.rlim_cur.min(1024) as i32).max(1);
    for target in (top.saturating_sub(crate::startup_log::RUNTIME_FDS).max(fd + 1)..top).rev() {
        if rawfd::is_open(target) || is_reserved_fd(target) {
            continue;
        }
        // SAFETY: `target` was just seen free; `fd` is ours (the caller's contract).
        if unsafe { rawfd::dup_onto(fd, target, libc::O_CLOEXEC) } {
            // SAFETY: ours, and replaced by `target`.
            unsafe { rawfd::close(fd) };
            return target;
        }
    }
    fd
}

/// The program wants `fd` (dup2 onto it): move ours elsewhere first.
pub fn relocate_reserved_fd(fd: i32) {
    let _errno = crate::errno::ErrnoGuard::save();
    for cell in [&CONTROL_FD, &crate::dirty::UFFD] {
        if cell.load(Relaxed) == fd {
            if let Some(copy) = rawfd::dup_at_least(fd, 0) {
                // SAFETY: a copy of our own descriptor made just above; the original is
                // about to be replaced by the program's dup2.
                cell.store(unsafe { move_to_reserved(copy) }, SeqCst);
            }
        }
    }
}

fn write_all(msg: &RuntimeEvent) -> bool {
    let line = mcr_protocol::encode_line(msg);
    let _serialized = WRITE_LOCK.lock();
    let mut off = 0;
    let fd = my_control_fd();
    while off < line.len() {
        // SAFETY: writing a valid buffer to our socket.
        let n = unsafe { crate::sys!(libc::SYS_write, fd, line[off..].as_ptr(), line.len() - off) };
        if n < 0 {
            if crate::errno::get() == libc::EINTR {
                continue;
            }
            return false;
        }
        off += n as usize;
    }
    true
}

/// Send an unsolicited event to the supervisor (from any thread).
pub fn send_event(ev: &RuntimeEvent) -> bool {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    write_all(ev)
}

fn read_cmdline() -> Vec<String> {
    std::fs::read("/proc/self/cmdline")
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Connect to the supervisor and say hello. False when it cannot be reached.
pub fn register(forked: bool) -> bool {
    let Some(name) = SOCKET_NAME.get() else { return false };
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    connect(name, forked)
}

fn connect(name: &[u8], forked: bool) -> bool {
    let Ok(fd) = rawfd::connect_abstract(name) else { return false };
    // Abstract sockets are open to every local user: the supervisor is PID 1 of this
    // process's PID namespace (when it made one) and runs as root or as this user.
    let genuine = rawfd::peer_credentials(fd)
        .is_some_and(|(pid, uid)| rawfd::trusted_peer_uid(uid) && (!in_pid_namespace() || pid == 1));
    if !genuine {
        // SAFETY: the socket just made, the runtime's alone.
        unsafe { rawfd::close(fd) };
        return false;
    }
    // SAFETY: the socket just made, the runtime's alone.
    CONTROL_FD.store(unsafe { move_to_reserved(fd) }, SeqCst);
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default();
    write_all(&RuntimeEvent::Hello {
        pid: crate::pid(),
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() },
        exe,
        argv: read_cmdline(),
        forked,
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Start the control thread if this process has none yet. Hot path: one relaxed load.
#[inline(always)]
pub fn ensure_started() {
    if !STARTED.load(Relaxed) {
        start_thread();
    }
}

#[cold]
fn start_thread() {
    if CONTROL_FD.load(SeqCst) < 0 || STARTED.swap(true, SeqCst) {
        return;
    }
    // Nothing the runtime does here may be taken for the program's own calls (a read
    // counted as a quiescent point would park this thread before the controller exists).
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    // The new thread inherits a fully blocked mask, so none of the program's signals is
    // ever delivered to it; this thread's own mask is put back right after.
    let old = crate::signals::set_thread_mask(libc::SIG_SETMASK, &crate::signals::full_sigset());
    if !crate::replay::with_high_tids(|| threads::spawn_detached(control_main)) {
        crate::diag::warn("cannot start the runtime's control thread; this process cannot be quiesced");
    }
    crate::signals::set_thread_mask(libc::SIG_SETMASK, &old);
}

/// Sent by the program thread that completes the process's startup.
pub fn notify_startup_complete() {
    let ms = quiesce::STARTUP_NS.load(Acquire) as f64 / 1e6;
    send_event(&RuntimeEvent::StartupComplete { elapsed_ms: ms });
}

/// Give the control thread a descriptor table of its own holding only the control
/// socket. The kernel's fast path for a syscall's fd lookup needs the table unshared:
/// without this a single-threaded server pays an atomic reference count on every read,
/// write and epoll_wait just because the runtime added a thread. The copies of the
/// program's descriptors are closed at once, so none is kept alive behind its back.
fn private_fd_table() -> i32 {
    let ctl = CONTROL_FD.load(SeqCst);
    // SAFETY: unshare(CLONE_FILES) affects only this thread.
    if unsafe { crate::sys!(libc::SYS_unshare, libc::CLONE_FILES) } != 0 {
        return ctl;
    }
    let fds = crate::procdir::numbers(c"/proc/thread-self/fd");
    for fd in fds {
        if fd != ctl {
            // SAFETY: after unshare this table is the control thread's alone, and it has
            // opened nothing else yet (the directory listing is closed by now): every
            // other descriptor is an unused copy of one of the program's.
            unsafe { rawfd::close(fd) };
        }
    }
    ctl
}

/// The control socket as the calling thread sees it.
fn my_control_fd() -> i32 {
    let tid = threads::gettid();
    if is_control_thread(tid) || crate::profiling::is_sampler_thread(tid) {
        PRIVATE_FD.load(SeqCst)
    } else {
        CONTROL_FD.load(SeqCst)
    }
}

extern "C" fn control_main(_: *mut libc::c_void) -> *mut libc::c_void {
    // For the whole life of this thread: none of its calls is the program's.
    let _internal = threads::InternalGuard::enter();
    // An update's new version keeps sharing the program's descriptor table until commit:
    // the state transfer installs the old version's connections into it from here.
    if crate::replay::active() {
        PRIVATE_FD.store(CONTROL_FD.load(SeqCst), SeqCst);
    } else {
        PRIVATE_FD.store(private_fd_table(), SeqCst);
    }
    CONTROL_TID.store(threads::gettid(), SeqCst);
    // SAFETY: prctl(PR_SET_NAME) reads a NUL-terminated static string and names the calling
    // thread; failure is harmless.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"mcr-control".as_ptr()) };
    crate::profiling::start_sampler();
    let mut pending: Vec<u8> = Vec::new();
    // How much of `pending` holds no newline: a command of a megabyte (an update's list of
    // blocks to allocate or free) arrives in many reads, and searching it from its start
    // after each made its reception quadratic.
    let mut searched = 0;
    loop {
        let ctl = PRIVATE_FD.load(SeqCst);
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from our socket (re-read the number: a
        // dup2 by the program may have moved it).
        let got = unsafe { crate::sys!(libc::SYS_read, ctl, buf.as_mut_ptr(), buf.len()) };
        if got <= 0 {
            if got < 0 && crate::errno::get() == libc::EINTR {
                continue;
            }
            break;
        }
        pending.extend_from_slice(&buf[..got as usize]);
        while let Some(pos) = pending[searched..].iter().position(|&b| b == b'\n').map(|p| p + searched) {
            searched = 0;
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if line.len() == 1 {
                // A new supervisor taking over ends any line its predecessor left unfinished.
                continue;
            }
            let reply = match mcr_protocol::decode_line::<RuntimeCommand>(&line[..line.len() - 1]) {
                Ok(cmd) => RuntimeEvent::Reply { id: cmd.id, reply: handle(cmd.command) },
                Err(e) => {
                    RuntimeEvent::Reply { id: 0, reply: RuntimeReply::Error { message: format!("bad command: {e}") } }
                }
            };
            if !write_all(&reply) {
                break;
            }
        }
        searched = pending.len();
    }
    // The supervisor is gone.
    if in_pid_namespace() {
        // The namespace's init holds a copy of this connection across a supervisor's
        // death: the connection ends only with the init, PID 1 of our namespace, and the
        // kernel is ending this process. Parked threads stay parked (an update's
        // rolled-back new version must not serve a single request in the meantime).
        crate::diag::warn("lost the connection to the mcr supervisor and its init (PID 1 of this process's PID namespace); the kernel ends this process with them");
    } else {
        // Never leave threads parked without anyone to resume them.
        quiesce::resume();
        crate::diag::warn("lost the connection to the mcr supervisor; this process keeps running unmanaged");
    }
    core::ptr::null_mut()
}

fn handle(cmd: RuntimeCommandKind) -> RuntimeReply {
    match cmd {
        RuntimeCommandKind::Status => RuntimeReply::Status {
            startup_complete: quiesce::STARTUP_DONE.load(Acquire),
            startup_ms: quiesce::STARTUP_DONE.load(Acquire).then(|| quiesce::STARTUP_NS.load(Acquire) as f64 / 1e6),
            quiesced: quiesce::is_quiesced(),
            threads: thread_infos(),
            dirty: crate::dirty::status(),
        },
        RuntimeCommandKind::Quiesce { deadline_ns: Some(d), .. } if crate::monotonic_ns() > d => {
            // Read after the supervisor gave up (this process was stopped): parking now
            // would only hold the program until the resume queued behind this.
            RuntimeReply::QuiesceFailed { elapsed_us: 0, laggards: Vec::new() }
        }
        RuntimeCommandKind::Quiesce { timeout_ms, deadline_ns } => {
            let out = quiesce::quiesce(Duration::from_millis(timeout_ms), deadline_ns);
            let elapsed_us = out.elapsed.as_micros() as u64;
            if out.laggards.is_empty() {
                RuntimeReply::Quiesced { elapsed_us, threads: out.threads }
            } else {
                RuntimeReply::QuiesceFailed { elapsed_us, laggards: out.laggards }
            }
        }
        RuntimeCommandKind::StartupLog => RuntimeReply::StartupLog(crate::startup_log::snapshot()),
        RuntimeCommandKind::StartupLogRefresh => RuntimeReply::StartupLogRefresh(crate::startup_log::refresh()),
        RuntimeCommandKind::ProfileSnapshot if crate::profiling::enabled() => {
            RuntimeReply::Profile(crate::profiling::snapshot_now(true))
        }
        RuntimeCommandKind::ProfileSnapshot => RuntimeReply::Error { message: "not in profiling mode".into() },
        RuntimeCommandKind::Resume => {
            // Resuming ends an update's replay: later forks are ordinary forks.
            let was_replaying = crate::replay::active();
            crate::replay::deactivate();
            if was_replaying {
                PRIVATE_FD.store(private_fd_table(), SeqCst);
                // The first resume of a new version is its commit.
                crate::resume::commit();
            }
            quiesce::resume();
            crate::drain::end();
            RuntimeReply::Resumed
        }
        RuntimeCommandKind::Allocate { sizes } => crate::transfer::allocate(&sizes),
        RuntimeCommandKind::ImportFds { socket, targets, adopt, plain } => {
            crate::transfer::import_fds(&socket, &targets, adopt, plain)
        }
        RuntimeCommandKind::EpollAdd { registrations } => crate::transfer::epoll_add(&registrations),
        RuntimeCommandKind::RunObjHandlers { what, objects, relocations } => {
            crate::transfer::run_obj_handlers(&what, &objects, relocations)
        }
        RuntimeCommandKind::Free { addrs } => crate::transfer::free(&addrs),
        RuntimeCommandKind::SocketPeers { peers } => {
            crate::peers::set(peers);
            RuntimeReply::Done
        }
        RuntimeCommandKind::StartupAllocations => RuntimeReply::StartupAllocations {
            allocs: crate::startup_heap::snapshot(),
            held: crate::placed_blocks::held(),
        },
        RuntimeCommandKind::MainThreadTls => RuntimeReply::MainThreadTls { block: crate::tls::main_thread_block() },
        RuntimeCommandKind::AdoptStartupBlocks { blocks } => crate::startup_heap::adopt(&blocks),
        RuntimeCommandKind::Respawn { pid, fd } => match crate::resume::respawn(pid, fd) {
            Ok(pid) => RuntimeReply::Respawned { pid },
            Err(message) => RuntimeReply::Error { message },
        },
        RuntimeCommandKind::Drain => crate::drain::drain(),
        RuntimeCommandKind::MapPrivate { start, len, prot, locked } => {
            crate::transfer::map_private(start, len, prot, locked)
        }
        RuntimeCommandKind::MapFile { socket, start, len, offset, prot, shared, locked } => {
            crate::transfer::map_file(&socket, start, len, offset, prot, shared, locked)
        }
        RuntimeCommandKind::MapOldHeap { regions, socket } => {
            match crate::heap::map_old_heap(&regions, socket.as_deref()) {
                Ok(()) => RuntimeReply::Done,
                Err(message) => RuntimeReply::Error { message },
            }
        }
        RuntimeCommandKind::ShareAdoptedHeap if !quiesce::is_quiesced() => RuntimeReply::Error {
            message: "the adopted heap is shared again only while the program's threads are parked".into(),
        },
        RuntimeCommandKind::ShareAdoptedHeap => {
            // Past the commit point: whatever happens, the process goes on (a segment left
            // private is correct), so a failure is the operator's warning, not an error.
            let shared = crate::heap::share_adopted_heap();
            for why in &shared.failed {
                crate::diag::warn(&format!(
                    "an adopted heap segment stays copy-on-write over the old version's memfd (its memory is held \
                     until this process exits): {why}"
                ));
            }
            crate::diag::debug(|| format!("shared the adopted heap again: {shared:?}"));
            RuntimeReply::Done
        }
        RuntimeCommandKind::AdoptOldHeap { slots, release } => {
            if release {
                crate::heap::release(&slots.iter().map(|&s| s as usize).collect::<Vec<_>>());
                return RuntimeReply::Done;
            }
            match crate::heap::adopt_old_heap(&slots) {
                Ok(stats) => {
                    crate::diag::debug(|| format!("adopted the old heap: {stats:?}"));
                    RuntimeReply::Done
                }
                Err(message) => RuntimeReply::Error { message },
            }
        }
        RuntimeCommandKind::AttachSysv { shmid, start, len, readonly, locked } => {
            crate::transfer::attach_sysv(shmid, start, len, readonly, locked)
        }
        RuntimeCommandKind::Attributes => crate::attributes::report(),
        RuntimeCommandKind::ApplyAttributes { changes } => crate::attributes::apply(&changes),
        RuntimeCommandKind::PostStartupFds => {
            // The connections a drain reports move as such; any other accepted socket (a
            // seqpacket one, one whose client left) moves as a plain descriptor.
            let (clients, _) = crate::drain::connections(&crate::startup_log::startup_fds());
            RuntimeReply::PostStartupFds { fds: crate::startup_log::made_after_startup(|fd| clients.contains(&fd)) }
        }
        RuntimeCommandKind::PthreadKeys => RuntimeReply::PthreadKeys { keys: crate::keys::report() },
        RuntimeCommandKind::RecreatePthreadKeys { keys } => crate::keys::recreate(&keys),
    }
}

fn thread_infos() -> Vec<ThreadInfo> {
    let mut out = Vec::new();
    for (_, s) in threads::used() {
        let tid = s.tid.load(Acquire);
        if tid == TID_PENDING {
            continue;
        }
        let call = Call::from_index(s.call.load(Acquire));
        let st = s.state.load(SeqCst);
        let state = match st {
            IN_CALL => ThreadState::Blocked { call: call.name().into() },
            PARKED => ThreadState::Parked { call: call.name().into() },
            _ => ThreadState::Running,
        };
        let current_stack = s.current_wait();
        let at_qp = st != threads::RUNNING && quiesce::is_quiescent_point(s);
        let quiescent_point = if at_qp { current_stack.clone() } else { s.startup_wait() };
        let (class, creation_stack) = if s.is_main.load(Relaxed) {
            ("main".to_string(), None)
        } else {
            let cs: CallStack = symbolize::call_stack(None, &s.creation_stack.load());
            let routine = s.start_routine.load(Relaxed);
            let rname = if routine != 0 { symbolize::frame_at(routine).display_name() } else { "?".into() };
            let class = if cs.frames.is_empty() { rname } else { format!("{rname} (created by {})", cs.summary(4)) };
            (class, Some(cs))
        };
        out.push(ThreadInfo {
            tid,
            class,
            creation_stack,
            state,
            current_stack,
            quiescent_point,
            at_quiescent_point: at_qp,
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// In a fork child: the control thread did not survive, and the connection belongs to
/// the parent. Register this process anew.
pub fn reset_after_fork() {
    STARTED.store(false, SeqCst);
    CONTROL_TID.store(0, SeqCst);
    WRITE_LOCK.force_unlock();
    let fd = CONTROL_FD.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: the child's copy of the parent's connection, a reserved descriptor the
        // program never sees.
        unsafe { rawfd::close(fd) };
    }
    if !register(true) {
        crate::diag::warn("forked process could not register with the mcr supervisor; it runs unmanaged");
    }
}
