//! Where an instance keeps its files, and how a live instance is told from a stale one.
//!
//! `<dir>/<name>.lock` is held (flock) by the supervisor for as long as it lives: a lock
//! nobody holds means the instance is dead, whatever files are left next to it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("invalid instance name {0:?}: use letters, digits, '.', '_' and '-' (at most 64)")]
    InvalidName(String),
    #[error("no runtime directory: set MCR_RUNTIME_DIR or XDG_RUNTIME_DIR, or pass --runtime-dir")]
    NoRuntimeDir,
    #[error("cannot create runtime directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("instance '{name}' is already running (supervisor pid {pid})")]
    AlreadyRunning { name: String, pid: String },
    #[error("no running instance named '{name}' in {dir}")]
    NotRunning { name: String, dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The directory holding every instance's files.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    pub path: PathBuf,
}

/// Paths of one instance's files.
#[derive(Debug, Clone)]
pub struct InstanceFiles {
    pub name: String,
    pub lock: PathBuf,
    pub socket: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

pub fn validate_name(name: &str) -> Result<(), InstanceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
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
        Ok(Self { path })
    }

    pub fn create(&self) -> Result<(), InstanceError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| InstanceError::CreateDir { path: self.path.clone(), source })
    }

    pub fn files(&self, name: &str) -> Result<InstanceFiles, InstanceError> {
        validate_name(name)?;
        let p = |ext: &str| self.path.join(format!("{name}.{ext}"));
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

impl InstanceFiles {
    /// Take the instance lock; on success, stale files of a dead instance are removed.
    /// The returned file must stay open for the life of the supervisor.
    pub fn acquire(&self) -> Result<File, InstanceError> {
        let io_err = |source| InstanceError::Io { path: self.lock.clone(), source };
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.lock)
            .map_err(io_err)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = fs::read_to_string(&self.pid).unwrap_or_default().trim().to_string();
                return Err(InstanceError::AlreadyRunning {
                    name: self.name.clone(),
                    pid: if pid.is_empty() { "unknown".into() } else { pid },
                });
            }
            return Err(io_err(e));
        }
        // We own the name now: anything left is from a dead instance.
        for stale in [&self.socket, &self.pid] {
            let _ = fs::remove_file(stale);
        }
        Ok(f)
    }

    /// True when a supervisor holds the lock.
    pub fn is_live(&self) -> bool {
        let Ok(f) = File::open(&self.lock) else { return false };
        // SAFETY: flock on a file descriptor we own; released on drop.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }

    /// Remove the files of a dead instance. Returns true when something was removed.
    pub fn clean_stale(&self) -> bool {
        if self.is_live() {
            return false;
        }
        let mut removed = false;
        for p in [&self.socket, &self.pid, &self.lock] {
            removed |= fs::remove_file(p).is_ok();
        }
        removed
    }

    /// Remove everything but the log (called by the supervisor as it exits).
    pub fn remove_all(&self) {
        for p in [&self.socket, &self.pid, &self.lock] {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("kvd").is_ok());
        assert!(validate_name("nginx-1.22_a").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
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
}
