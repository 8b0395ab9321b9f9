//! The processes of the instance, read from /proc.

use std::fs;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: Vec<String>,
    /// Whether libmcr.so is mapped (the process will register, or has).
    pub has_runtime: bool,
    pub zombie: bool,
}

fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

pub fn read(pid: i32, runtime_lib_name: &str) -> Option<Proc> {
    let (state, ppid) = stat_fields(pid)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let has_runtime =
        fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| m.contains(runtime_lib_name)).unwrap_or(false);
    Some(Proc { pid, ppid, cmdline, has_runtime, zombie: state == 'Z' || state == 'X' })
}

fn all_pids() -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The server's processes: everything in our namespace but us (PID 1), or, without a
/// namespace, our descendants.
pub fn server_processes(own_namespace: bool, runtime_lib_name: &str) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let procs: Vec<Proc> =
        all_pids().into_iter().filter(|&p| p != me).filter_map(|p| read(p, runtime_lib_name)).collect();
    if own_namespace {
        return procs.into_iter().filter(|p| !p.zombie).collect();
    }
    let mut mine = vec![me];
    let mut out = Vec::new();
    // Parents have lower PIDs except after wrap-around: iterate to a fixed point.
    loop {
        let before = out.len();
        for p in &procs {
            if mine.contains(&p.ppid) && !mine.contains(&p.pid) {
                mine.push(p.pid);
                if !p.zombie {
                    out.push(p.clone());
                }
            }
        }
        if out.len() == before {
            break;
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Where a process's main thread is, from the kernel's view: its system call (by number)
/// or "running".
pub fn where_is(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    match text.split_whitespace().next() {
        Some("running") => "it is running outside any blocking call".into(),
        Some(nr) if nr.parse::<i64>().is_ok() => format!("it is blocked in system call {nr}, which mcr does not wrap"),
        _ => "its state is unknown".into(),
    }
}

/// This process's open descriptors above stderr.
pub fn own_descriptors_above_stderr() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd: &i32| fd > 2).collect())
        .unwrap_or_default()
}
