//! Which host process is which process of an instance: an instance in its own PID
//! namespace knows its processes by their PIDs there, /proc by their host PIDs.
//!
//! What `mcr ctl dirty` and `mcr update` use; mcr-procfs reads /proc for it.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum PidsError {
    #[error("cannot read the supervisor's PID namespace")]
    Namespace(#[source] std::io::Error),
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
    mcr_procfs::namespace::host_pids(supervisor_pid).map_err(PidsError::Namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_namespace_the_numbers_stay() {
        let m = host_pids(false, 1, [5, 7]).unwrap();
        assert_eq!(m, BTreeMap::from([(5, 5), (7, 7)]));
    }
}
