//! Per-connection processes: the old version forked them after startup to serve one
//! connection each, so the new version's startup never recreates them. The new build's
//! respawn handler does, in the counterpart of each one's parent.

use super::descriptors::{self, DescriptorError};
use super::runtime::NewProcess;
use mcr_client::{ClientError, Connection};
use mcr_protocol::{OpenConnections, RuntimeCommandKind, RuntimeReply};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RespawnError {
    #[error("process {0} is gone")]
    Gone(i32),
    #[error("cannot read the parent of process {0}")]
    NoParent(i32),
    #[error("process {0}'s parent is not part of the instance")]
    ParentOutside(i32),
    #[error(
        "process {pid} (forked after startup) serves {} connections (fds {fds:?}); a respawn handler recreates a process for one",
        fds.len()
    )]
    SeveralConnections { pid: i32, fds: Vec<i32> },
    #[error("process {0} has no counterpart in the new version")]
    NoCounterpart(i32),
    #[error("unexpected answer to respawn: {0:?}")]
    Unexpected(Box<RuntimeReply>),
    #[error("process {parent} could not respawn process {pid} (connection fd {fd})")]
    Refused {
        parent: i32,
        pid: i32,
        fd: i32,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Descriptors(#[from] DescriptorError),
    #[error("the respawned processes {0:?} did not register with the new version's supervisor")]
    NotRegistered(Vec<i32>),
    /// Asking the new version's supervisor which processes registered failed.
    #[error(transparent)]
    Status(ClientError),
}

/// How long a respawned process's runtime may take to register with its supervisor.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Recreate in the new version every process of `connections` the old one forked after
/// startup to serve a connection: install the connection in the new parent, whose
/// respawn handler forks a child with the old child's PID. The state transfer then pairs
/// them like any processes. `old`, `new`: PIDs in each namespace → host PIDs; `next`: the
/// new version's supervisor. Returns how many were respawned.
pub fn respawn_volatile(
    old: &BTreeMap<i32, i32>,
    new: &BTreeMap<i32, i32>,
    next: &mut Connection,
    connections: &[OpenConnections],
) -> Result<usize, RespawnError> {
    let old_ns: BTreeMap<i32, i32> = old.iter().map(|(&ns, &host)| (host, ns)).collect();
    let mut respawned = Vec::new();
    for c in connections.iter().filter(|c| c.volatile && !c.fds.is_empty()) {
        let pid = c.pid;
        let &old_host = old.get(&pid).ok_or(RespawnError::Gone(pid))?;
        let parent_host =
            mcr_procfs::status::read(old_host).ok().and_then(|st| st.ppid()).ok_or(RespawnError::NoParent(pid))?;
        let &parent = old_ns.get(&parent_host).ok_or(RespawnError::ParentOutside(pid))?;
        let &[fd] = c.fds.as_slice() else {
            return Err(RespawnError::SeveralConnections { pid, fds: c.fds.clone() });
        };
        let &new_parent_host = new.get(&parent).ok_or(RespawnError::NoCounterpart(parent))?;
        let mut target = NewProcess { next: &mut *next, pid: parent, host_pid: new_parent_host };
        descriptors::import(old_host, &[fd], &mut target, descriptors::Moving::Connections)?;
        match target.runtime(RuntimeCommandKind::Respawn { pid, fd }) {
            Ok(RuntimeReply::Respawned { .. }) => respawned.push(pid),
            Ok(other) => return Err(RespawnError::Unexpected(Box::new(other))),
            Err(source) => return Err(RespawnError::Refused { parent, pid, fd, source }),
        }
    }
    wait_registered(next, &respawned)?;
    Ok(respawned.len())
}

/// A respawned process exists once its parent forked it, but its runtime registers with
/// the supervisor on its own: until then the supervisor cannot pass it the state
/// transfer's commands. Wait for every process of `pids` to be registered.
fn wait_registered(next: &mut Connection, pids: &[i32]) -> Result<(), RespawnError> {
    let t = Instant::now();
    loop {
        let st = next.status().map_err(RespawnError::Status)?;
        let waiting: Vec<i32> =
            pids.iter().copied().filter(|p| !st.processes.iter().any(|q| q.pid == *p && q.managed)).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if t.elapsed() > REGISTER_TIMEOUT {
            return Err(RespawnError::NotRegistered(waiting));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
