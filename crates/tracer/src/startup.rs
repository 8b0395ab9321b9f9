//! Startup objects matched across versions (DESIGN.md "Mutable tracing": "startup
//! objects by call-stack ID and ordinal"; paper §6: "dynamic objects already reallocated
//! at startup time … are matched by their call stack ID").
//!
//! The new version's startup already allocated its own copy of every object the old
//! version's startup did (mutable reinitialization). A heap block the old version
//! allocated during startup is the `ordinal`-th startup allocation of its call stack; the
//! new version's block with the same call-stack ID and ordinal is its counterpart. The
//! transfer reuses that block instead of allocating a fresh one (which would leave the new
//! version's own block behind, leaked), and writes the old contents into it only when the
//! old block was written since startup: otherwise what the new version's startup made
//! stays.

use std::collections::{HashMap, HashSet};

/// A startup block's identity: the `ordinal`-th (from 0) startup allocation made by
/// thread `thread` from call stack `stack` (a call-stack ID: function names, the same in
/// both builds; replay gives the new version's threads their old TIDs). The order of
/// one thread's allocations follows its code; how several threads' interleave does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StartupKey {
    pub stack: u64,
    pub thread: i32,
    pub ordinal: u32,
}

impl std::fmt::Display for StartupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call stack {:016x} #{} of thread {}", self.stack, self.ordinal, self.thread)
    }
}

/// One entry of a process's startup allocation table (the runtime's, in allocation
/// order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupRecord {
    pub addr: u64,
    pub key: StartupKey,
    /// Innermost function names of the call stack, for reports.
    pub site: String,
}

/// Which block holds which startup identity in one process.
#[derive(Debug, Default)]
pub struct StartupTable {
    by_addr: HashMap<u64, StartupKey>,
    by_key: HashMap<StartupKey, u64>,
    sites: HashMap<u64, String>,
}

impl StartupTable {
    /// From the records in allocation order. A later record supersedes an earlier one at
    /// the same address (the block was freed during startup and the address reused) and
    /// one with the same identity (an update gave it to a block of its own): a block holds
    /// an identity only when its record is the last one both for its address and for its
    /// identity. Whether the block is still live is for the caller to check (its header).
    pub fn new(records: &[StartupRecord]) -> Self {
        let mut last_at: HashMap<u64, usize> = HashMap::new();
        let mut last_of: HashMap<StartupKey, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            last_at.insert(r.addr, i);
            last_of.insert(r.key, i);
        }
        let mut t = StartupTable::default();
        for (key, i) in last_of {
            let r = &records[i];
            if last_at.get(&r.addr) == Some(&i) {
                t.by_addr.insert(r.addr, key);
                t.by_key.insert(key, r.addr);
                t.sites.insert(key.stack, r.site.clone());
            }
        }
        t
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The identity of the block at `addr`.
    pub fn key_of(&self, addr: u64) -> Option<StartupKey> {
        self.by_addr.get(&addr).copied()
    }

    /// The block holding identity `key`.
    pub fn block_of(&self, key: StartupKey) -> Option<u64> {
        self.by_key.get(&key).copied()
    }

    /// The function names of call stack `stack`, when known.
    pub fn site(&self, stack: u64) -> Option<&str> {
        self.sites.get(&stack).map(String::as_str).filter(|s| !s.is_empty())
    }
}

/// Both versions' tables, for one process pair.
#[derive(Debug, Default)]
pub struct StartupTables {
    pub old: StartupTable,
    pub new: StartupTable,
    /// Old heap blocks the new version's startup allocated at their own addresses (a
    /// library's allocation, made in the same place of its thread's startup as the old
    /// one): the new version's code holds them there, so they stay where they are, as
    /// they are (`StartupLog::allocated_at_startup`).
    pub held: Vec<u64>,
}

/// A reached old heap block, as the matching sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub addr: u64,
    /// Allocated during the old process's startup (its header says so).
    pub startup: bool,
    /// Bytes the transformed object needs in the new version.
    pub needed: u64,
}

/// Where a reached old block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A fresh block allocated in the new version. `identity`: the old startup block's,
    /// which the fresh block takes over (so the next update can match it).
    Fresh { identity: Option<StartupKey> },
    /// The new version's own startup block with the same identity.
    Matched { new: u64, key: StartupKey },
    /// The old block itself: the new process adopted the old heap, so the block is already
    /// there at its address, with its bytes; it is rewritten only where its contents
    /// change (pointers relocated, a layout that does not grow).
    InPlace,
}

/// Why an old startup block was reallocated instead of matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// No allocation record: its call stack stops inside a library, short of the
    /// program's code (too little to tell objects apart: the runtime records none), or it
    /// was allocated before the runtime started.
    NoRecord,
    /// The new version's startup made no allocation from that call stack with that
    /// ordinal (or the block it made is gone).
    NoCounterpart(StartupKey),
    /// The counterpart is smaller than the transformed object needs.
    TooSmall { key: StartupKey, have: u64, need: u64 },
}

/// What the new process says about one of its blocks: its size, when it is a live block
/// allocated during startup.
pub type NewBlock<'a> = dyn FnMut(u64) -> Option<u64> + 'a;

/// Decide, for each reached old block, whether it goes into its counterpart (same
/// call-stack ID and ordinal, live, allocated during the new version's startup, large
/// enough) or into a fresh block. Each counterpart is used at most once. Returns the
/// placements (in `cands` order) and, for each old startup block not matched, why.
pub fn place(
    cands: &[Candidate],
    tables: Option<&StartupTables>,
    new_block: &mut NewBlock,
) -> (Vec<Placement>, Vec<(u64, Unmatched)>) {
    let mut out = Vec::with_capacity(cands.len());
    let mut why = Vec::new();
    let mut used: HashSet<u64> = HashSet::new();
    for c in cands {
        if !c.startup {
            out.push(Placement::Fresh { identity: None });
            continue;
        }
        let Some(t) = tables else {
            out.push(Placement::Fresh { identity: None });
            continue;
        };
        let Some(key) = t.old.key_of(c.addr) else {
            out.push(Placement::Fresh { identity: None });
            why.push((c.addr, Unmatched::NoRecord));
            continue;
        };
        let fresh = Placement::Fresh { identity: Some(key) };
        let Some(new) = t.new.block_of(key) else {
            out.push(fresh);
            why.push((c.addr, Unmatched::NoCounterpart(key)));
            continue;
        };
        if used.contains(&new) {
            // Cannot happen with one table per process (an identity has one block); never
            // hand a block, or its identity, to two old blocks anyway.
            out.push(Placement::Fresh { identity: None });
            why.push((c.addr, Unmatched::NoCounterpart(key)));
            continue;
        }
        match new_block(new) {
            None => {
                out.push(fresh);
                why.push((c.addr, Unmatched::NoCounterpart(key)));
            }
            Some(have) if have < c.needed => {
                out.push(fresh);
                why.push((c.addr, Unmatched::TooSmall { key, have, need: c.needed }));
            }
            Some(_) => {
                used.insert(new);
                out.push(Placement::Matched { new, key });
            }
        }
    }
    (out, why)
}

/// Whether a matched block the old version never wrote since startup can keep what the
/// new version's startup put in it: every heap pointer in the old block, relocated, must
/// equal what the new block holds at that place (`sites`: offset in the new block and
/// relocated value; `current`: the new block's bytes). Otherwise the new block points
/// elsewhere than the transferred state does (at a block the old version's pointer does
/// not lead to), and the old contents must be written to keep the state reachable.
pub fn keeps_new_contents(sites: &[(usize, u64)], current: &[u8]) -> bool {
    sites.iter().all(|&(off, v)| {
        current.get(off..off + 8).is_some_and(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stack: u64, ordinal: u32) -> StartupKey {
        StartupKey { stack, thread: 1, ordinal }
    }

    fn rec(addr: u64, stack: u64, ordinal: u32) -> StartupRecord {
        StartupRecord { addr, key: key(stack, ordinal), site: format!("f{stack:x}") }
    }

    #[test]
    fn later_records_supersede_earlier_ones_by_address_and_by_identity() {
        let t = StartupTable::new(&[
            rec(0x100, 1, 0),
            rec(0x200, 1, 1),
            // 0x100 freed during startup, the address reused by another call stack.
            rec(0x100, 2, 0),
            // An update gave identity (1, 1) to a block of its own.
            rec(0x900, 1, 1),
        ]);
        assert_eq!(t.key_of(0x100), Some(key(2, 0)));
        assert_eq!(t.block_of(key(1, 0)), None, "its block now holds another identity");
        assert_eq!(t.block_of(key(1, 1)), Some(0x900));
        assert_eq!(t.key_of(0x200), None, "superseded by the update's block");
        assert_eq!(t.key_of(0x900), Some(key(1, 1)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.site(2), Some("f2"));
    }

    fn tables() -> StartupTables {
        StartupTables {
            old: StartupTable::new(&[rec(0x1000, 7, 0), rec(0x2000, 7, 1), rec(0x3000, 8, 0), rec(0x4000, 9, 0)]),
            // The new version allocates from call stack 7 twice and 8 once, not from 9.
            new: StartupTable::new(&[rec(0xa000, 8, 0), rec(0xb000, 7, 0), rec(0xc000, 7, 1)]),
            held: Vec::new(),
        }
    }

    #[test]
    fn startup_blocks_go_to_their_counterpart_by_call_stack_and_ordinal() {
        let t = tables();
        let sizes: HashMap<u64, u64> = [(0xa000, 64), (0xb000, 32), (0xc000, 16)].into();
        let cands = [
            Candidate { addr: 0x2000, startup: true, needed: 16 },
            Candidate { addr: 0x1000, startup: true, needed: 32 },
            Candidate { addr: 0x3000, startup: true, needed: 80 },
            Candidate { addr: 0x4000, startup: true, needed: 8 },
            Candidate { addr: 0x5000, startup: false, needed: 8 },
            Candidate { addr: 0x6000, startup: true, needed: 8 },
        ];
        let (p, why) = place(&cands, Some(&t), &mut |a| sizes.get(&a).copied());
        assert_eq!(
            p,
            vec![
                Placement::Matched { new: 0xc000, key: key(7, 1) },
                Placement::Matched { new: 0xb000, key: key(7, 0) },
                Placement::Fresh { identity: Some(key(8, 0)) },
                Placement::Fresh { identity: Some(key(9, 0)) },
                Placement::Fresh { identity: None },
                Placement::Fresh { identity: None },
            ]
        );
        assert_eq!(
            why,
            vec![
                (0x3000, Unmatched::TooSmall { key: key(8, 0), have: 64, need: 80 }),
                (0x4000, Unmatched::NoCounterpart(key(9, 0))),
                (0x6000, Unmatched::NoRecord),
            ]
        );
    }

    #[test]
    fn a_counterpart_that_is_gone_or_no_startup_block_is_not_used() {
        let t = tables();
        let cands = [Candidate { addr: 0x1000, startup: true, needed: 8 }];
        let (p, why) = place(&cands, Some(&t), &mut |_| None);
        assert_eq!(p, vec![Placement::Fresh { identity: Some(key(7, 0)) }]);
        assert_eq!(why, vec![(0x1000, Unmatched::NoCounterpart(key(7, 0)))]);
    }

    #[test]
    fn without_tables_everything_is_reallocated_as_before() {
        let cands = [Candidate { addr: 0x1000, startup: true, needed: 8 }];
        let (p, why) = place(&cands, None, &mut |_| Some(1 << 20));
        assert_eq!(p, vec![Placement::Fresh { identity: None }]);
        assert!(why.is_empty());
    }

    #[test]
    fn a_counterpart_is_used_once() {
        // Two old blocks claiming the same identity cannot happen with one table, but the
        // new side is shared: never hand one new block to two old ones.
        let t = StartupTables {
            old: StartupTable::new(&[rec(0x1000, 7, 0)]),
            new: StartupTable::new(&[rec(0xb000, 7, 0)]),
            held: Vec::new(),
        };
        let cands = [
            Candidate { addr: 0x1000, startup: true, needed: 8 },
            Candidate { addr: 0x1000, startup: true, needed: 8 },
        ];
        let (p, _) = place(&cands, Some(&t), &mut |_| Some(8));
        assert_eq!(p[0], Placement::Matched { new: 0xb000, key: key(7, 0) });
        assert_eq!(p[1], Placement::Fresh { identity: None });
    }

    #[test]
    fn clean_blocks_keep_new_contents_only_when_their_heap_pointers_agree() {
        let mut cur = vec![0u8; 24];
        cur[8..16].copy_from_slice(&0xb000u64.to_ne_bytes());
        assert!(keeps_new_contents(&[], &cur), "no heap pointers: nothing to disagree on");
        assert!(keeps_new_contents(&[(8, 0xb000)], &cur));
        assert!(!keeps_new_contents(&[(8, 0xc000)], &cur), "the transferred state points elsewhere");
        assert!(!keeps_new_contents(&[(20, 0)], &cur), "a pointer past the new block's end");
    }
}
