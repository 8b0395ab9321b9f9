//! Commands to the runtime of a process, through its version's supervisor.

use super::TransferError;
use mcr_client::{ClientError, Connection};
use mcr_protocol::{RuntimeCommandKind, RuntimeReply, StartupAlloc};
use mcr_tracer::{StartupKey, StartupRecord, StartupTable};

/// A process of the new version: its PID in the new namespace (what its supervisor
/// knows it by) and on the host (what /proc knows it by).
pub(crate) struct NewProcess<'c> {
    pub next: &'c mut Connection,
    pub pid: i32,
    pub host_pid: i32,
}

impl NewProcess<'_> {
    pub fn runtime(&mut self, command: RuntimeCommandKind) -> Result<RuntimeReply, ClientError> {
        self.next.runtime(self.pid, command)
    }
}

/// A process's startup allocations, as its runtime recorded them (`conn`: its version's
/// supervisor), and the old heap's blocks its startup holds at their own addresses (an
/// update's new process: `StartupLog::allocated_at_startup`).
pub(crate) fn startup_table(conn: &mut Connection, pid: i32) -> Result<(StartupTable, Vec<u64>), TransferError> {
    match conn.runtime(pid, RuntimeCommandKind::StartupAllocations)? {
        RuntimeReply::StartupAllocations { allocs, held } => Ok((StartupTable::new(&records(&allocs)), held)),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

/// The main thread's block of the executable's thread-local variables, if it has one (a
/// runtime that does not know the command answers with an error: no block).
pub(crate) fn main_thread_tls(conn: &mut Connection, pid: i32) -> Result<Option<u64>, TransferError> {
    match conn.runtime(pid, RuntimeCommandKind::MainThreadTls)? {
        RuntimeReply::MainThreadTls { block } => Ok(block),
        RuntimeReply::Error { .. } => Ok(None),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

fn records(allocs: &[StartupAlloc]) -> Vec<StartupRecord> {
    allocs
        .iter()
        .filter_map(|a| {
            let stack = mcr_callstack::parse_id(&a.stack)?;
            Some(StartupRecord {
                addr: a.addr,
                key: StartupKey { stack, thread: a.thread, ordinal: a.ordinal },
                site: a.site.clone(),
            })
        })
        .collect()
}
