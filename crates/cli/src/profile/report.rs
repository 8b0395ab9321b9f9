//! The human report of `mcr profile`: a table like the paper's Table 1, then each
//! quiescent point with its symbolized stack and file:line, the other blocking calls and
//! why they are not quiescent points, warnings, and the cost of profiling.

use mcr_profiler::{Analysis, Class, Lines};
use std::fmt::Write;

fn mark(b: bool) -> &'static str {
    if b {
        "x"
    } else {
        "-"
    }
}

fn qp_summary(c: &Class) -> String {
    match c.quiescent_point() {
        Some(s) => format!("{} < {}", s.call, s.stack.summary(2)),
        None if c.long_lived => "(none)".into(),
        None => String::new(),
    }
}

pub fn render(a: &Analysis, lines: &mut Lines, program: &str, workload: &str, out_path: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "mcr profile: {program}");
    let _ = writeln!(
        o,
        "workload: {workload}; {} process(es) seen, {} thread class(es)\n",
        a.processes_seen,
        a.classes.len()
    );
    let ll = a.count(|c| c.long_lived);
    let per = a.count(|c| c.long_lived && c.persistent && c.qp.is_some());
    let vol = a.count(|c| c.long_lived && !c.persistent && c.qp.is_some());
    let qps = a.count(|c| c.long_lived && c.qp.is_some());
    let _ = writeln!(o, "  SL  LL  QP  Per  Vol");
    let _ = writeln!(o, "  {:>2}  {:>2}  {:>2}  {:>3}  {:>3}\n", a.classes.len() - ll, ll, qps, per, vol);
    let _ = writeln!(
        o,
        "  #  class                                                        SL LL Per Vol threads  quiescent point"
    );
    for (i, c) in a.classes.iter().enumerate() {
        let label: String = if c.label.chars().count() > 60 {
            c.label.chars().take(59).chain(['…']).collect()
        } else {
            c.label.clone()
        };
        let _ = writeln!(
            o,
            "  {:<2} {:<60} {:>2} {:>2} {:>3} {:>3} {:>7}  {}",
            i + 1,
            label,
            mark(!c.long_lived),
            mark(c.long_lived),
            mark(c.persistent),
            mark(!c.persistent),
            format!("{}/{}", c.alive_at_end, c.instances),
            qp_summary(c)
        );
    }
    let _ = writeln!(o, "  (threads: alive at the end / seen; Per/Vol: present right after startup or created later)");

    for (i, c) in a.classes.iter().enumerate().filter(|(_, c)| c.long_lived) {
        let _ = writeln!(o, "\n[{}] {} (class {})", i + 1, c.label, c.id);
        if let Some(cs) = &c.creation {
            let by: Vec<String> = cs.frames.iter().take(4).map(|f| frame_text(lines, f)).collect();
            let _ = writeln!(o, "    created at: {}", by.join(" < "));
        }
        match (c.quiescent_point(), &c.long_lived_loop) {
            (Some(q), lp) => {
                let _ = writeln!(
                    o,
                    "    quiescent point {}: {} ({:.0}% of the class's blocked time, {:.0} ms sampled)",
                    q.stack.id,
                    q.call,
                    q.share * 100.0,
                    q.ms
                );
                match lp {
                    Some(f) if c.sites.len() > 1 => {
                        let _ = writeln!(
                            o,
                            "    long-lived loop: {} (the deepest frame every sample had on the stack)",
                            frame_text(lines, f)
                        );
                    }
                    Some(f) => {
                        let _ = writeln!(
                            o,
                            "    long-lived loop: {} or one of its callers (one blocking site only: samples cannot tell \
                             which of the frames below the call loops)",
                            frame_text(lines, f)
                        );
                    }
                    None => {}
                }
                let _ = writeln!(o, "      #0 {}", q.call);
                for (n, f) in q.stack.frames.iter().enumerate() {
                    let _ = writeln!(o, "      #{} {}", n + 1, frame_text(lines, f));
                }
            }
            (None, _) => {
                let _ = writeln!(
                    o,
                    "    no quiescent point: never seen blocked in a wrapped call ({} samples running)",
                    c.running_samples
                );
            }
        }
        for s in c.sites.iter().filter(|s| s.not_qp_because.is_some()) {
            let at = s.stack.frames.first().map(|f| frame_text(lines, f)).unwrap_or_default();
            let _ = writeln!(o, "    not a quiescent point: {} {} at {}", s.call, s.stack.id, at);
            let _ = writeln!(o, "      {}", s.not_qp_because.as_deref().unwrap_or(""));
        }
        if !c.reached {
            let _ = writeln!(o, "    (not reached by the workload)");
        }
    }

    if !a.warnings.is_empty() {
        let _ = writeln!(o, "\nwarnings:");
        for w in &a.warnings {
            let _ = writeln!(o, "  - {w}");
        }
    }
    let cst = &a.cost;
    let window_s = cst.window_ms / 1000.0;
    let core_pct = if cst.window_ms > 0.0 { cst.sampler_cpu_ms / cst.window_ms * 100.0 } else { 0.0 };
    let _ = writeln!(
        o,
        "\nprofiling cost: one sample every {:.1} ms in each process ({} in all); during the {:.1} s workload the \
         samplers used {:.1} ms of CPU ({:.2}% of one core; the server itself used {:.1} ms). The wrapped calls do no \
         extra work in profiling mode, and without it nothing is sampled.",
        cst.period_us as f64 / 1000.0,
        cst.ticks,
        window_s,
        cst.sampler_cpu_ms,
        core_pct,
        cst.server_cpu_ms
    );
    let _ = writeln!(o, "profile written to {out_path} (use it with `mcr run --profile {out_path}`)");
    o
}

fn frame_text(lines: &mut Lines, f: &mcr_protocol::Frame) -> String {
    match lines.of(f) {
        Some(l) => format!("{} ({l})", f.display_name()),
        None => f.display_name(),
    }
}
