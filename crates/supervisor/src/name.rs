//! The instance's name as a supervisor holds it: its control socket file,
//! `<dir>/<name>.sock`, the file clients connect to. An update's new version takes the
//! name by renaming its own socket file over it; the old version, while it has not
//! retired, takes it back by binding a fresh socket and renaming that over it. A socket
//! file is known by its (device, inode), which rename(2) keeps.

use crate::state::State;
use mcr_protocol::InstanceFiles;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// A file's (device, inode).
pub type Identity = (u64, u64);

pub fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Who the file at this supervisor's socket path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFile {
    Mine,
    Missing,
    /// Another supervisor's (the new version of an update renamed its own there).
    Other,
}

pub fn socket_file(state: &State) -> SocketFile {
    let (path, mine) = {
        let g = state.lock();
        (g.files.as_ref().map(|f| f.socket.clone()), g.socket_id)
    };
    match (path.as_deref().and_then(identity), mine) {
        (None, _) => SocketFile::Missing,
        (Some(id), Some(m)) if id != m => SocketFile::Other,
        // Unknown (its identity could not be read at start): as before this was known.
        _ => SocketFile::Mine,
    }
}

/// A fresh control socket for `files`, put over its path in one step (whatever is there:
/// a dead supervisor's file, or an update's new version's that did not commit).
pub fn bind_fresh(files: &InstanceFiles, supervisor_pid: i32) -> std::io::Result<UnixListener> {
    let dir = files.socket.parent().unwrap_or(Path::new("/"));
    // Instance names never start with '.': this one cannot be anyone's.
    let fresh = dir.join(format!(".{}.sock.{}", files.name, supervisor_pid));
    let _ = std::fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)?;
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| listener.set_nonblocking(true))
        .and_then(|()| std::fs::rename(&fresh, &files.socket));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&fresh);
        return Err(e);
    }
    Ok(listener)
}

/// Take the name back if another supervisor's socket is there (an update's new version
/// that took it and did not commit), or if it is missing: a fresh control socket, renamed
/// over the path in one step. True when it did.
pub fn retake(state: &State) -> std::io::Result<bool> {
    if socket_file(state) == SocketFile::Mine {
        return Ok(false);
    }
    let Some(files) = state.lock().files.clone() else { return Ok(false) };
    let listener = bind_fresh(&files, state.supervisor_pid)?;
    state.lock().socket_id = identity(&files.socket);
    tokio::spawn(crate::control::accept_loop(state.clone(), tokio::net::UnixListener::from_std(listener)?));
    Ok(true)
}
