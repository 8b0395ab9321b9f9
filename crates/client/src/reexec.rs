//! The supervisor (and its namespace's init) as a fresh image of `mcr`.
//!
//! [`crate::launch::spawn_supervisor`] forks the launching `mcr`; by the time `mcr update`
//! launches the new version, that process holds the old version's startup logs and both
//! builds' type models (6.5 MB for nginx, 11 MB for kvd with 100 000 keys), which a fork
//! alone would keep in the supervisor and the init for as long as the version runs. So
//! the forked process executes `/proc/self/exe` again, with the same arguments and
//! environment plus [`SPEC_FD`], the descriptor of a memfd holding what it is to supervise
//! (the descriptors it keeps, the instance lock, the report pipe and the host's /proc,
//! stay open across the exec by number). `main` calls [`supervise_if_asked`] first.
//! When the exec fails, the forked process supervises as it is, as before.

use mcr_protocol::InstanceFiles;
use mcr_supervisor::{Config, UpdateLaunch};
use serde::{Deserialize, Serialize};
use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The environment variable naming the spec's descriptor in a re-executed `mcr`.
pub const SPEC_FD: &str = mcr_protocol::env::SUPERVISOR_SPEC_FD;

/// Set by a binary whose `main` calls [`supervise_if_asked`] first: only such a binary is
/// executed again as a supervisor (a test or tool that launches one supervises in place).
static ANSWERS: AtomicBool = AtomicBool::new(false);

#[derive(Serialize, Deserialize)]
struct Spec {
    name: String,
    files: InstanceFiles,
    lock: RawFd,
    program: PathBuf,
    args: Vec<String>,
    runtime_lib: PathBuf,
    profile: Option<PathBuf>,
    pid_namespace: bool,
    namespace_note: Option<String>,
    supervisor_pid: i32,
    report: Option<RawFd>,
    detach: bool,
    update: Option<UpdateLaunch>,
    host_proc: Option<RawFd>,
    #[serde(default)]
    go: Option<RawFd>,
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor number with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}

/// In the forked supervisor (or init, `host_proc` given): run it as a fresh `mcr`. Returns
/// only when the exec failed, with the config back, for the caller to run it in place.
pub fn exec_supervisor(config: Config, host_proc: Option<OwnedFd>) -> (Config, Option<OwnedFd>) {
    let spec = Spec {
        name: config.name.clone(),
        files: config.files.clone(),
        lock: config.lock.as_raw_fd(),
        program: config.program.clone(),
        args: config.args.clone(),
        runtime_lib: config.runtime_lib.clone(),
        profile: config.profile.clone(),
        pid_namespace: config.pid_namespace,
        namespace_note: config.namespace_note.clone(),
        supervisor_pid: config.supervisor_pid,
        report: config.report.as_ref().map(|f| f.as_raw_fd()),
        detach: config.detach,
        update: config.update.clone(),
        host_proc: host_proc.as_ref().map(|f| f.as_raw_fd()),
        go: config.go.as_ref().map(|f| f.as_raw_fd()),
    };
    // Returns only when the exec failed (the error says no more than that it did).
    let _ = try_exec(&spec);
    (config, host_proc)
}

fn try_exec(spec: &Spec) -> std::io::Result<std::convert::Infallible> {
    if !ANSWERS.load(Relaxed) {
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this binary does not supervise"));
    }
    let json = serde_json::to_vec(spec).map_err(std::io::Error::from)?;
    // SAFETY: memfd_create with a static name and flags; the descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"mcr-supervisor-spec".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let mut memfd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    memfd.write_all(&json)?;
    memfd.rewind()?;
    let kept: Vec<RawFd> = [Some(spec.lock), spec.report, spec.host_proc, spec.go].into_iter().flatten().collect();
    let c = |b: Vec<u8>| CString::new(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
    let argv: Vec<CString> = std::env::args_os().map(|a| c(a.into_vec())).collect::<Result<_, _>>()?;
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != SPEC_FD)
        .map(|(k, v)| {
            let mut kv: OsString = k;
            kv.push("=");
            kv.push(v);
            c(kv.into_vec())
        })
        .collect::<Result<_, _>>()?;
    envp.push(c(format!("{SPEC_FD}={}", memfd.as_raw_fd()).into_bytes())?);
    let ptrs =
        |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>();
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    for &fd in kept.iter().chain(std::iter::once(&memfd.as_raw_fd())) {
        set_cloexec(fd, false);
    }
    // SAFETY: NUL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    let err = std::io::Error::last_os_error();
    for &fd in &kept {
        set_cloexec(fd, true);
    }
    Err(err)
}

/// In `main`, first: when this `mcr` was executed to be a supervisor ([`SPEC_FD`] set),
/// supervise and return its exit code.
pub fn supervise_if_asked() -> Option<i32> {
    ANSWERS.store(true, Relaxed);
    let fd: RawFd = std::env::var(SPEC_FD).ok()?.parse().ok()?;
    // Executed as /proc/self/exe, the process would be named "exe" in ps and top.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"mcr".as_ptr()) };
    // The server inherits the supervisor's environment: nothing of mcr's may reach it.
    std::env::remove_var(SPEC_FD);
    set_cloexec(fd, true);
    // SAFETY: the memfd the launching process left open for this image, ours alone.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    let spec: Spec = match file.read_to_string(&mut text).map_err(|e| e.to_string()).and_then(|_| {
        drop(file);
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mcr: cannot read the supervisor's launch spec: {e}");
            return Some(70);
        }
    };
    let own = |fd: RawFd| {
        set_cloexec(fd, true);
        // SAFETY: a descriptor the launching process kept open for this image by number.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let config = Config {
        name: spec.name,
        files: spec.files,
        lock: std::fs::File::from(own(spec.lock)),
        program: spec.program,
        args: spec.args,
        runtime_lib: spec.runtime_lib,
        profile: spec.profile,
        pid_namespace: spec.pid_namespace,
        namespace_note: spec.namespace_note,
        supervisor_pid: spec.supervisor_pid,
        report: spec.report.map(own),
        detach: spec.detach,
        update: spec.update,
        runtime_socket: None,
        init_link: None,
        reattach: None,
        go: spec.go.map(own),
    };
    let host_proc = spec.host_proc.map(own);
    Some(if config.pid_namespace { mcr_supervisor::init::run(config, host_proc) } else { mcr_supervisor::run(config) })
}
