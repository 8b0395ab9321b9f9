//! What the update asks of the two versions it moves a server between. The real ones are
//! supervisors (`crate::supervised`); unit tests drive the update with fakes.

use crate::error::{CommitError, NotStarted, RestartError};
use crate::transfer::{Summary, TransferError};
use crate::warning::Warn;
use mcr_client::pids::PidsError;
use mcr_client::ClientError;
use mcr_protocol::{Laggard, OpenConnections, ProcessLog, ReplayConflict, Request};
use std::collections::BTreeMap;
use std::time::Duration;

/// PIDs in a version's namespace → host PIDs.
pub type HostPids = BTreeMap<i32, i32>;

/// A drain request: stop accepting (new connections wait in the listen backlog for the
/// next version), and wait up to `timeout_ms` for the connections the update cannot take
/// along to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub timeout_ms: u64,
    /// Wait only for the connections the state transfer cannot move.
    pub only_volatile: bool,
    /// The new build resumes thread-served sessions (MCR_ADD_RESUME_HANDLER).
    pub move_pinned: bool,
    /// The new build recreates per-connection processes (MCR_ADD_RESPAWN_HANDLER).
    pub move_volatile: bool,
    /// Without the state: the new build adopts idle connections.
    pub adopt_idle: bool,
}

impl Drain {
    pub fn request(&self) -> Request {
        Request::Drain {
            timeout_ms: self.timeout_ms,
            only_volatile: self.only_volatile,
            move_pinned: self.move_pinned,
            move_volatile: self.move_volatile,
            adopt_idle: self.adopt_idle,
        }
    }
}

/// How a quiesce request ended.
#[derive(Debug)]
pub enum Quiescence {
    /// Every long-lived thread is parked at a quiescent point.
    Parked,
    /// Some did not park in time (the version resumed them).
    Failed { message: String, laggards: Vec<Laggard> },
}

/// What the old version did when asked to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    Resumed,
    /// The new version had passed the commit point: the old one retired instead.
    Retired,
}

/// The version that runs now.
pub trait RunningVersion {
    /// Drain (see [`Drain`]); the connections still open when it ended. `give_up` is
    /// asked while waiting, and ends the wait with [`ClientError::Interrupted`].
    fn drain(&mut self, drain: &Drain, give_up: &dyn Fn() -> bool) -> Result<Vec<OpenConnections>, ClientError>;
    fn quiesce(&mut self, timeout_ms: u64) -> Result<Quiescence, ClientError>;
    /// Its processes now, by PID in its namespace.
    fn processes(&mut self) -> Result<Vec<i32>, ClientError>;
    /// The startup log of each process, which the new version replays.
    fn startup_logs(&mut self) -> Result<Vec<ProcessLog>, ClientError>;
    /// Its live processes (exited ones not reaped yet left out).
    fn host_pids(&self) -> Result<HostPids, PidsError>;
    /// What it holds that no update could move ([`crate::preflight`]); asked before the
    /// drain and again once parked.
    fn unmovable(&mut self) -> Result<Vec<crate::preflight::Unmovable>, crate::error::PreflightError> {
        Ok(Vec::new())
    }
    /// One line about process `pid` for a report: what it runs, its state, where it waits.
    fn describe_process(&self, pid: i32) -> String;
    /// Release the parked threads and end the drain (rollback), unless the new version
    /// committed: then this version retired and says so.
    fn resume(&mut self) -> Result<Resumed, ClientError>;
}

/// Starts the new version of an update, and cleans up after it.
pub trait Launcher {
    type Next: NextVersion;
    /// Start the new version, replaying its startup against `logs` and holding the
    /// descriptors the old processes (`old`) created during theirs. Returns as soon as it
    /// runs: [`NextVersion::wait_started`] waits for it to park.
    fn start(&mut self, logs: &[ProcessLog], old: &HostPids) -> Result<Self::Next, RestartError>;
    /// Prepare what of the new version needs nothing of the old one's paused state, ahead
    /// of [`Launcher::start`] (best effort; by default nothing). `old`: the old version's
    /// processes as they are now (the modules they load are the new version's too).
    fn stage(&mut self, _old: &HostPids) {}
    /// Wait for what [`Launcher::stage`] prepares that would otherwise be done on the
    /// paused clock (the old version still serves meanwhile); by default nothing.
    fn before_pause(&mut self) {}
    /// After a rollback (the new version, if started, killed): remove what is left of
    /// it (its instance files, the replay log) and reap it.
    fn discard(&mut self);
}

/// Why [`NextVersion::wait_started`] gave up, with the conflicts replay reported.
#[derive(Debug)]
pub struct StartupFailure {
    pub reason: NotStarted,
    pub conflicts: Vec<ReplayConflict>,
}

/// The version an update starts.
pub trait NextVersion {
    /// Wait until every process replayed its startup and parked, at most `timeout`;
    /// `give_up` is asked while waiting.
    fn wait_started(&mut self, timeout: Duration, give_up: &dyn Fn() -> bool) -> Result<(), StartupFailure>;
    /// Its processes now, by PID in its namespace.
    fn processes(&mut self) -> Result<Vec<i32>, ClientError>;
    /// Recreate the per-connection processes of `connections` (forked by the old
    /// version after startup) through the new build's respawn handler; how many.
    fn respawn(&mut self, old: &HostPids, connections: &[OpenConnections]) -> Result<usize, TransferError>;
    /// Move the old processes' state (globals, heap, the open `connections`) into their
    /// counterparts (`count_pointers`: with the count of the pointers traced).
    fn receive_state(
        &mut self,
        old: &HostPids,
        connections: &[OpenConnections],
        warn: Warn<'_>,
        count_pointers: bool,
    ) -> Result<Summary, TransferError>;
    /// `--fresh-state`: move `connections` (idle ones) for the new build to adopt as new
    /// ones; how many descriptors moved.
    fn adopt(&mut self, old: &HostPids, connections: &[&OpenConnections]) -> Result<usize, TransferError>;
    /// Commit: take the instance over from the old version, retire it, resume
    /// (README.md, "The commit"). `processes`: those the state moved into, which must all
    /// be alive; `old`: the old version's processes, whose descriptors' owners
    /// (F_SETOWN) pass to their counterparts at the commit point. Returns once past the
    /// commit point, or with why it stopped before it.
    fn commit(&mut self, processes: &[i32], old: &HostPids) -> Result<(), CommitError>;
    /// Rollback: end the new version.
    fn kill(&mut self);
}
