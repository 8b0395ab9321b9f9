//! `mcr update`: mutable reinitialization (paper §3, steps 1-2; state transfer comes
//! next). Quiesce the old version, start the new one in its own PID namespace holding
//! every descriptor the old one created during startup (at the same numbers), let it
//! replay its startup against the old log until its threads park, then commit (the old
//! version exits, the new one takes the name and resumes) or roll back (the new one is
//! killed, the old one resumes as if nothing happened).

use crate::client::Connection;
use crate::run::{reports, spawn_supervisor, SupervisorLaunch};
use crate::{program, render};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use mcr_protocol::{
    InstanceDir, LaunchReport, OpenConnections, ProcessLog, ReplayConflict, Request, Response, UpdateInfo,
};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct UpdateArgs {
    /// The running instance to update
    name: String,
    /// Milliseconds the new version has to replay its startup and park (the old one is
    /// resumed if it does not)
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Milliseconds the old version has to quiesce
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    quiesce_timeout: u64,
    /// Before quiescing, stop accepting (new connections wait in the listen backlog for
    /// the next version) and give the old version up to this many milliseconds to close
    /// the client connections the update cannot move: those of processes forked after
    /// startup (a per-connection child), or, with --fresh-state, all of them. The state
    /// transfer moves the rest. 0 skips the drain.
    #[arg(long, value_name = "MS")]
    drain_timeout: Option<u64>,
    /// Do not transfer the old version's state (globals, heap, connections): the new
    /// version keeps what its own startup made. For servers whose state mcr cannot move
    /// yet, or need not (nginx: its state is its configuration, which startup rebuilds).
    /// Connections close at commit, except idle ones the new build adopts (an idle check in
    /// the old build and a resume handler in the new one, see include/mcr.h).
    #[arg(long)]
    fresh_state: bool,
    /// Print the outcome and phase timings as JSON
    #[arg(long)]
    json: bool,
    /// The new version and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...")]
    command: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a new-version process that stopped on a replay conflict (the runtime's
/// `replay::CONFLICT_EXIT`).
const CONFLICT_EXIT: i32 = 86;

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(serde::Serialize, Default)]
struct Phases {
    drain_ms: f64,
    quiesce_ms: f64,
    restart_ms: f64,
    transfer_ms: f64,
    commit_ms: f64,
    total_ms: f64,
}

#[derive(serde::Serialize)]
struct Outcome {
    instance: String,
    committed: bool,
    message: String,
    phases: Phases,
    conflicts: Vec<ReplayConflict>,
    /// Client connections the old version still held after the drain (moved by the
    /// state transfer, or closed at commit with --fresh-state).
    connections_left: Vec<OpenConnections>,
    /// What the state transfer moved (absent with --fresh-state or before it ran).
    transfer: Option<crate::transfer::Summary>,
    /// With --fresh-state: idle connections moved for the new version to adopt.
    adopted_connections: usize,
    old_processes: Vec<i32>,
    new_processes: Vec<i32>,
}

/// A failure before commit, with what it found.
struct Failure {
    message: String,
    conflicts: Vec<ReplayConflict>,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { message: e.to_string(), conflicts: vec![] }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn update(dir: &InstanceDir, args: UpdateArgs) -> Result<i32> {
    let t0 = Instant::now();
    let (prog, rest) = args.command.split_first().context("no program given")?;
    let program = program::resolve(prog)?;
    let checked = program::check(&program)?;
    let runtime_lib = program::runtime_library()?;
    let name = args.name.clone();
    let mut old = Connection::open(dir, &name)?;
    let mut info = match old.request(&Request::UpdateInfo)? {
        Response::UpdateInfo(i) => i,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    };
    if !info.pid_namespace {
        bail!(
            "'{name}' runs without its own PID namespace, so its new version could not take over its processes' PIDs \
             (replay pairs processes by PID); restart it with `mcr run` as root, without MCR_NO_PID_NAMESPACE"
        );
    }
    let next_name = format!("{name}.next");
    let next_files = dir.files(&next_name)?;
    let next_lock = next_files.acquire().map_err(|e| anyhow!("another update of '{name}' is in progress ({e})"))?;
    for w in &checked.warnings {
        eprintln!("mcr: warning: {w}");
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_interrupt as *const () as libc::sighandler_t);
    }

    // The new version inherits exactly the old version's descriptors: nothing this shell
    // left open to mcr (a client socket on fd 3) may slip into it.
    close_on_exec_all();
    // A new version with a resume handler takes over the sessions threads serve from their
    // stacks (without one, those connections must end before the update); with a respawn
    // handler too, it recreates the per-connection processes.
    let sessions = mcr_typemodel::diff::Sessions::from_hints(&mcr_typemodel::read_hints(&program).unwrap_or_default());
    let (resumes_sessions, respawns) = (sessions.resumes(), sessions.respawns());
    // Without the state, the new version can still adopt the connections that hold none.
    let adopt = args.fresh_state && resumes_sessions;
    let mut phases = Phases::default();
    let td = Instant::now();
    let mut connections_left: Vec<OpenConnections>;
    let drain_timeout = args.drain_timeout.unwrap_or(1000);
    {
        // With the state transfer, only connections held by processes forked after
        // startup must end (nothing recreates those processes); the rest move.
        let drain = Request::Drain {
            timeout_ms: drain_timeout,
            only_volatile: !args.fresh_state,
            move_pinned: resumes_sessions,
            move_volatile: respawns,
            adopt_idle: adopt,
        };
        let drained = old.request_until(&drain, || INTERRUPTED.load(Ordering::SeqCst));
        let drained = match drained {
            Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
                drop(old);
                let _ = Connection::open(dir, &name).and_then(|mut c| c.request(&Request::Resume));
                drop(next_lock);
                next_files.remove_all();
                return Err(e.context("interrupted while draining; the server was resumed and nothing was changed"));
            }
            r => r?,
        };
        match drained {
            Response::Drained { remaining, .. } => connections_left = remaining,
            other => {
                let _ = old.request(&Request::Resume);
                drop(next_lock);
                next_files.remove_all();
                bail!("the running version could not drain, nothing was changed: {other:?}");
            }
        }
        let stuck: Vec<&OpenConnections> = connections_left
            .iter()
            .filter(|c| !c.finished)
            .filter(|c| {
                if args.fresh_state {
                    !(adopt && adoptable(c))
                } else {
                    (c.volatile && !respawns) || (!c.pinned.is_empty() && !resumes_sessions)
                }
            })
            .collect();
        if !stuck.is_empty() {
            let n: usize = stuck.iter().map(|c| c.fds.len()).sum();
            let pids: Vec<i32> = stuck.iter().map(|c| c.pid).collect();
            if args.fresh_state {
                eprintln!(
                    "mcr: warning: {n} client connection(s) still open after the {drain_timeout} ms drain (processes {pids:?}); they are closed if this update commits (--fresh-state{})",
                    if adopt { ", and they are busy or their program has no MCR_ADD_IDLE_CHECK" } else { "" }
                );
            } else {
                eprintln!(
                    "mcr: warning: {n} client connection(s) still open after the {drain_timeout} ms drain that the update cannot move \
                     (processes {pids:?}: forked after startup, or a thread serves the connection from its stack and the new version \
                     has no MCR_ADD_RESUME_HANDLER)"
                );
            }
        }
    }
    phases.drain_ms = ms(td.elapsed());
    let tq = Instant::now();
    match old
        .request(&Request::Quiesce { timeout_ms: args.quiesce_timeout })
        .context("quiescing the running version")?
    {
        Response::Quiesced { .. } => {}
        Response::QuiesceFailed { message, laggards } => {
            let _ = old.request(&Request::Resume);
            drop(next_lock);
            next_files.remove_all();
            bail!(
                "the running version did not quiesce, nothing was changed: {message}\n{}",
                render::laggards(&laggards)
            );
        }
        other => bail!("unexpected answer to quiesce: {other:?}"),
    }
    phases.quiesce_ms = ms(tq.elapsed());
    // Processes may have exited during the drain (a per-connection child whose client
    // left): the tree to recreate is the one that is parked now, and so are its
    // connections.
    if let Response::UpdateInfo(now) =
        old.request(&Request::UpdateInfo).context("reading the running version's processes")?
    {
        info.processes = now.processes;
    }
    // (Quiesced now: a program's idle check is asked about each connection.)
    let refresh = Request::Drain {
        timeout_ms: 0,
        only_volatile: !args.fresh_state,
        move_pinned: resumes_sessions,
        move_volatile: respawns,
        adopt_idle: adopt,
    };
    if let Response::Drained { remaining, .. } =
        old.request(&refresh).context("listing the running version's connections")?
    {
        connections_left = remaining;
    }
    // Per-connection processes whose client is gone have finished their sessions (they
    // would exit on their next read): nothing of them is recreated; they end with the old
    // version.
    let finished: BTreeSet<i32> = connections_left.iter().filter(|c| c.finished).map(|c| c.pid).collect();
    info.processes.retain(|p| !finished.contains(p));
    connections_left.retain(|c| !c.finished);

    let tr = Instant::now();
    let mut new_supervisor: Option<i32> = None;
    let mut new_processes = Vec::new();
    let respawned: BTreeSet<i32> = if respawns && !args.fresh_state {
        connections_left.iter().filter(|c| c.volatile && !c.fds.is_empty()).map(|c| c.pid).collect()
    } else {
        BTreeSet::new()
    };
    let mut attempt = restart(
        dir,
        &name,
        &mut old,
        &info,
        next_files.clone(),
        next_lock,
        program,
        rest,
        runtime_lib,
        &args,
        &respawned,
        &mut new_supervisor,
        &mut new_processes,
    );
    if attempt.is_ok() {
        // The tree the new version took over: without processes that exited meanwhile.
        let live = live_processes(&info);
        info.processes.retain(|p| live.contains(p));
    }
    phases.restart_ms = ms(tr.elapsed());
    let tt = Instant::now();
    let mut transferred = None;
    if attempt.is_ok() && !args.fresh_state {
        attempt = transfer_state(dir, &name, &info, new_supervisor, &connections_left).map(|s| transferred = Some(s));
        if attempt.is_ok() {
            new_processes.extend(respawned.iter().copied());
            new_processes.sort_unstable();
        }
    }
    let mut adopted_connections = 0;
    if attempt.is_ok() && adopt {
        attempt =
            adopt_connections(dir, &name, &info, new_supervisor, &connections_left).map(|n| adopted_connections = n);
    }
    phases.transfer_ms = ms(tt.elapsed());
    let _ = std::fs::remove_file(replay_path(dir, &name));

    let outcome = match attempt {
        Ok(()) => {
            let tc = Instant::now();
            match commit(dir, &name, &next_name, &mut old) {
                Ok(()) => {
                    phases.commit_ms = ms(tc.elapsed());
                    Ok(())
                }
                Err(e) => Err(Failure::from(format!("commit failed: {e}"))),
            }
        }
        Err(f) => Err(f),
    };
    phases.total_ms = ms(t0.elapsed());
    let (committed, message, conflicts) = match outcome {
        Ok(()) => (true, format!("'{name}' now runs {}", args.command.join(" ")), vec![]),
        Err(f) => {
            rollback(dir, &next_name, new_supervisor, &mut old);
            (false, f.message, f.conflicts)
        }
    };
    let out = Outcome {
        instance: name.clone(),
        committed,
        message,
        phases,
        conflicts,
        connections_left,
        transfer: transferred,
        adopted_connections,
        old_processes: info.processes.clone(),
        new_processes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if out.committed {
        println!(
            "updated '{name}': drain {:.1} ms, quiesce {:.1} ms, restart+replay {:.1} ms, state transfer {:.1} ms, commit {:.1} ms (total {:.1} ms); processes {:?}",
            out.phases.drain_ms,
            out.phases.quiesce_ms, out.phases.restart_ms, out.phases.transfer_ms, out.phases.commit_ms, out.phases.total_ms, out.new_processes
        );
        if out.adopted_connections > 0 {
            println!("{} idle connections adopted by the new version", out.adopted_connections);
        }
        if let Some(t) = &out.transfer {
            println!(
                "state: {} globals copied ({} untouched since startup skipped; {} of {} pages written since startup), {} heap blocks ({} bytes) of {} live, {} connections moved",
                t.state.globals,
                t.state.globals_clean,
                t.dirty_pages,
                t.dirty_pages + t.clean_pages,
                t.state.objects,
                t.state.bytes,
                t.state.live_objects,
                t.connections
            );
            if t.state.startup_matched + t.state.startup_reallocated > 0 {
                println!(
                    "startup objects: {} matched with the new version's ({} kept as its startup made them), {} reallocated",
                    t.state.startup_matched, t.state.startup_kept, t.state.startup_reallocated
                );
            }
            for n in &t.state.startup_notes {
                println!("  {n}");
            }
            if t.state.handled > 0 {
                println!("{} objects adjusted by the new version's MCR_ADD_OBJ_HANDLERs", t.state.handled);
            }
            if t.respawned_processes > 0 {
                println!(
                    "{} per-connection processes recreated by the new version's MCR_ADD_RESPAWN_HANDLER",
                    t.respawned_processes
                );
            }
            if !t.state.globals_dropped.is_empty() {
                println!("dropped (no longer in the new version): {}", t.state.globals_dropped.join(", "));
            }
            for w in &t.state.warnings {
                eprintln!("mcr: warning: {w}");
            }
        }
    } else {
        eprint!("{}", render::update_failure(&name, &out.message, &out.conflicts));
    }
    Ok(if out.committed { 0 } else { 1 })
}

/// Mark every descriptor above stderr close-on-exec (the inherited ones are cleared again
/// deliberately when they are placed).
fn close_on_exec_all() {
    for fd in mcr_supervisor::procfs::own_descriptors_above_stderr() {
        // SAFETY: F_GETFD/F_SETFD on our own descriptors (a stale number just fails).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn replay_path(dir: &InstanceDir, name: &str) -> PathBuf {
    dir.path.join(format!("{name}.replay.json"))
}

#[allow(clippy::too_many_arguments)]
fn restart(
    dir: &InstanceDir,
    name: &str,
    old: &mut Connection,
    info: &UpdateInfo,
    next_files: mcr_protocol::InstanceFiles,
    next_lock: std::fs::File,
    program: PathBuf,
    rest: &[String],
    runtime_lib: PathBuf,
    args: &UpdateArgs,
    respawned: &BTreeSet<i32>,
    new_supervisor: &mut Option<i32>,
    new_processes: &mut Vec<i32>,
) -> Result<(), Failure> {
    let logs = match old
        .request(&Request::StartupLogs)
        .map_err(|e| format!("reading the running version's startup logs: {e:#}"))?
    {
        Response::StartupLogs { processes } => processes,
        other => return Err(format!("unexpected answer: {other:?}").into()),
    };
    if let Some(p) = logs.iter().find(|p| p.log.is_none()) {
        return Err(format!(
            "process {} of the running version has no startup log: {}",
            p.pid,
            p.error.clone().unwrap_or_default()
        )
        .into());
    }
    let replay_log = replay_path(dir, name);
    mcr_protocol::instance::write_private(&replay_log, &serde_json::to_vec(&logs)?)?;
    let inherited = inherit_descriptors(info, &logs)?;
    let mut files = next_files;
    files.log = dir.files(name)?.log;
    let report = spawn_supervisor(SupervisorLaunch {
        name: format!("{name}.next"),
        files,
        lock: next_lock,
        program,
        args: rest.to_vec(),
        runtime_lib,
        profile: info.profile.as_ref().map(PathBuf::from),
        detach: true,
        update: Some(mcr_supervisor::UpdateLaunch {
            final_name: name.to_string(),
            replay_log,
            env: info.env.clone(),
            cwd: PathBuf::from(&info.cwd),
        }),
    })?;
    drop(inherited);
    wait_ready(report, Duration::from_millis(args.timeout), new_supervisor, &dir.files(name)?.log)?;
    // The process tree must match: a missing process is a thread of control the new
    // version never recreated; an extra one has no state to take over.
    // A process of the new version that is exiting (a daemon's first process, right after
    // its fork) may still be listed for a moment: compare again briefly before deciding.
    let mut next = Connection::open(dir, &format!("{name}.next"))?;
    let t = Instant::now();
    loop {
        // Per-connection processes the state transfer respawns are not the startup's to
        // make; one that is exiting (its client just left) has nothing to recreate.
        let live = live_processes(info);
        let old_set: BTreeSet<i32> =
            info.processes.iter().copied().filter(|p| !respawned.contains(p) && live.contains(p)).collect();
        let st = match next.request(&Request::Status)? {
            Response::Status(st) => st,
            other => return Err(format!("unexpected answer: {other:?}").into()),
        };
        *new_processes = st.processes.iter().map(|p| p.pid).collect();
        let new_set: BTreeSet<i32> = new_processes.iter().copied().collect();
        if !info.pid_namespace || old_set == new_set {
            break;
        }
        if t.elapsed() > Duration::from_millis(300) {
            let hosts = host_pids(info).unwrap_or_default();
            let missing: Vec<String> =
                old_set.difference(&new_set).map(|p| describe_process(*p, hosts.get(p).copied())).collect();
            return Err(format!(
                "the new version's processes {new_set:?} do not match the old version's {old_set:?}: a process the old version has (or an extra one) \
                 is not recreated by the new version's startup; add an MCR_ADD_REINIT_HANDLER if this is intended{}",
                if missing.is_empty() { String::new() } else { format!(" (not recreated: {})", missing.join("; ")) }
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Descriptors created by the old version's startup that are still open: copied out of
/// the old processes with pidfd_getfd and placed at the same numbers in this process,
/// without close-on-exec, so the new supervisor and its first process inherit them.
fn inherit_descriptors(info: &UpdateInfo, logs: &[ProcessLog]) -> Result<Vec<OwnedFd>, Failure> {
    let host = host_pids(info)?;
    let mut taken: BTreeMap<i32, OwnedFd> = BTreeMap::new();
    for p in logs {
        let Some(hpid) = host.get(&p.pid) else { continue };
        let fds: BTreeSet<i32> = p.log.iter().flat_map(|l| l.ops.iter()).flat_map(|o| o.fds.iter().copied()).collect();
        // SAFETY: pidfd_open on a process of the old version (root: ptrace access).
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, *hpid as libc::c_long, 0 as libc::c_long) } as i32;
        if pidfd < 0 {
            return Err(format!(
                "cannot open process {} (host pid {hpid}): {}",
                p.pid,
                std::io::Error::last_os_error()
            )
            .into());
        }
        for fd in fds {
            if taken.contains_key(&fd) || !std::path::Path::new(&format!("/proc/{hpid}/fd/{fd}")).exists() {
                continue;
            }
            // SAFETY: copying a descriptor of the old process into ours.
            let copy = unsafe {
                libc::syscall(libc::SYS_pidfd_getfd, pidfd as libc::c_long, fd as libc::c_long, 0 as libc::c_long)
            } as i32;
            if copy < 0 {
                return Err(
                    format!("cannot take fd {fd} of process {}: {}", p.pid, std::io::Error::last_os_error()).into()
                );
            }
            // SAFETY: probing and duplicating descriptors of this process.
            unsafe {
                if copy != fd && libc::fcntl(fd, libc::F_GETFD) >= 0 {
                    libc::close(copy);
                    libc::close(pidfd);
                    return Err(format!("fd {fd} is already in use in mcr itself").into());
                }
                if copy != fd {
                    libc::dup2(copy, fd);
                    libc::close(copy);
                } else {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                taken.insert(fd, std::os::fd::FromRawFd::from_raw_fd(fd));
            }
        }
        // SAFETY: our own pidfd.
        unsafe { libc::close(pidfd) };
    }
    Ok(taken.into_values().collect())
}

/// Move the old version's state into the new one (the hook between "new version
/// parked" and commit).
fn transfer_state(
    dir: &InstanceDir,
    name: &str,
    info: &UpdateInfo,
    new_supervisor: Option<i32>,
    connections: &[OpenConnections],
) -> Result<crate::transfer::Summary, Failure> {
    let new_supervisor = new_supervisor.ok_or("the new version's supervisor is unknown")?;
    let old = tree_taken_over(info)?;
    let mut next = Connection::open(dir, &format!("{name}.next"))?;
    let respawned = crate::transfer::respawn_volatile(&old, &host_pids_in(new_supervisor)?, &mut next, connections)
        .map_err(|e| Failure::from(format!("state transfer: {e}")))?;
    // Respawned processes are part of the new version now.
    let procs = crate::transfer::Processes { old, new: host_pids_in(new_supervisor)? };
    // Connections of their own to both versions, per tracer (the update's holds the drain).
    let connect = || -> Result<(Connection, Connection), String> {
        let open = |n: &str| Connection::open(dir, n).map_err(|e| e.to_string());
        Ok((open(name)?, open(&format!("{name}.next"))?))
    };
    let mut summary = crate::transfer::run(&procs, &connect, connections)
        .map_err(|e| Failure::from(format!("state transfer: {e}")))?;
    summary.respawned_processes = respawned;
    Ok(summary)
}

/// A process's connections the new version can adopt without their state: an idle check
/// vouches for them, no thread serves them from its stack, and the process is not one
/// forked per connection.
fn adoptable(c: &OpenConnections) -> bool {
    c.idle_check && c.busy.is_empty() && c.pinned.is_empty() && !c.volatile
}

/// --fresh-state with a resume handler: move the idle connections into the new version's
/// processes (same PIDs, same numbers) for it to adopt. Returns how many moved.
fn adopt_connections(
    dir: &InstanceDir,
    name: &str,
    info: &UpdateInfo,
    new_supervisor: Option<i32>,
    connections: &[OpenConnections],
) -> Result<usize, Failure> {
    let new_supervisor = new_supervisor.ok_or("the new version's supervisor is unknown")?;
    let (old, new) = (tree_taken_over(info)?, host_pids_in(new_supervisor)?);
    let mut next = Connection::open(dir, &format!("{name}.next"))?;
    let mut n = 0;
    for c in connections.iter().filter(|c| adoptable(c)) {
        let (Some(&old_host), Some(&new_host)) = (old.get(&c.pid), new.get(&c.pid)) else { continue };
        crate::transfer::adopt(old_host, c.pid, new_host, &mut next, &c.fds)
            .map_err(|e| Failure::from(format!("adopting connections: {e}")))?;
        n += c.fds.len();
    }
    Ok(n)
}

/// One line about an old process: what it runs, its state and where it waits.
fn describe_process(pid: i32, host: Option<i32>) -> String {
    let Some(h) = host else { return format!("process {pid}") };
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{h}/{f}")).unwrap_or_default();
    let state = read("status").lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("").trim().to_string();
    let cmd = read("cmdline").replace('\0', " ").trim().to_string();
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{h}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    format!(
                        "{}={}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path()).map(|l| l.display().to_string()).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    format!("process {pid} ({cmd}; {state}; waiting in {}; descriptors {})", read("wchan").trim(), fds.join(" "))
}

/// The old version's processes that still live (not exited), by PID inside its namespace.
fn live_processes(info: &UpdateInfo) -> BTreeSet<i32> {
    match host_pids(info) {
        Ok(m) => m.into_keys().collect(),
        Err(_) => info.processes.iter().copied().collect(),
    }
}

/// The old processes the new version took over (PID in the namespace → host PID): not a
/// per-connection process whose client left, which is still alive, parked, and ends
/// with the old version (a transfer that paired it found "no counterpart").
fn tree_taken_over(info: &UpdateInfo) -> Result<BTreeMap<i32, i32>, Failure> {
    let mut old = host_pids(info)?;
    old.retain(|pid, _| info.processes.contains(pid));
    Ok(old)
}

/// PIDs inside the old version's namespace → host PIDs.
fn host_pids(info: &UpdateInfo) -> Result<BTreeMap<i32, i32>, Failure> {
    if !info.pid_namespace {
        return Ok(info.processes.iter().map(|&p| (p, p)).collect());
    }
    host_pids_in(info.supervisor_pid)
}

/// PIDs inside the PID namespace supervised by `supervisor_pid` → host PIDs.
fn host_pids_in(supervisor_pid: i32) -> Result<BTreeMap<i32, i32>, Failure> {
    let ns = std::fs::read_link(format!("/proc/{supervisor_pid}/ns/pid"))
        .map_err(|e| format!("cannot read the supervisor's PID namespace: {e}"))?;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(hpid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if hpid == supervisor_pid || std::fs::read_link(format!("/proc/{hpid}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{hpid}/status")).unwrap_or_default();
        // An exited process not reaped yet (a per-connection child whose client left just
        // before the quiesce) holds nothing to move.
        if status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| st.trim_start().starts_with(['Z', 'X']))
        {
            continue;
        }
        if let Some(nspid) = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last()?.parse::<i32>().ok())
        {
            out.insert(nspid, hpid);
        }
    }
    Ok(out)
}

fn wait_ready(
    report: OwnedFd,
    timeout: Duration,
    new_supervisor: &mut Option<i32>,
    log: &std::path::Path,
) -> Result<(), Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in reports(report) {
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut conflicts = Vec::new();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Failure { message: "interrupted by the user".into(), conflicts });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure {
                message: format!(
                    "the new version did not complete its startup (every thread at a quiescent point) within {} ms",
                    timeout.as_millis()
                ),
                conflicts,
            });
        }
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(LaunchReport::Supervising { supervisor_pid, .. }) => *new_supervisor = Some(supervisor_pid),
            Ok(LaunchReport::Started { .. }) => return Ok(()),
            Ok(LaunchReport::ReplayConflict { conflict }) => {
                conflicts.push(conflict);
                return Err(Failure {
                    message: "replaying the new version's startup found a conflict".into(),
                    conflicts,
                });
            }
            Ok(LaunchReport::LaunchFailed { message }) => {
                return Err(Failure { message: format!("the new version could not start: {message}"), conflicts })
            }
            Ok(LaunchReport::Exited { status }) => {
                // A conflict report may trail the exit; the runtime also wrote it to the log.
                while let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
                    if let LaunchReport::ReplayConflict { conflict } = r {
                        conflicts.push(conflict);
                    }
                }
                if !conflicts.is_empty() {
                    return Err(Failure {
                        message: "replaying the new version's startup found a conflict".into(),
                        conflicts,
                    });
                }
                let mut message = format!("the new version exited with {status} during its startup");
                if status == mcr_protocol::ExitStatus::Code(CONFLICT_EXIT) {
                    let logged = std::fs::read_to_string(log).unwrap_or_default();
                    if let Some(line) = logged.lines().rev().find(|l| l.contains("replay conflict:")) {
                        message = format!(
                            "replaying the new version's startup found a conflict: {}",
                            line.split("replay conflict:").nth(1).unwrap_or(line).trim()
                        );
                    }
                }
                return Err(Failure { message, conflicts });
            }
            Ok(LaunchReport::Replaced) => return Err("unexpected report from the new supervisor".into()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure { message: "the new version's supervisor died during startup".into(), conflicts })
            }
        }
    }
}

fn commit(dir: &InstanceDir, name: &str, next_name: &str, old: &mut Connection) -> Result<()> {
    let files = dir.files(name)?;
    match old.request(&Request::Retire) {
        Ok(Response::Ok) => {}
        Ok(other) => bail!("the old version refused to retire: {other:?}"),
        // A retiring supervisor exits as soon as its processes are gone, and its answer
        // can go down with it (a reset connection): it retired if it is gone.
        Err(e) => {
            let t = Instant::now();
            while files.is_live() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if files.is_live() {
                return Err(e.context("the old version did not answer the request to retire"));
            }
        }
    }
    let t = Instant::now();
    while files.is_live() {
        if t.elapsed() > Duration::from_secs(5) {
            bail!("the old version's supervisor did not exit");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match Connection::open(dir, next_name)?.request(&Request::TakeOver)? {
        Response::Ok => Ok(()),
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer to take-over: {other:?}"),
    }
}

fn rollback(dir: &InstanceDir, next_name: &str, new_supervisor: Option<i32>, old: &mut Connection) {
    if let Some(pid) = new_supervisor.filter(|&p| p > 0) {
        // SAFETY: killing the new version's supervisor (PID 1 of its namespace: the
        // kernel ends every process of the new version with it).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Ok(files) = dir.files(next_name) {
        let t = Instant::now();
        while files.is_live() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        files.clean_stale();
    }
    // Reap the dead supervisor (we are its subreaper).
    let mut st = 0;
    // SAFETY: non-blocking reap of our children.
    while unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } > 0 {}
    if let Err(e) = old.request(&Request::Resume) {
        eprintln!("mcr: could not resume the old version: {e} (run `mcr ctl <name> resume`)");
    }
}
