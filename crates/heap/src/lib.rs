//! Allocation metadata (DESIGN.md "Allocation metadata").
//!
//! The runtime's `malloc` family puts a 16-byte header in front of every block it hands
//! to the program: a tag word (the header's own address xor [`MAGIC`]) and an info word
//! (requested size, whether the block was allocated during startup, its alignment).
//! `free` clears the tag. Steady state this costs two stores per allocation and one per
//! free, with no lock and no table. Deliberate change from a side table: at update time a
//! process's live blocks are found by scanning its writable anonymous memory for tags
//! (a tag only matches at its own address, so copies of it elsewhere never do); the
//! update is the rare event, so it pays.
//!
//! This crate holds the format (shared by the runtime, which writes it, and the tracer,
//! which reads it) and the reader.

pub mod index;
pub mod memory;

pub use index::{HeapIndex, Object, Pieces};
pub use memory::{thread_stack_pointers, touched_parts, MemoryError, ProcessMemory, ReadMemory, Region, Snapshot};

/// Header size; also keeps the program's blocks 16-byte aligned as malloc must.
pub const HEADER: usize = 16;
/// Xored with the header's address to form its tag.
pub const MAGIC: u64 = 0x6d63_725f_6865_6170;

const SIZE_MASK: u64 = (1 << 48) - 1;
const ALIGN_SHIFT: u32 = 48;
const ALIGN_MASK: u64 = 0x3f << ALIGN_SHIFT;
const STARTUP: u64 = 1 << 63;

/// The tag of a live header at `header_addr`.
pub const fn tag(header_addr: u64) -> u64 {
    header_addr ^ MAGIC
}

/// What the info word of a header says about its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Bytes requested; the block starts right after the header.
    pub size: u64,
    /// Allocated before the process completed startup.
    pub startup: bool,
    /// log2 of the alignment asked for by memalign and friends, 0 for plain malloc: the
    /// underlying allocation then starts `1 << align_log2` bytes before the block.
    pub align_log2: u32,
}

impl Info {
    pub const fn encode(self) -> u64 {
        (self.size & SIZE_MASK)
            | ((self.align_log2 as u64) << ALIGN_SHIFT) & ALIGN_MASK
            | if self.startup { STARTUP } else { 0 }
    }

    pub const fn decode(word: u64) -> Info {
        Info {
            size: word & SIZE_MASK,
            startup: word & STARTUP != 0,
            align_log2: ((word & ALIGN_MASK) >> ALIGN_SHIFT) as u32,
        }
    }
}

/// The block whose header, read from `header_addr`, is `bytes`, when the header is live
/// (its tag names its own address): (the block's address, what the header says).
pub fn live_header(header_addr: u64, bytes: &[u8; HEADER]) -> Option<(u64, Info)> {
    let t = u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"));
    let info = u64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes"));
    (t == tag(header_addr)).then(|| (header_addr + HEADER as u64, Info::decode(info)))
}

/// Largest size a header can describe.
pub const MAX_SIZE: u64 = SIZE_MASK;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_words_round_trip() {
        for info in [
            Info { size: 0, startup: false, align_log2: 0 },
            Info { size: 40, startup: true, align_log2: 0 },
            Info { size: MAX_SIZE, startup: true, align_log2: 12 },
            Info { size: 4096, startup: false, align_log2: 6 },
        ] {
            assert_eq!(Info::decode(info.encode()), info);
        }
    }

    #[test]
    fn live_headers_decode_and_stale_ones_do_not() {
        let info = Info { size: 72, startup: true, align_log2: 0 };
        let mut b = [0u8; HEADER];
        b[..8].copy_from_slice(&tag(0x5000).to_ne_bytes());
        b[8..].copy_from_slice(&info.encode().to_ne_bytes());
        assert_eq!(live_header(0x5000, &b), Some((0x5010, info)));
        assert_eq!(live_header(0x6000, &b), None, "a copy of the header elsewhere");
        b[..8].fill(0);
        assert_eq!(live_header(0x5000, &b), None, "freed: tag cleared");
    }

    #[test]
    fn a_tag_matches_only_at_its_own_address() {
        assert_ne!(tag(0x1000), tag(0x1010));
        assert_eq!(tag(0x1000) ^ MAGIC, 0x1000);
    }
}
