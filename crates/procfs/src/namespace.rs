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

/// The processes in the PID namespace of host process `holder` (a supervisor), `holder`
/// itself and the namespace's init (PID 1 there) left out, with the descendants of those in namespaces
/// nested inside it (vsftpd's session processes live in one of their own): each by its
/// PID in the holder's namespace. Err when `holder`'s namespace cannot be read (it is
/// gone, or no permission) or /proc cannot be listed.
pub fn members(holder: i32) -> io::Result<Vec<Member>> {
    let ns = crate::pid_namespace(holder)?;
    // The holder's level in the NSpid lists: the index of its own PID there.
    let level = crate::status::read(Process::Pid(holder))?.nspid().len().saturating_sub(1);
    let mut direct = Vec::new();
    let mut others = Vec::new();
    for host_pid in crate::pids()? {
        if host_pid == holder {
            continue;
        }
        let Ok(status) = crate::status::read(Process::Pid(host_pid)) else { continue };
        let nspid = status.nspid();
        let Some(&ns_pid) = nspid.get(level).filter(|_| level > 0 || nspid.len() == 1) else { continue };
        if level > 0 && ns_pid == 1 {
            continue;
        }
        let member = Member { ns_pid, host_pid, exited: status.is_exited() };
        if crate::pid_namespace(host_pid).ok().as_ref() == Some(&ns) {
            direct.push(member);
        } else if nspid.len() > level + 1 {
            others.push((member, status.ppid().unwrap_or(0)));
        }
    }
    Ok(with_nested_descendants(direct, others))
}

/// `direct` (the members of the namespace itself) and those of `others` (processes of
/// nested namespaces, with their parent's host PID) descended from one of them.
fn with_nested_descendants(mut members: Vec<Member>, mut others: Vec<(Member, i32)>) -> Vec<Member> {
    loop {
        let before = others.len();
        let (adopted, rest): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|(_, parent)| members.iter().any(|m| m.host_pid == *parent));
        members.extend(adopted.into_iter().map(|(m, _)| m));
        others = rest;
        if others.len() == before {
            return members;
        }
    }
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

    #[test]
    fn processes_of_nested_namespaces_count_when_they_descend_from_a_member() {
        let m = |ns_pid, host_pid| Member { ns_pid, host_pid, exited: false };
        let direct = vec![m(2, 100)];
        // 101 forked by 100 into a namespace of its own, 102 its child there; 200 belongs
        // to another tree.
        let others = vec![(m(5, 102), 101), (m(4, 101), 100), (m(9, 200), 1)];
        let got: Vec<i32> = with_nested_descendants(direct, others).iter().map(|m| m.ns_pid).collect();
        assert_eq!(got, [2, 4, 5]);
    }
}
