//! The new version, through the supervisor the update spawned for it (instance
//! `NAME.next` until it takes over `NAME`).

use crate::error::{CommitError, NotStarted};
use crate::transfer::{self, Processes, Summary, TransferError};
use crate::version::{HostPids, NextVersion, StartupFailure};
use crate::warning::Warn;
use mcr_client::launch::LogMark;
use mcr_client::{ClientError, Connection};
use mcr_protocol::{
    ExitStatus, InstanceDir, LaunchReport, OpenConnections, Request, Response, RuntimeCommandKind, RuntimeReply,
};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Exit status of a new-version process that stopped on a replay conflict (the runtime's
/// `replay::CONFLICT_EXIT`).
const CONFLICT_EXIT: i32 = 86;

/// How long a killed supervisor may take to exit (its namespace's processes end first).
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a conflict report may trail the exit it caused.
const TRAILING_REPORT: Duration = Duration::from_millis(200);

pub struct NewSupervisor {
    dir: InstanceDir,
    /// The instance's name (the old version's until commit), and the new version's.
    name: String,
    next_name: String,
    reports: Receiver<LaunchReport>,
    /// Host PID, once the supervisor said it.
    supervisor_pid: Option<i32>,
    /// Where the new version's lines begin in the instance log (the runtime writes
    /// conflicts there too).
    log: LogMark,
    conn: Option<Connection>,
    /// The processes its supervisor listed when it reported startup complete, for the
    /// first look at its tree (then asked afresh).
    started_processes: Option<Vec<i32>>,
}

impl NewSupervisor {
    pub(crate) fn new(dir: InstanceDir, name: String, reports: Receiver<LaunchReport>, log: LogMark) -> Self {
        let next_name = format!("{name}.next");
        Self { dir, name, next_name, reports, supervisor_pid: None, log, conn: None, started_processes: None }
    }

    fn connection(&mut self) -> Result<&mut Connection, ClientError> {
        match &mut self.conn {
            Some(c) => Ok(c),
            none => Ok(none.insert(Connection::open(&self.dir, &self.next_name)?)),
        }
    }

    /// Its processes (PIDs in its namespace) → host PIDs.
    fn host_pids(&self) -> Result<HostPids, TransferError> {
        let pid = self.supervisor_pid.ok_or(TransferError::NoSupervisor)?;
        Ok(mcr_client::pids::host_pids_in(pid)?)
    }

    /// Why a new version that exited during its startup did.
    fn exited(&self, status: ExitStatus, conflicts: &mut Vec<mcr_protocol::ReplayConflict>) -> NotStarted {
        // A conflict report may trail the exit; the runtime also wrote it to the log.
        while let Ok(r) = self.reports.recv_timeout(TRAILING_REPORT) {
            if let LaunchReport::ReplayConflict { conflict } = r {
                conflicts.push(conflict);
            }
        }
        if !conflicts.is_empty() {
            return NotStarted::Conflict;
        }
        if status == ExitStatus::Code(CONFLICT_EXIT) {
            let logged = self.log.text();
            if let Some(line) = logged.lines().rev().find(|l| l.contains("replay conflict:")) {
                return NotStarted::LoggedConflict(line.split("replay conflict:").nth(1).unwrap_or(line).trim().into());
            }
        }
        NotStarted::Exited { status, log_tail: self.log.tail() }
    }
}

impl NextVersion for NewSupervisor {
    fn wait_started(&mut self, timeout: Duration, give_up: &dyn Fn() -> bool) -> Result<(), StartupFailure> {
        let deadline = Instant::now() + timeout;
        let mut conflicts = Vec::new();
        let reason = loop {
            if give_up() {
                break NotStarted::Interrupted;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break NotStarted::Timeout(timeout.as_millis());
            }
            match self.reports.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(LaunchReport::Supervising { supervisor_pid, .. }) => self.supervisor_pid = Some(supervisor_pid),
                Ok(LaunchReport::Started { processes, .. }) => {
                    self.started_processes = processes;
                    return Ok(());
                }
                Ok(LaunchReport::ReplayConflict { conflict }) => {
                    conflicts.push(conflict);
                    break NotStarted::Conflict;
                }
                Ok(LaunchReport::LaunchFailed { message }) => break NotStarted::LaunchFailed(message),
                Ok(LaunchReport::Exited { status }) => break self.exited(status, &mut conflicts),
                Ok(LaunchReport::Replaced) => break NotStarted::UnexpectedReport,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break NotStarted::SupervisorDied,
            }
        };
        Err(StartupFailure { reason, conflicts })
    }

    /// Its processes, from the supervisor's view of its namespace: no runtime is asked
    /// (a status would have each symbolize its parked threads' stacks, on the restart's
    /// clock).
    fn processes(&mut self) -> Result<Vec<i32>, ClientError> {
        if let Some(p) = self.started_processes.take() {
            return Ok(p);
        }
        Ok(self.connection()?.update_info()?.processes)
    }

    fn respawn(&mut self, old: &HostPids, connections: &[OpenConnections]) -> Result<usize, TransferError> {
        if connections.is_empty() {
            return Ok(0);
        }
        let new = self.host_pids()?;
        Ok(transfer::respawn_volatile(old, &new, self.connection()?, connections)?)
    }

    fn receive_state(
        &mut self,
        old: &HostPids,
        connections: &[OpenConnections],
        warn: Warn<'_>,
        count_pointers: bool,
    ) -> Result<Summary, TransferError> {
        // Respawned processes are part of the new version now.
        let procs = Processes { old: old.clone(), new: self.host_pids()? };
        // Connections of their own to both versions, per tracer (the update's holds the drain).
        let (dir, name, next_name) = (&self.dir, &self.name, &self.next_name);
        let connect = || Ok((Connection::open(dir, name)?, Connection::open(dir, next_name)?));
        transfer::run(&procs, &connect, connections, warn, count_pointers)
    }

    fn adopt(&mut self, old: &HostPids, connections: &[&OpenConnections]) -> Result<usize, TransferError> {
        let new = self.host_pids()?;
        let next = self.connection()?;
        let mut n = 0;
        for c in connections {
            let (Some(&old_host), Some(&new_host)) = (old.get(&c.pid), new.get(&c.pid)) else { continue };
            transfer::adopt(old_host, c.pid, new_host, next, &c.fds)?;
            n += c.fds.len();
        }
        Ok(n)
    }

    fn commit(&mut self, processes: &[i32], old: &HostPids) -> Result<(), CommitError> {
        let new = self.host_pids().map_err(|e| CommitError::Refused(format!("the new version's processes: {e}")))?;
        // Before the commit: a new version that does not commit goes whole.
        transfer::drop_replayed_messages(old, &new);
        let at_commit = transfer::owners::at_commit(old, &new).map_err(|e| CommitError::Refused(e.to_string()))?;
        let reown = at_commit.reown;
        let conn = self.connection().map_err(CommitError::Unreachable)?;
        for (pid, peers) in at_commit.peers {
            match conn.runtime(pid, RuntimeCommandKind::SocketPeers { peers }) {
                Ok(RuntimeReply::Done) => {}
                Ok(other) => return Err(CommitError::Refused(format!("process {pid}: unexpected answer {other:?}"))),
                Err(e) => return Err(CommitError::Refused(format!("process {pid}: its sockets' peers: {e}"))),
            }
        }
        match conn.request(&Request::Commit { processes: processes.to_vec(), reown }) {
            Ok(Response::Ok) => Ok(()),
            Ok(Response::Error { message }) => Err(CommitError::Refused(message)),
            Ok(other) => Err(CommitError::Refused(format!("unexpected answer {other:?}"))),
            // Not sent: the new version never saw the request.
            Err(e @ ClientError::Send(_)) => Err(CommitError::Unreachable(e)),
            Err(e) => Err(CommitError::NoAnswer(e)),
        }
    }

    fn kill(&mut self) {
        // It may have said who it is since anyone last looked.
        while let Ok(r) = self.reports.try_recv() {
            if let LaunchReport::Supervising { supervisor_pid, .. } = r {
                self.supervisor_pid = Some(supervisor_pid);
            }
        }
        let Some(supervisor) = self.supervisor_pid.filter(|&p| p > 0) else { return };
        // With a PID namespace the supervisor's parent is the namespace's init, our child
        // (we are its subreaper): killing the init ends every process of the new version
        // at once. Without one, the supervisor is our child itself.
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let parent = mcr_procfs::stat::read(supervisor).map(|s| s.ppid).unwrap_or(0);
        let pid =
            if parent > 1 && mcr_procfs::stat::read(parent).is_ok_and(|s| s.ppid == me) { parent } else { supervisor };
        // SAFETY: killing the new version's init (or supervisor), our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Its instance lock goes with its descriptors, before the kernel has ended the
        // rest of its namespace; its exit comes after. Reap it, so that nothing of the new
        // version is left on return.
        let t = Instant::now();
        let mut status = 0;
        // SAFETY: non-blocking wait for our own child.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 && t.elapsed() < KILL_TIMEOUT {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
