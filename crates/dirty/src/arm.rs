//! Arming, run by the runtime inside the tracked process itself when its startup
//! completes: from then on the kernel remembers which pages the process writes.
//!
//! userfaultfd with `UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED` (Linux ≥ 6.7):
//! every writable private mapping is registered in write-protect mode and then
//! write-protected. The first write to a page takes a minor fault that the kernel
//! resolves by itself (no handler thread), clearing the page's uffd-wp bit; PAGEMAP_SCAN
//! reports such pages as `PAGE_IS_WRITTEN`. Pages never populated get a marker, so they
//! too count as clean until written. The registrations last as long as the userfaultfd
//! stays open: the caller keeps the returned descriptor open for the process's life.
//!
//! Fallback: soft-dirty (`/proc/self/clear_refs` 4, pagemap bit 55) where the kernel has
//! it, else nothing (every page counts as dirty).

use crate::maps::{self, Mapping, MappingClass};
use crate::sys;
use crate::Method;
use std::io;

/// Mappings larger than this are left untracked (they count as dirty): write-protecting
/// unpopulated memory builds page tables for all of it.
pub const MAX_TRACKED_MAPPING: u64 = 1 << 30;

#[derive(Debug, Clone)]
pub struct ArmReport {
    pub method: Method,
    /// The userfaultfd to keep open (uffd-wp only).
    pub fd: Option<i32>,
    /// Mappings registered and write-protected, and their total size.
    pub ranges: usize,
    pub bytes: u64,
    /// Writable private mappings left untracked (registration refused, or too large).
    pub skipped: usize,
    /// Why a fallback was taken, or the first refusal.
    pub note: Option<String>,
}

impl ArmReport {
    fn none(note: String) -> Self {
        ArmReport { method: Method::None, fd: None, ranges: 0, bytes: 0, skipped: 0, note: Some(note) }
    }
}

/// Arm the calling process. The data and .bss of the shared object at path `exclude`
/// (the caller's own library) are left out.
pub fn arm_self(exclude: Option<&str>) -> ArmReport {
    arm_self_with(exclude, &[], &[])
}

/// As [`arm_self`], tracking also the ranges `within` (start, end) of mappings too large
/// to track whole (mcr's heap regions: 64 GiB reserved, of which the used part is
/// tracked); the rest of such a mapping stays untracked (dirty). `skip` (sorted): ranges
/// that are not the program's state (the runtime's own anonymous memory), left out.
pub fn arm_self_with(exclude: Option<&str>, within: &[(u64, u64)], skip: &[(u64, u64)]) -> ArmReport {
    match arm_uffd(exclude, within, skip) {
        Ok(r) => r,
        Err(uffd_err) => match arm_soft_dirty() {
            Ok(()) => ArmReport {
                method: Method::SoftDirty,
                fd: None,
                ranges: 0,
                bytes: 0,
                skipped: 0,
                note: Some(format!("userfaultfd write-protect unavailable ({uffd_err}); using soft-dirty bits")),
            },
            Err(sd_err) => ArmReport::none(format!(
                "userfaultfd write-protect unavailable ({uffd_err}) and no soft-dirty bits ({sd_err}): every page counts as dirty"
            )),
        },
    }
}

/// A userfaultfd with async write-protect, or why not.
#[inline]
pub fn open_uffd() -> Result<i32, String> {
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // User-mode-only is what an unprivileged process may open when
    // vm.unprivileged_userfaultfd is 0; async write-protect faults are resolved by the
    // kernel whichever mode faulted, so it loses nothing here.
    let fd = sys::userfaultfd(base | sys::UFFD_USER_MODE_ONLY)
        .or_else(|_| sys::userfaultfd(base))
        .map_err(|e| format!("userfaultfd: {e}"))?;
    let want = sys::UFFD_FEATURE_WP_ASYNC | sys::UFFD_FEATURE_WP_UNPOPULATED;
    match sys::uffd_api(fd, want) {
        Ok(got) if got & want == want => Ok(fd),
        Ok(got) => {
            sys::close(fd);
            Err(format!("the kernel grants userfaultfd features {got:#x}, without async write-protect"))
        }
        Err(e) => {
            sys::close(fd);
            Err(format!("UFFDIO_API with WP_ASYNC|WP_UNPOPULATED: {e} (Linux ≥ 6.7 needed)"))
        }
    }
}

fn arm_uffd(exclude: Option<&str>, within: &[(u64, u64)], skip: &[(u64, u64)]) -> Result<ArmReport, String> {
    let fd = open_uffd()?;
    let all = mcr_procfs::maps::read(mcr_procfs::Process::Current).map_err(|e| {
        sys::close(fd);
        format!("/proc/self/maps: {e}")
    })?;
    let mut report = ArmReport { method: Method::UffdWp, fd: Some(fd), ranges: 0, bytes: 0, skipped: 0, note: None };
    let classes = maps::classify_all(&all, "", exclude);
    let excluded = |i: usize| exclude.is_some() && classes[i] == MappingClass::Runtime;
    let holds_part = |m: &Mapping| within.iter().any(|&(s, e)| s < m.end && m.start < e);
    for &(start, end) in within.iter().filter(|(s, e)| s < e) {
        match sys::uffd_register_wp(fd, start, end - start)
            .and_then(|()| sys::uffd_writeprotect(fd, start, end - start))
        {
            Ok(()) => {
                report.ranges += 1;
                report.bytes += end - start;
            }
            Err(e) => {
                report.skipped += 1;
                if report.note.is_none() {
                    report.note = Some(format!("{start:#x}-{end:#x} left untracked: {e}"));
                }
            }
        }
    }
    for (_, m) in all.iter().enumerate().filter(|&(i, m)| maps::is_tracked_kind(m) && !excluded(i) && !holds_part(m)) {
        let pieces = without(m.start, m.end, skip);
        let r = if m.len() > MAX_TRACKED_MAPPING {
            Err(io::Error::other("larger than 1 GiB"))
        } else {
            pieces.iter().try_for_each(|&(s, e)| {
                sys::uffd_register_wp(fd, s, e - s).and_then(|()| sys::uffd_writeprotect(fd, s, e - s))
            })
        };
        match r {
            Ok(()) if pieces.is_empty() => {}
            Ok(()) => {
                report.ranges += 1;
                report.bytes += pieces.iter().map(|(s, e)| e - s).sum::<u64>();
            }
            Err(e) => {
                report.skipped += 1;
                if report.note.is_none() {
                    report.note = Some(format!("{:#x}-{:#x} {} left untracked: {e}", m.start, m.end, m.path));
                }
            }
        }
    }
    if report.ranges == 0 {
        sys::close(fd);
        return Err(report.note.unwrap_or_else(|| "no mapping could be registered".into()));
    }
    Ok(report)
}

/// `[start, end)` minus the sorted ranges `skip`, as the pieces left.
fn without(start: u64, end: u64, skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, e) in skip.iter().filter(|&&(s, e)| s < end && start < e) {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// Clear the soft-dirty bits and check the kernel actually keeps them.
fn arm_soft_dirty() -> Result<(), String> {
    std::fs::write("/proc/self/clear_refs", "4").map_err(|e| format!("/proc/self/clear_refs: {e}"))?;
    // A page written after the clear must show bit 55.
    let probe = Box::new([0u8; 8192]);
    let addr = probe.as_ptr() as u64;
    // SAFETY: a volatile write to our own buffer, so the compiler keeps it.
    unsafe { core::ptr::write_volatile(probe.as_ptr() as *mut u8, 1) };
    let entry = crate::read_pagemap_entries(std::process::id() as i32, addr / sys::page_size(), 1)
        .map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    drop(probe);
    if entry.first().is_some_and(|e| e & crate::PM_SOFT_DIRTY != 0) {
        Ok(())
    } else {
        Err("the kernel does not keep soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::without;

    #[test]
    fn skipped_ranges_are_cut_out_of_a_mapping() {
        let skip = [(0x1000, 0x2000), (0x5000, 0x7000), (0x9000, 0xa000)];
        assert_eq!(without(0x0, 0x8000, &skip), vec![(0x0, 0x1000), (0x2000, 0x5000), (0x7000, 0x8000)]);
        assert_eq!(without(0x5000, 0x7000, &skip), vec![], "all of it skipped");
        assert_eq!(without(0x6000, 0x9800, &skip), vec![(0x7000, 0x9000)]);
        assert_eq!(without(0xb000, 0xc000, &skip), vec![(0xb000, 0xc000)], "none of it skipped");
        assert_eq!(without(0x0, 0x1000, &[]), vec![(0x0, 0x1000)]);
    }
}
