//! The live blocks of a process, found by their headers, with lookup by any address
//! inside a block (a pointer into the middle of a buffer finds the buffer).

use crate::memory::{MemoryError, ReadMemory, Region};
use crate::{tag, Info, HEADER};

/// A live heap block of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// Address of the first byte the program uses.
    pub addr: u64,
    /// Bytes the program asked for.
    pub size: u64,
    /// Allocated before the process completed startup.
    pub startup: bool,
}

impl Object {
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

#[derive(Debug, Default)]
pub struct HeapIndex {
    /// Sorted by address, never overlapping.
    objects: Vec<Object>,
    /// Bytes scanned to build the index.
    pub scanned_bytes: u64,
}

/// Memory read by a scan: (address, bytes), in address order.
pub type Pieces = Vec<(u64, Vec<u8>)>;

/// Read in pieces this large (a multiple of the header size).
const CHUNK: usize = 1 << 20;

impl HeapIndex {
    /// Scan `regions` of `mem` for live headers.
    pub fn scan(mem: &dyn ReadMemory, regions: &[Region]) -> Result<Self, MemoryError> {
        Self::scan_inner(mem, regions, None)
    }

    /// Like [`HeapIndex::scan`], keeping what it read: reading the blocks again later is
    /// then a copy, not a system call per block.
    pub fn scan_keeping(mem: &dyn ReadMemory, regions: &[Region]) -> Result<(Self, Pieces), MemoryError> {
        let mut kept = Vec::new();
        let idx = Self::scan_inner(mem, regions, Some(&mut kept))?;
        Ok((idx, kept))
    }

    fn scan_inner(
        mem: &dyn ReadMemory,
        regions: &[Region],
        mut keep: Option<&mut Pieces>,
    ) -> Result<Self, MemoryError> {
        let mut objects = Vec::new();
        let mut scanned = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for r in regions {
            let mut at = r.start;
            while at < r.end {
                let len = ((r.end - at) as usize).min(CHUNK);
                let b = &mut buf[..len];
                if mem.read(at, b).is_err() {
                    // Unreadable or gone meanwhile: nothing of the program's lives there.
                    at += len as u64;
                    continue;
                }
                scanned += len as u64;
                let before = objects.len();
                for (i, w) in b.chunks_exact(HEADER).enumerate() {
                    let h = at + (i * HEADER) as u64;
                    let t = u64::from_ne_bytes(w[..8].try_into().expect("8 bytes"));
                    if t != tag(h) {
                        continue;
                    }
                    let info = u64::from_ne_bytes(w[8..16].try_into().expect("8 bytes"));
                    let Info { size, startup, .. } = Info::decode(info);
                    objects.push(Object { addr: h + HEADER as u64, size, startup });
                }
                // Only pieces that hold blocks are worth keeping (most anonymous memory,
                // stacks and the like, holds none).
                if let Some(k) = keep.as_deref_mut().filter(|_| objects.len() > before) {
                    k.push((at, b.to_vec()));
                }
                at += len as u64;
            }
        }
        Ok(Self::from_objects(objects, scanned))
    }

    pub fn from_objects(mut objects: Vec<Object>, scanned_bytes: u64) -> Self {
        objects.sort_by_key(|o| o.addr);
        // A block's header can never lie inside another live block; if memory says so
        // (a stale copy the program made itself), keep the enclosing block.
        let mut out: Vec<Object> = Vec::with_capacity(objects.len());
        for o in objects {
            match out.last() {
                Some(prev) if o.addr < prev.end() => {}
                _ => out.push(o),
            }
        }
        Self { objects: out, scanned_bytes }
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// The block containing `addr` (its first byte up to, not including, its end; a
    /// zero-sized block contains its own address).
    pub fn containing(&self, addr: u64) -> Option<&Object> {
        let i = self.objects.partition_point(|o| o.addr <= addr);
        let o = self.objects.get(i.checked_sub(1)?)?;
        (addr < o.end() || addr == o.addr).then_some(o)
    }

    /// The block starting exactly at `addr`.
    pub fn starting_at(&self, addr: u64) -> Option<&Object> {
        self.objects.binary_search_by_key(&addr, |o| o.addr).ok().map(|i| &self.objects[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake address space: one region of bytes.
    struct Fake {
        base: u64,
        bytes: Vec<u8>,
    }

    impl ReadMemory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let off = (addr - self.base) as usize;
            buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
            Ok(())
        }
    }

    fn put(f: &mut Fake, addr: u64, v: u64) {
        let off = (addr - f.base) as usize;
        f.bytes[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn region(base: u64, len: u64) -> Region {
        Region {
            start: base,
            end: base + len,
            readable: true,
            writable: true,
            private: true,
            offset: 0,
            inode: 0,
            name: String::new(),
        }
    }

    #[test]
    fn scan_finds_live_blocks_and_ignores_freed_and_copied_headers() {
        let base = 0x10000;
        let mut f = Fake { base, bytes: vec![0; 4096] };
        let mut live = BTreeMap::new();
        for (h, size, startup) in [(0x10000u64, 40u64, true), (0x10040, 24, false), (0x10100, 1000, false)] {
            put(&mut f, h, tag(h));
            put(&mut f, h + 8, Info { size, startup, align_log2: 0 }.encode());
            live.insert(h + 16, (size, startup));
        }
        // A freed block: tag cleared.
        put(&mut f, 0x10600, 0);
        put(&mut f, 0x10608, Info { size: 8, startup: false, align_log2: 0 }.encode());
        // A copy of a header's bytes elsewhere: its tag names another address.
        put(&mut f, 0x10800, tag(0x10040));
        put(&mut f, 0x10808, Info { size: 24, startup: false, align_log2: 0 }.encode());
        // An over-aligned allocation: the header sits right before the aligned block.
        put(&mut f, 0x10a30, tag(0x10a30));
        put(&mut f, 0x10a38, Info { size: 64, startup: false, align_log2: 6 }.encode());
        live.insert(0x10a40, (64, false));

        let idx = HeapIndex::scan(&f, &[region(base, 4096)]).unwrap();
        let found: BTreeMap<u64, (u64, bool)> = idx.objects().iter().map(|o| (o.addr, (o.size, o.startup))).collect();
        assert_eq!(found, live);
        assert_eq!(idx.scanned_bytes, 4096);
    }

    #[test]
    fn interior_pointers_find_their_block() {
        let idx = HeapIndex::from_objects(
            vec![
                Object { addr: 0x2000, size: 0x100, startup: false },
                Object { addr: 0x1000, size: 0x10, startup: true },
                Object { addr: 0x3000, size: 0, startup: false },
            ],
            0,
        );
        assert_eq!(idx.containing(0x1000).map(|o| o.addr), Some(0x1000));
        assert_eq!(idx.containing(0x100f).map(|o| o.addr), Some(0x1000));
        assert_eq!(idx.containing(0x1010), None, "one past the end belongs to no block");
        assert_eq!(idx.containing(0x20ff).map(|o| o.addr), Some(0x2000));
        assert_eq!(idx.containing(0x0fff), None);
        assert_eq!(idx.containing(0x3000).map(|o| o.addr), Some(0x3000));
        assert_eq!(idx.starting_at(0x2000).map(|o| o.size), Some(0x100));
        assert_eq!(idx.starting_at(0x2008), None);
    }
}
