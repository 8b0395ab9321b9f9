//! `mcr history` and `mcr update --back`, through the real binary: every update that
//! reached an instance is in its journal (committed, rolled back), and `--back` returns
//! to the build that ran before the last committed update, with its arguments and data.

mod support;

use serde_json::Value;
use support::*;

fn history(mcr: &Mcr, name: &str) -> Vec<Value> {
    let out = mcr.run(&["history", name, "--json"]).ok();
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("history --json is not JSON ({e}): {out}"));
    v.as_array().unwrap_or_else(|| panic!("history --json is not an array: {v:#}")).clone()
}

#[test]
fn history_records_commits_and_rollbacks_and_back_returns_to_the_previous_build() {
    let mcr = Mcr::new("history");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let (v1, v2) = (fixture("kvd"), fixture("kvd-v2"));
    let inst = mcr.start("kvd", &v1, &args);
    assert_eq!(history(&mcr, "kvd"), Vec::<Value>::new(), "no update yet");
    let out = mcr.run(&["update", "kvd", "--back"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("no committed update of 'kvd'"), "{out}");

    let mut c = Client::connect(port);
    assert_eq!(c.request("SET kept yes"), "OK");

    // A commit: both builds with their IDs and arguments, the phases, what moved.
    let out = update(&mcr, "kvd", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}");
    let h = history(&mcr, "kvd");
    assert_eq!(h.len(), 1, "{h:#?}");
    let e = &h[0];
    assert_eq!(e["instance"], "kvd");
    assert_eq!(e["outcome"]["result"], "committed", "{e:#}");
    assert_eq!(e["from"]["program"], v1.canonicalize().unwrap().display().to_string(), "{e:#}");
    assert_eq!(e["to"]["program"], v2.canonicalize().unwrap().display().to_string(), "{e:#}");
    assert_eq!(e["from"]["build_id"], elf_build_id(&v1), "{e:#}");
    assert_eq!(e["to"]["build_id"], elf_build_id(&v2), "{e:#}");
    assert_eq!(e["from"]["args"], serde_json::json!(args), "{e:#}");
    assert_eq!(e["to"]["args"], serde_json::json!(args), "{e:#}");
    assert!(e["time"].as_str().is_some_and(|t| t.len() == 20 && t.ends_with('Z')), "{e:#}");
    assert!(e["phases"]["total_ms"].as_f64().is_some_and(|t| t > 0.0), "{e:#}");
    assert!(e["phases"]["commit_ms"].as_f64().is_some_and(|t| t > 0.0), "{e:#}");
    assert_eq!(e["transfer"]["connections"], 1, "the client's connection moved: {e:#}");
    assert!(e["transfer"]["globals"].as_u64().is_some(), "{e:#}");

    // A rollback: the new version crashes in its startup.
    let out = update(&mcr, "kvd", &[], &fixture("kvd-v2-crash"), &args);
    assert_eq!(out.code(), 1, "{out}");
    let h = history(&mcr, "kvd");
    assert_eq!(h.len(), 2, "{h:#?}");
    let e = &h[1];
    assert_eq!(e["outcome"]["result"], "rolled_back", "{e:#}");
    assert!(e["outcome"]["reason"].as_str().is_some_and(|r| r.contains("SIGABRT")), "{e:#}");
    assert_eq!(e["from"]["build_id"], elf_build_id(&v2), "{e:#}");
    assert_eq!(e["phases"]["commit_ms"], 0.0, "{e:#}");
    let table = mcr.run(&["history", "kvd"]).ok().stdout;
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert!(table.contains("kvd -> kvd-v2") || table.contains("kvd ("), "{table}");
    assert!(table.contains("committed") && table.contains("rolled back") && table.contains("SIGABRT"), "{table}");

    // Back to the build before the last committed update (v1), not the rolled-back one,
    // with the same arguments; the data and the connection survive.
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    let out = mcr.run(&["update", "kvd", "--back"]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("back to the build that ran before the update of"), "{out}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    assert_eq!(c.request("GET kept"), "VALUE yes");
    let st = inst.status();
    assert_eq!(st["program"], v1.canonicalize().unwrap().display().to_string(), "{st:#}");
    assert_eq!(st["args"], serde_json::json!(args), "{st:#}");
    let h = history(&mcr, "kvd");
    assert_eq!(h.len(), 3, "{h:#?}");
    assert_eq!(h[2]["outcome"]["result"], "committed", "{:#}", h[2]);
    assert_eq!(h[2]["from"]["build_id"], elf_build_id(&v2));
    assert_eq!(h[2]["to"]["build_id"], elf_build_id(&v1));

    // The history outlives the instance, like its log.
    inst.stop().ok();
    assert_eq!(history(&mcr, "kvd").len(), 3);
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());
}

#[test]
fn back_refuses_when_the_previous_file_now_holds_another_build() {
    let mcr = Mcr::new("history-gone");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    // A copy of v1 that is replaced by another build after the update.
    let v1 = mcr.tmp.join("kvd");
    std::fs::copy(fixture("kvd"), &v1).unwrap();
    let _inst = mcr.start("kvd", &v1, &args);
    assert_eq!(update(&mcr, "kvd", &[], &fixture("kvd-v2"), &args).code(), 0);
    std::fs::remove_file(&v1).unwrap();
    std::fs::copy(fixture("kvd-v2-layout"), &v1).unwrap();
    let out = mcr.run(&["update", "kvd", "--back"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("now holds build") && out.stderr.contains("the previous build is gone"), "{out}");
    assert_eq!(history(&mcr, "kvd").len(), 1, "a refusal before anything started is not an update");
}

#[test]
fn history_of_an_unknown_name_is_empty_and_help_explains_it() {
    let mcr = Mcr::new("history-none");
    let out = mcr.run(&["history", "nothing"]).ok();
    assert!(out.stdout.contains("no update of 'nothing' recorded"), "{out}");
    let out = mcr.run(&["history", "../x"]);
    assert_ne!(out.code(), 0, "{out}");
    let help = mcr.run(&["history", "--help"]).ok().stdout;
    assert!(help.contains("NAME.history") && help.contains("--back"), "{help}");
    let help = mcr.run(&["update", "--help"]).ok().stdout;
    assert!(help.contains("--back") && help.contains("before the last committed update"), "{help}");
}
