//! Which mappings of `/proc/PID/maps` dirty tracking covers, and what each one is.

pub use mcr_procfs::maps::{parse, Mapping};

/// What a mapping holds, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingClass {
    /// .data/.bss (and relro) of the program's executable.
    Program,
    /// The brk heap.
    Heap,
    /// Anonymous memory (mmap'd malloc arenas and large blocks, thread stacks, ...).
    Anonymous,
    /// The main thread's stack.
    Stack,
    /// Writable data of shared libraries.
    Library,
    /// The mcr runtime's own data (libmcr.so).
    Runtime,
}

impl MappingClass {
    pub const ALL: [MappingClass; 6] = [
        MappingClass::Program,
        MappingClass::Heap,
        MappingClass::Anonymous,
        MappingClass::Stack,
        MappingClass::Library,
        MappingClass::Runtime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MappingClass::Program => "program",
            MappingClass::Heap => "heap",
            MappingClass::Anonymous => "anonymous",
            MappingClass::Stack => "stack",
            MappingClass::Library => "libraries",
            MappingClass::Runtime => "runtime",
        }
    }
}

/// Whether dirty tracking covers `m`: writable, private, and ordinary memory (not the
/// kernel's [vvar]/[vdso]/[vsyscall] pages, not device memory).
pub fn is_tracked_kind(m: &Mapping) -> bool {
    if !m.writable || !m.private || m.is_empty() {
        return false;
    }
    let p = m.path.as_str();
    if matches!(p, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]" | "[uprobes]") {
        return false;
    }
    !p.starts_with("/dev/") || p.starts_with("/dev/zero")
}

/// A region of mcr's heap backed by a memfd: shared, yet the program's own memory (its
/// used part is tracked like private memory).
pub fn is_mcr_heap(m: &Mapping) -> bool {
    m.path.starts_with("/memfd:mcr-heap")
}

/// Inside mcr's heap window (the allocator's regions, anonymous or memfd).
fn in_heap_window(m: &Mapping) -> bool {
    (mcr_alloc::WINDOW_BASE as u64..mcr_alloc::WINDOW_END as u64).contains(&m.start)
}

/// The class of `m`; `exe` is the program's path, `runtime` libmcr.so's.
pub fn class_of(m: &Mapping, exe: &str, runtime: Option<&str>) -> MappingClass {
    let p = m.path.as_str();
    if p == "[heap]" || (in_heap_window(m) && (p.is_empty() || is_mcr_heap(m))) {
        MappingClass::Heap
    } else if p == "[stack]" {
        MappingClass::Stack
    } else if p.is_empty() || p.starts_with("[anon") || p.starts_with("/dev/zero") || p.starts_with("[") {
        MappingClass::Anonymous
    } else if !exe.is_empty() && p == exe {
        MappingClass::Program
    } else if runtime.is_some_and(|r| r == p) || p.ends_with("/libmcr.so") {
        MappingClass::Runtime
    } else {
        MappingClass::Library
    }
}

/// The class of every mapping. An anonymous mapping that directly follows a file's
/// writable mapping is that file's .bss (the part beyond the file's last page).
pub fn classify_all(maps: &[Mapping], exe: &str, runtime: Option<&str>) -> Vec<MappingClass> {
    let mut out: Vec<MappingClass> = Vec::with_capacity(maps.len());
    for (i, m) in maps.iter().enumerate() {
        let mut c = class_of(m, exe, runtime);
        if m.path.is_empty() && i > 0 {
            let prev = &maps[i - 1];
            if prev.end == m.start && prev.writable && !prev.path.is_empty() && !prev.path.starts_with('[') {
                c = out[i - 1];
            }
        }
        out.push(c);
    }
    out
}

/// The program's .bss pages often share one VMA with the brk heap (both anonymous and
/// adjacent, the kernel merges them): split a `[heap]` mapping at `start_brk` so the part
/// below counts as the program's, as it is.
pub fn split_heap(
    maps: Vec<Mapping>,
    classes: Vec<MappingClass>,
    start_brk: Option<u64>,
) -> Vec<(Mapping, MappingClass)> {
    let mut out = Vec::with_capacity(maps.len() + 1);
    for (m, c) in maps.into_iter().zip(classes) {
        match start_brk {
            Some(b) if c == MappingClass::Heap && m.start < b && b < m.end => {
                let mut low = m.clone();
                low.end = b;
                let mut high = m;
                high.offset += b - high.start;
                high.start = b;
                out.push((low, MappingClass::Program));
                out.push((high, MappingClass::Heap));
            }
            _ => out.push((m, c)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234 /srv/kvd
55d0c0a04000-55d0c0a05000 rw-p 00003000 fd:01 1234 /srv/kvd
55d0c0a05000-55d0c0a07000 rw-p 00000000 00:00 0 
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f0000100000-7f0000101000 rw-s 00000000 00:01 77 /dev/zero (deleted)
7f0000200000-7f0000204000 rw-p 00036000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000300000-7f0000340000 rw-p 00100000 fd:01 98 /opt/mcr/libmcr.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00102000 r--p 00000000 00:00 0                          [vvar]
7ffd00102000-7ffd00104000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_and_classifies() {
        let maps = parse(MAPS);
        assert_eq!(maps.len(), 12);
        let tracked: Vec<&Mapping> = maps.iter().filter(|m| is_tracked_kind(m)).collect();
        assert_eq!(tracked.len(), 7, "{tracked:#?}");
        let classes: Vec<MappingClass> = tracked.iter().map(|m| class_of(m, "/srv/kvd", None)).collect();
        use MappingClass::*;
        assert_eq!(classes, [Program, Anonymous, Heap, Anonymous, Library, Runtime, Stack]);
        assert_eq!(tracked[0].start, 0x55d0c0a04000);
        assert_eq!(tracked[0].offset, 0x3000);
        assert!(!maps[5].private);
        let all = classify_all(&maps, "/srv/kvd", None);
        assert_eq!(all[2], Program, "the anonymous mapping after the program's data is its .bss");
        assert_eq!(all[4], Anonymous);
        let split = split_heap(maps, all, Some(0x55d0c1002000));
        assert_eq!(split.len(), 13);
        assert_eq!((split[3].0.start, split[3].0.end, split[3].1), (0x55d0c1000000, 0x55d0c1002000, Program));
        assert_eq!((split[4].0.start, split[4].0.end, split[4].1), (0x55d0c1002000, 0x55d0c1021000, Heap));
    }
}
