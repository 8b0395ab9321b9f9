//! `mcr status NAME --log`: every startup operation on an immutable object is recorded
//! with its call stack, comparable arguments and result; startup descriptors live in the
//! reserved range, unique across the process tree; nothing open is left unaccounted for.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use support::*;

fn logs(mcr: &Mcr, name: &str) -> Vec<Value> {
    let out = mcr.run(&["status", name, "--log", "--json"]).ok();
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ops(p: &Value) -> Vec<Value> {
    p["log"]["ops"].as_array().cloned().unwrap_or_else(|| panic!("no log: {p:#}"))
}

fn frames(op: &Value) -> Vec<String> {
    op["stack"]["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn kvd_startup_is_recorded_with_call_stacks_and_reserved_descriptors() {
    let mcr = Mcr::new("startuplog-kvd");
    let port = free_port();
    let _inst = mcr.start("k", &fixture("kvd"), &["--port", &port.to_string()]);
    let procs = logs(&mcr, "k");
    assert_eq!(procs.len(), 1, "{procs:#?}");
    let p = &procs[0];
    assert_eq!(p["log"]["complete"], true, "{p:#}");
    assert_eq!(p["log"]["unreplayable"].as_array().map(Vec::len), Some(0), "kvd opens nothing mcr cannot see: {p:#}");
    let ops = ops(p);
    let calls: Vec<&str> = ops.iter().filter_map(|o| o["call"].as_str()).collect();
    for want in ["socket", "setsockopt", "bind", "listen", "epoll_create1", "epoll_ctl"] {
        assert!(calls.contains(&want), "{want} not recorded: {calls:?}");
    }
    let socket = ops.iter().find(|o| o["call"] == "socket").unwrap();
    let fd = socket["result"].as_i64().unwrap();
    assert!(fd > 512, "the listening socket moved to the reserved range, got fd {fd}");
    assert!(frames(socket).contains(&"main".to_string()), "called from main: {socket:#}");
    assert_eq!(socket["stack"]["id"].as_str().map(str::len), Some(16), "{socket:#}");
    // bind's sockaddr holds the port in network byte order after the family.
    let bind = ops.iter().find(|o| o["call"] == "bind").unwrap();
    assert_eq!(bind["args"][0], serde_json::json!({"kind": "fd", "value": fd}), "bind is on the socket: {bind:#}");
    let addr = bind["args"][1]["value"].as_str().unwrap();
    assert!(addr.starts_with(&format!("0200{port:04x}7f000001")), "AF_INET, port {port}, 127.0.0.1: {addr}");
    // The server works with its descriptors moved, and the log stops at startup.
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    assert_eq!(c.request("GET a"), "VALUE 1");
    assert_eq!(ops.len(), self::ops(&logs(&mcr, "k")[0]).len(), "nothing is recorded after startup");
    let text = mcr.run(&["status", "k", "--log"]).ok();
    assert!(text.stdout.contains("socket(2,") && text.stdout.contains("main"), "{text}");
}

#[test]
fn nginx_startup_log_spans_its_daemonizing_ancestor_and_fds_are_unique() {
    let nginx = nginx_bin("nginx_startup_log_spans_its_daemonizing_ancestor_and_fds_are_unique");
    let mcr = Mcr::new("startuplog-nginx");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let _inst =
        mcr.start("ngx", &nginx, &[std::ffi::OsStr::new("-p"), prefix.as_os_str(), "-c".as_ref(), conf.as_os_str()]);
    let procs = logs(&mcr, "ngx");
    assert_eq!(procs.len(), 3, "master and two workers: {procs:#?}");
    // Every descriptor created during startup has one number across the tree: the same
    // number in two processes is the same operation.
    let mut owner: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for p in &procs {
        assert!(p["error"].is_null(), "{p:#}");
        for op in ops(p) {
            for fd in op["fds"].as_array().into_iter().flatten().filter_map(Value::as_i64) {
                let who = (op["pid"].as_i64().unwrap(), op["seq"].as_i64().unwrap());
                let prev = owner.insert(fd, who);
                assert!(prev.is_none() || prev == Some(who), "fd {fd} made by {prev:?} and {who:?}");
            }
        }
    }
    let master = &procs[0];
    let listen = ops(master).into_iter().find(|o| o["call"] == "listen").expect("listen recorded");
    assert!(frames(&listen).iter().any(|f| f.starts_with("ngx_") && f.contains("listening")), "{listen:#}");
    assert_ne!(listen["pid"], master["pid"], "made by the first process, which daemonized and exited");
    for w in &procs[1..] {
        assert!(
            ops(w).iter().any(|o| o["call"] == "epoll_create" && o["pid"] == w["pid"]),
            "each worker made its epoll: {w:#}"
        );
    }
    let (code, body) = http_get(port, "/status", std::time::Duration::from_secs(5)).expect("nginx answers");
    assert_eq!((code, body.trim()), (200, "ok"), "nginx serves with its descriptors moved");
}
