//! One error type per phase of an update, and [`UpdateError`], which says in which phase
//! an update failed.

use crate::preflight::Unmovable;
use crate::transfer::TransferError;
use mcr_client::pids::PidsError;
use mcr_client::program::ProgramError;
use mcr_client::ClientError;
use mcr_protocol::{ExitStatus, InstanceError, Laggard, ReplayConflict};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Before anything changed: the new build, the instance, or another update in the way.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The running version could not be reached or did not say how it was launched.
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error(
        "'{0}' runs without its own PID namespace, so its new version could not take over its processes' PIDs \
         (replay pairs processes by PID); restart it with `mcr run` as root, without MCR_NO_PID_NAMESPACE"
    )]
    NoPidNamespace(String),
    #[error("another update of '{name}' is in progress ({source})")]
    InProgress { name: String, source: InstanceError },
    #[error(
        "{} has no debug information, so the update could not move the server's state (its data and \
         connections would be dropped); nothing was changed. Build it with -g, or pass --fresh-state to \
         start the new version with the state its own startup makes",
        .0.display()
    )]
    NoDebugInfo(PathBuf),
    #[error(
        "process {pid} of the running version runs {}, which has no debug information, so the update could not \
         move its state; nothing was changed. Build it with -g, or pass --fresh-state to start the new version \
         with the state its own startup makes",
        .binary.display()
    )]
    NoDebugInfoIn { binary: PathBuf, pid: i32 },
    #[error(
        "process {pid} of the running version runs {}, not the server ({}): the server started it after its \
         startup (a session's command, a helper), and an update carries only the server's own processes into \
         the new version; nothing was changed. Update once it has ended (its connection closes with it: \
         --drain-timeout waits for that with --fresh-state)",
        .binary.display(),
        .server.display()
    )]
    AnotherProgram { binary: PathBuf, server: PathBuf, pid: i32 },
    #[error("refusing (--strict): {0}; whoever can change it would run code in the server")]
    Untrusted(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("interrupted while draining; the server was resumed and nothing was changed")]
    Interrupted(#[source] ClientError),
    #[error("the running version could not drain, nothing was changed")]
    Refused(#[source] ClientError),
    #[error(transparent)]
    Request(ClientError),
}

impl From<ClientError> for DrainError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Interrupted => DrainError::Interrupted(e),
            ClientError::Refused(_) | ClientError::Unexpected(_) => DrainError::Refused(e),
            e => DrainError::Request(e),
        }
    }
}

/// The running version holds state the update cannot move (see [`crate::preflight`]).
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "the running version holds state this update cannot move, so it would be lost; nothing was changed \
         (--fresh-state leaves all state behind on purpose):{}",
        .0.iter().map(|u| format!("\n  {u}")).collect::<String>()
    )]
    Unmovable(Vec<Unmovable>),
    #[error("inspecting the running version's state")]
    Request(#[source] ClientError),
    #[error(transparent)]
    Pids(#[from] PidsError),
}

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    #[error("quiescing the running version")]
    Request(#[source] ClientError),
    /// Some threads did not park in time (each named with where it is).
    #[error("the running version did not quiesce, nothing was changed: {message}")]
    NotQuiesced { message: String, laggards: Vec<Laggard> },
    #[error("reading the running version's processes")]
    Processes(#[source] ClientError),
    #[error("listing the running version's connections")]
    Connections(#[source] ClientError),
}

/// Why the new version did not come up parked.
#[derive(Debug, thiserror::Error)]
pub enum NotStarted {
    #[error("interrupted by the user")]
    Interrupted,
    #[error("the new version did not complete its startup (every thread at a quiescent point) within {0} ms")]
    Timeout(u128),
    #[error("replaying the new version's startup found a conflict")]
    Conflict,
    /// A conflict only the instance log names (the report of it was lost).
    #[error("replaying the new version's startup found a conflict: {0}")]
    LoggedConflict(String),
    #[error("the new version could not start: {0}")]
    LaunchFailed(String),
    #[error("the new version exited with {status} during its startup{log_tail}")]
    Exited { status: ExitStatus, log_tail: String },
    #[error("unexpected report from the new supervisor")]
    UnexpectedReport,
    #[error("the new version's supervisor died during startup")]
    SupervisorDied,
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("reading the running version's startup logs")]
    StartupLogs(#[source] ClientError),
    #[error("process {pid} of the running version has no startup log: {error}")]
    NoStartupLog { pid: i32, error: String },
    #[error("cannot write the replay log {}", .path.display())]
    ReplayLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pids(#[from] PidsError),
    #[error("cannot open process {pid} (host pid {host_pid})")]
    OpenProcess {
        pid: i32,
        host_pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take fd {fd} of process {pid}")]
    TakeFd {
        fd: i32,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("fd {0} is already in use in mcr itself")]
    FdInUse(i32),
    #[error("the new version, launched ahead, cannot be given the go")]
    Go(#[source] std::io::Error),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Launch(#[from] mcr_client::launch::LaunchError),
    #[error("{reason}")]
    NotStarted { reason: NotStarted, conflicts: Vec<ReplayConflict> },
    /// Asking the new version for its processes failed.
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error(
        "the new version's processes {new:?} do not match the old version's {old:?}: a process the old version has (or an extra one) \
         is not recreated by the new version's startup; add an MCR_ADD_REINIT_HANDLER if this is intended{}",
        if missing.is_empty() { String::new() } else { format!(" (not recreated: {})", missing.join("; ")) }
    )]
    TreeMismatch { old: BTreeSet<i32>, new: BTreeSet<i32>, missing: Vec<String> },
}

/// Why the commit did not go through (see README.md, "The commit").
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the new version is not running")]
    NoNewVersion,
    /// The new version could not be asked (it is gone): nothing was changed.
    #[error("the new version cannot be reached")]
    Unreachable(#[source] ClientError),
    /// It stopped before the commit point, and said why: nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// It was asked and did not answer (it died during the commit): the old version, asked
    /// to resume, tells whether the commit point was passed.
    #[error("the new version's supervisor did not answer")]
    NoAnswer(#[source] ClientError),
    /// No answer, and the old version cannot be reached either: if the new version
    /// committed, it is the instance; if not, it ends itself, as this update is gone.
    #[error(
        "the new version's supervisor did not answer ({new}), and the old version cannot be reached ({old}): \
             see `mcr status` for which version serves"
    )]
    Unknown { new: String, old: String },
}

impl CommitError {
    /// Whether the commit may have passed its commit point.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, CommitError::NoAnswer(_))
    }
}

/// An update that did not commit, by the phase that failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Drain(#[from] DrainError),
    #[error(transparent)]
    Quiesce(#[from] QuiesceError),
    #[error(transparent)]
    Restart(#[from] RestartError),
    #[error("state transfer")]
    Transfer(#[source] TransferError),
    #[error("adopting connections")]
    Adopt(#[source] TransferError),
    #[error("commit failed")]
    Commit(#[source] CommitError),
}

impl UpdateError {
    /// The update failed before the new version was started: the old version was only
    /// drained or quiesced, and is resumed; there is no rollback to report.
    pub fn before_restart(&self) -> bool {
        matches!(self, UpdateError::Preflight(_) | UpdateError::Drain(_) | UpdateError::Quiesce(_))
    }

    /// Neither version could say whether the commit point was passed (see
    /// [`CommitError::Unknown`]): nothing was rolled back.
    pub fn undecided(&self) -> bool {
        matches!(self, UpdateError::Commit(CommitError::Unknown { .. }))
    }

    /// The replay conflicts the new version reported, if it found any.
    pub fn conflicts(&self) -> &[ReplayConflict] {
        match self {
            UpdateError::Restart(RestartError::NotStarted { conflicts, .. }) => conflicts,
            _ => &[],
        }
    }

    /// Threads that did not reach a quiescent point, if quiescence failed.
    pub fn laggards(&self) -> &[Laggard] {
        match self {
            UpdateError::Quiesce(QuiesceError::NotQuiesced { laggards, .. }) => laggards,
            _ => &[],
        }
    }
}

/// An error and its causes on one line ("what: why: why"), each cause once (a message
/// that already ends with its cause's text does not repeat it).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
