//! Where an instance keeps its files, and how a live instance is told from a stale one.
//!
//! `<dir>/<name>.lock` is held (flock) by the supervisor for as long as it lives: a lock
//! nobody holds means the instance is dead, whatever files are left next to it.
//!
//! The directory is trusted only if nobody but its owner (the user running mcr, or root)
//! can write it: another user who could plant a symlink there would make root's mcr
//! write server output or JSON through it into any file. Every file is still opened with
//! `O_NOFOLLOW`, and mcr never removes a file that belongs to another user.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("invalid instance name {0:?}: use letters, digits, '.', '_' and '-' (at most 64, not first)")]
    InvalidName(String),
    #[error("no runtime directory: set MCR_RUNTIME_DIR or XDG_RUNTIME_DIR, or pass --runtime-dir")]
    NoRuntimeDir,
    #[error("cannot create runtime directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("instance '{name}' is already running (supervisor pid {pid})")]
    AlreadyRunning { name: String, pid: String },
    #[error("no running instance named '{name}' in {dir}")]
    NotRunning { name: String, dir: PathBuf },
    #[error("runtime directory {path} {reason}: refusing to use it (another user could plant files there); choose a directory only you can write, with --runtime-dir or MCR_RUNTIME_DIR")]
    InsecureDir { path: PathBuf, reason: String },
    #[error("permission denied: instance '{name}' in {dir} belongs to {owner}; run mcr as that user")]
    PermissionDenied { name: String, dir: PathBuf, owner: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the control socket {path} would be {len} bytes long, more than the {max} a Unix socket address holds (an update's socket, NAME.next.sock, is the longest): choose a shorter --runtime-dir or instance name")]
    SocketPathTooLong { path: PathBuf, len: usize, max: usize },
}

/// The longest path a Unix socket address holds (sun_path, less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The directory holding every instance's files.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    pub path: PathBuf,
}

/// Paths of one instance's files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceFiles {
    pub name: String,
    pub lock: PathBuf,
    pub socket: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

/// The subdirectory of an instance directory that holds prepared symbol tables: an update's
/// new version finds it next to its replay log.
pub const SYMBOL_TABLES: &str = "symbols";

pub fn validate_name(name: &str) -> Result<(), InstanceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InstanceError::InvalidName(name.to_string()))
    }
}

impl InstanceDir {
    /// `explicit`, else `$MCR_RUNTIME_DIR`, else `/run/mcr` as root, else `$XDG_RUNTIME_DIR/mcr`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self, InstanceError> {
        let path = if let Some(p) = explicit {
            p.to_path_buf()
        } else if let Some(p) = std::env::var_os(crate::env::RUNTIME_DIR).filter(|p| !p.is_empty()) {
            PathBuf::from(p)
        } else if {
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() }
        } == 0
        {
            PathBuf::from("/run/mcr")
        } else if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
            PathBuf::from(p).join("mcr")
        } else {
            return Err(InstanceError::NoRuntimeDir);
        };
        let dir = Self { path };
        if dir.path.exists() {
            dir.check_trusted()?;
        }
        Ok(dir)
    }

    pub fn create(&self) -> Result<(), InstanceError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| InstanceError::CreateDir { path: self.path.clone(), source })?;
        self.check_trusted()
    }

    /// The directory is a real directory (not a symlink), owned by this user or root, and
    /// nobody else can write it.
    pub fn check_trusted(&self) -> Result<(), InstanceError> {
        let insecure = |reason: String| InstanceError::InsecureDir { path: self.path.clone(), reason };
        let meta =
            fs::symlink_metadata(&self.path).map_err(|source| InstanceError::Io { path: self.path.clone(), source })?;
        if meta.file_type().is_symlink() {
            return Err(insecure("is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(insecure("is not a directory".into()));
        }
        let me = effective_uid();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(insecure(format!("belongs to {}, not to {}", user_name(meta.uid()), user_name(me))));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(insecure(format!("is writable by {} (mode {:o})", writers(mode), mode & 0o7777)));
        }
        Ok(())
    }

    /// Symbol tables `mcr update` prepares for the new version's processes
    /// (`mcr_callstack::SymbolCache`), shared by the directory's instances: the modules
    /// they load are mostly the same files.
    pub fn symbol_tables(&self) -> PathBuf {
        self.path.join(SYMBOL_TABLES)
    }

    pub fn files(&self, name: &str) -> Result<InstanceFiles, InstanceError> {
        validate_name(name)?;
        let p = |ext: &str| self.path.join(format!("{name}.{ext}"));
        // Refused at `mcr run`, not at the first update, whose new version's socket is
        // NAME.next.sock.
        let longest = if name.ends_with(".next") { p("sock") } else { p("next.sock") };
        let len = longest.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(InstanceError::SocketPathTooLong { path: longest, len, max: MAX_SOCKET_PATH });
        }
        Ok(InstanceFiles { name: name.to_string(), lock: p("lock"), socket: p("sock"), pid: p("pid"), log: p("log") })
    }

    /// Names of instances whose lock file exists (live or stale).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".lock").map(str::to_string))
            .filter(|n| validate_name(n).is_ok())
            .collect();
        out.sort();
        out
    }
}

/// Whether an instance's supervisor lives, as far as this user can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// No lock file, or nobody holds it.
    Dead,
    /// The lock belongs to another user and cannot be opened: nothing can be said, and
    /// nothing may be removed.
    NotOurs {
        owner: u32,
    },
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `root`, `uid 1001 (alice)`: the owner of a file, for messages.
fn user_name(uid: u32) -> String {
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|text| {
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            let (name, _, id) = (f.next()?, f.next()?, f.next()?);
            (id.parse() == Ok(uid)).then(|| name.to_string())
        })
    });
    match (uid, name) {
        (0, _) => "root".into(),
        (_, Some(n)) => format!("uid {uid} ({n})"),
        (_, None) => format!("uid {uid}"),
    }
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and other users",
        (true, false) => "its group",
        _ => "other users",
    }
}

/// Open options that never follow a symlink and never leak into a child.
fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).mode(0o600);
    o
}

/// Create or replace `path` with `contents`, without following a symlink planted there.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = no_follow().write(true).create(true).truncate(true).open(path)?;
    f.write_all(contents)
}

/// Open `path` for appending (a log), created if missing, without following a symlink.
pub fn open_append(path: &Path) -> io::Result<File> {
    no_follow().append(true).create(true).open(path)
}

impl InstanceFiles {
    /// Take the instance lock; on success, stale files of a dead instance are removed.
    /// The returned file must stay open for the life of the supervisor.
    ///
    /// A cleaner (`clean_stale`, from any `mcr status`/`list`) may hold a dead instance's
    /// lock for a moment and unlink it: a lock taken on a file no longer at the path is
    /// worthless (the next `mcr run NAME` would create another), so the lock is taken again
    /// on the file that is there. A new lock file appears at its path already locked (made
    /// under another name, locked, then linked), so no cleaner ever sees it free.
    pub fn acquire(&self) -> Result<File, InstanceError> {
        let io_err = |source| InstanceError::Io { path: self.lock.clone(), source };
        let mut busy = 0;
        loop {
            if let Liveness::NotOurs { owner } = self.liveness() {
                return Err(self.not_ours(owner));
            }
            let f = match no_follow().read(true).write(true).open(&self.lock) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.create_locked().map_err(io_err)? {
                    Some(f) => return Ok(f),
                    None => continue,
                },
                Err(e) => return Err(io_err(e)),
            };
            match flock(&f, libc::LOCK_EX) {
                Ok(()) if self.is_at_path(&f) => {
                    // We own the name now: anything left is from a dead instance.
                    for stale in [&self.socket, &self.pid] {
                        remove_own(stale);
                    }
                    return Ok(f);
                }
                // Unlinked by a cleaner between our open and our lock.
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    if !self.is_at_path(&f) {
                        continue;
                    }
                    // A cleaner holds a dead instance's lock for microseconds.
                    busy += 1;
                    if busy < CLEANER_RETRIES {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                    let pid = fs::read_to_string(&self.pid).unwrap_or_default().trim().to_string();
                    return Err(InstanceError::AlreadyRunning {
                        name: self.name.clone(),
                        pid: if pid.is_empty() { "unknown".into() } else { pid },
                    });
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    /// A new lock file, locked before it is linked at the lock path; None when another
    /// appeared there first.
    fn create_locked(&self) -> io::Result<Option<File>> {
        let fresh = self.lock.with_extension(format!("lock.{}.new", std::process::id()));
        let _ = fs::remove_file(&fresh);
        let f = no_follow().create_new(true).read(true).write(true).open(&fresh)?;
        let linked = flock(&f, libc::LOCK_EX).and_then(|()| fs::hard_link(&fresh, &self.lock));
        let _ = fs::remove_file(&fresh);
        match linked {
            Ok(()) => {
                for stale in [&self.socket, &self.pid] {
                    remove_own(stale);
                }
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the lock path still names the open file `f` (a cleaner may have unlinked it).
    fn is_at_path(&self, f: &File) -> bool {
        match (f.metadata(), fs::symlink_metadata(&self.lock)) {
            (Ok(open), Ok(path)) => (open.dev(), open.ino()) == (path.dev(), path.ino()),
            _ => false,
        }
    }

    /// Whether a supervisor holds the lock.
    pub fn liveness(&self) -> Liveness {
        let f = match no_follow().read(true).open(&self.lock) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let owner = fs::symlink_metadata(&self.lock).map(|m| m.uid()).unwrap_or(u32::MAX);
                return Liveness::NotOurs { owner };
            }
            Err(_) => return Liveness::Dead,
        };
        // SAFETY: flock on a file descriptor we own; released on drop.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc != 0 {
            Liveness::Live
        } else {
            Liveness::Dead
        }
    }

    /// True when a supervisor holds the lock, or when the lock is another user's (then it
    /// must be treated as live: nothing of it may be removed).
    pub fn is_live(&self) -> bool {
        self.liveness() != Liveness::Dead
    }

    /// The instance may be talked to by this user: its files are ours (or we are root).
    pub fn check_access(&self, dir: &Path) -> Result<(), InstanceError> {
        let me = effective_uid();
        if me == 0 {
            return Ok(());
        }
        for p in [&self.lock, &self.socket] {
            match fs::symlink_metadata(p) {
                Ok(m) if m.uid() != me => return Err(self.not_ours_in(dir, m.uid())),
                // The directory itself is closed to us: its owner's instances are not ours.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    let owner = fs::metadata(dir).map(|m| m.uid()).unwrap_or(u32::MAX);
                    return Err(self.not_ours_in(dir, owner));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn not_ours(&self, owner: u32) -> InstanceError {
        let dir = self.lock.parent().unwrap_or(Path::new("/")).to_path_buf();
        self.not_ours_in(&dir, owner)
    }

    fn not_ours_in(&self, dir: &Path, owner: u32) -> InstanceError {
        InstanceError::PermissionDenied {
            name: self.name.clone(),
            dir: dir.to_path_buf(),
            owner: if owner == u32::MAX { "another user".into() } else { user_name(owner) },
        }
    }

    /// Remove the files of a dead instance. Returns true when something was removed.
    /// Files of another user are never removed (unless we are root).
    ///
    /// Only under the instance lock, taken exclusively, on the file at the lock path, with
    /// the lock file removed last: a supervisor starting meanwhile either holds the lock
    /// first (nothing is removed) or finds its lock file gone and takes a new one
    /// (`acquire`). Without a lock file nothing is removed. A control socket that answers is never removed, lock or not: after an
    /// update whose old version died, the new supervisor serves on the name's socket an
    /// instant before it takes the lock.
    pub fn clean_stale(&self) -> bool {
        // No lock file: nothing to lock, so nothing may be removed (a starting supervisor
        // may be about to create it); `acquire` removes what a dead instance left.
        let Ok(lock) = no_follow().read(true).open(&self.lock) else { return false };
        if flock(&lock, libc::LOCK_EX).is_err()
            || !self.is_at_path(&lock)
            || std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        {
            return false;
        }
        let mut removed = false;
        for p in [&self.socket, &self.pid, &self.lock] {
            removed |= remove_own(p);
        }
        removed
    }

    /// Where an update of this instance writes the old version's startup logs for its new
    /// version to replay (next to the instance log).
    pub fn replay_log(&self) -> PathBuf {
        self.log.with_file_name(format!("{}.replay.json", self.name))
    }

    /// Remove everything but the log (called by the supervisor as it exits).
    pub fn remove_all(&self) {
        for p in [&self.socket, &self.pid, &self.lock] {
            remove_own(p);
        }
    }
}

/// How many times `acquire` looks again at a lock someone holds (1 ms apart) before it
/// takes it for a running instance's: a cleaner holds it for microseconds.
const CLEANER_RETRIES: u32 = 20;

/// `flock(op | LOCK_NB)`.
fn flock(f: &File, op: i32) -> io::Result<()> {
    // SAFETY: flock on a descriptor `f` owns; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove `path` if it is this user's (root removes anything). True when removed.
fn remove_own(path: &Path) -> bool {
    let me = effective_uid();
    match fs::symlink_metadata(path) {
        Ok(m) if me == 0 || m.uid() == me => fs::remove_file(path).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("kvd").is_ok());
        assert!(validate_name("nginx-1.22_a").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-n", "--help", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn scratch(label: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mcr-proto-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn only_a_directory_nobody_else_can_write_is_trusted() {
        let tmp = scratch("trust");
        let dir = InstanceDir { path: tmp.join("run") };
        dir.create().unwrap();
        assert_eq!(fs::metadata(&dir.path).unwrap().permissions().mode() & 0o777, 0o700);
        for mode in [0o777, 0o1777, 0o770, 0o702] {
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(mode)).unwrap();
            match dir.check_trusted() {
                Err(InstanceError::InsecureDir { reason, .. }) => assert!(reason.contains("writable by"), "{reason}"),
                other => panic!("mode {mode:o} trusted: {other:?}"),
            }
        }
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755)).unwrap();
        dir.check_trusted().unwrap();
        let link = InstanceDir { path: tmp.join("link") };
        std::os::unix::fs::symlink(&dir.path, &link.path).unwrap();
        assert!(matches!(link.check_trusted(), Err(InstanceError::InsecureDir { .. })));
        assert!(matches!(InstanceDir::resolve(Some(&link.path)), Err(InstanceError::InsecureDir { .. })));
        fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn a_socket_path_too_long_for_an_update_is_refused_up_front() {
        let dir = InstanceDir { path: PathBuf::from(format!("/tmp/{}", "d".repeat(80))) };
        assert!(dir.files("short").is_ok());
        let long = "n".repeat(18); // 85 + 18 + ".sock" fits, ".next.sock" does not
        match dir.files(&long) {
            Err(InstanceError::SocketPathTooLong { path, len, max }) => {
                assert!(path.to_string_lossy().ends_with(".next.sock"));
                assert!(len > max);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_are_never_written_through_a_symlink() {
        let tmp = scratch("nofollow");
        let victim = tmp.join("victim");
        fs::write(&victim, "precious").unwrap();
        let planted = tmp.join("x.pid");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(write_private(&planted, b"123").is_err());
        assert!(open_append(&planted).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        write_private(&tmp.join("y.pid"), b"1").unwrap();
        write_private(&tmp.join("y.pid"), b"22").unwrap();
        assert_eq!(fs::read_to_string(tmp.join("y.pid")).unwrap(), "22", "replaced, not appended");
        fs::remove_dir_all(tmp).unwrap();
    }

    #[test]
    fn second_acquire_fails_and_stale_lock_is_reclaimed() {
        let tmp = std::env::temp_dir().join(format!("mcr-proto-test-{}", std::process::id()));
        let dir = InstanceDir { path: tmp.clone() };
        dir.create().unwrap();
        let files = dir.files("a").unwrap();
        fs::write(&files.pid, "4242").unwrap();
        let held = files.acquire().unwrap();
        fs::write(&files.pid, "4242").unwrap();
        assert!(files.is_live());
        match files.acquire() {
            Err(InstanceError::AlreadyRunning { pid, .. }) => assert_eq!(pid, "4242"),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        drop(held);
        assert!(!files.is_live());
        assert!(files.clean_stale());
        assert!(!files.pid.exists());
        fs::remove_dir_all(tmp).unwrap();
    }

    /// `mcr status NAME` while `mcr run NAME` starts: the status cleans what looks like a
    /// dead instance's files. It must never take the starting instance's lock file (nor its
    /// socket and pid file) from under it: the instance would run unlisted and unreachable,
    /// and a second `mcr run NAME` would start beside it.
    #[test]
    fn cleaning_a_dead_instance_never_removes_one_being_started() {
        let tmp = scratch("race");
        let dir = InstanceDir { path: tmp.join("run") };
        dir.create().unwrap();
        let files = dir.files("a").unwrap();
        for round in 0..3000 {
            let done = std::sync::atomic::AtomicBool::new(false);
            let held = std::thread::scope(|s| {
                s.spawn(|| {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        files.clean_stale();
                    }
                });
                let held = files.acquire();
                write_private(&files.socket, b"").unwrap();
                std::thread::yield_now();
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                held
            });
            let held = held.unwrap_or_else(|e| panic!("round {round}: {e}"));
            let on_disk = fs::metadata(&files.lock).unwrap_or_else(|e| panic!("round {round}: lock file gone: {e}"));
            let locked = held.metadata().unwrap();
            assert_eq!((on_disk.dev(), on_disk.ino()), (locked.dev(), locked.ino()), "round {round}");
            assert!(files.is_live(), "round {round}");
            assert!(files.socket.exists(), "round {round}: the live instance's socket was removed");
            assert!(!files.clean_stale(), "round {round}");
            drop(held);
            assert!(files.clean_stale());
        }
        fs::remove_dir_all(tmp).unwrap();
    }
}
