//! Where the state transfer put each old object: the table `mcr_translate()` (include/mcr.h)
//! answers from, inside the new process, while object handlers run.
//!
//! The update writes the table into a scratch block of the new process (it is as long as
//! the heap is large, so it does not travel as JSON) and names it in
//! [`crate::RuntimeCommandKind::RunObjHandlers`]: [`RelocationTable::count`] entries of
//! [`Relocation`], native-endian, sorted by [`Relocation::old`], not overlapping.

use serde::{Deserialize, Serialize};

/// One old object (a heap block the transfer moved, or a global of the main binary) and
/// where it is in the new version.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// The old object's address and length.
    pub old: u64,
    pub len: u64,
    /// Its new address.
    pub new: u64,
    /// The size of one element in the old and in the new layout, when they differ (an
    /// object, or an array of objects, whose type changed); 0 when offsets carry over.
    pub old_stride: u64,
    pub new_stride: u64,
}

impl Relocation {
    /// Bytes of one entry in the table.
    pub const SIZE: usize = core::mem::size_of::<Relocation>();

    /// New address of `offset` bytes into the old object: the same offset when the layout
    /// did not change; the start of the same element when it did (an address inside an
    /// element whose layout changed has no counterpart).
    pub fn at(&self, offset: u64) -> Option<u64> {
        if self.old_stride == self.new_stride || self.old_stride == 0 {
            return self.new.checked_add(offset);
        }
        let (i, within) = (offset / self.old_stride, offset % self.old_stride);
        (within == 0).then(|| i.checked_mul(self.new_stride).and_then(|o| self.new.checked_add(o))).flatten()
    }

    /// The entry's bytes in the table.
    pub fn to_bytes(&self) -> [u8; Relocation::SIZE] {
        let mut b = [0u8; Relocation::SIZE];
        for (i, v) in [self.old, self.len, self.new, self.old_stride, self.new_stride].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// A sorted table: the entries in order of their old address, overlapping ones dropped.
pub fn sorted(mut entries: Vec<Relocation>) -> Vec<Relocation> {
    entries.sort_by_key(|r| r.old);
    let mut out: Vec<Relocation> = Vec::with_capacity(entries.len());
    for r in entries {
        if out.last().is_some_and(|l| r.old < l.old.saturating_add(l.len.max(1))) {
            continue;
        }
        out.push(r);
    }
    out
}

/// The new address of old address `p`, from a sorted table; `None` when no entry holds it
/// (a zero-length entry holds its own address).
pub fn translate(table: &[Relocation], p: u64) -> Option<u64> {
    let i = table.partition_point(|r| r.old <= p);
    let r = table.get(i.checked_sub(1)?)?;
    let off = p - r.old;
    (off < r.len.max(1)).then(|| r.at(off)).flatten()
}

/// Where a table sits in the new process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelocationTable {
    pub addr: u64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(old: u64, len: u64, new: u64, old_stride: u64, new_stride: u64) -> Relocation {
        Relocation { old, len, new, old_stride, new_stride }
    }

    #[test]
    fn addresses_translate_into_the_object_that_moved() {
        let t = sorted(vec![
            r(0x5000, 0x100, 0x9000, 0, 0), // a global, same layout
            r(0x1000, 96, 0x7000, 24, 40),  // four elements of a type that grew
            r(0x2000, 32, 0x8000, 32, 48),  // one object of a type that grew
            r(0x1010, 8, 0xdead, 0, 0),     // overlaps the array: dropped
            r(0x3000, 0, 0x3300, 0, 0),     // zero-length
        ]);
        assert_eq!(t.len(), 4);
        assert_eq!(translate(&t, 0x5000), Some(0x9000));
        assert_eq!(translate(&t, 0x50ff), Some(0x90ff), "interior, same layout: same offset");
        assert_eq!(translate(&t, 0x5100), None, "one past the end");
        assert_eq!(translate(&t, 0x1000 + 48), Some(0x7000 + 80), "third element");
        assert_eq!(translate(&t, 0x1000 + 50), None, "inside an element whose layout changed");
        assert_eq!(translate(&t, 0x1010), None, "the overlapping entry is gone");
        assert_eq!(translate(&t, 0x2000), Some(0x8000));
        assert_eq!(translate(&t, 0x2008), None);
        assert_eq!(translate(&t, 0x3000), Some(0x3300));
        assert_eq!(translate(&t, 0x3001), None);
        assert_eq!(translate(&t, 0xfff), None, "below every entry");
        assert_eq!(translate(&t, 0), None);
        assert_eq!(translate(&[], 0x5000), None);
    }

    #[test]
    fn entries_are_five_native_words() {
        let e = r(1, 2, 3, 4, 5);
        let b = e.to_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(u64::from_ne_bytes(b[16..24].try_into().unwrap()), 3);
        assert_eq!(u64::from_ne_bytes(b[32..40].try_into().unwrap()), 5);
    }
}
