//! mcr's heap in memfd mode (the runtime's `Mode::Auto`, as root) across a fork made after
//! startup, in a server whose heap is larger than what dirty tracking registers with its
//! userfaultfd (the used part of the data: the registration splits the last segment's
//! mapping). The fork must freeze every shared segment over its own memfd, as it does for
//! an unsplit one: before the fix, /proc/self/map_files had no entry for the split mapping,
//! and the fork copied the segment into anonymous memory instead (and with regions mapped
//! whole, walked gigabytes page by page: the "hang" of connd's master in memfd mode).

mod support;

use support::*;

/// mcr's heap window (mcr-alloc's WINDOW_BASE..WINDOW_END).
const WINDOW: std::ops::Range<u64> = 0x1000_0000_0000..0x2000_0000_0000;

const BALLAST_MIB: u64 = 96;

fn heap_mappings(pid: i32) -> Vec<mcr_procfs::maps::Mapping> {
    let maps = mcr_procfs::maps::read(pid).unwrap_or_else(|e| panic!("maps of {pid}: {e}"));
    maps.into_iter().filter(|m| WINDOW.contains(&m.start)).collect()
}

fn is_heap_memfd(m: &mcr_procfs::maps::Mapping) -> bool {
    m.path.starts_with("/memfd:mcr-heap")
}

#[test]
fn a_fork_after_startup_freezes_the_segment_dirty_tracking_split() {
    let mcr = Mcr::new("memfd-heap-fork");
    let port = free_port();
    let prog = fixture("bigforkd");
    let _inst = mcr.start("bigforkd", &prog, &["--port", &port.to_string(), "--ballast", &BALLAST_MIB.to_string()]);
    let pid = host_pid(&prog, port);

    let before = heap_mappings(pid);
    assert!(!before.is_empty() && before.iter().all(is_heap_memfd), "the heap is not in memfd mode: {before:#?}");
    // what the test is about: the startup fork froze segment 0, the ballast went into a
    // fresh shared segment, and arming dirty tracking split that segment's mapping
    let split =
        before.windows(2).any(|w| !w[0].private && !w[1].private && w[0].inode == w[1].inode && w[0].end == w[1].start);
    assert!(split, "no shared heap mapping split in two: {before:#?}");

    // 0..=255 repeat (7 is odd): every 256 bytes sum to 255 * 256 / 2
    let expected = (BALLAST_MIB << 20) / 256 * (255 * 256 / 2);
    for _ in 0..2 {
        let mut c = Client::connect(port);
        assert_eq!(c.read_line().expect("the child forked for the connection answers"), format!("SUM {expected}"));
    }
    let after = heap_mappings(pid);
    let copied: Vec<_> = after.iter().filter(|m| !is_heap_memfd(m)).collect();
    assert!(
        copied.is_empty(),
        "a fork copied heap segments into anonymous memory instead of freezing them over their memfd: \
         {copied:#?}\nbefore the fork: {before:#?}"
    );
    assert!(after.iter().all(|m| m.private), "every segment frozen (copy-on-write) by the forks: {after:#?}");
}
