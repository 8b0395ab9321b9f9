//! The new process, as the transfer sees it: memory it reads and writes, blocks its
//! program's malloc allocates, object handlers its runtime runs. `mcr update` drives a
//! live process through its runtime; the tests drive an in-memory one.

use crate::startup::StartupKey;
use mcr_heap::HEADER;
use mcr_protocol::Relocation;

/// Why the new process did not do what the transfer asked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Its runtime refused a request or failed it (its own words), or answered out of turn.
    #[error("{0}")]
    Runtime(String),
    #[error("reading {len} bytes at {addr:#x}: {source}")]
    Read {
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {len} bytes at {addr:#x}: {source}")]
    Write {
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    /// The process is gone (killed, crashed): what failed is only the symptom.
    #[error("the new version's process {pid} died during the state transfer (while {doing})")]
    Died { pid: i32, doing: String },
}

/// The new version, as the tracer needs it.
pub trait Target {
    /// Allocate blocks of these sizes through the program's malloc; their addresses.
    fn allocate(&mut self, sizes: &[u64]) -> Result<Vec<u64>, TargetError>;
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), TargetError>;
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError>;
    /// Run the new version's MCR_ADD_OBJ_HANDLER for `what` on each object: (the old
    /// object's bytes, the new object's address, its size). `relocations` (sorted) says
    /// where every old object went, for the handlers' `mcr_translate()`.
    fn run_handlers(
        &mut self,
        what: &str,
        objects: &[(Vec<u8>, u64, u64)],
        relocations: &[Relocation],
    ) -> Result<(), TargetError>;
    /// Writes may be buffered: make them all land (also before `read` and handlers).
    fn flush(&mut self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Blocks `allocate` made for old startup objects that had no counterpart take over
    /// their identity (startup flag, call stack and ordinal) in the new version.
    fn adopt_startup(&mut self, blocks: &[(u64, StartupKey)]) -> Result<(), TargetError> {
        let _ = blocks;
        Ok(())
    }
}

/// The size of the new version's block at `addr` when it is live and was allocated
/// during the new version's startup (its header says so).
pub(crate) fn startup_block_size(target: &dyn Target, addr: u64) -> Option<u64> {
    let mut h = [0u8; HEADER];
    target.read(addr.checked_sub(HEADER as u64)?, &mut h).ok()?;
    let (block, info) = mcr_heap::live_header(addr - HEADER as u64, &h)?;
    (block == addr && info.startup).then_some(info.size)
}
