//! `/proc/PID/mountinfo`: the mounts a process sees, by ID (the `mnt_id` of a descriptor's
//! fdinfo names one of them).

use crate::Process;
use std::io;

/// One line of mountinfo
/// (`36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// Where it is mounted, in the process's mount namespace (`/mnt2`).
    pub point: String,
    /// Its file system type (`ext3`).
    pub fs_type: String,
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?.parse().ok()?;
            let point = f.nth(3)?.to_string();
            let fs_type = l.split_once(" - ")?.1.split_whitespace().next()?.to_string();
            Some(Mount { id, point, fs_type })
        })
        .collect()
}

/// The mounts process `p` sees.
pub fn read(p: impl Into<Process>) -> io::Result<Vec<Mount>> {
    Ok(parse(&crate::read_text(p.into(), "mountinfo")?))
}

/// Mount `id` among `mounts`.
pub fn find(mounts: &[Mount], id: u64) -> Option<&Mount> {
    mounts.iter().find(|m| m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_and_types_are_read_by_id() {
        let mounts = parse(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             26 25 0:22 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw\n\
             31 22 0:27 / /dev/mqueue rw,relatime - mqueue mqueue rw\n",
        );
        assert_eq!(find(&mounts, 22).map(|m| m.point.as_str()), Some("/"));
        assert_eq!(find(&mounts, 26).map(|m| (m.point.as_str(), m.fs_type.as_str())), Some(("/dev/shm", "tmpfs")));
        assert_eq!(find(&mounts, 31).map(|m| m.fs_type.as_str()), Some("mqueue"));
        assert_eq!(find(&mounts, 2), None);
    }
}
