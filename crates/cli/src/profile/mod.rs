//! `mcr profile`: run the server under mcr in profiling mode while a workload drives it,
//! then say, per thread class, where it blocks, and write the quiescence profile
//! `mcr run --profile` uses (paper §4).

mod analyze;
mod lines;
mod report;

use crate::run::{self, SupervisorLaunch};
use crate::{client, program};
use anyhow::{bail, Context, Result};
use clap::Args;
use mcr_callstack::{Profile, QuiescentPoint, ThreadClass};
use mcr_protocol::{InstanceDir, LaunchReport, ProcessProfile, Request, Response};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ProfileArgs {
    /// Shell command (run with `sh -c` once the server completed startup) that drives the
    /// server; profiling ends when it exits
    #[arg(long, value_name = "CMD")]
    workload: Option<String>,
    /// Profile for S seconds (with --workload: at most S). Without either, profile until Ctrl-C
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Where to write the profile [default: PROGRAM.mcr-profile.json in the current directory]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the human report to FILE instead of stderr
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Instance name while profiling [default: PROGRAM-profile]
    #[arg(long)]
    name: Option<String>,
    /// How long to wait for the server to complete startup
    #[arg(long, default_value_t = 30, value_name = "S")]
    startup_timeout: u64,
    /// Sampling period of each process's sampler
    #[arg(long, default_value_t = 5.0, value_name = "MS")]
    sample_ms: f64,
    /// The server and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...")]
    command: Vec<String>,
}

const IDLE_PAUSE: Duration = Duration::from_millis(250);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn profile(dir: &InstanceDir, args: ProfileArgs) -> Result<i32> {
    let (prog, rest) = args.command.split_first().context("no program given")?;
    let program = program::resolve(prog)?;
    let checked = program::check(&program)?;
    let runtime_lib = program::runtime_library()?;
    let base = program.file_name().map(|s| s.to_string_lossy().into_owned()).context("program has no file name")?;
    let name = args.name.clone().unwrap_or_else(|| format!("{base}-profile"));
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("{base}.mcr-profile.json")));
    if !(0.1..=1000.0).contains(&args.sample_ms) {
        bail!("--sample-ms must be between 0.1 and 1000");
    }
    if let Some(d) = args.duration {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
    }
    dir.create()?;
    let files = dir.files(&name)?;
    let lock = files.acquire()?;
    for w in &checked.warnings {
        eprintln!("mcr: warning: {w}");
    }
    // The supervisor passes its environment on to the server, whose runtime starts a
    // sampler when it finds this variable.
    std::env::set_var(mcr_protocol::env::PROFILING, ((args.sample_ms * 1000.0) as u64).to_string());
    let rd = run::spawn_supervisor(SupervisorLaunch {
        name: name.clone(),
        files: files.clone(),
        lock,
        program: program.clone(),
        args: rest.to_vec(),
        runtime_lib,
        profile: None,
        detach: true,
        update: None,
    })?;
    std::env::remove_var(mcr_protocol::env::PROFILING);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for r in run::reports(rd) {
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let server = Server { dir, name: &name, log: &files.log, reports: rx };
    let result = profile_started(&server, &args, &program, &out);
    server.stop();
    result
}

struct Server<'a> {
    dir: &'a InstanceDir,
    name: &'a str,
    log: &'a Path,
    reports: mpsc::Receiver<LaunchReport>,
}

impl Server<'_> {
    fn wait_started(&self, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(LaunchReport::Started { startup_ms }) => return Ok(startup_ms),
                Ok(LaunchReport::Supervising { note: Some(n), .. }) => eprintln!("mcr: warning: {n}"),
                Ok(LaunchReport::LaunchFailed { message }) => bail!("{message}"),
                Ok(LaunchReport::Exited { status }) => {
                    bail!("the server exited with {status} before completing startup{}", run::log_tail(self.log))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the supervisor exited before the server completed startup{}", run::log_tail(self.log))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let why = match client::request(self.dir, self.name, &Request::WaitStarted { timeout_ms: 1 }) {
                        Ok(Response::Error { message }) => message,
                        _ => "it did not complete startup in time".into(),
                    };
                    bail!("the server did not complete startup within {} s: {why}", timeout.as_secs());
                }
            }
        }
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

    fn data(&self) -> Result<Vec<ProcessProfile>> {
        match client::request(self.dir, self.name, &Request::ProfileData)? {
            Response::ProfileData { processes } => Ok(processes),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the supervisor: {other:?}"),
        }
    }

    /// Stop the server and wait for its supervisor to exit.
    fn stop(&self) {
        let _ = client::request(self.dir, self.name, &Request::Stop { grace_ms: 3000 });
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
        if let Ok(files) = self.dir.files(self.name) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while (files.socket.exists() || files.pid.exists() || files.lock.exists()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn profile_started(server: &Server, args: &ProfileArgs, program: &Path, out: &Path) -> Result<i32> {
    let startup_ms = server.wait_started(Duration::from_secs(args.startup_timeout))?;
    let idle = server.data().context("cannot read the profile data after startup")?;
    // A short idle pause gives each thread's wakeup rate without a workload (timers), to
    // tell which classes the workload reached.
    std::thread::sleep(IDLE_PAUSE);
    let start = server.data().context("cannot read the profile data after startup")?;
    eprintln!(
        "mcr profile: '{}' completed startup in {startup_ms:.1} ms ({} process(es)); {}",
        server.name,
        start.len(),
        match (&args.workload, args.duration) {
            (Some(w), _) => format!("running the workload: {w}"),
            (None, Some(d)) => format!("profiling for {d} s (Ctrl-C ends it earlier)"),
            (None, None) => "drive the server now; Ctrl-C ends profiling".into(),
        }
    );
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
    let (outcome, workload) = drive(server, args)?;
    let end = server.data().context("cannot read the profile data at the end of the workload");
    drop(workload);
    // SAFETY: restoring the default disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let end = end?;

    if let Some(dir) = std::env::var_os("MCR_PROFILE_DUMP") {
        // Diagnostics: the raw snapshots the analysis reads.
        for (name, snap) in [("idle", &idle), ("start", &start), ("end", &end)] {
            let _ = std::fs::write(Path::new(&dir).join(format!("{name}.json")), serde_json::to_string_pretty(snap)?);
        }
    }
    let a = analyze::analyze(&idle, &start, &end);
    let workload = args.workload.clone().unwrap_or_else(|| "(driven by hand)".into());
    let out_text = out.display().to_string();
    let text = report::render(&a, &program.display().to_string(), &workload, &out_text);
    let profile = to_profile(&a, program, args.workload.clone());
    let wrote = if profile.quiescent_points.is_empty() {
        None
    } else {
        std::fs::write(out, serde_json::to_string_pretty(&profile)? + "\n")
            .with_context(|| format!("cannot write the profile {}", out.display()))?;
        Some(())
    };
    match &args.report {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("cannot write the report {}", path.display()))?;
            eprintln!("mcr profile: report in {}", path.display());
        }
        None => eprint!("{text}"),
    }
    if wrote.is_none() {
        bail!("no long-lived thread class blocked in a wrapped call: no quiescent point found, no profile written");
    }
    match outcome {
        Outcome::Done => Ok(0),
        Outcome::WorkloadFailed(how) => {
            eprintln!(
                "mcr: the workload failed ({how}); the profile was written, but may miss what the workload did not do"
            );
            Ok(1)
        }
    }
}

enum Outcome {
    Done,
    WorkloadFailed(String),
}

/// Run the workload (or wait), until it ends or says it is done, the duration is up, or
/// Ctrl-C.
fn drive(server: &Server, args: &ProfileArgs) -> Result<(Outcome, Option<Workload>)> {
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let marker = server.log.with_extension("profile-done");
    let _ = std::fs::remove_file(&marker);
    let mut child = match &args.workload {
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
                .with_context(|| format!("cannot run the workload {w:?}"))?,
        )),
        None => None,
    };
    let outcome = loop {
        if let Some(c) = child.as_mut() {
            if let Some(st) = c.0.try_wait()? {
                break if st.success() { Outcome::Done } else { Outcome::WorkloadFailed(st.to_string()) };
            }
        }
        if marker.exists() {
            // The workload reached its final state (sessions left open): that is the end.
            break Outcome::Done;
        }
        if let Some(status) = server.exited() {
            bail!("the server exited ({status}) during profiling{}", run::log_tail(server.log));
        }
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        if timed_out {
            break Outcome::Done;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            break if child.is_some() { Outcome::WorkloadFailed("interrupted".into()) } else { Outcome::Done };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&marker);
    // The workload (if still running) ends when `child` drops, after the caller took the
    // final snapshot.
    Ok((outcome, child))
}

/// Set for the workload: a path it may create once it reached its final state (idle
/// sessions open, say); profiling then ends right away, with the workload still running.
pub const DONE_ENV: &str = "MCR_PROFILE_DONE";

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

fn to_profile(a: &analyze::Analysis, program: &Path, workload: Option<String>) -> Profile {
    let mut qps: Vec<QuiescentPoint> = Vec::new();
    let mut classes = Vec::new();
    for c in &a.classes {
        let qp = c.quiescent_point().filter(|_| c.long_lived);
        let lp = c.long_lived_loop.as_ref().map(|f| f.display_name());
        if let Some(q) = qp {
            if !qps.iter().any(|x| x.id == q.stack.id) {
                qps.push(QuiescentPoint {
                    id: q.stack.id.clone(),
                    call: q.call.clone(),
                    frames: q.stack.frames.iter().map(|f| f.display_name()).collect(),
                    thread_class: Some(c.label.clone()),
                    long_lived_loop: lp.clone(),
                    share: Some((q.share * 1000.0).round() / 1000.0),
                });
            }
        }
        classes.push(ThreadClass {
            id: c.id.clone(),
            label: c.label.clone(),
            long_lived: c.long_lived,
            persistent: c.persistent,
            quiescent_point: qp.map(|q| q.stack.id.clone()),
            long_lived_loop: lp,
        });
    }
    Profile {
        format: mcr_callstack::profile::FORMAT.to_string(),
        program: program.display().to_string(),
        quiescent_points: qps,
        thread_classes: classes,
        workload,
    }
}
