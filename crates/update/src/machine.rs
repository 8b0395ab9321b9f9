//! The update as a state machine over the paper's phases (§3): drain, quiesce (the
//! checkpoint), restart (mutable reinitialization, with the replay check), state
//! transfer, commit. A phase that fails ends the update, and the rollback guard
//! ([`crate::rollback::Versions`]) undoes whatever had been done.

use crate::decide::{self, Policy};
use crate::error::{CommitError, DrainError, PreflightError, QuiesceError, RestartError, UpdateError};
use crate::rollback::Versions;
use crate::transfer::{Summary, TransferError};
use crate::version::{HostPids, Launcher, NextVersion, Quiescence, Resumed, RunningVersion};
use crate::warning::{Warn, Warning};
use mcr_protocol::{test_hook, OpenConnections, ReplayConflict};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The phases of an update, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Name what the old version holds that cannot move; refuse before touching anything.
    Preflight,
    /// Stop accepting; let the connections the update cannot take along end.
    Drain,
    /// Park every thread of the old version at a quiescent point.
    Quiesce,
    /// Start the new version, replaying its startup against the old one's, until it parks.
    Restart,
    /// Move the old version's state (and connections) into the new one.
    Transfer,
    /// The old version exits; the new one takes the name and resumes.
    Commit,
}

impl Phase {
    pub fn next(self) -> Option<Phase> {
        match self {
            Phase::Preflight => Some(Phase::Drain),
            Phase::Drain => Some(Phase::Quiesce),
            Phase::Quiesce => Some(Phase::Restart),
            Phase::Restart => Some(Phase::Transfer),
            Phase::Transfer => Some(Phase::Commit),
            Phase::Commit => None,
        }
    }
}

/// What an update is doing now, for a progress display (`mcr update` on a terminal): each
/// step lasts until the next one is reported, the last until the update returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Phase(Phase),
    /// Ending the new version and resuming the old one (a failure, or a rehearsal).
    RollBack,
}

/// Told each [`Step`] as it begins.
pub type Progress<'a> = &'a dyn Fn(Step);

/// How long each phase took, in milliseconds.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug, Clone)]
pub struct Timings {
    /// Both checks for state that cannot move (before the drain and once parked).
    #[serde(default)]
    pub preflight_ms: f64,
    pub drain_ms: f64,
    /// The old version parking (not the listing of its processes and connections after).
    pub quiesce_ms: f64,
    pub restart_ms: f64,
    pub transfer_ms: f64,
    /// Zero unless the commit succeeded.
    pub commit_ms: f64,
    /// From [`Options::started`] to the outcome.
    pub total_ms: f64,
    /// How long the old version was paused: from the quiesce request until the new
    /// version took over (commit) or the old one resumed (rollback). Zero when it was
    /// never asked to quiesce.
    #[serde(default)]
    pub paused_ms: f64,
    /// Ending the new version and resuming the old one, when the update did not commit.
    #[serde(default)]
    pub rollback_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long the new version's processes may take to match the old tree: a process that
/// is exiting (a daemon's first process, right after its fork) may still be listed, and a
/// master that forks its children at the end of its startup (httpd) may not have forked
/// the last one yet: 300 ms was too short on a loaded machine (httpd's update then rolled
/// back on a tree "missing" its second child, seen once in the suite). A tree that really
/// differs is a rollback anyway; it comes this much later.
const TREE_SETTLE: Duration = Duration::from_secs(2);
const TREE_POLL: Duration = Duration::from_millis(10);

pub struct Options<'a> {
    /// The instance's name, and the new version's command line (for the report).
    pub instance: String,
    pub command: String,
    pub policy: Policy,
    pub drain_timeout_ms: u64,
    pub quiesce_timeout_ms: u64,
    /// How long the new version has to replay its startup and park.
    pub startup_timeout: Duration,
    /// Asked while waiting on a version (the drain, the new version's startup): true
    /// ends the update (Ctrl-C).
    pub interrupted: &'a dyn Fn() -> bool,
    pub warn: Warn<'a>,
    /// When the update began (its total time counts from there).
    pub started: Instant,
    /// A rehearsal: every phase up to the commit point but the drain (the connections are
    /// not touched), then a rollback instead of the commit.
    pub rehearse: bool,
    pub progress: Progress<'a>,
    /// Count the pointers the state transfer follows, precise and likely, by source and
    /// target (the paper's Table 2); the whole state is then traced.
    pub count_pointers: bool,
}

/// What an update did: the `--json` output of `mcr update` (which mcr-bench reads back).
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Report {
    pub instance: String,
    pub committed: bool,
    pub message: String,
    pub phases: Timings,
    pub conflicts: Vec<ReplayConflict>,
    /// Client connections the old version still held after the drain (moved by the
    /// state transfer, or closed at commit with --fresh-state).
    pub connections_left: Vec<OpenConnections>,
    /// What the state transfer moved (absent with --fresh-state or before it ran).
    pub transfer: Option<Summary>,
    /// With --fresh-state: idle connections moved for the new version to adopt.
    pub adopted_connections: usize,
    pub old_processes: Vec<i32>,
    pub new_processes: Vec<i32>,
    /// A rehearsal, rolled back on purpose: without a `failure`, the update would commit.
    #[serde(default)]
    pub rehearsed: bool,
    /// A rehearsal does not drain: the open connections the drain would wait for (up to
    /// --drain-timeout), because the update could neither move nor hand them over.
    #[serde(default)]
    pub drain_would_wait: Vec<OpenConnections>,
    /// Why it did not commit (then it was rolled back before the report was made).
    #[serde(skip)]
    pub failure: Option<UpdateError>,
}

/// An update in progress.
pub struct Update<'a, O: RunningVersion, L: Launcher> {
    versions: Versions<'a, O, L>,
    options: Options<'a>,
    timings: Timings,
    /// The old version's processes (PIDs in its namespace) the new one must take over.
    processes: Vec<i32>,
    connections: Vec<OpenConnections>,
    /// Per-connection processes the new build's respawn handler recreates.
    respawned: BTreeSet<i32>,
    new_processes: Vec<i32>,
    transfer: Option<Summary>,
    adopted_connections: usize,
    /// When the old version was asked to quiesce.
    paused_since: Option<Instant>,
}

impl<'a, O: RunningVersion, L: Launcher> Update<'a, O, L> {
    /// `old`: the running version, not drained yet; `launcher`: starts the new version.
    pub fn new(old: O, launcher: L, options: Options<'a>) -> Self {
        Self {
            versions: Versions::new(old, launcher, options.warn),
            options,
            timings: Timings::default(),
            processes: Vec::new(),
            connections: Vec::new(),
            respawned: BTreeSet::new(),
            new_processes: Vec::new(),
            transfer: None,
            adopted_connections: 0,
            paused_since: None,
        }
    }

    /// Run every phase, then commit or roll back (before returning); a rehearsal rolls
    /// back where the update would commit.
    pub fn run(mut self) -> Report {
        let outcome = match self.advance() {
            Err(UpdateError::Commit(e)) if e.outcome_unknown() => self.settle(e),
            other => other,
        };
        self.timings.total_ms = ms(self.options.started.elapsed());
        if outcome.is_ok() && !self.options.rehearse {
            self.versions.committed();
        } else {
            (self.options.progress)(Step::RollBack);
            let t = Instant::now();
            self.versions.roll_back();
            self.timings.rollback_ms = ms(t.elapsed());
        }
        self.timings.paused_ms = self.paused_since.map_or(0.0, |t| ms(t.elapsed()));
        let message = match &outcome {
            Ok(()) if self.options.rehearse => format!(
                "rehearsal: '{}' would run {}; rolled back on purpose, the old version runs on",
                self.options.instance, self.options.command
            ),
            Ok(()) => format!("'{}' now runs {}", self.options.instance, self.options.command),
            Err(e) => crate::error::chain(e),
        };
        let drain_would_wait = match self.options.rehearse {
            true => self.options.policy.stuck(&self.connections).into_iter().cloned().collect(),
            false => Vec::new(),
        };
        let failure = outcome.err();
        Report {
            instance: std::mem::take(&mut self.options.instance),
            committed: failure.is_none() && !self.options.rehearse,
            message,
            phases: self.timings.clone(),
            conflicts: failure.as_ref().map(|f| f.conflicts().to_vec()).unwrap_or_default(),
            connections_left: std::mem::take(&mut self.connections),
            transfer: self.transfer.take(),
            adopted_connections: self.adopted_connections,
            old_processes: std::mem::take(&mut self.processes),
            new_processes: std::mem::take(&mut self.new_processes),
            rehearsed: self.options.rehearse,
            drain_would_wait,
            failure,
        }
    }

    fn advance(&mut self) -> Result<(), UpdateError> {
        let mut phase = Some(Phase::Preflight);
        while let Some(p) = phase {
            if self.options.rehearse && matches!(p, Phase::Drain | Phase::Commit) {
                phase = p.next();
                continue;
            }
            (self.options.progress)(Step::Phase(p));
            let t = Instant::now();
            let done = self.step(p);
            let took = ms(t.elapsed());
            match p {
                Phase::Preflight => self.timings.preflight_ms += took,
                Phase::Drain => self.timings.drain_ms = took,
                // Timed by `quiesce` itself: the parking only.
                Phase::Quiesce => {}
                Phase::Restart => self.timings.restart_ms = took,
                Phase::Transfer => self.timings.transfer_ms = took,
                Phase::Commit if done.is_ok() => self.timings.commit_ms = took,
                Phase::Commit => {}
            }
            done?;
            match p {
                Phase::Drain => test_hook::pause(test_hook::point::DRAINED),
                Phase::Quiesce => test_hook::pause(test_hook::point::QUIESCED),
                _ => {}
            }
            phase = p.next();
        }
        Ok(())
    }

    fn step(&mut self, phase: Phase) -> Result<(), UpdateError> {
        match phase {
            Phase::Preflight => {
                // The new version's init and supervisor start meanwhile, off the paused
                // clock (on a refusal the rollback ends them).
                let old = self.versions.old.host_pids().unwrap_or_default();
                self.versions.launcher.stage(&old);
                Ok(self.preflight()?)
            }
            Phase::Drain => Ok(self.drain()?),
            // What the old version made between the preflight and parking is checked too:
            // found now, the update rolls back (the old version resumes).
            Phase::Quiesce => {
                self.quiesce()?;
                let t = Instant::now();
                let checked = self.preflight();
                self.timings.preflight_ms += ms(t.elapsed());
                Ok(checked?)
            }
            Phase::Restart => Ok(self.restart()?),
            Phase::Transfer => self.transfer(),
            Phase::Commit => self.commit().map_err(UpdateError::Commit),
        }
    }

    fn preflight(&mut self) -> Result<(), PreflightError> {
        let found = self.versions.old.unmovable()?;
        if found.is_empty() {
            return Ok(());
        }
        if self.options.policy.fresh_state {
            (self.options.warn)(Warning::StateLeftBehind(found));
            return Ok(());
        }
        Err(PreflightError::Unmovable(found))
    }

    fn drain(&mut self) -> Result<(), DrainError> {
        let drain = self.options.policy.drain(self.options.drain_timeout_ms);
        self.connections = self.versions.old.drain(&drain, self.options.interrupted)?;
        let stuck = self.options.policy.stuck(&self.connections);
        if !stuck.is_empty() {
            (self.options.warn)(Warning::StuckConnections {
                connections: stuck.iter().map(|c| c.fds.len()).sum(),
                processes: stuck.iter().map(|c| c.pid).collect(),
                drain_timeout_ms: self.options.drain_timeout_ms,
                fresh_state: self.options.policy.fresh_state,
                adopts: self.options.policy.adopts(),
            });
        }
        Ok(())
    }

    fn quiesce(&mut self) -> Result<(), QuiesceError> {
        self.versions.launcher.before_pause();
        let t = Instant::now();
        self.paused_since = Some(t);
        let old = &mut self.versions.old;
        match old.quiesce(self.options.quiesce_timeout_ms).map_err(QuiesceError::Request)? {
            Quiescence::Parked => {}
            Quiescence::Failed { message, laggards } => return Err(QuiesceError::NotQuiesced { message, laggards }),
        }
        self.timings.quiesce_ms = ms(t.elapsed());
        // Processes may have exited during the drain (a per-connection child whose client
        // left): the tree to recreate is the one that is parked now, and so are its
        // connections (asked again now that a program's idle check can be asked too).
        self.processes = old.processes().map_err(QuiesceError::Processes)?;
        let list = self.options.policy.drain(0);
        self.connections = old.drain(&list, &|| false).map_err(QuiesceError::Connections)?;
        decide::drop_finished(&mut self.processes, &mut self.connections);
        self.respawned = self.options.policy.respawned(&self.connections);
        Ok(())
    }

    fn restart(&mut self) -> Result<(), RestartError> {
        let Versions { old, launcher, next, .. } = &mut self.versions;
        let logs = old.startup_logs().map_err(RestartError::StartupLogs)?;
        if let Some(p) = logs.iter().find(|p| p.log.is_none()) {
            return Err(RestartError::NoStartupLog { pid: p.pid, error: p.error.clone().unwrap_or_default() });
        }
        let next = next.insert(launcher.start(&logs, &old.host_pids()?)?);
        test_hook::pause(test_hook::point::RESTARTING);
        next.wait_started(self.options.startup_timeout, self.options.interrupted)
            .map_err(|f| RestartError::NotStarted { reason: f.reason, conflicts: f.conflicts })?;
        // The process tree must match: a missing process is a thread of control the new
        // version never recreated; an extra one has no state to take over.
        let t = Instant::now();
        loop {
            let expected = decide::expected_tree(&self.processes, &live(old, &self.processes), &self.respawned);
            self.new_processes = next.processes()?;
            let got: BTreeSet<i32> = self.new_processes.iter().copied().collect();
            if expected == got {
                break;
            }
            if t.elapsed() > TREE_SETTLE {
                let missing = expected.difference(&got).map(|&p| old.describe_process(p)).collect();
                return Err(RestartError::TreeMismatch { old: expected, new: got, missing });
            }
            std::thread::sleep(TREE_POLL);
        }
        // The tree the new version took over: without processes that exited meanwhile.
        let live = live(old, &self.processes);
        self.processes.retain(|p| live.contains(p));
        Ok(())
    }

    fn transfer(&mut self) -> Result<(), UpdateError> {
        let Versions { old, next: Some(next), .. } = &mut self.versions else {
            return Err(UpdateError::Transfer(TransferError::NoSupervisor));
        };
        let policy = self.options.policy;
        // The tree the new version took over: a finished session's process still lives,
        // parked, until the old version exits, but it has nothing to move and no
        // counterpart.
        let tree = |hosts: HostPids| -> HostPids {
            hosts.into_iter().filter(|(pid, _)| self.processes.contains(pid)).collect()
        };
        if !policy.fresh_state {
            let state = |e: TransferError| UpdateError::Transfer(e);
            let old_hosts = tree(old.host_pids().map_err(|e| state(e.into()))?);
            let respawn: Vec<OpenConnections> =
                self.connections.iter().filter(|c| self.respawned.contains(&c.pid)).cloned().collect();
            let respawned = next.respawn(&old_hosts, &respawn).map_err(state)?;
            let mut summary = next
                .receive_state(&old_hosts, &self.connections, self.options.warn, self.options.count_pointers)
                .map_err(state)?;
            summary.respawned_processes = respawned;
            self.transfer = Some(summary);
            self.new_processes.extend(self.respawned.iter().copied());
            self.new_processes.sort_unstable();
        }
        if policy.adopts() {
            let adopt = |e: TransferError| UpdateError::Adopt(e);
            let old_hosts = tree(old.host_pids().map_err(|e| adopt(e.into()))?);
            let idle: Vec<&OpenConnections> = self.connections.iter().filter(|c| decide::adoptable(c)).collect();
            self.adopted_connections = next.adopt(&old_hosts, &idle).map_err(adopt)?;
        }
        Ok(())
    }

    /// One request to the new version, which does the rest itself (README.md, "The
    /// commit"), so that an update that dies meanwhile cannot leave it half done.
    fn commit(&mut self) -> Result<(), CommitError> {
        let Versions { old, next: Some(next), .. } = &mut self.versions else {
            return Err(CommitError::NoNewVersion);
        };
        let old_hosts =
            old.host_pids().map_err(|e| CommitError::Refused(format!("the old version's processes: {e}")))?;
        next.commit(&self.new_processes, &old_hosts)
    }

    /// The commit got no answer: the old version says whether it was passed.
    fn settle(&mut self, e: CommitError) -> Result<(), UpdateError> {
        match self.versions.settle_commit() {
            Ok(Resumed::Resumed) => Err(UpdateError::Commit(e)),
            Ok(Resumed::Retired) => {
                let error = crate::error::chain(&e);
                (self.options.warn)(Warning::CommitUnconfirmed { instance: self.options.instance.clone(), error });
                Ok(())
            }
            Err(old) => Err(UpdateError::Commit(CommitError::Unknown {
                new: crate::error::chain(&e),
                old: crate::error::chain(&old),
            })),
        }
    }
}

/// Of `processes` of the old version, those that still live.
fn live(old: &impl RunningVersion, processes: &[i32]) -> BTreeSet<i32> {
    match old.host_pids() {
        Ok(m) => m.into_keys().collect(),
        Err(_) => processes.iter().copied().collect(),
    }
}
