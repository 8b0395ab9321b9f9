//! The runtime's own code and read-only data become resident page by page, as they run.
//!
//! A file mapping's read fault maps the pages around it that the page cache holds (the
//! kernel's fault-around, 64 KiB): the program's first calls into the runtime made nearly
//! all of libmcr.so's 1.4 MB of code resident in every process (1.16 MB each in nginx's
//! master and workers, where the program's own resident memory is 4-6 MB). The kernel does
//! not fault around in a range a userfaultfd registered for write-protect, and the
//! runtime's code and read-only data are never written: registered (async, so nothing is
//! ever delivered), they fault in one page at a time. A fork child's registrations are not
//! inherited: it registers again, first of all.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::*};

/// Ranges of libmcr.so's read-only mappings, (start, end) pairs.
const MAX_RANGES: usize = 8;
static RANGES: [AtomicU64; 2 * MAX_RANGES] = [const { AtomicU64::new(0) }; 2 * MAX_RANGES];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The userfaultfd holding the registrations (in the runtime's reserved range), or -1.
static FD: AtomicI32 = AtomicI32::new(-1);

/// First thing in the constructor (before it runs any other code of this library): note
/// the read-only segments of the runtime's library from its program headers, and register
/// them. Done later (from /proc/self/maps), the constructor's own first calls had faulted
/// around: nginx's master and workers each held 690-730 kB of libmcr.so's code resident
/// for ~80 pages they ran.
pub fn init() {
    let mut ranges = [(0u64, 0u64); MAX_RANGES];
    let n = own_read_only_segments(&mut ranges);
    for (i, (start, end)) in ranges.iter().take(n).enumerate() {
        RANGES[2 * i].store(*start, Relaxed);
        RANGES[2 * i + 1].store(*end, Relaxed);
    }
    COUNT.store(n, SeqCst);
    register();
    // SAFETY: pthread_atfork only records the handler, a function of this library, which
    // is never unloaded.
    unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
}

/// The page ranges of this library's loadable segments that are not writable, from the
/// program headers the loader keeps (no file read, no allocation).
fn own_read_only_segments(out: &mut [(u64, u64); MAX_RANGES]) -> usize {
    struct Search<'a> {
        out: &'a mut [(u64, u64); MAX_RANGES],
        found: usize,
    }
    extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call, and
        // `data` is the `Search` own_read_only_segments lent it.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search<'_>>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: the loader's program headers of this module: dlpi_phnum entries.
        let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let here = init as *const () as u64;
        let contains_us = headers.iter().any(|h| {
            let start = info.dlpi_addr + h.p_vaddr;
            h.p_type == libc::PT_LOAD && (start..start + h.p_memsz).contains(&here)
        });
        if !contains_us {
            return 0;
        }
        const PAGE: u64 = 4096;
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
            if search.found == MAX_RANGES {
                break;
            }
            let start = (info.dlpi_addr + h.p_vaddr) & !(PAGE - 1);
            let end = (info.dlpi_addr + h.p_vaddr + h.p_memsz).div_ceil(PAGE) * PAGE;
            search.out[search.found] = (start, end);
            search.found += 1;
        }
        1
    }
    let mut search = Search { out, found: 0 };
    // SAFETY: `visit` only reads what the loader passes and writes `search`, alive for the
    // whole call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search<'_>).cast()) };
    search.found
}

/// Registers the noted ranges with a new userfaultfd. Everything up to the registration
/// is inlined here, so that in a fork child only this function's own page faults around.
#[inline(never)]
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

/// The first of the runtime's fork child handlers (registered before the others): a fork
/// child's mappings are not registered, and its page tables start empty for this library's
/// code (the kernel copies no page table entry of a file mapping that was never written),
/// so every page the child's handlers ran before registering again faulted around: 6
/// faults, ~90 pages of nginx's master and each worker. A child the runtime leaves
/// passive makes no system call (its sandbox may forbid them) and keeps the parent's copy.
extern "C" fn atfork_child() {
    if crate::is_sandboxed() || crate::next_child_passive() {
        return;
    }
    let fd = FD.swap(-1, SeqCst);
    register();
    if fd >= 0 {
        // SAFETY: the child's copy of the parent's userfaultfd, hidden from the program (a
        // reserved descriptor): the runtime's own; the parent keeps its copy.
        unsafe { crate::rawfd::close(fd) };
    }
}
