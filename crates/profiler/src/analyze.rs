//! From sampled data to thread classes and quiescent points (paper §4, Table 1).
//!
//! Input: two rounds of per-process profiles, one taken right after the server completed
//! startup and one at the end of the workload. Output: per thread class (threads grouped
//! by their creation call-stack ID across processes) whether it is short- or long-lived,
//! persistent or volatile, where it blocked and for how long, its long-lived loop and its
//! quiescent point, plus the warnings the report prints.
//!
//! * **Class**: a thread made by `pthread_create` belongs to the class of that call's
//!   stack ID; a process's first thread to the class of the `fork` call that made the
//!   process (in the parent's code), or, for a process started by exec, to the class of
//!   its program.
//! * **Long-lived loop**: the deepest function present, at the same depth from the
//!   bottom, in every sampled stack of every thread of the class: the frame no sample ever
//!   saw returned. Samples only see a thread while it is blocked, so a function that
//!   returns and is called again between two samples looks the same as one that loops.
//! * **Quiescent point**: the blocking call where the class spends most of its time,
//!   except that among the calls with a substantial share (at least a quarter of the top
//!   one's), the one nearest to the long-lived loop wins: a call made deeper, inside an
//!   iteration (handling a request), leaves the thread in the middle of that request.

use mcr_protocol::{CallStack, ProcessProfile, ThreadProfile};
use std::collections::BTreeMap;

/// A site below this share of the top site's time never becomes the quiescent point.
const CANDIDATE_RATIO: f64 = 0.25;
/// A non-chosen site with at least this share of the chosen one's time is "similar".
const SIMILAR_RATIO: f64 = 0.5;
/// A class is reached when its threads blocked (woke up) more than twice as often
/// during the workload as while the server sat idle after startup, plus this many.
const REACHED_MARGIN: f64 = 3.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub call: String,
    pub stack: CallStack,
    pub samples: u64,
    pub ms: f64,
    /// Share of the class's blocked samples.
    pub share: f64,
    /// Frames between the long-lived loop and the call (0: called by the loop's function).
    pub depth: usize,
    /// Why this site is not the quiescent point (None for the quiescent point).
    pub not_qp_because: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    /// The class's call-stack ID (hex).
    pub id: String,
    pub label: String,
    /// `pthread_create`, `fork` or `exec`.
    pub made_by: String,
    /// The creating call stack, when there is one.
    pub creation: Option<CallStack>,
    pub long_lived: bool,
    pub persistent: bool,
    /// Threads of the class seen (all processes), and alive at the end.
    pub instances: usize,
    pub alive_at_end: usize,
    pub processes: usize,
    pub blocked_samples: u64,
    pub running_samples: u64,
    pub sites: Vec<Site>,
    /// Index into `sites`.
    pub qp: Option<usize>,
    /// Function name of the long-lived loop, and its frame (from one sample).
    pub long_lived_loop: Option<mcr_protocol::Frame>,
    pub reached: bool,
}

impl Class {
    pub fn quiescent_point(&self) -> Option<&Site> {
        self.qp.map(|i| &self.sites[i])
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cost {
    pub sampler_cpu_ms: f64,
    pub server_cpu_ms: f64,
    pub window_ms: f64,
    pub period_us: u64,
    pub ticks: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub classes: Vec<Class>,
    pub warnings: Vec<String>,
    pub processes_seen: usize,
    pub cost: Cost,
}

impl Analysis {
    pub fn count(&self, f: impl Fn(&Class) -> bool) -> usize {
        self.classes.iter().filter(|c| f(c)).count()
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Where the processes that executed a program again after a fork were forked: by PID, the
/// fork stack of each earlier process of that PID that was forked and is gone (its
/// runtime registered as a fork child; the program it executed registers anew, as exec'd). sshd
/// executes itself again for every connection: without this, a connection's processes
/// were classed with the listener, by program.
fn forked_before_exec(all: &[ProcessProfile]) -> BTreeMap<i32, Vec<(f64, CallStack)>> {
    let mut out: BTreeMap<i32, Vec<(f64, CallStack)>> = BTreeMap::new();
    for p in all.iter().filter(|p| !p.alive) {
        // A child that executed at once never reported: its fork stack is empty, but it was
        // forked all the same.
        if let Some(cs) = p.fork_stack.as_ref() {
            let first = p.threads.iter().map(|t| t.first_seen_ms).fold(f64::INFINITY, f64::min);
            out.entry(p.pid).or_default().push((first, cs.clone()));
        }
    }
    out
}

/// (id, label, made_by, creation stack) of a thread's class; `pre_exec`: see
/// [`forked_before_exec`].
fn class_of_in(
    p: &ProcessProfile,
    t: &ThreadProfile,
    pre_exec: &BTreeMap<i32, Vec<(f64, CallStack)>>,
) -> (String, String, String, Option<CallStack>) {
    if p.fork_stack.is_none() && (t.main || t.creation_stack.is_none()) {
        let started = p.threads.iter().map(|t| t.first_seen_ms).fold(f64::INFINITY, f64::min);
        let forked = pre_exec.get(&p.pid).and_then(|v| {
            v.iter().filter(|(first, _)| *first <= started).max_by(|a, b| a.0.total_cmp(&b.0)).map(|(_, cs)| cs)
        });
        if let Some(cs) = forked {
            let exe = basename(&p.exe).to_string();
            let id = mcr_callstack::format_id(mcr_callstack::stack_id(["exec", exe.as_str(), cs.id.as_str()]));
            let label = if cs.frames.is_empty() {
                format!("process forked (where mcr did not see), then exec {exe}")
            } else {
                format!("process forked at fork < {}, then exec {exe}", cs.summary(3))
            };
            return (id, label, "fork, exec".into(), Some(cs.clone()));
        }
    }
    class_of(p, t)
}

/// (id, label, made_by, creation stack) of a thread's class.
fn class_of(p: &ProcessProfile, t: &ThreadProfile) -> (String, String, String, Option<CallStack>) {
    if !t.main {
        if let Some(cs) = &t.creation_stack {
            let routine = t.start_routine.clone().unwrap_or_else(|| "?".into());
            let by = cs.summary(3);
            return (
                cs.id.clone(),
                format!("thread {routine} (pthread_create < {by})"),
                "pthread_create".into(),
                Some(cs.clone()),
            );
        }
    }
    match &p.fork_stack {
        Some(cs) if cs.frames.is_empty() => (
            cs.id.clone(),
            "process forked where mcr did not see (it exited before its first wrapped call)".into(),
            "fork".into(),
            None,
        ),
        Some(cs) => {
            let by = cs.summary(3);
            (cs.id.clone(), format!("process forked at fork < {by}"), "fork".into(), Some(cs.clone()))
        }
        None => {
            let exe = basename(&p.exe).to_string();
            let id = mcr_callstack::format_id(mcr_callstack::stack_id(["exec", exe.as_str()]));
            (id, format!("main thread of {exe} (exec)"), "exec".into(), None)
        }
    }
}

fn frame_names(cs: &CallStack) -> Vec<String> {
    cs.frames.iter().map(|f| f.display_name()).collect()
}

/// Length of the common bottom part (outermost frames) of all stacks.
fn common_bottom(stacks: &[&CallStack]) -> usize {
    let names: Vec<Vec<String>> = stacks.iter().map(|s| frame_names(s)).collect();
    let Some(first) = names.first() else { return 0 };
    let mut n = 0;
    loop {
        let Some(name) = first.len().checked_sub(n + 1).map(|i| &first[i]) else { return n };
        if names.iter().all(|v| v.len() > n && &v[v.len() - 1 - n] == name) {
            n += 1;
        } else {
            return n;
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// Analyse three snapshots: right after startup (`idle`), after an idle pause, when the
/// workload starts (`start`), and at the end (`end`). Persistent means present at
/// `start`; `idle` only gives the wakeup rate without a workload.
pub fn analyze(idle: &[ProcessProfile], start: &[ProcessProfile], end: &[ProcessProfile]) -> Analysis {
    struct Acc {
        label: String,
        made_by: String,
        creation: Option<CallStack>,
        instances: usize,
        alive: usize,
        pids: std::collections::BTreeSet<i32>,
        persistent: bool,
        volatile_instance: bool,
        wakeups_during: u64,
        wakeups_idle: u64,
        new_sites: bool,
        blocked: u64,
        running: u64,
        sites: BTreeMap<String, (String, CallStack, u64, f64)>,
    }
    // Threads alive right after startup, by (pid, tid, first seen).
    let key = |p: &ProcessProfile, t: &ThreadProfile| (p.pid, t.tid, (t.first_seen_ms * 1000.0) as i64);
    let alive_in = |snap: &'_ [ProcessProfile]| -> BTreeMap<(i32, i32, i64), ThreadProfile> {
        snap.iter().flat_map(|p| p.threads.iter().filter(|t| t.alive).map(move |t| (key(p, t), t.clone()))).collect()
    };
    let (at_idle, at_start) = (alive_in(idle), alive_in(start));
    let window = |a: &[ProcessProfile], b: &[ProcessProfile]| {
        let t0 = a.iter().map(|p| p.taken_ms).fold(f64::INFINITY, f64::min);
        let t1 = b.iter().map(|p| p.taken_ms).fold(0.0, f64::max);
        if t0.is_finite() {
            (t1 - t0).max(0.0)
        } else {
            0.0
        }
    };
    let (idle_ms, workload_ms) = (window(idle, start), window(start, end));
    let mut classes: BTreeMap<String, Acc> = BTreeMap::new();
    let pre_exec = forked_before_exec(end);
    for p in end {
        let period_ms = p.period_us as f64 / 1000.0;
        for t in &p.threads {
            let (id, label, made_by, creation) = class_of_in(p, t, &pre_exec);
            let a = classes.entry(id).or_insert_with(|| Acc {
                label,
                made_by,
                creation,
                instances: 0,
                alive: 0,
                pids: Default::default(),
                persistent: false,
                volatile_instance: false,
                wakeups_during: 0,
                wakeups_idle: 0,
                new_sites: false,
                blocked: 0,
                running: 0,
                sites: BTreeMap::new(),
            });
            a.instances += 1;
            a.pids.insert(p.pid);
            if t.alive {
                a.alive += 1;
            }
            let k = key(p, t);
            match at_start.get(&k) {
                Some(s) => {
                    // Present before any workload: right after startup, or made during
                    // the idle pause without a request (a thread the first snapshot
                    // missed because startup was declared complete before it ran).
                    a.persistent = true;
                    a.wakeups_during += t.wakeups.saturating_sub(s.wakeups);
                    if let Some(i) = at_idle.get(&k) {
                        a.wakeups_idle += s.wakeups.saturating_sub(i.wakeups);
                    }
                    if t.sites.iter().any(|x| !s.sites.iter().any(|y| y.stack.id == x.stack.id)) {
                        a.new_sites = true;
                    }
                }
                None => {
                    // Made after the workload started: the workload made it.
                    if !start.iter().any(|sp| sp.taken_ms >= t.first_seen_ms) {
                        a.volatile_instance = true;
                    }
                }
            }
            a.running += t.running_samples;
            for s in &t.sites {
                a.blocked += s.samples;
                let e = a.sites.entry(s.stack.id.clone()).or_insert_with(|| (s.call.clone(), s.stack.clone(), 0, 0.0));
                e.2 += s.samples;
                e.3 += s.samples as f64 * period_ms;
            }
        }
    }

    let mut warnings = Vec::new();
    let mut out = Vec::new();
    for (id, a) in classes {
        let stacks: Vec<&CallStack> = a.sites.values().map(|s| &s.1).collect();
        let bottom = common_bottom(&stacks);
        let total = a.blocked.max(1) as f64;
        let mut sites: Vec<Site> = a
            .sites
            .into_values()
            .map(|(call, stack, samples, ms)| {
                let depth = stack.frames.len().saturating_sub(bottom);
                Site { call, stack, samples, ms, share: samples as f64 / total, depth, not_qp_because: None }
            })
            .collect();
        sites.sort_by(|x, y| y.samples.cmp(&x.samples).then(x.stack.id.cmp(&y.stack.id)));
        let top = sites.first().map_or(0, |s| s.samples);
        let qp = sites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.samples as f64 >= top as f64 * CANDIDATE_RATIO)
            .min_by(|(_, x), (_, y)| x.depth.cmp(&y.depth).then(y.samples.cmp(&x.samples)))
            .map(|(i, _)| i);
        // The loop's frame as the quiescent point's stack has it (its file:line is where
        // the loop makes that call).
        let loop_frame = |st: &CallStack| bottom.checked_sub(1).map(|b| st.frames[st.frames.len() - 1 - b].clone());
        let long_lived_loop =
            qp.map(|q| &sites[q].stack).or_else(|| sites.first().map(|s| &s.stack)).and_then(loop_frame);
        let long_lived = a.alive > 0;
        let loop_name = long_lived_loop.as_ref().map(|f| f.display_name()).unwrap_or_else(|| "?".into());
        if let Some(q) = qp {
            let (qshare, qdepth, qsamples, qcall) =
                (sites[q].share, sites[q].depth, sites[q].samples, sites[q].call.clone());
            for (i, s) in sites.iter_mut().enumerate() {
                if i == q {
                    continue;
                }
                let inside =
                    s.stack.frames.get(s.depth.saturating_sub(1)).map(|f| f.display_name()).unwrap_or_default();
                s.not_qp_because = Some(if (s.samples as f64) < top as f64 * CANDIDATE_RATIO {
                    format!(
                        "only {} of the class's blocked time (the quiescent point {qcall}: {})",
                        pct(s.share),
                        pct(qshare)
                    )
                } else if s.depth > qdepth {
                    format!(
                        "{} of the blocked time, but called {} frame(s) below the long-lived loop {loop_name} (inside {inside}), \
                         deeper than {qcall} ({} below it): a thread blocked there is in the middle of an iteration \
                         (a request), not at the top of its loop",
                        pct(s.share),
                        s.depth,
                        qdepth
                    )
                } else {
                    format!(
                        "less of the blocked time than {qcall} ({} vs {}) at the same depth in the loop",
                        pct(s.share),
                        pct(qshare)
                    )
                });
                if long_lived && s.samples as f64 >= qsamples as f64 * SIMILAR_RATIO {
                    warnings.push(format!(
                        "{}: blocks in several places with similar time: {qcall} ({}) and {} ({}); {qcall} chosen, {} is not a \
                         quiescent point because it is {}",
                        a.label,
                        pct(qshare),
                        s.call,
                        pct(s.share),
                        s.call,
                        if s.depth > qdepth { "deeper in the loop (inside a request)" } else { "less frequent" }
                    ));
                }
            }
        }
        if long_lived && qp.is_none() {
            warnings.push(format!(
                "{}: long-lived, but never blocked in a wrapped call ({} samples found it running or in a system call mcr \
                 does not wrap): it has no quiescent point and will keep any quiescence from converging",
                a.label, a.running
            ));
        }
        let expected = if idle_ms > 0.0 { a.wakeups_idle as f64 * workload_ms / idle_ms } else { 0.0 };
        let reached = a.volatile_instance || a.new_sites || a.wakeups_during as f64 > 2.0 * expected + REACHED_MARGIN;
        if long_lived && !reached {
            warnings.push(format!(
                "{}: the workload did not reach this class (its threads woke {} times during the workload, as often as \
                 when idle, and blocked nowhere new); its quiescent point comes from startup alone",
                a.label, a.wakeups_during
            ));
        }
        out.push(Class {
            id,
            label: a.label,
            made_by: a.made_by,
            creation: a.creation,
            long_lived,
            persistent: a.persistent,
            instances: a.instances,
            alive_at_end: a.alive,
            processes: a.pids.len(),
            blocked_samples: a.blocked,
            running_samples: a.running,
            sites,
            qp,
            long_lived_loop,
            reached,
        });
    }
    // Long-lived first, then persistent, then by label.
    out.sort_by(|x, y| {
        y.long_lived.cmp(&x.long_lived).then(y.persistent.cmp(&x.persistent)).then(x.label.cmp(&y.label))
    });

    let mut cost = Cost::default();
    for p in end {
        cost.period_us = cost.period_us.max(p.period_us);
        cost.ticks += p.ticks;
        let s0 = start.iter().find(|s| s.pid == p.pid && s.exe == p.exe && s.taken_ms <= p.taken_ms);
        let (sc, pc) = match s0 {
            Some(s) => (s.sampler_cpu_ms, s.process_cpu_ms),
            None => (0.0, 0.0),
        };
        cost.sampler_cpu_ms += (p.sampler_cpu_ms - sc).max(0.0);
        cost.server_cpu_ms += (p.process_cpu_ms - pc - (p.sampler_cpu_ms - sc)).max(0.0);
    }
    cost.window_ms = workload_ms;
    Analysis { classes: out, warnings, processes_seen: end.len(), cost }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mcr_protocol::{Frame, ProfileSite};

    pub(crate) fn stack(names: &[&str]) -> CallStack {
        let frames = names
            .iter()
            .map(|n| Frame { address: 0, function: Some(n.to_string()), module: Some("/srv".into()), module_offset: 0 })
            .collect();
        let id = mcr_callstack::format_id(mcr_callstack::stack_id(names.iter().copied()));
        CallStack { id, frames }
    }

    pub(crate) fn site(call: &str, names: &[&str], samples: u64) -> ProfileSite {
        ProfileSite { call: call.into(), stack: stack(names), samples }
    }

    pub(crate) fn thread(
        tid: i32,
        main: bool,
        creation: Option<&[&str]>,
        sites: Vec<ProfileSite>,
        alive: bool,
    ) -> ThreadProfile {
        ThreadProfile {
            tid,
            main,
            creation_stack: creation.map(stack),
            start_routine: creation.map(|_| "worker_main".to_string()),
            alive,
            first_seen_ms: 1.0,
            last_seen_ms: 2.0,
            cpu_ms: 5.0,
            wakeups: 0,
            running_samples: 0,
            sites,
        }
    }

    pub(crate) fn process(pid: i32, fork: Option<&[&str]>, threads: Vec<ThreadProfile>, taken: f64) -> ProcessProfile {
        ProcessProfile {
            pid,
            ppid: 1,
            exe: "/srv/slowd".into(),
            fork_stack: fork.map(stack),
            period_us: 1000,
            ticks: 10,
            taken_ms: taken,
            sampler_cpu_ms: 1.0,
            process_cpu_ms: 10.0,
            startup_complete: true,
            alive: true,
            threads,
        }
    }

    pub(crate) const CREATE: &[&str] = &["main", "__libc_start_main"];
    pub(crate) const COND: &[&str] = &["worker_main", "start_thread"];
    pub(crate) const READ: &[&str] = &["read_request", "handle_client", "worker_main", "start_thread"];

    #[test]
    fn a_process_that_executes_the_server_again_after_a_fork_is_a_class_apart_from_the_first() {
        // sshd: the listener (executed by mcr), a connection's child (forked, then gone as
        // it executed sshd again) and the process that exec made, same PID, no fork stack.
        let listener = process(3, None, vec![thread(3, true, None, vec![site("ppoll", &["main"], 100)], true)], 10.0);
        let mut forked =
            process(7, Some(&["server_accept_loop", "main"]), vec![thread(7, true, None, vec![], false)], 10.0);
        forked.alive = false;
        let mut execd =
            process(7, None, vec![thread(7, true, None, vec![site("ppoll", &["server_loop2"], 100)], true)], 10.0);
        execd.threads[0].first_seen_ms = 5.0;
        let a = analyze(&[], &[], &[listener, forked, execd]);
        let labels: Vec<&str> = a.classes.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(a.classes.len(), 3, "{labels:?}");
        assert!(labels.iter().any(|l| l.starts_with("main thread of slowd (exec)")), "{labels:?}");
        assert!(labels.contains(&"process forked at fork < server_accept_loop < main, then exec slowd"), "{labels:?}");
    }

    #[test]
    fn the_loop_top_wait_wins_over_a_deeper_call_with_more_time() {
        let end = vec![process(
            10,
            None,
            vec![
                thread(10, true, None, vec![site("accept", &["main", "__libc_start_main"], 100)], true),
                thread(
                    11,
                    false,
                    Some(CREATE),
                    vec![site("pthread_cond_wait", COND, 40), site("read", READ, 60)],
                    true,
                ),
            ],
            100.0,
        )];
        let start = vec![process(
            10,
            None,
            vec![thread(10, true, None, vec![], true), thread(11, false, Some(CREATE), vec![], true)],
            0.5,
        )];
        let a = analyze(&start, &start, &end);
        let worker = a.classes.iter().find(|c| c.made_by == "pthread_create").unwrap();
        assert_eq!(worker.long_lived_loop.as_ref().unwrap().display_name(), "worker_main");
        let qp = worker.quiescent_point().unwrap();
        assert_eq!(qp.call, "pthread_cond_wait");
        let read = worker.sites.iter().find(|s| s.call == "read").unwrap();
        assert_eq!(read.depth, 2);
        let why = read.not_qp_because.as_deref().unwrap();
        assert!(why.contains("inside handle_client") && why.contains("middle of an iteration"), "{why}");
        assert!(a.warnings.iter().any(|w| w.contains("similar time")), "{:?}", a.warnings);
        assert!(worker.long_lived && worker.persistent);
        let main = a.classes.iter().find(|c| c.made_by == "exec").unwrap();
        assert_eq!(main.quiescent_point().unwrap().call, "accept");
        assert_eq!(main.long_lived_loop.as_ref().unwrap().display_name(), "main");
    }

    #[test]
    fn a_rare_shallow_call_does_not_beat_the_dominant_one() {
        let end = vec![process(
            10,
            None,
            vec![thread(
                10,
                true,
                None,
                vec![site("nanosleep", &["main", "s"], 2), site("epoll_wait", &["wait_events", "main", "s"], 98)],
                true,
            )],
            100.0,
        )];
        let a = analyze(&[], &[], &end);
        let c = &a.classes[0];
        assert_eq!(c.quiescent_point().unwrap().call, "epoll_wait");
        assert!(c.sites[1].not_qp_because.as_deref().unwrap().contains("only 2%"));
        assert!(a.warnings.iter().all(|w| !w.contains("similar")), "{:?}", a.warnings);
    }

    #[test]
    fn classes_are_short_or_long_lived_and_persistent_or_volatile() {
        let fork: &[&str] = &["spawn", "main"];
        // Startup: the first process, about to be replaced by its fork child (daemon).
        let start = vec![process(
            2,
            Some(fork),
            vec![thread(2, true, None, vec![site("sigsuspend", &["main"], 1)], true)],
            10.0,
        )];
        let mut first = process(1, None, vec![thread(1, true, None, vec![], false)], 5.0);
        first.alive = false;
        let mut late = process(
            3,
            Some(&["accept_loop", "main"]),
            vec![thread(3, true, None, vec![site("read", &["serve"], 5)], true)],
            50.0,
        );
        late.threads[0].first_seen_ms = 20.0;
        let end = vec![
            first,
            process(2, Some(fork), vec![thread(2, true, None, vec![site("sigsuspend", &["main"], 9)], true)], 50.0),
            late,
        ];
        let a = analyze(&start, &start, &end);
        assert_eq!(a.count(|c| !c.long_lived), 1, "{:#?}", a.classes);
        assert_eq!(a.count(|c| c.long_lived), 2);
        assert_eq!(a.count(|c| c.long_lived && c.persistent), 1);
        assert_eq!(a.count(|c| c.long_lived && !c.persistent), 1);
        let exec = a.classes.iter().find(|c| c.made_by == "exec").unwrap();
        assert!(!exec.long_lived && exec.quiescent_point().is_none());
    }

    #[test]
    fn a_long_lived_thread_that_never_blocks_and_an_unreached_class_are_warned_about() {
        let mut spinner = thread(11, false, Some(CREATE), vec![], true);
        spinner.running_samples = 50;
        let idle = thread(12, false, Some(&["start_idle", "main"]), vec![site("sem_wait", &["idle_main"], 50)], true);
        let mut before = idle.clone();
        before.wakeups = 0;
        let mut after = idle.clone();
        after.wakeups = 10;
        let mut woken = after.clone();
        woken.wakeups = 20;
        let idle0 = vec![process(10, None, vec![spinner.clone(), before], 0.0)];
        let start = vec![process(10, None, vec![spinner.clone(), after], 100.0)];
        // 100 ms idle: 10 wakeups (a timer); 100 ms of workload: 10 more, same rate.
        let a = analyze(&idle0, &start, &[process(10, None, vec![spinner.clone(), woken], 200.0)]);
        assert!(a.warnings.iter().any(|w| w.contains("never blocked in a wrapped call")), "{:?}", a.warnings);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("sem_wait") || w.contains("start_idle") && w.contains("did not reach")),
            "{:?}",
            a.warnings
        );
        let timer = a.classes.iter().find(|c| c.label.contains("start_idle")).unwrap();
        assert!(!timer.reached);
        // Woken far more often than when idle: reached.
        let mut busy = idle;
        busy.wakeups = 200;
        let a = analyze(&idle0, &start, &[process(10, None, vec![spinner, busy], 200.0)]);
        assert!(a.classes.iter().find(|c| c.label.contains("start_idle")).unwrap().reached);
    }
}
