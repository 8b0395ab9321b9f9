//! `mcr ctl NAME quiesce` / `resume` on every kind of server: all threads of all processes
//! park, requests wait (and are not lost) while quiesced, and repeated quiesce/resume
//! cycles under load make no request fail.

mod support;

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

/// How long a request must stay unanswered while the server is quiesced.
const HELD: Duration = Duration::from_millis(300);
/// Load duration and quiesce/resume cycles during it.
const LOAD_TIME: Duration = Duration::from_secs(3);
const CYCLES: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    /// The fixtures' line protocol (PING → PONG).
    Line,
    /// HTTP GET /status → 200 "ok".
    Http,
}

/// `mcr ctl NAME quiesce --json` succeeds and `status --json` then shows every thread of
/// every process parked.
fn quiesce_and_check_parked(inst: &Instance, min_procs: usize, min_threads: usize) -> Value {
    let out = inst.mcr.run(&["ctl", &inst.name, "quiesce", "--json"]);
    assert_eq!(out.code(), 0, "quiesce failed: {out}");
    let reply: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("quiesce --json: {e}: {out}"));
    assert_eq!(reply["response"], "quiesced", "{reply:#}");
    let st = inst.status();
    assert_all_parked(&st, min_procs, min_threads);
    assert_eq!(
        reply["processes"].as_u64(),
        Some(processes(&st).len() as u64),
        "quiesce reply vs status: {reply:#} {st:#}"
    );
    assert_eq!(reply["threads"].as_u64(), Some(thread_count(&st) as u64), "quiesce reply vs status: {reply:#} {st:#}");
    let text = inst.mcr.run(&["status", &inst.name]).ok();
    assert!(text.stdout.contains("state quiesced"), "{text}");
    st
}

fn resume_ok(inst: &Instance) {
    let out = inst.resume();
    assert_eq!(out.code(), 0, "resume failed: {out}");
    let st = inst.status();
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    // A woken thread says it left its parking place once it runs: on a loaded machine
    // that may be a moment after the resume's answer.
    let unparked = || threads(&inst.status()).iter().all(|(_, t)| t["state"] != "parked");
    if !wait_until(Duration::from_secs(10), unparked) {
        panic!("a thread still parked 10 s after resume: {:#}", inst.status());
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A line request on a fresh connection gets no answer while quiesced, and the right one
/// right after resume.
fn line_request_held_until_resume(inst: &Instance, port: u16, sessions: &mut [Client]) {
    let mut fresh = Client::connect(port);
    fresh.send("PING").unwrap();
    for s in sessions.iter_mut() {
        s.send("PING").unwrap();
    }
    match fresh.read_line_timeout(HELD) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("a request to quiesced '{}' was answered: {other:?}", inst.name),
    }
    for s in sessions.iter_mut() {
        match s.read_line_timeout(Duration::from_millis(20)) {
            Err(e) if is_timeout(&e) => {}
            other => panic!("a request on an open session of quiesced '{}' was answered: {other:?}", inst.name),
        }
    }
    resume_ok(inst);
    let t0 = Instant::now();
    assert_eq!(fresh.read_line_timeout(Duration::from_secs(5)).expect("no answer after resume"), "PONG");
    for s in sessions.iter_mut() {
        assert_eq!(s.read_line_timeout(Duration::from_secs(5)).expect("no answer on a session after resume"), "PONG");
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "answers came {:?} after resume", t0.elapsed());
}

/// An HTTP request gets no answer while quiesced, and a 200 right after resume.
fn http_request_held_until_resume(inst: &Instance, port: u16) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to quiesced nginx");
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    s.set_read_timeout(Some(HELD)).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("an HTTP request to quiesced nginx was answered: {other:?}"),
    }
    resume_ok(inst);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("no HTTP answer after resume");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nok\n"), "{text:?}");
}

fn one_request(proto: Proto, port: u16) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    match proto {
        Proto::Line => ping_once(port, timeout),
        Proto::Http => match http_get(port, "/status", timeout)? {
            (200, body) if body == "ok\n" => Ok(()),
            other => Err(format!("HTTP answer {other:?}")),
        },
    }
}

/// `clients` threads do connect/request/close for LOAD_TIME while another thread runs
/// CYCLES quiesce/resume cycles: no request fails and every cycle succeeds.
fn no_failures_under_quiesce_cycles(inst: &Instance, port: u16, proto: Proto, clients: usize) {
    let ok = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let errors = Mutex::new(Vec::<String>::new());
    let done = AtomicBool::new(false);
    let cycle_errors = Mutex::new(Vec::<String>::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                // Bounded: by time, and by count.
                for _ in 0..200_000 {
                    if t0.elapsed() >= LOAD_TIME {
                        break;
                    }
                    match one_request(proto, port) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            // Keep the load steady but bounded (and the number of
                            // TIME_WAIT sockets reasonable).
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut v = errors.lock().unwrap();
                            if v.len() < 10 {
                                v.push(format!("{:?}: {e}", t0.elapsed()));
                            }
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            let spacing = LOAD_TIME.mul_f64(0.8) / CYCLES as u32;
            for i in 0..CYCLES {
                let start = Instant::now();
                let q = inst.quiesce(2000);
                if !q.success() {
                    cycle_errors.lock().unwrap().push(format!("cycle {i} quiesce: {q}"));
                }
                std::thread::sleep(Duration::from_millis(30));
                let r = inst.resume();
                if !r.success() {
                    cycle_errors.lock().unwrap().push(format!("cycle {i} resume: {r}"));
                }
                if let Some(rest) = spacing.checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            done.store(true, Ordering::SeqCst);
        });
    });
    assert!(done.load(Ordering::SeqCst));
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{}: {ok} requests succeeded, {failed} failed during {CYCLES} quiesce/resume cycles", inst.name);
    let cycle_errors = cycle_errors.into_inner().unwrap();
    assert!(cycle_errors.is_empty(), "quiesce/resume under load failed:\n{}", cycle_errors.join("\n"));
    assert_eq!(
        failed,
        0,
        "{failed} requests failed ({ok} succeeded); first errors:\n{}",
        errors.into_inner().unwrap().join("\n")
    );
    assert!(ok > 0, "no request succeeded");
    // And the server is still fine and running normally afterwards.
    let st = inst.status();
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    one_request(proto, port).expect("request after the load");
}

#[test]
fn kvd_quiesces_holds_requests_and_survives_cycles_under_load() {
    let mcr = Mcr::new("q-kvd");
    let port = free_port();
    let inst = mcr.start("kvd", &fixture("kvd"), &["--port", &port.to_string()]);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    drop(c);

    let st = quiesce_and_check_parked(&inst, 1, 1);
    assert_eq!(threads(&st)[0].1["call"], "epoll_wait", "{st:#}");
    line_request_held_until_resume(&inst, port, &mut []);
    // State survived.
    assert_eq!(Client::connect(port).request("GET a"), "VALUE 1");
    no_failures_under_quiesce_cycles(&inst, port, Proto::Line, 4);
}

#[test]
fn poold_quiesces_holds_requests_and_survives_cycles_under_load() {
    let mcr = Mcr::new("q-poold");
    let port = free_port();
    let inst = mcr.start("poold", &fixture("poold"), &["--port", &port.to_string(), "--threads", "3"]);
    assert_eq!(Client::connect(port).request("INCR"), "VALUE 1");

    let st = quiesce_and_check_parked(&inst, 1, 4);
    let calls: Vec<&str> = threads(&st).iter().filter_map(|(_, t)| t["call"].as_str()).collect();
    assert_eq!(calls.iter().filter(|c| **c == "accept").count(), 1, "{st:#}");
    line_request_held_until_resume(&inst, port, &mut []);
    assert_eq!(Client::connect(port).request("GET"), "VALUE 1");
    // At most 3 clients at once: poold serves --threads connections concurrently.
    no_failures_under_quiesce_cycles(&inst, port, Proto::Line, 3);
}

#[test]
fn forkd_quiesces_holds_requests_and_survives_cycles_under_load() {
    let mcr = Mcr::new("q-forkd");
    let port = free_port();
    let inst = mcr.start("forkd", &fixture("forkd"), &["--port", &port.to_string(), "--workers", "2"]);
    assert_eq!(Client::connect(port).request("PING"), "PONG");

    let st = quiesce_and_check_parked(&inst, 3, 3);
    assert_eq!(processes(&st).len(), 3, "master + 2 workers: {st:#}");
    line_request_held_until_resume(&inst, port, &mut []);
    no_failures_under_quiesce_cycles(&inst, port, Proto::Line, 4);
    // No worker died on the way.
    let st = inst.status();
    assert_eq!(processes(&st).len(), 3, "{st:#}");
    assert!(!inst.log().contains("killed by signal"), "{}", inst.log());
}

#[test]
fn connd_quiesces_with_open_sessions_and_survives_cycles_under_load() {
    let mcr = Mcr::new("q-connd");
    let port = free_port();
    let inst = mcr.start("connd", &fixture("connd"), &["--port", &port.to_string()]);
    // Two open sessions, so the master has two children.
    let mut sessions = vec![Client::connect(port), Client::connect(port)];
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(s.request(&format!("SET who session{i}")), "OK");
    }
    let ok = wait_until(Duration::from_secs(5), || processes(&inst.status()).len() == 3);
    assert!(ok, "expected master + 2 session children: {:#}", inst.status());

    quiesce_and_check_parked(&inst, 3, 3);
    line_request_held_until_resume(&inst, port, &mut sessions);
    // The sessions kept their state.
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(s.request("GET who"), format!("VALUE session{i}"));
    }
    no_failures_under_quiesce_cycles(&inst, port, Proto::Line, 4);
    for s in sessions.iter_mut() {
        assert_eq!(s.request("STATS"), "STATS sessions=4");
    }
}

#[test]
fn nginx_quiesces_holds_requests_and_survives_cycles_under_load() {
    let nginx = nginx_bin("nginx_quiesces_holds_requests_and_survives_cycles_under_load");
    let mcr = Mcr::new("q-nginx");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let inst =
        mcr.start("nginx", &nginx, &[std::ffi::OsStr::new("-p"), prefix.as_os_str(), "-c".as_ref(), conf.as_os_str()]);
    assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));

    let st = quiesce_and_check_parked(&inst, 3, 3);
    assert_eq!(processes(&st).len(), 3, "master + 2 workers: {st:#}");
    http_request_held_until_resume(&inst, port);
    no_failures_under_quiesce_cycles(&inst, port, Proto::Http, 4);
}
