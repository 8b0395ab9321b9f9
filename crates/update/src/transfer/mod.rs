//! State transfer (paper §6): after the new version replayed its startup and parked, and
//! before commit, each old process's state moves into its new counterpart: globals and
//! the heap blocks they reach, type-transformed (`mcr-tracer`), the client connections
//! still open (installed at their old numbers) and their epoll registrations (data
//! pointers relocated), and every other descriptor it made after startup, at the same
//! number (the same open file description). The old processes are only read, so a failure here rolls back
//! with nothing to undo.
//!
//! - [`run`]: one tracer per process pair, in parallel ([`process`] moves one pair);
//! - [`respawn_volatile`]: per-connection processes recreated by the new build first;
//! - [`adopt`]: `--fresh-state`, idle connections handed over without their state;
//! - `descriptors`: moving descriptors between processes; `runtime`: commands to a new
//!   process's runtime; `target`: the tracer's view of a new process.

mod adopt;
mod adopt_heap;
mod descriptors;
mod initial_data;
mod keys;
mod mappings;
pub mod models;
pub(crate) mod owners;
pub(crate) mod peers;
mod process;
pub(crate) mod reopen;
mod respawn;
mod runtime;
mod target;

pub use adopt::adopt;
pub use respawn::respawn_volatile;

use crate::warning::Warn;
pub(crate) use descriptors::drop_replayed_messages;
use mcr_client::pids::PidsError;
use mcr_client::{ClientError, Connection};
use mcr_protocol::{OpenConnections, RuntimeReply};
use mcr_typemodel::Program;
use process::ProcessPair;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the new version's supervisor is unknown")]
    NoSupervisor,
    #[error(transparent)]
    Pids(#[from] PidsError),
    /// A supervisor or a runtime behind it did not do what was asked.
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error("unexpected answer {0:?}")]
    UnexpectedReply(Box<RuntimeReply>),
    #[error("process {0} has no counterpart in the new version")]
    NoCounterpart(i32),
    #[error("cannot find the binary of process {host_pid}")]
    Binary {
        host_pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    TypeModel(#[from] mcr_typemodel::TypeModelError),
    #[error(transparent)]
    Memory(#[from] mcr_heap::MemoryError),
    #[error("cannot find {} in {}process {pid}'s memory map", .binary.display(), if *.new { "the new " } else { "" })]
    NoImage { binary: PathBuf, pid: i32, new: bool },
    #[error("cannot open the new process {pid}'s memory")]
    NewMemory {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// The tracer stopped (a conflict in the old state, or the new process refused).
    #[error("process {pid}")]
    Trace {
        pid: i32,
        #[source]
        source: mcr_tracer::TransferError,
    },
    #[error(
        "process {pid}'s connection fd {fd} is served by a thread, not an event loop: its state is on that thread's stack, \
         which mcr does not move. Give the new version an MCR_ADD_RESUME_HANDLER that hands such sessions back to its \
         workers (see include/mcr.h), or let them close first (--drain-timeout, or update when idle)"
    )]
    ThreadServed { pid: i32, fd: i32 },
    #[error("epoll data {0:#x} points to a heap block the transfer did not move")]
    EpollData(u64),
    #[error(
        "process {pid}'s epoll set fd {epfd} moves as it is (shared with the old version until commit), but its \
         registration of fd {fd} holds heap address {data:#x}, which moves: mcr cannot relocate it"
    )]
    EpollDataInMovedSet { pid: i32, epfd: i32, fd: i32, data: u64 },
    #[error(
        "process {pid} was forked after startup (per connection) and holds fd {fd}, made after its fork: \
         a respawned process gets only its connection"
    )]
    VolatileDescriptor { pid: i32, fd: i32 },
    #[error("process {pid}: fd {fd}: {why}")]
    Owner { pid: i32, fd: i32, why: String },
    #[error(transparent)]
    Descriptors(#[from] descriptors::DescriptorError),
    #[error(transparent)]
    Respawn(#[from] respawn::RespawnError),
    #[error("process {pid} changed attributes after startup that mcr cannot carry: {what}")]
    Attributes { pid: i32, what: String },
    #[error("process {pid}: pthread key {index}: {why}")]
    PthreadKey { pid: i32, index: u32, why: String },
    #[error("process {pid}: {message}")]
    PthreadKeys { pid: i32, message: String },
    /// Of the blocks libraries allocated during the old process's startup and that are
    /// still live, the new version's startup allocated only `held` at the same addresses:
    /// its own state of those libraries would exist beside the old one, and the new code
    /// run on it, without what moved (DESIGN.md "Mutable tracing", placed startup blocks).
    #[error(
        "process {pid}: libraries allocated {live} blocks during the old version's startup that are still live; \
         the new version's startup allocated only {held} of them at the same addresses (its allocations inside \
         libraries stopped following the old version's), so it made its own of the others and its code would run \
         on those, not on the ones holding the state that moves. Make the new version's startup call the libraries \
         as the old one did (the same calls, in the same order, before its first quiescent point), or update with \
         --fresh-state"
    )]
    LibraryStateTwice { pid: i32, live: usize, held: usize },
    #[error("a tracer thread panicked")]
    Panicked,
    #[error("cannot read process {pid}'s mappings")]
    Mappings {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// What the transfer did, for the update's report.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug)]
pub struct Summary {
    pub processes: usize,
    /// Globals, heap blocks and handlers, summed over the processes.
    #[serde(flatten)]
    pub state: mcr_tracer::Report,
    pub connections: usize,
    /// Other descriptors made after startup, moved at their numbers.
    #[serde(default)]
    pub descriptors: usize,
    /// Per-connection processes the new version's respawn handler recreated.
    pub respawned_processes: usize,
    /// Dirty tracking in the old processes: pages written since startup, and pages the
    /// tracking showed clean (what the new version's startup already made is not copied).
    pub dirty_pages: u64,
    pub clean_pages: u64,
    pub heap_scan_ms: f64,
    /// Fetching both versions' startup allocation tables (to match startup objects).
    pub startup_tables_ms: f64,
    pub trace_ms: f64,
    pub connections_ms: f64,
    /// Memory mapped after startup, made again at the same addresses (copied, or shared).
    #[serde(default)]
    pub mapped_bytes: u64,
    /// Pages of memory the program mapped itself at startup and wrote since, carried over
    /// what the new version's startup put there (their bytes).
    #[serde(default)]
    pub startup_mapped_bytes_carried: u64,
    /// The old heap regions the new processes adopted, and the bytes of their pages copied.
    #[serde(default)]
    pub heap_regions_adopted: usize,
    #[serde(default)]
    pub heap_bytes_adopted: u64,
    /// The bytes of the adopted regions mapped copy-on-write from the old memfds instead of
    /// copied (what those memfds held).
    #[serde(default)]
    pub heap_bytes_mapped: u64,
    #[serde(default)]
    pub heap_adopt_ms: f64,
    /// pthread keys made after startup, recreated at their indices.
    #[serde(default)]
    pub pthread_keys: usize,
}

impl Summary {
    fn absorb(&mut self, o: Summary) {
        self.processes += o.processes;
        self.state.add(&o.state);
        self.connections += o.connections;
        self.descriptors += o.descriptors;
        self.respawned_processes += o.respawned_processes;
        self.dirty_pages += o.dirty_pages;
        self.clean_pages += o.clean_pages;
        self.heap_scan_ms += o.heap_scan_ms;
        self.startup_tables_ms += o.startup_tables_ms;
        self.trace_ms += o.trace_ms;
        self.connections_ms += o.connections_ms;
        self.mapped_bytes += o.mapped_bytes;
        self.startup_mapped_bytes_carried += o.startup_mapped_bytes_carried;
        self.heap_regions_adopted += o.heap_regions_adopted;
        self.heap_bytes_adopted += o.heap_bytes_adopted;
        self.heap_bytes_mapped += o.heap_bytes_mapped;
        self.heap_adopt_ms += o.heap_adopt_ms;
        self.pthread_keys += o.pthread_keys;
    }
}

/// The old and new versions' processes, by PID inside their namespaces → host PIDs.
pub struct Processes {
    pub old: BTreeMap<i32, i32>,
    pub new: BTreeMap<i32, i32>,
}

/// Opens a connection of its own to each supervisor: (old version, new version).
pub type Connect<'a> = &'a (dyn Fn() -> Result<(Connection, Connection), ClientError> + Sync);

/// Move the state of every old process into its new counterpart: one tracer per process
/// pair, as many at once as there are cores, each with its own connections to both
/// supervisors (`connect` opens them).
pub fn run(
    procs: &Processes,
    connect: Connect<'_>,
    connections: &[OpenConnections],
    warn: Warn<'_>,
    count_pointers: bool,
) -> Result<Summary, TransferError> {
    let mut programs: BTreeMap<PathBuf, Arc<Program>> = BTreeMap::new();
    let mut pairs = Vec::new();
    let mut startup_sockets = startup_sockets(procs, connect)?;
    for (&pid, &old_host) in &procs.old {
        let &new_host = procs.new.get(&pid).ok_or(TransferError::NoCounterpart(pid))?;
        let (old_exe, new_exe) = (exe(old_host)?, exe(new_host)?);
        for p in [&old_exe, &new_exe] {
            if !programs.contains_key(p) {
                programs.insert(p.clone(), models::model(p)?);
            }
        }
        let startup_sockets = startup_sockets.remove(&pid).unwrap_or_default();
        pairs.push(ProcessPair { pid, old_host, new_host, old_exe, new_exe, startup_sockets, count_pointers });
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(pairs.len().max(1));
    let next_pair = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Summary, TransferError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Summary, TransferError> {
                    let (mut old, mut next) = connect()?;
                    let mut sum = Summary::default();
                    loop {
                        let i = next_pair.fetch_add(1, Ordering::SeqCst);
                        if i >= pairs.len() || failed.load(Ordering::SeqCst) {
                            return Ok(sum);
                        }
                        let p = &pairs[i];
                        let versions = (&*programs[&p.old_exe], &*programs[&p.new_exe]);
                        match process::transfer(p, versions, &mut old, &mut next, connections, warn) {
                            Ok(s) => sum.absorb(s),
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(TransferError::Panicked))).collect()
    });
    let mut sum = Summary::default();
    for r in results {
        sum.absorb(r?);
    }
    Ok(sum)
}

/// For each old process, its descriptors made after startup that the new process gets as
/// the new version's counterpart of a startup socket
/// ([`descriptors::startup_socket_counterparts`]), looked at before anything moves.
fn startup_sockets(
    procs: &Processes,
    connect: Connect<'_>,
) -> Result<BTreeMap<i32, descriptors::StartupSockets>, TransferError> {
    let (mut old, _) = connect()?;
    // A process that cannot say (gone meanwhile) keeps its old sockets.
    let post_startup: BTreeMap<i32, Vec<i32>> =
        procs.old.keys().filter_map(|&pid| Some((pid, old.post_startup_fds(pid).ok()?))).collect();
    Ok(descriptors::startup_socket_counterparts(&procs.old, &procs.new, &post_startup))
}

fn exe(host_pid: i32) -> Result<PathBuf, TransferError> {
    mcr_procfs::exe(host_pid).map_err(|source| TransferError::Binary { host_pid, source })
}
