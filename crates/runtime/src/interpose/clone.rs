//! Raw `clone` through libc's `syscall()`, as vsftpd makes its isolated session process:
//! `syscall(__NR_clone, CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | SIGCHLD, NULL)`.
//!
//! Such a child is a copy of its parent that glibc never heard of: its list of threads
//! still holds the parent's other threads (the runtime's control thread among them), and
//! glibc's `setgroups`/`setuid` in the child then wait forever for those threads to take
//! the setxid signal (vsftpd hung at `PASS`). A fork does what glibc needs (and runs the
//! fork handlers); the namespaces come from `unshare` on the calling thread, which are
//! per thread for these kinds, and the thread takes its own back after the fork. A child
//! in namespaces of its own starts passive: it cannot reach the supervisor from its own
//! network namespace. A plain fork-like raw clone is an ordinary, registered fork.
//!
//! `clone3` asking for the same is made a fork too. Other raw clones (threads, other
//! flags, a stack of the caller's) go to the kernel as they are: their child is a copy
//! glibc and the runtime never see, and may find a lock the runtime's thread held.

use crate::real;
use libc::{c_int, c_long};

/// The namespace kinds a fork can get by unsharing the calling thread's first.
const THREAD_NAMESPACES: c_int = libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNET | libc::CLONE_NEWUTS;

/// Whether a raw clone with these flags and stack is a fork into thread-unsharable
/// namespaces that [`fork_into_namespaces`] can make.
fn is_forklike(flags: c_long, stack: c_long) -> bool {
    let Ok(flags) = c_int::try_from(flags) else { return false };
    stack == 0 && flags & 0xff == libc::SIGCHLD && flags & !(THREAD_NAMESPACES | 0xff) == 0
}

/// The flags of a `clone3` whose `struct clone_args` (`size` bytes at `args`) asks for
/// what a fork into thread-unsharable namespaces gives (SIGCHLD, no stack, no TID or pidfd
/// to write, no cgroup); None otherwise.
///
/// # Safety
/// `args` is null or points to `size` readable bytes.
unsafe fn clone3_forklike_flags(args: *const u64, size: usize) -> Option<c_long> {
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, then
    // (later versions) set_tid, set_tid_size, cgroup.
    if args.is_null() || size < 64 || !size.is_multiple_of(8) || size > 4096 {
        return None;
    }
    // SAFETY: `size` readable bytes at `args` (the caller's contract), read as u64s.
    let words = unsafe { std::slice::from_raw_parts(args, size / 8) };
    let flags = c_long::try_from(words[0]).ok()?;
    let exit_signal = words[4];
    let (stack, stack_size, set_tid_size) = (words[5], words[6], words.get(9).copied().unwrap_or(0));
    let fork_like = exit_signal == libc::SIGCHLD as u64
        && stack == 0
        && stack_size == 0
        && set_tid_size == 0
        && flags & !(THREAD_NAMESPACES as c_long) == 0;
    fork_like.then_some(flags)
}

/// `/proc/thread-self/ns/` names of the kinds in `flags`, with their CLONE flag (pid:
/// the thread's own, which is where its later children go again).
fn namespace_files(flags: c_int) -> impl Iterator<Item = (&'static [u8], c_int)> {
    [
        (&b"/proc/thread-self/ns/pid\0"[..], libc::CLONE_NEWPID),
        (&b"/proc/thread-self/ns/ipc\0"[..], libc::CLONE_NEWIPC),
        (&b"/proc/thread-self/ns/net\0"[..], libc::CLONE_NEWNET),
        (&b"/proc/thread-self/ns/uts\0"[..], libc::CLONE_NEWUTS),
    ]
    .into_iter()
    .filter(move |(_, kind)| flags & kind != 0)
}

/// The fork: `None` when the thread's own namespaces cannot be kept to return to (then
/// the raw clone runs as it is).
fn fork_into_namespaces(flags: c_int) -> Option<c_long> {
    let mut own: Vec<(c_int, c_int)> = Vec::new();
    let close_all = |own: &[(c_int, c_int)]| {
        for &(fd, _) in own {
            // SAFETY: a descriptor this function opened.
            unsafe { libc::close(fd) };
        }
    };
    {
        let _internal = crate::threads::InternalGuard::enter();
        for (path, kind) in namespace_files(flags) {
            // SAFETY: a NUL-terminated path; the descriptor is closed below.
            let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                close_all(&own);
                return None;
            }
            own.push((fd, kind));
        }
    }
    // SAFETY: unshare takes flags only; these kinds are per thread.
    if unsafe { real::unshare()(flags & THREAD_NAMESPACES) } != 0 {
        let e = crate::errno::get();
        close_all(&own);
        crate::errno::set(e);
        return Some(-1); // as the clone would have failed (vsftpd then forks plainly)
    }
    // Only a child in namespaces of its own is out of the supervisor's reach; a plain raw
    // fork-like clone is an ordinary fork child, registered as any other.
    crate::set_next_child_passive(flags & THREAD_NAMESPACES != 0);
    // SAFETY: the program's fork through the runtime's own wrapper (fork handlers, PIDs),
    // as its raw clone would have forked.
    let pid = unsafe { super::startup::fork() };
    crate::set_next_child_passive(false);
    if pid != 0 {
        let e = crate::errno::get();
        for &(fd, kind) in &own {
            // SAFETY: back into the namespace this thread was in, from a descriptor of it.
            if unsafe { real::setns()(fd, kind) } != 0 {
                crate::diag::warn("a raw clone into new namespaces: the forking thread could not return to its own");
            }
        }
        close_all(&own);
        crate::errno::set(e);
    }
    Some(pid as c_long)
}

/// libc's `syscall()`, variadic in C; on x86-64 its arguments arrive in the registers (and
/// the one stack slot) these seven parameters name, which is also how glibc's own reads
/// them.
///
/// # Safety
/// syscall(2)'s contract for system call `nr`: the arguments it reads as pointers are
/// valid.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    nr: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    if (nr == libc::SYS_clone || nr == libc::SYS_clone3) && crate::is_active() && !crate::threads::is_internal() {
        let flags = if nr == libc::SYS_clone {
            is_forklike(a1, a2).then_some(a1)
        } else {
            // SAFETY: clone3's contract: `a1` points to `a2` readable bytes of struct clone_args.
            unsafe { clone3_forklike_flags(a1 as *const u64, a2 as usize) }
        };
        if let Some(r) = flags.and_then(|f| fork_into_namespaces(f as c_int)) {
            return r;
        }
    }
    // SAFETY: the caller's own arguments, unchanged.
    unsafe { real::syscall()(nr, a1, a2, a3, a4, a5, a6) }
}

/// glibc's `_Fork`: a fork without the fork handlers. Its child would find the heap's
/// locks as they were, possibly held by the runtime's thread, which the child does not
/// have; the heap (not the program's handlers) is locked across it, and the child runs
/// without the runtime, as it runs without the program's handlers.
///
/// # Safety
/// `_Fork(3)`'s contract (none: no arguments).
#[no_mangle]
pub unsafe extern "C" fn _Fork() -> libc::pid_t {
    let f = real::_Fork();
    if !crate::is_active() || crate::threads::is_internal() {
        // SAFETY: libc's _Fork, as the caller asked.
        return unsafe { f() };
    }
    crate::heap::fork_prepare();
    // SAFETY: libc's _Fork, as the caller asked; the heap is locked across it.
    let pid = unsafe { f() };
    if pid == 0 {
        crate::become_passive();
        crate::heap::fork_child();
    } else {
        let e = crate::errno::get();
        crate::heap::fork_parent();
        crate::errno::set(e);
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forks_into_thread_namespaces_are_made_forks() {
        let ns = (libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNET | libc::SIGCHLD) as c_long;
        assert!(is_forklike(ns, 0));
        assert!(is_forklike(libc::SIGCHLD as c_long, 0));
        assert!(!is_forklike(ns, 0x7000_0000), "a stack of the caller's");
        assert!(!is_forklike((libc::CLONE_VM | libc::SIGCHLD) as c_long, 0), "shares memory");
        assert!(!is_forklike((libc::CLONE_NEWNS | libc::SIGCHLD) as c_long, 0), "a mount namespace is not per thread");
        assert!(!is_forklike((libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long, 0));
        assert!(!is_forklike(libc::CLONE_NEWPID as c_long, 0), "no SIGCHLD: the parent would not hear of it");
        assert_eq!(namespace_files(libc::CLONE_NEWPID | libc::CLONE_NEWNET).count(), 2);
    }

    #[test]
    fn a_clone3_is_made_a_fork_only_when_a_fork_gives_what_it_asks() {
        let args = |flags: u64, exit_signal: u64, stack: u64, set_tid_size: u64| {
            let mut a = [0u64; 11];
            (a[0], a[4], a[5], a[9]) = (flags, exit_signal, stack, set_tid_size);
            a
        };
        // SAFETY: each array is 88 readable bytes, more than any size asked.
        let check = |a: &[u64; 11], size: usize| unsafe { clone3_forklike_flags(a.as_ptr(), size) };
        let sigchld = libc::SIGCHLD as u64;
        assert_eq!(check(&args(0, sigchld, 0, 0), 88), Some(0));
        assert_eq!(check(&args(libc::CLONE_NEWPID as u64, sigchld, 0, 0), 64), Some(libc::CLONE_NEWPID as c_long));
        assert_eq!(check(&args(libc::CLONE_VM as u64, sigchld, 0, 0), 88), None, "shares memory");
        assert_eq!(check(&args(0, 0, 0, 0), 88), None, "no SIGCHLD");
        assert_eq!(check(&args(0, sigchld, 0x7000, 0), 88), None, "a stack of its own");
        assert_eq!(check(&args(0, sigchld, 0, 1), 88), None, "a TID asked for");
        assert_eq!(check(&args(0, sigchld, 0, 0), 32), None, "too short to be clone_args");
    }
}
