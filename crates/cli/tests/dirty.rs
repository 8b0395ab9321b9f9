//! Dirty tracking end to end: every process of a server run by `mcr` is armed when its
//! startup completes (fork children at their own), `mcr ctl NAME dirty` reports what
//! each wrote since, a .bss page the program has not written stays clean until it is,
//! heap growth counts as dirty, and the server keeps answering and quiescing throughout.

mod support;

use serde_json::Value;
use support::*;

const PAGE: u64 = 4096;

fn dirty_json(inst: &Instance) -> Value {
    let out = inst.mcr.run(&["ctl", &inst.name, "dirty", "--json"]);
    assert_eq!(out.code(), 0, "ctl dirty failed: {out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("ctl dirty --json is not JSON ({e}): {out}"))
}

fn class<'a>(p: &'a Value, name: &str) -> &'a Value {
    &p["classes"][name]
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v:#}"))
}

/// Run-time address range of symbol `name` of the program of process `hpid` (PIE).
fn symbol_range(hpid: i32, exe: &std::path::Path, name: &str) -> (u64, u64) {
    let (address, size) = elf_symbol(exe, name);
    let exe_path = std::fs::canonicalize(exe).unwrap().display().to_string();
    let maps = mcr_procfs::maps::read(hpid).unwrap();
    let base = maps
        .iter()
        .find(|m| m.path == exe_path && m.offset == 0)
        .map(|m| m.start)
        .unwrap_or_else(|| panic!("{exe_path} not mapped in {hpid}:\n{maps:#?}"));
    (base + address, base + address + size)
}

#[test]
fn kvd_heap_and_bss_pages_become_dirty_only_when_written() {
    let mcr = Mcr::new("dirty-kvd");
    let port = free_port();
    let kvd = fixture("kvd");
    let inst = mcr.start("kvd", &kvd, &["--port", &port.to_string()]);
    let st = inst.status();
    let procs = processes(&st);
    assert_eq!(procs.len(), 1, "{st:#}");
    let method = procs[0]["dirty"]["method"]
        .as_str()
        .unwrap_or_else(|| panic!("no dirty tracking in status: {st:#}"))
        .to_string();

    let before = dirty_json(&inst);
    let p = &before["processes"][0];
    let hpid = n(p, "host_pid") as i32;
    if method != "uffd_wp" {
        // A kernel without userfaultfd async write-protect: everything counts as dirty.
        eprintln!("note: dirty tracking method here is {method}: {:#}", p["tracking"]);
        assert_eq!(n(&p["total"], "clean"), 0, "{p:#}");
        return;
    }
    let total = &p["total"];
    assert!(n(total, "tracked") > 100, "{p:#}");
    assert!(n(total, "written") * 4 < n(total, "tracked"), "right after startup few pages are written: {p:#}");
    assert!(n(class(p, "program"), "tracked") > 0, "{p:#}");
    assert!(n(class(p, "heap"), "tracked") > 0, "{p:#}");
    let text = mcr.run(&["ctl", "kvd", "dirty"]).ok();
    assert!(
        text.stdout.contains("uffd-wp") && text.stdout.contains("heap") && text.stdout.contains("dirty tracking skips"),
        "{text}"
    );

    // kvd's hash table, `static struct kv_node *table[1024]`, is .bss nobody writes
    // until the first SET: its pages wholly inside the array are clean.
    let (lo, hi) = symbol_range(hpid, &kvd, "table");
    let first_full = lo.div_ceil(PAGE) * PAGE;
    let last_full = hi / PAGE * PAGE;
    assert!(first_full < last_full, "table {lo:#x}-{hi:#x} holds no whole page");
    let map = mcr_dirty::written_ranges(hpid).unwrap();
    assert!(
        !map.is_dirty(first_full, last_full - first_full),
        "table[] written before any SET: {lo:#x}-{hi:#x} {:?}",
        map.clean_ranges()
    );

    // Fill it: every bucket page and plenty of heap get written.
    let mut c = Client::connect(port);
    for i in 0..3000 {
        assert_eq!(c.request(&format!("SET key{i} {}", "v".repeat(200))), "OK");
    }
    let map = mcr_dirty::written_ranges(hpid).unwrap();
    for page in (first_full..last_full).step_by(PAGE as usize) {
        assert!(map.is_dirty(page, PAGE), "table[] page {page:#x} written by SETs but reported clean");
    }
    let after = dirty_json(&inst);
    let q = &after["processes"][0];
    let heap_before = n(class(p, "heap"), "dirty");
    let heap_after = n(class(q, "heap"), "dirty");
    // 3000 nodes of > 200 bytes: at least 150 pages more (written in the heap tracked
    // since startup, or grown since: dirty by definition).
    assert!(heap_after >= heap_before + 150, "heap dirty pages {heap_before} -> {heap_after}: {q:#}");
    assert!(n(class(q, "heap"), "written") > n(class(p, "heap"), "written"), "{p:#}\n{q:#}");
    assert_eq!(q["tracking"], p["tracking"], "armed once");

    // The server kept working, and still quiesces and resumes.
    assert_eq!(c.request("GET key2999"), format!("VALUE {}", "v".repeat(200)));
    let out = inst.quiesce(2000);
    assert_eq!(out.code(), 0, "quiesce: {out}");
    let quiesced = dirty_json(&inst);
    assert_eq!(quiesced["processes"][0]["method"], "uffd-wp");
    assert_eq!(inst.resume().code(), 0);
    assert_eq!(c.request("GET key0"), format!("VALUE {}", "v".repeat(200)));
    assert_eq!(c.request("PING"), "PONG");
}

#[test]
fn tracking_off_counts_every_page_dirty() {
    let mcr = Mcr::new("dirty-off");
    let port = free_port();
    let mut cmd = mcr.command(&["run", "--detach", "--name", "kvd", "--"]);
    cmd.arg(fixture("kvd")).args(["--port", &port.to_string()]).env("MCR_DIRTY_TRACKING", "off");
    let out = Spawned::spawn(cmd, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr run");
    let inst = mcr.guard("kvd");
    assert!(out.success(), "{out}");
    let d = dirty_json(&inst);
    let p = &d["processes"][0];
    assert_eq!(p["tracking"]["method"], "none", "{p:#}");
    assert_eq!(n(&p["total"], "tracked"), 0, "{p:#}");
    assert!(n(&p["total"], "untracked") > 0, "{p:#}");
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a b"), "OK");
}

#[test]
fn forked_workers_are_tracked_too() {
    let mcr = Mcr::new("dirty-forkd");
    let port = free_port();
    let inst = mcr.start("forkd", &fixture("forkd"), &["--port", &port.to_string(), "--workers", "2"]);
    let st = inst.status();
    assert_eq!(processes(&st).len(), 3, "{st:#}");
    let d = dirty_json(&inst);
    let procs = d["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3, "{d:#}");
    let armed = procs.iter().filter(|p| p["method"] == "uffd-wp").count();
    if armed == 0 {
        eprintln!("note: no userfaultfd async write-protect here: {d:#}");
        return;
    }
    for p in procs {
        assert_eq!(p["method"], "uffd-wp", "every process arms itself, fork children included: {p:#}");
        assert!(n(&p["total"], "clean") > 0, "{p:#}");
    }
    // Workers serve (each connection is served by some worker), and quiesce works.
    for _ in 0..4 {
        let mut c = Client::connect(port);
        assert_eq!(c.request("PING"), "PONG");
    }
    assert_eq!(inst.quiesce(2000).code(), 0);
    assert_eq!(inst.resume().code(), 0);
    let mut c = Client::connect(port);
    assert_eq!(c.request("PING"), "PONG");
    let again = dirty_json(&inst);
    assert_eq!(again["processes"].as_array().unwrap().len(), 3, "{again:#}");
}
