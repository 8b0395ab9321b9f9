//! Issue 13, "a server that allocates its requests from its own pools": `fixtures/poolsrv.c`
//! carves its store, its configuration and each connection's request in progress out of
//! 4 KiB malloc'd blocks (nginx's pools), with handler function pointers and string
//! literals in that memory and only pointers into the middle of the blocks leading to the
//! data. It updates with its data and its clients' connections, with no annotation,
//! through the real `mcr` binary.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use support::*;

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// `mcr update NAME --json -- PROGRAM ARGS` (with the state): the exit code and the report.
fn update(mcr: &Mcr, name: &str, program: &Path, args: &[String]) -> (Out, Value) {
    update_json(mcr, name, &[], program, args)
}

fn value_of(i: usize) -> String {
    format!("value {i} with spaces")
}

/// A value larger than the pools' largest carved allocation: a malloc'd block listed by
/// a `struct large` record in the main pool.
fn big_value(round: usize) -> String {
    format!("big{round}-").repeat(500)
}

/// Stores keys `from..to`, then deletes every tenth and stores it again (a node from the
/// store's free list, its key and value carved anew).
fn fill(c: &mut Client, keys: std::ops::Range<usize>) {
    for i in keys.clone() {
        assert_eq!(c.request(&format!("SET key{i} {}", value_of(i))), format!("STORED key{i}"));
    }
    for i in keys.step_by(10) {
        assert_eq!(c.request(&format!("DEL key{i}")), format!("DELETED key{i}"));
        assert_eq!(c.request(&format!("SET key{i} {}", value_of(i))), format!("STORED key{i}"));
    }
}

/// Keys `0..keys`, `big` and `held` (which the held requests set) are there, and no other.
fn assert_all_keys(port: u16, keys: usize, big: &str) {
    let mut c = Client::connect(port);
    for i in 0..keys {
        assert_eq!(c.request(&format!("GET key{i}")), format!("VALUE {}", value_of(i)), "key{i}");
    }
    assert_eq!(c.request("GET big"), format!("VALUE {big}"));
    assert_eq!(c.request("COUNT"), format!("COUNT {}", keys + 2));
}

/// The requests in progress on the other connections, as `method:state:handler` words
/// (`REQUESTS`): the state is a string literal and the handler the function pointer the
/// request holds, both in the connection's pool, named by comparing it with the running
/// binary's own handlers.
fn requests_in_progress(port: u16) -> BTreeSet<String> {
    let line = Client::connect(port).request("REQUESTS");
    let mut words = line.split(' ');
    assert_eq!(words.next(), Some("REQUESTS"), "{line}");
    let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    let set: BTreeSet<String> = words.map(str::to_string).collect();
    assert_eq!(set.len(), n, "{line}");
    set
}

fn stats(c: &mut Client) -> std::collections::HashMap<String, u64> {
    parse_stats(&c.request("STATS"))
}

/// Three requests half received, each in another state: the command word not complete
/// (no handler yet), and two whose handler was chosen (SET and GET) waiting for the rest
/// of their line.
struct Held {
    new: Client,
    set: Client,
    get: Client,
}

impl Held {
    fn open(port: u16) -> Self {
        let mut held = Held { new: Client::connect(port), set: Client::connect(port), get: Client::connect(port) };
        held.new.send_raw(b"PI").unwrap();
        held.set.send_raw(b"SET held").unwrap();
        held.get.send_raw(b"GET key1").unwrap();
        for c in [&held.new, &held.set, &held.get] {
            wait_for(Duration::from_secs(5), "poolsrv to read the half request", || server_read_all_of(port, c));
        }
        held
    }

    const IN_PROGRESS: [&'static str; 3] = ["-:new:none", "GET:reading:get_handler", "SET:reading:set_handler"];

    /// The rest of each line: each request completes through the handler it chose.
    fn complete(&mut self, round: usize) {
        self.new.send_raw(b"NG\n").unwrap();
        assert_eq!(self.new.read_line().expect("the held PING completes"), "PONG");
        self.set.send_raw(format!(" {round}\n").as_bytes()).unwrap();
        assert_eq!(self.set.read_line().expect("the held SET completes"), "STORED held");
        self.get.send_raw(b"2\n").unwrap();
        assert_eq!(self.get.read_line().expect("the held GET completes"), format!("VALUE {}", value_of(12)));
        assert_eq!(self.get.request("GET held"), format!("VALUE {round}"));
    }
}

fn server_pid(inst: &Instance, port: u16) -> i32 {
    let program: std::path::PathBuf = inst.status()["program"].as_str().expect("program").into();
    host_pid(&program, port)
}

fn rss_kib(pid: i32) -> u64 {
    mcr_procfs::status::read(pid).ok().and_then(|s| s.vm_rss_kb()).unwrap_or(0)
}

/// poolsrv → poolsrv-v2 (code only: every handler and literal sits elsewhere in the new
/// binary) with its store in pool memory, a large value, an idle client and three requests
/// half received: the data is intact, the requests in progress keep their state and their
/// handler, which is now the new binary's (the new version names it by comparing with its
/// own functions), they complete through it, and closing a connection runs its pool's
/// cleanup through a relocated function pointer. Then back to v1.
#[test]
fn pool_server_keeps_its_store_and_requests_in_progress_across_updates() {
    let mcr = Mcr::new("t-poolsrv");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("poolsrv"), fixture("poolsrv-v2"));
    let inst = mcr.start("poolsrv", &v1, &args);
    let mut loader = Client::connect(port);
    fill(&mut loader, 0..400);
    let big = big_value(0);
    assert_eq!(loader.request(&format!("SET big {big}")), "STORED big");
    for _ in 0..5 {
        assert_eq!(loader.request("GET key42"), format!("VALUE {}", value_of(42)));
    }
    let before = stats(&mut loader);
    assert!(
        before["blocks"] > 5 && before["large"] >= 2,
        "the store spans pool blocks and large allocations: {before:?}"
    );
    let mut idle = Client::connect(port);
    assert_eq!(idle.request("PING"), "PONG");
    let mut held = Held::open(port);
    let expected: BTreeSet<String> = Held::IN_PROGRESS.iter().map(|s| s.to_string()).collect();
    assert_eq!(requests_in_progress(port), expected);

    for (round, to, version) in [(1, &v2, 2), (2, &v1, 1)] {
        // Only these five are open (the one-shot clients' closes were seen).
        wait_for(Duration::from_secs(5), "the one-shot clients' connections to close", || {
            stats(&mut loader)["open"] == 5
        });
        let (out, v) = update(&mcr, "poolsrv", to, &args);
        assert_eq!(out.code(), 0, "update {round}: {out}\nlog:\n{}", inst.log());
        let t = &v["transfer"];
        assert_eq!(t["connections"], 5, "the loader, the idle client and three held requests: {v:#}");
        eprintln!(
            "poolsrv update {round}: total {} ms, transfer {} ms, objects {}, in place {}, pinned {}, live {}",
            v["phases"]["total_ms"],
            v["phases"]["transfer_ms"],
            t["objects"],
            t["in_place"],
            t["pinned"],
            t["live_objects"]
        );
        // The requests in progress kept their state literal and their handler, now the new
        // binary's function.
        assert_eq!(requests_in_progress(port), expected, "update {round}");
        held.complete(round);
        assert_eq!(
            idle.request("VERSION"),
            format!("VERSION poolsrv {version}"),
            "the name is a literal in pool memory"
        );
        assert_eq!(loader.request("HITS key42"), format!("HITS key42 {}", 5 + round - 1));
        assert_all_keys(port, 400, &big);
        wait_for(Duration::from_secs(5), "the one-shot clients' connections to close", || {
            stats(&mut loader)["open"] == 5
        });
        let after = stats(&mut loader);
        assert_eq!(after["keys"], 402, "400 keys, big and held: {after:?}");
        assert_eq!(after["large"], before["large"] + 4, "one input buffer per connection more: {after:?}");
        drop(held);
        wait_for(Duration::from_secs(5), "the held connections to close", || stats(&mut loader)["open"] == 2);
        held = Held::open(port);
    }
    // A connection's close runs its pool's cleanup (a function pointer in pool memory,
    // written by v1, relocated twice), which counts it out.
    drop(held);
    drop(idle);
    wait_for(Duration::from_secs(5), "poolsrv to close the connections through their pools' cleanups", || {
        stats(&mut loader)["open"] == 1
    });
    assert_eq!(requests_in_progress(port), BTreeSet::new());
}

/// Ten updates back and forth while a writer adds keys and a request is held across each:
/// every key survives, held requests complete, and the server's resident memory does not
/// grow with the number of updates (from the second to the tenth, at most 20%).
#[test]
fn ten_pool_server_updates_keep_the_data_and_memory_bounded() {
    let mcr = Mcr::new("t-poolsrv-ten");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("poolsrv"), fixture("poolsrv-v2"));
    let inst = mcr.start("poolsrv", &v1, &args);
    let mut writer = Client::connect(port);
    let mut keys = 2000;
    fill(&mut writer, 0..keys);
    let mut big = big_value(0);
    assert_eq!(writer.request(&format!("SET big {big}")), "STORED big");
    let mut rss = Vec::new();
    for i in 0..10 {
        let mut held = Held::open(port);
        let to = if i % 2 == 0 { &v2 } else { &v1 };
        let (out, v) = update(&mcr, "poolsrv", to, &args);
        assert_eq!(out.code(), 0, "update {i}: {out}\nlog:\n{}", inst.log());
        assert_eq!(v["transfer"]["connections"], 4, "update {i}: {v:#}");
        held.complete(i);
        // The writer keeps adding keys; the big value is replaced (its large block freed).
        fill(&mut writer, keys..keys + 20);
        keys += 20;
        big = big_value(i + 1);
        assert_eq!(writer.request(&format!("SET big {big}")), "STORED big");
        drop(held);
        wait_for(Duration::from_secs(5), "the held connections to close", || stats(&mut writer)["open"] == 1);
        let kib = rss_kib(server_pid(&inst, port));
        let t = &v["transfer"];
        eprintln!(
            "poolsrv update {i}: total {} ms, transfer {} ms (trace {} ms, heap adopt {} ms), objects {}, in place \
             {}, pinned {}, old freed {}, live {}, rss {kib} KiB",
            v["phases"]["total_ms"],
            v["phases"]["transfer_ms"],
            t["trace_ms"],
            t["heap_adopt_ms"],
            t["objects"],
            t["in_place"],
            t["pinned"],
            t["old_freed"],
            t["live_objects"]
        );
        rss.push(kib);
    }
    assert_all_keys(port, keys, &big);
    assert!(rss[9] <= rss[1] + rss[1] / 5, "resident memory from update 2 to update 10 (KiB): {rss:?}");
}

/// poolsrv → poolsrv-v2-layout, whose struct kv_node (which lives only in pool memory,
/// reached only through pointers into the middle of pool blocks) gains a field: mcr
/// cannot grow an object carved out of a block it leaves where it is, so the update rolls
/// back naming the type, and the old version serves every key and the request held
/// across the attempt.
#[test]
fn a_struct_that_lives_only_in_pool_memory_cannot_change_layout() {
    let mcr = Mcr::new("t-poolsrv-layout");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("poolsrv", &fixture("poolsrv"), &args);
    let mut loader = Client::connect(port);
    fill(&mut loader, 0..100);
    let big = big_value(0);
    assert_eq!(loader.request(&format!("SET big {big}")), "STORED big");
    let mut held = Held::open(port);
    let (out, v) = update(&mcr, "poolsrv", &fixture("poolsrv-v2-layout"), &args);
    assert_eq!(out.code(), 1, "{out}\nlog:\n{}", inst.log());
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("struct kv_node") && msg.contains("heap block at"),
        "the rollback names the type and the block: {v:#}"
    );
    held.complete(0);
    assert_eq!(loader.request("VERSION"), "VERSION poolsrv 1");
    assert_all_keys(port, 100, &big);
}
