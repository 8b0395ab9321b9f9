//! What an update says on the way without failing.

use mcr_client::ClientError;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Warning {
    /// Client connections still open after the drain that the update can neither move
    /// nor let the new version adopt.
    StuckConnections {
        connections: usize,
        processes: Vec<i32>,
        drain_timeout_ms: u64,
        /// --fresh-state: they are closed if the update commits.
        fresh_state: bool,
        /// With --fresh-state, the new version adopts idle connections (these are not).
        adopts: bool,
    },
    /// A build has no DWARF: the process's heap and globals stay behind.
    NoDebugInfo { binary: PathBuf, pid: i32 },
    /// Every global of the process counts as written since startup.
    NoDirtyTracking { pid: i32, reason: String },
    /// The process's startup objects are reallocated instead of matched.
    StartupAllocationsUnknown { pid: i32, reason: String },
    /// The process's old heap is copied block by block instead of adopted.
    HeapNotAdopted { pid: i32, reason: String },
    /// --fresh-state: state the update could not have moved anyway stays behind too.
    StateLeftBehind(Vec<crate::preflight::Unmovable>),
    /// A rollback could not resume the old version.
    NotResumed(ClientError),
    /// The new version's supervisor did not answer the commit, but the old version had
    /// retired: the commit point was passed.
    CommitUnconfirmed { instance: String, error: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::StuckConnections { connections, processes, drain_timeout_ms, fresh_state: true, adopts } => write!(
                f,
                "{connections} client connection(s) still open after the {drain_timeout_ms} ms drain (processes {processes:?}); \
                 they are closed if this update commits (--fresh-state{})",
                if *adopts { ", and they are busy or their program has no MCR_ADD_IDLE_CHECK" } else { "" }
            ),
            Warning::StuckConnections { connections, processes, drain_timeout_ms, fresh_state: false, .. } => write!(
                f,
                "{connections} client connection(s) still open after the {drain_timeout_ms} ms drain that the update cannot move \
                 (processes {processes:?}: forked after startup, or a thread serves the connection from its stack and the new \
                 version has no MCR_ADD_RESUME_HANDLER)"
            ),
            Warning::NoDebugInfo { binary, pid } => write!(
                f,
                "{} has no debug information (build with -g): process {pid}'s heap and globals are not transferred",
                binary.display()
            ),
            Warning::NoDirtyTracking { pid, reason } => {
                write!(f, "no dirty tracking for process {pid} ({reason}): every global counts as written")
            }
            Warning::StartupAllocationsUnknown { pid, reason } => write!(
                f,
                "process {pid}'s startup allocations are unknown ({reason}): its startup objects are reallocated, not matched"
            ),
            Warning::HeapNotAdopted { pid: _, reason } => write!(f, "{reason}"),
            Warning::StateLeftBehind(items) => {
                write!(f, "--fresh-state: the running version's state stays behind, including what no update could move:")?;
                items.iter().try_for_each(|u| write!(f, "\n  {u}"))
            }
            Warning::CommitUnconfirmed { instance, error } => write!(
                f,
                "the new version's supervisor did not confirm the commit ({error}), but the old version had retired: \
                 the new version took '{instance}' over (check it with `mcr status {instance}`)"
            ),
            Warning::NotResumed(e) => {
                write!(f, "could not resume the old version: {} (run `mcr ctl <name> resume`)", crate::error::chain(e))
            }
        }
    }
}

/// Where warnings go (the CLI prints them as they come; transfer threads send them too).
pub type Warn<'a> = &'a (dyn Fn(Warning) + Sync);
