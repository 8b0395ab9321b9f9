//! Address ranges an update's new process keeps free for the old version's memory.
//!
//! What the old process mapped itself after startup (APR's allocator blocks, which Debian's
//! libapr takes from `mmap`) reappears at the same address in the new process
//! (`transfer::map_private` and its siblings), because the globals and the heap hold
//! pointers into it. The new version's startup runs first, and a new build's layout need
//! not be the old one's: httpd's thread stacks, 116 KiB lower in the new process, covered
//! the old worker's transaction pools, and every update rolled back ("the new version uses
//! that address itself"). So from its constructor on, before the program runs, the runtime
//! of an update's new process holds the old processes' ranges: an inaccessible mapping
//! that costs no memory and that the kernel places nothing over. The transfer maps over a
//! hold; what is still held when the update releases the process is unmapped.
//!
//! Every process of the old tree's ranges are held in the first new process and inherited
//! by the ones it forks: a process's counterpart is known only once it exists.

use crate::mappings::Ranges;
use crate::sync::SpinLock;

static HELD: SpinLock<Ranges> = SpinLock::new(Ranges::new());

/// Hold `ranges` ([start, end), page-aligned, overlapping or not). A range of which any
/// part is mapped already (the program's libraries: a new build may be larger) is not
/// held: the transfer then names the address it cannot map again.
pub fn hold(ranges: impl IntoIterator<Item = (u64, u64)>) {
    let _internal = crate::threads::InternalGuard::enter();
    let mut wanted = Ranges::new();
    for (s, e) in ranges {
        wanted.add(s, e);
    }
    let mut held = HELD.lock();
    for (start, end) in wanted.list {
        // SAFETY: MAP_FIXED_NOREPLACE fails on any overlap, so no mapping of the
        // program's or ours changes; an anonymous, inaccessible mapping with no memory
        // behind it. A raw call: the program's `mmap` is interposed.
        let p = unsafe {
            crate::sys!(
                libc::SYS_mmap,
                start,
                end - start,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                -1,
                0
            )
        };
        if p as u64 == start {
            held.add(start, end);
        } else if p != -1 {
            // A kernel without MAP_FIXED_NOREPLACE took the address as a hint.
            // SAFETY: the mapping just made, nobody else's.
            unsafe { crate::sys!(libc::SYS_munmap, p, end - start) };
        }
    }
}

/// In a fork child: its holds are its parent's (the same mappings, inherited), and the
/// lock may be held by a thread that no longer exists.
pub fn reset_after_fork() {
    HELD.force_unlock();
}

/// Whether all of [start, end) is held: then it is no longer, and the caller maps over it
/// (MAP_FIXED, which replaces the hold in one step).
pub fn take(start: u64, end: u64) -> bool {
    let _internal = crate::threads::InternalGuard::enter();
    let mut held = HELD.lock();
    let covered = held.covers(start, end);
    if covered {
        held.remove(start, end);
    }
    covered
}

/// Unmap what is still held: the update is done with this process.
pub fn release() {
    let _internal = crate::threads::InternalGuard::enter();
    let rest = std::mem::take(&mut HELD.lock().list);
    for (start, end) in rest {
        // SAFETY: a hold of ours (no part of it was taken: taken parts left the list), an
        // inaccessible mapping nothing of the program's lives in.
        unsafe { crate::sys!(libc::SYS_munmap, start, end - start) };
    }
}

/// The ranges held now.
#[cfg(test)]
fn held() -> Vec<(u64, u64)> {
    let _internal = crate::threads::InternalGuard::enter();
    HELD.lock().list.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free range of `pages` pages: one the kernel hands out, given back.
    fn free_range(pages: u64) -> (u64, u64) {
        let len = pages * 4096;
        // SAFETY: a fresh anonymous mapping, unmapped at once.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(p, len as usize) };
        (p as u64, p as u64 + len)
    }

    fn mapped(start: u64, end: u64) -> Vec<String> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| {
                let (s, e) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
                let (s, e) = (u64::from_str_radix(s, 16).unwrap(), u64::from_str_radix(e, 16).unwrap());
                s < end && start < e
            })
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_hold_keeps_its_range_free_until_taken_or_released() {
        let (start, end) = free_range(16);
        let page = 4096;
        // Two overlapping ranges are one hold.
        hold([(start, start + 8 * page), (start + 4 * page, end)]);
        assert!(held().contains(&(start, end)), "{:?}", held());
        assert_eq!(mapped(start, end).len(), 1, "one inaccessible mapping: {:?}", mapped(start, end));
        // SAFETY: a hint only: the kernel must place it elsewhere (the range is held).
        let elsewhere = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                page as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(elsewhere as u64, start, "the kernel placed a mapping over a hold");
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(elsewhere, page as usize) };
        // A part of it is taken (the transfer maps there), the rest stays held.
        assert!(take(start + 2 * page, start + 4 * page));
        assert!(!take(start + 3 * page, start + 5 * page), "a part no longer held is not taken twice");
        let mut rest = held().into_iter().filter(|&(s, _)| start <= s && s < end).collect::<Vec<_>>();
        rest.sort_unstable();
        assert_eq!(rest, vec![(start, start + 2 * page), (start + 4 * page, end)]);
        // The taken part is not released (the transfer's mapping lives there).
        release();
        assert!(held().is_empty());
        assert_eq!(mapped(start, end).len(), 1, "only the taken part stays: {:?}", mapped(start, end));
        // SAFETY: the hold's taken part, still mapped, nothing else's.
        unsafe { libc::munmap((start + 2 * page) as *mut libc::c_void, 2 * page as usize) };
        assert!(mapped(start, end).is_empty());
    }
}
