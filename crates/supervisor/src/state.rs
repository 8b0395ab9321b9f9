//! The supervisor's event loop and its view of the server.

use crate::launch::Launched;
use crate::{control, procfs, report, runtime_link, Config};
use mcr_protocol::{ExitStatus, LaunchReport, RuntimeCommandKind, RuntimeEvent, RuntimeReply};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// A registered process of the server.
pub struct Registered {
    pub conn: u64,
    pub argv: Vec<String>,
    pub startup_complete: bool,
    pub startup_ms: Option<f64>,
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
pub struct Inner {
    pub procs: BTreeMap<i32, Registered>,
    pub pending: HashMap<u64, (i32, oneshot::Sender<RuntimeReply>)>,
    pub next_id: u64,
    pub next_conn: u64,
    pub main_pid: Option<i32>,
    pub exit: Option<ExitStatus>,
    pub started: Option<f64>,
    pub quiesced: bool,
    pub stopping: bool,
}

pub struct Shared {
    pub inner: Mutex<Inner>,
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub pid_namespace: bool,
    pub supervisor_pid: i32,
    pub runtime_lib_name: String,
    pub launched_at: Instant,
    /// None while starting; Some(Ok(ms)) once started; Some(Err(msg)) if it never will.
    pub started_tx: watch::Sender<Option<Result<f64, String>>>,
}

pub type State = Arc<Shared>;

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send a command to one process and wait for its reply.
    pub async fn ask(&self, pid: i32, command: RuntimeCommandKind, timeout: Duration) -> Result<RuntimeReply, String> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut g = self.lock();
            let Some(p) = g.procs.get(&pid) else { return Err(format!("process {pid} is not registered")) };
            let ptx = p.tx.clone();
            g.next_id += 1;
            let id = g.next_id;
            g.pending.insert(id, (pid, tx));
            let line = mcr_protocol::encode_line(&mcr_protocol::RuntimeCommand { id, command });
            if ptx.send(line).is_err() {
                g.pending.remove(&id);
                return Err(format!("process {pid} disconnected"));
            }
            id
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(format!("process {pid} exited or disconnected before answering")),
            Err(_) => {
                self.lock().pending.remove(&id);
                Err(format!(
                    "process {pid} did not answer within {} ms (its runtime starts at the process's first blocking call)",
                    timeout.as_millis()
                ))
            }
        }
    }

    pub fn on_event(&self, conn: u64, pid: i32, ev: RuntimeEvent, tx: &mpsc::UnboundedSender<Vec<u8>>) {
        let mut g = self.lock();
        match ev {
            RuntimeEvent::Hello { argv, .. } => {
                g.procs.insert(pid, Registered { conn, argv, startup_complete: false, startup_ms: None, tx: tx.clone() });
                if g.main_pid.is_none() {
                    g.main_pid = Some(pid);
                }
            }
            RuntimeEvent::StartupComplete { elapsed_ms } => {
                if let Some(p) = g.procs.get_mut(&pid) {
                    p.startup_complete = true;
                    p.startup_ms = Some(elapsed_ms);
                }
            }
            RuntimeEvent::Reply { id, reply } => {
                if let Some((_, waiter)) = g.pending.remove(&id) {
                    let _ = waiter.send(reply);
                }
            }
        }
    }

    pub fn on_disconnect(&self, conn: u64, pid: i32) {
        let mut g = self.lock();
        if g.procs.get(&pid).is_some_and(|p| p.conn == conn) {
            g.procs.remove(&pid);
            // Dropping the senders fails every waiter of this process at once.
            g.pending.retain(|_, (p, _)| *p != pid);
        }
    }

    pub fn processes(&self) -> Vec<procfs::Proc> {
        procfs::server_processes(self.pid_namespace, &self.runtime_lib_name)
    }

    /// Startup is complete when every process carrying the runtime has registered and
    /// reported completion. Processes without the runtime cannot be waited for.
    fn check_started(&self) {
        if self.started_tx.borrow().is_some() {
            return;
        }
        let procs = self.processes();
        let mut g = self.lock();
        let relevant: Vec<_> = procs.iter().filter(|p| p.has_runtime).collect();
        if relevant.is_empty() {
            return;
        }
        let all = relevant.iter().all(|p| g.procs.get(&p.pid).is_some_and(|r| r.startup_complete));
        if all {
            // The slowest process's own measure (constructor to completion), which is
            // what a user means by "startup"; wall time since launch is the fallback.
            let ms = relevant
                .iter()
                .filter_map(|p| g.procs.get(&p.pid)?.startup_ms)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                .unwrap_or_else(|| self.launched_at.elapsed().as_secs_f64() * 1000.0);
            g.started = Some(ms);
            drop(g);
            let _ = self.started_tx.send(Some(Ok(ms)));
        }
    }
}

fn reap(state: &State) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            let mut g = state.lock();
            if g.main_pid == Some(pid) || g.main_pid.is_none() {
                g.exit = Some(ExitStatus::from_wait_status(status));
                g.main_pid = None;
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return true;
        }
        return false;
    }
}

/// When the main process exits (a daemon's parent, typically), the oldest remaining
/// process takes over: signals go to it and its exit status becomes the server's.
fn pick_main(state: &State) {
    if state.lock().main_pid.is_some() {
        return;
    }
    let procs = state.processes();
    if let Some(p) = procs.iter().min_by_key(|p| p.pid) {
        let mut g = state.lock();
        g.main_pid = Some(p.pid);
        g.exit = None;
    }
}

pub async fn serve(cfg: Config, launched: Launched) -> i32 {
    let (started_tx, _) = watch::channel(None);
    let lib_name = cfg.runtime_lib.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "libmcr.so".into());
    let state: State = Arc::new(Shared {
        inner: Mutex::new(Inner { main_pid: Some(launched.first_pid), ..Default::default() }),
        name: cfg.name.clone(),
        program: cfg.program.display().to_string(),
        args: cfg.args.clone(),
        pid_namespace: cfg.pid_namespace,
        supervisor_pid: cfg.supervisor_pid,
        runtime_lib_name: lib_name,
        launched_at: Instant::now(),
        started_tx,
    });
    let _ = std::fs::write(&cfg.files.pid, format!("{}\n", cfg.supervisor_pid));
    report(&cfg.report, &LaunchReport::Supervising {
        supervisor_pid: cfg.supervisor_pid,
        pid_namespace: cfg.pid_namespace,
        note: cfg.namespace_note.clone(),
    });

    let Ok(runtime_listener) = tokio::net::UnixListener::from_std(launched.runtime) else { return 70 };
    let Ok(control_listener) = tokio::net::UnixListener::from_std(launched.control) else { return 70 };
    tokio::spawn(runtime_link::accept_loop(state.clone(), runtime_listener));
    tokio::spawn(control::accept_loop(state.clone(), control_listener));

    // Forward the launcher's report of completed startup.
    {
        let mut rx = state.started_tx.subscribe();
        let fd = cfg.report.as_ref().and_then(|f| f.try_clone().ok());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(Ok(ms)) = *rx.borrow() {
                    report(&fd, &LaunchReport::Started { startup_ms: ms });
                    break;
                }
            }
        });
    }

    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(_) => return 70,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let exit = loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => {}
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                // `kill <supervisor>`: stop the server the way `mcr stop` does.
                control::begin_stop(&state, Duration::from_secs(10));
            }
        }
        let gone = reap(&state);
        if gone {
            let status = state.lock().exit.unwrap_or(ExitStatus::Code(0));
            break status;
        }
        pick_main(&state);
        state.check_started();
    };
    if state.started_tx.borrow().is_none() {
        let _ = state.started_tx.send(Some(Err(format!("the server exited with {exit} before completing startup"))));
    }
    report(&cfg.report, &LaunchReport::Exited { status: exit });
    cfg.files.remove_all();
    drop(cfg.lock);
    exit.shell_code()
}
