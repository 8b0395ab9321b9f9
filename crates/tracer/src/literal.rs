//! Pointers to string literals: read-only bytes of the old binary no symbol covers (a
//! C string literal has none). The new binary holds its own copy of the same literal; a
//! pointer moves to it when the new binary's read-only mappings hold that string (its
//! bytes through the terminating NUL) exactly once. Twice or not at all, the pointer
//! cannot be moved (the transfer names it, as before).

use crate::image::Image;
use mcr_heap::ReadMemory;

/// The longest literal looked for.
const MAX_LEN: usize = 4096;
const PAGE: u64 = 4096;

/// The C string at `addr` (through its NUL) in `mem`, within `[addr, end)`.
pub fn c_string_at(mem: &dyn ReadMemory, addr: u64, end: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64];
    let mut at = addr;
    while out.len() < MAX_LEN && at < end {
        let n = (end - at).min(chunk.len() as u64) as usize;
        mem.read(at, &mut chunk[..n]).ok()?;
        if let Some(z) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..=z]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    None
}

/// The new binary's read-only mappings, read once (on the first literal looked for).
pub struct ReadOnlyBytes {
    chunks: Vec<(u64, Vec<u8>)>,
}

impl ReadOnlyBytes {
    /// Page by page: a page that cannot be read is left out (a string across it is not
    /// found, which only makes the search more cautious).
    pub fn read(image: &Image, mem: &dyn ReadMemory) -> ReadOnlyBytes {
        let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(start, end) in image.readonly() {
            let mut at = start;
            while at < end {
                let len = (end - at).min(PAGE - at % PAGE);
                let mut page = vec![0u8; len as usize];
                if mem.read(at, &mut page).is_ok() {
                    match chunks.last_mut() {
                        Some((s, bytes)) if *s + bytes.len() as u64 == at => bytes.extend_from_slice(&page),
                        _ => chunks.push((at, page)),
                    }
                }
                at += len;
            }
        }
        ReadOnlyBytes { chunks }
    }

    /// Where `needle` is, when it is there exactly once.
    pub fn unique(&self, needle: &[u8]) -> Option<u64> {
        if needle.is_empty() {
            return None;
        }
        let mut found = None;
        for (start, bytes) in &self.chunks {
            for (i, w) in bytes.windows(needle.len()).enumerate() {
                if w == needle {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(start + i as u64);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Memory;

    #[test]
    fn a_string_is_found_only_when_it_is_there_once() {
        let mut mem = Memory::default();
        mem.write(0x1000, b"xxhello\0hi\0hello\0");
        mem.write(0x2000, b"bye\0");
        let image = Image::new(0, vec![(0x1000, 0x1011), (0x2000, 0x2004)]);
        let ro = ReadOnlyBytes::read(&image, &mem);
        assert_eq!(ro.unique(b"bye\0"), Some(0x2000));
        assert_eq!(ro.unique(b"hi\0"), Some(0x1008));
        assert_eq!(ro.unique(b"hello\0"), None, "twice: ambiguous");
        assert_eq!(ro.unique(b"hullo\0"), None);
        assert_eq!(c_string_at(&mem, 0x1002, 0x1011).as_deref(), Some(&b"hello\0"[..]));
        assert_eq!(c_string_at(&mem, 0x2000, 0x2002), None, "no NUL before the end");
    }
}
