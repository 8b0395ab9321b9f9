//! One process's transfer, phase by phase: the roots ([`crate::roots`]), the walk from
//! them ([`crate::walk`]), the plan ([`crate::plan`]), the write ([`crate::write`]).

use crate::hints::{object_handlers, Hints};
use crate::image::Image;
use crate::plan::{describe_unmatched, plan};
use crate::startup::StartupTables;
use crate::target::{startup_block_size, Target, TargetError};
use crate::write::{Destinations, Writer};
use crate::{roots, walk, write};
use mcr_heap::{HeapIndex, MemoryError, ReadMemory};
use mcr_typemodel::Program;

/// At most this many reasons for reallocated startup objects go into a report.
const MAX_STARTUP_NOTES: usize = 16;

/// One version's binary and where it is loaded.
pub struct Version<'a> {
    pub prog: &'a Program,
    pub image: Image,
}

/// An old process and its new counterpart.
pub struct Pair<'a> {
    pub old: Version<'a>,
    pub old_mem: &'a dyn ReadMemory,
    pub heap: &'a HeapIndex,
    pub new: Version<'a>,
    /// Whether old memory `[addr, addr + len)` was written since startup; `None` when
    /// nothing tracked writes (everything counts as written).
    pub dirty: Option<&'a dyn Fn(u64, u64) -> bool>,
    /// Both versions' startup allocations, to match startup objects (`None`: every
    /// reached block is reallocated).
    pub startup: Option<&'a StartupTables>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {reason}")]
    Conflict { path: String, reason: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the new version: {0}")]
    Target(#[from] TargetError),
    #[error("the new version: asked for {asked} blocks, got {got}")]
    Allocated { asked: usize, got: usize },
    /// The new version's object handler failed on `object` (a global's name, or the type
    /// of the heap objects it was given).
    #[error("{object}: {source}")]
    Handler {
        object: String,
        #[source]
        source: TargetError,
    },
}

pub(crate) fn conflict(path: impl Into<String>, reason: impl Into<String>) -> TransferError {
    TransferError::Conflict { path: path.into(), reason: reason.into() }
}

/// What a transfer did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Globals copied into the new version (written since startup).
    pub globals: usize,
    /// Globals left as the new version's startup made them (not written since startup).
    pub globals_clean: usize,
    /// Globals of the old version the new one no longer has: their data is dropped.
    pub globals_dropped: Vec<String>,
    /// Heap blocks carried into the new version (fresh blocks, and startup blocks of the
    /// new version matched with old ones), and the bytes written into them.
    pub objects: usize,
    pub bytes: u64,
    /// Old startup objects matched with the new version's startup block of the same
    /// call-stack ID, thread and ordinal (reused: not reallocated, nothing leaked).
    pub startup_matched: usize,
    /// Of those, how many kept what the new version's startup put in them (the old
    /// version never wrote them since startup).
    pub startup_kept: usize,
    /// Old startup objects reallocated instead (no counterpart, or one too small), and
    /// why (the first few).
    pub startup_reallocated: usize,
    pub startup_notes: Vec<String>,
    /// Live heap blocks in the old process (reached or not).
    pub live_objects: usize,
    /// Objects an MCR_ADD_OBJ_HANDLER of the new version adjusted.
    pub handled: usize,
    pub warnings: Vec<String>,
}

impl Report {
    /// Add another process's figures to these.
    pub fn add(&mut self, o: &Report) {
        self.globals += o.globals;
        self.globals_clean += o.globals_clean;
        self.globals_dropped.extend(o.globals_dropped.iter().cloned());
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.live_objects += o.live_objects;
        self.handled += o.handled;
        self.startup_matched += o.startup_matched;
        self.startup_kept += o.startup_kept;
        self.startup_reallocated += o.startup_reallocated;
        self.startup_notes.extend(o.startup_notes.iter().cloned());
        self.warnings.extend(o.warnings.iter().cloned());
    }
}

/// The result: what moved where, for relocating what the kernel holds (epoll data).
pub struct Transfer {
    moved: Destinations,
    pub report: Report,
}

impl Transfer {
    /// The new value of `v` if it points into a block this transfer moved.
    pub fn relocate(&self, heap: &HeapIndex, v: u64) -> Option<u64> {
        let o = heap.containing(v)?;
        self.moved.get(&o.addr)?.at(v - o.addr)
    }
}

/// Move the state of one old process into its new counterpart.
pub fn transfer(pair: &Pair, target: &mut dyn Target) -> Result<Transfer, TransferError> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let hints = Hints::of_builds(old, new);
    let mut report = Report {
        live_objects: pair.heap.len(),
        warnings: hints.unresolved.iter().map(|u| format!("hint ignored: {u}")).collect(),
        ..Report::default()
    };
    let roots = roots::collect(pair)?;
    report.globals_clean = roots.clean;
    report.globals_dropped = roots.dropped;

    let reached = walk::walk(old, pair.old_mem, pair.heap, &hints, &roots.globals)?;

    let handlers = object_handlers(new);
    let plan = plan(old, new, &reached, &handlers, pair.startup, &mut |b| startup_block_size(&*target, b))?;
    report.startup_reallocated = plan.unmatched.len();
    report.startup_notes = plan
        .unmatched
        .iter()
        .take(MAX_STARTUP_NOTES)
        .map(|(a, why)| describe_unmatched(&reached, pair.startup, *a, why))
        .collect();

    let moved = write::allocate(target, &plan)?;
    let relocations = if handlers.is_empty() { Vec::new() } else { write::relocations(pair, &reached, &moved) };
    let writer = Writer {
        pair,
        hints: &hints,
        reached: &reached,
        plan: &plan,
        moved: &moved,
        handlers: &handlers,
        relocations: &relocations,
    };
    writer.blocks(target, &mut report)?;
    writer.globals(target, &roots.globals, &mut report)?;
    Ok(Transfer { moved, report })
}

