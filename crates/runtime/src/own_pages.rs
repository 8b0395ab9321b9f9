//! The runtime's own code and read-only data become resident page by page, as they run.
//!
//! A file mapping's read fault maps the pages around it that the page cache holds (the
//! kernel's fault-around, 64 KiB): the program's first calls into the runtime made nearly
//! all of libmcr.so's 1.4 MB of code resident in every process (1.16 MB each in nginx's
//! master and workers, where the program's own resident memory is 4-6 MB). The kernel does
//! not fault around in a range a userfaultfd registered for write-protect, and the
//! runtime's code and read-only data are never written: registered (async, so nothing is
//! ever delivered), they fault in one page at a time. A fork child's registrations are not
//! inherited: it registers again.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

/// Ranges of libmcr.so's read-only mappings, (start, end) pairs.
const MAX_RANGES: usize = 8;
static RANGES: [AtomicU64; 2 * MAX_RANGES] = [const { AtomicU64::new(0) }; 2 * MAX_RANGES];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The userfaultfd holding the registrations (in the runtime's reserved range), or -1.
static FD: AtomicI32 = AtomicI32::new(-1);

/// In the constructor: note the read-only mappings of the runtime's library (at `path`)
/// among the process's mappings `maps`, and register them.
pub fn init(maps: &[mcr_procfs::Mapping], path: &str) {
    let mut n = 0;
    for m in maps.iter().filter(|m| m.path == path && !m.writable).take(MAX_RANGES) {
        RANGES[2 * n].store(m.start, Relaxed);
        RANGES[2 * n + 1].store(m.end, Relaxed);
        n += 1;
    }
    COUNT.store(n, SeqCst);
    register();
}

fn register() {
    let n = COUNT.load(SeqCst);
    if n == 0 {
        return;
    }
    // Without userfaultfd the pages only fault around, as they would without mcr's help.
    let Ok(fd) = mcr_dirty::arm::open_uffd() else { return };
    let mut registered = false;
    for i in 0..n {
        let (start, end) = (RANGES[2 * i].load(Relaxed), RANGES[2 * i + 1].load(Relaxed));
        registered |= mcr_dirty::sys::uffd_register_wp(fd, start, end - start).is_ok();
    }
    if !registered {
        mcr_dirty::sys::close(fd);
        return;
    }
    // SAFETY: the userfaultfd just made, the runtime's alone.
    FD.store(unsafe { crate::control::move_to_reserved(fd) }, SeqCst);
}

/// In a fork child: the parent's userfaultfd copy closed, the ranges registered anew.
pub fn reset_after_fork() {
    let fd = FD.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: the child's copy of the parent's userfaultfd, hidden from the program (a
        // reserved descriptor): the runtime's own; the parent keeps its copy.
        unsafe { crate::rawfd::close(fd) };
    }
    register();
}
