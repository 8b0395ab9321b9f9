//! Unix sockets whose peer credentials name a process of the old version (a socketpair
//! its startup or its code after startup made, a connection between two of its
//! processes): the kernel keeps that process as the peer, which the new version's PID
//! namespace cannot see. [`peer_within`] names each such socket of the new version with the
//! PID to report (the old peer's PID in the instance's namespace, which its counterpart
//! has too); the new runtime's `getsockopt(SO_PEERCRED)` answers with it.

use crate::version::HostPids;
use mcr_protocol::SocketPeer;
use std::os::fd::OwnedFd;

/// The socket `copy` (its link in /proc: `target`) as it must read in the new version,
/// when its peer is a process of the old version (`old`): its inode and that process's
/// PID in the instance's namespace, which its counterpart has too.
pub(crate) fn peer_within(copy: &OwnedFd, target: &str, old: &HostPids) -> Option<SocketPeer> {
    let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
    let peer = super::descriptors::peer_credentials(copy).ok().map(|c| c.pid).filter(|&p| p > 0)?;
    Some(SocketPeer { inode, pid: super::owners::ns_pid_of(old, peer)? })
}
