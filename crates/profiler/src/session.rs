//! A profiling session: run the server under mcr in profiling mode while a workload drives
//! it, and take the snapshots the analysis reads: right after startup, after an idle
//! pause, and at the end of the workload.

use mcr_client::attach::{self, Started, StartupError};
use mcr_client::launch::{self, LaunchError, LogMark, SupervisorLaunch};
use mcr_client::program::{ProgramError, ServerCommand};
use mcr_client::ClientError;
use mcr_protocol::{InstanceDir, InstanceError, LaunchReport, ProcessProfile, Request, Response};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set for the workload: a path it may create once it reached its final state (idle
/// sessions open, say); profiling then ends right away, with the workload still running.
pub const DONE_ENV: &str = "MCR_PROFILE_DONE";

/// Diagnostics: a directory to write the raw snapshots to ([`Snapshots::dump`]).
pub const DUMP_ENV: &str = "MCR_PROFILE_DUMP";

/// How long the server sits idle between the first two snapshots: each thread's wakeup
/// rate without a workload (timers), to tell which classes the workload reached.
const IDLE_PAUSE: Duration = Duration::from_millis(250);

/// How often the session looks at the workload, the server and Ctrl-C.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The launch failed, or the server exited before completing startup.
    #[error(transparent)]
    Startup(StartupError),
    #[error("the supervisor exited before the server completed startup{log_tail}")]
    SupervisorExited { log_tail: String },
    #[error("the server did not complete startup within {} s: {why}", timeout.as_secs())]
    NotStarted { timeout: Duration, why: String },
    #[error("cannot read the profile data after startup")]
    StartData(#[source] ClientError),
    #[error("cannot read the profile data at the end of the workload")]
    EndData(#[source] ClientError),
    #[error("cannot run the workload {workload:?}")]
    Workload {
        workload: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    WaitWorkload(std::io::Error),
    #[error("the server exited ({status}) during profiling{log_tail}")]
    ExitedDuringProfiling { status: String, log_tail: String },
}

/// What `mcr profile` lets its user choose.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The instance name while profiling.
    pub name: String,
    /// Each process's sampling period.
    pub sample_period_us: u64,
    /// How long the server has to complete startup.
    pub startup_timeout: Duration,
    /// Shell command (`sh -c`, its output on stderr) that drives the server once it
    /// completed startup; profiling ends when it exits.
    pub workload: Option<String>,
    /// Profiling ends after this long (with a workload: at most this long). Without either,
    /// it ends on Ctrl-C.
    pub duration: Option<Duration>,
}

/// A server to profile: its program found and checked. Nothing started yet.
pub struct Prepared {
    command: ServerCommand,
    base: String,
}

/// Get ready to profile `command` (the server and its arguments).
pub fn prepare(command: &[String]) -> Result<Prepared, SessionError> {
    let command = ServerCommand::prepare(command)?;
    let base = command.file_name()?;
    Ok(Prepared { command, base })
}

impl Prepared {
    /// The program, canonical.
    pub fn program(&self) -> &Path {
        &self.command.program
    }

    /// The instance name when none is given: `PROGRAM-profile`.
    pub fn default_name(&self) -> String {
        format!("{}-profile", self.base)
    }

    /// Where the profile goes when not said: `PROGRAM.mcr-profile.json` in the current
    /// directory.
    pub fn default_out(&self) -> PathBuf {
        PathBuf::from(format!("{}.mcr-profile.json", self.base))
    }

    /// Start the server in profiling mode and wait until it completed startup, then take
    /// the first two snapshots (right after startup and after an idle pause). `warn`
    /// hears about the program (no debug info) and the launch (no PID namespace). The
    /// server runs until the returned session is dropped.
    pub fn start(self, dir: &InstanceDir, settings: Settings, warn: &dyn Fn(&str)) -> Result<Session, SessionError> {
        let (files, lock) = launch::reserve(dir, &settings.name)?;
        for w in &self.command.warnings {
            warn(w);
        }
        // The supervisor passes its environment on to the server, whose runtime starts a
        // sampler when it finds this variable (mcr is still single-threaded here).
        std::env::set_var(mcr_protocol::env::PROFILING, settings.sample_period_us.to_string());
        // What this launch writes to the log (kept across runs of the name) starts here,
        // before the supervisor exists: a server that fails at once has its lines shown.
        let log = LogMark::now(&files.log);
        let reports = launch::spawn_supervisor(SupervisorLaunch {
            name: settings.name.clone(),
            files: files.clone(),
            lock,
            program: self.command.program,
            args: self.command.args,
            runtime_lib: self.command.runtime_lib,
            profile: None,
            detach: true,
            update: None,
            unblock_forwarded: false,
            go: None,
        });
        std::env::remove_var(mcr_protocol::env::PROFILING);
        let session = Session {
            dir: dir.clone(),
            name: settings.name.clone(),
            log,
            reports: launch::report_channel(reports?),
            settings,
            startup_ms: 0.0,
            idle: Vec::new(),
            start: Vec::new(),
        };
        session.started(warn)
    }
}

/// A server running in profiling mode, stopped (and its supervisor reaped) on drop.
pub struct Session {
    dir: InstanceDir,
    name: String,
    log: LogMark,
    reports: mpsc::Receiver<LaunchReport>,
    settings: Settings,
    startup_ms: f64,
    idle: Vec<ProcessProfile>,
    start: Vec<ProcessProfile>,
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadOutcome {
    /// It exited successfully or said it was done, the duration was up, or Ctrl-C ended
    /// profiling without a workload.
    Done,
    /// It failed (its exit status), or Ctrl-C interrupted it.
    Failed(String),
}

/// The snapshots of every process's sampled data: right after startup (`idle`), after
/// the idle pause, when the workload starts (`start`), and at its end (`end`).
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    pub idle: Vec<ProcessProfile>,
    pub start: Vec<ProcessProfile>,
    pub end: Vec<ProcessProfile>,
}

/// What a session gathered.
#[derive(Debug, Clone)]
pub struct Profiled {
    pub snapshots: Snapshots,
    pub workload: WorkloadOutcome,
}

impl Snapshots {
    /// Name the functions the compiler inlined in the stacks that made each thread and
    /// process, from the binaries' DWARF: a thread made from two functions that gcc inlined
    /// into one caller (httpd's `create_listener_thread`, inlined in `start_threads`, which
    /// also makes the workers) otherwise has the same creation stack, by symbol, as the
    /// others, and the listener and its workers made one class with one quiescent point
    /// (the workers'): the listener's wait was left out of the profile and it could never
    /// park. A frame with inlined callers is named `inner < outer`, and its stack gets an
    /// ID of its own (derived from the runtime's); the other stacks keep theirs.
    pub fn name_inlined_callers(&mut self, lines: &mut crate::Lines) {
        let mut rename = |cs: &mut mcr_protocol::CallStack| {
            let mut names: Vec<String> = vec![cs.id.clone()];
            for f in cs.frames.iter_mut() {
                let chain = lines.inlined(f);
                if chain.is_empty() {
                    continue;
                }
                let named = chain.join(" < ");
                names.push(named.clone());
                f.function = Some(named);
            }
            if names.len() > 1 {
                cs.id = mcr_callstack::format_id(mcr_callstack::stack_id(names.iter().map(String::as_str)));
            }
        };
        for p in self.idle.iter_mut().chain(self.start.iter_mut()).chain(self.end.iter_mut()) {
            if let Some(cs) = p.fork_stack.as_mut() {
                rename(cs);
            }
            for t in p.threads.iter_mut() {
                if let Some(cs) = t.creation_stack.as_mut() {
                    rename(cs);
                }
            }
        }
    }

    /// Analyse them ([`crate::analyze()`]).
    pub fn analyze(&self) -> crate::Analysis {
        crate::analyze(&self.idle, &self.start, &self.end)
    }

    /// Write each snapshot as JSON (`idle.json`, `start.json`, `end.json`) into `dir`,
    /// to look at what the analysis read.
    pub fn dump(&self, dir: &Path) -> std::io::Result<()> {
        for (name, snap) in [("idle", &self.idle), ("start", &self.start), ("end", &self.end)] {
            let text = serde_json::to_string_pretty(snap).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{name}.json")), text)?;
        }
        Ok(())
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C ends profiling (not `mcr`) while this lives.
struct CatchInterrupt;

impl CatchInterrupt {
    fn new() -> Self {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
        CatchInterrupt
    }
}

impl Drop for CatchInterrupt {
    fn drop(&mut self) {
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }
}

impl Session {
    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the server took to complete startup.
    pub fn startup_ms(&self) -> f64 {
        self.startup_ms
    }

    /// The server's processes when the workload starts.
    pub fn processes(&self) -> usize {
        self.start.len()
    }

    fn started(mut self, warn: &dyn Fn(&str)) -> Result<Self, SessionError> {
        let mut note = |n: &str| warn(n);
        let timeout = self.settings.startup_timeout;
        let started = attach::wait_started_on(&self.dir, &self.name, &self.log, &self.reports, timeout, &mut note);
        self.startup_ms = match started {
            Ok(Started::Started { startup_ms, .. }) => startup_ms,
            // Its supervisor (this one) is gone with it.
            Ok(Started::Replaced) => return Err(SessionError::SupervisorExited { log_tail: self.log.tail() }),
            Err(StartupError::SupervisorExited { log_tail, .. }) => {
                return Err(SessionError::SupervisorExited { log_tail })
            }
            Err(StartupError::NotStarted { why, timeout, .. }) => {
                return Err(SessionError::NotStarted { timeout, why })
            }
            Err(e) => return Err(SessionError::Startup(e)),
        };
        self.idle = self.data().map_err(SessionError::StartData)?;
        std::thread::sleep(IDLE_PAUSE);
        self.start = self.data().map_err(SessionError::StartData)?;
        Ok(self)
    }

    /// Run the workload (or wait) until it ends or says it is done, the duration is up, or
    /// Ctrl-C; then take the last snapshot.
    pub fn profile(&mut self) -> Result<Profiled, SessionError> {
        let interrupt = CatchInterrupt::new();
        let (outcome, workload) = self.drive()?;
        let end = self.data().map_err(SessionError::EndData);
        drop(workload);
        drop(interrupt);
        let snapshots =
            Snapshots { idle: std::mem::take(&mut self.idle), start: std::mem::take(&mut self.start), end: end? };
        Ok(Profiled { snapshots, workload: outcome })
    }

    /// Whether the server is gone (its supervisor reported the exit).
    fn exited(&self) -> Option<String> {
        while let Ok(r) = self.reports.try_recv() {
            if let LaunchReport::Exited { status } = r {
                return Some(format!("{status}"));
            }
        }
        None
    }

    fn data(&self) -> Result<Vec<ProcessProfile>, ClientError> {
        match mcr_client::request(&self.dir, &self.name, &Request::ProfileData)? {
            Response::ProfileData { processes } => Ok(processes),
            other => Err(ClientError::unexpected(other)),
        }
    }

    /// The workload runs until it ends, says it is done, the duration is up or Ctrl-C; it
    /// is ended when the returned [`Workload`] drops (after the last snapshot).
    fn drive(&self) -> Result<(WorkloadOutcome, Option<Workload>), SessionError> {
        let deadline = self.settings.duration.map(|d| Instant::now() + d);
        let marker = self.log.path.with_extension("profile-done");
        let _ = std::fs::remove_file(&marker);
        let mut child = match &self.settings.workload {
            Some(w) => Some(Workload(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(w)
                    .env(DONE_ENV, &marker)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::io::stderr())
                    // Its own process group, so that everything it started can be ended.
                    .process_group(0)
                    .spawn()
                    .map_err(|source| SessionError::Workload { workload: w.clone(), source })?,
            )),
            None => None,
        };
        let outcome = loop {
            if let Some(c) = child.as_mut() {
                if let Some(st) = c.0.try_wait().map_err(SessionError::WaitWorkload)? {
                    break if st.success() { WorkloadOutcome::Done } else { WorkloadOutcome::Failed(st.to_string()) };
                }
            }
            if marker.exists() {
                // The workload reached its final state (sessions left open): that is the end.
                break WorkloadOutcome::Done;
            }
            if let Some(status) = self.exited() {
                return Err(SessionError::ExitedDuringProfiling { status, log_tail: self.log.tail() });
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break WorkloadOutcome::Done;
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                break if child.is_some() {
                    WorkloadOutcome::Failed("interrupted".into())
                } else {
                    WorkloadOutcome::Done
                };
            }
            std::thread::sleep(POLL);
        };
        let _ = std::fs::remove_file(&marker);
        Ok((outcome, child))
    }
}

impl Drop for Session {
    /// Stop the server and wait for its supervisor to exit.
    fn drop(&mut self) {
        let _ = mcr_client::request(&self.dir, &self.name, &Request::Stop { grace_ms: 3000 });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(LaunchReport::Exited { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut st = 0;
        // SAFETY: reaping the supervisor, our child (we are its subreaper).
        unsafe { libc::waitpid(-1, &mut st, 0) };
        // What we reaped may have been another child (a workload's orphan): the server is
        // stopped once its supervisor has removed the instance's files.
        if let Ok(files) = self.dir.files(&self.name) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while (files.socket.exists() || files.pid.exists() || files.lock.exists()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The workload's process group, killed on drop.
struct Workload(std::process::Child);

impl Drop for Workload {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling the process group the workload leads.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}
