//! `mcr check OLD NEW`: the offline comparison of two builds, against the real fixtures.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// Runs `mcr check ARGS` with a private type cache; returns the output and the cache dir.
fn check<S: AsRef<std::ffi::OsStr>>(mcr: &Mcr, args: &[S]) -> Out {
    let mut all: Vec<std::ffi::OsString> = vec!["check".into()];
    all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let mut cmd = mcr.command(&all);
    cmd.env("XDG_CACHE_HOME", mcr.tmp.join("cache"));
    Spawned::spawn(cmd, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr check")
}

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect()
}

/// (path, rule) pairs of a change's fields, the rule as compact JSON.
fn field_rules(change: &Value) -> Vec<(String, Value)> {
    change["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f["rule"].clone()))
        .collect()
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{name} missing in {list:#}"))
}

fn compile_c(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).unwrap();
    let out = Command::new("cc").args(flags).arg("-o").arg(&exe).arg(&c).output().expect("run cc");
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    exe
}

#[test]
fn kvd_v2_layout_every_difference_explained() {
    let mcr = Mcr::new("check-kvd");
    let out = check(&mcr, &[fixture("kvd"), fixture("kvd-v2-layout")].map(|p| p.into_os_string()));
    assert_eq!(out.code(), 0, "{out}");
    let human = &out.stdout;
    for needle in [
        "struct kv_node [automatic]",
        "size 32 -> 48 bytes",
        "field order changed: hits moved before hash",
        "kv_node.hits          int becomes long int, moved from offset 20 to 16: converted automatically, every old value fits",
        "kv_node.created_tick  new field (long int, offset 32): zeroed in transferred objects",
        "struct kv_stats [automatic]",
        "kv_stats.cmds      unsigned int becomes long unsigned int: converted automatically",
        "kv_stats.bytes_in  new field (long unsigned int, offset 16): zeroed",
        "changed stats [automatic]",
        "changed kvd.c:table [automatic]",
        "Verdict: automatic",
    ] {
        assert!(human.contains(needle), "missing {needle:?}:\n{out}");
    }

    let out =
        check(&mcr, &["--json".into(), fixture("kvd").into_os_string(), fixture("kvd-v2-layout").into_os_string()]);
    assert_eq!(out.code(), 0, "{out}");
    let d = json(&out);
    assert_eq!(d["verdict"], "automatic");
    assert!(d["warnings"].as_array().unwrap().is_empty(), "{d:#}");
    assert_eq!(names(&d["types"]), ["struct kv_node", "struct kv_stats"], "exactly the two structs changed");

    let node = find(&d["types"], "struct kv_node");
    assert_eq!((node["old_size"].as_u64(), node["new_size"].as_u64()), (Some(32), Some(48)));
    assert_eq!(node["class"], "automatic");
    assert_eq!(node["reached_from_globals"], true);
    assert_eq!(node["reordered"], serde_json::json!(["hits"]));
    let rules = field_rules(node);
    let expect = [
        (
            "kv_node.hits",
            serde_json::json!({"rule": "int_converted", "from": "int", "to": "long int", "checked": false, "old_offset": 20, "new_offset": 16}),
        ),
        ("kv_node.hash", serde_json::json!({"rule": "copied", "old_offset": 16, "new_offset": 24})),
        ("kv_node.created_tick", serde_json::json!({"rule": "added", "ty": "long int", "offset": 32})),
        (
            "kv_node.next",
            serde_json::json!({"rule": "pointer_relocated", "function": false, "old_pointee": "struct kv_node", "new_pointee": "struct kv_node", "old_offset": 24, "new_offset": 40}),
        ),
    ];
    assert_eq!(rules.len(), expect.len(), "{node:#}");
    for ((path, rule), (ep, er)) in rules.iter().zip(expect.iter()) {
        assert_eq!((path.as_str(), rule), (*ep, er));
    }

    let stats = find(&d["types"], "struct kv_stats");
    assert_eq!((stats["old_size"].as_u64(), stats["new_size"].as_u64()), (Some(40), Some(48)));
    assert_eq!(stats["reordered"], serde_json::json!([]));
    let expect = [
        (
            "kv_stats.cmds",
            serde_json::json!({"rule": "int_converted", "from": "unsigned int", "to": "long unsigned int", "checked": false, "old_offset": 8, "new_offset": 8}),
        ),
        ("kv_stats.bytes_in", serde_json::json!({"rule": "added", "ty": "long unsigned int", "offset": 16})),
        ("kv_stats.ticks", serde_json::json!({"rule": "copied", "old_offset": 16, "new_offset": 24})),
        ("kv_stats.hups", serde_json::json!({"rule": "copied", "old_offset": 24, "new_offset": 32})),
        ("kv_stats.eintr", serde_json::json!({"rule": "copied", "old_offset": 32, "new_offset": 40})),
    ];
    let rules = field_rules(stats);
    assert_eq!(rules.len(), expect.len(), "{stats:#}");
    for ((path, rule), (ep, er)) in rules.iter().zip(expect.iter()) {
        assert_eq!((path.as_str(), rule), (*ep, er));
    }

    // Globals: `stats` is a struct kv_stats; the static `table` points to kv_nodes.
    assert_eq!(names(&d["globals"]), ["kvd.c:table", "stats"]);
    let table = find(&d["globals"], "kvd.c:table");
    assert_eq!(table["change"], "changed");
    assert_eq!(table["old_type"], "struct kv_node *[1024]");
    assert_eq!(table["changed_types_reached"], serde_json::json!(["struct kv_node"]));
    let g = find(&d["globals"], "stats");
    assert_eq!((g["old_type"].as_str(), g["class"].as_str()), (Some("struct kv_stats"), Some("automatic")));
    assert_eq!(field_rules(g).len(), 5);

    // The type models were cached per build ID.
    let cached: Vec<_> = std::fs::read_dir(mcr.tmp.join("cache/mcr/types")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 2, "{cached:?}");
}

#[test]
fn kvd_v2_layout_backwards_narrows_with_range_checks_and_drops_fields() {
    let mcr = Mcr::new("check-kvd-back");
    let out =
        check(&mcr, &["--json".into(), fixture("kvd-v2-layout").into_os_string(), fixture("kvd").into_os_string()]);
    assert_eq!(out.code(), 0, "range-checked narrowing is still automatic: {out}");
    let d = json(&out);
    let node = find(&d["types"], "struct kv_node");
    let rules = field_rules(node);
    let hits = &rules.iter().find(|(p, _)| p == "kv_node.hits").unwrap().1;
    assert_eq!(hits["checked"], true, "{hits}");
    let removed: Vec<&str> = rules.iter().filter(|(_, r)| r["rule"] == "removed").map(|(p, _)| p.as_str()).collect();
    assert_eq!(removed, ["kv_node.created_tick"]);
    let human = check(&mcr, &[fixture("kvd-v2-layout"), fixture("kvd")].map(|p| p.into_os_string()));
    assert!(human.stdout.contains("run-time range check"), "{human}");
    assert!(
        human.stdout.contains("kv_stats.bytes_in  removed field (long unsigned int): its data is dropped"),
        "{human}"
    );
}

#[test]
fn identical_and_code_only_builds_have_no_differences() {
    let mcr = Mcr::new("check-same");
    let out = check(&mcr, &["--json".into(), fixture("kvd").into_os_string(), fixture("kvd").into_os_string()]);
    assert_eq!(out.code(), 0, "{out}");
    let d = json(&out);
    assert_eq!(d["verdict"], "unchanged");
    assert!(d["types"].as_array().unwrap().is_empty() && d["globals"].as_array().unwrap().is_empty(), "{d:#}");
    let out = check(&mcr, &[fixture("kvd"), fixture("kvd-v2")].map(|p| p.into_os_string()));
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("No difference in globals or types"), "{out}");
}

const V1: &str = r#"
#include <stdlib.h>
struct rec { int a; long b; };
union val { int i; char c[4]; };
struct hidden { int x; };
struct rec rec;
union val val;
void *opaque;
struct hidden *make(void) { return calloc(1, sizeof(struct hidden)); }
int main(void) { opaque = make(); return rec.a + val.i; }
"#;

const V2: &str = r#"
#include <stdlib.h>
struct pt { int x, y; };
struct rec { struct pt a; long *b; };
union val { long l; int i; char c[8]; };
struct hidden { int x; int y; };
struct rec rec;
union val val;
void *opaque;
struct hidden *make(void) { return calloc(1, sizeof(struct hidden)); }
int main(void) { opaque = make(); return rec.a.x + val.i; }
"#;

#[test]
fn incompatible_changes_need_a_handler() {
    let mcr = Mcr::new("check-handler");
    let v1 = compile_c(&mcr.tmp.path, "v1", V1, &["-g", "-O0"]);
    let v2 = compile_c(&mcr.tmp.path, "v2", V2, &["-g", "-O0"]);
    let out = check(&mcr, &["--json".into(), v1.clone().into_os_string(), v2.clone().into_os_string()]);
    assert_eq!(out.code(), 1, "{out}");
    let d = json(&out);
    assert_eq!(d["verdict"], "needs_handler");
    let rec = find(&d["types"], "struct rec");
    assert_eq!(rec["class"], "needs_handler");
    let problems: Vec<(&str, &str)> = rec["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["class"] == "needs_handler")
        .map(|f| (f["path"].as_str().unwrap(), f["problem"].as_str().unwrap()))
        .collect();
    assert_eq!(problems.len(), 2, "{rec:#}");
    assert_eq!(problems[0].0, "rec.a");
    assert!(problems[0].1.contains("from integer to struct"), "{problems:?}");
    assert_eq!(problems[1].0, "rec.b");
    assert!(problems[1].1.contains("from integer to pointer"), "{problems:?}");
    let val = find(&d["types"], "union val");
    assert_eq!(val["class"], "needs_handler");
    // Only reachable through `void *opaque`: automatic by layout, but a live object is a
    // conflict because the tracer cannot know its type.
    let hidden = find(&d["types"], "struct hidden");
    assert_eq!(hidden["reached_from_globals"], false);
    assert_eq!(hidden["class"], "needs_handler");
    assert!(hidden["explanation"].as_str().unwrap().contains("void *"), "{hidden:#}");
    let human = check(&mcr, &[v1.into_os_string(), v2.into_os_string()]);
    assert_eq!(human.code(), 1);
    assert!(human.stdout.contains("NEEDS HANDLER") && human.stdout.contains("MCR_ADD_OBJ_HANDLER"), "{human}");
}

#[test]
fn binaries_that_cannot_be_read_exit_2_with_one_line() {
    let mcr = Mcr::new("check-errors");
    let missing = mcr.tmp.join("no-such-binary");
    let out = check(&mcr, &[fixture("kvd").into_os_string(), missing.clone().into_os_string()]);
    assert_eq!(out.code(), 2, "{out}");
    assert_eq!(out.stderr_lines().len(), 1, "{out}");
    assert!(out.stderr.starts_with("mcr: ") && out.stderr.contains("no-such-binary"), "{out}");
    assert!(out.stdout.is_empty());
    let text = mcr.tmp.join("notes.txt");
    std::fs::write(&text, "not an ELF file\n").unwrap();
    let out = check(&mcr, &[text.into_os_string(), fixture("kvd").into_os_string()]);
    assert_eq!(out.code(), 2, "{out}");
    assert!(out.stderr.contains("not an ELF"), "{out}");
    let out = check(&mcr, &[fixture("kvd").into_os_string()]);
    assert_eq!(out.code(), 2, "usage error: {out}");
}

#[test]
fn a_build_without_debug_info_is_not_automatic() {
    let mcr = Mcr::new("check-nodebug");
    let v1 = compile_c(&mcr.tmp.path, "nodebug", V1, &["-O0"]);
    let out = check(&mcr, &[v1.clone().into_os_string(), v1.into_os_string()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("no DWARF"), "{out}");
    assert!(out.stdout.contains("Without debug info"), "{out}");
}

#[test]
fn a_corrupt_cache_entry_is_ignored_and_rewritten() {
    let mcr = Mcr::new("check-cache");
    let args = [fixture("kvd"), fixture("kvd-v2-layout")].map(|p| p.into_os_string());
    assert_eq!(check(&mcr, &args).code(), 0);
    let dir = mcr.tmp.join("cache/mcr/types");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        std::fs::write(e, b"{ truncated").unwrap();
    }
    let out = check(&mcr, &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("struct kv_node [automatic]"), "{out}");
    for e in &entries {
        let v: Value = serde_json::from_slice(&std::fs::read(e).unwrap()).expect("rewritten entry is valid JSON");
        assert!(v["program"]["build_id"].is_string());
    }
}

/// The opaque word of a `--json` comparison at `path`.
fn word<'a>(d: &'a Value, path: &str) -> &'a Value {
    d["opaque"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["path"] == path)
        .unwrap_or_else(|| panic!("no opaque word {path}: {d:#}"))
}

/// kvd keeps the last SET node in a union (`last_set`) and v2-layout changes struct
/// kv_node. Without a hint, `mcr update` rolls back when the union holds a node (it cannot
/// tell it is a pointer): check says the word needs a hint and names it. With
/// `MCR_POINTS_TO("last_set", "struct kv_node")` in the new build (or in both, or only in
/// the old one: the update reads both builds' hints), the update commits: check says the
/// union is transformed automatically, by that hint.
#[test]
fn a_union_pointing_to_a_changed_struct_needs_the_hint_the_update_needs() {
    let mcr = Mcr::new("check-union");
    let pair = |a: &str, b: &str| [fixture(a).into_os_string(), fixture(b).into_os_string()];
    let json_of = |a: &str, b: &str| {
        let mut args = vec!["--json".into()];
        args.extend(pair(a, b));
        let out = check(&mcr, &args);
        (out.code(), json(&out), out)
    };

    // No hint in either build: a conflict if live, resolved by the hint it names.
    let human = check(&mcr, &pair("kvd-opaque", "kvd-v2-layout-opaque"));
    assert_eq!(human.code(), 1, "{human}");
    for needle in [
        "changed kvd.c:last_set [NEEDS HANDLER]",
        "kvd.c:last_set [NEEDS HINT]: a union that can hold a struct kv_node *, and struct kv_node changed",
        "a conflict if it holds the address of a live heap block at update time, unless \
         MCR_POINTS_TO(\"last_set\", \"struct kv_node\")",
        "Verdict: 1 change(s) marked NEEDS HANDLER or NEEDS HINT",
    ] {
        assert!(human.stdout.contains(needle), "missing {needle:?}:\n{human}");
    }
    let (code, d, out) = json_of("kvd-opaque", "kvd-v2-layout-opaque");
    assert_eq!(code, 1, "{out}");
    assert_eq!(d["verdict"], "needs_handler");
    assert_eq!(find(&d["globals"], "kvd.c:last_set")["class"], "needs_handler");
    let w = word(&d, "kvd.c:last_set");
    assert_eq!((w["reason"].as_str(), w["class"].as_str()), (Some("union"), Some("needs_handler")), "{w:#}");
    assert_eq!(w["changed"], serde_json::json!(["struct kv_node"]));
    assert_eq!(w["resolve_with"], "MCR_POINTS_TO(\"last_set\", \"struct kv_node\")");
    assert!(w["hint"].is_null(), "{w:#}");
    // The struct itself stays automatic: `table` reaches it through typed pointers.
    assert_eq!(find(&d["types"], "struct kv_node")["class"], "automatic");

    // The hint in both builds, in the new one only, in the old one only: automatic.
    for (old, new, from) in [
        ("kvd-hinted", "kvd-v2-layout-hinted", "both builds"),
        ("kvd-opaque", "kvd-v2-layout-hinted", "the new build"),
        ("kvd-hinted", "kvd-v2-layout-opaque", "the old build"),
    ] {
        let (code, d, out) = json_of(old, new);
        assert_eq!(code, 0, "{old} -> {new}: {out}");
        assert_eq!(d["verdict"], "automatic", "{old} -> {new}");
        assert!(d["warnings"].as_array().unwrap().is_empty(), "{old} -> {new}: {d:#}");
        let w = word(&d, "kvd.c:last_set");
        assert_eq!(w["class"], "automatic", "{old} -> {new}: {w:#}");
        let hint = format!("MCR_POINTS_TO(\"last_set\", \"struct kv_node\") in {from}");
        assert_eq!(w["hint"], hint.as_str(), "{old} -> {new}");
        assert_eq!(w["changed"], serde_json::json!(["struct kv_node"]));
        assert!(w["resolve_with"].is_null());
        let g = find(&d["globals"], "kvd.c:last_set");
        assert_eq!(g["class"], "automatic", "{old} -> {new}: {g:#}");
        assert!(!names(&d["globals"]).iter().any(|n| n.contains("mcr_hint_")), "hint strings are not state: {d:#}");

        let human = check(&mcr, &pair(old, new));
        assert_eq!(human.code(), 0, "{human}");
        for needle in [
            "changed kvd.c:last_set [automatic]".to_string(),
            format!("kvd.c:last_set: a union, transformed automatically ({hint})"),
            format!("kvd.c:last_set [automatic]: a union, followed as a struct kv_node * ({hint}): the struct kv_node it points to changed"),
            "Verdict: automatic".to_string(),
        ] {
            assert!(human.stdout.contains(&needle), "{old} -> {new}: missing {needle:?}:\n{human}");
        }
    }

    // Nothing changed: no word to worry about, as before.
    let (code, d, out) = json_of("kvd-hinted", "kvd-hinted");
    assert_eq!(code, 0, "{out}");
    assert_eq!(d["verdict"], "unchanged", "{d:#}");
}

const HIDDEN_V1: &str = r#"
#include <stdlib.h>
struct hidden { int x; };
void *opaque;                                   /* holds a struct hidden * */
union { struct hidden *h; unsigned long bits; } tagged;
int main(void) { opaque = calloc(1, sizeof(struct hidden)); tagged.h = opaque; return 0; }
"#;

const HIDDEN_V2: &str = r#"
#include <stdlib.h>
#include "mcr.h"
struct hidden { int x; int y; };
void *opaque;
union { struct hidden *h; unsigned long bits; } tagged;
#ifdef HINTED
MCR_POINTS_TO("opaque", "struct hidden");
MCR_POINTS_TO("tagged", "struct hidden");
MCR_OPAQUE("no_such_global");
#endif
int main(void) { opaque = calloc(1, sizeof(struct hidden)); tagged.h = opaque; return 0; }
"#;

/// A changed struct only a `void *` and a union lead to: without hints its objects cannot
/// be found with their type (needs a handler) and the union needs a hint; the new build's
/// MCR_POINTS_TO hints make both automatic. A hint that names nothing is a warning.
#[test]
fn hints_in_the_new_build_reach_a_changed_struct_behind_void_pointers_and_unions() {
    let mcr = Mcr::new("check-hidden");
    let include = format!("-I{}", repo_root().join("include").display());
    let v1 = compile_c(&mcr.tmp.path, "v1", HIDDEN_V1, &["-g", "-O0"]);
    let v2 = compile_c(&mcr.tmp.path, "v2", HIDDEN_V2, &["-g", "-O0", &include]);
    let v2h = compile_c(&mcr.tmp.path, "v2h", HIDDEN_V2, &["-g", "-O0", &include, "-DHINTED"]);

    let out = check(&mcr, &["--json".into(), v1.clone().into_os_string(), v2.clone().into_os_string()]);
    assert_eq!(out.code(), 1, "{out}");
    let d = json(&out);
    let hidden = find(&d["types"], "struct hidden");
    assert_eq!(hidden["class"], "needs_handler", "{hidden:#}");
    assert!(hidden.get("reached_through_hint").is_none(), "{hidden:#}");
    let w = word(&d, "tagged");
    assert_eq!(w["resolve_with"], "MCR_POINTS_TO(\"tagged\", \"struct hidden\")", "{w:#}");

    let out = check(&mcr, &["--json".into(), v1.clone().into_os_string(), v2h.clone().into_os_string()]);
    assert_eq!(out.code(), 0, "{out}");
    let d = json(&out);
    assert_eq!(d["verdict"], "automatic", "{d:#}");
    let hidden = find(&d["types"], "struct hidden");
    assert_eq!(hidden["class"], "automatic", "{hidden:#}");
    assert_eq!(hidden["reached_from_globals"], false);
    assert_eq!(hidden["reached_through_hint"], "MCR_POINTS_TO(\"opaque\", \"struct hidden\")");
    let w = word(&d, "opaque");
    assert_eq!((w["reason"].as_str(), w["class"].as_str()), (Some("void_pointer"), Some("automatic")), "{w:#}");
    assert_eq!(w["hint"], "MCR_POINTS_TO(\"opaque\", \"struct hidden\") in the new build");
    assert_eq!(word(&d, "tagged")["class"], "automatic");
    let warnings: Vec<&str> = d["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("MCR_OPAQUE(\"no_such_global\") in the new build") && warnings[0].contains("no effect"),
        "{warnings:?}"
    );

    let human = check(&mcr, &[v1.into_os_string(), v2h.into_os_string()]);
    assert_eq!(human.code(), 0, "{human}");
    assert!(human.stdout.contains("but the hint MCR_POINTS_TO(\"opaque\", \"struct hidden\") does"), "{human}");
    assert!(human.stderr.contains("mcr: warning: hint MCR_OPAQUE(\"no_such_global\")"), "{human}");
}

/// `mcr check` says what happens to sessions a thread or a per-connection process serves:
/// whether the new build can take them over (resume and respawn handlers) or they must end
/// before an update.
#[test]
fn sessions_say_whether_the_new_build_takes_them_over() {
    let mcr = Mcr::new("check-sessions");
    let out = check(&mcr, &[fixture("connd"), fixture("connd-v2-layout")]);
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stdout.contains("resume handler serve_moved_session"), "{out}");
    assert!(
        out.stdout.contains("respawn handler respawn_session: processes forked per connection are recreated"),
        "{out}"
    );

    let out = check(&mcr, &[fixture("connd"), fixture("connd-v2-norespawn")]);
    assert!(out.stdout.contains("no MCR_ADD_RESPAWN_HANDLER in the new build"), "{out}");

    let out = check(&mcr, &[fixture("poold"), fixture("poold-v2-noresume")]);
    assert!(out.stdout.contains("no MCR_ADD_RESUME_HANDLER in the new build"), "{out}");
    let out = check(&mcr, &["--json".as_ref(), fixture("poold").as_os_str(), fixture("poold-v2-layout").as_os_str()]);
    let v = json(&out);
    assert_eq!(v["sessions"]["resume_handlers"], serde_json::json!(["requeue_moved_sessions"]), "{v:#}");
    assert_eq!(v["sessions"]["respawn_handlers"], serde_json::json!([]), "{v:#}");
}
