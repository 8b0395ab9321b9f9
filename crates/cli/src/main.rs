//! `mcr`: run C servers so they can be live-updated.

mod check;
mod dirty;
mod docs;
mod history;
mod instance;
mod profile;
mod progress;
mod render;
mod run;
mod service;
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
    after_help = "Examples:\n  mcr run --name kvd --detach -- ./kvd --port 7000\n  mcr status kvd\n  mcr ctl kvd quiesce --timeout 500\n  mcr ctl kvd resume\n  mcr ctl kvd dirty\n  mcr update kvd --rehearse -- ./kvd-v2\n  mcr update kvd -- ./kvd-v2\n  mcr history kvd\n  mcr update kvd --back\n  mcr stop kvd\n  mcr check ./kvd ./kvd-v2"
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
        The server runs as PID 3 of its own PID namespace when permitted (root: mcr's init is PID 1, \
        its supervisor PID 2), with address \
        space randomization disabled, so that a later version can take over its PIDs and \
        addresses. A server that daemonizes itself keeps running under mcr.\n\n\
        As the ExecStart= of a systemd Type=notify unit ($NOTIFY_SOCKET set), mcr sends \
        READY=1 once the server completed startup and STATUS= with the version that runs, \
        stays the unit's main process across live updates (ExecReload=mcr update …), and \
        removes NOTIFY_SOCKET from the server's environment (see README, \"Running under \
        systemd\", and packaging/systemd/).")]
    Run(run::RunArgs),
    /// Live-update an instance to a new build: quiesce it, restart the new version with
    /// its startup replayed against the old one's, then commit or roll back
    #[command(long_about = "Live-update an instance to a new build.\n\n\
        0. drain: stop accepting (new connections wait in the listen backlog) and wait up to \
        --drain-timeout for the connections the update cannot move;\n\
        1. quiesce the running version;\n\
        2. start the new version in its own PID namespace, holding every descriptor the old \
        version created during startup at the same number, with the old version's \
        environment and working directory;\n\
        3. replay: each startup operation of the new version that matches the old startup log \
        (same call stack, same arguments) returns the inherited object instead of creating a \
        new one; mismatches on inherited objects, dropped objects and a different process \
        tree are conflicts;\n\
        4. once every thread of the new version is parked at a quiescent point, transfer the \
        state: the globals written since startup and every heap block they reach, rebuilt in \
        the new version's struct layouts (see `mcr check`), and the open client connections \
        with their epoll registrations (skipped with --fresh-state);\n\
        5. commit: the old version exits and the new one takes over the name and resumes.\n\n\
        Any failure before commit (conflict, crash, timeout, Ctrl-C) kills the new version and \
        resumes the old one, which never notices; the exit status is then 1.\n\n\
        --rehearse runs 1 to 4 against the live server (no drain: connections are not touched) \
        and then rolls back on purpose where 5 would commit; it reports what the update would do \
        and how long the server was paused, and exits 0 when the update would commit.\n\n\
        Every update that reaches the instance (committed, rolled back, refused, rehearsed) is recorded \
        in its history (`mcr history NAME`); `--back` goes back to the build that ran before \
        the last committed update.")]
    Update(update::UpdateArgs),
    /// Compare two builds offline: which globals and types changed, which changes mcr
    /// transforms automatically, which need a handler
    #[command(long_about = "Compare two builds offline, from their DWARF (build with -g): which \
        globals, statics and types were added, removed or changed, which changes mcr transforms \
        automatically during `mcr update` (fields matched by name, integers resized with a range \
        check, enums mapped by name, arrays resized, added fields zeroed, removed fields dropped, \
        pointers relocated), and which need a handler (MCR_ADD_OBJ_HANDLER) or conflict if \
        objects they affect are live at update time. Touches no running instance. Type models \
        are cached per build ID in $XDG_CACHE_HOME/mcr/types.\n\n\
        Exit status: 0 = an update is expected to be automatic; 1 = some change needs a handler \
        (or a build has no debug info), so an update may conflict; 2 = usage error or a binary \
        that cannot be read.")]
    Check(check::CheckArgs),
    /// Find the quiescent points of a server: run it under a workload in profiling mode
    /// and write the profile `mcr run --profile` uses
    #[command(long_about = "Find the quiescent points of a server (paper §4).\n\n\
        Starts PROGRAM under mcr in profiling mode (each process samples where its threads \
        block), runs the --workload command once startup completed (or waits --duration \
        seconds, or until Ctrl-C), stops the server, and writes the profile (--out) that \
        `mcr run --profile FILE` uses. The report (stderr, or --report FILE) lists every \
        thread class (threads grouped by the call stack that created them, across \
        processes): short-lived or long-lived, persistent or volatile, and for each long-lived \
        one its quiescent point, with the symbolized stack and file:line, and its long-lived \
        loop. Exit status 1 when the workload failed or no quiescent point was found.")]
    Profile(profile::ProfileArgs),
    /// Show the updates an instance went through: when, from which build to which, how
    /// it ended, how long each phase took, what moved
    #[command(long_about = "Show the update history of instance NAME, oldest first: every update that \
        reached it (committed, rolled back with the reason, refused before anything was stopped \
        with the reason, rehearsed with whether it would commit), with its time (UTC), the builds before and after (path, arguments, \
        ELF build ID), the time each phase took and what the state transfer moved.\n\n\
        The journal is NAME.history in the runtime directory (JSON lines, one per update, \
        the newest 1000 kept); like the log, it outlives the instance, so a name keeps its \
        history across `mcr stop` and `mcr run`. Under /run (a tmpfs) it does not survive a \
        reboot. `mcr update NAME --back` goes back to the build that ran before the last \
        committed update.")]
    History {
        name: String,
        /// Print the entries as a JSON array (the fields of the journal's lines)
        #[arg(long)]
        json: bool,
    },
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
    /// Write the man pages and shell completions (for the Debian package: packaging/deb/build.sh)
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write man/ and completions/ into
        #[arg(value_name = "DIR")]
        out: PathBuf,
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
    // A supervisor `mcr` launched as a fresh image of itself (`mcr_client::reexec`).
    if let Some(code) = mcr_client::reexec::supervise_if_asked() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Status { .. } | Command::List { .. } | Command::Check(_) | Command::History { .. }
    ) {
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
    // Offline verbs need no runtime directory.
    let command = match cli.command {
        Command::Check(args) => return Ok(check::check(&args)),
        Command::GenerateDocs { out } => return docs::generate(&out),
        c => c,
    };
    let dir = mcr_protocol::InstanceDir::resolve(cli.runtime_dir.as_deref())?;
    match command {
        Command::Run(args) => run::run(&dir, args),
        Command::Update(args) => update::update(&dir, args),
        Command::Profile(args) => profile::profile(&dir, args),
        Command::Status { name, json, log: false } => instance::status(&dir, &name, json),
        Command::Status { name, json, log: true } => instance::startup_logs(&dir, &name, json),
        Command::List { json } => instance::list(&dir, json),
        Command::History { name, json } => history::show(&dir, &name, json),
        Command::Ctl { name, action } => match action {
            CtlAction::Quiesce { timeout, json } => instance::quiesce(&dir, &name, timeout, json),
            CtlAction::Resume => instance::resume(&dir, &name),
            CtlAction::Dirty { json } => dirty::dirty(&dir, &name, json),
        },
        Command::Stop { name, timeout } => instance::stop(&dir, &name, timeout),
        Command::Check(args) => Ok(check::check(&args)),
        Command::GenerateDocs { out } => docs::generate(&out),
    }
}
