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
use crate::version::HostPids;
use mcr_client::ClientError;
use mcr_protocol::{EpollRegistration, ImportedFd, RuntimeCommandKind};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    import_translating(old_host, fds, target, moving, &StartupSockets::new())
}

/// [`import`], except that a descriptor `instead` names is the new version's counterpart
/// of the startup socket it is ([`startup_socket_counterparts`]), not the old socket.
pub(crate) fn import_translating(
    old_host: i32,
    fds: &[i32],
    target: &mut NewProcess,
    moving: Moving,
    instead: &StartupSockets,
) -> Result<(), DescriptorError> {
    let pidfd =
        mcr_supervisor::pidfd::open(old_host).map_err(|source| DescriptorError::OpenProcess { old_host, source })?;
    let mut copies = Vec::new();
    let mut targets = Vec::new();
    let mounts = (moving == Moving::Descriptors).then(|| mcr_procfs::mounts::read(old_host).unwrap_or_default());
    for &fd in fds {
        let taken = match instead.get(&fd) {
            Some(&(new_host, n)) => mcr_supervisor::pidfd::open(new_host)
                .and_then(|new_pidfd| mcr_supervisor::pidfd::take(&new_pidfd, n))
                .map_err(|source| DescriptorError::Take { fd: n, old_host: new_host, source })?,
            None => mcr_supervisor::pidfd::take(&pidfd, fd).map_err(|source| DescriptorError::Take {
                fd,
                old_host,
                source,
            })?,
        };
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

/// For one old process, its descriptors made after startup that are a socket an old
/// process's startup made: fd → (host PID, number) of the new version's counterpart.
pub(crate) type StartupSockets = BTreeMap<i32, (i32, i32)>;

/// For each old process (namespace PID) of `old` (its descriptors made after startup:
/// `post_startup`), its descriptors that are the same socket as one a startup of the old
/// version made (fd n of process q, not made after startup), whose number in q's
/// counterpart in `new` holds the socket the new version's startup made in its place: that
/// one is what the new process gets, not the old socket. A socket received after startup
/// (nginx's master passes each worker the channel of the worker it spawned next) or
/// dup'ed from a startup one is the new version's own then, and works as it did: the old
/// one's peer goes with the old version.
pub(crate) fn startup_socket_counterparts(
    old: &HostPids,
    new: &HostPids,
    post_startup: &BTreeMap<i32, Vec<i32>>,
) -> BTreeMap<i32, StartupSockets> {
    let sockets = |host: i32| -> Vec<(i32, u64)> {
        mcr_procfs::fd::list_with_targets(host)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(fd, target)| Some((fd, socket_inode(&target)?)))
            .collect()
    };
    let old_sockets: BTreeMap<i32, Vec<(i32, u64)>> = old.iter().map(|(&pid, &host)| (pid, sockets(host))).collect();
    let made_at_startup = |pid: i32, fd: i32| post_startup.get(&pid).is_some_and(|after| !after.contains(&fd));
    let mut out = BTreeMap::new();
    for (&pid, after) in post_startup {
        let Some(mine) = old_sockets.get(&pid) else { continue };
        let mut instead = StartupSockets::new();
        for &(fd, inode) in mine.iter().filter(|(fd, _)| after.contains(fd)) {
            let counterpart = old_sockets.iter().find_map(|(&q, theirs)| {
                let &(n, _) = theirs.iter().find(|&&(n, i)| i == inode && made_at_startup(q, n))?;
                let &new_host = new.get(&q)?;
                let now = mcr_procfs::fd::target(new_host, n).ok().and_then(|t| socket_inode(&t.to_string_lossy()))?;
                (now != inode).then_some((new_host, n))
            });
            if let Some(c) = counterpart {
                instead.insert(fd, c);
            }
        }
        if !instead.is_empty() {
            out.insert(pid, instead);
        }
    }
    out
}

/// What the update knows of one end of a Unix socket of one version, for
/// [`drops_replayed_messages`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SocketEnd {
    pub inode: u64,
    /// Its peer (the process that made the pair, or connected) is a process of its version.
    pub peer_in_version: bool,
    /// Bytes waiting to be read in it; None: not a connected Unix socket (a listener, or
    /// the kernel would not say).
    pub queued: Option<u32>,
}

/// Whether what waits in `new`, a Unix socket of the new version at the number where the
/// old process has `old`, is messages its startup sent that the old process already read
/// after its startup, and must go. Both are their version's own (re-created by the new
/// version's startup, not moved: a different object; the peer within the version), and
/// the old one has nothing left to read: everything the old startup sent into it was read
/// after startup, and what that changed moved with the state. The new version's startup
/// sent the same again, and read after the commit it would act twice (nginx's master
/// passes each worker the channel of the worker it spawned next: read again, the worker
/// kept one more descriptor per update).
pub(crate) fn drops_replayed_messages(old: SocketEnd, new: SocketEnd) -> bool {
    old.inode != new.inode
        && old.peer_in_version
        && new.peer_in_version
        && old.queued == Some(0)
        && new.queued.is_some_and(|n| n > 0)
}

/// Drop, in every process of the new version `new` (old version: `old`; namespace PID →
/// host PID), the messages [`drops_replayed_messages`] names, with the descriptors they
/// carry. Before the commit, with every process of both versions parked: the old version
/// is only looked at, and a rolled-back new version goes whole. Returns how many sockets
/// had such messages.
pub(crate) fn drop_replayed_messages(old: &HostPids, new: &HostPids) -> usize {
    let old_hosts: Vec<i32> = old.values().copied().collect();
    let new_hosts: Vec<i32> = new.values().copied().collect();
    let mut dropped = 0;
    for (pid, &new_host) in new {
        let Some(&old_host) = old.get(pid) else { continue };
        let (Ok(new_pidfd), Ok(old_pidfd)) =
            (mcr_supervisor::pidfd::open(new_host), mcr_supervisor::pidfd::open(old_host))
        else {
            continue;
        };
        for (fd, target) in mcr_procfs::fd::list_with_targets(new_host).unwrap_or_default() {
            let Some(new_inode) = socket_inode(&target) else { continue };
            let Some(old_inode) =
                mcr_procfs::fd::target(old_host, fd).ok().and_then(|t| socket_inode(&t.to_string_lossy()))
            else {
                continue;
            };
            let (Ok(new_copy), Ok(old_copy)) =
                (mcr_supervisor::pidfd::take(&new_pidfd, fd), mcr_supervisor::pidfd::take(&old_pidfd, fd))
            else {
                continue;
            };
            let end = |copy: &OwnedFd, inode: u64, hosts: &[i32]| SocketEnd {
                inode,
                peer_in_version: peer_credentials(copy).is_ok_and(|c| hosts.contains(&c.pid)),
                queued: unix_queued(copy),
            };
            let (o, n) = (end(&old_copy, old_inode, &old_hosts), end(&new_copy, new_inode, &new_hosts));
            if drops_replayed_messages(o, n) {
                discard_queued(&new_copy);
                dropped += 1;
            }
        }
    }
    dropped
}

/// The inode of a descriptor whose link in /proc reads `socket:[N]`.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Bytes waiting to be read in `sock` when it is a connected Unix socket.
fn unix_queued(sock: &OwnedFd) -> Option<u32> {
    let int_option = |name: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, a live local of that size.
        let r = unsafe {
            libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, name, (&mut v as *mut libc::c_int).cast(), &mut len)
        };
        (r == 0).then_some(v)
    };
    if int_option(libc::SO_DOMAIN)? != libc::AF_UNIX || int_option(libc::SO_ACCEPTCONN)? != 0 {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `queued`, a live local.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut queued as *mut libc::c_int) };
    (r == 0).then(|| queued.max(0) as u32)
}

/// Read and throw away everything waiting in `sock`, closing the descriptors that came
/// with it (bounded: a peer that keeps sending is not followed).
fn discard_queued(sock: &OwnedFd) {
    let mut data = vec![0u8; 64 * 1024];
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * std::mem::size_of::<i32>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    for _ in 0..DISCARD_AT_MOST_MESSAGES {
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        // SAFETY: msghdr is plain data, valid zeroed; it then points at live locals.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: recvmsg writes into the buffers `msg` describes, all live and of the
        // sizes given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n <= 0 {
            return;
        }
        // SAFETY: walking the control messages recvmsg wrote, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let fds = libc::CMSG_DATA(c) as *const i32;
                    for i in 0..bytes / std::mem::size_of::<i32>() {
                        // Ours now: the kernel installed it in this process for us.
                        drop(OwnedFd::from_raw_fd(fds.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
}

/// The kernel's limit of descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
const MAX_FDS_PER_MESSAGE: usize = 253;
/// How many messages [`discard_queued`] reads at most from one socket.
const DISCARD_AT_MOST_MESSAGES: usize = 10_000;

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

    fn end(inode: u64, peer_in_version: bool, queued: Option<u32>) -> SocketEnd {
        SocketEnd { inode, peer_in_version, queued }
    }

    #[test]
    fn messages_the_old_process_read_after_startup_are_dropped_from_the_new_one() {
        // nginx's worker channel: the old worker read the master's startup message.
        assert!(drops_replayed_messages(end(10, true, Some(0)), end(20, true, Some(16))));
        assert!(!drops_replayed_messages(end(10, true, Some(0)), end(20, true, Some(0))), "nothing waits");
        assert!(
            !drops_replayed_messages(end(10, true, Some(4)), end(20, true, Some(16))),
            "the old process has not read everything: which part it read is not known"
        );
        assert!(!drops_replayed_messages(end(10, true, Some(0)), end(10, true, Some(16))), "moved: the same socket");
        assert!(
            !drops_replayed_messages(end(10, true, Some(0)), end(20, false, Some(16))),
            "a peer outside the version (a server it connected to) sent it: the new version's own"
        );
        assert!(!drops_replayed_messages(end(10, false, Some(0)), end(20, true, Some(16))));
        assert!(!drops_replayed_messages(end(10, true, None), end(20, true, Some(16))), "a listener, say");
    }
}
