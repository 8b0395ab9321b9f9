//! The processes of the instance, read from /proc.

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: Vec<String>,
    /// Whether libmcr.so is mapped (the process will register, or has).
    pub has_runtime: bool,
    pub zombie: bool,
}

/// Process `pid`; `registered`: its runtime said hello, so the library is mapped (its
/// maps are not read: on every runtime event, for every process, they were most of the
/// supervisor's time during an update's restart).
pub fn read(pid: i32, runtime_lib_name: &str, registered: bool) -> Option<Proc> {
    let stat = mcr_procfs::stat::read(pid).ok()?;
    let cmdline = mcr_procfs::cmdline(pid).unwrap_or_default();
    let has_runtime = registered || mcr_procfs::maps::mentions(pid, runtime_lib_name).unwrap_or(false);
    Some(Proc { pid, ppid: stat.ppid, cmdline, has_runtime, zombie: stat.is_exited() })
}

/// The server's processes: everything in our namespace but us and its init (PID 1), or,
/// without a namespace, our descendants. `registered`: the PIDs whose runtime registered.
pub fn server_processes(own_namespace: bool, runtime_lib_name: &str, registered: &dyn Fn(i32) -> bool) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let procs: Vec<Proc> = mcr_procfs::pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| p != me && !(own_namespace && p == 1))
        .filter_map(|p| read(p, runtime_lib_name, registered(p)))
        .collect();
    if own_namespace {
        return procs.into_iter().filter(|p| !p.zombie).collect();
    }
    let mut mine = vec![me];
    let mut out = Vec::new();
    // Parents have lower PIDs except after wrap-around: iterate to a fixed point.
    loop {
        let before = out.len();
        for p in &procs {
            if mine.contains(&p.ppid) && !mine.contains(&p.pid) {
                mine.push(p.pid);
                if !p.zombie {
                    out.push(p.clone());
                }
            }
        }
        if out.len() == before {
            break;
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Where a process's main thread is, from the kernel's view: its system call (by number)
/// or "running".
pub fn where_is(pid: i32) -> String {
    use mcr_procfs::task::Syscall;
    match mcr_procfs::task::syscall(pid, pid) {
        Ok(Syscall::Running) => "it is running outside any blocking call".into(),
        Ok(Syscall::InSyscall { nr, .. }) => format!("it is blocked in system call {nr}, which mcr does not wrap"),
        // The kernel writes -1 for a thread blocked outside a system call.
        Ok(Syscall::Blocked { .. }) => "it is blocked in system call -1, which mcr does not wrap".into(),
        Err(_) => "its state is unknown".into(),
    }
}

/// How process `pid` is stopped, if it is: its threads run no code until it is continued.
pub fn stopped(pid: i32) -> Option<&'static str> {
    match mcr_procfs::stat::read(pid).ok()?.state {
        'T' => Some("SIGSTOP"),
        't' => Some("stopped by a debugger"),
        _ => None,
    }
}

/// This process's open descriptors above stderr.
pub fn own_descriptors_above_stderr() -> Vec<i32> {
    mcr_procfs::fd::list(mcr_procfs::Process::Current)
        .map(|fds| fds.into_iter().filter(|&fd| fd > 2).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_sleeping_child_is_read_and_located() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = child.id() as i32;
        // It soon sleeps in clock_nanosleep (x86_64: 230).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut at = where_is(pid);
        while !at.contains("system call 230") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            at = where_is(pid);
        }
        assert_eq!(at, "it is blocked in system call 230, which mcr does not wrap");
        let p = read(pid, "libmcr.so", false).unwrap();
        assert_eq!((p.ppid, p.has_runtime, p.zombie), (std::process::id() as i32, false, false));
        assert_eq!(p.cmdline, ["sleep", "10"]);
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !read(pid, "libmcr.so", false).is_some_and(|p| p.zombie) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(read(pid, "libmcr.so", false).unwrap().zombie, "killed, not reaped yet");
        child.wait().unwrap();
        assert!(read(pid, "libmcr.so", false).is_none());
        assert_eq!(where_is(pid), "its state is unknown");
    }

    #[test]
    fn own_descriptors() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(own_descriptors_above_stderr().contains(&std::os::fd::AsRawFd::as_raw_fd(&f)));
    }
}
