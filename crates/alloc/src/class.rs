//! Size classes: 16 to 128 bytes by 16, then four per power of two up to 16 KiB (at most 25%
//! internal waste above 128 bytes). Every class is a multiple of 16 (malloc's alignment);
//! a block of a power-of-two class is aligned to its size because spans are 64 KiB aligned.
//! Larger requests take runs of whole spans.

use crate::geometry::SPAN_SIZE;

/// Number of size classes.
pub const CLASSES: usize = 8 + 4 * 7;
/// The largest request served from a size class.
pub const MAX_SMALL: usize = 16384;
/// Live-bitmap words per span: one bit per 16-byte block, the smallest class.
pub const BITMAP_WORDS: usize = SPAN_SIZE / 16 / 64;
/// The most blocks a thread cache keeps per class.
pub const BIN_CAPACITY: usize = 64;

// Evaluated at compile time only: an out-of-bounds index would fail the build.
#[allow(clippy::indexing_slicing)]
const fn sizes() -> [u32; CLASSES] {
    let mut s = [0u32; CLASSES];
    let mut i = 0;
    while i < 8 {
        s[i] = 16 * (i as u32 + 1);
        i += 1;
    }
    let mut p = 128u32;
    while i < CLASSES {
        let step = p / 4;
        let mut k = 1;
        while k <= 4 {
            s[i] = p + step * k;
            i += 1;
            k += 1;
        }
        p *= 2;
    }
    s
}

/// Block size of each class.
///
/// This table and the others below are `const`, not `static`: each use indexes a copy in
/// the using code's own read-only data, addressed relative to the instruction. A `static`
/// of this crate is reached through the GOT from libmcr.so (an extra load on every malloc
/// and free).
pub const CLASS_SIZE: [u32; CLASSES] = sizes();

// Evaluated at compile time only: an out-of-bounds index would fail the build.
#[allow(clippy::indexing_slicing)]
const fn reciprocals() -> [u64; CLASSES] {
    let s = sizes();
    let mut r = [0u64; CLASSES];
    let mut i = 0;
    while i < CLASSES {
        r[i] = (1u64 << 32).div_ceil(s[i] as u64);
        i += 1;
    }
    r
}

/// `ceil(2^32 / size)`: `(offset * RECIPROCAL) >> 32 == offset / size` for every offset in a
/// span (checked exhaustively by a test), so finding a block needs no division.
const RECIPROCAL: [u64; CLASSES] = reciprocals();

/// Class of a request of `16 * i` bytes or less, for requests up to 1 KiB.
// Evaluated at compile time only: an out-of-bounds index would fail the build.
#[allow(clippy::indexing_slicing)]
const fn lookup() -> [u8; 65] {
    let s = sizes();
    let mut t = [0u8; 65];
    let mut i = 0;
    while i <= 64 {
        let n = (i * 16) as u32;
        let mut c = 0;
        while s[c] < n {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
}
const LOOKUP: [u8; 65] = lookup();

/// The smallest class whose blocks hold `n` bytes (`n <= MAX_SMALL`; larger `n` give the
/// last class, callers check first).
#[inline]
pub fn class_of(n: usize) -> usize {
    if n <= 1024 {
        LOOKUP.get((n + 15) >> 4).copied().unwrap_or(0) as usize
    } else {
        let n = n.min(MAX_SMALL);
        // p < n <= 2p with p a power of two >= 1024, four classes per doubling
        let log = (usize::BITS - 1 - (n - 1).leading_zeros()) as usize;
        let p = 1usize << log;
        let step = p / 4;
        let k = (n - p).div_ceil(step);
        8 + (log - 7) * 4 + (k - 1)
    }
}

/// Block size of class `c` (0 for an invalid class, which callers never pass).
#[inline]
pub fn size_of_class(c: usize) -> usize {
    CLASS_SIZE.get(c).copied().unwrap_or(0) as usize
}

// Evaluated at compile time only: an out-of-bounds index would fail the build.
#[allow(clippy::indexing_slicing)]
const fn per_class(table: Table) -> [u32; CLASSES] {
    let s = sizes();
    let mut t = [0u32; CLASSES];
    let mut i = 0;
    while i < CLASSES {
        t[i] = match table {
            Table::BlocksPerSpan => (SPAN_SIZE as u32) / s[i],
            Table::Capacity => capacity(s[i]),
            Table::Batch => batch(s[i]),
        };
        i += 1;
    }
    t
}

enum Table {
    BlocksPerSpan,
    Capacity,
    Batch,
}

const fn capacity(size: u32) -> u32 {
    let c = 128 * 1024 / size;
    if c < 8 {
        8
    } else if c > BIN_CAPACITY as u32 {
        BIN_CAPACITY as u32
    } else {
        c
    }
}

const fn batch(size: u32) -> u32 {
    let b = 8192 / size;
    let max = capacity(size) / 2;
    if b < 2 {
        2
    } else if b > max {
        max
    } else {
        b
    }
}

// Tables rather than divisions on the malloc and free paths.
const BLOCKS_PER_SPAN: [u32; CLASSES] = per_class(Table::BlocksPerSpan);
const BIN_CAPACITY_OF: [u32; CLASSES] = per_class(Table::Capacity);
const REFILL_BATCH: [u32; CLASSES] = per_class(Table::Batch);

/// Blocks of class `c` in one span.
#[inline]
pub fn blocks_per_span(c: usize) -> usize {
    BLOCKS_PER_SPAN.get(c).copied().unwrap_or(0) as usize
}

/// Index of the block of class `c` that contains byte `offset` of its span.
#[inline]
pub fn block_index(c: usize, offset: usize) -> usize {
    let r = RECIPROCAL.get(c).copied().unwrap_or(0);
    ((offset as u64 * r) >> 32) as usize
}

/// How many blocks a thread cache keeps for class `c`: 64, fewer for large blocks so that
/// a thread never hoards more than ~128 KiB per class.
#[inline]
pub fn bin_capacity(c: usize) -> usize {
    BIN_CAPACITY_OF.get(c).copied().unwrap_or(0) as usize
}

/// How many blocks one refill claims from a span: about 8 KiB worth, at least 2, at most half
/// the cache.
#[inline]
pub fn refill_batch(c: usize) -> usize {
    REFILL_BATCH.get(c).copied().unwrap_or(0) as usize
}

/// The smallest class at least `c` whose blocks are aligned to `align` (a power of two up to
/// 4096), i.e. whose size is a multiple of it.
pub fn aligned_class(c: usize, align: usize) -> Option<usize> {
    (c..CLASSES).find(|&k| size_of_class(k).is_multiple_of(align))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(CLASS_SIZE[0], 16);
        assert_eq!(CLASS_SIZE[7], 128);
        assert_eq!(CLASS_SIZE[8], 160);
        assert_eq!(CLASS_SIZE[CLASSES - 1] as usize, MAX_SMALL);
        for c in 1..CLASSES {
            assert!(CLASS_SIZE[c] > CLASS_SIZE[c - 1]);
            assert_eq!(CLASS_SIZE[c] % 16, 0, "class {c} keeps malloc's 16-byte alignment");
            // at most 25% waste above 128 bytes
            if CLASS_SIZE[c] > 128 {
                assert!(CLASS_SIZE[c - 1] as f64 >= CLASS_SIZE[c] as f64 * 0.75 - 1.0);
            }
        }
        assert!(blocks_per_span(CLASSES - 1) >= 4);
        assert_eq!(blocks_per_span(0), BITMAP_WORDS * 64, "the bitmap holds the smallest class exactly");
        assert_eq!(blocks_per_span(CLASSES), 0);
        assert_eq!(bin_capacity(CLASSES), 0);
    }

    #[test]
    fn every_size_gets_the_smallest_class_that_fits() {
        for n in 0..=MAX_SMALL {
            let c = class_of(n);
            assert!(size_of_class(c) >= n.max(1), "{n}");
            assert!(c == 0 || size_of_class(c - 1) < n, "{n} fits a smaller class than {c}");
        }
    }

    #[test]
    fn reciprocal_division_is_exact_in_a_span() {
        for c in 0..CLASSES {
            let s = size_of_class(c);
            for off in 0..SPAN_SIZE {
                assert_eq!(block_index(c, off), off / s, "class {c} offset {off}");
            }
        }
    }

    #[test]
    fn cache_sizes() {
        for c in 0..CLASSES {
            let s = size_of_class(c);
            assert_eq!(blocks_per_span(c), SPAN_SIZE / s);
            assert_eq!(bin_capacity(c), (128 * 1024 / s).clamp(8, BIN_CAPACITY));
            assert_eq!(refill_batch(c), (8192 / s).clamp(2, bin_capacity(c) / 2));
            let cap = bin_capacity(c);
            assert!((8..=BIN_CAPACITY).contains(&cap));
            let batch = refill_batch(c);
            assert!(batch >= 2 && batch * 2 <= cap, "class {c}: batch {batch} cap {cap}");
        }
    }

    #[test]
    fn aligned_classes() {
        for align in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for c in 0..CLASSES {
                let k = aligned_class(c, align).unwrap();
                assert!(k >= c && size_of_class(k).is_multiple_of(align));
            }
        }
        assert_eq!(aligned_class(0, 8192), Some(class_of(8192)));
    }
}
