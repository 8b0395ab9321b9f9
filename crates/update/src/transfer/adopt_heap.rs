//! The old version's heap, adopted by the new process (issue 13, "adoption, not copying").
//!
//! The new version's heap kept the old version's slots free (`MCR_HEAP_AVOID`). Before the
//! trace, each old region is mapped in the new process at its address (the runtime's
//! `MapOldHeap`), segment by segment as the old process maps it:
//!
//! - a segment the old process maps from a memfd (the heap's own, `/memfd:mcr-heap`) is
//!   mapped copy-on-write over the same memfd, opened through /proc/OLD/map_files and
//!   handed to the new runtime: its pages are not copied, and the new process's writes stay
//!   its own, so the old version stays exactly as it was (a rollback needs nothing). When
//!   the old process maps it shared (no other process maps that memfd: a fork freezes the
//!   heap), the new runtime writes its changes back and maps it shared at commit
//!   (`ShareAdoptedHeap`): the memory is held once, and the next update maps it again. When
//!   it maps it copy-on-write (frozen by a fork; the processes forked see the same memfd),
//!   the pages the old process wrote since (its anonymous copies) are copied;
//! - an anonymous segment (a process that cannot reopen its memfds, a sandbox) is mapped
//!   anonymous and every page the old process holds there is copied (the pages it holds,
//!   found with the pagemap; the new process cannot address the old one, which lives in
//!   another PID namespace, so the update copies).
//!
//! Then the new process adopts the regions: their live blocks are its own from then on.
//! The trace leaves every block whose type did not grow where it is
//! (`mcr_tracer::Pair::adopted`), rewriting only what changed, and frees the old blocks it
//! copied elsewhere or no longer reaches. The old process is only read.
//!
//! Not adopted (every block goes to a fresh block, as before): a process forked after
//! startup (its respawned counterpart inherited its new parent's heap, adopted regions
//! included), and a new process whose heap is where the old one's is (the avoid list was
//! not honoured: a warning says so).

use super::descriptors::hand_over;
use super::runtime::NewProcess;
use super::TransferError;
use mcr_alloc::remote::RegionLayout;
use mcr_alloc::{geometry::slot_base, geometry::slot_of, SlotSet, SLOT_SIZE, SPAN_SIZE};
use mcr_heap::ReadMemory;
use mcr_procfs::Mapping;
use mcr_protocol::{OldHeapRegion, OldSegmentSource, RuntimeCommandKind};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Bytes copied per read and write.
const CHUNK: usize = 1 << 20;

/// The old regions the new process adopted.
pub(crate) struct AdoptedHeap {
    slots: SlotSet,
    pub regions: usize,
    /// Bytes of the old process's pages copied into anonymous memory.
    pub bytes: u64,
    /// Bytes the old memfds held in the segments mapped from them (shared, not copied).
    pub mapped: u64,
}

impl AdoptedHeap {
    /// Whether old address `addr` is in an adopted region (there at the same address).
    pub fn contains(&self, addr: u64) -> bool {
        usize::try_from(addr).ok().and_then(slot_of).is_some_and(|s| self.slots.contains(s))
    }
}

/// Why the old heap is not adopted (the transfer then copies every block, as before).
pub(crate) enum NotAdopted {
    /// The old process has no heap region.
    Nothing,
    /// The new process's own heap is where the old one's is.
    Overlap(String),
}

/// Map, fill and adopt old process `old_host`'s heap regions in `next` (`new_mem`: its
/// /proc/PID/mem).
pub(crate) fn adopt(
    pid: i32,
    old_host: i32,
    old_mem: &dyn ReadMemory,
    next: &mut NewProcess<'_>,
    new_mem: &File,
) -> Result<Result<AdoptedHeap, NotAdopted>, TransferError> {
    let heap_error = |e: mcr_heap::MemoryError| TransferError::Memory(e);
    let regions = mcr_heap::heap_regions(old_host).map_err(heap_error)?;
    if regions.is_empty() {
        return Ok(Err(NotAdopted::Nothing));
    }
    let new_slots = mcr_heap::heap_slots(next.host_pid).map_err(heap_error)?;
    if let Some(slot) = regions.iter().map(|(s, _)| *s).find(|&s| new_slots.contains(s)) {
        return Ok(Err(NotAdopted::Overlap(format!(
            "process {pid}: the new version's heap uses slot {slot}, where the old version's is: its state is \
             copied block by block instead of adopted"
        ))));
    }
    let mut segments = old_segments(pid, old_host, &regions)?;
    let request = regions
        .iter()
        .map(|(slot, l)| OldHeapRegion {
            slot: *slot as u64,
            spans: l.extent.spans as u64,
            caches: l.extent.caches as u64,
            segments: l.segment_starts().to_vec(),
            sources: segments.iter().filter(|s| s.slot == *slot).map(|s| s.source).collect(),
        })
        .collect();
    let mapped = segments.iter().map(|s| s.memfd_bytes).sum();
    let memfds: Vec<OwnedFd> = segments.iter_mut().filter_map(|s| s.memfd.take()).collect();
    if memfds.is_empty() {
        next.runtime(RuntimeCommandKind::MapOldHeap { regions: request, socket: None })?;
    } else {
        hand_over(old_host, memfds, next, |socket| RuntimeCommandKind::MapOldHeap {
            regions: request,
            socket: Some(socket),
        })?;
    }
    let slots: Vec<u64> = regions.iter().map(|(s, _)| *s as u64).collect();
    let copied = copy_pages(pid, old_host, old_mem, new_mem, &regions, &segments);
    let adopted = copied.and_then(|bytes| {
        next.runtime(RuntimeCommandKind::AdoptOldHeap { slots: slots.clone(), release: false })?;
        Ok(bytes)
    });
    match adopted {
        Ok(bytes) => {
            let mut set = SlotSet::new();
            for (slot, _) in &regions {
                set.insert(*slot);
            }
            Ok(Ok(AdoptedHeap { slots: set, regions: regions.len(), bytes, mapped }))
        }
        Err(e) => {
            // Give the mapped regions up (a failed adoption already did).
            let _ = next.runtime(RuntimeCommandKind::AdoptOldHeap { slots, release: true });
            Err(e)
        }
    }
}

/// One segment of an old region, as the new process is to map it.
struct OldSegment {
    slot: usize,
    /// Its address range.
    start: u64,
    end: u64,
    source: OldSegmentSource,
    /// The memfd behind it (for a memfd source), opened through /proc/OLD/map_files.
    memfd: Option<OwnedFd>,
    /// Bytes the memfd holds (its allocated blocks), at most the segment's mapped size.
    memfd_bytes: u64,
}

/// How each segment of `regions` (in order, region by region) comes to the new process:
/// from the old memfd behind it when the old process maps it from one, copied otherwise.
fn old_segments(pid: i32, old_host: i32, regions: &[(usize, RegionLayout)]) -> Result<Vec<OldSegment>, TransferError> {
    let maps_error = |source| TransferError::Mappings { pid, source };
    let maps = mcr_procfs::maps::read(old_host).map_err(maps_error)?;
    let mut out = Vec::new();
    for (slot, layout) in regions {
        for (start, end) in segment_ranges(*slot, layout) {
            let mappings = mappings_of(&maps, *slot, layout, start, end);
            let source = segment_source(*slot, &mappings);
            let (memfd, memfd_bytes) = match (source.is_memfd(), mappings.first()) {
                (true, Some(first)) => {
                    let memfd = open_memfd(old_host, &maps, first, source == OldSegmentSource::SharedMemfd)
                        .map_err(maps_error)?;
                    let held = memfd.metadata().map_or(0, |m| m.blocks() * 512);
                    let size: u64 = mappings.iter().map(|m| m.len()).sum();
                    (Some(OwnedFd::from(memfd)), held.min(size))
                }
                _ => (None, 0),
            };
            out.push(OldSegment { slot: *slot, start, end, source, memfd, memfd_bytes });
        }
    }
    Ok(out)
}

/// The address ranges of each segment of the region in `slot`, in order.
fn segment_ranges(slot: usize, layout: &RegionLayout) -> impl Iterator<Item = (u64, u64)> + '_ {
    let base = slot_base(slot) as u64;
    let starts = layout.segment_starts();
    starts.iter().enumerate().map(move |(i, &s)| {
        let end = starts.get(i + 1).map_or(SLOT_SIZE as u64, |&e| e as u64 * SPAN_SIZE as u64);
        (base + s as u64 * SPAN_SIZE as u64, base + end)
    })
}

/// The old process's mappings over the mapped pieces of segment [start, end) of the region
/// in `slot`, clipped to them (what dirty tracking split is several mappings).
fn mappings_of(maps: &[Mapping], slot: usize, layout: &RegionLayout, start: u64, end: u64) -> Vec<Mapping> {
    let base = slot_base(slot) as u64;
    let pieces = layout.extent.pieces_within((start - base) as usize, (end - base) as usize);
    let mut out = Vec::new();
    for (s, e) in pieces.map(|(s, e)| (base + s as u64, base + e as u64)) {
        for m in maps.iter().filter(|m| m.start < e && s < m.end) {
            let (from, to) = (m.start.max(s), m.end.min(e));
            out.push(Mapping { start: from, end: to, offset: m.offset + (from - m.start), ..m.clone() });
        }
    }
    out
}

/// A segment maps from its memfd when every mapping over it shows the same heap memfd at
/// file offset = offset in the region (how the heap maps its segments), all shared or all
/// private; anything else (anonymous memory, a piece a failed freeze copied) is copied.
fn segment_source(slot: usize, mappings: &[Mapping]) -> OldSegmentSource {
    let base = slot_base(slot) as u64;
    let Some(first) = mappings.first() else { return OldSegmentSource::Copied };
    let from_memfd = mappings.iter().all(|m| {
        m.path.starts_with("/memfd:mcr-heap")
            && m.inode == first.inode
            && m.private == first.private
            && m.readable
            && m.writable
            && m.offset == m.start - base
    });
    match (from_memfd, first.private) {
        (false, _) => OldSegmentSource::Copied,
        (true, true) => OldSegmentSource::PrivateMemfd,
        (true, false) => OldSegmentSource::SharedMemfd,
    }
}

/// The memfd behind old mapping `m` (part of a mapping of the old process), through
/// /proc/OLD/map_files of the whole mapping that holds its start; writable for a shared
/// segment (the new process writes its pages back into it at commit).
fn open_memfd(old_host: i32, maps: &[Mapping], m: &Mapping, write: bool) -> std::io::Result<File> {
    let whole = maps.iter().find(|w| w.contains(m.start)).unwrap_or(m);
    let path = mcr_procfs::Process::Pid(old_host).file(&format!("map_files/{:x}-{:x}", whole.start, whole.end));
    File::options().read(true).write(write).open(path)
}

/// Copy the pages of `segments` the new process does not map from the old memfds: in an
/// anonymous segment every page the old process holds (in memory or swapped out: a page
/// never touched reads as zeroes, as it does in the fresh mapping), in one mapped
/// copy-on-write over its memfd only the old process's own copies (the others are the
/// memfd's, which the new process maps too), in a shared one nothing. To the same addresses
/// in the new process; returns the bytes copied.
fn copy_pages(
    pid: i32,
    old_host: i32,
    old_mem: &dyn ReadMemory,
    new_mem: &File,
    regions: &[(usize, RegionLayout)],
    segments: &[OldSegment],
) -> Result<u64, TransferError> {
    use mcr_procfs::pagemap::{Pagemap, FILE_OR_SHARED, PRESENT, SWAPPED};
    const PAGE: u64 = 4096;
    let maps_error = |source| TransferError::Mappings { pid, source };
    let mut pagemap = Pagemap::open(mcr_procfs::Process::Pid(old_host)).map_err(maps_error)?;
    // Where no swap is on, a "swapped" entry is a userfaultfd write-protect marker on a page
    // never touched (dirty tracking arms them): zeroes, nothing to copy.
    let swap_on = mcr_procfs::read_file(std::path::Path::new("/proc/swaps")).map_or(true, |s| s.lines().count() > 1);
    let swapped = if swap_on { SWAPPED } else { 0 };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (slot, layout) in regions {
        let base = slot_base(*slot) as u64;
        for seg in segments.iter().filter(|s| s.slot == *slot) {
            let wanted = |e: u64| match seg.source {
                OldSegmentSource::Copied => e & (PRESENT | swapped) != 0,
                OldSegmentSource::PrivateMemfd => (e & PRESENT != 0 && e & FILE_OR_SHARED == 0) || e & swapped != 0,
                OldSegmentSource::SharedMemfd => false,
            };
            if seg.source == OldSegmentSource::SharedMemfd {
                continue;
            }
            for (s, e) in layout.extent.pieces_within((seg.start - base) as usize, (seg.end - base) as usize) {
                let (first, count) = ((base + s as u64) / PAGE, (e - s) as u64 / PAGE);
                let mut done = 0;
                while done < count {
                    let n = (count - done).min(1 << 16);
                    let entries: Vec<u64> = pagemap.entries(first + done, n as usize).map_err(maps_error)?.collect();
                    for (i, e) in entries.into_iter().enumerate() {
                        if !wanted(e) {
                            continue;
                        }
                        let at = (first + done + i as u64) * PAGE;
                        match runs.last_mut() {
                            Some(r) if r.1 == at => r.1 += PAGE,
                            _ => runs.push((at, at + PAGE)),
                        }
                    }
                    done += n;
                }
            }
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0u64;
    for (start, end) in runs {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            let bytes = match old_mem.slice(at, n) {
                Some(mapped) => mapped,
                None => {
                    old_mem.read(at, &mut buf[..n])?;
                    &buf[..n]
                }
            };
            new_mem.write_all_at(bytes, at).map_err(|source| TransferError::NewMemory { pid, source })?;
            at += n as u64;
            copied += n as u64;
        }
    }
    Ok(copied)
}
