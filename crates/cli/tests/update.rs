//! `mcr update NAME -- PROGRAM ARGS`: code-only updates and compatible startup changes
//! commit (same PIDs in the namespace, the listening socket never closed, nothing left
//! behind), incompatible ones roll back (a report naming the conflict, the old version
//! running exactly as before, nothing of the new one left), nginx updates under load, and
//! twenty updates in a row leak neither descriptors, processes nor files.
//!
//! That the state survives (data, connections, sessions) is `transfer.rs`'s and the
//! server suites' (`compat.rs`, `nginx_state.rs`, `httpd_state.rs`).

mod support;

use serde_json::Value;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;

/// The one-screen limit of a rollback report.
const SCREEN_LINES: usize = 24;

/// `["--port", P, extra...]`.
fn port_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--port".to_string(), port.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn pid_set(st: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = processes(st).iter().filter_map(|p| p["pid"].as_i64()).collect();
    v.sort();
    v
}

fn tid_set(st: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = threads(st).iter().filter_map(|(_, t)| t["tid"].as_i64()).collect();
    v.sort_unstable();
    v
}

fn json_pids(v: &Value) -> Vec<i64> {
    let mut p: Vec<i64> = v.as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
    p.sort();
    p
}

/// A status without what changes while a server just runs (thread states and stacks).
fn stable_status(st: &Value) -> Value {
    let mut v = st.clone();
    for p in v["processes"].as_array_mut().into_iter().flatten() {
        for t in p["threads"].as_array_mut().into_iter().flatten() {
            if let Some(o) = t.as_object_mut() {
                for k in ["state", "call", "current_stack", "quiescent_point", "at_quiescent_point"] {
                    o.remove(k);
                }
            }
        }
    }
    v
}

/// One request on a fresh connection; panics on failure.
fn ask(port: u16, line: &str) -> String {
    Client::connect(port).request(line)
}

/// The runtime directory holds exactly the instance's own files.
fn assert_only_instance_files(mcr: &Mcr, name: &str) {
    let mut want: Vec<String> = ["lock", "log", "pid", "sock"].iter().map(|e| format!("{name}.{e}")).collect();
    want.sort();
    // The update history is kept beside the log, and the symbol tables updates prepare.
    let files: Vec<String> = mcr
        .runtime_files()
        .into_iter()
        .filter(|f| *f != format!("{name}.history") && f != mcr_protocol::instance::SYMBOL_TABLES)
        .collect();
    assert_eq!(files, want, "unexpected files in the runtime directory");
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

// ---------------------------------------------------------------------------------------
// A client that keeps connecting while an update runs.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proto {
    /// connect, `VERSION`, read the reply line, close.
    Line,
    /// connect, `GET /status` (HTTP/1.0, Connection: close), read to EOF, close.
    Http,
}

#[derive(Debug, Default)]
struct ProbeReport {
    attempts: u64,
    ok: u64,
    /// connect() failed with ECONNREFUSED: nothing was listening.
    refused: u64,
    /// Any other failure (timeout, reset, EOF before the reply, wrong reply).
    failed: u64,
    errors: Vec<String>,
    /// The distinct successive replies (for `Line`: the VERSION lines, in order).
    replies: Vec<String>,
}

struct Probe {
    stop: Arc<AtomicBool>,
    /// Attempts started, and finished (whatever the outcome).
    attempts: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<ProbeReport>>,
}

/// Closes with RST (SO_LINGER 0), so thousands of probe connections leave no TIME_WAIT
/// sockets holding ephemeral ports.
fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

enum Attempt {
    Ok(String),
    Refused,
    Failed(String),
}

fn attempt(port: u16, proto: Proto) -> Attempt {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Attempt::Refused,
        Err(e) => return Attempt::Failed(format!("connect: {e}")),
    };
    set_linger_zero(&s);
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let r: io::Result<Result<String, String>> = (|| {
        let mut w = &s;
        match proto {
            Proto::Line => {
                w.write_all(b"VERSION\n")?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                Ok(if line.starts_with("VERSION ") && line.ends_with('\n') {
                    Ok(line.trim_end().to_string())
                } else {
                    Err(format!("reply {line:?}"))
                })
            }
            Proto::Http => {
                w.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
                let mut buf = Vec::new();
                (&s).read_to_end(&mut buf)?;
                let text = String::from_utf8_lossy(&buf);
                Ok(if text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok\n") {
                    Ok("200 ok".to_string())
                } else {
                    Err(format!("HTTP answer {text:?}"))
                })
            }
        }
    })();
    match r {
        Ok(Ok(reply)) => Attempt::Ok(reply),
        Ok(Err(e)) => Attempt::Failed(e),
        Err(e) => Attempt::Failed(format!("{:?}: {e}", e.kind())),
    }
}

impl Probe {
    /// `clients` threads connecting and asking in a tight loop until [`Probe::finish`]
    /// (bounded: at most 60 s and 500 000 attempts each).
    fn start(port: u16, proto: Proto, clients: usize, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, attempts, finished, ok) = (stop.clone(), attempts.clone(), finished.clone(), ok.clone());
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut r = ProbeReport::default();
                    for _ in 0..500_000 {
                        if stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(60) {
                            break;
                        }
                        attempts.fetch_add(1, Ordering::SeqCst);
                        r.attempts += 1;
                        let a = attempt(port, proto);
                        finished.fetch_add(1, Ordering::SeqCst);
                        match a {
                            Attempt::Ok(reply) => {
                                if !pace.is_zero() {
                                    std::thread::sleep(pace);
                                }
                                ok.fetch_add(1, Ordering::SeqCst);
                                r.ok += 1;
                                if r.replies.last() != Some(&reply) {
                                    r.replies.push(reply);
                                }
                            }
                            Attempt::Refused => {
                                r.refused += 1;
                                if r.errors.len() < 10 {
                                    r.errors.push(format!("{:?}: connection refused", t0.elapsed()));
                                }
                            }
                            Attempt::Failed(e) => {
                                r.failed += 1;
                                if r.errors.len() < 10 {
                                    r.errors.push(format!("{:?}: {e}", t0.elapsed()));
                                }
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        let p = Self { stop, attempts, finished, ok, threads };
        // The load is really running before the caller starts the update.
        let ok = wait_until(Duration::from_secs(5), || p.ok.load(Ordering::SeqCst) >= 3);
        assert!(ok, "the probe got no answer from 127.0.0.1:{port} before the update");
        p
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Stops the clients; one report per client.
    fn finish(self) -> Vec<ProbeReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().expect("probe thread panicked")).collect()
    }
}

/// Runs `f` (the update) while a probe keeps connecting; checks at least one connection
/// attempt was under way while it ran.
fn under_probe<T>(
    port: u16,
    proto: Proto,
    clients: usize,
    pace: Duration,
    f: impl FnOnce() -> T,
) -> (T, Vec<ProbeReport>) {
    let probe = Probe::start(port, proto, clients, pace);
    let before = probe.finished();
    let r = f();
    // Attempts not finished when the update started, or started before it ended.
    let during = probe.attempts() - before;
    // A little more load after the update, served by whichever version now runs.
    let after = probe.ok.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(5), || probe.ok.load(Ordering::SeqCst) >= after + 3);
    let reports = probe.finish();
    assert!(during >= 1, "no connection attempt was under way during the update");
    (r, reports)
}

fn sum(reports: &[ProbeReport], f: impl Fn(&ProbeReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

fn all_errors(reports: &[ProbeReport]) -> String {
    reports.iter().flat_map(|r| r.errors.iter().cloned()).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------
// 1. Code-only updates commit.

struct Case<'a> {
    label: &'a str,
    /// The instance name and the server name in `VERSION <server> <n>`.
    server: &'a str,
    v1: &'a str,
    v2: &'a str,
    extra: &'a [&'a str],
    /// Processes of the instance when idle.
    procs: usize,
}

fn code_only_update_commits(c: Case) {
    let mcr = Mcr::new(c.label);
    let port = free_port();
    let args = port_args(port, c.extra);
    let (v1, v2) = (fixture(c.v1), fixture(c.v2));
    let inst = mcr.start(c.server, &v1, &args);
    let name = c.server;
    assert_eq!(ask(port, "VERSION"), format!("VERSION {} 1", c.server));
    assert_eq!(ask(port, "ECHO hi"), "ERR unknown command");
    // (connd's sessions, ours included, end on their own.)
    let mut st0 = inst.status();
    wait_until(Duration::from_secs(5), || {
        st0 = inst.status();
        processes(&st0).len() == c.procs
    });
    assert_eq!(processes(&st0).len(), c.procs, "{st0:#}");
    let old_supervisor = inst.supervisor_pid();
    let listener = listening_socket_inode(port).expect("no listening socket");

    // connd's per-connection children (the probe's sessions) alive at the update are
    // recreated by its respawn handler with their PIDs: the trees match, children included.
    let pace = if c.server == "connd" { Duration::from_millis(3) } else { Duration::ZERO };
    let ((out, outcome), reports) =
        under_probe(port, Proto::Line, 1, pace, || update_json(&mcr, name, &[], &v2, &args));
    assert_eq!(out.code(), 0, "update {} -> {} did not commit: {out}\nlog:\n{}", c.v1, c.v2, inst.log());
    assert_eq!(outcome["committed"], Value::Bool(true), "{outcome:#}");
    assert_eq!(outcome["instance"], name, "{outcome:#}");
    assert!(outcome["conflicts"].as_array().is_some_and(|a| a.is_empty()), "{outcome:#}");
    let old_pids = json_pids(&outcome["old_processes"]);
    assert!(pid_set(&st0).iter().all(|p| old_pids.contains(p)), "{outcome:#}");
    assert_eq!(json_pids(&outcome["new_processes"]), old_pids, "{outcome:#}");
    if c.server != "connd" {
        assert_eq!(old_pids, pid_set(&st0), "{outcome:#}");
    }

    // The new version serves, right away.
    assert_eq!(ask(port, "VERSION"), format!("VERSION {} 2", c.server));
    assert_eq!(ask(port, "ECHO hello new world"), "ECHO hello new world");
    assert_eq!(ask(port, "ECHO"), "ERR usage: ECHO text");
    assert_eq!(ask(port, "PING"), "PONG");

    // The connections made during the update: none refused, and once the new version
    // answered the old one never did again.
    let (refused, failed, ok) = (sum(&reports, |r| r.refused), sum(&reports, |r| r.failed), sum(&reports, |r| r.ok));
    eprintln!(
        "{}: probe during update: {ok} ok, {refused} refused, {failed} other failures {:?}; phases {}",
        c.label,
        all_errors(&reports),
        outcome["phases"]
    );
    assert_eq!(refused, 0, "the listening socket was closed during the update:\n{}", all_errors(&reports));
    assert_eq!(failed, 0, "requests failed across the update:\n{}", all_errors(&reports));
    let replies = &reports[0].replies;
    let v1_line = format!("VERSION {} 1", c.server);
    let v2_line = format!("VERSION {} 2", c.server);
    assert!(
        *replies == [v1_line.clone(), v2_line.clone()] || *replies == [v2_line.clone()],
        "versions seen by one client in order: {replies:?}"
    );
    assert_eq!(listening_socket_inode(port), Some(listener), "the listening socket is not the same object any more");

    // Same processes in the namespace, the new program, running (not quiesced).
    // (connd's probe sessions end on their own: wait for the master alone.)
    let mut st1 = inst.status();
    wait_until(Duration::from_secs(5), || {
        st1 = inst.status();
        processes(&st1).len() == c.procs
    });
    assert_eq!(pid_set(&st1), pid_set(&st0), "PIDs in the namespace changed: before {st0:#}\nafter {st1:#}");
    // Threads made by pthread_create during startup (poold's workers) keep their TIDs.
    assert_eq!(tid_set(&st1), tid_set(&st0), "thread IDs changed: before {st0:#}\nafter {st1:#}");
    assert_eq!(st1["program"].as_str(), Some(v2.to_str().unwrap()), "{st1:#}");
    assert_eq!(st1["quiesced"], Value::Bool(false), "{st1:#}");
    for p in processes(&st1) {
        assert_eq!(p["command_line"][0].as_str(), Some(v2.to_str().unwrap()), "{st1:#}");
    }
    let text = mcr.run(&["status", name]).ok();
    assert!(text.stdout.contains(v2.to_str().unwrap()), "{text}");

    // The old version is gone, entirely.
    assert!(
        wait_until(Duration::from_secs(5), || !alive(old_supervisor)),
        "the old supervisor (host pid {old_supervisor}) is still running"
    );
    assert_ne!(inst.supervisor_pid(), old_supervisor);
    assert_eq!(host_pids_running(&v1, port), Vec::<i32>::new(), "processes of the old version remain");
    assert_eq!(host_pids_running(&v2, port).len(), c.procs, "host processes of the new version");
    assert_only_instance_files(&mcr, name);

    // The new version's symbol tables were prepared for it, its program's among them
    // (what its runtime reads instead of parsing ELF symbol tables on the restart's clock).
    let tables = mcr_callstack::SymbolCache::new(mcr.runtime_dir.join(mcr_protocol::instance::SYMBOL_TABLES));
    let prepared =
        tables.get(&std::fs::canonicalize(&v2).unwrap()).expect("no symbol table prepared for the new program");
    assert_eq!(prepared.len(), mcr_callstack::ModuleSymbols::load(&v2).unwrap().len());
    assert!(prepared.address_of("main").is_some());
}

#[test]
fn kvd_code_only_update_commits() {
    code_only_update_commits(Case { label: "u-kvd", server: "kvd", v1: "kvd", v2: "kvd-v2", extra: &[], procs: 1 });
}

#[test]
fn poold_code_only_update_commits() {
    code_only_update_commits(Case {
        label: "u-poold",
        server: "poold",
        v1: "poold",
        v2: "poold-v2",
        extra: &[],
        procs: 1,
    });
}

#[test]
fn forkd_code_only_update_commits() {
    code_only_update_commits(Case {
        label: "u-forkd",
        server: "forkd",
        v1: "forkd",
        v2: "forkd-v2",
        extra: &["--workers", "2"],
        procs: 3,
    });
}

/// forkd `--read-devnull` reads /dev/null before it forks its workers, as httpd's master
/// does: a read that returns at once ends no startup, so the workers are startup's, the
/// new version's startup forks them again, and the update commits (refused before: "forked
/// after startup").
#[test]
fn a_master_that_reads_dev_null_before_forking_its_workers_updates() {
    code_only_update_commits(Case {
        label: "u-forkd-null",
        server: "forkd",
        v1: "forkd",
        v2: "forkd-v2",
        extra: &["--workers", "2", "--read-devnull"],
        procs: 3,
    });
}

#[test]
fn connd_code_only_update_commits() {
    code_only_update_commits(Case {
        label: "u-connd",
        server: "connd",
        v1: "connd",
        v2: "connd-v2",
        extra: &[],
        procs: 1,
    });
}

/// A connd session open when the update starts is a process the new version's startup
/// does not recreate, and this new version has no respawn handler to recreate it: the
/// update rolls back, and the session carries on with its state as if nothing happened.
/// (With the handler the session moves: tests/transfer.rs.)
#[test]
fn connd_update_with_an_open_session_rolls_back_without_a_respawn_handler() {
    let mcr = Mcr::new("u-connd-session");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, v2) = (fixture("connd"), fixture("connd-v2-norespawn"));
    let inst = mcr.start("connd", &v1, &args);
    let mut session = Client::connect(port);
    assert_eq!(session.request("SET who me"), "OK");
    let mut st0 = inst.status();
    wait_until(Duration::from_secs(5), || {
        st0 = inst.status();
        processes(&st0).len() == 2
    });
    assert_eq!(processes(&st0).len(), 2, "master + 1 session: {st0:#}");

    // The session outlives the drain: mcr warns that its connection is still open.
    let out = update(&mcr, "connd", &["--drain-timeout", "200"], &v2, &args);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("1 client connection(s) still open after the 200 ms drain"), "{out}");
    assert!(out.stderr.contains("rolled back") && out.stderr.contains("processes"), "{out}");
    assert_eq!(session.request("GET who"), "VALUE me");
    assert_eq!(session.request("VERSION"), "VERSION connd 1");
    assert_eq!(stable_status(&inst.status()), stable_status(&st0));
    assert_eq!(host_pids_running(&v2, port), Vec::<i32>::new(), "processes of the new version remain");
    assert_only_instance_files(&mcr, "connd");

    // Once the session ends, the same update commits.
    assert_eq!(session.request("QUIT"), "BYE");
    drop(session);
    assert!(wait_until(Duration::from_secs(5), || processes(&inst.status()).len() == 1));
    let out = update(&mcr, "connd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(ask(port, "VERSION"), "VERSION connd 2");
}

// ---------------------------------------------------------------------------------------
// 2. Startup changes that must commit.

/// What an instance looks like from the outside, to compare before and after.
struct Snapshot {
    status: Value,
    version: String,
    supervisor: i32,
    host_pids: Vec<i32>,
    listener: Option<u64>,
}

/// Taken once the instance has `procs` processes (connd's sessions, ours included, end
/// on their own).
fn snapshot(inst: &Instance, program: &Path, port: u16, procs: usize) -> Snapshot {
    let version = ask(port, "VERSION");
    let mut status = inst.status();
    wait_until(Duration::from_secs(5), || {
        status = inst.status();
        processes(&status).len() == procs && host_pids_running(program, port).len() == procs
    });
    Snapshot {
        status,
        version,
        supervisor: inst.supervisor_pid(),
        host_pids: host_pids_running(program, port),
        listener: listening_socket_inode(port),
    }
}

/// Updates `inst` (running `v1`, idle, `procs` processes) to `v2 new_args` under a probe
/// and checks everything a committed update promises; returns (before, after, outcome).
fn commits(
    inst: &Instance,
    port: u16,
    v1: &Path,
    v2: &Path,
    new_args: &[String],
    procs: usize,
) -> (Snapshot, Value, Value) {
    let mcr = inst.mcr;
    let before = snapshot(inst, v1, port, procs);
    assert_eq!(processes(&before.status).len(), procs, "{:#}", before.status);
    assert_eq!(before.host_pids.len(), procs);
    let ((out, outcome), reports) =
        under_probe(port, Proto::Line, 1, Duration::ZERO, || update_json(mcr, &inst.name, &[], v2, new_args));
    assert_eq!(out.code(), 0, "update to {} did not commit: {out}\nlog:\n{}", v2.display(), inst.log());
    assert_eq!(outcome["committed"], Value::Bool(true), "{outcome:#}");
    eprintln!(
        "{}: probe during update: {} ok, {} refused, {} other failures; phases {}",
        v2.display(),
        sum(&reports, |r| r.ok),
        sum(&reports, |r| r.refused),
        sum(&reports, |r| r.failed),
        outcome["phases"]
    );
    assert_eq!(sum(&reports, |r| r.refused), 0, "the listening socket was closed:\n{}", all_errors(&reports));
    assert_eq!(sum(&reports, |r| r.failed), 0, "requests failed across the update:\n{}", all_errors(&reports));
    assert_eq!(listening_socket_inode(port), before.listener, "the listening socket is not the same object any more");
    let after = inst.status();
    assert_eq!(pid_set(&after), pid_set(&before.status), "PIDs changed: before {:#}\nafter {after:#}", before.status);
    assert_eq!(after["program"].as_str(), Some(v2.to_str().unwrap()), "{after:#}");
    assert_eq!(after["quiesced"], Value::Bool(false), "{after:#}");
    assert!(wait_until(Duration::from_secs(5), || !alive(before.supervisor)), "the old supervisor still runs");
    assert_eq!(host_pids_running(v1, port), Vec::<i32>::new(), "processes of the old version remain");
    assert_eq!(host_pids_running(v2, port).len(), procs);
    assert_only_instance_files(mcr, &inst.name);
    (before, after, outcome)
}

#[test]
fn kvd_update_that_opens_a_log_file_commits_and_logs() {
    let mcr = Mcr::new("u-kvd-logfile");
    let port = free_port();
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-logfile"));
    let inst = mcr.start("kvd", &v1, &port_args(port, &[]));
    let logfile = mcr.tmp.join("kvd-set.log");
    let new_args = port_args(port, &["--log", logfile.to_str().unwrap()]);
    commits(&inst, port, &v1, &v2, &new_args, 1);
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 2");
    assert_eq!(ask(port, "ECHO x"), "ERR unknown command");
    assert_eq!(std::fs::read_to_string(&logfile).expect("the new version did not create its log file"), "");
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b two words"), "OK");
    assert_eq!(c.request("GET b"), "VALUE two words");
    assert_eq!(std::fs::read_to_string(&logfile).unwrap(), "SET a 1\nSET b two words\n");
}

#[test]
fn kvd_update_that_reorders_startup_commits() {
    let mcr = Mcr::new("u-kvd-reorder");
    let port = free_port();
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-reorder"));
    let args = port_args(port, &[]);
    let inst = mcr.start("kvd", &v1, &args);
    commits(&inst, port, &v1, &v2, &args, 1);
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 2");
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET k v"), "OK");
    assert_eq!(c.request("GET k"), "VALUE v");
    assert_eq!(c.request("COUNT"), "COUNT 1");
}

#[test]
fn poold_update_that_adds_a_thread_commits() {
    let mcr = Mcr::new("u-poold-thread");
    let port = free_port();
    let (v1, v2) = (fixture("poold"), fixture("poold-v2-thread"));
    let args = port_args(port, &["--threads", "3"]);
    let inst = mcr.start("poold", &v1, &args);
    let (before, after, _) = commits(&inst, port, &v1, &v2, &args, 1);
    assert_eq!(thread_count(&before.status), 4, "acceptor + 3 workers: {:#}", before.status);
    assert_eq!(thread_count(&after), thread_count(&before.status) + 1, "one more thread: {after:#}");
    assert_eq!(ask(port, "VERSION"), "VERSION poold 2");
    assert_eq!(ask(port, "STATS").split(' ').next_back(), Some("workers=3"));
    // The new thread runs (it was resumed at commit): UPTIME advances.
    let uptime = || -> u64 {
        let r = ask(port, "UPTIME");
        r.strip_prefix("UPTIME ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("UPTIME reply {r:?}"))
    };
    let first = uptime();
    assert!(wait_until(Duration::from_secs(3), || uptime() > first), "UPTIME stays at {first}");
}

// ---------------------------------------------------------------------------------------
// 3./4. Changes that must roll back, leaving nothing behind.

/// Updates `inst` (running `v1`) to `new ARGS` under a probe and checks it rolls back:
/// exit 1, a one-screen report containing every string of `expect`, the old version
/// serving exactly as before, nothing of the new version left. Returns the output.
#[allow(clippy::too_many_arguments)]
fn rolls_back(
    inst: &Instance,
    port: u16,
    v1: &Path,
    procs: usize,
    new: &Path,
    args: &[String],
    flags: &[&str],
    expect: &[&str],
) -> Out {
    let mcr = inst.mcr;
    let before = snapshot(inst, v1, port, procs);
    let (out, reports) =
        under_probe(port, Proto::Line, 1, Duration::ZERO, || update(mcr, &inst.name, flags, new, args));
    assert_eq!(out.code(), 1, "update to {} did not roll back: {out}", new.display());
    let lines = out.stderr_lines();
    assert!(lines.len() <= SCREEN_LINES, "the report is longer than a screen: {out}");
    assert!(
        out.stderr
            .starts_with(&format!("mcr: update of '{}' rolled back; the old version is running as before.", inst.name)),
        "{out}"
    );
    for e in expect {
        assert!(out.stderr.contains(e), "the report does not mention {e:?}: {out}");
    }
    eprintln!(
        "{}: rollback report:\n{}probe: {} ok, {} refused, {} other failures",
        new.display(),
        out.stderr,
        sum(&reports, |r| r.ok),
        sum(&reports, |r| r.refused),
        sum(&reports, |r| r.failed)
    );
    // The old version kept serving throughout, and nobody else answered.
    assert_eq!(sum(&reports, |r| r.refused), 0, "the listening socket was closed:\n{}", all_errors(&reports));
    assert_eq!(sum(&reports, |r| r.failed), 0, "requests failed during the rollback:\n{}", all_errors(&reports));
    for r in &reports {
        assert_eq!(r.replies, vec![before.version.clone()], "another version answered during the update");
    }
    assert_old_version_unchanged(inst, port, v1, procs, &before);
    assert_nothing_of(mcr, &inst.name, new, port);
    out
}

fn assert_old_version_unchanged(inst: &Instance, port: u16, v1: &Path, procs: usize, before: &Snapshot) {
    let now = snapshot(inst, v1, port, procs);
    assert_eq!(now.version, before.version);
    assert_eq!(now.supervisor, before.supervisor, "the supervisor changed");
    assert_eq!(now.host_pids, before.host_pids, "the old version's host processes changed");
    assert_eq!(now.listener, before.listener, "the listening socket changed");
    assert_eq!(
        stable_status(&now.status),
        stable_status(&before.status),
        "mcr status changed: before {:#}\nafter {:#}",
        before.status,
        now.status
    );
    assert_eq!(ask(port, "PING"), "PONG");
}

/// No file of the update (`NAME.next.*`, the replay log) and no process of `new` remain.
fn assert_nothing_of(mcr: &Mcr, name: &str, new: &Path, port: u16) {
    assert_only_instance_files(mcr, name);
    assert_eq!(
        host_pids_running(new, port),
        Vec::<i32>::new(),
        "processes of the new version {} remain",
        new.display()
    );
}

#[test]
fn kvd_incompatible_updates_roll_back_and_leave_nothing() {
    let mcr = Mcr::new("u-kvd-rollback");
    let port = free_port();
    let v1 = fixture("kvd");
    let args = port_args(port, &[]);
    let inst = mcr.start("kvd", &v1, &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET kept yes"), "OK");
    drop(c);

    // Listening elsewhere: the bind conflicts.
    let other = fixture("kvd-v2-listen-other");
    rolls_back(
        &inst,
        port,
        &v1,
        1,
        &other,
        &args,
        &[],
        &["bind", "conflict", "new version: bind(", "old version: bind("],
    );
    // The same with --json: the conflict is data.
    let (out, v) = update_json(&mcr, "kvd", &[], &other, &args);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(v["committed"], Value::Bool(false), "{v:#}");
    let conflicts = v["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{v:#}");
    assert_eq!(conflicts[0]["new_op"]["call"], "bind", "{v:#}");
    assert_eq!(conflicts[0]["old_op"]["call"], "bind", "{v:#}");
    assert_nothing_of(&mcr, "kvd", &other, port);

    // Crashing during startup.
    rolls_back(&inst, port, &v1, 1, &fixture("kvd-v2-crash"), &args, &[], &["exited", "signal 6", "SIGABRT"]);
    assert!(inst.log().contains("(KVD_V2_CRASH)"), "the new version did not get to its crash: {}", inst.log());

    // Hanging during startup: the timeout ends it.
    let t0 = Instant::now();
    rolls_back(
        &inst,
        port,
        &v1,
        1,
        &fixture("kvd-v2-hang"),
        &args,
        &["--timeout", "1500"],
        &["did not complete its startup", "1500 ms"],
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "the hang rollback took {took:?}");
    assert!(inst.log().contains("(KVD_V2_HANG)"), "the new version did not get to its hang: {}", inst.log());

    // A new binary that does not exist: an error before anything changes.
    let before = snapshot(&inst, &v1, port, 1);
    let missing = mcr.tmp.join("no-such-kvd");
    let out = update(&mcr, "kvd", &[], &missing, &args);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("no-such-kvd") && out.stderr.contains("not found"), "{out}");
    assert!(!out.stderr.contains("rolled back"), "nothing should have started: {out}");
    assert_old_version_unchanged(&inst, port, &v1, 1, &before);
    assert_only_instance_files(&mcr, "kvd");

    // An instance that does not exist.
    let out = update(&mcr, "nope", &[], &fixture("kvd-v2"), &args);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("no running instance named 'nope'"), "{out}");
    assert_old_version_unchanged(&inst, port, &v1, 1, &before);
    assert_only_instance_files(&mcr, "kvd");

    // The old version is the very same process: its data is all there.
    assert_eq!(ask(port, "GET kept"), "VALUE yes");
    assert_eq!(ask(port, "COUNT"), "COUNT 1");

    // After all that, the instance still updates.
    let v2 = fixture("kvd-v2");
    commits(&inst, port, &v1, &v2, &args, 1);
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 2");
}

/// Clients that leave while the update asks the kernel about their connections (the
/// runtime borrows a copy of each, one after the other; here it holds each copy 300 ms,
/// and the clients leave in that order, each in the middle of its own borrow). A copy kept the socket, and with it the old version's epoll
/// registration, alive past kvd's close: kvd then got an event for the connection it had
/// freed, read a closed descriptor and freed it again (seen under load as
/// `read(3): Bad file descriptor`, then a transferred connection that was garbage).
#[test]
fn clients_leaving_during_the_drain_are_gone_for_good() {
    let mcr = Mcr::new("u-kvd-leave-drain");
    let port = free_port();
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let args = port_args(port, &[]);
    let mut argv: Vec<OsString> = vec!["run".into(), "--detach".into(), "--name".into(), "kvd".into(), "--".into()];
    argv.push(v1.clone().into());
    argv.extend(args.iter().map(OsString::from));
    let mut cmd = mcr.command(&argv);
    cmd.env("MCR_TEST_BORROW_HOLD_MS", "300");
    let out = Spawned::spawn(cmd, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr run");
    let inst = mcr.guard("kvd");
    assert!(out.success(), "{out}\nlog:\n{}", inst.log());
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.request(&format!("SET k{i} v{i}")), "OK");
    }
    let mut update = mcr.spawn(&["update", "kvd", "--", v2.to_str().unwrap(), "--port", &port.to_string()]);
    // The preflight borrows the connections in descriptor order, the first from about
    // the start of the update: the first client leaves 150 ms in, the next 300 ms later.
    let t0 = Instant::now();
    for (i, c) in clients.drain(..).enumerate() {
        let at = Duration::from_millis(150 + 300 * i as u64);
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        drop(c);
    }
    let out = update.wait(COMMAND_TIMEOUT, "mcr update");
    eprintln!("update took {:?}: {out}", t0.elapsed());
    let log = inst.log();
    assert!(
        !log.contains("destroyed connection") && !log.contains("Bad file descriptor") && !log.contains("Bad address"),
        "a closed connection came back:\n{log}"
    );
    assert_eq!(out.code(), 0, "{out}\nlog:\n{log}");
    for i in 0..4 {
        assert_eq!(ask(port, &format!("GET k{i}")), format!("VALUE v{i}"));
    }
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 2");
}

#[test]
fn connd_update_that_drops_a_listener_rolls_back() {
    let mcr = Mcr::new("u-connd-drop");
    let (port, port2) = (free_port(), free_port());
    let v1 = fixture("connd");
    let args = port_args(port, &["--port2", &port2.to_string()]);
    let inst = mcr.start("connd", &v1, &args);
    let second = listening_socket_inode(port2).expect("no second listener");
    let new = fixture("connd-v2-droplistener");
    rolls_back(&inst, port, &v1, 1, &new, &args, &[], &["dropped", "old version: socket(", "open_listener"]);
    // The second listener is the same socket, and serves.
    assert_eq!(listening_socket_inode(port2), Some(second));
    assert_eq!(ask(port2, "VERSION"), "VERSION connd 1");
}

#[test]
fn forkd_update_with_more_workers_rolls_back() {
    let mcr = Mcr::new("u-forkd-workers");
    let port = free_port();
    let v1 = fixture("forkd");
    let args = port_args(port, &["--workers", "2"]);
    let inst = mcr.start("forkd", &v1, &args);
    let new = fixture("forkd-v2-workers");
    rolls_back(&inst, port, &v1, 3, &new, &args, &[], &["processes", "do not match"]);
    assert!(!inst.log().contains("killed by signal"), "an old worker died: {}", inst.log());
}

/// A rolled-back version never serves a request, even when it got as far as parking
/// its workers in accept() on the shared listening socket (forkd-v2-workers is rejected
/// only after its startup completed). Four clients keep connecting through ten such
/// rollbacks: every answer comes from the old version and none is lost. (Rollback used
/// to kill only the new supervisor; the new processes' runtimes saw their control
/// connection close first, resumed their parked threads, and served or dropped requests
/// until the kernel's SIGKILL arrived.)
#[test]
fn rolled_back_new_version_never_serves_a_request() {
    let mcr = Mcr::new("u-forkd-serves");
    let port = free_port();
    let v1 = fixture("forkd");
    let args = port_args(port, &["--workers", "2"]);
    let _inst = mcr.start("forkd", &v1, &args);
    let new = fixture("forkd-v2-workers");
    let mut seen = Vec::new();
    for i in 0..10 {
        let (out, reports) =
            under_probe(port, Proto::Line, 4, Duration::ZERO, || update(&mcr, "forkd", &[], &new, &args));
        assert_eq!(out.code(), 1, "{out}");
        for r in &reports {
            if r.refused > 0 || r.failed > 0 || r.replies.iter().any(|v| v != "VERSION forkd 1") {
                seen.push(format!(
                    "rollback {i}: replies {:?}, {} refused, {} failed: {:?}",
                    r.replies, r.refused, r.failed, r.errors
                ));
            }
        }
        assert_nothing_of(&mcr, "forkd", &new, port);
    }
    assert!(seen.is_empty(), "the rolled-back version served or dropped requests:\n{}", seen.join("\n"));
}

/// A client waiting in the listening socket's backlog while every old worker is busy is
/// the old version's: a new version's worker must not take it during its startup, even
/// where no old thread waited in accept() at the quiesce (the old log then names no wait
/// point in accept, and a ready accept used to be let through). Here both old workers are
/// held in read() by idle clients, a third client waits, and forkd-v2-workers is rolled
/// back after its startup: the waiting client must get its answer from the old version
/// once a worker is free, not a reset connection.
#[test]
fn a_client_waiting_in_the_backlog_is_not_taken_by_a_rolled_back_version() {
    let mcr = Mcr::new("u-forkd-backlog");
    let port = free_port();
    let args = port_args(port, &["--workers", "2"]);
    let _inst = mcr.start("forkd", &fixture("forkd"), &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Each old worker accepts one of these and blocks reading from it.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = TcpStream::connect(addr).expect("connect");
    waiting.write_all(b"VERSION\n").expect("send");
    let out = update(&mcr, "forkd", &[], &fixture("forkd-v2-workers"), &args);
    assert_eq!(out.code(), 1, "forkd-v2-workers must roll back: {out}");
    drop(idle);
    waiting.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let got = BufReader::new(&waiting).read_line(&mut reply);
    assert!(
        got.is_ok() && reply.trim() == "VERSION forkd 1",
        "the waiting client: {got:?} {reply:?} (taken and dropped by the rolled-back version?)"
    );
}

/// A server started under load serves its first clients within the first wait of its
/// event loop. That wait, watching a listener with a client waiting, is where its startup
/// ends: the clients' writes are then the running server's, not startup values a new
/// version's startup computes again. Counted as startup (the wait returned at once and
/// was let through), kvd's stats said 1 connection and 1 command "set by the startup",
/// the new version's startup set 0, and every later update rolled back on them.
#[test]
fn clients_waiting_when_the_event_loop_starts_are_served_after_startup() {
    let mcr = Mcr::new("u-kvd-busy-start");
    let port = free_port();
    let args = port_args(port, &["--busy-startup", "1500"]);
    let kvd = fixture("kvd");
    let mut cmd: Vec<&str> = vec!["run", "--detach", "--name", "kvd", "--", kvd.to_str().unwrap()];
    cmd.extend(args.iter().map(String::as_str));
    let mut run = mcr.spawn(&cmd);
    wait_for(Duration::from_secs(10), "kvd's listener", || port_open(port));
    let mut early = Client::connect(port);
    assert_eq!(early.request("SET early 1"), "OK");
    run.wait(Duration::from_secs(20), "mcr run --detach").ok();
    let _inst = mcr.guard("kvd");
    let (out, report) = update_json(&mcr, "kvd", &[], &fixture("kvd"), &args);
    assert!(out.success(), "the update rolled back: {out}\n{report}");
    assert_eq!(early.request("GET early"), "VALUE 1", "the early client's key after the update");
}

/// A server that closes every descriptor above stderr first thing (sshd, many daemons):
/// in an update's new version that includes the inherited listener, which the replay of
/// its `socket()` hands back a moment later. Closed, the new version made an unbound
/// socket of its own (its `bind` and `listen` replayed), and once the old version retired
/// nobody listened: every update from a version that inherited its listener lost it.
#[test]
fn a_server_that_closes_every_descriptor_at_startup_keeps_its_listener_across_updates() {
    let mcr = Mcr::new("u-kvd-closefrom");
    let port = free_port();
    let args = port_args(port, &["--closefrom"]);
    let _inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut kept = Client::connect(port);
    assert_eq!(kept.request("SET k 1"), "OK");
    let listener = listening_socket_inode(port).expect("kvd's listening socket");
    for round in 1..=3 {
        update(&mcr, "kvd", &[], &fixture("kvd"), &args).ok();
        assert_eq!(listening_socket_inode(port), Some(listener), "update {round}: the listening socket was replaced");
        let mut fresh = Client::try_connect(port, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("update {round}: a new client cannot connect: {e}"));
        assert_eq!(fresh.request("GET k"), "VALUE 1", "update {round}");
        assert_eq!(kept.request("GET k"), "VALUE 1", "update {round}: the connection open across it");
    }
}

/// A replay conflict must always be reported as such. The new version's runtime sends
/// the conflict to its supervisor and then _exits with status 86; now and then the
/// update still reports only "the new version exited with exit status 86 during its
/// startup", with no conflict lines, when the process spoke and died before the
/// supervisor accepted its connection (fixed: the supervisor drains the listener's
/// backlog before reporting an exit).
#[test]
fn rollback_report_always_names_the_conflict() {
    let mcr = Mcr::new("u-conflict-race");
    let port = free_port();
    let args = port_args(port, &[]);
    let _inst = mcr.start("kvd", &fixture("kvd"), &args);
    let other = fixture("kvd-v2-listen-other");
    let mut lost = 0;
    for _ in 0..150 {
        let out = update(&mcr, "kvd", &[], &other, &args);
        assert_eq!(out.code(), 1, "{out}");
        if !out.stderr.contains("new version: bind(") {
            lost += 1;
            eprintln!("{}", out.stderr);
        }
    }
    assert_eq!(lost, 0, "{lost} of 150 rollbacks did not name the bind conflict");
}

// ---------------------------------------------------------------------------------------
// 5. nginx.

/// nginx updates with its state: its pools, reached through `void *`, stay where they
/// are in the adopted heap (conservative tracing), the handlers and module pointers in
/// them relocated to the new binary.
const NGINX_UPDATE: &[&str] = &[];

/// Updates nginx from `from` to `to` while two clients make one request per connection
/// for about 2 s. Checks the commit, the PIDs, that nothing was refused and that the load
/// had successes; returns the outcome and the load numbers.
fn nginx_update_under_load(label: &str, from: &Path, to: &Path) {
    let mcr = Mcr::new(label);
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
    let inst = mcr.start("nginx", from, &args);
    assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));
    let st0 = inst.status();
    assert_eq!(processes(&st0).len(), 3, "master + 2 workers: {st0:#}");
    let old_supervisor = inst.supervisor_pid();
    let old_hosts = host_pids_in_namespace_of(old_supervisor);
    assert_eq!(old_hosts.len(), 3, "host processes of the nginx instance: {old_hosts:?}");
    let listener = listening_socket_inode(port).expect("nginx does not listen");

    let (out, outcome, reports) = {
        let t0 = Instant::now();
        let probe = Probe::start(port, Proto::Http, 2, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(500));
        let before = probe.finished();
        let (out, outcome) = update_json(&mcr, "nginx", NGINX_UPDATE, to, &args);
        let during = probe.attempts() - before;
        std::thread::sleep(Duration::from_millis(300).max(Duration::from_secs(2).saturating_sub(t0.elapsed())));
        let reports = probe.finish();
        let (ok, refused, failed) =
            (sum(&reports, |r| r.ok), sum(&reports, |r| r.refused), sum(&reports, |r| r.failed));
        eprintln!(
            "{label}: {} -> {}: committed {}, phases {}; load over {:?}: {ok} ok, {refused} refused, {failed} other \
             failures ({during} under way during the update); errors: {:?}",
            from.display(),
            to.display(),
            outcome["committed"],
            outcome["phases"],
            t0.elapsed(),
            all_errors(&reports)
        );
        assert!(during >= 1, "no request was under way during the update");
        assert_eq!(refused, 0, "connections were refused during the update:\n{}", all_errors(&reports));
        assert_eq!(failed, 0, "requests failed across the update:\n{}", all_errors(&reports));
        (out, outcome, reports)
    };
    let ok = sum(&reports, |r| r.ok);
    assert_eq!(out.code(), 0, "nginx update did not commit: {out}\nlog:\n{}", inst.log());
    assert_eq!(outcome["committed"], Value::Bool(true), "{outcome:#}");
    assert!(ok > 0, "no request of the load succeeded");

    assert_eq!(
        http_get(port, "/status", Duration::from_secs(5)).expect("GET /status after"),
        (200, "ok\n".to_string())
    );
    assert_eq!(listening_socket_inode(port), Some(listener), "the listening socket is not the same object any more");
    let st1 = inst.status();
    assert_eq!(pid_set(&st1), pid_set(&st0), "master/worker PIDs changed: before {st0:#}\nafter {st1:#}");
    assert_eq!(st1["program"].as_str(), Some(to.to_str().unwrap()), "{st1:#}");
    assert_eq!(st1["quiesced"], Value::Bool(false), "{st1:#}");
    assert!(wait_until(Duration::from_secs(5), || !alive(old_supervisor)), "the old supervisor still runs");
    for p in &old_hosts {
        assert!(!alive(*p), "process {p} of the old nginx still runs");
    }
    let new_hosts = host_pids_in_namespace_of(inst.supervisor_pid());
    assert_eq!(new_hosts.len(), 3, "host processes of the new nginx: {new_hosts:?}");
    for p in &new_hosts {
        let exe = mcr_procfs::exe(*p).unwrap_or_default();
        assert_eq!(exe, to.canonicalize().unwrap(), "process {p} runs {}", exe.display());
    }
    assert_only_instance_files(&mcr, "nginx");
}

#[test]
fn nginx_updates_to_itself_under_load() {
    let nginx = nginx_bin("nginx_updates_to_itself_under_load");
    nginx_update_under_load("u-nginx-self", &nginx, &nginx);
}

#[test]
fn nginx_updates_from_one_debian_patch_to_the_next_under_load() {
    let test = "nginx_updates_from_one_debian_patch_to_the_next_under_load";
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    nginx_update_under_load("u-nginx-p1p2", &p1, &p2);
}

/// nginx with idle keep-alive connections and `wrk` keep-alive load, updated to the next
/// Debian patch with its state: the connections move with the workers' heap (pool
/// memory reached through `void *`, kept where it is; the handlers in it relocated to the
/// new binary's functions), no connection is reset and no request fails.
#[test]
fn nginx_keepalive_connections_move_with_the_state_to_the_next_patch() {
    nginx_keepalive_update("nginx_keepalive_connections_move_with_the_state_to_the_next_patch", &[]);
}

/// The same with --fresh-state: nginx's state is rebuilt by the new version's startup,
/// but its keep-alive connections hold none between requests: the old build's idle check
/// (scripts/nginx/mcr-module) vouches for them, mcr moves them into the worker with the
/// same PID, and the new build's resume handler adopts them as if just accepted.
#[test]
fn nginx_keepalive_connections_survive_a_fresh_state_update_to_the_next_patch() {
    nginx_keepalive_update(
        "nginx_keepalive_connections_survive_a_fresh_state_update_to_the_next_patch",
        &["--fresh-state"],
    );
}

fn nginx_keepalive_update(test: &str, flags: &[&str]) {
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    let mcr = Mcr::new("u-nginx-keepalive");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
    let inst = mcr.start("nginx", &p1, &args);
    let mut idle: Vec<KeepAlive> = (0..6).map(|_| KeepAlive::connect(port)).collect();
    for c in &mut idle {
        assert_eq!(c.get("/status").expect("GET /status before").0, 200);
    }
    let locals: Vec<SocketAddr> = idle.iter().map(|c| c.stream.local_addr().unwrap()).collect();

    // wrk: 8 keep-alive connections for 4 s (bounded), the update in the middle.
    let wrk = Wrk::start(port, 8, Duration::from_secs(4), &[]);
    // The update lands once wrk's 8 connections are accepted, as well as the idle ones.
    wait_for(Duration::from_secs(10), "nginx to accept wrk's 8 connections and the 6 idle ones", || {
        open_server_ends(port).iter().filter(|s| s.inode != 0).count() >= 6 + 8
    });
    let (out, outcome) = update_json(&mcr, "nginx", flags, &p2, &args);
    let wrk = wrk.wait(Duration::from_secs(30));
    let report = &wrk.text;
    eprintln!(
        "wrk across the update:\n{report}\noutcome: adopted {} left {}",
        outcome["adopted_connections"], outcome["connections_left"]
    );
    assert_eq!(out.code(), 0, "nginx update did not commit: {out}\nlog:\n{}", inst.log());
    let moved = if flags.is_empty() { &outcome["transfer"]["connections"] } else { &outcome["adopted_connections"] };
    assert!(moved.as_u64().is_some_and(|n| n >= 6), "the idle connections (and wrk's) moved: {outcome:#}");
    wrk.assert_no_failures("across the update");
    let requests = wrk.requests();
    assert!(requests > 100, "wrk made {requests} requests:\n{report}");
    // The idle connections are the same sockets, now served by the new version.
    for (c, local) in idle.iter_mut().zip(&locals) {
        assert_eq!(c.stream.local_addr().unwrap(), *local);
        assert_eq!(c.get("/status").expect("GET /status on a connection opened before the update").0, 200);
        assert_eq!(c.get("/").expect("GET / after").0, 200);
    }
    let st = inst.status();
    assert_eq!(st["program"].as_str(), Some(p2.to_str().unwrap()), "{st:#}");
}

/// An updated nginx updates again, and again. The -p1 build (no nginx-fix-pidfile.patch)
/// used to fail every update after the first: the updated master's startup log listed
/// fds 1006/1007 for open(nginx.conf)/open(error.log), numbers later reused by the worker
/// channel's socketpair, and replay handed a socketpair end to the next version's
/// open(nginx.conf) ("no \"events\" section in configuration").
#[test]
fn nginx_updates_twice_in_a_row() {
    let test = "nginx_updates_twice_in_a_row";
    let nginx = nginx_bin(test);
    let p1 = cached_nginx_build(&nginx, 1, test);
    let mcr = Mcr::new("u-nginx-twice");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
    let inst = mcr.start("nginx", &p1, &args);
    for i in 1..=3 {
        let out = update(&mcr, "nginx", NGINX_UPDATE, &p1, &args);
        assert_eq!(out.code(), 0, "update {i} did not commit: {out}\nlog:\n{}", inst.log());
        assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));
    }
}

/// nginx's first worker holds as many descriptors after each update as after the first
/// one, and its channel to the other worker is the master's (live) one. nginx's master passes each worker the channel of the worker it spawned next
/// (NGX_CMD_OPEN_CHANNEL, read after the worker's startup); the update moved the received
/// socket, and the new master's startup passed its own again, which the worker read after
/// the commit: one descriptor more per update, the moved one with a dead peer.
#[test]
fn nginx_first_worker_keeps_its_descriptor_count_across_updates() {
    let nginx = nginx_bin("nginx_first_worker_keeps_its_descriptor_count_across_updates");
    let mcr = Mcr::new("u-nginx-fds");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args = nginx_args(&prefix, &conf);
    let inst = mcr.start("nginx", &nginx, &args);
    // The first process whose title has `what`, by PID inside the namespace (updates keep
    // those PIDs).
    let first = |what: &str| -> i32 {
        let pids = mcr_procfs::namespace::host_pids(inst.supervisor_pid()).expect("the instance's processes");
        let titled = |host: &i32| cmdline(*host).is_some_and(|a| a.join(" ").contains(what));
        let (_, &host) = pids.iter().find(|(_, host)| titled(host)).unwrap_or_else(|| panic!("no nginx {what}"));
        host
    };
    let sockets = |pid: i32| -> Vec<String> {
        let fds = mcr_procfs::fd::list_with_targets(pid).unwrap_or_default();
        fds.into_iter().map(|(_, target)| target).filter(|t| t.starts_with("socket:")).collect()
    };
    let descriptors = |pid: i32| -> Vec<String> {
        let mut fds: Vec<String> = mcr_procfs::fd::list_with_targets(pid)
            .unwrap_or_default()
            .into_iter()
            .map(|(fd, target)| format!("{fd} -> {target}"))
            .collect();
        fds.sort();
        fds
    };
    let mut reference: Option<Vec<String>> = None;
    for i in 1..=4 {
        let out = update(&mcr, "nginx", NGINX_UPDATE, &nginx, &args);
        assert_eq!(out.code(), 0, "update {i} did not commit: {out}\nlog:\n{}", inst.log());
        // A request makes sure the worker read its channel since the commit.
        for _ in 0..4 {
            assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status").0, 200);
        }
        let worker = first("worker process");
        let now = descriptors(worker);
        // The master holds both ends of every channel: a socket of the worker it does not
        // hold is its runtime's connection to mcr, or one whose peer went with an old
        // version.
        let master = sockets(first("master process"));
        let not_the_masters: Vec<String> = sockets(worker).into_iter().filter(|s| !master.contains(s)).collect();
        assert!(
            not_the_masters.len() <= 1,
            "after update {i} the first worker holds sockets the master does not: {not_the_masters:?}"
        );
        // The first version inherited descriptors from whoever ran `mcr run`; the count to
        // keep is the one after the first update.
        match &reference {
            None => reference = Some(now),
            Some(before) => assert_eq!(
                now.len(),
                before.len(),
                "after update {i} the first worker holds {} descriptors, {} after update 1:\nnow {now:#?}\nthen {before:#?}",
                now.len(),
                before.len()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. Twenty updates in a row.

/// Host fds of the supervisor and the server together.
/// Descriptors of the supervisor, its parent (the namespace's init, which holds copies of
/// the runtime connections) and the server.
fn host_fds(supervisor: i32, server: &[i32]) -> usize {
    let init = mcr_procfs::stat::read(supervisor).map_or(0, |s| s.ppid);
    fd_count(supervisor) + fd_count(init) + server.iter().map(|&p| fd_count(p)).sum::<usize>()
}

#[test]
fn twenty_updates_in_a_row_commit_and_leak_nothing() {
    let mcr = Mcr::new("u-twenty");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let inst = mcr.start("kvd", &v1, &args);
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 1");
    let st0 = inst.status();
    let listener = listening_socket_inode(port);
    let fds_start = host_fds(inst.supervisor_pid(), &host_pids_running(&v1, port));
    let mut fds_ref = 0;
    let mut phases: [Vec<f64>; 4] = Default::default();
    for i in 1..=20 {
        let (to, n) = if i % 2 == 1 { (&v2, 2) } else { (&v1, 1) };
        let (out, v) = update_json(&mcr, "kvd", &[], to, &args);
        assert_eq!(out.code(), 0, "update {i} did not commit: {out}\nlog:\n{}", inst.log());
        assert_eq!(v["committed"], Value::Bool(true), "{v:#}");
        for (k, name) in ["quiesce_ms", "restart_ms", "commit_ms", "total_ms"].iter().enumerate() {
            phases[k].push(v["phases"][name].as_f64().unwrap_or_else(|| panic!("no {name}: {v:#}")));
        }
        assert_eq!(ask(port, "VERSION"), format!("VERSION kvd {n}"), "after update {i}");
        let st = inst.status();
        assert_eq!(pid_set(&st), pid_set(&st0), "after update {i}: {st:#}");
        assert_eq!(processes(&st).len(), 1, "after update {i}: {st:#}");
        assert_only_instance_files(&mcr, "kvd");
        // Exactly the namespace's init, the supervisor and the server hold the port on the
        // host: nothing of older versions, not even a zombie.
        let sup = inst.supervisor_pid();
        let init = mcr_procfs::stat::read(sup).map_or(0, |s| s.ppid);
        let server = host_pids_running(to, port);
        assert_eq!(server.len(), 1, "after update {i}: host processes of {}: {server:?}", to.display());
        let mut want = vec![init, sup, server[0]];
        want.sort();
        let mut holders = Vec::new();
        wait_until(Duration::from_secs(2), || {
            holders = host_pids_with_port(port);
            holders == want
        });
        let zombies: Vec<i32> = holders.iter().copied().filter(|&p| is_zombie(p)).collect();
        assert_eq!(holders, want, "after update {i}: processes with --port {port} (zombies {zombies:?})");
        if i == 2 {
            fds_ref = host_fds(sup, &server);
        }
        if i == 20 {
            // A probe connection may be open in kvd at any instant: give it time to close.
            let mut fds_end = host_fds(sup, &server);
            wait_until(Duration::from_secs(2), || {
                fds_end = host_fds(sup, &server);
                fds_end <= fds_ref
            });
            eprintln!("host fds of init + supervisor + kvd: at start {fds_start}, after update 2 {fds_ref}, after update 20 {fds_end}");
            assert!(fds_end <= fds_ref, "descriptors grow: {fds_ref} after update 2, {fds_end} after update 20");
        }
    }
    assert_eq!(listening_socket_inode(port), listener, "the listening socket is not the same object any more");
    let m: Vec<f64> = phases.iter().map(|v| median(v)).collect();
    let max_total = phases[3].iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "kvd <-> kvd-v2, 20 updates: median quiesce {:.2} ms, restart+replay {:.2} ms, commit {:.2} ms, total {:.2} ms \
         (max total {max_total:.2} ms)",
        m[0], m[1], m[2], m[3]
    );
}

/// Thirty nginx self-updates in a row under load all commit: every replayed fork gets
/// its old PID each time, whatever PIDs the previous version ended up with.
#[test]
fn nginx_thirty_updates_in_a_row_under_load_all_commit() {
    let nginx = nginx_bin("nginx_thirty_updates_in_a_row_under_load_all_commit");
    let mcr = Mcr::new("u-nginx-thirty");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
    let inst = mcr.start("nginx", &nginx, &args);
    let started_with = pid_set(&inst.status());
    let probe = Probe::start(port, Proto::Http, 2, Duration::ZERO);
    let mut failures = Vec::new();
    for i in 1..=30 {
        let (out, v) = update_json(&mcr, "nginx", NGINX_UPDATE, &nginx, &args);
        if !out.success() {
            let log = inst.log();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
            failures.push(format!(
                "update {i}: {} (old {:?}, new {:?}); log: {last}",
                v["message"],
                json_pids(&v["old_processes"]),
                json_pids(&v["new_processes"])
            ));
        }
        if processes(&inst.status()).len() != 3 {
            failures.push(format!("after update {i}: {:#}", inst.status()));
            break;
        }
    }
    let reports = probe.finish();
    assert_eq!(sum(&reports, |r| r.refused), 0, "{}", all_errors(&reports));
    assert_eq!(sum(&reports, |r| r.failed), 0, "requests failed across 30 updates:\n{}", all_errors(&reports));
    assert!(
        failures.is_empty(),
        "started with PIDs {started_with:?}; {} of 30 updates failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The first update of a fresh nginx keeps its worker PIDs, every time. Replay used to ask
/// for a fork's old PID through ns_last_pid only, and a thread created meanwhile in the
/// namespace took it (about 1 in 10 of these updates rolled back with "the new version's
/// processes {3, 4, 6} do not match the old version's {3, 4, 5}"). Since 6479b73 the
/// child checks its PID and the fork is retried, but when the PID stays taken (a thread's
/// TID: "replay: the forked child got PID 6, not 5 as in the old version" in the log)
/// the 64 tries run out, the last child has _exited too, and the new version runs one
/// worker short: "the new version's processes {3, 4} do not match the old version's
/// {3, 4, 5}". Seen in 4 of 10 runs of this file (two tests in parallel).
#[test]
fn nginx_first_update_keeps_worker_pids() {
    let nginx = nginx_bin("nginx_first_update_keeps_worker_pids");
    let mut raced = Vec::new();
    for i in 0..30 {
        let mcr = Mcr::new("u-nginx-pids");
        let port = free_port();
        let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
        let args: Vec<String> =
            vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
        let inst = mcr.start("nginx", &nginx, &args);
        let (out, v) = update_json(&mcr, "nginx", NGINX_UPDATE, &nginx, &args);
        if !out.success() {
            raced.push(format!("instance {i}: {}", v["message"]));
        }
        inst.stop();
    }
    assert!(raced.is_empty(), "{} of 30 first updates rolled back:\n{}", raced.len(), raced.join("\n"));
}

/// An nginx update the new version's worker count rejects (a config with
/// `worker_processes 3`, checked only once its startup completed) rolls back under load
/// without the rejected version serving anything: its /status would answer "new".
/// nginx workers replace their environment, so whether the process is in a PID
/// namespace (parked threads stay parked when the supervisor dies) must be known from
/// the constructor on.
#[test]
fn nginx_rolled_back_version_never_serves() {
    let nginx = nginx_bin("nginx_rolled_back_version_never_serves");
    let mcr = Mcr::new("u-nginx-rollback");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf.to_str().unwrap().into()];
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("worker_processes 2;") && text.contains("return 200 \"ok\\n\";"), "{text}");
    let conf3 = conf.with_file_name("mcr-test-3-workers.conf");
    std::fs::write(
        &conf3,
        text.replace("worker_processes 2;", "worker_processes 3;").replace("\"ok\\n\"", "\"new\\n\""),
    )
    .unwrap();
    let new_args: Vec<String> =
        vec!["-p".into(), prefix.to_str().unwrap().into(), "-c".into(), conf3.to_str().unwrap().into()];
    let inst = mcr.start("nginx", &nginx, &args);
    // A worker just forked still shows the master's title for a moment.
    let mut st0 = inst.status();
    wait_until(Duration::from_secs(5), || {
        st0 = inst.status();
        processes(&st0)
            .iter()
            .filter(|p| p["command_line"][0].as_str().is_some_and(|c| c.contains("worker process")))
            .count()
            == 2
    });
    let sup = inst.supervisor_pid();
    let hosts = host_pids_in_namespace_of(sup);
    let mut seen = Vec::new();
    for i in 0..10 {
        let (out, reports) = under_probe(port, Proto::Http, 2, Duration::ZERO, || {
            update(&mcr, "nginx", NGINX_UPDATE, &nginx, &new_args)
        });
        assert_eq!(out.code(), 1, "{out}\nlog:\n{}", inst.log());
        assert!(out.stderr.contains("do not match"), "{out}");
        if sum(&reports, |r| r.refused) + sum(&reports, |r| r.failed) > 0 {
            seen.push(format!("rollback {i}: {}", all_errors(&reports)));
        }
        assert_only_instance_files(&mcr, "nginx");
    }
    assert_eq!(stable_status(&inst.status()), stable_status(&st0));
    assert_eq!(host_pids_in_namespace_of(sup), hosts);
    assert!(
        seen.is_empty(),
        "requests failed or were served by the rolled-back nginx:\n{}\nlog:\n{}",
        seen.join("\n"),
        inst.log()
    );
}

// ---------------------------------------------------------------------------------------
// Draining: in-flight connections finish in the old version before it quiesces.

/// With --fresh-state (connections cannot move), a client mid-conversation when the
/// update starts is still served by the old version during the drain, and its session
/// ends normally; the update then commits.
#[test]
fn fresh_state_update_lets_open_connections_finish_during_the_drain() {
    let mcr = Mcr::new("u-drain-finish");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let _inst = mcr.start("kvd", &v1, &args);
    let mut client = Client::connect(port);
    assert_eq!(client.request("SET k v"), "OK");
    let mut argv: Vec<OsString> = ["update", "kvd", "--fresh-state", "--drain-timeout", "10000", "--json", "--"]
        .iter()
        .map(OsString::from)
        .collect();
    argv.push(v2.clone().into());
    argv.extend(args.iter().map(OsString::from));
    let mut upd = mcr.spawn(&argv);
    // The update is draining: it waits for this connection, which the old version serves.
    std::thread::sleep(Duration::from_millis(300));
    assert!(upd.try_wait().is_none(), "the update did not wait for the open connection");
    assert_eq!(client.request("GET k"), "VALUE v");
    assert_eq!(client.request("VERSION"), "VERSION kvd 1");
    assert_eq!(client.request("QUIT"), "BYE");
    drop(client);
    let out = upd.wait(Duration::from_secs(20), "mcr update");
    assert_eq!(out.code(), 0, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("json outcome");
    assert_eq!(v["connections_left"], Value::Array(vec![]), "{v:#}");
    assert!(v["phases"]["drain_ms"].as_f64().is_some(), "{v:#}");
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 2");
}

/// An `mcr update` killed while draining must not leave the server refusing connections.
#[test]
fn killed_update_never_leaves_the_server_draining() {
    let mcr = Mcr::new("u-drain-killed");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut client = Client::connect(port);
    assert_eq!(client.request("PING"), "PONG");
    let mut argv: Vec<OsString> =
        ["update", "kvd", "--fresh-state", "--drain-timeout", "30000", "--"].iter().map(OsString::from).collect();
    argv.push(v2.clone().into());
    argv.extend(args.iter().map(OsString::from));
    let mut upd = mcr.spawn(&argv);
    std::thread::sleep(Duration::from_millis(300));
    assert!(upd.try_wait().is_none(), "the update did not wait for the open connection");
    // SAFETY: SIGKILL to the mcr process this test spawned.
    unsafe { libc::kill(upd.pid(), libc::SIGKILL) };
    let _ = upd.wait_timeout(Duration::from_secs(5));
    // New connections are accepted again, by the old version.
    assert!(
        wait_until(Duration::from_secs(5), || std::panic::catch_unwind(|| ask(port, "VERSION"))
            .is_ok_and(|v| v == "VERSION kvd 1")),
        "the server no longer accepts after the update was killed\nlog:\n{}",
        inst.log()
    );
    assert_eq!(client.request("PING"), "PONG");
    assert_eq!(inst.status()["quiesced"], Value::Bool(false));
}

/// An `mcr update` killed once the new version runs (here: hung in its startup) must not
/// leave the old version parked: its supervisor resumes it when the update's connection
/// closes, which it sees only if no other process holds that connection open (the new
/// supervisor, forked by `mcr update`, must not keep a copy).
#[test]
fn update_killed_during_the_restart_leaves_the_old_version_serving() {
    let mcr = Mcr::new("u-restart-killed");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, hang) = (fixture("kvd"), fixture("kvd-v2-hang"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut client = Client::connect(port);
    assert_eq!(client.request("PING"), "PONG");
    let mut argv: Vec<OsString> = ["update", "kvd", "--timeout", "60000", "--"].iter().map(OsString::from).collect();
    argv.push(hang.clone().into());
    argv.extend(args.iter().map(OsString::from));
    let mut upd = mcr.spawn(&argv);
    // Stops the new version, whatever the outcome.
    let _next = mcr.guard("kvd.next");
    assert!(
        wait_until(Duration::from_secs(20), || inst.log().contains("(KVD_V2_HANG)")),
        "the new version did not get to its hang\nlog:\n{}",
        inst.log()
    );
    assert!(upd.try_wait().is_none(), "the update ended while the new version hangs");
    // SAFETY: SIGKILL to the mcr process this test spawned.
    unsafe { libc::kill(upd.pid(), libc::SIGKILL) };
    let _ = upd.wait_timeout(Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || std::panic::catch_unwind(|| ask(port, "VERSION"))
            .is_ok_and(|v| v == "VERSION kvd 1")),
        "the old version no longer accepts after the update was killed\nlog:\n{}",
        inst.log()
    );
    assert_eq!(client.request("PING"), "PONG");
    assert_eq!(inst.status()["quiesced"], Value::Bool(false));
}

/// `mcr update` of a server whose process is stopped (SIGSTOP) rolls back within its
/// timeouts, naming the process, and the server serves unparked once continued. (Before:
/// `--quiesce-timeout 500` took 36.6 s to roll back.)
#[test]
fn update_of_a_stopped_server_rolls_back_within_its_timeouts() {
    let mcr = Mcr::new("u-stopped");
    let port = free_port();
    let args = port_args(port, &[]);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut client = Client::connect(port);
    assert_eq!(client.request("SET k v"), "OK");
    let pid = host_pid(&v1, port);
    kill(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    let out = update(&mcr, "kvd", &["--quiesce-timeout", "500", "--drain-timeout", "500"], &v2, &args);
    let took = t0.elapsed();
    kill(pid, libc::SIGCONT);
    assert_eq!(out.code(), 1, "{out}");
    assert!(took < Duration::from_secs(5), "the rollback took {took:?}: {out}");
    assert!(out.stderr.contains("/kvd --port") && out.stderr.contains("stopped (SIGSTOP)"), "{out}");
    assert_eq!(client.request("GET k"), "VALUE v");
    assert_eq!(ask(port, "VERSION"), "VERSION kvd 1");
    assert_eq!(inst.status()["quiesced"], Value::Bool(false));
    assert_only_instance_files(&mcr, "kvd");
}

/// `mcr update NAME PROGRAM` replaces the binary: the new version gets the running one's
/// arguments (here its port), and says so; `--no-args` gives it none.
#[test]
fn an_update_given_only_the_program_keeps_the_running_arguments() {
    let mcr = Mcr::new("u-args");
    let port = free_port();
    let _inst = mcr.start("kvd", &fixture("kvd"), &["--port", &port.to_string()]);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET who me"), "OK");
    let v2 = fixture("kvd-v2");
    let out = mcr.run(&["update", "kvd", v2.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains(&format!("the running version's arguments: --port {port}")), "{out}");
    assert_eq!(c.request("GET who"), "VALUE me", "the session and its data moved");
    assert_eq!(Client::connect(port).request("GET who"), "VALUE me", "the new version listens where the old one did");
    // Without arguments kvd refuses to start (it needs --port): the update rolls back.
    let out = mcr.run(&["update", "--no-args", "kvd", v2.to_str().unwrap()]);
    assert_ne!(out.code(), 0, "{out}");
    assert_eq!(Client::connect(port).request("GET who"), "VALUE me");
}

/// A wait that returns at once is not where a process waits: kvd `--test-epoll` tests an
/// epoll instance before its loop with a wait on a closed socketpair (as nginx's worker
/// does), then sets up its state. Its startup ends in the event loop, not in that test
/// wait; an update's new version goes past the test too and parks in the loop, so its
/// setup is done before the state arrives and never redone over it (as nginx's worker did:
/// it took the old version's connections for its own listening socket, and kept every
/// previous version's configuration alive through them).
#[test]
fn a_wait_that_returns_at_once_ends_no_startup_and_parks_no_new_version() {
    let mcr = Mcr::new("u-testwait");
    let port = free_port();
    let args = port_args(port, &["--test-epoll"]);
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    let in_the_loop = |st: &Value| {
        threads(st).iter().all(|(_, t)| {
            let qp = t["quiescent_point"].to_string();
            qp.contains("main") && !qp.contains("test_epoll")
        })
    };
    let st = inst.status();
    assert!(in_the_loop(&st), "startup ended in kvd's loop, not in its test wait: {st:#}");
    assert_eq!(ask(port, "SET k v"), "OK");
    assert_eq!(ask(port, "SETUPS"), "SETUPS 1");
    for (i, v2) in ["kvd-v2", "kvd"].into_iter().enumerate() {
        let out = update(&mcr, &inst.name, &[], &fixture(v2), &args);
        assert_eq!(out.code(), 0, "update {i} to {v2}: {out}");
        assert_eq!(ask(port, "GET k"), "VALUE v", "after update {i}");
        assert_eq!(ask(port, "SETUPS"), "SETUPS 1", "after update {i}: the new version redid its setup");
        let st = inst.status();
        assert!(in_the_loop(&st), "after update {i}: {st:#}");
    }
}

/// An update's new version wakes up in a wait it set up from its own state: kvd
/// `--no-tick` waits with no timeout unless a `LATER` reply is pending, and then until it
/// is due. A `LATER` asked just before the update is due after it: the new version parked
/// in a wait with no timeout (it had no `LATER` of its own), and the transferred one must
/// still be answered on time (the wait ends when the state arrives, and the loop computes
/// its timeout again). As nginx's rate-limited downloads, whose timers are state.
#[test]
fn a_timer_the_old_version_set_fires_in_the_new_version() {
    let mcr = Mcr::new("u-later");
    let port = free_port();
    let args = port_args(port, &["--no-tick"]);
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    for (i, v2) in ["kvd-v2", "kvd"].into_iter().enumerate() {
        let mut c = Client::connect(port);
        // Taken before the send: the server may read the request before this thread runs
        // again (a loaded machine: the reply then seemed early by the delay). kvd counts
        // whole milliseconds, so the reply may come up to 1 ms before 1500 have passed.
        let asked = Instant::now();
        c.send("LATER 1500").expect("send LATER");
        let out = update(&mcr, &inst.name, &[], &fixture(v2), &args);
        assert_eq!(out.code(), 0, "update {i} to {v2}: {out}");
        let answer = c.read_line_timeout(Duration::from_secs(10));
        assert_eq!(answer.as_deref().ok(), Some("LATER done"), "update {i}: {answer:?}");
        let waited = asked.elapsed();
        assert!(waited >= Duration::from_millis(1499), "update {i}: answered early, after {waited:?}");
        assert_eq!(ask(port, "PING"), "PONG", "after update {i}");
    }
}
