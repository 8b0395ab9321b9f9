//! The malloc family, with allocation metadata (DESIGN.md "Allocation metadata"; format
//! in the `mcr-heap` crate): every block gets a 16-byte header before it, written here
//! and cleared on free. The allocator itself stays glibc's, reached through its
//! `__libc_*` entry points, which never recurse into these symbols and need no dlsym (so
//! this works from the first allocation ld.so makes, before the runtime initializes).
//!
//! Blocks without a header (memory ld.so's minimal allocator handed out, or anything
//! glibc allocated before these symbols took over) are passed to glibc unchanged.

#![allow(clippy::missing_safety_doc)]

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

#[no_mangle]
pub unsafe extern "C" fn malloc(n: size_t) -> *mut c_void {
    let Some(total) = heap::with_header(n) else { return enomem() };
    let h = __libc_malloc(total);
    if h.is_null() {
        return h;
    }
    let startup = heap::in_startup();
    // SAFETY: h is a fresh block of n + HEADER bytes.
    let p = heap::stamp(h, n, 0, startup);
    if startup {
        startup_heap::record(p as u64, stack::frame_address());
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, m: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(m).and_then(heap::with_header) else { return enomem() };
    let h = __libc_calloc(1, total);
    if h.is_null() {
        return h;
    }
    let startup = heap::in_startup();
    // SAFETY: as in malloc.
    let p = heap::stamp(h, total - HEADER, 0, startup);
    if startup {
        startup_heap::record(p as u64, stack::frame_address());
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: p came from an allocation function; its header (if it has one) precedes it.
    match heap::unstamp(p) {
        Some(base) => __libc_free(base),
        None => __libc_free(p),
    }
}

#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, n: size_t) -> *mut c_void {
    if p.is_null() {
        return malloc(n);
    }
    if n == 0 {
        // glibc frees and returns NULL.
        free(p);
        return core::ptr::null_mut();
    }
    // SAFETY: p is a live block the program owns.
    let Some(info) = heap::header_of(p) else { return __libc_realloc(p, n) };
    let Some(total) = heap::with_header(n) else { return enomem() };
    if info.align_log2 != 0 {
        // Keep it simple for the rare over-aligned block: the new one is plain.
        let q = malloc(n);
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, (info.size as usize).min(n));
            free(p);
        }
        return q;
    }
    let h = heap::header_addr(p);
    // Clear the tag first: if glibc moves the block, the old place must not keep a live
    // tag (the copy it makes carries the cleared one).
    heap::clear(h);
    let nh = __libc_realloc(h, total);
    if nh.is_null() {
        // SAFETY: the old block is untouched on failure; make it live again.
        heap::restore(h, info);
        return nh;
    }
    // A block reallocated during startup is a startup allocation of this call stack (the
    // one it replaces is dead); one reallocated later is a post-startup block.
    let startup = heap::in_startup();
    let p = heap::stamp(nh, n, 0, startup);
    if startup {
        startup_heap::record(p as u64, stack::frame_address());
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, m: size_t) -> *mut c_void {
    match n.checked_mul(m) {
        Some(total) => realloc(p, total),
        None => enomem(),
    }
}

/// Over-aligned block: the header sits right before the aligned address, `align` bytes
/// into glibc's allocation.
unsafe fn aligned(align: size_t, n: size_t) -> *mut c_void {
    if align <= HEADER {
        return malloc(n);
    }
    let align = align.next_power_of_two();
    let Some(total) = n.checked_add(align).filter(|&t| t as u64 <= mcr_heap::MAX_SIZE) else { return enomem() };
    let base = __libc_memalign(align, total);
    if base.is_null() {
        return base;
    }
    let block = (base as *mut u8).add(align);
    let startup = heap::in_startup();
    let p = heap::stamp(block.sub(HEADER).cast(), n, align.trailing_zeros(), startup);
    if startup {
        startup_heap::record(p as u64, stack::frame_address());
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n)
}

#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n)
}

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
    *out = p;
    0
}

#[no_mangle]
pub unsafe extern "C" fn valloc(n: size_t) -> *mut c_void {
    aligned(heap::page_size(), n)
}

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
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if p.is_null() {
        return 0;
    }
    match heap::header_of(p) {
        Some(info) => info.size as size_t,
        None => heap::foreign_usable_size(p),
    }
}
