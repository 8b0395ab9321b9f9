//! The old binary's initial data: what its globals hold before any code ran (their
//! initializers; zeros past the file's bytes, the bss). The transfer tells a value the
//! old startup computed from one the build set by it (`mcr_tracer::Pair::initial`).

use object::{Object, ObjectSegment};
use std::path::Path;

/// The writable loadable segments of one ELF file: (link-time address, size in memory, the bytes
/// the file has for it).
pub(crate) struct InitialData {
    segments: Vec<(u64, u64, Vec<u8>)>,
}

impl InitialData {
    /// Reads only the headers and the segments' bytes (a server built with -g is mostly
    /// debug information); `None` when the file cannot be read as ELF.
    pub(crate) fn read(exe: &Path) -> Option<Self> {
        let file = std::fs::File::open(exe).ok()?;
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        // Globals live in the writable segments: the code's (nginx: 1.3 MB) is not read.
        let writable = |s: &object::Segment<'_, '_, &object::ReadCache<std::fs::File>>| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_W != 0);
        let segments = elf
            .segments()
            .filter(writable)
            .filter_map(|s| Some((s.address(), s.size(), s.data().ok()?.to_vec())))
            .collect();
        Some(Self { segments })
    }

    /// The initial bytes of [addr, addr + len) (link-time), within one segment.
    pub(crate) fn bytes(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let (start, _, bytes) =
            self.segments.iter().find(|(s, n, _)| *s <= addr && addr.saturating_add(len) <= s + n)?;
        let from = usize::try_from(addr - start).ok()?;
        Some((0..len as usize).map(|i| bytes.get(from + i).copied().unwrap_or(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initializers_come_from_the_file_and_what_is_past_it_is_zero() {
        let data = InitialData { segments: vec![(0x1000, 0x2000, vec![7; 0x10])] };
        assert_eq!(data.bytes(0x1008, 4), Some(vec![7; 4]));
        assert_eq!(data.bytes(0x100e, 4), Some(vec![7, 7, 0, 0]), "the file's bytes end: the bss");
        assert_eq!(data.bytes(0x2ffe, 4), None, "past the segment");
        let exe = InitialData::read(&std::env::current_exe().unwrap()).expect("this test binary is ELF");
        assert!(exe.segments.iter().any(|(_, n, b)| *n > b.len() as u64), "a segment with a bss");
    }
}
