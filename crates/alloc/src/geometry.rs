//! Where the heap lives: the window, its slots, spans, pages; and sets of slots (with the
//! parser and formatter of the list a new version receives in its environment).

use core::fmt;

/// First address of the heap window: above a non-PIE program and its brk heap, below a PIE
/// program (0x5555_5555_4000 with ASLR off) and the libraries (0x7fff_f7…).
pub const WINDOW_BASE: usize = 0x1000_0000_0000;
/// A region occupies one slot of 64 GiB.
pub const SLOT_SHIFT: u32 = 36;
pub const SLOT_SIZE: usize = 1 << SLOT_SHIFT;
/// 256 slots: the window is 16 TiB.
pub const SLOTS: usize = 256;
pub const WINDOW_END: usize = WINDOW_BASE + SLOTS * SLOT_SIZE;

/// Spans of 64 KiB: the unit of the span table, of size-class carving and of large runs.
pub const SPAN_SHIFT: u32 = 16;
pub const SPAN_SIZE: usize = 1 << SPAN_SHIFT;
pub const SPANS_PER_REGION: usize = SLOT_SIZE / SPAN_SIZE;

/// The page size the engine assumes (x86-64): pagemap entries, write-back ranges.
pub const PAGE_SIZE: usize = 4096;

/// The base address of `slot` (no check).
#[inline]
pub const fn slot_base(slot: usize) -> usize {
    WINDOW_BASE + (slot << SLOT_SHIFT)
}

/// The slot `addr` falls in, if it is inside the window.
#[inline]
pub const fn slot_of(addr: usize) -> Option<usize> {
    let off = addr.wrapping_sub(WINDOW_BASE);
    if off < SLOTS * SLOT_SIZE {
        Some(off >> SLOT_SHIFT)
    } else {
        None
    }
}

/// The span index of `addr` within its region.
#[inline]
pub const fn span_index(addr: usize) -> usize {
    (addr & (SLOT_SIZE - 1)) >> SPAN_SHIFT
}

/// The address of span `index` of the region at `base`.
#[inline]
pub const fn span_addr(base: usize, index: usize) -> usize {
    base + (index << SPAN_SHIFT)
}

/// A set of slots (256 bits), e.g. the slots a new version must keep off because the old
/// version's heap lives there.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotSet {
    words: [u64; SLOTS / 64],
}

/// Why a slot list does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotListError {
    #[error("slot list: empty item at byte {at}")]
    EmptyItem { at: usize },
    #[error("slot list: not a number at byte {at}")]
    NotANumber { at: usize },
    #[error("slot list: slot {slot} is outside the window (0..{SLOTS})")]
    OutOfRange { slot: u64 },
    #[error("slot list: range {first}-{last} is reversed")]
    Reversed { first: u64, last: u64 },
}

impl SlotSet {
    pub const fn new() -> SlotSet {
        SlotSet { words: [0; SLOTS / 64] }
    }

    /// Every slot from `first` to `last` inclusive (clamped to the window).
    pub fn range(first: usize, last: usize) -> SlotSet {
        let mut s = SlotSet::new();
        for slot in first..=last.min(SLOTS - 1) {
            s.insert(slot);
        }
        s
    }

    pub fn insert(&mut self, slot: usize) {
        if let Some(w) = self.words.get_mut(slot / 64) {
            *w |= 1 << (slot % 64);
        }
    }

    pub fn remove(&mut self, slot: usize) {
        if let Some(w) = self.words.get_mut(slot / 64) {
            *w &= !(1 << (slot % 64));
        }
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.words.get(slot / 64).is_some_and(|w| w >> (slot % 64) & 1 == 1)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn union(&self, other: &SlotSet) -> SlotSet {
        let mut s = *self;
        for (a, b) in s.words.iter_mut().zip(other.words.iter()) {
            *a |= *b;
        }
        s
    }

    /// The slots in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| BitIter(w).map(move |b| i * 64 + b))
    }

    /// Parses a slot list as the runtime finds it in the environment: items separated by
    /// commas, each a slot or an inclusive range `first-last`, numbers in decimal or `0x` hex;
    /// blanks around items are ignored and an empty value is the empty set.
    /// Example: `0-3,7,0x10`.
    pub fn parse(value: &[u8]) -> Result<SlotSet, SlotListError> {
        let mut set = SlotSet::new();
        if value.iter().all(u8::is_ascii_whitespace) {
            return Ok(set);
        }
        let mut at = 0;
        for item in value.split(|&b| b == b',') {
            let trimmed = trim(item);
            if trimmed.is_empty() {
                return Err(SlotListError::EmptyItem { at });
            }
            let (first, last) = match trimmed.iter().position(|&b| b == b'-') {
                Some(dash) => {
                    let (a, b) = trimmed.split_at(dash);
                    (parse_number(trim(a), at)?, parse_number(trim(b.get(1..).unwrap_or_default()), at)?)
                }
                None => {
                    let n = parse_number(trimmed, at)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(SlotListError::Reversed { first, last });
            }
            if last >= SLOTS as u64 {
                return Err(SlotListError::OutOfRange { slot: last });
            }
            for slot in first..=last {
                set.insert(slot as usize);
            }
            at += item.len() + 1;
        }
        Ok(set)
    }

    /// Writes the set in the format [`SlotSet::parse`] reads (ranges collapsed, decimal) into
    /// `out` without allocating; returns the length, or `None` if `out` is too small.
    /// 1 KiB always suffices.
    pub fn write_list(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Cursor { out, len: 0 };
        let mut slots = self.iter().peekable();
        let mut first_item = true;
        while let Some(first) = slots.next() {
            let mut last = first;
            while slots.peek() == Some(&(last + 1)) {
                last += 1;
                slots.next();
            }
            if !first_item {
                w.push(b',')?;
            }
            first_item = false;
            w.number(first)?;
            if last != first {
                w.push(b'-')?;
                w.number(last)?;
            }
        }
        Some(w.len)
    }
}

impl fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

struct Cursor<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn push(&mut self, b: u8) -> Option<()> {
        *self.out.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }

    fn number(&mut self, n: usize) -> Option<()> {
        let mut digits = [0u8; 20];
        let mut k = 0;
        let mut v = n;
        loop {
            *digits.get_mut(k)? = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for d in digits.get(..k)?.iter().rev() {
            self.push(*d)?;
        }
        Some(())
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

fn parse_number(s: &[u8], at: usize) -> Result<u64, SlotListError> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return Err(SlotListError::NotANumber { at });
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix).ok_or(SlotListError::NotANumber { at })?;
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(SlotListError::OutOfRange { slot: u64::MAX })?;
    }
    Ok(v)
}

/// The set bits of a word, lowest first.
pub(crate) struct BitIter(pub u64);

impl Iterator for BitIter {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_arithmetic() {
        assert_eq!(slot_of(WINDOW_BASE), Some(0));
        assert_eq!(slot_of(WINDOW_BASE - 1), None);
        assert_eq!(slot_of(WINDOW_END - 1), Some(SLOTS - 1));
        assert_eq!(slot_of(WINDOW_END), None);
        assert_eq!(slot_of(0), None);
        assert_eq!(slot_of(usize::MAX), None);
        assert_eq!(slot_base(3), WINDOW_BASE + 3 * SLOT_SIZE);
        assert_eq!(span_index(slot_base(3) + 5 * SPAN_SIZE + 17), 5);
        assert_eq!(span_addr(slot_base(3), 5), slot_base(3) + 5 * SPAN_SIZE);
    }

    #[test]
    fn parse_lists() {
        let s = SlotSet::parse(b"0-3, 7,0x10").unwrap();
        assert_eq!(s.iter().collect::<std::vec::Vec<_>>(), [0, 1, 2, 3, 7, 16]);
        assert!(SlotSet::parse(b"").unwrap().is_empty());
        assert!(SlotSet::parse(b"  ").unwrap().is_empty());
        assert_eq!(SlotSet::parse(b"255").unwrap().len(), 1);
        assert_eq!(SlotSet::parse(b"256"), Err(SlotListError::OutOfRange { slot: 256 }));
        assert_eq!(SlotSet::parse(b"3-1"), Err(SlotListError::Reversed { first: 3, last: 1 }));
        assert_eq!(SlotSet::parse(b"1,,2"), Err(SlotListError::EmptyItem { at: 2 }));
        assert_eq!(SlotSet::parse(b"1,x"), Err(SlotListError::NotANumber { at: 2 }));
        assert_eq!(SlotSet::parse(b"0x"), Err(SlotListError::NotANumber { at: 0 }));
        assert_eq!(SlotSet::parse(b"-3"), Err(SlotListError::NotANumber { at: 0 }));
        assert!(matches!(SlotSet::parse(b"99999999999999999999999"), Err(SlotListError::OutOfRange { .. })));
    }

    #[test]
    fn write_then_parse_round_trips() {
        let mut s = SlotSet::new();
        for slot in [0, 1, 2, 5, 9, 10, 63, 64, 65, 200, 255] {
            s.insert(slot);
        }
        let mut buf = [0u8; 64];
        let n = s.write_list(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"0-2,5,9-10,63-65,200,255");
        assert_eq!(SlotSet::parse(&buf[..n]).unwrap(), s);
        assert_eq!(s.write_list(&mut [0u8; 5]), None);
        let all = SlotSet::range(0, SLOTS - 1);
        assert_eq!(all.len(), SLOTS);
        let mut big = [0u8; 1024];
        let n = all.write_list(&mut big).unwrap();
        assert_eq!(&big[..n], b"0-255");
        let mut every_other = SlotSet::new();
        for slot in (0..SLOTS).step_by(2) {
            every_other.insert(slot);
        }
        let n = every_other.write_list(&mut big).unwrap();
        assert_eq!(SlotSet::parse(&big[..n]).unwrap(), every_other);
        assert_eq!(SlotSet::new().write_list(&mut []), Some(0));
    }
}
