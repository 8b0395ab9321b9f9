//! Dirty tracking (paper §6): which pages of a process were written since its startup
//! completed, so an update's tracer copies only what changed.
//!
//! Two halves:
//! - [`arm::arm_self`], run by the mcr runtime inside the process when startup completes:
//!   userfaultfd async write-protect over every writable private mapping (soft-dirty
//!   bits as a fallback);
//! - [`written_ranges`], run from outside (the `mcr` CLI, root): reads
//!   `/proc/PID/pagemap` with the `PAGEMAP_SCAN` ioctl and answers
//!   [`DirtyMap::is_dirty`] for any address range.
//!
//! The reader never trusts what it cannot see: a writable page that is not tracked
//! (mapped after arming, a mapping the kernel refused, a process never armed) counts as
//! dirty. So `written_ranges` is correct for any process, armed or not.

pub mod arm;
pub mod maps;
pub mod sys;

pub use maps::{Mapping, MappingClass};

use mcr_procfs::pagemap::Pagemap;
use mcr_procfs::Process;

use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// How a process's writes are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// userfaultfd async write-protect, read with PAGEMAP_SCAN.
    UffdWp,
    /// Soft-dirty bits (pagemap bit 55).
    SoftDirty,
    /// Not tracked: every page counts as dirty.
    None,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::UffdWp => "uffd-wp",
            Method::SoftDirty => "soft-dirty",
            Method::None => "none",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug)]
pub enum DirtyError {
    /// `/proc/PID/...` could not be opened or read (gone, or no ptrace access).
    Proc { path: String, source: io::Error },
    /// The PAGEMAP_SCAN ioctl failed (Linux < 6.7 answers ENOTTY).
    Scan { start: u64, end: u64, source: io::Error },
}

impl fmt::Display for DirtyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyError::Proc { path, source } => write!(f, "cannot read {path}: {source}"),
            DirtyError::Scan { start, end, source } => {
                write!(f, "PAGEMAP_SCAN of {start:#x}-{end:#x} failed: {source}")
            }
        }
    }
}

impl std::error::Error for DirtyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirtyError::Proc { source, .. } | DirtyError::Scan { source, .. } => Some(source),
        }
    }
}

/// Page counts. `written` ⊆ `tracked`; dirty = `written + untracked`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pages whose writes are tracked.
    pub tracked: u64,
    /// Tracked pages written since arming.
    pub written: u64,
    /// Writable pages not tracked that hold data (present or swapped out): dirty by
    /// definition. Untracked pages never touched are not counted: a heap region reserves
    /// 64 GiB, and counting its address space said '16 761 101 of 16 779 618 pages
    /// written' of a kvd holding a few megabytes.
    pub untracked: u64,
}

impl Counts {
    pub fn dirty(&self) -> u64 {
        self.written + self.untracked
    }

    pub fn clean(&self) -> u64 {
        self.tracked - self.written
    }

    fn add(&mut self, o: &Counts) {
        self.tracked += o.tracked;
        self.written += o.written;
        self.untracked += o.untracked;
    }
}

/// One mapping of the process and what the scan found in it.
#[derive(Debug, Clone)]
pub struct MappingDirt {
    pub mapping: Mapping,
    pub class: MappingClass,
    pub counts: Counts,
}

/// Which pages of a process were written since arming.
#[derive(Debug, Clone)]
pub struct DirtyMap {
    pub method: Method,
    pub page_size: u64,
    /// The writable private mappings (and read-only ones that were tracked), in order.
    pub mappings: Vec<MappingDirt>,
    /// Tracked pages not written: sorted, disjoint, merged.
    clean: Vec<(u64, u64)>,
}

impl DirtyMap {
    /// Whether any byte of [addr, addr+len) may have changed since arming: false only
    /// when every page it touches is tracked and unwritten.
    pub fn is_dirty(&self, addr: u64, len: u64) -> bool {
        let lo = addr & !(self.page_size - 1);
        let hi = addr.saturating_add(len.max(1));
        // The clean range starting at or before `lo` must reach `hi`.
        let i = self.clean.partition_point(|&(s, _)| s <= lo);
        i == 0 || self.clean[i - 1].1 < hi
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for m in &self.mappings {
            c.add(&m.counts);
        }
        c
    }

    pub fn by_class(&self) -> BTreeMap<MappingClass, Counts> {
        let mut out = BTreeMap::new();
        for m in &self.mappings {
            out.entry(m.class).or_insert_with(Counts::default).add(&m.counts);
        }
        out
    }

    /// The clean (tracked, unwritten) ranges.
    pub fn clean_ranges(&self) -> &[(u64, u64)] {
        &self.clean
    }
}

/// Pagemap entry bit 55: the page was written since the soft-dirty bits were cleared.
pub const PM_SOFT_DIRTY: u64 = mcr_procfs::pagemap::SOFT_DIRTY;

/// Raw 64-bit entries of `/proc/<proc>/pagemap` for `count` pages from page `first`.
pub fn read_pagemap_entries(pid: i32, first: u64, count: u64) -> io::Result<Vec<u64>> {
    let count = usize::try_from(count).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(Pagemap::open(process(pid))?.entries(first, count)?.collect())
}

/// Process `pid` as /proc names it: `/proc/self` for this very process.
fn process(pid: i32) -> Process {
    if pid == std::process::id() as i32 {
        Process::Current
    } else {
        Process::Pid(pid)
    }
}

fn proc_path(pid: i32, file: &str) -> String {
    process(pid).file(file).display().to_string()
}

/// The written pages of process `pid` (host PID), tracked by userfaultfd write-protect.
/// A process that was never armed comes out with every page untracked (dirty).
pub fn written_ranges(pid: i32) -> Result<DirtyMap, DirtyError> {
    written_ranges_with(pid, Method::UffdWp)
}

/// As [`written_ranges`], for a process armed with `method` (its runtime says which).
pub fn written_ranges_with(pid: i32, method: Method) -> Result<DirtyMap, DirtyError> {
    let all = mcr_procfs::maps::read(process(pid))
        .map_err(|source| DirtyError::Proc { path: proc_path(pid, "maps"), source })?;
    let exe = mcr_procfs::exe(process(pid)).map(|p| p.display().to_string()).unwrap_or_default();
    let classes = maps::classify_all(&all, &exe, None);
    let brk = mcr_procfs::stat::read(process(pid)).ok().and_then(|s| s.start_brk);
    let all = maps::split_heap(all, classes, brk);
    let page = sys::page_size();
    let pm_path = proc_path(pid, "pagemap");
    let mut pagemap =
        Pagemap::open(process(pid)).map_err(|source| DirtyError::Proc { path: pm_path.clone(), source })?;
    let mut out = DirtyMap { method, page_size: page, mappings: Vec::new(), clean: Vec::new() };
    for (m, class) in all {
        // The mcr runtime's own memory is not the program's state.
        let candidate = class != MappingClass::Runtime
            && (m.private || maps::is_mcr_heap(&m))
            && !m.is_empty()
            && (maps::is_tracked_kind(&m) || (method == Method::UffdWp && !m.path.starts_with('[')));
        if !candidate {
            continue;
        }
        let mut clean = Vec::new();
        let counts = match method {
            Method::UffdWp => scan_uffd(pagemap.file(), &m, page, &mut clean)?,
            Method::SoftDirty if m.writable => scan_soft_dirty(&mut pagemap, &m, page, &mut clean)
                .map_err(|source| DirtyError::Proc { path: pm_path.clone(), source })?,
            _ => Counts { untracked: m.len() / page, ..Counts::default() },
        };
        // Read-only mappings matter only when they were tracked (written to before an
        // mprotect): otherwise they are code and constants, not state.
        if !m.writable && counts.tracked == 0 {
            continue;
        }
        for r in clean {
            match out.clean.last_mut() {
                Some(last) if last.1 == r.0 => last.1 = r.1,
                _ => out.clean.push(r),
            }
        }
        out.mappings.push(MappingDirt { mapping: m, class, counts });
    }
    Ok(out)
}

/// What one PAGEMAP_SCAN region's categories say about its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Clean,
    Written,
    Untracked,
}

/// The uffd-wp reading of a region's categories. Pages of a registered mapping carry
/// WPALLOWED; WRITTEN means the uffd-wp bit is gone (the page was written, or it was
/// populated without protection). A tracked page neither present nor swapped (nor a
/// write-protect marker, which the kernel reports as swapped) was zapped after arming
/// (MADV_DONTNEED on anonymous memory drops markers): its content changed, to zeros.
pub fn uffd_page_state(categories: u64) -> PageState {
    if categories & sys::PAGE_IS_WPALLOWED == 0 {
        PageState::Untracked
    } else if categories & sys::PAGE_IS_WRITTEN != 0 || categories & (sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED) == 0
    {
        PageState::Written
    } else {
        PageState::Clean
    }
}

fn scan_uffd(
    pagemap: &std::fs::File,
    m: &Mapping,
    page: u64,
    clean: &mut Vec<(u64, u64)>,
) -> Result<Counts, DirtyError> {
    use std::os::fd::AsRawFd;
    let mask = sys::PAGE_IS_WPALLOWED | sys::PAGE_IS_WRITTEN | sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED;
    let mut vec = vec![sys::page_region { start: 0, end: 0, categories: 0 }; 512];
    let mut c = Counts::default();
    let mut at = m.start;
    while at < m.end {
        let (n, walk_end) = match sys::pagemap_scan(pagemap.as_raw_fd(), at, m.end, 0, mask, &mut vec) {
            Ok(r) => r,
            // The mapping went away (or changed) since maps was read: nothing to report.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(source) => return Err(DirtyError::Scan { start: at, end: m.end, source }),
        };
        for r in &vec[..n] {
            // Pages the walk did not report (holes, VM_PFNMAP) hold nothing to count.
            let pages = (r.end - r.start) / page;
            match uffd_page_state(r.categories) {
                PageState::Untracked if r.categories & (sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED) != 0 => {
                    c.untracked += pages
                }
                PageState::Untracked => {}
                PageState::Written => {
                    c.tracked += pages;
                    c.written += pages;
                }
                PageState::Clean => {
                    c.tracked += pages;
                    match clean.last_mut() {
                        Some(last) if last.1 == r.start => last.1 = r.end,
                        _ => clean.push((r.start, r.end)),
                    }
                }
            }
        }
        let stop = walk_end.clamp(at, m.end);
        if stop <= at {
            break;
        }
        at = stop;
    }
    Ok(c)
}

fn scan_soft_dirty(pagemap: &mut Pagemap, m: &Mapping, page: u64, clean: &mut Vec<(u64, u64)>) -> io::Result<Counts> {
    let mut c = Counts::default();
    let pages = m.len() / page;
    let chunk = 4096u64;
    let mut i = 0;
    while i < pages {
        let n = chunk.min(pages - i);
        let first = m.start / page + i;
        for (j, e) in pagemap.entries(first, n as usize)?.enumerate() {
            let addr = (first + j as u64) * page;
            c.tracked += 1;
            if e & PM_SOFT_DIRTY != 0 {
                c.written += 1;
            } else {
                match clean.last_mut() {
                    Some(last) if last.1 == addr => last.1 = addr + page,
                    _ => clean.push((addr, addr + page)),
                }
            }
        }
        i += n;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(clean: Vec<(u64, u64)>) -> DirtyMap {
        DirtyMap { method: Method::UffdWp, page_size: 4096, mappings: Vec::new(), clean }
    }

    #[test]
    fn is_dirty_needs_every_page_clean() {
        let m = map(vec![(0x1000, 0x3000), (0x5000, 0x6000)]);
        assert!(!m.is_dirty(0x1000, 8));
        assert!(!m.is_dirty(0x1ff8, 16), "spans two clean pages");
        assert!(!m.is_dirty(0x2fff, 1));
        assert!(m.is_dirty(0x2ff8, 16), "reaches the untracked page at 0x3000");
        assert!(m.is_dirty(0x0ff8, 16));
        assert!(m.is_dirty(0x4000, 8));
        assert!(!m.is_dirty(0x5000, 0x1000));
        assert!(m.is_dirty(0x5000, 0x1001));
        assert!(m.is_dirty(0x9000, 1));
    }

    #[test]
    fn page_states() {
        use sys::*;
        assert_eq!(uffd_page_state(PAGE_IS_PRESENT | PAGE_IS_WRITTEN), PageState::Untracked);
        assert_eq!(uffd_page_state(PAGE_IS_WPALLOWED | PAGE_IS_PRESENT), PageState::Clean);
        assert_eq!(uffd_page_state(PAGE_IS_WPALLOWED | PAGE_IS_SWAPPED), PageState::Clean);
        assert_eq!(uffd_page_state(PAGE_IS_WPALLOWED | PAGE_IS_PRESENT | PAGE_IS_WRITTEN), PageState::Written);
        assert_eq!(uffd_page_state(PAGE_IS_WPALLOWED), PageState::Written);
    }
}
