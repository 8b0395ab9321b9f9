//! `mcr ctl NAME dirty`: which pages each process of a running server wrote since its
//! startup completed, per class of mapping: what an update's tracer would have to copy,
//! and what dirty tracking lets it skip.

use crate::client;
use anyhow::{bail, Result};
use mcr_dirty::{Counts, MappingClass, Method};
use mcr_protocol::{DirtyMethod, InstanceDir, InstanceStatus, Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn dirty(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    let st = match client::request(dir, name, &Request::Status)? {
        Response::Status(st) => st,
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    };
    let host = host_pids(&st);
    let mut procs = Vec::new();
    let mut failed = false;
    for p in &st.processes {
        let Some(&hpid) = host.get(&p.pid) else {
            failed = true;
            procs.push(json!({ "pid": p.pid, "error": "cannot find the process from the host" }));
            continue;
        };
        let method = match p.dirty.as_ref().map(|d| d.method) {
            Some(DirtyMethod::UffdWp) => Method::UffdWp,
            Some(DirtyMethod::SoftDirty) => Method::SoftDirty,
            Some(DirtyMethod::None) | None => Method::None,
        };
        match mcr_dirty::written_ranges_with(hpid, method) {
            Ok(map) => procs.push(process_json(p.pid, hpid, p.dirty.as_ref(), &map)),
            Err(e) => {
                failed = true;
                procs.push(json!({ "pid": p.pid, "host_pid": hpid, "error": e.to_string() }));
            }
        }
    }
    let out = json!({ "name": st.name, "page_size": mcr_dirty::sys::page_size(), "processes": procs });
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&out));
    }
    Ok(if failed { 1 } else { 0 })
}

fn counts_json(c: &Counts) -> Value {
    json!({ "tracked": c.tracked, "written": c.written, "untracked": c.untracked, "dirty": c.dirty(), "clean": c.clean() })
}

fn process_json(
    pid: i32,
    hpid: i32,
    tracking: Option<&mcr_protocol::DirtyTracking>,
    map: &mcr_dirty::DirtyMap,
) -> Value {
    let by_class = map.by_class();
    let classes: BTreeMap<&str, Value> =
        MappingClass::ALL.iter().filter_map(|c| by_class.get(c).map(|n| (c.name(), counts_json(n)))).collect();
    json!({
        "pid": pid,
        "host_pid": hpid,
        "method": map.method.name(),
        "armed": tracking.is_some_and(|t| t.method != DirtyMethod::None),
        "tracking": tracking,
        "total": counts_json(&map.counts()),
        "classes": classes,
        "mappings": map.mappings.iter().map(|m| json!({
            "start": format!("{:#x}", m.mapping.start),
            "end": format!("{:#x}", m.mapping.end),
            "path": m.mapping.path,
            "class": m.class.name(),
            "counts": counts_json(&m.counts),
        })).collect::<Vec<_>>(),
    })
}

fn render(out: &Value) -> String {
    use std::fmt::Write;
    let page = out["page_size"].as_u64().unwrap_or(4096);
    let mut s = String::new();
    for p in out["processes"].as_array().into_iter().flatten() {
        let pid = &p["pid"];
        if let Some(e) = p["error"].as_str() {
            let _ = writeln!(s, "pid {pid}: {e}");
            continue;
        }
        let _ = write!(s, "pid {pid} (host {}): {}", p["host_pid"], p["method"].as_str().unwrap_or("?"));
        let t = &p["tracking"];
        if t.is_null() {
            let _ = writeln!(s, ", not armed (startup not complete): every page counts as dirty");
        } else {
            let _ = writeln!(
                s,
                ", armed {:.1} ms after start in {} µs ({} mappings, {:.1} MiB)",
                t["armed_at_ms"].as_f64().unwrap_or(0.0),
                t["arm_us"],
                t["ranges"],
                t["bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
            );
            if let Some(n) = t["note"].as_str() {
                let _ = writeln!(s, "  note: {n}");
            }
        }
        let _ = writeln!(s, "  {:<10} {:>9} {:>9} {:>9} {:>9}", "pages", "tracked", "written", "untracked", "clean");
        let row = |s: &mut String, name: &str, c: &Value| {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                s,
                "  {:<10} {:>9} {:>9} {:>9} {:>9}",
                name,
                n("tracked"),
                n("written"),
                n("untracked"),
                n("clean")
            );
        };
        for (name, c) in p["classes"].as_object().into_iter().flatten() {
            row(&mut s, name, c);
        }
        row(&mut s, "total", &p["total"]);
        let total = &p["total"];
        let all = total["tracked"].as_u64().unwrap_or(0) + total["untracked"].as_u64().unwrap_or(0);
        let clean = total["clean"].as_u64().unwrap_or(0);
        let _ = writeln!(
            s,
            "  an update copies {} of {all} writable pages; dirty tracking skips {clean} ({:.1} MiB, {:.0}%)",
            total["dirty"],
            (clean * page) as f64 / 1048576.0,
            if all > 0 { clean as f64 * 100.0 / all as f64 } else { 0.0 }
        );
    }
    s
}

/// PIDs in the instance (its own PID namespace, or the host's) → host PIDs.
fn host_pids(st: &InstanceStatus) -> BTreeMap<i32, i32> {
    if !st.pid_namespace {
        return st.processes.iter().map(|p| (p.pid, p.pid)).collect();
    }
    let members = mcr_procfs::namespace::members(st.supervisor_pid).unwrap_or_default();
    members.into_iter().map(|m| (m.ns_pid, m.host_pid)).collect()
}
