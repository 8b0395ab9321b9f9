//! Which host process is which process of an instance: an instance in its own PID
//! namespace knows its processes by their PIDs there, /proc by their host PIDs.
//!
//! The one reader of this table (`mcr ctl dirty`, `mcr update`); mcr-procfs is to take it
//! over.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum PidsError {
    #[error("cannot read the supervisor's PID namespace")]
    Namespace(#[source] std::io::Error),
    #[error("cannot list /proc")]
    Proc(#[source] std::io::Error),
}

/// PIDs inside the instance → host PIDs, for an instance whose supervisor (host PID
/// `supervisor_pid`) runs in its own PID namespace when `pid_namespace`, else for
/// `processes` as they are (no namespace: the same numbers).
pub fn host_pids(
    pid_namespace: bool,
    supervisor_pid: i32,
    processes: impl IntoIterator<Item = i32>,
) -> Result<BTreeMap<i32, i32>, PidsError> {
    if !pid_namespace {
        return Ok(processes.into_iter().map(|p| (p, p)).collect());
    }
    host_pids_in(supervisor_pid)
}

/// PIDs inside the PID namespace supervised by `supervisor_pid` → host PIDs, of the
/// processes that live (one that exited and is not reaped yet, a per-connection child
/// whose client just left, holds nothing anyone could ask of it).
pub fn host_pids_in(supervisor_pid: i32) -> Result<BTreeMap<i32, i32>, PidsError> {
    let ns = std::fs::read_link(format!("/proc/{supervisor_pid}/ns/pid")).map_err(PidsError::Namespace)?;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").map_err(PidsError::Proc)?.flatten() {
        let Some(hpid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if hpid == supervisor_pid || std::fs::read_link(format!("/proc/{hpid}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{hpid}/status")).unwrap_or_default();
        if let Some(nspid) = namespace_pid(&status) {
            out.insert(nspid, hpid);
        }
    }
    Ok(out)
}

/// The PID in the innermost namespace of a live process, from its /proc/PID/status.
fn namespace_pid(status: &str) -> Option<i32> {
    let exited =
        status.lines().find_map(|l| l.strip_prefix("State:")).is_some_and(|st| st.trim_start().starts_with(['Z', 'X']));
    if exited {
        return None;
    }
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_pid_of_a_live_process() {
        let status = "Name:\tkvd\nState:\tS (sleeping)\nNSpid:\t4242\t2\nPPid:\t1\n";
        assert_eq!(namespace_pid(status), Some(2));
        assert_eq!(namespace_pid("State:\tR (running)\nNSpid:\t17\n"), Some(17));
    }

    #[test]
    fn exited_processes_are_left_out() {
        assert_eq!(namespace_pid("State:\tZ (zombie)\nNSpid:\t4242\t3\n"), None);
        assert_eq!(namespace_pid("State:\tX (dead)\nNSpid:\t4242\t3\n"), None);
    }

    #[test]
    fn without_a_namespace_the_numbers_stay() {
        let m = host_pids(false, 1, [5, 7]).unwrap();
        assert_eq!(m, BTreeMap::from([(5, 5), (7, 7)]));
    }

    #[test]
    fn this_process_is_found_in_its_own_namespace() {
        // Whatever namespace the test runs in, its own PID there maps to its host PID
        // as /proc shows it; a parent in the same namespace stands in for the supervisor.
        let me = std::process::id() as i32;
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let m = host_pids_in(parent).unwrap();
        assert_eq!(m.get(&me), Some(&me));
    }
}
