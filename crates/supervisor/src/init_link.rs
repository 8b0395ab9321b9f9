//! The link between a version's init (PID 1 of its namespace, `init`) and its supervisor:
//! a SOCK_SEQPACKET socketpair made by the init before it forks the supervisor, one
//! short text message per packet, with descriptors passed alongside (SCM_RIGHTS).
//!
//! Supervisor → init: what the init needs to keep the version alive and to start a
//! supervisor again should this one die (the runtime connections it holds copies of, the
//! main process, the commit). Init → supervisor: the processes it reaped.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// One message on the link.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Supervisor → init: a copy of the supervisor's end of process `pid`'s runtime
    /// connection (one descriptor). The init holds it so the connection outlives the
    /// supervisor.
    Hold { pid: i32 },
    /// Supervisor → init: the server's main process is now `pid` (its exit status is the
    /// version's).
    Main { pid: i32 },
    /// Supervisor → init: startup completed, in `ms`.
    Started { ms: f64 },
    /// Supervisor → init, an update's new version: about to ask the old version to retire
    /// (the commit point). Descriptors: the instance lock of `name`, then the old
    /// version's init (a pidfd) when known. If the supervisor dies from here on, the old
    /// version's init tells whether the commit point was passed: it exits once retired.
    Committing { name: String },
    /// Supervisor → init: the commit stopped before its commit point.
    CommitAborted,
    /// Supervisor → init: past the commit point, this version is the instance.
    Committed,
    /// Supervisor → init, an update's old version: retiring (sent before the commit
    /// point's answer). This version never resumes: the init ends it.
    Retired,
    /// Init → supervisor: the init reaped process `pid` (an orphan of the server), which
    /// ended with wait status `status`.
    Reaped { pid: i32, status: i32 },
}

impl Message {
    pub fn encode(&self) -> String {
        match self {
            Message::Hold { pid } => format!("hold {pid}"),
            Message::Main { pid } => format!("main {pid}"),
            Message::Started { ms } => format!("started {ms}"),
            Message::Committing { name } => format!("committing {name}"),
            Message::CommitAborted => "aborted".into(),
            Message::Committed => "committed".into(),
            Message::Retired => "retired".into(),
            Message::Reaped { pid, status } => format!("reaped {pid} {status}"),
        }
    }

    pub fn decode(text: &str) -> Option<Message> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let int = |s: &str| s.parse::<i32>().ok();
        Some(match word {
            "hold" => Message::Hold { pid: int(rest)? },
            "main" => Message::Main { pid: int(rest)? },
            "started" => Message::Started { ms: rest.parse().ok()? },
            "committing" if !rest.is_empty() => Message::Committing { name: rest.to_string() },
            "aborted" => Message::CommitAborted,
            "committed" => Message::Committed,
            "retired" => Message::Retired,
            "reaped" => {
                let (pid, status) = rest.split_once(' ')?;
                Message::Reaped { pid: int(pid)?, status: int(status)? }
            }
            _ => return None,
        })
    }
}

/// The two ends of a new link (both close-on-exec): (init's, supervisor's).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    crate::scm_rights::pair()
}

/// At most this many descriptors travel with one message.
const MAX_FDS: usize = 4;
const MAX_TEXT: usize = 512;

/// Send one message with `fds` (copies: the caller keeps its own). Never blocks long: a
/// full link (an init that stopped reading) fails the send.
pub fn send(link: &impl AsRawFd, msg: &Message, fds: &[RawFd]) -> std::io::Result<()> {
    let fds = &fds[..fds.len().min(MAX_FDS)];
    crate::scm_rights::send(link.as_raw_fd(), msg.encode().as_bytes(), fds, libc::MSG_DONTWAIT)
}

/// What a receive found.
pub enum Received {
    Message(Message, Vec<OwnedFd>),
    /// A packet that is not a message (its descriptors are closed).
    Garbled,
    /// Nothing to read now (non-blocking).
    Nothing,
    /// The other end is closed.
    Closed,
}

/// Receive one message without waiting. Descriptors arrive close-on-exec.
pub fn receive(link: &impl AsRawFd) -> Received {
    let mut text = [0u8; MAX_TEXT];
    let packet = match crate::scm_rights::receive(link.as_raw_fd(), &mut text, MAX_FDS, libc::MSG_DONTWAIT) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Received::Nothing,
        Err(_) => return Received::Closed,
    };
    if packet.len == 0 && packet.fds.is_empty() {
        return Received::Closed;
    }
    match std::str::from_utf8(&text[..packet.len]).ok().and_then(Message::decode) {
        Some(m) => Received::Message(m, packet.fds),
        None => Received::Garbled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn every_message_reads_back_as_written() {
        let all = [
            Message::Hold { pid: 7 },
            Message::Main { pid: 3 },
            Message::Started { ms: 1.25 },
            Message::Committing { name: "my store".into() },
            Message::CommitAborted,
            Message::Committed,
            Message::Retired,
            Message::Reaped { pid: 9, status: 256 },
        ];
        for m in all {
            assert_eq!(Message::decode(&m.encode()), Some(m.clone()), "{m:?}");
        }
        assert_eq!(Message::decode("hold x"), None);
        assert_eq!(Message::decode("committing "), None);
    }

    #[test]
    fn a_descriptor_travels_with_its_message() {
        let (a, b) = pair().unwrap();
        let (r, w) = {
            let mut p = [0i32; 2];
            // SAFETY: pipe writes two descriptors into a live local.
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
            // SAFETY: fresh descriptors.
            unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
        };
        send(&a, &Message::Hold { pid: 42 }, &[w.as_raw_fd()]).unwrap();
        drop(w);
        let Received::Message(m, fds) = receive(&b) else { panic!("no message") };
        assert_eq!(m, Message::Hold { pid: 42 });
        assert_eq!(fds.len(), 1);
        // The copy writes into the same pipe.
        // SAFETY: writing one byte from a live local to a descriptor we own.
        assert_eq!(unsafe { libc::write(fds[0].as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
        let mut byte = [0u8; 1];
        // SAFETY: reading one byte into a live local.
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) }, 1);
        assert!(matches!(receive(&b), Received::Nothing));
        drop(a);
        assert!(matches!(receive(&b), Received::Closed));
    }
}
