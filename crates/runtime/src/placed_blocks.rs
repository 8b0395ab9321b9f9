//! Startup blocks an update's new version places at the addresses of their old
//! counterparts (DESIGN.md "Mutable tracing", `StartupLog::allocated_at_startup`).
//!
//! A library's state made at startup (libevent's event base) is reached in the old
//! version through memory mcr cannot type, so the update leaves it where it is; the new
//! version's startup makes its own, which the new code holds (on the stack of the thread
//! parked in the library's loop). Two of them is a server that serves no one. When the
//! new startup allocates the same block in the same place of its sequence
//! (`startup_heap`), it gets the old block's address instead: the page is mapped here
//! until the update maps the old heap over it (`heap::map_old_heap`), and from then on
//! the block is the old one, with the old contents, which the transfer leaves in place.
//!
//! Until then such a block is not the allocator's: `free`, `realloc` and
//! `malloc_usable_size` ask here first (one load when nothing was placed, which is every
//! process but an update's new one during its startup).

use crate::mappings::Ranges;
use crate::sync::SpinLock;
use std::sync::atomic::{AtomicBool, Ordering::*};

struct Placed {
    /// Live placed blocks: (address, bytes asked for).
    blocks: Vec<(u64, u64)>,
    /// The pages mapped for them (kept when a block is freed: another may share them).
    pages: Ranges,
    /// Blocks the old heap's pages now hold (mapped over their pages), for the transfer.
    held: Vec<u64>,
}

static PLACED: SpinLock<Placed> = SpinLock::new(Placed { blocks: Vec::new(), pages: Ranges::new(), held: Vec::new() });

/// Some block is placed and not yet covered by the old heap.
static ANY: AtomicBool = AtomicBool::new(false);

const PAGE: u64 = 4096;

/// Place a block of `size` bytes at `addr` (the old counterpart's): map its pages unless
/// a placed block's are there already. None when it would overlap a live placed block or
/// the address is taken by anything else.
pub fn place(addr: u64, size: u64) -> Option<u64> {
    let end = addr.checked_add(size.max(1))?;
    let mut p = PLACED.lock();
    if p.blocks.iter().any(|&(a, s)| a < end && addr < a + s.max(1)) {
        return None;
    }
    let (lo, hi) = (addr & !(PAGE - 1), end.div_ceil(PAGE) * PAGE);
    let mut page = lo;
    while page < hi {
        if !p.pages.covers(page, page + PAGE) {
            // SAFETY: an anonymous private mapping at a fixed address that replaces
            // nothing (FIXED_NOREPLACE): the old heap's slot, which this process's heap
            // keeps free.
            let got = unsafe {
                crate::sys!(
                    libc::SYS_mmap,
                    page,
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0
                )
            };
            if got as u64 != page {
                if got != -1 {
                    // SAFETY: a mapping just made elsewhere (an old kernel's hint), ours.
                    unsafe { crate::sys!(libc::SYS_munmap, got, PAGE) };
                }
                return None;
            }
            p.pages.add(page, page + PAGE);
        }
        page += PAGE;
    }
    p.blocks.push((addr, size));
    ANY.store(true, Release);
    Some(addr)
}

/// The size asked for of the placed block at `addr`, if it is one.
#[inline(always)]
pub fn size_of(addr: u64) -> Option<u64> {
    if !ANY.load(Acquire) {
        return None;
    }
    let _internal = crate::threads::InternalGuard::enter();
    PLACED.lock().blocks.iter().find(|b| b.0 == addr).map(|b| b.1)
}

/// The program freed the placed block at `addr` (true), or `addr` is no placed block. Its
/// page stays mapped, and the old block it stood for is no longer this version's.
#[inline(always)]
pub fn forget(addr: u64) -> bool {
    if !ANY.load(Acquire) {
        return false;
    }
    let _internal = crate::threads::InternalGuard::enter();
    let mut p = PLACED.lock();
    match p.blocks.iter().position(|b| b.0 == addr) {
        Some(i) => {
            p.blocks.swap_remove(i);
            true
        }
        None => false,
    }
}

/// The update is about to map the old heap's region at [lo, hi): the pages placed there
/// go (the region's own pages, with the old blocks, take their place), and the blocks on
/// them are the old ones from now on.
pub fn give_way(lo: u64, hi: u64) {
    let _internal = crate::threads::InternalGuard::enter();
    let mut p = PLACED.lock();
    let inside: Vec<(u64, u64)> = p.pages.list.iter().filter(|&&(s, e)| s < hi && lo < e).copied().collect();
    for (s, e) in inside {
        let (s, e) = (s.max(lo), e.min(hi));
        // SAFETY: pages this module mapped for placed blocks, which the old heap's region
        // replaces right after (the program's threads are parked).
        unsafe { crate::sys!(libc::SYS_munmap, s, e - s) };
        p.pages.remove(s, e);
    }
    let covered: Vec<u64> = p.blocks.iter().map(|b| b.0).filter(|&a| lo <= a && a < hi).collect();
    p.blocks.retain(|&(a, _)| !(lo <= a && a < hi));
    p.held.extend(covered);
    ANY.store(!p.blocks.is_empty(), Release);
}

/// The placed blocks this process holds, whether the old heap covers them yet or not.
pub fn held() -> Vec<u64> {
    let _internal = crate::threads::InternalGuard::enter();
    let p = PLACED.lock();
    let mut out: Vec<u64> = p.held.iter().copied().chain(p.blocks.iter().map(|b| b.0)).collect();
    out.sort_unstable();
    out
}

/// The update is over (resumed): what it needed to know is no longer asked.
pub fn forget_held() {
    let _internal = crate::threads::InternalGuard::enter();
    PLACED.lock().held.clear();
}

/// In a fork child: the pages and the list are the parent's, copied; only the lock may
/// be held by a thread that no longer exists.
pub fn reset_after_fork() {
    PLACED.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address range nothing maps (mapped, then given back).
    fn free_range(pages: u64) -> u64 {
        let len = (pages * PAGE) as usize;
        // SAFETY: a fresh anonymous mapping, unmapped right after.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(p, len) };
        p as u64
    }

    #[test]
    fn placed_blocks_share_pages_never_overlap_and_give_way_to_the_old_heap() {
        let base = free_range(8);
        assert_eq!(place(base + 16, 32), Some(base + 16));
        assert_eq!(place(base + 64, 4200), Some(base + 64), "the same page, and the next");
        assert_eq!(place(base + 40, 16), None, "overlaps the first");
        // SAFETY: the placed blocks' pages are mapped read-write.
        unsafe { ((base + 64 + 4100) as *mut u8).write(7) };
        assert_eq!(size_of(base + 16), Some(32));
        assert!(forget(base + 16));
        assert!(!forget(base + 16), "once");
        assert_eq!(place(base + 16, 24), Some(base + 16), "its page is still there");
        assert_eq!(held(), vec![base + 16, base + 64]);
        give_way(base, base + 8 * PAGE);
        assert_eq!(size_of(base + 64), None, "the old heap's block now");
        assert_eq!(held(), vec![base + 16, base + 64]);
        // The pages are gone: the kernel may map there again.
        // SAFETY: FIXED_NOREPLACE over the range just given back; unmapped below.
        let again = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                (2 * PAGE) as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(again as u64, base);
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(again, (2 * PAGE) as usize) };
        forget_held();
        assert!(held().is_empty());
    }
}
