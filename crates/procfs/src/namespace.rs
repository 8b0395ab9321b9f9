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
///
/// A namespace of its own (an instance's) is read from its init down, through the
/// `children` of each thread: the cost is the instance's processes, not the host's (a
/// scan of every host process's `status` took a sixth of a code-only update's CPU time
/// with 75 processes on the host; a production host has thousands). Its init is the
/// ancestor of every process in it: an orphan is reparented to it.
pub fn members(holder: i32) -> io::Result<Vec<Member>> {
    let ns = crate::pid_namespace(holder)?;
    // The holder's level in the NSpid lists: the index of its own PID there.
    let level = crate::status::read(Process::Pid(holder))?.nspid().len().saturating_sub(1);
    if level > 0 {
        if let Some(init) = init_of(holder, level) {
            return Ok(descendants(init, holder, level));
        }
    }
    scanned(holder, &ns, level)
}

/// [`members`] from a scan of every process of the mounted `/proc`.
fn scanned(holder: i32, ns: &std::path::Path, level: usize) -> io::Result<Vec<Member>> {
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
        if crate::pid_namespace(host_pid).ok().as_deref() == Some(ns) {
            direct.push(member);
        } else if nspid.len() > level + 1 {
            others.push((member, status.ppid().unwrap_or(0)));
        }
    }
    Ok(with_nested_descendants(direct, others))
}

/// The host PID of the init (PID 1) of the namespace `holder` is in at `level`: `holder`
/// or one of its ancestors.
fn init_of(holder: i32, level: usize) -> Option<i32> {
    let mut p = holder;
    // An init's parent is outside its namespace: the chain up to it is short.
    for _ in 0..64 {
        let status = crate::status::read(Process::Pid(p)).ok()?;
        match status.nspid().get(level) {
            Some(1) => return Some(p),
            Some(_) => p = status.ppid()?,
            None => return None,
        }
    }
    None
}

/// The processes descended from `init` (host PID; the init of a namespace at `level`),
/// `holder` left out, each by its PID at `level`: the namespace's members and those of
/// namespaces nested in it.
///
/// A process whose parent exits while the walk goes on is reparented to the init, maybe
/// after the init's children were read: the init is read again until it lists nobody
/// new (a few rounds at most; the namespace is the instance's, its churn small).
fn descendants(init: i32, holder: i32, level: usize) -> Vec<Member> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::from([init]);
    for _ in 0..4 {
        let before = seen.len();
        walk_down(init, holder, level, &mut seen, &mut out);
        if seen.len() == before {
            break;
        }
    }
    out.sort_by_key(|m| m.host_pid);
    out
}

/// The processes below `from` not in `seen` yet, into `out` (see [`descendants`]).
fn walk_down(from: i32, holder: i32, level: usize, seen: &mut std::collections::HashSet<i32>, out: &mut Vec<Member>) {
    let mut todo = vec![from];
    while let Some(p) = todo.pop() {
        // A child is listed under the thread that forked it.
        for tid in crate::task::list(p).unwrap_or_default() {
            for child in crate::task::children(p, tid).unwrap_or_default() {
                if !seen.insert(child) {
                    continue;
                }
                todo.push(child);
                if child == holder {
                    continue;
                }
                let Ok(status) = crate::status::read(Process::Pid(child)) else { continue };
                if let Some(&ns_pid) = status.nspid().get(level) {
                    out.push(Member { ns_pid, host_pid: child, exited: status.is_exited() });
                }
            }
        }
    }
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
    fn an_instance_namespace_is_read_from_its_init_down_as_a_scan_of_proc_finds_it() {
        // A PID namespace whose init (a shell) runs a child and a grandchild.
        let mut ns = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sh", "-c", "sh -c 'sleep 30 & wait' & sleep 30 & wait"])
            .spawn()
            .expect("unshare");
        let unshare = ns.id() as i32;
        let init = (0..500)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                let kids = crate::task::children(unshare, unshare).ok()?;
                let init = *kids.first()?;
                (descendants(init, init, 1).len() == 3).then_some(init)
            })
            .expect("the namespace's init and its three processes");
        let from_init = members(init).expect("members");
        let ns_path = crate::pid_namespace(init).unwrap();
        let by_scan = scanned(init, &ns_path, 1).expect("scan");
        let _ = ns.kill();
        let _ = ns.wait();
        assert_eq!(from_init.len(), 3, "{from_init:?}");
        assert!(from_init.iter().all(|m| m.ns_pid > 1 && m.host_pid != init), "{from_init:?}");
        let mut by_scan = by_scan;
        by_scan.sort_by_key(|m| m.host_pid);
        assert_eq!(from_init, by_scan);
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
