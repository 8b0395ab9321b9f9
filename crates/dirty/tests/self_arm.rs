//! Arms this test process itself and checks what the kernel then reports, page by page.
//! One test function: arming is once per process.

use mcr_dirty::{arm, sys, written_ranges, Method};

const PAGE: usize = 4096;

fn map_pages(n: usize) -> *mut u8 {
    // SAFETY: fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

fn raw_categories(start: u64, end: u64) -> Vec<(u64, u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut v = vec![sys::page_region { start: 0, end: 0, categories: 0 }; 64];
    let (n, _) = sys::pagemap_scan(f.as_raw_fd(), start, end, 0, 0x7f, &mut v).unwrap();
    v[..n].iter().map(|r| ((r.start - start) / PAGE as u64, (r.end - start) / PAGE as u64, r.categories)).collect()
}

#[test]
fn arming_tracks_writes_page_by_page() {
    const N: usize = 12;
    let buf = map_pages(N);
    // SAFETY: all accesses below stay inside the N pages mapped above.
    unsafe {
        for i in [0usize, 1, 2, 3, 4] {
            *buf.add(i * PAGE) = 7; // populated before arming
        }
        let report = arm::arm_self(None);
        eprintln!("{report:?}");
        if report.method != Method::UffdWp {
            eprintln!("skipped: this kernel cannot arm uffd-wp");
            return;
        }
        *buf.add(0) = 8; // written after arming
        let _ = std::ptr::read_volatile(buf.add(PAGE)); // read only
        libc::madvise(buf.add(3 * PAGE).cast(), PAGE, libc::MADV_DONTNEED); // zapped
        *buf.add(6 * PAGE) = 1; // unpopulated at arming, written after
        let _ = std::ptr::read_volatile(buf.add(7 * PAGE)); // unpopulated, read after
                                                            // A kernel-mode write (read(2) into a protected page) must succeed.
        let mut fds = [0; 2];
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        assert_eq!(libc::write(fds[1], b"hello".as_ptr().cast(), 5), 5);
        assert_eq!(
            libc::read(fds[0], buf.add(8 * PAGE).cast(), 5),
            5,
            "read into a write-protected page: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(*buf.add(8 * PAGE), b'h');
        let start = buf as u64;
        eprintln!("categories (first page, end page, bits): {:x?}", raw_categories(start, start + (N * PAGE) as u64));
        let map = written_ranges(std::process::id() as i32).unwrap();
        let dirty: Vec<bool> = (0..N).map(|i| map.is_dirty(start + (i * PAGE) as u64, 1)).collect();
        eprintln!("dirty per page: {dirty:?}");
        assert!(dirty[0], "written after arming");
        assert!(!dirty[1], "only read");
        assert!(!dirty[2], "untouched after arming");
        assert!(dirty[3], "zapped by MADV_DONTNEED after arming: now zeros");
        assert!(!dirty[5], "never populated");
        assert!(dirty[6], "populated by a write after arming");
        assert!(!dirty[7], "populated by a read after arming");
        assert!(dirty[8], "written by the kernel (read(2))");
        assert!(!dirty[9]);
        // Memory mapped after arming is dirty by definition.
        let late = map_pages(2);
        *late = 1; // populated: untracked pages count only when they hold data
        let map = written_ranges(std::process::id() as i32).unwrap();
        assert!(map.is_dirty(late as u64, 1), "a mapping created after arming is untracked");
        let c = map.counts();
        eprintln!("whole process: {c:?}");
        assert!(c.tracked > 0 && c.written > 0 && c.untracked > 0);
    }
}
