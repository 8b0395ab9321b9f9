//! CPU time consumed by a whole process tree, from /proc (nanoseconds of on-CPU time of
//! every thread: the first field of /proc/PID/task/TID/schedstat).
//!
//! The tree is walked again at every reading, so processes forked in between are
//! counted; the time of threads or processes that exited in between is lost, which does
//! not happen to the servers measured here in steady state.

use std::fs;

fn tasks(pid: i32) -> Vec<i32> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for tid in tasks(pid) {
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
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
    tasks(pid)
        .into_iter()
        .filter_map(|tid| {
            let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
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
        .filter(|p| comm.is_empty() || fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm))
        .filter_map(|p| {
            let s = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<u64>().ok()
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
        std::thread::sleep(std::time::Duration::from_millis(100));
        let t = tree(pid);
        assert_eq!(t.len(), 2, "sh and its sleep child: {t:?}");
        let a = tree_ns(pid);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let b = tree_ns(pid);
        let _ = std::process::Command::new("kill").arg(t[1].to_string()).status();
        root.kill().unwrap();
        root.wait().unwrap();
        assert!(b > a + 10_000_000, "a spinning shell gained only {} ns in 100 ms", b - a);
        assert_eq!(tree_ns(-5), 0);
    }
}
