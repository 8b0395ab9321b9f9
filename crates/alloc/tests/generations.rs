//! Adoption across real processes, for three generations.
//!
//! 1. Generation one (this test binary re-executed, role `one`) fills a memfd heap in a slot
//!    it is told: a linked list of kvd-like nodes (node, key, value; some values large or
//!    over-aligned), a third deleted, a second thread that keeps a thread cache with blocks in
//!    it; then it forks (a child that exits at once, as `system()` would), which freezes its
//!    region, and afterwards rewrites some values (private pages in the frozen segment) and
//!    adds nodes (fresh spans: a new segment). It reports its list and a hash of its region.
//! 2. This process (generation two) maps that region at the same address copy-on-write
//!    (`map_old_region`: both segments, plus the old process's private pages), adopts it,
//!    checks the list and the live blocks against what generation one reported, frees half of
//!    the list and allocates into it. Generation one's region is byte-identical afterwards
//!    (rollback) and it keeps working. Then generation one exits and this process commits
//!    (writes its private pages back, shares the memfds again).
//! 3. Generation three (role `three`) maps both of this process's regions — with nothing to
//!    copy, since all are shared memfds after the commit — adopts them, checks the list, frees
//!    it and allocates; this process's regions are unchanged afterwards.
//!
//! Needs root (CAP_CHECKPOINT_RESTORE for /proc/PID/map_files, ptrace access for
//! process_vm_readv), as mcr's test suite runs.

use mcr_alloc::{
    open_map_files, Config, Heap, Mode, OsError, OwnedFd, SegmentBacking, SlotSet, ThreadCache, SLOT_SIZE, WINDOW_BASE,
};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const ROLE: &str = "MCR_ALLOC_GENERATION";
const PAGE: usize = 4096;

fn slot_base(slot: usize) -> usize {
    WINDOW_BASE + slot * SLOT_SIZE
}

// ---------------------------------------------------------------------------------------
// The list: node = [key, value, next, lens] where lens = key length | value length << 16 |
// fill byte << 56; keys and values are filled with the fill byte.
// ---------------------------------------------------------------------------------------

fn word(at: usize, i: usize) -> usize {
    // SAFETY: nodes of the test's list (32 bytes), mapped at their address.
    unsafe { *((at + 8 * i) as *const usize) }
}

fn set_word(at: usize, i: usize, v: usize) {
    // SAFETY: as above.
    unsafe { *((at + 8 * i) as *mut usize) = v }
}

fn fill(p: usize, len: usize, v: u8) {
    // SAFETY: a live block of at least `len` bytes of the test.
    unsafe { std::ptr::write_bytes(p as *mut u8, v, len) }
}

fn bytes<'a>(p: usize, len: usize) -> &'a [u8] {
    // SAFETY: as above, read only.
    unsafe { std::slice::from_raw_parts(p as *const u8, len) }
}

fn new_node(heap: &Heap, c: &ThreadCache, i: usize, next: usize) -> usize {
    let fill_byte = (i % 250) as u8 + 1;
    let klen = 5 + i % 40;
    let (vlen, value) = if i.is_multiple_of(997) {
        let n = 100_000 + i;
        (n, heap.malloc(Some(c), n))
    } else if i.is_multiple_of(1009) {
        (5000, heap.memalign(Some(c), 4096, 5000))
    } else {
        (17, heap.malloc(Some(c), 17))
    };
    let node = heap.calloc(Some(c), 1, 32).unwrap().as_ptr() as usize;
    let key = heap.malloc(Some(c), klen).unwrap().as_ptr() as usize;
    let value = value.unwrap().as_ptr() as usize;
    fill(key, klen, fill_byte);
    fill(value, vlen, fill_byte);
    set_word(node, 0, key);
    set_word(node, 1, value);
    set_word(node, 2, next);
    set_word(node, 3, klen | vlen << 16 | (fill_byte as usize) << 56);
    node
}

fn lens(node: usize) -> (usize, usize, u8) {
    let l = word(node, 3);
    (l & 0xffff, (l >> 16) & 0xff_ffff_ffff, (l >> 56) as u8)
}

/// Walks the list checking every key and value: (count, digest of the contents).
fn walk(head: usize) -> (usize, u64) {
    let (mut n, mut digest, mut at) = (0usize, 0xcbf2_9ce4_8422_2325u64, head);
    while at != 0 {
        let (klen, vlen, f) = lens(at);
        let (key, value) = (bytes(word(at, 0), klen), bytes(word(at, 1), vlen));
        assert!(key.iter().all(|&b| b == f) && value.iter().all(|&b| b == f), "node {at:#x} corrupt");
        for x in [klen as u64, vlen as u64, f as u64] {
            digest = (digest ^ x).wrapping_mul(0x100_0000_01b3);
        }
        n += 1;
        at = word(at, 2);
    }
    (n, digest)
}

/// Every block the list holds, as (start, size) from the heap: (count, digest).
fn live_digest(heap: &Heap, head: usize) -> (usize, u64) {
    let (mut n, mut d, mut at) = (0, 0u64, head);
    while at != 0 {
        for p in [at, word(at, 0), word(at, 1)] {
            let (start, size) = heap.block_of(p).expect("a list block is live");
            d = d.wrapping_add((start as u64) ^ (size as u64).rotate_left(17));
            n += 1;
        }
        at = word(at, 2);
    }
    (n, d)
}

fn visit_digest(heap: &Heap, slots: &[usize]) -> (usize, u64) {
    let (mut n, mut d) = (0, 0u64);
    for &slot in slots {
        heap.visit(slot, |start, size| {
            d = d.wrapping_add((start as u64) ^ (size as u64).rotate_left(17));
            n += 1;
        });
    }
    (n, d)
}

/// A hash of every non-zero page of [start, end), with its address: equal before and after
/// iff no byte changed. Only pages in memory (mincore) are read: reading the others would
/// fill the memfd's holes; they read as zero (no swap), as do pages another process's reads
/// brought into the page cache.
fn region_hash(ranges: &[(usize, usize)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &(start, end) in ranges {
        h = range_hash(h, start, end);
    }
    h
}

fn range_hash(mut h: u64, start: usize, end: usize) -> u64 {
    let pages = (end - start) / PAGE;
    let mut resident = vec![0u8; pages];
    // SAFETY: a mapped range of this process; one byte per page written into `resident`.
    assert_eq!(unsafe { libc::mincore(start as *mut libc::c_void, end - start, resident.as_mut_ptr()) }, 0);
    for (i, r) in resident.iter().enumerate() {
        if r & 1 == 0 {
            continue;
        }
        let page = start + i * PAGE;
        if bytes(page, PAGE).iter().all(|&b| b == 0) {
            continue;
        }
        h = (h ^ page as u64).wrapping_mul(0x100_0000_01b3);
        for chunk in bytes(page, PAGE).chunks_exact(8) {
            h = (h ^ u64::from_ne_bytes(chunk.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The mapped parts of the region in `slot` below its high-water mark (a region maps only
/// parts of its slot).
fn used_range(heap: &Heap, slot: usize) -> Vec<(usize, usize)> {
    let mut r = (0, 0);
    let extent = heap.extent(slot).unwrap();
    let pieces = |(base, used_end): (usize, usize)| -> Vec<(usize, usize)> {
        extent.pieces_within(0, used_end - base).map(|(s, e)| (base + s, base + e)).collect()
    };
    heap.regions(|info| {
        if info.slot == slot {
            r = (info.base, info.used_end);
        }
    });
    pieces(r)
}

/// Opens the memfd behind the mapping of `pid` that starts at `start`, from its maps; `None`
/// if that mapping is anonymous.
fn opener(pid: i32) -> impl FnMut(usize) -> Result<Option<OwnedFd>, OsError> {
    move |start| {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| OsError::NOENT)?;
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let range = fields.next().unwrap_or_default();
            let (a, b) = range.split_once('-').unwrap_or_default();
            let (a, b) = (usize::from_str_radix(a, 16).unwrap_or(0), usize::from_str_radix(b, 16).unwrap_or(0));
            if a != start {
                continue;
            }
            let path = fields.nth(4).unwrap_or("");
            return if path.is_empty() {
                Ok(None)
            } else if path.starts_with("/memfd:mcr-heap") {
                open_map_files(Some(pid), a, b, false).map(Some)
            } else {
                Err(OsError::INVAL)
            };
        }
        Err(OsError::NOENT)
    }
}

fn one_slot(slot: usize) -> SlotSet {
    let mut s = SlotSet::new();
    s.insert(slot);
    s
}

// ---------------------------------------------------------------------------------------
// The roles of the re-executed test binary.
// ---------------------------------------------------------------------------------------

fn env(name: &str) -> usize {
    std::env::var(name).unwrap().parse().unwrap()
}

fn generation_one() {
    let slot = env("MCR_ALLOC_SLOT");
    let heap: &'static Heap = Box::leak(Box::new(Heap::new()));
    heap.init(&Config { avoid: SlotSet::range(0, slot - 1), mode: Mode::Memfd }).unwrap();
    assert_eq!(heap.own_slot(), Some(slot));
    // SAFETY: the main thread's cache.
    let c = unsafe { heap.thread_cache() }.unwrap();
    let mut head = 0;
    for i in 0..20_000 {
        head = new_node(heap, c, i, head);
    }
    // delete every third node
    let (mut prev, mut at, mut k) = (0usize, head, 0);
    while at != 0 {
        let next = word(at, 2);
        if k % 3 == 0 {
            if prev == 0 {
                head = next;
            } else {
                set_word(prev, 2, next);
            }
            for p in [word(at, 0), word(at, 1), at] {
                // SAFETY: a live block of the list, unlinked, freed once.
                unsafe { heap.free(Some(c), p as *mut u8) };
            }
        } else {
            prev = at;
        }
        at = next;
        k += 1;
    }
    // a second thread adds nodes and keeps blocks parked in its cache
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let (_keep_alive, parked) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // SAFETY: this thread's cache.
        let c2 = unsafe { heap.thread_cache() }.unwrap();
        let mut sub = 0;
        for i in 20_000..21_000 {
            sub = new_node(heap, c2, i, sub);
        }
        for _ in 0..100 {
            let junk = heap.malloc(Some(c2), 48).unwrap();
            // SAFETY: freed once: it stays in this thread's cache.
            unsafe { heap.free(Some(c2), junk.as_ptr()) };
        }
        tx.send(sub).unwrap();
        let _ = parked.recv(); // blocks until the process exits
    });
    let sub = rx.recv().unwrap();
    let mut tail = sub;
    while word(tail, 2) != 0 {
        tail = word(tail, 2);
    }
    set_word(tail, 2, head);
    head = sub;

    // fork: the region is frozen; the child exits at once
    heap.fork_prepare();
    // SAFETY: the child only allocates from the heap under test and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        heap.fork_child(Some(c));
        let _ = heap.malloc(Some(c), 100);
        // SAFETY: leave at once.
        unsafe { libc::_exit(0) };
    }
    heap.fork_parent();
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    assert!(heap.stats().segments_frozen >= 1);
    // rewrite every fifth value (private pages now) and add nodes with large values (fresh
    // spans: a new segment)
    let (mut at, mut k) = (head, 0);
    while at != 0 {
        if k % 5 == 0 {
            let (klen, vlen, f) = lens(at);
            let g = f % 250 + 1;
            fill(word(at, 0), klen, g);
            fill(word(at, 1), vlen, g);
            set_word(at, 3, klen | vlen << 16 | (g as usize) << 56);
        }
        at = word(at, 2);
        k += 1;
    }
    for i in 0..40 {
        head = new_node(heap, c, 997 * (i + 1), head);
    }
    let mut backings = Vec::new();
    heap.segments(slot, |s| backings.push(s.backing));
    assert_eq!(backings, [SegmentBacking::PrivateMemfd, SegmentBacking::SharedMemfd]);

    let (count, digest) = walk(head);
    let (live, live_d) = live_digest(heap, head);
    let used = used_range(heap, slot);
    let hash = region_hash(&used);
    println!("ready {} {head} {count} {digest} {live} {live_d} {hash}", std::process::id());
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "hash" => println!("{}", region_hash(&used)),
            "work" => {
                let mut extra = 0;
                for i in 0..2000 {
                    extra = new_node(heap, c, i, extra);
                }
                while extra != 0 {
                    let next = word(extra, 2);
                    for p in [word(extra, 0), word(extra, 1), extra] {
                        // SAFETY: freed once.
                        unsafe { heap.free(Some(c), p as *mut u8) };
                    }
                    extra = next;
                }
                let (n, d) = walk(head);
                println!("ok {n} {d}");
            }
            _ => break,
        }
        std::io::stdout().flush().unwrap();
    }
    std::process::exit(0);
}

fn generation_three() {
    let parent = env("MCR_ALLOC_PARENT") as i32;
    let slots: Vec<usize> = std::env::var("MCR_ALLOC_SLOTS").unwrap().split(',').map(|s| s.parse().unwrap()).collect();
    let (head, count, digest) = (env("MCR_ALLOC_HEAD"), env("MCR_ALLOC_COUNT"), env("MCR_ALLOC_DIGEST") as u64);
    let mut avoid = SlotSet::new();
    for &s in &slots {
        avoid.insert(s);
    }
    let heap: &'static Heap = Box::leak(Box::new(Heap::new()));
    heap.init(&Config { avoid, mode: Mode::Memfd }).unwrap();
    let mut copied = 0;
    for &slot in &slots {
        copied += heap.map_old_region(slot, parent, opener(parent)).unwrap().copied;
    }
    heap.adopt(&avoid).unwrap();
    assert_eq!(walk(head), (count, digest), "generation three sees the committed list");
    assert_eq!(live_digest(heap, head), visit_digest(heap, &slots), "the live blocks are the list's");
    // SAFETY: the main thread's cache.
    let c = unsafe { heap.thread_cache() }.unwrap();
    let mut at = head;
    while at != 0 {
        let next = word(at, 2);
        for p in [word(at, 0), word(at, 1), at] {
            // SAFETY: blocks of the adopted list, freed once.
            unsafe { heap.free(Some(c), p as *mut u8) };
        }
        at = next;
    }
    let mut fresh = 0;
    for i in 0..5000 {
        fresh = new_node(heap, c, i, fresh);
    }
    walk(fresh);
    println!("three-ok {copied}");
}

#[test]
fn role() {
    match std::env::var(ROLE).as_deref() {
        Ok("one") => generation_one(),
        Ok("three") => generation_three(),
        _ => {} // run as a plain test: nothing to do
    }
}

// ---------------------------------------------------------------------------------------
// Generation two: this test.
// ---------------------------------------------------------------------------------------

struct Generation {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl Generation {
    fn start(role: &str, vars: &[(&str, String)]) -> Generation {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "role", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let input = child.stdin.take();
        let output = BufReader::new(child.stdout.take().unwrap());
        Generation { child, input, output }
    }

    /// What follows `prefix` on the next line of the role's output that holds it.
    fn line(&mut self, prefix: &str) -> Vec<String> {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.output.read_line(&mut line).unwrap() > 0, "the child ended before printing {prefix}");
            // libtest prints "test role ... " without a newline before the role runs
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].split_whitespace().map(String::from).collect();
            }
        }
    }

    fn ask(&mut self, command: &str, prefix: &str) -> Vec<String> {
        let input = self.input.as_mut().unwrap();
        writeln!(input, "{command}").unwrap();
        input.flush().unwrap();
        self.line(prefix)
    }

    fn finish(mut self) {
        self.input.take();
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num(v: &[String], i: usize) -> u64 {
    v[i].parse().unwrap()
}

#[test]
fn adoption_across_three_generations() {
    let old_slot = 7;
    let heap = Box::new(Heap::new());
    heap.init(&Config { avoid: one_slot(old_slot), mode: Mode::Memfd }).unwrap();
    let own = heap.own_slot().unwrap();

    // generation one
    let mut one = Generation::start("one", &[("MCR_ALLOC_SLOT", old_slot.to_string())]);
    let ready = one.line("ready ");
    let (pid, head) = (num(&ready, 0) as i32, num(&ready, 1) as usize);
    let (count, digest, live, live_d, hash) =
        (num(&ready, 2) as usize, num(&ready, 3), num(&ready, 4) as usize, num(&ready, 5), num(&ready, 6));

    // map, adopt, check
    let mapped = heap.map_old_region(old_slot, pid, opener(pid)).unwrap();
    assert_eq!(mapped.segments, 2, "the frozen segment and the one after the fork");
    assert!(mapped.copied > 0, "generation one's writes after the fork are private pages: copied");
    assert_eq!(walk(head), (count, digest), "mapped before adoption: the list reads right");
    let stats = heap.adopt(&one_slot(old_slot)).unwrap();
    assert!(stats.cached_blocks_released >= 100, "{stats:?}");
    assert_eq!(walk(head), (count, digest));
    assert_eq!(live_digest(&heap, head), (live, live_d));
    assert_eq!(visit_digest(&heap, &[old_slot]), (live, live_d), "visit lists exactly the old live blocks");

    // use it: free every other node, add new ones (into the old memory first)
    // SAFETY: this thread's cache.
    let c = unsafe { heap.thread_cache() }.unwrap();
    let (mut at, mut k) = (head, 0);
    while at != 0 {
        let next = word(at, 2);
        if k % 2 == 1 && next != 0 {
            let after = word(next, 2);
            for p in [word(next, 0), word(next, 1), next] {
                // SAFETY: an adopted block, unlinked, freed once.
                unsafe { heap.free(Some(c), p as *mut u8) };
            }
            set_word(at, 2, after);
        }
        at = word(at, 2);
        k += 1;
    }
    let mut head = head;
    let mut in_old = 0;
    for i in 0..10_000 {
        head = new_node(&heap, c, i + 50_000, head);
        in_old += usize::from(head / SLOT_SIZE == slot_base(old_slot) / SLOT_SIZE);
    }
    assert!(in_old > 5_000, "new nodes reuse the freed old memory first ({in_old} of 10000)");
    let (count2, digest2) = walk(head);

    // rollback: generation one's region is untouched and it keeps working
    assert_eq!(num(&one.ask("hash", ""), 0), hash, "generation one's region changed");
    let ok = one.ask("work", "ok ");
    assert_eq!((num(&ok, 0) as usize, num(&ok, 1)), (count, digest));
    // commit: generation one exits, this process writes back and shares again
    one.finish();
    heap.flush_thread_cache(c);
    let mut segments = Vec::new();
    heap.segments(old_slot, |s| segments.push(s));
    for s in &segments {
        let fd = open_map_files(None, s.first_mapping.0, s.first_mapping.1, true).unwrap();
        let written = heap.commit_segment(old_slot, s.index, mcr_alloc::AsFd::as_fd(&fd)).unwrap();
        assert!(written.written > 0, "segment {} had private pages", s.index);
    }
    let mut backings = Vec::new();
    heap.segments(old_slot, |s| backings.push(s.backing));
    assert_eq!(backings, [SegmentBacking::SharedMemfd, SegmentBacking::SharedMemfd]);
    assert_eq!(walk(head), (count2, digest2));

    // generation three adopts both regions of this process, with nothing to copy
    let hashes: Vec<u64> = [old_slot, own].iter().map(|&s| region_hash(&used_range(&heap, s))).collect();
    let mut three = Generation::start(
        "three",
        &[
            ("MCR_ALLOC_PARENT", std::process::id().to_string()),
            ("MCR_ALLOC_SLOTS", format!("{old_slot},{own}")),
            ("MCR_ALLOC_HEAD", head.to_string()),
            ("MCR_ALLOC_COUNT", count2.to_string()),
            ("MCR_ALLOC_DIGEST", digest2.to_string()),
        ],
    );
    let done = three.line("three-ok ");
    assert_eq!(num(&done, 0), 0, "after the commit every page is in a memfd: nothing to copy");
    three.finish();
    for (i, &s) in [old_slot, own].iter().enumerate() {
        assert_eq!(
            region_hash(&used_range(&heap, s)),
            hashes[i],
            "generation three changed slot {s} of generation two"
        );
    }
    assert_eq!(walk(head), (count2, digest2));
}
