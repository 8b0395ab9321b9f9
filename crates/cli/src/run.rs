//! `mcr run`: validate, take the instance name, fork the supervisor (into a new PID
//! namespace when permitted), then either stay attached or return once started.

use crate::{client, program};
use anyhow::{bail, Context, Result};
use clap::Args;
use mcr_protocol::{ExitStatus, InstanceDir, LaunchReport, Request};
use mcr_supervisor::namespace::{self, Namespace};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct RunArgs {
    /// Instance name [default: the program's file name]
    #[arg(long)]
    name: Option<String>,
    /// Return once the server completed startup; its output goes to <runtime dir>/<name>.log
    #[arg(long)]
    detach: bool,
    /// With --detach: how long to wait for startup to complete
    #[arg(long, default_value_t = 30, value_name = "S")]
    startup_timeout: u64,
    /// Quiescence profile (from `mcr profile`) overriding the default quiescent points
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// The server and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...")]
    command: Vec<String>,
}

const FORWARDED: [i32; 6] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGQUIT];

pub fn run(dir: &InstanceDir, args: RunArgs) -> Result<i32> {
    let (prog, rest) = args.command.split_first().context("no program given")?;
    let program = program::resolve(prog)?;
    let checked = program::check(&program)?;
    let runtime_lib = program::runtime_library()?;
    let profile = match &args.profile {
        Some(p) => {
            mcr_callstack::Profile::load(p)?;
            Some(std::fs::canonicalize(p)?)
        }
        None => None,
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => program.file_name().map(|s| s.to_string_lossy().into_owned()).context("program has no file name")?,
    };
    dir.create()?;
    let files = dir.files(&name)?;
    let lock = files.acquire()?;
    for w in &checked.warnings {
        eprintln!("mcr: warning: {w}");
    }

    let report_rd = spawn_supervisor(SupervisorLaunch {
        name: name.clone(),
        files: files.clone(),
        lock,
        program: program.clone(),
        args: rest.to_vec(),
        runtime_lib,
        profile,
        detach: args.detach,
        update: None,
    })?;
    if args.detach {
        detached(dir, &name, &files.log, report_rd, Duration::from_secs(args.startup_timeout))
    } else {
        foreground(dir, &name, report_rd)
    }
}

/// What `spawn_supervisor` launches.
pub struct SupervisorLaunch {
    pub name: String,
    pub files: mcr_protocol::InstanceFiles,
    pub lock: std::fs::File,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub runtime_lib: PathBuf,
    pub profile: Option<PathBuf>,
    pub detach: bool,
    pub update: Option<mcr_supervisor::UpdateLaunch>,
}

/// Fork the supervisor (into a new PID namespace when permitted) and return the read end
/// of its report pipe. `mcr` itself must stay outside the new namespace (a process that
/// unshared CLONE_NEWPID can no longer create threads), so an intermediate child unshares
/// and forks the supervisor, then exits; as a subreaper, `mcr` inherits the supervisor
/// and can wait for it. Descriptors open without close-on-exec here reach the server.
pub fn spawn_supervisor(l: SupervisorLaunch) -> Result<OwnedFd> {
    let mut fds = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2.
    let (report_rd, report_wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // SAFETY: mcr is single-threaded here; both children only continue as described.
    let intermediate = unsafe { libc::fork() };
    if intermediate < 0 {
        bail!("cannot fork the supervisor: {}", std::io::Error::last_os_error());
    }
    if intermediate == 0 {
        drop(report_rd);
        let (own_ns, note) = match namespace::enter() {
            Namespace::Own => (true, None),
            Namespace::Shared { reason } => (false, Some(reason)),
        };
        // SAFETY: as above; this process exits right after.
        let child = unsafe { libc::fork() };
        if child != 0 {
            // SAFETY: leaving without running destructors or atexit handlers of mcr.
            unsafe { libc::_exit(if child < 0 { 71 } else { 0 }) };
        }
        let report = Some(report_wr);
        let supervisor_pid = match namespace::setup_child(own_ns) {
            Ok(pid) => pid,
            Err(e) => {
                mcr_supervisor::report_launch_failure(
                    &report,
                    &format!("cannot set up the supervisor's namespace: {e}"),
                );
                std::process::exit(70);
            }
        };
        if l.detach {
            redirect_stdio(&l.files.log);
        }
        let code = mcr_supervisor::run(mcr_supervisor::Config {
            name: l.name,
            files: l.files,
            lock: l.lock,
            program: l.program,
            args: l.args,
            runtime_lib: l.runtime_lib,
            profile: l.profile,
            pid_namespace: own_ns,
            namespace_note: note,
            supervisor_pid,
            report,
            detach: l.detach,
            update: l.update,
        });
        std::process::exit(code);
    }
    let mut st = 0;
    // SAFETY: reaping the intermediate child.
    unsafe { libc::waitpid(intermediate, &mut st, 0) };
    drop(report_wr);
    drop(l.lock);
    Ok(report_rd)
}

fn redirect_stdio(log: &std::path::Path) {
    if let Ok(f) = mcr_protocol::instance::open_append(log) {
        // SAFETY: dup2 onto the standard descriptors of this (supervisor) process.
        unsafe {
            // Close-on-exec and closed after use: it must not leak into the server.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                if null != 0 {
                    libc::close(null);
                }
            }
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

pub fn reports(fd: OwnedFd) -> impl Iterator<Item = LaunchReport> {
    BufReader::new(std::fs::File::from(fd))
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| mcr_protocol::decode_line(l.as_bytes()).ok())
}

pub fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nlast lines of {}:\n  {}", log.display(), tail.join("\n  "))
    }
}

fn detached(dir: &InstanceDir, name: &str, log: &std::path::Path, rd: OwnedFd, timeout: Duration) -> Result<i32> {
    // The wait happens in a thread so a server that never completes startup cannot hold
    // `mcr run --detach` forever.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in reports(rd) {
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut ns_note = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(LaunchReport::Supervising { pid_namespace, note, .. }) => {
                if let Some(n) = note {
                    eprintln!("mcr: warning: {n}");
                }
                ns_note = if pid_namespace { "own PID namespace".into() } else { "no PID namespace".into() };
            }
            Ok(LaunchReport::Started { startup_ms }) => {
                println!(
                    "started '{name}' ({ns_note}; startup completed in {startup_ms:.1} ms); output in {}",
                    log.display()
                );
                return Ok(0);
            }
            Ok(LaunchReport::LaunchFailed { message }) => bail!("{message}"),
            Ok(LaunchReport::ReplayConflict { .. }) => {}
            Ok(LaunchReport::Replaced) => {
                println!("'{name}' was live-updated while starting");
                return Ok(0);
            }
            Ok(LaunchReport::Exited { status }) => {
                bail!("the server exited with {status} before completing startup{}", log_tail(log))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the supervisor of '{name}' exited before the server completed startup{}", log_tail(log))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let why = match client::request(dir, name, &Request::WaitStarted { timeout_ms: 1 }) {
                    Ok(mcr_protocol::Response::Error { message }) => message,
                    _ => "it did not complete startup in time".into(),
                };
                bail!(
                    "'{name}' is running but did not complete startup within {} s: {why}\n(see `mcr status {name}`; stop it with `mcr stop {name}`)",
                    timeout.as_secs()
                );
            }
        }
    }
}

fn foreground(dir: &InstanceDir, name: &str, rd: OwnedFd) -> Result<i32> {
    // Forward the usual control signals to the server's main process.
    // SAFETY: building a signal set and blocking it in this (only) thread; the forwarding
    // thread inherits the mask and takes the signals with sigwait.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let dir = dir.clone();
        let name = name.to_string();
        std::thread::spawn(move || loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) == 0 {
                if let Err(e) = client::request(&dir, &name, &Request::Signal { signal: sig }) {
                    eprintln!("mcr: cannot forward {} to '{name}': {e}", mcr_protocol::signal_name(sig));
                }
            }
        });
    }
    let mut status: Option<ExitStatus> = None;
    let mut own_ns = false;
    for r in reports(rd) {
        match r {
            LaunchReport::LaunchFailed { message } => {
                eprintln!("mcr: {message}");
                return Ok(127);
            }
            LaunchReport::Exited { status: s } => status = Some(s),
            LaunchReport::Replaced => {
                eprintln!("mcr: '{name}' was live-updated; the new version runs detached (see `mcr status {name}`)");
                return Ok(0);
            }
            LaunchReport::ReplayConflict { .. } => {}
            LaunchReport::Supervising { pid_namespace, note, .. } => {
                own_ns = pid_namespace;
                if let Some(n) = note {
                    eprintln!("mcr: warning: {n}");
                }
            }
            LaunchReport::Started { .. } => {}
        }
    }
    let mut wstatus = 0;
    // SAFETY: reaping the supervisor, our only remaining child (we are its subreaper).
    unsafe { libc::waitpid(-1, &mut wstatus, 0) };
    match status {
        Some(s) => Ok(s.shell_code()),
        None => {
            let how = ExitStatus::from_wait_status(wstatus);
            if own_ns {
                eprintln!(
                    "mcr: the supervisor of '{name}' died unexpectedly ({how}); its PID namespace is gone, and the kernel terminated every process of the server with it"
                );
            } else {
                eprintln!(
                    "mcr: the supervisor of '{name}' died unexpectedly ({how}); the server's processes keep running unmanaged (find them with `pgrep -f`)"
                );
            }
            if let Ok(files) = dir.files(name) {
                files.clean_stale();
            }
            Ok(70)
        }
    }
}
