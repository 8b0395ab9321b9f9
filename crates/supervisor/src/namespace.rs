//! The PID namespace of a version (DESIGN.md "PIDs").
//!
//! `enter` is called by `mcr run` before it forks the supervisor: after
//! `unshare(CLONE_NEWPID | CLONE_NEWNS)` the next child is PID 1 of a new namespace. The
//! child then mounts a /proc of that namespace (in its own mount namespace, propagation
//! from the host kept), so PIDs seen by the supervisor, the runtime and the server agree
//! with /proc.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// What `enter` achieved.
pub enum Namespace {
    Own,
    /// No permission: the supervisor runs as a subreaper in the caller's namespace.
    Shared {
        reason: String,
    },
}

pub fn enter() -> Namespace {
    if std::env::var_os(mcr_protocol::env::NO_PID_NAMESPACE).is_some_and(|v| v == "1") {
        return Namespace::Shared {
            reason:
                "MCR_NO_PID_NAMESPACE=1: running without a PID namespace; PIDs will not be preserved across updates"
                    .into(),
        };
    }
    // SAFETY: unshare affects only this process and its future children.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) };
    if rc == 0 {
        return Namespace::Own;
    }
    let e = io::Error::last_os_error();
    Namespace::Shared {
        reason: format!(
            "no permission for a PID namespace ({e}); running without one: PIDs will not be preserved across updates"
        ),
    }
}

/// What the forked child knows of the host once it set up its namespace.
pub struct Host {
    /// This process's PID as the host sees it (read before /proc changes).
    pub pid: i32,
    /// The host's /proc (an O_PATH descriptor opened before the namespace's own /proc
    /// was mounted over it), where `self` still names a process by its host PID.
    pub proc: Option<OwnedFd>,
}

/// In the forked child: make this process's mounts private-ish and mount /proc.
pub fn setup_child(own: bool) -> io::Result<Host> {
    let host_pid = mcr_procfs::own_pid().unwrap_or(0);
    // SAFETY: open(2) of a static path; the descriptor is owned below.
    let fd = unsafe { libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: a fresh descriptor nothing else owns.
    let host_proc = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    if !own {
        // SAFETY: prctl with an integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(Host { pid: host_pid, proc: host_proc });
    }
    // SAFETY: mount(2) with static, NUL-terminated strings.
    unsafe {
        // Host mounts still propagate in; ours (the /proc below) never propagate out.
        if libc::mount(
            core::ptr::null(),
            c"/".as_ptr(),
            core::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            core::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            core::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Host { pid: host_pid, proc: host_proc })
}
