//! The systemd notification protocol (sd_notify(3)): datagrams of `KEY=VALUE` lines to the
//! Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a
//! leading `@`). `mcr run` under a `Type=notify` unit says when the server completed its
//! startup and which version runs; the server itself never sees the variable (the
//! supervisor removes it from the server's environment): a server that notified by itself
//! would tell systemd about a process that is not the unit's main one, and would do so
//! again at every live update's replayed startup.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for the processes of a notify unit.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names; `None` when it is not set (not run by systemd).
    pub fn from_env() -> Option<io::Result<Notifier>> {
        let name = std::env::var(NOTIFY_SOCKET).ok().filter(|n| !n.is_empty())?;
        Some(Notifier::to(&name))
    }

    /// The socket `name`: a path, or `@NAME` for an abstract one.
    pub fn to(name: &str) -> io::Result<Notifier> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{NOTIFY_SOCKET}={name} is neither an absolute path nor an abstract name (@…)"),
                ))
            }
        };
        Ok(Notifier { socket: UnixDatagram::unbound()?, addr })
    }

    /// Send `state`: newline-separated `KEY=VALUE` assignments (`READY=1`, `STATUS=…`).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }
}

/// A `STATUS=` value: one line (the protocol separates assignments by newlines).
pub fn status_line(text: &str) -> String {
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn received(rx: &UnixDatagram) -> String {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let path = std::env::temp_dir().join(format!("mcr-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::to(path.to_str().unwrap()).unwrap().send("READY=1\nSTATUS=up").unwrap();
        assert_eq!(received(&rx), "READY=1\nSTATUS=up");
        std::fs::remove_file(&path).unwrap();

        let name = format!("mcr-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::to(&format!("@{name}")).unwrap().send("STATUS=v2").unwrap();
        assert_eq!(received(&rx), "STATUS=v2");
    }

    #[test]
    fn a_relative_name_is_refused() {
        assert!(Notifier::to("run/notify").is_err());
        assert_eq!(status_line("a\nb"), "a b");
    }
}
