//! The program's heap (DESIGN.md "Addresses", "Allocation metadata"): the malloc family
//! (`interpose/malloc.rs`) is served by mcr's own allocator (`mcr-alloc`), whose metadata
//! is out of band: no header per block; what the program asked for and whether the block
//! was allocated during startup are kept beside the live bits, where the update reads
//! them from outside (`mcr-heap`).
//!
//! The heap initializes at the first allocation, whoever makes it (ld.so, libc, another
//! library's constructor): the engine needs nothing from libc. Each thread gets a cache
//! of its own (kept in a const-initialized thread-local without destructor, given back
//! by a pthread key's destructor); a call that interrupts the allocator on the same
//! thread (a signal handler) uses the shared path instead.

use crate::quiesce::STARTUP_DONE;
use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use mcr_alloc::{BorrowedFd, Config, Heap, Mode, SlotSet, ThreadCache};
use mcr_protocol::{OldHeapRegion, OldSegmentSource};

pub static HEAP: Heap = Heap::new();

/// Per thread: its cache, and whether it is inside the allocator now.
struct ThreadHeap {
    cache: Cell<Option<&'static ThreadCache>>,
    busy: Cell<bool>,
    /// The cache was asked for (none may have been left).
    asked: Cell<bool>,
}

thread_local! {
    static LOCAL: ThreadHeap = const {
        ThreadHeap { cache: Cell::new(None), busy: Cell::new(false), asked: Cell::new(false) }
    };
}

/// The pthread key whose destructor gives a thread's cache back (0: not created yet).
static KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Run `f` with the calling thread's cache (`None`: the shared path: re-entered from a
/// signal handler, no cache left, or no thread-local storage any more).
#[inline(always)]
pub fn with_cache<R>(f: impl FnOnce(Option<&ThreadCache>) -> R) -> R {
    let local = LOCAL.try_with(|l| l as *const ThreadHeap).ok();
    // SAFETY: the thread-local lives as long as the thread, has no destructor, and the
    // pointer never leaves this call on this thread.
    let Some(l) = local.map(|p| unsafe { &*p }) else { return f(None) };
    if l.busy.get() {
        return f(None);
    }
    l.busy.set(true);
    let cache = match l.cache.get() {
        Some(c) => Some(c),
        None => first_cache(l),
    };
    let r = f(cache);
    l.busy.set(false);
    r
}

#[cold]
#[inline(never)]
fn first_cache(l: &ThreadHeap) -> Option<&'static ThreadCache> {
    if l.asked.get() {
        return None;
    }
    if !ensure_init() {
        return None;
    }
    l.asked.set(true);
    // SAFETY: the cache is kept for this thread alone (its thread-local) and never
    // re-entered: `busy` sends re-entrant calls to the shared path.
    let c = unsafe { HEAP.thread_cache() }?;
    l.cache.set(Some(c));
    let key = KEY.load(Relaxed);
    if key != u32::MAX {
        // SAFETY: a key created by `init_hooks`; pthread_setspecific stores a pointer for
        // this thread (keys below 32 need no allocation).
        unsafe { libc::pthread_setspecific(key, c as *const ThreadCache as *const libc::c_void) };
    }
    Some(c)
}

/// The heap is ready (initializing it at the first call).
#[inline(always)]
pub fn ensure_init() -> bool {
    HEAP.own_slot().is_some() || init_slow()
}

/// memfd-backed regions (which an update maps instead of copying) when the process can
/// reopen its own mappings through /proc/self/map_files (root, CAP_CHECKPOINT_RESTORE),
/// which the freeze at fork needs; anonymous memory otherwise.
///
/// What once made memfd mode "hang" connd's forking master (root cause, 2026-12): dirty
/// tracking registers the used part of a region's data with its userfaultfd, which splits the
/// mapping there, and the freeze reopened each shared segment's memfd by the name of the
/// mapping the heap had made, which /proc/self/map_files no longer had (ENOENT). The fork
/// then fell back to copying the segment into anonymous memory, page by page (a region was
/// then mapped whole: a 16 GiB piece walked at ~80 000 page faults a second, minutes at full
/// CPU inside `fork`, with no child yet). The freeze now reopens
/// the mapping that holds the segment's start as the kernel has it (`PROCMAP_QUERY`).
const MODE: Mode = Mode::Auto;

#[cold]
#[inline(never)]
fn init_slow() -> bool {
    HEAP.init(&Config { avoid: slots_to_avoid(), mode: MODE }).is_ok()
}

/// The heap slots an update's old version uses (`MCR_HEAP_AVOID`, set by the supervisor
/// that launches the new version): kept free here, so that any old block can sit at its
/// old address in this process. Read from the initial environment with raw system calls:
/// the first allocation may come before libc has set `environ` up, and nothing here may
/// allocate. Unreadable or malformed: nothing is avoided (the heap works as before).
fn slots_to_avoid() -> SlotSet {
    let mut value = [0u8; 2048];
    let key = mcr_protocol::env::HEAP_AVOID.as_bytes();
    match initial_env(key, &mut value) {
        Some(n) => SlotSet::parse(value.get(..n).unwrap_or_default()).unwrap_or_else(|_| SlotSet::new()),
        None => SlotSet::new(),
    }
}

/// The value of variable `key` in the process's initial environment (/proc/self/environ),
/// copied into `out`: its length, or None when it is absent, longer than `out` or
/// unreadable. Raw system calls and a buffer on the stack only.
fn initial_env(key: &[u8], out: &mut [u8]) -> Option<usize> {
    // SAFETY: open of a NUL-terminated static path; the descriptor is closed below.
    let fd = unsafe { crate::sys!(libc::SYS_open, c"/proc/self/environ".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut scan = EnvScan::new(key);
    let mut chunk = [0u8; 4096];
    let found = loop {
        // SAFETY: read writes at most `chunk.len()` bytes into `chunk`, a live local.
        let n = unsafe { crate::sys!(libc::SYS_read, fd, chunk.as_mut_ptr(), chunk.len()) };
        if n <= 0 {
            break scan.end(out);
        }
        if let Some(r) = scan.feed(chunk.get(..n as usize).unwrap_or_default(), out) {
            break r;
        }
    };
    // SAFETY: the descriptor opened above, ours alone.
    unsafe { crate::sys!(libc::SYS_close, fd) };
    found
}

/// Finds `KEY=value` among NUL-separated entries fed in pieces, copying the value out.
struct EnvScan<'k> {
    key: &'k [u8],
    /// Bytes of `KEY=` matched at the start of the current entry; `usize::MAX`: this entry
    /// is another variable.
    matched: usize,
    /// Inside the value: its length so far.
    value: Option<usize>,
}

impl<'k> EnvScan<'k> {
    fn new(key: &'k [u8]) -> Self {
        Self { key, matched: 0, value: None }
    }

    /// Feed the next bytes: `Some(result)` once decided (the value's length, or None: too long).
    fn feed(&mut self, bytes: &[u8], out: &mut [u8]) -> Option<Option<usize>> {
        for &b in bytes {
            if let Some(len) = self.value {
                if b == 0 {
                    return Some(Some(len));
                }
                let Some(slot) = out.get_mut(len) else { return Some(None) };
                *slot = b;
                self.value = Some(len + 1);
                continue;
            }
            if b == 0 {
                self.matched = 0;
            } else if self.matched == self.key.len() {
                // Just past the key: the separator.
                self.matched = if b == b'=' { 0 } else { usize::MAX };
                if b == b'=' {
                    self.value = Some(0);
                }
            } else if self.matched != usize::MAX {
                self.matched = if self.key.get(self.matched) == Some(&b) { self.matched + 1 } else { usize::MAX };
            }
        }
        None
    }

    /// End of the environment: a value still open ends there.
    fn end(&self, _out: &mut [u8]) -> Option<usize> {
        self.value
    }
}

/// Thread exit: give the thread's cache back (its blocks stay usable by the others).
extern "C" fn release_cache(cache: *mut libc::c_void) {
    let _ = LOCAL.try_with(|l| {
        l.cache.set(None);
        l.asked.set(false);
    });
    if let Some(c) = NonNull::new(cache as *mut ThreadCache) {
        // SAFETY: the value this thread's `first_cache` stored: a cache of HEAP, which
        // no one uses any more (its thread is exiting; a later allocation takes a new one).
        HEAP.release_thread_cache(unsafe { c.as_ref() });
    }
}

pub(crate) extern "C" fn fork_prepare() {
    forget_share_at_commit();
    HEAP.fork_prepare();
}

pub(crate) extern "C" fn fork_parent() {
    HEAP.fork_parent();
}

pub(crate) extern "C" fn fork_child() {
    let keep = LOCAL.try_with(|l| l.cache.get()).ok().flatten();
    HEAP.fork_child(keep);
    if crate::is_sandboxed() {
        HEAP.enter_sandbox();
    }
}

/// From the constructor, whether the runtime is active or not: the thread-exit key and
/// the fork handlers. Registered before any of the runtime's own, so that the heap is
/// locked last before a fork and unlocked first after it (the others may allocate).
pub fn init_hooks() {
    ensure_init();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: pthread_key_create writes `key`, a live local; the destructor is a function
    // of this library, which is never unloaded.
    if unsafe { libc::pthread_key_create(&mut key, Some(release_cache)) } == 0 {
        KEY.store(key, Relaxed);
    }
    // SAFETY: pthread_atfork only records the three handlers, functions of this library.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
}

/// Give the blocks the calling thread's cache holds back to their spans (the cache stays
/// usable).
pub fn flush_own_cache() {
    with_cache(|c| {
        if let Some(c) = c {
            HEAP.flush_thread_cache(c);
        }
    });
}

/// The same for the cache of the shared path.
pub fn flush_shared_cache() {
    HEAP.flush_shared_cache();
}

/// Before the process gives up the privilege to reopen its own mappings (setuid to
/// another user): later forks then need nothing from /proc/self/map_files.
pub fn before_privilege_drop() {
    HEAP.unshare();
}

/// An update maps the old version's heap regions here, at their addresses: each segment
/// copy-on-write over the old memfd the update sends on `socket` (one descriptor per segment
/// whose source is a memfd, in order), or anonymous; the update then writes the pages the
/// old process holds privately (this process cannot address the old one, which lives in
/// another PID namespace). All or nothing: on a failure the slots mapped so far are given
/// up.
pub fn map_old_heap(regions: &[OldHeapRegion], socket: Option<&str>) -> Result<(), String> {
    let wanted = regions.iter().map(|r| sources(r).filter(|s| s.is_memfd()).count()).sum::<usize>();
    let memfds = match (wanted, socket) {
        (0, _) => Vec::new(),
        (_, None) => return Err(format!("{wanted} old heap segments come from memfds, and no socket sends them")),
        (_, Some(socket)) => crate::transfer::receive_from_update(socket, wanted, 0).map_err(|(fds, why)| {
            close_all(&fds);
            why
        })?,
    };
    let mut mapped = Vec::new();
    let mut next_memfd = memfds.iter();
    let mut failure = None;
    'regions: for r in regions {
        let slot = r.slot as usize;
        // Blocks this process's startup placed at old blocks' addresses are the old blocks
        // from now on: the region's pages replace theirs.
        let base = mcr_alloc::geometry::slot_base(slot) as u64;
        crate::placed_blocks::give_way(base, base + mcr_alloc::SLOT_SIZE as u64);
        let extent = mcr_alloc::Extent { spans: r.spans as usize, caches: r.caches as usize };
        mapped.push(slot);
        for (index, (&start, source)) in r.segments.iter().zip(sources(r)).enumerate() {
            let fd = if source.is_memfd() {
                // SAFETY: a descriptor received above, open until `close_all` below.
                next_memfd.next().map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
            } else {
                None
            };
            if let Err(e) = HEAP.map_segment(slot, index, start as usize, extent, fd) {
                failure = Some(format!("mapping the old heap's region in slot {slot} (segment {index}): {e}"));
                break 'regions;
            }
            if source == OldSegmentSource::SharedMemfd {
                share_at_commit(slot, index);
            }
        }
    }
    // The mappings keep the memfds alive; the commit reopens them through /proc/self/map_files.
    close_all(&memfds);
    match failure {
        Some(why) => {
            release(&mapped);
            Err(why)
        }
        None => Ok(()),
    }
}

/// How each segment of `r` comes (a missing entry: copied, as before sources existed).
fn sources(r: &OldHeapRegion) -> impl Iterator<Item = OldSegmentSource> + '_ {
    (0..r.segments.len()).map(|i| r.sources.get(i).copied().unwrap_or_default())
}

fn close_all(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: descriptors the update sent, ours alone.
        unsafe { crate::rawfd::close(fd) };
    }
}

/// Per slot, the adopted segments mapped copy-on-write from a memfd only the old process
/// mapped: [`share_adopted_heap`] writes them back and shares them at commit.
static SHARE_AT_COMMIT: [AtomicU64; mcr_alloc::SLOTS] = [const { AtomicU64::new(0) }; mcr_alloc::SLOTS];

fn share_at_commit(slot: usize, index: usize) {
    if let Some(word) = SHARE_AT_COMMIT.get(slot) {
        word.fetch_or(1 << (index % 64), Relaxed);
    }
}

/// What [`share_adopted_heap`] did.
#[derive(Debug, Default)]
pub struct Shared {
    pub segments: usize,
    /// Bytes of this process's private pages written into the memfds, and of free spans
    /// punched out of them.
    pub written: usize,
    pub punched: usize,
    /// Segments left private, and why.
    pub failed: Vec<String>,
}

/// At commit (threads parked, the old version gone or killed): each adopted segment mapped
/// copy-on-write from a memfd only the old process mapped gets this process's written pages
/// back into the memfd and is mapped shared over it (`mcr_alloc::Heap::commit_segment`).
/// From then on it is an ordinary shared segment: the next update maps it again, and a fork
/// freezes it. One that cannot be stays private, which is correct (only its memory is held
/// twice while the memfd lives).
pub fn share_adopted_heap() -> Shared {
    let mut done = Shared::default();
    for (slot, word) in SHARE_AT_COMMIT.iter().enumerate() {
        let mask = word.swap(0, Relaxed);
        if mask == 0 {
            continue;
        }
        let mut segments = Vec::new();
        HEAP.segments(slot, |s| segments.push(s));
        for s in segments.iter().filter(|s| mask >> (s.index % 64) & 1 != 0) {
            let fd = mcr_alloc::open_map_files(None, s.first_mapping.0, s.first_mapping.1, true).map_err(|e| {
                format!("slot {slot} segment {}: reopening its memfd through /proc/self/map_files: {e}", s.index)
            });
            match fd.and_then(|fd| {
                HEAP.commit_segment(slot, s.index, mcr_alloc::AsFd::as_fd(&fd))
                    .map_err(|e| format!("slot {slot} segment {}: {e}", s.index))
            }) {
                Ok(stats) => {
                    done.segments += 1;
                    done.written += stats.written;
                    done.punched += stats.punched;
                }
                Err(why) => done.failed.push(why),
            }
        }
    }
    done
}

/// A fork: the child maps the adopted segments copy-on-write over the same memfds as this
/// process, so writing into them would change what the other sees. Neither shares them.
fn forget_share_at_commit() {
    for word in SHARE_AT_COMMIT.iter() {
        word.store(0, Relaxed);
    }
}

/// Check the old heap regions mapped in `slots` and adopt them: their blocks are this
/// process's from now on. On a failure they are given up.
pub fn adopt_old_heap(slots: &[u64]) -> Result<mcr_alloc::AdoptStats, String> {
    let list: Vec<usize> = slots.iter().map(|&s| s as usize).collect();
    let mut set = SlotSet::new();
    for &slot in &list {
        if let Err(e) = HEAP.finish_mapping(slot) {
            release(&list);
            return Err(format!("the old heap's region in slot {slot} as copied: {e}"));
        }
        set.insert(slot);
    }
    HEAP.adopt(&set).map_err(|e| {
        release(&list);
        format!("adopting the old heap: {e}")
    })
}

/// Give up old heap regions mapped but not adopted.
pub fn release(slots: &[usize]) {
    for &slot in slots {
        if let Some(word) = SHARE_AT_COMMIT.get(slot) {
            word.store(0, Relaxed);
        }
        let _ = HEAP.release_slot(slot);
    }
}

/// After the update freed the old blocks it moved: adopted regions left empty give their
/// memory and slot back.
pub fn retire_empty_regions() -> usize {
    HEAP.retire_empty()
}

/// After an update freed the old blocks it no longer needs: the adopted regions' free
/// memory goes back to the system (see `mcr_alloc::Heap::trim_adopted`).
pub fn trim_adopted_regions() -> usize {
    HEAP.trim_adopted()
}

/// Headroom tracked above a region's used part/// Headroom tracked above a region's used part: spans carved there after arming show as
/// written (beyond it they are untracked: dirty as well, but not counted as written).
const TRACKED_HEADROOM: usize = 64 << 20;

/// The parts of the heap's regions that dirty tracking covers: their data spans up to the
/// high-water mark, plus some headroom, never past what the region maps (a region maps only
/// part of its 64 GiB slot and grows it in place; spans carved later are new, so dirty
/// anyway).
pub fn used_data_ranges() -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    HEAP.regions(|r| {
        let data = r.base + mcr_alloc::FIRST_DATA_SPAN * mcr_alloc::SPAN_SIZE;
        let end = r.used_end.max(data + TRACKED_HEADROOM).min(r.mapped_end);
        if end > data {
            out.push((data as u64, end as u64));
        }
    });
    out
}

/// Whether an allocation made now is a startup allocation (the process has not completed
/// startup yet).
#[inline(always)]
pub fn in_startup() -> bool {
    !STARTUP_DONE.load(Relaxed)
}

/// Mark live block `p` as allocated during startup; false when it is no live block.
pub fn mark_startup(p: u64) -> bool {
    let Some(info) = HEAP.info_of(p as usize).filter(|i| i.start as u64 == p) else { return false };
    let Some(ptr) = NonNull::new(p as usize as *mut u8) else { return false };
    HEAP.set_info(ptr, info.requested, true);
    true
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
pub unsafe fn foreign_usable_size(p: *mut libc::c_void) -> usize {
    const IS_MMAPPED: usize = 2;
    // SAFETY: glibc's chunk header ends with the size word right before a live block
    // (the caller's contract).
    let word = unsafe { (p as *const usize).sub(1).read() };
    let overhead = if word & IS_MMAPPED != 0 { 16 } else { 8 };
    (word & !7).saturating_sub(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(env: &[u8], key: &str, pieces: usize) -> Option<Vec<u8>> {
        let mut out = [0u8; 16];
        let mut s = EnvScan::new(key.as_bytes());
        for piece in env.chunks(pieces) {
            if let Some(r) = s.feed(piece, &mut out) {
                return r.map(|n| out[..n].to_vec());
            }
        }
        s.end(&mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn a_variable_is_found_whole_in_any_pieces_and_only_by_its_full_name() {
        let env = b"HOME=/root\0MCR_HEAP_AVOIDX=9\0XMCR_HEAP_AVOID=8\0MCR_HEAP_AVOID=0-1,7\0PATH=/bin\0";
        for pieces in [1, 3, 7, env.len()] {
            assert_eq!(scan(env, "MCR_HEAP_AVOID", pieces).as_deref(), Some(&b"0-1,7"[..]), "pieces of {pieces}");
        }
        assert_eq!(scan(b"A=1\0MCR_HEAP_AVOID=", "MCR_HEAP_AVOID", 2).as_deref(), Some(&b""[..]), "empty, last");
        assert_eq!(scan(b"A=1\0B=2\0", "MCR_HEAP_AVOID", 4), None, "absent");
        assert_eq!(scan(b"MCR_HEAP_AVOID=0123456789abcdefXYZ\0", "MCR_HEAP_AVOID", 5), None, "too long");
    }
}
