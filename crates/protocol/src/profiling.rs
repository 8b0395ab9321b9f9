//! Messages of profiling mode (`mcr profile`, paper §4): what each process's runtime
//! sampled about where its threads block.
//!
//! Times are `CLOCK_MONOTONIC` milliseconds, one clock for every process of the host, so
//! the CLI can place a thread's life against the moment the server completed startup.

use crate::messages::CallStack;
use serde::{Deserialize, Serialize};

/// One blocking call site of a thread, as seen by the sampler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileSite {
    /// The wrapped call (`epoll_wait`, `read`, ...).
    pub call: String,
    /// Where it was called from; `stack.id` is the quiescent-point ID a profile lists.
    pub stack: CallStack,
    /// Samples that found the thread blocked here.
    pub samples: u64,
}

/// One thread (one life: a slot reused by a later thread is another entry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadProfile {
    pub tid: i32,
    /// The process's first thread (its class is the process's: how the process was made).
    pub main: bool,
    /// For threads made by `pthread_create`: where (the class is this stack's ID).
    pub creation_stack: Option<CallStack>,
    /// The thread's start routine, when known.
    pub start_routine: Option<String>,
    /// Still running when the snapshot was taken.
    pub alive: bool,
    /// When the sampler first and last saw the thread (monotonic ms).
    pub first_seen_ms: f64,
    pub last_seen_ms: f64,
    /// CPU time the thread used, as last read (ms).
    pub cpu_ms: f64,
    /// Times the thread blocked in the kernel (voluntary context switches), as last read:
    /// tells a thread the workload woke from one that only slept.
    #[serde(default)]
    pub wakeups: u64,
    /// Samples that found the thread outside any wrapped call (running, or in a system
    /// call mcr does not wrap).
    pub running_samples: u64,
    pub sites: Vec<ProfileSite>,
}

/// What one process's sampler gathered so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessProfile {
    pub pid: i32,
    pub ppid: i32,
    pub exe: String,
    /// Where the process was forked (in the parent's code); `None` for a process started
    /// by exec (the server's first process).
    pub fork_stack: Option<CallStack>,
    /// Sampling period (µs).
    pub period_us: u64,
    /// Ticks the sampler made.
    pub ticks: u64,
    /// When this snapshot was taken (monotonic ms).
    pub taken_ms: f64,
    /// CPU the sampler itself used (ms), and the whole process (ms, sampler included).
    pub sampler_cpu_ms: f64,
    pub process_cpu_ms: f64,
    pub startup_complete: bool,
    /// False when the process was gone by the time the snapshot was asked for (the last
    /// report it sent is shown).
    pub alive: bool,
    pub threads: Vec<ThreadProfile>,
}
