//! The environment and the settings only their own thread can read back: the program's
//! environment changes hold the runtime's lock against its readers of `environ`, and a
//! sigaltstack or PR_SET_PDEATHSIG made after startup is noted (an update names it).
//!
//! And the calls by which a process closes the door on new threads: a seccomp filter
//! (sshd's privilege-separation child kills itself on `clone3`), a process limit of zero
//! (vsftpd's session process sets `RLIMIT_NPROC` to 0, which fails every `clone`). The
//! runtime's control thread starts lazily, at a process's first wrapped call; these
//! start it first, while the process may still create it.

use crate::attributes::{note_set_after_startup, ENV_LOCK};
use crate::real;
use libc::{c_char, c_int, c_ulong};

/// # Safety
/// setenv(3)'s contract: `name` and `value` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn setenv(name: *const c_char, value: *const c_char, overwrite: c_int) -> c_int {
    let _env = ENV_LOCK.lock();
    // SAFETY: the caller's own arguments, unchanged.
    unsafe { real::setenv()(name, value, overwrite) }
}

/// # Safety
/// unsetenv(3)'s contract: `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn unsetenv(name: *const c_char) -> c_int {
    let _env = ENV_LOCK.lock();
    // SAFETY: the caller's own argument, unchanged.
    unsafe { real::unsetenv()(name) }
}

/// # Safety
/// putenv(3)'s contract: `string` is a NUL-terminated `NAME=value` the caller keeps alive.
#[no_mangle]
pub unsafe extern "C" fn putenv(string: *mut c_char) -> c_int {
    let _env = ENV_LOCK.lock();
    // SAFETY: the caller's own argument, unchanged.
    unsafe { real::putenv()(string) }
}

/// # Safety
/// clearenv(3) has no arguments; its contract is about the program's own uses of environ.
#[no_mangle]
pub unsafe extern "C" fn clearenv() -> c_int {
    let _env = ENV_LOCK.lock();
    // SAFETY: no arguments.
    unsafe { real::clearenv()() }
}

/// # Safety
/// sigaltstack(2)'s contract: `ss` is null or readable, `old` null or writable.
#[no_mangle]
pub unsafe extern "C" fn sigaltstack(ss: *const libc::stack_t, old: *mut libc::stack_t) -> c_int {
    // SAFETY: the caller's own arguments, unchanged.
    let rc = unsafe { real::sigaltstack()(ss, old) };
    if rc == 0 && !ss.is_null() {
        let e = crate::errno::get();
        note_set_after_startup("sigaltstack", None);
        crate::errno::set(e);
    }
    rc
}

/// prctl(2) is variadic in C; on x86-64 its integer arguments arrive in the same
/// registers as these five, which is how glibc's own wrapper reads them.
///
/// # Safety
/// prctl(2)'s contract for `option`: the arguments it reads as pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn prctl(option: c_int, a2: c_ulong, a3: c_ulong, a4: c_ulong, a5: c_ulong) -> c_int {
    if option == libc::PR_SET_SECCOMP {
        before_the_door_closes();
    }
    // SAFETY: the caller's own arguments, unchanged.
    let rc = unsafe { real::prctl()(option, a2, a3, a4, a5) };
    if rc == 0 && option == libc::PR_SET_SECCOMP {
        crate::enter_sandbox();
    }
    if rc == 0 && option == libc::PR_SET_PDEATHSIG {
        let e = crate::errno::get();
        note_set_after_startup("PR_SET_PDEATHSIG", Some(a2 as i64));
        crate::errno::set(e);
    }
    rc
}

/// Starts the runtime's control thread now if the process has none yet (it would not get
/// one later). In a process mcr does not run, or with the thread running, one load.
fn before_the_door_closes() {
    if crate::is_active() && !crate::threads::is_internal() {
        crate::control::ensure_started();
    }
}

/// # Safety
/// setrlimit(2)'s contract: `limit` points to a readable struct rlimit.
#[no_mangle]
pub unsafe extern "C" fn setrlimit(resource: c_int, limit: *const libc::rlimit) -> c_int {
    before_the_door_closes();
    // SAFETY: the caller's own arguments, unchanged.
    unsafe { real::setrlimit()(resource, limit) }
}

/// The same symbol under its large-file name (glibc defines both on x86-64).
///
/// # Safety
/// As [`setrlimit`].
#[no_mangle]
pub unsafe extern "C" fn setrlimit64(resource: c_int, limit: *const libc::rlimit) -> c_int {
    // SAFETY: the caller's contract is setrlimit's.
    unsafe { setrlimit(resource, limit) }
}

/// # Safety
/// prlimit(2)'s contract: `new` is null or readable, `old` null or writable.
#[no_mangle]
pub unsafe extern "C" fn prlimit(
    pid: libc::pid_t,
    resource: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> c_int {
    if !new.is_null() {
        before_the_door_closes();
    }
    // SAFETY: the caller's own arguments, unchanged.
    unsafe { real::prlimit()(pid, resource, new, old) }
}

/// # Safety
/// As [`prlimit`].
#[no_mangle]
pub unsafe extern "C" fn prlimit64(
    pid: libc::pid_t,
    resource: c_int,
    new: *const libc::rlimit,
    old: *mut libc::rlimit,
) -> c_int {
    // SAFETY: the caller's contract is prlimit's.
    unsafe { prlimit(pid, resource, new, old) }
}
