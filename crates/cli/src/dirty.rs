//! `mcr ctl NAME dirty`: what each process of a running server wrote since its startup
//! completed (mcr-client gathers it), printed.

use anyhow::Result;
use mcr_client::dirty::{InstanceDirt, PageCounts, ProcessDirt};
use mcr_protocol::InstanceDir;
use std::fmt::Write;

pub fn dirty(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    let report = mcr_client::dirty::gather(dir, name)?;
    if json {
        // Through a Value: its keys come out sorted, as this command has always printed them.
        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&report)?)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.any_failed() { 1 } else { 0 })
}

fn row(s: &mut String, name: &str, c: &PageCounts) {
    let _ = writeln!(s, "  {:<10} {:>9} {:>9} {:>9} {:>9}", name, c.tracked, c.written, c.untracked, c.clean);
}

fn render(report: &InstanceDirt) -> String {
    let mut s = String::new();
    for p in &report.processes {
        let p = match p {
            ProcessDirt::Failed(f) => {
                let _ = writeln!(s, "pid {}: {}", f.pid, f.error);
                continue;
            }
            ProcessDirt::Scanned(p) => p,
        };
        let _ = write!(s, "pid {} (host {}): {}", p.pid, p.host_pid, p.method);
        match &p.tracking {
            None => {
                let _ = writeln!(s, ", not armed (startup not complete): every page counts as dirty");
            }
            Some(t) => {
                let _ = writeln!(
                    s,
                    ", armed {:.1} ms after start in {} µs ({} mappings, {:.1} MiB)",
                    t.armed_at_ms,
                    t.arm_us,
                    t.ranges,
                    t.bytes as f64 / 1048576.0
                );
                if let Some(n) = &t.note {
                    let _ = writeln!(s, "  note: {n}");
                }
            }
        }
        let _ = writeln!(s, "  {:<10} {:>9} {:>9} {:>9} {:>9}", "pages", "tracked", "written", "untracked", "clean");
        for (name, c) in &p.classes {
            row(&mut s, name, c);
        }
        row(&mut s, "total", &p.total);
        let (all, clean) = (p.total.writable(), p.total.clean);
        let _ = writeln!(
            s,
            "  an update copies {} of {all} writable pages; dirty tracking skips {clean} ({:.1} MiB, {:.0}%)",
            p.total.dirty,
            (clean * report.page_size) as f64 / 1048576.0,
            if all > 0 { clean as f64 * 100.0 / all as f64 } else { 0.0 }
        );
    }
    s
}
