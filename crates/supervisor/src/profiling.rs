//! Profiling mode (`mcr profile`): the supervisor keeps the last profile report of every
//! process it ever registered (keyed by runtime connection: PIDs are reused), so
//! processes that exited during the workload still count.

use crate::state::State;
use mcr_protocol::{CallStack, ProcessProfile, Response, RuntimeCommandKind, RuntimeReply, ThreadProfile};
use std::time::Duration;

/// Fresh snapshots from every live process, the last report of every other one.
pub async fn data(state: &State, timeout: Duration) -> Response {
    let live: Vec<(i32, u64)> = state.lock().procs.iter().map(|(pid, r)| (*pid, r.conn)).collect();
    let pids: Vec<i32> = live.iter().map(|(p, _)| *p).collect();
    let replies = crate::control::ask_all(state, &pids, RuntimeCommandKind::ProfileSnapshot, timeout).await;
    let mut g = state.lock();
    for (pid, reply) in replies {
        if let (Ok(RuntimeReply::Profile(p)), Some((_, conn))) = (reply, live.iter().find(|(p, _)| *p == pid)) {
            g.profiles.insert(*conn, p);
        }
    }
    let processes = g
        .profiles
        .iter()
        .map(|(conn, p)| {
            let mut p = p.clone();
            if !live.iter().any(|(_, c)| c == conn) {
                p.alive = false;
                for t in &mut p.threads {
                    t.alive = false;
                }
            }
            p
        })
        .collect();
    Response::ProfileData { processes }
}

/// Profiling mode: a process that registered is known even if it never sends a report
/// (one that exits before its first wrapped call starts the sampler: a daemon's parent).
pub fn note_hello(profiles: &mut std::collections::BTreeMap<u64, ProcessProfile>, conn: u64, hello: Hello<'_>) {
    if std::env::var_os(mcr_protocol::env::PROFILING).is_none() || profiles.contains_key(&conn) {
        return;
    }
    let now = monotonic_ms();
    // A fork child whose fork stack is unknown (it never reported): an empty stack.
    let fork_stack = hello.forked.then(|| CallStack { id: "0000000000000000".into(), frames: Vec::new() });
    profiles.insert(
        conn,
        ProcessProfile {
            pid: hello.pid,
            ppid: hello.ppid,
            exe: hello.exe.to_string(),
            fork_stack,
            period_us: 0,
            ticks: 0,
            taken_ms: now,
            sampler_cpu_ms: 0.0,
            process_cpu_ms: 0.0,
            startup_complete: false,
            alive: true,
            threads: vec![ThreadProfile {
                tid: hello.pid,
                main: true,
                creation_stack: None,
                start_routine: None,
                alive: true,
                first_seen_ms: now,
                last_seen_ms: now,
                cpu_ms: 0.0,
                wakeups: 0,
                running_samples: 0,
                sites: Vec::new(),
            }],
        },
    );
}

pub struct Hello<'a> {
    pub pid: i32,
    pub ppid: i32,
    pub exe: &'a str,
    pub forked: bool,
}

fn monotonic_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
