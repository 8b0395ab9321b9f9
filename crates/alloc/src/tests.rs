//! Unit tests of the engine on real regions (each test maps its own heap in a free slot).

#![allow(unsafe_code)]

use crate::class::{class_of, size_of_class, CLASSES, MAX_SMALL};
use crate::extent::Extent;
use crate::geometry::{slot_base, slot_of, SlotSet, SLOT_SIZE, SPAN_SIZE};
use crate::heap::{Config, Heap, Mode, Role, SegmentBacking};
use crate::layout::{ThreadCache, FIRST_DATA_SPAN};
use crate::os;
use crate::spans::test_bit;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;
use rustix::fd::AsFd;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::vec::Vec;

pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every heap takes its region's slot at its init. A test that drops a heap and maps its
/// slot again (an old version's exit, its successor's adoption) holds this from the drop
/// to the new heap's init, and every other init takes it: once, another test's heap took
/// the freed slot in between ("WrongRole { slot: 0, role: Occupied, … }").
static SLOT_HANDOVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn handover() -> std::sync::MutexGuard<'static, ()> {
    SLOT_HANDOVER.lock().unwrap_or_else(|e| e.into_inner())
}

fn heap(mode: Mode) -> Box<Heap> {
    let h = Box::new(Heap::new());
    let _slots = handover();
    h.init(&Config { avoid: SlotSet::new(), mode }).unwrap();
    h
}

fn cache(h: &Heap) -> &ThreadCache {
    // SAFETY: each test uses a cache from one thread.
    unsafe { h.thread_cache() }.unwrap()
}

fn addr(p: Option<NonNull<u8>>) -> usize {
    p.unwrap().as_ptr() as usize
}

fn free(h: &Heap, c: Option<&ThreadCache>, a: usize) {
    // SAFETY: tests free their own live blocks once.
    unsafe { h.free(c, a as *mut u8) }
}

fn fill(a: usize, len: usize, seed: u8) {
    // SAFETY: a block of at least `len` bytes the test owns.
    unsafe { core::ptr::write_bytes(a as *mut u8, seed, len) }
}

fn check(a: usize, len: usize, seed: u8) {
    // SAFETY: a block of at least `len` bytes the test owns.
    let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, len) };
    assert!(bytes.iter().all(|&b| b == seed), "block {a:#x} ({len} bytes) lost its contents");
}

#[test]
fn init_reserves_avoided_slots_and_maps_the_own_region() {
    let mut avoid = SlotSet::new();
    for s in [0, 1, 2, 200] {
        avoid.insert(s);
    }
    let h = Box::new(Heap::new());
    let slots = handover();
    h.init(&Config { avoid, mode: Mode::Anonymous }).unwrap();
    h.init(&Config { avoid, mode: Mode::Anonymous }).unwrap(); // idempotent
    drop(slots);
    let own = h.own_slot().unwrap();
    assert!(!avoid.contains(own));
    assert_eq!(h.role(own), Role::Own);
    for s in avoid.iter() {
        // another test's heap may sit there already
        assert!(matches!(h.role(s), Role::Reserved | Role::Occupied), "slot {s}: {:?}", h.role(s));
    }
    let mut regions = Vec::new();
    h.regions(|r| regions.push(r));
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].slot, own);
    assert_eq!(regions[0].used_end, slot_base(own) + FIRST_DATA_SPAN * SPAN_SIZE);
    assert!(h.slots_in_use().contains(own));
    assert_eq!(h.slots_in_use().len(), 1);
}

#[test]
fn modes_parse() {
    assert_eq!(Mode::parse(b"memfd"), Some(Mode::Memfd));
    assert_eq!(Mode::parse(b"anonymous"), Some(Mode::Anonymous));
    assert_eq!(Mode::parse(b"auto"), Some(Mode::Auto));
    assert_eq!(Mode::parse(b"Memfd"), None);
}

#[test]
fn nothing_before_init() {
    let h = Heap::new();
    assert!(h.malloc(None, 10).is_none());
    assert!(h.malloc(None, 1 << 20).is_none());
    // SAFETY: no cache can exist before init.
    assert!(unsafe { h.thread_cache() }.is_none());
    assert_eq!(h.block_of(slot_base(0) + (1 << 30)), None);
    h.fork_prepare();
    h.fork_parent();
}

#[test]
fn every_class_resolves_interior_pointers_and_forgets_freed_blocks() {
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    for class in 0..CLASSES {
        let size = size_of_class(class);
        let blocks: Vec<usize> = (0..5).map(|_| addr(h.malloc(Some(c), size))).collect();
        for &b in &blocks {
            assert_eq!(b % 16, 0);
            for off in [0, 1, size / 2, size - 1] {
                assert_eq!(h.block_of(b + off), Some((b, size)), "class {class} offset {off}");
            }
            assert_eq!(h.usable_size(b as *const u8), size);
            assert_eq!(h.usable_size((b + 3) as *const u8), size - 3);
        }
        for &b in &blocks {
            free(&h, Some(c), b);
        }
        h.flush_thread_cache(c);
        for &b in &blocks {
            assert_eq!(h.block_of(b), None, "class {class}: freed block still live");
            assert_eq!(h.block_of(b + size - 1), None);
        }
    }
    for size in [MAX_SMALL + 1, SPAN_SIZE, SPAN_SIZE + 1, 5 * SPAN_SIZE - 7, 3 << 20] {
        let b = addr(h.malloc(Some(c), size));
        assert_eq!(b % SPAN_SIZE, 0);
        let spans = size.div_ceil(SPAN_SIZE);
        for off in [0, 1, SPAN_SIZE, size - 1, spans * SPAN_SIZE - 1].into_iter().filter(|&o| o < spans * SPAN_SIZE) {
            assert_eq!(h.block_of(b + off), Some((b, spans * SPAN_SIZE)), "large {size} offset {off}");
        }
        free(&h, Some(c), b);
        assert_eq!(h.block_of(b), None);
        assert_eq!(h.block_of(b + size - 1), None);
    }
    assert_eq!(h.block_of(0), None);
    assert_eq!(h.block_of(slot_base(h.own_slot().unwrap())), None, "metadata is no block");
    let stack = 0u64;
    assert_eq!(h.block_of(&stack as *const u64 as usize), None);
}

#[test]
fn blocks_never_overlap_and_keep_their_contents() {
    let h = heap(Mode::Memfd);
    let c = cache(&h);
    let mut rng = Rng(0x1234_5678);
    let mut live: BTreeMap<usize, (usize, u8)> = BTreeMap::new();
    for round in 0..20_000 {
        if live.len() > 2000 || (rng.below(3) == 0 && !live.is_empty()) {
            let k = *live.keys().nth(rng.below(live.len() as u64) as usize).unwrap();
            let (len, seed) = live.remove(&k).unwrap();
            check(k, len, seed);
            free(&h, Some(c), k);
        } else {
            let len = match rng.below(10) {
                0 => 1 + rng.below(200_000) as usize,
                _ => 1 + rng.below(2048) as usize,
            };
            let p = if round % 7 == 0 { addr(h.calloc(Some(c), 1, len)) } else { addr(h.malloc(Some(c), len)) };
            if round % 7 == 0 {
                check(p, len, 0);
            }
            let seed = (round % 251) as u8 + 1;
            fill(p, len, seed);
            if let Some((&prev, &(plen, _))) = live.range(..p).next_back() {
                assert!(prev + plen <= p, "overlap");
            }
            if let Some((&next, _)) = live.range(p..).next() {
                assert!(p + len <= next, "overlap");
            }
            live.insert(p, (len, seed));
        }
    }
    for (k, (len, seed)) in live {
        check(k, len, seed);
        free(&h, Some(c), k);
    }
}

#[test]
fn the_shared_path_serves_threads_without_a_cache() {
    let h = heap(Mode::Anonymous);
    let blocks: Vec<usize> = (0..1000).map(|i| addr(h.malloc(None, 1 + i % 300))).collect();
    let mut sorted = blocks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), blocks.len());
    for &b in &blocks {
        assert!(h.block_of(b).is_some());
        free(&h, None, b);
    }
    let p = addr(h.calloc(None, 10, 10));
    check(p, 100, 0);
    free(&h, None, p);
}

#[test]
fn foreign_and_invalid_pointers_are_ignored() {
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    let stack = [0u8; 64];
    free(&h, Some(c), 0);
    free(&h, Some(c), stack.as_ptr() as usize);
    free(&h, Some(c), slot_base(h.own_slot().unwrap()) + 64); // metadata
    let other = (h.own_slot().unwrap() + 17) % crate::SLOTS;
    free(&h, Some(c), slot_base(other) + (1 << 30)); // a slot this heap does not use
    let b = addr(h.malloc(Some(c), 64));
    free(&h, Some(c), b + 16); // interior pointer
    let big = addr(h.malloc(Some(c), 100_000));
    free(&h, Some(c), big + SPAN_SIZE); // tail of a large run
    h.flush_thread_cache(c);
    assert_eq!(h.block_of(b), Some((b, 64)));
    assert_eq!(h.block_of(big), Some((big, 2 * SPAN_SIZE)));
    // SAFETY: a foreign pointer: realloc must leave it alone.
    assert!(unsafe { h.realloc(Some(c), stack.as_ptr() as *mut u8, 10) }.is_none());
    // SAFETY: as above, an interior pointer.
    assert!(unsafe { h.realloc(Some(c), (b + 16) as *mut u8, 10) }.is_none());
    // a double free that reaches the bitmap is ignored: the block is not handed out twice
    free(&h, Some(c), b);
    h.flush_thread_cache(c);
    free(&h, Some(c), b);
    h.flush_thread_cache(c);
    let again: Vec<usize> = (0..2000).map(|_| addr(h.malloc(Some(c), 64))).collect();
    assert_eq!(again.iter().filter(|&&a| a == b).count(), 1);
}

#[test]
fn realloc_in_place_and_moving() {
    let h = heap(Mode::Memfd);
    let c = cache(&h);
    // SAFETY: every realloc below gets a live block of this test.
    unsafe {
        let p = addr(h.malloc(Some(c), 100));
        fill(p, 100, 7);
        assert_eq!(addr(h.realloc(Some(c), p as *mut u8, 112)), p, "grows within its class");
        assert_eq!(addr(h.realloc(Some(c), p as *mut u8, 60)), p, "shrinks by less than half");
        let q = addr(h.realloc(Some(c), p as *mut u8, 20));
        assert_ne!(q, p, "shrinking by more than half moves to a smaller class");
        check(q, 20, 7);
        let r = addr(h.realloc(Some(c), q as *mut u8, 5000));
        check(r, 20, 7);
        h.flush_thread_cache(c);
        assert_eq!(h.block_of(q), None, "the old block was freed");
        // large: grows into the free spans after it, shrinks in place
        let big = addr(h.malloc(Some(c), 3 * SPAN_SIZE));
        fill(big, 3 * SPAN_SIZE, 9);
        let after = addr(h.malloc(Some(c), 2 * SPAN_SIZE));
        assert_eq!(after, big + 3 * SPAN_SIZE);
        free(&h, Some(c), after);
        assert_eq!(addr(h.realloc(Some(c), big as *mut u8, 5 * SPAN_SIZE)), big, "grows in place");
        assert_eq!(h.block_of(big + 5 * SPAN_SIZE - 1), Some((big, 5 * SPAN_SIZE)));
        check(big, 3 * SPAN_SIZE, 9);
        assert_eq!(addr(h.realloc(Some(c), big as *mut u8, SPAN_SIZE + 1)), big, "shrinks in place");
        assert_eq!(h.block_of(big + 2 * SPAN_SIZE), None, "the tail went back to the pool");
        assert_eq!(h.block_of(big), Some((big, 2 * SPAN_SIZE)));
        let blocker = addr(h.malloc(Some(c), SPAN_SIZE + 1));
        assert_eq!(blocker, big + 2 * SPAN_SIZE, "the freed tail is reused first");
        let moved = addr(h.realloc(Some(c), big as *mut u8, 4 * SPAN_SIZE));
        assert_ne!(moved, big);
        check(moved, 2 * SPAN_SIZE, 9);
        let small = addr(h.realloc(Some(c), moved as *mut u8, 100));
        check(small, 100, 9);
        assert_eq!(h.block_of(moved), None);
        // realloc(NULL) allocates, realloc(p, 0) frees
        let n = addr(h.realloc(Some(c), core::ptr::null_mut(), 10));
        assert!(h.realloc(Some(c), n as *mut u8, 0).is_none());
        h.flush_thread_cache(c);
        assert_eq!(h.block_of(n), None);
        for p in [r, blocker, small] {
            free(&h, Some(c), p);
        }
    }
}

#[test]
fn memalign_honours_every_alignment() {
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    for shift in 0..=22 {
        let align = 1usize << shift;
        for size in [0, 1, 24, align / 2, align, align + 1, 3 * align, 20_000, 200_000] {
            let p = addr(h.memalign(Some(c), align, size));
            assert_eq!(p % align.max(16), 0, "align {align} size {size}");
            let (start, usable) = h.block_of(p).unwrap();
            assert_eq!(start, p, "an aligned block starts where it is returned");
            assert!(usable >= size);
            fill(p, size, 3);
            free(&h, Some(c), p);
        }
    }
    assert!(h.memalign(Some(c), 0, 10).is_none());
    assert!(h.memalign(Some(c), 24, 10).is_none());
    h.flush_thread_cache(c);
}

#[test]
fn visit_lists_exactly_the_live_blocks_in_address_order() {
    let h = heap(Mode::Memfd);
    let c = cache(&h);
    let mut rng = Rng(99);
    let mut live = BTreeMap::new();
    for i in 0..5000 {
        let size = if i % 50 == 0 { 1 + rng.below(300_000) as usize } else { 1 + rng.below(4000) as usize };
        let p = addr(h.malloc(Some(c), size));
        live.insert(p, h.block_of(p).unwrap().1);
    }
    let doomed: Vec<usize> = live.keys().copied().filter(|_| rng.below(3) == 0).collect();
    for p in doomed {
        live.remove(&p);
        free(&h, Some(c), p);
    }
    h.flush_thread_cache(c);
    let mut seen = Vec::new();
    let n = h.visit(h.own_slot().unwrap(), |start, size| seen.push((start, size)));
    assert_eq!(n, seen.len());
    assert!(seen.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "address order, no overlap");
    assert_eq!(seen, live.into_iter().collect::<Vec<_>>());
    assert_eq!(h.visit(h.own_slot().unwrap() + 1, |_, _| {}), 0, "nothing in a slot that is not ours");
}

#[test]
fn large_runs_are_reused_and_calloc_clears_only_what_is_not_zero() {
    let h = heap(Mode::Memfd);
    let c = cache(&h);
    let slot = h.own_slot().unwrap();
    let region = h.readable(slot).unwrap();
    let a = addr(h.calloc(Some(c), 1, 3 * SPAN_SIZE));
    check(a, 3 * SPAN_SIZE, 0);
    fill(a, 3 * SPAN_SIZE, 0xaa);
    free(&h, Some(c), a);
    assert_eq!(region.header().free_spans.load(Relaxed), 3);
    assert_eq!(region.header().committed_free_spans.load(Relaxed), 3, "kept committed for reuse");
    let b = addr(h.calloc(Some(c), 3, SPAN_SIZE));
    assert_eq!(b, a, "first fit reuses the run");
    check(b, 3 * SPAN_SIZE, 0);
    free(&h, Some(c), b);
    // a long run is given back at once: it reads as zero with no clearing
    let big = addr(h.malloc(Some(c), 32 * SPAN_SIZE));
    fill(big, 32 * SPAN_SIZE, 0x55);
    free(&h, Some(c), big);
    let e = region.span(crate::geometry::span_index(big)).unwrap();
    assert_eq!(e.flags.load(Relaxed) & crate::layout::FLAG_ZERO, crate::layout::FLAG_ZERO);
    let again = addr(h.calloc(Some(c), 32, SPAN_SIZE));
    check(again, 32 * SPAN_SIZE, 0);
    // aligned runs leave their gap in the pool
    let before = region.header().free_spans.load(Relaxed);
    let aligned = addr(h.memalign(Some(c), 1 << 22, 100_000));
    assert_eq!(aligned % (1 << 22), 0);
    assert!(region.header().free_spans.load(Relaxed) >= before);
    free(&h, Some(c), aligned);
    free(&h, Some(c), again);
}

#[test]
fn emptied_spans_go_back_to_the_pool_and_partial_spans_are_shared() {
    let h = heap(Mode::Anonymous);
    let region = h.readable(h.own_slot().unwrap()).unwrap();
    let (a, b) = (cache(&h), cache(&h));
    let class = class_of(1000);
    let per_span = SPAN_SIZE / size_of_class(class);
    // thread a fills three spans
    let blocks: Vec<usize> = (0..3 * per_span).map(|_| addr(h.malloc(Some(a), 1000))).collect();
    let spans = |v: &[usize]| {
        let mut s: Vec<usize> = v.iter().map(|p| p / SPAN_SIZE).collect();
        s.dedup();
        s
    };
    let used = spans(&blocks);
    assert!(used.len() >= 3);
    // thread b frees half of the first span's blocks: the span (full, not owned) is listed
    let first: Vec<usize> = blocks.iter().copied().filter(|p| p / SPAN_SIZE == used[0]).collect();
    for &p in first.iter().step_by(2) {
        free(&h, Some(b), p);
    }
    h.flush_thread_cache(b);
    let head = region.header().partial[class].load(Relaxed) as usize;
    assert_eq!(head, crate::geometry::span_index(used[0] * SPAN_SIZE), "listed");
    // a new cache takes the listed span before carving a fresh one
    let cc = cache(&h);
    let p = addr(h.malloc(Some(cc), 1000));
    assert_eq!(p / SPAN_SIZE, used[0]);
    free(&h, Some(cc), p);
    h.release_thread_cache(cc);
    // freeing everything gives the spans back
    let free_before = region.header().free_spans.load(Relaxed);
    for &q in blocks.iter().filter(|q| !first.iter().step_by(2).any(|f| f == *q)) {
        free(&h, Some(b), q);
    }
    h.release_thread_cache(b);
    h.release_thread_cache(a);
    let free_after = region.header().free_spans.load(Relaxed);
    assert!(free_after >= free_before + 3, "{free_before} -> {free_after}");
    assert_eq!(region.header().partial[class].load(Relaxed), 0);
    assert_eq!(h.visit(h.own_slot().unwrap(), |_, _| {}), 0);
}

#[test]
fn a_released_cache_slot_serves_the_next_thread() {
    let h = heap(Mode::Anonymous);
    let a = cache(&h);
    let index = a.index.load(Relaxed);
    let p = addr(h.malloc(Some(a), 10));
    h.release_thread_cache(a);
    let b = cache(&h);
    assert_eq!(b.index.load(Relaxed), index);
    assert!(b.bins.iter().all(|bin| bin.count.load(Relaxed) == 0 && bin.current.load(Relaxed) == 0));
    let q = addr(h.malloc(Some(b), 10));
    assert_eq!(h.block_of(q), Some((q, 16)));
    free(&h, Some(b), p);
    free(&h, Some(b), q);
}

/// Fills a heap as a previous version would: a linked list of nodes pointing to strings,
/// large blocks, blocks parked in two thread caches. Returns the head and every live block.
fn fill_like_an_old_version(h: &Heap) -> (usize, Vec<(usize, usize)>) {
    let (c1, c2) = (cache(h), cache(h));
    let mut head = 0usize;
    for i in 0..3000usize {
        let c = if i % 2 == 0 { c1 } else { c2 };
        let node = addr(h.calloc(Some(c), 1, 32));
        let key = addr(h.malloc(Some(c), 9 + i % 40));
        fill(key, 9 + i % 40, (i % 200) as u8 + 1);
        // SAFETY: node is a fresh 32-byte block.
        unsafe {
            *(node as *mut usize) = key;
            *((node + 8) as *mut usize) = 9 + i % 40;
            *((node + 16) as *mut usize) = head;
        }
        head = node;
        if i % 500 == 0 {
            let big = addr(h.malloc(Some(c), 100_000 + i));
            free(h, Some(c), big);
        }
        if i % 3 == 0 {
            let junk = addr(h.malloc(Some(c), 48));
            free(h, Some(c), junk); // stays in the cache
        }
    }
    let mut live = Vec::new();
    h.visit(h.own_slot().unwrap(), |s, n| live.push((s, n)));
    (head, live)
}

fn walk(head: usize) -> usize {
    let mut n = 0;
    let mut at = head;
    while at != 0 {
        // SAFETY: the test's own list, mapped at its address.
        let (key, len, next) =
            unsafe { (*(at as *const usize), *((at + 8) as *const usize), *((at + 16) as *const usize)) };
        // SAFETY: as above.
        let first = unsafe { *(key as *const u8) };
        check(key, len, first);
        n += 1;
        at = next;
    }
    n
}

fn own_memfd(h: &Heap, slot: usize, index: usize) -> rustix::fd::OwnedFd {
    let mut seg = None;
    h.segments(slot, |s| {
        if s.index == index {
            seg = Some(s);
        }
    });
    let seg = seg.unwrap();
    os::open(&seg.map_files_path(None), true).expect("opening /proc/self/map_files needs CAP_CHECKPOINT_RESTORE")
}

#[test]
fn adoption_in_process_memfd() {
    let old = heap(Mode::Memfd);
    let slot = old.own_slot().unwrap();
    let (head, live_before) = fill_like_an_old_version(&old);
    let fd = own_memfd(&old, slot, 0);
    let extent = old.extent(slot).unwrap();
    let slots = handover();
    drop(old); // the old process exits; its memfd lives on through `fd`

    let mut avoid = SlotSet::new();
    avoid.insert(slot);
    let h = Box::new(Heap::new());
    h.init(&Config { avoid, mode: Mode::Memfd }).unwrap();
    drop(slots);
    assert_eq!(h.role(slot), Role::Reserved);
    h.map_segment(slot, 0, 0, extent, Some(fd.as_fd())).unwrap();
    assert_eq!(h.block_of(head), None, "not readable before finish_mapping");
    h.finish_mapping(slot).unwrap();
    assert_eq!(h.block_of(head), Some((head, 32)));
    let stats = h
        .adopt(&[slot].into_iter().fold(SlotSet::new(), |mut s, x| {
            s.insert(x);
            s
        }))
        .unwrap();
    assert!(stats.cached_blocks_released > 0, "{stats:?}");
    assert_eq!(walk(head), 3000);
    let mut live_after = Vec::new();
    h.visit(slot, |s, n| live_after.push((s, n)));
    let cached: Vec<_> = live_before.iter().filter(|b| !live_after.contains(b)).collect();
    assert_eq!(cached.len(), stats.cached_blocks_released, "exactly the cached blocks became free");
    assert!(live_after.iter().all(|b| live_before.contains(b)));
    assert_eq!(h.segments_backing(slot), [SegmentBacking::PrivateMemfd]);
    // free the old list; new blocks reuse the old memory first
    let c = cache(&h);
    free_adopted_list(&h, c, head);
    let fresh: Vec<usize> = (0..3000).map(|_| addr(h.malloc(Some(c), 32))).collect();
    assert!(fresh.iter().all(|&p| slot_of(p) == Some(slot)), "adopted memory is reused before fresh memory");
    // the memfd still holds the old bytes: copy-on-write
    let mut first = [0u8; 8];
    rustix::io::pread(&fd, &mut first, (head - slot_base(slot)) as u64).unwrap();
    assert_ne!(u64::from_ne_bytes(first), 0);
    // commit: write back, share again; the memfd then holds what this process sees
    h.flush_thread_cache(c);
    let committed = h.commit_segment(slot, 0, fd.as_fd()).unwrap();
    assert!(committed.written > 0);
    assert_eq!(h.segments_backing(slot), [SegmentBacking::SharedMemfd]);
    let probe = fresh[17];
    fill(probe, 32, 0x3c);
    let mut via_fd = [0u8; 32];
    rustix::io::pread(&fd, &mut via_fd, (probe - slot_base(slot)) as u64).unwrap();
    assert_eq!(via_fd, [0x3c; 32], "shared after commit");
    for p in fresh {
        free(&h, Some(c), p);
    }
    h.release_thread_cache(c);
    assert_eq!(h.visit(slot, |_, _| {}), 0);
    assert_eq!(h.retire_empty(), 1);
    assert_eq!(h.role(slot), Role::Retired);
    assert_eq!(h.block_of(head), None);
}

/// A previous version may still write its heap after its successor mapped it copy-on-write
/// (its runtime's calls into libc allocate there until it is gone), and the successor sees
/// the memfd's bytes wherever it has not written: a free span the old span table called
/// zero may not be any more, so calloc in an adopted region over a memfd must clear it.
#[test]
fn calloc_over_an_adopted_memfd_clears_what_the_old_version_wrote_late() {
    use crate::layout::FLAG_ZERO;
    let old = heap(Mode::Memfd);
    let slot = old.own_slot().unwrap();
    let c = cache(&old);
    // free runs in the pool, some given back (zero)
    let bigs: Vec<usize> = (0..40).map(|i| addr(old.malloc(Some(c), 3 * SPAN_SIZE + i))).collect();
    let keep = addr(old.malloc(Some(c), 64));
    for b in bigs {
        free(&old, Some(c), b);
    }
    let zero_before = {
        let r = old.readable(slot).unwrap();
        let hwm = r.header().hwm.load(Relaxed) as usize;
        (FIRST_DATA_SPAN..hwm)
            .filter(|&s| test_bit(r.free_map(), s) && r.span(s).unwrap().flags.load(Relaxed) & FLAG_ZERO != 0)
            .count()
    };
    assert!(zero_before > 0, "the test needs free spans marked zero");
    let fd = own_memfd(&old, slot, 0);
    let extent = old.extent(slot).unwrap();
    old.flush_thread_cache(c);
    old.release_thread_cache(c);
    let slots = handover();
    drop(old);

    let mut avoid = SlotSet::new();
    avoid.insert(slot);
    let h = Box::new(Heap::new());
    h.init(&Config { avoid, mode: Mode::Memfd }).unwrap();
    drop(slots);
    h.map_segment(slot, 0, 0, extent, Some(fd.as_fd())).unwrap();
    h.finish_mapping(slot).unwrap();
    h.adopt(&[slot].into_iter().fold(SlotSet::new(), |mut s, x| {
        s.insert(x);
        s
    }))
    .unwrap();
    assert_eq!(h.block_of(keep), Some((keep, 64)));
    // the old version writes its free spans after the adoption
    let r = h.readable(slot).unwrap();
    let hwm = r.header().hwm.load(Relaxed) as usize;
    let junk = std::vec![0xa5u8; SPAN_SIZE];
    for s in (FIRST_DATA_SPAN..hwm).filter(|&s| test_bit(r.free_map(), s)) {
        rustix::io::pwrite(&fd, &junk, (s * SPAN_SIZE) as u64).unwrap();
    }
    let c = cache(&h);
    let mut in_old = 0;
    for _ in 0..40 {
        let p = addr(h.calloc(Some(c), 1, 3 * SPAN_SIZE));
        if slot_of(p) == Some(slot) {
            in_old += 1;
            // SAFETY: a fresh block of that size.
            let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, 3 * SPAN_SIZE) };
            assert!(bytes.iter().all(|&b| b == 0), "calloc returned the old version's late bytes at {p:#x}");
        }
    }
    assert!(in_old > 0, "no block came from the adopted region");
}

/// An anonymous heap filled like an old version's, its touched pages copied (as the update
/// copies them from the old process) into a new heap that maps the slot and adopts it:
/// the new heap, the slot, the list's head, the old live blocks and the adoption's figures.
fn anonymous_old_heap_adopted() -> (Box<Heap>, usize, usize, Vec<(usize, usize)>, crate::AdoptStats) {
    let old = heap(Mode::Anonymous);
    let slot = old.own_slot().unwrap();
    let (head, live_before) = fill_like_an_old_version(&old);
    let used = old.readable(slot).unwrap().header().hwm.load(Relaxed) as usize * SPAN_SIZE;
    // only the pages it touched (the metadata areas are sparse)
    let mut image: Vec<(usize, Vec<u8>)> = Vec::new();
    crate::private_pages(None, slot_base(slot), slot_base(slot) + used, |s, e| {
        // SAFETY: the old heap's mapping, read before it goes away.
        image.push((s, unsafe { core::slice::from_raw_parts(s as *const u8, e - s) }.to_vec()))
    })
    .unwrap();
    let extent = old.extent(slot).unwrap();
    let slots = handover();
    drop(old);
    let mut avoid = SlotSet::new();
    avoid.insert(slot);
    let h = Box::new(Heap::new());
    h.init(&Config { avoid, mode: Mode::Anonymous }).unwrap();
    drop(slots);
    h.map_segment(slot, 0, 0, extent, None).unwrap();
    for (at, bytes) in &image {
        // SAFETY: the slot is mapped writable (anonymous) and not readable by anyone yet.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), *at as *mut u8, bytes.len()) };
    }
    h.finish_mapping(slot).unwrap();
    let mut set = SlotSet::new();
    set.insert(slot);
    let stats = h.adopt(&set).unwrap();
    (h, slot, head, live_before, stats)
}

/// Frees the list `fill_like_an_old_version` built (each node and its key), from `head`.
fn free_adopted_list(h: &Heap, c: &ThreadCache, head: usize) {
    let mut at = head;
    while at != 0 {
        // SAFETY: the adopted list.
        let (key, next) = unsafe { (*(at as *const usize), *((at + 16) as *const usize)) };
        free(h, Some(c), key);
        free(h, Some(c), at);
        at = next;
    }
}

/// Freed old blocks leave the adopted region's spans empty with their copied pages still
/// resident; trimming gives them back, and the region still serves allocations.
#[test]
fn trimming_an_adopted_region_gives_its_free_spans_back() {
    let (h, slot, head, _, _) = anonymous_old_heap_adopted();
    let c = cache(&h);
    free_adopted_list(&h, c, head);
    h.flush_thread_cache(c);
    let resident = |h: &Heap| {
        let mut n = 0;
        let end = slot_base(slot) + h.readable(slot).unwrap().header().hwm.load(Relaxed) as usize * SPAN_SIZE;
        crate::private_pages(None, slot_base(slot), end, |s, e| n += e - s).unwrap();
        n
    };
    let before = resident(&h);
    let trimmed = h.trim_adopted();
    let after = resident(&h);
    assert!(trimmed > 0, "nothing trimmed");
    assert!(after * 2 < before, "resident {before} -> {after} bytes, trimmed {trimmed}");
    assert_eq!(h.trim_adopted(), 0, "nothing left to trim");
    let p = addr(h.malloc(Some(c), 48));
    fill(p, 48, 0x5a);
    free(&h, Some(c), p);
}

#[test]
fn adoption_in_process_anonymous() {
    let (h, slot, head, live_before, stats) = anonymous_old_heap_adopted();
    let mut set = SlotSet::new();
    set.insert(slot);
    assert_eq!(walk(head), 3000);
    assert_eq!(stats.live_blocks + stats.cached_blocks_released, live_before.len());
    assert_eq!(h.segments_backing(slot), [SegmentBacking::Anonymous]);
    assert!(h.adopt(&set).is_err(), "adopted once");
    let c = cache(&h);
    let p = addr(h.malloc(Some(c), 48));
    assert_eq!(slot_of(p), Some(slot), "a cached block of the old process is reused");
}

#[test]
fn mapping_rejects_what_is_not_a_region() {
    let h = heap(Mode::Anonymous);
    let other = (h.own_slot().unwrap() + 3) % crate::SLOTS;
    let fd = os::memfd(SLOT_SIZE as u64).unwrap();
    if h.map_segment(other, 0, 0, Extent::INITIAL, Some(fd.as_fd())).is_ok() {
        assert!(matches!(h.finish_mapping(other), Err(crate::HeapError::NotARegion { .. })));
        let mut set = SlotSet::new();
        set.insert(other);
        assert!(h.adopt(&set).is_err());
        h.release_slot(other).unwrap();
        assert_eq!(h.role(other), Role::Reserved);
    }
    let small = os::memfd(4096).unwrap();
    assert!(h.map_segment(other, 0, 0, Extent::INITIAL, Some(small.as_fd())).is_err(), "a memfd smaller than a region");
    assert!(h.map_segment(h.own_slot().unwrap(), 0, 0, Extent::INITIAL, None).is_err(), "not over the own region");
    assert!(h.map_segment(other, 1, 5, Extent::INITIAL, None).is_err(), "a segment inside the metadata");
}

#[test]
fn segments_are_enumerated_with_their_backing() {
    let h = heap(Mode::Memfd);
    let slot = h.own_slot().unwrap();
    let mut segs = Vec::new();
    h.segments(slot, |s| segs.push(s));
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].start, slot_base(slot));
    assert_eq!(segs[0].end, slot_base(slot) + SLOT_SIZE);
    assert_eq!(segs[0].backing, SegmentBacking::SharedMemfd);
    let path = segs[0].map_files_path(Some(42));
    assert!(path.as_bytes().starts_with(b"/proc/42/map_files/"));
    let mut private = 0;
    crate::private_pages(None, segs[0].start, segs[0].used_end, |s, e| private += e - s).unwrap();
    assert_eq!(private, 0, "a shared memfd segment holds no private page");
    let c = cache(&h);
    let p = addr(h.malloc(Some(c), 100));
    fill(p, 100, 1);
    crate::private_pages(None, segs[0].start, segs[0].used_end, |s, e| private += e - s).unwrap();
    assert_eq!(private, 0, "written, still shared");
    free(&h, Some(c), p);
}

impl Heap {
    fn segments_backing(&self, slot: usize) -> Vec<SegmentBacking> {
        let mut v = Vec::new();
        self.segments(slot, |s| v.push(s.backing));
        v
    }
}

#[test]
fn a_full_own_region_hands_over_to_a_new_one() {
    use crate::geometry::SPANS_PER_REGION;
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    let first = h.own_slot().unwrap();
    // nearly the whole region in one run (virtual: untouched pages cost nothing)
    let huge = addr(h.malloc(Some(c), (SPANS_PER_REGION - FIRST_DATA_SPAN - 10) * SPAN_SIZE));
    assert_eq!(slot_of(huge), Some(first));
    let next = addr(h.malloc(Some(c), 20 * SPAN_SIZE));
    let second = h.own_slot().unwrap();
    assert_ne!(second, first);
    assert_eq!(slot_of(next), Some(second));
    assert_eq!(h.role(first), Role::Adopted, "the full region stays in use");
    // its free spans are still used: the first region's pool serves before fresh memory
    free(&h, Some(c), huge);
    let again = addr(h.malloc(Some(c), 5 * SPAN_SIZE));
    assert_eq!(slot_of(again), Some(first));
    assert!(h.slots_in_use().contains(first) && h.slots_in_use().contains(second));
    free(&h, Some(c), again);
    free(&h, Some(c), next);
}

#[test]
fn partial_lists_link_and_unlink_anywhere() {
    use crate::small::{push_partial, unlink_partial};
    let h = heap(Mode::Anonymous);
    let region = h.readable(h.own_slot().unwrap()).unwrap();
    let class = 5;
    let order = |r: crate::view::Region<'_>| {
        let mut v = Vec::new();
        let mut at = r.header().partial[class].load(Relaxed) as usize;
        let mut prev = 0;
        while at != 0 {
            assert_eq!(r.span(at).unwrap().prev.load(Relaxed) as usize, prev, "prev link of {at}");
            v.push(at);
            prev = at;
            at = r.span(at).unwrap().link.load(Relaxed) as usize;
        }
        v
    };
    let s = |i: usize| FIRST_DATA_SPAN + i;
    for i in 0..4 {
        push_partial(region, class, s(i));
    }
    assert_eq!(order(region), [s(3), s(2), s(1), s(0)]);
    assert!(unlink_partial(region, class, s(1)), "middle");
    assert_eq!(order(region), [s(3), s(2), s(0)]);
    assert!(unlink_partial(region, class, s(3)), "head");
    assert_eq!(order(region), [s(2), s(0)]);
    assert!(unlink_partial(region, class, s(0)), "tail");
    assert_eq!(order(region), [s(2)]);
    assert!(!unlink_partial(region, class, s(7)), "not on the list");
    assert!(!unlink_partial(region, class + 1, s(2)), "on another class's list");
    assert!(unlink_partial(region, class, s(2)));
    assert_eq!(order(region), Vec::<usize>::new());
}

#[test]
fn carving_takes_the_pool_first_fit_then_the_high_water_mark() {
    let h = heap(Mode::Anonymous);
    let slot = h.own_slot().unwrap();
    let region = h.readable(slot).unwrap();
    let hdr = region.header();
    let (_, a, zero) = h.carve(1, 1).unwrap();
    assert_eq!(a, FIRST_DATA_SPAN);
    assert!(zero, "fresh spans read as zero");
    let (_, b, _) = h.carve(2, 1).unwrap();
    assert_eq!(b, a + 1);
    // aligned: the gap goes to the pool
    let (_, c, _) = h.carve(3, 8).unwrap();
    assert_eq!(c % 8, 0);
    assert_eq!(c, (b + 2).next_multiple_of(8));
    assert_eq!(hdr.free_spans.load(Relaxed) as usize, c - (b + 2));
    assert_eq!(hdr.hwm.load(Relaxed) as usize, c + 3);
    // the gap serves the next small request, first fit
    let (_, d, _) = h.carve(1, 1).unwrap();
    assert_eq!(d, b + 2);
    h.release_spans(region, a, 1);
    h.release_spans(region, b, 2);
    assert_eq!(hdr.committed_free_spans.load(Relaxed), 3);
    let (_, e, zero) = h.carve(3, 1).unwrap();
    assert_eq!(e, a, "three freed neighbours form a run");
    assert!(!zero, "kept committed: the caller clears");
    let before = hdr.hwm.load(Relaxed) as usize;
    let (_, f, _) = h.carve(4, 1).unwrap();
    assert!(f >= c + 3 || f + 4 <= c, "no overlap with the aligned run");
    assert!(hdr.hwm.load(Relaxed) as usize >= before);
}

/// This process's memory, as `remote` reads another's.
struct Local;

impl crate::remote::Source for Local {
    fn read(&self, addr: usize, buf: &mut [u8]) -> bool {
        // SAFETY: the tests only read metadata of regions their heap keeps mapped.
        buf.copy_from_slice(unsafe { core::slice::from_raw_parts(addr as *const u8, buf.len()) });
        true
    }
}

#[test]
fn block_info_says_what_was_asked_for_locally_and_from_the_bytes() {
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    let slot = h.own_slot().unwrap();
    let mut want = BTreeMap::new();
    for (i, n) in [1usize, 8, 24, 100, 1000, 4097, 16384, 16385, 200_000].into_iter().enumerate() {
        let p = h.malloc(Some(c), n).unwrap();
        h.set_info(p, n, i % 2 == 0);
        want.insert(p.as_ptr() as usize, (n, i % 2 == 0));
    }
    // a block nobody described: its requested size is all of it
    let bare = addr(h.malloc(Some(c), 40));
    for (&a, &(n, startup)) in &want {
        let local = h.info_of(a + n / 2).unwrap();
        assert_eq!((local.start, local.requested, local.startup), (a, n, startup), "{n}");
        assert!(local.usable >= n);
        assert_eq!(crate::remote::block_of(&Local, a + n / 2), Some(local));
    }
    assert_eq!(h.info_of(bare).unwrap().requested, 48);
    let mut seen = BTreeMap::new();
    let mut spans = 0;
    let n = crate::remote::visit(
        &Local,
        slot,
        |b| {
            seen.insert(b.start, (b.requested, b.startup));
        },
        |_, _| spans += 1,
    )
    .unwrap();
    assert_eq!(n, seen.len());
    assert!(spans >= 2);
    for (a, v) in &want {
        assert_eq!(seen.get(a), Some(v));
    }
    assert_eq!(seen.get(&bare), Some(&(48, false)));
    let big = *want.keys().last().unwrap();
    free(&h, Some(c), big);
    assert_eq!(crate::remote::block_of(&Local, big), None, "freed");
}

/// Whether any page of [start, end) is mapped in this process.
fn any_mapped(start: usize, end: usize) -> bool {
    let mut page = start;
    while page < end {
        let mut v = 0u8;
        // SAFETY: mincore only reports on the page (ENOMEM when it is not mapped).
        if unsafe { libc::mincore(page as *mut libc::c_void, 4096, &mut v) } == 0 {
            return true;
        }
        page += 4096;
    }
    false
}

#[test]
fn a_region_maps_little_at_first_and_grows_in_place() {
    let h = heap(Mode::Anonymous);
    let slot = h.own_slot().unwrap();
    let base = slot_base(slot);
    let first = h.extent(slot).unwrap();
    assert_eq!(first, Extent::INITIAL);
    let mut info = Vec::new();
    h.regions(|r| info.push(r));
    assert!(info[0].mapped_bytes < 12 << 20, "{:?}", info[0]);
    let mapped_end = info[0].mapped_end;
    assert!(!any_mapped(mapped_end, mapped_end + (1 << 20)), "nothing mapped above the extent");
    let c = cache(&h);
    // 96 MiB in blocks of 1 MiB: the mapping grows in place, blocks keep their contents
    let blocks: Vec<usize> = (0..96).map(|_| addr(h.malloc(Some(c), 1 << 20))).collect();
    for (i, &b) in blocks.iter().enumerate() {
        assert_eq!(slot_of(b), Some(slot));
        fill(b, 1 << 20, i as u8);
    }
    let grown = h.extent(slot).unwrap();
    assert!(grown.spans >= FIRST_DATA_SPAN + 96 * 16, "{grown:?}");
    assert!(grown.bytes() < 200 << 20, "{grown:?}: {} bytes", grown.bytes());
    assert!(any_mapped(mapped_end, mapped_end + 4096));
    let end = base + grown.spans * SPAN_SIZE;
    assert!(!any_mapped(end, end + (1 << 20)));
    // the header says how far, for a successor
    let r = h.readable(slot).unwrap();
    assert_eq!(r.header().mapped_spans.load(Relaxed) as usize, grown.spans);
    for (i, &b) in blocks.iter().enumerate() {
        check(b, 1 << 20, i as u8);
        assert_eq!(h.block_of(b + 5), Some((b, 1 << 20)));
        free(&h, Some(c), b);
    }
}

#[test]
fn a_mapping_that_cannot_grow_fails_the_allocation_not_the_process() {
    let h = heap(Mode::Anonymous);
    let slot = h.own_slot().unwrap();
    let c = cache(&h);
    let end = slot_base(slot) + h.extent(slot).unwrap().spans * SPAN_SIZE;
    // something else maps right above the region's mapping (as RLIMIT_AS would, it
    // refuses the growth)
    // SAFETY: FIXED_NOREPLACE: a fresh mapping in the region's slot, ours to remove.
    let blocker = unsafe {
        libc::mmap(
            end as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(blocker as usize, end);
    assert!(h.malloc(Some(c), 64 << 20).is_none(), "a large run beyond the mapping fails");
    assert_eq!(slot_of(end), Some(slot));
    assert_eq!(h.own_slot(), Some(slot), "a failed large run starts no region");
    // what the mapping holds still serves
    let small: Vec<usize> = (0..1000).map(|_| addr(h.malloc(Some(c), 100))).collect();
    assert!(small.iter().all(|&p| slot_of(p) == Some(slot)));
    // small runs past the mapping go to a new region, as malloc would find memory elsewhere
    let runs: Vec<usize> = (0..8).map(|_| addr(h.malloc(Some(c), 1 << 20))).collect();
    assert!(runs.iter().all(|&p| p != 0));
    // SAFETY: the blocker mapped above.
    unsafe { libc::munmap(blocker, 4096) };
    for p in small.into_iter().chain(runs) {
        free(&h, Some(c), p);
    }
}

#[test]
fn a_large_block_grows_in_place_past_the_mapped_extent() {
    let h = heap(Mode::Anonymous);
    let slot = h.own_slot().unwrap();
    let c = cache(&h);
    let extent = h.extent(slot).unwrap();
    let mapped_end = slot_base(slot) + extent.spans * SPAN_SIZE;
    // a run that ends a span short of the mapping's end, at the high-water mark
    let hwm = h.readable(slot).unwrap().header().hwm.load(Relaxed) as usize;
    let len = (extent.spans - hwm - 1) * SPAN_SIZE;
    let big = addr(h.malloc(Some(c), len));
    assert_eq!(big + len, mapped_end - SPAN_SIZE, "the run sits at the top of the mapping");
    fill(big, len, 7);
    // grown in place to 4 MiB past the mapping's end: the mapping must grow with it
    let grown_len = len + 5 * SPAN_SIZE;
    // SAFETY: `big` is a live block of this heap.
    let p = addr(unsafe { h.realloc(Some(c), big as *mut u8, grown_len) });
    assert_eq!(p, big, "grows in place at the high-water mark");
    assert!(h.extent(slot).unwrap().spans * SPAN_SIZE >= grown_len + (big - slot_base(slot)));
    check(big, len, 7);
    fill(big, grown_len, 9); // faults if the tail is not mapped
    assert_eq!(h.block_of(big + grown_len - 1), Some((big, grown_len)));
    free(&h, Some(c), big);
}

#[test]
fn thread_caches_beyond_the_first_mapped_ones_map_more() {
    let h = heap(Mode::Anonymous);
    let slot = h.own_slot().unwrap();
    let caches: Vec<&ThreadCache> = (0..3 * crate::CACHE_STEP).map(|_| cache(&h)).collect();
    assert!(h.extent(slot).unwrap().caches >= 3 * crate::CACHE_STEP);
    for (i, c) in caches.iter().enumerate() {
        let p = addr(h.malloc(Some(c), 24 + i));
        fill(p, 24 + i, i as u8);
        check(p, 24 + i, i as u8);
        free(&h, Some(c), p);
    }
    for c in caches {
        h.release_thread_cache(c);
    }
}

#[test]
fn a_regions_layout_reads_from_its_bytes_as_the_heap_knows_it() {
    let h = heap(Mode::Anonymous);
    let c = cache(&h);
    let slot = h.own_slot().unwrap();
    let _ = h.malloc(Some(c), 100).unwrap();
    let layout = crate::remote::region_layout(&Local, slot).unwrap();
    assert_eq!(Some(layout.extent), h.extent(slot));
    let mut segments = 0;
    h.segments(slot, |_| segments += 1);
    assert_eq!(layout.segment_starts().len(), segments);
    assert_eq!(layout.segment_starts()[0], 0, "segment 0 starts the region");
}

#[test]
fn adopted_memory_freed_and_reused_for_other_classes_never_overlaps_live_blocks() {
    let (h, _, head, _, _) = anonymous_old_heap_adopted();
    // The transfer: the nodes move to fresh 48-byte blocks (another class), allocated by
    // one thread; the old nodes are freed by it afterwards, keys stay.
    let control = cache(&h);
    let mut nodes = Vec::new();
    let mut at = head;
    while at != 0 {
        // SAFETY: the adopted list.
        let next = unsafe { *((at + 16) as *const usize) };
        nodes.push(at);
        at = next;
    }
    let moved: Vec<usize> = nodes.iter().map(|_| addr(h.malloc(Some(control), 48))).collect();
    for &p in &moved {
        fill(p, 48, 0x77);
    }
    for &n in &nodes {
        free(&h, Some(control), n);
    }
    // The program then allocates other sizes, from another thread.
    let program = cache(&h);
    let mut others = Vec::new();
    for i in 0..2000 {
        let n = [672usize, 8192, 24, 100][i % 4];
        let p = addr(h.malloc(Some(program), n));
        fill(p, n, 0x11);
        others.push((p, n));
    }
    for &p in &moved {
        assert_eq!(h.block_of(p), Some((p, 48)), "a moved node is still its own block");
        check(p, 48, 0x77);
    }
    for &(p, n) in &others {
        assert_eq!(h.block_of(p).map(|b| b.0), Some(p));
        check(p, n, 0x11);
    }
}
