//! Memory the program maps itself after startup (issue 12, global inheritance): `mmap`,
//! `mremap` and `shmat` made once startup is complete, minus what `munmap` and `shmdt`
//! took away since. The new version's startup does not make such mappings, and the
//! update does not move them (yet): the update's preflight names each one that is still
//! mapped, so the update refuses before it quiesces instead of losing it.
//!
//! Only the program's own calls arrive here: glibc's malloc and thread stacks map memory
//! through libc-internal entry points, which bypass the interposed symbols; the runtime's
//! own mappings use raw system calls.
//!
//! Steady state: a program's `mmap` after startup pays one lock and an insertion into a
//! short list of ranges; `munmap` one lock and a scan of that list.

use crate::quiesce::STARTUP_DONE;
use crate::sync::SpinLock;
use crate::threads;
use mcr_protocol::StartupMapping;
use std::sync::atomic::Ordering::Relaxed;

static MAPPED: SpinLock<Mapped> = SpinLock::new(Mapped { ranges: Ranges::new(), attached: Vec::new() });

/// The program's mappings of its startup that the kernel placed, each with its process,
/// thread and that thread's count (`StartupLog::mapped_at_startup`); a fork child's list
/// goes on from its parent's.
static AT_STARTUP: SpinLock<Vec<StartupMapping>> = SpinLock::new(Vec::new());

struct Mapped {
    ranges: Ranges,
    /// SysV segments attached after startup, [start, end): `shmdt` names only the start.
    attached: Vec<(u64, u64)>,
}

/// Whether a mapping the calling thread makes now is to be noted: startup is complete
/// and the call is the program's (not the runtime's, not a re-entered hook).
#[inline(always)]
pub fn tracking() -> bool {
    STARTUP_DONE.load(Relaxed) && crate::is_active() && !threads::is_internal()
}

/// Whether a mapping the program asks for now is one of its startup's that the kernel
/// is to place (no address asked for): an update's new version places it where the old
/// version's startup had its counterpart ([`old_place`]).
#[inline(always)]
pub fn placed_at_startup(addr: *mut libc::c_void, flags: i32) -> bool {
    addr.is_null()
        && flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) == 0
        && !STARTUP_DONE.load(Relaxed)
        && crate::is_active()
        && !threads::is_internal()
}

/// The MAP_SHARED, MAP_PRIVATE and MAP_ANONYMOUS bits of mmap's `flags`.
fn kind(flags: i32) -> i32 {
    flags & (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
}

/// In an update's new version: where the old version's startup put the calling thread's
/// next mapping, if that counterpart (the same process's and thread's mapping of the same
/// count) was of this kind and length, and whether that range was held for it (`held_ranges`: then it is the caller's to map over). Startup
/// memory outside the heap (APR's allocator blocks) holds startup objects that the
/// transferred state points to: at the same address, the new startup's objects are where
/// the pointers expect them. None: the old startup made no such mapping there.
pub fn old_place((pid, tid, seq): StartupKey, len: usize, flags: i32) -> Option<(u64, bool)> {
    let _internal = threads::InternalGuard::enter();
    let old = crate::replay::startup_mapping(pid, tid, seq)?;
    if old.len != page_round(len) || old.kind != kind(flags) {
        return None;
    }
    Some((old.start, crate::held_ranges::take(old.start, old.start + old.len)))
}

/// The calling thread's next startup mapping: its process, itself, and how many it made
/// before. Per thread: nginx's first process maps its shared memory and then forks the
/// master it leaves behind (whose log holds that mapping); httpd's threads take their
/// pools' blocks concurrently.
pub fn next_key() -> StartupKey {
    let _internal = threads::InternalGuard::enter();
    let (pid, tid) = (crate::pid(), threads::gettid());
    let seq = AT_STARTUP.lock().iter().filter(|m| m.pid == pid && m.tid == tid).count();
    (pid, tid, u32::try_from(seq).unwrap_or(u32::MAX))
}

/// A startup mapping's process, thread and that thread's count ([`next_key`]).
pub type StartupKey = (i32, i32, u32);

/// The program's startup mapped [addr, addr + len) where the kernel chose, as the
/// calling thread's mapping `key` ([`next_key`], taken before the call).
pub fn note_startup_mapping((pid, tid, seq): StartupKey, addr: usize, len: usize, flags: i32) {
    let _internal = threads::InternalGuard::enter();
    let m = StartupMapping { pid, tid, seq, start: addr as u64, len: page_round(len), kind: kind(flags) };
    AT_STARTUP.lock().push(m);
}

/// The mappings of this process's startup that the kernel placed, for its startup log.
pub fn at_startup() -> Vec<StartupMapping> {
    let _internal = threads::InternalGuard::enter();
    AT_STARTUP.lock().clone()
}

/// The program mapped [addr, addr + len).
pub fn note_mapped(addr: usize, len: usize) {
    let _internal = threads::InternalGuard::enter();
    MAPPED.lock().ranges.add(addr as u64, addr as u64 + page_round(len));
}

/// The program attached a SysV segment of `len` bytes at `addr`.
pub fn note_attached(addr: usize, len: usize) {
    let _internal = threads::InternalGuard::enter();
    let range = (addr as u64, addr as u64 + page_round(len));
    let mut m = MAPPED.lock();
    m.ranges.add(range.0, range.1);
    m.attached.push(range);
}

/// The program unmapped [addr, addr + len).
pub fn note_unmapped(addr: usize, len: usize) {
    let _internal = threads::InternalGuard::enter();
    MAPPED.lock().ranges.remove(addr as u64, addr as u64 + page_round(len));
}

/// The program detached the SysV segment attached at `addr`.
pub fn note_detached(addr: usize) {
    let _internal = threads::InternalGuard::enter();
    let mut m = MAPPED.lock();
    if let Some(i) = m.attached.iter().position(|&(s, _)| s == addr as u64) {
        let (s, e) = m.attached.swap_remove(i);
        m.ranges.remove(s, e);
    }
}

/// The program moved [old, old + old_len) to [new, new + new_len) (`keep_old`: and left
/// the old range mapped, MREMAP_DONTUNMAP). Only mappings the program made after startup
/// are followed: resizing one startup made leaves it startup's.
pub fn note_remapped(old: usize, old_len: usize, new: usize, new_len: usize, keep_old: bool) {
    let _internal = threads::InternalGuard::enter();
    let mut guard = MAPPED.lock();
    let m = &mut guard.ranges;
    let (old_start, old_end) = (old as u64, old as u64 + page_round(old_len));
    if !m.overlaps(old_start, old_end) {
        return;
    }
    if !keep_old {
        m.remove(old_start, old_end);
    }
    m.add(new as u64, new as u64 + page_round(new_len));
}

/// What the program mapped after startup and still has, for the startup log's reply.
pub fn snapshot() -> Vec<(u64, u64)> {
    let _internal = threads::InternalGuard::enter();
    MAPPED.lock().ranges.list.clone()
}

/// In a fork child: the mappings are the parent's, and so is the list; only the lock
/// may be held by a thread that no longer exists.
pub fn reset_after_fork() {
    MAPPED.force_unlock();
    AT_STARTUP.force_unlock();
}

fn page_round(len: usize) -> u64 {
    (len as u64).div_ceil(4096) * 4096
}

/// Disjoint, sorted, non-adjacent [start, end) ranges.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ranges {
    pub(crate) list: Vec<(u64, u64)>,
}

impl Ranges {
    pub(crate) const fn new() -> Self {
        Self { list: Vec::new() }
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.list.iter().any(|&(s, e)| s < end && start < e)
    }

    /// Whether all of [start, end) is in one range.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        self.list.iter().any(|&(s, e)| s <= start && end <= e)
    }

    pub(crate) fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // Merge with every range it overlaps or touches.
        self.list.retain(|&(s, e)| {
            let joins = s <= hi && lo <= e;
            if joins {
                lo = lo.min(s);
                hi = hi.max(e);
            }
            !joins
        });
        let at = self.list.partition_point(|&(s, _)| s < lo);
        self.list.insert(at, (lo, hi));
    }

    pub(crate) fn remove(&mut self, start: u64, end: u64) {
        if start >= end || !self.overlaps(start, end) {
            return;
        }
        let mut out = Vec::with_capacity(self.list.len() + 1);
        for &(s, e) in &self.list {
            if e <= start || end <= s {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if end < e {
                out.push((end, e));
            }
        }
        self.list = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[(u64, u64)]) -> Ranges {
        let mut r = Ranges::new();
        for &(s, e) in list {
            r.add(s, e);
        }
        r
    }

    #[test]
    fn added_ranges_merge_when_they_touch_or_overlap() {
        let r = ranges(&[(0x5000, 0x6000), (0x1000, 0x2000), (0x2000, 0x3000), (0x8000, 0x9000), (0x5800, 0x8000)]);
        assert_eq!(r.list, [(0x1000, 0x3000), (0x5000, 0x9000)]);
        let mut e = Ranges::new();
        e.add(0x1000, 0x1000);
        assert!(e.list.is_empty(), "an empty range is nothing");
    }

    #[test]
    fn removing_splits_trims_and_drops() {
        let mut r = ranges(&[(0x1000, 0x5000), (0x8000, 0x9000)]);
        r.remove(0x2000, 0x3000);
        assert_eq!(r.list, [(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]);
        r.remove(0x4000, 0x8800);
        assert_eq!(r.list, [(0x1000, 0x2000), (0x3000, 0x4000), (0x8800, 0x9000)]);
        r.remove(0, u64::MAX);
        assert!(r.list.is_empty());
    }

    #[test]
    fn lengths_round_up_to_whole_pages() {
        assert_eq!(page_round(1), 4096);
        assert_eq!(page_round(4096), 4096);
        assert_eq!(page_round(8193), 3 * 4096);
    }
}
