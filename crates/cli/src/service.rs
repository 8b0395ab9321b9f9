//! `mcr run` as the main process of a systemd `Type=notify` unit (`$NOTIFY_SOCKET` set):
//! it says `READY=1` once the server completed startup, and `STATUS=` with the version
//! that runs, and it stays the unit's main process for the instance's whole life, across
//! live updates (`ExecReload=mcr update …`), so that systemd neither loses the service nor
//! needs to be told of another main process.

use crate::history::Build;
use mcr_protocol::InstanceDir;
use mcr_supervisor::notify::{self, Notifier};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

pub struct Service {
    notifier: Notifier,
}

/// What a followed instance did.
enum Event {
    /// A new version took the name (its control socket was renamed over the old one's).
    Committed,
    /// No supervisor holds the instance lock any more.
    Unlocked,
}

impl Service {
    /// Under a service manager: the socket `$NOTIFY_SOCKET` names (a warning when it
    /// cannot be used).
    pub fn from_env() -> Option<Service> {
        match Notifier::from_env()? {
            Ok(notifier) => Some(Service { notifier }),
            Err(e) => {
                eprintln!("mcr: warning: cannot notify the service manager: {e}");
                None
            }
        }
    }

    fn send(&self, state: &str) {
        if let Err(e) = self.notifier.send(state) {
            eprintln!("mcr: warning: cannot notify the service manager ({}): {e}", state.replace('\n', " "));
        }
    }

    /// The server completed startup: it is ready, and this process is the one to watch.
    pub fn started(&self, dir: &InstanceDir, name: &str) {
        let status = running(dir, name).unwrap_or_else(|| format!("running '{name}'"));
        self.send(&format!("READY=1\nMAINPID={}\nSTATUS={}", std::process::id(), notify::status_line(&status)));
    }

    /// After a live update replaced the version this process launched: follow the
    /// instance (telling the manager each version that takes over) until it ends. The
    /// exit status of a version this process did not launch cannot be known: 0.
    pub fn follow(&self, dir: &InstanceDir, name: &str) -> i32 {
        // The replaced version's init, and nothing else, is this process's child now.
        std::thread::spawn(|| {
            // SAFETY: waitpid with a live local for the status.
            while unsafe { libc::waitpid(-1, &mut 0, 0) } > 0 {}
        });
        let (tx, rx) = mpsc::channel();
        if let Err(e) = watch_commits(dir, name, tx.clone()) {
            eprintln!("mcr: warning: cannot watch {} for updates: {e}", dir.path.display());
        }
        let mut said = String::new();
        // Every version's supervisor seen: the pid file a commit announces may still name
        // the version before (the systemd test saw the last one killed by systemd).
        let mut supervisors: Vec<i32> = Vec::new();
        // Read after the watch is set: a commit in between is not missed.
        let mut tell = || {
            note_supervisor(&mut supervisors, supervisor_pid(dir, name));
            match running(dir, name) {
                Some(status) if status != said => {
                    self.send(&format!("STATUS={}", notify::status_line(&status)));
                    said = status;
                }
                _ => {}
            }
        };
        loop {
            tell();
            let lock = dir.path.join(format!("{name}.lock"));
            let unlocked = tx.clone();
            std::thread::spawn(move || {
                let _ = wait_unlocked(&lock);
                let _ = unlocked.send(Event::Unlocked);
            });
            // Until the lock is free; each commit brings another version.
            while let Ok(Event::Committed) = rx.recv() {
                tell();
            }
            // A version that took the lock over after a gap (no pidfd copy of it) is the
            // instance still.
            if !live(dir, name) {
                break;
            }
        }
        // The last supervisor frees the lock as it exits, a moment before it is gone: the
        // service manager (KillMode=mixed) kills what is left of the unit once this, its
        // main process, exits, and said so in the journal ("Killing process … (mcr)").
        note_supervisor(&mut supervisors, supervisor_pid(dir, name));
        let gone = |pid: &i32| !Path::new(&format!("/proc/{pid}")).exists();
        for _ in 0..500 {
            if supervisors.iter().all(gone) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.send("STOPPING=1");
        eprintln!("mcr: '{name}' ended (its exit status is not known here after a live update: see its log)");
        0
    }
}

/// `running PROGRAM ARGS (build ID)`: the version instance `name` runs.
fn running(dir: &InstanceDir, name: &str) -> Option<String> {
    let st = mcr_client::Connection::open(dir, name).ok()?.status().ok()?;
    Some(format!("running {}", Build::running(&st).describe()))
}

/// Remember supervisor `pid`, and its parent (its namespace's init, which outlives it by
/// a moment) unless that is this process or the system's init.
fn note_supervisor(seen: &mut Vec<i32>, pid: Option<i32>) {
    let Some(pid) = pid.filter(|p| !seen.contains(p)) else { return };
    seen.push(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let parent = status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<i32>().ok());
    if let Some(p) = parent.filter(|&p| p > 1 && p != std::process::id() as i32 && !seen.contains(&p)) {
        seen.push(p);
    }
}

/// The PID of the supervisor of the version instance `name` runs (its pid file).
fn supervisor_pid(dir: &InstanceDir, name: &str) -> Option<i32> {
    let files = dir.files(name).ok()?;
    std::fs::read_to_string(&files.pid).ok()?.trim().parse().ok()
}

fn live(dir: &InstanceDir, name: &str) -> bool {
    dir.files(name).is_ok_and(|f| f.is_live())
}

/// Block until nobody holds the lock file `lock` exclusively (every version's supervisor
/// holds the same open lock, handed from one to the next at each commit).
fn wait_unlocked(lock: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(lock)?;
    loop {
        // SAFETY: flock on a descriptor `f` owns, alive for the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Send `Committed` whenever a control socket is renamed to instance `name`'s (what a
/// commit does), from a thread watching the runtime directory (inotify).
fn watch_commits(dir: &InstanceDir, name: &str, tx: mpsc::Sender<Event>) -> std::io::Result<()> {
    // SAFETY: inotify_init1 takes flags only; the descriptor is owned right below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(dir.path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path that lives across the call, on our inotify descriptor.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MOVED_TO) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let socket = format!("{name}.sock");
    std::thread::spawn(move || {
        let mut events = std::fs::File::from(fd);
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = events.read(&mut buf) {
            let committed = moved_names(&buf[..n]).any(|m| m == socket.as_bytes());
            if committed && tx.send(Event::Committed).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The names in a buffer of inotify events (struct inotify_event: wd, mask, cookie, len,
/// then `len` bytes of NUL-padded name).
fn moved_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    const HEADER: usize = 16;
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + HEADER)?;
        let len = u32::from_ne_bytes(header[12..16].try_into().ok()?) as usize;
        let name = buf.get(at + HEADER..at + HEADER + len)?;
        at += HEADER + len;
        Some(name.split(|&b| b == 0).next().unwrap_or_default())
    })
}

#[cfg(test)]
mod tests {
    use super::moved_names;

    #[test]
    fn event_names_are_read_from_the_buffer() {
        let mut buf = Vec::new();
        for name in ["k.next.sock", "k.sock"] {
            let padded = name.len().next_multiple_of(16);
            buf.extend_from_slice(&[1, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]);
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.resize(buf.len() + padded - name.len(), 0);
        }
        let names: Vec<&[u8]> = moved_names(&buf).collect();
        assert_eq!(names, [&b"k.next.sock"[..], b"k.sock"]);
    }
}
