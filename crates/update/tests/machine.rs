//! The update's state machine driven with fake versions: every phase failing rolls back
//! exactly once (old version resumed once, new version killed, its files removed),
//! Ctrl-C during the drain, the commit, and the decisions about connections and
//! processes as the versions see them. No root, no processes.

use mcr_client::pids::PidsError;
use mcr_client::ClientError;
use mcr_protocol::{Laggard, OpenConnections, ProcessLog, ReplayConflict, StartupLog};
use mcr_update::error::{CommitError, DrainError, NotStarted, PreflightError, QuiesceError, RestartError};
use mcr_update::preflight::Unmovable;
use mcr_update::transfer::{Summary, TransferError};
use mcr_update::{
    Drain, Handlers, HostPids, Launcher, NextVersion, Options, Phase, Policy, Quiescence, Report, Resumed,
    RunningVersion, StartupFailure, Step, Update, UpdateError, Warn, Warning,
};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the versions were asked, in order.
#[derive(Clone, Default)]
struct Journal(Rc<std::cell::RefCell<Vec<String>>>);

impl Journal {
    fn note(&self, what: impl Into<String>) {
        self.0.borrow_mut().push(what.into());
    }
    fn all(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
    fn count(&self, what: &str) -> usize {
        self.0.borrow().iter().filter(|e| e.as_str() == what).count()
    }
}

/// Where a fake version fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    Nowhere,
    /// The old version holds state no update could move, from the start ...
    Unmovable,
    /// ... or made after the first check, before it parked.
    UnmovableOnceParked,
    /// It cannot be inspected.
    Preflight,
    Drain,
    DrainRefused,
    Quiesce,
    QuiesceTimeout,
    Processes,
    Connections,
    StartupLogs,
    Start,
    Startup,
    Conflict,
    Tree,
    Respawn,
    Transfer,
    Adopt,
    /// The new version refuses the commit (before its commit point).
    CommitRefused,
    /// The new version is gone before it is asked to commit.
    CommitUnreachable,
    /// No answer to the commit; the old version had not retired (it resumes).
    CommitNoAnswer,
    /// No answer to the commit; the old version had retired (the commit point passed).
    CommitPassed,
    /// No answer to the commit, and the old version is gone too.
    CommitBothSilent,
}

fn conn(pid: i32, fds: &[i32]) -> OpenConnections {
    OpenConnections::of(pid, fds)
}

fn startup_log(pid: i32) -> ProcessLog {
    ProcessLog {
        pid,
        command_line: vec!["kvd".into()],
        log: Some(StartupLog {
            complete: true,
            ops: vec![],
            unreplayable: vec![],
            after_startup: Default::default(),
            waits_at: vec![],
            mapped_at_startup: vec![],
            allocated_at_startup: vec![],
        }),
        error: None,
        registration: 0,
        refresh: None,
    }
}

struct FakeOld {
    journal: Journal,
    fail: Fail,
    /// Its processes (PIDs in its namespace), all alive.
    processes: Vec<i32>,
    /// What the drain leaves open, and what the listing after quiescing shows.
    drained: Vec<OpenConnections>,
    listed: Vec<OpenConnections>,
}

impl RunningVersion for FakeOld {
    fn drain(&mut self, drain: &Drain, give_up: &dyn Fn() -> bool) -> Result<Vec<OpenConnections>, ClientError> {
        if drain.timeout_ms == 0 {
            self.journal.note("old: list connections");
            return match self.fail {
                Fail::Connections => Err(ClientError::Closed),
                _ => Ok(self.listed.clone()),
            };
        }
        self.journal.note("old: drain");
        match self.fail {
            Fail::Drain => Err(ClientError::Closed),
            Fail::DrainRefused => Err(ClientError::Refused("no".into())),
            _ => {
                // Waits on the server side until it drained, asking the caller between waits.
                for _ in 0..3 {
                    if give_up() {
                        return Err(ClientError::Interrupted);
                    }
                }
                Ok(self.drained.clone())
            }
        }
    }

    fn quiesce(&mut self, _: u64) -> Result<Quiescence, ClientError> {
        self.journal.note("old: quiesce");
        match self.fail {
            Fail::Quiesce => Err(ClientError::Closed),
            Fail::QuiesceTimeout => Ok(Quiescence::Failed {
                message: "1 thread did not park".into(),
                laggards: vec![Laggard { pid: 2, tid: 3, reason: "running".into(), stack: None }],
            }),
            _ => Ok(Quiescence::Parked),
        }
    }

    fn processes(&mut self) -> Result<Vec<i32>, ClientError> {
        match self.fail {
            Fail::Processes => Err(ClientError::Closed),
            _ => Ok(self.processes.clone()),
        }
    }

    fn startup_logs(&mut self) -> Result<Vec<ProcessLog>, ClientError> {
        match self.fail {
            Fail::StartupLogs => Err(ClientError::Closed),
            _ => Ok(self.processes.iter().map(|&p| startup_log(p)).collect()),
        }
    }

    fn host_pids(&self) -> Result<HostPids, PidsError> {
        Ok(self.processes.iter().map(|&p| (p, p + 1000)).collect())
    }

    fn describe_process(&self, pid: i32) -> String {
        format!("process {pid} (described)")
    }

    fn unmovable(&mut self) -> Result<Vec<Unmovable>, PreflightError> {
        self.journal.note("old: preflight");
        let parked = self.journal.count("old: quiesce") > 0;
        let pipe = Unmovable { pid: 3, what: "fd 9 (pipe:[77])".into(), why: "made after startup".into() };
        match self.fail {
            Fail::Preflight => Err(PreflightError::Request(ClientError::Closed)),
            Fail::Unmovable => Ok(vec![pipe]),
            Fail::UnmovableOnceParked if parked => Ok(vec![pipe]),
            _ => Ok(vec![]),
        }
    }

    fn resume(&mut self) -> Result<Resumed, ClientError> {
        match self.fail {
            Fail::CommitPassed => {
                self.journal.note("old: retired, does not resume");
                Ok(Resumed::Retired)
            }
            Fail::CommitBothSilent => {
                self.journal.note("old: unreachable");
                Err(ClientError::Closed)
            }
            _ => {
                self.journal.note("old: resume");
                Ok(Resumed::Resumed)
            }
        }
    }
}

struct FakeLauncher {
    journal: Journal,
    fail: Fail,
    /// The processes the new version's startup makes.
    processes: Vec<i32>,
}

impl Launcher for FakeLauncher {
    type Next = FakeNext;

    fn start(&mut self, logs: &[ProcessLog], old: &HostPids) -> Result<FakeNext, RestartError> {
        self.journal.note(format!("launcher: start replaying {} logs, {} old processes", logs.len(), old.len()));
        if self.fail == Fail::Start {
            return Err(RestartError::FdInUse(3));
        }
        STARTING.with(|s| s.set(true));
        Ok(FakeNext { journal: self.journal.clone(), fail: self.fail, processes: self.processes.clone() })
    }

    fn discard(&mut self) {
        self.journal.note("launcher: discard");
    }
}

struct FakeNext {
    journal: Journal,
    fail: Fail,
    processes: Vec<i32>,
}

impl NextVersion for FakeNext {
    fn wait_started(&mut self, _: Duration, give_up: &dyn Fn() -> bool) -> Result<(), StartupFailure> {
        self.journal.note("next: wait started");
        let conflict = ReplayConflict { pid: 2, reason: "bind differs".into(), new_op: None, old_op: None };
        match self.fail {
            _ if give_up() => Err(StartupFailure { reason: NotStarted::Interrupted, conflicts: vec![] }),
            Fail::Startup => Err(StartupFailure { reason: NotStarted::Timeout(10), conflicts: vec![] }),
            Fail::Conflict => Err(StartupFailure { reason: NotStarted::Conflict, conflicts: vec![conflict] }),
            _ => Ok(()),
        }
    }

    fn processes(&mut self) -> Result<Vec<i32>, ClientError> {
        match self.fail {
            Fail::Tree => Ok(self.processes.iter().copied().filter(|&p| p != 3).collect()),
            _ => Ok(self.processes.clone()),
        }
    }

    fn respawn(&mut self, _: &HostPids, connections: &[OpenConnections]) -> Result<usize, TransferError> {
        let pids: Vec<i32> = connections.iter().map(|c| c.pid).collect();
        self.journal.note(format!("next: respawn {pids:?}"));
        match self.fail {
            Fail::Respawn => Err(TransferError::NoCounterpart(2)),
            _ => Ok(connections.len()),
        }
    }

    fn receive_state(
        &mut self,
        old: &HostPids,
        connections: &[OpenConnections],
        _: Warn<'_>,
        _: bool,
    ) -> Result<Summary, TransferError> {
        let pids: Vec<i32> = connections.iter().map(|c| c.pid).collect();
        self.journal.note(format!("next: receive state of {:?} with connections of {pids:?}", old.keys()));
        match self.fail {
            Fail::Transfer => Err(TransferError::NoCounterpart(2)),
            _ => Ok(Summary { processes: old.len(), ..Summary::default() }),
        }
    }

    fn adopt(&mut self, _: &HostPids, connections: &[&OpenConnections]) -> Result<usize, TransferError> {
        let pids: Vec<i32> = connections.iter().map(|c| c.pid).collect();
        self.journal.note(format!("next: adopt {pids:?}"));
        match self.fail {
            Fail::Adopt => Err(TransferError::NoSupervisor),
            _ => Ok(connections.iter().map(|c| c.fds.len()).sum()),
        }
    }

    fn commit(&mut self, processes: &[i32], _: &HostPids) -> Result<(), CommitError> {
        self.journal.note(format!("next: commit with {processes:?}"));
        match self.fail {
            Fail::CommitRefused => Err(CommitError::Refused("process 2 of the new version died".into())),
            Fail::CommitUnreachable => Err(CommitError::Unreachable(ClientError::Closed)),
            Fail::CommitNoAnswer | Fail::CommitPassed | Fail::CommitBothSilent => {
                Err(CommitError::NoAnswer(ClientError::Closed))
            }
            _ => Ok(()),
        }
    }

    fn kill(&mut self) {
        self.journal.note("next: kill");
    }
}

/// One update of a fake server with processes 2 and 3.
struct Scenario {
    fail: Fail,
    policy: Policy,
    drained: Vec<OpenConnections>,
    listed: Vec<OpenConnections>,
    old_processes: Vec<i32>,
    new_processes: Vec<i32>,
    interrupted: &'static dyn Fn() -> bool,
    rehearse: bool,
}

impl Scenario {
    fn failing(fail: Fail) -> Self {
        Scenario {
            fail,
            policy: Policy { fresh_state: false, handlers: Handlers::default() },
            drained: vec![],
            listed: vec![],
            old_processes: vec![2, 3],
            new_processes: vec![2, 3],
            interrupted: &|| false,
            rehearse: false,
        }
    }

    fn run(self) -> (Report, Journal, Vec<String>) {
        let journal = Journal::default();
        let warnings = Mutex::new(Vec::new());
        let warn = |w: Warning| warnings.lock().unwrap().push(w.to_string());
        let old = FakeOld {
            journal: journal.clone(),
            fail: self.fail,
            processes: self.old_processes,
            drained: self.drained,
            listed: self.listed,
        };
        let launcher = FakeLauncher { journal: journal.clone(), fail: self.fail, processes: self.new_processes };
        let options = Options {
            instance: "kvd".into(),
            command: "./kvd-v2 --port 7000".into(),
            policy: self.policy,
            drain_timeout_ms: 200,
            quiesce_timeout_ms: 1000,
            startup_timeout: Duration::from_secs(1),
            interrupted: self.interrupted,
            warn: &warn,
            started: Instant::now(),
            rehearse: self.rehearse,
            progress: &|step| STEPS.with(|s| s.borrow_mut().push(step)),
            count_pointers: false,
        };
        let report = Update::new(old, launcher, options).run();
        let warnings = warnings.into_inner().unwrap();
        (report, journal, warnings)
    }
}

/// The rollback ran exactly once: the old version resumed once, the new one killed iff
/// it had been started, what is left of it removed once; nothing committed.
fn assert_rolled_back(report: &Report, journal: &Journal, started: bool) {
    assert!(!report.committed, "{report:?}");
    assert!(report.failure.is_some());
    let why = format!("{:?}\n{:#?}", report.failure, journal.all());
    assert_eq!(journal.count("old: resume"), 1, "{why}");
    assert_eq!(journal.count("next: kill"), usize::from(started), "{why}");
    assert_eq!(journal.count("launcher: discard"), 1, "{why}");
    let last = journal.all().last().cloned();
    assert_eq!(last.as_deref(), Some("old: resume"), "the old version resumes last: {why}");
}

#[test]
fn a_commit_retires_the_old_version_and_rolls_nothing_back() {
    let (report, journal, warnings) = Scenario::failing(Fail::Nowhere).run();
    assert!(report.committed, "{report:?}");
    assert!(report.failure.is_none());
    assert_eq!(report.message, "'kvd' now runs ./kvd-v2 --port 7000");
    assert_eq!(report.old_processes, [2, 3]);
    assert_eq!(report.new_processes, [2, 3]);
    assert_eq!(report.transfer.as_ref().map(|t| t.processes), Some(2));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        journal.all(),
        [
            "old: preflight",
            "old: drain",
            "old: quiesce",
            "old: list connections",
            "old: preflight",
            "launcher: start replaying 2 logs, 2 old processes",
            "next: wait started",
            "next: respawn []",
            "next: receive state of [2, 3] with connections of []",
            "next: commit with [2, 3]",
        ]
    );
    let p = &report.phases;
    assert!(p.total_ms >= p.drain_ms + p.quiesce_ms + p.restart_ms + p.transfer_ms + p.commit_ms);
}

/// Every phase, failing, rolls back once; the error says which phase.
#[test]
fn each_phase_failing_rolls_back_once() {
    let phase = |f: &UpdateError| match f {
        UpdateError::Preflight(_) => "preflight",
        UpdateError::Drain(_) => "drain",
        UpdateError::Quiesce(_) => "quiesce",
        UpdateError::Restart(_) => "restart",
        UpdateError::Transfer(_) | UpdateError::Adopt(_) => "transfer",
        UpdateError::Commit(_) => "commit",
    };
    let cases = [
        (Fail::Preflight, "preflight", false),
        (Fail::Unmovable, "preflight", false),
        (Fail::UnmovableOnceParked, "preflight", false),
        (Fail::Drain, "drain", false),
        (Fail::DrainRefused, "drain", false),
        (Fail::Quiesce, "quiesce", false),
        (Fail::QuiesceTimeout, "quiesce", false),
        (Fail::Processes, "quiesce", false),
        (Fail::Connections, "quiesce", false),
        (Fail::StartupLogs, "restart", false),
        (Fail::Start, "restart", false),
        (Fail::Startup, "restart", true),
        (Fail::Conflict, "restart", true),
        (Fail::Tree, "restart", true),
        (Fail::Respawn, "transfer", true),
        (Fail::Transfer, "transfer", true),
        (Fail::CommitRefused, "commit", true),
        (Fail::CommitUnreachable, "commit", true),
    ];
    for (fail, failed_in, started) in cases {
        let (report, journal, _) = Scenario::failing(fail).run();
        let failure = report.failure.as_ref().unwrap_or_else(|| panic!("{fail:?} committed"));
        assert_eq!(phase(failure), failed_in, "{fail:?}: {failure:?}");
        assert_eq!(failure.before_restart(), matches!(failed_in, "preflight" | "drain" | "quiesce"), "{fail:?}");
        assert_rolled_back(&report, &journal, started);
    }
}

#[test]
fn adopting_connections_failing_rolls_back_once() {
    let mut s = Scenario::failing(Fail::Adopt);
    s.policy = Policy { fresh_state: true, handlers: Handlers { resume: true, respawn: false } };
    s.listed = vec![OpenConnections { idle_check: true, ..conn(2, &[7]) }];
    let (report, journal, _) = s.run();
    assert!(matches!(report.failure, Some(UpdateError::Adopt(_))), "{report:?}");
    assert!(report.message.starts_with("adopting connections: "), "{}", report.message);
    assert_rolled_back(&report, &journal, true);
}

#[test]
fn the_messages_name_the_phase_and_its_cause() {
    let message = |fail| Scenario::failing(fail).run().0.message;
    assert_eq!(
        message(Fail::Quiesce),
        "quiescing the running version: the supervisor closed the connection without answering (it is exiting)"
    );
    assert_eq!(message(Fail::DrainRefused), "the running version could not drain, nothing was changed: no");
    assert_eq!(message(Fail::Transfer), "state transfer: process 2 has no counterpart in the new version");
    assert_eq!(message(Fail::CommitRefused), "commit failed: process 2 of the new version died");
    let tree = message(Fail::Tree);
    assert!(tree.starts_with("the new version's processes {2} do not match the old version's {2, 3}"), "{tree}");
    assert!(tree.ends_with("(not recreated: process 3 (described))"), "{tree}");
}

#[test]
fn failed_quiescence_names_the_threads() {
    let (report, _, _) = Scenario::failing(Fail::QuiesceTimeout).run();
    let failure = report.failure.expect("rolled back");
    assert!(matches!(failure, UpdateError::Quiesce(QuiesceError::NotQuiesced { .. })));
    assert_eq!(failure.laggards().len(), 1);
}

#[test]
fn replay_conflicts_reach_the_report() {
    let (report, journal, _) = Scenario::failing(Fail::Conflict).run();
    assert_eq!(report.message, "replaying the new version's startup found a conflict");
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].reason, "bind differs");
    assert_rolled_back(&report, &journal, true);
}

thread_local! {
    /// How often the update asked whether it was interrupted (each test runs on a thread
    /// of its own).
    static ASKED: Cell<usize> = const { Cell::new(0) };
    /// Set by the fake launcher: the new version is starting.
    static STARTING: Cell<bool> = const { Cell::new(false) };
    /// The steps the update reported to its progress display.
    static STEPS: std::cell::RefCell<Vec<Step>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn ctrl_c_during_the_drain_resumes_the_old_version_and_starts_nothing() {
    let mut s = Scenario::failing(Fail::Nowhere);
    // Ctrl-C arrives while the drain waits (the second time it asks).
    s.interrupted = &|| ASKED.with(|n| n.replace(n.get() + 1)) >= 1;
    let (report, journal, _) = s.run();
    let failure = report.failure.as_ref().expect("interrupted");
    assert!(matches!(failure, UpdateError::Drain(DrainError::Interrupted(_))), "{failure:?}");
    assert!(failure.before_restart());
    assert_eq!(
        report.message,
        "interrupted while draining; the server was resumed and nothing was changed: interrupted"
    );
    assert_eq!(journal.all(), ["old: preflight", "old: drain", "launcher: discard", "old: resume"]);
    assert_rolled_back(&report, &journal, false);
}

#[test]
fn ctrl_c_while_the_new_version_starts_kills_it() {
    let mut s = Scenario::failing(Fail::Nowhere);
    s.interrupted = &|| STARTING.with(Cell::get);
    let (report, journal, _) = s.run();
    assert!(
        matches!(
            report.failure,
            Some(UpdateError::Restart(RestartError::NotStarted { reason: NotStarted::Interrupted, .. }))
        ),
        "{report:?}"
    );
    assert_eq!(report.message, "interrupted by the user");
    assert_rolled_back(&report, &journal, true);
}

#[test]
fn connections_the_update_cannot_move_are_warned_about() {
    let mut s = Scenario::failing(Fail::Nowhere);
    let served = OpenConnections { pinned: vec![5], ..conn(2, &[5]) };
    s.drained = vec![OpenConnections { volatile: true, ..conn(3, &[4]) }, conn(2, &[6]), served];
    let (_, _, warnings) = s.run();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "2 client connection(s) still open after the 200 ms drain that the update cannot move (processes [3, 2]"
        ),
        "{warnings:?}"
    );
}

#[test]
fn per_connection_processes_are_respawned_and_finished_ones_dropped() {
    let mut s = Scenario::failing(Fail::Nowhere);
    s.policy = Policy { fresh_state: false, handlers: Handlers { resume: false, respawn: true } };
    s.old_processes = vec![2, 3, 4, 5];
    // The startup recreates the master (2) and 3; 4 is respawned; 5's client left.
    s.new_processes = vec![2, 3];
    s.listed = vec![
        OpenConnections { volatile: true, ..conn(4, &[7]) },
        OpenConnections { volatile: true, finished: true, ..conn(5, &[8]) },
        conn(2, &[9]),
    ];
    let (report, journal, warnings) = s.run();
    assert!(report.committed, "{report:?}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(report.old_processes, [2, 3, 4], "the finished session leaves the tree");
    assert_eq!(report.new_processes, [2, 3, 4], "the respawned process joins the new tree");
    let left: BTreeSet<i32> = report.connections_left.iter().map(|c| c.pid).collect();
    assert_eq!(left, BTreeSet::from([2, 4]));
    assert_eq!(report.transfer.as_ref().map(|t| t.respawned_processes), Some(1));
    let all = journal.all();
    assert!(all.contains(&"next: respawn [4]".to_string()), "{all:#?}");
    // 5 still lives (parked with the old version) but has nothing to move, and no
    // counterpart.
    assert!(all.contains(&"next: receive state of [2, 3, 4] with connections of [4, 2]".to_string()), "{all:#?}");
}

#[test]
fn without_the_state_idle_connections_are_adopted_and_nothing_is_transferred() {
    let mut s = Scenario::failing(Fail::Nowhere);
    s.policy = Policy { fresh_state: true, handlers: Handlers { resume: true, respawn: true } };
    let idle = OpenConnections { idle_check: true, ..conn(2, &[7, 8]) };
    let busy = OpenConnections { idle_check: true, busy: vec![9], ..conn(3, &[9]) };
    s.drained = vec![idle.clone(), busy.clone()];
    s.listed = vec![idle, busy];
    let (report, journal, warnings) = s.run();
    assert!(report.committed, "{report:?}");
    assert_eq!(report.adopted_connections, 2);
    assert!(report.transfer.is_none());
    assert!(journal.all().contains(&"next: adopt [2]".to_string()), "{:#?}", journal.all());
    assert!(!journal.all().iter().any(|e| e.starts_with("next: receive") || e.starts_with("next: respawn")));
    assert_eq!(warnings.len(), 1, "the busy connection closes at commit: {warnings:?}");
    assert!(warnings[0].contains("they are closed if this update commits (--fresh-state, and they are busy"));
}

/// A commit that got no answer (the new version's supervisor died during it): the old
/// version decides, by resuming (the commit point was not passed: the new version is then
/// ended) or by saying it retired (it was: nothing is undone, the new version is not
/// touched).
#[test]
fn a_commit_without_answer_is_settled_by_the_old_version() {
    let (report, journal, warnings) = Scenario::failing(Fail::CommitNoAnswer).run();
    assert!(!report.committed, "{report:?}");
    assert!(matches!(report.failure, Some(UpdateError::Commit(CommitError::NoAnswer(_)))), "{report:?}");
    let all = journal.all();
    let tail: Vec<&str> = all.iter().rev().take(4).rev().map(String::as_str).collect();
    // The old version resumes first: that, atomically, refuses the commit to the new one.
    assert_eq!(tail, ["next: commit with [2, 3]", "old: resume", "next: kill", "launcher: discard"], "{all:#?}");
    assert_eq!(journal.count("old: resume"), 1, "{all:#?}");
    assert!(warnings.is_empty(), "{warnings:?}");

    let (report, journal, warnings) = Scenario::failing(Fail::CommitPassed).run();
    assert!(report.committed, "{report:?}");
    assert!(report.failure.is_none());
    assert_eq!(journal.count("next: kill"), 0, "a committed new version is never killed: {:#?}", journal.all());
    assert_eq!(journal.count("launcher: discard"), 0);
    assert_eq!(journal.count("old: retired, does not resume"), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("did not confirm the commit"), "{warnings:?}");
}

/// No answer from either version: nothing is undone from here (a new version that did
/// not commit ends itself once the update exits), and the report says it cannot tell.
#[test]
fn a_commit_neither_version_answers_for_is_left_to_the_supervisors() {
    let (report, journal, _) = Scenario::failing(Fail::CommitBothSilent).run();
    assert!(!report.committed, "{report:?}");
    let failure = report.failure.as_ref().expect("failed");
    assert!(failure.undecided(), "{failure:?}");
    assert!(!failure.before_restart());
    assert_eq!(journal.count("next: kill"), 0, "{:#?}", journal.all());
    assert_eq!(journal.count("launcher: discard"), 0);
    assert_eq!(journal.count("old: unreachable"), 1, "asked once");
    assert!(report.message.contains("see `mcr status` for which version serves"), "{}", report.message);
}

/// Before the commit point, a refusal or a vanished new version rolls back as any phase
/// does: the new version killed first, the old one resumed last.
#[test]
fn a_commit_refused_before_its_commit_point_rolls_back() {
    for fail in [Fail::CommitRefused, Fail::CommitUnreachable] {
        let (report, journal, _) = Scenario::failing(fail).run();
        assert!(matches!(report.failure, Some(UpdateError::Commit(_))), "{fail:?}: {report:?}");
        assert_rolled_back(&report, &journal, true);
    }
}

/// State no update could move is named before anything is touched: no drain, no
/// quiescence, nothing started; the message lists each item.
#[test]
fn unmovable_state_refuses_before_the_drain() {
    let (report, journal, _) = Scenario::failing(Fail::Unmovable).run();
    assert!(matches!(report.failure, Some(UpdateError::Preflight(PreflightError::Unmovable(_)))), "{report:?}");
    assert_eq!(journal.count("old: drain"), 0, "{:?}", journal.all());
    assert_eq!(journal.count("old: quiesce"), 0, "{:?}", journal.all());
    assert!(report.message.contains("\n  process 3: fd 9 (pipe:[77]): made after startup"), "{}", report.message);
}

/// State made between the first check and parking is found once parked: the update
/// rolls back before the new version starts.
#[test]
fn unmovable_state_made_during_the_drain_rolls_back_before_the_restart() {
    let (report, journal, _) = Scenario::failing(Fail::UnmovableOnceParked).run();
    assert!(matches!(report.failure, Some(UpdateError::Preflight(_))), "{report:?}");
    assert_eq!(journal.count("old: preflight"), 2, "{:?}", journal.all());
    assert!(!journal.all().iter().any(|e| e.starts_with("launcher: start")), "{:?}", journal.all());
}

/// With --fresh-state the operator leaves the state behind on purpose: the same list is a
/// warning and the update commits.
#[test]
fn with_fresh_state_unmovable_state_is_a_warning() {
    let mut s = Scenario::failing(Fail::Unmovable);
    s.policy = Policy { fresh_state: true, handlers: Handlers::default() };
    let (report, _, warnings) = s.run();
    assert!(report.committed, "{report:?}");
    assert!(warnings.iter().any(|w| w.contains("process 3: fd 9 (pipe:[77])")), "{warnings:?}");
}

/// A rehearsal runs every phase up to the commit point but the drain, then rolls back
/// exactly as a failed update does: the old version resumes once, last; the report says
/// the update would commit and what it moved.
#[test]
fn a_rehearsal_skips_the_drain_and_rolls_back_instead_of_committing() {
    let mut s = Scenario::failing(Fail::Nowhere);
    s.rehearse = true;
    let served = OpenConnections { pinned: vec![5], ..conn(2, &[5]) };
    s.listed = vec![conn(2, &[6]), served.clone()];
    let (report, journal, warnings) = s.run();
    assert!(report.rehearsed && !report.committed && report.failure.is_none(), "{report:?}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        journal.all(),
        [
            "old: preflight",
            "old: quiesce",
            "old: list connections",
            "old: preflight",
            "launcher: start replaying 2 logs, 2 old processes",
            "next: wait started",
            "next: respawn []",
            "next: receive state of [2, 3] with connections of [2, 2]",
            "next: kill",
            "launcher: discard",
            "old: resume",
        ]
    );
    assert_eq!(
        report.message,
        "rehearsal: 'kvd' would run ./kvd-v2 --port 7000; rolled back on purpose, the old version runs on"
    );
    assert_eq!(report.transfer.as_ref().map(|t| t.processes), Some(2));
    assert_eq!(report.drain_would_wait, [served], "a thread-served session, no resume handler");
    let p = &report.phases;
    assert_eq!((p.drain_ms, p.commit_ms), (0.0, 0.0));
    assert!(p.paused_ms >= p.quiesce_ms + p.restart_ms + p.transfer_ms + p.rollback_ms, "{p:?}");
}

/// A rehearsal that fails fails as the update would, with the same error and conflicts,
/// and rolls back once.
#[test]
fn a_rehearsal_fails_where_the_update_would() {
    for fail in [Fail::Unmovable, Fail::QuiesceTimeout, Fail::Conflict, Fail::Transfer] {
        let (real, _, _) = Scenario::failing(fail).run();
        let mut s = Scenario::failing(fail);
        s.rehearse = true;
        let (rehearsal, journal, _) = s.run();
        assert!(rehearsal.rehearsed, "{fail:?}");
        assert_eq!(rehearsal.message, real.message, "{fail:?}");
        assert_eq!(rehearsal.conflicts.len(), real.conflicts.len(), "{fail:?}");
        assert_eq!(
            rehearsal.failure.as_ref().map(UpdateError::before_restart),
            real.failure.as_ref().map(UpdateError::before_restart)
        );
        assert_rolled_back(&rehearsal, &journal, !real.failure.as_ref().is_some_and(UpdateError::before_restart));
    }
}

/// The progress display is told each phase as it begins, and the rollback.
#[test]
fn each_step_is_reported_as_it_begins() {
    use Phase::*;
    let steps = |s: Scenario| {
        STEPS.with(|s| s.borrow_mut().clear());
        s.run();
        STEPS.with(|s| s.borrow().clone())
    };
    let phases = |p: &[Phase]| p.iter().map(|&p| Step::Phase(p)).collect::<Vec<_>>();
    assert_eq!(
        steps(Scenario::failing(Fail::Nowhere)),
        phases(&[Preflight, Drain, Quiesce, Restart, Transfer, Commit])
    );
    let mut failed = phases(&[Preflight, Drain, Quiesce, Restart, Transfer]);
    failed.push(Step::RollBack);
    assert_eq!(steps(Scenario::failing(Fail::Transfer)), failed);
    let mut rehearsal = Scenario::failing(Fail::Nowhere);
    rehearsal.rehearse = true;
    let mut rehearsed = phases(&[Preflight, Quiesce, Restart, Transfer]);
    rehearsed.push(Step::RollBack);
    assert_eq!(steps(rehearsal), rehearsed);
}
