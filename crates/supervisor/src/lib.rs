//! The supervisor: one per running version of a server.
//!
//! It runs in a fresh PID namespace when the kernel permits (so a later version can be
//! given the same PIDs), as the child of that namespace's init ([`init`], PID 1), knows
//! every process of the server, owns the instance's control socket, and exits with the
//! server. The init reaps orphans and outlives a supervisor that dies: it starts another,
//! which takes the running version over.
//!
//! Lifecycle: [`namespace::enter`] (in `mcr run`, before forking), then in the child
//! [`init::run`], which forks [`run`], which launches the server, then serves the runtime
//! and control sockets until the last server process is gone. Without a namespace, the
//! child runs [`run`] itself, as a subreaper.

mod commit;
mod control;
mod handover;
pub mod init;
mod init_link;
mod launch;
mod lines;
mod name;
pub mod namespace;
pub mod notify;
pub mod pidfd;
pub mod procfs;
mod profiling;
mod runtime_link;
mod scm_rights;
pub mod sockdiag;
pub mod staging;
mod state;

use mcr_protocol::{InstanceFiles, LaunchReport};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up the PID namespace: {0}")]
    Namespace(std::io::Error),
    #[error("cannot create the control socket {path}: {source}")]
    ControlSocket { path: PathBuf, source: std::io::Error },
    #[error("cannot create the runtime socket: {0}")]
    RuntimeSocket(std::io::Error),
    #[error("cannot launch {program}: {source}")]
    Launch { program: String, source: std::io::Error },
    #[error("launched ahead, the new version got no go: {0}")]
    NoGo(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything the supervisor needs, decided by `mcr run`.
#[derive(Debug)]
pub struct Config {
    pub name: String,
    pub files: InstanceFiles,
    /// The instance lock, held for the supervisor's whole life.
    pub lock: File,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub runtime_lib: PathBuf,
    pub profile: Option<PathBuf>,
    pub pid_namespace: bool,
    /// Why there is no PID namespace, when there is none.
    pub namespace_note: Option<String>,
    /// The supervisor's PID as the host sees it.
    pub supervisor_pid: i32,
    /// Where to send [`LaunchReport`]s (a pipe to the launching `mcr run`).
    pub report: Option<OwnedFd>,
    /// Redirect the server's stdin to /dev/null and stdout/stderr to the instance log.
    pub detach: bool,
    /// Update: this supervisor runs the new version under a temporary name (`files`) and
    /// takes over `final_name` at commit.
    pub update: Option<UpdateLaunch>,
    /// The runtime socket, when the namespace's init bound it (else the supervisor binds
    /// one).
    pub runtime_socket: Option<init::RuntimeSocket>,
    /// This supervisor's end of the link to the init (with a PID namespace).
    pub init_link: Option<OwnedFd>,
    /// A supervisor started again by the init: take the running version over.
    pub reattach: Option<init::Reattach>,
    /// An update's new version launched ahead ([`staging`]): wait for the go on this
    /// socket before launching the server.
    pub go: Option<OwnedFd>,
}

impl Config {
    /// The instance's name as the server knows it: an update's new version runs under a
    /// temporary name until its commit, but its environment names the instance.
    pub fn server_instance_name(&self) -> &str {
        self.update.as_ref().map_or(&self.name, |u| &u.final_name)
    }
}

impl Config {
    /// A copy for a supervisor forked by the init (descriptors duplicated).
    fn duplicate(&self) -> std::io::Result<Config> {
        Ok(Config {
            name: self.name.clone(),
            files: self.files.clone(),
            lock: self.lock.try_clone()?,
            program: self.program.clone(),
            args: self.args.clone(),
            runtime_lib: self.runtime_lib.clone(),
            profile: self.profile.clone(),
            pid_namespace: self.pid_namespace,
            namespace_note: self.namespace_note.clone(),
            supervisor_pid: self.supervisor_pid,
            report: self.report.as_ref().map(|r| r.try_clone()).transpose()?,
            detach: self.detach,
            update: self.update.clone(),
            runtime_socket: match &self.runtime_socket {
                Some(s) => Some(init::RuntimeSocket { name: s.name.clone(), listener: s.listener.try_clone()? }),
                None => None,
            },
            init_link: None,
            reattach: None,
            // Only the first supervisor launches the server (see `init`).
            go: None,
        })
    }
}

/// The files of instance `name` in the directory of `files` (an update's new version
/// takes its final name's at commit).
pub(crate) fn final_files(files: &InstanceFiles, name: &str) -> InstanceFiles {
    let mut f = files.clone();
    let dir = files.lock.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    f.name = name.to_string();
    f.lock = dir.join(format!("{name}.lock"));
    f.socket = dir.join(format!("{name}.sock"));
    f.pid = dir.join(format!("{name}.pid"));
    f
}

/// How the new version of an update is launched.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpdateLaunch {
    pub final_name: String,
    /// The old version's startup logs, for replay.
    pub replay_log: PathBuf,
    /// The old version's environment and working directory.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The heap slots the old version's processes use, which the new version's heap keeps
    /// free (`MCR_HEAP_AVOID`, a slot list).
    pub heap_avoid: String,
    /// Bytes the old version's initial stack strings take, from its top down to its
    /// first argument (`[stack]` end minus `/proc/PID/stat` field 48): the new version's
    /// environment is padded to the same size (`MCR_STACK_PAD`). `None`: unknown.
    pub stack_strings: Option<u64>,
}

/// Write one report line; a launcher that went away is not an error.
pub(crate) fn report(fd: &Option<OwnedFd>, msg: &LaunchReport) {
    if let Some(fd) = fd {
        if let Ok(dup) = fd.try_clone() {
            let _ = File::from(dup).write_all(&mcr_protocol::encode_line(msg));
        }
    }
}

/// Run the supervisor. Returns the exit code the supervisor process should exit with
/// (the server's, in the shell convention).
pub fn run(mut config: Config) -> i32 {
    // A session of our own: the launching terminal's Ctrl-C reaches `mcr run`, which
    // forwards it, instead of hitting every server process at once.
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report(
                &config.report,
                &LaunchReport::LaunchFailed { message: format!("cannot start the supervisor: {e}") },
            );
            return 70;
        }
    };
    let launched = match config.reattach.take() {
        Some(r) => launch::reattach(&config, r),
        None => launch::prepare_and_launch(&config),
    };
    match launched {
        Ok(launched) => runtime.block_on(state::serve(config, launched)),
        Err(e) => {
            // The name is free before `mcr run` hears of the failure.
            config.files.remove_all();
            report(&config.report, &LaunchReport::LaunchFailed { message: e.to_string() });
            if let Some(u) = &config.update {
                let _ = std::fs::remove_file(&u.replay_log);
            }
            127
        }
    }
}

/// For `mcr run`'s forked child, when it fails before the supervisor proper starts.
pub fn report_launch_failure(fd: &Option<OwnedFd>, message: &str) {
    report(fd, &LaunchReport::LaunchFailed { message: message.to_string() });
}
