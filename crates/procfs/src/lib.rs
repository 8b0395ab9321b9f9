//! Readers of `/proc`, one per file, shared by every mcr crate: the CLI and the
//! supervisor read other processes, the runtime (preloaded into servers) reads its own.
//!
//! Parsers take the file's text and never panic: a malformed line or field comes out as
//! `None` (or is skipped), so a reader inside a server cannot take it down. Readers
//! return `io::Error` when the file cannot be read (the process is gone, or no ptrace
//! access).
//!
//! - [`maps`]: `/proc/PID/maps` as [`Mapping`]s.
//! - [`status`], [`stat`]: state, parent, thread-group and namespace PIDs, RSS, brk.
//! - [`namespace`]: the processes of a PID namespace, namespace PID → host PID.
//! - [`fd`]: open descriptors, what they are, their fdinfo (position, flags, epoll
//!   interests).
//! - [`task`]: threads, their system call, children and CPU time.
//! - [`pagemap`]: per-page flags (present, swapped, soft-dirty).

pub mod fd;
pub mod maps;
pub mod mounts;
pub mod namespace;
pub mod pagemap;
pub mod stat;
pub mod status;
pub mod task;

pub use maps::Mapping;

use std::io;
use std::path::PathBuf;

/// Whose `/proc` directory to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Process {
    /// The caller (`/proc/self`: right whatever PID namespace it is in).
    Current,
    /// A process by its PID in the namespace of the mounted `/proc` (the host's, for the
    /// CLI).
    Pid(i32),
}

impl From<i32> for Process {
    fn from(pid: i32) -> Self {
        Process::Pid(pid)
    }
}

impl Process {
    /// `/proc/self` or `/proc/PID`.
    pub fn dir(self) -> PathBuf {
        match self {
            Process::Current => PathBuf::from("/proc/self"),
            Process::Pid(pid) => PathBuf::from(format!("/proc/{pid}")),
        }
    }

    /// A file of the process's `/proc` directory (`maps`, `task/TID/syscall`, ...).
    pub fn file(self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// The error for a /proc file whose text is not what the kernel writes.
pub(crate) fn malformed(path: &std::path::Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: unexpected contents", path.display()))
}

/// The text of a process's file.
pub(crate) fn read_text(p: Process, name: &str) -> io::Result<String> {
    read_file(&p.file(name))
}

/// The text of a /proc file. /proc files say they are empty, so `fs::read_to_string`
/// starts with 32-byte probing reads: eight calls for a `status`, and each read of
/// `/proc/locks` walks the kernel's lock lists again (four such reads of a two-line
/// file took 10 ms here, one read 0.1 ms). A page's worth comes in one read.
pub fn read_file(path: &std::path::Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(4096);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Numeric entries of a /proc directory (`/proc` itself: PIDs; `task`: TIDs; `fd`:
/// descriptors), sorted.
pub(crate) fn numeric_entries(dir: &std::path::Path) -> io::Result<Vec<i32>> {
    let mut v: Vec<i32> =
        std::fs::read_dir(dir)?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    v.sort_unstable();
    Ok(v)
}

/// Every process of the mounted `/proc`, by PID, sorted.
pub fn pids() -> io::Result<Vec<i32>> {
    numeric_entries(std::path::Path::new("/proc"))
}

/// This process's PID in the PID namespace of the mounted `/proc` (where `/proc/self`
/// points): before a process mounts a fresh `/proc` in a new namespace, its host PID.
pub fn own_pid() -> Option<i32> {
    std::fs::read_link("/proc/self").ok()?.to_str()?.parse().ok()
}

/// The command line (`cmdline`): its words, empty ones left out. Empty for a zombie or
/// a kernel thread.
pub fn cmdline(p: impl Into<Process>) -> io::Result<Vec<String>> {
    let raw = std::fs::read(p.into().file("cmdline"))?;
    Ok(split_cmdline(&raw))
}

/// The words of a `cmdline` text (NUL-separated), empty ones left out.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// The executable (`exe`): its path, with " (deleted)" when the file was replaced.
pub fn exe(p: impl Into<Process>) -> io::Result<PathBuf> {
    std::fs::read_link(p.into().file("exe"))
}

/// The command name (`comm`), without the newline.
pub fn comm(p: impl Into<Process>) -> io::Result<String> {
    Ok(read_text(p.into(), "comm")?.trim_end_matches('\n').to_string())
}

/// Where the process sleeps in the kernel (`wchan`; "0" when running).
pub fn wchan(p: impl Into<Process>) -> io::Result<String> {
    Ok(read_text(p.into(), "wchan")?.trim().to_string())
}

/// Whether the process (or thread-group) exists, zombies included.
pub fn exists(p: impl Into<Process>) -> bool {
    p.into().dir().exists()
}

/// The process's PID namespace (`ns/pid`, as `pid:[INODE]`): equal for two processes
/// in the same namespace.
pub fn pid_namespace(p: impl Into<Process>) -> io::Result<PathBuf> {
    std::fs::read_link(p.into().file("ns/pid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Process::Current.file("maps"), PathBuf::from("/proc/self/maps"));
        assert_eq!(Process::from(42).file("task/43/syscall"), PathBuf::from("/proc/42/task/43/syscall"));
    }

    #[test]
    fn cmdline_words() {
        assert_eq!(split_cmdline(b"./kvd\0--port\x007000\0"), ["./kvd", "--port", "7000"]);
        assert_eq!(split_cmdline(b""), Vec::<String>::new());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        assert!(pids().unwrap().contains(&me));
        assert!(exists(me));
        assert_eq!(own_pid(), Some(me), "the tests run in the namespace of the mounted /proc");
        assert_eq!(exe(Process::Current).unwrap(), exe(me).unwrap());
        assert!(!cmdline(me).unwrap().is_empty());
        assert!(!comm(Process::Current).unwrap().is_empty());
        assert_eq!(pid_namespace(me).unwrap(), pid_namespace(Process::Current).unwrap());
        assert!(pid_namespace(me).unwrap().to_string_lossy().starts_with("pid:["));
    }
}
