//! `/proc/PID/status`: `Name:\tvalue` lines (state, thread group, parent, the PID in
//! each nested PID namespace, memory, signals).

use crate::Process;
use std::io;

/// The text of a status file, with accessors for the fields mcr reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    text: String,
}

impl Status {
    pub fn parse(text: impl Into<String>) -> Status {
        Status { text: text.into() }
    }

    /// The value of field `name` (`"State"`, `"NSpid"`...), trimmed.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.field(name)?.split_whitespace().next()?.parse().ok()
    }

    /// The state letter: R, S, D, T, t, Z (zombie), X (dead)...
    pub fn state(&self) -> Option<char> {
        self.field("State")?.chars().next()
    }

    /// Exited, not reaped yet (zombie) or being reaped.
    pub fn is_exited(&self) -> bool {
        matches!(self.state(), Some('Z' | 'X'))
    }

    pub fn tgid(&self) -> Option<i32> {
        self.number("Tgid")
    }

    pub fn ppid(&self) -> Option<i32> {
        self.number("PPid")
    }

    /// The process's PID in each PID namespace it is in, the host's first, its own
    /// namespace's last.
    pub fn nspid(&self) -> Vec<i32> {
        self.field("NSpid").map(|v| v.split_whitespace().map_while(|p| p.parse().ok()).collect()).unwrap_or_default()
    }

    /// The PID inside the process's own (innermost) PID namespace.
    pub fn innermost_pid(&self) -> Option<i32> {
        self.nspid().last().copied()
    }

    /// Resident memory, in kB.
    pub fn vm_rss_kb(&self) -> Option<u64> {
        self.number("VmRSS")
    }

    /// Signals pending for the thread (`SigPnd`) and the whole process (`ShdPnd`).
    pub fn pending_signals(&self) -> u64 {
        let mask = |name| self.field(name).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
        mask("SigPnd") | mask("ShdPnd")
    }
}

/// The status of process `p`.
pub fn read(p: impl Into<Process>) -> io::Result<Status> {
    crate::read_text(p.into(), "status").map(Status::parse)
}

/// The status of thread `tid` of process `p`.
pub fn read_thread(p: impl Into<Process>, tid: i32) -> io::Result<Status> {
    crate::read_text(p.into(), &format!("task/{tid}/status")).map(Status::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tkvd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t8813\nNgid:\t0\nPid:\t8813\n\
PPid:\t8812\nTracerPid:\t0\nNSpid:\t8813\t2\nNSpgid:\t8813\t2\nVmRSS:\t    3456 kB\n\
SigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\nSigBlk:\t0000000000000000\n";

    #[test]
    fn fields() {
        let s = Status::parse(STATUS);
        assert_eq!(s.field("Name"), Some("kvd"));
        assert_eq!(s.field("State"), Some("S (sleeping)"));
        assert_eq!(s.state(), Some('S'));
        assert!(!s.is_exited());
        assert_eq!((s.tgid(), s.ppid()), (Some(8813), Some(8812)));
        assert_eq!(s.nspid(), [8813, 2]);
        assert_eq!(s.innermost_pid(), Some(2));
        assert_eq!(s.vm_rss_kb(), Some(3456));
        assert_eq!(s.pending_signals(), 1 << 14, "SIGTERM pending for the process");
        assert_eq!(s.field("NSpi"), None, "a prefix of a name is not the name");
        assert_eq!(s.field("Missing"), None);
    }

    #[test]
    fn zombies_and_missing_fields() {
        let z = Status::parse("Name:\tkvd\nState:\tZ (zombie)\nNSpid:\t901\n");
        assert!(z.is_exited());
        assert_eq!(z.innermost_pid(), Some(901));
        assert_eq!((z.tgid(), z.vm_rss_kb(), z.pending_signals()), (None, None, 0));
        assert!(Status::parse("State:\tX (dead)\n").is_exited());
        let empty = Status::parse("");
        assert_eq!((empty.state(), empty.nspid(), empty.innermost_pid()), (None, vec![], None));
    }

    #[test]
    fn reads_own_status() {
        let s = read(crate::Process::Current).unwrap();
        assert_eq!(s.tgid(), Some(std::process::id() as i32));
        assert!(s.vm_rss_kb().is_some_and(|kb| kb > 0));
        let me = read_thread(crate::Process::Current, std::process::id() as i32).unwrap();
        assert_eq!(me.tgid(), s.tgid());
    }
}
