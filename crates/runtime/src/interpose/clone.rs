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
//! Other raw clones (threads, other flags, a stack of the caller's) go to the kernel as
//! they are.

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
    if nr == libc::SYS_clone && is_forklike(a1, a2) && crate::is_active() && !crate::threads::is_internal() {
        if let Some(r) = fork_into_namespaces(a1 as c_int) {
            return r;
        }
    }
    // SAFETY: the caller's own arguments, unchanged.
    unsafe { real::syscall()(nr, a1, a2, a3, a4, a5, a6) }
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
}
