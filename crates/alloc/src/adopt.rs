//! A successor's side of an update: mapping a previous version's regions at their addresses,
//! copying the pages that process held privately, adopting them; committing (writing this
//! process's private pages back into the memfds and sharing them again); retiring regions
//! that emptied.

#![allow(unsafe_code)]

use crate::bitmap;
use crate::class::{blocks_per_span, CLASSES};
use crate::extent::Extent;
use crate::geometry::{slot_base, slot_of, SlotSet, SLOTS, SLOT_SIZE, SPANS_PER_REGION, SPAN_SIZE};
use crate::heap::{map_pieces, mapped_within, os_err, segment_range, Heap, HeapError, Role, SegmentBacking};
use crate::layout::{
    with_state, Kind, RegionHeader, State, FIRST_DATA_SPAN, FLAG_ZERO, LAYOUT_VERSION, MAGIC, MAX_SEGMENTS,
};
use crate::lock::{self, Guard};
use crate::os::{self, Backing, OsError, ProcPath};
use crate::small::push_partial;
use crate::spans::{clear_bit, set_bit, test_bit};
use crate::view::Region;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

/// What mapping a previous version's region did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    pub segments: usize,
    /// Bytes of the old process's private pages copied.
    pub copied: usize,
}

/// What adoption found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdoptStats {
    pub regions: usize,
    /// Blocks that were parked in the old process's thread caches, now free.
    pub cached_blocks_released: usize,
    /// Live blocks (small and large) in the adopted regions.
    pub live_blocks: usize,
    /// Small spans with free blocks, now on this process's partial lists.
    pub partial_spans: usize,
    /// Small spans that were empty, now in the span pools.
    pub empty_spans: usize,
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Bytes of private pages written back into the memfd.
    pub written: usize,
    /// Bytes of free spans punched out of the memfd.
    pub punched: usize,
}

impl Heap {
    /// Replaces what this process maps in `slot` by zero-filled anonymous memory (the same
    /// ranges: no more address space), giving its memory and memfds back.
    ///
    /// # Safety
    /// Nothing uses the slot's contents any more; readers that race read zeroes.
    unsafe fn zero_pieces(&self, slot: usize) -> Result<(), OsError> {
        let Some(extent) = self.extent(slot) else { return Ok(()) };
        let base = slot_base(slot);
        for (s, e) in extent.pieces() {
            // SAFETY: guaranteed by the caller; the range is ours.
            unsafe { os::map(base + s, e - s, Backing::Anonymous, true) }?;
        }
        Ok(())
    }

    /// Maps segment `index` of a previous version's region in `slot` at its address: from
    /// span `start` (in the region) to the end of the slot, as far as the old process
    /// mapped it (`extent`, from the old region's header: the same for every segment),
    /// copy-on-write over `memfd` (at file offset = offset in the region), or anonymous
    /// when `memfd` is `None` (then [`Heap::import_private_pages`] brings the bytes).
    /// Segments must be mapped in order, 0 first (start 0); each later one replaces the
    /// tail of the previous ones. The slot must be free or reserved. Then
    /// [`Heap::finish_mapping`].
    pub fn map_segment(
        &self,
        slot: usize,
        index: usize,
        start: usize,
        extent: Extent,
        memfd: Option<BorrowedFd<'_>>,
    ) -> Result<(), HeapError> {
        if slot >= SLOTS {
            return Err(HeapError::NoSuchSlot { slot });
        }
        if !extent.is_valid() {
            return Err(HeapError::Corrupt { slot, what: "mapped extent out of range" });
        }
        if index >= MAX_SEGMENTS
            || (index == 0) != (start == 0)
            || (index > 0 && !(FIRST_DATA_SPAN..SPANS_PER_REGION).contains(&start))
        {
            return Err(HeapError::Segment { slot, index, what: "starts at an impossible span" });
        }
        let _g = Guard::lock(&self.lock);
        let role = self.role(slot);
        let replace = match (index, role) {
            (0, Role::Unused) => false,
            (0, Role::Reserved) => true,
            (i, Role::Mapping) if i > 0 => true,
            _ => {
                return Err(HeapError::WrongRole {
                    slot,
                    role,
                    expected: "segment 0 needs a free or reserved slot, the others a slot being mapped",
                })
            }
        };
        if index > 0 && self.seg_mapped.get(slot).map_or(0, |m| m.load(Relaxed)) & 1 == 0 {
            return Err(HeapError::Segment { slot, index, what: "segment 0 is not mapped" });
        }
        if index > 0 && self.extent(slot) != Some(extent) {
            return Err(HeapError::Segment { slot, index, what: "mapped extent differs from segment 0's" });
        }
        let offset = start * SPAN_SIZE;
        let backing = match memfd {
            Some(fd) => {
                let st = rustix::fs::fstat(fd).map_err(os_err("fstat of a heap memfd"))?;
                if (st.st_size as u64) < SLOT_SIZE as u64 {
                    return Err(HeapError::Segment { slot, index, what: "its memfd is smaller than a region" });
                }
                Backing::Memfd { fd, offset: offset as u64, shared: false }
            }
            None => Backing::Anonymous,
        };
        let base = slot_base(slot);
        let mapped = if replace && index == 0 {
            // What is ours there (the reservation, or the zeroes a released region left) goes
            // first: the region's pieces then never replace anything.
            // SAFETY: the slot is reserved by us and nothing reads it.
            unsafe { self.unmap_slot(slot) };
            map_pieces(base, extent.pieces(), backing)
        } else if replace {
            let mut result = Ok(());
            for (s, e) in extent.pieces_within(offset, SLOT_SIZE) {
                // SAFETY: the slot is being mapped by us (not readable by anyone until
                // finish_mapping): later segments replace the tail of the earlier ones.
                result = unsafe { os::map(base + s, e - s, backing.at(s), true) };
                if result.is_err() {
                    break;
                }
            }
            result
        } else {
            map_pieces(base, extent.pieces(), backing)
        };
        match mapped {
            Ok(()) => {}
            Err(OsError::EXIST) => {
                self.set_role(slot, Role::Occupied);
                return Err(HeapError::WrongRole {
                    slot,
                    role: Role::Occupied,
                    expected: "something else is mapped there",
                });
            }
            Err(errno) => return Err(HeapError::Os { op: "mmap of a previous version's segment", errno }),
        }
        if index == 0 {
            for masks in [&self.seg_mapped, &self.seg_private, &self.seg_anonymous] {
                if let Some(m) = masks.get(slot) {
                    m.store(0, Relaxed);
                }
            }
        }
        if index == 0 {
            self.set_extent(slot, Some(extent));
        }
        let b = if memfd.is_some() { SegmentBacking::PrivateMemfd } else { SegmentBacking::Anonymous };
        self.set_backing(slot, index, b);
        self.set_role(slot, Role::Mapping);
        Ok(())
    }

    /// Copies the pages process `pid` holds privately in `slot` (pages it wrote in a frozen
    /// or adopted segment, every page of an anonymous one) to the same addresses here.
    /// Call after mapping every segment and before [`Heap::finish_mapping`]. Needs ptrace
    /// access to `pid`.
    pub fn import_private_pages(&self, slot: usize, pid: i32) -> Result<usize, HeapError> {
        let _g = Guard::lock(&self.lock);
        let role = self.role(slot);
        if role != Role::Mapping {
            return Err(HeapError::WrongRole {
                slot,
                role,
                expected: "pages are imported while the slot is being mapped",
            });
        }
        let pagemap = os::open(&ProcPath::pagemap(Some(pid)), false).map_err(os_err("open of the old pagemap"))?;
        let base = slot_base(slot);
        let extent = self.extent(slot).ok_or(HeapError::WrongRole { slot, role, expected: "segment 0 is mapped" })?;
        let mut copied = 0;
        let mut failed = None;
        // Only where this process maps the region: the old one mapped the same pieces.
        for (piece_start, piece_end) in extent.pieces() {
            os::private_pages(pagemap.as_fd(), base + piece_start, base + piece_end, |start, end| {
                if failed.is_some() {
                    return;
                }
                // SAFETY: [start, end) lies in a piece of our slot, mapped readable and
                // writable by map_segment, and nobody reads it before finish_mapping.
                match unsafe { os::copy_from_process(pid, start, end - start) } {
                    Ok(n) => copied += n,
                    Err(e) => failed = Some(e),
                }
            })
            .map_err(os_err("PAGEMAP_SCAN of the old process"))?;
        }
        match failed {
            Some(errno) => Err(HeapError::Os { op: "process_vm_readv of the old heap", errno }),
            None => Ok(copied),
        }
    }

    /// Checks the region mapped in `slot` (layout version, address, segments all mapped)
    /// and makes it readable: `visit` and `block_of` work on it, `adopt` takes it.
    pub fn finish_mapping(&self, slot: usize) -> Result<(), HeapError> {
        let _g = Guard::lock(&self.lock);
        let role = self.role(slot);
        let mapped = self.seg_mapped.get(slot).map_or(0, |m| m.load(Relaxed));
        if role != Role::Mapping || mapped & 1 == 0 {
            return Err(HeapError::WrongRole { slot, role, expected: "finish_mapping follows map_segment" });
        }
        let extent = self.extent(slot).ok_or(HeapError::WrongRole { slot, role, expected: "segment 0 is mapped" })?;
        // SAFETY: segment 0 mapped the pieces of `extent` (later segments only replaced its
        // tail by other readable and writable mappings), and the heap keeps them mapped.
        let region = unsafe { Region::new(slot_base(slot), extent) };
        check_header(region, slot, mapped)?;
        self.set_role(slot, Role::Mapped);
        Ok(())
    }

    /// All of the above for the region in `slot` of a previous version running as `pid`:
    /// reads its segment table from that process, maps each segment (`open_memfd(start)`
    /// gives a descriptor of the memfd behind the old process's mapping that starts at
    /// address `start`, or `None` if that mapping is anonymous), copies the old process's
    /// private pages, and checks the result.
    pub fn map_old_region(
        &self,
        slot: usize,
        pid: i32,
        mut open_memfd: impl FnMut(usize) -> Result<Option<OwnedFd>, OsError>,
    ) -> Result<MapStats, HeapError> {
        if slot >= SLOTS {
            return Err(HeapError::NoSuchSlot { slot });
        }
        let base = slot_base(slot);
        let mut words = [0u8; 24];
        os::read_remote(pid, base, &mut words).map_err(os_err("process_vm_readv of the old header"))?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(words.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
            u64::from_ne_bytes(w)
        };
        if word(0) != MAGIC {
            return Err(HeapError::NotARegion { slot, magic: word(0) });
        }
        if word(1) != LAYOUT_VERSION {
            return Err(HeapError::Layout { slot, found: word(1) });
        }
        if word(2) != base as u64 {
            return Err(HeapError::Corrupt { slot, what: "its header names another address" });
        }
        let mut counts = [0u8; 12];
        os::read_remote(pid, base + core::mem::offset_of!(RegionHeader, segment_count), &mut counts)
            .map_err(os_err("process_vm_readv of the old header"))?;
        let u32_at = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(counts.get(i * 4..i * 4 + 4).unwrap_or(&[0; 4]));
            u32::from_ne_bytes(w) as usize
        };
        let count = u32_at(0);
        let extent = Extent { spans: u32_at(1), caches: u32_at(2) };
        if !(1..=MAX_SEGMENTS).contains(&count) {
            return Err(HeapError::Corrupt { slot, what: "segment count out of range" });
        }
        let mut starts = [0u8; MAX_SEGMENTS * 4];
        let starts = starts.get_mut(..count * 4).unwrap_or_default();
        os::read_remote(pid, base + core::mem::offset_of!(RegionHeader, segments), starts)
            .map_err(os_err("process_vm_readv of the old header"))?;
        for (index, bytes) in starts.chunks_exact(4).enumerate() {
            let start = u32::from_ne_bytes([
                bytes.first().copied().unwrap_or(0),
                bytes.get(1).copied().unwrap_or(0),
                bytes.get(2).copied().unwrap_or(0),
                bytes.get(3).copied().unwrap_or(0),
            ]) as usize;
            let fd = open_memfd(base + start * SPAN_SIZE).map_err(os_err("opening an old heap memfd"))?;
            self.map_segment(slot, index, start, extent, fd.as_ref().map(|fd| fd.as_fd()))?;
        }
        let copied = self.import_private_pages(slot, pid)?;
        self.finish_mapping(slot)?;
        Ok(MapStats { segments: count, copied })
    }

    /// Gives up a slot that was mapped but not adopted (a failed update, or a fork child that
    /// inherited the wrong one): it is reserved again (its memory and memfds released).
    pub fn release_slot(&self, slot: usize) -> Result<(), HeapError> {
        let _g = Guard::lock(&self.lock);
        let role = self.role(slot);
        if !matches!(role, Role::Mapping | Role::Mapped) {
            return Err(HeapError::WrongRole { slot, role, expected: "only a mapped, unadopted slot is released" });
        }
        self.set_role(slot, Role::Reserved);
        // SAFETY: the slot is ours and nothing allocates there (never adopted); readers that
        // raced with the role change read zeroes (the replacement is readable and writable).
        unsafe { self.zero_pieces(slot) }.map_err(os_err("mmap over a released slot"))?;
        for masks in [&self.seg_mapped, &self.seg_private, &self.seg_anonymous] {
            if let Some(m) = masks.get(slot) {
                m.store(0, Relaxed);
            }
        }
        Ok(())
    }

    /// Adopts the mapped regions in `slots` (a previous version's heap, all of it: a thread
    /// cache of the old process may hold blocks of any of its regions): the blocks parked in
    /// the old process's thread caches become free, locks and ownership are reset, live
    /// counts are recomputed from the bitmaps, spans with room go on this process's partial
    /// lists and empty ones to the pools. From then on the old blocks are freed and their
    /// memory reused like this process's own. O(spans used + cached blocks).
    pub fn adopt(&self, slots: &SlotSet) -> Result<AdoptStats, HeapError> {
        let _g = Guard::lock(&self.lock);
        for slot in slots.iter() {
            let role = self.role(slot);
            if role != Role::Mapped {
                return Err(HeapError::WrongRole { slot, role, expected: "adopt takes mapped regions" });
            }
        }
        let mut stats = AdoptStats::default();
        for slot in slots.iter() {
            let Some(region) = self.readable(slot) else { continue };
            stats.cached_blocks_released += self.drop_foreign_caches(region);
        }
        for slot in slots.iter() {
            let Some(region) = self.readable(slot) else { continue };
            rebuild(region, &mut stats);
            self.forget_zero_over_memfds(slot, region);
            region.header().adoptions.fetch_add(1, Relaxed);
            stats.regions += 1;
        }
        for slot in slots.iter() {
            self.set_role(slot, Role::Adopted);
        }
        Ok(stats)
    }

    /// The free spans of segments mapped copy-on-write over a previous version's memfd may
    /// not read as zero when this process first writes them: until then they show the
    /// memfd's current bytes, and the previous version (its runtime's own calls into libc,
    /// before it is gone) may still allocate there. Their zero flag, as the previous
    /// version's span table had it, is dropped (calloc clears them); a commit that punches
    /// them out of the memfd sets it again.
    fn forget_zero_over_memfds(&self, slot: usize, region: Region<'_>) {
        let hwm = (region.header().hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
        for s in FIRST_DATA_SPAN..hwm {
            if test_bit(region.free_map(), s)
                && self.backing(slot, crate::heap::segment_of(region, s)) == SegmentBacking::PrivateMemfd
            {
                if let Some(e) = region.span(s) {
                    e.flags.store(0, Relaxed);
                }
            }
        }
    }

    /// Clears the bits of the blocks in every thread cache of a region from another process
    /// (counts are recomputed afterwards); returns how many.
    fn drop_foreign_caches(&self, region: Region<'_>) -> usize {
        let h = region.header();
        let mut released = 0;
        for (w, word) in h.caches_in_use.iter().enumerate() {
            for b in crate::geometry::BitIter(word.swap(0, Relaxed)) {
                let Some(cache) = region.caches().get(w * 64 + b) else { continue };
                for bin in cache.bins.iter() {
                    let n = (bin.count.swap(0, Relaxed) as usize).min(bin.blocks.len());
                    for slot in bin.blocks.iter().take(n) {
                        let addr = slot.load(Relaxed) as usize;
                        if self.clear_live_bit(addr) {
                            released += 1;
                        }
                    }
                    bin.current.store(0, Relaxed);
                }
            }
        }
        released
    }

    /// Clears the live bit of the small block at `addr` in a readable region.
    fn clear_live_bit(&self, addr: usize) -> bool {
        let Some(region) = slot_of(addr).and_then(|s| self.readable(s)) else { return false };
        let index = crate::geometry::span_index(addr);
        let Some(entry) = region.span(index).filter(|_| index >= FIRST_DATA_SPAN) else { return false };
        if entry.kind.load(Relaxed) != Kind::Small as u8 {
            return false;
        }
        let class = entry.class.load(Relaxed) as usize;
        let block = crate::class::block_index(class, addr & (SPAN_SIZE - 1));
        block < blocks_per_span(class) && region.live(index).is_some_and(|bits| bitmap::release(bits, block))
    }

    /// Commit: writes the pages this process holds privately in segment `index` of `slot`
    /// (an adopted segment it wrote before commit, a frozen one, or an anonymous one) into
    /// `memfd` at their offsets, punches the free spans out of it, and maps it shared over
    /// the segment: the memfd then holds every byte this process sees there, so the next
    /// version maps it without copying.
    ///
    /// Preconditions (the runtime's): no other thread of this process touches the segment
    /// during the call (threads parked), and no other process maps `memfd` (the previous
    /// version and any process forked from it exited: they would see the writes). For an
    /// anonymous segment `memfd` is a fresh memfd of at least a region's size.
    pub fn commit_segment(&self, slot: usize, index: usize, memfd: BorrowedFd<'_>) -> Result<CommitStats, HeapError> {
        let region = self.active_region(slot).ok_or(HeapError::WrongRole {
            slot,
            role: self.role(slot),
            expected: "commit takes an active region",
        })?;
        let (start, end) =
            segment_range(region, index).ok_or(HeapError::Segment { slot, index, what: "no such segment" })?;
        if self.backing(slot, index) == SegmentBacking::SharedMemfd {
            return Ok(CommitStats::default());
        }
        let st = rustix::fs::fstat(memfd).map_err(os_err("fstat of a heap memfd"))?;
        if (st.st_size as u64) < SLOT_SIZE as u64 {
            return Err(HeapError::Segment { slot, index, what: "the memfd is smaller than a region" });
        }
        let base = region.base();
        let h = region.header();
        let _g = Guard::lock(&h.span_lock);
        let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
        let used_end = (base + hwm * SPAN_SIZE).clamp(start, end);
        let pagemap = os::open(&ProcPath::pagemap(None), false).map_err(os_err("open of /proc/self/pagemap"))?;
        let mut stats = CommitStats::default();
        let mut failed = None;
        os::private_pages(pagemap.as_fd(), start, used_end, |s, e| {
            if failed.is_some() {
                return;
            }
            // SAFETY: our own segment, mapped readable; the caller keeps writers away.
            match unsafe { os::write_to_file(memfd, s, e - s, (s - base) as u64) } {
                Ok(()) => stats.written += e - s,
                Err(errno) => failed = Some(errno),
            }
        })
        .map_err(os_err("PAGEMAP_SCAN of this process"))?;
        if let Some(errno) = failed {
            return Err(HeapError::Os { op: "write-back of a heap segment", errno });
        }
        let first = ((start - base) / SPAN_SIZE).max(FIRST_DATA_SPAN);
        let last = (used_end - base) / SPAN_SIZE;
        // Free spans are punched out of the memfd; they read as zero only once the shared
        // mapping shows the memfd (until then this process's own copies of their pages may
        // show through), so they are marked zero last.
        let mut s = first;
        while s < last {
            if !test_bit(region.free_map(), s) {
                s += 1;
                continue;
            }
            let run = s;
            while s < last && test_bit(region.free_map(), s) {
                if let Some(e) = region.span(s) {
                    // not zero while the punch and the remap are under way (a failure
                    // leaves them so: correct, only calloc clears them again)
                    e.flags.store(0, Relaxed);
                }
                s += 1;
            }
            os::punch(memfd, (run * SPAN_SIZE) as u64, ((s - run) * SPAN_SIZE) as u64)
                .map_err(os_err("fallocate(PUNCH_HOLE) of a heap memfd"))?;
            stats.punched += (s - run) * SPAN_SIZE;
        }
        let pieces = mapped_within(region, start, end);
        for (done, (s, e)) in pieces.clone().enumerate() {
            let shared = Backing::Memfd { fd: memfd, offset: (s - base) as u64, shared: true };
            // SAFETY: the memfd now holds every byte this process sees in [start, end)
            // (private pages written back, the rest were its pages already, or a free span's,
            // which nothing reads), so replacing the private mapping by a shared one changes
            // no byte anyone uses; the caller keeps writers away.
            if let Err(errno) = unsafe { os::map(s, e - s, shared, true) } {
                // The segment stays copy-on-write as a whole (a fork freezes only what is
                // marked shared): the pieces shared so far go back to private, same bytes.
                for (s, e) in pieces.take(done) {
                    let private = Backing::Memfd { fd: memfd, offset: (s - base) as u64, shared: false };
                    // SAFETY: as above; the memfd holds the bytes of these pieces.
                    let _ = unsafe { os::map(s, e - s, private, true) };
                }
                return Err(HeapError::Os { op: "mmap of a committed segment", errno });
            }
        }
        self.set_backing(slot, index, SegmentBacking::SharedMemfd);
        let mut s = first;
        while s < last {
            if test_bit(region.free_map(), s) {
                if let Some(e) = region.span(s) {
                    e.flags.store(FLAG_ZERO, Relaxed);
                }
                if clear_bit(region.committed_map(), s) {
                    h.committed_free_spans.fetch_sub(1, Relaxed);
                }
            }
            s += 1;
        }
        Ok(stats)
    }

    /// Gives back every adopted region that holds no block any more (no span in use, no
    /// thread cache): its memory and memfds are released and its slot is free for a later
    /// version (the slot stays held here). Returns how many.
    pub fn retire_empty(&self) -> usize {
        let _g = Guard::lock(&self.lock);
        let mut retired = 0;
        for slot in 0..SLOTS {
            if self.role(slot) != Role::Adopted {
                continue;
            }
            let Some(region) = self.active_region(slot) else { continue };
            let h = region.header();
            let empty = {
                for l in h.class_lock.iter() {
                    lock::acquire(l);
                }
                lock::acquire(&h.span_lock);
                let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
                let empty = h.free_spans.load(Relaxed) as usize == hwm.saturating_sub(FIRST_DATA_SPAN)
                    && h.caches_in_use.iter().all(|w| w.load(Relaxed) == 0);
                if empty {
                    self.set_role(slot, Role::Retired);
                }
                lock::release(&h.span_lock);
                for l in h.class_lock.iter() {
                    lock::release(l);
                }
                empty
            };
            if !empty {
                continue;
            }
            // SAFETY: the region holds no block and no cache, and is no longer active or
            // readable; a reader that raced with the role change reads zeroes.
            let _ = unsafe { self.zero_pieces(slot) };
            for masks in [&self.seg_mapped, &self.seg_private, &self.seg_anonymous] {
                if let Some(m) = masks.get(slot) {
                    m.store(0, Relaxed);
                }
            }
            retired += 1;
        }
        retired
    }
}

impl Heap {
    /// Gives the memory of every free span of the adopted regions back to the system.
    /// Adoption puts an old region's empty spans in its pool with their pages (copied from
    /// the old process) still committed, and frees keep up to a pool's worth committed for
    /// reuse: right for the region a process allocates from, but an adopted region is
    /// mostly garbage once the update freed what the new version no longer holds, and the
    /// few blocks kept there (pinned ones) would otherwise hold megabytes resident per
    /// update. Returns the bytes given back.
    pub fn trim_adopted(&self) -> usize {
        let _g = Guard::lock(&self.lock);
        let mut trimmed = 0;
        for slot in 0..SLOTS {
            if self.role(slot) != Role::Adopted {
                continue;
            }
            let Some(region) = self.active_region(slot) else { continue };
            let h = region.header();
            let _spans = Guard::lock(&h.span_lock);
            let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
            let mut s = FIRST_DATA_SPAN;
            while s < hwm {
                if !(test_bit(region.free_map(), s) && test_bit(region.committed_map(), s)) {
                    s += 1;
                    continue;
                }
                let run = s;
                while s < hwm && test_bit(region.free_map(), s) && test_bit(region.committed_map(), s) {
                    s += 1;
                }
                let zeroed = self.decommit(region, run, s - run);
                for k in run..s {
                    if let Some(e) = region.span(k) {
                        e.flags.store(if zeroed { FLAG_ZERO } else { 0 }, Relaxed);
                    }
                    if clear_bit(region.committed_map(), k) {
                        h.committed_free_spans.fetch_sub(1, Relaxed);
                    }
                }
                trimmed += (s - run) * SPAN_SIZE;
            }
        }
        trimmed
    }
}

fn check_header(region: Region<'_>, slot: usize, mapped: u64) -> Result<(), HeapError> {
    let h = region.header();
    let magic = h.magic.load(Relaxed);
    if magic != MAGIC {
        return Err(HeapError::NotARegion { slot, magic });
    }
    let layout = h.layout.load(Relaxed);
    if layout != LAYOUT_VERSION {
        return Err(HeapError::Layout { slot, found: layout });
    }
    if h.base.load(Relaxed) != region.base() as u64 {
        return Err(HeapError::Corrupt { slot, what: "its header names another address" });
    }
    let hwm = h.hwm.load(Relaxed) as usize;
    if !(FIRST_DATA_SPAN..=region.extent().spans).contains(&hwm) {
        return Err(HeapError::Corrupt { slot, what: "high-water mark out of range or beyond the mapped part" });
    }
    let count = h.segment_count.load(Relaxed) as usize;
    if !(1..=MAX_SEGMENTS).contains(&count) {
        return Err(HeapError::Corrupt { slot, what: "segment count out of range" });
    }
    let mut previous = 0;
    for (index, start) in h.segments.iter().enumerate().take(count) {
        let start = start.load(Relaxed) as usize;
        if (index == 0 && start != 0) || (index > 0 && (start <= previous || start < FIRST_DATA_SPAN)) {
            return Err(HeapError::Segment { slot, index, what: "segment table out of order" });
        }
        if mapped >> index & 1 == 0 {
            return Err(HeapError::Segment { slot, index, what: "not mapped" });
        }
        previous = start;
    }
    Ok(())
}

/// Recomputes a region's ownership and lists from its span table and bitmaps (the region is
/// not active yet: no other thread touches it).
fn rebuild(region: Region<'_>, stats: &mut AdoptStats) {
    let h = region.header();
    h.span_lock.store(0, Relaxed);
    for c in 0..CLASSES {
        if let (Some(l), Some(p)) = (h.class_lock.get(c), h.partial.get(c)) {
            l.store(0, Relaxed);
            p.store(0, Relaxed);
        }
    }
    let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
    let free = region.free_map();
    let committed = region.committed_map();
    let mut s = FIRST_DATA_SPAN;
    while s < hwm {
        let Some(e) = region.span(s) else { break };
        let step = match Kind::from_u8(e.kind.load(Relaxed)) {
            Kind::Small if (e.class.load(Relaxed) as usize) < CLASSES => {
                let class = e.class.load(Relaxed) as usize;
                let cap = blocks_per_span(class) as u32;
                let live = region.live(s).map_or(0, |bits| bitmap::count(bits, cap as usize));
                let word = e.state.load(SeqCst);
                e.link.store(0, Relaxed);
                e.prev.store(0, Relaxed);
                if live == 0 {
                    // empty: to the pool, its pages still committed
                    pool(region, s, false);
                    stats.empty_spans += 1;
                } else {
                    clear_bit(free, s);
                    clear_bit(committed, s);
                    e.live.store(live, Relaxed);
                    stats.live_blocks += live as usize;
                    if live < cap {
                        e.state.store(with_state(word, State::Listed), SeqCst);
                        push_partial(region, class, s);
                        stats.partial_spans += 1;
                    } else {
                        e.state.store(with_state(word, State::Full), SeqCst);
                    }
                }
                1
            }
            Kind::LargeHead if is_run(region, s, hwm) => {
                let n = e.link.load(Relaxed) as usize;
                for k in s..s + n {
                    clear_bit(free, k);
                    clear_bit(committed, k);
                }
                stats.live_blocks += 1;
                n
            }
            Kind::Free => {
                pool(region, s, true);
                1
            }
            // a tail no head reaches, a broken head, a bad class: corrupt, back to the pool
            _ => {
                pool(region, s, false);
                1
            }
        };
        s += step;
    }
    let mut free_spans = 0u32;
    let mut committed_free = 0u32;
    for (i, w) in free.iter().enumerate().take(hwm.div_ceil(64)).skip(FIRST_DATA_SPAN / 64) {
        let f = w.load(Relaxed);
        free_spans += f.count_ones();
        if let Some(c) = committed.get(i) {
            let both = c.load(Relaxed) & f;
            c.store(both, Relaxed);
            committed_free += both.count_ones();
        }
    }
    h.free_spans.store(free_spans, Relaxed);
    h.committed_free_spans.store(committed_free, Relaxed);
    h.free_hint.store((FIRST_DATA_SPAN / 64) as u32, Relaxed);
}

/// Puts span `s` in the pool during a rebuild. `was_free`: it was a pool span already (its
/// flags and committed bit stand); otherwise its pages hold old bytes (committed, not zero).
fn pool(region: Region<'_>, s: usize, was_free: bool) {
    let Some(e) = region.span(s) else { return };
    if !was_free {
        if let Some(bits) = region.live(s) {
            bitmap::clear(bits);
        }
        e.flags.store(0, Relaxed);
        set_bit(region.committed_map(), s);
    }
    e.kind.store(Kind::Free as u8, Relaxed);
    e.class.store(0, Relaxed);
    e.live.store(0, Relaxed);
    e.link.store(0, Relaxed);
    e.prev.store(0, Relaxed);
    set_bit(region.free_map(), s);
}

/// Whether span `s` heads a well-formed large run below `hwm`.
fn is_run(region: Region<'_>, s: usize, hwm: usize) -> bool {
    let Some(n) = region.span(s).map(|e| e.link.load(Relaxed) as usize) else { return false };
    n > 0
        && s + n <= hwm
        && (1..n).all(|k| {
            region
                .span(s + k)
                .is_some_and(|t| t.kind.load(Relaxed) == Kind::LargeTail as u8 && t.link.load(Relaxed) as usize == k)
        })
}
