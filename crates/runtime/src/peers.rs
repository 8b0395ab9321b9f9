//! Peer credentials of Unix sockets connected within the old version.
//!
//! The kernel records a connected Unix socket's peer (SO_PEERCRED) once, when the pair is
//! made or the connection accepted: for a socketpair or a connection between two
//! processes of the old version, that is an old process, which the new version's PID
//! namespace cannot see (the kernel answers PID 0). Before the commit the update names
//! each such socket with the PID its counterpart has (the same number in the instance's
//! namespace); `getsockopt(SO_PEERCRED)` answers with it, so the program reads what it
//! would have read had it never been updated.

use mcr_protocol::SocketPeer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Whether any socket is named: the one load `getsockopt` pays otherwise.
static ANY: AtomicBool = AtomicBool::new(false);
static PEERS: RwLock<Vec<SocketPeer>> = RwLock::new(Vec::new());

/// The update's list (replacing any earlier one).
pub fn set(peers: Vec<SocketPeer>) {
    let any = !peers.is_empty();
    if let Ok(mut p) = PEERS.write() {
        *p = peers;
    }
    ANY.store(any, Ordering::Release);
}

pub fn any() -> bool {
    ANY.load(Ordering::Acquire)
}

/// The PID socket `inode`'s peer credentials should read as, if the update named it.
pub fn pid_of(inode: u64) -> Option<i32> {
    PEERS.read().ok()?.iter().find(|p| p.inode == inode).map(|p| p.pid)
}
