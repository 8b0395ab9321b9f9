//! Launching the server: sockets first (close-on-exec, so the server never inherits
//! them), then fork + exec with the runtime preloaded and address-space randomization off
//! (DESIGN.md "Addresses": the next version must be able to load libraries at the same
//! addresses).

use crate::{Config, SupervisorError};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

pub struct Launched {
    pub control: UnixListener,
    pub runtime: UnixListener,
    /// The server's first process (None: a version taken over whose main process is
    /// not known).
    pub first_pid: Option<i32>,
    /// A version taken over by a supervisor the init started again.
    pub adopted: Option<crate::init::Reattach>,
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
    let s = crate::init::bind_runtime_socket(&cfg.name).map_err(SupervisorError::RuntimeSocket)?;
    Ok((UnixListener::from(s.listener), s.name))
}

pub fn prepare_and_launch(cfg: &Config) -> Result<Launched, SupervisorError> {
    let control = UnixListener::bind(&cfg.files.socket)
        .map_err(|source| SupervisorError::ControlSocket { path: cfg.files.socket.clone(), source })?;
    let _ = std::fs::set_permissions(&cfg.files.socket, std::fs::Permissions::from_mode(0o600));
    let (runtime, runtime_socket_name) = runtime_socket(cfg)?;
    control.set_nonblocking(true)?;
    runtime.set_nonblocking(true)?;

    let first_pid = spawn(cfg, &runtime_socket_name)
        .map_err(|source| SupervisorError::Launch { program: cfg.program.display().to_string(), source })?;
    Ok(Launched { control, runtime, first_pid: Some(first_pid), adopted: None })
}

/// Take over a running version (the init started this supervisor after the previous one
/// died): a fresh control socket put over the name, the init's runtime socket.
pub fn reattach(cfg: &Config, r: crate::init::Reattach) -> Result<Launched, SupervisorError> {
    let control = crate::name::bind_fresh(&cfg.files, cfg.supervisor_pid)
        .map_err(|source| SupervisorError::ControlSocket { path: cfg.files.socket.clone(), source })?;
    let (runtime, _) = runtime_socket(cfg)?;
    runtime.set_nonblocking(true)?;
    Ok(Launched { control, runtime, first_pid: r.main_pid, adopted: Some(r) })
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

fn spawn(cfg: &Config, socket_name: &str) -> std::io::Result<i32> {
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{} {old}", cfg.runtime_lib.display()),
        _ => cfg.runtime_lib.display().to_string(),
    };
    // An update's new version gets the old one's environment, minus what mcr sets.
    let base: Vec<(String, String)> = match &cfg.update {
        Some(u) => u.env.clone(),
        None => std::env::vars().collect(),
    };
    let ours = [
        mcr_protocol::env::RUNTIME_SOCKET,
        mcr_protocol::env::INSTANCE,
        mcr_protocol::env::PROFILE,
        mcr_protocol::env::PID_NAMESPACE,
        mcr_protocol::env::INSTANCE_LOG,
        mcr_protocol::env::REPLAY,
        mcr_protocol::env::HEAP_AVOID,
    ];
    let mut env: Vec<(String, String)> =
        base.into_iter().filter(|(k, _)| k != "LD_PRELOAD" && !ours.contains(&k.as_str())).collect();
    env.push(("LD_PRELOAD".into(), preload));
    env.push((mcr_protocol::env::RUNTIME_SOCKET.into(), socket_name.into()));
    env.push((mcr_protocol::env::INSTANCE.into(), cfg.name.clone()));
    env.push((mcr_protocol::env::PID_NAMESPACE.into(), if cfg.pid_namespace { "1" } else { "0" }.into()));
    env.push((mcr_protocol::env::INSTANCE_LOG.into(), cfg.files.log.display().to_string()));
    if let Some(p) = &cfg.profile {
        env.push((mcr_protocol::env::PROFILE.into(), p.display().to_string()));
    }
    if let Some(u) = &cfg.update {
        env.push((mcr_protocol::env::REPLAY.into(), u.replay_log.display().to_string()));
        env.push((mcr_protocol::env::HEAP_AVOID.into(), u.heap_avoid.clone()));
    }
    let cwd = cfg.update.as_ref().map(|u| cstring(u.cwd.as_os_str()));
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
            if let Some(dir) = &cwd {
                if libc::chdir(dir.as_ptr()) != 0 {
                    let err = *libc::__errno_location();
                    libc::write(wr.as_raw_fd(), (&err as *const i32).cast(), 4);
                    libc::_exit(127);
                }
            }
            if let Some(log) = &log {
                // Close-on-exec: only the dup2'ed copy at 0 reaches the server.
                let null = libc::open(devnull.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if null >= 0 {
                    libc::dup2(null, 0);
                }
                libc::dup2(log.as_raw_fd(), 1);
                libc::dup2(log.as_raw_fd(), 2);
            }
            libc::execve(prog.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            let err = *libc::__errno_location();
            libc::write(wr.as_raw_fd(), (&err as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    drop(wr);
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
