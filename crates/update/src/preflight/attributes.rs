//! Process attributes the old version changed after startup (signal mask and handlers, timers, umask, rlimits, cwd, credentials, prctl state).
//!
//! Each old process's runtime snapshots its attributes when its startup completes and
//! reports them again on request ([`Snapshots`]); the difference is what the old version
//! changed after startup ([`differences`]). What the transfer can take over is a list of
//! [`AttributeChange`]s for the new process's runtime; the rest is named here.

use super::{Context, Unmovable};
use mcr_protocol::attributes::{signals_of, Itimer, STANDARD_SIGNALS};
use mcr_protocol::{AttributeChange, ProcessAttributes};

/// One process's attributes at startup completion (absent: not complete) and now.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub startup: Option<ProcessAttributes>,
    pub now: ProcessAttributes,
}

/// One attribute the old version changed after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// As an operator would look for it: "the umask", "rlimit NOFILE".
    pub what: String,
    /// How the new process takes it over, or why it cannot.
    pub carry: Result<Vec<AttributeChange>, String>,
}

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut out = Vec::new();
    for (&pid, snaps) in &ctx.attributes {
        for d in snaps.differences(pid) {
            if let Err(why) = d.carry {
                out.push(Unmovable { pid, what: d.what, why });
            }
        }
    }
    out
}

impl Snapshots {
    /// What the old process `pid` (PID in its namespace) changed after startup.
    pub fn differences(&self, pid: i32) -> Vec<Difference> {
        match &self.startup {
            Some(startup) => differences(pid, startup, &self.now),
            None => Vec::new(),
        }
    }

    /// What the new process must apply, in order; Err names what it cannot.
    pub fn changes(&self, pid: i32) -> Result<Vec<AttributeChange>, Vec<(String, String)>> {
        let mut changes = Vec::new();
        let mut refused = Vec::new();
        for d in self.differences(pid) {
            match d.carry {
                Ok(c) => changes.extend(c),
                Err(why) => refused.push((d.what, why)),
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        // The main thread applies its own after the rest (credentials last among those).
        changes.sort_by_key(|c| (c.by_main_thread(), order(c)));
        Ok(changes)
    }
}

/// Where a change goes in the new process: privileged ones before the credentials drop
/// the privileges; dumpable after them (a change of effective ID resets it); the mask
/// before the pending signals it must hold back.
fn order(c: &AttributeChange) -> u8 {
    match c {
        AttributeChange::OwnSession => 1,
        AttributeChange::OwnProcessGroup => 2,
        AttributeChange::Groups { .. } => 3,
        AttributeChange::Gids { .. } => 4,
        AttributeChange::Uids { .. } => 5,
        AttributeChange::Dumpable { .. } => 6,
        AttributeChange::Pending { .. } => 7,
        _ => 0,
    }
}

/// The signal's usual name: SIGUSR1, SIGRTMIN+3.
pub fn signal_label(sig: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    // glibc's SIGRTMIN: 32 and 33 are its own.
    match sig {
        1..=31 => NAMES[(sig - 1) as usize].to_string(),
        34..=64 => format!("SIGRTMIN+{}", sig - 34),
        _ => format!("signal {sig}"),
    }
}

fn labels(mask: u64) -> String {
    signals_of(mask).map(signal_label).collect::<Vec<_>>().join(", ")
}

const RLIMIT_NAMES: [&str; 16] = [
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

fn itimer_name(which: i32) -> &'static str {
    match which {
        0 => "ITIMER_REAL",
        1 => "ITIMER_VIRTUAL",
        _ => "ITIMER_PROF",
    }
}

fn env_map(env: &[String]) -> Vec<(&str, &str)> {
    env.iter().map(|e| e.split_once('=').unwrap_or((e.as_str(), ""))).collect()
}

/// What the old process `pid` changed between `startup` and `now`.
pub fn differences(pid: i32, startup: &ProcessAttributes, now: &ProcessAttributes) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut carry = |what: String, changes: Vec<AttributeChange>| out.push(Difference { what, carry: Ok(changes) });
    let (s, n) = (startup, now);
    if s.umask != n.umask {
        carry(
            format!("the umask ({:03o}, {:03o} at startup)", n.umask, s.umask),
            vec![AttributeChange::Umask { umask: n.umask }],
        );
    }
    if s.cwd != n.cwd {
        carry(format!("cwd {}", n.cwd), vec![AttributeChange::Cwd { path: n.cwd.clone() }]);
    }
    for l in &n.rlimits {
        if s.rlimits.iter().any(|o| o.resource == l.resource && o != l) {
            let name = RLIMIT_NAMES.get(l.resource as usize).copied().unwrap_or("?");
            carry(format!("rlimit {name}"), vec![AttributeChange::Rlimit { limit: *l }]);
        }
    }
    let (se, ne) = (env_map(&s.env), env_map(&n.env));
    for &(name, value) in &ne {
        if !se.contains(&(name, value)) {
            carry(
                format!("environment variable {name} (set since startup)"),
                vec![AttributeChange::SetEnv { name: name.to_string(), value: value.to_string() }],
            );
        }
    }
    for &(name, _) in &se {
        if !ne.iter().any(|&(m, _)| m == name) {
            carry(
                format!("environment variable {name} (unset since startup)"),
                vec![AttributeChange::UnsetEnv { name: name.to_string() }],
            );
        }
    }
    for a in &n.signals {
        let before = s.signals.iter().find(|o| o.signal == a.signal);
        let same = before.is_some_and(|o| o.handler == a.handler && o.flags == a.flags && o.mask == a.mask);
        if same {
            continue;
        }
        let what = match (a.handler, &a.symbol) {
            (0, _) => format!("the action of {} (default since startup)", signal_label(a.signal)),
            (1, _) => format!("the action of {} (ignored since startup)", signal_label(a.signal)),
            (_, Some(sym)) => {
                format!("the action of {} (handler {} since startup)", signal_label(a.signal), sym.function)
            }
            (h, None) => format!("the action of {} (handler {h:#x} since startup)", signal_label(a.signal)),
        };
        if a.handler > 1 && a.symbol.is_none() {
            out.push(Difference {
                what,
                carry: Err(
                    "the handler is not the start of a named function, so the new version has no counterpart".into()
                ),
            });
        } else {
            out.push(Difference { what, carry: Ok(vec![AttributeChange::Signal { action: a.clone() }]) });
        }
    }
    if s.mask != n.mask {
        let blocked = n.mask & !s.mask;
        let what = if blocked != 0 {
            format!("the signal mask ({} blocked since startup)", labels(blocked))
        } else {
            format!("the signal mask ({} unblocked since startup)", labels(s.mask & !n.mask))
        };
        out.push(Difference { what, carry: Ok(vec![AttributeChange::Mask { mask: n.mask }]) });
    }
    for (bits, thread) in
        [(n.pending_process & !s.pending_process, false), (n.pending_thread & !s.pending_thread, true)]
    {
        let whose = if thread { "the main thread" } else { "the process" };
        for sig in signals_of(bits) {
            let what = format!("pending signal {} (for {whose})", signal_label(sig));
            if STANDARD_SIGNALS & (1 << (sig - 1)) != 0 {
                out.push(Difference { what, carry: Ok(vec![AttributeChange::Pending { signal: sig, thread }]) });
            } else {
                out.push(Difference {
                    what,
                    carry: Err("real-time signals queue with values only taking them would show".into()),
                });
            }
        }
    }
    for t in &n.itimers {
        let before = s.itimers.iter().find(|o| o.which == t.which).copied();
        if before != Some(*t) && !(is_idle(t) && before.is_none_or(|b| is_idle(&b))) {
            out.push(Difference {
                what: format!("the interval timer {}", itimer_name(t.which)),
                carry: Ok(vec![AttributeChange::Itimer { timer: *t }]),
            });
        }
    }
    let timer_id = |t: &String| t.split(',').next().map(str::to_string);
    for t in &n.posix_timers {
        if !s.posix_timers.iter().any(|o| timer_id(o) == timer_id(t)) {
            out.push(Difference {
                what: format!("POSIX timer {}", t.trim_start_matches("ID ")),
                carry: Err("mcr does not recreate POSIX timers (the new one would have another ID)".into()),
            });
        }
    }
    let creds_changed = s.uids != n.uids || s.gids != n.gids || s.groups != n.groups;
    if s.sid != n.sid && n.ctty != 0 {
        out.push(Difference {
            what: "the session and its controlling terminal (since startup)".into(),
            carry: Err("mcr does not make a terminal the new session's".into()),
        });
    } else if s.sid != n.sid {
        out.push(own(pid, n.sid, "the session", AttributeChange::OwnSession));
    }
    if s.pgid != n.pgid && !(s.sid != n.sid && n.sid == n.pgid) {
        out.push(own(pid, n.pgid, "the process group", AttributeChange::OwnProcessGroup));
    }
    if s.groups != n.groups {
        out.push(Difference {
            what: "the supplementary groups".into(),
            carry: Ok(vec![AttributeChange::Groups { groups: n.groups.clone() }]),
        });
    }
    if s.gids != n.gids {
        let [real, effective, saved, _] = n.gids;
        out.push(Difference {
            what: format!("the group IDs ({real}/{effective}/{saved})"),
            carry: Ok(vec![AttributeChange::Gids { real, effective, saved }]),
        });
    }
    if s.uids != n.uids {
        let [real, effective, saved, _] = n.uids;
        out.push(Difference {
            what: format!("the user IDs ({real}/{effective}/{saved})"),
            carry: Ok(vec![AttributeChange::Uids { real, effective, saved }]),
        });
    }
    // A change of user IDs changes the capabilities the same way in the new process.
    if s.caps != n.caps && s.uids == n.uids {
        out.push(Difference {
            what: "the capabilities".into(),
            carry: Err("capability sets are the main thread's own; mcr does not set them".into()),
        });
    }
    if s.dumpable != n.dumpable || creds_changed {
        out.push(Difference {
            what: format!("PR_SET_DUMPABLE ({})", n.dumpable),
            carry: Ok(vec![AttributeChange::Dumpable { on: n.dumpable }]),
        });
    }
    let mut simple = |changed: bool, what: String, change: AttributeChange| {
        if changed {
            out.push(Difference { what, carry: Ok(vec![change]) });
        }
    };
    simple(s.comm != n.comm, format!("the thread name {:?}", n.comm), AttributeChange::Comm { name: n.comm.clone() });
    simple(
        s.child_subreaper != n.child_subreaper,
        "PR_SET_CHILD_SUBREAPER".into(),
        AttributeChange::ChildSubreaper { on: n.child_subreaper },
    );
    simple(
        s.no_new_privs != n.no_new_privs && n.no_new_privs == 1,
        "PR_SET_NO_NEW_PRIVS".into(),
        AttributeChange::NoNewPrivs,
    );
    simple(
        s.timerslack_ns != n.timerslack_ns
            && ![s.timerslack_ns, n.timerslack_ns].contains(&mcr_protocol::attributes::UNKNOWN_TIMER_SLACK),
        format!("the timer slack ({} ns)", n.timerslack_ns),
        AttributeChange::TimerSlack { ns: n.timerslack_ns },
    );
    simple(
        s.thp_disable != n.thp_disable,
        "PR_SET_THP_DISABLE".into(),
        AttributeChange::ThpDisable { on: n.thp_disable },
    );
    simple(s.nice != n.nice, format!("the nice value ({})", n.nice), AttributeChange::Nice { nice: n.nice });
    simple(
        (s.sched_policy, s.sched_priority) != (n.sched_policy, n.sched_priority),
        format!("the scheduling policy ({})", n.sched_policy),
        AttributeChange::Sched { policy: n.sched_policy, priority: n.sched_priority },
    );
    simple(s.affinity != n.affinity, "the CPU affinity".into(), AttributeChange::Affinity { cpus: n.affinity.clone() });
    simple(
        s.personality != n.personality,
        format!("the personality ({:#x})", n.personality),
        AttributeChange::Personality { persona: n.personality },
    );
    simple(
        s.ioprio != n.ioprio,
        format!("the I/O priority ({:#x})", n.ioprio),
        AttributeChange::Ioprio { ioprio: n.ioprio },
    );
    simple(
        s.oom_score_adj != n.oom_score_adj,
        format!("oom_score_adj ({})", n.oom_score_adj),
        AttributeChange::OomScoreAdj { value: n.oom_score_adj },
    );
    let mut refuse = |changed: bool, what: String, why: &str| {
        if changed {
            out.push(Difference { what, carry: Err(why.to_string()) });
        }
    };
    refuse(s.root != n.root, format!("the root directory {}", n.root), "mcr does not carry a chroot");
    refuse(
        s.no_new_privs != n.no_new_privs && n.no_new_privs == 0,
        "PR_SET_NO_NEW_PRIVS".into(),
        "the kernel does not let it be cleared",
    );
    refuse(
        s.seccomp != n.seccomp,
        "a seccomp filter".into(),
        "the kernel does not let a filter be read back or installed in another process",
    );
    for (ns, link) in &n.namespaces {
        // Empty: the process could not read it at its start (forked inside a chroot
        // without /proc): unknown, not compared.
        let before = s.namespaces.iter().find(|(m, _)| m == ns).map(|(_, l)| l).filter(|l| !l.is_empty());
        refuse(
            before.is_some_and(|b| b != link),
            format!("the {ns} namespace ({link}, joined since startup)"),
            "the new version runs in the namespaces it started in",
        );
    }
    for what in n.set_after_startup.iter().filter(|w| !s.set_after_startup.contains(w)) {
        if let Some(signal) = what.strip_prefix("PR_SET_PDEATHSIG=").and_then(|v| v.parse().ok()) {
            out.push(Difference {
                what: format!("the parent-death signal ({})", signal_label(signal)),
                carry: Ok(vec![AttributeChange::ParentDeathSignal { signal }]),
            });
            continue;
        }
        let (label, why) = match what.as_str() {
            "sigaltstack" => (
                "the alternate signal stack".to_string(),
                "mcr does not carry it (the stack's address is the old version's)",
            ),
            mcr_protocol::SEM_UNDO_ADJUSTMENT => (
                "a SysV semaphore adjustment (semop with SEM_UNDO)".to_string(),
                "the kernel keeps it for the old process and applies it when that process exits; it cannot be \
                 given to the new one",
            ),
            other => {
                (other.to_string(), "another thread than the main one set it, and only that thread can read it back")
            }
        };
        out.push(Difference { what: format!("{label} (set since startup)"), carry: Err(why.to_string()) });
    }
    out
}

fn is_idle(t: &Itimer) -> bool {
    t.value_us == 0 && t.interval_us == 0
}

/// A session or process group the old process made its own is made again; joining
/// another's is not carried.
fn own(pid: i32, now: i32, what: &str, change: AttributeChange) -> Difference {
    if now == pid {
        Difference { what: format!("{what} (its own since startup)"), carry: Ok(vec![change]) }
    } else {
        Difference {
            what: format!("{what} ({now}, joined since startup)"),
            carry: Err("mcr only recreates a session or process group the process leads".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcr_protocol::attributes::{HandlerSymbol, Rlimit, SignalAction};

    fn base() -> ProcessAttributes {
        ProcessAttributes {
            umask: 0o022,
            cwd: "/srv".into(),
            root: "/".into(),
            rlimits: vec![Rlimit { resource: 7, soft: 1024, hard: 4096 }],
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            signals: vec![SignalAction { signal: 13, handler: 1, flags: 0, mask: 0, symbol: None }],
            itimers: vec![Itimer { which: 0, value_us: 0, interval_us: 0 }],
            uids: [0; 4],
            gids: [0; 4],
            pgid: 1,
            sid: 1,
            dumpable: 1,
            ..Default::default()
        }
    }

    fn whats(d: &[Difference]) -> Vec<&str> {
        d.iter().map(|d| d.what.as_str()).collect()
    }

    #[test]
    fn nothing_changed_nothing_to_carry() {
        assert!(differences(5, &base(), &base()).is_empty());
        let snaps = Snapshots { startup: None, now: base() };
        assert!(snaps.differences(5).is_empty(), "before startup completes, nothing counts as changed after it");
    }

    #[test]
    fn simple_attributes_are_carried_with_their_values_now() {
        let mut now = base();
        now.umask = 0o027;
        now.cwd = "/tmp/x".into();
        now.rlimits[0].soft = 4000;
        now.env = vec!["HOME=/root".into(), "NEW=1".into()];
        let d = differences(5, &base(), &now);
        assert_eq!(
            whats(&d),
            [
                "the umask (027, 022 at startup)",
                "cwd /tmp/x",
                "rlimit NOFILE",
                "environment variable NEW (set since startup)",
                "environment variable PATH (unset since startup)",
            ]
        );
        assert!(d.iter().all(|d| d.carry.is_ok()));
        assert_eq!(
            d[2].carry,
            Ok(vec![AttributeChange::Rlimit { limit: Rlimit { resource: 7, soft: 4000, hard: 4096 } }])
        );
    }

    #[test]
    fn handlers_go_by_name_and_unnamed_ones_are_refused() {
        let mut now = base();
        let sym = HandlerSymbol { function: "on_usr1".into(), module: "/bin/srv".into(), in_executable: true };
        now.signals.push(SignalAction { signal: 10, handler: 0x1234, flags: 4, mask: 0, symbol: Some(sym) });
        now.signals.push(SignalAction { signal: 12, handler: 0x1240, flags: 0, mask: 0, symbol: None });
        let d = differences(5, &base(), &now);
        assert_eq!(
            whats(&d),
            [
                "the action of SIGUSR1 (handler on_usr1 since startup)",
                "the action of SIGUSR2 (handler 0x1240 since startup)"
            ]
        );
        assert!(d[0].carry.is_ok());
        assert!(d[1].carry.is_err());
    }

    #[test]
    fn the_mask_is_named_by_signal_and_applied_before_pending_signals() {
        let mut now = base();
        now.mask = (1 << 9) | (1 << 36);
        now.pending_process = 1 << 11;
        now.pending_thread = 1 << 37;
        let d = differences(5, &base(), &now);
        assert_eq!(d[0].what, "the signal mask (SIGUSR1, SIGRTMIN+3 blocked since startup)");
        assert_eq!(d[1].what, "pending signal SIGUSR2 (for the process)");
        assert!(d[2].carry.is_err(), "a queued real-time signal is refused: {:?}", d[2]);
        now.pending_thread = 0;
        let changes = Snapshots { startup: Some(base()), now }.changes(5).expect("carried");
        assert_eq!(
            changes,
            [AttributeChange::Mask { mask: now_mask() }, AttributeChange::Pending { signal: 12, thread: false }]
        );
    }

    fn now_mask() -> u64 {
        (1 << 9) | (1 << 36)
    }

    #[test]
    fn credentials_come_last_then_dumpable_and_capabilities_follow_them() {
        let mut now = base();
        now.uids = [0, 4103, 0, 4103];
        now.caps = [0, 1, 0, 0, 0];
        now.dumpable = 0;
        now.nice = 7;
        let changes = Snapshots { startup: Some(base()), now: now.clone() }.changes(5).expect("carried");
        assert_eq!(
            changes,
            [
                AttributeChange::Nice { nice: 7 },
                AttributeChange::Uids { real: 0, effective: 4103, saved: 0 },
                AttributeChange::Dumpable { on: 0 }
            ]
        );
        now.uids = [0; 4];
        let refused = Snapshots { startup: Some(base()), now }.changes(5).expect_err("capabilities alone");
        assert_eq!(refused[0].0, "the capabilities");
    }

    #[test]
    fn own_session_and_group_are_made_again_joined_ones_are_refused() {
        let mut now = base();
        now.sid = 5;
        now.pgid = 5;
        assert_eq!(
            Snapshots { startup: Some(base()), now: now.clone() }.changes(5),
            Ok(vec![AttributeChange::OwnSession])
        );
        now.ctty = 0x8800;
        assert!(Snapshots { startup: Some(base()), now: now.clone() }.changes(5).is_err(), "a controlling terminal");
        now.ctty = 0;
        now.sid = 1;
        assert_eq!(
            Snapshots { startup: Some(base()), now: now.clone() }.changes(5),
            Ok(vec![AttributeChange::OwnProcessGroup])
        );
        now.pgid = 3;
        assert!(Snapshots { startup: Some(base()), now }.changes(5).is_err());
    }

    #[test]
    fn what_the_kernel_cannot_recreate_is_refused_and_named() {
        let mut now = base();
        now.seccomp = 2;
        now.namespaces = vec![("uts".into(), "uts:[2]".into())];
        now.posix_timers = vec!["ID 0, signal 14/0, notify none/pid.5, ClockID 1".into()];
        now.set_after_startup = vec!["sigaltstack".into(), mcr_protocol::SEM_UNDO_ADJUSTMENT.into()];
        let mut startup = base();
        startup.namespaces = vec![("uts".into(), "uts:[1]".into())];
        let d = differences(5, &startup, &now);
        assert_eq!(
            whats(&d),
            [
                "POSIX timer 0, signal 14/0, notify none/pid.5, ClockID 1",
                "a seccomp filter",
                "the uts namespace (uts:[2], joined since startup)",
                "the alternate signal stack (set since startup)",
                "a SysV semaphore adjustment (semop with SEM_UNDO) (set since startup)",
            ]
        );
        assert!(d.iter().all(|d| d.carry.is_err()));
    }

    /// httpd's children (nobody, not dumpable) cannot read their own timer slack: an
    /// unreadable one was read as 0, carried, and the new child could not set it
    /// ("/proc/self/timerslack_ns: Operation not permitted"): the update rolled back.
    #[test]
    fn a_timer_slack_the_process_could_not_read_is_not_compared() {
        let (mut startup, mut now) = (base(), base());
        startup.timerslack_ns = 50_000;
        now.timerslack_ns = mcr_protocol::attributes::UNKNOWN_TIMER_SLACK;
        assert!(differences(5, &startup, &now).is_empty());
        now.timerslack_ns = 1_000;
        assert_eq!(whats(&differences(5, &startup, &now)), ["the timer slack (1000 ns)"]);
    }

    #[test]
    fn a_namespace_the_process_could_not_read_at_its_start_is_not_compared() {
        let mut now = base();
        now.namespaces = vec![("uts".into(), "uts:[2]".into())];
        let mut startup = base();
        startup.namespaces = vec![("uts".into(), String::new())];
        assert!(differences(5, &startup, &now).is_empty());
        startup.namespaces = vec![("uts".into(), "uts:[1]".into())];
        assert_eq!(whats(&differences(5, &startup, &now)), ["the uts namespace (uts:[2], joined since startup)"]);
    }

    #[test]
    fn the_main_threads_parent_death_signal_is_carried_another_threads_is_not() {
        let mut now = base();
        now.set_after_startup = vec!["PR_SET_PDEATHSIG=28".into()];
        let changes = Snapshots { startup: Some(base()), now: now.clone() }.changes(5);
        assert_eq!(changes, Ok(vec![AttributeChange::ParentDeathSignal { signal: 28 }]));
        now.set_after_startup = vec!["PR_SET_PDEATHSIG".into()];
        assert!(Snapshots { startup: Some(base()), now }.changes(5).is_err());
    }

    #[test]
    fn a_running_itimer_is_carried_an_idle_one_is_not() {
        let mut now = base();
        assert!(differences(5, &base(), &now).is_empty());
        now.itimers[0] = Itimer { which: 0, value_us: 3_599_000_000, interval_us: 1_800_000_000 };
        let d = differences(5, &base(), &now);
        assert_eq!(whats(&d), ["the interval timer ITIMER_REAL"]);
    }

    #[test]
    fn signal_labels() {
        assert_eq!(signal_label(10), "SIGUSR1");
        assert_eq!(signal_label(37), "SIGRTMIN+3");
        assert_eq!(signal_label(31), "SIGSYS");
    }
}
