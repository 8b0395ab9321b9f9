//! `mcr profile`: the arguments, then the session (mcr-profiler) and what it found,
//! printed: the report, and the profile `mcr run --profile` uses (paper §4).

mod report;

use anyhow::{bail, Context, Result};
use clap::Args;
use mcr_profiler::{Settings, WorkloadOutcome};
use mcr_protocol::InstanceDir;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

const DURATION_INVALID: &str = "--duration must be a positive number of seconds";

pub fn profile(dir: &InstanceDir, args: ProfileArgs) -> Result<i32> {
    let prepared = mcr_profiler::prepare(&args.command)?;
    let program = prepared.program().to_path_buf();
    let name = args.name.clone().unwrap_or_else(|| prepared.default_name());
    let out = args.out.clone().unwrap_or_else(|| prepared.default_out());
    if !(0.1..=1000.0).contains(&args.sample_ms) {
        bail!("--sample-ms must be between 0.1 and 1000");
    }
    let duration = match args.duration {
        // Too large for a Duration counts as invalid too (it is not finite in practice).
        Some(d) if d > 0.0 => Some(Duration::try_from_secs_f64(d).ok().context(DURATION_INVALID)?),
        Some(_) => bail!(DURATION_INVALID),
        None => None,
    };
    let settings = Settings {
        name,
        sample_period_us: (args.sample_ms * 1000.0) as u64,
        startup_timeout: Duration::from_secs(args.startup_timeout),
        workload: args.workload.clone(),
        duration,
    };
    let warn = |w: &str| eprintln!("mcr: warning: {w}");
    // The server runs until `session` drops, after the report.
    let mut session = prepared.start(dir, settings, &warn)?;
    eprintln!(
        "mcr profile: '{}' completed startup in {:.1} ms ({} process(es)); {}",
        session.name(),
        session.startup_ms(),
        session.processes(),
        match (&args.workload, args.duration) {
            (Some(w), _) => format!("running the workload: {w}"),
            (None, Some(d)) => format!("profiling for {d} s (Ctrl-C ends it earlier)"),
            (None, None) => "drive the server now; Ctrl-C ends profiling".into(),
        }
    );
    let mut profiled = session.profile()?;
    if let Some(dump) = std::env::var_os(mcr_profiler::session::DUMP_ENV) {
        let _ = profiled.snapshots.dump(Path::new(&dump));
    }
    let mut lines = mcr_profiler::Lines::default();
    profiled.snapshots.name_inlined_callers(&mut lines);
    let a = profiled.snapshots.analyze();
    let workload = args.workload.clone().unwrap_or_else(|| "(driven by hand)".into());
    let out_text = out.display().to_string();
    let text = report::render(&a, &mut lines, &program.display().to_string(), &workload, &out_text);
    let profile = a.to_profile(&program, args.workload.clone());
    let wrote = if profile.quiescent_points.is_empty() {
        None
    } else {
        std::fs::write(&out, serde_json::to_string_pretty(&profile)? + "\n")
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
    match profiled.workload {
        WorkloadOutcome::Done => Ok(0),
        WorkloadOutcome::Failed(how) => {
            eprintln!(
                "mcr: the workload failed ({how}); the profile was written, but may miss what the workload did not do"
            );
            Ok(1)
        }
    }
}
