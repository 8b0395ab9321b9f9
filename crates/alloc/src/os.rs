//! The system calls the engine makes, raw (rustix's linux_raw backend: no libc, no errno, no
//! allocation; libc's `syscall` only where rustix has no wrapper). Nothing here knows about
//! regions; callers pass addresses they own.

#![allow(unsafe_code)]

use core::ffi::{c_void, CStr};
use linux_raw_sys::general as k;
use rustix::fd::{AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, ProtFlags};

pub use rustix::io::Errno as OsError;

/// What backs a new mapping.
#[derive(Clone, Copy)]
pub(crate) enum Backing<'a> {
    /// Zero-filled private memory.
    Anonymous,
    /// A memfd at the same offset as the address's offset in its region: shared (writes go
    /// to the memfd) or private (copy-on-write over it).
    Memfd { fd: BorrowedFd<'a>, offset: u64, shared: bool },
}

impl<'a> Backing<'a> {
    /// The same backing for a mapping at offset `offset` of a region (a memfd at that
    /// offset, since file offset = offset in the region).
    pub(crate) fn at(self, offset: usize) -> Backing<'a> {
        match self {
            Backing::Anonymous => Backing::Anonymous,
            Backing::Memfd { fd, shared, .. } => Backing::Memfd { fd, offset: offset as u64, shared },
        }
    }
}

/// Maps `len` bytes at exactly `addr`, readable and writable, without reserving swap.
/// With `replace` the range may hold a mapping already (it is replaced atomically);
/// without, the call fails with `EEXIST` if anything is mapped there.
///
/// # Safety
/// With `replace`, the caller owns every mapping in the range (nothing else uses it, or
/// the new contents are what its users must see).
pub(crate) unsafe fn map(addr: usize, len: usize, backing: Backing<'_>, replace: bool) -> Result<(), Errno> {
    let placement = if replace { MapFlags::FIXED } else { MapFlags::FIXED_NOREPLACE };
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    let got = match backing {
        // SAFETY: a fixed address the caller owns (or, without `replace`, one the kernel
        // refuses if anything is there).
        Backing::Anonymous => unsafe {
            rustix::mm::mmap_anonymous(
                addr as *mut c_void,
                len,
                prot,
                placement | MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        },
        // SAFETY: as above, over a descriptor the caller holds open for the call.
        Backing::Memfd { fd, offset, shared } => unsafe {
            let sharing = if shared { MapFlags::SHARED } else { MapFlags::PRIVATE };
            rustix::mm::mmap(addr as *mut c_void, len, prot, placement | sharing | MapFlags::NORESERVE, fd, offset)
        },
    }?;
    if got as usize != addr {
        // A kernel before 4.17 ignores FIXED_NOREPLACE and treats the address as a hint.
        // SAFETY: the kernel just created this mapping for us elsewhere; nobody uses it.
        let _ = unsafe { rustix::mm::munmap(got, len) };
        return Err(Errno::EXIST);
    }
    Ok(())
}

/// A fresh anonymous mapping of `len` bytes where the kernel likes.
pub(crate) fn map_anywhere(len: usize) -> Result<usize, Errno> {
    // SAFETY: no address given: the kernel picks a free range, nothing existing is touched.
    unsafe {
        rustix::mm::mmap_anonymous(
            core::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .map(|p| p as usize)
}

/// Reserves `len` bytes at `addr` (no access, no memory): keeps anything else from mapping
/// there. Fails with `EEXIST` if something is mapped in the range already.
pub(crate) fn reserve(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: FIXED_NOREPLACE never touches an existing mapping.
    let got = unsafe {
        rustix::mm::mmap_anonymous(
            addr as *mut c_void,
            len,
            ProtFlags::empty(),
            MapFlags::FIXED_NOREPLACE | MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    if got as usize != addr {
        // SAFETY: as in `map`: our own mapping, placed elsewhere.
        let _ = unsafe { rustix::mm::munmap(got, len) };
        return Err(Errno::EXIST);
    }
    Ok(())
}

/// # Safety
/// The caller owns the range and nothing will touch it again.
pub(crate) unsafe fn unmap(addr: usize, len: usize) {
    // SAFETY: guaranteed by the caller.
    let _ = unsafe { rustix::mm::munmap(addr as *mut c_void, len) };
}

/// A new memfd of `size` bytes (sparse: no memory until written).
pub(crate) fn memfd(size: u64) -> Result<OwnedFd, Errno> {
    let name: &CStr = c"mcr-heap";
    let fd = match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
        Ok(fd) => fd,
        // before Linux 6.3
        Err(Errno::INVAL) => rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?,
        Err(e) => return Err(e),
    };
    rustix::fs::ftruncate(&fd, size)?;
    Ok(fd)
}

/// How to give a range's memory back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Decommit {
    /// Drop the pages (anonymous: they read as zero again; private over a memfd: they read
    /// the memfd's bytes again).
    DontNeed,
    /// Punch a hole in the shared memfd behind the range (reads as zero again).
    Remove,
}

/// Gives the memory of a range back to the system.
///
/// # Safety
/// The caller owns the range (its contents may be lost).
pub(crate) unsafe fn decommit(addr: usize, len: usize, how: Decommit) -> Result<(), Errno> {
    let advice = match how {
        Decommit::DontNeed => Advice::LinuxDontNeed,
        Decommit::Remove => Advice::LinuxRemove,
    };
    // SAFETY: guaranteed by the caller.
    unsafe { rustix::mm::madvise(addr as *mut c_void, len, advice) }
}

/// Punches a hole in a file (the range reads as zero afterwards).
pub(crate) fn punch(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    rustix::fs::fallocate(fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)
}

/// A NUL-terminated path under /proc built without allocating.
pub struct ProcPath {
    buf: [u8; 96],
    len: usize,
}

impl ProcPath {
    /// `/proc/PID/map_files/START-END` (`pid` None: `self`): opening it gives the file behind
    /// the mapping [start, end) of that process (needs CAP_CHECKPOINT_RESTORE or
    /// CAP_SYS_ADMIN, and ptrace access to the process).
    pub fn map_files(pid: Option<i32>, start: usize, end: usize) -> ProcPath {
        let mut p = ProcPath::proc(pid);
        p.push(b"/map_files/");
        p.hex(start);
        p.push(b"-");
        p.hex(end);
        p
    }

    /// `/proc/PID/pagemap` (`pid` None: `self`).
    pub fn pagemap(pid: Option<i32>) -> ProcPath {
        let mut p = ProcPath::proc(pid);
        p.push(b"/pagemap");
        p
    }

    /// `/proc/PID/maps` (`pid` None: `self`).
    pub fn maps(pid: Option<i32>) -> ProcPath {
        let mut p = ProcPath::proc(pid);
        p.push(b"/maps");
        p
    }

    fn proc(pid: Option<i32>) -> ProcPath {
        let mut p = ProcPath { buf: [0; 96], len: 0 };
        p.push(b"/proc/");
        match pid {
            Some(pid) => p.decimal(pid.unsigned_abs() as usize),
            None => p.push(b"self"),
        }
        p
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            // keep the last byte for the NUL
            if self.len + 1 < self.buf.len() {
                if let Some(slot) = self.buf.get_mut(self.len) {
                    *slot = b;
                }
                self.len += 1;
            }
        }
    }

    fn hex(&mut self, v: usize) {
        self.number(v, 16);
    }

    fn decimal(&mut self, v: usize) {
        self.number(v, 10);
    }

    /// `v` in `base` (at most 16), most significant digit first, without allocating.
    fn number(&mut self, mut v: usize, base: usize) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            if let Some(d) = digits.get_mut(n) {
                *d = b"0123456789abcdef".get(v % base).copied().unwrap_or(b'0');
            }
            n += 1;
            v /= base;
            if v == 0 || n == digits.len() {
                break;
            }
        }
        for i in (0..n).rev() {
            self.push(&[digits.get(i).copied().unwrap_or(b'0')]);
        }
    }

    /// The path as a C string.
    pub fn as_c_str(&self) -> &CStr {
        // the buffer always holds a NUL after `len` (push keeps the last byte free)
        CStr::from_bytes_until_nul(self.buf.get(..=self.len).unwrap_or(b"\0")).unwrap_or(c"")
    }

    /// The path without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// Opens a /proc path for reading and writing (`write`) or reading.
pub(crate) fn open(path: &ProcPath, write: bool) -> Result<OwnedFd, Errno> {
    let mode = if write { OFlags::RDWR } else { OFlags::RDONLY };
    rustix::fs::open(path.as_c_str(), mode | OFlags::CLOEXEC, Mode::empty())
}

/// Opens the file behind the memory at `[start, end)` of process `pid` (`None`: this one)
/// through `/proc/PID/map_files`, which names whole mappings only. `[start, end)` is what
/// the caller mapped in one call, but the kernel may have split it since (registering part
/// of it with a userfaultfd, an `mprotect` of part of it): then the name of the mapping that
/// holds `start` is asked for (`PROCMAP_QUERY`, Linux 6.11) and opened instead.
pub(crate) fn open_map_files(pid: Option<i32>, start: usize, end: usize, write: bool) -> Result<OwnedFd, Errno> {
    match open(&ProcPath::map_files(pid, start, end), write) {
        Err(Errno::NOENT) => {
            let (vma_start, vma_end) = mapping_containing(pid, start).map_err(|_| Errno::NOENT)?;
            open(&ProcPath::map_files(pid, vma_start, vma_end), write)
        }
        other => other,
    }
}

/// `_IOWR(PROCFS_IOCTL_MAGIC, 17, struct procmap_query)` (linux/fs.h).
const PROCMAP_QUERY: u32 =
    (3 << 30) | ((core::mem::size_of::<k::procmap_query>() as u32) << 16) | ((k::PROCFS_IOCTL_MAGIC as u32) << 8) | 17;
const _: () = assert!(PROCMAP_QUERY == 0xc068_6611);

struct ProcmapQuery<'a>(&'a mut k::procmap_query);

// SAFETY: PROCMAP_QUERY takes a pointer to a procmap_query whose `size` says how much of it
// the caller has; the kernel reads the query and fills in the mapping (no name or build id is
// asked for: their sizes are 0, so it writes nothing else).
unsafe impl rustix::ioctl::Ioctl for ProcmapQuery<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        PROCMAP_QUERY as rustix::ioctl::Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (self.0 as *mut k::procmap_query).cast()
    }

    unsafe fn output_from_ptr(_: rustix::ioctl::IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// The mapping of process `pid` (`None`: this one) that contains `addr`, as `[start, end)`.
pub(crate) fn mapping_containing(pid: Option<i32>, addr: usize) -> Result<(usize, usize), Errno> {
    let maps = open(&ProcPath::maps(pid), false)?;
    let q = query_mapping(&maps, addr, 0)?;
    Ok((q.vma_start as usize, q.vma_end as usize))
}

/// The mapping of process `pid` that contains `addr`, as `[start, end)`.
pub fn mapping_of(pid: i32, addr: usize) -> Result<(usize, usize), Errno> {
    mapping_containing(Some(pid), addr)
}

/// Calls `f(start, end)` for every mapping of process `pid` that starts in `[lo, hi)` and
/// can be read, written or executed, in address order: a few `PROCMAP_QUERY` calls, one per
/// mapping, instead of the kernel formatting the whole of `/proc/PID/maps` (hundreds of
/// lines for a server, most of them outside the range).
pub fn for_each_mapping_in(pid: i32, lo: usize, hi: usize, mut f: impl FnMut(usize, usize)) -> Result<(), Errno> {
    let maps = open(&ProcPath::maps(Some(pid)), false)?;
    let accessible = u64::from(k::procmap_query_flags::PROCMAP_QUERY_VMA_READABLE as u32)
        | u64::from(k::procmap_query_flags::PROCMAP_QUERY_VMA_WRITABLE as u32)
        | u64::from(k::procmap_query_flags::PROCMAP_QUERY_VMA_EXECUTABLE as u32);
    let next = k::procmap_query_flags::PROCMAP_QUERY_COVERING_OR_NEXT_VMA as u64;
    let mut at = lo;
    while at < hi {
        let q = match query_mapping(&maps, at, next) {
            Ok(q) => q,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (start, end) = (q.vma_start as usize, q.vma_end as usize);
        if start >= hi || end <= at {
            return Ok(());
        }
        if q.vma_flags & accessible != 0 {
            f(start.max(lo), end.min(hi));
        }
        at = end;
    }
    Ok(())
}

fn query_mapping(maps: &OwnedFd, addr: usize, flags: u64) -> Result<k::procmap_query, Errno> {
    let mut query = k::procmap_query {
        size: core::mem::size_of::<k::procmap_query>() as u64,
        query_flags: flags,
        query_addr: addr as u64,
        vma_start: 0,
        vma_end: 0,
        vma_flags: 0,
        vma_page_size: 0,
        vma_offset: 0,
        inode: 0,
        dev_major: 0,
        dev_minor: 0,
        vma_name_size: 0,
        build_id_size: 0,
        vma_name_addr: 0,
        build_id_addr: 0,
    };
    // SAFETY: `query` is a live procmap_query of the size it says; see the Ioctl impl.
    unsafe { rustix::ioctl::ioctl(maps, ProcmapQuery(&mut query)) }?;
    Ok(query)
}

/// `_IOWR('f', 16, struct pm_scan_arg)` (fs.h); no crate defines it.
const PAGEMAP_SCAN: u32 =
    (3 << 30) | ((core::mem::size_of::<k::pm_scan_arg>() as u32) << 16) | ((b'f' as u32) << 8) | 16;
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

struct PagemapScan<'a>(&'a mut k::pm_scan_arg);

// SAFETY: PAGEMAP_SCAN takes a pointer to a pm_scan_arg, which the kernel reads and updates
// (walk_end), and returns the number of page_region entries it filled.
unsafe impl rustix::ioctl::Ioctl for PagemapScan<'_> {
    type Output = usize;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        PAGEMAP_SCAN as rustix::ioctl::Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (self.0 as *mut k::pm_scan_arg).cast()
    }

    unsafe fn output_from_ptr(out: rustix::ioctl::IoctlOutput, _: *mut c_void) -> rustix::io::Result<usize> {
        Ok(out.max(0) as usize)
    }
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Calls `f(start, end)` for every run of pages in [start, end) that the process whose
/// pagemap is open holds *privately*: present or swapped and not a page of a file (a page
/// it wrote in a private mapping of a memfd, or any page of an anonymous mapping), the zero
/// page excepted. These are the pages a successor must copy, and the pages a commit writes
/// back. Uses the PAGEMAP_SCAN ioctl (Linux 6.7), else reads the pagemap entries.
pub(crate) fn private_pages(
    pagemap: BorrowedFd<'_>,
    start: usize,
    end: usize,
    mut f: impl FnMut(usize, usize),
) -> Result<(), Errno> {
    match scan_private_pages(pagemap, start, end, &mut f) {
        Err(Errno::NOTTY) | Err(Errno::INVAL) => read_private_pages(pagemap, start, end, &mut f),
        other => other,
    }
}

fn scan_private_pages(
    pagemap: BorrowedFd<'_>,
    start: usize,
    end: usize,
    f: &mut impl FnMut(usize, usize),
) -> Result<(), Errno> {
    let not = u64::from(k::PAGE_IS_FILE | k::PAGE_IS_PFNZERO);
    let mut regions = [k::page_region { start: 0, end: 0, categories: 0 }; 128];
    let mut at = start as u64;
    while at < end as u64 {
        let mut arg = k::pm_scan_arg {
            size: core::mem::size_of::<k::pm_scan_arg>() as u64,
            flags: 0,
            start: at,
            end: end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: not,
            category_mask: not,
            category_anyof_mask: u64::from(k::PAGE_IS_PRESENT | k::PAGE_IS_SWAPPED),
            return_mask: u64::from(k::PAGE_IS_PRESENT | k::PAGE_IS_SWAPPED),
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions.len()`
        // writable page_regions, alive for the call.
        let n = unsafe { rustix::ioctl::ioctl(pagemap, PagemapScan(&mut arg)) }?;
        for r in regions.iter().take(n) {
            f(r.start as usize, r.end as usize);
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(())
}

fn read_private_pages(
    pagemap: BorrowedFd<'_>,
    start: usize,
    end: usize,
    f: &mut impl FnMut(usize, usize),
) -> Result<(), Errno> {
    let mut entries = [0u8; 8 * 512];
    let mut run: Option<(usize, usize)> = None;
    let mut page = start / crate::geometry::PAGE_SIZE;
    let last = end.div_ceil(crate::geometry::PAGE_SIZE);
    while page < last {
        let n = (last - page).min(entries.len() / 8);
        let buf = entries.get_mut(..n * 8).unwrap_or_default();
        let got = rustix::io::pread(pagemap, &mut *buf, page as u64 * 8)?;
        if got < 8 {
            break;
        }
        for (i, e) in buf.chunks_exact(8).take(got / 8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(e);
            let e = u64::from_ne_bytes(word);
            let addr = (page + i) * crate::geometry::PAGE_SIZE;
            let private = e & (PM_PRESENT | PM_SWAPPED) != 0 && e & PM_FILE == 0;
            run = match (run, private) {
                (Some((s, e)), true) if e == addr => Some((s, addr + crate::geometry::PAGE_SIZE)),
                (Some((s, e)), true) => {
                    f(s, e);
                    Some((addr, addr + crate::geometry::PAGE_SIZE))
                }
                (None, true) => Some((addr, addr + crate::geometry::PAGE_SIZE)),
                (Some((s, e)), false) => {
                    f(s, e);
                    None
                }
                (None, false) => None,
            };
        }
        page += got / 8;
    }
    if let Some((s, e)) = run {
        f(s, e);
    }
    Ok(())
}

/// Copies [addr, addr + len) of process `pid` to the same addresses here
/// (`process_vm_readv`); returns the bytes copied.
///
/// # Safety
/// The range is mapped writable here and nothing else uses it meanwhile.
pub(crate) unsafe fn copy_from_process(pid: i32, addr: usize, len: usize) -> Result<usize, Errno> {
    let mut done = 0;
    while done < len {
        let iov = libc::iovec { iov_base: (addr + done) as *mut c_void, iov_len: len - done };
        // SAFETY: the local iovec covers memory the caller owns and keeps mapped; the remote
        // one is only read by the kernel in the other process.
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                pid as libc::c_long,
                &iov as *const libc::iovec,
                1 as libc::c_long,
                &iov as *const libc::iovec,
                1 as libc::c_long,
                0 as libc::c_long,
            )
        };
        if n <= 0 {
            return Err(if n == 0 { Errno::FAULT } else { Errno::from_raw_os_error(errno()) });
        }
        done += n as usize;
    }
    Ok(done)
}

/// Reads `buf.len()` bytes at `addr` of process `pid` into `buf`.
pub(crate) fn read_remote(pid: i32, addr: usize, buf: &mut [u8]) -> Result<(), Errno> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut c_void, iov_len: buf.len() };
    // SAFETY: the local iovec covers `buf`, which we hold mutably; the remote one is only
    // read by the kernel in the other process.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            pid as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_long,
            &remote as *const libc::iovec,
            1 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if n < 0 {
        return Err(Errno::from_raw_os_error(errno()));
    }
    if n as usize != buf.len() {
        return Err(Errno::FAULT);
    }
    Ok(())
}

/// Writes [addr, addr + len) of this process into `fd` at `offset`.
///
/// # Safety
/// The range is mapped readable and nobody writes it meanwhile.
pub(crate) unsafe fn write_to_file(fd: BorrowedFd<'_>, addr: usize, len: usize, offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < len {
        // SAFETY: the kernel reads `len - done` bytes the caller keeps mapped.
        let n = unsafe {
            libc::syscall(
                libc::SYS_pwrite64,
                fd.as_raw_fd() as libc::c_long,
                (addr + done) as *const c_void,
                (len - done) as libc::size_t,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(if n == 0 { Errno::IO } else { Errno::from_raw_os_error(errno()) });
        }
        done += n as usize;
    }
    Ok(())
}

/// Moves the mapping [from, from + len) to `to`, replacing what is there.
///
/// # Safety
/// The caller owns both ranges.
pub(crate) unsafe fn move_mapping(from: usize, len: usize, to: usize) -> Result<(), Errno> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        rustix::mm::mremap_fixed(from as *mut c_void, len, len, rustix::mm::MremapFlags::MAYMOVE, to as *mut c_void)
    }
    .map(|_| ())
}

/// Grows the mapping that ends at `end` by `grow` bytes in place (`mremap` without
/// `MREMAP_MAYMOVE`): the new pages continue it (same backing, file offsets following on).
/// Fails with `ENOMEM` if anything is mapped in [end, end + grow) or the address-space limit
/// (`RLIMIT_AS`) refuses; nothing changes then.
///
/// # Safety
/// The caller owns the mapping ending at `end` and the range above it.
pub(crate) unsafe fn extend(end: usize, grow: usize) -> Result<(), Errno> {
    use crate::geometry::PAGE_SIZE;
    // Any address inside the mapping works if the old length reaches its end: the kernel
    // then expands that mapping (one page before `end` is always inside it).
    // SAFETY: guaranteed by the caller; without MAYMOVE nothing moves.
    let got = unsafe {
        rustix::mm::mremap(
            (end - PAGE_SIZE) as *mut c_void,
            PAGE_SIZE,
            PAGE_SIZE + grow,
            rustix::mm::MremapFlags::empty(),
        )
    }?;
    if got as usize != end - PAGE_SIZE {
        return Err(Errno::NOMEM);
    }
    Ok(())
}

/// The calling thread's id.
pub(crate) fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno, which libc's syscall() just set.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths() {
        let p = ProcPath::map_files(Some(1234), 0x1000_0000_0000, 0x1010_0000_0000);
        assert_eq!(p.as_bytes(), b"/proc/1234/map_files/100000000000-101000000000");
        assert_eq!(p.as_c_str().to_bytes(), p.as_bytes());
        assert_eq!(ProcPath::pagemap(None).as_bytes(), b"/proc/self/pagemap");
        assert_eq!(ProcPath::map_files(None, 0, 0xf).as_bytes(), b"/proc/self/map_files/0-f");
    }

    #[test]
    fn private_pages_of_a_private_file_mapping_are_the_written_ones() {
        let len = 64 * 4096;
        let fd = memfd(len as u64).unwrap();
        // SAFETY: test mapping at an address the kernel picks.
        let addr = unsafe {
            rustix::mm::mmap(core::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE, &fd, 0)
        }
        .unwrap() as usize;
        // SAFETY: our own fresh mapping.
        unsafe {
            core::ptr::write_volatile((addr + 3 * 4096) as *mut u8, 1);
            core::ptr::write_volatile((addr + 4 * 4096) as *mut u8, 1);
            core::ptr::write_volatile((addr + 10 * 4096) as *mut u8, 1);
            let _ = core::ptr::read_volatile((addr + 20 * 4096) as *const u8); // a file page: not private
        }
        let pm = open(&ProcPath::pagemap(None), false).unwrap();
        let pm = rustix::fd::AsFd::as_fd(&pm);
        for scan in [true, false] {
            let mut runs = std::vec::Vec::new();
            if scan {
                private_pages(pm, addr, addr + len, |s, e| runs.push((s - addr, e - addr))).unwrap();
            } else {
                read_private_pages(pm, addr, addr + len, &mut |s, e| runs.push((s - addr, e - addr))).unwrap();
            }
            assert_eq!(runs, [(3 * 4096, 5 * 4096), (10 * 4096, 11 * 4096)], "scan {scan}");
        }
        // SAFETY: our own mapping.
        unsafe { unmap(addr, len) };
    }

    #[test]
    fn a_split_mapping_is_reopened_by_the_part_that_holds_its_start() {
        let len = 4 * 4096;
        let fd = memfd(len as u64).unwrap();
        // SAFETY: test mapping at an address the kernel picks.
        let addr = unsafe {
            rustix::mm::mmap(core::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0)
        }
        .unwrap() as usize;
        drop(fd);
        // other flags on the upper half split the mapping in two
        // SAFETY: our own mapping.
        unsafe { rustix::mm::mprotect((addr + 2 * 4096) as *mut c_void, 2 * 4096, rustix::mm::MprotectFlags::READ) }
            .unwrap();
        assert_eq!(mapping_containing(None, addr + 4096), Ok((addr, addr + 2 * 4096)));
        assert_eq!(open(&ProcPath::map_files(None, addr, addr + len), false).err(), Some(Errno::NOENT));
        let file =
            open_map_files(None, addr, addr + len, false).expect("/proc/self/map_files needs CAP_CHECKPOINT_RESTORE");
        assert_eq!(rustix::fs::fstat(&file).unwrap().st_size, len as i64, "the memfd behind the mapping");
        // SAFETY: our own mapping.
        unsafe { unmap(addr, len) };
    }
}
