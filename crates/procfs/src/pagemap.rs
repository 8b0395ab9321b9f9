//! `/proc/PID/pagemap`: one 64-bit entry per virtual page (binary, read at the page's
//! offset), saying whether the page is present, swapped, soft-dirty...

use crate::Process;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The page is in memory.
pub const PRESENT: u64 = 1 << 63;
/// The page is swapped out (or, for userfaultfd write-protect, carries a marker).
pub const SWAPPED: u64 = 1 << 62;
/// The page is a file's page (in the page cache) or shared anonymous memory, not a
/// private copy.
pub const FILE_OR_SHARED: u64 = 1 << 61;
/// The page was written since the soft-dirty bits were cleared (`clear_refs` 4).
pub const SOFT_DIRTY: u64 = 1 << 55;

/// An open pagemap, with a buffer reused across reads.
pub struct Pagemap {
    file: File,
    buf: Vec<u8>,
}

impl Pagemap {
    /// Process `p`'s pagemap (needs ptrace-read access to see frame numbers; the flags
    /// read here are visible without).
    pub fn open(p: impl Into<Process>) -> io::Result<Pagemap> {
        Ok(Pagemap { file: File::open(p.into().file("pagemap"))?, buf: Vec::new() })
    }

    /// The open file (for the PAGEMAP_SCAN ioctl).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The entries of `count` pages from page number `first_page` (address / page size).
    pub fn entries(&mut self, first_page: u64, count: usize) -> io::Result<impl Iterator<Item = u64> + '_> {
        let len = count.checked_mul(8).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let offset = first_page.checked_mul(8).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let bytes = &mut self.buf[..len];
        self.file.read_exact_at(bytes, offset)?;
        Ok(bytes.chunks_exact(8).map(|e| u64::from_ne_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pages_written_are_present() {
        let page = 4096usize;
        let mut block = vec![0u8; 16 * page];
        let base = block.as_ptr() as usize;
        let first = base.div_ceil(page);
        // Touch the second whole page of the block.
        block[first * page - base + page] = 1;
        let mut pm = Pagemap::open(Process::Current).unwrap();
        let e: Vec<u64> = pm.entries(first as u64 + 1, 1).unwrap().collect();
        assert_eq!(e.len(), 1);
        assert_ne!(e[0] & PRESENT, 0, "{:#x}", e[0]);
        assert_eq!(pm.entries(first as u64, 4).unwrap().count(), 4);
        assert!(pm.entries(u64::MAX, 1).is_err());
        std::hint::black_box(&block);
    }
}
