//! `/proc/PID/task`: a process's threads, the system call each is blocked in, their
//! children and their CPU time.

use crate::Process;
use std::io;

/// The threads of process `p`, by TID, sorted.
pub fn list(p: impl Into<Process>) -> io::Result<Vec<i32>> {
    crate::numeric_entries(&p.into().file("task"))
}

/// Whether thread `tid` of `p` exists.
pub fn exists(p: impl Into<Process>, tid: i32) -> bool {
    tid > 0 && p.into().file(&format!("task/{tid}")).exists()
}

/// The processes thread `tid` of `p` forked (`children`; needs CONFIG_PROC_CHILDREN).
pub fn children(p: impl Into<Process>, tid: i32) -> io::Result<Vec<i32>> {
    let text = crate::read_text(p.into(), &format!("task/{tid}/children"))?;
    Ok(text.split_whitespace().filter_map(|x| x.parse().ok()).collect())
}

/// On-CPU time of thread `tid` of `p`, in nanoseconds (the first field of `schedstat`).
pub fn cpu_ns(p: impl Into<Process>, tid: i32) -> io::Result<u64> {
    sched_times(p, tid).map(|t| t.on_cpu_ns)
}

/// How thread `tid` of `p` has used the CPU so far (`schedstat`).
pub fn sched_times(p: impl Into<Process>, tid: i32) -> io::Result<SchedTimes> {
    let p = p.into();
    let path = p.file(&format!("task/{tid}/schedstat"));
    let text = std::fs::read_to_string(&path)?;
    parse_schedstat(&text).ok_or_else(|| crate::malformed(&path))
}

/// A thread's time on a CPU and time runnable but waiting for one, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedTimes {
    pub on_cpu_ns: u64,
    pub waiting_for_cpu_ns: u64,
}

fn parse_schedstat(text: &str) -> Option<SchedTimes> {
    let mut fields = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some(SchedTimes { on_cpu_ns: fields.next()??, waiting_for_cpu_ns: fields.next()?? })
}

/// What `syscall` says of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// On a CPU (or runnable): nothing to say.
    Running,
    /// Blocked, but not in a system call (a page fault...).
    Blocked { sp: u64, pc: u64 },
    /// Blocked in system call `nr` (x86_64 numbers) with these arguments.
    InSyscall { nr: i64, args: [u64; 6], sp: u64, pc: u64 },
}

impl Syscall {
    /// `running`, `-1 SP PC` or `NR ARG1 … ARG6 SP PC`; `None` when malformed.
    pub fn parse(text: &str) -> Option<Syscall> {
        let f: Vec<&str> = text.split_whitespace().collect();
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        match f.as_slice() {
            ["running"] => Some(Syscall::Running),
            ["-1", sp, pc] => Some(Syscall::Blocked { sp: hex(sp)?, pc: hex(pc)? }),
            [nr, a @ .., sp, pc] if a.len() == 6 => {
                let mut args = [0u64; 6];
                for (slot, a) in args.iter_mut().zip(a) {
                    *slot = hex(a)?;
                }
                Some(Syscall::InSyscall { nr: nr.parse().ok()?, args, sp: hex(sp)?, pc: hex(pc)? })
            }
            _ => None,
        }
    }

    /// The system call's number, when in one.
    pub fn number(&self) -> Option<i64> {
        match self {
            Syscall::InSyscall { nr, .. } => Some(*nr),
            _ => None,
        }
    }

    /// The user stack pointer, when blocked.
    pub fn stack_pointer(&self) -> Option<u64> {
        match self {
            Syscall::Running => None,
            Syscall::Blocked { sp, .. } | Syscall::InSyscall { sp, .. } => Some(*sp),
        }
    }

    /// The user program counter, when blocked.
    pub fn program_counter(&self) -> Option<u64> {
        match self {
            Syscall::Running => None,
            Syscall::Blocked { pc, .. } | Syscall::InSyscall { pc, .. } => Some(*pc),
        }
    }
}

/// Where thread `tid` of `p` is (`task/TID/syscall`; the main thread's TID is the PID).
pub fn syscall(p: impl Into<Process>, tid: i32) -> io::Result<Syscall> {
    let p = p.into();
    let path = p.file(&format!("task/{tid}/syscall"));
    let text = std::fs::read_to_string(&path)?;
    Syscall::parse(&text).ok_or_else(|| crate::malformed(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_cpu_and_wait_times() {
        let t = parse_schedstat("12345 678 9\n").expect("three fields");
        assert_eq!(t, SchedTimes { on_cpu_ns: 12345, waiting_for_cpu_ns: 678 });
        assert_eq!(parse_schedstat("12345\n"), None, "no wait time");
        assert!(sched_times(crate::Process::Current, crate::own_pid().expect("pid")).is_ok());
    }

    #[test]
    fn syscall_lines() {
        assert_eq!(Syscall::parse("running\n"), Some(Syscall::Running));
        assert_eq!(
            Syscall::parse("-1 0x7ffd2f3b1e48 0x55d0c0a01234\n"),
            Some(Syscall::Blocked { sp: 0x7ffd2f3b1e48, pc: 0x55d0c0a01234 })
        );
        let s =
            Syscall::parse("232 0x4 0x7ffd2f3b2000 0x200 0xffffffff 0x0 0x8 0x7ffd2f3b1e48 0x7f0011223344\n").unwrap();
        assert_eq!(
            s,
            Syscall::InSyscall {
                nr: 232,
                args: [4, 0x7ffd2f3b2000, 0x200, 0xffffffff, 0, 8],
                sp: 0x7ffd2f3b1e48,
                pc: 0x7f0011223344
            }
        );
        assert_eq!(
            (s.number(), s.stack_pointer(), s.program_counter()),
            (Some(232), Some(0x7ffd2f3b1e48), Some(0x7f0011223344))
        );
        assert_eq!(Syscall::Running.stack_pointer(), None);
        for bad in [
            "",
            "runnin",
            "-1 0x1",
            "232 0x4 0x1 0x2",
            "x 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8",
            "1 0x1 0x2 0x3 0x4 0x5 zz 0x7 0x8",
        ] {
            assert_eq!(Syscall::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn own_threads() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<i32>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = go_rx.recv();
        });
        let blocked = tid_rx.recv().unwrap();
        let me = std::process::id() as i32;
        let tids = list(crate::Process::Current).unwrap();
        assert!(tids.contains(&me) && tids.contains(&blocked), "{tids:?}");
        assert!(exists(me, blocked) && !exists(me, 0));
        assert!(cpu_ns(me, me).unwrap() > 0);
        // SAFETY: gettid has no preconditions.
        let own = unsafe { libc::gettid() };
        let reading = syscall(crate::Process::Current, own).unwrap();
        assert_eq!(reading.number(), Some(libc::SYS_read), "the reading thread is in read(2): {reading:?}");
        // The other thread soon waits in futex(2) (x86_64: 202) for the channel.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let waiting = loop {
            let s = syscall(me, blocked).unwrap();
            if s.number() == Some(libc::SYS_futex) || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(waiting.number(), Some(libc::SYS_futex), "{waiting:?}");
        assert!(waiting.stack_pointer().is_some_and(|sp| sp != 0));
        go_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
