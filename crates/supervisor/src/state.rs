//! The supervisor's event loop and its view of the server.

use crate::handover::{NewSide, OldSide};
use crate::init_link::{Message, Received};
use crate::launch::Launched;
use crate::{control, name, procfs, report, runtime_link, Config};
use mcr_protocol::{
    ExitStatus, InstanceFiles, LaunchReport, ReplayConflict, RuntimeCommandKind, RuntimeEvent, RuntimeReply,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How often a wait for a runtime's answer looks whether the process stopped.
const STOPPED_POLL: Duration = Duration::from_millis(20);

/// Why a process's runtime gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    NotRegistered(i32),
    /// It exited, or closed its connection, before answering.
    Disconnected(i32),
    /// It is stopped (`how`: by a signal, by a debugger): it cannot answer until continued.
    Stopped {
        pid: i32,
        how: &'static str,
    },
    /// It runs and did not answer in time.
    Timeout {
        pid: i32,
        ms: u128,
    },
}

impl AskError {
    /// The process lives and did not answer (as opposed to having gone away).
    pub fn unreachable(&self) -> bool {
        matches!(self, AskError::Stopped { .. } | AskError::Timeout { .. })
    }
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NotRegistered(pid) => write!(f, "process {pid} is not registered"),
            AskError::Disconnected(pid) => write!(f, "process {pid} exited or disconnected before answering"),
            AskError::Stopped { pid, how } => {
                write!(f, "process {pid} is stopped ({how}): it cannot answer until it is continued")
            }
            AskError::Timeout { pid, ms } => write!(
                f,
                "process {pid} did not answer within {ms} ms (its runtime starts at the process's first blocking call)"
            ),
        }
    }
}

/// A registered process of the server.
pub struct Registered {
    pub conn: u64,
    pub argv: Vec<String>,
    pub startup_complete: bool,
    pub startup_ms: Option<f64>,
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
pub struct Inner {
    pub procs: BTreeMap<i32, Registered>,
    /// Children forked during startup that have not said hello yet: startup is not
    /// complete while one of them lives (a daemonizing server's parent completes its own
    /// startup waiting for its child, before the child registered).
    pub awaited_children: BTreeSet<i32>,
    pub pending: HashMap<u64, (i32, oneshot::Sender<RuntimeReply>)>,
    pub next_id: u64,
    pub next_conn: u64,
    pub main_pid: Option<i32>,
    pub exit: Option<ExitStatus>,
    pub started: Option<f64>,
    /// Milliseconds from the fork of the server's first process to completed startup.
    pub started_from_exec: Option<f64>,
    pub quiesced: bool,
    pub stopping: bool,
    /// The instance's name and files (they change when an update's new version takes over).
    pub name: String,
    pub files: Option<InstanceFiles>,
    /// Update, new version: the files it takes over at commit.
    pub final_files: Option<InstanceFiles>,
    pub lock: Option<std::fs::File>,
    /// Update, new version: replay conflicts reported by its processes.
    pub conflicts: Vec<ReplayConflict>,
    /// Update, old version: whether an update holds this version, for whom, and whether it
    /// retired.
    pub old_side: OldSide,
    /// Update, new version: until and after its commit (`None`: not launched by an update).
    pub new_side: Option<NewSide>,
    /// The last process is gone: the supervisor is exiting.
    pub ending: bool,
    /// The (device, inode) of this supervisor's control socket file (`name`).
    pub socket_id: Option<name::Identity>,
    pub next_control_conn: u64,
    /// How the server was launched, for `UpdateInfo`.
    pub launch: Option<LaunchFacts>,
    /// Runtime connections accepted and not yet read to their end.
    pub open_conns: usize,
    /// Profiling mode: the last profile report of each runtime connection.
    pub profiles: BTreeMap<u64, mcr_protocol::ProcessProfile>,
}

/// How this version was launched (what the next version of an update copies).
#[derive(Clone)]
pub struct LaunchFacts {
    pub profile: Option<String>,
    pub detach: bool,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

pub struct Shared {
    pub inner: Mutex<Inner>,
    pub program: String,
    pub args: Vec<String>,
    pub pid_namespace: bool,
    pub supervisor_pid: i32,
    pub runtime_lib_name: String,
    pub launched_at: Instant,
    /// None while starting; Some(Ok(ms)) once started; Some(Err(msg)) if it never will.
    pub started_tx: watch::Sender<Option<Result<f64, String>>>,
    /// The pipe to the launcher (`mcr run` or `mcr update`).
    pub report: Option<std::os::fd::OwnedFd>,
    /// Update, new version: the replay log, removed at commit.
    pub replay_log: Option<std::path::PathBuf>,
    /// The runtime listener's descriptor, to see connections not accepted yet.
    pub runtime_listener_fd: i32,
    /// Woken when a process reports startup completion, so the check runs at once.
    pub startup_event: tokio::sync::Notify,
    /// The link to the namespace's init (None without a PID namespace).
    pub init_link: Option<OwnedFd>,
    /// The init (PID 1 of the namespace), whose exit an update's new version waits for
    /// to know this version retired.
    pub init_pidfd: Option<OwnedFd>,
    /// Woken when the init reaped a process of the server.
    pub reaped_event: tokio::sync::Notify,
}

pub type State = Arc<Shared>;

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell the init (best effort: without an init there is nobody to tell).
    pub fn tell_init(&self, msg: &Message, fds: &[std::os::fd::RawFd]) -> bool {
        match &self.init_link {
            Some(link) => crate::init_link::send(link, msg, fds).is_ok(),
            None => false,
        }
    }

    /// Send a command to one process and wait for its reply, at most `timeout`. A
    /// process that stops (SIGSTOP, a debugger) cannot answer: the wait ends as soon as it
    /// is seen stopped, and the command stays queued for when it continues.
    pub async fn ask(
        &self,
        pid: i32,
        command: RuntimeCommandKind,
        timeout: Duration,
    ) -> Result<RuntimeReply, AskError> {
        let (tx, mut rx) = oneshot::channel();
        let id = {
            let mut g = self.lock();
            let Some(p) = g.procs.get(&pid) else { return Err(AskError::NotRegistered(pid)) };
            let ptx = p.tx.clone();
            g.next_id += 1;
            let id = g.next_id;
            g.pending.insert(id, (pid, tx));
            let line = mcr_protocol::encode_line(&mcr_protocol::RuntimeCommand { id, command });
            if ptx.send(line).is_err() {
                g.pending.remove(&id);
                return Err(AskError::Disconnected(pid));
            }
            id
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(STOPPED_POLL), &mut rx).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(_)) => return Err(AskError::Disconnected(pid)),
                Err(_) => {
                    let why = if left <= STOPPED_POLL {
                        Some(AskError::Timeout { pid, ms: timeout.as_millis() })
                    } else {
                        procfs::stopped(pid).map(|how| AskError::Stopped { pid, how })
                    };
                    if let Some(e) = why {
                        self.lock().pending.remove(&id);
                        return Err(e);
                    }
                }
            }
        }
    }

    pub fn on_event(&self, conn: u64, pid: i32, ev: RuntimeEvent, tx: &mpsc::UnboundedSender<Vec<u8>>) {
        let mut g = self.lock();
        match ev {
            RuntimeEvent::Hello { argv, pid: hpid, ppid, exe, forked, .. } => {
                if !latest_image(g.procs.get(&pid).map(|r| r.conn), conn) {
                    return;
                }
                let hello = crate::profiling::Hello { pid: hpid, ppid, exe: &exe, forked };
                crate::profiling::note_hello(&mut g.profiles, conn, hello);
                g.procs
                    .insert(pid, Registered { conn, argv, startup_complete: false, startup_ms: None, tx: tx.clone() });
                if g.main_pid.is_none() {
                    g.main_pid = Some(pid);
                    self.tell_init(&Message::Main { pid }, &[]);
                }
                g.awaited_children.remove(&pid);
            }
            RuntimeEvent::Forked { child } => {
                if !g.procs.contains_key(&child) {
                    g.awaited_children.insert(child);
                }
            }
            RuntimeEvent::StartupComplete { elapsed_ms } => {
                if let Some(p) = g.procs.get_mut(&pid).filter(|p| p.conn == conn) {
                    p.startup_complete = true;
                    p.startup_ms = Some(elapsed_ms);
                }
                self.startup_event.notify_one();
            }
            RuntimeEvent::ReplayConflict { conflict } => {
                let msg = format!("process {}: {}", conflict.pid, conflict.reason);
                g.conflicts.push(conflict.clone());
                drop(g);
                if self.started_tx.borrow().is_none() {
                    let _ = self.started_tx.send(Some(Err(msg)));
                }
                report(
                    &self.report.as_ref().and_then(|f| f.try_clone().ok()),
                    &LaunchReport::ReplayConflict { conflict },
                );
            }
            RuntimeEvent::ProfileReport { profile } => {
                g.profiles.insert(conn, profile);
            }
            RuntimeEvent::Reply { id, reply } => {
                if let Some((_, waiter)) = g.pending.remove(&id) {
                    let _ = waiter.send(reply);
                }
            }
        }
    }

    /// Register process `pid` on a connection taken over from the previous supervisor.
    pub fn adopt(&self, conn: u64, pid: i32, argv: Vec<String>, tx: &mpsc::UnboundedSender<Vec<u8>>) {
        let mut g = self.lock();
        if !latest_image(g.procs.get(&pid).map(|r| r.conn), conn) {
            return;
        }
        g.procs.insert(pid, Registered { conn, argv, startup_complete: true, startup_ms: None, tx: tx.clone() });
    }

    pub fn on_disconnect(&self, conn: u64, pid: i32) {
        let mut g = self.lock();
        g.open_conns = g.open_conns.saturating_sub(1);
        if g.procs.get(&pid).is_some_and(|p| p.conn == conn) {
            g.procs.remove(&pid);
            // Dropping the senders fails every waiter of this process at once.
            g.pending.retain(|_, (p, _)| *p != pid);
        }
    }

    /// Whether a runtime connection waits in the listener's backlog.
    pub fn connection_pending(&self) -> bool {
        let mut p = libc::pollfd { fd: self.runtime_listener_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: polling our own listening socket without waiting.
        unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLIN != 0 }
    }

    pub fn processes(&self) -> Vec<procfs::Proc> {
        // A caller holding the lock (none should) only makes every process's maps read.
        let registered: BTreeSet<i32> = match self.inner.try_lock() {
            Ok(g) => g.procs.keys().copied().collect(),
            Err(_) => BTreeSet::new(),
        };
        procfs::server_processes(self.pid_namespace, &self.runtime_lib_name, &|pid| registered.contains(&pid))
    }

    /// Startup is complete when every process carrying the runtime has registered and
    /// reported completion. Processes without the runtime cannot be waited for.
    fn check_started(&self) {
        if self.started_tx.borrow().is_some() {
            return;
        }
        let procs = self.processes();
        let mut g = self.lock();
        let relevant: Vec<_> = procs.iter().filter(|p| p.has_runtime).collect();
        if relevant.is_empty() {
            return;
        }
        // A child that exited before it said hello has no startup left to wait for.
        g.awaited_children.retain(|c| procs.iter().any(|p| p.pid == *c));
        if !g.awaited_children.is_empty() {
            return;
        }
        let all = relevant.iter().all(|p| g.procs.get(&p.pid).is_some_and(|r| r.startup_complete));
        if all {
            // The slowest process's own measure (constructor to completion), which is
            // what a user means by "startup"; wall time since launch is the fallback.
            let ms = relevant
                .iter()
                .filter_map(|p| g.procs.get(&p.pid)?.startup_ms)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                .unwrap_or_else(|| self.launched_at.elapsed().as_secs_f64() * 1000.0);
            g.started = Some(ms);
            g.started_from_exec = Some(self.launched_at.elapsed().as_secs_f64() * 1000.0);
            drop(g);
            self.tell_init(&Message::Started { ms }, &[]);
            let _ = self.started_tx.send(Some(Ok(ms)));
        }
    }
}

/// Whether a Hello on connection `conn` comes from the process's current image, given the
/// connection its PID is registered with. A process that execs says hello twice with the
/// same PID (the shell of `exec kvd`, then kvd); each connection is served by a task of
/// its own, so the first image's Hello may be read after the second's, and must not take
/// the registration back (its connection closes at once, and the process would be left
/// unregistered: never quiesced, never asked). Connections are numbered in the order they
/// were accepted, which is the order they connected in: the higher number is the newer image.
fn latest_image(registered: Option<u64>, conn: u64) -> bool {
    registered.is_none_or(|r| conn >= r)
}

/// The init's messages: the processes it reaped (orphans of the server, the server's last
/// process typically).
async fn read_init_link(state: State) {
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    let Some(link) = state.init_link.as_ref().and_then(|l| l.try_clone().ok()) else { return };
    // SAFETY: the AsyncFd owns `link` (an OwnedFd copy of the init link) for its whole
    // life, so the descriptor stays open and refers to the same socket until it is dropped.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(link, Interest::READABLE) }) else { return };
    loop {
        let Ok(mut ready) = afd.readable().await else { return };
        loop {
            match crate::init_link::receive(afd.get_ref()) {
                Received::Message(Message::Reaped { pid, status }, _) => {
                    let mut g = state.lock();
                    if g.main_pid == Some(pid) {
                        g.exit = Some(ExitStatus::from_wait_status(status));
                        g.main_pid = None;
                    }
                    drop(g);
                    state.reaped_event.notify_one();
                }
                Received::Message(..) | Received::Garbled => {}
                Received::Nothing => {
                    ready.clear_ready();
                    break;
                }
                // The init is gone: so is everything in the namespace.
                Received::Closed => return,
            }
        }
    }
}

/// A supervisor started again by the init: the runtime connections its predecessor held
/// (copies the init kept) are this supervisor's now, and the version runs: an update that
/// held it died with the previous supervisor's link to it.
fn take_over(state: &State, adopted: crate::init::Reattach) {
    if let Some(ms) = adopted.started_ms {
        state.lock().started = Some(ms);
        // Stored even with nobody subscribed yet (send would drop it).
        state.started_tx.send_replace(Some(Ok(ms)));
    }
    for (pid, fd) in adopted.connections {
        runtime_link::adopt(state.clone(), pid, fd);
    }
    let st = state.clone();
    tokio::spawn(async move {
        let n = control::resume_all(&st, control::ASK_TIMEOUT).await;
        eprintln!("mcr: supervisor {} took the server over ({n} processes)", st.supervisor_pid);
    });
}

fn reap(state: &State) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            let mut g = state.lock();
            if g.main_pid == Some(pid) || g.main_pid.is_none() {
                g.exit = Some(ExitStatus::from_wait_status(status));
                g.main_pid = None;
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            // With an init, orphans are the init's children: the server is gone when no
            // process of it is left.
            return state.init_link.is_none() || state.processes().is_empty();
        }
        return false;
    }
}

/// When the main process exits (a daemon's parent, typically), the oldest remaining
/// process takes over: signals go to it and its exit status becomes the server's.
fn pick_main(state: &State) {
    if state.lock().main_pid.is_some() {
        return;
    }
    let procs = state.processes();
    if let Some(p) = procs.iter().min_by_key(|p| p.pid) {
        let mut g = state.lock();
        g.main_pid = Some(p.pid);
        g.exit = None;
        drop(g);
        state.tell_init(&Message::Main { pid: p.pid }, &[]);
    }
}

pub async fn serve(cfg: Config, launched: Launched) -> i32 {
    let (started_tx, _) = watch::channel(None);
    let lib_name =
        cfg.runtime_lib.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "libmcr.so".into());
    let mut launched = launched;
    let adopted = launched.adopted.take();
    let (env, cwd) = match (&adopted, &cfg.update) {
        (Some(a), _) => (a.env.clone(), a.cwd.display().to_string()),
        (None, Some(u)) => (u.env.clone(), u.cwd.display().to_string()),
        (None, None) => {
            (std::env::vars().collect(), std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default())
        }
    };
    let facts =
        LaunchFacts { profile: cfg.profile.as_ref().map(|p| p.display().to_string()), detach: cfg.detach, env, cwd };
    let mut cfg = cfg;
    let init_link = cfg.init_link.take();
    // SAFETY: pidfd_open(1) names PID 1 of our namespace: the init, our parent.
    let init_pidfd = init_link.as_ref().and_then(|_| crate::pidfd::open(1).ok());
    let state: State = Arc::new(Shared {
        inner: Mutex::new(Inner {
            main_pid: launched.first_pid,
            name: cfg.name.clone(),
            files: Some(cfg.files.clone()),
            final_files: cfg.update.as_ref().map(|u| crate::final_files(&cfg.files, &u.final_name)),
            lock: cfg.lock.try_clone().ok(),
            // An update's new version holds its threads at their first quiescent point; a
            // version taken over may have been held by an update when its supervisor died.
            quiesced: cfg.update.is_some() || adopted.is_some(),
            new_side: cfg.update.as_ref().map(|_| NewSide::Parked),
            socket_id: name::identity(&cfg.files.socket),
            launch: Some(facts),
            ..Default::default()
        }),
        program: cfg.program.display().to_string(),
        args: cfg.args.clone(),
        pid_namespace: cfg.pid_namespace,
        supervisor_pid: cfg.supervisor_pid,
        runtime_lib_name: lib_name,
        launched_at: launched.spawned_at,
        started_tx,
        report: cfg.report.as_ref().and_then(|f| f.try_clone().ok()),
        replay_log: cfg.update.as_ref().map(|u| u.replay_log.clone()),
        runtime_listener_fd: std::os::fd::AsRawFd::as_raw_fd(&launched.runtime),
        startup_event: tokio::sync::Notify::new(),
        init_link,
        init_pidfd,
        reaped_event: tokio::sync::Notify::new(),
    });
    if let Some(pid) = launched.first_pid {
        state.tell_init(&Message::Main { pid }, &[]);
    }
    let _ = mcr_protocol::instance::write_private(&cfg.files.pid, format!("{}\n", cfg.supervisor_pid).as_bytes());
    report(
        &cfg.report,
        &LaunchReport::Supervising {
            supervisor_pid: cfg.supervisor_pid,
            pid_namespace: cfg.pid_namespace,
            note: cfg.namespace_note.clone(),
        },
    );

    let Ok(runtime_listener) = tokio::net::UnixListener::from_std(launched.runtime) else { return 70 };
    let Ok(control_listener) = tokio::net::UnixListener::from_std(launched.control) else { return 70 };
    tokio::spawn(runtime_link::accept_loop(state.clone(), runtime_listener));
    tokio::spawn(control::accept_loop(state.clone(), control_listener));
    if state.init_link.is_some() {
        tokio::spawn(read_init_link(state.clone()));
    }
    if let Some(a) = adopted {
        take_over(&state, a);
    }
    // An update's new version ends if the update dies before the commit.
    if let (Some(_), Some(report)) = (&cfg.update, cfg.report.as_ref().and_then(|f| f.try_clone().ok())) {
        tokio::spawn(crate::commit::watch_lifeline(state.clone(), report));
    }

    // Forward the launcher's report of completed startup.
    {
        let mut rx = state.started_tx.subscribe();
        let fd = cfg.report.as_ref().and_then(|f| f.try_clone().ok());
        let state = state.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let started = rx.borrow().clone();
                if let Some(Ok(ms)) = started {
                    let processes = Some(state.processes().iter().map(|p| p.pid).collect());
                    report(&fd, &LaunchReport::Started { startup_ms: ms, processes });
                    break;
                }
            }
        });
    }

    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(_) => return 70,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Until startup completes, /proc is polled for it; afterwards the supervisor sleeps
    // until a child exits, a request arrives or a signal comes (no periodic wakeup).
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let exit = loop {
        let starting = state.started_tx.borrow().is_none();
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = state.reaped_event.notified() => {}
            _ = tick.tick(), if starting => {}
            _ = state.startup_event.notified(), if starting => {}
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                // `kill <supervisor>`: stop the server the way `mcr stop` does.
                control::begin_stop(&state, Duration::from_secs(10));
            }
        }
        let gone = reap(&state);
        if gone {
            // Before any other task runs: a commit must not go past its commit point now.
            let mut g = state.lock();
            g.ending = true;
            break g.exit.unwrap_or(ExitStatus::Code(0));
        }
        pick_main(&state);
        state.check_started();
    };
    // A process's last words (a replay conflict sent right before _exit) may still be
    // in its socket: read every runtime connection to its end before reporting the exit.
    // A process that connected, spoke and died before we accepted its connection is still
    // in the listener's backlog: wait for the backlog to empty too.
    let drain = Instant::now();
    while (state.lock().open_conns > 0 || state.connection_pending()) && drain.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Files are removed only while they are this supervisor's: a retired old version's
    // name belongs to its new version now. Removed before anyone hears of the end: `mcr
    // run --detach` returns on it, and the name must be free then (on a loaded machine the
    // suite found the lock file still there).
    let ours = name::socket_file(&state) != name::SocketFile::Other;
    let (retired, files, lock) = {
        let mut g = state.lock();
        (g.old_side == OldSide::Retired, g.files.take(), g.lock.take())
    };
    if let Some(files) = files.filter(|_| ours) {
        files.remove_all();
    }
    if state.started_tx.borrow().is_none() {
        let _ = state.started_tx.send(Some(Err(format!("the server exited with {exit} before completing startup"))));
    }
    if retired {
        report(&cfg.report, &LaunchReport::Replaced);
    } else {
        report(&cfg.report, &LaunchReport::Exited { status: exit });
    }
    if let Some(u) = &cfg.update {
        let _ = std::fs::remove_file(&u.replay_log);
    }
    drop(lock);
    drop(std::mem::replace(&mut cfg.lock, tempfile_placeholder()));
    if retired {
        0
    } else {
        exit.shell_code()
    }
}

/// A harmless File to leave in place of the moved-out instance lock.
fn tempfile_placeholder() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap_or_else(|_| std::fs::File::open("/").expect("/ exists"))
}

#[cfg(test)]
mod tests {
    use super::latest_image;

    #[test]
    fn an_earlier_image_cannot_take_the_registration_back() {
        assert!(latest_image(None, 3));
        assert!(latest_image(Some(3), 4), "the image after exec replaces the shell");
        assert!(!latest_image(Some(4), 3), "the shell's late Hello is ignored");
    }
}
