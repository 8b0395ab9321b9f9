//! Reading a process's epoll interests back from /proc (the kernel offers no other way):
//! the drain re-arms edge-triggered listeners from them, and the state transfer
//! re-creates them in the new version with relocated data.

use crate::EpollRegistration;

/// Every interest of every epoll instance of process `pid` ("self" for the caller).
pub fn epoll_registrations(pid: &str) -> Vec<EpollRegistration> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
    for e in dir.flatten() {
        let Some(epfd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]") {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).unwrap_or_default();
        out.extend(info.lines().filter_map(|l| parse_fdinfo_line(epfd, l)));
    }
    out
}

/// `tfd:        5 events:       19 data:     7ffff7a01234  pos:0 ino:2a3 sdev:8`
fn parse_fdinfo_line(epfd: i32, line: &str) -> Option<EpollRegistration> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.first() != Some(&"tfd:") || f.get(2) != Some(&"events:") || f.get(4) != Some(&"data:") {
        return None;
    }
    Some(EpollRegistration {
        epfd,
        fd: f[1].parse().ok()?,
        events: u32::from_str_radix(f[3], 16).ok()?,
        data: u64::from_str_radix(f[5], 16).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_parse() {
        let l = "tfd:        5 events:   80000019 data:     7ffff7a01234  pos:0 ino:2a3 sdev:8";
        assert_eq!(
            parse_fdinfo_line(9, l),
            Some(EpollRegistration { epfd: 9, fd: 5, events: 0x8000_0019, data: 0x7fff_f7a0_1234 })
        );
        assert_eq!(parse_fdinfo_line(9, "pos:\t0"), None);
        assert_eq!(parse_fdinfo_line(9, "flags:\t02"), None);
    }
}
