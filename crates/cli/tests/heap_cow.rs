//! Issue 13, "adoption, not copying": the new version maps the old version's heap
//! copy-on-write from the old process's memfds instead of copying its pages, and at commit
//! writes what it changed back into them and maps them shared again (so the memory is held
//! once, and the next update maps it again). Segments a fork froze (copy-on-write in the
//! old process, which its children map too) are mapped copy-on-write as well and never
//! written back. Real processes, through the real `mcr` binary.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// mcr's heap window (mcr-alloc's WINDOW_BASE..WINDOW_END).
const WINDOW: std::ops::Range<u64> = 0x1000_0000_0000..0x2000_0000_0000;

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// The heap memfd mappings of process `pid`: (start, inode, shared).
fn heap_memfds(pid: i32) -> Vec<(u64, u64, bool)> {
    let maps = mcr_procfs::maps::read(pid).unwrap_or_else(|e| panic!("maps of {pid}: {e}"));
    maps.iter()
        .filter(|m| WINDOW.contains(&m.start) && m.path.starts_with("/memfd:mcr-heap"))
        .map(|m| (m.start, m.inode, !m.private))
        .collect()
}

/// No heap memfd is mapped shared by one process while another maps it at all: a shared
/// mapping's writes would show in the other process (a fork freezes the heap for that,
/// and a commit writes back only into memfds the old process alone mapped).
fn assert_no_memfd_shared_across(pids: &[i32], when: &str) {
    let mut mappers: BTreeMap<u64, Vec<(i32, bool)>> = BTreeMap::new();
    for &pid in pids {
        for (_, inode, shared) in heap_memfds(pid) {
            let m = mappers.entry(inode).or_default();
            if !m.contains(&(pid, shared)) {
                m.push((pid, shared));
            }
        }
    }
    for (inode, m) in mappers {
        let processes: std::collections::BTreeSet<i32> = m.iter().map(|(p, _)| *p).collect();
        assert!(
            !(m.iter().any(|(_, shared)| *shared) && processes.len() > 1),
            "{when}: heap memfd {inode} is mapped shared by one process and by others too: {m:?}"
        );
    }
}

/// The transfer figures of a committed update's outcome.
fn heap_figures(outcome: &Value) -> (u64, u64, u64) {
    let t = &outcome["transfer"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("transfer.{k} missing: {outcome:#}"));
    (n("heap_regions_adopted"), n("heap_bytes_mapped"), n("heap_bytes_adopted"))
}

/// The one server process of `program` on `port` (waiting for it to appear).
fn server_of(program: &Path, port: u16) -> i32 {
    let mut found = Vec::new();
    wait_until(Duration::from_secs(10), || {
        found = host_pids_running(program, port);
        found.len() == 1
    });
    assert_eq!(found.len(), 1, "expected one {} process, found {found:?}", program.display());
    found[0]
}

const KEYS: usize = 30_000;

fn value_of(i: usize, round: usize) -> String {
    // Rewritten every 7th key per round: the new version writes the adopted memory.
    let r = if i.is_multiple_of(7) { round } else { 0 };
    format!("v{i}-{r}-{}", "x".repeat(i % 40))
}

/// Every key holds its value of `round`, the keys added by earlier rounds too.
fn assert_every_key(port: u16, round: usize, when: &str) {
    let mut c = Client::connect(port);
    let got = pipelined(&mut c, (0..KEYS).map(|i| format!("GET k{i}")));
    for (i, reply) in got.iter().enumerate() {
        assert_eq!(reply, &format!("VALUE {}", value_of(i, round)), "k{i} {when}");
    }
    let added = pipelined(&mut c, (0..round).map(|r| format!("GET added{r}")));
    for (r, reply) in added.iter().enumerate() {
        assert_eq!(reply, &format!("VALUE round {r}"), "added{r} {when}");
    }
    assert_eq!(c.request("COUNT"), format!("COUNT {}", KEYS + round), "{when}");
}

/// (a) kvd filled with keys, updated to kvd-v2 and back three times, the keys rewritten in
/// part after each update: every key intact each time, every update maps the heap (from
/// memfds the previous version shared again at its commit) rather than copies it, and after
/// each commit the new process maps the adopted regions shared, from the same memfds the
/// old process had (held once).
#[test]
fn kvd_heap_is_mapped_not_copied_across_updates_and_shared_again_at_commit() {
    let mcr = Mcr::new("cow-kvd");
    let port = free_port();
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let _inst = mcr.start("kvd", &v1, &port_args(port));
    let mut c = Client::connect(port);
    let set = pipelined(&mut c, (0..KEYS).map(|i| format!("SET k{i} {}", value_of(i, 0))));
    assert!(set.iter().all(|r| r == "OK"), "a SET failed: {:?}", set.iter().find(|r| *r != "OK"));
    drop(c);
    let mut program = v1.clone();
    for round in 1..=3 {
        let old = server_of(&program, port);
        let old_memfds = heap_memfds(old);
        assert!(
            !old_memfds.is_empty() && old_memfds.iter().all(|(_, _, shared)| *shared),
            "round {round}: the old heap is not in shared memfds: {old_memfds:x?}"
        );
        program = if round % 2 == 1 { v2.clone() } else { v1.clone() };
        let (out, outcome) = update_json(&mcr, "kvd", &[], &program, &port_args(port));
        assert_eq!(out.code(), 0, "round {round}: the update did not commit: {out}");
        let (regions, mapped, copied) = heap_figures(&outcome);
        eprintln!("round {round}: {regions} regions adopted, {mapped} bytes mapped, {copied} copied");
        assert!(regions >= 1, "round {round}: nothing adopted: {outcome:#}");
        // The heap holds a few megabytes; all of it was in shared memfds: nothing to copy.
        assert!(mapped >= 1 << 20, "round {round}: {mapped} bytes mapped: {outcome:#}");
        assert!(copied * 50 <= mapped, "round {round}: {copied} bytes copied, {mapped} mapped: {outcome:#}");

        // (Dirty tracking splits the old process's mappings where it registered the used
        // part: compared by memfd, not by mapping.)
        let new = server_of(&program, port);
        let new_memfds = heap_memfds(new);
        let shared_again = |inode: u64| {
            let of_it: Vec<_> = new_memfds.iter().filter(|(_, i, _)| *i == inode).collect();
            !of_it.is_empty() && of_it.iter().all(|(_, _, shared)| *shared)
        };
        let unshared: Vec<u64> = old_memfds.iter().map(|(_, i, _)| *i).filter(|&i| !shared_again(i)).collect();
        assert!(
            unshared.is_empty(),
            "round {round}: after the commit the new process does not map the old heap's memfds {unshared:?} \
             shared\nold: {old_memfds:x?}\nnew: {new_memfds:x?}"
        );
        assert_every_key(port, round - 1, &format!("after update {round}"));

        // The new version writes the adopted memory (rewritten values, one key more): the
        // next update must see it.
        let mut c = Client::connect(port);
        let set = pipelined(&mut c, (0..KEYS).step_by(7).map(|i| format!("SET k{i} {}", value_of(i, round))));
        assert!(set.iter().all(|r| r == "OK"), "round {round}: a SET failed");
        assert_eq!(c.request(&format!("SET added{} round {}", round - 1, round - 1)), "OK");
        drop(c);
        assert_every_key(port, round, &format!("after the writes of round {round}"));
    }
}

// (b) Rollback at every phase of an update leaves the old version's heap as it was: the
// same live blocks, byte for byte, in the memfds it maps shared, and the old process
// serving every key. One case per phase and kind of update:
// - before a new version exists (after the drain, after the quiesce), the fault is
//   `mcr update` killed where it pauses: the old supervisor resumes its version when the
//   update's connection closes;
// - once one exists (launched and replaying its startup, its state transferred, at the
//   commit before its point, while the old version retires), the new version's server
//   killed: the update or the new supervisor gives up and the old version resumes. From
//   the transfer on, the new process maps the old heap's memfds copy-on-write (checked
//   before it is killed) and writes there: a layout update rewrites every block the trace
//   reaches, most in place; a code-only one leaves every block where and as it is (the
//   two paths through the adoption).
//
// `retiring` is a case because it is before the commit point: the old version was asked
// to retire (parked for good) but not released yet. The new supervisor checks its
// processes again after that pause before it releases the old version
// (crates/supervisor/src/commit.rs), and a retiring old version whose new version's link
// closes before the release resumes (crates/supervisor/src/handover.rs, `closed`); the
// update, whose commit got no answer, asks the old version, which says it resumed
// (crates/update/src/machine.rs, `settle`). Not a case: the new version killed right
// after the commit point (`committed`): the old version was released there (its processes
// killed), nothing can roll back, and the server is lost as it would be outside an update
// (crates/cli/tests/faults.rs, `new_server_killed_right_after_the_commit_point`).
//
// After each: `mcr list` and `mcr status` find the instance, run by the old version's
// supervisor, and the same update then commits, mapping the heap from the same memfds
// again (not copying it), with every key intact.

/// The fault injected where the update pauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `mcr update` killed (SIGKILL) where it pauses: before a new version exists.
    UpdateKilled,
    /// The new version's server process killed (SIGKILL).
    NewServerKilled,
}

/// Whether an instance's supervisor holds its lock.
fn live(mcr: &Mcr, name: &str) -> bool {
    let dir = mcr_protocol::InstanceDir { path: mcr.runtime_dir.clone() };
    dir.files(name).is_ok_and(|f| f.is_live())
}

/// How two snapshots of a heap (live blocks by address, with their bytes) differ, block by
/// block: empty when they are identical.
fn heap_differences(before: &[(u64, Vec<u8>)], after: &[(u64, Vec<u8>)]) -> Vec<String> {
    let before_by_addr: BTreeMap<u64, &Vec<u8>> = before.iter().map(|(a, b)| (*a, b)).collect();
    let after_by_addr: BTreeMap<u64, &Vec<u8>> = after.iter().map(|(a, b)| (*a, b)).collect();
    let mut out = Vec::new();
    for (addr, was) in &before_by_addr {
        match after_by_addr.get(addr) {
            None => out.push(format!("{addr:#x} ({} bytes): no longer live", was.len())),
            Some(now) if now.len() != was.len() => {
                out.push(format!("{addr:#x}: {} bytes before, {} after", was.len(), now.len()))
            }
            Some(now) => {
                let Some(first) = was.iter().zip(now.iter()).position(|(a, b)| a != b) else { continue };
                let end = (first + 16).min(was.len());
                out.push(format!(
                    "{addr:#x} ({} bytes): from byte {first}: {:02x?} before, {:02x?} after",
                    was.len(),
                    &was[first..end],
                    &now[first..end]
                ))
            }
        }
    }
    for (addr, now) in &after_by_addr {
        if !before_by_addr.contains_key(addr) {
            out.push(format!("{addr:#x} ({} bytes): live after only", now.len()));
        }
    }
    out
}

fn rollback_case(fault: Fault, point: &str, to: &str) {
    use mcr_protocol::test_hook;
    let case = format!("update to {to}, {fault:?} at {point}");
    let mcr = Mcr::new(&format!("cow-rb-{to}-{point}"));
    let pause_dir = mcr.tmp.join("pause");
    std::fs::create_dir_all(&pause_dir).unwrap();
    let port = free_port();
    let (v1, v2) = (fixture("kvd"), fixture(to));
    let inst = mcr.start("kvd", &v1, &port_args(port));
    let _next = mcr.guard("kvd.next");
    // This client stays connected, idle, to the end: a connection that closes frees its
    // blocks whenever the server gets to it.
    let mut c = Client::connect(port);
    let set = pipelined(&mut c, (0..KEYS).map(|i| format!("SET k{i} {}", value_of(i, 0))));
    assert!(set.iter().all(|r| r == "OK"), "{case}: a SET failed");
    let old = server_of(&v1, port);
    let old_supervisor = inst.supervisor_pid();
    let before = heap_at_rest(&mcr, "kvd", old);
    assert!(before.len() >= 2 * KEYS, "{case}: only {} live blocks before the update", before.len());
    let old_memfds = heap_memfds(old);
    assert!(
        !old_memfds.is_empty() && old_memfds.iter().all(|(_, _, shared)| *shared),
        "{case}: the old heap is not in shared memfds: {old_memfds:x?}"
    );
    let old_inodes: std::collections::BTreeSet<u64> = old_memfds.iter().map(|(_, i, _)| *i).collect();

    let mut argv: Vec<std::ffi::OsString> = vec!["update".into(), "kvd".into(), "--json".into(), "--".into()];
    argv.push(v2.clone().into());
    argv.extend(port_args(port).into_iter().map(Into::into));
    let mut cmd = mcr.command(&argv);
    cmd.env(test_hook::PAUSE_AT, point).env(test_hook::PAUSE_DIR, &pause_dir);
    let mut upd = Spawned::spawn(cmd, &mcr.tmp.path);
    let marker = pause_dir.join(format!("{point}.paused"));
    let t = Instant::now();
    while !marker.exists() {
        if let Some(out) = upd.wait_timeout(Duration::ZERO) {
            panic!("{case}: the update ended before its pause: {out}");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{case}: the update did not pause within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    match fault {
        Fault::UpdateKilled => {
            // The update itself holds here (the marker names it). The new version is
            // launched ahead, its server held in its runtime's constructor until the go:
            // nothing of it is bound or listed yet, and it must go with the update.
            let mut paused = String::new();
            wait_until(Duration::from_secs(5), || {
                paused = std::fs::read_to_string(&marker).unwrap_or_default();
                paused.ends_with('\n')
            });
            assert_eq!(paused.trim(), upd.pid().to_string(), "{case}: not the update paused");
            let next_socket = mcr.runtime_dir.join("kvd.next.sock");
            assert!(!next_socket.exists(), "{case}: the new version answers before its go");
            if point == test_hook::point::QUIESCED {
                assert_eq!(inst.status()["quiesced"], Value::Bool(true), "{case}: the old version is not parked");
            }
            kill(upd.pid(), libc::SIGKILL);
        }
        Fault::NewServerKilled => {
            // (While it replays its startup it may not listen yet: found by its executable.)
            let new = server_of(&v2, port);
            // What the test is about: the new process never maps the old memfds shared
            // before the commit point, and from the transfer on it maps them copy-on-write.
            let mapped: Vec<_> = heap_memfds(new).into_iter().filter(|(_, i, _)| old_inodes.contains(i)).collect();
            assert!(
                mapped.iter().all(|(_, _, shared)| !shared),
                "{case}: the new process maps the old heap's memfds shared: {mapped:x?}"
            );
            if point != test_hook::point::RESTARTING {
                assert!(!mapped.is_empty(), "{case}: the new process does not map the old heap's memfds");
            }
            kill(new, libc::SIGKILL);
            wait_for(Duration::from_secs(10), "the new version's server to be gone", || !alive(new));
        }
    }
    let _ = std::fs::remove_file(&marker);
    let out = upd.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| panic!("{case}: the update hangs"));
    assert!(!out.status.success(), "{case}: committed: {out}");
    let why: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    eprintln!("{case}: the update ended with {} ({})", out.status, why["message"]);

    // The old version serves again, with no new version left; nothing but this test's
    // client is connected (the pings' connections closed, their blocks freed).
    let settled = wait_until(Duration::from_secs(20), || {
        host_pids_running(&v2, port).is_empty()
            && !live(&mcr, "kvd.next")
            && ping_once(port, Duration::from_secs(1)).is_ok()
            && inst.status()["quiesced"] == Value::Bool(false)
            && open_server_ends(port).len() == 1
    });
    assert!(settled, "{case}: the old version does not serve\nupdate: {out}\nlog:\n{}", inst.log());
    assert_eq!(host_pids_running(&v1, port), vec![old], "{case}: not the old server process that serves");
    let after = heap_at_rest(&mcr, "kvd", old);
    let differences = heap_differences(&before, &after);
    assert!(
        differences.is_empty(),
        "{case}: the old heap changed: {} live blocks before, {} after, {} differ; the first:\n{}",
        before.len(),
        after.len(),
        differences.len(),
        differences.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    let now = heap_memfds(old);
    let now_inodes: std::collections::BTreeSet<u64> = now.iter().map(|(_, i, _)| *i).collect();
    assert!(
        now_inodes == old_inodes && now.iter().all(|(_, _, shared)| *shared),
        "{case}: the old heap is no longer mapped shared from its memfds: {now:x?}, before {old_memfds:x?}"
    );
    assert_every_key(port, 0, &format!("{case}: after the rollback"));

    // The instance is the old version's, as before the update.
    let list = mcr.run(&["list", "--json"]).ok();
    let listed: Value = serde_json::from_str(&list.stdout).unwrap_or_else(|e| panic!("list --json: {e}: {list}"));
    let names: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["kvd"], "{case}: mcr list: {list}");
    let status = inst.status();
    assert_eq!(
        status["supervisor_pid"].as_i64(),
        Some(i64::from(old_supervisor)),
        "{case}: mcr status shows another supervisor: {status}"
    );

    // And the same update commits now, mapping the heap from the same memfds.
    let (next, outcome) = update_json(&mcr, "kvd", &[], &v2, &port_args(port));
    assert_eq!(next.code(), 0, "{case}: the next update did not commit: {next}\nlog:\n{}", inst.log());
    let (_, mapped, copied) = heap_figures(&outcome);
    assert!(
        mapped >= 1 << 20 && copied * 50 <= mapped,
        "{case}: the next update mapped {mapped} bytes, copied {copied}: {outcome:#}"
    );
    assert_eq!(host_pids_running(&v1, port), Vec::<i32>::new(), "{case}: the old version runs on");
    let new = server_of(&v2, port);
    let shared_again: Vec<_> =
        heap_memfds(new).into_iter().filter(|(_, i, shared)| *shared && old_inodes.contains(i)).collect();
    assert!(
        !shared_again.is_empty(),
        "{case}: after the next update the old heap's memfds are not shared: {:x?}",
        heap_memfds(new)
    );
    assert_every_key(port, 0, &format!("{case}: after the next update"));
    drop(c);
}

macro_rules! rollback_cases {
    ($($name:ident: $fault:ident at $point:ident to $to:literal;)*) => {
        $(
            #[test]
            fn $name() {
                rollback_case(Fault::$fault, mcr_protocol::test_hook::point::$point, $to);
            }
        )*
    };
}

// A layout update (kvd-v2-layout: struct kv_node and kv_stats change; every block the
// trace reaches is rewritten, most in place in the adopted heap) and a code-only one
// (kvd-v2: no type changes; no block is touched, the heap is only checked).
rollback_cases! {
    rollback_layout_update_killed_after_the_drain: UpdateKilled at DRAINED to "kvd-v2-layout";
    rollback_layout_update_killed_after_the_quiesce: UpdateKilled at QUIESCED to "kvd-v2-layout";
    rollback_layout_new_server_killed_during_the_restart: NewServerKilled at RESTARTING to "kvd-v2-layout";
    rollback_layout_new_server_killed_during_the_transfer: NewServerKilled at TRANSFERRING to "kvd-v2-layout";
    rollback_layout_new_server_killed_at_the_commit_before_its_point: NewServerKilled at COMMITTING to "kvd-v2-layout";
    rollback_layout_new_server_killed_while_the_old_version_retires: NewServerKilled at RETIRING to "kvd-v2-layout";

    rollback_code_update_killed_after_the_drain: UpdateKilled at DRAINED to "kvd-v2";
    rollback_code_update_killed_after_the_quiesce: UpdateKilled at QUIESCED to "kvd-v2";
    rollback_code_new_server_killed_during_the_restart: NewServerKilled at RESTARTING to "kvd-v2";
    rollback_code_new_server_killed_during_the_transfer: NewServerKilled at TRANSFERRING to "kvd-v2";
    rollback_code_new_server_killed_at_the_commit_before_its_point: NewServerKilled at COMMITTING to "kvd-v2";
    rollback_code_new_server_killed_while_the_old_version_retires: NewServerKilled at RETIRING to "kvd-v2";
}

/// (c) Forking servers, whose heaps a fork froze (copy-on-write over their memfds, which the
/// processes forked from them map too): forkd (master and workers forked at startup) and
/// connd (a child per connection). Each new process maps its counterpart's frozen segments
/// copy-on-write and copies only the pages it wrote; none of them is written back and
/// shared at commit (other processes see those memfds), and no memfd ends up shared
/// between processes. Updated back and forth, serving sessions each time.
#[test]
fn forking_servers_frozen_heaps_are_mapped_copy_on_write_and_never_written_back() {
    struct Server {
        name: &'static str,
        extra: &'static [&'static str],
        procs: usize,
    }
    for server in
        [Server { name: "forkd", extra: &["--workers", "2"], procs: 3 }, Server { name: "connd", extra: &[], procs: 1 }]
    {
        let name = server.name;
        let mcr = Mcr::new(&format!("cow-{name}"));
        let port = free_port();
        let mut args = port_args(port);
        args.extend(server.extra.iter().map(|s| s.to_string()));
        let (v1, v2) = (fixture(name), fixture(&format!("{name}-v2")));
        let _inst = mcr.start(name, &v1, &args);
        let procs = |program: &Path| {
            let mut found = Vec::new();
            wait_until(Duration::from_secs(10), || {
                found = host_pids_running(program, port);
                found.len() == server.procs
            });
            assert_eq!(found.len(), server.procs, "{name}: {found:?}");
            found
        };
        // A session (connd forks for it: the master's heap freezes), then none open.
        let session = |round: usize, version: u32| {
            let mut c = Client::connect(port);
            assert_eq!(c.request("VERSION"), format!("VERSION {name} {version}"), "{name} round {round}");
            if name == "connd" {
                assert_eq!(c.request(&format!("SET r{round} value{round}")), "OK");
                assert_eq!(c.request(&format!("GET r{round}")), format!("VALUE value{round}"));
            }
            assert_eq!(c.request("PING"), "PONG");
        };
        session(0, 1);
        let mut program = &v1;
        for (round, next) in [&v2, &v1, &v2].into_iter().enumerate() {
            let old = procs(program);
            assert_no_memfd_shared_across(&old, &format!("{name} before update {round}"));
            let frozen: Vec<u64> =
                old.iter().flat_map(|&p| heap_memfds(p)).filter(|(_, _, shared)| !shared).map(|(_, i, _)| i).collect();
            assert!(!frozen.is_empty(), "{name} round {round}: no frozen heap segment: the test needs one");
            // connd's session children end on their own once their client left.
            let (out, outcome) = update_json(&mcr, name, &[], next, &args);
            assert_eq!(out.code(), 0, "{name} round {round}: the update did not commit: {out}");
            let (regions, mapped, copied) = heap_figures(&outcome);
            eprintln!("{name} round {round}: {regions} regions adopted, {mapped} bytes mapped, {copied} copied");
            assert!(regions as usize >= server.procs, "{name} round {round}: every process adopts: {outcome:#}");
            assert!(mapped > 0, "{name} round {round}: the frozen segments are mapped from their memfds: {outcome:#}");
            program = next;
            let new = procs(program);
            let written_back: Vec<_> = new
                .iter()
                .flat_map(|&p| heap_memfds(p).into_iter().map(move |m| (p, m)))
                .filter(|(_, (_, inode, shared))| *shared && frozen.contains(inode))
                .collect();
            assert!(
                written_back.is_empty(),
                "{name} round {round}: frozen memfds of the old version are mapped shared after the commit: \
                 {written_back:x?}"
            );
            assert_no_memfd_shared_across(&new, &format!("{name} after update {round}"));
            for _ in 0..3 {
                session(round + 1, if program == &v2 { 2 } else { 1 });
            }
        }
    }
}
