//! Several threads allocate, reallocate and free blocks of random sizes, hand blocks to each
//! other to free, and check that no block ever loses a byte: each block holds a pattern of
//! its own that is verified before every realloc and free, so any two live blocks that
//! overlapped would corrupt each other's pattern.

use mcr_alloc::{Config, Heap, Mode, ThreadCache};
use std::sync::Mutex;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    len: usize,
    seed: u64,
}

fn byte(b: &Block, i: usize) -> u8 {
    (b.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 / 8) >> 24) as u8
}

fn write(b: &Block) {
    // SAFETY: a live block of at least `len` bytes owned by the calling thread.
    let bytes = unsafe { std::slice::from_raw_parts_mut(b.addr as *mut u8, b.len) };
    for (i, v) in bytes.iter_mut().enumerate() {
        *v = byte(b, i);
    }
}

fn verify(b: &Block, what: &str) {
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(b.addr as *const u8, b.len) };
    if let Some(i) = bytes.iter().enumerate().position(|(i, &v)| v != byte(b, i)) {
        panic!("{what}: block {:#x} ({} bytes) byte {i} was overwritten", b.addr, b.len);
    }
}

fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=69 => 1 + rng.below(512) as usize,
        70..=89 => 512 + rng.below(3584) as usize,
        90..=96 => 4096 + rng.below(60_000) as usize,
        _ => 65_536 + rng.below(500_000) as usize,
    }
}

fn worker(heap: &Heap, t: u64, ops: usize, mailbox: &[Mutex<Vec<Block>>]) {
    // SAFETY: this thread's own cache, not shared, never re-entered.
    let own = unsafe { heap.thread_cache() }.expect("a thread cache");
    let mut rng = Rng(0x5eed_0000 + t * 7919);
    let mut live: Vec<Block> = Vec::new();
    let threads = mailbox.len() as u64;
    for op in 0..ops {
        // a tenth of the calls take the shared path, as a thread without a cache would
        let cache: Option<&ThreadCache> = if rng.below(10) == 0 { None } else { Some(own) };
        let seed = (t << 48) | op as u64;
        match rng.below(100) {
            0..=44 => {
                let len = size(&mut rng);
                let p = match rng.below(20) {
                    0 => heap.calloc(cache, 1, len),
                    1 => heap.memalign(cache, 1 << (5 + rng.below(12)), len),
                    _ => heap.malloc(cache, len),
                }
                .expect("out of memory")
                .as_ptr() as usize;
                let (start, usable) = heap.block_of(p).expect("a new block is live");
                assert!(start <= p && p + len <= start + usable);
                let b = Block { addr: p, len, seed };
                write(&b);
                live.push(b);
            }
            45..=74 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                verify(&b, "before free");
                // SAFETY: a live block this thread owns, freed once.
                unsafe { heap.free(cache, b.addr as *mut u8) };
            }
            75..=84 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let b = live[i];
                verify(&b, "before realloc");
                let len = size(&mut rng);
                // SAFETY: as above.
                let p =
                    unsafe { heap.realloc(cache, b.addr as *mut u8, len) }.expect("out of memory").as_ptr() as usize;
                let kept = Block { addr: p, len: b.len.min(len), seed: b.seed };
                verify(&kept, "after realloc");
                let nb = Block { addr: p, len, seed };
                write(&nb);
                live[i] = nb;
            }
            85..=94 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                let to = (t + 1 + rng.below(threads - 1)) % threads;
                mailbox[to as usize].lock().unwrap().push(b);
            }
            _ => {
                let mine = std::mem::take(&mut *mailbox[t as usize].lock().unwrap());
                for b in mine {
                    verify(&b, "before a cross-thread free");
                    // SAFETY: handed over by its owner, freed once.
                    unsafe { heap.free(cache, b.addr as *mut u8) };
                }
            }
        }
    }
    for b in live {
        verify(&b, "at the end");
        // SAFETY: as above.
        unsafe { heap.free(Some(own), b.addr as *mut u8) };
    }
    heap.release_thread_cache(own);
}

fn stress(mode: Mode) {
    let heap = Box::new(Heap::new());
    heap.init(&Config { mode, ..Config::default() }).unwrap();
    let threads = 4;
    let mailbox: Vec<Mutex<Vec<Block>>> = (0..threads).map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (heap, mailbox) = (&*heap, &mailbox[..]);
            s.spawn(move || worker(heap, t as u64, 60_000, mailbox));
        }
    });
    for m in &mailbox {
        for b in m.lock().unwrap().drain(..) {
            verify(&b, "left in a mailbox");
            // SAFETY: as above.
            unsafe { heap.free(None, b.addr as *mut u8) };
        }
    }
    // the shared cache still parks blocks; everything else went back
    let own = heap.own_slot().unwrap();
    let mut live = 0;
    heap.visit(own, |_, _| live += 1);
    assert!(live <= (mcr_alloc::class::CLASSES * mcr_alloc::class::BIN_CAPACITY), "{live} blocks leaked");
}

#[test]
fn threads_with_cross_thread_frees_memfd() {
    stress(Mode::Memfd);
}

#[test]
fn threads_with_cross_thread_frees_anonymous() {
    stress(Mode::Anonymous);
}
