//! mcr-alloc against glibc's malloc, interleaved in one run.
//!
//! `cargo run --release -p mcr-alloc --example allocbench [ROTATIONS]` runs, ROTATIONS times
//! (default 7), each workload once per allocator in alternating order, every measurement
//! in a fresh process (this binary re-executed), and prints per workload the median ratio
//! mcr-alloc / glibc with its range:
//!
//! * `st`: mcr's bench/allocbench.c workload (40 rounds of a 20 000-key chained hash table
//!   of heap strings: build, grow a quarter of the values with realloc, read every key,
//!   replace every other node, free everything; sizes 16 B to ~4 KiB), one thread;
//! * `mt2`: the same in 2 threads (20 rounds each), each freeing its own tables;
//! * `mt2x`: 2 threads, each table freed by the other thread (cross-thread frees);
//! * `kv100k`, `kv1m`: resident memory after filling a kvd-like store (a 32-byte node from
//!   calloc, a `k:N` key and a 17-byte value from strdup) with 100 000 / 1 000 000 keys:
//!   VmRSS of the process, and its growth during the fill.
//!
//! Times are the process's CPU time for the timed part (not wall time: the machine may be
//! shared). mcr-alloc runs in memfd mode with a thread cache per thread, called through an
//! `extern "C"` function that is never inlined, as the runtime's exported malloc will be.

use mcr_alloc::{Config, Heap, Mode, ThreadCache};
use std::cell::Cell;
use std::process::Command;
use std::sync::{Barrier, Mutex};

static HEAP: Heap = Heap::new();

thread_local! {
    static CACHE: Cell<Option<&'static ThreadCache>> = const { Cell::new(None) };
}

fn cache() -> Option<&'static ThreadCache> {
    CACHE.with(|c| {
        if c.get().is_none() {
            // SAFETY: one cache per thread, used only by it, never from a signal handler.
            c.set(unsafe { HEAP.thread_cache() });
        }
        c.get()
    })
}

#[inline(never)]
extern "C" fn mcr_malloc(n: usize) -> *mut u8 {
    HEAP.malloc(cache(), n).map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

#[inline(never)]
extern "C" fn mcr_calloc(n: usize, m: usize) -> *mut u8 {
    HEAP.calloc(cache(), n, m).map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

#[inline(never)]
extern "C" fn mcr_realloc(p: *mut u8, n: usize) -> *mut u8 {
    // SAFETY: the benchmark reallocates its own live blocks.
    unsafe { HEAP.realloc(cache(), p, n) }.map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

#[inline(never)]
extern "C" fn mcr_free(p: *mut u8) {
    // SAFETY: the benchmark frees its own live blocks once.
    unsafe { HEAP.free(cache(), p) }
}

trait Alloc: Sync {
    fn malloc(&self, n: usize) -> *mut u8;
    fn calloc(&self, n: usize, m: usize) -> *mut u8;
    fn realloc(&self, p: *mut u8, n: usize) -> *mut u8;
    fn free(&self, p: *mut u8);
}

struct Glibc;
impl Alloc for Glibc {
    fn malloc(&self, n: usize) -> *mut u8 {
        // SAFETY: plain libc calls.
        unsafe { libc::malloc(n).cast() }
    }
    fn calloc(&self, n: usize, m: usize) -> *mut u8 {
        // SAFETY: plain libc calls.
        unsafe { libc::calloc(n, m).cast() }
    }
    fn realloc(&self, p: *mut u8, n: usize) -> *mut u8 {
        // SAFETY: plain libc calls on our own blocks.
        unsafe { libc::realloc(p.cast(), n).cast() }
    }
    fn free(&self, p: *mut u8) {
        // SAFETY: plain libc calls on our own blocks.
        unsafe { libc::free(p.cast()) }
    }
}

struct Mcr;
impl Alloc for Mcr {
    fn malloc(&self, n: usize) -> *mut u8 {
        mcr_malloc(n)
    }
    fn calloc(&self, n: usize, m: usize) -> *mut u8 {
        mcr_calloc(n, m)
    }
    fn realloc(&self, p: *mut u8, n: usize) -> *mut u8 {
        mcr_realloc(p, n)
    }
    fn free(&self, p: *mut u8) {
        mcr_free(p)
    }
}

/// `struct node { char *key; char *val; size_t vlen; struct node *next; }` of allocbench.c.
#[repr(C)]
struct Node {
    key: *mut u8,
    val: *mut u8,
    vlen: usize,
    next: *mut Node,
}

fn hash(mut s: *const u8) -> u32 {
    let mut h = 2166136261u32;
    // SAFETY: NUL-terminated strings the benchmark built.
    unsafe {
        while *s != 0 {
            h = (h ^ u32::from(*s)).wrapping_mul(16777619);
            s = s.add(1);
        }
    }
    h
}

fn strlen(s: *const u8) -> usize {
    // SAFETY: NUL-terminated strings the benchmark built.
    unsafe { libc::strlen(s.cast()) }
}

fn strdup<A: Alloc>(a: &A, s: *const u8) -> *mut u8 {
    let n = strlen(s) + 1;
    let p = a.malloc(n);
    assert!(!p.is_null());
    // SAFETY: both hold n bytes.
    unsafe { core::ptr::copy_nonoverlapping(s, p, n) };
    p
}

/// Decimal digits of `v` at the end of `tmp`; returns them.
fn decimal(v: usize, tmp: &mut [u8; 20]) -> &[u8] {
    let mut at = tmp.len();
    let mut v = v;
    loop {
        at -= 1;
        tmp[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &tmp[at..];
        }
    }
}

/// "k%d-%0*d" of allocbench.c into `buf`, NUL-terminated (no allocation: both heaps see
/// only the workload's own calls).
fn key(buf: &mut [u8; 512], i: usize, width: usize, r: usize) {
    let mut tmp = [0u8; 20];
    let mut at = 0;
    buf[at] = b'k';
    at += 1;
    for &d in decimal(i, &mut tmp) {
        buf[at] = d;
        at += 1;
    }
    buf[at] = b'-';
    at += 1;
    let digits = decimal(r, &mut tmp);
    for _ in digits.len()..width {
        buf[at] = b'0';
        at += 1;
    }
    for &d in digits {
        buf[at] = d;
        at += 1;
    }
    buf[at] = 0;
}

fn build<A: Alloc>(a: &A, n: usize, nb: usize, r: usize, rng: &mut u64) -> *mut *mut Node {
    let tab = a.calloc(nb, 8) as *mut *mut Node;
    assert!(!tab.is_null());
    let mut buf = [0u8; 512];
    for i in 0..n {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let klen = 4 + (*rng % 40) as usize;
        let vlen = 8 + ((*rng >> 8) % 200) as usize;
        key(&mut buf, i, klen, r);
        let e = a.malloc(core::mem::size_of::<Node>()) as *mut Node;
        assert!(!e.is_null());
        // SAFETY: fresh blocks of the right sizes.
        unsafe {
            (*e).key = strdup(a, buf.as_ptr());
            (*e).val = a.malloc(vlen);
            assert!(!(*e).val.is_null());
            core::ptr::write_bytes((*e).val, b'a' + (i % 26) as u8, vlen - 1);
            *(*e).val.add(vlen - 1) = 0;
            (*e).vlen = vlen;
            let b = hash((*e).key) as usize & (nb - 1);
            (*e).next = *tab.add(b);
            *tab.add(b) = e;
        }
    }
    tab
}

fn grow_and_replace<A: Alloc>(a: &A, tab: *mut *mut Node, nb: usize) -> u64 {
    let mut sum = 0u64;
    // SAFETY: the whole function walks the table and nodes this benchmark built.
    unsafe {
        for b in 0..nb {
            let mut e = *tab.add(b);
            while !e.is_null() {
                if hash((*e).key) & 3 == 0 {
                    let nl = (*e).vlen * 2 + 16;
                    let v = a.realloc((*e).val, nl);
                    assert!(!v.is_null());
                    core::ptr::write_bytes(v.add((*e).vlen - 1), b'z', nl - (*e).vlen);
                    *v.add(nl - 1) = 0;
                    (*e).val = v;
                    (*e).vlen = nl;
                }
                sum += strlen((*e).val) as u64 + u64::from(*(*e).key.add(1));
                e = (*e).next;
            }
        }
        for b in 0..nb {
            let mut pp = tab.add(b);
            let mut k = 0;
            while !(*pp).is_null() {
                let mut e = *pp;
                if k & 1 == 1 {
                    let c = a.malloc(core::mem::size_of::<Node>()) as *mut Node;
                    assert!(!c.is_null());
                    (*c).key = strdup(a, (*e).key);
                    (*c).val = strdup(a, (*e).val);
                    (*c).vlen = (*e).vlen;
                    (*c).next = (*e).next;
                    *pp = c;
                    a.free((*e).key);
                    a.free((*e).val);
                    a.free(e as *mut u8);
                    e = c;
                }
                k += 1;
                pp = &mut (*e).next;
            }
        }
    }
    sum
}

fn free_table<A: Alloc>(a: &A, tab: *mut *mut Node, nb: usize) -> u64 {
    let mut sum = 0u64;
    // SAFETY: the table and nodes this benchmark built.
    unsafe {
        for b in 0..nb {
            let mut e = *tab.add(b);
            while !e.is_null() {
                let next = (*e).next;
                sum += (*e).vlen as u64;
                a.free((*e).key);
                a.free((*e).val);
                a.free(e as *mut u8);
                e = next;
            }
        }
    }
    a.free(tab as *mut u8);
    sum
}

fn buckets(n: usize) -> usize {
    let mut nb = 1;
    while nb < n / 2 {
        nb <<= 1;
    }
    nb
}

/// allocbench.c: ROUNDS rounds of N keys in one thread.
fn allocbench<A: Alloc>(a: &A, rounds: usize, n: usize, seed: u64) -> u64 {
    let nb = buckets(n);
    let mut rng = 88172645463325252u64 ^ seed;
    let mut sum = 0;
    for r in 0..rounds {
        let tab = build(a, n, nb, r, &mut rng);
        sum += grow_and_replace(a, tab, nb);
        sum += free_table(a, tab, nb);
    }
    sum
}

/// T threads; with `cross`, each round's table is freed by the next thread.
fn allocbench_mt<A: Alloc>(a: &A, threads: usize, rounds: usize, n: usize, cross: bool) -> u64 {
    let nb = buckets(n);
    let barrier = Barrier::new(threads);
    let handoff: Vec<Mutex<usize>> = (0..threads).map(|_| Mutex::new(0)).collect();
    let total = Mutex::new(0u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, handoff, total) = (&barrier, &handoff, &total);
            s.spawn(move || {
                let mut rng = 88172645463325252u64 + t as u64;
                let mut sum = 0;
                for r in 0..rounds {
                    let tab = build(a, n, nb, r, &mut rng);
                    sum += grow_and_replace(a, tab, nb);
                    if cross {
                        *handoff[t].lock().unwrap() = tab as usize;
                        barrier.wait();
                        let other = std::mem::take(&mut *handoff[(t + 1) % threads].lock().unwrap());
                        sum += free_table(a, other as *mut *mut Node, nb);
                        barrier.wait();
                    } else {
                        sum += free_table(a, tab, nb);
                    }
                }
                *total.lock().unwrap() += sum;
            });
        }
    });
    total.into_inner().unwrap()
}

/// kvd's heap: a 32-byte node from calloc, key and value from strdup.
fn kvfill<A: Alloc>(a: &A, n: usize) -> Vec<*mut u8> {
    let mut nodes = Vec::with_capacity(n);
    let mut key = [0u8; 32];
    let mut val = [0u8; 17];
    for i in 0..n {
        let mut tmp = [0u8; 20];
        let digits = decimal(i, &mut tmp);
        key[..2].copy_from_slice(b"k:");
        key[2..2 + digits.len()].copy_from_slice(digits);
        key[2 + digits.len()] = 0;
        let v = (i as u64).wrapping_mul(2654435761);
        for (k, b) in val[..16].iter_mut().enumerate() {
            *b = b"0123456789abcdef"[(v >> (60 - 4 * k) & 15) as usize];
        }
        val[16] = 0;
        let node = a.calloc(1, 32);
        assert!(!node.is_null());
        // SAFETY: a fresh 32-byte node.
        unsafe {
            *(node as *mut *mut u8) = strdup(a, key.as_ptr());
            *(node.add(8) as *mut *mut u8) = strdup(a, val.as_ptr());
        }
        nodes.push(node);
    }
    nodes
}

fn cpu_ms() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one measurement in this process and prints `value [extra]`.
fn child<A: Alloc>(a: &A, workload: &str) {
    let sum;
    match workload {
        "st" | "mt2" | "mt2x" => {
            let t0 = cpu_ms();
            sum = match workload {
                "st" => allocbench(a, 40, 20_000, 0),
                "mt2" => allocbench_mt(a, 2, 20, 20_000, false),
                _ => allocbench_mt(a, 2, 20, 20_000, true),
            };
            println!("{:.3} {sum}", cpu_ms() - t0);
        }
        kv => {
            let n = if kv == "kv1m" { 1_000_000 } else { 100_000 };
            let before = rss_kb();
            let nodes = kvfill(a, n);
            let after = rss_kb();
            println!("{after} {}", after - before);
            std::hint::black_box(nodes);
        }
    }
}

fn measure(variant: &str, workload: &str) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().unwrap()).args(["--child", variant, workload]).output().unwrap();
    assert!(out.status.success(), "{variant} {workload}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace().map(|w| w.parse::<f64>().unwrap_or(0.0));
    (words.next().unwrap(), words.next().unwrap_or(0.0))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (variant, workload) = (args[2].as_str(), args[3].as_str());
        if variant == "mcr" {
            HEAP.init(&Config { mode: Mode::Memfd, ..Config::default() }).unwrap();
            child(&Mcr, workload);
        } else {
            child(&Glibc, workload);
        }
        return;
    }
    let rotations: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let workloads = ["st", "mt2", "mt2x", "kv100k", "kv1m"];
    println!("mcr-alloc / glibc, {rotations} rotations, each run in a fresh process, variants alternating");
    println!(
        "{:<8} {:>14} {:>14} {:>22} {:>16}",
        "workload", "glibc", "mcr-alloc", "ratio median (range)", "growth ratio"
    );
    for w in workloads {
        let (mut g, mut m, mut ratios, mut growth) = (vec![], vec![], vec![], vec![]);
        for r in 0..rotations {
            let order: [&str; 2] = if r % 2 == 0 { ["glibc", "mcr"] } else { ["mcr", "glibc"] };
            let mut got = [(0.0, 0.0); 2];
            for v in order {
                got[usize::from(v == "mcr")] = measure(v, w);
            }
            g.push(got[0].0);
            m.push(got[1].0);
            ratios.push(got[1].0 / got[0].0);
            if w.starts_with("kv") {
                growth.push(got[1].1 / got[0].1);
            }
        }
        let unit = if w.starts_with("kv") { "kB RSS" } else { "ms CPU" };
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let growth = if growth.is_empty() { String::from("-") } else { format!("{:.3}", median(&mut growth)) };
        println!(
            "{w:<8} {:>8.0} {unit} {:>8.0} {unit} {:>8.3} ({lo:.3}-{hi:.3}) {growth:>16}",
            median(&mut g),
            median(&mut m),
            median(&mut ratios)
        );
    }
}
