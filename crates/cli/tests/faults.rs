//! Fault injection at every phase boundary of `mcr update`, with kvd under load (a client
//! writing keys in a bounded loop over one connection, and held connections each with a
//! key of its own).
//!
//! Each case holds the update at one point with the test hook (`MCR_TEST_PAUSE_AT`, see
//! `mcr_protocol::test_hook`), injects one fault there, lets the update go on, and checks
//! the outcome:
//! - points: after the drain, after the quiesce, during the restart (the new version
//!   replaying its startup), during the transfer (a process's state moved, its connections
//!   not yet), before the old version is asked to retire, while it retires (parked for
//!   good unless the new version fails before releasing it), and right after the commit
//!   point (the release);
//! - faults: `mcr update` killed (SIGKILL), the new version's server process killed, the
//!   new supervisor killed, the old supervisor killed, the old version's server process
//!   stopped (SIGSTOP; continued once the update ended), the runtime directory (a small
//!   tmpfs) full.
//!
//! After each: exactly one version serves, with every key the writer got an OK for and
//! every held connection answering, nothing of the other version is left, and the next
//! `mcr update` commits. A supervisor killed does not end its version: PID 1 of each
//! version's namespace is a separate init, which starts another supervisor that takes the
//! version over (or ends the version, when it was an update's new version before its
//! commit point). One kind of fault ends the server itself, as it would outside an
//! update, and is checked for that instead (nothing serves, nothing of either version is
//! left, the instance starts again and updates): the new version's server killed after the
//! commit point (the old version is retired by then).
//!
//! `a_supervisor_killed_while_serving_is_replaced` kills the supervisor outside any update.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Drained,
    Quiesced,
    Restarting,
    Transferring,
    Committing,
    Retiring,
    Committed,
}

impl Point {
    fn name(self) -> &'static str {
        use mcr_protocol::test_hook::point;
        match self {
            Point::Drained => point::DRAINED,
            Point::Quiesced => point::QUIESCED,
            Point::Restarting => point::RESTARTING,
            Point::Transferring => point::TRANSFERRING,
            Point::Committing => point::COMMITTING,
            Point::Retiring => point::RETIRING,
            Point::Committed => point::COMMITTED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillCli,
    KillNewServer,
    KillNewSupervisor,
    KillOldSupervisor,
    StopOldServer,
    DiskFull,
}

/// What must hold once the update ended and things settled.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Exactly one version serves, with every key and every held connection.
    Serves,
    /// The fault ended the server itself: nothing serves and nothing is left.
    ServerLost,
}

fn expected(fault: Fault, point: Point) -> Expect {
    match fault {
        Fault::KillNewServer if point == Point::Committed => Expect::ServerLost,
        _ => Expect::Serves,
    }
}

/// How long the update may take to end once it goes on after the fault.
const UPDATE_ENDS: Duration = Duration::from_secs(30);
/// How long the versions may take to settle after that (a supervisor noticing that the
/// update died, resuming or ending its version).
const SETTLES: Duration = Duration::from_secs(20);
const HELD_CONNECTIONS: usize = 4;
/// The writer stops after this many keys whatever happens.
const MAX_KEYS: usize = 20_000;
const WRITE_PACE: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// Load: a writer over one connection, and held connections.

/// Writes `w<i> value-<i>` for i = 0, 1, ... over one connection (reconnecting after an
/// error, retrying the same key), and keeps the keys the server said OK to.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<usize>>>,
    thread: Option<JoinHandle<()>>,
}

fn value_of(i: usize) -> String {
    format!("value-{i}")
}

impl Writer {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut conn: Option<Client> = None;
            let mut i = 0;
            while !s.load(Ordering::SeqCst) && i < MAX_KEYS {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Client::try_connect(port, Duration::from_secs(1)) {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                match c.try_request(&format!("SET w{i} {}", value_of(i))) {
                    Ok(r) if r == "OK" => {
                        a.lock().unwrap().push(i);
                        i += 1;
                        std::thread::sleep(WRITE_PACE);
                    }
                    // Out of step or gone: a fresh connection, the same key again.
                    _ => conn = None,
                }
            }
        });
        Self { stop, acked, thread: Some(thread) }
    }

    fn acked(&self) -> Vec<usize> {
        self.acked.lock().unwrap().clone()
    }

    fn wait_acked(&self, n: usize) {
        wait_for(Duration::from_secs(10), &format!("{n} keys written"), || self.acked.lock().unwrap().len() >= n);
    }

    /// Stop writing; the keys the server acknowledged.
    fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Connections opened before the update, each with a key of its own, idle during it.
fn held_connections(port: u16) -> Vec<Client> {
    (0..HELD_CONNECTIONS)
        .map(|i| {
            let mut c = Client::connect(port);
            assert_eq!(c.request(&format!("SET held{i} kept-{i}")), "OK");
            c
        })
        .collect()
}

fn check_held(held: &mut [Client], what: &str) {
    for (i, c) in held.iter_mut().enumerate() {
        match c.try_request(&format!("GET held{i}")) {
            Ok(r) => assert_eq!(r, format!("VALUE kept-{i}"), "{what}: held connection {i}"),
            Err(e) => panic!("{what}: held connection {i} no longer answers: {e}"),
        }
    }
}

/// Every key the writer got an OK for, read back over a fresh connection.
fn check_keys(port: u16, keys: &[usize], what: &str) {
    let mut c = Client::connect(port);
    let mut missing = Vec::new();
    for &i in keys {
        let r = c.request(&format!("GET w{i}"));
        if r != format!("VALUE {}", value_of(i)) {
            missing.push((i, r));
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged keys lost, first {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------
// The versions, seen from the host.

struct Versions {
    v1: PathBuf,
    v2: PathBuf,
    port: u16,
}

impl Versions {
    /// Host PIDs of the live server processes of each version.
    fn alive(&self) -> (Vec<i32>, Vec<i32>) {
        (host_pids_running(&self.v1, self.port), host_pids_running(&self.v2, self.port))
    }

    fn describe(&self) -> String {
        let (a, b) = self.alive();
        format!("v1 processes {a:?}, v2 processes {b:?}")
    }

    /// The one server process of `program` (waiting for it to appear).
    fn server_of(&self, program: &Path) -> i32 {
        let mut found = Vec::new();
        wait_until(Duration::from_secs(10), || {
            found = host_pids_running(program, self.port);
            found.len() == 1
        });
        assert_eq!(found.len(), 1, "expected one {} process, found {found:?}", program.display());
        found[0]
    }
}

/// The host PID of a process's parent (a server process's supervisor).
fn parent_of(pid: i32) -> i32 {
    mcr_procfs::stat::read(pid).map(|s| s.ppid).unwrap_or_else(|e| panic!("process {pid}: {e}"))
}

fn signal_if_alive(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a process that is gone (ESRCH) is left alone.
    unsafe { libc::kill(pid, sig) };
}

fn wait_gone(pid: i32) {
    wait_for(Duration::from_secs(10), &format!("process {pid} to be gone"), || !alive(pid));
}

/// Whether an instance's supervisor holds its lock.
fn live(mcr: &Mcr, name: &str) -> bool {
    let dir = mcr_protocol::InstanceDir { path: mcr.runtime_dir.clone() };
    dir.files(name).is_ok_and(|f| f.is_live())
}

// ---------------------------------------------------------------------------------------
// A full runtime directory.

/// A small tmpfs mounted as the runtime directory, which `fill` fills up.
struct SmallDisk {
    path: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                c("size=2m,mode=0700").as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "cannot mount a tmpfs on {}: {}", path.display(), std::io::Error::last_os_error());
        Self { path: path.to_path_buf(), filler: path.join("filler") }
    }

    /// Write until nothing more fits.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler).expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        let _ = f.sync_all();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2(2) with a valid path; lazy, since a killed server's log may still
        // be open for a moment.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---------------------------------------------------------------------------------------
// One case.

fn update_command(mcr: &Mcr, to: &Path, port: u16) -> Vec<OsString> {
    let mut argv: Vec<OsString> = ["update", "kvd", "--json", "--"].iter().map(OsString::from).collect();
    argv.push(to.into());
    argv.extend(["--port".into(), port.to_string().into()]);
    let _ = mcr;
    argv
}

/// Waits for the update to reach `point` (its marker file), failing if it ends first.
fn wait_paused(upd: &mut Spawned, marker: &Path, point: Point) {
    let t = Instant::now();
    while !marker.exists() {
        if let Some(out) = upd.wait_timeout(Duration::ZERO) {
            panic!("the update ended before reaching {point:?}: {out}");
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the update did not reach {point:?} within 30 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_case(fault: Fault, point: Point) {
    let label = format!("f-{fault:?}-{point:?}");
    let mcr = Mcr::new(&label);
    let disk = (fault == Fault::DiskFull).then(|| SmallDisk::mount(&mcr.runtime_dir));
    let pause_dir = mcr.tmp.join("pause");
    std::fs::create_dir_all(&pause_dir).unwrap();
    let port = free_port();
    let versions = Versions { v1: fixture("kvd"), v2: fixture("kvd-v2"), port };
    let args = ["--port".to_string(), port.to_string()];
    let inst = mcr.start("kvd", &versions.v1, &args);
    let _next = mcr.guard("kvd.next");
    let mut held = held_connections(port);
    let writer = Writer::start(port);
    writer.wait_acked(300);
    let old_server = versions.server_of(&versions.v1);
    let old_supervisor = parent_of(old_server);

    let mut cmd = mcr.command(&update_command(&mcr, &versions.v2, port));
    cmd.env(mcr_protocol::test_hook::PAUSE_AT, point.name()).env(mcr_protocol::test_hook::PAUSE_DIR, &pause_dir);
    let mut upd = Spawned::spawn(cmd, &mcr.tmp.path);
    let marker = pause_dir.join(format!("{}.paused", point.name()));
    wait_paused(&mut upd, &marker, point);

    let context = |what: &str| format!("{fault:?} at {point:?}: {what}\nlog:\n{}", inst.log());
    match fault {
        Fault::KillCli => kill(upd.pid(), libc::SIGKILL),
        Fault::KillNewServer => {
            let pid = versions.server_of(&versions.v2);
            kill(pid, libc::SIGKILL);
            wait_gone(pid);
        }
        Fault::KillNewSupervisor => {
            let pid = parent_of(versions.server_of(&versions.v2));
            kill(pid, libc::SIGKILL);
            wait_gone(pid);
        }
        // Right after the commit point the old supervisor may have exited already (retired).
        Fault::KillOldSupervisor if point == Point::Committed => signal_if_alive(old_supervisor, libc::SIGKILL),
        Fault::KillOldSupervisor => {
            kill(old_supervisor, libc::SIGKILL);
            wait_gone(old_supervisor);
        }
        // Right after the commit point the old version is already being retired (killed).
        Fault::StopOldServer => signal_if_alive(old_server, libc::SIGSTOP),
        Fault::DiskFull => disk.as_ref().expect("a small disk").fill(),
    }
    let _ = std::fs::remove_file(&marker);
    let t = Instant::now();
    let out = upd.wait_timeout(UPDATE_ENDS).unwrap_or_else(|| panic!("{}", context("the update did not end")));
    let update_took = t.elapsed();
    if fault == Fault::StopOldServer {
        signal_if_alive(old_server, libc::SIGCONT);
    }
    if let Some(d) = &disk {
        d.free();
    }
    let what = context(&format!("update ended in {update_took:?}: {out}"));
    if std::env::var_os("MCR_FAULTS_VERBOSE").is_some() {
        eprintln!("{what}");
    }

    match expected(fault, point) {
        Expect::Serves => {
            // Exactly one version left, serving, not parked, and no update in progress.
            let settled = wait_until(SETTLES, || {
                let (a, b) = versions.alive();
                (a.is_empty() != b.is_empty())
                    && !live(&mcr, "kvd.next")
                    && ping_once(port, Duration::from_secs(1)).is_ok()
                    && inst.status()["quiesced"] == serde_json::Value::Bool(false)
            });
            assert!(settled, "{}\nnot settled: {}", what, versions.describe());
            let (a, _) = versions.alive();
            eprintln!(
                "{fault:?} at {point:?}: update ended in {update_took:?} ({}), {} serves",
                out.status,
                if a.is_empty() { "v2" } else { "v1" }
            );
            let keys = writer.finish();
            check_keys(port, &keys, &what);
            check_held(&mut held, &what);
            // The next update commits, and everything is still there after it.
            let (a, _) = versions.alive();
            let to = if a.is_empty() { &versions.v1 } else { &versions.v2 };
            let next = mcr.run(&update_command(&mcr, to, port));
            assert_eq!(next.code(), 0, "{what}\nthe next update did not commit: {next}");
            check_keys(port, &keys, &format!("{what}\nafter the next update"));
            check_held(&mut held, &format!("{what}\nafter the next update"));
        }
        Expect::ServerLost => {
            let settled = wait_until(SETTLES, || {
                let (a, b) = versions.alive();
                a.is_empty() && b.is_empty() && !live(&mcr, "kvd") && !live(&mcr, "kvd.next")
            });
            assert!(settled, "{}\nnot settled: {}", what, versions.describe());
            eprintln!("{fault:?} at {point:?}: update ended in {update_took:?} ({}), the server is gone", out.status);
            drop(writer.finish());
            drop(held);
            // The instance starts again, and updates.
            let inst = mcr.start("kvd", &versions.v1, &args);
            let next = mcr.run(&update_command(&mcr, &versions.v2, port));
            assert_eq!(next.code(), 0, "{what}\nthe next update did not commit: {next}\nlog:\n{}", inst.log());
            assert_eq!(ping_once(port, Duration::from_secs(2)), Ok(()));
        }
    }
}

/// Outside any update: the supervisor killed, the server serves on (keys, clients), another
/// supervisor takes it over (status, the next update and stop all work through it).
#[test]
fn a_supervisor_killed_while_serving_is_replaced() {
    let mcr = Mcr::new("f-sup-killed");
    let port = free_port();
    let versions = Versions { v1: fixture("kvd"), v2: fixture("kvd-v2"), port };
    let args = ["--port".to_string(), port.to_string()];
    let inst = mcr.start("kvd", &versions.v1, &args);
    let mut held = held_connections(port);
    let writer = Writer::start(port);
    writer.wait_acked(300);
    let server = versions.server_of(&versions.v1);
    let supervisor = parent_of(server);
    kill(supervisor, libc::SIGKILL);
    wait_gone(supervisor);
    let mut status = serde_json::Value::Null;
    let replaced = wait_until(SETTLES, || {
        status = inst.status();
        status["supervisor_pid"].as_i64().is_some_and(|p| p > 0 && p != i64::from(supervisor))
            && status["quiesced"] == serde_json::Value::Bool(false)
    });
    assert!(replaced, "no supervisor took the server over: {status}\nlog:\n{}", inst.log());
    assert!(alive(server), "the server died with its supervisor\nlog:\n{}", inst.log());
    assert!(inst.log().contains("took the server over"), "log:\n{}", inst.log());
    let keys = writer.finish();
    let what = format!("after the supervisor was replaced\nlog:\n{}", inst.log());
    check_keys(port, &keys, &what);
    check_held(&mut held, &what);
    let next = mcr.run(&update_command(&mcr, &versions.v2, port));
    assert_eq!(next.code(), 0, "{what}\nthe update did not commit: {next}");
    check_keys(port, &keys, &format!("{what}\nafter the update"));
    check_held(&mut held, &format!("{what}\nafter the update"));
    let stop = mcr.run(&["stop", "kvd"]);
    assert_eq!(stop.code(), 0, "{stop}");
    let (a, b) = versions.alive();
    assert!(a.is_empty() && b.is_empty() && !live(&mcr, "kvd"), "left after stop: {}", versions.describe());
}

/// Issue 13: the new version adopts the old heap (maps its memfds copy-on-write, copies
/// what is private), never writing the old process; an update that dies at any phase
/// before its commit point leaves the old version's heap exactly as it was (the same live
/// blocks, byte for byte) and serving, whether the update walks the heap or leaves it
/// untouched.
#[test]
fn an_update_that_dies_before_its_commit_leaves_the_old_heap_as_it_was() {
    // kvd-v2-layout changes a type (every block is walked); kvd-v2 changes none (the heap
    // is left untouched, only checked).
    for (fault, point, v2) in [
        (Fault::KillCli, Point::Quiesced, "kvd-v2-layout"),
        (Fault::KillNewServer, Point::Restarting, "kvd-v2-layout"),
        (Fault::KillNewServer, Point::Transferring, "kvd-v2-layout"),
        (Fault::KillNewServer, Point::Committing, "kvd-v2-layout"),
        (Fault::KillNewServer, Point::Transferring, "kvd-v2"),
        (Fault::KillNewServer, Point::Committing, "kvd-v2"),
    ] {
        let mcr = Mcr::new(&format!("f-heap-{point:?}-{v2}"));
        let pause_dir = mcr.tmp.join("pause");
        std::fs::create_dir_all(&pause_dir).unwrap();
        let port = free_port();
        let versions = Versions { v1: fixture("kvd"), v2: fixture(v2), port };
        let inst = mcr.start("kvd", &versions.v1, &["--port".to_string(), port.to_string()]);
        let _next = mcr.guard("kvd.next");
        let mut c = Client::connect(port);
        for i in 0..2000 {
            assert_eq!(c.request(&format!("SET h{i} {}", value_of(i))), "OK");
        }
        // The client stays connected (idle): closing it would free its connection's blocks
        // whenever the server gets to it.
        let server = versions.server_of(&versions.v1);
        let before = heap_at_rest(&mcr, "kvd", server);
        assert!(before.len() >= 6000, "{} live blocks", before.len());

        let mut cmd = mcr.command(&update_command(&mcr, &versions.v2, port));
        cmd.env(mcr_protocol::test_hook::PAUSE_AT, point.name()).env(mcr_protocol::test_hook::PAUSE_DIR, &pause_dir);
        let mut upd = Spawned::spawn(cmd, &mcr.tmp.path);
        let marker = pause_dir.join(format!("{}.paused", point.name()));
        wait_paused(&mut upd, &marker, point);
        match fault {
            Fault::KillNewServer => {
                let pid = versions.server_of(&versions.v2);
                kill(pid, libc::SIGKILL);
                wait_gone(pid);
            }
            _ => kill(upd.pid(), libc::SIGKILL),
        }
        let _ = std::fs::remove_file(&marker);
        let out =
            upd.wait_timeout(UPDATE_ENDS).unwrap_or_else(|| panic!("{fault:?} at {point:?}: the update did not end"));
        assert!(!out.status.success(), "{fault:?} at {point:?}: committed: {out}");
        let settled = wait_until(SETTLES, || {
            !live(&mcr, "kvd.next")
                && ping_once(port, Duration::from_secs(1)).is_ok()
                && inst.status()["quiesced"] == serde_json::Value::Bool(false)
        });
        assert!(
            settled,
            "{fault:?} at {point:?}: the old version does not serve
log:
{}",
            inst.log()
        );
        let after = heap_at_rest(&mcr, "kvd", server);
        let after_by_addr: std::collections::BTreeMap<u64, &Vec<u8>> = after.iter().map(|(a, b)| (*a, b)).collect();
        let differs = |(a, b): &&(u64, Vec<u8>)| after_by_addr.get(a) != Some(&b);
        let changed: Vec<u64> = before.iter().filter(differs).map(|(a, _)| *a).take(5).collect();
        assert!(
            before.len() == after.len() && changed.is_empty(),
            "{fault:?} at {point:?}: the old heap changed: {} live blocks before, {} after; blocks differing (first \
             5): {changed:x?}",
            before.len(),
            after.len()
        );
        check_keys_named(&mut c, 2000);
    }
}

/// Keys h0..hN all hold their values.
fn check_keys_named(c: &mut Client, n: usize) {
    for i in 0..n {
        assert_eq!(c.request(&format!("GET h{i}")), format!("VALUE {}", value_of(i)), "key h{i}");
    }
}

macro_rules! cases {
    ($($name:ident: $fault:ident at $point:ident;)*) => {
        $(
            #[test]
            fn $name() {
                run_case(Fault::$fault, Point::$point);
            }
        )*
    };
}

cases! {
    cli_killed_after_the_drain: KillCli at Drained;
    cli_killed_after_the_quiesce: KillCli at Quiesced;
    cli_killed_during_the_restart: KillCli at Restarting;
    cli_killed_during_the_transfer: KillCli at Transferring;
    cli_killed_at_the_commit_point: KillCli at Committing;
    cli_killed_while_the_old_version_retires: KillCli at Retiring;
    cli_killed_right_after_the_commit_point: KillCli at Committed;

    new_server_killed_during_the_restart: KillNewServer at Restarting;
    new_server_killed_during_the_transfer: KillNewServer at Transferring;
    new_server_killed_at_the_commit_point: KillNewServer at Committing;
    new_server_killed_while_the_old_version_retires: KillNewServer at Retiring;
    new_server_killed_right_after_the_commit_point: KillNewServer at Committed;

    new_supervisor_killed_during_the_restart: KillNewSupervisor at Restarting;
    new_supervisor_killed_during_the_transfer: KillNewSupervisor at Transferring;
    new_supervisor_killed_at_the_commit_point: KillNewSupervisor at Committing;
    new_supervisor_killed_while_the_old_version_retires: KillNewSupervisor at Retiring;
    new_supervisor_killed_right_after_the_commit_point: KillNewSupervisor at Committed;

    old_supervisor_killed_after_the_drain: KillOldSupervisor at Drained;
    old_supervisor_killed_after_the_quiesce: KillOldSupervisor at Quiesced;
    old_supervisor_killed_during_the_restart: KillOldSupervisor at Restarting;
    old_supervisor_killed_during_the_transfer: KillOldSupervisor at Transferring;
    old_supervisor_killed_at_the_commit_point: KillOldSupervisor at Committing;
    old_supervisor_killed_while_it_retires: KillOldSupervisor at Retiring;
    old_supervisor_killed_right_after_the_commit_point: KillOldSupervisor at Committed;

    old_server_stopped_after_the_drain: StopOldServer at Drained;
    old_server_stopped_after_the_quiesce: StopOldServer at Quiesced;
    old_server_stopped_during_the_restart: StopOldServer at Restarting;
    old_server_stopped_during_the_transfer: StopOldServer at Transferring;
    old_server_stopped_at_the_commit_point: StopOldServer at Committing;
    old_server_stopped_while_it_retires: StopOldServer at Retiring;
    old_server_stopped_right_after_the_commit_point: StopOldServer at Committed;

    disk_full_after_the_drain: DiskFull at Drained;
    disk_full_after_the_quiesce: DiskFull at Quiesced;
    disk_full_during_the_restart: DiskFull at Restarting;
    disk_full_during_the_transfer: DiskFull at Transferring;
    disk_full_at_the_commit_point: DiskFull at Committing;
    disk_full_while_the_old_version_retires: DiskFull at Retiring;
    disk_full_right_after_the_commit_point: DiskFull at Committed;
}
