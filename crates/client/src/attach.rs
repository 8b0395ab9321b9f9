//! Following a launched server: until it completed startup (`mcr run --detach`), or for
//! its whole life with the terminal's signals forwarded to it (`mcr run`).

use crate::connection::{self, ClientError};
use crate::launch::{report_channel, LogMark};
use mcr_protocol::{ExitStatus, InstanceDir, LaunchReport, Request, Response};
use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The signals `mcr run` in the foreground passes on to the server's main process.
pub const FORWARDED: [i32; 6] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGQUIT];

/// A detached server that is up.
pub enum Started {
    /// Every process completed startup. `pid_namespace`: whether the supervisor said it
    /// got a PID namespace of its own (None: it did not say before startup completed).
    Started { startup_ms: f64, pid_namespace: Option<bool> },
    /// A live update replaced it while it was starting.
    Replaced,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    LaunchFailed(String),
    #[error("the server exited with {status} before completing startup{log_tail}")]
    Exited { status: ExitStatus, log_tail: String },
    #[error("the supervisor of '{name}' exited before the server completed startup{log_tail}")]
    SupervisorExited { name: String, log_tail: String },
    #[error(
        "'{name}' is running but did not complete startup within {} s: {why}\n(see `mcr status {name}`; stop it with `mcr stop {name}`)",
        timeout.as_secs()
    )]
    NotStarted { name: String, timeout: Duration, why: String },
}

/// Wait until the server launched with report pipe `reports` completed startup, at most
/// `timeout`. `note` gets what the supervisor says on the way (why it has no PID
/// namespace).
pub fn wait_started(
    dir: &InstanceDir,
    name: &str,
    log: &LogMark,
    reports: OwnedFd,
    timeout: Duration,
    note: &mut dyn FnMut(&str),
) -> Result<Started, StartupError> {
    wait_started_on(dir, name, log, &report_channel(reports), timeout, note)
}

/// [`wait_started`] on reports already read into a channel ([`report_channel`]), for a
/// caller that keeps following them afterwards.
pub fn wait_started_on(
    dir: &InstanceDir,
    name: &str,
    log: &LogMark,
    rx: &Receiver<LaunchReport>,
    timeout: Duration,
    note: &mut dyn FnMut(&str),
) -> Result<Started, StartupError> {
    let deadline = Instant::now() + timeout;
    let mut pid_namespace = None;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(LaunchReport::Supervising { pid_namespace: own, note: said, .. }) => {
                if let Some(n) = said {
                    note(&n);
                }
                pid_namespace = Some(own);
            }
            Ok(LaunchReport::Started { startup_ms, .. }) => return Ok(Started::Started { startup_ms, pid_namespace }),
            Ok(LaunchReport::LaunchFailed { message }) => return Err(StartupError::LaunchFailed(message)),
            Ok(LaunchReport::ReplayConflict { .. }) => {}
            Ok(LaunchReport::Replaced) => return Ok(Started::Replaced),
            Ok(LaunchReport::Exited { status }) => return Err(StartupError::Exited { status, log_tail: log.tail() }),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(StartupError::SupervisorExited { name: name.to_string(), log_tail: log.tail() })
            }
            Err(RecvTimeoutError::Timeout) => {
                // The supervisor knows which threads never reached a quiescent point.
                let why = match connection::request(dir, name, &Request::WaitStarted { timeout_ms: 1 }) {
                    Ok(Response::Error { message }) => message,
                    _ => "it did not complete startup in time".into(),
                };
                return Err(StartupError::NotStarted { name: name.to_string(), timeout, why });
            }
        }
    }
}

/// Block (or unblock) [`FORWARDED`] in the calling thread; the set.
pub fn set_forwarded_blocked(blocked: bool) -> libc::sigset_t {
    let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: building a signal set on the stack and changing this thread's mask with it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
        set
    }
}

/// Deliver [`FORWARDED`] signals sent to this process to the server's main process, from
/// a thread of their own, for the rest of this process's life. `failed` hears of a signal
/// that could not be delivered. Call it before starting any other thread: the signals are
/// blocked in the calling thread, and threads inherit that. (Blocked earlier, before the
/// launch, a signal that came meanwhile is pending, and forwarded now.)
pub fn forward_signals(dir: &InstanceDir, name: &str, failed: impl Fn(i32, ClientError) + Send + 'static) {
    // The forwarding thread inherits the mask and takes the signals with sigwait.
    let set = set_forwarded_blocked(true);
    let dir = dir.clone();
    let name = name.to_string();
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: waiting for a signal of a set that lives on this thread's stack.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            if let Err(e) = connection::request(&dir, &name, &Request::Signal { signal: sig }) {
                failed(sig, e);
            }
        }
    });
}

/// How a server followed in the foreground ended.
pub enum Ended {
    LaunchFailed(String),
    /// A live update replaced it; the new version runs detached.
    Replaced,
    /// Its main process ended like this.
    Exited(ExitStatus),
    /// Its supervisor died without reporting the server's end (the stale files are
    /// removed). `pid_namespace`: whether it had one (the kernel then ended the server).
    SupervisorDied {
        how: ExitStatus,
        pid_namespace: bool,
    },
}

/// Follow a server in the foreground until it ends, then reap its supervisor. `started`
/// hears when it completed startup (with the milliseconds that took).
pub fn wait_ended(
    dir: &InstanceDir,
    name: &str,
    reports: OwnedFd,
    note: &mut dyn FnMut(&str),
    started: &mut dyn FnMut(f64),
) -> Ended {
    let mut status: Option<ExitStatus> = None;
    let mut pid_namespace = false;
    for r in crate::launch::reports(reports) {
        match r {
            LaunchReport::LaunchFailed { message } => return Ended::LaunchFailed(message),
            LaunchReport::Exited { status: s } => status = Some(s),
            LaunchReport::Replaced => return Ended::Replaced,
            LaunchReport::Started { startup_ms, .. } => started(startup_ms),
            LaunchReport::ReplayConflict { .. } => {}
            LaunchReport::Supervising { pid_namespace: own, note: said, .. } => {
                pid_namespace = own;
                if let Some(n) = said {
                    note(&n);
                }
            }
        }
    }
    let mut wstatus = 0;
    // SAFETY: reaping the supervisor, our only remaining child (we are its subreaper).
    unsafe { libc::waitpid(-1, &mut wstatus, 0) };
    match status {
        Some(s) => Ended::Exited(s),
        None => {
            if let Ok(files) = dir.files(name) {
                files.clean_stale();
            }
            Ended::SupervisorDied { how: ExitStatus::from_wait_status(wstatus), pid_namespace }
        }
    }
}
