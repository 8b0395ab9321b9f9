//! A real fork of a process whose heap is a shared memfd: the fork hooks freeze it, so that
//! parent and child both keep allocating and writing, neither sees the other's writes, the
//! memfd keeps the bytes of the moment of the fork, and both carve fresh spans into a new
//! shared segment of their own. Another thread allocates during the fork (the locks) and
//! owns a thread cache the child does not inherit.
//!
//! The child may only make async-signal-safe calls (this process has other threads): it uses
//! the heap under test, raw memory and libc's write/read/_exit, and reports a failure as its
//! exit status.

use mcr_alloc::{Config, Heap, Mode, SegmentBacking};
use std::sync::atomic::{AtomicBool, Ordering};

const BLOCKS: usize = 2000;
const BEFORE: u8 = 0xb0;
const PARENT: u8 = 0xa1;
const CHILD: u8 = 0xc1;

fn fill(p: usize, len: usize, v: u8) {
    // SAFETY: a live block of at least `len` bytes of this test.
    unsafe { std::ptr::write_bytes(p as *mut u8, v, len) }
}

fn holds(p: usize, len: usize, v: u8) -> bool {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(p as *const u8, len) }.iter().all(|&b| b == v)
}

fn size(i: usize) -> usize {
    16 + (i * 37) % 3000
}

fn segments(heap: &Heap) -> Vec<SegmentBacking> {
    let mut v = Vec::new();
    heap.segments(heap.own_slot().unwrap(), |s| v.push(s.backing));
    v
}

/// Kills the child if the parent's checks fail before it exits.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child (ESRCH/ECHILD once it was reaped).
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// The child's side: returns 0 when everything holds, else the number of the check that failed.
fn child(heap: &Heap, blocks: &[usize; BLOCKS], to_parent: i32, from_parent: i32) -> i32 {
    // SAFETY: the forking thread's cache survives in the child; this is the only thread.
    let Some(cache) = (unsafe { heap.thread_cache() }) else { return 1 };
    if segments(heap).first() != Some(&SegmentBacking::PrivateMemfd) {
        return 2;
    }
    for (i, &p) in blocks.iter().enumerate() {
        if !holds(p, size(i), BEFORE) {
            return 3;
        }
        fill(p, size(i), CHILD);
    }
    // fresh spans: a new segment of the child's own
    let Some(big) = heap.malloc(Some(cache), 8 << 20) else { return 4 };
    let big = big.as_ptr() as usize;
    fill(big, 8 << 20, CHILD);
    let mut mine = [0usize; 500];
    for (i, p) in mine.iter_mut().enumerate() {
        let Some(q) = heap.malloc(Some(cache), size(i)) else { return 5 };
        *p = q.as_ptr() as usize;
        fill(*p, size(i), CHILD);
    }
    if segments(heap) != [SegmentBacking::PrivateMemfd, SegmentBacking::SharedMemfd] {
        return 6;
    }
    // let the parent write its copies, then check ours are untouched
    // SAFETY: plain pipe I/O on descriptors this test created.
    if unsafe { libc::write(to_parent, [1u8].as_ptr().cast(), 1) } != 1 {
        return 7;
    }
    let mut go = [0u8];
    // SAFETY: as above.
    if unsafe { libc::read(from_parent, go.as_mut_ptr().cast(), 1) } != 1 {
        return 8;
    }
    for (i, &p) in blocks.iter().enumerate() {
        if !holds(p, size(i), CHILD) {
            return 9;
        }
    }
    if !holds(big, 8 << 20, CHILD) {
        return 10;
    }
    for (i, &p) in mine.iter().enumerate() {
        if !holds(p, size(i), CHILD) {
            return 11;
        }
        // SAFETY: the child's own live blocks.
        unsafe { heap.free(Some(cache), p as *mut u8) };
    }
    0
}

#[test]
fn fork_freezes_the_heap_for_both_sides() {
    let heap: &'static Heap = Box::leak(Box::new(Heap::new()));
    heap.init(&Config { mode: Mode::Memfd, ..Config::default() }).unwrap();
    // SAFETY: the test thread's cache.
    let cache = unsafe { heap.thread_cache() }.unwrap();
    let mut blocks = [0usize; BLOCKS];
    for (i, p) in blocks.iter_mut().enumerate() {
        *p = heap.malloc(Some(cache), size(i)).unwrap().as_ptr() as usize;
        fill(*p, size(i), BEFORE);
    }
    assert_eq!(segments(heap), [SegmentBacking::SharedMemfd]);
    let own = heap.own_slot().unwrap();
    let mut seg0 = None;
    heap.segments(own, |s| seg0 = Some(s));
    let seg0 = seg0.unwrap();

    // another thread allocates throughout, holding a cache of its own
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: this thread's cache.
            let c = unsafe { heap.thread_cache() }.unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let p = heap.malloc(Some(c), 48 + n % 200).unwrap();
                fill(p.as_ptr() as usize, 48, 0x77);
                // SAFETY: freed once.
                unsafe { heap.free(Some(c), p.as_ptr()) };
                n += 1;
            }
            heap.release_thread_cache(c);
        });

        let (mut up, mut down) = ([0i32; 2], [0i32; 2]);
        // SAFETY: plain pipe creation.
        assert_eq!(unsafe { libc::pipe(up.as_mut_ptr()) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::pipe(down.as_mut_ptr()) }, 0);
        heap.fork_prepare();
        // SAFETY: the child only runs `child` (heap under test, raw memory, write/read/_exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: async-signal-safe calls: die with the parent, keep only our pipe ends.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::close(up[0]);
                libc::close(down[1]);
            }
            heap.fork_child(Some(cache));
            let code = child(heap, &blocks, up[1], down[0]);
            // SAFETY: leave without running anything of the parent's.
            unsafe { libc::_exit(code) };
        }
        heap.fork_parent();
        stop.store(true, Ordering::Relaxed);
        assert!(pid > 0);
        let _reaper = KillOnDrop(pid);
        // SAFETY: the child's pipe ends, not ours: a dead child gives EOF.
        unsafe {
            libc::close(up[1]);
            libc::close(down[0]);
        }
        assert!(heap.stats().segments_frozen >= 1);

        // wait until the child wrote its copies, then write ours
        let mut ready = [0u8];
        // SAFETY: pipe I/O.
        assert_eq!(unsafe { libc::read(up[0], ready.as_mut_ptr().cast(), 1) }, 1, "the child died early");
        for (i, &p) in blocks.iter().enumerate() {
            assert!(holds(p, size(i), BEFORE), "block {i} shows the child's writes");
            fill(p, size(i), PARENT);
        }
        let big = heap.malloc(Some(cache), 8 << 20).unwrap().as_ptr() as usize;
        fill(big, 8 << 20, PARENT);
        assert_eq!(segments(heap), [SegmentBacking::PrivateMemfd, SegmentBacking::SharedMemfd]);
        // SAFETY: pipe I/O.
        assert_eq!(unsafe { libc::write(down[1], [1u8].as_ptr().cast(), 1) }, 1);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child's check number {} failed", libc::WEXITSTATUS(status));
        for (i, &p) in blocks.iter().enumerate() {
            assert!(holds(p, size(i), PARENT), "block {i} lost the parent's writes");
        }
        assert!(holds(big, 8 << 20, PARENT));

        // the frozen memfd still holds the bytes of the moment of the fork
        let fd = std::fs::File::open(format!("/proc/self/map_files/{:x}-{:x}", seg0.start, {
            let mut end = 0;
            heap.segments(own, |s| {
                if s.index == 0 {
                    end = s.end;
                }
            });
            end
        }))
        .expect("/proc/self/map_files needs CAP_CHECKPOINT_RESTORE");
        let mut bytes = vec![0u8; size(0)];
        std::os::unix::fs::FileExt::read_exact_at(&fd, &mut bytes, (blocks[0] - seg0.start) as u64).unwrap();
        assert!(bytes.iter().all(|&b| b == BEFORE), "the frozen memfd was written");
    });
}
