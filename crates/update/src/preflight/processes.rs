//! Processes forked after startup that neither a connection nor the new build's respawn handler accounts for.
//!
//! The new version's startup recreates the processes and threads the old one's startup
//! made (replayed with the same PIDs and TIDs); per-connection processes and threads that
//! serve a client connection are the drain's, the respawn and resume handlers' (see
//! `decide.rs`). Everything else the old version made after startup would be missing
//! from the new one:
//! - a process forked (or started by a fork and an exec) after startup that holds no
//!   client connection: a helper, a worker respawned after a crash, a daemonized child
//!   (one still there after [`GRACE`]: a per-connection process that just closed its
//!   connection is on its way out);
//! - a thread created after startup that serves no client connection;
//! - a zombie child: it holds nothing, but its exit status is the parent's to collect,
//!   and the new version's processes are not its parent (a `waitpid` there would fail
//!   with ECHILD). A child that just exited is not a zombie for long when its parent
//!   reaps: only one still there after [`GRACE`] is named.

use super::{Context, Unmovable};
use mcr_protocol::{ProcessLog, StartupLog};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a process without a connection, or a zombie child, may take to go before it
/// counts as kept.
const GRACE: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_millis(10);

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let pids: Vec<i32> = ctx.processes.keys().copied().collect();
    let late = late_processes(&pids, &ctx.logs);
    let ended = |u: &Unmovable| {
        let status = ctx.processes.get(&u.pid).and_then(|&host| mcr_procfs::status::read(host).ok());
        status.is_none_or(|s| s.is_exited())
    };
    let mut found = still_there_after_grace(late, ended);
    found.extend(ctx.logs.iter().flat_map(late_threads));
    found.extend(kept_zombies(ctx));
    found
}

/// Of `items`, those `ended` does not say are gone within [`GRACE`].
fn still_there_after_grace<T>(mut items: Vec<T>, ended: impl Fn(&T) -> bool) -> Vec<T> {
    let t = Instant::now();
    loop {
        items.retain(|i| !ended(i));
        if items.is_empty() || t.elapsed() >= GRACE {
            return items;
        }
        std::thread::sleep(POLL);
    }
}

/// The processes of `pids` made after startup that hold no client connection.
fn late_processes(pids: &[i32], logs: &[ProcessLog]) -> Vec<Unmovable> {
    let log_of = |pid: i32| logs.iter().find(|l| l.pid == pid).and_then(|l| l.log.as_ref());
    // A log that inherited no operation from a parent is a process image's own: the
    // instance's first process, or one a fork and an exec started.
    let fresh = |pid: i32| log_of(pid).is_none_or(|l| l.ops.iter().all(|o| o.pid == pid));
    let forked_in_startup: BTreeSet<i32> = logs
        .iter()
        .filter_map(|l| l.log.as_ref())
        .flat_map(|l| &l.ops)
        .filter(|o| o.call == "fork" && o.result > 0)
        .map(|o| o.result as i32)
        .collect();
    let root = pids.iter().copied().filter(|&p| fresh(p) && !forked_in_startup.contains(&p)).min();
    let mut out = Vec::new();
    for &pid in pids {
        let log = log_of(pid);
        let after = log.is_some_and(|l| l.after_startup.forked)
            || (Some(pid) != root && !forked_in_startup.contains(&pid) && fresh(pid));
        if !after || log.is_some_and(holds_connections) {
            continue;
        }
        // The program's name, as ps shows it (its arguments are the old version's own).
        let program = logs.iter().find(|l| l.pid == pid).and_then(|l| l.command_line.first());
        let program = program.and_then(|p| p.rsplit('/').next()).filter(|p| !p.is_empty());
        let command = program.map(|p| format!("{p}: ")).unwrap_or_default();
        out.push(match log {
            Some(_) => Unmovable {
                pid,
                what: format!("process {pid} ({command}forked after startup, holds no connection)"),
                why: "the new version's startup does not recreate it, and no connection's respawn would".to_string(),
            },
            None => Unmovable {
                pid,
                what: format!("process {pid} ({command}made after startup, not registered with mcr)"),
                why: "mcr's runtime is not active in it (a process in namespaces of its own, as vsftpd's isolated \
                      sessions, or one that installed a seccomp filter): what it holds can be neither read nor moved"
                    .to_string(),
            },
        });
    }
    out
}

/// A per-connection process: it serves a client, or served one that is gone (and ends).
fn holds_connections(log: &StartupLog) -> bool {
    !log.after_startup.connections.is_empty() || log.after_startup.lost_client
}

/// The threads of one process created after startup that serve no client connection.
fn late_threads(process: &ProcessLog) -> Vec<Unmovable> {
    let Some(log) = process.log.as_ref() else { return Vec::new() };
    let connections = &log.after_startup.connections;
    log.after_startup
        .threads
        .iter()
        .filter(|t| !t.fd.is_some_and(|fd| connections.contains(&fd)))
        .map(|t| {
            let doing = match (&t.call, t.fd) {
                (Some(call), Some(fd)) => format!("blocked in {call} on fd {fd}"),
                (Some(call), None) => format!("blocked in {call}"),
                (None, _) => "running".to_string(),
            };
            Unmovable {
                pid: process.pid,
                what: format!("thread {} (created after startup, {doing})", t.tid),
                why: "the new version's startup does not create it, and it serves no connection".to_string(),
            }
        })
        .collect()
}

/// Zombie children of the old processes still unreaped after [`GRACE`].
fn kept_zombies(ctx: &Context) -> Vec<Unmovable> {
    let is_zombie = |host: i32| mcr_procfs::status::read(host).ok().and_then(|s| s.state()) == Some('Z');
    let mut zombies = Vec::new();
    for (&pid, &host) in &ctx.processes {
        for tid in mcr_procfs::task::list(host).unwrap_or_default() {
            let children = mcr_procfs::task::children(host, tid).unwrap_or_default();
            zombies.extend(children.into_iter().filter(|&c| is_zombie(c)).map(|c| (pid, c)));
        }
    }
    // Reaped, the PID could be reused at once: a zombie is gone when it is no longer one.
    still_there_after_grace(zombies, |&(_, child)| !is_zombie(child))
        .into_iter()
        .map(|(parent, child)| {
            let ns = mcr_procfs::status::read(child).ok().and_then(|s| s.innermost_pid()).unwrap_or(child);
            Unmovable {
                pid: parent,
                what: format!("process {ns} (zombie child of process {parent}, its exit status not collected)"),
                why: "the new version's processes are not its parent: its status could never be waited for".to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcr_protocol::{AfterStartup, CallStack, LateThread, StartupOp};

    fn op(pid: i32, call: &str, result: i64) -> StartupOp {
        StartupOp {
            pid,
            seq: 0,
            call: call.to_string(),
            stack: CallStack { id: String::new(), frames: vec![] },
            args: vec![],
            result,
            errno: 0,
            fds: vec![],
        }
    }

    fn process(pid: i32, ops: Vec<StartupOp>, after_startup: AfterStartup) -> ProcessLog {
        ProcessLog {
            pid,
            command_line: vec!["/srv/bin/srv".into(), "--port".into(), "7".into()],
            log: Some(StartupLog {
                complete: true,
                ops,
                unreplayable: vec![],
                after_startup,
                waits_at: vec![],
                mapped_at_startup: vec![],
                allocated_at_startup: vec![],
            }),
            error: None,
            registration: 0,
            refresh: None,
        }
    }

    fn named(u: &[Unmovable]) -> Vec<i32> {
        u.iter().map(|u| u.pid).collect()
    }

    #[test]
    fn processes_made_after_startup_without_a_connection_are_named() {
        let forked = AfterStartup { forked: true, ..Default::default() };
        let logs = vec![
            // The first process forked 3 during startup.
            process(2, vec![op(2, "socket", 3), op(2, "fork", 3)], AfterStartup::default()),
            process(3, vec![op(2, "socket", 3)], AfterStartup::default()),
            // Forked after startup: a helper, a per-connection child, one whose client left.
            process(4, vec![op(2, "socket", 3)], forked.clone()),
            process(5, vec![op(2, "socket", 3)], AfterStartup { connections: vec![6], ..forked.clone() }),
            process(6, vec![op(2, "socket", 3)], AfterStartup { lost_client: true, ..forked }),
            // A fork and an exec after startup: a fresh log of its own.
            process(7, vec![], AfterStartup::default()),
        ];
        // 8: no runtime (no log), forked after startup.
        let found = late_processes(&[2, 3, 4, 5, 6, 7, 8], &logs);
        assert_eq!(named(&found), [4, 7, 8]);
        assert_eq!(found[0].what, "process 4 (srv: forked after startup, holds no connection)");
        assert_eq!(found[2].what, "process 8 (made after startup, not registered with mcr)");
    }

    #[test]
    fn only_what_stays_beyond_the_grace_is_kept() {
        let t = Instant::now();
        let polls = std::cell::Cell::new(0);
        let kept = still_there_after_grace(vec![1, 2, 3], |&i| {
            polls.set(polls.get() + 1);
            i == 2 || (i == 3 && polls.get() > 6)
        });
        assert_eq!(kept, [1], "2 ended at once, 3 within the grace");
        assert!(t.elapsed() >= GRACE, "what stays is waited for the whole grace");
        let t = Instant::now();
        assert!(still_there_after_grace(vec![4], |_| true).is_empty());
        assert!(t.elapsed() < GRACE, "nothing left: no wait");
    }

    #[test]
    fn a_daemon_whose_parents_exited_was_made_in_startup() {
        // Forked twice during startup; the processes that forked it are gone, their log
        // lives on in its own.
        let logs = vec![process(9, vec![op(2, "socket", 3), op(5, "setsid", 5)], AfterStartup::default())];
        assert!(late_processes(&[9], &logs).is_empty());
    }

    #[test]
    fn threads_made_after_startup_are_named_unless_they_serve_a_connection() {
        let thread = |tid, call: Option<&str>, fd| LateThread { tid, call: call.map(str::to_string), fd };
        let after = AfterStartup {
            connections: vec![9],
            threads: vec![
                thread(11, Some("read"), Some(5)),
                thread(12, Some("read"), Some(9)),
                thread(13, Some("pthread_cond_wait"), None),
                thread(14, None, None),
            ],
            ..Default::default()
        };
        let found = late_threads(&process(2, vec![], after));
        let what: Vec<&str> = found.iter().map(|u| u.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "thread 11 (created after startup, blocked in read on fd 5)",
                "thread 13 (created after startup, blocked in pthread_cond_wait)",
                "thread 14 (created after startup, running)",
            ]
        );
    }
}
