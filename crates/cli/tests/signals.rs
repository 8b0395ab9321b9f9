//! Signals reach a server under mcr exactly as they would without it: handlers run,
//! blocking calls are interrupted with EINTR, timeouts still fire, nginx still reloads.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// kvd started directly, without mcr (killed on drop).
fn native_kvd(mcr: &Mcr, port: u16) -> Spawned {
    let mut cmd = Command::new(fixture("kvd"));
    cmd.args(["--port", &port.to_string()]);
    let s = Spawned::spawn(cmd, &mcr.tmp.path);
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    s
}

fn stats(c: &mut Client) -> std::collections::HashMap<String, u64> {
    parse_stats(&c.request("STATS"))
}

/// Sends SIGHUP to an idle kvd: its handler runs once per signal, and epoll_wait returns
/// EINTR when the signal lands in it. kvd wakes every 100 ms (its tick), so a signal can
/// land between two waits, with or without mcr: up to 5 signals are sent until one
/// interrupts a wait (each counted exactly once; an interrupted wait at most once).
fn sighup_counts_once(pid: i32, port: u16, who: &str) {
    let mut c = Client::connect(port);
    for attempt in 1..=5 {
        let before = stats(&mut c);
        // Let kvd get back into epoll_wait after answering (see fixtures/README.md).
        assert!(wait_in_syscall(pid, &EPOLL_SYSCALLS), "{who}: kvd is not sleeping in epoll_wait");
        kill(pid, libc::SIGHUP);
        assert!(wait_signal_delivered(pid, libc::SIGHUP), "{who}: SIGHUP is still pending after 5 s");
        // Delivered; its handler and the interrupted epoll_wait count it soon after.
        let mut after = stats(&mut c);
        wait_until(Duration::from_secs(2), || {
            after = stats(&mut c);
            after["hups"] > before["hups"] && after["eintr"] > before["eintr"]
        });
        assert_eq!(after["hups"], before["hups"] + 1, "{who}: hups {before:?} -> {after:?}");
        assert!(after["eintr"] <= before["eintr"] + 1, "{who}: eintr {before:?} -> {after:?}");
        assert_eq!(after["keys"], before["keys"], "{who}");
        if after["eintr"] == before["eintr"] + 1 {
            return;
        }
        eprintln!("{who}: SIGHUP {attempt} landed between two waits; again");
    }
    panic!("{who}: no SIGHUP of 5 interrupted epoll_wait");
}

#[test]
fn kvd_sighup_counts_hups_and_eintr_as_without_mcr() {
    let mcr = Mcr::new("sig-hup");
    let kvd = fixture("kvd");

    // Without mcr: the reference behaviour.
    let native_port = free_port();
    let native = native_kvd(&mcr, native_port);
    sighup_counts_once(native.pid(), native_port, "kvd without mcr");
    sighup_counts_once(native.pid(), native_port, "kvd without mcr, second SIGHUP");

    // Under mcr: the same.
    let port = free_port();
    let inst = mcr.start("kvd", &kvd, &["--port", &port.to_string()]);
    let pid = host_pid(&kvd, port);
    sighup_counts_once(pid, port, "kvd under mcr");
    sighup_counts_once(pid, port, "kvd under mcr, second SIGHUP");
    // Still a normal, running instance.
    let st = inst.status();
    assert_eq!(st["quiesced"], Value::Bool(false), "{st:#}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
}

#[test]
fn kvd_sighup_while_quiesced_is_handled_and_interrupts_epoll_after_resume() {
    let mcr = Mcr::new("sig-quiesced");
    let kvd = fixture("kvd");
    let port = free_port();
    let inst = mcr.start("kvd", &kvd, &["--port", &port.to_string()]);
    let pid = host_pid(&kvd, port);
    let mut c = Client::connect(port);
    let before = stats(&mut c);
    assert!(wait_in_syscall(pid, &EPOLL_SYSCALLS), "kvd is not sleeping in epoll_wait");

    let q = inst.quiesce(1000);
    assert_eq!(q.code(), 0, "{q}");
    kill(pid, libc::SIGHUP);
    // The signal does not wake the server out of quiescence: no condition to wait for,
    // only time for a wrong wake-up to happen.
    std::thread::sleep(Duration::from_millis(150));
    let st = inst.status();
    assert_all_parked(&st, 1, 1);
    let r = inst.resume();
    assert_eq!(r.code(), 0, "{r}");
    assert!(wait_signal_delivered(pid, libc::SIGHUP), "SIGHUP still pending 5 s after resume");
    let mut after = stats(&mut c);
    wait_until(Duration::from_secs(5), || {
        after = stats(&mut c);
        after["hups"] > before["hups"] && after["eintr"] > before["eintr"]
    });

    assert_eq!(after["hups"], before["hups"] + 1, "SIGHUP sent while quiesced: {before:?} -> {after:?}");
    assert_eq!(
        after["eintr"],
        before["eintr"] + 1,
        "epoll_wait should report EINTR for the SIGHUP that arrived while quiesced: {before:?} -> {after:?}"
    );
    // And signals after that behave normally again.
    sighup_counts_once(pid, port, "kvd under mcr after a quiesce/resume");
}

/// Ticks counted by each server over the same `interval` (both idle).
fn ticks_over(ports: &[u16], interval: Duration) -> Vec<u64> {
    let mut clients: Vec<Client> = ports.iter().map(|&p| Client::connect(p)).collect();
    let before: Vec<u64> = clients.iter_mut().map(|c| stats(c)["ticks"]).collect();
    std::thread::sleep(interval);
    clients.iter_mut().zip(before).map(|(c, b)| stats(c)["ticks"] - b).collect()
}

#[test]
fn kvd_epoll_timeout_fires_under_mcr_also_after_quiesce_resume() {
    let mcr = Mcr::new("sig-ticks");
    let kvd = fixture("kvd");
    let native_port = free_port();
    let _native = native_kvd(&mcr, native_port);
    let port = free_port();
    let inst = mcr.start("kvd", &kvd, &["--port", &port.to_string()]);

    let interval = Duration::from_millis(1500);
    let t = ticks_over(&[native_port, port], interval);
    let (native, managed) = (t[0], t[1]);
    assert!(native >= 3, "kvd without mcr counted only {native} ticks in {interval:?}");
    assert!(
        managed * 2 >= native,
        "kvd under mcr counted {managed} ticks, without mcr {native}, over the same {interval:?}"
    );

    // A few quiesce/resume cycles, then the timeout must still fire.
    for _ in 0..3 {
        assert_eq!(inst.quiesce(1000).code(), 0);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(inst.resume().code(), 0);
    }
    let t = ticks_over(&[native_port, port], interval);
    let (native, managed) = (t[0], t[1]);
    assert!(native >= 3, "kvd without mcr counted only {native} ticks in {interval:?}");
    assert!(
        managed * 2 >= native,
        "after quiesce/resume, kvd under mcr counted {managed} ticks, without mcr {native}, over the same {interval:?}"
    );
}

/// PIDs (inside the namespace) of the nginx workers in a status.
fn nginx_workers(st: &Value) -> Vec<i64> {
    let main = st["main_pid"].as_i64().unwrap_or(-1);
    let mut v: Vec<i64> =
        processes(st).iter().filter(|p| p["ppid"].as_i64() == Some(main)).filter_map(|p| p["pid"].as_i64()).collect();
    v.sort();
    v
}

fn nginx_master_host_pid(prefix: &Path) -> i32 {
    let needle = prefix.to_string_lossy().into_owned();
    let masters: Vec<i32> = host_pids_containing(&needle)
        .into_iter()
        .filter(|&p| cmdline(p).is_some_and(|a| a[0].starts_with("nginx: master process")))
        .collect();
    assert_eq!(masters.len(), 1, "expected one nginx master for {needle}: {masters:?}");
    masters[0]
}

#[test]
fn nginx_reloads_on_sighup_under_mcr() {
    let nginx = nginx_bin("nginx_reloads_on_sighup_under_mcr");
    let mcr = Mcr::new("sig-nginx");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let inst =
        mcr.start("nginx", &nginx, &[std::ffi::OsStr::new("-p"), prefix.as_os_str(), "-c".as_ref(), conf.as_os_str()]);
    assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));

    let st = inst.status();
    let old = nginx_workers(&st);
    assert_eq!(old.len(), 2, "{st:#}");
    let master = nginx_master_host_pid(&prefix);
    kill(master, libc::SIGHUP);

    // New workers replace the old ones.
    let t0 = Instant::now();
    let mut st = inst.status();
    while t0.elapsed() < Duration::from_secs(10) {
        let now = nginx_workers(&st);
        if now.len() == 2 && now.iter().all(|p| !old.contains(p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        st = inst.status();
    }
    let new = nginx_workers(&st);
    assert_eq!(new.len(), 2, "after SIGHUP: {st:#}");
    assert!(new.iter().all(|p| !old.contains(p)), "worker PIDs did not change on SIGHUP: {old:?} -> {new:?}");
    assert_eq!(
        http_get(port, "/status", Duration::from_secs(5)).expect("GET /status after reload"),
        (200, "ok\n".to_string())
    );
    let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
    assert!(log.contains("reconfiguring"), "nginx's error.log shows no reload:\n{log}");

    // The reloaded server is fully managed: it quiesces and resumes.
    let ok = wait_until(Duration::from_secs(5), || {
        processes(&inst.status()).iter().all(|p| p["startup_complete"] == Value::Bool(true))
    });
    assert!(ok, "new workers never completed startup: {:#}", inst.status());
    let q = inst.quiesce(2000);
    assert_eq!(q.code(), 0, "quiesce after reload: {q}");
    assert_all_parked(&inst.status(), 3, 3);
    assert_eq!(inst.resume().code(), 0);
    assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));
}
