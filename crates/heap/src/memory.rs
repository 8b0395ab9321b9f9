//! Reading another process's memory (never writing it: the old version of an update must
//! be able to resume untouched) and finding the regions worth scanning.

use mcr_procfs::Mapping;
use std::fs::File;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot open the memory of process {pid}: {source}")]
    Open { pid: i32, source: std::io::Error },
    #[error("cannot read {len} bytes at {addr:#x} in process {pid}: {source}")]
    Read { pid: i32, addr: u64, len: usize, source: std::io::Error },
    #[error("cannot read the memory map of process {pid}: {source}")]
    Maps { pid: i32, source: std::io::Error },
}

/// Read access to an address space (a live process, or a buffer in tests).
pub trait ReadMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// `len` bytes at `addr` without a copy, when this reader holds them in memory.
    fn slice(&self, _addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Like [`ReadMemory::read`], for memory read once: a reader that keeps what it reads
    /// for later reads may skip keeping this.
    fn read_once(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.read(addr, buf)
    }

    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

/// A process's memory through /proc/PID/mem (needs ptrace-read permission: root, or the
/// same user without Yama restrictions).
pub struct ProcessMemory {
    pid: i32,
    mem: File,
}

impl ProcessMemory {
    pub fn open(pid: i32) -> Result<Self, MemoryError> {
        let mem = File::open(mcr_procfs::Process::Pid(pid).file("mem"))
            .map_err(|source| MemoryError::Open { pid, source })?;
        Ok(Self { pid, mem })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl ReadMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read_exact_at(buf, addr).map_err(|source| MemoryError::Read {
            pid: self.pid,
            addr,
            len: buf.len(),
            source,
        })
    }
}

/// Memory read in pieces (sorted by address), in front of the live source: a piece is
/// read whole the first time something in it is read, and reads inside a piece are then
/// copies, the rest go to the source.
pub struct Snapshot<'m> {
    source: &'m dyn ReadMemory,
    pieces: Vec<Piece>,
}

struct Piece {
    start: u64,
    len: usize,
    /// Its bytes once read (`None`: the source could not read it whole).
    bytes: std::cell::OnceCell<Option<Vec<u8>>>,
}

impl<'m> Snapshot<'m> {
    /// Over pieces `[start, end)` read when first needed.
    pub fn lazy(source: &'m dyn ReadMemory, extents: &[(u64, u64)]) -> Self {
        let pieces = extents
            .iter()
            .filter(|(s, e)| e > s)
            .map(|&(start, end)| Piece { start, len: (end - start) as usize, bytes: Default::default() })
            .collect();
        Self::sorted(source, pieces)
    }

    fn loaded<'p>(&self, p: &'p Piece) -> Option<&'p [u8]> {
        p.bytes
            .get_or_init(|| {
                let mut b = vec![0u8; p.len];
                self.source.read(p.start, &mut b).ok().map(|()| b)
            })
            .as_deref()
    }

    fn sorted(source: &'m dyn ReadMemory, mut pieces: Vec<Piece>) -> Self {
        pieces.sort_by_key(|p| p.start);
        Self { source, pieces }
    }

    /// The piece holding `[addr, addr + len)`, and the offset there.
    fn piece(&self, addr: u64, len: usize) -> Option<(&Piece, usize)> {
        let i = self.pieces.partition_point(|p| p.start <= addr);
        let p = self.pieces.get(i.checked_sub(1)?)?;
        let off = usize::try_from(addr - p.start).ok()?;
        (off.checked_add(len)? <= p.len).then_some((p, off))
    }
}

impl ReadMemory for Snapshot<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if let Some(src) = self.slice(addr, buf.len()) {
            buf.copy_from_slice(src);
            return Ok(());
        }
        self.source.read(addr, buf)
    }

    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let Some((p, off)) = self.piece(addr, len) else { return self.source.slice(addr, len) };
        // A piece read already; else memory the source holds (a mapped memfd: no copy);
        // else the piece, read now.
        match p.bytes.get() {
            Some(read) => read.as_deref()?.get(off..off + len),
            None => self.source.slice(addr, len).or_else(|| self.loaded(p)?.get(off..off + len)),
        }
    }

    fn read_once(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let held = match self.piece(addr, buf.len()) {
            Some((p, off)) => p.bytes.get().and_then(|b| b.as_deref()).and_then(|b| b.get(off..off + buf.len())),
            None => self.source.slice(addr, buf.len()),
        };
        match held {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => self.source.read(addr, buf),
        }
    }
}

/// Another process's shared file mappings (the heap's memfds), mapped read-only into
/// this one through /proc/PID/map_files, in front of the process's memory: reading them
/// is a memory access, where /proc/PID/mem would copy every byte (a heap of 177 MB took
/// ~0.5 s to read that way). What cannot be mapped (private memory: a forked process's
/// heap differs from its memfd; no permission to open map_files) is read from `source`.
/// Pages are only mapped, never populated: only what is read is faulted in.
pub struct MappedView<'m> {
    source: &'m dyn ReadMemory,
    /// Sorted by start.
    maps: Vec<ReadOnlyMapping>,
}

/// One mapping made by [`MappedView`]: `len` bytes at `ptr` that are `start..` in the
/// other process.
struct ReadOnlyMapping {
    start: u64,
    len: usize,
    ptr: *const u8,
}

impl Drop for ReadOnlyMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is a mapping this struct made and owns; no slice of it
        // outlives the MappedView that holds it (slices borrow the view).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl<'m> MappedView<'m> {
    /// Map the shared file mappings among `regions` of process `pid` that `wanted` selects.
    pub fn open(pid: i32, regions: &[Region], wanted: impl Fn(&Region) -> bool, source: &'m dyn ReadMemory) -> Self {
        let mut maps = Vec::new();
        for r in regions.iter().filter(|r| !r.private && r.readable && r.end > r.start && wanted(r)) {
            let path = mcr_procfs::Process::Pid(pid).file(&format!("map_files/{:x}-{:x}", r.start, r.end));
            let Ok(file) = File::open(path) else { continue };
            let len = (r.end - r.start) as usize;
            let Ok(offset) = libc::off_t::try_from(r.offset) else { continue };
            // SAFETY: a fresh read-only shared mapping of a file we opened, at an address
            // the kernel picks; nothing else refers to it. Its other user is a process the
            // update holds paused (quiesced) while it reads it, so the bytes do not change
            // under the slices this view lends.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    offset,
                )
            };
            if ptr == libc::MAP_FAILED {
                continue;
            }
            maps.push(ReadOnlyMapping { start: r.start, len, ptr: ptr as *const u8 });
        }
        maps.sort_by_key(|m| m.start);
        Self { source, maps }
    }
}

impl ReadMemory for MappedView<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        match self.slice(addr, buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => self.source.read(addr, buf),
        }
    }

    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let i = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(i.checked_sub(1)?)?;
        let off = usize::try_from(addr - m.start).ok()?;
        if off.checked_add(len)? > m.len {
            return None;
        }
        // SAFETY: `off + len <= m.len`, inside the live read-only mapping `m`, which lives
        // as long as `self` (the returned slice borrows `self`).
        Some(unsafe { std::slice::from_raw_parts(m.ptr.add(off), len) })
    }
}

/// One mapping of /proc/PID/maps (the shared [`Mapping`], under the field names the heap
/// scan and the tracer use: `name` is its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub private: bool,
    pub offset: u64,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory.
    pub name: String,
}

impl From<Mapping> for Region {
    fn from(m: Mapping) -> Region {
        Region {
            start: m.start,
            end: m.end,
            readable: m.readable,
            writable: m.writable,
            executable: m.executable,
            private: m.private,
            offset: m.offset,
            inode: m.inode,
            name: m.path,
        }
    }
}

impl Region {
    pub fn parse(line: &str) -> Option<Region> {
        mcr_procfs::maps::parse_line(line).map(Region::from)
    }

    pub fn read_all(pid: i32) -> Result<Vec<Region>, MemoryError> {
        let maps = mcr_procfs::maps::read(pid).map_err(|source| MemoryError::Maps { pid, source })?;
        Ok(maps.into_iter().map(Region::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let heap =
            Region::parse("555555559000-55555557a000 rw-p 00000000 00:00 0                          [heap]").unwrap();
        assert_eq!((heap.start, heap.end, heap.name.as_str()), (0x555555559000, 0x55555557a000, "[heap]"));
        assert!(heap.private && heap.writable && heap.inode == 0);
        let data =
            Region::parse("555555558000-555555559000 rw-p 00003000 fe:01 1234567                    /srv/kvd").unwrap();
        assert_eq!((data.name.as_str(), data.offset, data.inode), ("/srv/kvd", 0x3000, 1234567));
        let shared = Region::parse("7ffff7fc0000-7ffff7fc1000 rw-s 00000000 00:01 77 /dev/zero (deleted)").unwrap();
        assert!(!shared.private);
    }
}

/// The heap slots where process `pid` has a region (a valid header at the slot's base):
/// those a successor must keep free to map them at the same address. Neither the one
/// inaccessible page a process reserves at the base of each slot its predecessor used, nor
/// a region retired since (zeroed), counts, so the set does not grow from version to version.
pub fn heap_slots(pid: i32) -> Result<mcr_alloc::SlotSet, MemoryError> {
    let mut set = mcr_alloc::SlotSet::new();
    for (slot, _) in heap_regions(pid)? {
        set.insert(slot);
    }
    Ok(set)
}

/// The heap regions of process `pid` ([`heap_slots`]), each with its layout as the
/// process maps it.
pub fn heap_regions(pid: i32) -> Result<Vec<(usize, mcr_alloc::remote::RegionLayout)>, MemoryError> {
    let slots = heap_slots_touched(pid)?;
    let mem = ProcessMemory::open(pid)?;
    Ok(slots.iter().filter_map(|slot| Some((slot, crate::index::region_layout(&mem, slot)?))).collect())
}

/// Every heap slot that a readable, writable or executable mapping of process `pid`
/// touches (a superset of [`heap_slots`]: regions are not checked): what a new version's
/// heap must keep free, asked for on the update's paused clock. Asked of the kernel
/// mapping by mapping (`PROCMAP_QUERY`, Linux 6.11: ~30 us for an nginx process), else
/// from the whole memory map (~170 us).
pub fn heap_slots_touched(pid: i32) -> Result<mcr_alloc::SlotSet, MemoryError> {
    let mut set = mcr_alloc::SlotSet::new();
    let asked = mcr_alloc::for_each_mapping_in(pid, mcr_alloc::WINDOW_BASE, mcr_alloc::WINDOW_END, |start, end| {
        let (Some(first), Some(last)) = (mcr_alloc::geometry::slot_of(start), mcr_alloc::geometry::slot_of(end - 1))
        else {
            return;
        };
        for slot in first..=last {
            set.insert(slot);
        }
    });
    if asked.is_ok() {
        return Ok(set);
    }
    let maps = mcr_procfs::maps::read(pid).map_err(|source| MemoryError::Maps { pid, source })?;
    Ok(slots_touched(&maps))
}

fn slots_touched(maps: &[mcr_procfs::Mapping]) -> mcr_alloc::SlotSet {
    let mut set = mcr_alloc::SlotSet::new();
    let window = mcr_alloc::WINDOW_BASE as u64..mcr_alloc::WINDOW_END as u64;
    for m in maps.iter().filter(|m| m.readable || m.writable || m.executable) {
        let (start, end) = (m.start.max(window.start), m.end.min(window.end));
        if start >= end {
            continue;
        }
        let (Some(first), Some(last)) =
            (mcr_alloc::geometry::slot_of(start as usize), mcr_alloc::geometry::slot_of(end as usize - 1))
        else {
            continue;
        };
        for slot in first..=last {
            set.insert(slot);
        }
    }
    set
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn the_slots_a_process_uses_leave_out_its_reservations() {
        let base = mcr_alloc::WINDOW_BASE as u64;
        let slot = mcr_alloc::SLOT_SIZE as u64;
        let maps = mcr_procfs::maps::parse(&format!(
            "{:x}-{:x} ---p 00000000 00:00 0 \n{:x}-{:x} rw-p 00000000 00:00 0 \n{:x}-{:x} rw-s 00000000 00:01 7 /memfd:mcr-heap (deleted)\n7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n",
            base,
            base + 4096,
            base + 3 * slot,
            base + 3 * slot + (10 << 20),
            base + 5 * slot - 4096,
            base + 5 * slot + 4096,
        ));
        let set = slots_touched(&maps);
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, 4, 5]);
    }

    /// What this process maps in the heap window, asked of the kernel mapping by mapping.
    #[test]
    fn the_slots_touched_are_found_without_the_memory_map() {
        let at = |slot: usize| (mcr_alloc::WINDOW_BASE + slot * mcr_alloc::SLOT_SIZE) as *mut libc::c_void;
        let map = |addr: *mut libc::c_void, len: usize, prot: i32| {
            // SAFETY: a fresh anonymous mapping at an address of the heap window, which
            // nothing in this test process uses; unmapped below.
            let p = unsafe {
                libc::mmap(addr, len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE, -1, 0)
            };
            assert_eq!(p, addr, "mmap at {addr:?}");
        };
        // Slot 7: one page; slots 9-10: a mapping across their boundary; slot 12: reserved.
        let across = (at(10) as usize - 4096) as *mut libc::c_void;
        map(at(7), 4096, libc::PROT_READ | libc::PROT_WRITE);
        map(across, 8192, libc::PROT_READ);
        map(at(12), 4096, libc::PROT_NONE);
        let set = heap_slots_touched(std::process::id() as i32).expect("query this process");
        // SAFETY: unmapping the mappings made above, which nothing refers to.
        unsafe {
            libc::munmap(at(7), 4096);
            libc::munmap(across, 8192);
            libc::munmap(at(12), 4096);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), [7, 9, 10]);
    }
}
