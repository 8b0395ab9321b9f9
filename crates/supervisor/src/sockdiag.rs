//! What the kernel says about a Unix socket without anyone holding a copy of it: its
//! peer, through the sock_diag netlink interface (`ss -x` uses it). A copy taken with
//! pidfd_getfd while the program runs would keep the socket alive past the program's
//! close of it (see the runtime's `borrow` module); a netlink lookup by inode holds
//! nothing.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: libc::nlmsghdr,
    req: UnixDiagReq,
}

/// Size of `struct unix_diag_msg` (family, type, state, pad, ino, cookie[2]), after which
/// the attributes follow.
const UNIX_DIAG_MSG_LEN: usize = 16;

/// The inode of the Unix socket connected to the one with inode `ino` (in the caller's
/// network namespace), or None when it has no peer.
pub fn unix_peer(ino: u64) -> io::Result<Option<u64>> {
    let ino = u32::try_from(ino).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "inode past 32 bits"))?;
    // SAFETY: socket() takes no pointer; the descriptor is owned from here on.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let req = Request {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req: UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino,
            show: UDIAG_SHOW_PEER,
            // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
            cookie: [u32::MAX, u32::MAX],
        },
    };
    // SAFETY: send reads `size_of::<Request>()` bytes of `req`, a live plain-data local
    // (netlink's kernel address is the zeroed default destination of an unbound socket).
    let sent =
        unsafe { libc::send(sock.as_raw_fd(), (&req as *const Request).cast(), std::mem::size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_peer(&buf[..n as usize])
}

/// The UNIX_DIAG_PEER attribute of the first message of a sock_diag answer.
fn parse_peer(msg: &[u8]) -> io::Result<Option<u64>> {
    let u16_at = |at: usize| msg.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |at: usize| msg.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let len = u32_at(0).ok_or_else(bad)? as usize;
    let kind = u16_at(4).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let header = std::mem::size_of::<libc::nlmsghdr>();
    let mut at = header + UNIX_DIAG_MSG_LEN;
    let end = len.min(msg.len());
    while at + 4 <= end {
        let attr_len = u16_at(at).ok_or_else(bad)? as usize;
        let attr_type = u16_at(at + 2).ok_or_else(bad)?;
        if attr_len < 4 {
            break;
        }
        if attr_type == UNIX_DIAG_PEER {
            return Ok(u32_at(at + 4).map(u64::from));
        }
        at += (attr_len + 3) & !3;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    fn inode(s: &UnixStream) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).expect("fd link").ino()
    }

    #[test]
    fn the_peer_of_a_socketpair_end_is_the_other_end() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        assert_eq!(unix_peer(inode(&a)).expect("sock_diag"), Some(inode(&b)));
        assert_eq!(unix_peer(inode(&b)).expect("sock_diag"), Some(inode(&a)));
    }

    #[test]
    fn an_unknown_inode_is_an_error() {
        assert!(unix_peer(u32::MAX as u64 - 7).is_err());
    }
}
