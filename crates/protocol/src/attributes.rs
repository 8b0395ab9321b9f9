//! Process attributes (issue 12): what a process's runtime reads of its own process, once
//! when its startup completes and again on request. What the old version changed after
//! startup carries over to the new one ([`AttributeChange`]s, applied by the new
//! process's runtime before it resumes); what only startup set is the new version's own.
//!
//! Per-thread attributes are those of the main thread (the thread-group leader).

use serde::{Deserialize, Serialize};

/// One process's attributes. Signal sets are bit masks (bit `n - 1` for signal `n`),
/// without the runtime's kick signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessAttributes {
    pub umask: u32,
    pub cwd: String,
    pub root: String,
    pub rlimits: Vec<Rlimit>,
    /// `NAME=value`, in the order of `environ`.
    pub env: Vec<String>,
    /// Every signal whose action could be read, with the program's handler (not the
    /// runtime's trampoline).
    pub signals: Vec<SignalAction>,
    /// Blocked by the main thread.
    pub mask: u64,
    /// Pending for the whole process (`ShdPnd`) and for the main thread (`SigPnd`).
    pub pending_process: u64,
    pub pending_thread: u64,
    pub itimers: Vec<Itimer>,
    /// The POSIX timers of /proc/self/timers, one line each ("ID 0 CLOCK 1 notify signal/pid.1").
    pub posix_timers: Vec<String>,
    /// Real, effective, saved and filesystem IDs.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    /// Effective, permitted, inheritable, bounding and ambient capability sets.
    pub caps: [u64; 5],
    /// Process group and session (PIDs in the instance's namespace).
    pub pgid: i32,
    pub sid: i32,
    /// The controlling terminal's device number (0: none).
    #[serde(default)]
    pub ctty: i32,
    /// The main thread's name (PR_SET_NAME).
    pub comm: String,
    pub dumpable: i32,
    pub child_subreaper: i32,
    pub no_new_privs: i32,
    /// [`UNKNOWN_TIMER_SLACK`] when it could not be read (a process that made itself
    /// non-dumpable, or changed user, may not read its own /proc/self/timerslack_ns).
    pub timerslack_ns: u64,
    pub thp_disable: i32,
    /// Seccomp mode of the main thread (0 none, 1 strict, 2 filter).
    pub seccomp: i32,
    pub nice: i32,
    pub sched_policy: i32,
    pub sched_priority: i32,
    /// CPUs the main thread may run on, as `sched_getaffinity` words.
    pub affinity: Vec<u64>,
    pub personality: u32,
    pub ioprio: i32,
    pub oom_score_adj: i32,
    /// Namespaces of the main thread: ("uts", "uts:[4026531838]"), ...
    pub namespaces: Vec<(String, String)>,
    /// Settings only the thread that made them can read back, seen by the runtime's
    /// wrappers when the program made them after startup: "sigaltstack",
    /// "PR_SET_PDEATHSIG=N" (by the main thread), "PR_SET_PDEATHSIG" (by another).
    pub set_after_startup: Vec<String>,
}

/// In [`ProcessAttributes::set_after_startup`]: a semop with SEM_UNDO succeeded after
/// startup, leaving an adjustment the kernel applies when the old process exits.
pub const SEM_UNDO_ADJUSTMENT: &str = "SEM_UNDO";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// A signal's action as the program installed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalAction {
    pub signal: i32,
    /// SIG_DFL (0), SIG_IGN (1) or the handler's address.
    pub handler: u64,
    /// SA_ flags as the program gave them (SA_RESTORER left out).
    pub flags: i32,
    /// Signals blocked while the handler runs.
    pub mask: u64,
    /// The handler as a function: absent for SIG_DFL and SIG_IGN, and for an address
    /// that is not the start of a named function.
    pub symbol: Option<HandlerSymbol>,
}

/// A handler by name, so the new version installs its own function of that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerSymbol {
    pub function: String,
    /// The module that holds it.
    pub module: String,
    /// Whether that module is the program's executable (whose path differs between the
    /// versions; a library's does not).
    pub in_executable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Itimer {
    /// ITIMER_REAL, ITIMER_VIRTUAL or ITIMER_PROF.
    pub which: i32,
    /// Time left and reload interval, in microseconds.
    pub value_us: u64,
    pub interval_us: u64,
}

/// One attribute the new process takes over from the old one, applied by its runtime in
/// the order given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "attribute", rename_all = "snake_case")]
pub enum AttributeChange {
    Umask {
        umask: u32,
    },
    Cwd {
        path: String,
    },
    Rlimit {
        limit: Rlimit,
    },
    SetEnv {
        name: String,
        value: String,
    },
    UnsetEnv {
        name: String,
    },
    /// Install `action` (its handler found by symbol in the new process).
    Signal {
        action: SignalAction,
    },
    Itimer {
        timer: Itimer,
    },
    Nice {
        nice: i32,
    },
    Sched {
        policy: i32,
        priority: i32,
    },
    Affinity {
        cpus: Vec<u64>,
    },
    Ioprio {
        ioprio: i32,
    },
    OomScoreAdj {
        value: i32,
    },
    Comm {
        name: String,
    },
    ChildSubreaper {
        on: i32,
    },
    TimerSlack {
        ns: u64,
    },
    ThpDisable {
        on: i32,
    },
    /// A process group of its own (the old process led one it made after startup).
    OwnProcessGroup,
    /// A session of its own.
    OwnSession,
    Groups {
        groups: Vec<u32>,
    },
    Gids {
        real: u32,
        effective: u32,
        saved: u32,
    },
    Uids {
        real: u32,
        effective: u32,
        saved: u32,
    },
    /// After the credentials: a change of effective ID resets it.
    Dumpable {
        on: i32,
    },
    /// Applied by the main thread itself as it leaves its parking place (a signal mask
    /// and what follows are the thread's own).
    Mask {
        mask: u64,
    },
    NoNewPrivs,
    /// PR_SET_PDEATHSIG of the main thread.
    ParentDeathSignal {
        signal: i32,
    },
    Personality {
        persona: u32,
    },
    /// A standard signal pending for the process (or only its main thread): raised again,
    /// once the mask blocks it.
    Pending {
        signal: i32,
        thread: bool,
    },
}

impl AttributeChange {
    /// Whether the main thread applies it itself (the others are applied by the control
    /// thread, for the whole process or for the main thread by its TID).
    pub fn by_main_thread(&self) -> bool {
        matches!(
            self,
            AttributeChange::Mask { .. }
                | AttributeChange::NoNewPrivs
                | AttributeChange::ParentDeathSignal { .. }
                | AttributeChange::Personality { .. }
                | AttributeChange::Pending { .. }
        )
    }
}

/// The first word of every standard signal's bit mask (signals 1-31), for splitting
/// pending signals from real-time ones.
pub const STANDARD_SIGNALS: u64 = (1 << 31) - 1;

/// The signals of a mask, ascending.
pub fn signals_of(mask: u64) -> impl Iterator<Item = i32> {
    (1..=64).filter(move |s| mask & (1u64 << (s - 1)) != 0)
}

/// A timer slack that could not be read: never compared.
pub const UNKNOWN_TIMER_SLACK: u64 = u64::MAX;
