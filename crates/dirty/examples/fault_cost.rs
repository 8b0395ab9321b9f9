//! What dirty tracking costs the tracked program: the first write to each page after
//! arming takes a minor fault that the kernel resolves itself. Measures that write
//! against the same write to an untracked page, and the time to arm.

use std::time::Instant;

const PAGE: usize = 4096;
const PAGES: usize = 16384; // 64 MiB

fn populated() -> *mut u8 {
    // SAFETY: fresh private anonymous mapping, populated so no page fault other than the
    // write-protect one is measured.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn write_each_page(p: *mut u8) -> f64 {
    let t = Instant::now();
    for i in 0..PAGES {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(p.add(i * PAGE), 1) };
    }
    t.elapsed().as_nanos() as f64 / PAGES as f64
}

fn main() {
    let tracked = populated();
    let t = Instant::now();
    let report = mcr_dirty::arm::arm_self(None);
    let arm = t.elapsed();
    if report.method != mcr_dirty::Method::UffdWp {
        println!("fault cost: not measured, {}", report.note.unwrap_or_default());
        return;
    }
    let untracked = populated(); // mapped after arming: not tracked
    let first = write_each_page(tracked);
    let second = write_each_page(tracked);
    let plain = write_each_page(untracked);
    println!(
        "first write to a tracked page: {first:.0} ns (a second write {second:.0} ns, an untracked page {plain:.0} ns); arming {} MiB took {:.2} ms",
        report.bytes >> 20,
        arm.as_secs_f64() * 1e3
    );
}
