//! `/proc/PID/fd` and `/proc/PID/fdinfo`: a process's open descriptors, what each is,
//! and the kernel's view of each (file position, open flags, an epoll instance's
//! interests: the kernel offers no other way to read those back).

use crate::Process;
use std::io;
use std::path::PathBuf;

/// What `fd/N` links to for an epoll instance.
pub const EPOLL_TARGET: &str = "anon_inode:[eventpoll]";

/// The open descriptors of process `p`, sorted. Listing its own descriptors, a process
/// also sees the one the listing itself uses (closed again when this returns).
pub fn list(p: impl Into<Process>) -> io::Result<Vec<i32>> {
    crate::numeric_entries(&p.into().file("fd"))
}

/// What descriptor `fd` of `p` is: a path, `socket:[INODE]`, `pipe:[INODE]`,
/// `anon_inode:[eventpoll]`...
pub fn target(p: impl Into<Process>, fd: i32) -> io::Result<PathBuf> {
    std::fs::read_link(p.into().file(&format!("fd/{fd}")))
}

/// Whether `p` has descriptor `fd` open.
pub fn is_open(p: impl Into<Process>, fd: i32) -> bool {
    p.into().file(&format!("fd/{fd}")).exists()
}

/// Every open descriptor of `p` with what it is ([`target`]; empty when it closed in
/// between).
pub fn list_with_targets(p: impl Into<Process>) -> io::Result<Vec<(i32, String)>> {
    let p = p.into();
    Ok(list(p)?
        .into_iter()
        .map(|fd| (fd, target(p, fd).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()))
        .collect())
}

/// The epoll instances among `p`'s descriptors.
pub fn epoll_instances(p: impl Into<Process>) -> io::Result<Vec<i32>> {
    let p = p.into();
    Ok(list(p)?.into_iter().filter(|&fd| target(p, fd).is_ok_and(|t| t.as_os_str() == EPOLL_TARGET)).collect())
}

/// One interest of an epoll instance, from a `tfd:` line of its fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollInterest {
    /// The descriptor watched (its number in the process that registered it).
    pub fd: i32,
    /// The event mask (EPOLLIN, EPOLLET...).
    pub events: u32,
    /// The registration's user data.
    pub data: u64,
}

/// What `fdinfo/N` says of a descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// The file position.
    pub pos: Option<u64>,
    /// The open flags (O_NONBLOCK, O_APPEND, O_CLOEXEC as the kernel keeps it...).
    pub flags: Option<u32>,
    /// For an epoll instance: its interests.
    pub epoll: Vec<EpollInterest>,
    /// For a signalfd: the signals it reads (bit n-1 for signal n).
    pub sigmask: Option<u64>,
    /// The mount the file is on (an ID of the process's mountinfo).
    pub mnt_id: Option<u64>,
    /// How many locks (flock, OFD, lease) are held through this open file description.
    pub locks: usize,
}

impl FdInfo {
    /// Parse an fdinfo text; unknown or malformed lines are left out.
    pub fn parse(text: &str) -> FdInfo {
        let mut info = FdInfo::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("pos:") {
                info.pos = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("flags:") {
                info.flags = u32::from_str_radix(v.trim(), 8).ok();
            } else if let Some(v) = line.strip_prefix("mnt_id:") {
                info.mnt_id = v.trim().parse().ok();
            } else if line.starts_with("lock:") {
                info.locks += 1;
            } else if let Some(v) = line.strip_prefix("sigmask:") {
                info.sigmask = u64::from_str_radix(v.trim(), 16).ok();
            } else if let Some(i) = parse_epoll_line(line) {
                info.epoll.push(i);
            }
        }
        info
    }
}

/// `tfd:        5 events:       19 data:     7ffff7a01234  pos:0 ino:2a3 sdev:8`
fn parse_epoll_line(line: &str) -> Option<EpollInterest> {
    let mut f = line.split_whitespace();
    if f.next()? != "tfd:" {
        return None;
    }
    let fd = f.next()?.parse().ok()?;
    if f.next()? != "events:" {
        return None;
    }
    let events = u32::from_str_radix(f.next()?, 16).ok()?;
    if f.next()? != "data:" {
        return None;
    }
    let data = u64::from_str_radix(f.next()?, 16).ok()?;
    Some(EpollInterest { fd, events, data })
}

/// The fdinfo of descriptor `fd` of `p`.
pub fn info(p: impl Into<Process>, fd: i32) -> io::Result<FdInfo> {
    Ok(FdInfo::parse(&crate::read_text(p.into(), &format!("fdinfo/{fd}"))?))
}

/// Every interest of every epoll instance of `p`, with the instance's descriptor.
pub fn epoll_interests(p: impl Into<Process>) -> Vec<(i32, EpollInterest)> {
    let p = p.into();
    let instances = epoll_instances(p).unwrap_or_default();
    instances
        .into_iter()
        .flat_map(|epfd| info(p, epfd).unwrap_or_default().epoll.into_iter().map(move |i| (epfd, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fdinfo_of_a_file_and_of_an_epoll_instance() {
        let file = FdInfo::parse(
            "pos:\t4096\nflags:\t02004002\nmnt_id:\t15\nino:\t1234\nlock:\t1: FLOCK  ADVISORY  WRITE 77 00:2d:1234 0 EOF\n",
        );
        assert_eq!(
            file,
            FdInfo {
                pos: Some(4096),
                flags: Some(0o2004002),
                epoll: vec![],
                sigmask: None,
                mnt_id: Some(15),
                locks: 1
            }
        );
        let sfd = FdInfo::parse("pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\nsigmask:\t0000000000000200\n");
        assert_eq!(sfd.sigmask, Some(0x200));
        let ep = FdInfo::parse(
            "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
             tfd:        5 events:   80000019 data:     7ffff7a01234  pos:0 ino:2a3 sdev:8\n\
             tfd:       12 events:       19 data:                c  pos:0 ino:2b0 sdev:8\n",
        );
        assert_eq!(
            ep.epoll,
            [
                EpollInterest { fd: 5, events: 0x8000_0019, data: 0x7fff_f7a0_1234 },
                EpollInterest { fd: 12, events: 0x19, data: 0xc }
            ]
        );
        assert_eq!((ep.pos, ep.flags), (Some(0), Some(0o2)));
    }

    #[test]
    fn malformed_fdinfo_lines_are_left_out() {
        for bad in [
            "tfd:",
            "tfd: x events: 19 data: c",
            "tfd: 5 event: 19 data: c",
            "tfd: 5 events: zz data: c",
            "tfd: 5 events: 19 dat: c",
            "tfd: 5 events: 19 data:",
            "pos:\t0",
            "flags:\t02",
        ] {
            assert_eq!(parse_epoll_line(bad), None, "{bad:?}");
        }
        assert_eq!(FdInfo::parse("pos:\tx\nflags:\t9\n"), FdInfo::default(), "9 is not octal");
    }

    #[test]
    fn own_descriptors_and_epoll_interests() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        assert!(list(crate::Process::Current).unwrap().contains(&fd));
        assert!(is_open(crate::Process::Current, fd));
        assert_eq!(
            target(crate::Process::Current, fd).unwrap().to_string_lossy(),
            format!("/proc/{}/status", std::process::id())
        );
        let flags = info(crate::Process::Current, fd).unwrap().flags.unwrap();
        assert_eq!(flags & 0o3, 0, "opened read-only: {flags:o}");
        // Not the number just closed: a test running beside this one may get it at once.
        assert!(!is_open(crate::Process::Current, 1 << 20));
    }

    #[test]
    fn own_epoll_interests() {
        let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // SAFETY: plain system calls on descriptors this test owns; `ev` outlives the call.
        let epfd = unsafe {
            let epfd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(epfd >= 0);
            let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0xfeed_beef_0042 };
            assert_eq!(libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev), 0);
            epfd
        };
        let asked = (libc::EPOLLIN | libc::EPOLLET) as u32;
        assert!(epoll_instances(crate::Process::Current).unwrap().contains(&epfd));
        for p in [crate::Process::Current, crate::Process::Pid(std::process::id() as i32)] {
            let all = epoll_interests(p);
            let (_, got) = all.iter().find(|(e, _)| *e == epfd).unwrap_or_else(|| panic!("{all:?}"));
            assert_eq!((got.fd, got.data), (r.as_raw_fd(), 0xfeed_beef_0042));
            // The kernel always adds EPOLLERR and EPOLLHUP.
            assert_eq!(got.events & asked, asked, "{got:?}");
        }
        // SAFETY: the instance created above.
        unsafe { libc::close(epfd) };
    }
}
