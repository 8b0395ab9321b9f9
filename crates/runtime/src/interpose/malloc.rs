//! The malloc family, with allocation metadata (DESIGN.md "Allocation metadata"; format
//! in the `mcr-heap` crate): every block gets a 16-byte header before it, written here
//! and cleared on free. The allocator itself stays glibc's, reached through its
//! `__libc_*` entry points, which never recurse into these symbols and need no dlsym (so
//! this works from the first allocation ld.so makes, before the runtime initializes).
//!
//! Blocks without a header (memory ld.so's minimal allocator handed out, or anything
//! glibc allocated before these symbols took over) are passed to glibc unchanged.

use crate::{heap, stack, startup_heap};
use libc::{c_int, c_void, size_t};
use mcr_heap::HEADER;

extern "C" {
    fn __libc_malloc(n: size_t) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_calloc(n: size_t, m: size_t) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, n: size_t) -> *mut c_void;
    fn __libc_memalign(align: size_t, n: size_t) -> *mut c_void;
}

fn enomem() -> *mut c_void {
    crate::errno::set(libc::ENOMEM);
    core::ptr::null_mut()
}

/// Give the fresh block at `h` its header (a block of `n` bytes after it, aligned to
/// `1 << align_log2`, 0 for plain ones), and note it as a startup allocation of the
/// allocation function whose frame is `fp` while startup runs; returns the block.
///
/// # Safety
/// `h` points to at least `HEADER + n` writable bytes, 16-byte aligned, that nothing else
/// uses.
#[inline(always)]
unsafe fn stamped(h: *mut c_void, n: size_t, align_log2: u32, fp: usize) -> *mut c_void {
    let startup = heap::in_startup();
    // SAFETY: the caller's contract.
    let p = unsafe { heap::stamp(h, n, align_log2, startup) };
    if startup {
        startup_heap::record(p as u64, fp);
    }
    p
}

/// # Safety
/// malloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn malloc(n: size_t) -> *mut c_void {
    let Some(total) = heap::with_header(n) else { return enomem() };
    // SAFETY: glibc's malloc, which takes no pointer.
    let h = unsafe { __libc_malloc(total) };
    if h.is_null() {
        return h;
    }
    // SAFETY: a fresh block of `total` = HEADER + n bytes, aligned to 16 as glibc's are.
    unsafe { stamped(h, n, 0, stack::frame_address()) }
}

/// # Safety
/// calloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, m: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(m).and_then(heap::with_header) else { return enomem() };
    // SAFETY: glibc's calloc, which takes no pointer.
    let h = unsafe { __libc_calloc(1, total) };
    if h.is_null() {
        return h;
    }
    // SAFETY: as in malloc: a fresh, zeroed block of `total` bytes.
    unsafe { stamped(h, total - HEADER, 0, stack::frame_address()) }
}

/// # Safety
/// free(3)'s contract: `p` is null or a live block from this allocator family, freed once.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: a live block (the caller's contract): its header, if it has one of ours,
    // precedes it, and then glibc's allocation starts where `unstamp` says; a block
    // without one is glibc's own.
    unsafe {
        match heap::unstamp(p) {
            Some(base) => __libc_free(base),
            None => __libc_free(p),
        }
    }
}

/// # Safety
/// realloc(3)'s contract: `p` is null or a live block from this allocator family.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, n: size_t) -> *mut c_void {
    if p.is_null() {
        // SAFETY: malloc's contract has no pointers.
        return unsafe { malloc(n) };
    }
    if n == 0 {
        // glibc frees and returns NULL.
        // SAFETY: a live block (the caller's contract), not used after.
        unsafe { free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: a live block (the caller's contract).
    let Some(info) = (unsafe { heap::header_of(p) }) else {
        // SAFETY: a live block of glibc's own (no header of ours).
        return unsafe { __libc_realloc(p, n) };
    };
    let Some(total) = heap::with_header(n) else { return enomem() };
    if info.align_log2 != 0 {
        // Keep it simple for the rare over-aligned block: the new one is plain.
        // SAFETY: malloc's contract has no pointers.
        let q = unsafe { malloc(n) };
        if !q.is_null() {
            // SAFETY: `p` holds `info.size` bytes (its header says so), `q` at least `n`
            // fresh ones: distinct blocks. `p` is not used after `free`.
            unsafe {
                core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, (info.size as usize).min(n));
                free(p);
            }
        }
        return q;
    }
    let h = heap::header_addr(p);
    // Clear the tag first: if glibc moves the block, the old place must not keep a live
    // tag (the copy it makes carries the cleared one).
    // SAFETY: `h` is the header of `p`, a live block of ours.
    unsafe { heap::clear(h) };
    // SAFETY: `h` is where glibc's allocation of a plain block of ours starts.
    let nh = unsafe { __libc_realloc(h, total) };
    if nh.is_null() {
        // The old block is untouched on failure: make it live again.
        // SAFETY: its header, cleared above, of a block glibc did not free.
        unsafe { heap::restore(h, info) };
        return nh;
    }
    // A block reallocated during startup is a startup allocation of this call stack (the
    // one it replaces is dead); one reallocated later is a post-startup block.
    // SAFETY: glibc's block of `total` = HEADER + n bytes, 16-byte aligned.
    unsafe { stamped(nh, n, 0, stack::frame_address()) }
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

/// Over-aligned block: the header sits right before the aligned address, `align` bytes
/// into glibc's allocation.
fn aligned(align: size_t, n: size_t) -> *mut c_void {
    if align <= HEADER {
        // SAFETY: malloc's contract has no pointers.
        return unsafe { malloc(n) };
    }
    let align = align.next_power_of_two();
    let Some(total) = n.checked_add(align).filter(|&t| t as u64 <= mcr_heap::MAX_SIZE) else { return enomem() };
    // SAFETY: glibc's memalign, which takes no pointer.
    let base = unsafe { __libc_memalign(align, total) };
    if base.is_null() {
        return base;
    }
    let block = (base as *mut u8).wrapping_add(align);
    // SAFETY: `align` >= 32 bytes into a fresh block of `align + n`: the HEADER (16) bytes
    // before `block` and the `n` after it are inside it, and `block - HEADER` is aligned
    // to 16 (align is a power of two of at least 32).
    unsafe { stamped(block.wrapping_sub(HEADER).cast(), n, align.trailing_zeros(), stack::frame_address()) }
}

/// # Safety
/// memalign(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n)
}

/// # Safety
/// aligned_alloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n)
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
        aligned(align, n)
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
    aligned(heap::page_size(), n)
}

/// # Safety
/// pvalloc(3)'s contract (no pointers).
#[no_mangle]
pub unsafe extern "C" fn pvalloc(n: size_t) -> *mut c_void {
    let page = heap::page_size();
    match n.checked_add(page - 1) {
        Some(t) => aligned(page, t & !(page - 1)),
        None => enomem(),
    }
}

/// The size asked for: malloc_usable_size may return more than requested, never less,
/// and a program may use what it returns, so the requested size is always a right answer.
///
/// # Safety
/// malloc_usable_size(3)'s contract: `p` is null or a live block of this allocator family.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if p.is_null() {
        return 0;
    }
    // SAFETY: a live block (the caller's contract): ours has our header, glibc's its
    // chunk header.
    unsafe {
        match heap::header_of(p) {
            Some(info) => info.size as size_t,
            None => heap::foreign_usable_size(p),
        }
    }
}
