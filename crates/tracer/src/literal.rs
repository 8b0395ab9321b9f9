//! Pointers to string literals: read-only bytes of the old binary no symbol covers (a
//! C string literal has none). The new binary holds its own copy of the same literal; a
//! pointer moves to a place where the new binary's read-only mappings hold the same
//! string (its bytes through the terminating NUL). The linker merges a string with the
//! tails of longer ones and may keep several copies; any of them reads the same, so one is
//! chosen, the same for every pointer to the same old address (pointers equal before
//! are equal after): a whole string (after a NUL) rather than another's tail, then the
//! copy whose offset in the binary is nearest the old one's (a patched build keeps its
//! read-only data in nearly the same order). Not there at all, the pointer cannot be
//! moved (the transfer names it).

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
    /// Every whole string (from a chunk's start or a NUL, through the next NUL), as
    /// (key of its bytes, chunk, offset), sorted: nginx's state points to thousands of
    /// distinct literals, and a search of the whole read-only data for each was ~40 ms of
    /// every update's paused time.
    whole: Vec<(u64, u32, u32)>,
}

/// A cheap key of a string's bytes (its length and its first and last 8 bytes): equal
/// keys are compared in full.
fn key_of(bytes: &[u8]) -> u64 {
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let n = bytes.len();
    let (head, tail) = (word(&bytes[..n.min(8)]), word(&bytes[n.saturating_sub(8)..]));
    (head.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0xFF51_AFD7_ED55_8CCD)
}

impl ReadOnlyBytes {
    /// Each mapping at once, else page by page: a page that cannot be read is left out
    /// (a string across it is not found, which only makes the search more cautious).
    pub fn read(image: &Image, mem: &dyn ReadMemory) -> ReadOnlyBytes {
        let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
        for &(start, end) in image.readonly() {
            let mut whole = vec![0u8; (end - start) as usize];
            if mem.read(start, &mut whole).is_ok() {
                match chunks.last_mut() {
                    Some((s, bytes)) if *s + bytes.len() as u64 == start => bytes.extend_from_slice(&whole),
                    _ => chunks.push((start, whole)),
                }
                continue;
            }
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
        let mut whole = Vec::new();
        for (c, (_, bytes)) in chunks.iter().enumerate() {
            let mut from = 0;
            for end in memchr::memchr_iter(0, bytes) {
                // Not the empty strings: the zeros of every table (those are searched for).
                if end > from {
                    whole.push((key_of(&bytes[from..=end]), c as u32, from as u32));
                }
                from = end + 1;
            }
        }
        whole.sort_unstable();
        ReadOnlyBytes { chunks, whole }
    }

    /// Where `needle` is: the copy that starts a string, nearest `near` (see the module's
    /// comment), or `None` when it is not there.
    pub fn find(&self, needle: &[u8], near: u64) -> Option<u64> {
        if needle.is_empty() {
            return None;
        }
        // A whole string, when there is one: it always wins over a tail.
        if needle.last() == Some(&0) {
            let key = key_of(needle);
            let first = self.whole.partition_point(|&(k, ..)| k < key);
            let same_key = self.whole[first..].iter().take_while(|&&(k, ..)| k == key);
            let whole = same_key.filter_map(|&(_, c, at)| {
                let (start, bytes) = &self.chunks[c as usize];
                let at = at as usize;
                (bytes.get(at..at + needle.len()) == Some(needle)).then_some(start + at as u64)
            });
            if let Some(at) = whole.min_by_key(|&at| (at.abs_diff(near), at)) {
                return Some(at);
            }
        }
        let mut best: Option<(bool, u64, u64)> = None; // (a tail, distance, address)
        let finder = memchr::memmem::Finder::new(needle);
        for (start, bytes) in &self.chunks {
            for i in finder.find_iter(bytes) {
                let at = start + i as u64;
                let tail = i > 0 && bytes[i - 1] != 0;
                let key = (tail, at.abs_diff(near), at);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        best.map(|(_, _, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Memory;

    #[test]
    fn a_string_is_found_whole_and_nearest_its_old_place() {
        let mut mem = Memory::default();
        mem.write(0x1000, b"xxhello\0hi\0hello\0");
        mem.write(0x2000, b"bye\0");
        let image = Image::new(0, vec![(0x1000, 0x1011), (0x2000, 0x2004)]);
        let ro = ReadOnlyBytes::read(&image, &mem);
        assert_eq!(ro.find(b"bye\0", 0), Some(0x2000));
        assert_eq!(ro.find(b"hi\0", 0), Some(0x1008));
        assert_eq!(ro.find(b"hello\0", 0x1000), Some(0x100b), "a whole string rather than a tail");
        assert_eq!(ro.find(b"llo\0", 0x1000), Some(0x1004), "two tails: the nearest");
        assert_eq!(ro.find(b"llo\0", 0x1010), Some(0x100d), "two tails: the nearest");
        assert_eq!(ro.find(b"hullo\0", 0), None);
        assert_eq!(ro.find(b"xxhello\0", 0x2000), Some(0x1000), "a whole string at a chunk's start");
        let mut copies = Memory::default();
        copies.write(0x1000, b"a\0a\0ba\0");
        let ro2 = ReadOnlyBytes::read(&Image::new(0, vec![(0x1000, 0x1007)]), &copies);
        assert_eq!(ro2.find(b"a\0", 0x1006), Some(0x1002), "the nearest whole copy, not the nearer tail");
        assert_eq!(ro2.find(b"a\0", 0), Some(0x1000));
        assert_eq!(c_string_at(&mem, 0x1002, 0x1011).as_deref(), Some(&b"hello\0"[..]));
        assert_eq!(c_string_at(&mem, 0x2000, 0x2002), None, "no NUL before the end");
    }
}
