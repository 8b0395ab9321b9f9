//! The processes of a PID namespace, as the host sees them: each one's PID inside the
//! namespace (the last entry of its `NSpid`) and on the host.

use crate::Process;
use std::collections::BTreeMap;
use std::io;

/// A process of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its PID inside the namespace.
    pub ns_pid: i32,
    /// Its PID in the namespace of the mounted `/proc` (the host's).
    pub host_pid: i32,
    /// Exited, not reaped yet.
    pub exited: bool,
}

/// The processes in the PID namespace of host process `holder` (a supervisor: PID 1 of
/// its namespace), `holder` itself left out. Err when `holder`'s namespace cannot be
/// read (it is gone, or no permission) or /proc cannot be listed.
pub fn members(holder: i32) -> io::Result<Vec<Member>> {
    let ns = crate::pid_namespace(holder)?;
    let mut out = Vec::new();
    for host_pid in crate::pids()? {
        if host_pid == holder || crate::pid_namespace(host_pid).ok().as_ref() != Some(&ns) {
            continue;
        }
        let Ok(status) = crate::status::read(Process::Pid(host_pid)) else { continue };
        if let Some(ns_pid) = status.innermost_pid() {
            out.push(Member { ns_pid, host_pid, exited: status.is_exited() });
        }
    }
    Ok(out)
}

/// Namespace PID → host PID of the live (not exited) processes in the namespace of
/// `holder`, `holder` left out: an exited process holds nothing to read or move.
pub fn host_pids(holder: i32) -> io::Result<BTreeMap<i32, i32>> {
    Ok(members(holder)?.into_iter().filter(|m| !m.exited).map(|m| (m.ns_pid, m.host_pid)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_namespace_holds_this_process() {
        // Without a namespace of its own, a test sees its own namespace: its parent as
        // the holder, itself among the members, with the same PID inside and out (the
        // mounted /proc is of this namespace).
        let parent = std::os::unix::process::parent_id() as i32;
        let me = std::process::id() as i32;
        let m = members(parent).unwrap();
        assert!(m.contains(&Member { ns_pid: me, host_pid: me, exited: false }), "{m:?}");
        assert!(m.iter().all(|m| m.host_pid != parent));
        assert_eq!(host_pids(parent).unwrap().get(&me), Some(&me));
        assert!(members(-1).is_err());
    }
}
