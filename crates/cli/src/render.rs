//! Human-readable output.

use mcr_protocol::{CallStack, InstanceStatus, Laggard, ProcessLog, ReplayConflict, StartupOp};
use std::fmt::Write;

pub fn error_chain(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            let _ = write!(s, ": {c}");
        }
    }
    s
}

fn stack_line(cs: &CallStack) -> String {
    format!("{} {}", cs.id, cs.summary(6))
}

pub fn status(st: &InstanceStatus) -> String {
    let mut o = String::new();
    let state = if st.quiesced {
        "quiesced"
    } else if st.started {
        "running"
    } else {
        "starting"
    };
    let _ = writeln!(o, "instance {}: {} {}", st.name, st.program, st.args.join(" "));
    let _ = writeln!(
        o,
        "  state {state}; supervisor pid {} ({}); main process {}; startup {}",
        st.supervisor_pid,
        if st.pid_namespace { "own PID namespace, PIDs below are inside it" } else { "no PID namespace" },
        st.main_pid.map_or("-".into(), |p| p.to_string()),
        st.startup_ms.map_or("not complete".into(), |ms| format!("completed in {ms:.1} ms")),
    );
    for p in &st.processes {
        let _ = writeln!(o, "process {} (parent {}): {}", p.pid, p.ppid, p.command_line.join(" "));
        if let Some(e) = &p.error {
            let _ = writeln!(o, "  ! {e}");
        }
        for t in &p.threads {
            let _ = writeln!(o, "  thread {:<7} {:<22} class: {}", t.tid, t.state.describe(), t.class);
            match &t.quiescent_point {
                Some(qp) => {
                    let mark = if t.at_quiescent_point { "at quiescent point" } else { "quiescent point" };
                    let _ = writeln!(o, "    {mark} {}", stack_line(qp));
                }
                None => {
                    let _ = writeln!(o, "    no quiescent point reached yet");
                }
            }
            if !t.at_quiescent_point {
                if let Some(cur) = &t.current_stack {
                    let _ = writeln!(o, "    now in {}", cur.summary(6));
                }
            }
        }
    }
    o
}

pub fn list(rows: &[InstanceStatus]) -> String {
    if rows.is_empty() {
        return "no running instances\n".into();
    }
    let mut o = format!("{:<16} {:<10} {:>6} {:>8}  {}\n", "NAME", "STATE", "PROCS", "THREADS", "PROGRAM");
    for st in rows {
        let state = if st.quiesced {
            "quiesced"
        } else if st.started {
            "running"
        } else {
            "starting"
        };
        let threads: usize = st.processes.iter().map(|p| p.threads.len()).sum();
        let _ = writeln!(
            o,
            "{:<16} {:<10} {:>6} {:>8}  {} {}",
            st.name,
            state,
            st.processes.len(),
            threads,
            st.program,
            st.args.join(" ")
        );
    }
    o
}

pub fn laggards(l: &[Laggard]) -> String {
    let mut o = String::new();
    for g in l {
        let _ = writeln!(o, "  process {} thread {}: {}", g.pid, g.tid, g.reason);
        if let Some(s) = &g.stack {
            let _ = writeln!(o, "    at {}", s.summary(8));
        }
    }
    o
}

pub fn startup_logs(procs: &[ProcessLog]) -> String {
    let mut o = String::new();
    for p in procs {
        let _ = writeln!(o, "process {}: {}", p.pid, p.command_line.join(" "));
        if let Some(e) = &p.error {
            let _ = writeln!(o, "  ! {e}");
        }
        let Some(log) = &p.log else { continue };
        if !log.complete {
            let _ = writeln!(o, "  (startup not complete yet: the log is still growing)");
        }
        for op in &log.ops {
            let args: Vec<String> = op.args.iter().map(ToString::to_string).collect();
            let result = if op.errno != 0 { format!("-1 (errno {})", op.errno) } else { op.result.to_string() };
            let by = if op.pid != p.pid { format!("  [by ancestor {}]", op.pid) } else { String::new() };
            let _ = writeln!(o, "  {:>3} {}({}) = {result}{by}", op.seq, op.call, args.join(", "));
            let _ = writeln!(o, "      {}", stack_line(&op.stack));
        }
        for u in &log.unreplayable {
            let _ = writeln!(o, "  ! unreplayable: {u}");
        }
    }
    o
}

fn op_line(op: &StartupOp) -> String {
    let args: Vec<String> = op.args.iter().map(ToString::to_string).collect();
    format!("{}({}) in {}", op.call, args.join(", "), op.stack.summary(5))
}

/// One screen: what failed, where, and what to do.
pub fn update_failure(name: &str, message: &str, conflicts: &[ReplayConflict]) -> String {
    failure(&format!("update of '{name}' rolled back"), message, conflicts)
}

/// The same screen for a rehearsal whose update would roll back.
pub fn rehearsal_failure(name: &str, message: &str, conflicts: &[ReplayConflict]) -> String {
    failure(&format!("rehearsal of the update of '{name}': the update would roll back"), message, conflicts)
}

fn failure(what: &str, message: &str, conflicts: &[ReplayConflict]) -> String {
    let mut o = format!("mcr: {what}; the old version is running as before.\n  why: {message}\n");
    for c in conflicts {
        let _ = writeln!(o, "  conflict in process {}: {}", c.pid, c.reason);
        if let Some(op) = &c.new_op {
            let _ = writeln!(o, "    new version: {}", op_line(op));
        }
        if let Some(op) = &c.old_op {
            let _ = writeln!(o, "    old version: {}", op_line(op));
        }
    }
    if !conflicts.is_empty() {
        o.push_str(
            "  to accept this change, resolve it in the new version with MCR_ADD_REINIT_HANDLER (include/mcr.h)\n",
        );
    }
    o
}
