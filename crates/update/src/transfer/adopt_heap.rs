//! The old version's heap, adopted by the new process (issue 13, "adoption, not copying").
//!
//! The new version's heap kept the old version's slots free (`MCR_HEAP_AVOID`). Before the
//! trace, each old region is mapped in the new process at its address (the runtime's
//! `MapOldHeap`), its pages are copied there from the old process (the pages it holds,
//! found with PAGEMAP_SCAN; the new process cannot address the old one, which lives in
//! another PID namespace, so the update copies), and the new process adopts the regions:
//! their live blocks are its own from then on. The trace then leaves every block whose
//! type did not grow where it is (`mcr_tracer::Pair::adopted`), rewriting only what changed,
//! and frees the old blocks it copied elsewhere or no longer reaches. The old process is
//! only read: a rollback needs nothing.
//!
//! Not adopted (every block goes to a fresh block, as before): a process forked after
//! startup (its respawned counterpart inherited its new parent's heap, adopted regions
//! included), and a new process whose heap is where the old one's is (the avoid list was
//! not honoured: a warning says so).

use super::runtime::NewProcess;
use super::TransferError;
use mcr_alloc::{geometry::slot_of, SlotSet};
use mcr_heap::ReadMemory;
use mcr_protocol::{OldHeapRegion, RuntimeCommandKind};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes copied per read and write.
const CHUNK: usize = 1 << 20;

/// The old regions the new process adopted.
pub(crate) struct AdoptedHeap {
    slots: SlotSet,
    /// Regions and bytes copied.
    pub regions: usize,
    pub bytes: u64,
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
    let request = regions
        .iter()
        .map(|(slot, l)| OldHeapRegion {
            slot: *slot as u64,
            spans: l.extent.spans as u64,
            caches: l.extent.caches as u64,
            segments: l.segment_starts().to_vec(),
        })
        .collect();
    next.runtime(RuntimeCommandKind::MapOldHeap { regions: request })?;
    let slots: Vec<u64> = regions.iter().map(|(s, _)| *s as u64).collect();
    let copied = copy_pages(pid, old_host, old_mem, new_mem, &regions);
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
            Ok(Ok(AdoptedHeap { slots: set, regions: regions.len(), bytes }))
        }
        Err(e) => {
            // Give the mapped regions up (a failed adoption already did).
            let _ = next.runtime(RuntimeCommandKind::AdoptOldHeap { slots, release: true });
            Err(e)
        }
    }
}

/// Copy the pages the old process holds in its regions (in memory or swapped out: a page
/// never touched reads as zeroes, as it does in the fresh mapping) to the same addresses in
/// the new process. Returns the bytes copied.
fn copy_pages(
    pid: i32,
    old_host: i32,
    old_mem: &dyn ReadMemory,
    new_mem: &File,
    regions: &[(usize, mcr_alloc::remote::RegionLayout)],
) -> Result<u64, TransferError> {
    use mcr_procfs::pagemap::{Pagemap, PRESENT, SWAPPED};
    const PAGE: u64 = 4096;
    let maps_error = |source| TransferError::Mappings { pid, source };
    let mut pagemap = Pagemap::open(mcr_procfs::Process::Pid(old_host)).map_err(maps_error)?;
    // Where no swap is on, a "swapped" entry is a userfaultfd write-protect marker on a page
    // never touched (dirty tracking arms them): zeroes, nothing to copy.
    let swap_on = std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1);
    let held = PRESENT | if swap_on { SWAPPED } else { 0 };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (slot, layout) in regions {
        let base = mcr_alloc::geometry::slot_base(*slot) as u64;
        for (s, e) in layout.extent.pieces() {
            let (first, count) = ((base + s as u64) / PAGE, (e - s) as u64 / PAGE);
            let mut done = 0;
            while done < count {
                let n = (count - done).min(1 << 16);
                let entries: Vec<u64> = pagemap.entries(first + done, n as usize).map_err(maps_error)?.collect();
                for (i, e) in entries.into_iter().enumerate() {
                    if e & held == 0 {
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
