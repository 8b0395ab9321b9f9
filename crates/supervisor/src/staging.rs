//! An update's new version launched ahead ("staged"): `mcr update` starts the new
//! version's init and supervisor while the old version still serves (during the
//! preflight); the supervisor executes the server at once, with the heap slots and the
//! initial stack size the running old version already tells, and the server waits in
//! its runtime's constructor (`runtime/src/held_launch.rs`); nothing is bound before the
//! go. On the paused clock only the go remains: the heap slots and stack size checked
//! again (a change refuses the go), and the descriptors the old version's startup
//! created, which the supervisor hands over to the held server ([`hand_over`]) to take
//! at the same numbers.
//!
//! The go travels on a SOCK_SEQPACKET socketpair: one packet of JSON ([`Go`]), then the
//! descriptors, [`FDS_PER_PACKET`] at most per packet, in the order of [`Go::fds`]. The
//! launching end closed before a go (the update refused, failed or was killed): the
//! supervisor exits without launching anything.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// What the staged supervisor waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Go {
    /// `UpdateLaunch::heap_avoid` as the paused old version has it: the server launched
    /// ahead was placed by the preflight's, which must be the same.
    pub heap_avoid: String,
    /// `UpdateLaunch::stack_strings`, checked the same way.
    pub stack_strings: Option<u64>,
    /// The number each descriptor that follows takes in the server.
    pub fds: Vec<RawFd>,
}

/// The kernel's SCM_MAX_FD is 253.
pub const FDS_PER_PACKET: usize = 250;

/// The largest go packet: a few hundred bytes of slots and descriptor numbers in practice.
const MAX_GO: usize = 1 << 20;

/// A new pair of ends, both close-on-exec: (the launcher's, the supervisor's).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    crate::scm_rights::pair()
}

/// Send the go with `fds` (copies travel; the caller keeps its own), one number of
/// `go.fds` each, in order.
pub fn send(end: &impl AsRawFd, go: &Go, fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() != go.fds.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "one descriptor per number"));
    }
    let text = serde_json::to_vec(go).map_err(std::io::Error::from)?;
    send_packet(end, &text, &[])?;
    for chunk in fds.chunks(FDS_PER_PACKET) {
        send_packet(end, b"+", chunk)?;
    }
    Ok(())
}

/// Wait for the go (blocking); its descriptors come back close-on-exec, in the order of
/// [`Go::fds`]. An error when the launcher closed its end first.
pub fn receive(end: &impl AsRawFd) -> std::io::Result<(Go, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_GO];
    let (n, stray) = receive_packet(end, &mut buf)?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the update ended before its go"));
    }
    drop(stray);
    let go: Go = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::from)?;
    let mut fds = Vec::with_capacity(go.fds.len());
    while fds.len() < go.fds.len() {
        let (n, more) = receive_packet(end, &mut buf)?;
        if n == 0 && more.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the update ended after {} of its {} descriptors", fds.len(), go.fds.len()),
            ));
        }
        fds.extend(more);
    }
    if fds.len() != go.fds.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} descriptors for {} numbers", fds.len(), go.fds.len()),
        ));
    }
    Ok((go, fds))
}

/// Forward the go's descriptors to the server held in its runtime's constructor
/// (`runtime/src/held_launch.rs` reads them): one packet with the count and the number
/// each takes (little-endian u32, then i32 each), then the descriptors, in that order,
/// [`FDS_PER_PACKET`] at most per packet.
pub fn hand_over(end: &impl AsRawFd, targets: &[RawFd], fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() != targets.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "one descriptor per number"));
    }
    let mut head = Vec::with_capacity(4 + 4 * targets.len());
    head.extend_from_slice(&(targets.len() as u32).to_le_bytes());
    for t in targets {
        head.extend_from_slice(&t.to_le_bytes());
    }
    send_packet(end, &head, &[])?;
    for chunk in fds.chunks(FDS_PER_PACKET) {
        send_packet(end, b"+", chunk)?;
    }
    Ok(())
}

fn send_packet(end: &impl AsRawFd, payload: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    crate::scm_rights::send(end.as_raw_fd(), payload, fds, 0)
}

/// One packet into `buf`: its length (0 at end of file) and its descriptors.
fn receive_packet(end: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let packet = crate::scm_rights::receive(end.as_raw_fd(), buf, FDS_PER_PACKET, 0)?;
    if packet.truncated {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "descriptors were cut off"));
    }
    Ok((packet.len, packet.fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd};

    fn inode(fd: impl AsFd) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap()).metadata().unwrap().ino()
    }

    #[test]
    fn the_go_arrives_with_its_descriptors_in_order_across_packets() {
        let (launcher, supervisor) = pair().unwrap();
        let files: Vec<std::fs::File> = (0..FDS_PER_PACKET + 3).map(|_| tempfile_like()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let go = Go {
            heap_avoid: "0x100000000000".into(),
            stack_strings: Some(4242),
            fds: (0..raw.len() as i32).map(|i| 1000 + i).collect(),
        };
        let sent = go.clone();
        let t = std::thread::spawn(move || send(&launcher, &sent, &raw));
        let (got, fds) = receive(&supervisor).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(got, go);
        assert_eq!(fds.len(), files.len());
        for (f, r) in files.iter().zip(&fds) {
            assert_eq!(inode(f), inode(r), "the descriptors keep their order");
        }
    }

    #[test]
    fn a_launcher_that_goes_away_before_the_go_is_an_error_not_a_hang() {
        let (launcher, supervisor) = pair().unwrap();
        drop(launcher);
        let e = receive(&supervisor).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    /// A distinct open file each time (a memfd: no file system needed).
    fn tempfile_like() -> std::fs::File {
        // SAFETY: memfd_create with a static name; the descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"staging-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
