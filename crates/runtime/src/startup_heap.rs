//! Startup allocations (DESIGN.md "Allocation metadata", "Mutable tracing"): for each
//! block the program allocates before its process completes startup, the call stack that
//! allocated it. An update matches the old version's startup objects with the blocks the
//! new version's startup allocated from the same call stack in the same thread
//! (call-stack ID, TID and ordinal) and reuses those instead of copying the old ones into
//! fresh blocks.
//!
//! Only startup pays: the malloc family calls [`record`] while startup is not complete
//! (the check it makes to set the block's startup bit), which walks the stack and appends to a table;
//! once startup is complete nothing is recorded and the table is never touched by the
//! program's threads again. Each distinct raw stack is kept once (startup allocates
//! from few call sites, often in loops); call-stack IDs (symbolized, version-agnostic)
//! and ordinals are computed when an update asks ([`snapshot`]).
//!
//! The allocator's per-block metadata keeps the startup bit: the side table only holds
//! startup blocks.

use crate::sync::SpinLock;
use crate::threads::MAX_STACK;
use crate::{stack, symbolize, threads};
use mcr_procfs::{Mapping, Process};
use mcr_protocol::{StartupAlloc, StartupBlock};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The main executable's code, [EXE_LO, EXE_HI) (empty: unknown, nothing is recorded).
static EXE_LO: AtomicUsize = AtomicUsize::new(0);
static EXE_HI: AtomicUsize = AtomicUsize::new(0);

/// The C library's and the dynamic linker's code, [lo, hi) pairs (unused: 0, 0).
static LIBC_CODE: [(AtomicUsize, AtomicUsize); 4] = [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 4];

/// Find the main executable's code in the process's mappings `maps` (constructor, before
/// the program runs), and glibc's.
pub fn init(maps: &[Mapping]) {
    let exe = mcr_procfs::exe(Process::Current).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some((lo, hi)) = code_of(maps, &exe) {
        EXE_LO.store(lo, Relaxed);
        EXE_HI.store(hi, Relaxed);
    }
    let mut glibc: Vec<&str> =
        maps.iter().filter(|m| m.executable && is_glibc(&m.path)).map(|m| m.path.as_str()).collect();
    glibc.dedup();
    for (slot, path) in LIBC_CODE.iter().zip(glibc) {
        if let Some((lo, hi)) = code_of(maps, path) {
            slot.0.store(lo, Relaxed);
            slot.1.store(hi, Relaxed);
        }
    }
    // Room for a large server's startup (nginx: ~3 000 blocks) from the start: grown by
    // doubling, the lists were copied into fresh mappings again and again on an update's
    // restart clock. Only the pages written become resident.
    let _internal = threads::InternalGuard::enter();
    let mut t = TABLE.lock();
    t.blocks.reserve(EXPECTED_BLOCKS);
    t.recorded.reserve(EXPECTED_BLOCKS);
}

/// Startup blocks the lists are made for at first.
const EXPECTED_BLOCKS: usize = 8192;

/// Whether `path` is a file of glibc's: the C library and the dynamic linker (and the
/// libraries older glibc split off).
fn is_glibc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    ["libc.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so"].iter().any(|p| name.starts_with(p))
}

/// Whether `site` is in glibc's code. Its blocks are the process's own machinery (a
/// thread's vector of thread-local blocks, stdio's buffers), described by glibc's own
/// variables, which the update never moves: such a block must stay the new process's.
fn in_glibc(site: u64) -> bool {
    let site = site as usize;
    LIBC_CODE.iter().any(|(lo, hi)| lo.load(Relaxed) <= site && site < hi.load(Relaxed))
}

/// The span of the executable mappings of `path`.
fn code_of(maps: &[Mapping], path: &str) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    maps.iter()
        .filter(|m| m.executable && m.path == path)
        .filter_map(|m| Some((usize::try_from(m.start).ok()?, usize::try_from(m.end).ok()?)))
        .reduce(|(lo, hi), (s, e)| (lo.min(s), hi.max(e)))
}

/// Whether a call stack reaches the program's own code. One that does not stopped inside
/// a library built without frame pointers (glibc's strdup, OpenSSL's initialization): it
/// names only the library function, so its ordinals would pair unrelated objects. Such
/// allocations are not recorded (nginx's startup makes ~3 000 allocations, ~2 950 of them
/// inside OpenSSL).
fn reaches(frames: &[usize], (lo, hi): (usize, usize)) -> bool {
    frames.iter().any(|&a| a >= lo && a < hi)
}

/// A block the program allocated during startup, by thread `tid`, from the raw stack
/// numbered `stack` (16 bytes: nginx's startup makes some 3 000).
#[derive(Clone, Copy)]
struct Recorded {
    addr: u64,
    stack: u32,
    tid: i32,
}

struct Table {
    /// Raw return addresses (innermost first) → their number.
    stacks: BTreeMap<Box<[usize]>, u32>,
    /// In allocation order.
    recorded: Vec<Recorded>,
    /// Blocks an update allocated for old startup objects, with the identity they carry
    /// (after every recorded one: updates come after startup).
    adopted: Vec<StartupAlloc>,
    /// Every startup allocation, recorded or not, in order (`StartupLog::allocated_at_startup`).
    blocks: Vec<StartupBlock>,
    /// Per (process, thread): how many startup allocations it made, and whether they
    /// still follow the old version's in an update's new version.
    threads: BTreeMap<(i32, i32), ThreadCount>,
}

#[derive(Clone, Copy, Default)]
struct ThreadCount {
    made: u32,
    /// An allocation differed from the old version's of the same count: no later one of
    /// this thread's is placed (which of them corresponds to which is no longer known).
    diverged: bool,
}

static TABLE: SpinLock<Table> = SpinLock::new(Table {
    stacks: BTreeMap::new(),
    recorded: Vec::new(),
    adopted: Vec::new(),
    blocks: Vec::new(),
    threads: BTreeMap::new(),
});

/// Note `addr`, a block of `size` bytes (aligned to `align`) just allocated during startup
/// by the allocation function whose frame is `fp`. Runtime-internal allocations (and one
/// made by a signal handler that interrupted this very function) are not the program's
/// startup objects. An inert runtime (no supervisor) never completes startup: one load,
/// and nothing recorded.
///
/// In an update's new version: the address the block is to have instead, its old
/// counterpart's (`placed_blocks`); the caller moves it there.
#[inline(always)]
pub fn record(addr: u64, size: u64, align: u64, fp: usize) -> Option<u64> {
    if crate::is_active() {
        record_slow(addr, size, align, fp)
    } else {
        None
    }
}

#[cold]
#[inline(never)]
fn record_slow(addr: u64, size: u64, align: u64, fp: usize) -> Option<u64> {
    if threads::is_internal() {
        return None;
    }
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let mut frames = [0usize; MAX_STACK];
    let n = stack::walk_own(fp, &mut frames);
    let exe = (EXE_LO.load(Relaxed), EXE_HI.load(Relaxed));
    let reaches_program = reaches(&frames[..n], exe);
    // Where the allocation function returns to, when that is a library: the same address
    // in both versions.
    let site = frames[..n].first().filter(|&&a| !(exe.0 <= a && a < exe.1)).map_or(0, |&a| a as u64);
    let (pid, tid) = (crate::pid(), threads::local().tid());
    let mut t = TABLE.lock();
    let count = t.threads.entry((pid, tid)).or_default();
    let seq = count.made;
    count.made += 1;
    let placeable = !reaches_program && site != 0 && !in_glibc(site);
    let mut block = StartupBlock { pid, tid, seq, addr, size, site, reaches_program, placeable, live: true };
    if crate::replay::active() && !count.diverged {
        match counterpart_place(&block, align) {
            Ok(place) => {
                if let Some(at) = place {
                    block.addr = at;
                }
            }
            Err(Diverged) => count.diverged = true,
        }
    }
    t.blocks.push(block);
    if reaches_program {
        let next = t.stacks.len() as u32;
        let stack = match t.stacks.get(&frames[..n]) {
            Some(&i) => i,
            None => {
                t.stacks.insert(frames[..n].into(), next);
                next
            }
        };
        t.recorded.push(Recorded { addr: block.addr, stack, tid });
    }
    (block.addr != addr).then_some(block.addr)
}

/// This thread's startup allocations no longer follow the old version's.
struct Diverged;

/// In an update's new version: where `block` goes, the address of its old counterpart
/// (the old thread's allocation of the same count) when it is the same allocation (same
/// size, same library call site, or both the program's) made inside a library other than
/// glibc, and the old one is still live. A program's allocation is matched by its call stack instead
/// (`StartupAlloc`): its type may change, its block with it.
///
/// The sequences must go together: the same call site (or both the program's) at every
/// count. Sizes must agree only where a block is placed: a program's allocation or
/// glibc's (never placed) may differ in size while both versions allocate in the same
/// order: sshd copies its arguments at startup, and an update to a build at a path one
/// character longer (`…deb12u7/sbin/sshd` to `…deb12u10/sbin/sshd`) placed none of its
/// library blocks.
fn counterpart_place(block: &StartupBlock, align: u64) -> Result<Option<u64>, Diverged> {
    let Some(old) = crate::replay::startup_block(block.pid, block.tid, block.seq) else { return Err(Diverged) };
    let sized = block.placeable || old.placeable;
    if (sized && old.size != block.size) || old.site != block.site || old.reaches_program != block.reaches_program {
        return Err(Diverged);
    }
    if !block.placeable || !old.live || !old.addr.is_multiple_of(align.max(1)) {
        return Ok(None);
    }
    Ok(crate::placed_blocks::place(old.addr, old.size))
}

/// Every startup allocation this process made (not its parent's, before a fork: the
/// parent's log has those), for its startup log, each marked live when the allocator still
/// has it (as the last startup block at its address).
pub fn blocks() -> Vec<StartupBlock> {
    let _internal = threads::InternalGuard::enter();
    let mut out = TABLE.lock().blocks.clone();
    // The last startup block at each address, parents' included (a block the parent freed
    // may have been allocated again at the same address): sorted, not hashed, since this
    // runs on every update's restart clock, for thousands of blocks.
    let mut by_addr: Vec<(u64, usize)> = out.iter().enumerate().map(|(i, b)| (b.addr, i)).collect();
    by_addr.sort_unstable();
    let mut last = vec![false; out.len()];
    for (k, &(addr, i)) in by_addr.iter().enumerate() {
        last[i] = by_addr.get(k + 1).is_none_or(|&(next, _)| next != addr);
    }
    let pid = crate::pid();
    for (i, b) in out.iter_mut().enumerate() {
        b.live = b.pid == pid
            && last[i]
            && crate::heap::HEAP
                .info_of(b.addr as usize)
                .is_some_and(|info| info.start as u64 == b.addr && info.startup)
            && crate::heap::HEAP.block_of(b.addr as usize).is_some_and(|(start, _)| start as u64 == b.addr);
    }
    out.retain(|b| b.pid == pid);
    out
}

/// Every startup allocation of this process whose call stack reaches the program's code,
/// in order, with its call-stack ID, thread and ordinal. Entries whose block was freed
/// since are included: the update knows which blocks are live (and still startup
/// blocks) from the allocator's metadata.
pub fn snapshot() -> Vec<StartupAlloc> {
    let _internal = threads::InternalGuard::enter();
    // Copy out under the lock, symbolize without it.
    let (raw, recorded, adopted) = {
        let t = TABLE.lock();
        let raw: Vec<(u32, Vec<usize>)> = t.stacks.iter().map(|(k, &v)| (v, k.to_vec())).collect();
        (raw, t.recorded.clone(), t.adopted.clone())
    };
    let mut stacks: Vec<Stack> = vec![Stack::default(); raw.len()];
    for (i, frames) in raw {
        let cs = symbolize::call_stack(None, &frames);
        stacks[i as usize] = Stack { site: cs.summary(4), id: cs.id };
    }
    let mut out = number(&recorded, &stacks);
    out.extend(adopted);
    out
}

/// A raw stack, symbolized.
#[derive(Clone, Default)]
struct Stack {
    id: String,
    site: String,
}

/// Give each recorded block its ordinal among those with the same call-stack ID made by
/// the same thread (`stacks[n]`: raw stack `n`): the order of one thread's allocations is
/// its code's, the interleaving of several threads' is not.
fn number(recorded: &[Recorded], stacks: &[Stack]) -> Vec<StartupAlloc> {
    let mut next: HashMap<(&str, i32), u32> = HashMap::new();
    recorded
        .iter()
        .map(|r| {
            let s = &stacks[r.stack as usize];
            let n = next.entry((s.id.as_str(), r.tid)).or_insert(0);
            let ordinal = *n;
            *n += 1;
            StartupAlloc { addr: r.addr, stack: s.id.clone(), thread: r.tid, ordinal, site: s.site.clone() }
        })
        .collect()
}

/// The update allocated `blocks` (with Allocate) for old startup objects that had no
/// counterpart in this version: they become startup blocks with the old identity.
pub fn adopt(blocks: &[StartupAlloc]) -> mcr_protocol::RuntimeReply {
    for b in blocks {
        if !crate::heap::mark_startup(b.addr) {
            return mcr_protocol::RuntimeReply::Error { message: format!("{:#x} is not a live heap block", b.addr) };
        }
    }
    TABLE.lock().adopted.extend(blocks.iter().cloned());
    mcr_protocol::RuntimeReply::Done
}

pub fn reset_after_fork() {
    TABLE.force_unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[StartupAlloc]) -> Vec<(u64, &str, i32, u32)> {
        v.iter().map(|a| (a.addr, a.stack.as_str(), a.thread, a.ordinal)).collect()
    }

    #[test]
    fn ordinals_count_per_call_stack_id_and_thread_not_per_raw_stack() {
        // Raw stacks 0 and 2 are two call sites in the same functions: one ID.
        let st = |id: &str, site: &str| Stack { id: id.into(), site: site.into() };
        let stacks = vec![st("aa", "f < main"), st("bb", "g < main"), st("aa", "f < main")];
        let rec = |addr, stack| Recorded { addr, stack, tid: 1 };
        let recorded = vec![
            rec(0x10, 0),
            rec(0x20, 1),
            rec(0x30, 2),
            // Another thread running the same code counts on its own.
            Recorded { addr: 0x48, stack: 0, tid: 2 },
            rec(0x50, 0),
        ];
        let out = number(&recorded, &stacks);
        assert_eq!(
            ids(&out),
            vec![(0x10, "aa", 1, 0), (0x20, "bb", 1, 0), (0x30, "aa", 1, 1), (0x48, "aa", 2, 0), (0x50, "aa", 1, 2)]
        );
        assert_eq!(out[1].site, "g < main");
    }

    #[test]
    fn glibcs_files_are_told_from_other_libraries() {
        for p in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2", "/lib/libpthread.so.0"] {
            assert!(is_glibc(p), "{p}");
        }
        for p in ["/usr/lib/x86_64-linux-gnu/libevent-2.1.so.7.0.1", "/usr/lib/libcrypto.so.3", "/srv/libc.so.d/x", ""]
        {
            assert!(!is_glibc(p), "{p}");
        }
    }

    #[test]
    fn only_call_stacks_that_reach_the_program_count() {
        let maps = mcr_procfs::maps::parse(
            "555555554000-555555556000 r--p 00000000 fe:01 42 /srv/kvd\n\
                    555555556000-55555555a000 r-xp 00002000 fe:01 42 /srv/kvd\n\
                    55555555a000-55555555c000 r--p 00006000 fe:01 42 /srv/kvd\n\
                    7ffff7dc2000-7ffff7f17000 r-xp 00026000 fe:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        );
        let code = code_of(&maps, "/srv/kvd").expect("kvd's code");
        assert_eq!(code, (0x555555556000, 0x55555555a000));
        assert_eq!(code_of(&maps, "/srv/other"), None);
        assert_eq!(code_of(&maps, ""), None);
        assert!(reaches(&[0x7ffff7e00000, 0x555555557123], code), "strdup called from the program, chain intact");
        assert!(!reaches(&[0x7ffff7e00000], code), "chain cut short inside libc");
        assert!(!reaches(&[0x555555554100], code), "the program's data is not its code");
        assert!(!reaches(&[0x555555557000], (0, 0)), "unknown code: nothing counts");
    }
}
