//! CPU time consumed by a whole process tree, from /proc (nanoseconds of on-CPU time of
//! every thread: the first field of /proc/PID/task/TID/schedstat).
//!
//! The tree is walked again at every reading, so processes forked in between are
//! counted; the time of threads or processes that exited in between is lost, which does
//! not happen to the servers measured here in steady state.

use mcr_procfs::task;

fn children(pid: i32) -> Vec<i32> {
    let tids = task::list(pid).unwrap_or_default();
    tids.into_iter().flat_map(|tid| task::children(pid, tid).unwrap_or_default()).collect()
}

/// `root` and all its descendants.
pub fn tree(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        for k in kids {
            if !all.contains(&k) {
                all.push(k);
            }
        }
        i += 1;
    }
    all
}

fn process_ns(pid: i32) -> u64 {
    task::list(pid).unwrap_or_default().into_iter().filter_map(|tid| task::cpu_ns(pid, tid).ok()).sum()
}

/// On-CPU nanoseconds of the tree rooted at `root` (0 if it does not exist).
pub fn tree_ns(root: i32) -> u64 {
    tree(root).into_iter().map(process_ns).sum()
}

/// Summed VmRSS (kB) of the processes of `root`'s tree, only those whose comm is
/// `comm` unless it is empty.
pub fn rss_kb(root: i32, comm: &str) -> u64 {
    tree(root)
        .into_iter()
        .filter(|&p| comm.is_empty() || mcr_procfs::comm(p).is_ok_and(|c| c == comm))
        .filter_map(|p| mcr_procfs::status::read(p).ok()?.vm_rss_kb())
        .sum()
}

/// The summed PSS (kB, /proc/PID/smaps_rollup) of `root` and its descendants whose
/// command name is `comm` (all when empty): resident memory with each shared page divided
/// among the processes that map it (a heap memfd mcr shares with a successor, a forked
/// worker's pages shared with its master, counted once over them all).
pub fn pss_kb(root: i32, comm: &str) -> u64 {
    tree(root)
        .into_iter()
        .filter(|&p| comm.is_empty() || mcr_procfs::comm(p).is_ok_and(|c| c == comm))
        .filter_map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            text.lines().find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_finds_descendants_and_counts_their_cpu() {
        // sh (spinning) → sleep: a root that burns CPU, with a child.
        let mut root = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let pid = root.id() as i32;
        // The shell forks its child soon (bounded wait: a loaded machine may take a while).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut t = tree(pid);
        while t.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            t = tree(pid);
        }
        assert_eq!(t.len(), 2, "sh and its sleep child: {t:?}");
        let a = tree_ns(pid);
        // The shell spins: it gains 10 ms of CPU time soon, however loaded the machine
        // (bounded: 5 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut b = tree_ns(pid);
        while b <= a + 10_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            b = tree_ns(pid);
        }
        let _ = std::process::Command::new("kill").arg(t[1].to_string()).status();
        root.kill().unwrap();
        root.wait().unwrap();
        assert!(b > a + 10_000_000, "a spinning shell gained only {} ns in 5 s", b - a);
        assert_eq!(tree_ns(-5), 0);
    }
}
