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

/// The exit status of child `pid`, waiting at most a minute (a broken heap could deadlock
/// the child: the test fails instead of hanging).
fn wait_exit(pid: i32) -> i32 {
    for _ in 0..6000 {
        let mut status = 0;
        // SAFETY: polling our own child.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => std::thread::sleep(std::time::Duration::from_millis(10)),
            p if p == pid => {
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                return libc::WEXITSTATUS(status);
            }
            _ => panic!("waitpid failed"),
        }
    }
    panic!("the child did not exit within a minute");
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
        let code = wait_exit(pid);
        assert_eq!(code, 0, "the child's check number {code} failed");
        for (i, &p) in blocks.iter().enumerate() {
            assert!(holds(p, size(i), PARENT), "block {i} lost the parent's writes");
        }
        assert!(holds(big, 8 << 20, PARENT));

        // the frozen memfd still holds the bytes of the moment of the fork
        // (its first mapping: a region maps only the parts of its slot in use)
        let fd = std::fs::File::open(format!("/proc/self/map_files/{:x}-{:x}", seg0.start, {
            let mut end = 0;
            heap.segments(own, |s| {
                if s.index == 0 {
                    end = s.first_mapping.1;
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

/// What a process that dropped its privileges does (it can no longer reopen its memfds
/// through /proc/self/map_files): a fork copies the heap into anonymous memory, unless the
/// heap was unshared while the process still could. Runs in a forked sandbox process (so
/// that it can setuid), whose checks come back as its exit status.
#[test]
fn fork_without_the_capability() {
    // SAFETY: the sandbox only uses the heap under test, raw memory and async-signal-safe
    // libc calls, then _exits.
    let sandbox = unsafe { libc::fork() };
    if sandbox == 0 {
        // SAFETY: as above.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::_exit(unprivileged_forks())
        };
    }
    let _reaper = KillOnDrop(sandbox);
    let code = wait_exit(sandbox);
    assert_eq!(code, 0, "the sandbox's check number {code} failed");
}

fn unprivileged_forks() -> i32 {
    let unshared = Heap::new();
    let copied = Heap::new();
    let config = Config { mode: Mode::Memfd, ..Config::default() };
    if unshared.init(&config).is_err() || copied.init(&config).is_err() {
        return 20;
    }
    // SAFETY: this (only) thread's caches.
    let (Some(cu), Some(cc)) = (unsafe { unshared.thread_cache() }, unsafe { copied.thread_cache() }) else {
        return 21;
    };
    let mut blocks = [[0usize; 300]; 2];
    let [first, second] = &mut blocks;
    for (heap, cache, list) in [(&unshared, cu, first), (&copied, cc, second)] {
        for (i, p) in list.iter_mut().enumerate() {
            let Some(q) = heap.malloc(Some(cache), size(i)) else { return 22 };
            *p = q.as_ptr() as usize;
            fill(*p, size(i), BEFORE);
        }
    }
    // while still privileged: unshare one heap
    unshared.unshare();
    if segments(&unshared) != [SegmentBacking::PrivateMemfd] || unshared.stats().segments_frozen != 1 {
        return 23;
    }
    // SAFETY: dropping privileges in this single-threaded sandbox.
    if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
        return 24;
    }
    // SAFETY: setuid cleared the parent-death signal: die with the test again.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if mcr_alloc::memfd_reopenable() {
        return 25;
    }
    let (mut up, mut down) = ([0i32; 2], [0i32; 2]);
    // SAFETY: plain pipes.
    if unsafe { libc::pipe(up.as_mut_ptr()) } != 0 || unsafe { libc::pipe(down.as_mut_ptr()) } != 0 {
        return 26;
    }
    unshared.fork_prepare();
    copied.fork_prepare();
    // SAFETY: the grandchild only uses the heaps, raw memory and async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    let (me, other_side) = if pid == 0 {
        // SAFETY: async-signal-safe: die with the sandbox.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        unshared.fork_child(Some(cu));
        copied.fork_child(Some(cc));
        (CHILD, PARENT)
    } else {
        unshared.fork_parent();
        copied.fork_parent();
        (PARENT, CHILD)
    };
    if pid < 0 {
        return 27;
    }
    if unshared.stats().segments_copied != 0 || unshared.stats().segments_frozen != 1 {
        return 28; // nothing was shared any more: nothing to freeze or copy
    }
    if copied.stats().segments_copied != 1 || segments(&copied).first() != Some(&SegmentBacking::Anonymous) {
        return 29;
    }
    // both sides write their copies and allocate fresh spans
    for (heap, cache, list) in [(&unshared, cu, &blocks[0]), (&copied, cc, &blocks[1])] {
        for (i, &p) in list.iter().enumerate() {
            if !holds(p, size(i), BEFORE) {
                return 30;
            }
            fill(p, size(i), me);
        }
        let Some(big) = heap.malloc(Some(cache), 4 << 20) else { return 31 };
        fill(big.as_ptr() as usize, 4 << 20, me);
    }
    // the unshared heap grows in private memory, the copied one in a fresh memfd
    if segments(&unshared) != [SegmentBacking::PrivateMemfd]
        || segments(&copied) != [SegmentBacking::Anonymous, SegmentBacking::SharedMemfd]
    {
        return 32;
    }
    // meet, then check that the other side's writes never showed
    let (tell, wait) = if pid == 0 { (up[1], down[0]) } else { (down[1], up[0]) };
    let mut byte = [0u8];
    // SAFETY: pipe I/O.
    if unsafe { libc::write(tell, [1u8].as_ptr().cast(), 1) } != 1 {
        return 33;
    }
    // SAFETY: pipe I/O.
    if unsafe { libc::read(wait, byte.as_mut_ptr().cast(), 1) } != 1 {
        return 33;
    }
    for list in &blocks {
        for (i, &p) in list.iter().enumerate() {
            if !holds(p, size(i), me) || holds(p, size(i), other_side) {
                return 34;
            }
        }
    }
    if pid == 0 {
        // SAFETY: the grandchild leaves.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child (the sandbox is single-threaded: no sleeping poll needed, the test
    // bounds the whole).
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || !libc::WIFEXITED(status) {
        return 35;
    }
    libc::WEXITSTATUS(status)
}
