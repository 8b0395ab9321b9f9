//! The process ends when the program's last thread does, as without mcr.
//!
//! glibc ends a process when its count of threads reaches zero: the last thread to
//! return or call `pthread_exit` calls `exit(0)`. The runtime's control thread counts
//! too, so a program whose main thread calls `pthread_exit` would never end once its
//! workers finish (the process would live on with the runtime's thread alone). So the
//! wrappers of thread ends ask whether the ending thread is the program's last one, and
//! if so end the process as glibc would have.
//!
//! (The kernel does not tell a thread pidfd when a group leader exits before the others,
//! so the control thread cannot watch for this itself; a leader killed alone, by a
//! seccomp filter's `SECCOMP_RET_KILL_THREAD`, is not covered.)

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// The main thread ended with `pthread_exit` while other program threads ran.
static LEADER_GONE: AtomicBool = AtomicBool::new(false);

/// Called by a program thread about to end (returning from its start routine, or in
/// `pthread_exit`), after it left the thread table: when no other program thread is left
/// and glibc would not see that (the runtime's threads count for it), it ends the process
/// the way glibc would have, `exit(0)`. A main thread that leaves first is remembered.
pub fn thread_ending(is_main: bool) {
    if !crate::is_active() && !crate::is_sandboxed() {
        return;
    }
    if others_alive() {
        if is_main {
            LEADER_GONE.store(true, SeqCst);
        }
        return;
    }
    if is_main || LEADER_GONE.load(SeqCst) {
        // SAFETY: exit runs the program's atexit handlers and flushes its streams, as
        // glibc's own end of a process whose last thread ends does; no other program
        // thread is left to race with them.
        unsafe { libc::exit(0) }
    }
}

/// Whether a program thread other than the calling one is alive: not the runtime's own,
/// not an exited main thread.
fn others_alive() -> bool {
    // The thread table answers most exits without /proc (the ending thread has left it).
    if crate::threads::used().next().is_some() {
        return true;
    }
    let me = crate::threads::gettid();
    let pid = crate::pid();
    let runtime = |t: i32| crate::control::is_control_thread(t) || crate::profiling::is_sampler_thread(t);
    let tasks = {
        let _internal = crate::threads::InternalGuard::enter();
        mcr_procfs::task::list(mcr_procfs::Process::Current)
    };
    // Without /proc (a process that chroot'ed) nothing can be told: never end it then.
    let Ok(tasks) = tasks else { return true };
    tasks.into_iter().any(|t| t != me && !runtime(t) && !(t == pid && LEADER_GONE.load(SeqCst)))
}
