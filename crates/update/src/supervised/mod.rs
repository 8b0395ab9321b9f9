//! The update of a running instance: the versions are supervisors, reached over their
//! control sockets ([`old`], [`next`]), and the new one is started by [`spawner`].

mod next;
mod old;
mod spawner;
mod symbol_tables;

pub use next::NewSupervisor;
pub use old::OldSupervisor;
pub use spawner::Spawner;

use crate::decide::{Handlers, Policy};
use crate::error::PrepareError;
use crate::machine::{Options, Progress, Report, Update};
use crate::warning::Warn;
use mcr_client::program::{self, ServerCommand};
use mcr_client::Connection;
use mcr_protocol::InstanceDir;
use std::time::{Duration, Instant};

/// What `mcr update` lets its user choose.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Leave the old version's state behind (the new version keeps what its startup made).
    pub fresh_state: bool,
    pub drain_timeout_ms: u64,
    pub quiesce_timeout_ms: u64,
    /// How long the new version has to replay its startup and park.
    pub startup_timeout: Duration,
    /// Rehearse (`mcr update --rehearse`): no drain, and a rollback instead of the commit.
    pub rehearse: bool,
    /// `mcr update --count-pointers`: count the pointers the state transfer follows.
    pub count_pointers: bool,
}

/// An update ready to run: the new build checked, the running version reached, the new
/// version's instance name reserved. Nothing has changed yet.
pub struct Prepared {
    name: String,
    command: String,
    old: OldSupervisor,
    launcher: Spawner,
    handlers: Handlers,
    started: Instant,
    /// About the new build (no debug info, a script), to say before the update starts.
    pub warnings: Vec<String>,
}

/// Get ready to update instance `name` to `command` (the new build and its arguments).
pub fn prepare(dir: &InstanceDir, name: &str, command: &[String], checks: Checks) -> Result<Prepared, PrepareError> {
    let started = Instant::now();
    let ServerCommand { program, args, runtime_lib, mut warnings, has_debug_info } = ServerCommand::prepare(command)?;
    for path in [&program, &runtime_lib] {
        if let Some(why) = program::writable_by_others(path) {
            if checks.strict {
                return Err(PrepareError::Untrusted(why));
            }
            warnings.push(format!("{why}: whoever can change it would run code in the server"));
        }
    }
    let mut conn = Connection::open(dir, name)?;
    let info = conn.update_info()?;
    if !info.pid_namespace {
        return Err(PrepareError::NoPidNamespace(name.to_string()));
    }
    // Without DWARF on both sides nothing of the state can move: refuse, before the server
    // is touched, rather than commit an update that silently drops it.
    if !checks.fresh_state {
        if !has_debug_info {
            return Err(PrepareError::NoDebugInfo(program));
        }
        if let Some(refused) = old_binary_without_debug_info(&info) {
            return Err(refused);
        }
    }
    let next_files = dir.files(&format!("{name}.next"))?;
    let lock = next_files.acquire().map_err(|source| PrepareError::InProgress { name: name.to_string(), source })?;
    // A new build with a resume handler takes over the sessions threads serve from their
    // stacks (without one, those connections must end before the update); with a respawn
    // handler too, it recreates the per-connection processes.
    let sessions = mcr_typemodel::diff::Sessions::from_hints(&mcr_typemodel::read_hints(&program).unwrap_or_default());
    let handlers = Handlers { resume: sessions.resumes(), respawn: sessions.respawns() };
    let launcher = Spawner::new(
        dir.clone(),
        name.to_string(),
        next_files,
        lock,
        program,
        args,
        runtime_lib,
        &info,
        !checks.fresh_state,
    );
    let old = OldSupervisor::new(dir.clone(), name.to_string(), info, conn);
    Ok(Prepared { name: name.to_string(), command: command.join(" "), old, launcher, handlers, started, warnings })
}

/// What `prepare` refuses besides what makes an update impossible.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// The state is to be dropped on purpose: no DWARF needed.
    pub fresh_state: bool,
    /// Refuse a program or runtime library another user could change (else a warning).
    pub strict: bool,
}

/// A binary of the running version's processes that has no debug information.
/// A process of the running version whose program has no debug information (one that
/// exec'd another program, say): the binary, and the process's PID in the instance.
/// A process of the running version whose binary has no debug information: its state
/// could not move. When it runs another program than the server's first process (a
/// session's command, which the server started after its startup), that is what the
/// refusal says: no build of the server would let it move.
fn old_binary_without_debug_info(info: &mcr_protocol::UpdateInfo) -> Option<PrepareError> {
    let hosts =
        mcr_client::pids::host_pids(info.pid_namespace, info.supervisor_pid, info.processes.iter().copied()).ok()?;
    let server = hosts.values().next().and_then(|&h| mcr_procfs::exe(h).ok());
    let mut seen = std::collections::BTreeSet::new();
    for (&pid, host) in &hosts {
        let Ok(exe) = mcr_procfs::exe(*host) else { continue };
        if seen.insert(exe.clone()) && program::check(&exe).is_ok_and(|c| !c.has_debug_info) {
            return Some(match &server {
                Some(server) if *server != exe => {
                    PrepareError::AnotherProgram { binary: exe, server: server.clone(), pid }
                }
                _ => PrepareError::NoDebugInfoIn { binary: exe, pid },
            });
        }
    }
    None
}

impl Prepared {
    /// Run the update to its commit or its rollback. From here on Ctrl-C (SIGINT,
    /// SIGTERM) ends the phase under way and rolls back.
    /// `progress` is told each step as it begins.
    pub fn run(self, settings: Settings, warn: Warn<'_>, progress: Progress<'_>) -> Report {
        crate::interrupt::catch();
        let options = Options {
            instance: self.name,
            command: self.command,
            policy: Policy { fresh_state: settings.fresh_state, handlers: self.handlers },
            drain_timeout_ms: settings.drain_timeout_ms,
            quiesce_timeout_ms: settings.quiesce_timeout_ms,
            startup_timeout: settings.startup_timeout,
            interrupted: &crate::interrupt::interrupted,
            warn,
            started: self.started,
            rehearse: settings.rehearse,
            progress,
            count_pointers: settings.count_pointers,
        };
        Update::new(self.old, self.launcher, options).run()
    }
}
