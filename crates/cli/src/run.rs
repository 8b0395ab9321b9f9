//! `mcr run`: validate, take the instance name, start the supervisor (mcr-client), then
//! either stay attached or return once started, and say how it went.

use anyhow::Result;
use clap::Args;
use mcr_client::attach::{self, Ended, Started};
use mcr_client::launch::{reserve, spawn_supervisor, LogMark, SupervisorLaunch};
use mcr_client::program::ServerCommand;
use mcr_protocol::InstanceDir;
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

pub fn run(dir: &InstanceDir, args: RunArgs) -> Result<i32> {
    let command = ServerCommand::prepare(&args.command)?;
    let profile = match &args.profile {
        Some(p) => {
            mcr_callstack::Profile::load(p)?;
            Some(std::fs::canonicalize(p)?)
        }
        None => None,
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => command.file_name()?,
    };
    let (files, lock) = reserve(dir, &name)?;
    for w in &command.warnings {
        eprintln!("mcr: warning: {w}");
    }

    // What this launch writes to the log (kept across runs of the name) starts here.
    let log = LogMark::now(&files.log);
    // In the foreground, a signal sent to `mcr run` goes to the server: blocked from
    // before the launch, one sent as soon as the server answers waits for the forwarding
    // thread instead of ending `mcr` (the test that sends SIGTERM right after the first
    // reply lost that race once the new process's startup got 12 ms faster).
    if !args.detach {
        mcr_client::attach::set_forwarded_blocked(true);
    }
    let reports = spawn_supervisor(SupervisorLaunch {
        name: name.clone(),
        files: files.clone(),
        lock,
        program: command.program,
        args: command.args,
        runtime_lib: command.runtime_lib,
        profile,
        detach: args.detach,
        update: None,
        unblock_forwarded: !args.detach,
        go: None,
    })?;
    let mut note = |n: &str| eprintln!("mcr: warning: {n}");
    if args.detach {
        let timeout = Duration::from_secs(args.startup_timeout);
        match attach::wait_started(dir, &name, &log, reports, timeout, &mut note)? {
            Started::Started { startup_ms, pid_namespace } => {
                let ns = match pid_namespace {
                    Some(true) => "own PID namespace",
                    Some(false) => "no PID namespace",
                    None => "",
                };
                println!(
                    "started '{name}' ({ns}; startup completed in {startup_ms:.1} ms); output in {}",
                    files.log.display()
                );
            }
            Started::Replaced => println!("'{name}' was live-updated while starting"),
        }
        return Ok(0);
    }
    // Under systemd (a Type=notify unit), this process is the unit's main one for as long
    // as the instance lives.
    let service = crate::service::Service::from_env();
    mcr_protocol::test_hook::pause(mcr_protocol::test_hook::point::LAUNCHED);
    attach::forward_signals(dir, &name, {
        let name = name.clone();
        move |sig, e| eprintln!("mcr: cannot forward {} to '{name}': {e}", mcr_protocol::signal_name(sig))
    });
    let mut started = |_ms: f64| {
        if let Some(s) = &service {
            s.started(dir, &name);
        }
    };
    match attach::wait_ended(dir, &name, reports, &mut note, &mut started) {
        Ended::LaunchFailed(message) => {
            eprintln!("mcr: {message}");
            Ok(127)
        }
        Ended::Replaced => match &service {
            Some(s) => Ok(s.follow(dir, &name)),
            None => {
                eprintln!("mcr: '{name}' was live-updated; the new version runs detached (see `mcr status {name}`)");
                Ok(0)
            }
        },
        Ended::Exited(status) => Ok(status.shell_code()),
        Ended::SupervisorDied { how, pid_namespace: true } => {
            eprintln!(
                "mcr: the init of '{name}' (PID 1 of its PID namespace, the supervisor's parent) died unexpectedly ({how}); the kernel terminated every process of the server with it"
            );
            Ok(70)
        }
        Ended::SupervisorDied { how, pid_namespace: false } => {
            eprintln!(
                "mcr: the supervisor of '{name}' died unexpectedly ({how}); the server's processes keep running unmanaged (find them with `pgrep -f`)"
            );
            Ok(70)
        }
    }
}
