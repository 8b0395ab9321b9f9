//! The state suite (issue 12, "Proof"): each case of `fixtures/stated.c` puts one process
//! or kernel state in place after startup and checks it after a live update to a
//! code-only v2 (`stated-v2`). Per case, on an instance of its own:
//!
//! 1. **Baseline**: start `stated` under mcr, `SETUP <case>`, `CHECK <case>` at once, no
//!    update: the check must pass, or it proves nothing (a broken check would pass for a
//!    lost state). `SKIP` here means the machine cannot put the state in place.
//! 2. **Update**: a fresh instance, `SETUP <case>`, the setup connection closed, then
//!    `mcr update NAME --json -- stated-v2 ...`, then `VERSION` and `CHECK <case>` on a new
//!    connection, classified as an [`Outcome`].
//!
//! `every_check_fails_on_a_fresh_server` shows no check passes vacuously.
//!
//! [`EXPECTED`] holds today's truth, measured, one row per case in the fixture's order;
//! the test fails on any difference, in either direction (a state that starts surviving
//! is news too: update the table). `MCR_STATE_CASES=a,b` runs only those cases;
//! `MCR_STATE_JOBS=N` sets how many run at once (default 4). `scripts/state-suite.sh`
//! builds what it needs and prints the table.

mod support;

use serde_json::Value;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

/// What became of one case's state across the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The update committed and CHECK passes on the new version.
    Survives,
    /// The update committed and CHECK fails: the state is gone, which issue 12 forbids.
    Lost,
    /// The update's preflight named the state and refused before the drain; the old
    /// version still serves and CHECK passes on it.
    Refused,
    /// The update did not commit for another reason (a later phase failed and it rolled
    /// back, or quiescence failed); the old version still serves and CHECK passes on it.
    RolledBack,
    /// SETUP said SKIP: this machine cannot put the state in place.
    Skipped,
    /// The update did not commit and CHECK fails on the old version: the rollback
    /// damaged the state.
    Broken,
    /// The server stopped answering after the update, or mcr hung or failed in a way
    /// that is not an update outcome.
    Dead,
    /// SETUP failed, or CHECK fails with no update at all: the case itself is wrong.
    BadCase,
}

use Outcome::*;

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Survives => "SURVIVES",
            Lost => "LOST",
            Refused => "REFUSED",
            RolledBack => "ROLLED-BACK",
            Skipped => "SKIPPED",
            Broken => "BROKEN",
            Dead => "DEAD",
            BadCase => "BAD-CASE",
        }
    }
}

/// Today's outcome of every case of fixtures/stated.c, in the fixture's order (`LIST`),
/// measured on this machine (Linux 6.18, root, 2 cores).
const EXPECTED: &[(&str, Outcome)] = &[
    ("ctl-global", Survives),
    ("ctl-heap", Survives),
    ("ctl-heap-large", Survives),
    ("ctl-literal", Survives), // to the new binary's one copy of the same string
    ("ctl-listener", Survives),
    ("tcp-listener", Survives),
    ("tcp-established", Survives), // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("tcp-accepted", Survives),    // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("tcp-accepted-epoll", Survives), // accepted and in an epoll set
    ("tcp-backlog", Survives),
    ("tcp-half-closed", Survives), // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("tcp-full", Survives),        // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("tcp-sockopts", Survives),
    ("tcp-oob", Survives), // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("tcp6-listener", Survives),
    ("tcp6-established", Survives), // in no epoll set, but no thread serves it: it moves with the memory holding it
    ("udp-queued", Survives),
    ("udp-connected", Survives),
    ("udp6-queued", Survives),
    ("unix-listener", Survives),
    ("unix-abstract", Survives),
    ("unix-stream", Survives), // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("unix-seqpacket", Survives), // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("unix-dgram", Survives),
    ("socketpair-stream", Survives), // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("socketpair-dgram", Survives),  // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("socketpair-seqpacket", Survives), // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("scm-rights", Survives),        // SO_PEERCRED reads as the counterpart (the new runtime's getsockopt)
    ("netlink-route", Survives),
    ("netlink-groups", Survives),
    ("raw-icmp", Survives),
    ("packet", Survives),
    ("fd-owner", Survives), // O_ASYNC: the counterpart becomes the owner at commit; writing raises the signal
    ("pipe-data", Survives),
    ("pipe-nonblock", Survives),
    ("pipe-size", Survives),
    ("pipe-full", Survives),
    ("pipe-writer-closed", Survives),
    ("pipe-reader-closed", Survives),
    ("pipe-packet", Survives),
    ("fifo-data", Survives),
    ("fifo-rdwr", Survives),
    ("eventfd-counter", Survives),
    ("eventfd-semaphore", Survives),
    ("eventfd-nonblock", Survives),
    ("timerfd-oneshot", Survives),
    ("timerfd-interval", Survives),
    ("timerfd-abstime", Survives),
    ("timerfd-expired", Survives),
    ("signalfd-queued", Refused), // preflight: a signalfd with its signal pending in the old process
    ("signalfd-empty", Refused),  // preflight: a signalfd (the blocked mask it needs does not move yet)
    ("inotify-watch", Survives),
    ("inotify-queued", Survives),
    ("epoll-set", Survives),
    ("epoll-nested", Survives),
    ("epoll-many", Survives),
    ("file-offset", Survives),
    ("file-append", Survives),
    ("file-nonblock", Survives),
    ("file-rdonly", Survives),
    ("file-noatime", Survives),
    ("file-flock-ex", Survives),
    ("file-flock-sh", Survives),
    ("file-posix-wrlock", Refused), // preflight: a POSIX record lock, owned by the old process
    ("file-posix-rdlock", Refused), // preflight: a POSIX record lock, owned by the old process
    ("file-ofd-lock", Survives),
    ("file-lease", Survives), // the lease stays with the description; its owner becomes the counterpart at commit
    ("file-deleted", Survives),
    ("file-dup", Survives),
    ("file-cloexec", Survives),
    ("file-no-cloexec", Survives),
    ("dev-null", Survives), // opened again through the new version's /dev (the old version's mounts go with it)
    ("dir-fd", Survives),
    ("file-opath", Survives),
    ("file-high-fd", Survives),
    ("file-other-mount", Survives), // opened again through the new version's mounts, with its flags and offset
    ("file-other-mount-flock", Refused), // preflight: a new open file description would not hold the lock
    ("map-file-shared", Survives),  // the same file mapped at the same address, sharing its pages
    ("map-file-private", Survives), // the same file mapped privately, the pages it wrote copied
    ("map-anon-shared", Survives),  // the same shared memory (through /proc/PID/map_files)
    ("map-anon-private", Survives), // copied to the same address in the new process
    ("map-readonly", Survives),     // likewise, with its protection
    ("map-mlock", Survives),        // copied to its address and locked again (mcr's heap keeps its own range free)
    ("memfd-plain", Survives),
    ("memfd-mapped", Survives),        // the same memfd mapped again; its descriptor moves
    ("memfd-mapped-closed", Survives), // the same memfd, through /proc/PID/map_files
    ("memfd-sealed", Survives),
    ("sysv-shm", Survives),     // attached again at the same address
    ("posix-shm", Survives),    // mapped and opened again through the new version's /dev/shm
    ("sysv-sem", Survives),     // a kernel object, not the process's: outlives it anyway
    ("sysv-sem-undo", Refused), // the kernel applies the adjustment when the old process exits
    ("sysv-msg", Survives),     // likewise
    ("posix-mq", Survives),
    ("posix-mq-notify", Refused), // preflight: an mq_notify registration for the old process
    ("sig-mask", Survives),
    ("sig-pending-process", Survives),
    ("sig-pending-thread", Survives),
    ("sig-rt-queued", Refused), // queued real-time signals' values cannot be read without taking them
    ("sig-handler", Survives),
    ("sig-handler-flags", Survives),
    ("sig-ignored", Survives),
    ("sig-nocldwait", Survives),
    ("sigaltstack", Refused), // the alternate stack's address is the old version's
    ("itimer-real", Survives),
    ("itimer-virtual", Survives),
    ("itimer-prof", Survives),
    ("posix-timer", Refused), // POSIX timers are not recreated (the new one would have another ID)
    ("posix-timer-fired", Refused), // the queued SI_TIMER signal's value cannot be read without taking it
    ("umask", Survives),
    ("cwd", Survives),
    ("rlimit-nofile", Survives),
    ("rlimit-core", Survives),
    ("rlimit-fsize", Survives),
    ("rlimit-memlock", Survives),
    ("env-set", Survives),
    ("env-unset", Survives),
    ("creds-groups", Survives),
    ("creds-egid", Survives),
    ("creds-euid", Survives),
    ("creds-caps", Refused), // capability sets are the main thread's own
    ("pgrp", Survives),
    ("session", Survives),
    ("prctl-name", Survives),
    ("prctl-dumpable", Survives),
    ("prctl-pdeathsig", Survives),
    ("prctl-subreaper", Survives),
    ("prctl-no-new-privs", Survives),
    ("prctl-timerslack", Survives),
    ("prctl-thp-disable", Survives),
    ("seccomp", Refused), // a seccomp filter cannot be read back or installed in another process
    ("nice", Survives),
    ("sched-policy", Survives),
    ("affinity", Survives),
    ("personality", Survives),
    ("ioprio", Survives),
    ("oom-score-adj", Survives),
    ("uts-ns", Refused),      // a namespace joined after startup cannot be entered by the new version
    ("pty-data", Refused),    // preflight: a pty master, which cannot be opened again
    ("pty-termios", Refused), // likewise
    ("pty-ctty", Refused),    // likewise
    ("thr-read", Refused),    // created after startup: the preflight names the thread
    ("thr-accept", Refused),  // likewise
    ("thr-poll", Refused),    // likewise
    ("thr-epoll", Refused),   // likewise
    ("thr-select", Refused),  // likewise
    ("thr-recv", Refused),    // likewise
    ("thr-nanosleep", Refused), // likewise
    ("thr-cond", Refused),    // likewise
    ("thr-sem", Refused),     // likewise
    ("thr-sigwait", Refused), // likewise
    ("thr-msgrcv", Refused),  // likewise
    ("thr-semop", Refused),   // likewise
    ("thr-sigsuspend", Refused), // likewise
    ("thr-mutex", Refused),   // created after startup: the preflight names the thread
    ("thr-unwrapped", Refused), // likewise
    ("child-helper", Refused), // forked after startup, no connection: named before the drain
    ("child-zombie", Refused), // its exit status is the parent's to collect: named before the drain
    ("child-exec", Refused),  // the exec'd child runs another program than the server: refused before anything
    ("child-stopped", Refused), // likewise
    ("child-orphan", Refused), // likewise (reparented away from the server)
    ("tls-var", Survives),
    ("tls-key", Survives),
    ("tls-key-heap", Survives), // the block moves with the value; the destructor is the new binary's
    ("tls-key-reused", Refused), // at the index of a startup key: the new version's startup holds it
    ("tls-key-startup", Survives), // a startup key's value set after startup, into the new startup's key
    ("stack-argv", Survives),   // pointers into argv and the environment: both versions lay their stacks out alike
];

/// Cases running at once (each is one or two mcr instances and an update).
const DEFAULT_JOBS: usize = 4;
/// Longest an `mcr update` of one case may take before the case counts as hung.
const UPDATE_LIMIT: Duration = Duration::from_secs(90);
/// How long the update waits for connections to close: the suite's states never close,
/// so the default (1 s) would only slow it down.
const DRAIN_TIMEOUT_MS: &str = "100";
/// Generous, so that a loaded machine does not turn a quiescent case into a refusal.
const QUIESCE_TIMEOUT_MS: &str = "3000";

struct CaseResult {
    actual: Outcome,
    detail: String,
    update_ms: Option<f64>,
}

fn stated_args(port: u16, work: &Path) -> Vec<String> {
    vec!["--port".into(), port.to_string(), "--dir".into(), work.display().to_string()]
}

/// Sends each line on one fresh connection and collects the replies, then QUIT and waits
/// until the server closed it (so no connection of the suite's own is open in an update).
fn converse(port: u16, lines: &[&str]) -> Result<Vec<String>, String> {
    let mut c = Client::try_connect(port, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    let mut replies = Vec::new();
    for l in lines {
        replies.push(c.try_request(l).map_err(|e| format!("{l}: {e}"))?);
    }
    match c.try_request("QUIT") {
        Ok(r) if r == "BYE" => {}
        Ok(r) => return Err(format!("QUIT: reply {r:?}")),
        Err(e) => return Err(format!("QUIT: {e}")),
    }
    match c.read_line_timeout(Duration::from_secs(3)) {
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(replies),
        Ok(l) => Err(format!("after BYE: {l:?}")),
        Err(e) => Err(format!("waiting for the server to close after BYE: {e}")),
    }
}

/// mcr's error from a command's stderr: its first line and the one after it (which
/// names the thread or process, when there is one), each up to its first "; ", without
/// warnings.
fn error_text(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().split("; ").next().unwrap_or(""))
        .filter(|l| !l.is_empty() && !l.starts_with("mcr: warning:"))
        .take(2)
        .collect();
    lines.join(" / ")
}

fn start_stated<'a>(mcr: &'a Mcr, port: u16, work: &Path) -> Result<Instance<'a>, String> {
    let out = mcr.try_start("stated", &fixture("stated"), &stated_args(port, work));
    let guard = mcr.guard("stated");
    if !out.success() {
        return Err(format!("mcr run: {}", error_text(&out.stderr)));
    }
    Ok(guard)
}

/// SETUP: Ok(None) when set up, Ok(Some(why)) when skipped.
fn setup(port: u16, name: &str) -> Result<Option<String>, String> {
    let r = converse(port, &[&format!("SETUP {name}")])?;
    match r[0].as_str() {
        "OK" => Ok(None),
        s if s.starts_with("SKIP ") => Ok(Some(s[5..].to_string())),
        s => Err(format!("SETUP: {s}")),
    }
}

/// VERSION and CHECK on a new connection: (version line, check reply).
fn check(port: u16, name: &str) -> Result<(String, String), String> {
    let r = converse(port, &["VERSION", &format!("CHECK {name}")])?;
    Ok((r[0].clone(), r[1].clone()))
}

fn cleanup(port: u16, name: &str) {
    let _ = converse(port, &[&format!("CLEANUP {name}")]);
}

/// The baseline: set up and checked without an update. Err(outcome, detail) ends the case.
fn baseline(name: &str) -> Result<(), (Outcome, String)> {
    let mcr = Mcr::new(&format!("state-base-{name}"));
    let port = free_port();
    let work = mcr.tmp.join("work");
    let _inst = start_stated(&mcr, port, &work).map_err(|e| (Dead, e))?;
    let skipped = setup(port, name).map_err(|e| (BadCase, e))?;
    if let Some(why) = skipped {
        return Err((Skipped, why));
    }
    let result = check(port, name);
    cleanup(port, name);
    match result {
        Ok((_, c)) if c == "OK" => Ok(()),
        Ok((_, c)) => Err((BadCase, format!("without any update: {c}"))),
        Err(e) => Err((BadCase, format!("without any update: {e}"))),
    }
}

struct UpdateOutcome {
    committed: bool,
    /// The preflight refused before the drain (rather than a later phase rolling back).
    refused_by_preflight: bool,
    message: String,
    total_ms: Option<f64>,
}

/// How the preflight's refusal begins (`PreflightError::Unmovable`).
const PREFLIGHT_REFUSAL: &str = "holds state this update cannot move";
/// How a refusal before the update touched anything ends (`PrepareError`).
const NOTHING_CHANGED: &str = "nothing was changed";

fn update(mcr: &Mcr, port: u16, work: &Path) -> Result<UpdateOutcome, String> {
    let mut argv: Vec<OsString> =
        ["update", "stated", "--json", "--drain-timeout", DRAIN_TIMEOUT_MS].iter().map(OsString::from).collect();
    argv.extend(["--quiesce-timeout", QUIESCE_TIMEOUT_MS, "--"].iter().map(OsString::from));
    argv.push(fixture("stated-v2").into());
    argv.extend(stated_args(port, work).into_iter().map(OsString::from));
    let mut run = mcr.spawn(&argv);
    let Some(out) = run.wait_timeout(UPDATE_LIMIT) else {
        return Err(format!("mcr update did not finish within {UPDATE_LIMIT:?}"));
    };
    match serde_json::from_str::<Value>(&out.stdout) {
        Ok(v) => {
            let message = v["message"].as_str().unwrap_or("").to_string();
            let drained = v["phases"]["drain_ms"].as_f64().is_some_and(|ms| ms > 0.0);
            Ok(UpdateOutcome {
                committed: v["committed"].as_bool().unwrap_or(false),
                refused_by_preflight: !drained
                    && (message.contains(PREFLIGHT_REFUSAL) || message.contains(NOTHING_CHANGED)),
                message,
                total_ms: v["phases"]["total_ms"].as_f64(),
            })
        }
        // Refusals before the update started (e.g. quiescence) are one-line errors.
        Err(_) if !out.success() && out.status.code().is_some() => {
            let message = error_text(&out.stderr);
            Ok(UpdateOutcome {
                committed: false,
                refused_by_preflight: message.contains(PREFLIGHT_REFUSAL) || out.stderr.contains(NOTHING_CHANGED),
                message: out.stderr.trim().to_string(),
                total_ms: None,
            })
        }
        Err(e) => Err(format!("mcr update: {} and no JSON outcome ({e}): {}", out.status, error_text(&out.stderr))),
    }
}

fn run_case(name: &str) -> CaseResult {
    let result = |actual, detail: String, update_ms| CaseResult { actual, detail, update_ms };
    if let Err((o, d)) = baseline(name) {
        return result(o, d, None);
    }
    let mcr = Mcr::new(&format!("state-{name}"));
    let port = free_port();
    let work = mcr.tmp.join("work");
    let _inst = match start_stated(&mcr, port, &work) {
        Ok(i) => i,
        Err(e) => return result(Dead, e, None),
    };
    match setup(port, name) {
        Ok(None) => {}
        // The baseline could and this one cannot: the machine changed under the suite.
        Ok(Some(why)) => return result(BadCase, format!("skipped only the second time: {why}"), None),
        Err(e) => return result(BadCase, e, None),
    }
    let up = match update(&mcr, port, &work) {
        Ok(u) => u,
        Err(e) => return result(Dead, e, None),
    };
    let checked = check(port, name);
    cleanup(port, name);
    let (version, reply) = match checked {
        Ok(vc) => vc,
        Err(e) => {
            let what = if up.committed { "after the update committed" } else { "after the update rolled back" };
            return result(Dead, format!("{what}: {e} (update: {})", up.message), up.total_ms);
        }
    };
    let want_version = if up.committed { "VERSION stated 2" } else { "VERSION stated 1" };
    if version != want_version {
        return result(
            Dead,
            format!("committed={} but {version:?} serves (update: {})", up.committed, up.message),
            up.total_ms,
        );
    }
    let failed = reply.strip_prefix("FAIL ").map(str::to_string);
    match (up.committed, reply == "OK", failed) {
        (true, true, _) => result(Survives, String::new(), up.total_ms),
        (true, false, Some(f)) => result(Lost, f, up.total_ms),
        (false, true, _) if up.refused_by_preflight => match named(name, &up.message) {
            Ok(()) => result(Refused, refusal_list(&up.message), up.total_ms),
            Err(missing) => {
                result(RolledBack, format!("refused without naming {missing:?}: {}", up.message), up.total_ms)
            }
        },
        (false, true, _) => result(RolledBack, up.message, up.total_ms),
        (false, false, Some(f)) => result(Broken, format!("{f} (update: {})", up.message), up.total_ms),
        (_, false, None) => result(Dead, format!("CHECK: {reply}"), up.total_ms),
    }
}

/// What a refusal of these cases must name (the kind of descriptor, as /proc shows it),
/// so a refusal for some other reason does not pass for one that found the case's state.
const NAMED: &[(&str, &str)] = &[
    ("child-exec", "runs /usr/bin/sleep, not the server"),
    ("pipe-data", "(pipe:["),
    ("fifo-data", "fifo"),
    ("eventfd-counter", "(anon_inode:[eventfd])"),
    ("timerfd-oneshot", "(anon_inode:[timerfd])"),
    ("signalfd-empty", "(anon_inode:[signalfd])"),
    ("inotify-watch", "(anon_inode:inotify)"),
    ("epoll-set", "(anon_inode:[eventpoll])"),
    ("udp-queued", "(socket:["),
    ("file-offset", "fd "),
    ("memfd-plain", "(/memfd:"),
    ("sysv-sem-undo", "SEM_UNDO"),
    ("tls-key-reused", "pthread key"),
];

/// The preflight's list of what cannot move, one "; " apart (its lead-in dropped).
fn refusal_list(message: &str) -> String {
    let items: Vec<&str> = message.lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect();
    items.join("; ")
}

/// Ok when the update's refusal names what case `name` must name, or the case has no such entry.
fn named(name: &str, message: &str) -> Result<(), &'static str> {
    match NAMED.iter().find(|(n, _)| *n == name) {
        Some((_, what)) if !message.contains(what) => Err(what),
        _ => Ok(()),
    }
}

/// The cases to run: all of EXPECTED, or those `MCR_STATE_CASES` names.
fn selected() -> Vec<(&'static str, Outcome)> {
    let Some(list) = std::env::var("MCR_STATE_CASES").ok().filter(|s| !s.trim().is_empty()) else {
        return EXPECTED.to_vec();
    };
    let wanted: Vec<&str> = list.split([',', ' ']).filter(|s| !s.is_empty()).collect();
    for w in &wanted {
        assert!(EXPECTED.iter().any(|(n, _)| n == w), "MCR_STATE_CASES names {w:?}, which is not a case");
    }
    EXPECTED.iter().copied().filter(|(n, _)| wanted.contains(n)).collect()
}

fn jobs() -> usize {
    std::env::var("MCR_STATE_JOBS").ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(DEFAULT_JOBS)
}

fn summary(rows: &[(&str, Outcome, &CaseResult)]) -> String {
    let mut s = format!("{:<24} {:<9} {:<9} {:>8}  detail\n", "case", "expected", "actual", "update");
    for (name, expected, r) in rows {
        let ms = r.update_ms.map(|t| format!("{t:.0} ms")).unwrap_or_default();
        let mark = if *expected == r.actual { " " } else { "!" };
        let mut detail = r.detail.clone();
        if detail.len() > 200 {
            let mut end = 197;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push_str("...");
        }
        s.push_str(&format!("{:<24}{mark}{:<9} {:<9} {ms:>8}  {detail}\n", name, expected.label(), r.actual.label()));
    }
    let count = |o: Outcome| rows.iter().filter(|(_, _, r)| r.actual == o).count();
    s.push_str(&format!(
        "{} cases: {} survive, {} lost, {} refused, {} rolled back, {} skipped, {} broken, {} dead, {} bad",
        rows.len(),
        count(Survives),
        count(Lost),
        count(Refused),
        count(RolledBack),
        count(Skipped),
        count(Broken),
        count(Dead),
        count(BadCase)
    ));
    s
}

#[test]
fn every_state_case_has_its_expected_outcome() {
    let cases = selected();
    // Refusals wait for timeouts (quiescence, a process that does not answer): start them
    // first, so the quick cases run beside them.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| !matches!(cases[i].1, Refused | RolledBack));
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<CaseResult>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs().min(cases.len()) {
            s.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let r = run_case(cases[i].0);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let results: Vec<CaseResult> = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every case ran"))
        .collect();
    let rows: Vec<(&str, Outcome, &CaseResult)> = cases.iter().zip(&results).map(|((n, e), r)| (*n, *e, r)).collect();
    let table = summary(&rows);
    println!("{table}\n(state suite: {:.1} s, {} at once)", t0.elapsed().as_secs_f64(), jobs());
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(_, e, r)| *e != r.actual)
        .map(|(n, e, r)| format!("{n}: expected {}, got {} ({})", e.label(), r.actual.label(), r.detail))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} state case(s) changed outcome; if the change is real, update EXPECTED in \
         crates/cli/tests/state_suite.rs (rows marked '!'):\n{}\n\n{table}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// EXPECTED lists exactly the fixture's cases, in its order: a case added to stated.c
/// without an expected outcome (or one removed) fails here.
#[test]
fn the_table_lists_every_case_of_the_fixture() {
    let mcr = Mcr::new("state-list");
    let port = free_port();
    let work: PathBuf = mcr.tmp.join("work");
    let _inst = start_stated(&mcr, port, &work).unwrap_or_else(|e| panic!("{e}"));
    let reply = converse(port, &["LIST"]).unwrap_or_else(|e| panic!("LIST: {e}")).remove(0);
    let mut words = reply.split(' ');
    assert_eq!(words.next(), Some("CASES"), "{reply}");
    let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("{reply}"));
    let fixture_cases: Vec<&str> = words.collect();
    assert_eq!(fixture_cases.len(), n, "{reply}");
    let table: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
    assert_eq!(table, fixture_cases, "EXPECTED in state_suite.rs and the cases of fixtures/stated.c differ");
    assert!(n >= 100, "the state suite should have at least 100 cases, has {n}");
}

/// No check passes vacuously: on a fresh server, where no case was set up, every check
/// run anyway (`PROBE`) fails, and none of them crashes the server. A check that passed
/// here would also pass for a state the update lost.
#[test]
fn every_check_fails_on_a_fresh_server() {
    let mcr = Mcr::new("state-fresh");
    let port = free_port();
    let _inst = start_stated(&mcr, port, &mcr.tmp.join("work")).unwrap_or_else(|e| panic!("{e}"));
    let probes: Vec<String> = EXPECTED.iter().map(|(n, _)| format!("PROBE {n}")).collect();
    let mut lines: Vec<&str> = probes.iter().map(String::as_str).collect();
    lines.push("PING");
    let replies = converse(port, &lines).unwrap_or_else(|e| panic!("the fresh server stopped answering: {e}"));
    let passing: Vec<String> = EXPECTED
        .iter()
        .zip(&replies)
        .filter(|(_, r)| !r.starts_with("FAIL "))
        .map(|((n, _), r)| format!("{n}: {r}"))
        .collect();
    assert!(
        passing.is_empty(),
        "checks that do not fail on a fresh server (they prove nothing):\n{}",
        passing.join("\n")
    );
    assert_eq!(replies.last().map(String::as_str), Some("PONG"), "the server after every probe");
}
