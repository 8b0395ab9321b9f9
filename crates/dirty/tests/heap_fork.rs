//! Dirty tracking over mcr's heap in memfd mode, then a fork.
//!
//! Registering part of a mapping with the userfaultfd splits it in two (the registered part
//! carries other flags): the runtime tracks a region's data up to its used part plus some
//! headroom, which ends inside the mapping of the last segment once the heap is larger than
//! the headroom or a fork started a fresh segment. The fork freeze reopens each shared
//! segment's memfd through `/proc/self/map_files/START-END`, which names whole mappings only:
//! when it assumed the segment's first piece was one mapping, the reopen failed (ENOENT) and
//! the fork fell back to copying the segment into anonymous memory (racy with other threads,
//! and, when a region was still mapped whole, a page-by-page walk of gigabytes that left
//! connd's forking master spinning for minutes: the "hang" of memfd mode).

use mcr_alloc::{Config, Heap, Mode, SegmentBacking, SegmentInfo};
use mcr_dirty::{arm, sys};

fn fill(p: usize, len: usize, v: u8) {
    // SAFETY: a live block of at least `len` bytes of this test.
    unsafe { std::ptr::write_bytes(p as *mut u8, v, len) }
}

fn holds(p: usize, len: usize, v: u8) -> bool {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(p as *const u8, len) }.iter().all(|&b| b == v)
}

fn segments(heap: &Heap) -> Vec<SegmentInfo> {
    let mut v = Vec::new();
    heap.segments(heap.own_slot().unwrap(), |s| v.push(s));
    v
}

fn backings(heap: &Heap) -> Vec<SegmentBacking> {
    segments(heap).iter().map(|s| s.backing).collect()
}

#[test]
fn a_fork_freezes_a_segment_whose_mapping_dirty_tracking_split() {
    assert!(mcr_alloc::memfd_reopenable(), "the fork freeze needs CAP_CHECKPOINT_RESTORE (run as root)");
    let heap = Box::new(Heap::new());
    heap.init(&Config { mode: Mode::Memfd, ..Config::default() }).unwrap();
    // SAFETY: this thread's cache, used by this thread only.
    let cache = unsafe { heap.thread_cache() };
    let first = heap.malloc(cache, 1 << 20).unwrap().as_ptr() as usize;
    fill(first, 1 << 20, 0x11);

    // a fork (the hooks alone: parent side) freezes segment 0; the next carve starts a
    // shared segment of the process's own above the high-water mark
    heap.fork_prepare();
    heap.fork_parent();
    let second = heap.malloc(cache, 4 << 20).unwrap().as_ptr() as usize;
    fill(second, 4 << 20, 0x22);
    assert_eq!(backings(&heap), [SegmentBacking::PrivateMemfd, SegmentBacking::SharedMemfd]);
    let fresh = segments(&heap)[1];
    assert!(
        fresh.used_end < fresh.first_mapping.1,
        "the fresh segment's mapping must reach past its used part for the registration to split it: {fresh:?}"
    );

    // dirty tracking armed over the used part, as the runtime does at the end of startup
    let uffd = arm::open_uffd().expect("userfaultfd with async write-protect (Linux 6.7)");
    let len = (fresh.used_end - fresh.start) as u64;
    sys::uffd_register_wp(uffd, fresh.start as u64, len).unwrap();
    sys::uffd_writeprotect(uffd, fresh.start as u64, len).unwrap();

    // the next fork freezes the fresh segment over its own memfd, as it froze segment 0
    heap.fork_prepare();
    heap.fork_parent();
    let stats = heap.stats();
    sys::close(uffd);
    assert_eq!(backings(&heap), [SegmentBacking::PrivateMemfd, SegmentBacking::PrivateMemfd], "{stats:?}");
    assert_eq!((stats.segments_frozen, stats.segments_copied), (2, 0), "{stats:?}");
    assert!(holds(first, 1 << 20, 0x11) && holds(second, 4 << 20, 0x22), "the freeze changed bytes");
    fill(second, 4 << 20, 0x33);
    assert!(holds(second, 4 << 20, 0x33));
}
