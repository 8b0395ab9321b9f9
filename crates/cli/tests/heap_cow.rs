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

/// (b) The new version killed while it maps the old heap copy-on-write (paused while the
/// state is transferred, and at the commit before its point) leaves the old version's heap
/// as it was, in the memfds it shares, and serving. A layout update rewrites many adopted
/// blocks in the new process.
#[test]
fn a_new_version_killed_before_its_commit_leaves_the_shared_old_heap_as_it_was() {
    use mcr_protocol::test_hook;
    for point in [test_hook::point::TRANSFERRING, test_hook::point::COMMITTING] {
        let mcr = Mcr::new(&format!("cow-rollback-{point}"));
        let pause_dir = mcr.tmp.join("pause");
        std::fs::create_dir_all(&pause_dir).unwrap();
        let port = free_port();
        let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-layout"));
        let inst = mcr.start("kvd", &v1, &port_args(port));
        let mut c = Client::connect(port);
        let set = pipelined(&mut c, (0..KEYS).map(|i| format!("SET k{i} {}", value_of(i, 0))));
        assert!(set.iter().all(|r| r == "OK"), "a SET failed");
        let old = server_of(&v1, port);
        let before = heap_at_rest(&mcr, "kvd", old);
        let old_memfds = heap_memfds(old);
        assert!(old_memfds.iter().all(|(_, _, shared)| *shared), "{old_memfds:x?}");

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
                panic!("{point}: the update ended before its pause: {out}");
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{point}: the update did not pause within 60 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        // What the test is about: the new process maps the old memfds copy-on-write.
        let new = server_of(&v2, port);
        let old_inodes: Vec<u64> = old_memfds.iter().map(|(_, i, _)| *i).collect();
        let cow: Vec<_> = heap_memfds(new).into_iter().filter(|(_, i, _)| old_inodes.contains(i)).collect();
        assert!(
            !cow.is_empty() && cow.iter().all(|(_, _, shared)| !shared),
            "{point}: the new process does not map the old heap's memfds copy-on-write: {cow:x?}"
        );
        kill(new, libc::SIGKILL);
        wait_for(Duration::from_secs(10), "the new version's server to be gone", || !alive(new));
        let _ = std::fs::remove_file(&marker);
        let out = upd.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| panic!("{point}: the update hangs"));
        assert!(!out.status.success(), "{point}: committed: {out}");
        let settled = wait_until(Duration::from_secs(20), || {
            ping_once(port, Duration::from_secs(1)).is_ok() && inst.status()["quiesced"] == Value::Bool(false)
        });
        assert!(settled, "{point}: the old version does not serve\nlog:\n{}", inst.log());
        let after = heap_at_rest(&mcr, "kvd", old);
        let after_by_addr: BTreeMap<u64, &Vec<u8>> = after.iter().map(|(a, b)| (*a, b)).collect();
        let changed: Vec<u64> =
            before.iter().filter(|(a, b)| after_by_addr.get(a) != Some(&b)).map(|(a, _)| *a).take(5).collect();
        assert!(
            before.len() == after.len() && changed.is_empty(),
            "{point}: the old heap changed: {} live blocks before, {} after; first differing: {changed:x?}",
            before.len(),
            after.len()
        );
        let now = heap_memfds(old);
        assert!(
            now.iter().all(|(_, i, shared)| *shared && old_inodes.contains(i)),
            "{point}: the old heap is no longer mapped shared from its memfds: {now:x?}, before {old_memfds:x?}"
        );
        assert_every_key(port, 0, &format!("after the rollback at {point}"));
    }
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
