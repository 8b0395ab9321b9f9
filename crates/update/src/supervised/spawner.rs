//! Starting the new version: a supervisor of its own (instance `NAME.next`), launched
//! like `mcr run --detach` would, with the old version's environment, working directory
//! and startup log to replay, holding every descriptor the old version created during
//! startup at the same number.

use super::next::NewSupervisor;
use super::symbol_tables::Preparation;
use crate::error::RestartError;
use crate::transfer::models;
use crate::version::{HostPids, Launcher};
use mcr_client::launch::{report_channel, spawn_supervisor, LogMark, SupervisorLaunch};
use mcr_protocol::{InstanceDir, InstanceFiles, ProcessLog, UpdateInfo};
use mcr_supervisor::staging::{self, Go};
use mcr_supervisor::UpdateLaunch;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a killed new version may take to release its instance files.
const GONE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Spawner {
    dir: InstanceDir,
    name: String,
    next_files: InstanceFiles,
    /// The lock on `NAME.next`, held from the start of the update (another update of the
    /// same instance is refused) until the new supervisor takes it over.
    lock: Option<File>,
    program: PathBuf,
    args: Vec<String>,
    runtime_lib: PathBuf,
    /// How the old version was launched: the new one gets the same.
    profile: Option<PathBuf>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    /// The new version launched ahead, waiting for its go.
    staged: Option<Staged>,
    /// Its symbol tables, being prepared meanwhile.
    symbols: Option<Preparation>,
    /// The state moves: both builds' type models are loaded ahead (`models`).
    transfers_state: bool,
    models: Option<models::Preparation>,
}

/// A new version's init and supervisor launched ahead ([`Launcher::stage`]).
struct Staged {
    report: OwnedFd,
    go: OwnedFd,
    mark: LogMark,
}

impl Spawner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: InstanceDir,
        name: String,
        next_files: InstanceFiles,
        lock: File,
        program: PathBuf,
        args: Vec<String>,
        runtime_lib: PathBuf,
        info: &UpdateInfo,
        transfers_state: bool,
    ) -> Self {
        Self {
            dir,
            name,
            next_files,
            lock: Some(lock),
            program,
            args,
            runtime_lib,
            profile: info.profile.as_ref().map(PathBuf::from),
            env: info.env.clone(),
            cwd: PathBuf::from(&info.cwd),
            staged: None,
            symbols: None,
            transfers_state,
            models: None,
        }
    }

    fn replay_log(&self) -> PathBuf {
        match self.dir.files(&self.name) {
            Ok(files) => files.replay_log(),
            Err(_) => self.dir.path.join(format!("{}.replay.json", self.name)),
        }
    }
}

impl Spawner {
    /// Launch the new version's init and supervisor. `go`: launched ahead, they wait for
    /// it; without, they inherit the descriptors this process placed for the server.
    fn launch(&mut self, update: UpdateLaunch, go: Option<OwnedFd>) -> Result<(OwnedFd, LogMark), RestartError> {
        let lock = match self.lock.take() {
            Some(l) => l,
            None => self.next_files.acquire()?,
        };
        let log = self.dir.files(&self.name)?.log;
        // The versions share the instance log: the new one's lines start here.
        let mark = LogMark::now(&log);
        let report = spawn_supervisor(SupervisorLaunch {
            name: format!("{}.next", self.name),
            files: InstanceFiles { log: log.clone(), ..self.next_files.clone() },
            lock,
            program: self.program.clone(),
            args: self.args.clone(),
            runtime_lib: self.runtime_lib.clone(),
            profile: self.profile.clone(),
            detach: true,
            update: Some(update),
            unblock_forwarded: false,
            go,
        })?;
        Ok((report, mark))
    }

    fn update_launch(&self, heap_avoid: String, stack_strings: Option<u64>) -> UpdateLaunch {
        UpdateLaunch {
            final_name: self.name.clone(),
            replay_log: self.replay_log(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            heap_avoid,
            stack_strings,
        }
    }
}

impl Launcher for Spawner {
    type Next = NewSupervisor;

    /// The new version's init and supervisor, launched while the old version still serves:
    /// forking, entering the namespaces and executing mcr again (nginx: ~4 ms) come off
    /// the paused clock. Best effort: if this fails, `start` launches them itself.
    fn stage(&mut self, old: &HostPids) {
        // Nothing this shell left open to mcr (a client socket on fd 3) may slip into the
        // new version.
        close_on_exec_all();
        // (Without the old processes, what the server must avoid is not known yet.)
        if let Some((mine, theirs)) = staging::pair().ok().filter(|_| !old.is_empty()) {
            // The server is executed at once (and held until the go): with what the running
            // old version tells already, which the go checks is still so.
            let update = self.update_launch(heap_slots_of(old), initial_stack_of(old));
            if let Ok((report, mark)) = self.launch(update, Some(theirs)) {
                self.staged = Some(Staged { report, go: mine, mark });
            }
        }
        // After the launch: its child runs on after `fork`, which only a single-threaded
        // process may do.
        let tables = mcr_callstack::SymbolCache::new(self.dir.symbol_tables());
        self.symbols = Some(Preparation::start(tables, &self.program, &self.runtime_lib, old));
        if self.transfers_state {
            let mut programs = vec![self.program.clone()];
            programs.extend(old.values().filter_map(|&host| mcr_procfs::exe(host).ok()));
            self.models = Some(models::Preparation::start(programs));
        }
    }

    fn before_pause(&mut self) {
        if let Some(m) = self.models.take() {
            m.wait();
        }
    }

    fn start(&mut self, logs: &[ProcessLog], old: &HostPids) -> Result<NewSupervisor, RestartError> {
        let replay_log = self.replay_log();
        serde_json::to_vec(logs)
            .map_err(std::io::Error::from)
            .and_then(|json| mcr_protocol::instance::write_private(&replay_log, &json))
            .map_err(|source| RestartError::ReplayLog { path: replay_log.clone(), source })?;
        let heap_avoid = heap_slots_of(old);
        let stack_strings = initial_stack_of(old);
        let taken = take_descriptors(old, logs)?;
        if let Some(staged) = self.staged.take() {
            let go = Go { heap_avoid, stack_strings, fds: taken.keys().copied().collect() };
            let fds: Vec<RawFd> = taken.values().map(|f| f.as_raw_fd()).collect();
            staging::send(&staged.go, &go, &fds).map_err(RestartError::Go)?;
            return Ok(NewSupervisor::new(
                self.dir.clone(),
                self.name.clone(),
                report_channel(staged.report),
                staged.mark,
            ));
        }
        // The launch forks: this process must be single-threaded again.
        drop(self.symbols.take());
        drop(self.models.take());
        // The new version inherits exactly the old version's descriptors: nothing this
        // shell left open to mcr (a client socket on fd 3) may slip into it.
        close_on_exec_all();
        let inherited =
            taken.into_iter().map(|(fd, copy)| place_at(copy, fd)).collect::<Result<Vec<OwnedFd>, RestartError>>()?;
        let (report, mark) = self.launch(self.update_launch(heap_avoid, stack_strings), None)?;
        drop(inherited);
        Ok(NewSupervisor::new(self.dir.clone(), self.name.clone(), report_channel(report), mark))
    }

    fn discard(&mut self) {
        // A new version launched ahead and never given its go exits when its go socket
        // closes.
        drop(self.staged.take());
        drop(self.lock.take());
        let t = Instant::now();
        while self.next_files.is_live() && t.elapsed() < GONE_TIMEOUT {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.next_files.clean_stale();
        let _ = std::fs::remove_file(self.replay_log());
        // Reap the dead supervisor (we are its subreaper).
        let mut st = 0;
        // SAFETY: non-blocking reap of our children.
        while unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } > 0 {}
    }
}

/// The size of the old version's first process's initial stack strings, which the new
/// version's are padded to.
fn initial_stack_of(old: &HostPids) -> Option<u64> {
    old.values().min().and_then(|&host| initial_stack_strings(host))
}

/// The heap slots the old version's processes `old` use, as a slot list: the new version's
/// heap keeps them free. A process that exited meanwhile uses none.
fn heap_slots_of(old: &HostPids) -> String {
    let slots = old
        .values()
        .filter_map(|&host| mcr_heap::heap_slots_touched(host).ok())
        .fold(mcr_heap::SlotSet::new(), |all, s| all.union(&s));
    let mut buf = [0u8; 2048];
    let n = slots.write_list(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Bytes process `host`'s initial stack strings take: from the top of its stack down to
/// its first argument (the program path, the environment and the arguments, and the 8
/// bytes the kernel leaves at the top).
fn initial_stack_strings(host: i32) -> Option<u64> {
    let layout = mcr_procfs::stat::read(host).ok()?.initial_stack?;
    // The mapping that holds the arguments is the stack (asked of the kernel alone: the
    // whole memory map is long).
    let (_, end) = mcr_alloc::mapping_of(host, usize::try_from(layout.arg_start).ok()?).ok()?;
    (end as u64).checked_sub(layout.arg_start)
}

/// Mark every descriptor above stderr close-on-exec (the inherited ones are cleared again
/// deliberately when they are placed).
fn close_on_exec_all() {
    for fd in mcr_supervisor::procfs::own_descriptors_above_stderr() {
        // SAFETY: F_GETFD/F_SETFD on our own descriptors (a stale number just fails).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Descriptors created by the old version's startup that are still open, by number:
/// copied out of the old processes with pidfd_getfd (close-on-exec).
fn take_descriptors(old: &HostPids, logs: &[ProcessLog]) -> Result<BTreeMap<i32, OwnedFd>, RestartError> {
    let mut taken: BTreeMap<i32, OwnedFd> = BTreeMap::new();
    for p in logs {
        let Some(&host_pid) = old.get(&p.pid) else { continue };
        let fds: BTreeSet<i32> = p.log.iter().flat_map(|l| l.ops.iter()).flat_map(|o| o.fds.iter().copied()).collect();
        let pidfd = mcr_supervisor::pidfd::open(host_pid).map_err(|source| RestartError::OpenProcess {
            pid: p.pid,
            host_pid,
            source,
        })?;
        for fd in fds {
            if taken.contains_key(&fd) || !mcr_procfs::fd::is_open(host_pid, fd) {
                continue;
            }
            let copy = mcr_supervisor::pidfd::take(&pidfd, fd).map_err(|source| RestartError::TakeFd {
                fd,
                pid: p.pid,
                source,
            })?;
            taken.insert(fd, copy);
        }
    }
    Ok(taken)
}

/// `copy` at descriptor number `fd` of this process, without close-on-exec.
fn place_at(copy: OwnedFd, fd: i32) -> Result<OwnedFd, RestartError> {
    if copy.as_raw_fd() == fd {
        // SAFETY: clearing the flags of a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        return Ok(copy);
    }
    // SAFETY: probing whether number `fd` is open here.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
        return Err(RestartError::FdInUse(fd));
    }
    // SAFETY: `fd` is free (checked above); dup2 makes it a copy of ours without
    // close-on-exec, and the new descriptor is owned by what we return.
    unsafe {
        libc::dup2(copy.as_raw_fd(), fd);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
