//! Files the new version must open again instead of taking the old version's open file
//! description.
//!
//! Each version has a mount namespace of its own (for its /proc), holding its own copies
//! of the host's mounts. An open file remembers the mount it was opened through: once the
//! old version retires, its namespace goes and its mounts are detached, and a description
//! taken over from it shows its path relative to its mount (`/null` for /dev/null,
//! `/name` for /dev/shm/name) in the new version's /proc. A file on the root mount keeps
//! its full path (relative to `/` is the full path). So a moved descriptor of a file on
//! another mount is opened again through the new process's root, with the same access
//! mode, status flags and offset; the preflight refuses those where a new description
//! would behave differently (`preflight/descriptors.rs`): a lock held through it, a
//! description shared with another descriptor, a pty master (opening /dev/ptmx makes
//! another pty), a removed file.

use mcr_procfs::fd::FdInfo;
use mcr_procfs::mounts::Mount;
use mcr_procfs::Process;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

/// The path a descriptor showing as `target`, with fdinfo `info`, must be opened again by,
/// when it must (a file on a mount other than the root, among its process's `mounts`);
/// `None` for sockets, pipes, anonymous inodes, files on the root mount and files on
/// mounts the process's mountinfo does not list (internal ones, such as a message
/// queue's, which no version's namespace holds).
pub(crate) fn path_to_open_again(target: &str, info: &FdInfo, mounts: &[Mount]) -> Option<String> {
    if !target.starts_with('/') {
        return None;
    }
    let mount = mcr_procfs::mounts::find(mounts, info.mnt_id?)?;
    (mount.point != "/").then(|| target.to_string())
}

/// Why descriptor `fd` of `host` (fdinfo `info`), to be opened again by `path`, cannot be
/// without changing what it does; `None` when it can. `others`: every process of the old
/// version.
pub(crate) fn why_not_open_again(host: i32, fd: i32, info: &FdInfo, path: &str, others: &[i32]) -> Option<String> {
    let why = |what: &str| {
        Some(format!(
            "the new version must open {path} again (it lies on a mount of the old version's own), but {what}"
        ))
    };
    if path.ends_with(" (deleted)") {
        return why("the file was removed since");
    }
    if path == "/dev/ptmx" || path == "/dev/pts/ptmx" {
        return why("it is a pty master: opening /dev/ptmx makes another pty");
    }
    if info.locks > 0 {
        return why(
            "a lock (flock, OFD lock or lease) is held through this description, which a new one would not hold",
        );
    }
    if let Some((other, other_fd)) = sharing(host, fd, others) {
        return why(&format!(
            "its description is shared with fd {other_fd} of process {other} (offset and flags), which a new one \
             would not be"
        ));
    }
    None
}

/// Another descriptor of a process among `hosts` (`fd` of `host` itself excluded) with the
/// same open file description as `fd` of `host`.
fn sharing(host: i32, fd: i32, hosts: &[i32]) -> Option<(i32, i32)> {
    let id =
        |h: i32, n: i32| std::fs::metadata(Process::Pid(h).file(&format!("fd/{n}"))).ok().map(|m| (m.dev(), m.ino()));
    let mine = id(host, fd)?;
    hosts.iter().find_map(|&h| {
        let fds = mcr_procfs::fd::list(h).ok()?;
        fds.into_iter()
            .filter(|&n| (h, n) != (host, fd))
            .find(|&n| id(h, n) == Some(mine) && same_description(host, fd, h, n))
            .map(|n| (h, n))
    })
}

/// Whether `fd1` of `pid1` and `fd2` of `pid2` are the same open file description.
fn same_description(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp compares two kernel objects by their descriptors; it takes no pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    r == 0
}

/// Flags a new open carries over from the old description (fdinfo `flags`: what open(2)
/// kept of its flags); the rest (O_CLOEXEC: a property of the descriptor; the kernel's own
/// bits) do not apply.
const CARRIED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_NOATIME
    | libc::O_DIRECT
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_PATH
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_LARGEFILE;

/// A descriptor of the old version (fdinfo `info`; `taken`: its description, as the
/// transfer took it), opened again by `path` through new process `new_host`'s root, with
/// the same access mode, status flags and offset. The file opened must be the same file.
pub(crate) fn open_again(info: &FdInfo, path: &str, taken: &OwnedFd, new_host: i32) -> io::Result<OwnedFd> {
    let flags = info.flags.map_or(libc::O_RDONLY, |f| f as i32) & CARRIED_FLAGS;
    let at: PathBuf = Process::Pid(new_host).file("root").join(path.trim_start_matches('/'));
    let (read, write) = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => (false, true),
        libc::O_RDWR => (true, true),
        _ => (true, false),
    };
    // The access mode goes through read/write; custom_flags masks it out.
    let file = File::options()
        .read(read || flags & libc::O_PATH != 0)
        .write(write)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&at)?;
    let (old, new) = (File::from(taken.try_clone()?).metadata()?, file.metadata()?);
    if (old.dev(), old.ino(), old.rdev()) != (new.dev(), new.ino(), new.rdev()) {
        return Err(io::Error::other(format!("{} is another file in the new version's namespace", path)));
    }
    if let Some(pos) = info.pos.filter(|&p| p > 0 && flags & libc::O_PATH == 0 && new.file_type().is_file()) {
        use std::io::Seek;
        (&file).seek(io::SeekFrom::Start(pos))?;
    }
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_another_mount_is_opened_again_with_its_mode_flags_and_offset() {
        use std::io::{Seek, Write};
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let path = format!("/dev/shm/mcr-reopen-test-{me}");
        let mut f = File::options().create(true).read(true).append(true).open(&path).unwrap();
        f.write_all(b"0123456789").unwrap();
        f.seek(io::SeekFrom::Start(4)).unwrap();
        let fd = f.as_raw_fd();
        let mounts = mcr_procfs::mounts::read(me).unwrap();
        let info = mcr_procfs::fd::info(me, fd).unwrap();
        assert_eq!(
            path_to_open_again(&path, &info, &mounts).as_deref(),
            Some(path.as_str()),
            "/dev/shm is a mount of its own"
        );
        assert_eq!(why_not_open_again(me, fd, &info, &path, &[me]), None);

        let taken = OwnedFd::from(f.try_clone().unwrap());
        let again = File::from(open_again(&info, &path, &taken, me).unwrap());
        assert_eq!(mcr_procfs::fd::info(me, again.as_raw_fd()).unwrap().pos, Some(4));
        let flags = mcr_procfs::fd::info(me, again.as_raw_fd()).unwrap().flags.unwrap() as i32;
        assert_eq!(flags & (libc::O_ACCMODE | libc::O_APPEND), libc::O_RDWR | libc::O_APPEND);
        // `taken` shares the description with `fd`: a new one would not.
        let why = why_not_open_again(me, fd, &info, &path, &[me]).expect("a shared description is named");
        assert!(why.contains("shared with fd"), "{why}");
        drop(taken);
        let _ = std::fs::remove_file(&path);
        let why = why_not_open_again(me, fd, &info, &format!("{path} (deleted)"), &[me]).unwrap();
        assert!(why.contains("removed since"), "{why}");
    }

    #[test]
    fn a_file_on_the_root_mount_keeps_its_description() {
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let root = File::open("/").unwrap();
        let info = mcr_procfs::fd::info(me, root.as_raw_fd()).unwrap();
        assert_eq!(path_to_open_again("/", &info, &mcr_procfs::mounts::read(me).unwrap()), None);
    }
}
