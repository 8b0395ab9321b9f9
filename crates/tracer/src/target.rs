//! The new process, as the transfer sees it: memory it reads and writes, blocks its
//! program's malloc allocates, object handlers its runtime runs. `mcr update` drives a
//! live process through its runtime; the tests drive an in-memory one.

use crate::startup::StartupKey;
use mcr_heap::{MemoryError, Object, ReadMemory};
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
    /// [`Target::write`] of bytes the caller no longer needs (a target that queues writes
    /// keeps them without a copy).
    fn write_owned(&mut self, addr: u64, bytes: Vec<u8>) -> Result<(), TargetError> {
        self.write(addr, &bytes)
    }
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
    /// Free blocks of the adopted old heap (through the program's free).
    fn free(&mut self, blocks: &[u64]) -> Result<(), TargetError> {
        let _ = blocks;
        Ok(())
    }
    /// The live block of the new process containing `addr`, from its allocator's metadata
    /// (read with `read`).
    fn block(&self, addr: u64) -> Option<Object> {
        mcr_heap::block_at(&TargetMemory(self), addr)
    }
}

/// A target's memory as the heap reader reads it.
struct TargetMemory<'t, T: ?Sized>(&'t T);

impl<T: Target + ?Sized> ReadMemory for TargetMemory<'_, T> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.read(addr, buf).map_err(|e| MemoryError::Read {
            pid: 0,
            addr,
            len: buf.len(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// The size of the new version's block at `addr` when it is live and was allocated
/// during the new version's startup (its allocator's metadata says so).
pub(crate) fn startup_block_size(target: &dyn Target, addr: u64) -> Option<u64> {
    target.block(addr).filter(|b| b.addr == addr && b.startup).map(|b| b.size)
}
