//! Memory the old process mapped itself after startup (issue 12): private anonymous
//! mappings reappear in the new process at the same addresses, with their contents,
//! protection and lock, so the pointers the globals and the heap hold into them keep their
//! value. The old process is only read. The kinds not moved yet (shared and file-backed
//! mappings) are named by the preflight (`preflight/mappings.rs`), which refused them.

use super::runtime::NewProcess;
use super::TransferError;
use crate::preflight::mappings::{after_startup, is_copied};
use mcr_client::Connection;
use mcr_heap::ReadMemory;
use mcr_protocol::{RuntimeCommandKind, RuntimeReply};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes copied per read and write.
const CHUNK: u64 = 1 << 20;

/// Map again in `next` and fill every private anonymous mapping old process `pid` (`old`:
/// its supervisor; `old_host`, `old_mem`: its /proc) made after startup; `new_mem`: the
/// new process's memory. Returns the bytes copied.
pub(crate) fn copy_private(
    old: &mut Connection,
    pid: i32,
    old_host: i32,
    old_mem: &dyn ReadMemory,
    next: &mut NewProcess<'_>,
    new_mem: &File,
) -> Result<u64, TransferError> {
    let ranges = match old.runtime(pid, RuntimeCommandKind::StartupLog)? {
        RuntimeReply::StartupLog(log) => log.after_startup.mapped,
        other => return Err(TransferError::UnexpectedReply(Box::new(other))),
    };
    if ranges.is_empty() {
        return Ok(0);
    }
    let maps = mcr_procfs::maps::read(old_host).map_err(|e| TransferError::Mappings { pid, source: e })?;
    let smaps = std::fs::read_to_string(mcr_procfs::Process::Pid(old_host).file("smaps"))
        .map_err(|e| TransferError::Mappings { pid, source: e })?;
    let locked = locked_ranges(&smaps);
    let mut copied = 0;
    for m in after_startup(&maps, &ranges).into_iter().filter(is_copied) {
        let prot = [(m.readable, libc::PROT_READ), (m.writable, libc::PROT_WRITE), (m.executable, libc::PROT_EXEC)]
            .iter()
            .filter(|(on, _)| *on)
            .fold(libc::PROT_NONE, |p, (_, bit)| p | bit);
        let is_locked = locked.iter().any(|&(s, e)| s <= m.start && m.end <= e);
        next.runtime(RuntimeCommandKind::MapPrivate { start: m.start, len: m.len(), prot, locked: is_locked })?;
        // What the program cannot read it cannot have written either (a reservation).
        if !m.readable {
            continue;
        }
        let mut buf = vec![0u8; CHUNK.min(m.len()) as usize];
        let mut at = m.start;
        while at < m.end {
            let n = (m.end - at).min(CHUNK) as usize;
            old_mem.read(at, &mut buf[..n])?;
            // /proc/PID/mem writes whatever the protection (as a debugger's would).
            new_mem.write_all_at(&buf[..n], at).map_err(|source| TransferError::NewMemory { pid, source })?;
            at += n as u64;
        }
        copied += m.len();
    }
    Ok(copied)
}

/// The mappings /proc/PID/smaps shows locked in memory (VmFlags "lo"), [start, end).
fn locked_ranges(smaps: &str) -> Vec<(u64, u64)> {
    let mut current = None;
    let mut out = Vec::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(r) = current.filter(|_| flags.split_whitespace().any(|f| f == "lo")) {
                out.push(r);
            }
        } else if let Some(m) = mcr_procfs::maps::parse_line(line) {
            current = Some((m.start, m.end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_mappings_are_read_from_their_vm_flags() {
        let smaps = "\
7ffff720d000-7ffff721d000 rw-p 00000000 00:00 0 
Size:                 64 kB
Locked:               64 kB
VmFlags: rd wr mr mw me lo ac sd
7ffff7fbd000-7ffff7fbf000 rw-p 00000000 00:00 0 
Size:                  8 kB
Locked:                0 kB
VmFlags: rd wr mr mw me ac sd
";
        assert_eq!(locked_ranges(smaps), [(0x7fff_f720_d000, 0x7fff_f721_d000)]);
    }
}
