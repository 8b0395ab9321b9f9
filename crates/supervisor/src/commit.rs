//! Update, new version: the commit, run by this supervisor from start to end once the
//! update asks for it, and the lifeline to the update that launched it. The protocol and
//! its failure cases are in `crates/update/README.md` ("The commit"); the decisions are
//! `handover::NewSide`'s.

use crate::handover::NewAction;
use crate::init_link::Message;
use crate::lines::Lines;
use crate::state::State;
use mcr_protocol::{test_hook, InstanceFiles, Reown, Request, Response, RuntimeCommandKind, RuntimeReply};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long the old version may take to exit once retired, and to release the instance
/// lock when it died.
const OLD_GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watch the update's end of the lifeline (the launch report pipe, whose only reader is
/// the update): when it closes before the commit, this version ends.
pub async fn watch_lifeline(state: State, report: OwnedFd) {
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    // A pipe's write end polls as an error once no reader is left.
    // SAFETY: the AsyncFd owns `report` (an OwnedFd) for its whole life, so the descriptor
    // stays open and refers to the same pipe until the AsyncFd is dropped.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(report, Interest::ERROR) }) else { return };
    if fd.ready(Interest::ERROR).await.is_err() {
        return;
    }
    let action = match state.lock().new_side.as_mut() {
        Some(side) => side.lifeline_lost(),
        None => NewAction::Nothing,
    };
    if action == NewAction::Abandon {
        abandon(&state, "the update that started this new version went away before its commit");
    }
}

/// End this version: kill its processes (the supervisor exits once they are gone, removing
/// its files).
fn abandon(state: &State, why: &str) {
    eprintln!("mcr: {why}; ending the new version");
    for p in state.processes() {
        // SAFETY: kill(2) to a process of our instance.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
}

/// The commit: take the instance over from the old version, retire it, resume. `expected`:
/// the processes the update moved the state into (each must be alive). Answers only once
/// past the commit point, or with why it stopped before it.
pub async fn commit(state: &State, expected: &[i32], reown: &[Reown]) -> Response {
    let files = {
        let mut g = state.lock();
        let begun = match g.new_side.as_mut() {
            Some(side) => side.begin_commit(),
            None => Err("this supervisor is not an update's new version"),
        };
        match (begun, g.files.clone(), g.final_files.clone()) {
            (Ok(()), Some(current), Some(target)) => Ok((current, target)),
            (Err(why), ..) => Err(why.to_string()),
            _ => Err("this supervisor is not an update's new version".to_string()),
        }
    };
    let outcome = match files {
        Ok((current, target)) => take_over(state, expected, reown, &current, &target).await,
        Err(why) => return Response::Error { message: why },
    };
    match outcome {
        Ok(()) => Response::Ok,
        Err(message) => {
            state.tell_init(&Message::CommitAborted, &[]);
            let action = state.lock().new_side.as_mut().map(|s| s.abort_commit());
            if action == Some(NewAction::Abandon) {
                abandon(state, &format!("the commit failed ({message}) and the update that asked for it is gone"));
            }
            Response::Error { message }
        }
    }
}

/// This version can go past the commit point: not exiting, every process the state moved
/// into alive and registered.
fn ready(state: &State, expected: &[i32]) -> Result<(), String> {
    let alive: Vec<i32> = state.processes().iter().map(|p| p.pid).collect();
    let g = state.lock();
    if g.ending {
        return Err("the new version is exiting (its processes are gone)".into());
    }
    if let Some(pid) = expected.iter().find(|p| !alive.contains(p) || !g.procs.contains_key(p)) {
        return Err(format!("process {pid} of the new version died"));
    }
    if alive.is_empty() {
        return Err("the new version has no process left".into());
    }
    Ok(())
}

async fn take_over(
    state: &State,
    expected: &[i32],
    reown: &[Reown],
    current: &InstanceFiles,
    target: &InstanceFiles,
) -> Result<(), String> {
    ready(state, expected)?;
    // The link to the old version: the handover on it, then the commit point. Without
    // one the old version is gone (its socket has no listener), with its processes.
    let mut link = Link::connect(&target.socket).await;
    let mut old_pid: Option<OwnedFd> = None;
    let mut old_init: Option<OwnedFd> = None;
    let mut lock: Option<File> = None;
    if let Some(l) = link.as_mut() {
        match l.ask(&Request::Handover).await {
            Some(Response::HandedOver { lock_fd, init_fd }) => {
                old_pid = l.peer.take();
                old_init = old_pid.as_ref().zip(init_fd).and_then(|(p, fd)| crate::pidfd::take(p, fd).ok());
                // The same open lock as the old version's (a copy of its descriptor): the
                // name is never free, whoever of the two exits first.
                lock = old_pid
                    .as_ref()
                    .and_then(|p| crate::pidfd::take(p, lock_fd).ok())
                    .map(File::from)
                    .filter(|f| same_file(f, &target.lock));
            }
            Some(Response::Error { message }) => {
                return Err(format!("the old version refused the handover: {message}"))
            }
            Some(other) => return Err(format!("unexpected answer to the handover: {other:?}")),
            None => link = None,
        }
    }
    if link.is_none() {
        lock = Some(old_gone_lock(state, target).await?);
    }
    // The name: clients of the instance reach this version from now on, while the old one
    // stays intact and parked (it takes the name back if this goes no further).
    std::fs::rename(&current.socket, &target.socket)
        .map_err(|e| format!("cannot move the control socket to {}: {e}", target.socket.display()))?;
    pause(state, test_hook::point::COMMITTING).await;
    ready(state, expected)?;
    // Our init first: should this supervisor die from here on, the init learns from the
    // old version's init whether the commit point was passed.
    if state.init_link.is_some() {
        let fds: Vec<i32> = lock.iter().map(|l| l.as_raw_fd()).chain(old_init.iter().map(|p| p.as_raw_fd())).collect();
        if !state.tell_init(&Message::Committing { name: target.name.clone() }, &fds) {
            return Err("cannot tell this version's init about the commit".into());
        }
    }
    // The old version retires (parked for good unless this version fails before the
    // release); then, this version still whole, the commit point: the release.
    for (request, what) in [(Request::Retire, "retire"), (Request::Release, "release")] {
        if matches!(request, Request::Release) {
            pause(state, test_hook::point::RETIRING).await;
            // A process that died meanwhile: give up, and the old version (whose link
            // closes) serves again with all its state.
            ready(state, expected)?;
        }
        let Some(l) = link.as_mut() else { break };
        match l.ask(&request).await {
            Some(Response::Ok) => {}
            Some(Response::Error { message }) => return Err(format!("the old version refused to {what}: {message}")),
            Some(other) => return Err(format!("unexpected answer to the {what}: {other:?}")),
            // It died: this version holds all the state and the name.
            None if old_died(&old_pid, &old_init, &mut lock, target).await && update_alive(state) => link = None,
            None => return Err(format!("the old version did not answer the {what}")),
        }
    }
    committed(state, reown, current, target, lock, link).await;
    Ok(())
}

/// The old version is gone (it died before the commit: its processes died with it, the
/// state is all here). Commit without it only while the update that asked lives: had the
/// update died, the old version might have resumed and served before dying, and this
/// version's state would be stale.
async fn old_gone_lock(state: &State, target: &InstanceFiles) -> Result<File, String> {
    if !update_alive(state) {
        return Err("the old version is gone, and so is the update".into());
    }
    let t = Instant::now();
    loop {
        match target.acquire() {
            Ok(l) => return Ok(l),
            Err(e) if t.elapsed() > OLD_GONE_TIMEOUT => {
                return Err(format!("the old version cannot be reached and holds the instance lock: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn update_alive(state: &State) -> bool {
    state.lock().new_side.as_ref().is_some_and(|s| s.update_alive())
}

/// Whether the old version is gone (its link closed without an answer). With an init
/// (PID 1 of its namespace), the version is gone when the init is: a supervisor that dies
/// leaves the version to another; without one, when the supervisor exited.
async fn old_died(
    old_pid: &Option<OwnedFd>,
    old_init: &Option<OwnedFd>,
    lock: &mut Option<File>,
    target: &InstanceFiles,
) -> bool {
    if let Some(init) = old_init {
        let t = Instant::now();
        while !crate::pidfd::exited(init) && t.elapsed() < OLD_GONE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        return crate::pidfd::exited(init);
    }
    match old_pid {
        Some(p) => {
            let t = Instant::now();
            while !crate::pidfd::exited(p) && t.elapsed() < OLD_GONE_TIMEOUT {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            crate::pidfd::exited(p)
        }
        None => match flock_only(target) {
            Ok(l) => {
                *lock = Some(l);
                true
            }
            Err(_) => false,
        },
    }
}

/// Past the commit point: become the instance, resume, and wait (bounded) for the old
/// version to be gone.
async fn committed(
    state: &State,
    reown: &[Reown],
    current: &InstanceFiles,
    target: &InstanceFiles,
    lock: Option<File>,
    mut link: Option<Link>,
) {
    {
        let mut g = state.lock();
        if let Some(side) = g.new_side.as_mut() {
            side.committed();
        }
        g.name = target.name.clone();
        g.files = Some(target.clone());
        g.final_files = None;
        if lock.is_some() {
            g.lock = lock;
        }
    }
    // A rename needs no space: this works on a full disk.
    if std::fs::rename(&current.pid, &target.pid).is_err() {
        let _ = mcr_protocol::instance::write_private(&target.pid, format!("{}\n", state.supervisor_pid).as_bytes());
    }
    let _ = std::fs::remove_file(&current.lock);
    if let Some(replay) = &state.replay_log {
        let _ = std::fs::remove_file(replay);
    }
    pause(state, test_hook::point::COMMITTED).await;
    // Until the init reads this, it would learn the same from the old version's init
    // having exited (the fault tests kill this supervisor at the pause just above).
    state.tell_init(&Message::Committed, &[]);
    give_owners(reown);
    share_adopted_heaps(state).await;
    crate::control::resume_all(state, crate::control::ASK_TIMEOUT).await;
    if let Some(l) = link.as_mut() {
        l.closed(OLD_GONE_TIMEOUT).await;
    }
    // Without a copy of its lock (a kernel without SO_PEERPIDFD), take it once it is free.
    if state.lock().lock.as_ref().is_none_or(|l| !same_file(l, &target.lock)) {
        let t = Instant::now();
        loop {
            if let Ok(l) = flock_only(target) {
                state.lock().lock = Some(l);
                break;
            }
            if t.elapsed() > OLD_GONE_TIMEOUT {
                eprintln!("mcr: warning: could not take the instance lock {}", target.lock.display());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Past the commit point, before anything resumes: the descriptors the old version's
/// processes owned (F_SETOWN: SIGIO, SIGURG) get their counterparts as owners. Nothing
/// can roll back now: a failure is written to the instance log, and that descriptor's
/// signals go nowhere, as they would once the old process exits.
fn give_owners(reown: &[Reown]) {
    use mcr_protocol::owner::{OwnerEx, F_SETOWN_EX};
    for r in reown {
        let copy = crate::pidfd::open(r.pid).and_then(|p| crate::pidfd::take(&p, r.fd));
        let done = copy.and_then(|fd| {
            let owner = OwnerEx { kind: r.kind, pid: r.owner };
            // SAFETY: F_SETOWN_EX reads one struct f_owner_ex (OwnerEx is its layout) at
            // the pointer, a live local.
            match unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner as *const OwnerEx) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
        if let Err(e) = done {
            eprintln!(
                "mcr: warning: process {} fd {}: cannot make {} its owner (F_SETOWN_EX): {e}",
                r.pid, r.fd, r.owner
            );
        }
    }
}

/// How long a process may take to write its adopted heap back (memory speed: a second per
/// gigabyte or so of pages it changed).
const SHARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Past the commit point, before anything resumes (the old processes are killed, and a
/// killed process never runs again): each process writes what it changed in the heap
/// segments it adopted copy-on-write from the old memfds back into them and maps them
/// shared, so the memory is held once and the next update maps it again
/// (`ShareAdoptedHeap`). Nothing can roll back now: a failure is a warning, and the
/// process keeps its private mapping, which is correct.
async fn share_adopted_heaps(state: &State) {
    let pids: Vec<i32> = state.lock().procs.keys().copied().collect();
    let asked = crate::control::ask_all(state, &pids, RuntimeCommandKind::ShareAdoptedHeap, SHARE_TIMEOUT).await;
    for (pid, reply) in asked {
        let why = match reply {
            Ok(RuntimeReply::Done) => continue,
            Ok(RuntimeReply::Error { message }) => message,
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.to_string(),
        };
        eprintln!("mcr: warning: process {pid}: its adopted heap stays copy-on-write over the old version's: {why}");
    }
}

/// The test hook, in this supervisor: hold here while the marker exists.
async fn pause(state: &State, point: &str) {
    let Some(marker) = test_hook::marker(point) else { return };
    if !test_hook::announce(&marker, state.supervisor_pid) {
        return;
    }
    let t = Instant::now();
    while marker.exists() && t.elapsed() < test_hook::LIMIT {
        tokio::time::sleep(test_hook::POLL).await;
    }
}

fn same_file(f: &File, path: &std::path::Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The instance lock, taken without removing anything (the socket there is ours).
fn flock_only(target: &InstanceFiles) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&target.lock)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// This supervisor's connection to the old version's control socket.
struct Link {
    lines: Lines<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The old supervisor (the process listening on the socket), whatever its namespace.
    peer: Option<OwnedFd>,
}

impl Link {
    async fn connect(path: &std::path::Path) -> Option<Link> {
        let stream = UnixStream::connect(path).await.ok()?;
        let peer = crate::pidfd::of_peer(&stream).ok();
        let (rd, writer) = stream.into_split();
        Some(Link { lines: Lines::new(rd), writer, peer })
    }

    /// One request and its answer; `None` when the old version went away.
    async fn ask(&mut self, req: &Request) -> Option<Response> {
        self.writer.write_all(&mcr_protocol::encode_line(req)).await.ok()?;
        let line = self.lines.next_line().await.ok()??;
        mcr_protocol::decode_line(line.as_bytes()).ok()
    }

    /// Wait until the old version closes it (it exited), at most `timeout`.
    async fn closed(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async { while let Ok(Some(_)) = self.lines.next_line().await {} }).await;
    }
}
