//! Helpers shared by the integration tests of the `mcr` command.
//!
//! Every test gets its own runtime directory ([`Mcr::new`]), so tests never see each
//! other's instances; every instance it starts is stopped by an [`Instance`] guard; every
//! wait is bounded in time; servers listen on 127.0.0.1 only.
#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest any single mcr command may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Locating the binaries.

/// The `mcr` binary under test; panics unless `libmcr.so` sits beside it.
pub fn mcr_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mcr"));
    let lib = bin.with_file_name("libmcr.so");
    if !bin.is_file() || !lib.is_file() {
        panic!(
            "{} or {} is missing: run `cargo build --release` first (scripts/test.sh does)",
            bin.display(),
            lib.display()
        );
    }
    bin
}

/// The cargo target directory (the parent of the profile directory holding `mcr`).
pub fn target_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mcr"));
    bin.parent().and_then(Path::parent).map(Path::to_path_buf).expect("mcr binary has no target dir")
}

/// Directory holding the built C fixture servers (`target/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    let dir = target_dir().join("fixtures");
    if !dir.join("kvd").is_file() || !dir.join("stuckd").is_file() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let repo = repo.canonicalize().unwrap_or(repo);
        panic!(
            "the fixture servers are not built in {}: run `make -C {}/fixtures OUT={}` (scripts/test.sh does)",
            dir.display(),
            repo.display(),
            dir.display()
        );
    }
    dir
}

/// Path of one fixture server binary.
pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures_dir().join(name);
    assert!(p.is_file(), "fixture {} is missing (rebuild the fixtures)", p.display());
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The file named by `$VAR`, which scripts/test.sh builds (with `build`, whose last line
/// of output is its path) and sets; panics, naming what is missing and how to build it,
/// when it is not set or does not exist: a test that needs it must not pass without it.
pub fn built_file(var: &str, build: &str, test: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{test}: {var}={} does not exist: rebuild it with {build}", p.display());
            p
        }
        None => panic!(
            "{test} needs {var} and it is not set: run the suite with scripts/test.sh, or set \
             {var}=\"$({build} | tail -n 1)\""
        ),
    }
}

/// The nginx binary from `$MCR_NGINX` ([`built_file`]).
pub fn nginx_bin(test: &str) -> PathBuf {
    built_file("MCR_NGINX", "scripts/nginx/build.sh", test)
}

// ---------------------------------------------------------------------------------------
// Temporary directories and ports.

static UNIQUE: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{n}-{nanos:x}", std::process::id())
}

/// A directory under /tmp, removed with its contents on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        let label: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = PathBuf::from("/tmp").join(format!("mcr-test-{label}-{}", unique_suffix()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

static GIVEN_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free TCP port on 127.0.0.1, chosen below the usual ephemeral range (so a client
/// connection of another test cannot be holding it) and checked by binding it once.
pub fn free_port() -> u16 {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            ^ ((std::process::id() as u64) << 20)
            ^ ((UNIQUE.fetch_add(1, Ordering::SeqCst) as u64) * 7919);
    let start = (seed.wrapping_mul(6364136223846793005) >> 33) % 12000;
    for i in 0..2000u64 {
        let port = (20000 + (start + i * 7) % 12000) as u16;
        // Never hand out the same port twice in this process: the test that got it may
        // not have started its server yet.
        let mut given = GIVEN_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    // Fall back to whatever the kernel hands out.
    let l = TcpListener::bind("127.0.0.1:0").expect("cannot bind any loopback port");
    l.local_addr().unwrap().port()
}

/// Whether something accepts TCP connections on 127.0.0.1:port right now.
pub fn port_open(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Whether 127.0.0.1:port can be bound again (nobody listens on it).
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns the last value.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` like [`wait_until`], panicking with "timed out waiting for WHAT" when it is
/// still false after `timeout`: for a condition a test must reach before it goes on.
pub fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(wait_until(timeout, f), "timed out after {timeout:?} waiting for {what}");
}

// ---------------------------------------------------------------------------------------
// Running mcr.

/// What a finished command left behind.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The exit code; panics (with the output) if the command was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("command was killed by a signal: {self}"))
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full output unless the command exited 0.
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "command failed: {self}");
        self
    }

    /// Non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// A child process whose stdout and stderr go to files (so a daemon that inherits them
/// can never hold a test waiting for EOF).
pub struct Spawned {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Spawned {
    pub fn spawn(mut cmd: Command, out_dir: &Path) -> Self {
        let tag = unique_suffix();
        let stdout = out_dir.join(format!("cmd-{tag}.out"));
        let stderr = out_dir.join(format!("cmd-{tag}.err"));
        let o = fs::File::create(&stdout).expect("create stdout file");
        let e = fs::File::create(&stderr).expect("create stderr file");
        cmd.stdin(Stdio::null()).stdout(o).stderr(e);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child, stdout, stderr, reaped: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Non-blocking: the exit status if the process is gone.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().expect("try_wait");
        }
        self.reaped
    }

    /// Waits at most `timeout`; `None` if the process is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Out> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return Some(Out { status: st, stdout: self.stdout_text(), stderr: self.stderr_text() });
            }
            if t0.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout`, panicking (after killing the process) if it is still running.
    pub fn wait(&mut self, timeout: Duration, what: &str) -> Out {
        match self.wait_timeout(timeout) {
            Some(o) => o,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{what} did not exit within {timeout:?}\n--- stdout ---\n{}--- stderr ---\n{}",
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
        }
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// One test's view of mcr: a private runtime directory (`$MCR_RUNTIME_DIR`) and a scratch
/// directory for everything else.
pub struct Mcr {
    pub bin: PathBuf,
    /// The runtime directory given to every mcr command of this test.
    pub runtime_dir: PathBuf,
    /// Scratch space (command output, configs, pid files); holds `runtime_dir` too.
    pub tmp: TempDir,
}

impl Mcr {
    pub fn new(test: &str) -> Self {
        let bin = mcr_bin();
        let tmp = TempDir::new(test);
        let runtime_dir = tmp.join("run");
        Self { bin, runtime_dir, tmp }
    }

    /// `mcr ARGS` with this test's runtime directory; stdin is /dev/null.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env("MCR_RUNTIME_DIR", &self.runtime_dir).env_remove("MCR_RUNTIME_LIB");
        c
    }

    /// Starts `mcr ARGS` in the background, output to files.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Spawned {
        Spawned::spawn(self.command(args), &self.tmp.path)
    }

    /// Runs `mcr ARGS` to completion (bounded by [`COMMAND_TIMEOUT`]).
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Out {
        let what = format!(
            "mcr {}",
            args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        );
        self.spawn(args).wait(COMMAND_TIMEOUT, &what)
    }

    /// `mcr run --detach --name NAME -- PROGRAM ARGS`; panics unless it exits 0.
    pub fn start<S: AsRef<std::ffi::OsStr>>(&self, name: &str, program: &Path, args: &[S]) -> Instance<'_> {
        let out = self.try_start(name, program, args);
        let inst = Instance { mcr: self, name: name.to_string() };
        assert!(out.success(), "mcr run --detach {name} failed: {out}\nlog:\n{}", inst.log());
        inst
    }

    /// `mcr run --detach --name NAME -- PROGRAM ARGS`, whatever the outcome.
    pub fn try_start<S: AsRef<std::ffi::OsStr>>(&self, name: &str, program: &Path, args: &[S]) -> Out {
        let mut argv: Vec<std::ffi::OsString> =
            vec!["run".into(), "--detach".into(), "--name".into(), name.into(), "--".into(), program.into()];
        argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self.run(&argv)
    }

    /// The fixture server `name` started with `--port PORT` and `args`, without mcr
    /// (killed on drop), once it answers PING: the reference a test compares mcr with.
    pub fn start_without_mcr(&self, name: &str, port: u16, args: &[&str]) -> Spawned {
        let mut cmd = Command::new(fixture(name));
        cmd.arg("--port").arg(port.to_string()).args(args);
        let s = Spawned::spawn(cmd, &self.tmp.path);
        assert_eq!(Client::connect(port).request("PING"), "PONG", "{name} without mcr");
        s
    }

    /// A guard for an instance started some other way (stops it on drop).
    pub fn guard(&self, name: &str) -> Instance<'_> {
        Instance { mcr: self, name: name.to_string() }
    }

    /// `mcr status NAME --json`, parsed; panics unless it succeeds.
    pub fn status(&self, name: &str) -> Value {
        let out = self.run(&["status", name, "--json"]).ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
    }

    /// `mcr ctl NAME quiesce --timeout MS`, whatever the outcome.
    pub fn quiesce(&self, name: &str, timeout_ms: u64) -> Out {
        self.run(&["ctl", name, "quiesce", "--timeout", &timeout_ms.to_string()])
    }

    /// `mcr ctl NAME resume`, whatever the outcome.
    pub fn resume(&self, name: &str) -> Out {
        self.run(&["ctl", name, "resume"])
    }

    /// Host PID of an instance's supervisor, from `<runtime dir>/<name>.pid`.
    pub fn supervisor_pid(&self, name: &str) -> i32 {
        let p = self.runtime_dir.join(format!("{name}.pid"));
        let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        s.trim().parse().unwrap_or_else(|_| panic!("{} holds {s:?}, not a pid", p.display()))
    }

    /// Names of the files in the runtime directory (empty when it does not exist).
    pub fn runtime_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.runtime_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Instance files in the runtime directory: anything but the logs, the update
    /// histories and the symbol tables updates prepare (shared by the instances), which
    /// outlive their instance by design.
    pub fn instance_files(&self) -> Vec<String> {
        self.runtime_files()
            .into_iter()
            .filter(|f| !f.ends_with(".log") && !f.ends_with(".history") && f != mcr_protocol::instance::SYMBOL_TABLES)
            .collect()
    }
}

/// A running instance; `mcr stop NAME --timeout 3` on drop.
pub struct Instance<'a> {
    pub mcr: &'a Mcr,
    pub name: String,
}

impl Instance<'_> {
    pub fn status(&self) -> Value {
        self.mcr.status(&self.name)
    }

    pub fn quiesce(&self, timeout_ms: u64) -> Out {
        self.mcr.quiesce(&self.name, timeout_ms)
    }

    pub fn resume(&self) -> Out {
        self.mcr.resume(&self.name)
    }

    /// Host PID of the supervisor, from `<runtime dir>/<name>.pid`.
    pub fn supervisor_pid(&self) -> i32 {
        self.mcr.supervisor_pid(&self.name)
    }

    /// The instance's log (the server's output when detached).
    pub fn log(&self) -> String {
        fs::read_to_string(self.mcr.runtime_dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    pub fn stop(&self) -> Out {
        self.mcr.run(&["stop", &self.name, "--timeout", "3"])
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        let lock = self.mcr.runtime_dir.join(format!("{}.lock", self.name));
        if lock.exists() {
            let _ = self
                .mcr
                .command(&["stop", &self.name, "--timeout", "3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `mcr update NAME FLAGS -- PROGRAM ARGS`, whatever the outcome.
pub fn update(mcr: &Mcr, name: &str, flags: &[&str], program: &Path, args: &[String]) -> Out {
    let mut argv: Vec<std::ffi::OsString> = vec!["update".into(), name.into()];
    argv.extend(flags.iter().map(std::ffi::OsString::from));
    argv.push("--".into());
    argv.push(program.into());
    argv.extend(args.iter().map(std::ffi::OsString::from));
    mcr.run(&argv)
}

/// `mcr update --json ...`: the exit code and the outcome (`Null` when nothing or no
/// JSON was printed: an update refused before it started).
pub fn update_outcome(mcr: &Mcr, name: &str, flags: &[&str], program: &Path, args: &[String]) -> (Out, Value) {
    let mut f = vec!["--json"];
    f.extend_from_slice(flags);
    let out = update(mcr, name, &f, program, args);
    let v = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

/// `mcr update --json ...`: the exit code and the parsed outcome.
pub fn update_json(mcr: &Mcr, name: &str, flags: &[&str], program: &Path, args: &[String]) -> (Out, Value) {
    let mut f = vec!["--json"];
    f.extend_from_slice(flags);
    let out = update(mcr, name, &f, program, args);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("update --json is not JSON ({e}): {out}"));
    (out, v)
}

// ---------------------------------------------------------------------------------------
// Reading `mcr status --json`.

/// Every process of a status.
pub fn processes(st: &Value) -> Vec<&Value> {
    st["processes"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

/// Every (process, thread) pair of a status.
pub fn threads(st: &Value) -> Vec<(&Value, &Value)> {
    let mut v = Vec::new();
    for p in processes(st) {
        for t in p["threads"].as_array().into_iter().flatten() {
            v.push((p, t));
        }
    }
    v
}

/// Function names of a call stack value (`{"id":..,"frames":[..]}`), innermost first.
pub fn frame_functions(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect()
}

/// Asserts the instance is quiesced: `quiesced: true` and every thread of every process
/// (at least `min_threads` of them, in at least `min_procs` processes) is parked.
pub fn assert_all_parked(st: &Value, min_procs: usize, min_threads: usize) {
    assert_eq!(st["quiesced"], Value::Bool(true), "status does not say quiesced: {st:#}");
    let procs = processes(st);
    assert!(procs.len() >= min_procs, "expected at least {min_procs} processes: {st:#}");
    let ths = threads(st);
    assert!(ths.len() >= min_threads, "expected at least {min_threads} threads: {st:#}");
    for p in &procs {
        assert!(p["error"].is_null(), "process {} has an error: {st:#}", p["pid"]);
        assert!(
            p["threads"].as_array().is_some_and(|a| !a.is_empty()),
            "process {} lists no threads: {st:#}",
            p["pid"]
        );
    }
    for (p, t) in ths {
        assert_eq!(
            t["state"].as_str(),
            Some("parked"),
            "thread {} of process {} is not parked: {t:#}",
            t["tid"],
            p["pid"]
        );
    }
}

/// Number of threads listed in a status.
pub fn thread_count(st: &Value) -> usize {
    threads(st).len()
}

// ---------------------------------------------------------------------------------------
// Host processes.

/// argv of a host process, or `None` if it is gone (or a zombie: no argv left).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    mcr_procfs::cmdline(pid).ok().filter(|argv| !argv.is_empty())
}

fn all_pids() -> Vec<i32> {
    mcr_procfs::pids().unwrap_or_default()
}

/// Host PIDs of the processes whose argv[0] is `program` (or ends with `/<its file
/// name>`) and whose arguments include `--port PORT` (the `pgrep -f` of these tests; the
/// port makes it unique, and matching argv[0] leaves out `mcr run ... -- PROGRAM`).
pub fn host_pids(program: &Path, port: u16) -> Vec<i32> {
    let base = program.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let port = port.to_string();
    let mut out = Vec::new();
    for pid in all_pids() {
        let Some(argv) = cmdline(pid) else { continue };
        let a0 = &argv[0];
        let exe_matches = Path::new(a0) == program || a0 == &base || a0.ends_with(&format!("/{base}"));
        let port_matches = argv.windows(2).any(|w| w[0] == "--port" && w[1] == port);
        if exe_matches && port_matches && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// The one host PID of `program --port PORT`, waiting up to 5 s for it to show up.
pub fn host_pid(program: &Path, port: u16) -> i32 {
    let mut found = Vec::new();
    wait_until(Duration::from_secs(5), || {
        found = host_pids(program, port);
        found.len() == 1
    });
    assert_eq!(found.len(), 1, "expected exactly one {} --port {port} process, found {found:?}", program.display());
    found[0]
}

/// Host PIDs of processes whose whole command line contains `needle`.
pub fn host_pids_containing(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| cmdline(p).is_some_and(|a| a.join(" ").contains(needle)) && !is_zombie(p))
        .collect();
    out.sort();
    out
}

/// Whether a host process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    mcr_procfs::exists(pid) && !is_zombie(pid)
}

pub fn is_zombie(pid: i32) -> bool {
    mcr_procfs::stat::read(pid).is_ok_and(|s| s.state == 'Z')
}

/// The system call a host process's main thread is blocked in (`/proc/PID/syscall`),
/// `None` when it is running, blocked outside a system call, or gone.
pub fn current_syscall(pid: i32) -> Option<i64> {
    mcr_procfs::task::syscall(pid, pid).ok()?.number()
}

/// Waits (up to 5 s) until the main thread of `pid` sleeps in one of `syscalls`.
pub fn wait_in_syscall(pid: i32, syscalls: &[i64]) -> bool {
    wait_until(Duration::from_secs(5), || current_syscall(pid).is_some_and(|n| syscalls.contains(&n)))
}

/// epoll_wait, epoll_pwait, epoll_pwait2 (x86_64 numbers).
pub const EPOLL_SYSCALLS: [i64; 3] = [232, 281, 441];

/// Whether `sig` is pending (not yet delivered) for process `pid` or its main thread.
pub fn signal_pending(pid: i32, sig: i32) -> bool {
    mcr_procfs::status::read(pid).is_ok_and(|s| s.pending_signals() & (1u64 << (sig - 1)) != 0)
}

/// Waits (up to 5 s) until `sig` is no longer pending for `pid` (it was delivered).
pub fn wait_signal_delivered(pid: i32, sig: i32) -> bool {
    wait_until(Duration::from_secs(5), || !signal_pending(pid, sig))
}

/// Sends a signal to a host process; panics if that fails.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain kill(2).
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------
// Line-protocol client.

/// Sends `lines` pipelined, in batches, and returns the replies in order.
pub fn pipelined(c: &mut Client, lines: impl Iterator<Item = String>) -> Vec<String> {
    let lines: Vec<String> = lines.collect();
    let mut replies = Vec::with_capacity(lines.len());
    for batch in lines.chunks(500) {
        c.send_raw(batch.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes()).expect("send a batch");
        for l in batch {
            replies.push(c.read_line().unwrap_or_else(|e| panic!("reply to {l:?}: {e}")));
        }
    }
    replies
}

/// A client of the fixtures' line protocol on 127.0.0.1.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub port: u16,
}

pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Connects, retrying for up to 5 s while nothing listens yet.
    pub fn connect(port: u16) -> Self {
        let t0 = Instant::now();
        loop {
            match Self::try_connect(port, Duration::from_secs(2)) {
                Ok(c) => return c,
                Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => panic!("cannot connect to 127.0.0.1:{port} within 5 s: {e}"),
            }
        }
    }

    /// One connection attempt.
    pub fn try_connect(port: u16, timeout: Duration) -> io::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader, port })
    }

    /// The client's end of the connection (what the server sees as the peer's port).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.stream.write_all(format!("{line}\n").as_bytes())
    }

    /// Bytes as they are (a command half sent, without its newline).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply line (without the newline) within `timeout`. A timeout is an error
    /// of kind `WouldBlock`/`TimedOut`; EOF is `UnexpectedEof`.
    pub fn read_line_timeout(&mut self, timeout: Duration) -> io::Result<String> {
        self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut line = String::new();
        let r = self.reader.read_line(&mut line);
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        match r {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")),
            Ok(_) if !line.ends_with('\n') => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed after {line:?}")))
            }
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(e),
        }
    }

    pub fn read_line(&mut self) -> io::Result<String> {
        self.read_line_timeout(REPLY_TIMEOUT)
    }

    /// Sends a command and returns its reply; panics on any error.
    pub fn request(&mut self, line: &str) -> String {
        self.try_request(line).unwrap_or_else(|e| panic!("{line:?} to 127.0.0.1:{}: {e}", self.port))
    }

    pub fn try_request(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.read_line()
    }

    /// Closes the write side (the server sees EOF).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// connect / PING / read PONG / close, once. Ok(()) only on a PONG.
pub fn ping_once(port: u16, timeout: Duration) -> Result<(), String> {
    let mut c = Client::try_connect(port, timeout).map_err(|e| format!("connect: {e}"))?;
    c.stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    c.send("PING").map_err(|e| format!("send: {e}"))?;
    match c.read_line_timeout(timeout) {
        Ok(l) if l == "PONG" => Ok(()),
        Ok(l) => Err(format!("reply {l:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Parses `STATS a=1 b=2` into (name, value) pairs; panics on anything else.
pub fn parse_stats(line: &str) -> std::collections::HashMap<String, u64> {
    let mut words = line.split(' ');
    assert_eq!(words.next(), Some("STATS"), "not a STATS reply: {line:?}");
    words
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("bad STATS field {w:?} in {line:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad STATS value {w:?} in {line:?}")))
        })
        .collect()
}

/// One HTTP/1.0 GET with `Connection: close` to 127.0.0.1:port; returns the status code
/// and the body.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// An nginx prefix with the test config of scripts/nginx/conf.sh for `port`; returns the
/// (prefix, config) paths.
pub fn nginx_config(dir: &Path, port: u16) -> (PathBuf, PathBuf) {
    let prefix = dir.join("nginx");
    let out = Command::new(repo_root().join("scripts/nginx/conf.sh"))
        .arg(&prefix)
        .arg(port.to_string())
        .output()
        .expect("run scripts/nginx/conf.sh");
    assert!(out.status.success(), "conf.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let conf = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    (prefix.canonicalize().unwrap_or(prefix), PathBuf::from(conf))
}

/// Link-time address and size of symbol `name` in the ELF file `exe`; panics when it has none.
pub fn elf_symbol(exe: &Path, name: &str) -> (u64, u64) {
    use object::{Object, ObjectSymbol};
    let data = fs::read(exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let file = object::File::parse(&*data).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name} in {}", exe.display()));
    (sym.address(), sym.size())
}

/// The GNU build ID of the ELF file `path`, in hex (what `mcr history` and `STATUS=` name).
pub fn elf_build_id(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = object::File::parse(&*data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let id = object::Object::build_id(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{} has no build ID", path.display()));
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// nginx's command line for the prefix and config of [`nginx_config`].
pub fn nginx_args(prefix: &Path, conf: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", p.display())).to_string();
    vec!["-p".into(), path(prefix), "-c".into(), path(conf)]
}

/// The cached build of nginx with the first `n` Debian patches, beside `$MCR_NGINX`'s
/// (scripts/nginx/build.sh --patches N puts them there; scripts/test.sh builds them);
/// panics, naming it, when it is not built.
pub fn cached_nginx_build(nginx: &Path, n: u32, test: &str) -> PathBuf {
    let cached = || -> Option<PathBuf> {
        let prefix = nginx.parent()?.parent()?;
        let dir = prefix.file_name()?.to_str()?;
        let (base, _) = dir.rsplit_once("-p")?;
        let p = prefix.with_file_name(format!("{base}-p{n}")).join("sbin/nginx");
        p.is_file().then_some(p)
    };
    cached().unwrap_or_else(|| {
        panic!(
            "{test} needs the nginx build with the first {n} Debian patches beside {}, which is not cached: run \
             scripts/nginx/build.sh --patches {n} (about a minute; scripts/test.sh does)",
            nginx.display()
        )
    })
}

/// One HTTP/1.1 response read by [`KeepAlive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`: this was the connection's last response.
    pub closing: bool,
}

/// An HTTP/1.1 keep-alive client: one connection, many requests.
pub struct KeepAlive {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        KeepAlive { stream, reader }
    }

    /// GET `path` on this connection: the status and the body; an error when nginx
    /// closes the connection after it.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let r = self.request(path)?;
        if r.closing {
            return Err("nginx is closing the connection".into());
        }
        Ok((r.status, r.body))
    }

    /// GET `path` on this connection, whether or not nginx keeps it open after.
    pub fn request(&mut self, path: &str) -> Result<HttpResponse, String> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(|e| format!("status line: {e}"))? == 0 {
            return Err("the connection was closed".into());
        }
        let status =
            line.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| format!("not HTTP: {line:?}"))?;
        let mut length = 0usize;
        let mut closing = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(|e| format!("headers: {e}"))?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
                }
                if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    closing = true;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        Ok(HttpResponse { status, body: String::from_utf8_lossy(&body).into_owned(), closing })
    }

    /// Whether the server closed the connection: a read sees EOF (not a reset, not a
    /// timeout) within `timeout`, with nothing left unread.
    pub fn closed_by_server(&mut self, timeout: Duration) -> Result<(), String> {
        self.stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => Ok(()),
            Ok(_) => Err(format!("{} bytes after the last response: {:?}", rest.len(), String::from_utf8_lossy(&rest))),
            Err(e) => Err(format!("no clean close: {e}")),
        }
    }
}

/// `wrk` keep-alive load on 127.0.0.1:port, for at most `duration`.
pub struct Wrk {
    child: Child,
}

/// What `wrk` printed when it ended.
pub struct WrkReport {
    pub status: ExitStatus,
    pub text: String,
    pub stderr: String,
}

impl Wrk {
    /// `wrk -t 2 -c CONNECTIONS -d DURATION EXTRA... http://127.0.0.1:PORT/`.
    pub fn start(port: u16, connections: u32, duration: Duration, extra: &[&str]) -> Wrk {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("wrk");
        cmd.args(["-t", "2", "-c", &connections.to_string(), "-d", &format!("{}s", duration.as_secs().max(1))])
            .args(extra)
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: signal(2) is async-signal-safe; between fork and exec the child only resets
        // SIGINT, which a shell running the tests in the background may have left ignored
        // (wrk ends early on SIGINT, printing its report: `stop` relies on it).
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("this test needs wrk, which cannot run ({e}): install it (apt-get install wrk; .ci/run does)")
        });
        Wrk { child }
    }

    /// Waits for wrk to end by itself (its duration plus a margin).
    pub fn wait(self, timeout: Duration) -> WrkReport {
        let pid = self.child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = self.child.wait_with_output();
            let _ = tx.send(());
            out
        });
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: plain kill(2) of our own child, not yet reaped (the waiter holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("wrk did not end within {timeout:?}");
        }
        let out = waiter.join().expect("wrk waiter").expect("wrk output");
        WrkReport {
            status: out.status,
            text: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Ends wrk now (SIGINT: it stops its connections and prints its report).
    pub fn stop(self) -> WrkReport {
        // SAFETY: plain kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait(Duration::from_secs(15))
    }
}

impl WrkReport {
    /// The number of requests wrk completed; panics when the report has none.
    pub fn requests(&self) -> u64 {
        self.text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no request count in wrk's report:\n{}", self.text))
    }

    /// Panics unless wrk ran to its end with no socket error and no non-2xx answer.
    pub fn assert_no_failures(&self, during: &str) {
        assert!(self.status.success(), "wrk failed: {}{}", self.text, self.stderr);
        assert!(!self.text.contains("Socket errors"), "wrk saw connections fail {during}:\n{}", self.text);
        assert!(!self.text.contains("Non-2xx"), "wrk saw failed requests {during}:\n{}", self.text);
    }
}

// ---------------------------------------------------------------------------------------
// Sockets and descriptors seen from the host (used by the `mcr update` tests).

/// One IPv4 TCP socket of /proc/net/tcp (this network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's state number: 0x01 established, 0x0A listening...
    pub state: u8,
    /// Bytes received and not yet read by the socket's owner.
    pub rx_queue: u64,
    /// 0 for a connection still in its listener's accept queue.
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_CLOSE_WAIT: u8 = 0x08;
pub const TCP_LISTEN: u8 = 0x0A;

/// Every IPv4 TCP socket of /proc/net/tcp.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    // `0100007F:1F90`: the address as the kernel's u32 in host order, the port in hex.
    fn addr(s: &str) -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some(SocketAddr::from((std::net::Ipv4Addr::from(u32::from_be(ip)), u16::from_str_radix(port, 16).ok()?)))
    }
    let text = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (_, rx) = f.get(4)?.split_once(':')?;
            Some(TcpSocket {
                local: addr(f.get(1)?)?,
                remote: addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp), `None` when
/// nothing listens there. The same inode before and after an operation means the very
/// same listening socket survived it.
pub fn listening_socket_inode(port: u16) -> Option<u64> {
    let want: SocketAddr = ([127, 0, 0, 1], port).into();
    tcp_sockets().into_iter().find(|s| s.local == want && s.state == TCP_LISTEN).map(|s| s.inode)
}

/// The server's end of `client`'s connection to 127.0.0.1:port.
pub fn server_end(port: u16, client: &Client) -> Option<TcpSocket> {
    let (server, peer): (SocketAddr, SocketAddr) =
        (([127, 0, 0, 1], port).into(), ([127, 0, 0, 1], client.local_port()).into());
    tcp_sockets().into_iter().find(|s| s.local == server && s.remote == peer && s.state != TCP_LISTEN)
}

/// Whether the server accepted `client`'s connection and read everything sent on it (a
/// half-sent command is then in the server's own buffer, not in the kernel's).
pub fn server_read_all_of(port: u16, client: &Client) -> bool {
    server_end(port, client).is_some_and(|s| s.inode != 0 && s.rx_queue == 0)
}

/// Whether the server accepted `client`'s connection (it left the accept queue).
pub fn server_accepted(port: u16, client: &Client) -> bool {
    server_end(port, client).is_some_and(|s| s.inode != 0)
}

/// Connections to 127.0.0.1:port whose server end is still open (established, or closed
/// by the client only): accepted and not yet closed by the server, or still queued.
pub fn open_server_ends(port: u16) -> Vec<TcpSocket> {
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    tcp_sockets()
        .into_iter()
        .filter(|s| s.local == server && matches!(s.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT))
        .collect()
}

/// Number of open descriptors of a host process (0 when it is gone).
pub fn fd_count(pid: i32) -> usize {
    mcr_procfs::fd::list(pid).map(|fds| fds.len()).unwrap_or(0)
}

/// Host PIDs (zombies included, marked by `is_zombie`) of the processes whose argv has
/// `--port PORT` as two consecutive words.
pub fn host_pids_with_port(port: u16) -> Vec<i32> {
    let port = port.to_string();
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| cmdline(p).is_some_and(|a| a.windows(2).any(|w| w[0] == "--port" && w[1] == port)))
        .collect();
    out.sort();
    out
}

/// Host PIDs of the live processes running the executable `program` (by /proc/PID/exe,
/// whatever their argv says) with `--port PORT` in their argv.
pub fn host_pids_running(program: &Path, port: u16) -> Vec<i32> {
    let want = program.canonicalize().unwrap_or_else(|_| program.to_path_buf());
    host_pids_with_port(port)
        .into_iter()
        .filter(|&p| !is_zombie(p) && mcr_procfs::exe(p).is_ok_and(|e| e == want))
        .collect()
}

/// Host PIDs of the live processes in the PID namespace of host process `pid`, that
/// process and its parent left out (for an instance's supervisor, whose parent is PID 1 of
/// its namespace: the server's processes, whatever their argv).
pub fn host_pids_in_namespace_of(pid: i32) -> Vec<i32> {
    let Ok(ns) = mcr_procfs::pid_namespace(pid) else { return Vec::new() };
    // The namespace's init (PID 1 there), the supervisor's parent, is not the server's.
    let init = mcr_procfs::stat::read(pid).map_or(0, |s| s.ppid);
    all_pids()
        .into_iter()
        .filter(|&p| p != pid && p != init && !is_zombie(p))
        .filter(|&p| mcr_procfs::pid_namespace(p).is_ok_and(|n| n == ns))
        .collect()
}

/// Runs a fixture that writes its transcript to the file named by its one argument and
/// exits: without mcr, then in the foreground under `mcr run --name NAME` (which must end
/// within `wait`, with status 0). Requires the same transcript; returns it.
pub fn same_output_file_with_and_without_mcr(mcr: &Mcr, name: &str, program: &Path, wait: Duration) -> String {
    let plain_out = mcr.tmp.join(&format!("{name}-plain.txt"));
    let status = Command::new(program).arg(&plain_out).status().unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(status.success(), "{name} without mcr: {status}");
    let plain = fs::read_to_string(&plain_out).unwrap_or_else(|e| panic!("{}: {e}", plain_out.display()));
    let under_out = mcr.tmp.join(&format!("{name}-under.txt"));
    let argv: Vec<std::ffi::OsString> =
        vec!["run".into(), "--name".into(), name.into(), "--".into(), program.into(), under_out.clone().into()];
    let out = mcr.spawn(&argv).wait(wait, &format!("mcr run {name}"));
    assert_eq!(out.code(), 0, "{out}");
    let under = fs::read_to_string(&under_out).unwrap_or_else(|e| panic!("{}: {e}", under_out.display()));
    assert_eq!(under, plain, "{name}: under mcr (left) and without (right) differ");
    plain
}

/// Every live heap block of process `host` with its bytes, from its allocator's metadata.
pub fn heap_contents(host: i32) -> Vec<(u64, Vec<u8>)> {
    use mcr_heap::ReadMemory;
    let mem = mcr_heap::ProcessMemory::open(host).expect("open the server's memory");
    let heap = mcr_heap::HeapIndex::scan(&mem).expect("list the server's heap");
    heap.iter()
        .map(|o| {
            let mut b = vec![0u8; o.size as usize];
            mem.read(o.addr, &mut b).expect("read a live block");
            (o.addr, b)
        })
        .collect()
}

/// The live blocks of instance `name`'s server process `host` once a quiesce returned the
/// blocks its threads cache for reuse (freed, still marked live) to their spans: the
/// update's quiesce does it too, and so do the runtime's own short-lived allocations.
pub fn heap_at_rest(mcr: &Mcr, name: &str, host: i32) -> Vec<(u64, Vec<u8>)> {
    for what in ["quiesce", "resume"] {
        let out = mcr.run(&["ctl", name, what]);
        assert_eq!(out.code(), 0, "mcr ctl {name} {what}: {out}");
    }
    heap_contents(host)
}

/// Apache httpd's config in `dir` (`dir/httpd.conf`, returned): `index` as its document
/// root's index.html, a POST echoed back by mod_reflector at /echo, keep-alive on,
/// children as nobody, errors in `dir/logs/error_log`. Its command line:
/// `httpd -f <conf> -DFOREGROUND`. Its two children hold all the spare threads it wants
/// (MinSpareThreads, 75 by default, is one child's 25): the master forks no third one
/// later, which an update would refuse (README.md, Limitations).
pub fn httpd_conf(dir: &Path, port: u16, index: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let docs = dir.join("htdocs");
    let logs = dir.join("logs");
    for d in [&docs, &logs] {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    }
    // The children (nobody) read the documents.
    for d in [dir, &docs] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", d.display()));
    }
    let write = |path: &Path, text: &str| {
        fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()))
    };
    write(&docs.join("index.html"), index);
    let conf = dir.join("httpd.conf");
    write(
        &conf,
        &format!(
            "ServerRoot \"{dir}\"\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\nPidFile \"{logs}/httpd.pid\"\n\
             ErrorLog \"{logs}/error_log\"\nLogLevel warn\nUser nobody\nGroup nogroup\nDocumentRoot \"{docs}\"\n\
             DirectoryIndex index.html\nTypesConfig /dev/null\nAddType text/html .html\nKeepAlive On\n\
             MaxKeepAliveRequests 100\nKeepAliveTimeout 15\nStartServers 2\nMinSpareThreads 25\n\
             <Location \"/echo\">\n    SetHandler reflector\n</Location>\n",
            dir = dir.display(),
            logs = logs.display(),
            docs = docs.display()
        ),
    );
    conf
}
