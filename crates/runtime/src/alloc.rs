//! The runtime's own allocator. Rust code in the runtime never enters the program's
//! `malloc` (which a later mechanism interposes, and which may be mid-operation when a
//! hook runs): it takes memory straight from `mmap`.
//!
//! Size classes are powers of two from 16 bytes to 64 KiB with intrusive free lists;
//! larger blocks are mapped and unmapped individually. One spin lock guards the lists;
//! `fork` takes it in the prepare handler so the child never inherits it held.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

const MIN_SHIFT: usize = 4;
const MAX_SHIFT: usize = 16;
const CLASSES: usize = MAX_SHIFT - MIN_SHIFT + 1;
const CHUNK: usize = 1 << 20;

pub struct RuntimeAllocator;

struct Lists {
    free: [*mut u8; CLASSES],
    bump: *mut u8,
    bump_end: *mut u8,
}

static LOCK: AtomicBool = AtomicBool::new(false);
static mut LISTS: Lists = Lists { free: [null_mut(); CLASSES], bump: null_mut(), bump_end: null_mut() };

pub fn lock() {
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
}

pub fn unlock() {
    LOCK.store(false, Ordering::Release);
}

/// In a fork child only the forking thread exists: the lock is ours (taken in prepare).
pub fn reset_after_fork() {
    LOCK.store(false, Ordering::Release);
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = usize::BITS as usize - (size - 1).leading_zeros() as usize;
    (shift <= MAX_SHIFT).then(|| shift - MIN_SHIFT)
}

unsafe fn map(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping, no aliasing with anything else.
    let p =
        libc::mmap(null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p.cast()
    }
}

fn round_pages(n: usize) -> usize {
    (n + 4095) & !4095
}

unsafe impl GlobalAlloc for RuntimeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            if layout.align() > 4096 {
                return null_mut();
            }
            return map(round_pages(layout.size()));
        };
        let size = 1usize << (class + MIN_SHIFT);
        lock();
        // SAFETY: LISTS is only touched with LOCK held.
        let lists = &mut *core::ptr::addr_of_mut!(LISTS);
        let head = lists.free[class];
        let p = if !head.is_null() {
            lists.free[class] = *(head as *mut *mut u8);
            head
        } else {
            // Blocks are carved at multiples of their size from page-aligned chunks, so
            // every block is aligned to its own size.
            let mut start = ((lists.bump as usize + size - 1) & !(size - 1)) as *mut u8;
            if lists.bump.is_null() || start as usize + size > lists.bump_end as usize {
                let chunk = map(CHUNK);
                if chunk.is_null() {
                    unlock();
                    return null_mut();
                }
                lists.bump = chunk;
                lists.bump_end = chunk.add(CHUNK);
                start = chunk;
            }
            lists.bump = start.add(size);
            start
        };
        unlock();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(&layout) else {
            libc::munmap(ptr.cast(), round_pages(layout.size()));
            return;
        };
        lock();
        // SAFETY: LISTS is only touched with LOCK held; ptr came from this class.
        let lists = &mut *core::ptr::addr_of_mut!(LISTS);
        *(ptr as *mut *mut u8) = lists.free[class];
        lists.free[class] = ptr;
        unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_size_and_alignment() {
        let c = |s, a| class_of(&Layout::from_size_align(s, a).unwrap());
        assert_eq!(c(1, 1), Some(0));
        assert_eq!(c(16, 8), Some(0));
        assert_eq!(c(17, 8), Some(1));
        assert_eq!(c(8, 64), Some(2));
        assert_eq!(c(65536, 8), Some(CLASSES - 1));
        assert_eq!(c(65537, 8), None);
    }

    #[test]
    fn blocks_are_aligned_and_reused() {
        let a = RuntimeAllocator;
        let layout = Layout::from_size_align(48, 16).unwrap();
        // SAFETY: alloc/dealloc pairs with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null() && (p as usize).is_multiple_of(64));
            a.dealloc(p, layout);
            let q = a.alloc(layout);
            assert_eq!(p, q, "a freed block is reused first");
            a.dealloc(q, layout);
            let big = Layout::from_size_align(1 << 20, 8).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null());
            b.write_bytes(0xAB, 1 << 20);
            a.dealloc(b, big);
        }
    }
}
