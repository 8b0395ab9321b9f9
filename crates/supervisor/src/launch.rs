//! Launching the server: sockets first (close-on-exec, so the server never inherits
//! them), then fork + exec with the runtime preloaded and address-space randomization off
//! (DESIGN.md "Addresses": the next version must be able to load libraries at the same
//! addresses).

use crate::{Config, SupervisorError, UpdateLaunch};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::Instant;

pub struct Launched {
    pub control: UnixListener,
    pub runtime: UnixListener,
    /// The server's first process (None: a version taken over whose main process is
    /// not known).
    pub first_pid: Option<i32>,
    /// A version taken over by a supervisor the init started again.
    pub adopted: Option<crate::init::Reattach>,
    /// Just before the server's first process was forked (for a version taken over: when
    /// it was).
    pub spawned_at: Instant,
}

fn cstring(s: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).unwrap_or_else(|_| CString::new("?").unwrap_or_default())
}

/// The runtime socket the init bound, or one of our own (no PID namespace, no init).
fn runtime_socket(cfg: &Config) -> Result<(UnixListener, String), SupervisorError> {
    if let Some(s) = &cfg.runtime_socket {
        let fd = s.listener.try_clone().map_err(SupervisorError::RuntimeSocket)?;
        return Ok((UnixListener::from(fd), s.name.clone()));
    }
    let s = crate::init::bind_runtime_socket(cfg.server_instance_name()).map_err(SupervisorError::RuntimeSocket)?;
    Ok((UnixListener::from(s.listener), s.name))
}

pub fn prepare_and_launch(cfg: &Config) -> Result<Launched, SupervisorError> {
    if let (Some(go), Some(update)) = (&cfg.go, &cfg.update) {
        return launch_ahead(cfg, go, update);
    }
    let control = bind_control(cfg)?;
    let (runtime, runtime_socket_name) = runtime_socket(cfg)?;
    control.set_nonblocking(true)?;
    runtime.set_nonblocking(true)?;

    let spawned_at = Instant::now();
    let first_pid = spawn(cfg, cfg.update.as_ref(), &runtime_socket_name, None)
        .map_err(|source| SupervisorError::Launch { program: cfg.program.display().to_string(), source })?;
    Ok(Launched { control, runtime, first_pid: Some(first_pid), adopted: None, spawned_at })
}

/// An update's new version launched ahead: the server is executed at once, with what the
/// running old version already tells (its heap slots, the size of its initial stack
/// strings), and held in the runtime's constructor (`runtime/src/held_launch.rs`) until
/// the go; then the startup descriptors go to it, and the sockets are bound. Nothing is
/// bound before the go (a `mcr list` meanwhile must not find a control socket nobody
/// answers on); the go socket closing first ends the held server with this supervisor.
fn launch_ahead(cfg: &Config, go_end: &OwnedFd, update: &UpdateLaunch) -> Result<Launched, SupervisorError> {
    let launch_error = |source| SupervisorError::Launch { program: cfg.program.display().to_string(), source };
    let (runtime, runtime_socket_name) = runtime_socket(cfg)?;
    let (held_end, server_end) = crate::scm_rights::pair().map_err(launch_error)?;
    let first_pid =
        spawn(cfg, Some(update), &runtime_socket_name, Some(server_end.as_raw_fd())).map_err(launch_error)?;
    drop(server_end);
    let (go, fds) = crate::staging::receive(go_end).map_err(SupervisorError::NoGo)?;
    if go.heap_avoid != update.heap_avoid || go.stack_strings != update.stack_strings {
        // Placed by what the old version was at the preflight, which changed since.
        return Err(SupervisorError::NoGo(std::io::Error::other(format!(
            "the old version's heap slots or initial stack changed during the update (heap slots {:?} at the \
             preflight, {:?} now); try again",
            update.heap_avoid, go.heap_avoid
        ))));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    crate::staging::hand_over(&held_end, &go.fds, &raw).map_err(|e| {
        // Most likely the server did not live to its go (a library's constructor failed).
        let mut status = 0;
        // SAFETY: a non-blocking reap of our own child, into a live local.
        let ended = unsafe { libc::waitpid(first_pid, &mut status, libc::WNOHANG) } == first_pid;
        launch_error(std::io::Error::other(match ended {
            true if libc::WIFSIGNALED(status) => {
                format!("the server was killed by signal {} before its go", libc::WTERMSIG(status))
            }
            true => format!("the server exited with status {} before its go", libc::WEXITSTATUS(status)),
            false => format!("cannot hand the startup descriptors over to the server: {e}"),
        }))
    })?;
    drop(fds);
    drop(held_end);
    let spawned_at = Instant::now();
    let control = bind_control(cfg)?;
    control.set_nonblocking(true)?;
    runtime.set_nonblocking(true)?;
    Ok(Launched { control, runtime, first_pid: Some(first_pid), adopted: None, spawned_at })
}

/// The instance's control socket, for its owner alone.
fn bind_control(cfg: &Config) -> Result<UnixListener, SupervisorError> {
    let control = UnixListener::bind(&cfg.files.socket)
        .map_err(|source| SupervisorError::ControlSocket { path: cfg.files.socket.clone(), source })?;
    let _ = std::fs::set_permissions(&cfg.files.socket, std::fs::Permissions::from_mode(0o600));
    Ok(control)
}

/// Take over a running version (the init started this supervisor after the previous one
/// died): a fresh control socket put over the name, the init's runtime socket.
pub fn reattach(cfg: &Config, r: crate::init::Reattach) -> Result<Launched, SupervisorError> {
    let control = crate::name::bind_fresh(&cfg.files, cfg.supervisor_pid)
        .map_err(|source| SupervisorError::ControlSocket { path: cfg.files.socket.clone(), source })?;
    let (runtime, _) = runtime_socket(cfg)?;
    runtime.set_nonblocking(true)?;
    Ok(Launched { control, runtime, first_pid: r.main_pid, adopted: Some(r), spawned_at: Instant::now() })
}

/// Descriptors without close-on-exec were passed to the server (an update's inherited
/// objects, or whatever the user handed `mcr run`): the supervisor keeps no copy, so
/// closing them in the server really closes them.
fn close_passed_descriptors() {
    for fd in crate::procfs::own_descriptors_above_stderr() {
        // SAFETY: probing, then closing, descriptors of this process that nothing in the
        // supervisor uses (its own are all close-on-exec).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::close(fd);
            }
        }
    }
}

/// The width of `MCR_GO_FD` (a descriptor number, zero-padded) and of `MCR_HEAP_AVOID`
/// (a slot list, space-padded: wider only for a heap scattered over many slots).
const GO_FD_WIDTH: usize = 10;
const HEAP_AVOID_WIDTH: usize = 64;

/// A variable's value when unused, as long as it would be when used.
fn unused(len: usize) -> String {
    "-".repeat(len)
}

/// A fresh start's padding: what an update's new version may need more than the old one
/// for its strings (a longer replay log path, a list of heap slots, a longer program path)
/// and still lay out its initial stack at the same addresses.
const STACK_SLACK: u64 = 1024;

/// Bytes NUL-terminated strings of these lengths take.
fn strings_bytes(lens: impl Iterator<Item = usize>) -> u64 {
    lens.map(|l| l as u64 + 1).sum()
}

/// The value of `MCR_STACK_PAD`: with `target` (the old version's initial stack strings,
/// in bytes), as long as makes this version's strings take as many bytes, given the
/// program path's length, the arguments' and the other variables' bytes: the 8 bytes the
/// kernel leaves at the top, the program path, the environment, the arguments
/// (fs/exec.c). Without a target (a fresh start) or when the new strings are already
/// longer (then the layouts differ, and the transfer refuses state that points into the
/// old stack), the slack.
fn stack_pad(target: Option<u64>, program_len: usize, args_bytes: u64, env_bytes: u64) -> String {
    let pad_entry = mcr_protocol::env::STACK_PAD.len() as u64 + 2; // "NAME=" and the NUL
    let used = 8 + program_len as u64 + 1 + args_bytes + env_bytes + pad_entry;
    let len = target.and_then(|t| t.checked_sub(used)).unwrap_or(STACK_SLACK);
    ".".repeat(len as usize)
}

/// Launch the server (`update`: as an update's new version, whose startup descriptors it
/// inherits as they are). `go`: an update's new version launched ahead, held in the
/// runtime's constructor until its go arrives on this socket (which the server inherits).
fn spawn(cfg: &Config, update: Option<&UpdateLaunch>, socket_name: &str, go: Option<RawFd>) -> std::io::Result<i32> {
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{} {old}", cfg.runtime_lib.display()),
        _ => cfg.runtime_lib.display().to_string(),
    };
    // An update's new version gets the old one's environment, minus what mcr sets.
    let base: Vec<(String, String)> = match update {
        Some(u) => u.env.clone(),
        None => std::env::vars().collect(),
    };
    let ours = [
        mcr_protocol::env::SUPERVISOR_SPEC_FD,
        mcr_protocol::env::RUNTIME_SOCKET,
        mcr_protocol::env::INSTANCE,
        mcr_protocol::env::PROFILE,
        mcr_protocol::env::PID_NAMESPACE,
        mcr_protocol::env::INSTANCE_LOG,
        mcr_protocol::env::REPLAY,
        mcr_protocol::env::HEAP_AVOID,
        mcr_protocol::env::GO_FD,
        mcr_protocol::env::STACK_PAD,
    ];
    // NOTIFY_SOCKET is mcr's to use (`mcr run` notifies systemd for the server): the server
    // runs as it would without systemd, whichever version it is.
    let mut env: Vec<(String, String)> = base
        .into_iter()
        .filter(|(k, _)| k != "LD_PRELOAD" && k != crate::notify::NOTIFY_SOCKET && !ours.contains(&k.as_str()))
        .collect();
    env.push(("LD_PRELOAD".into(), preload));
    env.push((mcr_protocol::env::RUNTIME_SOCKET.into(), socket_name.into()));
    // Every variable mcr sets takes as many bytes in each version of the instance, unused
    // or not (`-` repeated): a program that copies its environment at startup (sshd's
    // setproctitle, one strdup per variable) then allocates the same sizes in both, and
    // its libraries' startup blocks follow the old version's (`placed_blocks`).
    env.push((mcr_protocol::env::INSTANCE.into(), cfg.server_instance_name().to_string()));
    env.push((mcr_protocol::env::PID_NAMESPACE.into(), if cfg.pid_namespace { "1" } else { "0" }.into()));
    env.push((mcr_protocol::env::INSTANCE_LOG.into(), cfg.files.log.display().to_string()));
    // The same variables in the same order for a fresh start and an update (empty when
    // unused), so that both versions' environments have as many entries.
    let profile = cfg.profile.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    env.push((mcr_protocol::env::PROFILE.into(), profile));
    let (replay, avoid) = match update {
        Some(u) => (u.replay_log.display().to_string(), u.heap_avoid.clone()),
        None => (unused(cfg.files.replay_log().as_os_str().len()), String::new()),
    };
    env.push((mcr_protocol::env::REPLAY.into(), replay));
    env.push((mcr_protocol::env::HEAP_AVOID.into(), format!("{avoid:<HEAP_AVOID_WIDTH$}")));
    // The go socket, inheritable at a number the environment can name before the fork
    // (the copy here is closed right after it).
    let go_copy = match go {
        Some(fd) => {
            // SAFETY: F_DUPFD takes no pointer; it only makes a descriptor at a free number.
            let n = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the copy just made, ours alone.
            Some(unsafe { OwnedFd::from_raw_fd(n) })
        }
        None => None,
    };
    env.push((
        mcr_protocol::env::GO_FD.into(),
        go_copy.as_ref().map_or_else(|| unused(GO_FD_WIDTH), |f| format!("{:0GO_FD_WIDTH$}", f.as_raw_fd())),
    ));
    let args_bytes =
        strings_bytes(std::iter::once(cfg.program.as_os_str().len()).chain(cfg.args.iter().map(String::len)));
    let pad = stack_pad(
        update.and_then(|u| u.stack_strings),
        cfg.program.as_os_str().len(),
        args_bytes,
        strings_bytes(env.iter().map(|(k, v)| k.len() + 1 + v.len())),
    );
    env.push((mcr_protocol::env::STACK_PAD.into(), pad));
    let cwd = update.map(|u| cstring(u.cwd.as_os_str()));
    let envp: Vec<CString> = env.iter().map(|(k, v)| cstring(format!("{k}={v}"))).collect();
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(core::ptr::null());
    let prog = cstring(cfg.program.as_os_str());
    let argv: Vec<CString> =
        std::iter::once(cfg.program.display().to_string()).chain(cfg.args.iter().cloned()).map(cstring).collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(core::ptr::null());
    let log = if cfg.detach { Some(mcr_protocol::instance::open_append(&cfg.files.log)?) } else { None };
    let devnull = cstring("/dev/null");

    // Reports exec failure from the child: closed by a successful exec.
    let mut fds = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: the supervisor is single-threaded here (tokio not started yet); the child
    // only calls async-signal-safe functions before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side of fork: raw libc calls only, then exec or _exit.
        unsafe {
            let mut empty: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, core::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            let wr_fd = wr.as_raw_fd();
            let log_fd = log.as_ref().map(|l| l.as_raw_fd());
            if let Some(dir) = &cwd {
                if libc::chdir(dir.as_ptr()) != 0 {
                    let err = *libc::__errno_location();
                    libc::write(wr_fd, (&err as *const i32).cast(), 4);
                    libc::_exit(127);
                }
            }
            if let Some(log) = log_fd {
                // Close-on-exec: only the dup2'ed copy at 0 reaches the server.
                let null = libc::open(devnull.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if null >= 0 {
                    libc::dup2(null, 0);
                }
                libc::dup2(log, 1);
                libc::dup2(log, 2);
            }
            libc::execve(prog.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            let err = *libc::__errno_location();
            libc::write(wr_fd, (&err as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(wr);
    drop(go_copy);
    close_passed_descriptors();
    let mut buf = [0u8; 4];
    let mut f = std::fs::File::from(rd);
    if f.read_exact(&mut buf).is_ok() {
        let mut status = 0;
        // SAFETY: reaping the child that failed to exec.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padding makes this version's strings take exactly the old version's bytes:
    /// 8 at the top, the program path, the arguments, the variables and the padding's own
    /// entry.
    #[test]
    fn the_padding_fills_the_strings_up_to_the_old_versions_size() {
        let (program, args, env) = (30, 31 + 20, 700);
        let entry = mcr_protocol::env::STACK_PAD.len() as u64 + 2;
        let target = 5000;
        let pad = stack_pad(Some(target), program, args, env);
        assert_eq!(8 + program as u64 + 1 + args + env + entry + pad.len() as u64, target);
        assert_eq!(stack_pad(None, program, args, env).len() as u64, STACK_SLACK, "a fresh start: the slack");
        assert_eq!(stack_pad(Some(100), program, args, env).len() as u64, STACK_SLACK, "too long already");
    }
}
