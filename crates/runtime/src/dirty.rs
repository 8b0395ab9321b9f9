//! Dirty tracking (DESIGN.md, paper §6): when the process completes its startup, arm
//! userfaultfd async write-protect over its writable private memory (the kernel work is
//! in the `mcr-dirty` crate), so an update later reads which pages were written since.
//!
//! Steady state costs one minor fault on the first write to each page after arming,
//! resolved inside the kernel (WP_ASYNC: no handler thread, no signal). The userfaultfd
//! must stay open for the registrations to last: it lives in the runtime's reserved fd
//! range, hidden from the program's close/close_range/dup2 like the control socket.
//!
//! Fork: registrations are not inherited (no UFFD_FEATURE_EVENT_FORK), so a child starts
//! untracked (all dirty) and arms itself when its own startup completes. The child's
//! copy of the parent's userfaultfd is closed at once.
//!
//! A fork in memfd mode also changes the parent: the heap's freeze remaps each shared
//! segment copy-on-write over its memfd, a new mapping that no userfaultfd registered. Its
//! pages count as dirty from then on (untracked), which is correct, only less precise.
//! Registering and write-protecting it again would be wrong: it would need the pages written
//! before the remap (read from the old mapping), and a store another thread makes between
//! that reading and the remap would then be lost.
//!
//! `MCR_DIRTY_TRACKING=off` disables it (for measuring its cost).

use mcr_protocol::{DirtyMethod, DirtyTracking};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};

/// The userfaultfd keeping the registrations alive, or -1.
pub static UFFD: AtomicI32 = AtomicI32::new(-1);
/// PID of the process whose arming `STATE` describes (a fork child inherits the parent's).
static ARMED_PID: AtomicI32 = AtomicI32::new(0);
static STATE: crate::sync::SpinLock<Option<DirtyTracking>> = crate::sync::SpinLock::new(None);
/// Read in the constructor: programs rewrite their environment later.
static DISABLED: AtomicBool = AtomicBool::new(false);

pub fn note_env() {
    let off = std::env::var(mcr_protocol::env::DIRTY_TRACKING).is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "no"));
    DISABLED.store(off, SeqCst);
}

pub fn fd() -> i32 {
    UFFD.load(Relaxed)
}

/// Arm for this process. Called once per process, by the thread that completes startup.
pub fn arm() {
    let t0 = std::time::Instant::now();
    let armed_at_ms = crate::since_start_ns() as f64 / 1e6;
    let tracking = if DISABLED.load(SeqCst) {
        DirtyTracking {
            method: DirtyMethod::None,
            armed_at_ms,
            arm_us: 0,
            ranges: 0,
            bytes: 0,
            skipped: 0,
            note: Some(format!("disabled by {}=off: every page counts as dirty", mcr_protocol::env::DIRTY_TRACKING)),
        }
    } else {
        let _errno = crate::errno::ErrnoGuard::save();
        // The runtime's own data (libmcr.so) is not the program's state.
        let report = mcr_dirty::arm::arm_self_with(
            Some(crate::RUNTIME_PATH.get().map_or("/libmcr.so", |p| p.as_str())),
            &crate::heap::used_data_ranges(),
            &crate::own_memory::ranges(),
        );
        if let Some(fd) = report.fd {
            // SAFETY: the userfaultfd just made, the runtime's alone.
            UFFD.store(unsafe { crate::control::move_to_reserved(fd) }, SeqCst);
        }
        DirtyTracking {
            method: match report.method {
                mcr_dirty::Method::UffdWp => DirtyMethod::UffdWp,
                mcr_dirty::Method::SoftDirty => DirtyMethod::SoftDirty,
                mcr_dirty::Method::None => DirtyMethod::None,
            },
            armed_at_ms,
            arm_us: t0.elapsed().as_micros() as u64,
            ranges: report.ranges,
            bytes: report.bytes,
            skipped: report.skipped,
            note: report.note,
        }
    };
    crate::diag::debug(|| format!("dirty tracking: {tracking:?}"));
    if tracking.method == DirtyMethod::None && !DISABLED.load(SeqCst) {
        if let Some(n) = &tracking.note {
            crate::diag::warn(&format!("dirty tracking: {n}"));
        }
    }
    *STATE.lock() = Some(tracking);
    ARMED_PID.store(crate::pid(), SeqCst);
}

/// Whether a descriptor that links to `link` is one arming opens (its userfaultfd, the
/// memory map it reads), before it moves the userfaultfd to the reserved range.
pub fn is_arming_descriptor(link: &str) -> bool {
    link == "anon_inode:[userfaultfd]" || link == format!("/proc/{}/maps", crate::pid())
}

/// This process's tracking, for the runtime's status reply.
pub fn status() -> Option<DirtyTracking> {
    if ARMED_PID.load(SeqCst) != crate::pid() {
        return None;
    }
    STATE.lock().clone()
}

/// In a fork child (async-signal-safe: a raw close and stores).
pub fn reset_after_fork() {
    STATE.force_unlock();
    let fd = UFFD.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: the child's copy of the parent's userfaultfd, hidden from the program
        // (a reserved descriptor): the runtime's own; the parent keeps its copy.
        unsafe { crate::rawfd::close(fd) };
    }
}
