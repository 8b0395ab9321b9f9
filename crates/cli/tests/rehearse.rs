//! `mcr update --rehearse`, through the real binary: a rehearsal runs the update up to its
//! commit point against the live server and rolls back on purpose. What it reports is
//! what the real update that follows does (same conflicts, same objects); the server keeps
//! its data, its processes and its clients' connections, and serves on.

mod support;

use serde_json::Value;
use support::*;

fn history(mcr: &Mcr, name: &str) -> Vec<Value> {
    let out = mcr.run(&["history", name, "--json"]).ok();
    serde_json::from_str::<Value>(&out.stdout).unwrap().as_array().cloned().unwrap_or_default()
}

/// The figures of the state transfer a rehearsal must predict.
fn moved(report: &Value) -> Vec<(&'static str, Value)> {
    let t = &report["transfer"];
    [
        "objects",
        "untouched",
        "in_place",
        "pinned",
        "live_objects",
        "connections",
        "handled",
        "startup_matched",
        "globals_dropped",
        "walked_all",
    ]
    .into_iter()
    .map(|k| (k, t[k].clone()))
    .collect()
}

#[test]
fn a_rehearsal_predicts_the_update_and_leaves_the_server_as_it_was() {
    let mcr = Mcr::new("rehearse");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let inst = mcr.start("kvd", &v1, &args);
    let mut c = Client::connect(port);
    let replies = pipelined(&mut c, (1..=300).map(|i| format!("SET key{i} value {i}")));
    assert!(replies.iter().all(|r| r == "OK"));
    c.send_raw(b"SET half").unwrap();
    let before = host_pids(&v1, port);

    let (out, rehearsal) = update_outcome(&mcr, "kvd", &["--rehearse"], &v2, &args);
    assert_eq!(out.code(), 0, "the update would commit: {out}\nlog:\n{}", inst.log());
    assert_eq!(rehearsal["rehearsed"], true, "{rehearsal:#}");
    assert_eq!(rehearsal["would_commit"], true, "{rehearsal:#}");
    assert_eq!(rehearsal["committed"], false, "{rehearsal:#}");
    assert_eq!(rehearsal["phases"]["drain_ms"], 0.0, "no drain: {rehearsal:#}");
    assert_eq!(rehearsal["phases"]["commit_ms"], 0.0, "{rehearsal:#}");
    let paused = rehearsal["phases"]["paused_ms"].as_f64().unwrap();
    assert!(paused > 0.0 && rehearsal["phases"]["rollback_ms"].as_f64().unwrap() > 0.0, "{rehearsal:#}");
    assert_eq!(rehearsal["drain_would_wait"], serde_json::json!([]), "{rehearsal:#}");
    assert_eq!(rehearsal["transfer"]["connections"], 1, "the client's connection would move: {rehearsal:#}");
    // A code-only update: the 300 keys' blocks stay as they are in the adopted heap.
    assert!(rehearsal["transfer"]["untouched"].as_u64().is_some_and(|n| n >= 300), "{rehearsal:#}");

    // The server is the one that ran before, with its data and its client: the half-sent
    // command completes on the same connection.
    assert_eq!(host_pids(&v1, port), before, "the same processes serve");
    c.send_raw(b" done\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "OK");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    assert_eq!(c.request("GET key300"), "VALUE value 300");
    assert_eq!(c.request("GET half"), "VALUE done");
    let mut other = Client::connect(port);
    assert_eq!(other.request("GET key1"), "VALUE value 1", "new connections are accepted");
    drop(other);
    wait_for(COMMAND_TIMEOUT, "the server closes the second connection", || open_server_ends(port).len() == 1);
    assert!(mcr.instance_files().iter().all(|f| !f.contains(".next")), "{:?}", mcr.runtime_files());
    let h = history(&mcr, "kvd");
    assert_eq!(h.len(), 1, "{h:#?}");
    assert_eq!(h[0]["outcome"], serde_json::json!({"result": "rehearsed", "would_commit": true}), "{:#}", h[0]);
    assert_eq!(h[0]["transfer"]["untouched"], rehearsal["transfer"]["untouched"]);

    // The human report says the same.
    let human = update(&mcr, "kvd", &["--rehearse"], &v2, &args);
    assert_eq!(human.code(), 0, "{human}");
    assert!(human.stdout.starts_with("rehearsal of the update of 'kvd' to "), "{human}");
    assert!(human
        .stdout
        .lines()
        .next()
        .is_some_and(|l| l.contains("kvd-v2 --port") && l.contains(": it would commit;")));
    for what in ["paused ", "1 would move; the drain would wait for none", "heap blocks carried", "conflicts: none"] {
        assert!(human.stdout.contains(what), "{what:?} missing: {human}");
    }
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");

    // The real update, right after a last rehearsal, does what the rehearsal said.
    let (out, rehearsal) = update_outcome(&mcr, "kvd", &["--rehearse"], &v2, &args);
    assert_eq!(out.code(), 0, "{out}");
    let (out, real) = update_outcome(&mcr, "kvd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(real["committed"], true);
    assert_eq!(moved(&real), moved(&rehearsal), "rehearsal:\n{rehearsal:#}\nupdate:\n{real:#}");
    assert_eq!(real["conflicts"], rehearsal["conflicts"]);
    assert_eq!(real["new_processes"], rehearsal["new_processes"]);
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    assert_eq!(c.request("GET key300"), "VALUE value 300");
    let h = history(&mcr, "kvd");
    let outcomes: Vec<Value> = h.iter().map(|e| e["outcome"]["result"].clone()).collect();
    assert_eq!(outcomes, ["rehearsed", "rehearsed", "rehearsed", "committed"]);
    // A layout change (struct kv_node grows, hits widens): every block is transformed,
    // and the rehearsal says how many.
    let v2_layout = fixture("kvd-v2-layout");
    let (out, rehearsal) = update_outcome(&mcr, "kvd", &["--rehearse"], &v2_layout, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(rehearsal["transfer"]["objects"].as_u64().is_some_and(|n| n >= 300), "{rehearsal:#}");
    let (out, real) = update_outcome(&mcr, "kvd", &[], &v2_layout, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(moved(&real), moved(&rehearsal), "rehearsal:\n{rehearsal:#}\nupdate:\n{real:#}");
    assert_eq!(c.request("GET key300"), "VALUE value 300");

    // `--back` goes back past the rehearsals, to the build before the committed update.
    let out = mcr.run(&["update", "kvd", "--back", "--rehearse"]);
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 2", "a rehearsal of --back changes nothing");
    assert!(out.stderr.contains("kvd-v2 --port"), "back to kvd-v2, past the rehearsals: {out}");
}

#[test]
fn a_rehearsal_refuses_as_the_update_does() {
    let mcr = Mcr::new("rehearse-refused");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET kept yes"), "OK");

    // A new version that binds another port: replay conflicts, the update rolls back.
    let other = fixture("kvd-v2-listen-other");
    let (rehearsed, rehearsal) = update_outcome(&mcr, "kvd", &["--rehearse"], &other, &args);
    assert_eq!(rehearsed.code(), 1, "{rehearsed}");
    assert_eq!(rehearsal["would_commit"], false, "{rehearsal:#}");
    let human = update(&mcr, "kvd", &["--rehearse"], &other, &args);
    assert_eq!(human.code(), 1, "{human}");
    assert!(human.stderr.starts_with("mcr: rehearsal of the update of 'kvd': the update would roll back"), "{human}");
    assert!(human.stderr.contains("new version: bind("), "{human}");
    let (real_out, real) = update_outcome(&mcr, "kvd", &[], &other, &args);
    assert_eq!(real_out.code(), 1, "{real_out}");
    assert_eq!(rehearsal["message"], real["message"]);
    assert_eq!(rehearsal["conflicts"], real["conflicts"], "the same conflicts");
    assert_eq!(rehearsal["conflicts"].as_array().map(Vec::len), Some(1), "{rehearsal:#}");
    assert_eq!(c.request("GET kept"), "VALUE yes");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    let h = history(&mcr, "kvd");
    let outcomes: Vec<&Value> = h.iter().map(|e| &e["outcome"]).collect();
    assert_eq!(outcomes[0]["result"], "rehearsed", "{h:#?}");
    assert_eq!(outcomes[0]["would_commit"], false, "{h:#?}");
    assert!(outcomes[0]["reason"].as_str().is_some_and(|r| r.contains("conflict")), "{h:#?}");
    assert_eq!(outcomes[2]["result"], "rolled_back", "{h:#?}");
    drop(c);
    inst.stop().ok();

    // A server that never quiesces: refused before anything started, in both.
    let stuck_args: Vec<String> = vec!["--port".into(), port.to_string(), "--stuck-after-start".into()];
    let stuck = mcr.start("stuck", &fixture("stuckd"), &stuck_args);
    let flags = ["--quiesce-timeout", "300"];
    let rehearsal = update(&mcr, "stuck", &["--rehearse", flags[0], flags[1]], &fixture("stuckd"), &stuck_args);
    let real = update(&mcr, "stuck", &flags, &fixture("stuckd"), &stuck_args);
    assert_eq!((rehearsal.code(), real.code()), (1, 1), "{rehearsal}\n{real}");
    let refusal = "the running version did not quiesce, nothing was changed";
    assert!(real.stderr.contains(&format!("mcr: {refusal}")), "{real}");
    assert!(
        rehearsal.stderr.contains(&format!("mcr: rehearsal: the update would stop here: {refusal}")),
        "the rehearsal refuses with the update's words:\n{rehearsal}\n{real}"
    );
    assert_eq!(Client::connect(port).request("PING"), "PONG");
    drop(stuck);
}
