//! Descriptors made after startup (other than the client connections the transfer moves).
//!
//! Which descriptors those are, only the process's runtime knows for sure: its own
//! (control socket, dirty tracking), what startup made (recorded or opened by libc on
//! its own), what was inherited at exec, and which sockets accept() returned. It answers
//! `PostStartupFds`; [`Context::post_startup_fds`] holds the answers.
//!
//! The transfer moves each of them to the same number in the new process: a copy of the
//! same open file description, so its offset, status flags, queued data, OFD and flock
//! locks and epoll interests stay with it. Named here is only what does not travel with
//! the description: POSIX record locks (owned by the process), a POSIX message queue's
//! notification (registered for the old process), a signalfd (it reads the signals of the process that reads it, which
//! must block them: the blocked mask and pending signals are not moved yet), and files
//! on a mount other than the root that the new version must open again but cannot without
//! changing what they do (`transfer/reopen.rs`: a lock held through the description, a
//! description shared with another descriptor, a pty master, a removed file).

use super::{Context, Unmovable};
use crate::transfer::reopen;
use mcr_procfs::Process;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut found = Vec::new();
    let hosts: Vec<i32> = ctx.processes.values().copied().collect();
    for (&pid, fds) in &ctx.post_startup_fds {
        let host = ctx.processes.get(&pid).copied();
        match (fds, host) {
            (Ok(fds), Some(host)) => {
                let locked = posix_locked_files(host);
                let pending = pending_signals(host);
                for &fd in fds {
                    let why = why_unmovable(host, fd, &locked, pending, &hosts);
                    if let Some(why) = why {
                        found.push(Unmovable { pid, what: describe(Some(host), fd), why });
                    }
                }
            }
            (Ok(_), None) => {}
            (Err(e), _) => found.push(Unmovable {
                pid,
                what: "its descriptors".to_string(),
                why: format!("its runtime could not say which it made after startup: {e}"),
            }),
        }
    }
    found
}

/// Why descriptor `fd` of `host` would not reach the new process whole, if it would not.
fn why_unmovable(host: i32, fd: i32, posix_locked: &[(u64, u64)], pending: u64, hosts: &[i32]) -> Option<String> {
    let info = mcr_procfs::fd::info(host, fd).ok()?;
    if let Ok(m) = std::fs::metadata(Process::Pid(host).file(&format!("fd/{fd}"))) {
        if posix_locked.contains(&(m.dev(), m.ino())) {
            return Some(
                "its file holds a POSIX record lock (fcntl F_SETLK), which belongs to the old process and is \
                 released when it exits; an OFD lock (F_OFD_SETLK) or flock would move with the descriptor"
                    .into(),
            );
        }
    }
    if let Some(mask) = info.sigmask {
        return Some(if mask & pending != 0 {
            "a signalfd whose signals are pending in the old process, which it alone can read".into()
        } else {
            "a signalfd: it reads the signals its process blocks, and the blocked mask does not move yet".into()
        });
    }
    let target = mcr_procfs::fd::target(host, fd).map(|t| t.display().to_string()).unwrap_or_default();
    let mounts = mcr_procfs::mounts::read(host).unwrap_or_default();
    if let Some(why) = reopen::path_to_open_again(&target, &info, &mounts)
        .and_then(|path| reopen::why_not_open_again(host, fd, &info, &path, hosts))
    {
        return Some(why);
    }
    if may_be_mqueue(&info, &target, &mounts) && mqueue_notifies(host, fd) {
        return Some("a POSIX message queue with a notification (mq_notify) registered for the old process".into());
    }
    None
}

/// Whether a descriptor showing as `target` (fdinfo `info`; its process's `mounts`) may be
/// a POSIX message queue: a file on a mount of type mqueue, or on no listed mount at all
/// (mq_open uses the IPC namespace's internal one), other than a memfd.
fn may_be_mqueue(info: &mcr_procfs::fd::FdInfo, target: &str, mounts: &[mcr_procfs::mounts::Mount]) -> bool {
    let Some(mnt) = info.mnt_id else { return false };
    match mcr_procfs::mounts::find(mounts, mnt) {
        Some(m) => m.fs_type == "mqueue",
        None => target.starts_with('/') && !target.starts_with("/memfd:"),
    }
}

/// Whether the message queue `fd` of `host` has a notification registered: reading the
/// queue's file says so (`QSIZE:0 NOTIFY:0 SIGNO:43 NOTIFY_PID:2`); reading it takes
/// no message.
fn mqueue_notifies(host: i32, fd: i32) -> bool {
    use std::io::Read;
    let path = Process::Pid(host).file(&format!("fd/{fd}"));
    let mut text = String::new();
    let opened = std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path);
    if opened.and_then(|f| f.take(256).read_to_string(&mut text)).is_err() || !text.starts_with("QSIZE:") {
        return false;
    }
    text.split_whitespace().find_map(|w| w.strip_prefix("NOTIFY_PID:")).is_some_and(|p| p != "0")
}

/// (device, inode) of each file on which process `host` holds a POSIX record lock, from
/// the `lock:` lines of its descriptors' fdinfo (the locks held through each, in
/// /proc/locks's format). Not from /proc/locks: reading it takes the kernel's file-lock
/// semaphore for writing, which waits for an RCU grace period (7-20 ms here, on the
/// update's clock, and every file lock on the machine waits with it).
fn posix_locked_files(host: i32) -> Vec<(u64, u64)> {
    let fdinfo = |fd: i32| mcr_procfs::read_file(&Process::Pid(host).file(&format!("fdinfo/{fd}"))).ok();
    let mut locked: Vec<(u64, u64)> = mcr_procfs::fd::list(host)
        .unwrap_or_default()
        .into_iter()
        .filter_map(fdinfo)
        .flat_map(|text| posix_locks_of(&text, host))
        .collect();
    locked.sort_unstable();
    locked.dedup();
    locked
}

/// From /proc/locks text, or an fdinfo's `lock:` lines (its other lines are no lock):
/// `1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 100 149`.
fn posix_locks_of(text: &str, host: i32) -> Vec<(u64, u64)> {
    text.lines()
        .map(|l| l.strip_prefix("lock:").unwrap_or(l))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A blocked waiter's line starts "1: -> POSIX ...": it holds nothing.
            if f.get(1) != Some(&"POSIX") || f.get(4).and_then(|p| p.parse::<i32>().ok()) != Some(host) {
                return None;
            }
            let mut dev = f.get(5)?.split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let ino = dev.next()?.parse().ok()?;
            Some((libc::makedev(major, minor), ino))
        })
        .collect()
}

/// The signals pending for process `host` or any of its threads, as a mask (bit n-1 for
/// signal n, as fdinfo's sigmask has it).
fn pending_signals(host: i32) -> u64 {
    let proc = Process::Pid(host);
    let statuses = std::iter::once(proc.file("status")).chain(
        mcr_procfs::task::list(host).unwrap_or_default().into_iter().map(|t| proc.file(&format!("task/{t}/status"))),
    );
    let mut mask = 0;
    for path in statuses {
        let Ok(text) = mcr_procfs::read_file(&path) else { continue };
        let s = mcr_procfs::status::Status::parse(text);
        for field in ["SigPnd", "ShdPnd"] {
            mask |= s.field(field).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
        }
    }
    mask
}

/// "fd 9 (pipe:[1234])": the number and what /proc/PID/fd shows it is.
fn describe(host: Option<i32>, fd: i32) -> String {
    match host.and_then(|h| mcr_procfs::fd::target(h, fd).ok()) {
        Some(target) => format!("fd {fd} ({})", target.display()),
        None => format!("fd {fd}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_what_does_not_travel_with_the_descriptor_is_named() {
        let me = std::process::id() as i32;
        let (r, w) = std::io::pipe().expect("a pipe");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("a socketpair");
        let ctx = Context {
            processes: BTreeMap::from([(1, me), (2, me)]),
            logs: vec![],
            attributes: BTreeMap::new(),
            post_startup_fds: BTreeMap::from([
                (1, Ok(vec![r.as_raw_fd(), w.as_raw_fd(), a.as_raw_fd()])),
                (2, Err("process 2 is stopped".to_string())),
            ]),
        };
        let found = unmovable(&ctx);
        // A socketpair moves too: the new runtime reports its peer as the counterpart.
        assert_eq!(found.len(), 1, "a pipe and a socketpair move whole: {found:?}");
        assert_eq!((found[0].pid, found[0].what.as_str()), (2, "its descriptors"));
        assert!(found[0].why.contains("process 2 is stopped"));
    }

    #[test]
    fn posix_locks_are_read_from_lock_lines() {
        let text = "1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 100 149\n\
                    1: -> POSIX  ADVISORY  WRITE 99 00:2d:5678 100 149\n\
                    2: OFDLCK ADVISORY  WRITE -1 00:2d:777 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 1234 08:01:42 0 EOF\n\
                    4: POSIX  ADVISORY  READ 1234 08:01:43 0 EOF\n";
        assert_eq!(posix_locks_of(text, 1234), vec![(libc::makedev(0, 0x2d), 5678), (libc::makedev(8, 1), 43)]);
        assert_eq!(posix_locks_of(text, 99), vec![], "a waiter holds nothing");
        let fdinfo = "pos:\t0\nflags:\t02\nmnt_id:\t15\nlock:\t1: POSIX  ADVISORY  WRITE 1234 00:2d:5678 0 EOF\n";
        assert_eq!(posix_locks_of(fdinfo, 1234), vec![(libc::makedev(0, 0x2d), 5678)]);
    }

    #[test]
    fn message_queues_are_recognised_by_their_mount() {
        let mounts = mcr_procfs::mounts::parse(
            "22 1 0:21 / /proc rw - proc proc rw\n\
             31 22 0:27 / /dev/mqueue rw,relatime - mqueue mqueue rw\n",
        );
        let on = |mnt_id| mcr_procfs::fd::FdInfo { mnt_id: Some(mnt_id), ..Default::default() };
        assert!(may_be_mqueue(&on(31), "/q", &mounts), "on an mqueue mount");
        assert!(!may_be_mqueue(&on(22), "/proc/x", &mounts), "on another file system");
        assert!(may_be_mqueue(&on(3), "/q", &mounts), "on no listed mount: the IPC namespace's own");
        assert!(!may_be_mqueue(&on(3), "/memfd:x (deleted)", &mounts), "a memfd");
    }

    #[test]
    fn each_unmovable_descriptor_is_named_with_what_it_is() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("a socketpair");
        let fd = a.as_raw_fd();
        let what = describe(Some(std::process::id() as i32), fd);
        assert!(what.starts_with(&format!("fd {fd} (socket:[")), "{what}");
    }
}
