//! Message types. Field names are part of the `--json` output of `mcr status`, so they
//! are chosen for people reading them too.

use serde::{Deserialize, Serialize};

/// One frame of a symbolized call stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Frame {
    /// Return address (or the call address for the top frame) in the process.
    pub address: u64,
    /// Function name from the symbol table, `None` when unknown.
    pub function: Option<String>,
    /// Path of the ELF module that contains the address.
    pub module: Option<String>,
    /// Offset of the address from the module's load base (for addr2line).
    pub module_offset: u64,
}

impl Frame {
    /// `function` or `module+0xoffset` when the symbol is unknown.
    pub fn display_name(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => {
                let base = m.rsplit('/').next().unwrap_or(m);
                format!("{base}+{:#x}", self.module_offset)
            }
            (None, None) => format!("{:#x}", self.address),
        }
    }
}

/// A call stack and its version-agnostic ID (a hash of the function names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallStack {
    /// Hex string of the 64-bit call-stack ID.
    pub id: String,
    /// Innermost first.
    pub frames: Vec<Frame>,
}

impl CallStack {
    /// `a < b < c`, innermost first, at most `max` names.
    pub fn summary(&self, max: usize) -> String {
        let mut names: Vec<String> = self.frames.iter().take(max).map(Frame::display_name).collect();
        if self.frames.len() > max {
            names.push("…".into());
        }
        names.join(" < ")
    }
}

/// What a thread is doing, as seen by the runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ThreadState {
    /// Executing code outside any wrapped blocking call.
    Running,
    /// Inside a wrapped blocking call.
    Blocked { call: String },
    /// Held at the quiescence barrier, inside (or on the way into) a wrapped call.
    Parked { call: String },
}

impl ThreadState {
    pub fn describe(&self) -> String {
        match self {
            ThreadState::Running => "running".into(),
            ThreadState::Blocked { call } => format!("blocked in {call}"),
            ThreadState::Parked { call } => format!("parked in {call}"),
        }
    }
}

/// One thread of a server process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// Thread ID (inside the instance's PID namespace).
    pub tid: i32,
    /// Thread class: `main`, or the symbolized call stack that created the thread.
    pub class: String,
    /// The creating call stack, when the thread was made by `pthread_create`.
    pub creation_stack: Option<CallStack>,
    #[serde(flatten)]
    pub state: ThreadState,
    /// Where the thread is blocked or parked now (innermost first), when known.
    pub current_stack: Option<CallStack>,
    /// The quiescent point the thread reached (first one during startup, or the one it is
    /// parked at).
    pub quiescent_point: Option<CallStack>,
    /// Whether the current blocking call is a quiescent point.
    pub at_quiescent_point: bool,
}

/// A thread that did not reach a quiescent point in time, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Laggard {
    pub pid: i32,
    pub tid: i32,
    /// Human explanation: "running", "blocked in read (not a quiescent point)", ...
    pub reason: String,
    /// Where the thread is, innermost first, when it could be determined.
    pub stack: Option<CallStack>,
}

/// Runtime → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RuntimeEvent {
    /// First message on every runtime connection.
    Hello {
        pid: i32,
        ppid: i32,
        exe: String,
        argv: Vec<String>,
        /// True when this process was created by fork from an already registered one.
        forked: bool,
        runtime_version: String,
    },
    /// The process forked `child` during its startup (sent before fork returns to the
    /// program): the child's startup is part of the instance's, and its Hello may come
    /// after the parent completed its own.
    Forked { child: i32 },
    /// Every long-lived thread of the process reached a quiescent point once.
    StartupComplete {
        /// Milliseconds from the runtime's constructor to completion.
        elapsed_ms: f64,
    },
    /// Answer to the command with the same `id`.
    Reply { id: u64, reply: RuntimeReply },
    /// Replay found a startup operation of the new version that conflicts with the old
    /// version's log; the process exits right after.
    ReplayConflict { conflict: ReplayConflict },
    /// Profiling mode: what the sampler gathered so far (sent periodically, so a process
    /// that exits still leaves its last report with the supervisor).
    ProfileReport { profile: crate::ProcessProfile },
}

/// A startup operation of the new version that replay cannot reconcile with the old log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayConflict {
    pub pid: i32,
    /// What is wrong, in one sentence.
    pub reason: String,
    /// The new version's operation (absent when an old one was never made).
    pub new_op: Option<StartupOp>,
    /// The old version's operation it was compared with (or the one never made).
    pub old_op: Option<StartupOp>,
}

/// Supervisor → runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeCommand {
    pub id: u64,
    pub command: RuntimeCommandKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RuntimeCommandKind {
    Status,
    /// The process's startup log.
    StartupLog,
    /// What of the startup log changes once startup is complete ([`StartupLogRefresh`]):
    /// an update's restart asks for this instead of the whole log its preflight read.
    StartupLogRefresh,
    /// Park every long-lived thread at a quiescent point and hold it there.
    Quiesce {
        timeout_ms: u64,
        /// CLOCK_MONOTONIC (system-wide) nanoseconds after which the request is stale: a
        /// process that reads it later (stopped meanwhile, then continued) answers at once
        /// without parking anything, since the supervisor gave up on it and resumed.
        #[serde(default)]
        deadline_ns: Option<u64>,
    },
    /// Release parked threads (and end a drain).
    Resume,
    /// Profiling mode: the sampler's data now.
    ProfileSnapshot,
    /// Stop accepting new connections (they wait in the listen backlog for the next
    /// version) and report the connections still open, so an update can let in-flight
    /// requests finish first. Repeating it just reports again.
    Drain,
    /// State transfer, new version: allocate heap blocks of these sizes (through the
    /// program's malloc, so the program can free them later).
    Allocate {
        sizes: Vec<u64>,
    },
    /// State transfer, new version: connect to the abstract Unix socket `socket`, receive
    /// one descriptor per target there (SCM_RIGHTS) and install each at its target number.
    ImportFds {
        socket: String,
        targets: Vec<ImportedFd>,
        /// Connections whose state stays behind (--fresh-state): the program adopts them
        /// as new ones (`mcr_adopted_fds` in its resume handler).
        #[serde(default)]
        adopt: bool,
        /// Descriptors other than client connections (made after startup): installed as
        /// they are, and not counted as connections.
        #[serde(default)]
        plain: bool,
    },
    /// State transfer, new version: register descriptors with epoll instances.
    EpollAdd {
        registrations: Vec<EpollRegistration>,
    },
    /// State transfer, new version: run the program's MCR_ADD_OBJ_HANDLER for `what` on
    /// each object (the old bytes sit in a scratch block the update wrote). `relocations`:
    /// where every old object went, for `mcr_translate()` (also in a scratch block).
    RunObjHandlers {
        what: String,
        objects: Vec<HandlerObject>,
        #[serde(default)]
        relocations: Option<crate::RelocationTable>,
    },
    /// State transfer, new version: free blocks from Allocate (scratch copies).
    Free {
        addrs: Vec<u64>,
    },
    /// Update, new version, before the commit: Unix sockets whose peer (SO_PEERCRED) the
    /// kernel recorded as a process of the old version, which reads as PID 0 here; the
    /// runtime's `getsockopt` answers with the PID given (the counterpart's, the same in
    /// the instance's namespace), answered with [`RuntimeReply::Done`].
    SocketPeers {
        peers: Vec<SocketPeer>,
    },
    /// State transfer: the heap blocks the program allocated during startup, each with
    /// its allocation call-stack ID, thread and ordinal, so an update can match them with
    /// the other version's (only those whose call stack reaches the program's code: one
    /// cut short inside a library is too ambiguous to match by).
    StartupAllocations,
    /// State transfer: where the program's own thread-local variables live for the main
    /// thread (the executable's TLS block), answered with [`RuntimeReply::MainThreadTls`].
    MainThreadTls,
    /// State transfer, new version: blocks Allocate made for the old version's startup
    /// objects that had no counterpart here take over their identity (startup flag, call
    /// stack and ordinal), so the next update matches them instead of copying them again.
    AdoptStartupBlocks {
        blocks: Vec<StartupAlloc>,
    },
    /// State transfer, new version: recreate a process the old version forked after
    /// startup to serve connection `fd` (already installed here), through the program's
    /// MCR_ADD_RESPAWN_HANDLER, with PID `pid` (the old process's), held until commit.
    Respawn {
        pid: i32,
        fd: i32,
    },
    /// State transfer, new version: map private anonymous memory at [start, start + len)
    /// exactly (MAP_FIXED_NOREPLACE: an address the new version uses itself is an error),
    /// with protection `prot`, locked in memory when `locked`; the update then writes the
    /// old contents into it. It counts as mapped after startup, as it was in the old one.
    MapPrivate {
        start: u64,
        len: u64,
        prot: i32,
        locked: bool,
    },
    /// State transfer, new version: map the object the update sends on the abstract Unix
    /// socket `socket` (one descriptor, SCM_RIGHTS: the old mapping's file, memfd or
    /// shared memory, opened through /proc/PID/map_files) at exactly [start, start + len)
    /// from file offset `offset`, shared or private, with protection `prot`, locked when
    /// `locked`. A shared mapping shares its pages with the old version's (same object);
    /// the update writes a private one's copied pages next.
    MapFile {
        socket: String,
        start: u64,
        len: u64,
        offset: u64,
        prot: i32,
        shared: bool,
        locked: bool,
    },
    /// State transfer, new version: map the old version's heap regions at their addresses
    /// (the slots this process's heap kept free), as the old process maps them, not yet in
    /// use: each segment copy-on-write over the old memfd the update sends on the abstract
    /// Unix socket `socket` (one descriptor per such segment, in order; see
    /// [`OldSegmentSource`]), or anonymous; the update writes the pages the old process holds
    /// privately next, then [`Self::AdoptOldHeap`].
    MapOldHeap {
        regions: Vec<OldHeapRegion>,
        #[serde(default)]
        socket: Option<String>,
    },
    /// Commit, new version, past the commit point and before it resumes (its threads
    /// parked): every adopted heap segment mapped copy-on-write from an old memfd that only
    /// the old process mapped ([`OldSegmentSource::SharedMemfd`]; that process is gone or
    /// killed) gets this process's written pages back into the memfd and is mapped shared
    /// again, so the memory is not held twice and the next update maps it too. A segment
    /// that cannot be stays private (a warning in the process's diagnostics): still correct.
    ShareAdoptedHeap,
    /// State transfer, new version: check the old heap regions mapped in `slots` and adopt
    /// them (their live blocks are this process's from now on, freed like its own); on
    /// failure, or with `release`, give them up instead.
    AdoptOldHeap {
        slots: Vec<u64>,
        #[serde(default)]
        release: bool,
    },
    /// State transfer, new version: attach SysV shared memory segment `shmid` at exactly
    /// `start` (`len`: the part mapped, the whole segment), read-only when `readonly`.
    AttachSysv {
        shmid: i32,
        start: u64,
        len: u64,
        readonly: bool,
        locked: bool,
    },
    /// The process's attributes (signal mask and handlers, timers, umask, rlimits, cwd,
    /// credentials, prctl state...) as they were when its startup completed, and now.
    Attributes,
    /// State transfer, new version: take over what the old process changed after startup
    /// (crates/protocol/src/attributes.rs), in this order.
    ApplyAttributes {
        changes: Vec<crate::AttributeChange>,
    },
    /// The descriptors the process made after its startup and still holds, other than
    /// the client connections a drain reports: what no startup of a new version recreates.
    PostStartupFds,
    /// The pthread keys the program created after startup and still has, with their
    /// destructors and the values its threads held when they last parked (known only once
    /// the process is quiesced), answered with [`RuntimeReply::PthreadKeys`].
    PthreadKeys,
    /// State transfer, new version: create the old version's keys again, each at its
    /// index (an index this version already uses is an error naming it), and have the
    /// main thread set its values as it leaves its parking place.
    RecreatePthreadKeys {
        keys: Vec<KeyToRecreate>,
    },
}

/// A pthread key the program created after its startup (`pthread_key_create`), as its
/// runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PthreadKey {
    /// The key (glibc's index, what `pthread_key_t` holds).
    pub index: u32,
    /// Made during startup (the new version's startup makes its own): reported only when
    /// a thread changed its value since its startup.
    #[serde(default)]
    pub startup: bool,
    /// Made after startup at the index of a key startup made (deleted since): the new
    /// version's startup takes the index for its own key.
    #[serde(default)]
    pub startup_index: bool,
    /// Its destructor's address (0: none; a startup key's is not reported).
    pub destructor: u64,
    /// The destructor as a function, when it is the start of a named one.
    pub destructor_symbol: Option<crate::attributes::HandlerSymbol>,
    /// The main thread's value (`pthread_getspecific` when it last parked), None when it
    /// has not parked since the key was created.
    pub main_value: Option<u64>,
    /// Other threads' values that differ from what their startup left (NULL for a key
    /// made after startup), as (TID in the instance's namespace, value), from when each
    /// last parked.
    pub other_values: Vec<(i32, u64)>,
}

/// A key for the new version to create at `index`, with `destructor` (an address in
/// the new process, 0: none), and the main thread's value (relocated; 0: NULL). A
/// `startup` key is not created: the new version's startup made its own at that index,
/// and only the value is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyToRecreate {
    pub index: u32,
    #[serde(default)]
    pub startup: bool,
    pub destructor: u64,
    pub main_value: u64,
}

/// A heap block allocated during startup, and where it came from: the `ordinal`-th
/// startup allocation (from 0) of thread `thread` whose call-stack ID is `stack`. Two
/// versions of a program that allocate the same startup objects give them the same IDs
/// and ordinals (and replay gives their threads the same TIDs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupAlloc {
    /// The block (the address the program got).
    pub addr: u64,
    /// Hex call-stack ID of the allocating call (function names, as everywhere).
    pub stack: String,
    /// TID (in the instance's PID namespace) of the allocating thread.
    #[serde(default)]
    pub thread: i32,
    pub ordinal: u32,
    /// The innermost function names of that call stack, for reports.
    #[serde(default)]
    pub site: String,
}

/// One object for an object handler: addresses in the new process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandlerObject {
    pub old: u64,
    pub old_size: u64,
    pub new: u64,
    pub new_size: u64,
}

/// One region of the old version's heap, as its process maps it (`mcr_alloc::remote::RegionLayout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldHeapRegion {
    pub slot: u64,
    /// How far the region is mapped (spans and thread caches: `mcr_alloc::Extent`).
    pub spans: u64,
    pub caches: u64,
    /// Where each segment starts (span index in the region), in order.
    pub segments: Vec<u32>,
    /// How each segment comes to the new process, in the same order (missing: `Copied`).
    #[serde(default)]
    pub sources: Vec<OldSegmentSource>,
}

/// How an old heap segment comes to the new process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OldSegmentSource {
    /// Anonymous memory the update fills with every page the old process holds there.
    #[default]
    Copied,
    /// Copy-on-write over the old memfd (the update sends it), which other processes map
    /// too (a segment a fork froze): the update copies the old process's own pages there.
    PrivateMemfd,
    /// Copy-on-write over the old memfd, which only the old process maps (shared): nothing
    /// to copy, and [`RuntimeCommandKind::ShareAdoptedHeap`] shares it again at commit.
    SharedMemfd,
}

impl OldSegmentSource {
    /// Mapped from a memfd the update sends.
    pub fn is_memfd(self) -> bool {
        self != OldSegmentSource::Copied
    }
}

/// Where a descriptor received by ImportFds goes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportedFd {
    pub target: i32,
    pub cloexec: bool,
}

/// One interest of an epoll instance: what /proc/PID/fdinfo shows of it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollRegistration {
    pub epfd: i32,
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

// As for Response: short-lived messages.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum RuntimeReply {
    Status {
        startup_complete: bool,
        startup_ms: Option<f64>,
        quiesced: bool,
        threads: Vec<ThreadInfo>,
        /// Dirty tracking of the process (absent: not armed yet, or an older runtime).
        #[serde(default)]
        dirty: Option<DirtyTracking>,
    },
    Quiesced {
        /// Microseconds from receiving the command to the last thread parking.
        elapsed_us: u64,
        threads: usize,
    },
    QuiesceFailed {
        elapsed_us: u64,
        laggards: Vec<Laggard>,
    },
    Resumed,
    /// Answer to Drain: the post-startup sockets (client connections) still open, and
    /// whether this process was forked after startup (no new version recreates it).
    Connections {
        fds: Vec<i32>,
        #[serde(default)]
        volatile: bool,
        /// Of `fds`, those no epoll instance watches: a thread serves them with its state
        /// on its stack, which the update cannot move.
        #[serde(default)]
        pinned: Vec<i32>,
        /// The program has an idle check (`MCR_ADD_IDLE_CHECK`).
        #[serde(default)]
        idle_check: bool,
        /// Of `fds`, those the idle check says hold program state (mid-request), asked
        /// while the process is quiesced; before that, those with unsent output.
        #[serde(default)]
        busy: Vec<i32>,
        /// A per-connection process whose client is gone (its socket reset): its session
        /// is over, nothing of it needs recreating.
        #[serde(default)]
        finished: bool,
    },
    /// Answer to Allocate: the blocks, in order.
    Allocated {
        addrs: Vec<u64>,
    },
    /// Answer to StartupAllocations, in allocation order (a later entry for the same
    /// address or the same call stack and ordinal supersedes an earlier one).
    StartupAllocations {
        allocs: Vec<StartupAlloc>,
        /// Blocks of an update's old heap that this process's startup holds at their own
        /// addresses (`StartupLog::allocated_at_startup`): the transfer leaves them there.
        #[serde(default)]
        held: Vec<u64>,
    },
    /// Answer to MainThreadTls: the run-time address of the executable's TLS block of the
    /// process's main thread (where DWARF's TLS offset 0 is), if the executable has one.
    MainThreadTls {
        block: Option<u64>,
    },
    /// Answer to ImportFds and EpollAdd.
    Done,
    /// Answer to Respawn: the recreated process's PID.
    Respawned {
        pid: i32,
    },
    StartupLog(StartupLog),
    StartupLogRefresh(StartupLogRefresh),
    Profile(crate::ProcessProfile),
    /// Answer to Attributes (`startup` absent: startup not complete yet).
    Attributes {
        startup: Option<Box<crate::ProcessAttributes>>,
        now: Box<crate::ProcessAttributes>,
    },
    Error {
        message: String,
    },
    /// Answer to PostStartupFds.
    PostStartupFds {
        fds: Vec<i32>,
    },
    /// Answer to PthreadKeys.
    PthreadKeys {
        keys: Vec<PthreadKey>,
    },
}

/// CLI → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Every process's startup log.
    StartupLogs {
        /// Processes (PID, registration) whose whole log the asker holds: for these, when
        /// the runtime registered then is still the one there, only what changed
        /// ([`ProcessLog::refresh`]).
        #[serde(default)]
        refresh: Vec<(i32, u64)>,
    },
    Quiesce {
        timeout_ms: u64,
    },
    Resume,
    /// Update, old version: stop accepting and wait (up to `timeout_ms`) until every
    /// process has closed its client connections. The instance stays draining until
    /// Resume or Retire; if the connection that asked closes first, the supervisor
    /// resumes on its own, so a killed `mcr update` never leaves a server refusing work.
    Drain {
        timeout_ms: u64,
        /// Wait only for the connections the state transfer cannot move (those of
        /// processes forked after startup, and those no event loop watches); otherwise
        /// wait for every connection.
        #[serde(default)]
        only_volatile: bool,
        /// With `only_volatile`: the new version resumes thread-served sessions itself
        /// (`MCR_ADD_RESUME_HANDLER`), so connections no event loop watches move too.
        #[serde(default)]
        move_pinned: bool,
        /// With `only_volatile`: the new version recreates per-connection processes
        /// (`MCR_ADD_RESPAWN_HANDLER`), so their connections move too.
        #[serde(default)]
        move_volatile: bool,
        /// Without `only_volatile` (the state stays behind): the new version adopts idle
        /// connections as new ones, so wait only for those an idle check says are busy
        /// (and for every connection of a process without an idle check).
        #[serde(default)]
        adopt_idle: bool,
    },
    /// Pass one command to the runtime of one process (state transfer) and return its
    /// reply.
    Runtime {
        pid: i32,
        command: RuntimeCommandKind,
    },
    /// Deliver a signal to the server's main process.
    Signal {
        signal: i32,
    },
    /// SIGTERM to the main process, SIGKILL to everything after `grace_ms`.
    Stop {
        grace_ms: u64,
    },
    /// Answer once the server completed startup (or failed to).
    WaitStarted {
        timeout_ms: u64,
    },
    /// What `mcr update` needs to start the next version like this one.
    UpdateInfo,
    /// Update, new version, from the update: commit (take the instance over from the old
    /// version, retire it, resume). Answered once this version is the instance, or with an
    /// error before the commit point (`crates/update/README.md`, "The commit").
    /// `processes`: those the state moved into, which must all be alive.
    Commit {
        processes: Vec<i32>,
        /// Descriptors whose owner (F_SETOWN: who gets SIGIO and SIGURG) is a process of
        /// the old version: given the counterpart once past the commit point, before
        /// anything resumes.
        #[serde(default)]
        reown: Vec<Reown>,
    },
    /// Update, old version, from the new version's supervisor on a connection of its own
    /// (its link): the update is committing; answered with [`Response::HandedOver`].
    Handover,
    /// Update, old version, on the new version's link: retire, staying parked; the old
    /// version resumes only if the link closes before [`Request::Release`].
    Retire,
    /// Update, old version, on the link, after Retire: the commit point. Exit now.
    Release,
    /// Profiling mode: every process's sampled data (fresh from the live ones, the last
    /// report of those that exited).
    ProfileData,
}

/// Supervisor → CLI.
// Messages live only between a read and a write: boxing the large status would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(InstanceStatus),
    StartupLogs {
        processes: Vec<ProcessLog>,
    },
    Quiesced {
        elapsed_us: u64,
        processes: usize,
        threads: usize,
    },
    QuiesceFailed {
        message: String,
        laggards: Vec<Laggard>,
    },
    Resumed {
        processes: usize,
    },
    Runtime {
        reply: RuntimeReply,
    },
    Drained {
        elapsed_us: u64,
        /// Connections still open when the drain ended (empty: fully drained).
        remaining: Vec<OpenConnections>,
    },
    Started {
        startup_ms: f64,
    },
    Stopping,
    UpdateInfo(UpdateInfo),
    /// Update, new version: startup finished with every thread parked, or failed.
    Ready {
        startup_ms: f64,
        processes: Vec<i32>,
    },
    ReplayFailed {
        conflicts: Vec<ReplayConflict>,
        message: String,
    },
    ProfileData {
        processes: Vec<crate::ProcessProfile>,
    },
    /// To [`Request::Handover`]: the old supervisor's descriptor number of the instance
    /// lock, which the new one copies (pidfd_getfd) so that the lock is never free, and
    /// of a pidfd of the old version's init (PID 1 of its namespace), which exits once
    /// that version retired and never while it can resume.
    HandedOver {
        lock_fd: i32,
        #[serde(default)]
        init_fd: Option<i32>,
    },
    /// To [`Request::Resume`]: this version retired (its new version committed); it does
    /// not resume.
    Retired,
    Ok,
    Error {
        message: String,
    },
}

/// Client connections a process still held when a drain ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenConnections {
    pub pid: i32,
    pub fds: Vec<i32>,
    /// Forked after startup: the new version's startup does not recreate this process.
    #[serde(default)]
    pub volatile: bool,
    /// Connections no event loop watches (a thread serves them from its stack): they
    /// cannot move.
    #[serde(default)]
    pub pinned: Vec<i32>,
    /// The program can tell idle connections (`MCR_ADD_IDLE_CHECK`) ...
    #[serde(default)]
    pub idle_check: bool,
    /// ... and these are not idle.
    #[serde(default)]
    pub busy: Vec<i32>,
    /// Forked per connection, and its client is gone: the session is over.
    #[serde(default)]
    pub finished: bool,
}

impl OpenConnections {
    /// Connections `fds` of process `pid`, with nothing else known about them.
    pub fn of(pid: i32, fds: &[i32]) -> Self {
        Self {
            pid,
            fds: fds.to_vec(),
            volatile: false,
            pinned: vec![],
            idle_check: false,
            busy: vec![],
            finished: false,
        }
    }
}

/// State of the whole instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    /// PID of the supervisor as seen from the host.
    pub supervisor_pid: i32,
    /// Whether the server runs in its own PID namespace.
    pub pid_namespace: bool,
    /// Server completed startup: every process's long-lived threads reached a quiescent point.
    pub started: bool,
    /// Milliseconds from launch to completed startup: the slowest process's own measure,
    /// from the runtime's constructor (after the program and its libraries were loaded).
    pub startup_ms: Option<f64>,
    /// Milliseconds from the fork of the server's first process to completed startup, as
    /// the supervisor saw it: what starting the program costs, its exec and the loading of
    /// its libraries included (what an update's restart + replay compares with).
    #[serde(default)]
    pub startup_from_exec_ms: Option<f64>,
    pub quiesced: bool,
    /// PID (inside the instance's namespace) of the process signals are forwarded to.
    pub main_pid: Option<i32>,
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub command_line: Vec<String>,
    /// False for a process in the instance that does not carry the runtime (static binary,
    /// cleared environment, or not yet registered).
    pub managed: bool,
    pub startup_complete: bool,
    pub startup_ms: Option<f64>,
    pub threads: Vec<ThreadInfo>,
    /// Set when the runtime of the process did not answer.
    pub error: Option<String>,
    /// How the process's writes since startup are tracked (absent: not armed yet).
    #[serde(default)]
    pub dirty: Option<DirtyTracking>,
}

/// How a process tracks the pages it writes after startup (DESIGN.md "Dirty tracking"),
/// armed by its runtime when its startup completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirtyMethod {
    /// userfaultfd async write-protect, read with PAGEMAP_SCAN.
    UffdWp,
    /// Soft-dirty bits in /proc/PID/pagemap.
    SoftDirty,
    /// Not tracked: every page counts as dirty.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirtyTracking {
    pub method: DirtyMethod,
    /// Milliseconds from the process's start to arming.
    pub armed_at_ms: f64,
    /// How long arming took, in microseconds.
    pub arm_us: u64,
    /// Mappings write-protected and their total size.
    pub ranges: usize,
    pub bytes: u64,
    /// Writable mappings left untracked (they count as dirty).
    pub skipped: usize,
    /// Why a fallback was taken (or tracking is off), or the first mapping refused.
    pub note: Option<String>,
}

/// Supervisor → the `mcr run` that launched it, over a pipe: how the server is doing.
// Sent once or twice per launch: boxing the conflict would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum LaunchReport {
    /// The supervisor is up; `pid_namespace` says whether it got its own PID namespace.
    Supervising { supervisor_pid: i32, pid_namespace: bool, note: Option<String> },
    /// Every process of the server completed startup. `processes`: the instance's
    /// processes then (an update compares them with the old version's tree without
    /// asking again).
    Started {
        startup_ms: f64,
        #[serde(default)]
        processes: Option<Vec<i32>>,
    },
    /// The last process of the server is gone.
    Exited { status: ExitStatus },
    /// The server could not be launched at all.
    LaunchFailed { message: String },
    /// Update, new version: a process found a replay conflict (and exited).
    ReplayConflict { conflict: ReplayConflict },
    /// Update, old version: a committed new version replaced this one.
    Replaced,
}

/// How the server ended, as its main process ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// One argument of a recorded startup operation, in a form comparable across versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum OpArg {
    Int(i64),
    /// A descriptor argument: compared by the operation that created it, not its number.
    Fd(i32),
    /// A path or other string.
    Str(String),
    /// Raw bytes (a sockaddr, an option value), hex-encoded.
    Bytes(String),
}

impl std::fmt::Display for OpArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpArg::Int(v) => write!(f, "{v}"),
            OpArg::Fd(v) => write!(f, "fd {v}"),
            OpArg::Str(s) => write!(f, "{s:?}"),
            OpArg::Bytes(b) => write!(f, "0x{b}"),
        }
    }
}

/// A startup operation on an immutable object (an fd, a process, a thread, an identity),
/// recorded from exec until the process completed startup (paper §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupOp {
    /// The process that made the operation: this one, or an ancestor it was forked from
    /// (a fork child's log starts with its parent's).
    pub pid: i32,
    /// Order of the operation within its process's history.
    pub seq: u32,
    pub call: String,
    /// Where it was called from (the ID is what replay matches on).
    pub stack: CallStack,
    pub args: Vec<OpArg>,
    /// The call's return value (a new fd, a child PID, 0...).
    pub result: i64,
    /// errno when the call failed.
    pub errno: i32,
    /// Descriptors the call created (two for pipe/socketpair), at their reserved numbers.
    pub fds: Vec<i32>,
}

/// A process's startup log and what it could not account for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupLog {
    pub complete: bool,
    pub ops: Vec<StartupOp>,
    /// Objects that exist at startup completion but no recorded operation created
    /// (created by libc internally, or by a call mcr does not interpose): they cannot be
    /// replayed.
    pub unreplayable: Vec<String>,
    /// What the process holds that came after its startup (the new version's startup does
    /// not make it again), as its runtime sees it when asked.
    #[serde(default)]
    pub after_startup: AfterStartup,
    /// Where its threads wait (call-stack IDs of quiescent points: where each is blocked
    /// when asked, else where its startup ended): an update's new version parks its
    /// threads at these, and goes past any other wait that returns at once.
    #[serde(default)]
    pub waits_at: Vec<String>,
    /// The memory its startup mapped where it let the kernel choose the address (APR's
    /// allocator blocks, a shared memory zone), in call order; a fork child's list goes
    /// on from its parent's (each mapping names the process that made it). An update's new version places its own at these addresses,
    /// so that what points into them keeps pointing at the same things.
    #[serde(default)]
    pub mapped_at_startup: Vec<StartupMapping>,
    /// Every heap block its startup allocated, in each thread's order (a fork child's
    /// list holds only its own: its parent's log has the others). An update's new version gives a block the address of
    /// its old counterpart when its thread's startup allocations so far match the old
    /// ones, the block was allocated inside a library (no call stack reaching the program
    /// tells it apart) and the old one is still live: a library's state made at startup
    /// (libevent's event base) is then one object in the new version, the old one,
    /// wherever it is pointed to from.
    #[serde(default)]
    pub allocated_at_startup: Vec<StartupBlock>,
}

/// What of a process's startup log may change after its startup completed: where its
/// threads wait and which startup blocks are still live. The rest (the operations, the
/// mappings, the blocks themselves) is fixed by then; the counts say it is the same log.
/// (`after_startup`, for the preflight, is not refreshed.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupLogRefresh {
    pub complete: bool,
    pub ops: usize,
    pub mapped_at_startup: usize,
    pub allocated_at_startup: usize,
    /// Indices into `allocated_at_startup` of the blocks live now.
    pub live: Vec<u32>,
    pub waits_at: Vec<String>,
}

impl StartupLog {
    /// This log brought up to date by `r`; None when `r` is not of the same completed
    /// startup (then the whole log must be read again).
    pub fn refreshed(&self, r: &StartupLogRefresh) -> Option<StartupLog> {
        let same = self.complete
            && r.complete
            && r.ops == self.ops.len()
            && r.mapped_at_startup == self.mapped_at_startup.len()
            && r.allocated_at_startup == self.allocated_at_startup.len()
            && r.live.iter().all(|&i| (i as usize) < self.allocated_at_startup.len());
        if !same {
            return None;
        }
        let mut log = self.clone();
        for b in &mut log.allocated_at_startup {
            b.live = false;
        }
        for &i in &r.live {
            log.allocated_at_startup[i as usize].live = true;
        }
        log.waits_at = r.waits_at.clone();
        Some(log)
    }
}

/// A heap block a process's startup allocated (see [`StartupLog::allocated_at_startup`]).
/// On the wire an array (`[pid, tid, seq, addr, size, site, reaches_program, placeable,
/// live]`): a
/// server's startup makes thousands, and an update's new version reads them all before
/// its program starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StartupBlockWire", into = "StartupBlockWire")]
pub struct StartupBlock {
    /// The process and thread that allocated it, and how many blocks that thread's
    /// startup had allocated before.
    pub pid: i32,
    pub tid: i32,
    pub seq: u32,
    pub addr: u64,
    /// Bytes asked for.
    pub size: u64,
    /// The address the allocation function returned to when it is in a library (the
    /// same in both versions: libraries load at the same addresses); 0 when it is the
    /// program's code (which a new build moves).
    pub site: u64,
    /// The allocation's call stack reaches the program's code: the update matches it by
    /// call-stack ID (`StartupAlloc`) instead.
    pub reaches_program: bool,
    /// A new version would give its counterpart this block's address: allocated inside a
    /// library other than glibc (whose blocks are the process's own machinery), with a
    /// call stack that does not reach the program.
    pub placeable: bool,
    /// Still live in the allocating process when the log was taken.
    pub live: bool,
}

type StartupBlockWire = (i32, i32, u32, u64, u64, u64, bool, bool, bool);

impl From<StartupBlockWire> for StartupBlock {
    fn from((pid, tid, seq, addr, size, site, reaches_program, placeable, live): StartupBlockWire) -> Self {
        StartupBlock { pid, tid, seq, addr, size, site, reaches_program, placeable, live }
    }
}

impl From<StartupBlock> for StartupBlockWire {
    fn from(b: StartupBlock) -> Self {
        (b.pid, b.tid, b.seq, b.addr, b.size, b.site, b.reaches_program, b.placeable, b.live)
    }
}

/// A mapping a process's startup made (see [`StartupLog::mapped_at_startup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupMapping {
    /// The process and thread that made it (a fork child lists its parent's too), and
    /// how many such mappings that thread had made before: an update's new version,
    /// whose threads have the old ones' IDs, finds a mapping's counterpart by these
    /// (threads map concurrently, in no fixed order between them).
    pub pid: i32,
    pub tid: i32,
    pub seq: u32,
    pub start: u64,
    /// Whole pages.
    pub len: u64,
    /// Its kind: the call's MAP_SHARED, MAP_PRIVATE and MAP_ANONYMOUS bits.
    pub kind: i32,
}

/// What a process made after its startup, for the update's preflight (issue 12).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterStartup {
    /// Memory the program mapped itself after startup (mmap, mremap, shmat) and has not
    /// unmapped since, as [start, end) ranges.
    #[serde(default)]
    pub mapped: Vec<(u64, u64)>,
    /// The process was forked once its parent had completed startup.
    #[serde(default)]
    pub forked: bool,
    /// The client connections it holds now (descriptors).
    #[serde(default)]
    pub connections: Vec<i32>,
    /// It held a connection whose client is gone: a per-connection process about to end.
    #[serde(default)]
    pub lost_client: bool,
    /// Threads the program created after startup.
    #[serde(default)]
    pub threads: Vec<LateThread>,
    /// pthread keys the program created after startup and has not deleted.
    #[serde(default)]
    pub keys: Vec<PthreadKey>,
}

/// A thread the program created after its process completed startup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateThread {
    /// TID in the instance's namespace.
    pub tid: i32,
    /// The wrapped call it is in ("read"), None while it runs outside one.
    pub call: Option<String>,
    /// The descriptor that call waits on, for calls on one.
    pub fd: Option<i32>,
}

/// A socket (by inode) and the PID its peer credentials should read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketPeer {
    pub inode: u64,
    pub pid: i32,
}

/// A descriptor of the new version to give another owner at commit (`F_SETOWN_EX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reown {
    /// The process holding it and its number there (PIDs in the instance's namespace).
    pub pid: i32,
    pub fd: i32,
    /// `F_OWNER_TID`, `F_OWNER_PID` or `F_OWNER_PGRP`.
    pub kind: i32,
    /// The new owner: a PID, thread ID or process group ID in the instance's namespace.
    pub owner: i32,
}

/// `fcntl` commands and owner kinds the `libc` crate lacks for glibc targets
/// (`<linux/fcntl.h>`).
pub mod owner {
    pub const F_SETOWN_EX: i32 = 15;
    pub const F_GETOWN_EX: i32 = 16;
    pub const F_OWNER_TID: i32 = 0;
    pub const F_OWNER_PID: i32 = 1;
    pub const F_OWNER_PGRP: i32 = 2;

    /// `struct f_owner_ex`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct OwnerEx {
        pub kind: i32,
        pub pid: i32,
    }
}

/// The startup log of one process of the instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessLog {
    pub pid: i32,
    pub command_line: Vec<String>,
    pub log: Option<StartupLog>,
    pub error: Option<String>,
    /// Which registration of a runtime at this PID the log is of (a process that
    /// executes again, or another one at a reused PID, registers anew).
    #[serde(default)]
    pub registration: u64,
    /// Instead of `log`, for a process asked as `refresh`: what changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<StartupLogRefresh>,
}

/// How the running version was launched, so the next one starts the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateInfo {
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub pid_namespace: bool,
    pub supervisor_pid: i32,
    pub profile: Option<String>,
    pub detach: bool,
    /// Processes of the old version (PIDs inside its namespace).
    pub processes: Vec<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_startup_block_travels_as_an_array_and_comes_back_whole() {
        let b = StartupBlock {
            pid: 3,
            tid: 4,
            seq: 17,
            addr: 0x1004_0001_0040,
            size: 120,
            site: 0x7fff_f7d0_1234,
            reaches_program: false,
            placeable: true,
            live: true,
        };
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(text, "[3,4,17,17609365979200,120,140737350996532,false,true,true]");
        assert_eq!(serde_json::from_str::<StartupBlock>(&text).unwrap(), b);
    }

    fn block(seq: u32, live: bool) -> StartupBlock {
        StartupBlock {
            pid: 3,
            tid: 3,
            seq,
            addr: 0x1000 * (seq as u64 + 1),
            size: 64,
            site: 0,
            reaches_program: false,
            placeable: true,
            live,
        }
    }

    fn log(blocks: Vec<StartupBlock>) -> StartupLog {
        StartupLog {
            complete: true,
            ops: vec![],
            unreplayable: vec![],
            after_startup: AfterStartup::default(),
            waits_at: vec!["old-wait".into()],
            mapped_at_startup: vec![],
            allocated_at_startup: blocks,
        }
    }

    #[test]
    fn a_refresh_takes_the_live_blocks_and_waits_of_now() {
        let read = log(vec![block(0, true), block(1, true), block(2, false)]);
        let r = StartupLogRefresh {
            complete: true,
            ops: 0,
            mapped_at_startup: 0,
            allocated_at_startup: 3,
            live: vec![2],
            waits_at: vec!["epoll_wait@loop".into()],
        };
        let now = read.refreshed(&r).expect("the same startup");
        let live: Vec<bool> = now.allocated_at_startup.iter().map(|b| b.live).collect();
        assert_eq!(live, [false, false, true], "block 0 and 1 were freed, block 2's address taken again");
        assert_eq!(now.waits_at, ["epoll_wait@loop"]);
    }

    #[test]
    fn a_refresh_of_another_startup_asks_for_the_whole_log() {
        let read = log(vec![block(0, true)]);
        let same = StartupLogRefresh { complete: true, allocated_at_startup: 1, ..Default::default() };
        assert!(read.refreshed(&same).is_some());
        for other in [
            StartupLogRefresh { allocated_at_startup: 2, ..same.clone() },
            StartupLogRefresh { ops: 1, ..same.clone() },
            StartupLogRefresh { mapped_at_startup: 1, ..same.clone() },
            StartupLogRefresh { complete: false, ..same.clone() },
            StartupLogRefresh { live: vec![1], ..same.clone() },
        ] {
            assert!(read.refreshed(&other).is_none(), "{other:?}");
        }
        let incomplete = StartupLog { complete: false, ..read };
        assert!(incomplete.refreshed(&same).is_none(), "a log read before its startup completed is read again");
    }
}
