//! `mcr run --detach`, `mcr status`, `mcr list`: a server started under mcr is running,
//! serving, and described correctly.

mod support;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use support::*;

#[test]
fn detached_kvd_is_started_and_parked_threads_are_described() {
    let mcr = Mcr::new("run-kvd");
    let port = free_port();
    let kvd = fixture("kvd");
    let out = mcr.try_start("k", &kvd, &["--port", &port.to_string()]);
    assert_eq!(out.code(), 0, "mcr run --detach failed: {out}");
    let inst = mcr.guard("k");

    // By the time `run --detach` returned, startup is complete.
    let st = inst.status();
    assert_eq!(st["name"], "k");
    assert_eq!(st["started"], Value::Bool(true), "{st:#}");
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    assert!(st["startup_ms"].is_number(), "{st:#}");
    let procs = processes(&st);
    assert_eq!(procs.len(), 1, "kvd is one process: {st:#}");
    let p = procs[0];
    assert_eq!(p["managed"], Value::Bool(true), "{st:#}");
    assert_eq!(p["startup_complete"], Value::Bool(true), "{st:#}");
    assert_eq!(st["main_pid"], p["pid"], "{st:#}");
    let argv: Vec<&str> = p["command_line"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(argv[0].ends_with("/kvd"), "{argv:?}");
    assert!(argv.contains(&port.to_string().as_str()), "{argv:?}");

    let ths = threads(&st);
    assert_eq!(ths.len(), 1, "kvd is single-threaded: {st:#}");
    let t = ths[0].1;
    let state = t["state"].as_str().unwrap_or_default();
    assert!(state == "blocked" || state == "parked", "idle kvd thread is {state:?}: {t:#}");
    assert_eq!(t["call"], "epoll_wait", "{t:#}");
    assert_eq!(t["at_quiescent_point"], Value::Bool(true), "{t:#}");
    let qp = frame_functions(&t["quiescent_point"]);
    assert!(qp.iter().any(|f| f == "main"), "kvd's quiescent point should be in main: {t:#}");

    // The server works.
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET greeting hello under mcr"), "OK");
    assert_eq!(c.request("GET greeting"), "VALUE hello under mcr");
    assert_eq!(c.request("GET missing"), "NOTFOUND");
    drop(c);

    // The human-readable status names the same things, once kvd is back in its loop (it
    // is still handling the closed connection for a moment, longer on a loaded machine).
    let mut text = mcr.run(&["status", "k"]).ok();
    wait_until(std::time::Duration::from_secs(10), || {
        text = mcr.run(&["status", "k"]).ok();
        text.stdout.contains("epoll_wait")
    });
    assert!(text.stdout.contains("epoll_wait"), "{text}");
    assert!(text.stdout.contains("main"), "{text}");

    // `mcr list --json` lists it.
    let out = mcr.run(&["list", "--json"]).ok();
    let list: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("list --json: {e}: {out}"));
    let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["k"], "{out}");
    let out = mcr.run(&["list"]).ok();
    assert!(out.stdout.lines().any(|l| l.starts_with("k ") && l.contains("running")), "{out}");

    // Stopping it frees the name and the port.
    inst.stop().ok();
    assert!(wait_until(std::time::Duration::from_secs(5), || port_free(port)), "port {port} still in use after stop");
    let out = mcr.run(&["list", "--json"]).ok();
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap(), Value::Array(vec![]), "{out}");
}

#[test]
fn self_daemonizing_kvd_keeps_running_under_mcr() {
    let mcr = Mcr::new("run-daemon");
    let port = free_port();
    let kvd = fixture("kvd");
    let pidfile = mcr.tmp.join("kvd.pid");
    let out =
        mcr.try_start("d", &kvd, &["--port", &port.to_string(), "--daemonize", "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "mcr run --detach of a daemonizing kvd failed: {out}");
    let inst = mcr.guard("d");

    let st = inst.status();
    assert_eq!(st["started"], Value::Bool(true), "{st:#}");
    // The foreground kvd exited after the double fork; the daemon is left, an orphan
    // adopted by the supervisor (PID 1 of the namespace).
    let procs = processes(&st);
    let daemon = procs
        .iter()
        .find(|p| p["ppid"] == 1 && p["command_line"][0].as_str().is_some_and(|a| a.ends_with("/kvd")))
        .unwrap_or_else(|| panic!("no kvd process whose parent is 1: {st:#}"));
    assert_eq!(daemon["startup_complete"], Value::Bool(true), "{st:#}");
    // The foreground kvd exits once the daemon told it it is up: the supervisor hands the
    // main role over when it reaps it, which may come just after `mcr run` returned.
    let daemon_pid = daemon["pid"].clone();
    let handed_over = wait_until(std::time::Duration::from_secs(5), || inst.status()["main_pid"] == daemon_pid);
    let st = inst.status();
    assert!(handed_over, "signals should go to the daemon ({daemon_pid}): {st:#}");
    // The pid kvd wrote is the one mcr shows (both inside the namespace).
    let written = std::fs::read_to_string(&pidfile).expect("kvd wrote no pidfile");
    assert_eq!(written.trim(), daemon_pid.to_string(), "{st:#}");

    let mut c = Client::connect(port);
    assert_eq!(c.request("SET x 1"), "OK");
    assert_eq!(c.request("GET x"), "VALUE 1");
    drop(c);

    // kvd removes its pidfile on a clean exit: `mcr stop` got SIGTERM to the daemon.
    inst.stop().ok();
    assert!(!pidfile.exists(), "the daemon did not exit cleanly on mcr stop (pidfile left)");
    assert!(host_pids(&kvd, port).is_empty(), "kvd still running after mcr stop");
}

#[test]
fn script_that_execs_the_server_runs_under_mcr() {
    let mcr = Mcr::new("run-script");
    let port = free_port();
    let kvd = fixture("kvd");
    let script = mcr.tmp.join("start-kvd.sh");
    // Some work before the exec (a bounded loop, ~0.1 s): the shell has read its script by
    // then, and that read must not count as the end of its startup, or mcr would say the
    // server started while it is still the shell.
    let work = "i=0\nwhile [ $i -lt 20000 ]; do i=$((i+1)); done\n";
    std::fs::write(&script, format!("#!/bin/sh\n{work}exec {} --port {port}\n", kvd.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = mcr.try_start("sh", &script, &[] as &[&str]);
    assert_eq!(out.code(), 0, "mcr run --detach of a script failed: {out}");
    let inst = mcr.guard("sh");
    assert!(out.stderr.contains("script"), "expected a note that the program is a script: {out}");

    let st = inst.status();
    assert_eq!(st["started"], Value::Bool(true), "{st:#}");
    let procs = processes(&st);
    assert_eq!(procs.len(), 1, "{st:#}");
    assert!(
        procs[0]["command_line"][0].as_str().unwrap().ends_with("/kvd"),
        "the shell should have exec'd kvd: {st:#}"
    );
    let t = threads(&st).first().unwrap_or_else(|| panic!("kvd reports no thread (not registered?): {st:#}")).1;
    assert!(frame_functions(&t["quiescent_point"]).iter().any(|f| f == "main"), "{t:#}");

    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
}

/// A thread made during startup that exits without ever waiting (httpd's thread that
/// starts the workers can, on a loaded machine), after every other thread is waiting:
/// its exit completes the startup, which nothing else would.
#[test]
fn startup_completes_when_the_last_starting_thread_exits_without_waiting() {
    let mcr = Mcr::new("run-starter");
    let port = free_port();
    let poold = fixture("poold");
    let args = [
        "--port".to_string(),
        port.to_string(),
        "--threads".into(),
        "2".into(),
        "--starter-spins".into(),
        "300".into(),
    ];
    let out = mcr.run(&[
        "run",
        "--detach",
        "--startup-timeout",
        "10",
        "--name",
        "p",
        "--",
        poold.to_str().unwrap(),
        &args[0],
        &args[1],
        &args[2],
        &args[3],
        &args[4],
        &args[5],
    ]);
    let inst = mcr.guard("p");
    assert_eq!(out.code(), 0, "the startup never completed: {out}");
    let st = inst.status();
    let procs = processes(&st);
    assert_eq!(procs[0]["startup_complete"], Value::Bool(true), "{st:#}");
    assert_eq!(threads(&st).len(), 3, "the main thread and two workers; the starter is gone: {st:#}");
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG");
}
