//! Profiling mode (`mcr profile`): the supervisor keeps the last profile report of every
//! process it ever registered (keyed by runtime connection: PIDs are reused), so
//! processes that exited during the workload still count.

use crate::state::State;
use mcr_protocol::{Response, RuntimeCommandKind, RuntimeReply};
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
