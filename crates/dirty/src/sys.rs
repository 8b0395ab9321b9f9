//! The kernel interfaces: userfaultfd (async write-protect) and the `PAGEMAP_SCAN` ioctl
//! of `/proc/PID/pagemap`. Structures and flags come from linux-raw-sys; no crate defines
//! the ioctl numbers, so they are computed here with the kernel's `_IOWR` encoding and
//! checked at compile time against the values the kernel headers give.

use linux_raw_sys::general as k;
use std::io;

pub use k::{page_region, pm_scan_arg};

pub const PAGE_IS_WPALLOWED: u64 = k::PAGE_IS_WPALLOWED as u64;
pub const PAGE_IS_WRITTEN: u64 = k::PAGE_IS_WRITTEN as u64;
pub const PAGE_IS_FILE: u64 = k::PAGE_IS_FILE as u64;
pub const PAGE_IS_PRESENT: u64 = k::PAGE_IS_PRESENT as u64;
pub const PAGE_IS_SWAPPED: u64 = k::PAGE_IS_SWAPPED as u64;
pub const PAGE_IS_PFNZERO: u64 = k::PAGE_IS_PFNZERO as u64;
pub const PAGE_IS_SOFT_DIRTY: u64 = k::PAGE_IS_SOFT_DIRTY as u64;

/// `_IOC(dir, type, nr, size)` of include/uapi/asm-generic/ioctl.h (x86-64, arm64, riscv).
const fn ioc(dir: u32, ty: u8, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr
}
const fn iowr(ty: u8, nr: u32, size: usize) -> u32 {
    ioc(3, ty, nr, size)
}

/// `_IOWR('f', 16, struct pm_scan_arg)` (fs.h).
pub const PAGEMAP_SCAN: u32 = iowr(b'f', 16, core::mem::size_of::<pm_scan_arg>());
/// `_IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)`, UFFDIO = 0xAA (userfaultfd.h).
pub const UFFDIO_API: u32 = iowr(0xAA, k::_UFFDIO_API, core::mem::size_of::<k::uffdio_api>());
pub const UFFDIO_REGISTER: u32 = iowr(0xAA, k::_UFFDIO_REGISTER, core::mem::size_of::<k::uffdio_register>());
pub const UFFDIO_WRITEPROTECT: u32 =
    iowr(0xAA, k::_UFFDIO_WRITEPROTECT, core::mem::size_of::<k::uffdio_writeprotect>());

// The values of the kernel headers (x86-64), so a wrong struct size cannot slip through.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
const _: () = {
    assert!(PAGEMAP_SCAN == 0xc060_6610);
    assert!(UFFDIO_API == 0xc018_aa3f);
    assert!(UFFDIO_REGISTER == 0xc020_aa00);
    assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
    assert!(core::mem::size_of::<page_region>() == 24);
};

pub const UFFD_API: u64 = k::UFFD_API as u64;
pub const UFFD_USER_MODE_ONLY: i32 = k::UFFD_USER_MODE_ONLY as i32;
pub const UFFD_FEATURE_WP_ASYNC: u64 = k::UFFD_FEATURE_WP_ASYNC as u64;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = k::UFFD_FEATURE_WP_UNPOPULATED as u64;
pub const UFFDIO_REGISTER_MODE_WP: u64 = k::UFFDIO_REGISTER_MODE_WP as u64;
/// `UFFDIO_WRITEPROTECT_MODE_WP` (userfaultfd.h; absent from linux-raw-sys).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const PM_SCAN_WP_MATCHING: u64 = k::PM_SCAN_WP_MATCHING as u64;
pub const PM_SCAN_CHECK_WPASYNC: u64 = k::PM_SCAN_CHECK_WPASYNC as u64;

#[inline]
fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `userfaultfd(flags)`.
#[inline]
pub fn userfaultfd(flags: i32) -> io::Result<i32> {
    // SAFETY: creates a descriptor; no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) }).map(|fd| fd as i32)
}

/// `UFFDIO_API`: the features the kernel granted.
#[inline]
pub fn uffd_api(fd: i32, features: u64) -> io::Result<u64> {
    let mut api = k::uffdio_api { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: `api` is a valid uffdio_api the kernel reads and writes.
    check(unsafe {
        libc::syscall(libc::SYS_ioctl, fd as libc::c_long, UFFDIO_API as libc::c_long, &mut api as *mut k::uffdio_api)
    })?;
    Ok(api.features)
}

/// `UFFDIO_REGISTER` of [start, start+len) in write-protect mode.
#[inline]
pub fn uffd_register_wp(fd: i32, start: u64, len: u64) -> io::Result<()> {
    let mut reg =
        k::uffdio_register { range: k::uffdio_range { start, len }, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    // SAFETY: `reg` is a valid uffdio_register; the range is only registered, not touched.
    check(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd as libc::c_long,
            UFFDIO_REGISTER as libc::c_long,
            &mut reg as *mut k::uffdio_register,
        )
    })?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT` of [start, start+len): sets the uffd-wp bit of every page (and,
/// with WP_UNPOPULATED, a marker on every page not populated yet). With WP_ASYNC the
/// kernel clears the bit itself on the first write, so the program never notices.
pub fn uffd_writeprotect(fd: i32, start: u64, len: u64) -> io::Result<()> {
    let mut wp = k::uffdio_writeprotect { range: k::uffdio_range { start, len }, mode: UFFDIO_WRITEPROTECT_MODE_WP };
    // SAFETY: `wp` is a valid uffdio_writeprotect.
    check(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd as libc::c_long,
            UFFDIO_WRITEPROTECT as libc::c_long,
            &mut wp as *mut k::uffdio_writeprotect,
        )
    })?;
    Ok(())
}

/// One `PAGEMAP_SCAN` call over [start, end) of the pagemap file `fd`: fills `out` with
/// regions of pages sharing the same categories (masked by `return_mask`) and returns
/// how many it filled and where the walk ended (`end` when it covered everything).
pub fn pagemap_scan(
    fd: i32,
    start: u64,
    end: u64,
    flags: u64,
    return_mask: u64,
    out: &mut [page_region],
) -> io::Result<(usize, u64)> {
    let mut arg = pm_scan_arg {
        size: core::mem::size_of::<pm_scan_arg>() as u64,
        flags,
        start,
        end,
        walk_end: 0,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: 0,
        category_anyof_mask: 0,
        return_mask,
    };
    // SAFETY: `arg` is valid and `vec` points at `out.len()` writable page_regions.
    let n = check(unsafe {
        libc::syscall(libc::SYS_ioctl, fd as libc::c_long, PAGEMAP_SCAN as libc::c_long, &mut arg as *mut pm_scan_arg)
    })?;
    Ok((n as usize, arg.walk_end))
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor this crate opened.
    unsafe { libc::syscall(libc::SYS_close, fd as libc::c_long) };
}

pub fn page_size() -> u64 {
    // SAFETY: plain query.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}
