//! A thread that never reaches a quiescent point: quiesce gives up in time, names the
//! thread and why, and leaves the server running.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

/// Starts stuckd (--stuck-after-start) and returns its instance, port and the tid (inside
/// the namespace) of the thread stuck in the raw nanosleep loop.
fn start_stuckd(mcr: &Mcr) -> (Instance<'_>, u16, i64) {
    start_stuckd_with(mcr, "--stuck-after-start")
}

/// `mode`: --stuck-after-start (a raw nanosleep loop) or --spin (a loop with no call).
fn start_stuckd_with<'m>(mcr: &'m Mcr, mode: &str) -> (Instance<'m>, u16, i64) {
    let port = free_port();
    let inst = mcr.start("stuck", &fixture("stuckd"), &["--port", &port.to_string(), mode]);
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    // Startup completed when the sleeper entered its one usleep(1000); it leaves it for the
    // raw loop a moment later (on a loaded machine, later still).
    let left_usleep = |st: &Value| threads(st).iter().any(|(_, t)| t["class"] != "main" && t["call"] != "usleep");
    let mut st = inst.status();
    wait_until(Duration::from_secs(10), || {
        st = inst.status();
        left_usleep(&st)
    });
    assert_eq!(st["started"], Value::Bool(true), "{st:#}");
    let ths = threads(&st);
    assert_eq!(ths.len(), 2, "stuckd has two threads: {st:#}");
    let sleeper = ths
        .iter()
        .map(|(_, t)| *t)
        .find(|t| t["class"] != "main")
        .unwrap_or_else(|| panic!("no non-main thread: {st:#}"));
    // It reached a quiescent point once (usleep), and is no longer at one.
    assert!(!sleeper["quiescent_point"].is_null(), "{st:#}");
    assert_eq!(sleeper["at_quiescent_point"], Value::Bool(false), "{st:#}");
    (inst, port, sleeper["tid"].as_i64().unwrap())
}

/// The line of a failed quiesce's report that names thread `tid`.
fn laggard_line(out: &Out, tid: i64) -> &str {
    out.stderr
        .lines()
        .find(|l| l.contains(&format!("thread {tid}:")))
        .unwrap_or_else(|| panic!("stderr does not name thread {tid}: {out}"))
}

#[test]
fn quiesce_names_the_thread_stuck_in_an_unwrapped_system_call_and_resumes() {
    let mcr = Mcr::new("lag-stuck");
    let (inst, port, tid) = start_stuckd(&mcr);

    let t0 = Instant::now();
    let out = inst.quiesce(200);
    let took = t0.elapsed();
    assert_eq!(out.code(), 1, "quiesce of stuckd should fail: {out}");
    assert!(took < Duration::from_secs(5), "quiesce --timeout 200 took {took:?}");
    assert!(out.stderr.contains("200 ms"), "should say it gave up after the timeout: {out}");
    assert!(out.stderr.contains("resumed"), "should say the server was resumed: {out}");
    let laggard_line = laggard_line(&out, tid);
    assert!(
        laggard_line.contains("system call") && laggard_line.contains("not a quiescent point"),
        "the reason should be an unwrapped system call: {out}"
    );
    // Only the stuck thread is a laggard; the main thread (in accept) parked fine.
    let main_tid = inst.status()["main_pid"].as_i64().unwrap();
    assert!(!out.stderr.contains(&format!("thread {main_tid}:")), "the main thread is no laggard: {out}");

    // The server was resumed: not quiesced, nothing parked, and it answers.
    let st = inst.status();
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    for (_, t) in threads(&st) {
        assert_ne!(t["state"], "parked", "{st:#}");
    }
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG");
    assert_eq!(c.request("VERSION"), "VERSION stuckd 1");
    drop(c);

    // Failing again is just as clean (no state left over from the first attempt).
    let out = inst.quiesce(100);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
}

/// A thread spinning on the CPU outside any call is named with where it runs: the report
/// asks the thread itself (a probe signal records the program counter it interrupted).
#[test]
fn quiesce_says_where_a_spinning_thread_runs() {
    let mcr = Mcr::new("lag-spin");
    let (inst, port, tid) = start_stuckd_with(&mcr, "--spin");
    let out = inst.quiesce(200);
    assert_eq!(out.code(), 1, "quiesce of a spinning stuckd should fail: {out}");
    let laggard_line = laggard_line(&out, tid);
    assert!(
        laggard_line.contains("running outside any wrapped call at spin_forever"),
        "the report should say where the thread spins: {out}"
    );
    // The probe changed nothing for the thread or the server.
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    let out = inst.quiesce(100);
    assert!(out.stderr.contains("at spin_forever"), "a second report says it again: {out}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
}

#[test]
fn quiesce_json_lists_the_laggard() {
    let mcr = Mcr::new("lag-json");
    let (inst, port, tid) = start_stuckd(&mcr);
    let out = mcr.run(&["ctl", "stuck", "quiesce", "--timeout", "200", "--json"]);
    assert_eq!(out.code(), 1, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["response"], "quiesce_failed", "{v:#}");
    let laggards = v["laggards"].as_array().unwrap_or_else(|| panic!("no laggards: {v:#}"));
    assert_eq!(laggards.len(), 1, "only the stuck thread lags: {v:#}");
    assert_eq!(laggards[0]["tid"].as_i64(), Some(tid), "{v:#}");
    let reason = laggards[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("system call"), "{v:#}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    assert_eq!(inst.status()["quiesced"], Value::Bool(false));
}

#[test]
fn quiesce_timeout_is_honoured() {
    let mcr = Mcr::new("lag-timeout");
    let (inst, _port, _) = start_stuckd(&mcr);
    // A longer timeout makes mcr wait longer before giving up (relative, not absolute).
    let t0 = Instant::now();
    assert_eq!(inst.quiesce(50).code(), 1);
    let short = t0.elapsed();
    let t0 = Instant::now();
    assert_eq!(inst.quiesce(1000).code(), 1);
    let long = t0.elapsed();
    assert!(long >= Duration::from_millis(1000), "gave up after {long:?} despite --timeout 1000");
    assert!(long > short, "--timeout 1000 ({long:?}) vs --timeout 50 ({short:?})");
}

/// A stopped process (SIGSTOP) cannot park: quiescing it fails within the timeout, names
/// the process instead of counting it as quiesced, and once continued the server is not
/// left parked. (Before: `--timeout 500` waited 24.5 s, said "quiesced … 0 threads in 0
/// processes", and the server parked for good when continued.)
#[test]
fn quiescing_a_stopped_process_names_it_within_the_timeout() {
    let mcr = Mcr::new("lag-stopped");
    let port = free_port();
    let kvd = fixture("kvd");
    let inst = mcr.start("kvd", &kvd, &["--port", &port.to_string()]);
    let pid = host_pid(&kvd, port);
    kill(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    let out = inst.quiesce(500);
    let took = t0.elapsed();
    kill(pid, libc::SIGCONT);
    assert_eq!(out.code(), 1, "quiescing a stopped server must fail: {out}");
    assert!(took < Duration::from_secs(3), "quiesce --timeout 500 took {took:?}: {out}");
    assert!(
        out.stderr.contains("/kvd --port") && out.stderr.contains("is stopped (SIGSTOP)"),
        "the stopped process is named: {out}"
    );
    // Continued, it gets the quiesce and then the resume that waited for it in its socket
    // (it may serve a request before it reads them): it ends up serving, parked nowhere.
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    let unparked = |st: &Value| threads(st).iter().all(|(_, t)| t["state"] != "parked");
    let settled = wait_until(Duration::from_secs(5), || unparked(&inst.status()));
    let st = inst.status();
    assert!(settled, "a thread stayed parked: {st:#}");
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    // And it quiesces normally now.
    let out = inst.quiesce(1000);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(inst.resume().code(), 0);
}
