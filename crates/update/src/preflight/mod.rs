//! Preflight: what the running version holds that the update could not move (paper §5,
//! global inheritance). Every descriptor, mapping, process attribute and process the
//! old version made after its startup must reach the new one; what mcr cannot carry is
//! named here, and the update refuses before it drains or quiesces anything (and again
//! once the old version is parked, for what appeared meanwhile: then it rolls back).
//! With `--fresh-state` the operator chose to leave the state behind: the same list is
//! a warning.
//!
//! One module per kind of state; each reads the old processes through [`Context`] and
//! names what it cannot move. A kind that the transfer learns to move stops being named
//! here, in the same change.

mod attributes;
mod descriptors;
mod keys;
pub(crate) mod mappings;
mod processes;

pub use attributes::Snapshots;

use crate::version::HostPids;
use mcr_protocol::ProcessLog;
use std::collections::BTreeMap;

/// A piece of the old version's state the update cannot move.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unmovable {
    /// The process holding it (PID in the instance's namespace).
    pub pid: i32,
    /// What it is, as an operator would look for it: "fd 7 (pipe:[1234])", "the signal mask".
    pub what: String,
    /// Why it cannot move.
    pub why: String,
}

impl std::fmt::Display for Unmovable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {}: {}: {}", self.pid, self.what, self.why)
    }
}

/// The old version as the checks see it.
pub struct Context {
    /// Its live processes: PID in its namespace → host PID (for /proc).
    pub processes: HostPids,
    /// Each process's startup log: what its startup made (the new version's own startup
    /// recreates that), as opposed to what came after.
    pub logs: Vec<ProcessLog>,
    /// Each process's attributes at startup and now, as its runtime reports them (a
    /// process whose runtime did not answer is left out).
    pub attributes: BTreeMap<i32, Snapshots>,
    /// Each process's descriptors made after startup, other than client connections (its
    /// runtime's answer: only it knows which of its descriptors are its own and which
    /// connections it accepted), or why it could not say.
    pub post_startup_fds: BTreeMap<i32, Result<Vec<i32>, String>>,
}

impl Context {
    pub fn log(&self, pid: i32) -> Option<&mcr_protocol::StartupLog> {
        self.logs.iter().find(|l| l.pid == pid).and_then(|l| l.log.as_ref())
    }
}

/// Everything in `ctx` that the update cannot move, in process order.
pub fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut found = Vec::new();
    found.extend(descriptors::unmovable(ctx));
    found.extend(mappings::unmovable(ctx));
    found.extend(attributes::unmovable(ctx));
    found.extend(processes::unmovable(ctx));
    found.extend(keys::unmovable(ctx));
    found.sort_by_key(|u| u.pid);
    found
}
