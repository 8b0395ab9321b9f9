//! Unix sockets whose peer credentials name a process of the old version (a socketpair
//! its startup or its code after startup made, a connection between two of its
//! processes): the kernel keeps that process as the peer, which the new version's PID
//! namespace cannot see. [`plan`] names each such socket of the new version with the
//! PID to report (the old peer's PID in the instance's namespace, which its counterpart
//! has too); the new runtime's `getsockopt(SO_PEERCRED)` answers with it.

use crate::version::HostPids;
use mcr_protocol::SocketPeer;
use std::collections::BTreeMap;

/// For each process of the new version (`new`), its sockets whose peer is a process of
/// the old version (`old`), with that process's PID in the instance's namespace.
pub(crate) fn plan(old: &HostPids, new: &HostPids) -> BTreeMap<i32, Vec<SocketPeer>> {
    let ns_of = |host: i32| old.iter().find(|(_, &h)| h == host).map(|(&ns, _)| ns);
    let mut out = BTreeMap::new();
    for (&pid, &host) in new {
        let Ok(pidfd) = mcr_supervisor::pidfd::open(host) else { continue };
        let mut peers = Vec::new();
        for (fd, target) in mcr_procfs::fd::list_with_targets(host).unwrap_or_default() {
            let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')?.parse().ok()) else {
                continue;
            };
            let Ok(copy) = mcr_supervisor::pidfd::take(&pidfd, fd) else { continue };
            let peer = super::descriptors::peer_credentials(&copy).ok().map(|c| c.pid).filter(|&p| p > 0);
            if let Some(peer) = peer.and_then(ns_of) {
                peers.push(SocketPeer { inode, pid: peer });
            }
        }
        if !peers.is_empty() {
            out.insert(pid, peers);
        }
    }
    out
}
