//! mcr's heap allocator engine (DESIGN.md "Addresses", "Allocation metadata").
//!
//! The heap lives in a fixed window of the address space cut into 64 GiB slots; each process
//! allocates in its own region (one slot, of which only the parts in use are mapped, grown
//! in place as spans are carved: see `extent`), whose metadata sits out of band at fixed
//! offsets from the region's base: a span table (64 KiB spans, a size class each), live bitmaps (one
//! bit per block, no header per block), partial-span lists and the thread caches. Every
//! reference inside a region is a span index or an address in the window, so a new process
//! that maps a region at its address (copy-on-write over the memfd behind it) can read it,
//! list its live blocks, and *adopt* it: free the old blocks and reuse their memory like its
//! own. The crate's README describes the layout, the invariants and the update protocol.
//!
//! The engine never allocates (no `alloc`, no `std`), never panics on a path `malloc` or
//! `free` reach (foreign pointers are ignored, failures return `None`), and makes its system
//! calls raw (rustix's linux_raw backend). The runtime owns the per-thread state: it keeps
//! each thread's `&ThreadCache` in its TLS and passes it to every call.
//!
//! ```text
//! init(&Config)                     reserve the slots to avoid, map the own region
//! thread_cache / release_thread_cache
//! malloc calloc realloc memalign free usable_size
//! block_of(addr)                    O(1): the live block containing addr
//! visit(slot, f)                    every live block of a region, from the bitmaps
//! regions / segments / slots_in_use enumeration for the supervisor and the successor
//! map_old_region | map_segment + import_private_pages + finish_mapping, then adopt
//! commit_segment                    write back and share again
//! fork_prepare / fork_parent / fork_child, unshare
//! retire_empty, release_slot
//! ```
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

#[cfg(test)]
extern crate std;

mod adopt;
mod api;
mod bitmap;
pub mod class;
mod extent;
mod fork;
pub mod geometry;
mod heap;
mod layout;
mod lock;
mod os;
pub mod remote;
mod small;
mod spans;
mod view;

pub use adopt::{AdoptStats, CommitStats, MapStats};
pub use api::BlockInfo;
pub use extent::{Extent, CACHE_STEP, GROW_SPANS};
pub use geometry::{SlotListError, SlotSet, SLOTS, SLOT_SIZE, SPAN_SIZE, WINDOW_BASE, WINDOW_END};
pub use heap::{memfd_reopenable, Config, Heap, HeapError, Mode, RegionInfo, Role, SegmentBacking, SegmentInfo, Stats};
pub use layout::{ThreadCache, FIRST_DATA_SPAN, LAYOUT_VERSION, MAX_SEGMENTS, THREAD_CACHES};
pub use os::{for_each_mapping_in, mapping_of, OsError, ProcPath};
pub use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

/// Opens the file behind the mapping `[start, end)` of process `pid` (`None`: this process)
/// through `/proc/PID/map_files`: how a successor reaches an old process's memfd, and how a
/// process reaches its own for a commit. Needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN and
/// ptrace access to `pid`. `[start, end)` is a mapping as the heap made it (a segment's
/// `first_mapping`); if the kernel split it since, the part that holds `start` is opened.
pub fn open_map_files(pid: Option<i32>, start: usize, end: usize, write: bool) -> Result<OwnedFd, OsError> {
    os::open_map_files(pid, start, end, write)
}

/// Calls `f(start, end)` for each run of pages in `[start, end)` that process `pid` (`None`:
/// this process) holds privately: written in a segment mapped copy-on-write, or any page of
/// an anonymous one; never the pages of a shared memfd. These are the pages a successor must
/// copy and a commit writes back. `PAGEMAP_SCAN` (Linux 6.7), else the pagemap entries.
pub fn private_pages(pid: Option<i32>, start: usize, end: usize, f: impl FnMut(usize, usize)) -> Result<(), OsError> {
    let pagemap = os::open(&ProcPath::pagemap(pid), false)?;
    os::private_pages(pagemap.as_fd(), start, end, f)
}

#[cfg(test)]
mod tests;
