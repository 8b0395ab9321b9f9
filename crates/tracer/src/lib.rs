//! Mutable tracing (paper §6, DESIGN.md "Mutable tracing"): the old version's state is
//! walked from its roots (the main binary's globals), every heap block reached through a
//! typed pointer takes that type, and the lot is rebuilt in the new version: blocks
//! allocated there through the program's own malloc, each transformed into the new
//! version's layout (`mcr-typemodel`'s plans), pointers relocated.
//!
//! Deliberate change from the design: the tracer runs in `mcr update`, not inside the new
//! process. It reads the old process (never writing it, so a rollback needs nothing) and
//! writes the new one from outside; only allocation has to happen inside, which the
//! runtime does on request (`Target::allocate`). DWARF and type graphs thus never enter
//! the server's address space.
//!
//! Opaque memory is handled conservatively: a `void *` is relocated and its target copied
//! as bytes, but a heap address found in a union, a pointer-sized integer or an untyped
//! block cannot be told from data, so it stops the update with the path that leads to it
//! (the paper keeps such targets at their address; glibc's allocator cannot promise that).
//!
//! [`transfer()`] runs four phases, one module each, every one handing the next a plain
//! struct: `roots` (the globals to carry over: `Roots`), `walk` (the heap blocks
//! they reach, typed or opaque, with their paths and bytes: `Reached`), `plan`
//! (per type a transformation, per block its new size and place: `TransferPlan`),
//! `write` (allocate, rebuild, relocate, run object handlers, write the globals); between
//! the walk and the plan, `untyped` stops the update when a block the walk could not type
//! looks like an object of a type the update changes (no typed path leads to). When no
//! type changes and the new process adopted the old heap, the walk stops at the adopted
//! heap's blocks and `untouched` checks the rest at memory speed instead of walking it.
//! The new process is a [`Target`]; the unit tests drive an in-memory one (`testing`).

mod census;
mod hints;
mod image;
mod literal;
mod plan;
mod preview;
mod roots;
mod stack;
pub mod startup;
mod target;
#[cfg(test)]
mod testing;
mod transfer;
mod untouched;
mod untyped;
mod walk;
mod write;

pub use census::{PointerCensus, PointerCounts};
pub use hints::{normalize, Hints, Origin};
pub use image::{symbol_containing, translate, Image};
pub use preview::{annotations, compare};
pub use stack::{StackLayout, StackMap};
pub use startup::{StartupKey, StartupRecord, StartupTable, StartupTables};
pub use target::{Target, TargetError};
pub use transfer::{transfer, transfer_with_words, Pair, Report, Transfer, TransferError, Version};
