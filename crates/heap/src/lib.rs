//! Allocation metadata (DESIGN.md "Allocation metadata"), as the update reads it.
//!
//! The runtime serves the program's malloc family from mcr's allocator (`mcr-alloc`),
//! whose metadata is out of band at fixed offsets of each heap region: size class per
//! span, live bits, and per block what the program asked for and whether it was
//! allocated during startup. This crate lists a process's live blocks from that metadata
//! alone, read from outside (`/proc/PID/mem`), without scanning its memory, and answers
//! for one block of another process.

pub mod index;
pub mod memory;

pub use index::{block_at, Blocks, HeapIndex, Object};
pub use mcr_alloc::SlotSet;
pub use memory::{
    heap_regions, heap_slots, heap_slots_touched, MappedView, MemoryError, ProcessMemory, ReadMemory, Region, Snapshot,
};
