//! The process-local state of the engine: which slot plays which role, how each segment of
//! each region is mapped in this process, the own region fresh spans come from. Everything
//! about blocks lives in the regions themselves (see `layout`).

#![allow(unsafe_code)]

use crate::extent::{Extent, CACHE_STEP};
use crate::geometry::{slot_base, SlotSet, PAGE_SIZE, SLOTS, SLOT_SIZE, SPANS_PER_REGION, SPAN_SIZE};
use crate::layout::{ThreadCache, FIRST_DATA_SPAN, LAYOUT_VERSION, MAGIC, MAX_SEGMENTS, THREAD_CACHES};
use crate::lock::Guard;
use crate::os::{self, Backing, OsError, ProcPath};
use crate::view::Region;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8};
use rustix::fd::AsFd;

/// What a slot of the window is to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Nothing of ours there.
    Unused = 0,
    /// Held (no access) so that nothing else maps there: a previous version's region lives
    /// at this address in another process.
    Reserved = 1,
    /// Segments are being mapped (`map_segment`); nothing reads it until `finish_mapping`.
    Mapping = 2,
    /// A previous version's region, mapped at its address and checked: readable (`visit`,
    /// `block_of`), not allocated in until adopted.
    Mapped = 3,
    /// This process's region: fresh spans are carved here.
    Own = 4,
    /// A region this process allocates in without growing it: adopted from a previous
    /// version, or a former own region that filled up.
    Adopted = 5,
    /// An adopted region that emptied and was given back (the slot stays held).
    Retired = 6,
    /// Something that is not ours is mapped there.
    Occupied = 7,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Reserved,
            2 => Role::Mapping,
            3 => Role::Mapped,
            4 => Role::Own,
            5 => Role::Adopted,
            6 => Role::Retired,
            7 => Role::Occupied,
            _ => Role::Unused,
        }
    }

    /// The region's metadata can be read.
    pub fn is_readable(self) -> bool {
        matches!(self, Role::Mapped | Role::Own | Role::Adopted)
    }

    /// The process allocates and frees in the region.
    pub fn is_active(self) -> bool {
        matches!(self, Role::Own | Role::Adopted)
    }
}

/// How the own region's memory is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// memfd segments mapped shared: a successor maps them without copying.
    Memfd,
    /// Anonymous memory: a successor copies the pages (`import_private_pages`).
    Anonymous,
    /// memfd if this process may reopen its own mappings' files through
    /// `/proc/self/map_files` (which fork freezing needs), anonymous otherwise.
    Auto,
}

impl Mode {
    /// `memfd`, `anonymous` or `auto`, as the runtime may find it in the environment.
    pub fn parse(value: &[u8]) -> Option<Mode> {
        match value {
            b"memfd" => Some(Mode::Memfd),
            b"anonymous" => Some(Mode::Anonymous),
            b"auto" => Some(Mode::Auto),
            _ => None,
        }
    }
}

/// What `Heap::init` needs.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Slots to keep off (a previous version's regions): reserved, never allocated in.
    pub avoid: SlotSet,
    pub mode: Mode,
}

impl Default for Config {
    fn default() -> Config {
        Config { avoid: SlotSet::new(), mode: Mode::Auto }
    }
}

/// How a segment is mapped in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentBacking {
    /// Its memfd, shared: the memfd holds every byte this process sees.
    SharedMemfd,
    /// Its memfd, copy-on-write: the pages this process wrote are private (a frozen
    /// segment after a fork, or an adopted one before commit).
    PrivateMemfd,
    /// Anonymous memory: every page is private.
    Anonymous,
}

/// A region this process maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    pub slot: usize,
    pub base: usize,
    pub role: Role,
    /// End of the part ever used (the high-water mark): nothing beyond was ever written.
    pub used_end: usize,
    /// End of the data spans mapped (the rest of the slot up to its end is not mapped).
    pub mapped_end: usize,
    /// Bytes of the slot mapped, metadata included (what counts against `RLIMIT_AS`).
    pub mapped_bytes: usize,
    pub segments: usize,
}

/// A segment of a region: a span range backed by one memfd (or anonymous memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub slot: usize,
    pub index: usize,
    pub start: usize,
    pub end: usize,
    /// `end` clipped to the region's high-water mark.
    pub used_end: usize,
    /// The segment's first mapping (the region maps only parts of its slot): the one
    /// `/proc/PID/map_files` names.
    pub first_mapping: (usize, usize),
    pub backing: SegmentBacking,
}

impl SegmentInfo {
    /// Where a process with `pid` exposes this segment's memfd (the successor opens it; see
    /// the crate documentation).
    pub fn map_files_path(&self, pid: Option<i32>) -> ProcPath {
        ProcPath::map_files(pid, self.first_mapping.0, self.first_mapping.1)
    }
}

/// Errors of the engine's management calls (allocation calls return `None` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    #[error("the heap is not initialized")]
    NotReady,
    #[error("no free slot in the heap window for a new region")]
    NoFreeSlot,
    #[error("{op} failed: {errno}")]
    Os { op: &'static str, errno: OsError },
    #[error("slot {slot} is outside the window")]
    NoSuchSlot { slot: usize },
    #[error("slot {slot} is {role:?}; {expected}")]
    WrongRole { slot: usize, role: Role, expected: &'static str },
    #[error("slot {slot} holds no mcr heap region (first word {magic:#x})")]
    NotARegion { slot: usize, magic: u64 },
    #[error("the region in slot {slot} has layout version {found}, this engine reads version {LAYOUT_VERSION}")]
    Layout { slot: usize, found: u64 },
    #[error("the region in slot {slot} is inconsistent: {what}")]
    Corrupt { slot: usize, what: &'static str },
    #[error("segment {index} of slot {slot}: {what}")]
    Segment { slot: usize, index: usize, what: &'static str },
}

pub(crate) fn os_err(op: &'static str) -> impl FnOnce(OsError) -> HeapError {
    move |errno| HeapError::Os { op, errno }
}

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
pub(crate) const NO_SLOT: u32 = u32::MAX;
const NO_CACHE: u32 = u32::MAX;

/// Counters for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Segments frozen (remapped copy-on-write over their memfd) by forks.
    pub segments_frozen: u32,
    /// Segments that a fork had to copy into anonymous memory (their memfd could not be
    /// reopened).
    pub segments_copied: u32,
    /// Fresh memfd segments created after forks.
    pub segments_created: u32,
}

/// The allocator engine of one process. `const`-constructible so the runtime can keep it in
/// a `static`; it maps nothing until [`Heap::init`].
pub struct Heap {
    pub(crate) state: AtomicU8,
    /// Fresh segments of the own region are anonymous (else memfds).
    pub(crate) anonymous: AtomicBool,
    pub(crate) own: AtomicU32,
    roles: [AtomicU8; SLOTS],
    /// Bitmap of the active slots (Own and Adopted).
    pub(crate) active: [AtomicU64; SLOTS / 64],
    /// Per slot, bit i: segment i is mapped in this process.
    pub(crate) seg_mapped: [AtomicU64; SLOTS],
    /// Per slot, bit i: segment i is mapped private over its memfd.
    pub(crate) seg_private: [AtomicU64; SLOTS],
    /// Per slot, bit i: segment i is anonymous.
    pub(crate) seg_anonymous: [AtomicU64; SLOTS],
    /// Per slot: the extent whose pieces this process maps there (`Extent::pack`; 0: none,
    /// at most the one-page reservation of a reserved slot). Only grows while the slot is
    /// readable.
    extents: [AtomicU64; SLOTS],
    /// After a fork froze the own region's last segment: the next span carved above the
    /// high-water mark starts a fresh memfd segment.
    pub(crate) fresh_segment: AtomicBool,
    /// Guards roles, segment masks and the own region.
    pub(crate) lock: AtomicU32,
    /// Guards the shared cache (allocations without a thread cache).
    pub(crate) shared_lock: AtomicU32,
    /// Slot << 16 | index of the shared cache.
    shared_cache: AtomicU32,
    pub(crate) stats_frozen: AtomicU32,
    pub(crate) stats_copied: AtomicU32,
    pub(crate) stats_created: AtomicU32,
}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl Heap {
    pub const fn new() -> Heap {
        Heap {
            state: AtomicU8::new(UNINIT),
            anonymous: AtomicBool::new(false),
            own: AtomicU32::new(NO_SLOT),
            roles: [const { AtomicU8::new(0) }; SLOTS],
            active: [const { AtomicU64::new(0) }; SLOTS / 64],
            seg_mapped: [const { AtomicU64::new(0) }; SLOTS],
            seg_private: [const { AtomicU64::new(0) }; SLOTS],
            seg_anonymous: [const { AtomicU64::new(0) }; SLOTS],
            extents: [const { AtomicU64::new(0) }; SLOTS],
            fresh_segment: AtomicBool::new(false),
            lock: AtomicU32::new(0),
            shared_lock: AtomicU32::new(0),
            shared_cache: AtomicU32::new(NO_CACHE),
            stats_frozen: AtomicU32::new(0),
            stats_copied: AtomicU32::new(0),
            stats_created: AtomicU32::new(0),
        }
    }

    /// Sets the heap up (the runtime calls it at the first allocation, before anything is
    /// allocated): reserves the slots to avoid, then maps the own region in the lowest free
    /// slot. Idempotent; concurrent callers wait for the first. On failure nothing is kept
    /// but the reservations, and a later call tries again.
    pub fn init(&self, config: &Config) -> Result<(), HeapError> {
        loop {
            match self.state.compare_exchange(UNINIT, INITIALIZING, Acquire, Acquire) {
                Ok(_) => break,
                Err(READY) => return Ok(()),
                Err(_) => rustix::thread::sched_yield(),
            }
        }
        let result = {
            let _g = Guard::lock(&self.lock);
            self.init_locked(config)
        };
        self.state.store(if result.is_ok() { READY } else { UNINIT }, Release);
        result
    }

    fn init_locked(&self, config: &Config) -> Result<(), HeapError> {
        for slot in config.avoid.iter() {
            if self.role(slot) != Role::Unused {
                continue;
            }
            // One page at the region's base, not the slot: reserved address space counts
            // against RLIMIT_AS. It finds a slot already taken (a region's header is there),
            // and nothing maps in the window unasked; mapping the old region later refuses
            // to replace anything that is not ours.
            let role = match os::reserve(slot_base(slot), PAGE_SIZE) {
                Ok(()) => Role::Reserved,
                Err(_) => Role::Occupied,
            };
            self.set_role(slot, role);
        }
        let anonymous = match config.mode {
            Mode::Anonymous => true,
            Mode::Memfd => false,
            Mode::Auto => !memfd_reopenable(),
        };
        self.anonymous.store(anonymous, Relaxed);
        let slot = self.create_region()?;
        self.own.store(slot as u32, Release);
        let (_, index) =
            self.claim_cache(slot).ok_or(HeapError::Corrupt { slot, what: "no thread cache for the shared path" })?;
        self.shared_cache.store(((slot as u32) << 16) | index as u32, Release);
        Ok(())
    }

    /// Maps a new own region in the lowest free slot (its initial extent only) and writes
    /// its header.
    pub(crate) fn create_region(&self) -> Result<usize, HeapError> {
        let anonymous = self.anonymous.load(Relaxed);
        let extent = Extent::INITIAL;
        for slot in 0..SLOTS {
            if self.role(slot) != Role::Unused {
                continue;
            }
            let base = slot_base(slot);
            let fd = if anonymous { None } else { Some(os::memfd(SLOT_SIZE as u64).map_err(os_err("memfd_create"))?) };
            let backing = match &fd {
                None => Backing::Anonymous,
                Some(fd) => Backing::Memfd { fd: fd.as_fd(), offset: 0, shared: true },
            };
            // The descriptor is closed when `fd` drops; the mappings keep the memfd alive.
            match map_pieces(base, extent.pieces(), backing) {
                Ok(()) => {}
                Err(OsError::EXIST) => {
                    self.set_role(slot, Role::Occupied);
                    continue;
                }
                Err(errno) => return Err(HeapError::Os { op: "mmap of a new region", errno }),
            }
            for masks in [&self.seg_mapped, &self.seg_private, &self.seg_anonymous] {
                if let Some(m) = masks.get(slot) {
                    m.store(0, Relaxed);
                }
            }
            self.set_extent(slot, Some(extent));
            self.set_backing(slot, 0, if anonymous { SegmentBacking::Anonymous } else { SegmentBacking::SharedMemfd });
            // SAFETY: the pieces of `extent` were just mapped readable and writable, and the
            // heap never unmaps them before it is dropped.
            let region = unsafe { Region::new(base, extent) };
            let h = region.header();
            h.base.store(base as u64, Relaxed);
            h.layout.store(LAYOUT_VERSION, Relaxed);
            h.hwm.store(FIRST_DATA_SPAN as u32, Relaxed);
            h.free_hint.store((FIRST_DATA_SPAN / 64) as u32, Relaxed);
            h.segment_count.store(1, Relaxed);
            h.mapped_spans.store(extent.spans as u32, Relaxed);
            h.mapped_caches.store(extent.caches as u32, Relaxed);
            h.magic.store(MAGIC, Release);
            self.set_role(slot, Role::Own);
            return Ok(slot);
        }
        Err(HeapError::NoFreeSlot)
    }

    /// The extent this process maps in `slot` (`None`: no region mapped there).
    #[inline]
    pub fn extent(&self, slot: usize) -> Option<Extent> {
        Extent::unpack(self.extents.get(slot)?.load(Acquire))
    }

    /// Records what is mapped in `slot`; an invalid extent is never stored (callers check).
    pub(crate) fn set_extent(&self, slot: usize, extent: Option<Extent>) {
        if let Some(e) = self.extents.get(slot) {
            e.store(Extent::pack(extent.filter(|e| e.is_valid())), Release);
        }
    }

    /// Grows the mapping of the region in `slot` (viewed as `region`) in place to `to`,
    /// area by area; on any failure (the address-space limit, something mapped in the way)
    /// undoes what grew and returns false. The caller holds the region's span lock, so
    /// growths of one region never race.
    pub(crate) fn grow_to(&self, slot: usize, region: Region<'_>, to: Extent) -> bool {
        let from = region.extent();
        if self.extent(slot) != Some(from) || !to.is_valid() {
            return false;
        }
        let base = region.base();
        let mut failed = false;
        let mut done = 0;
        for (old_end, new_end) in from.growth(to) {
            // SAFETY: the piece ending at `old_end` is this region's, and the range above it
            // up to `new_end` is inside its slot, where nothing of the region is mapped.
            if unsafe { os::extend(base + old_end, new_end - old_end) }.is_err() {
                failed = true;
                break;
            }
            done += 1;
        }
        if failed {
            for (old_end, new_end) in from.growth(to).take(done) {
                // SAFETY: the part that just grew: fresh, nobody uses it yet.
                unsafe { os::unmap(base + old_end, new_end - old_end) };
            }
            return false;
        }
        self.set_extent(slot, Some(to));
        let h = region.header();
        h.mapped_spans.store(to.spans as u32, Release);
        h.mapped_caches.store(to.caches as u32, Release);
        true
    }

    /// `region`, a view of the region in `slot` made before its span lock was taken, as it
    /// stands now (lock held): another thread may have grown the mapping meanwhile, and a
    /// stale view would not reach the spans it added (the free maps, always mapped whole,
    /// do).
    #[inline]
    pub(crate) fn current<'h>(&'h self, slot: usize, region: Region<'h>) -> Option<Region<'h>> {
        if region.extent() == self.extent(slot)? {
            Some(region)
        } else {
            self.readable(slot)
        }
    }

    /// Makes spans below `needed` of the own region in `slot` mapped (span lock held): a
    /// generous step first, else just what is needed. Returns the region's new view.
    pub(crate) fn grow_spans<'h>(&'h self, slot: usize, region: Region<'h>, needed: usize) -> Option<Region<'h>> {
        let region = self.current(slot, region)?;
        if needed <= region.extent().spans {
            return Some(region);
        }
        let [generous, least] = region.extent().span_targets(needed);
        if least.spans < needed {
            return None;
        }
        if !self.grow_to(slot, region, generous) && (generous == least || !self.grow_to(slot, region, least)) {
            return None;
        }
        self.readable(slot)
    }

    /// The own region is full: a new one takes over, the old one stays active (its free
    /// blocks and spans are still used) as an adopted region.
    #[cold]
    pub(crate) fn grow_own(&self, full: usize) -> bool {
        let _g = Guard::lock(&self.lock);
        if self.own.load(Acquire) as usize != full {
            return true; // another thread grew it meanwhile
        }
        match self.create_region() {
            Ok(slot) => {
                self.set_role(full, Role::Adopted);
                self.own.store(slot as u32, Release);
                true
            }
            Err(_) => false,
        }
    }

    #[inline]
    pub(crate) fn ready(&self) -> bool {
        self.state.load(Acquire) == READY
    }

    #[inline]
    pub fn role(&self, slot: usize) -> Role {
        self.roles.get(slot).map_or(Role::Unused, |r| Role::from_u8(r.load(Acquire)))
    }

    pub(crate) fn set_role(&self, slot: usize, role: Role) {
        if let Some(r) = self.roles.get(slot) {
            r.store(role as u8, Release);
        }
        if let Some(w) = self.active.get(slot / 64) {
            let bit = 1u64 << (slot % 64);
            if role.is_active() {
                w.fetch_or(bit, AcqRel);
            } else {
                w.fetch_and(!bit, AcqRel);
            }
        }
    }

    /// A view of the region in `slot` if its metadata can be read.
    #[inline]
    pub(crate) fn readable(&self, slot: usize) -> Option<Region<'_>> {
        if self.role(slot).is_readable() {
            self.view(slot)
        } else {
            None
        }
    }

    /// A view of the region in `slot` (role checked by the caller).
    #[inline]
    fn view(&self, slot: usize) -> Option<Region<'_>> {
        let extent = self.extent(slot)?;
        // SAFETY: the caller saw a readable role, which means the pieces of the slot's
        // extent are mapped readable and writable (the extent is set before the role, and
        // grows only after its pieces did); the heap only ever replaces them by other
        // readable and writable mappings, and unmaps only in `drop`, which needs `&mut self`.
        Some(unsafe { Region::new(slot_base(slot), extent) })
    }

    /// A view of the region in `slot` if this process allocates there.
    #[inline]
    pub(crate) fn active_region(&self, slot: usize) -> Option<Region<'_>> {
        if self.role(slot).is_active() {
            // active roles are readable roles
            self.view(slot)
        } else {
            None
        }
    }

    /// The active slots in increasing order (snapshot).
    pub(crate) fn active_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.active
            .iter()
            .enumerate()
            .flat_map(|(i, w)| crate::geometry::BitIter(w.load(Acquire)).map(move |b| i * 64 + b))
    }

    /// The slot of the own region, once initialized.
    pub fn own_slot(&self) -> Option<usize> {
        match self.own.load(Acquire) {
            NO_SLOT => None,
            s => Some(s as usize),
        }
    }

    /// A thread cache for the calling thread, in the own region (`None` if all
    /// `THREAD_CACHES` are taken: the thread then uses the shared path).
    ///
    /// # Safety
    /// The returned cache must be used by one thread at a time and never re-entered (a
    /// signal handler that allocates while its thread is inside the allocator must pass
    /// `None`), until [`Heap::release_thread_cache`].
    pub unsafe fn thread_cache(&self) -> Option<&ThreadCache> {
        if !self.ready() {
            return None;
        }
        let slot = self.own_slot()?;
        let (region, index) = self.claim_cache(slot)?;
        region.caches().get(index)
    }

    /// The cache of the shared path (guarded by `shared_lock`).
    pub(crate) fn shared_cache(&self) -> Option<&ThreadCache> {
        let v = self.shared_cache.load(Acquire);
        if v == NO_CACHE {
            return None;
        }
        self.readable((v >> 16) as usize)?.caches().get((v & 0xffff) as usize)
    }

    /// Runs `f` on the shared cache, under its lock.
    #[inline]
    pub(crate) fn with_shared<R>(&self, f: impl FnOnce(&ThreadCache) -> R) -> Option<R> {
        let _g = Guard::lock(&self.shared_lock);
        let cache = self.shared_cache()?;
        Some(f(cache))
    }

    /// Every region this process maps, in slot order.
    pub fn regions(&self, mut f: impl FnMut(RegionInfo)) {
        for slot in 0..SLOTS {
            let role = self.role(slot);
            let Some(region) = self.readable(slot) else { continue };
            let h = region.header();
            let hwm = (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION);
            f(RegionInfo {
                slot,
                base: region.base(),
                role,
                used_end: region.base() + hwm * SPAN_SIZE,
                mapped_end: region.base() + region.extent().spans * SPAN_SIZE,
                mapped_bytes: region.extent().bytes(),
                segments: (h.segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS),
            });
        }
    }

    /// The segments of the region in `slot`, in address order.
    pub fn segments(&self, slot: usize, mut f: impl FnMut(SegmentInfo)) {
        let Some(region) = self.readable(slot) else { return };
        let h = region.header();
        let count = (h.segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS);
        let hwm_end = region.base() + (h.hwm.load(Relaxed) as usize).min(SPANS_PER_REGION) * SPAN_SIZE;
        for index in 0..count {
            let Some((start, end)) = segment_range(region, index) else { continue };
            let Some(first_mapping) = first_mapping(region, start, end) else { continue };
            f(SegmentInfo {
                slot,
                index,
                start,
                end,
                used_end: hwm_end.clamp(start, end),
                first_mapping,
                backing: self.backing(slot, index),
            });
        }
    }

    /// How segment `index` of `slot` is mapped here.
    pub(crate) fn backing(&self, slot: usize, index: usize) -> SegmentBacking {
        let bit = 1u64 << (index % 64);
        let anon = self.seg_anonymous.get(slot).map_or(0, |w| w.load(Relaxed));
        let private = self.seg_private.get(slot).map_or(0, |w| w.load(Relaxed));
        if anon & bit != 0 {
            SegmentBacking::Anonymous
        } else if private & bit != 0 {
            SegmentBacking::PrivateMemfd
        } else {
            SegmentBacking::SharedMemfd
        }
    }

    pub(crate) fn set_backing(&self, slot: usize, index: usize, backing: SegmentBacking) {
        let bit = 1u64 << (index % 64);
        let (Some(mapped), Some(private), Some(anon)) =
            (self.seg_mapped.get(slot), self.seg_private.get(slot), self.seg_anonymous.get(slot))
        else {
            return;
        };
        mapped.fetch_or(bit, AcqRel);
        match backing {
            SegmentBacking::SharedMemfd => {
                private.fetch_and(!bit, AcqRel);
                anon.fetch_and(!bit, AcqRel);
            }
            SegmentBacking::PrivateMemfd => {
                private.fetch_or(bit, AcqRel);
                anon.fetch_and(!bit, AcqRel);
            }
            SegmentBacking::Anonymous => {
                private.fetch_and(!bit, AcqRel);
                anon.fetch_or(bit, AcqRel);
            }
        }
    }

    /// The slots a successor must keep off: every region this process maps.
    pub fn slots_in_use(&self) -> SlotSet {
        let mut set = SlotSet::new();
        for slot in 0..SLOTS {
            if matches!(self.role(slot), Role::Own | Role::Adopted | Role::Mapped | Role::Mapping) {
                set.insert(slot);
            }
        }
        set
    }

    pub fn stats(&self) -> Stats {
        Stats {
            segments_frozen: self.stats_frozen.load(Relaxed),
            segments_copied: self.stats_copied.load(Relaxed),
            segments_created: self.stats_created.load(Relaxed),
        }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        for slot in 0..SLOTS {
            if matches!(self.role(slot), Role::Unused | Role::Occupied) {
                continue;
            }
            // SAFETY: `&mut self`: no view of this heap is alive, and the slot is ours.
            // Blocks still allocated from it become invalid, as documented.
            unsafe { self.unmap_slot(slot) };
        }
    }
}

impl Heap {
    /// Unmaps what this process maps in `slot` (the pieces of its extent, or the
    /// reservation), nothing else: a range of the slot that is not ours stays as it is.
    ///
    /// # Safety
    /// The slot is ours and no view of it is used any more.
    pub(crate) unsafe fn unmap_slot(&self, slot: usize) {
        let base = slot_base(slot);
        match self.extent(slot) {
            Some(extent) => {
                for (start, end) in extent.pieces() {
                    // SAFETY: guaranteed by the caller.
                    unsafe { os::unmap(base + start, end - start) };
                }
            }
            // SAFETY: guaranteed by the caller.
            None if self.role(slot) == Role::Reserved => unsafe { os::unmap(base, PAGE_SIZE) },
            None => {}
        }
        self.set_extent(slot, None);
    }
}

/// Maps the `pieces` (offsets) of the region at `base` over `backing` (a memfd at the
/// pieces' own offsets), refusing to replace anything; on failure unmaps what it mapped.
pub(crate) fn map_pieces(
    base: usize,
    pieces: impl Iterator<Item = (usize, usize)> + Clone,
    backing: Backing<'_>,
) -> Result<(), OsError> {
    for (done, (start, end)) in pieces.clone().enumerate() {
        // SAFETY: FIXED_NOREPLACE (replace = false) never touches existing mappings.
        if let Err(e) = unsafe { os::map(base + start, end - start, backing.at(start), false) } {
            for (start, end) in pieces.take(done) {
                // SAFETY: mapped just above, by us; nobody knows of it yet.
                unsafe { os::unmap(base + start, end - start) };
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Start and end address of segment `index` of a region.
pub(crate) fn segment_range(region: Region<'_>, index: usize) -> Option<(usize, usize)> {
    let h = region.header();
    let count = (h.segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS);
    if index >= count {
        return None;
    }
    let start = h.segments.get(index)?.load(Relaxed) as usize;
    let end = if index + 1 < count { h.segments.get(index + 1)?.load(Relaxed) as usize } else { SPANS_PER_REGION };
    if start >= end || end > SPANS_PER_REGION {
        return None;
    }
    Some((region.base() + start * SPAN_SIZE, region.base() + end * SPAN_SIZE))
}

/// The mapped pieces of a region within `[start, end)` (addresses), clipped to it.
pub(crate) fn mapped_within(
    region: Region<'_>,
    start: usize,
    end: usize,
) -> impl Iterator<Item = (usize, usize)> + Clone {
    let base = region.base();
    region
        .extent()
        .pieces_within(start.saturating_sub(base), end.saturating_sub(base))
        .map(move |(s, e)| (base + s, base + e))
}

/// The first mapping of the segment `[start, end)` of a region: one mapping of its own
/// (pieces of one segment are never adjacent but when a region is mapped whole).
pub(crate) fn first_mapping(region: Region<'_>, start: usize, end: usize) -> Option<(usize, usize)> {
    mapped_within(region, start, end).next()
}

/// The segment holding span `span` of a region.
pub(crate) fn segment_of(region: Region<'_>, span: usize) -> usize {
    let h = region.header();
    let count = (h.segment_count.load(Relaxed) as usize).min(MAX_SEGMENTS);
    let mut index = 0;
    for (i, start) in h.segments.iter().enumerate().take(count) {
        if start.load(Relaxed) as usize <= span {
            index = i;
        } else {
            break;
        }
    }
    index
}

impl Heap {
    /// Claims a free slot of the thread-cache table of the region in `slot`, mapping more
    /// of the table when the mapped part is taken. Returns the region's view (which covers
    /// the cache) and the index.
    pub(crate) fn claim_cache(&self, slot: usize) -> Option<(Region<'_>, usize)> {
        loop {
            let region = self.readable(slot)?;
            if let Some(index) = claim_cache_in(region) {
                return Some((region, index));
            }
            let extent = region.extent();
            if extent.caches >= THREAD_CACHES {
                return None;
            }
            let _g = Guard::lock(&region.header().span_lock);
            if self.extent(slot) == Some(extent)
                && !self.grow_to(slot, region, Extent { caches: extent.caches + CACHE_STEP, ..extent })
            {
                return None;
            }
        }
    }
}

/// Claims a free slot of the mapped part of a region's thread-cache table.
fn claim_cache_in(region: Region<'_>) -> Option<usize> {
    let h = region.header();
    let mapped = region.caches().len();
    for (w, word) in h.caches_in_use.iter().enumerate().take(mapped.div_ceil(64)) {
        // bits of caches beyond the mapped part count as taken
        let beyond = match mapped - w * 64 {
            n if n >= 64 => 0,
            n => u64::MAX << n,
        };
        let mut v = word.load(Relaxed);
        while v | beyond != u64::MAX {
            let bit = (!(v | beyond)).trailing_zeros() as usize;
            match word.compare_exchange_weak(v, v | (1 << bit), AcqRel, Relaxed) {
                Ok(_) => {
                    let index = w * 64 + bit;
                    let cache = region.caches().get(index)?;
                    cache.region.store(region.base() as u64, Relaxed);
                    cache.index.store(index as u32, Relaxed);
                    cache.tid.store(os::gettid(), Relaxed);
                    return Some(index);
                }
                Err(now) => v = now,
            }
        }
    }
    None
}

/// Whether this process can reopen the file behind one of its own mappings through
/// `/proc/self/map_files` (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN), which fork freezing of
/// memfd segments needs.
pub fn memfd_reopenable() -> bool {
    let Ok(fd) = os::memfd(SPAN_SIZE as u64) else { return false };
    // SAFETY: no address given: the kernel picks a free range, nothing existing is touched.
    let addr = match unsafe {
        rustix::mm::mmap(
            core::ptr::null_mut(),
            SPAN_SIZE,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )
    } {
        Ok(p) => p as usize,
        Err(_) => return false,
    };
    drop(fd);
    let ok = os::open(&ProcPath::map_files(None, addr, addr + SPAN_SIZE), false).is_ok();
    // SAFETY: the probe mapping made above, used by nothing else.
    unsafe { os::unmap(addr, SPAN_SIZE) };
    ok
}
