//! `/proc/PID/maps`: which mappings dirty tracking covers, and what each one is.

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// `p` (private, copy-on-write) rather than `s` (shared).
    pub private: bool,
    pub offset: u64,
    pub inode: u64,
    /// Path, `[heap]`, `[stack]`, `[anon:name]`..., empty for anonymous memory.
    pub path: String,
}

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

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether dirty tracking covers it: writable, private, and ordinary memory (not
    /// the kernel's [vvar]/[vdso]/[vsyscall] pages, not device memory).
    pub fn is_tracked_kind(&self) -> bool {
        if !self.writable || !self.private || self.is_empty() {
            return false;
        }
        let p = self.path.as_str();
        if matches!(p, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]" | "[uprobes]") {
            return false;
        }
        !p.starts_with("/dev/") || p.starts_with("/dev/zero")
    }

    /// The mapping's class; `exe` is the program's path, `runtime` libmcr.so's.
    pub fn class(&self, exe: &str, runtime: Option<&str>) -> MappingClass {
        let p = self.path.as_str();
        if p == "[heap]" {
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
}

/// The class of every mapping. An anonymous mapping that directly follows a file's
/// writable mapping is that file's .bss (the part beyond the file's last page).
pub fn classify_all(maps: &[Mapping], exe: &str, runtime: Option<&str>) -> Vec<MappingClass> {
    let mut out: Vec<MappingClass> = Vec::with_capacity(maps.len());
    for (i, m) in maps.iter().enumerate() {
        let mut c = m.class(exe, runtime);
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

/// `start_brk` from the text of `/proc/PID/stat` (field 47; 0 without ptrace access).
pub fn start_brk(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(44).and_then(|f| f.parse().ok()).filter(|&b| b != 0)
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

/// Parse the text of `/proc/PID/maps`; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        private: perms[3] == b'p',
        offset,
        inode,
        path,
    })
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
        let tracked: Vec<&Mapping> = maps.iter().filter(|m| m.is_tracked_kind()).collect();
        assert_eq!(tracked.len(), 7, "{tracked:#?}");
        let classes: Vec<MappingClass> = tracked.iter().map(|m| m.class("/srv/kvd", None)).collect();
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

    #[test]
    fn start_brk_from_stat() {
        let stat = "2 (kvd (x)) S 1 2 2 0 -1 4194560 99 0 0 0 0 0 0 0 20 0 1 0 4087 6787072 418 18446744073709551615 93824992231424 93824992239177 140737488346704 0 0 0 0 4096 16384 1 0 0 17 0 0 0 0 0 0 93824992247152 93824992248352 93824992260096 140737488347835 140737488347860 140737488347860 140737488351193 0\n";
        assert_eq!(start_brk(stat), Some(93824992260096));
    }
}
