//! `mcr run` as the main process of a systemd `Type=notify` unit, without systemd: the
//! test binds the notification socket itself (as systemd does, `$NOTIFY_SOCKET`) and reads
//! what mcr says: `READY=1` once the server listens, `STATUS=` with each version a live
//! update brings, and mcr stays the main process across updates until the server ends.
//! The server never sees `NOTIFY_SOCKET`.

mod support;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};
use support::*;

/// The next datagram, within `timeout`.
fn next(rx: &UnixDatagram, timeout: Duration) -> Option<String> {
    rx.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Datagrams until one has a `STATUS=` line containing `what` (bounded).
fn status_containing(rx: &UnixDatagram, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(m) = next(rx, left) else { break };
        if m.lines().any(|l| l.starts_with("STATUS=") && l.contains(what)) {
            return m;
        }
        seen.push(m);
    }
    panic!("no STATUS= with {what:?}; got {seen:?}");
}

fn environment(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

fn follows_updates_with(mcr: &Mcr, rx: &UnixDatagram, notify_socket: &str) {
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let mut cmd = mcr.command(&["run", "--name", "kvd", "--", v1.to_str().unwrap(), "--port", &port.to_string()]);
    cmd.env("NOTIFY_SOCKET", notify_socket);
    let mut run = Spawned::spawn(cmd, &mcr.tmp.path);
    let _guard = mcr.guard("kvd");

    // The first message says ready, and by then the server listens.
    let ready = next(rx, Duration::from_secs(10)).unwrap_or_else(|| panic!("no READY=1: {}", run.stderr_text()));
    let listening = port_open(port);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(listening, "READY=1 came before the server listened: {ready:?}");
    assert!(ready.contains(&format!("MAINPID={}", run.pid())), "mcr run is the main process: {ready:?}");
    let status = ready.lines().find(|l| l.starts_with("STATUS=")).unwrap_or_else(|| panic!("{ready:?}"));
    assert!(status.contains(v1.canonicalize().unwrap().to_str().unwrap()) && status.contains("(build "), "{status}");
    let server = host_pid(&v1, port);
    assert!(!environment(server).iter().any(|v| v.starts_with("NOTIFY_SOCKET=")), "the server sees NOTIFY_SOCKET");

    // A live update: mcr stays, and says which version runs now.
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET kept yes"), "OK");
    let out = update(mcr, "kvd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}");
    status_containing(rx, "kvd-v2");
    assert!(run.try_wait().is_none(), "mcr run exited after the update: {}", run.stderr_text());
    assert_eq!(c.request("GET kept"), "VALUE yes");
    let server = host_pid(&v2, port);
    assert!(!environment(server).iter().any(|v| v.starts_with("NOTIFY_SOCKET=")), "the new version sees it");

    // A second update (no report pipe links mcr run to this version): seen too.
    let out = update(mcr, "kvd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}");
    let status = status_containing(rx, "fixtures/kvd ");
    assert!(!status.contains("kvd-v2"), "{status}");
    assert!(run.try_wait().is_none(), "mcr run exited after the second update: {}", run.stderr_text());

    // Stopping the instance ends mcr run.
    mcr.run(&["stop", "kvd", "--timeout", "3"]).ok();
    let out = run.wait(Duration::from_secs(10), "mcr run after the stop");
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("'kvd' ended"), "{out}");
}

#[test]
fn mcr_run_notifies_ready_and_each_version_on_a_socket_path() {
    let mcr = Mcr::new("notify-path");
    let path = mcr.tmp.join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    follows_updates_with(&mcr, &rx, path.to_str().unwrap());
}

#[test]
fn mcr_run_notifies_on_an_abstract_socket() {
    let mcr = Mcr::new("notify-abstract");
    let name = format!("mcr-test-notify-{}", std::process::id());
    let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    follows_updates_with(&mcr, &rx, &format!("@{name}"));
}

#[test]
fn without_notify_socket_mcr_run_leaves_after_an_update_as_before() {
    let mcr = Mcr::new("notify-none");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let v1 = fixture("kvd");
    let mut run = mcr.spawn(&["run", "--name", "kvd", "--", v1.to_str().unwrap(), "--port", &port.to_string()]);
    let _guard = mcr.guard("kvd");
    // Startup first: a client connecting before kvd's first wait would be served within
    // its startup (a wait that returns at once ends no startup), and its count then read
    // as a value startup computed, which the next startup computes differently (a rollback).
    // (Asked once its control socket exists: the instance's lock is held by then.)
    let socket = mcr.runtime_dir.join("kvd.sock");
    wait_for(Duration::from_secs(10), "the instance's control socket", || socket.exists());
    wait_for(Duration::from_secs(10), "startup completed", || mcr.status("kvd")["started"] == true);
    wait_for(Duration::from_secs(10), "kvd listening", || port_open(port));
    let updated = update(&mcr, "kvd", &[], &fixture("kvd-v2"), &args);
    assert_eq!(updated.code(), 0, "{updated}");
    let out = run.wait(Duration::from_secs(10), "mcr run after the update");
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("the new version runs detached"), "{out}");
}
