//! The control socket: requests from the `mcr` CLI.

use crate::handover::{OldAction, OldSide};
use crate::state::{AskError, State};
use mcr_protocol::{
    InstanceStatus, Laggard, OpenConnections, ProcessInfo, ProcessLog, Request, Response, RuntimeCommandKind,
    RuntimeReply,
};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

pub async fn accept_loop(state: State, listener: UnixListener) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                // The socket file is private to its owner, but a directory someone loosened
                // later must not open the instance to other users: only root and the user
                // the supervisor runs as may command it.
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                match stream.peer_cred() {
                    Ok(c) if c.uid() == 0 || c.uid() == me => {
                        tokio::spawn(serve(state.clone(), stream));
                    }
                    _ => {}
                }
            }
            Err(e) => backoff.wait(&e).await,
        }
    }
}

/// After a failed accept (EMFILE at the descriptor limit fails again at once), wait a
/// little longer each time instead of spinning on the listener.
#[derive(Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub async fn wait(&mut self, e: &std::io::Error) {
        if self.failures == 0 {
            eprintln!("mcr: cannot accept a connection ({e}); retrying");
        }
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(Duration::from_millis(1u64 << self.failures.min(7))).await;
    }
}

async fn serve(state: State, stream: UnixStream) {
    let conn = {
        let mut g = state.lock();
        g.next_control_conn += 1;
        g.next_control_conn
    };
    let (rd, mut wr) = stream.into_split();
    let mut lines = crate::lines::Lines::new(rd);
    let mut asked_handover = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let request = mcr_protocol::decode_line::<Request>(line.as_bytes());
        asked_handover |= matches!(request, Ok(Request::Handover));
        let drained = match &request {
            Ok(Request::Drain { .. }) => Some(state.lock().old_side.drain(conn)),
            _ => None,
        };
        let resp = match request {
            // An update's drain: until this connection resumes the instance (or the new
            // version asks for the handover), the instance is held for it, and resumed if
            // the connection goes away.
            Ok(req @ Request::Drain { .. }) => match drained {
                Some(Err(why)) => Response::Error { message: why.to_string() },
                // A drain can last long: give up on it as soon as the asking side is gone
                // (next_line is cancel-safe; the CLI sends nothing while it waits).
                _ => tokio::select! {
                    resp = handle(&state, req, conn) => resp,
                    _ = lines.next_line() => break,
                },
            },
            Ok(req) => handle(&state, req, conn).await,
            Err(e) => Response::Error { message: format!("bad request: {e}") },
        };
        if wr.write_all(&mcr_protocol::encode_line(&resp)).await.is_err() {
            break;
        }
    }
    let action = state.lock().old_side.closed(conn, asked_handover);
    match action {
        OldAction::Resume => {
            // `mcr update` died mid-way (killed, crashed), or its new version did after it:
            // never leave the server refusing connections or parked with nobody to resume it.
            eprintln!(
                "mcr: the update that was holding this instance went away before its commit; resuming the server"
            );
            resume_old(&state).await;
        }
        OldAction::RetakeName => {
            eprintln!("mcr: the new version went away before its commit; this version keeps the instance");
            retake_name(&state);
        }
        _ => {}
    }
}

/// This version's name back if an update's new version took it without committing.
fn retake_name(state: &State) {
    if let Err(e) = crate::name::retake(state) {
        eprintln!("mcr: cannot take the instance's control socket back: {e}");
    }
}

/// Resume the old version of an update that did not commit: its name first, then its
/// processes.
async fn resume_old(state: &State) -> usize {
    retake_name(state);
    resume_all(state, ASK_TIMEOUT).await
}

pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long past a quiesce's or a drain's own timeout a runtime's answer may take to come
/// (a runtime gives up at that timeout itself, and answers then).
const REPLY_GRACE: Duration = Duration::from_millis(500);

/// How long a resume request waits for a retiring version's fate: its new version
/// releases it (the commit point) or its link closes (it failed before it, and this version
/// resumes). Either comes within the commit's own steps.
const RETIRING_SETTLES: Duration = Duration::from_secs(10);

async fn handle(state: &State, req: Request, conn: u64) -> Response {
    match req {
        Request::Status => Response::Status(status(state).await),
        Request::StartupLogs { refresh } => startup_logs(state, &refresh).await,
        Request::UpdateInfo => {
            let g = state.lock();
            let facts = g.launch.clone();
            drop(g);
            match facts {
                Some(f) => Response::UpdateInfo(mcr_protocol::UpdateInfo {
                    cwd: f.cwd,
                    env: f.env,
                    pid_namespace: state.pid_namespace,
                    supervisor_pid: state.supervisor_pid,
                    profile: f.profile,
                    detach: f.detach,
                    processes: state.processes().iter().map(|p| p.pid).collect(),
                }),
                None => Response::Error { message: "no launch information".into() },
            }
        }
        Request::Handover => {
            let mut g = state.lock();
            let lock_fd = g.lock.as_ref().map(|l| l.as_raw_fd());
            let init_fd = state.init_pidfd.as_ref().map(|p| p.as_raw_fd());
            match (lock_fd, g.old_side.handover(conn)) {
                (Some(lock_fd), Ok(_)) => Response::HandedOver { lock_fd, init_fd },
                (None, _) => Response::Error { message: "this supervisor holds no instance lock".into() },
                (_, Err(why)) => Response::Error { message: why.to_string() },
            }
        }
        Request::Retire => match state.lock().old_side.retire(conn) {
            // Parked for good unless the link closes before the release.
            Ok(_) => Response::Ok,
            Err(why) => Response::Error { message: why.to_string() },
        },
        Request::Release => {
            // The init first: should this supervisor die from here on, the init ends the
            // version rather than start another supervisor for it. (No await from here to
            // the release: nothing else runs in between.)
            let may = matches!(state.lock().old_side, OldSide::Retiring { successor } if successor == conn);
            if may && state.init_link.is_some() && !state.tell_init(&crate::init_link::Message::Retired, &[]) {
                return Response::Error { message: "cannot tell this version's init that it retires".into() };
            }
            let released = state.lock().old_side.release(conn);
            match released {
                // The commit point. The committed new version holds every inherited
                // object: the old processes (parked, mid-nothing) can simply go.
                Ok(_) => {
                    for p in state.processes() {
                        // SAFETY: kill(2) to a process of our instance.
                        unsafe { libc::kill(p.pid, libc::SIGKILL) };
                    }
                    Response::Ok
                }
                Err(why) => Response::Error { message: why.to_string() },
            }
        }
        Request::Commit { processes, reown } => crate::commit::commit(state, &processes, &reown).await,
        Request::ProfileData => crate::profiling::data(state, ASK_TIMEOUT).await,
        Request::Quiesce { timeout_ms } => quiesce(state, Duration::from_millis(timeout_ms.max(1))).await,
        Request::Resume => {
            if state.lock().new_side.is_some_and(|s| !s.may_resume()) {
                return Response::Error {
                    message: "this is an update's new version: it resumes at its commit, not before".into(),
                };
            }
            // Retiring, the answer is not known yet: the update asks after its commit got
            // no answer, and "retired" now would report a commit while the new version's
            // failure is about to resume this one (its link's close may be handled a moment
            // after this request).
            let deadline = Instant::now() + RETIRING_SETTLES;
            while matches!(state.lock().old_side, OldSide::Retiring { .. }) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if matches!(state.lock().old_side, OldSide::Retiring { .. }) {
                return Response::Error {
                    message: format!(
                        "this version is retiring and its new version neither committed nor failed within {} s",
                        RETIRING_SETTLES.as_secs()
                    ),
                };
            }
            let resumed = state.lock().old_side.resume();
            match resumed {
                Ok(_) => Response::Resumed { processes: resume_old(state).await },
                Err(_) => Response::Retired,
            }
        }
        Request::Drain { timeout_ms, only_volatile, move_pinned, move_volatile, adopt_idle } => {
            let wait = match (only_volatile, adopt_idle) {
                (true, _) => DrainWait::Unmovable { move_pinned, move_volatile },
                (false, true) => DrainWait::NotIdle,
                (false, false) => DrainWait::All,
            };
            drain(state, Duration::from_millis(timeout_ms), wait).await
        }
        Request::Runtime { pid, command } => match state.ask(pid, command, Duration::from_secs(30)).await {
            Ok(reply) => Response::Runtime { reply },
            Err(e) => Response::Error { message: e.to_string() },
        },
        Request::Signal { signal } => match state.lock().main_pid {
            Some(pid) => {
                // SAFETY: kill(2) to a process of our instance.
                if unsafe { libc::kill(pid, signal) } == 0 {
                    Response::Ok
                } else {
                    Response::Error {
                        message: format!("cannot signal process {pid}: {}", std::io::Error::last_os_error()),
                    }
                }
            }
            None => Response::Error { message: "the server has no main process (it is exiting)".into() },
        },
        Request::Stop { grace_ms } => {
            // Parked threads would never see the SIGTERM; but a retired version, or a new
            // one before its commit, must not run a single request: it is killed instead.
            let resumable = {
                let g = state.lock();
                g.quiesced && g.old_side != OldSide::Retired && g.new_side.is_none_or(|s| s.may_resume())
            };
            if resumable {
                resume_all(state, ASK_TIMEOUT).await;
            }
            begin_stop(state, Duration::from_millis(grace_ms));
            Response::Stopping
        }
        Request::WaitStarted { timeout_ms } => {
            let mut rx = state.started_tx.subscribe();
            let wait = async {
                loop {
                    if let Some(r) = rx.borrow().clone() {
                        return r;
                    }
                    if rx.changed().await.is_err() {
                        return Err("the supervisor is exiting".to_string());
                    }
                }
            };
            match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
                Ok(Ok(ms)) => Response::Started { startup_ms: ms },
                Ok(Err(message)) => Response::Error { message },
                Err(_) => Response::Error { message: startup_laggards(state).await },
            }
        }
    }
}

/// Why startup has not completed: which processes and threads never reached a quiescent
/// point.
async fn startup_laggards(state: &State) -> String {
    let st = status(state).await;
    let mut lines = vec!["the server did not complete startup in time; still waiting for:".to_string()];
    for p in &st.processes {
        if p.startup_complete {
            continue;
        }
        if !p.managed || p.threads.is_empty() {
            let why = p.error.clone().unwrap_or_else(|| "not registered with mcr".into());
            lines.push(format!(
                "  process {} ({}): {why}; {}",
                p.pid,
                p.command_line.join(" "),
                crate::procfs::where_is(p.pid)
            ));
            continue;
        }
        for t in &p.threads {
            if t.quiescent_point.is_none() {
                lines.push(format!(
                    "  process {} thread {} ({}): {}, never reached a quiescent point",
                    p.pid,
                    t.tid,
                    t.class,
                    t.state.describe()
                ));
            }
        }
    }
    if lines.len() == 1 {
        // Every process says its startup is complete, yet the supervisor has not counted
        // it so: say what it still waits for, so that a hang here is never a blank.
        let g = state.lock();
        let incomplete: Vec<i32> = g.procs.iter().filter(|(_, r)| !r.startup_complete).map(|(p, _)| *p).collect();
        lines.push(format!(
            "  (every process reports its startup complete; the supervisor still waits for forked children \
             {:?} to register and for the completion of registered processes {:?})",
            g.awaited_children, incomplete
        ));
    }
    lines.join("\n")
}

/// Every process's startup log; for a process of `refresh` still in the registration the
/// asker read its whole log from, only what changed since.
async fn startup_logs(state: &State, refresh: &[(i32, u64)]) -> Response {
    let procs = state.processes();
    let registered: Vec<(i32, u64)> = state.lock().procs.iter().map(|(&pid, r)| (pid, r.conn)).collect();
    let pids = |refreshing: bool| -> Vec<i32> {
        registered.iter().filter(|r| refresh.contains(r) == refreshing).map(|&(pid, _)| pid).collect()
    };
    let (refreshed, whole) = (pids(true), pids(false));
    let (mut replies, changed) = tokio::join!(
        ask_all(state, &whole, RuntimeCommandKind::StartupLog, ASK_TIMEOUT),
        ask_all(state, &refreshed, RuntimeCommandKind::StartupLogRefresh, ASK_TIMEOUT)
    );
    replies.extend(changed);
    let processes = procs
        .iter()
        .map(|p| {
            let reply = replies.iter().find(|(pid, _)| *pid == p.pid).map(|(_, r)| r);
            let registration = registered.iter().find(|(pid, _)| *pid == p.pid).map_or(0, |&(_, conn)| conn);
            let (log, refresh, error) = match reply {
                Some(Ok(RuntimeReply::StartupLog(l))) => (Some(l.clone()), None, None),
                Some(Ok(RuntimeReply::StartupLogRefresh(r))) => (None, Some(r.clone()), None),
                Some(Ok(other)) => (None, None, Some(format!("unexpected answer {other:?}"))),
                Some(Err(e)) => (None, None, Some(e.to_string())),
                None => (None, None, Some("not registered with mcr".to_string())),
            };
            ProcessLog { pid: p.pid, command_line: p.cmdline.clone(), log, error, registration, refresh }
        })
        .collect();
    Response::StartupLogs { processes }
}

/// SIGTERM to the main process now, SIGKILL to every process after `grace`.
pub fn begin_stop(state: &State, grace: Duration) {
    let main = {
        let mut g = state.lock();
        if g.stopping {
            return;
        }
        g.stopping = true;
        g.main_pid
    };
    let targets: Vec<i32> = match main {
        Some(p) => vec![p],
        None => state.processes().iter().map(|p| p.pid).collect(),
    };
    for pid in targets {
        // SAFETY: kill(2) to a process of our instance.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let st = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        for p in st.processes() {
            // SAFETY: kill(2) to a process of our instance.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    });
}

/// How long `status` waits for a process that disconnected without answering to end.
const EXIT_GRACE: Duration = Duration::from_millis(250);

pub async fn status(state: &State) -> InstanceStatus {
    let mut procs = state.processes();
    let registered: Vec<i32> = state.lock().procs.keys().copied().collect();
    let replies = ask_all(state, &registered, RuntimeCommandKind::Status, ASK_TIMEOUT).await;
    // A process that closed its connection without answering is almost always on its
    // way out (a daemonizing server's first process, just after `mcr run --detach`
    // returned): give it a moment to be gone rather than list it as a failure.
    let leaving: Vec<i32> =
        replies.iter().filter(|(_, r)| matches!(r, Err(AskError::Disconnected(_)))).map(|(p, _)| *p).collect();
    if !leaving.is_empty() {
        let t0 = Instant::now();
        while t0.elapsed() < EXIT_GRACE && leaving.iter().any(|p| procs.iter().any(|q| q.pid == *p)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            procs = state.processes();
        }
    }
    let g = state.lock();
    let mut out = Vec::new();
    for p in &procs {
        let reg = g.procs.get(&p.pid);
        let reply = replies.iter().find(|(pid, _)| *pid == p.pid).map(|(_, r)| r);
        let mut info = ProcessInfo {
            pid: p.pid,
            ppid: p.ppid,
            command_line: if p.cmdline.is_empty() {
                reg.map(|r| r.argv.clone()).unwrap_or_default()
            } else {
                p.cmdline.clone()
            },
            managed: reg.is_some(),
            startup_complete: reg.is_some_and(|r| r.startup_complete),
            startup_ms: reg.and_then(|r| r.startup_ms),
            threads: Vec::new(),
            error: None,
            dirty: None,
        };
        match reply {
            Some(Ok(RuntimeReply::Status { threads, dirty, .. })) => {
                info.threads = threads.clone();
                info.dirty = dirty.clone();
            }
            Some(Ok(other)) => info.error = Some(format!("unexpected answer {other:?}")),
            Some(Err(e)) => info.error = Some(e.to_string()),
            None if p.has_runtime => info.error = Some("not registered yet".into()),
            None => {
                info.error = Some(
                    "runs without the mcr runtime (static binary or cleared environment): it cannot be quiesced".into(),
                )
            }
        }
        out.push(info);
    }
    InstanceStatus {
        name: g.name.clone(),
        program: state.program.clone(),
        args: state.args.clone(),
        supervisor_pid: state.supervisor_pid,
        pid_namespace: state.pid_namespace,
        started: g.started.is_some(),
        startup_ms: g.started,
        startup_from_exec_ms: g.started_from_exec,
        quiesced: g.quiesced,
        main_pid: g.main_pid,
        processes: out,
    }
}

/// Send `command` to every process in `pids` at once and collect the answers.
pub(crate) async fn ask_all(
    state: &State,
    pids: &[i32],
    command: RuntimeCommandKind,
    timeout: Duration,
) -> Vec<(i32, Result<RuntimeReply, AskError>)> {
    let handles: Vec<_> = pids
        .iter()
        .map(|&pid| {
            let (st, c) = (state.clone(), command.clone());
            tokio::spawn(async move { (pid, st.ask(pid, c, timeout).await) })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(r) = h.await {
            out.push(r);
        }
    }
    out
}

/// Stop accepting in every process, then wait for their client connections to close.
/// Processes that exit meanwhile (a finished per-connection child) just drop out.
/// Which connections a drain waits for.
enum DrainWait {
    All,
    /// Those the state transfer cannot move into the new version.
    Unmovable {
        move_pinned: bool,
        move_volatile: bool,
    },
    /// Without state transfer, those the new version cannot adopt as new connections.
    NotIdle,
}

async fn drain(state: &State, timeout: Duration, wait: DrainWait) -> Response {
    let t0 = Instant::now();
    loop {
        let pids: Vec<i32> = state.lock().procs.keys().copied().collect();
        // The user's timeout bounds the drain: a runtime that does not answer within it
        // (and a grace) is named, not waited for.
        let answer_within = (timeout.saturating_sub(t0.elapsed()) + REPLY_GRACE).clamp(2 * REPLY_GRACE, ASK_TIMEOUT);
        let mut remaining = Vec::new();
        let mut unreachable = Vec::new();
        for (pid, r) in ask_all(state, &pids, RuntimeCommandKind::Drain, answer_within).await {
            match r {
                Ok(RuntimeReply::Connections { fds, volatile, pinned, idle_check, busy, finished })
                    if !fds.is_empty() || finished =>
                {
                    remaining.push(OpenConnections { pid, fds, volatile, pinned, idle_check, busy, finished });
                }
                // A process that exited meanwhile (a finished per-connection child) just
                // drops out; one that lives and cannot answer keeps its connections from
                // being known.
                Err(e) if e.unreachable() => unreachable.push(describe_unreachable(state, pid, &e)),
                _ => {}
            }
        }
        if !unreachable.is_empty() {
            return Response::Error { message: format!("cannot drain: {}", unreachable.join("; ")) };
        }
        let waiting = remaining.iter().any(|c| match wait {
            DrainWait::All => true,
            DrainWait::NotIdle => c.volatile || !c.pinned.is_empty() || !c.idle_check || !c.busy.is_empty(),
            DrainWait::Unmovable { move_pinned, move_volatile } => {
                (c.volatile && !move_volatile) || (!c.pinned.is_empty() && !move_pinned)
            }
        });
        if !waiting || t0.elapsed() >= timeout {
            return Response::Drained { elapsed_us: t0.elapsed().as_micros() as u64, remaining };
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One line about a process that lives and did not answer: what it runs, and why.
fn describe_unreachable(state: &State, pid: i32, e: &AskError) -> String {
    let cmd = state.processes().into_iter().find(|p| p.pid == pid).map(|p| p.cmdline.join(" ")).unwrap_or_default();
    let e = e.to_string();
    match e.strip_prefix(&format!("process {pid} ")) {
        Some(rest) if !cmd.is_empty() => format!("process {pid} ({cmd}) {rest}"),
        _ => e,
    }
}

/// Release every parked thread (and end a drain). A process that is stopped gets the
/// command when it continues; waiting for the answers takes at most `wait`.
pub(crate) async fn resume_all(state: &State, wait: Duration) -> usize {
    let pids: Vec<i32> = state.lock().procs.keys().copied().collect();
    let n =
        ask_all(state, &pids, RuntimeCommandKind::Resume, wait).await.into_iter().filter(|(_, r)| r.is_ok()).count();
    state.lock().quiesced = false;
    n
}

/// Quiesce every process in parallel, within `timeout` (and a grace for the answers). A
/// process that appears meanwhile (a fork) is quiesced too; a process without the runtime,
/// or one that lives and cannot answer (stopped, or its runtime stuck), makes the request
/// fail, naming it.
async fn quiesce(state: &State, timeout: Duration) -> Response {
    let t0 = Instant::now();
    let mut done: Vec<i32> = Vec::new();
    let mut threads = 0usize;
    let mut laggards: Vec<Laggard> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for _round in 0..8 {
        let todo: Vec<i32> = state.lock().procs.keys().copied().filter(|p| !done.contains(p)).collect();
        let unregistered: Vec<_> =
            state.processes().into_iter().filter(|p| !state.lock().procs.contains_key(&p.pid)).collect();
        if todo.is_empty() && unregistered.is_empty() {
            break;
        }
        if todo.is_empty() {
            if t0.elapsed() >= timeout {
                for p in unregistered {
                    problems.push(if p.has_runtime {
                        format!("process {} ({}) has not registered with mcr yet", p.pid, p.cmdline.join(" "))
                    } else {
                        format!(
                            "process {} ({}) runs without the mcr runtime and cannot be quiesced",
                            p.pid,
                            p.cmdline.join(" ")
                        )
                    });
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let left = timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
        let ms = left.as_millis() as u64;
        let connections: Vec<(i32, Option<u64>)> = {
            let g = state.lock();
            todo.iter().map(|p| (*p, g.procs.get(p).map(|r| r.conn))).collect()
        };
        let deadline_ns = Some(monotonic_ns() + (left + REPLY_GRACE).as_nanos() as u64);
        let asked =
            ask_all(state, &todo, RuntimeCommandKind::Quiesce { timeout_ms: ms, deadline_ns }, left + REPLY_GRACE)
                .await;
        for (pid, r) in asked {
            done.push(pid);
            match r {
                Ok(RuntimeReply::Quiesced { threads: n, .. }) => threads += n,
                Ok(RuntimeReply::QuiesceFailed { laggards: l, .. }) => laggards.extend(l),
                Ok(other) => problems.push(format!("process {pid}: unexpected answer {other:?}")),
                // Alive and silent: not quiesced, whatever happens to it later (the
                // resume below waits in its socket for when it continues).
                Err(e) if e.unreachable() => {
                    problems.push(format!("{}; not quiesced", describe_unreachable(state, pid, &e)))
                }
                Err(e) => {
                    // A process that exited (its runtime socket closes a moment before it
                    // leaves /proc) is no obstacle; one that exec'd registers again, on
                    // another connection, and is asked again in the next round.
                    let asked_on = connections.iter().find(|(p, _)| *p == pid).and_then(|(_, c)| *c);
                    let t = Instant::now();
                    loop {
                        let alive = state.processes().iter().any(|p| p.pid == pid);
                        let registered_again = state.lock().procs.get(&pid).is_some_and(|r| Some(r.conn) != asked_on);
                        if !alive {
                            break;
                        }
                        if registered_again {
                            done.retain(|&p| p != pid);
                            break;
                        }
                        if t.elapsed() > Duration::from_millis(300) {
                            problems.push(e.to_string());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
        if !laggards.is_empty() || !problems.is_empty() {
            break;
        }
    }
    let elapsed_us = t0.elapsed().as_micros() as u64;
    if laggards.is_empty() && problems.is_empty() {
        state.lock().quiesced = true;
        return Response::Quiesced { elapsed_us, processes: done.len(), threads };
    }
    resume_all(state, REPLY_GRACE).await;
    let mut message = format!(
        "quiescence did not converge within {} ms; the server was resumed and keeps running",
        timeout.as_millis()
    );
    for p in problems {
        message.push_str("\n  ");
        message.push_str(&p);
    }
    Response::QuiesceFailed { message, laggards }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every process of the machine shares (the
/// runtime compares a quiesce's deadline with it).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
