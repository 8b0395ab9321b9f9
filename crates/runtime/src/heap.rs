//! Allocation metadata written by the malloc family (`interpose/malloc.rs`): the header
//! of every block says its size and whether it was allocated during startup. See the
//! `mcr-heap` crate for the format and for the reader the update uses.

use crate::quiesce::STARTUP_DONE;
use libc::{c_void, size_t};
use mcr_heap::{tag, Info, HEADER, MAX_SIZE};
use std::sync::atomic::Ordering::Relaxed;

/// `n` plus the header, when it fits what a header can describe.
#[inline(always)]
pub fn with_header(n: size_t) -> Option<size_t> {
    if n as u64 > MAX_SIZE - HEADER as u64 {
        return None;
    }
    Some(n + HEADER)
}

/// Whether an allocation made now is a startup allocation (the process has not completed
/// startup yet).
#[inline(always)]
pub fn in_startup() -> bool {
    !STARTUP_DONE.load(Relaxed)
}

/// Write the header at `h` for a block of `n` bytes right after it; returns the block.
///
/// # Safety
/// `h` must point to at least `HEADER + n` writable bytes, 16-byte aligned.
#[inline(always)]
pub unsafe fn stamp(h: *mut c_void, n: size_t, align_log2: u32, startup: bool) -> *mut c_void {
    let info = Info { size: n as u64, startup, align_log2 };
    // SAFETY: the caller's contract: two aligned, writable words at `h`.
    unsafe { write_header(h, info) };
    (h as *mut u8).wrapping_add(HEADER).cast()
}

/// The two header words: the tag (a function of its own address), then the info.
///
/// # Safety
/// `h` must point to 16 writable bytes, 8-byte aligned.
#[inline(always)]
unsafe fn write_header(h: *mut c_void, info: Info) {
    let w = h as *mut u64;
    // SAFETY: the caller's contract covers both words.
    unsafe {
        w.write(tag(h as u64));
        w.add(1).write(info.encode());
    }
}

pub fn header_addr(p: *mut c_void) -> *mut c_void {
    (p as *mut u8).wrapping_sub(HEADER).cast()
}

/// The header of block `p`, when it has one of ours.
///
/// # Safety
/// `p` must be a block returned by an allocation function and not yet freed.
#[inline(always)]
pub unsafe fn header_of(p: *mut c_void) -> Option<Info> {
    let h = header_addr(p) as *const u64;
    // SAFETY: `p` is a live block (the caller's contract), 16-byte aligned: ours have our
    // header in the 16 bytes before it, glibc's its chunk header, whose size word at
    // p - 8 glibc's own free reads; p - 16 is in the same 16-byte granule, so on the same
    // page: readable whenever that word is.
    unsafe {
        if h.read() != tag(h as u64) {
            return None;
        }
        Some(Info::decode(h.add(1).read()))
    }
}

/// Mark block `p` dead; returns what glibc must free (None: not ours).
///
/// # Safety
/// As for [`header_of`].
#[inline(always)]
pub unsafe fn unstamp(p: *mut c_void) -> Option<*mut c_void> {
    // SAFETY: the caller's contract.
    let info = unsafe { header_of(p) }?;
    let h = header_addr(p);
    // SAFETY: `p` has a header of ours at `h`: the block is live.
    unsafe { clear(h) };
    // An over-aligned block starts `1 << align_log2` bytes into glibc's allocation.
    Some(if info.align_log2 == 0 { h } else { (p as *mut u8).wrapping_sub(1usize << info.align_log2).cast() })
}

/// # Safety
/// `h` must be the header of a live block.
#[inline(always)]
pub unsafe fn clear(h: *mut c_void) {
    // SAFETY: the caller's contract: a header is two writable, aligned words.
    unsafe { (h as *mut u64).write(0) };
}

/// Mark live block `p` as allocated during startup; false when it has no header of ours.
///
/// # Safety
/// As for [`header_of`].
pub unsafe fn mark_startup(p: *mut c_void) -> bool {
    // SAFETY: the caller's contract.
    let Some(info) = (unsafe { header_of(p) }) else { return false };
    // SAFETY: `p` has a header of ours, so the block and its header are live.
    unsafe { restore(header_addr(p), Info { startup: true, ..info }) };
    true
}

/// # Safety
/// `h` must be the header, cleared by [`clear`], of a block that is still allocated.
pub unsafe fn restore(h: *mut c_void, info: Info) {
    // SAFETY: the caller's contract: a header is two writable, aligned words.
    unsafe { write_header(h, info) };
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The usable size of a block that is not ours (rare: ld.so's early allocations), from
/// glibc's chunk header (the public malloc_usable_size is our own symbol): the size word
/// before the block, minus its flag bits and the header words the block cannot use.
///
/// # Safety
/// `p` must be a live block from glibc's allocator.
pub unsafe fn foreign_usable_size(p: *mut c_void) -> size_t {
    const IS_MMAPPED: usize = 2;
    // SAFETY: glibc's chunk header ends with the size word right before a live block
    // (the caller's contract).
    let word = unsafe { (p as *const usize).sub(1).read() };
    let overhead = if word & IS_MMAPPED != 0 { 16 } else { 8 };
    (word & !7).saturating_sub(overhead)
}
