//! The program's own mappings: `mmap`, `munmap`, `mremap`, `shmat`, `shmdt` forward to the
//! kernel with raw system calls (libc's are thin wrappers; a raw call also works before
//! the runtime initializes, when a library constructor maps memory) and tell
//! [`crate::mappings`] what the program mapped after startup.

use crate::mappings;
use libc::{c_int, c_void, off_t, size_t};

/// # Safety
/// mmap(2)'s contract: with MAP_FIXED, the range replaced is the caller's to replace.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    let startup = mappings::placed_at_startup(addr, flags).then(mappings::next_key);
    if let Some((at, held)) = startup.and_then(|key| mappings::old_place(key, len, flags)) {
        let fixed = if held { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
        // SAFETY: the caller's arguments at the old version's address: MAP_FIXED only over
        // a hold of the runtime's (held_ranges.rs: inaccessible, nothing lives there),
        // else MAP_FIXED_NOREPLACE, which fails on any overlap.
        let p = unsafe { crate::sys!(libc::SYS_mmap, at, len, prot, flags | fixed, fd, offset) };
        if let (true, Some(key)) = (p as u64 == at, startup) {
            mappings::note_startup_mapping(key, p as usize, len, flags);
            return p as *mut c_void;
        }
        if p != -1 {
            // A kernel without MAP_FIXED_NOREPLACE took the address as a hint.
            // SAFETY: the mapping just made, the caller never saw it.
            unsafe { crate::sys!(libc::SYS_munmap, p, len) };
        } else if held {
            // The hold was taken off the list: whatever of it the failed call left goes.
            // SAFETY: the runtime's own inaccessible hold, nothing of anyone's in it.
            unsafe { crate::sys!(libc::SYS_munmap, at, len) };
        }
        // Taken by something else, or refused: where the kernel chooses, as asked.
    }
    // SAFETY: the caller's arguments, unchanged (its contract); libc's syscall() sets
    // errno and returns -1 (MAP_FAILED) on failure, as mmap does.
    let p = unsafe { crate::sys!(libc::SYS_mmap, addr, len, prot, flags, fd, offset) };
    if let (true, Some(key)) = (p != -1, startup) {
        mappings::note_startup_mapping(key, p as usize, len, flags);
    } else if p != -1 && mappings::tracking() {
        mappings::note_mapped(p as usize, len);
    }
    p as *mut c_void
}

/// The same as [`mmap`] (off_t is 64 bits here).
///
/// # Safety
/// As for [`mmap`].
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    // SAFETY: the caller's contract, passed on.
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}

/// # Safety
/// munmap(2)'s contract: the range is the caller's to unmap.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    // SAFETY: the caller's arguments (its contract).
    let r = unsafe { crate::sys!(libc::SYS_munmap, addr, len) } as c_int;
    if r == 0 && mappings::tracking() {
        mappings::note_unmapped(addr as usize, len);
    }
    r
}

/// mremap is variadic in C: `new_address` is read only with MREMAP_FIXED, and the kernel
/// ignores the register otherwise.
///
/// # Safety
/// mremap(2)'s contract: the old range is the caller's, and with MREMAP_FIXED so is the
/// new one.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    // SAFETY: the caller's arguments (its contract).
    let p = unsafe { crate::sys!(libc::SYS_mremap, old, old_len, new_len, flags, new_address) };
    if p != -1 && mappings::tracking() {
        let keep_old = flags & libc::MREMAP_DONTUNMAP != 0;
        mappings::note_remapped(old as usize, old_len, p as usize, new_len, keep_old);
    }
    p as *mut c_void
}

/// # Safety
/// shmat(2)'s contract: with an address (and SHM_REMAP), the range is the caller's.
#[no_mangle]
pub unsafe extern "C" fn shmat(id: c_int, addr: *const c_void, flags: c_int) -> *mut c_void {
    // SAFETY: the caller's arguments (its contract).
    let p = unsafe { crate::sys!(libc::SYS_shmat, id, addr, flags) };
    if p != -1 && mappings::tracking() {
        // SAFETY: a zeroed shmid_ds is a valid value; IPC_STAT writes one into it.
        let mut ds: libc::shmid_ds = unsafe { core::mem::zeroed() };
        let _errno = crate::errno::ErrnoGuard::save();
        // SAFETY: IPC_STAT of the segment just attached writes into `ds`, a live local.
        if unsafe { crate::sys!(libc::SYS_shmctl, id, libc::IPC_STAT, &mut ds as *mut libc::shmid_ds) } == 0 {
            mappings::note_attached(p as usize, ds.shm_segsz);
        }
    }
    p as *mut c_void
}

/// # Safety
/// shmdt(2)'s contract: the segment at `addr` is the caller's to detach.
#[no_mangle]
pub unsafe extern "C" fn shmdt(addr: *const c_void) -> c_int {
    // SAFETY: the caller's argument (its contract).
    let r = unsafe { crate::sys!(libc::SYS_shmdt, addr) } as c_int;
    if r == 0 && mappings::tracking() {
        mappings::note_detached(addr as usize);
    }
    r
}
