//! The tracer's view of a new process (`mcr_tracer::Target`): memory through
//! `process_vm_writev` and /proc/PID/mem, allocations and handlers through its runtime.

use super::runtime::NewProcess;
use mcr_protocol::{HandlerObject, Relocation, RelocationTable, RuntimeCommandKind, RuntimeReply, StartupAlloc};
use mcr_tracer::{StartupKey, Target, TargetError};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Blocks per process_vm_writev (the kernel takes at most IOV_MAX = 1024).
const WRITE_BATCH: usize = 512;

pub(crate) struct TracerTarget<'c> {
    /// For the commands after the trace (connections, epoll registrations).
    pub process: NewProcess<'c>,
    /// /proc/PID/mem of the process, read-write.
    mem: File,
    /// Writes not yet made, sent together (process_vm_writev, many blocks per call).
    pending: Vec<(u64, Vec<u8>)>,
}

impl<'c> TracerTarget<'c> {
    pub fn new(process: NewProcess<'c>, mem: File) -> Self {
        Self { process, mem, pending: Vec::new() }
    }

    fn runtime(&mut self, command: RuntimeCommandKind) -> Result<RuntimeReply, TargetError> {
        self.process.runtime(command).map_err(|e| self.explain(TargetError::Runtime(crate::error::chain(&e))))
    }

    /// A failure to reach a process that has died is said as such: "writing 8 bytes at
    /// 0x…: failed to write whole buffer" meant the new version was gone.
    fn explain(&self, e: TargetError) -> TargetError {
        let pid = self.process.host_pid;
        let gone = mcr_procfs::status::read(pid).map_or(true, |s| s.is_exited());
        if gone {
            TargetError::Died { pid: self.process.pid, doing: e.to_string() }
        } else {
            e
        }
    }
}

impl Target for TracerTarget<'_> {
    fn allocate(&mut self, sizes: &[u64]) -> Result<Vec<u64>, TargetError> {
        match self.runtime(RuntimeCommandKind::Allocate { sizes: sizes.to_vec() })? {
            RuntimeReply::Allocated { addrs } => Ok(addrs),
            other => Err(TargetError::Runtime(format!("unexpected answer {other:?}"))),
        }
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), TargetError> {
        self.write_owned(addr, bytes.to_vec())
    }

    fn write_owned(&mut self, addr: u64, bytes: Vec<u8>) -> Result<(), TargetError> {
        self.pending.push((addr, bytes));
        if self.pending.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        let pending = adjoined(std::mem::take(&mut self.pending));
        for chunk in pending.chunks(WRITE_BATCH) {
            let local: Vec<libc::iovec> = chunk
                .iter()
                .map(|(_, b)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|(a, b)| libc::iovec { iov_base: *a as usize as *mut libc::c_void, iov_len: b.len() })
                .collect();
            let want: usize = chunk.iter().map(|(_, b)| b.len()).sum();
            // SAFETY: iovecs over live local buffers and the new process's addresses (the
            // kernel checks those); nothing here is aliased.
            let n = unsafe {
                libc::process_vm_writev(
                    self.process.host_pid,
                    local.as_ptr(),
                    local.len() as _,
                    remote.as_ptr(),
                    remote.len() as _,
                    0,
                )
            };
            if n < 0 || n as usize != want {
                // Partial or refused (a read-only page): one block at a time through
                // /proc/PID/mem, which says which one fails.
                for (a, b) in chunk {
                    self.mem
                        .write_all_at(b, *a)
                        .map_err(|source| self.explain(TargetError::Write { addr: *a, len: b.len(), source }))?;
                }
            }
        }
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let len = buf.len();
        self.mem.read_exact_at(buf, addr).map_err(|source| self.explain(TargetError::Read { addr, len, source }))
    }

    fn free(&mut self, blocks: &[u64]) -> Result<(), TargetError> {
        self.flush()?;
        self.runtime(RuntimeCommandKind::Free { addrs: blocks.to_vec() }).map(|_| ())
    }

    fn adopt_startup(&mut self, blocks: &[(u64, StartupKey)]) -> Result<(), TargetError> {
        let blocks = blocks
            .iter()
            .map(|(addr, k)| StartupAlloc {
                addr: *addr,
                stack: mcr_callstack::format_id(k.stack),
                thread: k.thread,
                ordinal: k.ordinal,
                site: String::new(),
            })
            .collect();
        self.runtime(RuntimeCommandKind::AdoptStartupBlocks { blocks }).map(|_| ())
    }

    /// The old bytes go to scratch blocks in the new process, with the relocation table
    /// the handlers' mcr_translate() reads; the handler runs there; the scratch blocks
    /// are freed.
    fn run_handlers(
        &mut self,
        what: &str,
        objects: &[(Vec<u8>, u64, u64)],
        relocations: &[Relocation],
    ) -> Result<(), TargetError> {
        self.flush()?;
        let mut sizes: Vec<u64> = objects.iter().map(|(b, _, _)| b.len() as u64).collect();
        if !relocations.is_empty() {
            sizes.push((relocations.len() * Relocation::SIZE) as u64);
        }
        let scratch = self.allocate(&sizes)?;
        let mut batch = Vec::with_capacity(objects.len());
        for ((bytes, new, new_size), at) in objects.iter().zip(&scratch) {
            self.write(*at, bytes)?;
            batch.push(HandlerObject { old: *at, old_size: bytes.len() as u64, new: *new, new_size: *new_size });
        }
        let table = match scratch.get(objects.len()) {
            Some(&addr) if !relocations.is_empty() => {
                let bytes: Vec<u8> = relocations.iter().flat_map(|r| r.to_bytes()).collect();
                self.write(addr, &bytes)?;
                Some(RelocationTable { addr, count: relocations.len() as u64 })
            }
            _ => None,
        };
        self.flush()?;
        let r = self.runtime(RuntimeCommandKind::RunObjHandlers {
            what: what.to_string(),
            objects: batch,
            relocations: table,
        });
        let _ = self.runtime(RuntimeCommandKind::Free { addrs: scratch });
        r.map(|_| ())
    }
}

/// `writes` with each run of writes that follow one another in memory (fresh blocks of
/// one size class, allocated together) made one: the kernel pins the target's pages once
/// per piece (`process_vm_writev`), and a layout update of 1 000 000 objects spent a sixth
/// of its transfer pinning each 48-byte object's page again.
fn adjoined(writes: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(writes.len());
    for (addr, bytes) in writes {
        match out.last_mut() {
            Some((at, run)) if *at + run.len() as u64 == addr => run.extend_from_slice(&bytes),
            _ => out.push((addr, bytes)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::adjoined;

    #[test]
    fn writes_that_follow_one_another_are_made_one() {
        let w =
            vec![(100, vec![1, 2]), (102, vec![3]), (103, vec![4, 5]), (110, vec![6]), (111, vec![7]), (50, vec![8])];
        assert_eq!(adjoined(w), [(100, vec![1, 2, 3, 4, 5]), (110, vec![6, 7]), (50, vec![8])]);
    }
}
