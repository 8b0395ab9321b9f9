//! Descriptors' owners (`F_SETOWN`): the process, thread or process group the kernel
//! sends SIGIO (signal-driven I/O, `O_ASYNC`) and SIGURG (a socket's urgent data) to.
//!
//! The owner belongs to the open file description, which the new version shares with
//! the old one: the descriptions its startup inherited (nginx's master/worker channels,
//! which its master sets `O_ASYNC` and owns) and those the transfer moved. Left alone, the
//! owner stays the old process, and once it exits the signals go nowhere. The owner cannot
//! change before the commit point (the old version would lose its signals if the update
//! rolled back), so [`plan`] lists, before the commit, each descriptor of the new version
//! whose owner is a process of the old one, with the counterpart to own it; the new
//! version's supervisor applies the list once past the commit point, before anything
//! resumes ([`at_commit`] also lists the sockets for `super::peers`, in the same pass
//! over the descriptors). An owner with no counterpart (a thread the new version has under another ID,
//! a process it does not recreate) stops the update before the commit.

use super::TransferError;
use crate::version::HostPids;
use mcr_protocol::owner::{OwnerEx, F_GETOWN_EX, F_OWNER_PGRP, F_OWNER_PID, F_OWNER_TID};
use mcr_protocol::Reown;
use std::os::fd::{AsRawFd, OwnedFd};

/// A descriptor's owner as the update sees it (IDs in the update's PID namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub kind: i32,
    pub id: i32,
}

/// The owner of the description `fd` refers to; `None` when it has none.
fn owner_of(fd: &OwnedFd) -> Option<Owner> {
    let mut o = OwnerEx::default();
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (OwnerEx is its layout) at the
    // pointer, a live local.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o as *mut OwnerEx) };
    (r == 0 && o.pid > 0).then_some(Owner { kind: o.kind, id: o.pid })
}

/// The PID in the instance's namespace of the process of `old` with host PID `host`.
pub(crate) fn ns_pid_of(old: &HostPids, host: i32) -> Option<i32> {
    old.iter().find(|(_, &h)| h == host).map(|(&ns, _)| ns)
}

/// The new owner for `owner`, in the instance's namespace: `Ok(None)` when it is not a
/// process of the old version (none, one outside the instance, or one of the new
/// version already). `old`, `new`: each version's processes, namespace PID → host PID;
/// `thread_group`: the process a host thread ID belongs to.
pub(crate) fn counterpart(
    owner: Owner,
    old: &HostPids,
    new: &HostPids,
    thread_group: &dyn Fn(i32) -> Option<i32>,
) -> Result<Option<(i32, i32)>, String> {
    let ns_of = |host: i32| ns_pid_of(old, host);
    let process = match ns_of(owner.id) {
        Some(ns) => ns,
        None if owner.kind == F_OWNER_TID => {
            return match thread_group(owner.id).and_then(ns_of) {
                Some(ns) => Err(format!(
                    "its owner (F_SETOWN_EX) is thread {} of process {ns}, which the new version does not have under \
                     a known ID",
                    owner.id
                )),
                None => Ok(None),
            }
        }
        None => return Ok(None),
    };
    if !new.contains_key(&process) {
        let what = if owner.kind == F_OWNER_PGRP { "process group" } else { "process" };
        return Err(format!("its owner (F_SETOWN), {what} {process}, has no counterpart in the new version"));
    }
    // The main thread of the counterpart has the process's ID, as the old one had.
    let kind = if [F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP].contains(&owner.kind) { owner.kind } else { F_OWNER_PID };
    Ok(Some((kind, process)))
}

/// What the kernel says of the new version's descriptors that names an old process, read
/// in one pass over them before the commit: owners to give the counterparts
/// ([`Reown`]) and, per process, sockets whose peer is an old process (`super::peers`).
pub(crate) struct AtCommit {
    pub reown: Vec<Reown>,
    pub peers: std::collections::BTreeMap<i32, Vec<mcr_protocol::SocketPeer>>,
}

/// [`AtCommit`] for the new version's processes `new` (old version: `old`); an owner
/// without counterpart is an error.
pub(crate) fn at_commit(old: &HostPids, new: &HostPids) -> Result<AtCommit, TransferError> {
    let thread_group = |tid: i32| mcr_procfs::status::read(tid).ok().and_then(|s| s.tgid());
    let mut out = AtCommit { reown: Vec::new(), peers: Default::default() };
    for (&pid, &host) in new {
        // A process that exited meanwhile holds nothing; the commit finds it gone.
        let Ok(pidfd) = mcr_supervisor::pidfd::open(host) else { continue };
        for (fd, target) in mcr_procfs::fd::list_with_targets(host).unwrap_or_default() {
            let Ok(copy) = mcr_supervisor::pidfd::take(&pidfd, fd) else { continue };
            if let Some(owner) = owner_of(&copy) {
                match counterpart(owner, old, new, &thread_group) {
                    Ok(Some((kind, id))) => out.reown.push(Reown { pid, fd, kind, owner: id }),
                    Ok(None) => {}
                    Err(why) => return Err(TransferError::Owner { pid, fd, why }),
                }
            }
            if let Some(peer) = super::peers::peer_within(&copy, &target, old) {
                out.peers.entry(pid).or_default().push(peer);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(pairs: &[(i32, i32)]) -> HostPids {
        pairs.iter().copied().collect()
    }

    #[test]
    fn an_old_process_owner_goes_to_its_counterpart_and_others_stay() {
        let old = hosts(&[(4, 1004), (5, 1005)]);
        let new = hosts(&[(4, 2004), (5, 2005)]);
        let none = |_: i32| None;
        let pid = |id| Owner { kind: F_OWNER_PID, id };
        assert_eq!(counterpart(pid(1004), &old, &new, &none), Ok(Some((F_OWNER_PID, 4))), "the old master");
        let group = Owner { kind: F_OWNER_PGRP, id: 1004 };
        assert_eq!(counterpart(group, &old, &new, &none), Ok(Some((F_OWNER_PGRP, 4))), "its process group");
        assert_eq!(counterpart(pid(2005), &old, &new, &none), Ok(None), "already a new process");
        assert_eq!(counterpart(pid(77), &old, &new, &none), Ok(None), "outside the instance");
        let main_thread = Owner { kind: F_OWNER_TID, id: 1005 };
        assert_eq!(counterpart(main_thread, &old, &new, &none), Ok(Some((F_OWNER_TID, 5))));
    }

    #[test]
    fn an_owner_without_counterpart_is_named() {
        let old = hosts(&[(4, 1004), (9, 1009)]);
        let new = hosts(&[(4, 2004)]);
        let err = counterpart(Owner { kind: F_OWNER_PID, id: 1009 }, &old, &new, &|_| None).unwrap_err();
        assert!(err.contains("process 9, has no counterpart"), "{err}");
        let of_4 = |tid: i32| (tid == 1010).then_some(1004);
        let err = counterpart(Owner { kind: F_OWNER_TID, id: 1010 }, &old, &new, &of_4).unwrap_err();
        assert!(err.contains("thread 1010 of process 4"), "{err}");
    }
}
