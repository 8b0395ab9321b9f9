//! `/proc/PID/maps`: the process's mappings, one [`Mapping`] a line.

use crate::Process;
use std::io;

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
    /// Path (with " (deleted)" when the file was removed), `[heap]`, `[stack]`,
    /// `[anon:name]`..., empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `addr` lies in [start, end).
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The file mapped, for a mapping of a file: its path without the " (deleted)" the
    /// kernel appends once the file was removed or replaced. `None` for anonymous
    /// memory and pseudo-names (`[heap]`, `[vdso]`...).
    pub fn file(&self) -> Option<&str> {
        let p = self.path.as_str();
        p.starts_with('/').then(|| p.strip_suffix(" (deleted)").unwrap_or(p))
    }
}

/// Parse the text of `/proc/PID/maps`; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// One line: `start-end perms offset dev inode [path]`, `None` when malformed.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    // The path is padded to a column with spaces; a name may itself end with spaces.
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let [r, w, x, p, ..] = perms else { return None };
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        readable: *r == b'r',
        writable: *w == b'w',
        executable: *x == b'x',
        private: *p == b'p',
        offset,
        inode,
        path,
    })
}

/// Whether some mapping of process `p` has `needle` in its line (a library's file name):
/// read a page at a time and stopped at the first match, since the kernel formats each
/// line as it is read, and a preloaded library sits near the top of a map of thousands
/// of lines (nginx's heap, dirty tracking's split mappings).
pub fn mentions(p: impl Into<Process>, needle: &str) -> io::Result<bool> {
    use std::io::Read;
    let needle = needle.as_bytes();
    if needle.is_empty() {
        return Ok(true);
    }
    let mut file = std::fs::File::open(p.into().file("maps"))?;
    let mut buf = vec![0u8; 4096 + needle.len()];
    // Bytes kept from the previous read, so a name split across two reads is still seen.
    let mut kept = 0;
    loop {
        let n = file.read(&mut buf[kept..])?;
        if n == 0 {
            return Ok(false);
        }
        let end = kept + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let keep = (needle.len() - 1).min(end);
        buf.copy_within(end - keep..end, 0);
        kept = keep;
    }
}

/// The mappings of process `p`.
pub fn read(p: impl Into<Process>) -> io::Result<Vec<Mapping>> {
    Ok(parse(&crate::read_text(p.into(), "maps")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_finds_a_mapped_file_and_not_an_absent_one() {
        let exe = std::env::current_exe().expect("the test binary");
        let name = exe.file_name().expect("a file name").to_string_lossy().into_owned();
        assert!(mentions(Process::Current, &name).expect("own maps"));
        assert!(mentions(Process::Current, "[stack]").expect("own maps"));
        assert!(!mentions(Process::Current, "no-such-library-mapped-here.so").expect("own maps"));
    }

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234 /srv/kvd
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1234                       /srv/kvd
55d0c0a05000-55d0c0a07000 rw-p 00000000 00:00 0 
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000100000-7f0000101000 rw-s 00000000 00:01 77 /dev/zero (deleted)
7f0000300000-7f0000340000 r-xp 00100000 fd:01 98 /opt/my libs/libx.so
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn lines_parse() {
        let m = parse(MAPS);
        assert_eq!(m.len(), 7);
        assert_eq!(
            m[1],
            Mapping {
                start: 0x55d0c0a01000,
                end: 0x55d0c0a02000,
                readable: true,
                writable: false,
                executable: true,
                private: true,
                offset: 0x1000,
                inode: 1234,
                path: "/srv/kvd".into(),
            }
        );
        assert_eq!((m[2].path.as_str(), m[2].inode, m[2].len()), ("", 0, 0x2000));
        assert!(m[2].writable && !m[2].executable);
        assert_eq!(m[3].path, "[heap]");
        assert!(!m[4].private);
        assert_eq!(m[4].path, "/dev/zero (deleted)");
        assert_eq!(m[4].file(), Some("/dev/zero"));
        assert_eq!(m[5].file(), Some("/opt/my libs/libx.so"), "a path with a space is one path");
        assert_eq!((m[3].file(), m[2].file()), (None, None));
        assert_eq!(m[6].start, 0xffffffffff600000);
        assert!(m[6].executable && !m[6].readable);
        assert!(m[0].contains(0x55d0c0a00000) && m[0].contains(0x55d0c0a00fff) && !m[0].contains(0x55d0c0a01000));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for bad in [
            "",
            "garbage",
            "55d0c0a00000 r--p 00000000 fd:01 1234 /srv/kvd",
            "55d0c0a00000-55d0c0a01000 r- 00000000 fd:01 1234 /srv/kvd",
            "55d0c0a00000-zz r--p 00000000 fd:01 1234 /srv/kvd",
            "55d0c0a00000-55d0c0a01000 r--p 0000000g fd:01 1234 /srv/kvd",
            "55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01",
            "55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 x /srv/kvd",
            "é-é r--p",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&format!("junk\n{MAPS}junk\n")).len(), 7);
    }

    #[test]
    fn reads_own_maps() {
        let here = reads_own_maps as *const () as u64;
        let own = read(Process::Current).unwrap();
        let code = own.iter().find(|m| m.contains(here)).expect("this function is mapped");
        assert!(code.executable && code.file().is_some(), "{code:?}");
    }
}
