//! The process's attributes (issue 12): a snapshot taken when startup completes, the
//! values now, and, in an update's new process, taking over what the old one changed
//! after startup. Read from /proc and with plain system calls; the main thread's own
//! settings (signal mask, no_new_privs, personality) and the pending signals that must
//! wait for that mask are applied by the main thread itself as it leaves its parking
//! place.

use crate::sync::SpinLock;
use mcr_protocol::attributes::{HandlerSymbol, Itimer, Rlimit, SignalAction};
use mcr_protocol::{AttributeChange, ProcessAttributes, RuntimeReply};
use std::sync::atomic::{AtomicBool, Ordering::*};

/// The attributes when startup completed.
static AT_STARTUP: SpinLock<Option<ProcessAttributes>> = SpinLock::new(None);
/// Held around the program's environment changes and the runtime's reads of `environ`
/// (glibc's setenv may free the array another thread is reading).
pub static ENV_LOCK: SpinLock<()> = SpinLock::new(());
/// Settings only their thread can read back, made after startup (see the wrappers).
static SET_AFTER_STARTUP: SpinLock<Vec<String>> = SpinLock::new(Vec::new());
/// Changes for the main thread to apply as it leaves its parking place.
static FOR_MAIN_THREAD: SpinLock<Vec<AttributeChange>> = SpinLock::new(Vec::new());
static MAIN_THREAD_WORK: AtomicBool = AtomicBool::new(false);

/// The flag libc sets for its own signal return trampoline (not the program's).
const SA_RESTORER: i32 = 0x0400_0000;
/// RLIMIT_CPU .. RLIMIT_RTTIME.
const RLIMITS: i32 = 16;

extern "C" {
    static mut environ: *const *const libc::c_char;
}

/// Called once, by the thread that completes the process's startup.
pub fn snapshot_at_startup() {
    // Handlers by address only: their names matter for carrying them, from the values now.
    let now = read(false);
    *AT_STARTUP.lock() = Some(now);
}

/// A wrapper saw the program make a setting only its thread can read back: `what`, and
/// its value when the main thread made it (what the new process's main thread sets
/// again). A later setting replaces an earlier one.
pub fn note_set_after_startup(what: &str, main_thread_value: Option<i64>) {
    if !crate::quiesce::STARTUP_DONE.load(Acquire) {
        return;
    }
    let _internal = crate::threads::InternalGuard::enter();
    let by_main = crate::threads::gettid() == crate::pid();
    let entry = match main_thread_value.filter(|_| by_main) {
        Some(v) => format!("{what}={v}"),
        None => what.to_string(),
    };
    let mut set = SET_AFTER_STARTUP.lock();
    set.retain(|s| s.split('=').next() != Some(what));
    set.push(entry);
}

pub fn report() -> RuntimeReply {
    let startup = AT_STARTUP.lock().clone().map(Box::new);
    RuntimeReply::Attributes { startup, now: Box::new(read(true)) }
}

/// `/proc/self/task/N` of the main thread: N is the PID as the mounted /proc numbers it
/// (the host's, when the instance's PID namespace has no /proc of its own).
fn main_task() -> String {
    let n =
        std::fs::read_link("/proc/self").map(|p| p.display().to_string()).unwrap_or_else(|_| crate::pid().to_string());
    format!("/proc/self/task/{n}")
}

fn text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn hex(v: Option<&str>) -> u64 {
    v.and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
}

fn ids(v: Option<&str>) -> [u32; 4] {
    let mut out = [0; 4];
    for (o, w) in out.iter_mut().zip(v.unwrap_or("").split_whitespace()) {
        *o = w.parse().unwrap_or(0);
    }
    out
}

fn kick_bit() -> u64 {
    let k = crate::signals::kick_signal();
    if (1..=64).contains(&k) {
        1u64 << (k - 1)
    } else {
        0
    }
}

/// The process's attributes now (`symbols`: with the names of the signal handlers).
pub fn read(symbols: bool) -> ProcessAttributes {
    let _internal = crate::threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let task = main_task();
    let status = mcr_procfs::status::Status::parse(text(&format!("{task}/status")));
    let field = |name| status.field(name);
    let stat = text(&format!("{task}/stat"));
    // Fields after the command name (which may hold spaces): state is field 3.
    let after: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let stat_field = |n: usize| after.get(n - 3).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let no_kick = !kick_bit();
    let pid = crate::pid();
    ProcessAttributes {
        umask: field("Umask").and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0),
        cwd: link("/proc/self/cwd"),
        root: link("/proc/self/root"),
        rlimits: rlimits(),
        env: env(),
        signals: signals(symbols),
        mask: hex(field("SigBlk")) & no_kick,
        pending_process: hex(field("ShdPnd")) & no_kick,
        pending_thread: hex(field("SigPnd")) & no_kick,
        itimers: itimers(),
        posix_timers: posix_timers(&text("/proc/self/timers")),
        uids: ids(field("Uid")),
        gids: ids(field("Gid")),
        groups: field("Groups").unwrap_or("").split_whitespace().filter_map(|g| g.parse().ok()).collect(),
        caps: [
            hex(field("CapEff")),
            hex(field("CapPrm")),
            hex(field("CapInh")),
            hex(field("CapBnd")),
            hex(field("CapAmb")),
        ],
        // SAFETY: getpgid and getsid have no memory arguments.
        pgid: unsafe { libc::getpgid(0) },
        // SAFETY: as above.
        sid: unsafe { libc::getsid(0) },
        ctty: stat_field(7) as i32,
        comm: text(&format!("{task}/comm")).trim_end().to_string(),
        // SAFETY: PR_GET_DUMPABLE and PR_GET_THP_DISABLE take no pointer.
        dumpable: unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) },
        child_subreaper: prctl_int(libc::PR_GET_CHILD_SUBREAPER),
        no_new_privs: field("NoNewPrivs").and_then(|v| v.parse().ok()).unwrap_or(0),
        // Only the thread-group leader's directory has it (the leader is the main thread).
        timerslack_ns: text("/proc/self/timerslack_ns")
            .trim()
            .parse()
            .unwrap_or(mcr_protocol::attributes::UNKNOWN_TIMER_SLACK),
        // SAFETY: as above.
        thp_disable: unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
        seccomp: field("Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0),
        nice: stat_field(19) as i32,
        sched_priority: stat_field(40) as i32,
        sched_policy: stat_field(41) as i32,
        affinity: affinity(pid),
        personality: u32::from_str_radix(text(&format!("{task}/personality")).trim(), 16).unwrap_or(0),
        // SAFETY: ioprio_get takes two integers.
        ioprio: unsafe { crate::sys!(libc::SYS_ioprio_get, 1, pid) } as i32,
        oom_score_adj: text("/proc/self/oom_score_adj").trim().parse().unwrap_or(0),
        namespaces: ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"]
            .iter()
            .map(|ns| (ns.to_string(), link(&format!("{task}/ns/{ns}"))))
            .collect(),
        set_after_startup: SET_AFTER_STARTUP.lock().clone(),
    }
}

fn link(path: &str) -> String {
    std::fs::read_link(path).map(|p| p.display().to_string()).unwrap_or_default()
}

fn prctl_int(option: libc::c_int) -> i32 {
    let mut v: libc::c_int = 0;
    // SAFETY: the option writes one int through its pointer argument, a live local.
    unsafe { libc::prctl(option, &mut v as *mut libc::c_int, 0, 0, 0) };
    v
}

fn rlimits() -> Vec<Rlimit> {
    (0..RLIMITS)
        .filter_map(|resource| {
            let mut rl = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: prlimit64 on this process writes one rlimit into `rl`, a live local.
            let rc = unsafe { libc::prlimit64(0, resource as _, core::ptr::null(), &mut rl) };
            (rc == 0).then_some(Rlimit { resource, soft: rl.rlim_cur, hard: rl.rlim_max })
        })
        .collect()
}

fn env() -> Vec<String> {
    let _env = ENV_LOCK.lock();
    let mut out = Vec::new();
    // SAFETY: `environ` is libc's NULL-terminated array of NUL-terminated strings; every
    // change the program makes through libc holds ENV_LOCK (our wrappers), as we do.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            out.push(std::ffi::CStr::from_ptr(*p).to_string_lossy().into_owned());
            p = p.add(1);
        }
    }
    out
}

fn sigset_bits(set: &libc::sigset_t) -> u64 {
    signals_in(|s| {
        // SAFETY: sigismember reads `set`, a live sigset.
        unsafe { libc::sigismember(set, s) == 1 }
    })
}

fn signals_in(member: impl Fn(i32) -> bool) -> u64 {
    (1..=64).filter(|&s| member(s)).fold(0, |m, s| m | (1u64 << (s - 1)))
}

fn bits_sigset(bits: u64) -> libc::sigset_t {
    let sigs: Vec<i32> = mcr_protocol::attributes::signals_of(bits).collect();
    crate::signals::sigset_with(&sigs)
}

fn signals(symbols: bool) -> Vec<SignalAction> {
    use crate::signals::{PROGRAM_FLAGS, PROGRAM_HANDLER};
    let trampoline = crate::signals::trampoline as *const () as usize;
    let mut out = Vec::new();
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut sa = crate::signals::new_sigaction(libc::SIG_DFL, 0, crate::signals::sigset_with(&[]));
        let (handler, flags) = if sig == crate::signals::kick_signal() {
            (PROGRAM_HANDLER[sig as usize].load(Acquire), PROGRAM_FLAGS[sig as usize].load(Acquire))
        } else {
            // SAFETY: libc's sigaction only reads the action (none here) and writes `sa`.
            if unsafe { crate::real::sigaction()(sig, core::ptr::null(), &mut sa) } != 0 {
                continue;
            }
            if sa.sa_sigaction == trampoline {
                (PROGRAM_HANDLER[sig as usize].load(Acquire), PROGRAM_FLAGS[sig as usize].load(Acquire))
            } else {
                (sa.sa_sigaction, sa.sa_flags)
            }
        };
        let handler = handler as u64;
        let symbol = (symbols && handler > 1).then(|| handler_symbol(handler)).flatten();
        out.push(SignalAction {
            signal: sig,
            handler,
            flags: flags & !SA_RESTORER,
            mask: sigset_bits(&sa.sa_mask),
            symbol,
        });
    }
    out
}

pub(crate) fn handler_symbol(addr: u64) -> Option<HandlerSymbol> {
    let (module, function) = crate::symbolize::function_starting_at(addr as usize)?;
    let exe = link("/proc/self/exe");
    Some(HandlerSymbol { in_executable: module == exe, function, module })
}

fn itimers() -> Vec<Itimer> {
    [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
        .into_iter()
        .map(|which| {
            let zero = libc::timeval { tv_sec: 0, tv_usec: 0 };
            let mut it = libc::itimerval { it_interval: zero, it_value: zero };
            // SAFETY: getitimer writes one itimerval into `it`, a live local.
            unsafe { libc::getitimer(which, &mut it) };
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            Itimer { which, value_us: us(it.it_value), interval_us: us(it.it_interval) }
        })
        .collect()
}

/// /proc/self/timers as one line per timer.
fn posix_timers(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let item = format!("{key} {}", value.trim());
        if key == "ID" {
            out.push(item);
        } else if let Some(last) = out.last_mut() {
            last.push_str(", ");
            last.push_str(&item);
        }
    }
    out
}

fn affinity(tid: i32) -> Vec<u64> {
    let mut words = [0u64; 16];
    // SAFETY: sched_getaffinity writes at most size_of_val(words) bytes into `words`.
    let n =
        unsafe { crate::sys!(libc::SYS_sched_getaffinity, tid, core::mem::size_of_val(&words), words.as_mut_ptr()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut v = words[..(n as usize / 8).min(16)].to_vec();
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Take over the old process's changes (in an update's new process, from the control
/// thread, while the program's threads are parked).
pub fn apply(changes: &[AttributeChange]) -> RuntimeReply {
    let _errno = crate::errno::ErrnoGuard::save();
    let mut for_main = Vec::new();
    for c in changes {
        if c.by_main_thread() {
            for_main.push(c.clone());
            continue;
        }
        if let Err(e) = apply_one(c) {
            return RuntimeReply::Error { message: format!("{c:?}: {e}") };
        }
    }
    if !for_main.is_empty() {
        *FOR_MAIN_THREAD.lock() = for_main;
        MAIN_THREAD_WORK.store(true, Release);
    }
    RuntimeReply::Done
}

fn check(rc: i64) -> Result<(), String> {
    if rc < 0 {
        Err(std::io::Error::from_raw_os_error(crate::errno::get()).to_string())
    } else {
        Ok(())
    }
}

fn c_string(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| "a NUL inside".to_string())
}

fn write_file(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))
}

fn apply_one(c: &AttributeChange) -> Result<(), String> {
    let pid = crate::pid();
    match c {
        AttributeChange::Umask { umask } => {
            // SAFETY: an integer argument.
            unsafe { libc::umask(*umask as libc::mode_t) };
            Ok(())
        }
        AttributeChange::Cwd { path } => {
            let p = c_string(path)?;
            // SAFETY: a NUL-terminated path that outlives the call.
            check(unsafe { libc::chdir(p.as_ptr()) } as i64)
        }
        AttributeChange::Rlimit { limit } => {
            let rl = libc::rlimit64 { rlim_cur: limit.soft, rlim_max: limit.hard };
            // SAFETY: prlimit64 on this process reads `rl`, a live local.
            check(unsafe { libc::prlimit64(0, limit.resource as _, &rl, core::ptr::null_mut()) } as i64)
        }
        AttributeChange::SetEnv { name, value } => {
            let (n, v) = (c_string(name)?, c_string(value)?);
            let _env = ENV_LOCK.lock();
            // SAFETY: two NUL-terminated strings; the program's threads are parked and
            // ENV_LOCK is held against the runtime's readers.
            check(unsafe { crate::real::setenv()(n.as_ptr(), v.as_ptr(), 1) } as i64)
        }
        AttributeChange::UnsetEnv { name } => {
            let n = c_string(name)?;
            let _env = ENV_LOCK.lock();
            // SAFETY: as for setenv.
            check(unsafe { crate::real::unsetenv()(n.as_ptr()) } as i64)
        }
        AttributeChange::Signal { action } => install(action),
        AttributeChange::Itimer { timer } => {
            let tv = |us: u64| libc::timeval { tv_sec: (us / 1_000_000) as _, tv_usec: (us % 1_000_000) as _ };
            let it = libc::itimerval { it_interval: tv(timer.interval_us), it_value: tv(timer.value_us) };
            // SAFETY: setitimer reads `it`, a live local.
            check(unsafe { libc::setitimer(timer.which as _, &it, core::ptr::null_mut()) } as i64)
        }
        AttributeChange::Nice { nice } => {
            // SAFETY: integers only.
            check(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, *nice) } as i64)
        }
        AttributeChange::Sched { policy, priority } => {
            let p = libc::sched_param { sched_priority: *priority };
            // SAFETY: sched_setscheduler reads `p`, a live local.
            check(unsafe { libc::sched_setscheduler(pid, *policy, &p) } as i64)
        }
        AttributeChange::Affinity { cpus } => {
            // SAFETY: reads cpus.len() words from a live vector.
            check(unsafe { crate::sys!(libc::SYS_sched_setaffinity, pid, cpus.len() * 8, cpus.as_ptr()) })
        }
        AttributeChange::Ioprio { ioprio } => {
            // SAFETY: integers only.
            check(unsafe { crate::sys!(libc::SYS_ioprio_set, 1, pid, *ioprio) })
        }
        AttributeChange::OomScoreAdj { value } => write_file("/proc/self/oom_score_adj", &value.to_string()),
        AttributeChange::Comm { name } => write_file(&format!("{}/comm", main_task()), name),
        AttributeChange::ChildSubreaper { on } => {
            // SAFETY: integers only.
            check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, *on as libc::c_ulong, 0, 0, 0) } as i64)
        }
        AttributeChange::TimerSlack { ns } => write_file("/proc/self/timerslack_ns", &ns.to_string()),
        AttributeChange::ThpDisable { on } => {
            // SAFETY: integers only.
            check(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, *on as libc::c_ulong, 0, 0, 0) } as i64)
        }
        AttributeChange::OwnProcessGroup => {
            // SAFETY: integers only.
            check(unsafe { libc::setpgid(0, 0) } as i64)
        }
        AttributeChange::OwnSession => {
            // SAFETY: no arguments.
            check(unsafe { libc::setsid() } as i64)
        }
        AttributeChange::Groups { groups } => {
            // SAFETY: reads groups.len() IDs from a live vector (glibc sets them on every thread).
            check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as i64)
        }
        AttributeChange::Gids { real, effective, saved } => {
            // SAFETY: integers only (glibc sets them on every thread).
            check(unsafe { libc::setresgid(*real, *effective, *saved) } as i64)
        }
        AttributeChange::Uids { real, effective, saved } => {
            // SAFETY: integers only (glibc sets them on every thread).
            check(unsafe { libc::setresuid(*real, *effective, *saved) } as i64)
        }
        AttributeChange::Dumpable { on } => {
            // SAFETY: integers only.
            let now = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
            if i64::from(now) == i64::from(*on) {
                return Ok(());
            }
            if i64::from(*on) > 1 {
                // 2 is the kernel's own value after a credential change under
                // fs.suid_dumpable=2 (many distributions), which prctl cannot set: this
                // process's own change of credentials (above) gave it whatever the
                // machine gives now. Asked for, it refused every such update.
                return Ok(());
            }
            // SAFETY: integers only.
            check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, *on as libc::c_ulong, 0, 0, 0) } as i64)
        }
        AttributeChange::Mask { .. }
        | AttributeChange::NoNewPrivs
        | AttributeChange::ParentDeathSignal { .. }
        | AttributeChange::Personality { .. }
        | AttributeChange::Pending { .. } => Ok(()),
    }
}

/// Install the old process's action for a signal, its handler being the function of the
/// same name here, through the runtime's own sigaction (which keeps the program's view).
fn install(action: &SignalAction) -> Result<(), String> {
    let handler = match (&action.symbol, action.handler) {
        (_, h @ (0 | 1)) => h as usize,
        (Some(s), _) => {
            let module = if s.in_executable { link("/proc/self/exe") } else { s.module.clone() };
            crate::symbolize::address_of(&module, &s.function)
                .ok_or_else(|| format!("no function {} in {module}", s.function))?
        }
        (None, h) => return Err(format!("handler {h:#x} is not a named function")),
    };
    let sa = crate::signals::new_sigaction(handler, action.flags, bits_sigset(action.mask));
    // SAFETY: our sigaction wrapper with a live action and no old one.
    check(unsafe { crate::interpose::signals::sigaction(action.signal, &sa, core::ptr::null_mut()) } as i64)
}

/// The main thread, leaving its parking place: apply what only it can (its mask first,
/// then raise the pending signals the mask now holds back).
pub fn on_unpark(is_main: bool) {
    if !is_main || !MAIN_THREAD_WORK.swap(false, AcqRel) {
        return;
    }
    let _internal = crate::threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let changes = core::mem::take(&mut *FOR_MAIN_THREAD.lock());
    for c in &changes {
        let failed = match c {
            AttributeChange::Mask { mask } => {
                crate::signals::set_thread_mask(libc::SIG_SETMASK, &bits_sigset(*mask));
                false
            }
            // SAFETY: integers only.
            AttributeChange::NoNewPrivs => (unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }) != 0,
            AttributeChange::ParentDeathSignal { signal } => {
                // SAFETY: integers only.
                (unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, *signal as libc::c_ulong, 0, 0, 0) }) != 0
            }
            // SAFETY: an integer argument.
            AttributeChange::Personality { persona } => (unsafe { libc::personality(*persona as libc::c_ulong) }) < 0,
            // SAFETY: integers only.
            AttributeChange::Pending { signal, thread: false } => (unsafe { libc::kill(crate::pid(), *signal) }) != 0,
            AttributeChange::Pending { signal, thread: true } => {
                // SAFETY: integers only.
                (unsafe { crate::sys!(libc::SYS_tgkill, crate::pid(), crate::threads::gettid(), *signal) }) != 0
            }
            _ => false,
        };
        if failed {
            crate::diag::warn(&format!("could not take over {c:?} from the old version"));
        }
    }
}

pub fn reset_after_fork() {
    AT_STARTUP.force_unlock();
    ENV_LOCK.force_unlock();
    SET_AFTER_STARTUP.force_unlock();
    FOR_MAIN_THREAD.force_unlock();
    // The child's own startup completion takes its snapshot.
    *AT_STARTUP.lock() = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_timers_are_one_line_each() {
        let t = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.5\nClockID: 1\nID: 1\nsignal: 0/0\nnotify: none/pid.5\nClockID: 0\n";
        let v = posix_timers(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], "ID 0, signal 14/0000000000000000, notify signal/pid.5, ClockID 1");
    }

    #[test]
    fn signal_sets_round_trip() {
        let bits = (1 << (libc::SIGUSR1 - 1)) | (1 << 40);
        assert_eq!(sigset_bits(&bits_sigset(bits)), bits);
    }
}
