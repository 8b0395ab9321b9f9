//! Listing a /proc directory of numbered entries (descriptors, threads) with raw
//! `getdents64`. std's `read_dir` goes through libc's `opendir`, whose buffer comes from
//! `malloc`: the program's heap, which the runtime must leave as the program made it (a
//! quiesced process's heap is what an update reads, and the program must not find its
//! blocks reused by the runtime's work; listings made during an update broke vsftpd's
//! when the update read the heap after them).

use std::ffi::CStr;

/// Bytes of directory records read at a time (the runtime's own memory).
const BUF: usize = 4096;

/// The entries of directory `path` whose names are numbers, without the descriptor this
/// used to read it; empty when it cannot be read.
pub fn numbers(path: &CStr) -> Vec<i32> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: openat of a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe { crate::sys!(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags) } as i32;
    if fd < 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; BUF];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`, a live buffer.
        let n = unsafe { crate::sys!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        let Some(records) = usize::try_from(n).ok().filter(|&n| n > 0).and_then(|n| buf.get(..n)) else { break };
        parse(records, &mut out);
    }
    // SAFETY: the descriptor opened above, used by nothing else.
    unsafe { crate::rawfd::close(fd) };
    out.retain(|&e| e != fd);
    out
}

/// The numeric names among `linux_dirent64` records (`d_ino` u64, `d_off` i64, `d_reclen`
/// u16, `d_type` u8, then the NUL-terminated name).
fn parse(records: &[u8], out: &mut Vec<i32>) {
    const NAME: usize = 19;
    let mut at = 0;
    while let Some(len) = records.get(at + 16..at + 18).map(|b| usize::from(u16::from_ne_bytes([b[0], b[1]]))) {
        let Some(name) = records.get(at + NAME..at + len).filter(|_| len > NAME) else { break };
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(n) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Vec<u8> {
        let len = (19 + name.len() + 1).next_multiple_of(8);
        let mut r = vec![0u8; len];
        r[16..18].copy_from_slice(&(len as u16).to_ne_bytes());
        r[19..19 + name.len()].copy_from_slice(name.as_bytes());
        r
    }

    #[test]
    fn numeric_names_are_parsed_and_others_skipped() {
        let mut records = Vec::new();
        for n in [".", "..", "0", "17", "x1", "123456"] {
            records.extend(record(n));
        }
        let mut out = Vec::new();
        parse(&records, &mut out);
        assert_eq!(out, [0, 17, 123456]);
        let mut cut = Vec::new();
        parse(&records[..records.len() - 3], &mut cut);
        assert_eq!(cut, [0, 17], "a truncated record is not read");
    }

    #[test]
    fn the_descriptors_of_this_process_are_listed_without_the_listing_one() {
        let fds = numbers(c"/proc/self/fd");
        assert!([0, 1, 2].iter().all(|fd| fds.contains(fd)), "{fds:?}");
        // SAFETY: dup of stdin; the copy is closed below.
        let copy = unsafe { libc::dup(0) };
        let with = numbers(c"/proc/self/fd");
        // SAFETY: the copy made above.
        unsafe { libc::close(copy) };
        assert!(with.contains(&copy) && !numbers(c"/proc/self/fd").contains(&copy));
        assert!(numbers(c"/nonexistent").is_empty());
    }
}
