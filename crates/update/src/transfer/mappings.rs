//! Memory the old process mapped itself after startup (issue 12): each mapping reappears
//! in the new process at the same address, so the pointers the globals and the heap hold
//! into it keep their value (`preflight/mappings.rs` says how each kind is made again, and
//! names those that cannot be).
//!
//! - Private anonymous memory: mapped anew, with its protection and lock, and its
//!   contents copied.
//! - Files, memfds, POSIX and anonymous shared memory: the same object, opened through
//!   /proc/PID/map_files (the old process may hold no descriptor of it) and mapped at the
//!   same offset. A shared mapping's pages are the object's: nothing is copied, and the
//!   new version shares them with whoever else maps the object (its own processes forked
//!   later, the old version until it retires). A private one gets the pages the old
//!   process wrote (its copy-on-write copies, which /proc/PID/pagemap tells from the
//!   file's pages); the others stay the file's.
//! - SysV segments: attached again by ID.
//!
//! A process forked after startup inherits its parent's mappings: where the new process
//! already has the same mapping (its new parent made it again before the fork), it is kept
//! and only a private one's contents are written. The old process is only read.

use super::descriptors::hand_over;
use super::runtime::NewProcess;
use super::TransferError;
use crate::preflight::mappings::{after_startup, backing, Backing};
use mcr_client::Connection;
use mcr_heap::ReadMemory;
use mcr_procfs::Mapping;
use mcr_protocol::{RuntimeCommandKind, RuntimeReply};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

/// Bytes copied per read and write.
const CHUNK: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Make every mapping old process `pid` (`old_host`, `old_mem`: its /proc) made after
/// startup (`ranges`, its startup log's) again in `next`, at the same address; `new_mem`:
/// the new process's memory; `new_ranges`: what the new process's startup log counts as
/// mapped after its startup. Returns the bytes mapped.
pub(crate) fn map_again(
    pid: i32,
    old_host: i32,
    old_mem: &dyn ReadMemory,
    ranges: &[(u64, u64)],
    new_ranges: &[(u64, u64)],
    next: &mut NewProcess<'_>,
    new_mem: &File,
) -> Result<u64, TransferError> {
    if ranges.is_empty() {
        return Ok(0);
    }
    let mappings_error = |source| TransferError::Mappings { pid, source };
    let maps = mcr_procfs::maps::read(old_host).map_err(mappings_error)?;
    // Only what the new process's runtime counts as mapped after startup can be a
    // mapping inherited from its new parent (anything else there is its own memory).
    let new_maps = after_startup(&mcr_procfs::maps::read(next.host_pid).map_err(mappings_error)?, new_ranges);
    let smaps = std::fs::read_to_string(mcr_procfs::Process::Pid(old_host).file("smaps")).map_err(mappings_error)?;
    let locked = locked_ranges(&smaps);
    let mut mapped = 0;
    for m in after_startup(&maps, ranges) {
        let how = backing(&m);
        let is_locked = locked.iter().any(|&(s, e)| s <= m.start && m.end <= e);
        let inherited = already_mapped(&new_maps, &m);
        let prot = protection(&m);
        match how {
            // The preflight refused the update over these.
            Backing::Unmovable(_) => continue,
            _ if inherited => {}
            Backing::PrivateAnonymous => {
                next.runtime(RuntimeCommandKind::MapPrivate { start: m.start, len: m.len(), prot, locked: is_locked })?;
            }
            Backing::Object { shared } => {
                let object = open_mapped_object(old_host, next.host_pid, &maps, &m, shared).map_err(mappings_error)?;
                let (start, len, offset) = (m.start, m.len(), m.offset);
                hand_over(old_host, vec![object], next, |socket| RuntimeCommandKind::MapFile {
                    socket,
                    start,
                    len,
                    offset,
                    prot,
                    shared,
                    locked: is_locked,
                })?;
            }
            Backing::SysV { shmid } => {
                next.runtime(RuntimeCommandKind::AttachSysv {
                    shmid,
                    start: m.start,
                    len: m.len(),
                    readonly: !m.writable,
                    locked: is_locked,
                })?;
            }
        }
        match how {
            Backing::PrivateAnonymous => copy_pages(old_mem, new_mem, pid, &m, |_| true)?,
            Backing::Object { shared: false } => {
                let written = written_pages(old_host, &m).map_err(mappings_error)?;
                copy_pages(old_mem, new_mem, pid, &m, |page| written.contains(&page))?
            }
            _ => {}
        }
        mapped += m.len();
    }
    Ok(mapped)
}

/// Process `pid`'s startup log (of `conn`'s version), as its runtime sees it now.
pub(crate) fn startup_log(conn: &mut Connection, pid: i32) -> Result<mcr_protocol::StartupLog, TransferError> {
    match conn.runtime(pid, RuntimeCommandKind::StartupLog)? {
        RuntimeReply::StartupLog(log) => Ok(log),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

/// The protection bits of `m`.
fn protection(m: &Mapping) -> i32 {
    [(m.readable, libc::PROT_READ), (m.writable, libc::PROT_WRITE), (m.executable, libc::PROT_EXEC)]
        .iter()
        .filter(|(on, _)| *on)
        .fold(libc::PROT_NONE, |p, (_, bit)| p | bit)
}

/// Whether `new_maps` (what the new process mapped after startup) already map exactly what
/// `m` maps there: the same range, kind, object and offset (inherited from a parent that
/// made it again before forking it).
fn already_mapped(new_maps: &[Mapping], m: &Mapping) -> bool {
    new_maps.iter().any(|n| {
        n.start <= m.start
            && m.end <= n.end
            && n.private == m.private
            && n.inode == m.inode
            && n.path == m.path
            && n.offset + (m.start - n.start) == m.offset
    })
}

/// The object behind old mapping `m` (part of one of `maps`), opened through
/// /proc/PID/map_files: the file itself, not a path that may name another file by now.
/// When the same file is reachable by its path in new process `new_host`'s mount
/// namespace, that opening is used instead, so the new process's maps name it by its path
/// there (an opening through the old version's namespace shows only the path inside its
/// mount, e.g. /name instead of /dev/shm/name).
fn open_mapped_object(
    old_host: i32,
    new_host: i32,
    maps: &[Mapping],
    m: &Mapping,
    shared: bool,
) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let whole = maps.iter().find(|w| w.contains(m.start)).unwrap_or(m);
    let path = mcr_procfs::Process::Pid(old_host).file(&format!("map_files/{:x}-{:x}", whole.start, whole.end));
    // Writable when it can be (a shared mapping the program may make writable later with
    // mprotect needs a descriptor opened for writing); read-only otherwise (a private
    // mapping, a file the program could only read).
    let open = |p: &std::path::Path| File::options().read(true).write(shared).open(p).or_else(|_| File::open(p));
    let object = open(&path)?;
    let same_file = |f: &File| match (f.metadata(), object.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let in_new = m
        .path
        .strip_prefix('/')
        .filter(|p| !p.ends_with(" (deleted)"))
        .map(|p| mcr_procfs::Process::Pid(new_host).file("root").join(p))
        .and_then(|p| open(&p).ok())
        .filter(same_file);
    Ok(in_new.unwrap_or(object).into())
}

/// The pages of private file mapping `m` the old process wrote (its own copies, which
/// pagemap shows as neither file pages nor absent), by page address.
fn written_pages(old_host: i32, m: &Mapping) -> std::io::Result<std::collections::HashSet<u64>> {
    let mut pagemap = mcr_procfs::pagemap::Pagemap::open(mcr_procfs::Process::Pid(old_host))?;
    let first = m.start / PAGE;
    let entries = pagemap.entries(first, (m.len() / PAGE) as usize)?;
    Ok(entries.enumerate().filter(|&(_, e)| is_private_copy(e)).map(|(i, _)| (first + i as u64) * PAGE).collect())
}

/// Whether a private file mapping's page with pagemap entry `e` is the process's own copy:
/// in memory and not the file's, or swapped out (only anonymous pages are).
fn is_private_copy(e: u64) -> bool {
    use mcr_procfs::pagemap::{FILE_OR_SHARED, PRESENT, SWAPPED};
    (e & PRESENT != 0 && e & FILE_OR_SHARED == 0) || e & SWAPPED != 0
}

/// Copy the pages of `m` that `wanted` (by page address) from the old process to the new.
fn copy_pages(
    old_mem: &dyn ReadMemory,
    new_mem: &File,
    pid: i32,
    m: &Mapping,
    wanted: impl Fn(u64) -> bool,
) -> Result<(), TransferError> {
    // What the program cannot read it cannot have written either (a reservation).
    if !m.readable {
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK.min(m.len()) as usize];
    let mut at = m.start;
    while at < m.end {
        // A run of wanted pages, at most CHUNK long.
        if !wanted(at) {
            at += PAGE;
            continue;
        }
        let mut end = at + PAGE;
        while end < m.end && end - at < CHUNK && wanted(end) {
            end += PAGE;
        }
        let n = (end - at) as usize;
        old_mem.read(at, &mut buf[..n])?;
        // /proc/PID/mem writes whatever the protection (as a debugger's would).
        new_mem.write_all_at(&buf[..n], at).map_err(|source| TransferError::NewMemory { pid, source })?;
        at = end;
    }
    Ok(())
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
    fn only_a_private_mappings_own_pages_are_copied() {
        use mcr_procfs::pagemap::{FILE_OR_SHARED, PRESENT, SWAPPED};
        assert!(is_private_copy(PRESENT | 0x1234), "written: an anonymous page");
        assert!(is_private_copy(SWAPPED), "written, then swapped out");
        assert!(!is_private_copy(PRESENT | FILE_OR_SHARED | 0x1234), "read only: the file's page");
        assert!(!is_private_copy(0), "never touched");
    }

    #[test]
    fn a_mapping_inherited_from_the_new_parent_is_not_made_twice() {
        let maps = mcr_procfs::maps::parse(
            "7ffff7a00000-7ffff7a04000 rw-s 00001000 00:2c 55 /tmp/work/map-shared.dat\n\
             7ffff7b00000-7ffff7b02000 rw-p 00000000 00:00 0 \n",
        );
        let part = |line: &str| mcr_procfs::maps::parse_line(line).unwrap();
        assert!(already_mapped(
            &maps,
            &part("7ffff7a01000-7ffff7a02000 rw-s 00002000 00:2c 55 /tmp/work/map-shared.dat")
        ));
        assert!(!already_mapped(
            &maps,
            &part("7ffff7a01000-7ffff7a02000 rw-s 00003000 00:2c 55 /tmp/work/map-shared.dat")
        ));
        assert!(!already_mapped(&maps, &part("7ffff7a01000-7ffff7a02000 rw-s 00002000 00:2c 56 /tmp/work/other.dat")));
        assert!(already_mapped(&maps, &part("7ffff7b00000-7ffff7b02000 rw-p 00000000 00:00 0 ")));
        assert!(!already_mapped(&maps, &part("7ffff7b01000-7ffff7b03000 rw-p 00000000 00:00 0 ")));
    }

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
