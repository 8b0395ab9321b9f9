//! A server built on libevent 2.1 (`fixtures/evkv.c`, issue 13's second fixture) under the
//! real `mcr`: its event loop, connection buffers and timer live in the library, which
//! allocates them itself; the program reaches them through pointers to types its headers
//! leave incomplete, and links its global timer into libevent's lists.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

/// Keys the data tests store.
const KEYS: usize = 3000;

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// `mcr update evkv --json [FLAGS] -- PROGRAM ARGS`: the exit code and the outcome.
fn update(mcr: &Mcr, flags: &[&str], program: &Path, args: &[String]) -> (Out, Value) {
    update_json(mcr, "evkv", flags, program, args)
}

fn stat(c: &mut Client, field: &str) -> u64 {
    parse_stats(&c.request("STATS"))[field]
}

/// Waits (bounded) until the timer has fired again since `ticks`.
fn wait_for_ticks_past(c: &mut Client, ticks: u64, when: &str) {
    wait_for(Duration::from_secs(5), &format!("the timer to fire {when}"), || stat(c, "ticks") > ticks);
}

/// Pipelines `SET key{i} value {i} with spaces` for every key, then reads the replies.
fn fill(c: &mut Client, keys: usize) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        let batch: String = chunk.iter().map(|i| format!("SET key{i} value {i} with spaces\n")).collect();
        c.send_raw(batch.as_bytes()).expect("send a batch of SETs");
        for i in chunk {
            assert_eq!(c.read_line().expect("reply to SET"), "OK", "SET key{i}");
        }
    }
}

fn assert_all_keys(c: &mut Client, keys: usize, extra: Option<(&str, &str)>) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        let batch: String = chunk.iter().map(|i| format!("GET key{i}\n")).collect();
        c.send_raw(batch.as_bytes()).expect("send a batch of GETs");
        for i in chunk {
            assert_eq!(c.read_line().expect("reply to GET"), format!("VALUE value {i} with spaces"), "key{i}");
        }
    }
    let mut count = keys;
    if let Some((k, v)) = extra {
        assert_eq!(c.request(&format!("GET {k}")), format!("VALUE {v}"));
        count += 1;
    }
    assert_eq!(c.request("COUNT"), format!("COUNT {count}"));
}

/// The server parks where libevent waits: its main thread is blocked in `epoll_wait`,
/// called from inside libevent's loop, which is a quiescent point; quiescing parks it and
/// the timer fires again once it is resumed.
#[test]
fn evkv_parks_inside_libevent_at_a_quiescent_point() {
    let mcr = Mcr::new("t-evkv-quiesce");
    let port = free_port();
    let inst = mcr.start("evkv", &fixture("evkv"), &port_args(port));
    let mut c = Client::connect(port);
    assert_eq!(c.request("VERSION"), "VERSION evkv 1");
    let ticks = stat(&mut c, "ticks");
    // The timer wakes it ten times a second: wait for a status that finds it waiting.
    let mut st = Value::Null;
    wait_for(Duration::from_secs(5), "the main thread to wait in epoll_wait, its quiescent point", || {
        st = inst.status();
        let ths = threads(&st);
        ths.len() == 1
            && ths[0].1["call"] == "epoll_wait"
            && ths[0].1["state"] == "blocked"
            && ths[0].1["at_quiescent_point"] == Value::Bool(true)
    });
    let frames = &threads(&st)[0].1["quiescent_point"]["frames"];
    assert!(frames[0]["module"].as_str().is_some_and(|m| m.contains("libevent")), "called from libevent: {st:#}");

    let out = inst.quiesce(2000);
    assert!(out.success(), "{out}");
    assert_all_parked(&inst.status(), 1, 1);
    assert!(inst.resume().success());
    wait_for_ticks_past(&mut c, ticks, "after the resume");
    assert_eq!(c.request("PING"), "PONG");
}

/// Without its state (`--fresh-state`), the new version's startup makes its own event
/// base over the inherited listening socket (created inside libevent: its call stacks stop
/// there) and serves; the timer of the new version fires. Then back.
#[test]
fn evkv_updates_with_fresh_state_on_the_same_listener() {
    let mcr = Mcr::new("t-evkv-fresh");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("evkv"), fixture("evkv-v2"));
    let inst = mcr.start("evkv", &v1, &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET k v"), "OK");
    drop(c);
    wait_for(Duration::from_secs(5), "evkv to close the connection", || open_server_ends(port).is_empty());
    let listener = listening_socket_inode(port).expect("evkv listens");
    for (to, version) in [(&v2, 2), (&v1, 1)] {
        let (out, v) = update(&mcr, &["--fresh-state"], to, &args);
        assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
        assert_eq!(listening_socket_inode(port), Some(listener), "the same listening socket: {v:#}");
        let mut c = Client::connect(port);
        assert_eq!(c.request("VERSION"), format!("VERSION evkv {version}"));
        assert_eq!(c.request("COUNT"), "COUNT 0", "fresh state");
        let ticks = stat(&mut c, "ticks");
        wait_for_ticks_past(&mut c, ticks, "in the new version");
    }
}

/// Issue 13's "done when" for a libevent server: updated with its data and its clients'
/// connections, with no annotation. Every key survives an update to a code-only change
/// and to a layout change of the program's own structs; held connections keep their
/// per-connection state and answer from the new version; a command half sent before the
/// update completes after it; the timer keeps firing. Then back.
///
/// What it takes: libevent's event base is made at startup, inside the library, and the
/// old one is reached only through memory mcr cannot type (so it stays where it is), while
/// the new version's loop runs on the one its own startup made. The new version's startup
/// allocates libevent's blocks at the old ones' addresses (same thread, same place in its
/// sequence of allocations, same size and call site in the library), the adopted heap
/// covers them, and the new code's loop runs on the old base, with every connection
/// (`held_by_new_startup`; before it, the update committed and the server spun in
/// `epoll_wait` serving no one). And libevent's intrusive lists point into their elements
/// with `T **` back-pointers to a `next` field that starts a struct: a pointer to the
/// object's first member, not a second type for its block.
#[test]
fn evkv_updates_with_its_data_connections_and_timer() {
    updates_with_data_connections_and_timer("t-evkv-state", &[], "epoll");
}

/// The same with libevent's poll loop (`EVENT_NOEPOLL`): the connections are in the set
/// of a `poll` that also holds the listening socket, an event loop whose descriptors the
/// program keeps in its own memory, so they move as an epoll loop's do (they were taken
/// for connections a thread serves from its stack, and the update rolled back).
#[test]
fn evkv_on_a_poll_loop_updates_with_its_connections() {
    updates_with_data_connections_and_timer("t-evkv-poll", &[("EVENT_NOEPOLL", "1")], "poll");
}

/// The same with libevent's select loop (`EVENT_NOEPOLL`, `EVENT_NOPOLL`).
#[test]
fn evkv_on_a_select_loop_updates_with_its_connections() {
    updates_with_data_connections_and_timer(
        "t-evkv-select",
        &[("EVENT_NOEPOLL", "1"), ("EVENT_NOPOLL", "1")],
        "select",
    );
}

/// evkv under `mcr run` with `env` (libevent's choice of backend, which evkv names in its
/// log: `method`), filled with keys, with connections that hold per-connection state and
/// one with half a command read, updated to v2, to a layout change and back: each update
/// commits with every connection moved, and the data, counters and timer carry over.
fn updates_with_data_connections_and_timer(test: &str, env: &[(&str, &str)], method: &str) {
    let mcr = Mcr::new(test);
    let port = free_port();
    let args = port_args(port);
    let (v1, v2, layout) = (fixture("evkv"), fixture("evkv-v2"), fixture("evkv-v2-layout"));
    let mut run: Vec<std::ffi::OsString> =
        vec!["run".into(), "--detach".into(), "--name".into(), "evkv".into(), "--".into(), v1.clone().into()];
    run.extend(args.iter().map(Into::into));
    let mut cmd = mcr.command(&run);
    cmd.envs(env.iter().copied());
    let out = Spawned::spawn(cmd, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr run evkv");
    let inst = Instance { mcr: &mcr, name: "evkv".into() };
    assert!(out.success(), "mcr run evkv failed: {out}\nlog:\n{}", inst.log());
    let mut loader = Client::connect(port);
    assert!(
        inst.log().contains(&format!(", {method})")),
        "libevent runs another backend than {method}:\n{}",
        inst.log()
    );
    fill(&mut loader, KEYS);
    for _ in 0..5 {
        assert_eq!(loader.request("GET key42"), "VALUE value 42 with spaces");
    }
    let mut held: Vec<Client> = (0..4).map(|_| Client::connect(port)).collect();
    let mut ids = Vec::new();
    for c in held.iter_mut() {
        let reply = c.request("CONN");
        assert!(reply.ends_with(" cmds=1"), "{reply}");
        ids.push(reply.trim_end_matches(" cmds=1").to_string());
    }
    let mut half = Client::connect(port);
    half.send_raw(b"SET half").expect("send half a command");
    wait_for(Duration::from_secs(5), "evkv to read the half command", || server_read_all_of(port, &half));
    let connections = held.len() + 2;

    for (round, (to, version)) in [(&v2, 2), (&layout, 2), (&v1, 1)].into_iter().enumerate() {
        let ticks = stat(&mut loader, "ticks");
        let (out, v) = update(&mcr, &[], to, &args);
        assert_eq!(out.code(), 0, "update to {}: {out}\nlog:\n{}", to.display(), inst.log());
        let t = &v["transfer"];
        assert_eq!(t["connections"], connections, "{v:#}");
        assert!(t["held_by_new_startup"].as_u64().is_some_and(|n| n > 0), "libevent's blocks are held: {t:#}");
        eprintln!(
            "evkv -> {}: total {} ms, transfer {} ms, {} objects, {} in place, {} pinned",
            to.display(),
            v["phases"]["total_ms"],
            v["phases"]["transfer_ms"],
            t["objects"],
            t["in_place"],
            t["pinned"]
        );
        for (c, id) in held.iter_mut().zip(&ids) {
            assert_eq!(c.request("VERSION"), format!("VERSION evkv {version}"), "held connection {id}");
            // CONN once before the updates, then VERSION and CONN after each.
            assert_eq!(c.request("CONN"), format!("{id} cmds={}", 3 + 2 * round), "its per-connection state moved");
        }
        if round == 0 {
            half.send_raw(b" done\n").expect("complete the half command");
            assert_eq!(half.read_line().expect("reply to the completed SET"), "OK");
        }
        assert_eq!(half.request("GET half"), "VALUE done");
        wait_for_ticks_past(&mut loader, ticks, "after the update");
        // Five GETs before the updates, and one by each check of every key since.
        assert_eq!(loader.request("HITS key42"), format!("HITS {}", 5 + round), "the hit counter carried over");
        assert_all_keys(&mut Client::connect(port), KEYS, Some(("half", "done")));
    }
}

/// When the new version's startup allocates inside libevent differently from the old
/// one's (here an evbuffer made before the event base), its blocks no longer follow the
/// old ones from there on and are not placed: the event base would exist twice, the new
/// loop running on its own without the connections. The update rolls back saying so,
/// naming how many of the library's old blocks the new startup holds, and the old version
/// serves on with its data.
#[test]
fn an_update_whose_library_allocations_diverge_rolls_back_saying_the_librarys_state_would_exist_twice() {
    let mcr = Mcr::new("t-evkv-diverge");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("evkv", &fixture("evkv"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET k v"), "OK");
    let (out, v) = update(&mcr, &[], &fixture("evkv-v2-extra-buffer"), &args);
    assert_eq!(out.code(), 1, "{out}\n{v:#}\nlog:\n{}", inst.log());
    assert!(
        out.stdout.contains("libraries allocated") && out.stdout.contains("at the same addresses"),
        "{out}\n{v:#}\nlog:\n{}",
        inst.log()
    );
    assert_eq!(c.request("GET k"), "VALUE v", "the old version serves on, with its data");
    assert_eq!(c.request("VERSION"), "VERSION evkv 1");
    // The same update between builds whose startups agree says nothing of the kind.
    let mcr = Mcr::new("t-evkv-agree");
    let port = free_port();
    let args = port_args(port);
    let _inst = mcr.start("evkv", &fixture("evkv"), &args);
    // Right after startup: the timer event in the program's globals still holds the time
    // its startup computed, which differs from the new startup's and is not compared.
    let (out, _) = update(&mcr, &[], &fixture("evkv-v2"), &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(!out.stderr.contains("libraries allocated"), "{out}");
}
