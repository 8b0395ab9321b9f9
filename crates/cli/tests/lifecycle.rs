//! How an instance lives and ends: foreground `mcr run` follows the server's fate,
//! forwards signals, notices a dead supervisor; names are exclusive; dead instances are
//! cleaned up; `mcr stop` frees everything.

mod support;

use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::*;

const EXIT_WAIT: Duration = Duration::from_secs(15);

/// `mcr run --name NAME -- PROGRAM ARGS` in the foreground.
fn foreground(mcr: &Mcr, name: &str, program: &Path, args: &[&str]) -> Spawned {
    let mut argv: Vec<OsString> = vec!["run".into(), "--name".into(), name.into(), "--".into(), program.into()];
    argv.extend(args.iter().map(OsString::from));
    mcr.spawn(&argv)
}

/// Starts kvd in the foreground and waits until it answers; returns (mcr run, kvd host pid).
fn foreground_kvd(mcr: &Mcr, name: &str, port: u16, extra: &[&str]) -> (Spawned, i32) {
    let kvd = fixture("kvd");
    let p = port.to_string();
    let mut args = vec!["--port", p.as_str()];
    args.extend_from_slice(extra);
    let mut run = foreground(mcr, name, &kvd, &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG");
    assert!(run.try_wait().is_none(), "mcr run exited early: {}", run.stderr_text());
    (run, host_pid(&kvd, port))
}

#[test]
fn foreground_run_exits_137_when_the_server_is_killed() {
    let mcr = Mcr::new("life-kill");
    let port = free_port();
    let (mut run, pid) = foreground_kvd(&mcr, "k", port, &[]);
    kill(pid, libc::SIGKILL);
    let out = run.wait(EXIT_WAIT, "foreground mcr run after kill -KILL of kvd");
    assert_eq!(out.code(), 137, "{out}");
    assert!(mcr.instance_files().is_empty(), "instance files left: {:?}", mcr.instance_files());
    assert!(port_free(port), "port {port} still in use");
}

#[test]
fn foreground_run_forwards_sigterm_and_exits_with_the_servers_status() {
    let mcr = Mcr::new("life-term");
    let port = free_port();
    let pidfile = mcr.tmp.join("kvd.pid");
    let (mut run, kvd_pid) = foreground_kvd(&mcr, "k", port, &["--pidfile", pidfile.to_str().unwrap()]);
    assert!(pidfile.exists());
    kill(run.pid(), libc::SIGTERM);
    let out = run.wait(EXIT_WAIT, "foreground mcr run after SIGTERM");
    // kvd handles SIGTERM itself: it closes everything, removes its pidfile and exits 0.
    assert_eq!(out.code(), 0, "kvd exits 0 on SIGTERM, so should mcr run: {out}");
    assert!(!pidfile.exists(), "kvd did not get the SIGTERM (its pidfile is still there)");
    assert!(!alive(kvd_pid), "kvd still running");
    assert!(mcr.instance_files().is_empty(), "instance files left: {:?}", mcr.instance_files());
}

/// A SIGTERM that reaches `mcr run` after it launched the server but before its
/// forwarding thread runs (held there by the test hook) is forwarded all the same: kvd
/// gets it (removes its pidfile, exits 0) and so does `mcr run`. Before the signals were
/// blocked ahead of the launch, it ended `mcr run` and left the server running: a loaded
/// suite run hit that window once the new process's startup got 12 ms faster.
#[test]
fn foreground_run_forwards_a_sigterm_that_comes_before_its_forwarding_starts() {
    use mcr_protocol::test_hook;
    let mcr = Mcr::new("life-term-early");
    let port = free_port();
    let p = port.to_string();
    let pidfile = mcr.tmp.join("kvd.pid");
    let pause_dir = mcr.tmp.join("pause");
    fs::create_dir_all(&pause_dir).expect("pause dir");
    let argv: Vec<OsString> = ["run", "--name", "k", "--", fixture("kvd").to_str().unwrap(), "--port", &p, "--pidfile"]
        .iter()
        .map(OsString::from)
        .chain([pidfile.clone().into_os_string()])
        .collect();
    let mut cmd = mcr.command(&argv);
    cmd.env(test_hook::PAUSE_AT, test_hook::point::LAUNCHED).env(test_hook::PAUSE_DIR, &pause_dir);
    let mut run = Spawned::spawn(cmd, &mcr.tmp.path);
    let marker = pause_dir.join(format!("{}.paused", test_hook::point::LAUNCHED));
    assert!(wait_until(Duration::from_secs(10), || marker.exists()), "mcr run never reached the hook");
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG", "the server runs while mcr run is held");
    kill(run.pid(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    fs::remove_file(&marker).expect("release mcr run");
    let out = run.wait(EXIT_WAIT, "foreground mcr run after a SIGTERM before its forwarding");
    assert_eq!(out.code(), 0, "kvd exits 0 on SIGTERM, so should mcr run: {out}");
    assert!(!pidfile.exists(), "kvd did not get the SIGTERM (its pidfile is still there)");
    assert!(port_free(port), "port {port} still in use");
}

#[test]
fn foreground_run_forwards_sighup_and_sigint() {
    let mcr = Mcr::new("life-hup");
    let port = free_port();
    let (mut run, kvd_pid) = foreground_kvd(&mcr, "k", port, &[]);
    let mut c = Client::connect(port);
    let before = parse_stats(&c.request("STATS"));
    // Let kvd get back into epoll_wait after answering before the signal comes.
    wait_in_syscall(kvd_pid, &EPOLL_SYSCALLS);
    kill(run.pid(), libc::SIGHUP);
    // Bounded wait for the forwarded signal to arrive.
    let mut after = before.clone();
    let arrived = wait_until(Duration::from_secs(5), || {
        after = parse_stats(&c.request("STATS"));
        after["hups"] == before["hups"] + 1
    });
    assert!(arrived, "SIGHUP to mcr run did not reach kvd: {before:?} -> {after:?}");
    assert!(run.try_wait().is_none(), "mcr run exited on SIGHUP: {}", run.stderr_text());
    drop(c);
    kill(run.pid(), libc::SIGINT);
    let out = run.wait(EXIT_WAIT, "foreground mcr run after SIGINT");
    assert_eq!(out.code(), 0, "kvd exits 0 on SIGINT: {out}");
}

#[test]
fn foreground_run_exits_with_the_programs_exit_code() {
    let mcr = Mcr::new("life-code");
    let script = mcr.tmp.join("exit3.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = foreground(&mcr, "e", &script, &[]).wait(EXIT_WAIT, "mcr run of a script exiting 3");
    assert_eq!(out.code(), 3, "{out}");
    assert!(mcr.instance_files().is_empty(), "instance files left: {:?}", mcr.instance_files());
}

/// The supervisor killed: another takes over, and `mcr run` follows the server on. The
/// namespace's init (PID 1, the supervisor's parent) killed: the kernel ends the server,
/// and `mcr run` says so.
#[test]
fn foreground_run_outlives_a_killed_supervisor_and_reports_a_killed_init() {
    let mcr = Mcr::new("life-sup");
    let port = free_port();
    let kvd = fixture("kvd");
    let (mut run, kvd_pid) = foreground_kvd(&mcr, "k", port, &[]);
    let sup = mcr.supervisor_pid("k");
    assert_ne!(sup, run.pid(), "the supervisor is a separate process");
    let init = mcr_procfs::stat::read(sup).unwrap().ppid;
    assert_ne!(init, run.pid(), "the init is a separate process");
    kill(sup, libc::SIGKILL);
    let replaced = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(mcr.runtime_dir.join("k.pid")).is_ok_and(|p| p.trim() != sup.to_string())
    });
    assert!(replaced, "no supervisor took over from {sup}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    assert!(alive(kvd_pid) && alive(run.pid()), "the server and `mcr run` go on");
    kill(init, libc::SIGKILL);
    let out = run.wait(EXIT_WAIT, "foreground mcr run after the init was killed");
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("PID 1 of its PID namespace"), "stderr should say the init died: {out}");
    let gone = wait_until(Duration::from_secs(5), || !alive(kvd_pid) && host_pids(&kvd, port).is_empty());
    assert!(gone, "kvd still running after its supervisor died: {:?}", host_pids(&kvd, port));
    assert!(wait_until(Duration::from_secs(5), || port_free(port)), "port {port} still in use");
}

#[test]
fn second_run_with_the_same_name_fails_and_leaves_the_first_alone() {
    let mcr = Mcr::new("life-dup");
    let kvd = fixture("kvd");
    let port = free_port();
    let inst = mcr.start("k", &kvd, &["--port", &port.to_string()]);
    let before = inst.status();
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET x 1"), "OK");

    let port2 = free_port();
    for detach in [true, false] {
        let mut argv: Vec<OsString> = vec!["run".into()];
        if detach {
            argv.push("--detach".into());
        }
        argv.extend([
            "--name".into(),
            "k".into(),
            "--".into(),
            kvd.clone().into(),
            "--port".into(),
            port2.to_string().into(),
        ]);
        let out = mcr.run(&argv);
        assert_ne!(out.code(), 0, "{out}");
        assert!(out.stderr.contains("already running"), "{out}");
        assert_eq!(out.stderr_lines().len(), 1, "one line of error expected: {out}");
        assert!(host_pids(&kvd, port2).is_empty(), "a second kvd was started");
    }

    // k is undisturbed: same supervisor, same process, same data.
    let after = inst.status();
    assert_eq!(after["supervisor_pid"], before["supervisor_pid"]);
    assert_eq!(after["main_pid"], before["main_pid"]);
    assert_eq!(after["started"], Value::Bool(true));
    assert_eq!(c.request("GET x"), "VALUE 1");
    assert_eq!(Client::connect(port).request("GET x"), "VALUE 1");
    assert!(mcr.runtime_files().contains(&"k.sock".to_string()), "{:?}", mcr.runtime_files());
}

#[test]
fn detached_instance_with_killed_init_is_reported_dead_and_cleaned_up() {
    let mcr = Mcr::new("life-stale");
    let kvd = fixture("kvd");
    let port = free_port();
    let inst = mcr.start("k", &kvd, &["--port", &port.to_string()]);
    let sup = inst.supervisor_pid();
    assert_eq!(inst.status()["supervisor_pid"].as_i64(), Some(sup as i64));
    // Its init (PID 1 of the namespace): a killed supervisor alone is replaced.
    let init = mcr_procfs::stat::read(sup).unwrap().ppid;
    kill(init, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || !alive(sup) && !alive(init)), "the instance did not die");

    let out = mcr.run(&["status", "k"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("no running instance"), "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    assert!(mcr.instance_files().is_empty(), "stale files not removed: {:?}", mcr.runtime_files());
    // Asked again: still a clear answer.
    let out = mcr.run(&["status", "k"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr.contains("no running instance"), "{out}");
    // The server died with its PID namespace.
    let gone = wait_until(Duration::from_secs(5), || host_pids(&kvd, port).is_empty());
    assert!(gone, "kvd still running after its supervisor was killed");
    // The name can be used again.
    let port2 = free_port();
    let again = mcr.start("k", &kvd, &["--port", &port2.to_string()]);
    assert_eq!(Client::connect(port2).request("PING"), "PONG");
    drop(again);
}

#[test]
fn stop_ends_the_server_and_frees_the_port_and_files() {
    let mcr = Mcr::new("life-stop");
    let kvd = fixture("kvd");
    let port = free_port();
    let inst = mcr.start("k", &kvd, &["--port", &port.to_string()]);
    let pid = host_pid(&kvd, port);
    let sup = inst.supervisor_pid();
    let out = inst.stop();
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("stopped"), "{out}");
    assert!(!alive(pid), "kvd still running");
    assert!(wait_until(Duration::from_secs(5), || !alive(sup)), "supervisor still running");
    assert!(port_free(port), "port {port} still in use after mcr stop");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());
    let out = mcr.run(&["status", "k"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr.contains("no running instance"), "{out}");
    // Stopping a stopped instance is an error, not a hang.
    let out = mcr.run(&["stop", "k", "--timeout", "3"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("no running instance"), "{out}");
}

#[test]
fn stop_kills_a_server_that_ignores_sigterm() {
    let mcr = Mcr::new("life-stop-kill");
    // A shell that ignores SIGTERM and waits on kvd (which it starts in the background
    // with SIGTERM ignored too).
    let kvd = fixture("kvd");
    let port = free_port();
    let script = mcr.tmp.join("stubborn.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntrap '' TERM\n{} --port {port} &\nwait\n", kvd.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut run = foreground(&mcr, "stubborn", &script, &[]);
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    let pid = host_pid(&kvd, port);
    let t0 = std::time::Instant::now();
    let out = mcr.run(&["stop", "stubborn", "--timeout", "1"]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(t0.elapsed() < Duration::from_secs(8), "mcr stop --timeout 1 took {:?}", t0.elapsed());
    assert!(!alive(pid), "kvd survived mcr stop");
    let out = run.wait(EXIT_WAIT, "foreground mcr run after mcr stop");
    assert_ne!(out.code(), 0, "the shell was killed, so mcr run should not report success: {out}");
}

#[test]
fn stop_of_a_quiesced_instance_shuts_the_server_down_cleanly() {
    let mcr = Mcr::new("life-stop-quiesced");
    let kvd = fixture("kvd");
    let port = free_port();
    let pidfile = mcr.tmp.join("kvd.pid");
    let inst = mcr.start("k", &kvd, &["--port", &port.to_string(), "--pidfile", pidfile.to_str().unwrap()]);
    assert_eq!(inst.quiesce(1000).code(), 0);
    assert_all_parked(&inst.status(), 1, 1);
    let t0 = std::time::Instant::now();
    let out = inst.stop();
    assert_eq!(out.code(), 0, "{out}");
    // Well within the 3 s grace period, and by kvd's own SIGTERM handling (it removes
    // its pidfile), not by the SIGKILL after the grace period.
    assert!(t0.elapsed() < Duration::from_secs(3), "mcr stop of a quiesced kvd took {:?}", t0.elapsed());
    assert!(!pidfile.exists(), "kvd did not shut down cleanly (pidfile left)");
    assert!(host_pids(&kvd, port).is_empty(), "kvd still running");
    assert!(inst.log().contains("shutting down"), "{}", inst.log());
}
