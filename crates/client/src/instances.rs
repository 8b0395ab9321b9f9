//! The instances of a runtime directory: listing them, stopping one.

use crate::connection::{self, ClientError, Connection};
use mcr_protocol::{InstanceDir, InstanceError, InstanceStatus, Request, Response};
use std::time::{Duration, Instant};

/// One instance of the runtime directory.
pub enum Listed {
    Running(InstanceStatus),
    /// Files this user may not trust (another user's, or reachable through a link).
    Untrusted(InstanceError),
    /// A dead instance whose files were just removed.
    Stale(String),
    /// A live instance that did not answer.
    Silent(String),
}

/// Every instance with files in `dir`, by name; dead ones' files are removed.
pub fn list(dir: &InstanceDir) -> Result<Vec<Listed>, ClientError> {
    let mut out = Vec::new();
    for name in dir.names() {
        let files = dir.files(&name)?;
        if let Err(e) = files.check_access(&dir.path) {
            out.push(Listed::Untrusted(e));
            continue;
        }
        if !files.is_live() {
            if files.clean_stale() {
                out.push(Listed::Stale(name));
            }
            continue;
        }
        match Connection::open(dir, &name).and_then(|mut c| c.status()) {
            Ok(st) => out.push(Listed::Running(st)),
            Err(_) => out.push(Listed::Silent(name)),
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error("instance '{name}' is still running {} s after SIGTERM and SIGKILL", waited.as_secs())]
    StillRunning { name: String, waited: Duration },
}

/// SIGTERM to the main process, SIGKILL to every process after `grace`; returns once the
/// instance is gone.
pub fn stop(dir: &InstanceDir, name: &str, grace: Duration) -> Result<(), StopError> {
    let files = dir.files(name).map_err(ClientError::from)?;
    match connection::request(dir, name, &Request::Stop { grace_ms: grace.as_millis() as u64 })? {
        Response::Stopping => {}
        other => return Err(ClientError::unexpected(other).into()),
    }
    let t0 = Instant::now();
    while files.is_live() {
        if t0.elapsed() > grace + Duration::from_secs(5) {
            return Err(StopError::StillRunning { name: name.to_string(), waited: t0.elapsed() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
