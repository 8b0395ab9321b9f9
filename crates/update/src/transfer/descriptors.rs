//! Moving descriptors (client connections, and the others made after startup) from an
//! old process into a new one: copied out of the old
//! process (pidfd_getfd) and handed to the new process's runtime over an abstract Unix
//! socket (SCM_RIGHTS), which installs each at its old number; epoll registrations follow.
//!
//! Any local user can connect to an abstract socket (its name is listed in
//! /proc/net/unix): the descriptors go only to a peer whose credentials, recorded by the
//! kernel at connect time, are those of the process they are meant for; anyone else is
//! turned away and the wait goes on.

use super::runtime::NewProcess;
use mcr_client::ClientError;
use mcr_protocol::{EpollRegistration, ImportedFd, RuntimeCommandKind};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("cannot open old process {old_host}")]
    OpenProcess {
        old_host: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take fd {fd} of old process {old_host}")]
    Take {
        fd: i32,
        old_host: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open fd {fd} of old process {old_host} ({path}) again in the new version")]
    OpenAgain {
        fd: i32,
        old_host: i32,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the descriptor socket")]
    Socket(#[source] std::io::Error),
    #[error("the new process never fetched the descriptors")]
    NeverFetched,
    #[error("sending descriptors")]
    Send(#[source] std::io::Error),
    #[error("the descriptor sender panicked")]
    SenderPanicked,
    /// The new process's runtime could not install them.
    #[error(transparent)]
    Import(#[from] ClientError),
}

/// How long the new process's runtime may take to fetch the descriptors once asked.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the descriptors an [`import`] moves are to the new process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Moving {
    /// Client connections, with their state.
    Connections,
    /// Client connections the program takes as new ones (their state stays behind).
    Adopted,
    /// Other descriptors the old version made after startup.
    Descriptors,
}

/// Move descriptors `fds` of old process `old_host` into `target` at the same numbers,
/// with their close-on-exec flags (the rest of their file status is the open file
/// description's, which they share with the old ones).
pub(crate) fn import(
    old_host: i32,
    fds: &[i32],
    target: &mut NewProcess,
    moving: Moving,
) -> Result<(), DescriptorError> {
    let pidfd =
        mcr_supervisor::pidfd::open(old_host).map_err(|source| DescriptorError::OpenProcess { old_host, source })?;
    let mut copies = Vec::new();
    let mut targets = Vec::new();
    let mounts = (moving == Moving::Descriptors).then(|| mcr_procfs::mounts::read(old_host).unwrap_or_default());
    for &fd in fds {
        let taken =
            mcr_supervisor::pidfd::take(&pidfd, fd).map_err(|source| DescriptorError::Take { fd, old_host, source })?;
        // Connections are sockets: only other descriptors can be files on a mount.
        let again = match &mounts {
            Some(mounts) => {
                let info = mcr_procfs::fd::info(old_host, fd).unwrap_or_default();
                let shown = mcr_procfs::fd::target(old_host, fd).map(|t| t.display().to_string()).unwrap_or_default();
                super::reopen::path_to_open_again(&shown, &info, mounts)
                    .map(|path| {
                        super::reopen::open_again(&info, &path, &taken, target.host_pid)
                            .map_err(|source| DescriptorError::OpenAgain { fd, old_host, path, source })
                    })
                    .transpose()?
            }
            None => None,
        };
        copies.push(again.unwrap_or(taken));
        targets.push(ImportedFd { target: fd, cloexec: close_on_exec(old_host, fd) });
    }
    let (adopt, plain) = (moving == Moving::Adopted, moving == Moving::Descriptors);
    hand_over(old_host, copies, target, |socket| RuntimeCommandKind::ImportFds { socket, targets, adopt, plain })
}

/// Send descriptors `copies` (taken from old process `old_host`) to the new process
/// `target` while it runs `command`, which names the abstract socket to fetch them from.
pub(crate) fn hand_over(
    old_host: i32,
    copies: Vec<OwnedFd>,
    target: &mut NewProcess,
    command: impl FnOnce(String) -> RuntimeCommandKind,
) -> Result<(), DescriptorError> {
    let name = format!("mcr-transfer/{}/{}/{:016x}", std::process::id(), old_host, nonce());
    let listener = abstract_listener(&name).map_err(DescriptorError::Socket)?;
    let expected = target.host_pid;
    listener.set_nonblocking(true).map_err(DescriptorError::Socket)?;
    let gave_up = Arc::new(AtomicBool::new(false));
    let stop = gave_up.clone();
    let someone_connected = Arc::new(AtomicBool::new(false));
    let accepted_one = someone_connected.clone();
    let sender = std::thread::spawn(move || -> Result<(), DescriptorError> {
        // The runtime connects as soon as it gets the request; stop waiting if it
        // answered without connecting (an error), or after a bound.
        let t0 = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => {
                    accepted_one.store(true, Ordering::SeqCst);
                    match peer_credentials(&c) {
                        Ok(cred) if cred.pid == expected => break c,
                        Ok(cred) => eprintln!(
                            "mcr: warning: turned away a connection to the descriptor socket from pid {} (uid {}): \
                             only process {expected} of the new version may take the connections",
                            cred.pid, cred.uid
                        ),
                        Err(e) => return Err(DescriptorError::Socket(e)),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::SeqCst) || t0.elapsed() > FETCH_TIMEOUT {
                        return Err(DescriptorError::NeverFetched);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(DescriptorError::Socket(e)),
            }
        };
        conn.set_nonblocking(false).map_err(DescriptorError::Socket)?;
        for chunk in copies.chunks(253) {
            send_fds(&conn, chunk).map_err(DescriptorError::Send)?;
        }
        Ok(())
    });
    wait_for_intruder(&someone_connected, &sender);
    let r = target.runtime(command(name));
    gave_up.store(true, Ordering::SeqCst);
    let sent = sender.join().map_err(|_| DescriptorError::SenderPanicked)?;
    r?;
    sent
}

/// Longest wait [`wait_for_intruder`] may be asked for.
const INTRUDER_WAIT_AT_MOST: Duration = Duration::from_secs(10);

/// Tests only (`env::TEST_TRANSFER_WAIT_FOR_INTRUDER_MS`): before the new process is asked
/// to connect, wait until the sender has accepted someone else's connection (or has
/// stopped, or the wait is over), so the intruder is the first peer it checks.
fn wait_for_intruder(someone_connected: &AtomicBool, sender: &std::thread::JoinHandle<Result<(), DescriptorError>>) {
    let wait = std::env::var(mcr_protocol::env::TEST_TRANSFER_WAIT_FOR_INTRUDER_MS)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms).min(INTRUDER_WAIT_AT_MOST));
    let t0 = Instant::now();
    while t0.elapsed() < wait && !someone_connected.load(Ordering::SeqCst) && !sender.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether descriptor `fd` of process `host_pid` is close-on-exec (its fdinfo flags).
fn close_on_exec(host_pid: i32, fd: i32) -> bool {
    let flags = mcr_procfs::fd::info(host_pid, fd).ok().and_then(|i| i.flags);
    flags.is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0)
}

/// The process at the other end of a connected Unix socket, as the kernel recorded it
/// when it connected (not something the peer says).
pub(super) fn peer_credentials(sock: &impl AsRawFd) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live local of that size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(cred)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// 64 random bits: another user cannot take the socket's name before mcr binds it.
fn nonce() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Unpredictable enough to avoid a collision, which is all a failure here risks.
        return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(b)
}

fn abstract_listener(name: &str) -> std::io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixListener::bind_addr(&addr)
}

fn send_fds(conn: &UnixStream, fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    // SAFETY: CMSG_SPACE/CMSG_LEN are size computations; the msghdr points at live locals.
    unsafe {
        let space = libc::CMSG_SPACE((raw.len() * 4) as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c) as *mut i32, raw.len());
        if libc::sendmsg(conn.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The epoll registrations the new process must make for descriptors `moved`, from the
/// old process's `registrations`, data relocated by `relocate`. An epoll set that itself
/// moves (`moved_sets`) keeps its registrations inside it, shared with the old process:
/// those cannot be changed before commit, so one whose data would need relocating is an
/// error (`in_moved_set`).
pub(crate) fn epoll_registrations_to_add<E>(
    registrations: Vec<EpollRegistration>,
    moved: &[i32],
    moved_sets: &[i32],
    relocate: impl Fn(u64) -> Result<u64, E>,
    in_moved_set: impl Fn(EpollRegistration) -> E,
) -> Result<Vec<EpollRegistration>, E> {
    let mut add = Vec::new();
    for r in registrations {
        if moved_sets.contains(&r.epfd) {
            if relocate(r.data)? != r.data {
                return Err(in_moved_set(r));
            }
        } else if moved.contains(&r.fd) {
            add.push(EpollRegistration { data: relocate(r.data)?, ..r });
        }
    }
    Ok(add)
}

/// The data of the registrations [`epoll_registrations_to_add`] relocates (those of the
/// descriptors `moved` and inside the sets `moved_sets`), labelled for reports, for the
/// trace to take as untyped pointers: what only the kernel points to must move too.
pub(crate) fn epoll_data_words(
    registrations: &[EpollRegistration],
    moved: &[i32],
    moved_sets: &[i32],
) -> Vec<(String, u64)> {
    registrations
        .iter()
        .filter(|r| r.data != 0 && (moved.contains(&r.fd) || moved_sets.contains(&r.epfd)))
        .map(|r| (format!("epoll data of fd {} (epoll fd {})", r.fd, r.epfd), r.data))
        .collect()
}

/// Every epoll registration of process `host`.
pub(crate) fn epoll_registrations(host: i32) -> Vec<EpollRegistration> {
    mcr_protocol::epoll_registrations(&host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(epfd: i32, fd: i32, data: u64) -> EpollRegistration {
        EpollRegistration { epfd, fd, events: 1, data }
    }

    #[test]
    fn moved_descriptors_are_registered_again_unless_their_epoll_set_moves_too() {
        // 3: the startup epoll set; 20: one made after startup, which moves.
        let regs = vec![reg(3, 7, 0x1000), reg(3, 8, 5), reg(3, 9, 6), reg(20, 21, 42), reg(20, 4, 43)];
        let relocate = |d: u64| -> Result<u64, String> { Ok(if d == 0x1000 { 0x2000 } else { d }) };
        let add = epoll_registrations_to_add(regs.clone(), &[7, 8, 20, 21], &[20], relocate, |r| format!("{r:?}"));
        assert_eq!(add, Ok(vec![reg(3, 7, 0x2000), reg(3, 8, 5)]), "9 does not move; 20's interests move inside it");
        let heap = |d: u64| -> Result<u64, String> { Ok(d + 1) };
        let err = epoll_registrations_to_add(regs, &[20], &[20], heap, |r| format!("in set {}", r.epfd));
        assert_eq!(err, Err("in set 20".to_string()), "data inside a moved set cannot be relocated");
    }

    #[test]
    fn the_data_of_the_registrations_that_move_are_words_to_trace() {
        let regs = vec![reg(3, 7, 0x1000), reg(3, 8, 0), reg(3, 9, 6), reg(20, 21, 42), reg(3, 5, 0x2000)];
        let words = epoll_data_words(&regs, &[7, 8, 20], &[20]);
        assert_eq!(
            words,
            [("epoll data of fd 7 (epoll fd 3)".to_string(), 0x1000), ("epoll data of fd 21 (epoll fd 20)".into(), 42)],
            "8's data is null; 9 and 5 stay in the old process"
        );
    }
}
