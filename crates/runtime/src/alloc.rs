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

/// A fresh anonymous mapping of `len` bytes, or null when the kernel refuses.
fn map(len: usize) -> *mut u8 {
    // SAFETY: mmap with no address hint, no file and MAP_PRIVATE | MAP_ANONYMOUS creates a
    // new mapping that overlaps nothing; it is given no memory of ours. A raw call: the
    // exported `mmap` is the program's (interpose/memory.rs), and the runtime's memory is
    // not the program's state.
    let p = unsafe {
        crate::sys!(
            libc::SYS_mmap,
            null_mut::<u8>(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0
        )
    };
    if p == -1 {
        null_mut()
    } else {
        crate::own_memory::add(p as u64, len as u64);
        p as *mut u8
    }
}

fn round_pages(n: usize) -> usize {
    (n + 4095) & !4095
}

/// The free lists and bump region, for the holder of LOCK.
///
/// # Safety
/// The caller holds LOCK (`lock()`) for as long as it uses the reference, and takes no
/// other reference to LISTS meanwhile.
unsafe fn lists() -> &'static mut Lists {
    // SAFETY: LOCK serializes every access to LISTS (the caller's contract), so this is
    // the only reference while it is used.
    unsafe { &mut *core::ptr::addr_of_mut!(LISTS) }
}

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()` that overlaps no other live block: blocks of a class are as large as
// and aligned to their class size (>= size and align), carved once from a chunk or
// handed out once from the class's free list; larger blocks are mappings of their own.
// `dealloc` takes a block back only onto the list of the class `alloc` gave it from (the
// same layout, GlobalAlloc's contract).
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
        // SAFETY: LOCK is held until the `unlock` below, and `lists` is not used after.
        let lists = unsafe { lists() };
        let head = lists.free[class];
        let p = if !head.is_null() {
            // SAFETY: a block on the free list is one `dealloc` took back: at least 16
            // bytes, aligned to its size, unused, and its first word holds the next block.
            lists.free[class] = unsafe { *(head as *mut *mut u8) };
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
                lists.bump_end = chunk.wrapping_add(CHUNK);
                start = chunk;
            }
            // Within the chunk: `start + size <= bump_end` (checked above, or a fresh chunk).
            lists.bump = start.wrapping_add(size);
            start
        };
        unlock();
        p
    }

    /// A large block is a fresh anonymous mapping, zero already: writing zeros over it
    /// would fault in every page of it. Symbolizing a call stack reads an ELF file's
    /// symbol tables into a zeroed buffer as long as the whole file (megabytes of debug
    /// information it never touches): that cost every new process ~3 ms of its startup.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(&layout).is_none() {
            // SAFETY: the same contract as `alloc`, which maps this block fresh.
            return unsafe { self.alloc(layout) };
        }
        // SAFETY: the same contract as `alloc`; the block is `layout.size()` bytes long.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` is a live block of at least `layout.size()` bytes (above).
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(&layout) else {
            crate::own_memory::remove(ptr as u64);
            // SAFETY: a block of this layout is a whole mapping `alloc` made with this very
            // length (GlobalAlloc: the same layout), and the caller no longer uses it. Raw,
            // as in `map`.
            unsafe { crate::sys!(libc::SYS_munmap, ptr, round_pages(layout.size())) };
            return;
        };
        lock();
        // SAFETY: LOCK is held until the `unlock` below, and `lists` is not used after.
        let lists = unsafe { lists() };
        // SAFETY: `ptr` is a block of `class` that `alloc` handed out and the caller gives
        // back unused (GlobalAlloc's contract): at least 16 bytes and aligned to its size,
        // so its first word can hold the list link.
        unsafe { *(ptr as *mut *mut u8) = lists.free[class] };
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
            // Not asserted: that the freed block comes back first. The test harness's
            // other threads allocate from the same allocator meanwhile and may take it
            // (seen when two suites ran side by side).
            let q = a.alloc(layout);
            assert!(!q.is_null() && (q as usize).is_multiple_of(64));
            a.dealloc(q, layout);
            let big = Layout::from_size_align(1 << 20, 8).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null());
            b.write_bytes(0xAB, 1 << 20);
            a.dealloc(b, big);
            // Zeroed blocks are zero, large (fresh mappings) and small (reused ones).
            for layout in [big, layout] {
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, layout.size()).iter().all(|&b| b == 0));
                z.write_bytes(0xCD, layout.size());
                a.dealloc(z, layout);
            }
        }
    }
}
