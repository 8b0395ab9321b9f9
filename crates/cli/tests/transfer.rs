//! State transfer (`mcr update` without --fresh-state): data, connections and half-sent
//! commands survive an update into a build whose structs changed, driven through the real
//! `mcr` binary with real clients.

mod support;

use serde_json::Value;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;
use support::*;

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// `mcr update NAME -- PROGRAM ARGS` rolls back, and its message names each of `words`.
fn assert_rolls_back_naming(mcr: &Mcr, name: &str, program: &Path, args: &[String], words: &[&str]) {
    let (out, v) = update_outcome(mcr, name, &[], program, args);
    assert_eq!(out.code(), 1, "{out}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(words.iter().all(|w| msg.contains(w)), "the rollback should name {words:?}: {v:#}");
}

fn fill(c: &mut Client, keys: usize) {
    for i in 0..keys {
        assert_eq!(c.request(&format!("SET key{i} value {i} with spaces")), "OK");
    }
}

fn assert_all_keys(port: u16, keys: usize) {
    let mut c = Client::connect(port);
    for i in 0..keys {
        assert_eq!(c.request(&format!("GET key{i}")), format!("VALUE value {i} with spaces"), "key{i}");
    }
    assert_eq!(c.request("COUNT"), format!("COUNT {keys}"));
}

fn stat(c: &mut Client, field: &str) -> u64 {
    session_field(&c.request("STATS"), field)
}

/// kvd v1 → kvd-v2-layout (kv_node gains a field, `hits` widens from int to long and
/// moves, kv_stats.cmds widens): every key survives, the hit counters and statistics
/// carry over, clients connected before keep their connections, and a command half sent
/// before the update completes after it. Then back to v1.
#[test]
fn kvd_layout_change_keeps_data_connections_and_half_sent_commands() {
    let mcr = Mcr::new("t-kvd-layout");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-layout"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut loader = Client::connect(port);
    fill(&mut loader, 300);
    for _ in 0..7 {
        assert_eq!(loader.request("GET key42"), "VALUE value 42 with spaces");
    }
    let cmds_before = stat(&mut loader, "cmds");
    let mut idle = Client::connect(port);
    assert_eq!(idle.request("PING"), "PONG");
    let mut half = Client::connect(port);
    half.send_raw(b"SET half").unwrap();
    wait_for(Duration::from_secs(5), "kvd to accept the half command's connection and read it", || {
        server_read_all_of(port, &half)
    });

    let (out, v) = update_outcome(&mcr, "kvd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let t = &v["transfer"];
    assert!(t["objects"].as_u64().is_some_and(|n| n >= 600), "300 nodes with their keys and values: {v:#}");
    assert_eq!(t["connections"], 3, "the loader, the idle client and the half command: {v:#}");
    assert!(v["phases"]["transfer_ms"].as_f64().is_some(), "{v:#}");

    // The half-sent command completes in the new version, on the same connection.
    half.send_raw(b" done\n").unwrap();
    assert_eq!(half.read_line().expect("reply to the half-sent SET"), "OK");
    assert_eq!(half.request("GET half"), "VALUE done");
    // Connections made before the update answer, from the new version.
    assert_eq!(idle.request("VERSION"), "VERSION kvd 2");
    assert_eq!(loader.request("HITS key42"), "HITS 7");
    assert!(stat(&mut loader, "cmds") > cmds_before, "the widened command counter carried over");
    assert_all_keys_but(port, 300, "half");

    // And back: the counters narrow again (they fit) and nothing is lost.
    let (out, v) = update_outcome(&mcr, "kvd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 3, "{v:#}");
    assert_eq!(idle.request("VERSION"), "VERSION kvd 1");
    assert_eq!(loader.request("HITS key42"), "HITS 8", "seven GETs before, one by the check after the first update");
    assert_eq!(half.request("GET half"), "VALUE done");
    assert_all_keys_but(port, 300, "half");
}

fn assert_all_keys_but(port: u16, keys: usize, extra: &str) {
    let mut c = Client::connect(port);
    for i in 0..keys {
        assert_eq!(c.request(&format!("GET key{i}")), format!("VALUE value {i} with spaces"), "key{i}");
    }
    assert_eq!(c.request(&format!("GET {extra}")), "VALUE done");
    assert_eq!(c.request("COUNT"), format!("COUNT {}", keys + 1));
}

/// Twenty updates alternating v1 and kvd-v2-layout while a client keeps writing: no key
/// is lost, connections stay up, and the server's descriptors and memory do not grow
/// with the number of updates.
#[test]
fn twenty_layout_updates_keep_every_key_and_leak_nothing() {
    let mcr = Mcr::new("t-kvd-twenty");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-layout"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut writer = Client::connect(port);
    fill(&mut writer, 200);
    let host = || host_pid(&fixture_by_version(&inst), port);
    // `mcr run` hands the server whatever its caller left open, as any launcher does; an
    // update hands the new version exactly the old one's descriptors. So the baseline is
    // taken after the first update.
    let (mut fds0, mut rss0) = (0, 0);
    let mut next = 200;
    let mut live = LiveBlocks::default();
    for i in 0..20 {
        let to = if i % 2 == 0 { &v2 } else { &v1 };
        let (out, v) = update_outcome(&mcr, "kvd", &[], to, &args);
        assert_eq!(out.code(), 0, "update {i}: {out}\nlog:\n{}", inst.log());
        assert_eq!(v["transfer"]["connections"], 1, "update {i}: {v:#}");
        live.check(i, &v, 10 * BLOCKS_PER_KEY);
        // The writer's connection survived; it keeps adding keys.
        for _ in 0..10 {
            assert_eq!(writer.request(&format!("SET key{next} value {next} with spaces")), "OK", "after update {i}");
            next += 1;
        }
        if i == 0 {
            (fds0, rss0) = (fd_count(host()), rss_kib(host()));
        }
    }
    assert_all_keys(port, next);
    let (fds1, rss1) = (fd_count(host()), rss_kib(host()));
    assert_eq!(fds1, fds0, "descriptors of the server before and after 20 updates: {:?}", fd_links(host()));
    // Each update's new version starts from main and builds its own (small) startup
    // state; what grows is the data the writer added, not one copy per update.
    assert!(rss1 < rss0 + 4096, "resident memory grew from {rss0} KiB to {rss1} KiB over 20 updates");
    assert_eq!(stable_files(&mcr), 3, "instance files: {:?}", mcr.instance_files());
}

/// Heap blocks a SET of a new key allocates in kvd: the node, its key and its value.
const BLOCKS_PER_KEY: u64 = 3;

/// The old process's live heap blocks at each update (the transfer report's
/// `live_objects`): each update must find exactly the blocks the previous one left plus
/// what the clients added since. A block the new version allocated at startup and the
/// transfer replaced with a copy (leaked) shows up here at once, where resident memory
/// would take many updates to move.
#[derive(Default)]
struct LiveBlocks(Option<u64>);

impl LiveBlocks {
    fn check(&mut self, i: usize, v: &Value, added: u64) {
        let now =
            v["transfer"]["live_objects"].as_u64().unwrap_or_else(|| panic!("update {i}: no live_objects: {v:#}"));
        if let Some(before) = self.0 {
            assert_eq!(
                now,
                before + added,
                "update {i}: live heap blocks were {before}, the clients added {added} since: {v:#}"
            );
        }
        self.0 = Some(now);
    }
}

fn stable_files(mcr: &Mcr) -> usize {
    mcr.instance_files().iter().filter(|f| f.starts_with("kvd.")).count()
}

/// The binary of the version running now (from `mcr status`).
fn fixture_by_version(inst: &Instance) -> std::path::PathBuf {
    inst.status()["program"].as_str().expect("program").into()
}

fn fd_links(pid: i32) -> Vec<String> {
    let fds = mcr_procfs::fd::list_with_targets(pid).unwrap_or_default();
    let mut v: Vec<String> = fds.into_iter().map(|(fd, target)| format!("{fd} -> {target}")).collect();
    v.sort();
    v
}

fn rss_kib(pid: i32) -> u64 {
    mcr_procfs::status::read(pid).ok().and_then(|s| s.vm_rss_kb()).unwrap_or(0)
}

/// A poold session is served by a worker thread from its stack. Into a new version
/// without a resume handler the update cannot move it: it waits for it through the drain,
/// then rolls back saying why and what resolves it; the session carries on. Once it ends
/// the same update commits.
#[test]
fn poold_session_is_not_moved_into_a_version_without_a_resume_handler() {
    let mcr = Mcr::new("t-poold-session");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("poold"), fixture("poold-v2-noresume"));
    let inst = mcr.start("poold", &v1, &args);
    let mut session = Client::connect(port);
    assert_eq!(session.request("INCR"), "VALUE 1");
    let (out, v) = update_outcome(&mcr, "poold", &["--drain-timeout", "300"], &v2, &args);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("cannot move"), "{out}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("served by a thread") && msg.contains("MCR_ADD_RESUME_HANDLER"), "{v:#}");
    assert_eq!(session.request("INCR"), "VALUE 2");
    assert_eq!(session.request("VERSION"), "VERSION poold 1");
    assert_eq!(session.request("QUIT"), "BYE");
    drop(session);
    wait_for(Duration::from_secs(5), "poold to close the finished session", || open_server_ends(port).is_empty());
    let (out, _) = update_outcome(&mcr, "poold", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let mut c = Client::connect(port);
    assert_eq!(c.request("VERSION"), "VERSION poold 2");
    assert_eq!(c.request("INCR"), "VALUE 3", "the counter moved into the new version");
}

fn session_field(line: &str, field: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line:?}"))
}

/// poold → poold-v2-layout (its per-connection struct gains a field before the others)
/// with more open sessions than workers: two are being served by worker threads (their
/// state on those threads' stacks in v1), a third waits in the queue with half a command
/// sent. Every session survives: same connection, same per-session counters, the queued
/// one is served when a worker frees up and its half command completes. Then back.
#[test]
fn poold_sessions_served_by_threads_survive_a_layout_change() {
    let mcr = Mcr::new("t-poold-sessions");
    let port = free_port();
    let mut args = port_args(port);
    args.extend(["--threads".to_string(), "2".to_string()]);
    let (v1, v2) = (fixture("poold"), fixture("poold-v2-layout"));
    let inst = mcr.start("poold", &v1, &args);
    let mut a = Client::connect(port);
    let mut b = Client::connect(port);
    for _ in 0..3 {
        assert_eq!(a.request("PING"), "PONG");
    }
    assert_eq!(b.request("INCR"), "VALUE 1");
    // Both workers are busy: this one waits in the queue, its half line unread.
    let mut queued = Client::connect(port);
    queued.send_raw(b"SESS").unwrap();
    wait_for(Duration::from_secs(5), "poold to accept the queued connection", || server_accepted(port, &queued));
    let (sa, sb) = (a.request("SESSION"), b.request("SESSION"));
    assert_eq!(session_field(&sa, "cmds"), 4, "{sa}");

    let (out, v) = update_outcome(&mcr, "poold", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 3, "{v:#}");

    // The served sessions carry on with their own state, in the new version.
    let sa2 = a.request("SESSION");
    assert_eq!(session_field(&sa2, "id"), session_field(&sa, "id"), "{sa} then {sa2}");
    assert_eq!(session_field(&sa2, "cmds"), 5, "four before, and this one: {sa2}");
    assert_eq!(session_field(&b.request("SESSION"), "id"), session_field(&sb, "id"));
    assert_eq!(b.request("VERSION"), "VERSION poold 2");
    assert_eq!(b.request("INCR"), "VALUE 2", "the shared counter moved too");
    // The queued session is still queued (both workers serve theirs); when one ends it is
    // served, and its half command completes.
    queued.send_raw(b"ION\n").unwrap();
    assert_eq!(b.request("QUIT"), "BYE");
    let sq = queued.read_line().expect("the queued session is served after the update");
    assert_eq!(session_field(&sq, "cmds"), 1, "{sq}");
    assert_eq!(queued.request("VERSION"), "VERSION poold 2");

    // And back to v1: the same sessions, still served.
    let (out, v) = update_outcome(&mcr, "poold", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 2, "{v:#}");
    assert_eq!(a.request("VERSION"), "VERSION poold 1");
    assert_eq!(session_field(&a.request("SESSION"), "cmds"), 7);
    assert_eq!(queued.request("VERSION"), "VERSION poold 1");
    assert_eq!(queued.request("INCR"), "VALUE 3");
    // New connections are served once a worker is free, numbered on from the old ones.
    assert_eq!(a.request("QUIT"), "BYE");
    let mut fresh = Client::connect(port);
    let sf = fresh.request("SESSION");
    assert!(session_field(&sf, "id") > session_field(&sq, "id"), "{sf} after {sq}");
}

/// forkd → forkd-v2-layout: each pre-forked worker process serves one client from its
/// stack. Every worker's session survives the update in its own process (same PID, same
/// per-session counter, a half-sent command completes), served to its end by the new
/// version's resume handler; then the workers accept again.
#[test]
fn forkd_sessions_survive_in_every_worker_process() {
    let mcr = Mcr::new("t-forkd-sessions");
    let port = free_port();
    let mut args = port_args(port);
    args.extend(["--workers".to_string(), "2".to_string()]);
    let (v1, v2) = (fixture("forkd"), fixture("forkd-v2-layout"));
    let inst = mcr.start("forkd", &v1, &args);
    let mut a = Client::connect(port);
    let mut b = Client::connect(port);
    let (pa, pb) = (a.request("PID"), b.request("PID"));
    assert_ne!(pa, pb, "two workers serve the two clients");
    for _ in 0..4 {
        assert_eq!(a.request("PING"), "PONG");
    }
    b.send_raw(b"SESS").unwrap();
    wait_for(Duration::from_secs(5), "the worker to read the half-sent command", || server_read_all_of(port, &b));

    let (out, v) = update_outcome(&mcr, "forkd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 2, "{v:#}");

    b.send_raw(b"ION\n").unwrap();
    assert_eq!(b.read_line().expect("the half-sent command completes"), "SESSION 2");
    assert_eq!(a.request("SESSION"), "SESSION 6");
    assert_eq!(a.request("PID"), pa, "the session stays in its worker process");
    assert_eq!(b.request("PID"), pb);
    assert_eq!(a.request("VERSION"), "VERSION forkd 2");
    // A worker whose moved session ends goes back to accepting.
    assert_eq!(a.request("QUIT"), "BYE");
    drop(a);
    let mut c = Client::connect(port);
    assert_eq!(c.request("VERSION"), "VERSION forkd 2");
    assert_eq!(c.request("SESSION"), "SESSION 2");

    // And back: the sessions, now in v2's layout, move again.
    let (out, v) = update_outcome(&mcr, "forkd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 2, "{v:#}");
    assert_eq!(b.request("SESSION"), "SESSION 4");
    assert_eq!(c.request("SESSION"), "SESSION 3");
    assert_eq!(b.request("VERSION"), "VERSION forkd 1");
}

/// A union holding a pointer to a heap block whose type changes: mcr cannot tell it is a
/// pointer, so the update rolls back naming the word and what resolves it; the old
/// version serves on. With an `MCR_POINTS_TO` hint in the source, the same update
/// commits and the union still points at the right (moved, transformed) node.
#[test]
fn union_pointer_conflicts_until_hinted() {
    let mcr = Mcr::new("t-kvd-union");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("kvd", &fixture("kvd-opaque"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b 2"), "OK");
    assert_rolls_back_naming(
        &mcr,
        "kvd",
        &fixture("kvd-v2-layout-opaque"),
        &args,
        &["last_set", "a union holds", "MCR_POINTS_TO"],
    );
    assert_eq!(c.request("LAST"), "LAST b");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    drop(c);
    inst.stop().ok();

    let inst = mcr.start("kvd", &fixture("kvd-hinted"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b 2"), "OK");
    let (out, _) = update_outcome(&mcr, "kvd", &[], &fixture("kvd-v2-layout-hinted"), &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    assert_eq!(c.request("LAST"), "LAST b", "the union follows the node into the new layout");
    assert_eq!(c.request("SET c 3"), "OK");
    assert_eq!(c.request("LAST"), "LAST c");
    assert_eq!(c.request("GET a"), "VALUE 1");
}

/// Conservative tracing (issue 13): the new version adopted the old heap, so a heap
/// address in a union pins its block where it is. An update that does not change that
/// block's type (here the same build again) commits without a hint, the union still
/// finds its node, and the report counts the pinned block.
#[test]
fn a_union_pointer_pins_its_block_in_place_when_its_type_does_not_change() {
    let mcr = Mcr::new("t-kvd-pin");
    let port = free_port();
    let args = port_args(port);
    let opaque = fixture("kvd-opaque");
    let inst = mcr.start("kvd", &opaque, &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b 2"), "OK");
    let (out, v) = update_outcome(&mcr, "kvd", &[], &opaque, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert!(v["transfer"]["pinned"].as_u64().is_some_and(|n| n >= 1), "the node the union holds is pinned: {v:#}");
    assert_eq!(c.request("LAST"), "LAST b", "the union still points to its node");
    assert_eq!(c.request("SET c 3"), "OK");
    assert_eq!(c.request("LAST"), "LAST c");
    assert_eq!(c.request("GET a"), "VALUE 1");
}

/// Pointers tagged in their low bits (nginx's "instance" bit): kvd-tagged keeps the last
/// SET node as a `struct kv_node *` with 1 in its low bit and as a `uintptr_t` with 3 in
/// its low two. Without hints the update into the layout change rolls back naming the
/// word and MCR_TAGGED (the integer holds a heap address plus 3; with the integer hinted,
/// the pointer points into a node whose layout changes); the old version serves on. With `MCR_TAGGED` (and `MCR_POINTS_TO` for the integer) it commits, LAST finds the
/// same key with both tags still on, and the tags survive the update back as well.
#[test]
fn tagged_pointers_conflict_until_hinted_and_keep_their_tags() {
    let mcr = Mcr::new("t-kvd-tagged");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("kvd", &fixture("kvd-tagged"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b 2"), "OK");
    assert_eq!(c.request("LAST"), "LAST b tags 1 3");
    assert_rolls_back_naming(
        &mcr,
        "kvd",
        &fixture("kvd-v2-layout-tagged"),
        &args,
        &["last_tagged_word", "integer", "MCR_TAGGED"],
    );
    assert_eq!(c.request("LAST"), "LAST b tags 1 3");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    // The integer hinted (in the new build) but not the typed pointer: that one points one
    // byte into a node whose layout changes.
    assert_rolls_back_naming(
        &mcr,
        "kvd",
        &fixture("kvd-v2-layout-tagged-wordhint"),
        &args,
        &["last_tagged:", "middle of an element", "MCR_TAGGED"],
    );
    assert_eq!(c.request("LAST"), "LAST b tags 1 3");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    drop(c);
    inst.stop().ok();

    let (old, new) = (fixture("kvd-tagged-hinted"), fixture("kvd-v2-layout-tagged-hinted"));
    let check = mcr.run(&[OsString::from("check"), old.clone().into(), new.clone().into()]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(check.stdout.contains("MCR_TAGGED(\"last_tagged_word\", 2)"), "mcr check lists the tag: {check}");
    assert!(!check.stdout.contains("has no effect"), "{check}");
    let inst = mcr.start("kvd", &old, &args);
    let mut c = Client::connect(port);
    fill(&mut c, 30);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("SET b 2"), "OK");
    let (out, v) = update_outcome(&mcr, "kvd", &[], &new, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let warnings = v["transfer"]["warnings"].as_array().cloned().unwrap_or_default();
    assert!(warnings.is_empty(), "{v:#}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    assert_eq!(c.request("LAST"), "LAST b tags 1 3", "both words follow the node into the new layout, tags on");
    assert_eq!(c.request("GET key7"), "VALUE value 7 with spaces");
    // And back: the tags survive a second update.
    let (out, _) = update_outcome(&mcr, "kvd", &[], &old, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    assert_eq!(c.request("LAST"), "LAST b tags 1 3");
    assert_eq!(c.request("SET c 3"), "OK");
    assert_eq!(c.request("LAST"), "LAST c tags 1 3");
    assert_eq!(c.request("GET a"), "VALUE 1");
    assert_eq!(c.request("GET key29"), "VALUE value 29 with spaces");
    assert_eq!(c.request("COUNT"), "COUNT 33");
}

/// The hint an update needs may come with the new build: the old kvd-opaque has none, the
/// new kvd-v2-layout-hinted has `MCR_POINTS_TO("last_set", "struct kv_node")`, and the
/// update applies it to the old version's union (commits, LAST still right), as `mcr
/// check` said it would.
#[test]
fn a_hint_in_the_new_build_resolves_the_old_builds_union() {
    let mcr = Mcr::new("t-kvd-union-new-hint");
    let port = free_port();
    let args = port_args(port);
    let (old, new) = (fixture("kvd-opaque"), fixture("kvd-v2-layout-hinted"));
    let check = mcr.run(&[OsString::from("check"), old.clone().into(), new.clone().into()]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(check.stdout.contains("in the new build"), "{check}");
    let inst = mcr.start("kvd", &old, &args);
    let mut c = Client::connect(port);
    fill(&mut c, 50);
    assert_eq!(c.request("SET b 2"), "OK");
    let (out, v) = update_outcome(&mcr, "kvd", &[], &new, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let warnings = v["transfer"]["warnings"].as_array().cloned().unwrap_or_default();
    assert!(warnings.is_empty(), "{v:#}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    assert_eq!(c.request("LAST"), "LAST b", "the union follows the node into the new layout");
    assert_eq!(c.request("GET key7"), "VALUE value 7 with spaces");
}

/// kvd v3-link moves `next` (the hash bucket chain) into a nested struct, `link.next`.
/// The transfer moves every node (it follows the old `next`) but cannot know where the
/// pointer went: without a handler `link.next` starts zeroed and every node behind its
/// bucket's first is lost. The handler of kvd-v3-link-handled sets it from the old
/// pointer with mcr_translate(): every key of every chain answers after the update, the
/// chains can be changed, and the hit counts (same field) came along.
#[test]
fn object_handler_translates_old_pointers_into_the_new_version() {
    let mcr = Mcr::new("t-kvd-translate");
    let port = free_port();
    let args = port_args(port);
    // 3000 keys in 1024 buckets: chains of several nodes.
    let keys = 3000usize;
    for (v3, handled) in [("kvd-v3-link", false), ("kvd-v3-link-handled", true)] {
        let inst = mcr.start("kvd", &fixture("kvd"), &args);
        let mut c = Client::connect(port);
        fill(&mut c, keys);
        for _ in 0..2 {
            assert_eq!(c.request("GET key2999"), "VALUE value 2999 with spaces");
        }
        let (out, v) = update_outcome(&mcr, "kvd", &[], &fixture(v3), &args);
        assert_eq!(out.code(), 0, "{v3}: {out}\nlog:\n{}", inst.log());
        assert_eq!(c.request("VERSION"), "VERSION kvd 3");
        assert_eq!(c.request("COUNT"), format!("COUNT {keys}"), "{v3}: the statistics moved either way");
        let found = (0..keys)
            .filter(|i| {
                let got = c.request(&format!("GET key{i}"));
                got == format!("VALUE value {i} with spaces") || {
                    assert_eq!(got, "NOTFOUND", "{v3}: key{i}");
                    false
                }
            })
            .count();
        let n_handled = v["transfer"]["handled"].as_u64().unwrap_or(0);
        if handled {
            assert_eq!(found, keys, "{v3}: every chain relinked: {v:#}");
            assert_eq!(n_handled, keys as u64, "{v3}: one handler call per node: {v:#}");
            assert_eq!(c.request("HITS key2999"), "HITS 3", "two GETs before, one after");
            // The relinked chains work in the new layout: delete from their middle, add.
            for i in (0..keys).step_by(7) {
                assert_eq!(c.request(&format!("DEL key{i}")), "DELETED", "key{i}");
            }
            assert_eq!(c.request("SET fresh 1"), "OK");
            let left = (0..keys)
                .filter(|i| i % 7 != 0)
                .all(|i| c.request(&format!("GET key{i}")) == format!("VALUE value {i} with spaces"));
            assert!(left, "{v3}: the keys not deleted are all there");
            assert_eq!(c.request("GET fresh"), "VALUE 1");
        } else {
            assert_eq!(n_handled, 0, "{v:#}");
            assert!(found > 0 && found <= 1024, "{v3}: only the buckets' first nodes are reachable, found {found}");
        }
        drop(c);
        inst.stop().ok();
    }
    let check = mcr.run(&[OsString::from("check"), fixture("kvd").into(), fixture("kvd-v3-link-handled").into()]);
    assert!(
        check.stdout.contains("kv_node.next") && check.stdout.contains("has an MCR_ADD_OBJ_HANDLER for it"),
        "{check}"
    );
}

/// `mcr update` run from a shell that leaves descriptors open to it (a client socket on
/// fd 3, as `exec 3<>/dev/tcp/...` does): none of them may slip into the new version,
/// where they would take the numbers of the connections the update moves.
#[test]
fn descriptors_left_open_to_mcr_do_not_reach_the_new_version() {
    use std::os::unix::process::CommandExt;
    let mcr = Mcr::new("t-kvd-stray-fds");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.request(&format!("SET c{i} {i}")), "OK");
    }
    let mut argv: Vec<OsString> = vec!["update".into(), "kvd".into(), "--".into(), fixture("kvd-v2-layout").into()];
    argv.extend(args.iter().map(OsString::from));
    let mut cmd = mcr.command(&argv);
    // SAFETY: between fork and exec only async-signal-safe calls (open, dup2, close).
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            for n in 3..12 {
                if n != fd {
                    libc::dup2(fd, n);
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run mcr update");
    assert!(out.status.success(), "{}\nlog:\n{}", String::from_utf8_lossy(&out.stderr), inst.log());
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.request(&format!("GET c{i}")), format!("VALUE {i}"));
        assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    }
}

/// kvd v3 renames `hits` into `meta.reads`, in a nested struct: mcr's automatic
/// transformation cannot know, so the counts are lost (and `mcr check` says the field
/// is dropped). With an MCR_ADD_OBJ_HANDLER in v3 the same update carries them over.
#[test]
fn object_handler_carries_a_field_moved_elsewhere() {
    let mcr = Mcr::new("t-kvd-handler");
    let port = free_port();
    let args = port_args(port);
    for (v3, hits) in [("kvd-v3-meta", "HITS 0"), ("kvd-v3-meta-handled", "HITS 3")] {
        let inst = mcr.start("kvd", &fixture("kvd"), &args);
        let mut c = Client::connect(port);
        assert_eq!(c.request("SET a 1"), "OK");
        for _ in 0..3 {
            assert_eq!(c.request("GET a"), "VALUE 1");
        }
        let (out, v) = update_outcome(&mcr, "kvd", &[], &fixture(v3), &args);
        assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
        assert_eq!(c.request("VERSION"), "VERSION kvd 3");
        assert_eq!(c.request("HITS a"), hits, "{v3}: {v:#}");
        assert_eq!(c.request("GET a"), "VALUE 1");
        let handled = v["transfer"]["handled"].as_u64().unwrap_or(0);
        assert_eq!(handled > 0, v3.ends_with("handled"), "{v:#}");
        drop(c);
        inst.stop().ok();
    }
    let check = mcr.run(&[OsString::from("check"), fixture("kvd").into(), fixture("kvd-v3-meta").into()]);
    assert!(check.stdout.contains("kv_node.hits") && check.stdout.contains("dropped"), "{check}");
    assert!(!check.stdout.contains("MCR_ADD_OBJ_HANDLER for it"), "{check}");
    let check = mcr.run(&[OsString::from("check"), fixture("kvd").into(), fixture("kvd-v3-meta-handled").into()]);
    assert!(check.stdout.contains("has an MCR_ADD_OBJ_HANDLER for it"), "mcr check names the handler: {check}");
}

/// kvd-startobj: globals point to structs startup allocated. An update matches each with
/// the block the new version's startup allocated from the same call stack (call-stack ID
/// and ordinal) and reuses it: what the old version wrote since startup (the audit
/// counters) moves into it, what it never wrote (the limits) stays as the new version's
/// startup made it, and no block is left behind (the next update finds exactly as many
/// live blocks).
#[test]
fn startup_objects_go_into_the_new_versions_own_startup_blocks() {
    let mcr = Mcr::new("t-kvd-startobj");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("kvd-startobj"), fixture("kvd-v2-startobj"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut c = Client::connect(port);
    fill(&mut c, 20);
    assert_eq!(c.request("AUDIT"), "AUDIT sets=20 last=key19");
    assert_eq!(c.request("LIMITS"), "LIMITS version=1 max_key=250 motto=limits of kvd 1");
    let greeting = c.request("GREETING");

    let (out, v) = update_outcome(&mcr, "kvd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let t = &v["transfer"];
    assert_eq!(t["startup_matched"], 3, "limits, audit and greeting each went into v2's own block: {v:#}");
    assert_eq!(t["startup_reallocated"], 0, "{v:#}");
    assert!(t["startup_kept"].as_u64().is_some_and(|n| n >= 1), "limits was never written since startup: {v:#}");
    // Written since startup: carried over (into v2's layout, which added `dels`).
    assert_eq!(c.request("AUDIT"), "AUDIT sets=20 last=key19 dels=0");
    // Never written since startup: v2's startup values stay.
    assert_eq!(c.request("LIMITS"), "LIMITS version=2 max_key=500 motto=limits of kvd 2");
    assert_eq!(c.request("GREETING"), greeting);
    // The reused blocks are the ones v2's code uses.
    assert_eq!(c.request("SET more 1"), "OK");
    assert_eq!(c.request("DEL more"), "DELETED");
    assert_eq!(c.request("AUDIT"), "AUDIT sets=21 last=more dels=1");
    assert_all_keys(port, 20);

    // Back to v1: v2's process holds exactly the blocks v1's did (the SET and DEL above
    // cancel out): nothing of v2's own startup was left behind by the first update.
    let (out, back) = update_outcome(&mcr, "kvd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(back["transfer"]["live_objects"], t["live_objects"], "first update: {v:#}\nsecond: {back:#}");
    assert_eq!(back["transfer"]["startup_matched"], 3, "{back:#}");
    assert_eq!(c.request("AUDIT"), "AUDIT sets=21 last=more");
    assert_eq!(c.request("LIMITS"), "LIMITS version=1 max_key=250 motto=limits of kvd 1");
    assert_eq!(c.request("GREETING"), greeting);
}

/// A startup object whose counterpart in the new version is too small for it (v2's
/// greeting is shorter) is reallocated, and the report says so; the fresh block takes
/// over its identity, so the update back matches it again.
#[test]
fn startup_object_with_a_smaller_counterpart_is_reallocated_and_reported() {
    let mcr = Mcr::new("t-kvd-startobj-short");
    let port = free_port();
    let args = port_args(port);
    let (v1, short) = (fixture("kvd-startobj"), fixture("kvd-v2-startobj-short"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut c = Client::connect(port);
    fill(&mut c, 3);
    let greeting = c.request("GREETING");

    let (out, v) = update_outcome(&mcr, "kvd", &[], &short, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let t = &v["transfer"];
    assert_eq!((t["startup_matched"].as_u64(), t["startup_reallocated"].as_u64()), (Some(2), Some(1)), "{v:#}");
    let note = t["startup_notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("kvd.c:greeting") && note.contains("counterpart has 14 bytes, the transferred object needs 33"),
        "the report names the object and the sizes: {v:#}"
    );
    // The old greeting was written since startup (its page was): it moved, into a fresh block.
    assert_eq!(c.request("GREETING"), greeting);
    assert_eq!(c.request("AUDIT"), "AUDIT sets=3 last=key2 dels=0");

    let (out, back) = update_outcome(&mcr, "kvd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(
        (back["transfer"]["startup_matched"].as_u64(), back["transfer"]["startup_reallocated"].as_u64()),
        (Some(3), Some(0)),
        "{back:#}"
    );
    assert_eq!(c.request("GREETING"), greeting);
    assert_eq!(c.request("AUDIT"), "AUDIT sets=3 last=key2");
}

/// Twenty updates alternating kvd-startobj and kvd-v2-startobj while a client writes:
/// every update reuses the new version's startup blocks, the audit counters count every
/// SET, and the server's live heap blocks, descriptors and memory grow only with the keys
/// added.
#[test]
fn twenty_updates_with_startup_objects_leak_no_block() {
    let mcr = Mcr::new("t-kvd-startobj-twenty");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("kvd-startobj"), fixture("kvd-v2-startobj"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut writer = Client::connect(port);
    fill(&mut writer, 100);
    let host = || host_pid(&fixture_by_version(&inst), port);
    let (mut fds0, mut rss0) = (0, 0);
    let mut next = 100;
    let mut live = LiveBlocks::default();
    for i in 0..20 {
        let (to, version) = if i % 2 == 0 { (&v2, 2) } else { (&v1, 1) };
        let (out, v) = update_outcome(&mcr, "kvd", &[], to, &args);
        assert_eq!(out.code(), 0, "update {i}: {out}\nlog:\n{}", inst.log());
        assert_eq!(
            (v["transfer"]["startup_matched"].as_u64(), v["transfer"]["startup_reallocated"].as_u64()),
            (Some(3), Some(0)),
            "update {i}: {v:#}"
        );
        live.check(i, &v, 10 * BLOCKS_PER_KEY);
        assert!(writer.request("LIMITS").starts_with(&format!("LIMITS version={version} ")), "update {i}");
        for _ in 0..10 {
            assert_eq!(writer.request(&format!("SET key{next} value {next} with spaces")), "OK", "after update {i}");
            next += 1;
        }
        let dels = if version == 2 { " dels=0" } else { "" };
        assert_eq!(
            writer.request("AUDIT"),
            format!("AUDIT sets={next} last=key{}{dels}", next - 1),
            "every SET counted, update {i}"
        );
        if i == 0 {
            (fds0, rss0) = (fd_count(host()), rss_kib(host()));
        }
    }
    assert_eq!(writer.request("AUDIT"), format!("AUDIT sets={next} last=key{}", next - 1));
    assert_all_keys(port, next);
    let (fds1, rss1) = (fd_count(host()), rss_kib(host()));
    assert_eq!(fds1, fds0, "descriptors of the server before and after 20 updates: {:?}", fd_links(host()));
    assert!(rss1 < rss0 + 4096, "resident memory grew from {rss0} KiB to {rss1} KiB over 20 updates");
}

/// connd → connd-v2-layout: a fork-per-connection server, each session in its own child
/// process (a session struct and a list of session variables on the child's heap). The
/// new version's respawn handler recreates each child with the old child's PID, the old
/// child's heap moves into it in the new layout, and its resume handler serves the
/// session on: variables, command counts and half-sent commands survive, in every
/// process. Then back to v1.
#[test]
fn connd_sessions_survive_in_respawned_per_connection_processes() {
    let mcr = Mcr::new("t-connd-sessions");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("connd"), fixture("connd-v2-layout"));
    let inst = mcr.start("connd", &v1, &args);
    let mut a = Client::connect(port);
    let mut b = Client::connect(port);
    let (pa, pb) = (a.request("PID"), b.request("PID"));
    assert_ne!(pa, pb, "one process per connection");
    assert_eq!(a.request("SET colour blue green"), "OK");
    assert_eq!(a.request("SET shape round"), "OK");
    assert_eq!(b.request("SET colour red"), "OK");
    b.send_raw(b"GET col").unwrap();
    wait_for(Duration::from_secs(5), "connd to read the half-sent GET", || server_read_all_of(port, &b));

    let (out, v) = update_outcome(&mcr, "connd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 2, "{v:#}");

    b.send_raw(b"our\n").unwrap();
    assert_eq!(b.read_line().expect("the half-sent GET completes"), "VALUE red");
    assert_eq!(a.request("GET colour"), "VALUE blue green");
    assert_eq!(a.request("GET shape"), "VALUE round");
    assert_eq!(a.request("PID"), pa, "the session's process keeps its PID");
    assert_eq!(b.request("PID"), pb);
    assert_eq!(a.request("VERSION"), "VERSION connd 2");
    assert_eq!(
        a.request("STATS"),
        "STATS sessions=8",
        "PID and two SETs before; GET, GET, PID, VERSION and STATS after"
    );
    // New connections get new processes of the new version.
    let mut c = Client::connect(port);
    assert_eq!(c.request("VERSION"), "VERSION connd 2");
    assert_eq!(c.request("SET k v"), "OK");
    // A respawned session ends like any other.
    assert_eq!(b.request("QUIT"), "BYE");
    drop(b);

    let (out, v) = update_outcome(&mcr, "connd", &[], &v1, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 2, "{v:#}");
    assert_eq!(a.request("GET colour"), "VALUE blue green");
    assert_eq!(a.request("VERSION"), "VERSION connd 1");
    assert_eq!(c.request("GET k"), "VALUE v");
    assert_eq!(c.request("PID"), c.request("PID"));
}

/// Connection-per-request load in a thread until `stop` (bounded): (answered, failures).
fn load_until(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u64, Vec::new());
        for _ in 0..200_000 {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            match Client::try_connect(port, Duration::from_secs(5)).and_then(|mut c| c.try_request("PING")) {
                Ok(r) if r == "PONG" => ok += 1,
                Ok(r) => failed.push(format!("answer {r:?}")),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    })
}

/// Ten updates in a row, alternating layouts, under connection-per-request load, with two
/// long sessions open throughout: in connd (sessions in per-connection processes, so every
/// update respawns the load's children too) and in poold (sessions on worker threads).
/// No session loses a variable or a count, no request fails, descriptors do not grow.
#[test]
fn ten_session_updates_under_load_lose_nothing() {
    for (server, v2, extra) in
        [("connd", "connd-v2-layout", vec![]), ("poold", "poold-v2-layout", vec!["--threads", "4"])]
    {
        let mcr = Mcr::new(&format!("t-{server}-ten"));
        let port = free_port();
        let mut args = port_args(port);
        args.extend(extra.iter().map(|s| s.to_string()));
        let (v1, v2) = (fixture(server), fixture(v2));
        let inst = mcr.start(server, &v1, &args);
        let mut a = Client::connect(port);
        let mut b = Client::connect(port);
        if server == "connd" {
            assert_eq!(a.request("SET who a"), "OK");
            assert_eq!(b.request("SET who b"), "OK");
        }
        // Both sessions accepted before the first update: one still in the listen backlog
        // (poold's acceptor not scheduled yet on a loaded machine) is not the old version's
        // to move, and the update counted one connection.
        wait_for(Duration::from_secs(5), "the server to accept both sessions", || {
            server_accepted(port, &a) && server_accepted(port, &b)
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = load_until(port, stop.clone());
        // The master (connd's children run the same program): the oldest process.
        let host = || host_pids_running(&fixture_by_version(&inst), port).into_iter().min().expect("the server runs");
        let mut fds0 = 0;
        for i in 0..10 {
            let to = if i % 2 == 0 { &v2 } else { &v1 };
            let (out, v) = update_outcome(&mcr, server, &[], to, &args);
            assert_eq!(out.code(), 0, "{server} update {i}: {out}\nlog:\n{}", inst.log());
            assert!(v["transfer"]["connections"].as_u64().is_some_and(|n| n >= 2), "{server} update {i}: {v:#}");
            assert_eq!(a.request("PING"), "PONG", "{server}: session a after update {i}");
            assert_eq!(b.request("PING"), "PONG", "{server}: session b after update {i}");
            if i == 0 {
                fds0 = fd_count(host());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, failed) = load.join().expect("load thread");
        assert!(
            failed.is_empty(),
            "{server}: {} of {} requests failed across 10 updates: {:?}",
            failed.len(),
            ok + failed.len() as u64,
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 0, "{server}: the load made no request");
        if server == "connd" {
            assert_eq!(a.request("GET who"), "VALUE a");
            assert_eq!(b.request("GET who"), "VALUE b");
            assert_eq!(a.request("STATS"), "STATS sessions=13", "{server}: SET, ten PINGs, GET, STATS");
        } else {
            assert_eq!(session_field(&a.request("SESSION"), "cmds"), 11, "{server}: ten PINGs and SESSION");
        }
        // The sessions and the load's connections are the only descriptors that come and go.
        drop((a, b));
        assert!(
            wait_until(Duration::from_secs(5), || fd_count(host()) <= fds0),
            "{server}: descriptors grew from {fds0}: {:?}",
            fd_links(host())
        );
    }
}

/// An update to a build without DWARF could move nothing of the state: it is refused
/// before the server is touched (the data and the connections stay), and goes through
/// only with --fresh-state, which drops the state on purpose. The same holds when the
/// running build is the one without it.
#[test]
fn an_update_that_would_drop_the_state_for_lack_of_debug_info_is_refused() {
    let mcr = Mcr::new("t-kvd-nodwarf");
    let port = free_port();
    let args = port_args(port);
    let stripped = mcr.tmp.join("kvd-v2-stripped");
    let st = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(fixture("kvd-v2"))
        .status()
        .expect("strip");
    assert!(st.success());
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET k precious"), "OK");
    let (out, _) = update_outcome(&mcr, "kvd", &[], &stripped, &args);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("no debug information") && out.stderr.contains("--fresh-state"), "{out}");
    assert_eq!(c.request("GET k"), "VALUE precious", "the connection and the data stay");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    assert!(inst.quiesce(500).success() && inst.resume().success(), "the server was left quiescable");
    // On purpose, it goes through (and the state is the new version's own).
    let (out, v) = update_outcome(&mcr, "kvd", &["--fresh-state"], &stripped, &args);
    assert_eq!(out.code(), 0, "{out}\n{v:#}");
    assert_eq!(Client::connect(port).request("GET k"), "NOTFOUND");
    // Now the running build has no DWARF: back to one that has is refused too.
    let (out, _) = update_outcome(&mcr, "kvd", &[], &fixture("kvd"), &args);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("kvd-v2-stripped") && out.stderr.contains("no debug information"), "{out}");
}

/// A new build another user could replace is worth a warning; --strict refuses it.
#[test]
fn an_update_to_a_program_other_users_can_change_warns_or_refuses() {
    let mcr = Mcr::new("t-kvd-untrusted");
    let port = free_port();
    let args = port_args(port);
    let open = mcr.tmp.join("kvd-v2-open");
    std::fs::copy(fixture("kvd-v2"), &open).expect("copy");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let _inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET k v"), "OK");
    let (out, _) = update_outcome(&mcr, "kvd", &["--strict"], &open, &args);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("--strict") && out.stderr.contains("writable by every user"), "{out}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1", "refused before anything changed");
    let (out, _) = update_outcome(&mcr, "kvd", &[], &open, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("warning") && out.stderr.contains("writable by every user"), "{out}");
    assert_eq!(c.request("GET k"), "VALUE v");
}

/// A new version that dies during its startup: the rollback says why, with the new
/// version's own last lines from the log.
#[test]
fn a_new_version_that_exits_during_startup_is_explained_with_its_log() {
    let mcr = Mcr::new("t-kvd-crash-log");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    let (out, v) = update_outcome(&mcr, "kvd", &[], &fixture("kvd-v2-crash"), &args);
    assert_eq!(out.code(), 1, "{out}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("exited") && msg.contains("crashing during startup"), "{v:#}\nlog:\n{}", inst.log());
    assert!(!msg.contains("kvd 1 listening"), "the old version's lines are not the new one's: {v:#}");
}

/// The heap window and slot size of mcr's allocator (crates/alloc/src/geometry.rs).
const HEAP_WINDOW: std::ops::Range<u64> = 0x1000_0000_0000..0x2000_0000_0000;
const HEAP_SLOT: u64 = 64 << 30;

/// The heap slots where process `pid` has a region (mcr-alloc's magic at the slot's base).
fn heap_slots(pid: i32) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut used = Vec::new();
    for line in maps.lines() {
        let Some((s, _)) = line.split_whitespace().next().and_then(|r| r.split_once('-')) else { continue };
        let s = u64::from_str_radix(s, 16).unwrap();
        if !HEAP_WINDOW.contains(&s) || !(s - HEAP_WINDOW.start).is_multiple_of(HEAP_SLOT) {
            continue;
        }
        let mut magic = [0u8; 8];
        if mem.read_exact_at(&mut magic, s).is_ok() && &magic == b"mcr-heap" {
            used.push((s - HEAP_WINDOW.start) / HEAP_SLOT);
        }
    }
    used
}

/// Issue 13: the new version's heap keeps the old version's slots free (reserving them)
/// and adopts the old regions there; regions the new version empties retire, so over
/// updates back and forth the versions reuse a few slots instead of using up the window.
#[test]
fn the_new_version_adopts_the_old_heap_where_it_was_and_slots_are_reused() {
    let mcr = Mcr::new("t-heap-slots");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2-layout"));
    let inst = mcr.start("kvd", &v1, &args);
    fill(&mut Client::connect(port), 50);
    let mut previous = heap_slots(host_pid(&v1, port));
    assert!(!previous.is_empty(), "kvd's heap is in mcr's window");
    let mut all = previous.clone();
    for (round, next) in [&v2, &v1, &v2, &v1, &v2, &v1].into_iter().enumerate() {
        let (out, v) = update_outcome(&mcr, "kvd", &[], next, &args);
        assert_eq!(out.code(), 0, "update {round}: {out}\nlog:\n{}", inst.log());
        assert_eq!(
            v["transfer"]["heap_regions_adopted"].as_u64(),
            Some(previous.len() as u64),
            "update {round}: every old region adopted: {v:#}"
        );
        let used = heap_slots(host_pid(next, port));
        assert!(
            used.iter().any(|s| !previous.contains(s)),
            "update {round}: the new version's own region is outside the old version's slots {previous:?}: {used:?}"
        );
        all.extend(&used);
        previous = used;
        assert_all_keys(port, 50);
    }
    all.sort();
    all.dedup();
    assert!(all.len() <= 4, "versions reuse a few slots, not one more per update: {all:?}");
}

/// `mcr update --count-pointers` counts what the transfer traced, as the paper's Table 2:
/// kvd-opaque's 50 keys are 50 nodes, each reached by one typed pointer (a bucket of the
/// global table or a node's `next`) and holding two (its key and value); the union that
/// keeps the last SET node holds one likely pointer, from a global into the heap. The
/// update still commits, every key there; without the flag nothing is counted.
#[test]
fn count_pointers_counts_precise_and_likely_pointers_by_source_and_target() {
    let mcr = Mcr::new("t-kvd-census");
    let port = free_port();
    let args = port_args(port);
    let opaque = fixture("kvd-opaque");
    let inst = mcr.start("kvd", &opaque, &args);
    fill(&mut Client::connect(port), 50);
    let (out, v) = update_outcome(&mcr, "kvd", &["--count-pointers"], &opaque, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    let p = &v["transfer"]["pointers"];
    let n = |kind: &str, field: &str| p[kind][field].as_u64().unwrap_or_else(|| panic!("{kind}.{field} in {v:#}"));
    assert_eq!((n("precise", "total"), n("precise", "to_dynamic")), (150, 150), "{p:#}");
    assert_eq!(n("precise", "from_static") + n("precise", "from_dynamic"), 150, "{p:#}");
    assert!(n("precise", "from_dynamic") >= 100, "every key and value pointer is a node's: {p:#}");
    assert_eq!((n("likely", "from_static"), n("likely", "to_static"), n("likely", "to_library")), (1, 0, 0), "{p:#}");
    assert!(n("likely", "to_dynamic") >= 1, "the union's node: {p:#}");
    assert_eq!(v["transfer"]["walked_all"], "--count-pointers", "{v:#}");
    assert_all_keys(port, 50);

    let (out, v) = update_outcome(&mcr, "kvd", &[], &opaque, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(v["transfer"].get("pointers").is_none(), "counted without the flag: {v:#}");
}
