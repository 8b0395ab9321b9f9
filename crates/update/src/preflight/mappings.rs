//! Mappings that are not the heap (shared file, memfd, shared anonymous, SysV and POSIX shared memory).
//!
//! Each process's runtime notes the memory the program mapped itself after startup
//! (`mmap`, `mremap`, `shmat`; see the runtime's `mappings.rs`) and reports it with the
//! startup log. The new version's startup does not make such a mapping; the transfer
//! makes it again at the same address (`transfer/mappings.rs`) when it knows how
//! ([`backing`]); every other one still mapped is named here, before the drain. What glibc
//! maps for malloc and for thread stacks is not among them (libc-internal calls), nor is
//! what startup mapped (the new version's startup maps its own).

use super::{Context, Unmovable};
use mcr_procfs::Mapping;

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut found = Vec::new();
    for log in &ctx.logs {
        let Some(ranges) = log.log.as_ref().map(|l| &l.after_startup.mapped).filter(|r| !r.is_empty()) else {
            continue;
        };
        let Some(&host) = ctx.processes.get(&log.pid) else { continue };
        // A process that exited meanwhile holds nothing.
        let Ok(maps) = mcr_procfs::maps::read(host) else { continue };
        for m in after_startup(&maps, ranges) {
            if let Backing::Unmovable(why) = backing(&m) {
                found.push(Unmovable { pid: log.pid, what: describe(&m), why: why.to_string() });
            }
        }
    }
    found
}

/// How the transfer makes a mapping the old version made after startup again in the new
/// process, at the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backing {
    /// Private anonymous memory: mapped anew and its contents copied.
    PrivateAnonymous,
    /// A file, memfd, POSIX or anonymous shared memory object: the same object (opened
    /// through /proc/PID/map_files) mapped at the same offset. Shared: the pages are the
    /// old mapping's own, shared with the old version and anyone else mapping it; private:
    /// the pages the old process wrote (its copies) are copied, the others are the file's.
    Object { shared: bool },
    /// A SysV shared memory segment, attached again (`shmid`: the inode /proc shows).
    SysV { shmid: i32 },
    /// Not made again: why.
    Unmovable(&'static str),
}

/// How mapping `m` (made after startup) moves, if it does.
pub(crate) fn backing(m: &Mapping) -> Backing {
    let p = m.path.as_str();
    if is_anonymous(m) {
        return if m.private { Backing::PrivateAnonymous } else { Backing::Object { shared: true } };
    }
    if p.starts_with("/SYSV") {
        return match i32::try_from(m.inode) {
            Ok(shmid) if !m.private => Backing::SysV { shmid },
            _ => Backing::Unmovable("a SysV shared memory mapping mcr cannot attach again"),
        };
    }
    if p.starts_with("[anon_shmem:") {
        return Backing::Object { shared: !m.private };
    }
    if p.starts_with("/dev/") && !p.starts_with("/dev/zero") && !p.starts_with("/dev/shm/") {
        return Backing::Unmovable("a device's memory, mapped after startup: mcr cannot map it again");
    }
    if p.starts_with('/') {
        return Backing::Object { shared: !m.private };
    }
    Backing::Unmovable("a special mapping made after startup: mcr cannot map it again")
}

/// Anonymous memory: private (no path, or a name given with PR_SET_VMA) or shared
/// (the kernel names its hidden shmem file /dev/zero).
fn is_anonymous(m: &Mapping) -> bool {
    let p = m.path.as_str();
    p.is_empty() || p.starts_with("[anon:") || p.starts_with("/dev/zero")
}

/// The parts of `maps` inside `ranges` (what the program mapped after startup), one per
/// mapping: a range the kernel split (mprotect, mlock) shows as several.
pub(crate) fn after_startup(maps: &[Mapping], ranges: &[(u64, u64)]) -> Vec<Mapping> {
    let mut out = Vec::new();
    for m in maps {
        for &(s, e) in ranges {
            let (start, end) = (m.start.max(s), m.end.min(e));
            if start < end {
                let mut part = m.clone();
                part.offset += start - m.start;
                part.start = start;
                part.end = end;
                out.push(part);
            }
        }
    }
    out
}

/// "mapping 0x7f..-0x7f.. rw-s /tmp/x (shared file)".
fn describe(m: &Mapping) -> String {
    let perms = format!(
        "{}{}{}{}",
        if m.readable { 'r' } else { '-' },
        if m.writable { 'w' } else { '-' },
        if m.executable { 'x' } else { '-' },
        if m.private { 'p' } else { 's' }
    );
    let path = if m.path.is_empty() { String::new() } else { format!(" {}", m.path) };
    format!("mapping {:#x}-{:#x} {perms}{path} ({})", m.start, m.end, kind(m))
}

/// What an operator would call the mapping.
fn kind(m: &Mapping) -> String {
    let p = m.path.as_str();
    let sharing = if m.private { "private" } else { "shared" };
    if p.starts_with("/SYSV") {
        format!("SysV shared memory segment {}", m.inode)
    } else if p.starts_with("/memfd:") {
        format!("{sharing} memfd mapping")
    } else if p.starts_with("/dev/shm/") {
        format!("{sharing} POSIX shared memory mapping")
    } else if is_anonymous(m) {
        format!("{sharing} anonymous mapping")
    } else if p.starts_with('/') {
        format!("{sharing} file mapping")
    } else {
        format!("{sharing} mapping")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
555555554000-555555556000 r--p 00000000 fd:01 1234 /srv/stated
7ffff7a00000-7ffff7a02000 rw-s 00000000 00:2c 55 /tmp/work/map-shared.dat
7ffff7a02000-7ffff7a03000 r--p 00000000 00:00 0 
7ffff7a03000-7ffff7a04000 rw-p 00000000 00:00 0 
7ffff7a10000-7ffff7a12000 rw-s 00000000 00:01 32781 /SYSV00000000 (deleted)
7ffff7a20000-7ffff7a22000 rw-s 00000000 00:01 4101 /memfd:stated-mapped (deleted)
7ffff7a30000-7ffff7a32000 rw-s 00000000 00:19 77 /dev/shm/stated-1-shm
7ffff7a40000-7ffff7a43000 rw-s 00000000 00:01 4102 /dev/zero (deleted)
7ffff7b00000-7ffff7b40000 rw-p 00000000 00:00 0 
";

    #[test]
    fn only_what_the_program_mapped_after_startup_is_named_with_its_kind() {
        let maps = mcr_procfs::maps::parse(MAPS);
        // Two ranges the program mapped: a file mapping merged with an anonymous one the
        // kernel split by an mprotect, then the shared kinds; neither the program's text
        // nor malloc's memory at 7ffff7b00000.
        let ranges = [(0x7fff_f7a0_0000, 0x7fff_f7a0_4000), (0x7fff_f7a1_0000, 0x7fff_f7a4_3000)];
        let parts = after_startup(&maps, &ranges);
        let how: Vec<Backing> = parts.iter().map(backing).collect();
        assert_eq!(
            how,
            [
                Backing::Object { shared: true },
                Backing::PrivateAnonymous,
                Backing::PrivateAnonymous,
                Backing::SysV { shmid: 32781 },
                Backing::Object { shared: true },
                Backing::Object { shared: true },
                Backing::Object { shared: true },
            ],
            "each kind is made again from what backs it"
        );
        let named: Vec<String> = parts.iter().map(describe).collect();
        assert_eq!(
            named,
            [
                "mapping 0x7ffff7a00000-0x7ffff7a02000 rw-s /tmp/work/map-shared.dat (shared file mapping)",
                "mapping 0x7ffff7a02000-0x7ffff7a03000 r--p (private anonymous mapping)",
                "mapping 0x7ffff7a03000-0x7ffff7a04000 rw-p (private anonymous mapping)",
                "mapping 0x7ffff7a10000-0x7ffff7a12000 rw-s /SYSV00000000 (deleted) (SysV shared memory segment 32781)",
                "mapping 0x7ffff7a20000-0x7ffff7a22000 rw-s /memfd:stated-mapped (deleted) (shared memfd mapping)",
                "mapping 0x7ffff7a30000-0x7ffff7a32000 rw-s /dev/shm/stated-1-shm (shared POSIX shared memory mapping)",
                "mapping 0x7ffff7a40000-0x7ffff7a43000 rw-s /dev/zero (deleted) (shared anonymous mapping)",
            ]
        );
    }

    #[test]
    fn a_mapping_partly_unmapped_is_named_for_what_remains() {
        let maps = mcr_procfs::maps::parse(MAPS);
        let named = after_startup(&maps, &[(0x7fff_f7b3_f000, 0x7fff_f7b4_0000)]);
        assert_eq!(named.len(), 1);
        assert_eq!((named[0].start, named[0].end, named[0].offset), (0x7fff_f7b3_f000, 0x7fff_f7b4_0000, 0x3f000));
        assert!(after_startup(&maps, &[]).is_empty());
    }
}
