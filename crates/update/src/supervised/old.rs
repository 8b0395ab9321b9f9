//! The running version, through its supervisor's control socket.

use crate::error::PreflightError;
use crate::preflight::{Context, Snapshots, Unmovable};
use crate::version::{Drain, HostPids, Quiescence, Resumed, RunningVersion};
use mcr_client::pids::PidsError;
use mcr_client::{ClientError, Connection};
use mcr_protocol::{
    InstanceDir, OpenConnections, ProcessLog, Request, Response, RuntimeCommandKind, RuntimeReply, StartupLog,
    UpdateInfo,
};
use std::collections::BTreeMap;

pub struct OldSupervisor {
    dir: InstanceDir,
    name: String,
    info: UpdateInfo,
    /// The update's connection: the one that drains, so the supervisor resumes on its own
    /// if it closes before a Resume or Retire (mcr killed mid-update). Reopened only after
    /// a request left it out of step.
    conn: Option<Connection>,
    /// The completed startup logs read so far, by (PID, registration): the restart, on
    /// the paused clock, then asks only for what changes after startup (nginx: 99 kB of
    /// logs symbolized, encoded and decoded three times, 3-5 ms).
    logs_read: BTreeMap<(i32, u64), StartupLog>,
}

impl OldSupervisor {
    pub(crate) fn new(dir: InstanceDir, name: String, info: UpdateInfo, conn: Connection) -> Self {
        Self { dir, name, info, conn: Some(conn), logs_read: BTreeMap::new() }
    }

    /// One exchange on the update's connection. A request that got no answer (cut short,
    /// interrupted) leaves it out of step: it is closed, and the next request opens another.
    fn ask<T>(&mut self, f: impl FnOnce(&mut Connection) -> Result<T, ClientError>) -> Result<T, ClientError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            none => none.insert(Connection::open(&self.dir, &self.name)?),
        };
        let r = f(conn);
        if let Err(e) = &r {
            if !matches!(e, ClientError::Refused(_) | ClientError::Unexpected(_)) {
                self.conn = None;
            }
        }
        r
    }
}

impl OldSupervisor {
    /// Process `pid`'s attributes at startup and now; None when its runtime cannot say
    /// (gone meanwhile, unmanaged). What the process could not read of itself (its root,
    /// working directory and namespaces once it changed root into a tree without /proc:
    /// vsftpd's sessions) is read from outside, through `host`, its PID on the host.
    fn attributes(&mut self, pid: i32, host: i32) -> Option<Snapshots> {
        match self.ask(|c| c.runtime(pid, RuntimeCommandKind::Attributes)) {
            Ok(RuntimeReply::Attributes { startup, now }) => {
                let mut now = *now;
                let outside = |what: &str| {
                    std::fs::read_link(mcr_procfs::Process::Pid(host).file(what))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                };
                if now.root.is_empty() {
                    now.root = outside("root");
                }
                if now.cwd.is_empty() {
                    now.cwd = outside("cwd");
                }
                for (ns, link) in now.namespaces.iter_mut().filter(|(_, l)| l.is_empty()) {
                    *link = outside(&format!("ns/{ns}"));
                }
                Some(Snapshots { startup: startup.map(|s| *s), now })
            }
            _ => None,
        }
    }
}

impl RunningVersion for OldSupervisor {
    fn drain(&mut self, drain: &Drain, give_up: &dyn Fn() -> bool) -> Result<Vec<OpenConnections>, ClientError> {
        match self.ask(|c| c.request_until(&drain.request(), give_up))? {
            Response::Drained { remaining, .. } => Ok(remaining),
            other => Err(ClientError::unexpected(other)),
        }
    }

    fn quiesce(&mut self, timeout_ms: u64) -> Result<Quiescence, ClientError> {
        match self.ask(|c| c.request(&Request::Quiesce { timeout_ms }))? {
            Response::Quiesced { .. } => Ok(Quiescence::Parked),
            Response::QuiesceFailed { message, laggards } => Ok(Quiescence::Failed { message, laggards }),
            other => Err(ClientError::unexpected(other)),
        }
    }

    fn processes(&mut self) -> Result<Vec<i32>, ClientError> {
        let info = self.ask(Connection::update_info)?;
        self.info.processes = info.processes;
        Ok(self.info.processes.clone())
    }

    fn startup_logs(&mut self) -> Result<Vec<ProcessLog>, ClientError> {
        let refresh: Vec<(i32, u64)> = self.logs_read.keys().copied().collect();
        let mut logs = self.ask(|c| c.startup_logs_refreshing(&refresh))?;
        let read = std::mem::take(&mut self.logs_read);
        let mut stale = false;
        for p in &mut logs {
            if let Some(r) = p.refresh.take() {
                match read.get(&(p.pid, p.registration)).and_then(|l| l.refreshed(&r)) {
                    Some(log) => p.log = Some(log),
                    None => stale = true,
                }
            }
        }
        if stale {
            // A log changed in a way a refresh cannot carry: read them all again.
            logs = self.ask(Connection::startup_logs)?;
        }
        self.logs_read = logs
            .iter()
            .filter(|p| p.registration != 0)
            .filter_map(|p| Some(((p.pid, p.registration), p.log.clone().filter(|l| l.complete)?)))
            .collect();
        Ok(logs)
    }

    fn host_pids(&self) -> Result<HostPids, PidsError> {
        mcr_client::pids::host_pids(self.info.pid_namespace, self.info.supervisor_pid, self.info.processes.clone())
    }

    fn unmovable(&mut self) -> Result<Vec<Unmovable>, PreflightError> {
        let logs = self.startup_logs().map_err(PreflightError::Request)?;
        let processes = self.host_pids()?;
        let attributes =
            processes.iter().filter_map(|(&pid, &host)| Some((pid, self.attributes(pid, host)?))).collect();
        let mut post_startup_fds = BTreeMap::new();
        for &pid in processes.keys() {
            let fds = match self.ask(|c| c.post_startup_fds(pid)) {
                Ok(fds) => Ok(fds),
                // Its supervisor says the process cannot answer (stopped, gone, not
                // registered yet): the drain and quiesce, which need it too, name it.
                Err(ClientError::Refused(_)) => continue,
                Err(e) => Err(crate::error::chain(&e)),
            };
            post_startup_fds.insert(pid, fds);
        }
        Ok(crate::preflight::unmovable(&Context { processes, logs, attributes, post_startup_fds }))
    }

    fn describe_process(&self, pid: i32) -> String {
        let host = self.host_pids().ok().and_then(|h| h.get(&pid).copied());
        describe(pid, host)
    }

    fn resume(&mut self) -> Result<Resumed, ClientError> {
        match self.ask(|c| c.request(&Request::Resume))? {
            Response::Resumed { .. } => Ok(Resumed::Resumed),
            Response::Retired => Ok(Resumed::Retired),
            other => Err(ClientError::unexpected(other)),
        }
    }
}

/// One line about an old process: what it runs, its state and where it waits.
fn describe(pid: i32, host: Option<i32>) -> String {
    let Some(h) = host else { return format!("process {pid}") };
    let status = mcr_procfs::status::read(h).ok();
    let state = status.as_ref().and_then(|s| s.field("State")).unwrap_or("").to_string();
    let cmd = mcr_procfs::cmdline(h).unwrap_or_default().join(" ");
    let wchan = mcr_procfs::wchan(h).unwrap_or_default();
    let mut fds: Vec<String> = mcr_procfs::fd::list_with_targets(h)
        .unwrap_or_default()
        .into_iter()
        .map(|(fd, target)| format!("{fd}={target}"))
        .collect();
    fds.sort();
    format!("process {pid} ({cmd}; {state}; waiting in {}; descriptors {})", wchan.trim(), fds.join(" "))
}
