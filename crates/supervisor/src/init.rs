//! The init of a version's PID namespace: PID 1, separate from the supervisor, so that the
//! supervisor can die without taking the server with it (DESIGN.md "PIDs"; issue: the old
//! supervisor killed mid-update ended every process of the version, and its data).
//!
//! The init is a fork of `mcr`, single-threaded, and does little: it binds the runtime
//! socket (so runtimes see their peer as PID 1, whoever supervises), forks the
//! supervisor, reaps orphans (telling the supervisor), holds a copy of every runtime
//! connection the supervisor accepted and of the instance lock, and, when the supervisor
//! dies without ending the version, forks a new one that takes the version over from
//! those copies. It ends the version itself (every process, at once, as the kernel does
//! when PID 1 exits) when the supervisor ended it, when the version retired for its new
//! version, or when an update's new version lost its supervisor before its commit point.

use crate::init_link::{self, Message, Received};
use crate::Config;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long an update's new version whose supervisor died while committing waits for the
/// old version's init to exit (it does once retired) before taking the commit as not made.
const OLD_RETIRES: Duration = Duration::from_secs(5);
/// A supervisor that keeps dying is started again at most this often in `RESTART_WINDOW`;
/// then the server runs on without one (it is not ended: that would lose its state).
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The exit code of a supervisor that panicked (Rust's).
const PANICKED: i32 = 101;

/// The runtime socket: an abstract name, bound by the init, served by the supervisor.
#[derive(Debug)]
pub struct RuntimeSocket {
    pub name: String,
    pub listener: OwnedFd,
}

/// What a supervisor started again needs to take the version over.
#[derive(Debug)]
pub struct Reattach {
    /// Copies of the runtime connections the previous supervisor held, by process.
    pub connections: Vec<(i32, OwnedFd)>,
    pub main_pid: Option<i32>,
    pub started_ms: Option<f64>,
    /// The environment and working directory the version was launched with (an update's
    /// new version: the old version's).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// An update's new version whose supervisor said it is about to pass the commit point.
struct Committing {
    name: String,
    lock: Option<OwnedFd>,
    old_init: Option<OwnedFd>,
}

struct Supervisor {
    pid: i32,
    link: OwnedFd,
}

struct Init {
    cfg: Config,
    host_proc: Option<OwnedFd>,
    /// `mcr`'s descriptor limit (the supervisor gets it back).
    nofile: libc::rlimit,
    /// The signal mask of `mcr` (the supervisor gets it back).
    mask: libc::sigset_t,
    signals: OwnedFd,
    held: Vec<(i32, OwnedFd)>,
    main_pid: Option<i32>,
    main_status: Option<i32>,
    started_ms: Option<f64>,
    committing: Option<Committing>,
    retired: bool,
    supervisor: Option<Supervisor>,
    restarts: Vec<Instant>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

/// Run the init (in the fork that became PID 1). Returns its exit code.
pub fn run(mut cfg: Config, host_proc: Option<OwnedFd>) -> i32 {
    // A session of its own, out of the launching terminal's process group.
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    match bind_runtime_socket(cfg.server_instance_name()) {
        Ok(socket) => cfg.runtime_socket = Some(socket),
        Err(e) => {
            crate::report(
                &cfg.report,
                &mcr_protocol::LaunchReport::LaunchFailed { message: format!("cannot create the runtime socket: {e}") },
            );
            return 70;
        }
    }
    // SAFETY: sigset_t is plain data; sigfillset/sigprocmask fill and apply it.
    let mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let signals = match child_signals() {
        Ok(fd) => fd,
        Err(e) => {
            crate::report(
                &cfg.report,
                &mcr_protocol::LaunchReport::LaunchFailed { message: format!("cannot start the init: {e}") },
            );
            return 70;
        }
    };
    let (env, cwd) = match &cfg.update {
        Some(u) => (u.env.clone(), u.cwd.clone()),
        None => (std::env::vars().collect(), std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))),
    };
    // One held runtime connection per server process: room for as many as the hard limit
    // allows (the supervisor gets `mcr`'s own limit back, and the server with it).
    let mut nofile = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a live local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) == 0 {
            let raised = libc::rlimit { rlim_cur: nofile.rlim_max, rlim_max: nofile.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
    let mut init = Init {
        cfg,
        host_proc,
        nofile,
        mask,
        signals,
        held: Vec::new(),
        main_pid: None,
        main_status: None,
        started_ms: None,
        committing: None,
        retired: false,
        supervisor: None,
        restarts: Vec::new(),
        env,
        cwd,
    };
    if let Err(e) = init.start_supervisor(None) {
        crate::report(
            &init.cfg.report,
            &mcr_protocol::LaunchReport::LaunchFailed { message: format!("cannot start the supervisor: {e}") },
        );
        return 71;
    }
    init.serve()
}

/// Abstract: reachable after the server chroots; the random part keeps a stale
/// instance's name from ever being reused.
pub fn bind_runtime_socket(instance: &str) -> std::io::Result<RuntimeSocket> {
    let mut nonce = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut nonce));
    // Fixed width: the server's environment names it (`Config::server_env_name`).
    let name = format!("mcr/{instance}/{:016x}", u64::from_ne_bytes(nonce));
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(RuntimeSocket { name, listener: listener.into() })
}

/// A signalfd for SIGCHLD (blocked by the caller).
fn child_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: a sigset_t built locally; signalfd returns a new descriptor or -1.
    let fd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Init {
    /// Fork a supervisor: the first one launches the server; a later one (`reattach`)
    /// takes the running version over.
    fn start_supervisor(&mut self, reattach: Option<Reattach>) -> std::io::Result<()> {
        let (mine, theirs) = init_link::pair()?;
        let mut child_cfg = self.cfg.duplicate()?;
        child_cfg.init_link = Some(theirs);
        child_cfg.reattach = reattach;
        // The go is for the supervisor that launches the server: the first one.
        child_cfg.go = self.cfg.go.take();
        // SAFETY: the init is single-threaded; the child runs the supervisor and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(mine);
            // SAFETY: restoring the signal mask and descriptor limit `mcr` had, for the
            // supervisor and the server it launches.
            unsafe {
                libc::sigprocmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut());
                libc::setrlimit(libc::RLIMIT_NOFILE, &self.nofile);
            }
            if let Some(host) = self.host_proc.as_ref().and_then(host_pid) {
                child_cfg.supervisor_pid = host;
            }
            std::process::exit(crate::run(child_cfg));
        }
        // The child has its copies: the ones handed over to it are closed here.
        drop(child_cfg);
        self.supervisor = Some(Supervisor { pid, link: mine });
        Ok(())
    }

    fn serve(&mut self) -> i32 {
        loop {
            let mut fds = vec![libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            if let Some(s) = &self.supervisor {
                fds.push(libc::pollfd { fd: s.link.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            let first_held = fds.len();
            fds.extend(self.held.iter().map(|(_, c)| libc::pollfd { fd: c.as_raw_fd(), events: 0, revents: 0 }));
            // SAFETY: polling an array of live pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            // Connections whose process is gone are let go (newest last: keep the order).
            let hung: Vec<usize> = fds[first_held..]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.revents & (libc::POLLHUP | libc::POLLERR) != 0)
                .map(|(i, _)| i)
                .collect();
            for i in hung.into_iter().rev() {
                self.held.remove(i);
            }
            if fds.len() > 1 && first_held > 1 && fds[1].revents != 0 {
                self.read_link();
            }
            if fds[0].revents != 0 {
                if let Some(code) = self.reap() {
                    return code;
                }
            }
        }
    }

    /// Every message the supervisor sent so far.
    fn read_link(&mut self) {
        loop {
            let Some(s) = &self.supervisor else { return };
            match init_link::receive(&s.link) {
                Received::Message(m, fds) => self.on_message(m, fds),
                Received::Garbled => {}
                Received::Nothing | Received::Closed => return,
            }
        }
    }

    fn on_message(&mut self, m: Message, fds: Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        match m {
            Message::Hold { pid } => {
                if let Some(fd) = fds.next() {
                    self.held.push((pid, fd));
                }
            }
            Message::Main { pid } => {
                self.main_pid = Some(pid);
                self.main_status = None;
            }
            Message::Started { ms } => self.started_ms = Some(ms),
            Message::Committing { name } => {
                self.committing = Some(Committing { name, lock: fds.next(), old_init: fds.next() });
            }
            Message::CommitAborted => self.committing = None,
            Message::Committed => {
                if let Some(c) = self.committing.take() {
                    self.take_commit(c);
                }
            }
            Message::Retired => self.retired = true,
            Message::Reaped { .. } => {}
        }
    }

    /// Past the commit point: from now on this version is the instance, under its final
    /// name, holding its lock.
    ///
    /// The temporary name's files are not touched here: the supervisor removes them at its
    /// commit, and by the time the init reads this the next update may have made its own
    /// (a supervisor that died first leaves them stale, for the next `mcr` that looks).
    fn take_commit(&mut self, c: Committing) {
        self.cfg.files = crate::final_files(&self.cfg.files, &c.name);
        self.cfg.name = c.name;
        if let Some(lock) = c.lock {
            self.cfg.lock = std::fs::File::from(lock);
        }
        self.cfg.update = None;
    }

    /// Reap every child that ended. Some(code): the version is over.
    fn reap(&mut self) -> Option<i32> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        // SAFETY: draining the signalfd into a buffer of the size of one record.
        while unsafe { libc::read(self.signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on any child, without waiting.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if self.supervisor.as_ref().is_some_and(|s| s.pid == pid) {
                self.read_link();
                self.supervisor = None;
                if let Some(code) = self.supervisor_ended(status) {
                    return Some(code);
                }
                continue;
            }
            if self.main_pid == Some(pid) {
                self.main_status = Some(status);
            }
            if let Some(s) = &self.supervisor {
                let _ = init_link::send(&s.link, &Message::Reaped { pid, status }, &[]);
            }
        }
        if self.supervisor.is_none() && !server_alive() {
            return Some(self.main_code());
        }
        None
    }

    fn main_code(&self) -> i32 {
        self.main_status.map_or(0, |s| mcr_protocol::ExitStatus::from_wait_status(s).shell_code())
    }

    /// The supervisor exited with wait status `status`. Some(code): the version is over.
    fn supervisor_ended(&mut self, status: i32) -> Option<i32> {
        let crashed = libc::WIFSIGNALED(status) || libc::WEXITSTATUS(status) == PANICKED;
        if self.retired {
            return Some(end_version(0));
        }
        if !crashed {
            return Some(end_version(libc::WEXITSTATUS(status)));
        }
        let how = mcr_protocol::ExitStatus::from_wait_status(status);
        if self.cfg.update.is_some() {
            // An update's new version: it is the instance only past the commit point.
            let passed = self.committing.as_ref().is_some_and(|c| c.old_init.as_ref().is_some_and(old_retired));
            if !passed {
                eprintln!("mcr: the new version's supervisor ended ({how}) before the commit; ending the new version");
                return Some(end_version(70));
            }
            if let Some(c) = self.committing.take() {
                self.take_commit(c);
            }
        }
        if !server_alive() {
            return Some(self.main_code());
        }
        let now = Instant::now();
        self.restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            eprintln!(
                "mcr: the supervisor of '{}' ended ({how}) {MAX_RESTARTS} times within {} s; the server runs on unsupervised",
                self.cfg.name,
                RESTART_WINDOW.as_secs()
            );
            return None;
        }
        self.restarts.push(now);
        eprintln!(
            "mcr: the supervisor of '{}' ended ({how}); starting another one, which takes the server over",
            self.cfg.name
        );
        let reattach = Reattach {
            connections: self.held.iter().filter_map(|(p, c)| Some((*p, c.try_clone().ok()?))).collect(),
            main_pid: self.main_pid,
            started_ms: self.started_ms,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
        };
        if let Err(e) = self.start_supervisor(Some(reattach)) {
            eprintln!("mcr: cannot start another supervisor: {e}; the server runs on unsupervised");
        }
        None
    }
}

/// The PID, on the host, of the calling process, from the host's /proc (opened before
/// the namespace's own was mounted over it): its `self` is resolved in the host's PID
/// namespace.
fn host_pid(host_proc: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 32];
    // SAFETY: readlinkat writes at most buf.len() bytes into a live local buffer.
    let n = unsafe { libc::readlinkat(host_proc.as_raw_fd(), c"self".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    std::str::from_utf8(&buf[..n as usize]).ok()?.parse().ok()
}

/// Whether a process other than the init is alive in the namespace.
fn server_alive() -> bool {
    mcr_procfs::pids()
        .unwrap_or_default()
        .into_iter()
        .any(|p| p != 1 && mcr_procfs::stat::read(p).is_ok_and(|s| !s.is_exited()))
}

/// Whether the old version's init (a pidfd) exits within `OLD_RETIRES`: it does once its
/// version retired, and never while that version can resume.
fn old_retired(old_init: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: old_init.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: polling one descriptor we own.
    unsafe { libc::poll(&mut p, 1, OLD_RETIRES.as_millis() as i32) > 0 && p.revents & libc::POLLIN != 0 }
}

/// End every process of the namespace (PID 1's kill(-1) spares only itself) and reap
/// them; the caller exits with `code`.
fn end_version(code: i32) -> i32 {
    // SAFETY: kill(2) from PID 1 of the namespace: every other process in it.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: plain blocking waitpid; ECHILD ends the loop.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            return code;
        }
    }
}
