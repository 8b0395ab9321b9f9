//! `mcr`: run C servers so they can be live-updated.

mod client;
mod dirty;
mod program;
mod render;
mod run;
mod update;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mcr",
    version,
    about = "Live update for C server programs (Mutable Checkpoint-Restart)",
    long_about = "Live update for C server programs (Mutable Checkpoint-Restart).\n\n\
        A server started with `mcr run` carries the mcr runtime (libmcr.so, preloaded) in \
        every process. mcr can then bring all of its threads to quiescent points (the \
        blocking calls at the top of their event loops) and hold them there, which is the \
        first step of a live update.\n\n\
        Instance files (control socket, lock, log) live in $MCR_RUNTIME_DIR, else /run/mcr \
        as root, else $XDG_RUNTIME_DIR/mcr.",
    after_help = "Examples:\n  mcr run --name kvd --detach -- ./kvd --port 7000\n  mcr status kvd\n  mcr ctl kvd quiesce --timeout 500\n  mcr ctl kvd resume\n  mcr ctl kvd dirty\n  mcr stop kvd"
)]
struct Cli {
    /// Directory holding instance files [default: $MCR_RUNTIME_DIR, /run/mcr as root, else $XDG_RUNTIME_DIR/mcr]
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start PROGRAM under mcr
    #[command(long_about = "Start PROGRAM under mcr.\n\n\
        In the foreground (the default) mcr stays attached, forwards SIGINT, SIGTERM, SIGHUP, \
        SIGUSR1, SIGUSR2 and SIGQUIT to the server's main process, and exits with the server's \
        exit status (128+N if a signal N killed it). With --detach it returns 0 once every \
        process of the server has completed startup (each long-lived thread reached a \
        quiescent point once), or non-zero with the reason.\n\n\
        The server runs as PID 2 of its own PID namespace when permitted (root), with address \
        space randomization disabled, so that a later version can take over its PIDs and \
        addresses. A server that daemonizes itself keeps running under mcr.")]
    Run(run::RunArgs),
    /// Live-update an instance to a new build: quiesce it, restart the new version with
    /// its startup replayed against the old one's, then commit or roll back
    #[command(long_about = "Live-update an instance to a new build.\n\n\
        1. quiesce the running version;\n\
        2. start the new version in its own PID namespace, holding every descriptor the old \
        version created during startup at the same number, with the old version's \
        environment and working directory;\n\
        3. replay: each startup operation of the new version that matches the old startup log \
        (same call stack, same arguments) returns the inherited object instead of creating a \
        new one; mismatches on inherited objects, dropped objects and a different process \
        tree are conflicts;\n\
        4. once every thread of the new version is parked at a quiescent point, commit: the \
        old version exits and the new one takes over the name and resumes.\n\n\
        Any failure before commit (conflict, crash, timeout, Ctrl-C) kills the new version and \
        resumes the old one; the exit status is then 1. In-memory state is not transferred yet.")]
    Update(update::UpdateArgs),
    /// Show an instance's processes, threads and quiescent points
    Status {
        name: String,
        /// Print the full status as JSON
        #[arg(long)]
        json: bool,
        /// Show each process's startup log instead: the operations on immutable objects
        /// (sockets, files, processes, identities) recorded until it completed startup
        #[arg(long)]
        log: bool,
    },
    /// List running instances
    List {
        #[arg(long)]
        json: bool,
    },
    /// Control a running instance (quiesce, resume)
    Ctl {
        name: String,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Stop an instance: SIGTERM to its main process, SIGKILL to all after a grace period
    Stop {
        name: String,
        /// Seconds to wait after SIGTERM before killing every process
        #[arg(long, default_value_t = 10, value_name = "S")]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Bring every long-lived thread of every process to its quiescent point and hold it
    Quiesce {
        /// Give up (and resume the server) after this many milliseconds
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Release every parked thread
    Resume,
    /// Pages each process wrote since its startup completed (dirty tracking), per class of mapping
    Dirty {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Status { .. } | Command::List { .. }) {
        // Read-only verbs behave like any Unix filter when their reader goes away
        // (`mcr status k | head`). The others keep SIGPIPE ignored: an update must
        // never die halfway because a socket closed.
        // SAFETY: restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcr: {}", render::error_chain(&e));
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> Result<i32> {
    let dir = mcr_protocol::InstanceDir::resolve(cli.runtime_dir.as_deref())?;
    match cli.command {
        Command::Run(args) => run::run(&dir, args),
        Command::Update(args) => update::update(&dir, args),
        Command::Status { name, json, log: false } => client::status(&dir, &name, json),
        Command::Status { name, json, log: true } => client::startup_logs(&dir, &name, json),
        Command::List { json } => client::list(&dir, json),
        Command::Ctl { name, action } => match action {
            CtlAction::Quiesce { timeout, json } => client::quiesce(&dir, &name, timeout, json),
            CtlAction::Resume => client::resume(&dir, &name),
            CtlAction::Dirty { json } => dirty::dirty(&dir, &name, json),
        },
        Command::Stop { name, timeout } => client::stop(&dir, &name, timeout),
    }
}
