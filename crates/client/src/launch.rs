//! Starting a supervisor (`mcr run`, `mcr profile`, and the new version of `mcr update`)
//! and reading what it reports about the server's launch.

use mcr_protocol::{InstanceDir, InstanceError, InstanceFiles, LaunchReport};
use mcr_supervisor::namespace::{self, Namespace};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create a pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot fork the supervisor")]
    Fork(#[source] std::io::Error),
}

/// Take the instance name `name` in `dir` (created if need be): its files, and its lock,
/// which [`spawn_supervisor`] hands on to the supervisor.
pub fn reserve(dir: &InstanceDir, name: &str) -> Result<(InstanceFiles, std::fs::File), InstanceError> {
    dir.create()?;
    let files = dir.files(name)?;
    let lock = files.acquire()?;
    Ok((files, lock))
}

/// What `spawn_supervisor` launches.
pub struct SupervisorLaunch {
    pub name: String,
    pub files: InstanceFiles,
    pub lock: std::fs::File,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub runtime_lib: PathBuf,
    pub profile: Option<PathBuf>,
    pub detach: bool,
    pub update: Option<mcr_supervisor::UpdateLaunch>,
    /// The launching `mcr` blocked [`crate::attach::FORWARDED`] to forward them (`mcr run`
    /// in the foreground blocks them before the launch, so that a signal sent as soon as
    /// the server answers is forwarded, not fatal to `mcr`): the supervisor and the
    /// server start with them unblocked, as they were before.
    pub unblock_forwarded: bool,
    /// An update's new version launched ahead: the supervisor's end of the go socket
    /// (`mcr_supervisor::staging`).
    pub go: Option<OwnedFd>,
}

/// Fork the supervisor (into a new PID namespace when permitted) and return the read end
/// of its report pipe. `mcr` itself must stay outside the new namespace (a process that
/// unshared CLONE_NEWPID can no longer create threads), so an intermediate child unshares
/// and forks the supervisor, then exits; as a subreaper, `mcr` inherits the supervisor
/// and can wait for it. Descriptors open without close-on-exec here reach the server.
pub fn spawn_supervisor(l: SupervisorLaunch) -> Result<OwnedFd, LaunchError> {
    let mut fds = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LaunchError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    let (report_rd, report_wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // SAFETY: mcr is single-threaded here; both children only continue as described.
    let intermediate = unsafe { libc::fork() };
    if intermediate < 0 {
        return Err(LaunchError::Fork(std::io::Error::last_os_error()));
    }
    if intermediate == 0 {
        if l.unblock_forwarded {
            crate::attach::set_forwarded_blocked(false);
        }
        drop(report_rd);
        let keep: Vec<i32> =
            [Some(report_wr.as_raw_fd()), Some(l.lock.as_raw_fd()), l.go.as_ref().map(|g| g.as_raw_fd())]
                .into_iter()
                .flatten()
                .collect();
        close_what_exec_would_close(&keep);
        let (own_ns, note) = match namespace::enter() {
            Namespace::Own => (true, None),
            Namespace::Shared { reason } => (false, Some(reason)),
        };
        // SAFETY: as above; this process exits right after.
        let child = unsafe { libc::fork() };
        if child != 0 {
            // SAFETY: leaving without running destructors or atexit handlers of mcr.
            unsafe { libc::_exit(if child < 0 { 71 } else { 0 }) };
        }
        let report = Some(report_wr);
        let host = match namespace::setup_child(own_ns) {
            Ok(host) => host,
            Err(e) => {
                mcr_supervisor::report_launch_failure(
                    &report,
                    &format!("cannot set up the supervisor's namespace: {e}"),
                );
                std::process::exit(70);
            }
        };
        if l.detach {
            redirect_stdio(&l.files.log);
        }
        let config = mcr_supervisor::Config {
            name: l.name,
            files: l.files,
            lock: l.lock,
            program: l.program,
            args: l.args,
            runtime_lib: l.runtime_lib,
            profile: l.profile,
            pid_namespace: own_ns,
            namespace_note: note,
            supervisor_pid: host.pid,
            report,
            detach: l.detach,
            update: l.update,
            runtime_socket: None,
            init_link: None,
            reattach: None,
            go: l.go,
        };
        // A fresh image of mcr, without what this process holds (`reexec`); in place when
        // that cannot be.
        let (config, host_proc) = crate::reexec::exec_supervisor(config, host.proc);
        // With a namespace, this process is its init (PID 1) and the supervisor its child:
        // the supervisor can die without ending the server.
        let code = if own_ns { mcr_supervisor::init::run(config, host_proc) } else { mcr_supervisor::run(config) };
        std::process::exit(code);
    }
    let mut st = 0;
    // SAFETY: reaping the intermediate child.
    unsafe { libc::waitpid(intermediate, &mut st, 0) };
    drop(report_wr);
    drop(l.lock);
    drop(l.go);
    Ok(report_rd)
}

/// The supervisor is a fork of `mcr`, never exec'd: close what an exec would have (every
/// close-on-exec descriptor but `keep`). Left open, `mcr`'s own connections would live as
/// long as the supervisor: an update's connection to the old version's supervisor, held
/// by the new one, would keep that supervisor from ever seeing a killed `mcr update` go
/// away (it resumes the old version then). The descriptors meant for the server are not
/// close-on-exec and stay.
fn close_what_exec_would_close(keep: &[i32]) {
    for fd in mcr_supervisor::procfs::own_descriptors_above_stderr() {
        if keep.contains(&fd) {
            continue;
        }
        // SAFETY: probing, then closing, descriptors of this freshly forked process; the
        // ones it still uses are in `keep` (Rust objects of the parent's other descriptors
        // are never used in this child).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::close(fd);
            }
        }
    }
}

fn redirect_stdio(log: &Path) {
    if let Ok(f) = mcr_protocol::instance::open_append(log) {
        // SAFETY: dup2 onto the standard descriptors of this (supervisor) process.
        unsafe {
            // Close-on-exec and closed after use: it must not leak into the server.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, 0);
                if null != 0 {
                    libc::close(null);
                }
            }
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

/// The reports on a supervisor's report pipe, as they come; ends when the supervisor
/// closes it (exits).
pub fn reports(fd: OwnedFd) -> impl Iterator<Item = LaunchReport> {
    BufReader::new(std::fs::File::from(fd))
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| mcr_protocol::decode_line(l.as_bytes()).ok())
}

/// The reports read on a thread of their own, so that a wait for them can time out (a
/// server that never completes startup must not hold its launcher forever).
pub fn report_channel(fd: OwnedFd) -> mpsc::Receiver<LaunchReport> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for r in reports(fd) {
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    rx
}

/// The last lines of an instance log, to append to a message about a failed launch.
pub fn log_tail(log: &Path) -> String {
    LogMark { path: log.to_path_buf(), offset: 0 }.tail()
}

/// A place in an instance log: the log is kept across runs of the same name (and the
/// versions an update chains share it), so a message about one launch shows only what
/// was written since that launch began.
#[derive(Debug, Clone)]
pub struct LogMark {
    pub path: std::path::PathBuf,
    offset: u64,
}

impl LogMark {
    /// The log's end now: what is written from here on belongs to what starts next.
    pub fn now(path: &Path) -> Self {
        Self { path: path.to_path_buf(), offset: std::fs::metadata(path).map_or(0, |m| m.len()) }
    }

    /// What was written since the mark (its last 64 KiB at most).
    pub fn text(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            // Not more than the last 64 KiB: a message needs the last lines, not a flood.
            let len = f.metadata().map_or(0, |m| m.len());
            let from = self.offset.max(len.saturating_sub(64 << 10));
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let _ = f.take(64 << 10).read_to_end(&mut text);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The last lines written since the mark, as a suffix for a message ("" if none).
    pub fn tail(&self) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        let log = &self.path;
        let tail = &lines[lines.len().saturating_sub(10)..];
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nlast lines of {}:\n  {}", log.display(), tail.join("\n  "))
        }
    }
}
