//! The malloc family, served by mcr's allocator (`crate::heap`; DESIGN.md "Addresses",
//! "Allocation metadata"): every block's requested size and startup bit go into the
//! allocator's out-of-band metadata, and blocks allocated during startup are noted with
//! their call stack (`startup_heap`).
//!
//! Pointers outside mcr's heap window (blocks ld.so's minimal allocator handed out before
//! these symbols took over) are never freed (the allocator ignores them), and realloc and
//! malloc_usable_size read them as glibc's, as before.

use crate::{heap, placed_blocks, stack, startup_heap};
use core::ptr::NonNull;
use libc::{c_int, c_void, size_t};

extern "C" {
    fn __libc_realloc(p: *mut c_void, n: size_t) -> *mut c_void;
}

fn enomem() -> *mut c_void {
    crate::errno::set(libc::ENOMEM);
    core::ptr::null_mut()
}

/// A fresh block (or one realloc kept in place) of `n` requested bytes, aligned to
/// `align`: note what was asked for and, during startup, the allocation function's frame
/// `fp`. In an update's new version a startup block may go to its old counterpart's
/// address instead (`placed_blocks`).
#[inline(always)]
fn described(p: Option<NonNull<u8>>, n: size_t, align: usize, fp: usize) -> *mut c_void {
    let Some(p) = p else { return enomem() };
    let startup = heap::in_startup();
    heap::HEAP.set_info(p, n, startup);
    if startup {
        if let Some(at) = startup_heap::record(p.as_ptr() as u64, n as u64, align as u64, fp) {
            return moved_to(p, n, at);
        }
    }
    p.as_ptr().cast()
}

/// The block `p` of `n` bytes, moved to the placed block at `at`.
#[cold]
#[inline(never)]
fn moved_to(p: NonNull<u8>, n: size_t, at: u64) -> *mut c_void {
    // SAFETY: `p` is a live block of at least `n` bytes; `at` is a placed block of `n`
    // bytes on pages mapped read-write for it, no part of any heap block.
    unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), at as usize as *mut u8, n) };
    // SAFETY: `p` is ours, live, and no longer used.
    heap::with_cache(|c| unsafe { heap::HEAP.free(c, p.as_ptr()) });
    at as usize as *mut c_void
}

/// # Safety
/// malloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn malloc(n: size_t) -> *mut c_void {
    let p = heap::with_cache(|c| heap::HEAP.malloc(c, n));
    described(p, n, 1, stack::frame_address())
}

/// # Safety
/// calloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, m: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(m) else { return enomem() };
    let p = heap::with_cache(|c| heap::HEAP.calloc(c, n, m));
    described(p, total, 1, stack::frame_address())
}

/// # Safety
/// free(3)'s contract: `p` is null or a live block from this allocator family, freed once.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if placed_blocks::forget(p as u64) {
        return;
    }
    // SAFETY: the caller's contract; the engine ignores null and foreign pointers.
    heap::with_cache(|c| unsafe { heap::HEAP.free(c, p.cast()) })
}

/// Whether `p` is in mcr's heap window (else a block of ld.so's or glibc's).
fn is_ours(p: *mut c_void) -> bool {
    mcr_alloc::geometry::slot_of(p as usize).is_some()
}

/// # Safety
/// realloc(3)'s contract: `p` is null or a live block from this allocator family.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, n: size_t) -> *mut c_void {
    if let Some(had) = placed_blocks::size_of(p as u64) {
        // SAFETY: a placed block of `had` bytes (the caller's contract: live).
        return unsafe { realloc_placed(p, had as usize, n, stack::frame_address()) };
    }
    if !p.is_null() && !is_ours(p) {
        // SAFETY: a live block of glibc's own (the caller's contract).
        return unsafe { __libc_realloc(p, n) };
    }
    if n == 0 && !p.is_null() {
        // glibc frees and returns NULL.
        // SAFETY: a live block (the caller's contract), not used after.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: the caller's contract: a live block of ours, or null.
    let q = heap::with_cache(|c| unsafe { heap::HEAP.realloc(c, p.cast(), n) });
    // A block reallocated during startup is a startup allocation of this call stack (the
    // one it replaces is dead); one reallocated later is a post-startup block.
    described(q, n, 1, stack::frame_address())
}

/// realloc (whose frame is `fp`) of a placed block (`placed_blocks`) of `had` bytes: a
/// block of the allocator's (or placed again) with its contents.
///
/// # Safety
/// `p` is a live placed block of `had` bytes.
#[cold]
#[inline(never)]
unsafe fn realloc_placed(p: *mut c_void, had: size_t, n: size_t, fp: usize) -> *mut c_void {
    placed_blocks::forget(p as u64);
    if n == 0 {
        return core::ptr::null_mut();
    }
    let q = heap::with_cache(|c| heap::HEAP.malloc(c, n));
    if let Some(q) = q {
        // SAFETY: `p` has `had` bytes (the caller's contract; its pages stay mapped when it
        // is forgotten), `q` is a fresh block of at least `n`.
        unsafe { core::ptr::copy_nonoverlapping(p.cast::<u8>(), q.as_ptr(), had.min(n)) };
    }
    described(q, n, 1, fp)
}

/// # Safety
/// reallocarray(3)'s contract: as realloc's.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, m: size_t) -> *mut c_void {
    match n.checked_mul(m) {
        // SAFETY: realloc's contract, which is the caller's.
        Some(total) => unsafe { realloc(p, total) },
        None => enomem(),
    }
}

/// `n` bytes aligned to `align` (rounded up to a power of two, as glibc does).
#[inline(always)]
fn aligned(align: size_t, n: size_t, fp: usize) -> *mut c_void {
    let Some(align) = align.max(16).checked_next_power_of_two() else { return enomem() };
    let p = heap::with_cache(|c| heap::HEAP.memalign(c, align, n));
    described(p, n, align, fp)
}

/// # Safety
/// memalign(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n, stack::frame_address())
}

/// # Safety
/// aligned_alloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n, stack::frame_address())
}

/// # Safety
/// posix_memalign(3)'s contract: `out` points to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: size_t, n: size_t) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = {
        // posix_memalign reports failure by its return value and leaves errno alone.
        let _errno = crate::errno::ErrnoGuard::save();
        aligned(align, n, stack::frame_address())
    };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable (the caller's contract).
    unsafe { *out = p };
    0
}

/// # Safety
/// valloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn valloc(n: size_t) -> *mut c_void {
    aligned(heap::page_size(), n, stack::frame_address())
}

/// # Safety
/// pvalloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn pvalloc(n: size_t) -> *mut c_void {
    let page = heap::page_size();
    match n.checked_add(page - 1) {
        Some(t) => aligned(page, t & !(page - 1), stack::frame_address()),
        None => enomem(),
    }
}

/// The bytes usable from `p` to the end of its block (its size class: a program may use
/// all of them).
///
/// # Safety
/// malloc_usable_size(3)'s contract: `p` is null or a live block of this allocator family.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if p.is_null() {
        return 0;
    }
    if let Some(had) = placed_blocks::size_of(p as u64) {
        return had as size_t;
    }
    if !is_ours(p) {
        // SAFETY: a live block of glibc's (the caller's contract).
        return unsafe { heap::foreign_usable_size(p) };
    }
    heap::HEAP.usable_size(p.cast())
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Default)]
pub struct MallInfo2 {
    arena: size_t,
    ordblks: size_t,
    smblks: size_t,
    hblks: size_t,
    hblkhd: size_t,
    usmblks: size_t,
    fsmblks: size_t,
    uordblks: size_t,
    fordblks: size_t,
    keepcost: size_t,
}

/// glibc's `struct mallinfo` (int fields).
#[repr(C)]
#[derive(Default)]
pub struct MallInfo {
    fields: [c_int; 10],
}

// glibc's own versions would describe glibc's arenas, which serve nothing under mcr: these
// say what is true of them (nothing to report, nothing trimmed, no option applied).

/// Nothing is given back by a trim: mcr's allocator returns freed runs on its own. 0 says
/// no memory was released.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    0
}

/// No glibc tunable applies to mcr's allocator: 0, mallopt's "not done".
#[no_mangle]
pub extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    0
}

/// All zeroes: mcr's allocator keeps no glibc-style statistics.
#[no_mangle]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    MallInfo2::default()
}

/// All zeroes, as [`mallinfo2`].
#[no_mangle]
pub extern "C" fn mallinfo() -> MallInfo {
    MallInfo::default()
}

/// Prints nothing: no glibc arena statistics to print.
#[no_mangle]
pub extern "C" fn malloc_stats() {}
