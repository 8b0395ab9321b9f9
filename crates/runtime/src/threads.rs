//! The table of the process's threads. Fixed-size and static, so a hook or a signal
//! handler can reach its thread's entry without allocating or locking: each thread finds
//! its slot through a const-initialized thread-local index (no destructor, so no
//! `__cxa_thread_atexit` registration).

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

pub const MAX_THREADS: usize = 2048;
pub const MAX_STACK: usize = mcr_callstack::MAX_FRAMES;
const NO_SLOT: u32 = u32::MAX;

/// `tid` of a slot reserved by `pthread_create` whose thread has not started yet.
pub const TID_PENDING: i32 = -1;

pub const RUNNING: u32 = 0;
pub const IN_CALL: u32 = 1;
pub const PARKED: u32 = 2;

/// A fixed array of return addresses, written by one thread, read by the control thread
/// only while the writer is parked or not writing it any more.
pub struct RawStack {
    pub len: AtomicUsize,
    pub addrs: [AtomicUsize; MAX_STACK],
}

impl RawStack {
    const fn new() -> Self {
        Self { len: AtomicUsize::new(0), addrs: [const { AtomicUsize::new(0) }; MAX_STACK] }
    }
    pub fn store(&self, addrs: &[usize]) {
        let n = addrs.len().min(MAX_STACK);
        for (dst, &a) in self.addrs.iter().zip(&addrs[..n]) {
            dst.store(a, Relaxed);
        }
        self.len.store(n, Release);
    }
    pub fn load(&self) -> Vec<usize> {
        let n = self.len.load(Acquire).min(MAX_STACK);
        self.addrs[..n].iter().map(|a| a.load(Relaxed)).collect()
    }
}

pub struct Slot {
    /// 0: free; TID_PENDING: reserved by pthread_create; else the thread's tid.
    pub tid: AtomicI32,
    pub state: AtomicU32,
    /// `Call` index of the wrapped call the thread is in (valid when state != RUNNING).
    pub call: AtomicU32,
    /// fd argument of the current call (reads), the condition variable's address, or a
    /// poll's or select's set (the pollfds the program passed; the select wrapper's copy
    /// of the program's sets, `interpose::blocking::FdSets`).
    pub object: AtomicUsize,
    /// For a poll or a select: how many pollfds its set holds, or the select's `nfds`.
    pub set_len: AtomicUsize,
    /// Frame pointer of the wrapper: the control thread walks the blocked thread's stack
    /// from it.
    pub frame: AtomicUsize,
    /// Set by the kick signal handler (or by the controller for condition variables).
    pub kicked: AtomicBool,
    /// A kick signal was sent and its handler has not run yet: the controller sends no
    /// other meanwhile ([`crate::quiesce`]: real-time signals queue, one per send).
    pub kick_in_flight: AtomicBool,
    pub is_main: AtomicBool,
    /// The thread reached a quiescent point at least once.
    pub reached_qp: AtomicBool,
    pub qp_call: AtomicU32,
    pub qp_stack: RawStack,
    /// Where pthread_create was called, and the start routine.
    pub creation_stack: RawStack,
    pub start_routine: AtomicUsize,
    pub generation: AtomicU64,
    /// Wrapped calls the thread made while marked runtime-internal, or from inside one of
    /// the program's signal handlers: they bypass quiescence (a quiesce report shows how
    /// many a thread that did not park made).
    pub untracked_internal: AtomicU32,
    pub untracked_in_handler: AtomicU32,
    /// Tracked wrapped calls the thread entered (written by the thread only): a quiesce
    /// report tells a thread looping through calls from one stuck in one.
    pub calls_entered: AtomicU32,
    /// Times the thread went round a wrapped call's loop after an interruption taken for
    /// the runtime's kick, and through the drain's accept gate (slow paths only).
    pub call_restarts: AtomicU32,
    pub accept_gate_passes: AtomicU32,
    /// A quiesce report asks where a running thread is: the kick's handler, seeing this
    /// set, records the interrupted program counter and frame pointer (and sets nothing
    /// else), then bumps `probe_seq`.
    pub probe: AtomicBool,
    pub probe_pc: AtomicUsize,
    pub probe_fp: AtomicUsize,
    pub probe_seq: AtomicU32,
}

impl Slot {
    /// Where the thread waits now (its wrapped call, symbolized), unless it runs.
    pub fn current_wait(&self) -> Option<mcr_protocol::CallStack> {
        if self.state.load(SeqCst) == RUNNING {
            return None;
        }
        let call = crate::calls::Call::from_index(self.call.load(Acquire));
        let raw = crate::stack::walk_vec(self.frame.load(Acquire));
        crate::diag::debug(|| {
            format!("tid {}: frame {:#x} raw {raw:x?}", self.tid.load(Relaxed), self.frame.load(Acquire))
        });
        Some(crate::symbolize::call_stack(Some(call.name()), &raw))
    }

    /// Where the thread waited when its startup ended (its first quiescent point).
    pub fn startup_wait(&self) -> Option<mcr_protocol::CallStack> {
        if !self.reached_qp.load(Acquire) {
            return None;
        }
        let call = crate::calls::Call::from_index(self.qp_call.load(Acquire));
        Some(crate::symbolize::call_stack(Some(call.name()), &self.qp_stack.load()))
    }

    const fn new() -> Self {
        Self {
            tid: AtomicI32::new(0),
            state: AtomicU32::new(RUNNING),
            call: AtomicU32::new(0),
            object: AtomicUsize::new(0),
            set_len: AtomicUsize::new(0),
            frame: AtomicUsize::new(0),
            kicked: AtomicBool::new(false),
            kick_in_flight: AtomicBool::new(false),
            is_main: AtomicBool::new(false),
            reached_qp: AtomicBool::new(false),
            qp_call: AtomicU32::new(0),
            qp_stack: RawStack::new(),
            creation_stack: RawStack::new(),
            start_routine: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            untracked_internal: AtomicU32::new(0),
            untracked_in_handler: AtomicU32::new(0),
            calls_entered: AtomicU32::new(0),
            call_restarts: AtomicU32::new(0),
            accept_gate_passes: AtomicU32::new(0),
            probe: AtomicBool::new(false),
            probe_pc: AtomicUsize::new(0),
            probe_fp: AtomicUsize::new(0),
            probe_seq: AtomicU32::new(0),
        }
    }

    fn clear(&self) {
        self.state.store(RUNNING, Relaxed);
        self.kicked.store(false, Relaxed);
        self.kick_in_flight.store(false, Relaxed);
        self.is_main.store(false, Relaxed);
        self.reached_qp.store(false, Relaxed);
        self.qp_stack.len.store(0, Relaxed);
        self.creation_stack.len.store(0, Relaxed);
        self.start_routine.store(0, Relaxed);
        self.frame.store(0, Relaxed);
        self.untracked_internal.store(0, Relaxed);
        self.untracked_in_handler.store(0, Relaxed);
        self.calls_entered.store(0, Relaxed);
        self.call_restarts.store(0, Relaxed);
        self.accept_gate_passes.store(0, Relaxed);
        self.probe.store(false, Relaxed);
        self.generation.fetch_add(1, Relaxed);
    }
}

pub static SLOTS: [Slot; MAX_THREADS] = [const { Slot::new() }; MAX_THREADS];
/// Slots at or above this index have never been used: scans stop here.
pub static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// Everything the runtime keeps per thread, in one const-initialized thread-local with
/// no destructor (so no `__cxa_thread_atexit` registration): a hook reaches it with a
/// single TLS lookup.
pub struct Local {
    slot: Cell<u32>,
    /// Runtime-internal threads (the control thread) and re-entered hooks bypass all
    /// tracking.
    internal: Cell<bool>,
    /// Incremented by the trampoline that runs the program's own signal handlers: tells an
    /// EINTR caused by the program's signal from one caused by our kick.
    program_signals: Cell<u32>,
    /// Frame address of the innermost program signal handler running on this thread
    /// (0: none).
    handler_frame: Cell<usize>,
    /// The stack mapping the thread runs on, [lo, hi) (0, 0: unknown), and how often it
    /// was looked up: [`crate::stack::walk_own`] reads frames inside it directly.
    stack_lo: Cell<usize>,
    stack_hi: Cell<usize>,
    stack_lookups: Cell<u8>,
    /// The thread's TID once asked for (0: not yet); reset in a fork child.
    tid: Cell<i32>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            slot: Cell::new(NO_SLOT),
            internal: Cell::new(false),
            program_signals: Cell::new(0),
            handler_frame: Cell::new(0),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
            stack_lookups: Cell::new(0),
            tid: Cell::new(0),
        }
    };
}

/// The calling thread's `Local`.
#[inline(always)]
pub fn local() -> &'static Local {
    // SAFETY: the thread-local lives as long as the thread, has no destructor, and the
    // reference never leaves the thread (Local is !Sync).
    LOCAL.with(|l| unsafe { &*(l as *const Local) })
}

impl Local {
    #[inline(always)]
    pub fn is_internal(&self) -> bool {
        self.internal.get()
    }

    /// The bounds of the stack mapping holding `sp` (an address on this thread's stack),
    /// looked up in /proc/self/maps the first time (and again, a few times at most, when
    /// `sp` left them: the main thread's stack grows). None when unknown.
    pub fn stack_bounds(
        &self,
        sp: usize,
        lookup: impl FnOnce(usize) -> Option<(usize, usize)>,
    ) -> Option<(usize, usize)> {
        let (lo, hi) = (self.stack_lo.get(), self.stack_hi.get());
        if lo <= sp && sp < hi {
            return Some((lo, hi));
        }
        if self.stack_lookups.get() >= 8 {
            return None;
        }
        self.stack_lookups.set(self.stack_lookups.get() + 1);
        let (lo, hi) = lookup(sp).unwrap_or((0, 0));
        self.stack_lo.set(lo);
        self.stack_hi.set(hi);
        (lo <= sp && sp < hi).then_some((lo, hi))
    }

    /// The calling thread's TID (one system call the first time).
    pub fn tid(&self) -> i32 {
        if self.tid.get() == 0 {
            self.tid.set(gettid());
        }
        self.tid.get()
    }

    #[inline(always)]
    pub fn program_signals(&self) -> u32 {
        self.program_signals.get()
    }

    /// The thread's slot, claiming one on first use. `None` for a full table (the thread
    /// is then invisible to quiescence).
    #[inline(always)]
    pub fn slot(&self) -> Option<&'static Slot> {
        let idx = self.slot.get();
        if idx != NO_SLOT {
            return SLOTS.get(idx as usize);
        }
        self.claim_slot()
    }

    /// The thread's slot if it has one already (never claims: the control thread has none).
    pub fn claimed_slot(&self) -> Option<&'static Slot> {
        let idx = self.slot.get();
        (idx != NO_SLOT).then(|| SLOTS.get(idx as usize)).flatten()
    }

    #[cold]
    fn claim_slot(&self) -> Option<&'static Slot> {
        let idx = claim(gettid())?;
        self.slot.set(idx);
        let slot = &SLOTS[idx as usize];
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == slot.tid.load(Relaxed) {
            slot.is_main.store(true, Relaxed);
        }
        Some(slot)
    }

    /// Whether a wrapped call whose wrapper frame is `fp` is made from inside a program
    /// signal handler (e.g. `waitpid` in a SIGCHLD handler). Such calls must not touch the
    /// thread's slot: it describes the call the handler interrupted. A handler left with
    /// siglongjmp is noticed here (the stack is back above its frame) and forgotten.
    #[inline(always)]
    pub fn in_signal_handler(&self, fp: usize) -> bool {
        let h = self.handler_frame.get();
        if h == 0 {
            return false;
        }
        if fp <= h && h - fp < (1 << 20) {
            return true;
        }
        self.handler_frame.set(0);
        false
    }
}

/// Run `f` (a program's signal handler) marked as such.
pub fn in_handler<R>(frame: usize, f: impl FnOnce() -> R) -> R {
    let l = local();
    let prev = l.handler_frame.replace(frame);
    let r = f();
    l.handler_frame.set(prev);
    r
}

/// Start a detached runtime thread running `entry` (with a null argument), through libc's
/// own pthread_create: ours would track it as one of the program's. False when it could
/// not be created.
///
/// Its stack is mapped here (as large as glibc's default, with a guard page below it) and
/// noted as the runtime's own (`own_memory`): glibc's would be indistinguishable from the
/// program's memory. Where that mapping fails, glibc's default stack is used.
pub fn spawn_detached(entry: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    let len = THREAD_STACK + STACK_GUARD;
    // SAFETY: a fresh private anonymous mapping (no address, no file): it overlaps nothing
    // and is given no memory of anyone's. Raw: the exported mmap is the program's.
    let base = unsafe {
        crate::sys!(
            libc::SYS_mmap,
            core::ptr::null_mut::<u8>(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0
        )
    };
    // SAFETY: the lowest page of the mapping just made, which nothing uses.
    let own = base != -1 && unsafe { crate::sys!(libc::SYS_mprotect, base, STACK_GUARD, libc::PROT_NONE) } == 0;
    // SAFETY: pthread_attr_t is plain data that pthread_attr_init fills in.
    let mut attr: libc::pthread_attr_t = unsafe { core::mem::zeroed() };
    // SAFETY: `attr` is a live local; the stack given is the mapping above the guard page,
    // readable, writable and used by nothing else, for as long as the thread lives.
    let with_stack = own
        && unsafe {
            libc::pthread_attr_init(&mut attr) == 0
                && libc::pthread_attr_setstack(
                    &mut attr,
                    (base as usize + STACK_GUARD) as *mut libc::c_void,
                    THREAD_STACK,
                ) == 0
        };
    let attr_ptr = if with_stack { &attr as *const libc::pthread_attr_t } else { core::ptr::null() };
    let mut t: libc::pthread_t = 0;
    crate::replay::let_unmade_processes_come_first();
    // SAFETY: pthread_create writes `t`, a live local; `attr_ptr` is null or the
    // attributes set above; `entry` ignores its (null) argument.
    let created = unsafe { crate::real::pthread_create()(&mut t, attr_ptr, entry, core::ptr::null_mut()) } == 0;
    if with_stack {
        // SAFETY: attributes initialized above, no longer needed (pthread_create copied them).
        unsafe { libc::pthread_attr_destroy(&mut attr) };
    }
    match (created, with_stack) {
        (true, true) => crate::own_memory::add_stack(base as u64, len as u64),
        // SAFETY: the mapping made above, which no thread uses.
        (false, _) | (true, false) if base != -1 => unsafe {
            crate::sys!(libc::SYS_munmap, base, len);
        },
        _ => {}
    }
    if !created {
        return false;
    }
    // SAFETY: `t` is the thread just created, neither joined nor detached yet.
    unsafe { libc::pthread_detach(t) };
    true
}

/// A runtime thread's stack: glibc's default size (RLIMIT_STACK's usual 8 MiB).
const THREAD_STACK: usize = 8 << 20;
const STACK_GUARD: usize = 4096;

pub fn gettid() -> i32 {
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe { crate::sys!(libc::SYS_gettid) as i32 }
}

/// Reserve a free slot and give it `tid`.
pub fn claim(tid: i32) -> Option<u32> {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.tid.compare_exchange(0, tid, AcqRel, Relaxed).is_ok() {
            s.clear();
            HIGH_WATER.fetch_max(i + 1, AcqRel);
            return Some(i as u32);
        }
    }
    None
}

pub fn release(index: u32) {
    if let Some(s) = SLOTS.get(index as usize) {
        s.clear();
        s.tid.store(0, Release);
    }
}

pub fn current_index() -> Option<u32> {
    let idx = local().slot.get();
    (idx != NO_SLOT).then_some(idx)
}

/// Adopt a slot reserved by `pthread_create` (called first thing in the new thread).
pub fn adopt(index: u32) {
    if let Some(s) = SLOTS.get(index as usize) {
        s.tid.store(gettid(), Release);
        local().slot.set(index);
    }
}

pub fn forget_current() {
    if let Some(i) = current_index() {
        release(i);
        local().slot.set(NO_SLOT);
        crate::quiesce::thread_left();
    }
}

pub fn is_internal() -> bool {
    local().internal.get()
}

/// While it lives, the calling thread is runtime-internal: its wrapped calls bypass all
/// tracking (the runtime's own file reads are neither startup operations nor quiescent
/// points). Dropping it puts back what was there before, on every way out of the scope,
/// early returns included, so a thread never stays internal by accident (it would
/// then be invisible to quiescence for good).
#[must_use = "the thread is internal only while the guard lives"]
pub struct InternalGuard {
    was: bool,
    /// The flag is per thread: the guard must be dropped on the thread that made it.
    _thread_bound: PhantomData<*const ()>,
}

impl InternalGuard {
    pub fn enter() -> Self {
        Self { was: local().internal.replace(true), _thread_bound: PhantomData }
    }
}

impl Drop for InternalGuard {
    fn drop(&mut self) {
        local().internal.set(self.was);
    }
}

pub fn note_program_signal() {
    let l = local();
    l.program_signals.set(l.program_signals.get().wrapping_add(1));
}

/// In a fork child only the calling thread survives: every other slot is stale.
pub fn reset_after_fork() {
    local().tid.set(0);
    let keep = current_index();
    let hw = HIGH_WATER.load(Acquire);
    for (i, s) in SLOTS[..hw].iter().enumerate() {
        if Some(i as u32) != keep && s.tid.load(Relaxed) != 0 {
            release(i as u32);
        }
    }
    if let Some(i) = keep {
        let s = &SLOTS[i as usize];
        s.tid.store(gettid(), Release);
        s.is_main.store(true, Relaxed);
        s.reached_qp.store(false, Relaxed);
        s.state.store(RUNNING, Relaxed);
        // The child does not inherit its parent's pending signals: a kick in flight
        // there is none here.
        s.kick_in_flight.store(false, Relaxed);
        s.kicked.store(false, Relaxed);
    }
}

/// Used slots (tid != 0), with their index.
pub fn used() -> impl Iterator<Item = (usize, &'static Slot)> {
    let hw = HIGH_WATER.load(Acquire);
    SLOTS[..hw].iter().enumerate().filter(|(_, s)| s.tid.load(Acquire) != 0)
}

/// The program's threads other than the main thread and those whose TIDs are in
/// `startup` (created during startup), with the wrapped call each is in: the threads it
/// created after startup.
pub fn created_after(startup: &std::collections::BTreeSet<i32>) -> Vec<mcr_protocol::LateThread> {
    used()
        .filter_map(|(_, s)| {
            let tid = s.tid.load(Acquire);
            if tid == TID_PENDING || s.is_main.load(Acquire) || startup.contains(&tid) {
                return None;
            }
            let in_call = s.state.load(Acquire) != RUNNING;
            let call = crate::calls::Call::from_index(s.call.load(Acquire));
            Some(mcr_protocol::LateThread {
                tid,
                call: in_call.then(|| call.name().to_string()),
                fd: (in_call && call.depends_on_fd()).then(|| s.object.load(Acquire) as i32),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_claimed_released_and_reused() {
        let a = claim(TID_PENDING).unwrap();
        let b = claim(4242).unwrap();
        assert_ne!(a, b);
        assert!(used().any(|(i, s)| i == b as usize && s.tid.load(Relaxed) == 4242));
        release(b);
        assert!(!used().any(|(i, _)| i == b as usize));
        release(a);
    }

    #[test]
    fn raw_stacks_keep_at_most_max_frames() {
        let s = RawStack::new();
        let long: Vec<usize> = (1..=MAX_STACK + 5).collect();
        s.store(&long);
        assert_eq!(s.load(), long[..MAX_STACK].to_vec());
    }

    #[test]
    fn internal_guards_nest_and_restore_on_every_way_out() {
        fn work(early: bool) -> Option<()> {
            let _internal = InternalGuard::enter();
            assert!(is_internal());
            if early {
                return None;
            }
            {
                let _nested = InternalGuard::enter();
                assert!(is_internal());
            }
            assert!(is_internal(), "an inner guard puts back the outer one's state");
            Some(())
        }
        assert!(!is_internal());
        assert_eq!(work(true), None);
        assert!(!is_internal(), "after an early return");
        assert_eq!(work(false), Some(()));
        assert!(!is_internal(), "after the normal return");
    }

    #[test]
    fn handler_frames_are_recognized_and_forgotten_after_longjmp() {
        let l = local();
        assert!(!l.in_signal_handler(0x7000_0000));
        in_handler(0x7000_0000, || {
            assert!(l.in_signal_handler(0x6fff_f000), "a frame below the handler's is nested");
        });
        l.handler_frame.set(0x7000_0000);
        assert!(!l.in_signal_handler(0x7000_1000), "a frame above it means the handler was left");
        assert!(!l.in_signal_handler(0x6fff_f000), "and the stale mark is gone");
    }
}
