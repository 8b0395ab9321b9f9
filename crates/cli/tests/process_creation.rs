//! Every way a process comes to be (issue 14): `fixtures/spawnd.c` makes a child (or a
//! thread) in one way per request and answers with what the child reported; the same
//! requests to spawnd without mcr and under `mcr run --detach` must get the same answers,
//! and afterwards the idle server must quiesce and resume under mcr with no process left
//! behind, and stay listed (`mcr list`, `mcr status`).
//!
//! Each mode has its own test: `RUN mode`, then (where the child can wait) `HOLD mode`,
//! which keeps the child (or thread) blocked in `read()` until `RELEASE`. Under mcr the
//! instance is quiesced while the child is held, with the outcome the README promises
//! for that kind of process ([`WhileHeld`]).
//! `all_modes_in_one_session_then_the_idle_server_quiesces` runs every mode but
//! `seccomp` (below) in turn on one server.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

/// Every mode of spawnd (fixtures/README.md says what each child does and reports).
const MODES: &[&str] = &[
    "fork",
    "vfork",
    "_fork",
    "spawn",
    "exec",
    "daemon",
    "clone",
    "clone-ns",
    "clone-userns",
    "clone3",
    "setuid",
    "seccomp",
    "thread",
];

/// The modes whose children mcr never changes today: `seccomp` is left out, see
/// [`seccomp_sandboxed_child_as_without_mcr_never_quiescent`].
fn reliable_modes() -> Vec<&'static str> {
    MODES.iter().copied().filter(|&m| m != "seccomp").collect()
}

/// Runs of `RUN seccomp` under mcr that must all end as without it (the runtime's lost
/// race shows in 2 to 6 in 100).
const SECCOMP_RUNS: usize = 200;

/// Longest the processes a mode made may take to be gone once it answered.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// The quiesce timeout while a child is held, and what a quiesce may take beyond it.
const HELD_QUIESCE_MS: u64 = 1000;
const QUIESCE_SLACK: Duration = Duration::from_secs(3);

/// What `mcr ctl NAME quiesce` does while spawnd holds a mode's child (or thread) blocked
/// in `read()` (README: "Compatibility" and "Limitations").
#[derive(Clone, Copy, Debug)]
enum WhileHeld {
    /// Registered with mcr: every thread of every process parks.
    Parks { processes: usize, threads: usize },
    /// Made without the fork handlers (raw `clone`/`clone3`, `_Fork`) or passive (a raw
    /// clone into new namespaces): never registered, it runs as without mcr; the quiesce
    /// parks the server and lists the child as not registered.
    RunsUnregistered,
    /// Sandboxed (a seccomp filter): never quiescent; the quiesce fails within its timeout
    /// naming the process, and the server keeps running.
    NeverQuiescent,
}

/// Each mode's request and its answer, then PING's: what a client of spawnd sees.
fn answers(port: u16, modes: &[&str]) -> Vec<String> {
    let mut client = Client::connect(port);
    let mut ask = |line: &str| {
        let answer = client.try_request(line).unwrap_or_else(|e| format!("FAILED: {e}"));
        format!("{line} -> {answer}")
    };
    let mut seen: Vec<String> = modes.iter().map(|m| ask(&format!("RUN {m}"))).collect();
    seen.push(ask("PING"));
    seen
}

/// `RUN mode`, then with `hold`, `HOLD mode`, `while_held()` and `RELEASE`, then PING.
fn answers_holding(port: u16, mode: &str, hold: bool, while_held: &mut dyn FnMut()) -> Vec<String> {
    let mut client = Client::connect(port);
    let mut seen = Vec::new();
    let mut step = |client: &mut Client, line: &str| seen.push(format!("{line} -> {}", client.request(line)));
    step(&mut client, &format!("RUN {mode}"));
    if hold {
        step(&mut client, &format!("HOLD {mode}"));
        while_held();
        step(&mut client, "RELEASE");
    }
    step(&mut client, "PING");
    seen
}

/// The instance quiesced (or not) as `expect` says while spawnd holds a child of `mode`;
/// resumed afterwards.
fn quiesce_while_held(inst: &Instance, mode: &str, expect: WhileHeld) {
    let t0 = Instant::now();
    let out = inst.quiesce(HELD_QUIESCE_MS);
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_millis(HELD_QUIESCE_MS) + QUIESCE_SLACK,
        "{mode} held: quiesce --timeout {HELD_QUIESCE_MS} took {took:?}: {out}"
    );
    let st = inst.status();
    let main = st["main_pid"].as_i64();
    let procs = processes(&st);
    let held: Vec<&Value> = procs.iter().copied().filter(|p| p["pid"].as_i64() != main).collect();
    match expect {
        WhileHeld::Parks { processes: n, threads } => {
            assert!(out.success(), "{mode} held: quiesce failed: {out}\nlog:\n{}", inst.log());
            assert_all_parked(&st, n, threads);
            assert_eq!(procs.len(), n, "{mode} held: {st:#}");
            assert_eq!(thread_count(&st), threads, "{mode} held: {st:#}");
        }
        WhileHeld::RunsUnregistered => {
            assert!(out.success(), "{mode} held: quiesce failed: {out}\nlog:\n{}", inst.log());
            assert_eq!(st["quiesced"], Value::Bool(true), "{st:#}");
            assert_eq!(held.len(), 1, "{mode} held: not one process besides the server: {st:#}");
            let error = held[0]["error"].as_str().unwrap_or_default();
            assert!(error.contains("not registered"), "{mode} held: the child is not listed as unregistered: {st:#}");
            for p in procs.iter().filter(|p| p["pid"].as_i64() == main) {
                for t in p["threads"].as_array().into_iter().flatten() {
                    assert_eq!(t["state"], "parked", "{mode} held: a thread of the server is not parked: {st:#}");
                }
            }
        }
        WhileHeld::NeverQuiescent => {
            assert!(!out.success(), "{mode} held: a sandboxed process quiesced: {out}\n{st:#}");
            assert_eq!(held.len(), 1, "{mode} held: not one process besides the server: {st:#}");
            let named = format!("process {} ", held[0]["pid"]);
            assert!(out.stderr.contains(&named), "{mode} held: the quiesce does not name {named:?}: {out}");
            assert_eq!(st["quiesced"], Value::Bool(false), "{mode} held: not resumed after the failure: {st:#}");
        }
    }
    let out = inst.resume();
    assert!(out.success(), "{mode} held: resume failed: {out}");
}

/// The idle server under mcr: its processes made by `modes` are gone (only the server is
/// left in the supervisor's PID namespace), it quiesces with its one thread parked,
/// resumes, answers, and `mcr list` and `mcr status` still find it.
fn idle_server_quiesces(inst: &Instance, port: u16, modes: &[&str]) {
    let supervisor = inst.supervisor_pid();
    let mut left = Vec::new();
    let only_the_server = wait_until(LEFTOVER_TIMEOUT, || {
        left = host_pids_in_namespace_of(supervisor);
        left.len() == 1
    });
    let argv: Vec<_> = left.iter().map(|&p| (p, cmdline(p))).collect();
    assert!(only_the_server, "after {modes:?} the instance has not exactly one process left: {argv:?}");

    let out = inst.quiesce(5000);
    assert!(out.success(), "after {modes:?} the idle server does not quiesce: {out}\nlog:\n{}", inst.log());
    let st = inst.status();
    assert_all_parked(&st, 1, 1);
    assert_eq!(processes(&st).len(), 1, "after {modes:?}: {st:#}");
    let out = inst.resume();
    assert!(out.success(), "after {modes:?} resume failed: {out}");
    assert_eq!(inst.status()["quiesced"], Value::Bool(false));
    let pong = Client::connect(port).try_request("PING");
    assert!(
        matches!(&pong, Ok(p) if p == "PONG"),
        "after {modes:?}, quiesce and resume: PING -> {pong:?}\nlog:\n{}",
        inst.log()
    );

    let listed = inst.mcr.run(&["list"]).ok();
    assert!(listed.stdout.contains(&inst.name), "mcr list does not list {}: {listed}", inst.name);
    let status = inst.mcr.run(&["status", &inst.name]).ok();
    assert!(status.stdout.contains("running"), "mcr status {}: {status}", inst.name);
}

/// spawnd answers `modes` (RUN each) alike with and without mcr, and then quiesces under mcr.
fn same_with_and_without_mcr(label: &str, modes: &[&str]) {
    let mcr = Mcr::new(label);
    let port = free_port();
    let plain = {
        let _server = mcr.start_without_mcr("spawnd", port, &[]);
        answers(port, modes)
    };
    for (answer, mode) in plain.iter().zip(modes) {
        assert!(
            answer.starts_with(&format!("RUN {mode} -> OK {mode} status=")),
            "without mcr, so the fixture is broken: {answer}"
        );
    }

    let port = free_port();
    let inst = mcr.start("sp", &fixture("spawnd"), &["--port", &port.to_string()]);
    let under = answers(port, modes);
    assert_eq!(under, plain, "spawnd under mcr (left) answers otherwise than without it (right)\nlog:\n{}", inst.log());
    idle_server_quiesces(&inst, port, modes);
}

/// One mode, RUN and (with `held`) HOLD/RELEASE, alike with and without mcr; under mcr
/// quiesced while held as `held` says, and once idle again.
fn mode_same_with_and_without_mcr(mode: &str, held: Option<WhileHeld>) {
    let mcr = Mcr::new(&format!("pc-{mode}"));
    let port = free_port();
    let plain = {
        let _server = mcr.start_without_mcr("spawnd", port, &[]);
        answers_holding(port, mode, held.is_some(), &mut || {})
    };
    let held_ok = format!("HOLD {mode} -> HELD {mode} said=");
    assert!(
        plain[0].starts_with(&format!("RUN {mode} -> OK {mode} status="))
            && (held.is_none() || plain[1].starts_with(&held_ok)),
        "without mcr, so the fixture is broken: {plain:?}"
    );

    let port = free_port();
    let inst = mcr.start("sp", &fixture("spawnd"), &["--port", &port.to_string()]);
    let mut while_held = || quiesce_while_held(&inst, mode, held.expect("held"));
    let under = answers_holding(port, mode, held.is_some(), &mut while_held);
    assert_eq!(under, plain, "spawnd under mcr (left) answers otherwise than without it (right)\nlog:\n{}", inst.log());
    idle_server_quiesces(&inst, port, &[mode]);
}

#[test]
fn the_modes_tested_are_all_the_fixture_has() {
    let mcr = Mcr::new("pc-modes");
    let port = free_port();
    let _server = mcr.start_without_mcr("spawnd", port, &[]);
    let listed = Client::connect(port).request("MODES");
    let mut tested: Vec<&str> = MODES.to_vec();
    let mut has: Vec<&str> = listed.strip_prefix("MODES ").unwrap_or_else(|| panic!("{listed:?}")).split(' ').collect();
    tested.sort_unstable();
    has.sort_unstable();
    assert_eq!(tested, has, "a mode of spawnd is not tested here, or one tested is gone");
}

#[test]
fn all_modes_in_one_session_then_the_idle_server_quiesces() {
    same_with_and_without_mcr("pc-all", &reliable_modes());
}

/// One test per mode: which way of making a process differs shows in the test's name.
macro_rules! mode_tests {
    ($($(#[$attr:meta])* $test:ident => $mode:literal, $held:expr;)*) => {$(
        $(#[$attr])*
        #[test]
        fn $test() {
            assert!(MODES.contains(&$mode), "{} is not a mode of spawnd", $mode);
            mode_same_with_and_without_mcr($mode, $held);
        }
    )*};
}

use WhileHeld::*;

mode_tests! {
    fork_child_as_without_mcr_and_parks => "fork", Some(Parks { processes: 2, threads: 2 });
    vfork_child_exits_as_without_mcr => "vfork", None;
    underscore_fork_child_as_without_mcr_unregistered => "_fork", Some(RunsUnregistered);
    posix_spawn_of_echo_as_without_mcr => "spawn", None;
    fork_and_exec_of_itself_as_without_mcr_and_parks => "exec", Some(Parks { processes: 2, threads: 2 });
    daemon_double_fork_with_setsid_as_without_mcr_and_parks => "daemon", Some(Parks { processes: 2, threads: 2 });
    raw_clone_child_drops_to_nobody_as_without_mcr_and_parks => "clone", Some(Parks { processes: 2, threads: 2 });
    raw_clone_into_pid_ipc_net_namespaces_as_without_mcr_unregistered => "clone-ns", Some(RunsUnregistered);
    raw_clone_into_user_and_mount_namespaces_as_without_mcr_unregistered => "clone-userns", Some(RunsUnregistered);
    raw_clone3_child_drops_to_nobody_as_without_mcr_and_parks => "clone3", Some(Parks { processes: 2, threads: 2 });
    chroot_and_setuid_in_a_child_as_without_mcr => "setuid", None;
    chroot_and_setuid_child_held_parks => "setuid", Some(Parks { processes: 2, threads: 2 });
    thread_created_after_startup_as_without_mcr_and_parks => "thread", Some(Parks { processes: 1, threads: 2 });
}

/// The sandboxed child, many times: none may end otherwise than without mcr; then held, it
/// is never quiescent.
/// (Under mcr 2 to 6 in 100 of them died of SIGSYS: the heap's lock wait yielded the CPU,
/// which the filter forbids, while the runtime's own thread held the lock.)
#[test]
fn seccomp_sandboxed_child_as_without_mcr_never_quiescent() {
    let mcr = Mcr::new("pc-seccomp-many");
    let port = free_port();
    let plain = {
        let _server = mcr.start_without_mcr("spawnd", port, &[]);
        answers(port, &["seccomp"])
    };
    let port = free_port();
    let inst = mcr.start("sp", &fixture("spawnd"), &["--port", &port.to_string()]);
    let mut client = Client::connect(port);
    let differing: Vec<String> = (0..SECCOMP_RUNS)
        .map(|_| format!("RUN seccomp -> {}", client.request("RUN seccomp")))
        .filter(|a| *a != plain[0])
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {SECCOMP_RUNS} sandboxed children under mcr ended otherwise than without mcr ({}): {differing:?}",
        differing.len(),
        plain[0]
    );
    drop(client);
    drop(inst);
    mode_same_with_and_without_mcr("seccomp", Some(NeverQuiescent));
}
