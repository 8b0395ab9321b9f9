//! `mcr run --profile FILE`: the profile's call-stack IDs, and only they, are quiescent
//! points. IDs are taken from `mcr status` of an unprofiled run, which is also how a user
//! would write one by hand.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::*;

/// (main thread QP id, worker QP ids) of a poold status.
fn poold_ids(st: &Value) -> (String, BTreeSet<String>) {
    let mut main = None;
    let mut workers = BTreeSet::new();
    for (_, t) in threads(st) {
        let id =
            t["quiescent_point"]["id"].as_str().unwrap_or_else(|| panic!("no quiescent point: {st:#}")).to_string();
        if t["class"] == "main" {
            main = Some(id);
        } else {
            workers.insert(id);
        }
    }
    (main.unwrap_or_else(|| panic!("no main thread: {st:#}")), workers)
}

fn write_profile(mcr: &Mcr, file: &str, ids: &[&String]) -> std::path::PathBuf {
    let qps: Vec<Value> = ids.iter().map(|id| json!({ "id": id, "call": "", "frames": [] })).collect();
    let path = mcr.tmp.join(file);
    std::fs::write(&path, json!({ "format": "mcr-profile/1", "quiescent_points": qps }).to_string()).unwrap();
    path
}

fn run_with_profile(mcr: &Mcr, name: &str, profile: &std::path::Path, port: u16) -> Out {
    let poold = fixture("poold");
    mcr.run(&[
        "run".as_ref(),
        "--detach".as_ref(),
        "--startup-timeout".as_ref(),
        "3".as_ref(),
        "--name".as_ref(),
        name.as_ref(),
        "--profile".as_ref(),
        profile.as_os_str(),
        "--".as_ref(),
        poold.as_os_str(),
        "--port".as_ref(),
        port.to_string().as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
    ])
}

#[test]
fn profile_ids_decide_what_is_a_quiescent_point() {
    let mcr = Mcr::new("profile");
    let port = free_port();
    let plain = mcr.start("plain", &fixture("poold"), &["--port", &port.to_string(), "--threads", "2"]);
    let (main_id, worker_ids) = poold_ids(&plain.status());
    assert_eq!(worker_ids.len(), 1, "both workers block at the same call stack");
    drop(plain);
    let worker_id = worker_ids.iter().next().unwrap();

    // Both call stacks listed: starts, and quiesces with the same IDs.
    let full = write_profile(&mcr, "full.json", &[&main_id, worker_id]);
    let port = free_port();
    let out = run_with_profile(&mcr, "full", &full, port);
    let inst = mcr.guard("full");
    assert!(out.success(), "{out}\nlog: {}", inst.log());
    let out = inst.quiesce(1000);
    assert!(out.success(), "{out}");
    let st = inst.status();
    assert_eq!(poold_ids(&st), (main_id.clone(), worker_ids.clone()));
    assert!(threads(&st).iter().all(|(_, t)| t["state"] == "parked"), "{st:#}");
    inst.resume().ok();
    drop(inst);

    // Only the workers' stack listed: the main thread's accept is no quiescent point, so
    // startup never completes, and quiescence names the main thread and gives up.
    let partial = write_profile(&mcr, "workers-only.json", &[worker_id]);
    let port = free_port();
    let out = run_with_profile(&mcr, "partial", &partial, port);
    let inst = mcr.guard("partial");
    assert!(!out.success(), "startup cannot complete without the main thread's quiescent point: {out}");
    assert!(out.stderr.contains("did not complete startup"), "{out}");
    assert!(out.stderr.contains("class: main") || out.stderr.contains("(main)"), "names the main thread: {out}");
    let out = inst.quiesce(300);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("accept") && out.stderr.contains("not a quiescent point"), "{out}");
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG", "the server was resumed and serves");
}

#[test]
fn an_invalid_profile_is_refused_before_anything_starts() {
    let mcr = Mcr::new("badprofile");
    let bad = mcr.tmp.join("bad.json");
    std::fs::write(&bad, r#"{"format":"mcr-profile/1","quiescent_points":[{"id":"not-hex"}]}"#).unwrap();
    let port = free_port();
    let out = run_with_profile(&mcr, "bad", &bad, port);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "one line: {out}");
    assert!(out.stderr.contains("bad.json") && out.stderr.contains("invalid id"), "{out}");
    assert!(mcr.instance_files().is_empty(), "nothing left: {:?}", mcr.instance_files());
    assert!(port_free(port), "nothing started");
}
