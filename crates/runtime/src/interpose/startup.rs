//! Startup operations on immutable objects (DESIGN.md "Startup log and replay"): each
//! forwards to libc, and while the process has not completed startup it also records the
//! operation and moves new descriptors to the reserved range. `open` and `fcntl` are
//! variadic in C; on x86-64 a fixed third integer argument reads the same register.

use super::{c_bytes, c_string};
use crate::errno::{self, ErrnoGuard};
use crate::real;
use crate::replay::{self, Decision};
use crate::signals::{set_thread_mask, sigset_with};
use crate::stack::frame_address;
use crate::startup_log::{hex, place, record, recording, reserve};
use libc::{c_char, c_int, c_long, c_uint, c_void, mode_t, sockaddr, socklen_t};
use mcr_protocol::OpArg;

fn place_or_reserve(fd: c_int, at: Option<&i32>) -> c_int {
    match at {
        Some(&t) => place(fd, t),
        None => reserve(fd),
    }
}

/// Up to 4 KiB of an argument buffer, hex-encoded for the log ("" when longer or null).
///
/// # Safety
/// As for [`c_bytes`]: `p` is null or points to `len` readable bytes.
unsafe fn bytes(p: *const c_void, len: usize) -> String {
    // SAFETY: the caller's contract.
    unsafe { c_bytes(p, len, 4096) }.map(hex).unwrap_or_default()
}

/// In an update's new version: what replay says about this operation (conflicts end the
/// process here). Outside an update: run it live.
pub(crate) fn replay_decision(call: &'static str, fp: usize, args: &[OpArg]) -> Decision {
    if !replay::active() {
        return Decision::Live(vec![]);
    }
    match replay::decide(call, fp, args) {
        Decision::Conflict(c) => replay::fail(*c),
        d => d,
    }
}

/// Run a call creating one fd; record it (and reserve the fd) during startup.
#[inline(always)]
fn creating(call: &'static str, fp: usize, args: impl FnOnce() -> Vec<OpArg>, f: impl FnOnce() -> c_int) -> c_int {
    if !recording() {
        return f();
    }
    let args = args();
    let target = match replay_decision(call, fp, &args) {
        Decision::Replay(fd) => {
            record(call, fp, args, fd, 0, vec![fd as i32]);
            return fd as c_int;
        }
        Decision::Live(at) => at.first().copied(),
        Decision::Conflict(_) => None,
    };
    let r = f();
    // Moving the descriptor must not change what the call told the program.
    let errno = ErrnoGuard::save();
    let fd = match (r, target) {
        (r, _) if r < 0 => r,
        (r, Some(t)) => place(r, t),
        (r, None) => reserve(r),
    };
    let e = if r < 0 { errno.saved() } else { 0 };
    record(call, fp, args, fd as i64, e, if fd >= 0 { vec![fd] } else { vec![] });
    fd
}

/// Run a call configuring objects; record it during startup.
#[inline(always)]
fn configuring(call: &'static str, fp: usize, args: impl FnOnce() -> Vec<OpArg>, f: impl FnOnce() -> c_int) -> c_int {
    if !recording() {
        return f();
    }
    let args = args();
    if let Decision::Replay(res) = replay_decision(call, fp, &args) {
        record(call, fp, args, res, 0, vec![]);
        return res as c_int;
    }
    let r = f();
    record(call, fp, args, r as i64, if r < 0 { errno::get() } else { 0 }, vec![]);
    r
}

/// # Safety
/// The caller's contract is socket(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let f = real::socket();
    creating(
        "socket",
        frame_address(),
        || vec![OpArg::Int(domain as i64), OpArg::Int(ty as i64), OpArg::Int(proto as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(domain, ty, proto) },
    )
}

/// # Safety
/// The caller's contract is socketpair(2)'s: `sv` points to two writable ints.
#[no_mangle]
pub unsafe extern "C" fn socketpair(domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int {
    let f = real::socketpair();
    let args = || vec![OpArg::Int(domain as i64), OpArg::Int(ty as i64), OpArg::Int(proto as i64)];
    // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
    let call = || unsafe { f(domain, ty, proto, sv) };
    // SAFETY: `sv` points to two writable ints (the caller's contract), which `call` fills.
    unsafe { creating_pair("socketpair", frame_address(), sv, args, call) }
}

/// A call that fills `fds[0..2]` (pipe, socketpair): both ends are reserved (or placed
/// at their old numbers) and recorded together.
///
/// # Safety
/// `fds` points to two writable ints, which `f` fills when it returns 0.
unsafe fn creating_pair(
    call: &'static str,
    fp: usize,
    fds: *mut c_int,
    args: impl FnOnce() -> Vec<OpArg>,
    f: impl FnOnce() -> c_int,
) -> c_int {
    if !recording() {
        return f();
    }
    let args = args();
    let at = match replay_decision(call, fp, &args) {
        Decision::Live(at) => at,
        _ => vec![],
    };
    let r = f();
    // Moving the descriptors must not change what the call told the program.
    let errno = ErrnoGuard::save();
    let mut created = vec![];
    if r == 0 {
        // SAFETY: two writable ints, which the call just filled (the caller's contract).
        let ends = unsafe { &mut *(fds as *mut [c_int; 2]) };
        ends[0] = place_or_reserve(ends[0], at.first());
        ends[1] = place_or_reserve(ends[1], at.get(1));
        created = ends.to_vec();
    }
    let e = if r < 0 { errno.saved() } else { 0 };
    record(call, fp, args, r as i64, e, created);
    r
}

/// # Safety
/// The caller's contract is pipe(2)'s: `fds` points to two writable ints.
#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    let f = real::pipe();
    // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
    let call = || unsafe { f(fds) };
    // SAFETY: `fds` points to two writable ints (the caller's contract), which `call` fills.
    unsafe { creating_pair("pipe", frame_address(), fds, || vec![OpArg::Int(0)], call) }
}

/// # Safety
/// The caller's contract is pipe2(2)'s: `fds` points to two writable ints.
#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    let f = real::pipe2();
    // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
    let call = || unsafe { f(fds, flags) };
    // SAFETY: `fds` points to two writable ints (the caller's contract), which `call` fills.
    unsafe { creating_pair("pipe2", frame_address(), fds, || vec![OpArg::Int(flags as i64)], call) }
}

/// # Safety
/// The caller's contract is bind(2)'s: `addr` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let f = real::bind();
    configuring(
        "bind",
        frame_address(),
        // SAFETY: `addr` points to `len` readable bytes (the caller's contract).
        || vec![OpArg::Fd(fd), OpArg::Bytes(unsafe { bytes(addr.cast(), len as usize) })],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(fd, addr, len) },
    )
}

/// # Safety
/// The caller's contract is listen(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let f = real::listen();
    configuring(
        "listen",
        frame_address(),
        || vec![OpArg::Fd(fd), OpArg::Int(backlog as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(fd, backlog) },
    )
}

/// # Safety
/// The caller's contract is setsockopt(2)'s: `val` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    let f = real::setsockopt();
    configuring(
        "setsockopt",
        frame_address(),
        || {
            vec![
                OpArg::Fd(fd),
                OpArg::Int(level as i64),
                OpArg::Int(name as i64),
                // SAFETY: `val` points to `len` readable bytes (the caller's contract).
                OpArg::Bytes(unsafe { bytes(val, len as usize) }),
            ]
        },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(fd, level, name, val, len) },
    )
}

/// The logged arguments of an open call.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn open_args(dirfd: Option<c_int>, path: *const c_char, flags: c_int, mode: mode_t) -> Vec<OpArg> {
    let mut v = Vec::new();
    if let Some(d) = dirfd {
        v.push(if d == libc::AT_FDCWD { OpArg::Int(d as i64) } else { OpArg::Fd(d) });
    }
    // SAFETY: the caller's contract.
    v.push(OpArg::Str(unsafe { c_string(path) }));
    v.push(OpArg::Int(flags as i64));
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        v.push(OpArg::Int(mode as i64));
    }
    v
}

/// # Safety
/// The caller's contract is open(2)'s: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::open();
    creating(
        "open",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || unsafe { open_args(None, path, flags, mode) },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(path, flags, mode) },
    )
}

/// # Safety
/// The caller's contract is open64's: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::open64();
    creating(
        "open",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || unsafe { open_args(None, path, flags, mode) },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(path, flags, mode) },
    )
}

/// # Safety
/// The caller's contract is openat(2)'s: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::openat();
    creating(
        "openat",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || unsafe { open_args(Some(dirfd), path, flags, mode) },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(dirfd, path, flags, mode) },
    )
}

/// # Safety
/// The caller's contract is openat64's: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::openat64();
    creating(
        "openat",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || unsafe { open_args(Some(dirfd), path, flags, mode) },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(dirfd, path, flags, mode) },
    )
}

/// # Safety
/// The caller's contract is creat(2)'s: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    let f = real::creat();
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
    creating(
        "open",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || unsafe { open_args(None, path, flags, mode) },
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(path, mode) },
    )
}

/// # Safety
/// The caller's contract is epoll_create(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    let f = real::epoll_create();
    creating(
        "epoll_create",
        frame_address(),
        || vec![OpArg::Int(size as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(size) },
    )
}

/// # Safety
/// The caller's contract is epoll_create1(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    let f = real::epoll_create1();
    creating(
        "epoll_create1",
        frame_address(),
        || vec![OpArg::Int(flags as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(flags) },
    )
}

/// # Safety
/// The caller's contract is epoll_ctl(2)'s: `ev` is null (EPOLL_CTL_DEL) or points to a readable epoll_event.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let f = real::epoll_ctl();
    // The event's data is usually a pointer: not comparable across versions.
    // SAFETY: non-null `ev` points to a readable epoll_event (the caller's contract).
    let events = if ev.is_null() { 0 } else { (unsafe { (*ev).events }) as i64 };
    configuring(
        "epoll_ctl",
        frame_address(),
        || vec![OpArg::Fd(ep), OpArg::Int(op as i64), OpArg::Fd(fd), OpArg::Int(events)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(ep, op, fd, ev) },
    )
}

/// # Safety
/// The caller's contract is eventfd(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn eventfd(init: c_uint, flags: c_int) -> c_int {
    let f = real::eventfd();
    creating(
        "eventfd",
        frame_address(),
        || vec![OpArg::Int(init as i64), OpArg::Int(flags as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(init, flags) },
    )
}

/// # Safety
/// The caller's contract is timerfd_create(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn timerfd_create(clock: c_int, flags: c_int) -> c_int {
    let f = real::timerfd_create();
    creating(
        "timerfd_create",
        frame_address(),
        || vec![OpArg::Int(clock as i64), OpArg::Int(flags as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(clock, flags) },
    )
}

/// # Safety
/// The caller's contract is inotify_init(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn inotify_init() -> c_int {
    let f = real::inotify_init();
    creating(
        "inotify_init",
        frame_address(),
        Vec::new,
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f() },
    )
}

/// # Safety
/// The caller's contract is inotify_init1(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    let f = real::inotify_init1();
    creating(
        "inotify_init1",
        frame_address(),
        || vec![OpArg::Int(flags as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(flags) },
    )
}

/// # Safety
/// The caller's contract is dup(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let f = real::dup();
    creating(
        "dup",
        frame_address(),
        || vec![OpArg::Fd(fd)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(fd) },
    )
}

/// # Safety
/// The caller's contract is fcntl(2)'s: `arg` is what `cmd` takes (a pointer for F_GETLK and the like, passed on unchanged).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    let f = real::fcntl();
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => creating(
            "fcntl",
            frame_address(),
            || vec![OpArg::Fd(fd), OpArg::Int(cmd as i64), OpArg::Int(arg)],
            // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
            || unsafe { f(fd, cmd, arg) },
        ),
        libc::F_SETFD | libc::F_SETFL | libc::F_SETOWN | libc::F_SETPIPE_SZ => configuring(
            "fcntl",
            frame_address(),
            || vec![OpArg::Fd(fd), OpArg::Int(cmd as i64), OpArg::Int(arg)],
            // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
            || unsafe { f(fd, cmd, arg) },
        ),
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        _ => unsafe { f(fd, cmd, arg) },
    }
}

/// # Safety
/// The caller's contract is as for [`fcntl`].
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    // SAFETY: the same call under the same contract (fcntl64 is fcntl on 64-bit).
    unsafe { fcntl(fd, cmd, arg) }
}

/// # Safety
/// The caller's contract is setsid(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn setsid() -> libc::pid_t {
    let f = real::setsid();
    configuring(
        "setsid",
        frame_address(),
        Vec::new,
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f() },
    )
}

/// # Safety
/// The caller's contract is chroot(2)'s: `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn chroot(path: *const c_char) -> c_int {
    let f = real::chroot();
    configuring(
        "chroot",
        frame_address(),
        // SAFETY: `path` is a NUL-terminated string (the caller's contract).
        || vec![OpArg::Str(unsafe { c_string(path) })],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(path) },
    )
}

/// # Safety
/// The caller's contract is setuid(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn setuid(id: libc::uid_t) -> c_int {
    let f = real::setuid();
    if id != 0 {
        crate::heap::before_privilege_drop();
        if !crate::is_sandboxed() {
            crate::symbolize::load_before_losing_access();
        }
    }
    configuring(
        "setuid",
        frame_address(),
        || vec![OpArg::Int(id as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(id) },
    )
}

/// # Safety
/// The caller's contract is setgid(2)'s (no pointers).
#[no_mangle]
pub unsafe extern "C" fn setgid(id: libc::gid_t) -> c_int {
    let f = real::setgid();
    configuring(
        "setgid",
        frame_address(),
        || vec![OpArg::Int(id as i64)],
        // SAFETY: the caller's own arguments, unchanged (its contract is libc's for this call).
        || unsafe { f(id) },
    )
}

/// # Safety
/// The caller's contract is fork(2)'s (no pointers; in a multithreaded program the child runs only async-signal-safe code until it execs).
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let f = real::fork();
    // SAFETY: libc's fork; it takes nothing, and the caller's contract (fork's) covers the
    // child.
    let fork = || unsafe { f() };
    let fp = frame_address();
    let _profiling = crate::profiling::ForkNote::new(fp);
    // A respawn handler recreating a per-connection process: the old one's PID.
    if let Some(pid) = crate::resume::fork_target() {
        return fork_as(pid, fp, fork, false);
    }
    if !recording() {
        return fork();
    }
    // Replay: the child takes the PID its old counterpart had.
    if let Some(pid) = replay::creation_target("fork", fp) {
        let _ = replay_decision("fork", fp, &[]);
        return fork_as(pid, fp, fork, true);
    }
    let r = fork();
    if r != 0 {
        let errno = ErrnoGuard::save();
        record("fork", fp, Vec::new(), r as i64, if r < 0 { errno.saved() } else { 0 }, vec![]);
        note_forked(r);
    }
    r
}

/// Tell the supervisor about a child forked during startup before the program hears of it,
/// so the parent's completion (sent later on the same connection) cannot come first.
fn note_forked(child: libc::pid_t) {
    if child > 0 {
        crate::control::send_event(&mcr_protocol::RuntimeEvent::Forked { child });
    }
}

/// Fork (with `fork`) so that the child gets PID `target`. ns_last_pid is only a hint:
/// any thread or process created in the namespace meanwhile takes the PID first. So the
/// child checks its PID before running any program code and leaves at once if it is not
/// the one; the parent reaps it (SIGCHLD held back meanwhile, so the program never sees
/// it) and tries again. `log`: a startup fork, recorded in the startup log.
fn fork_as(target: libc::pid_t, fp: usize, fork: impl Fn() -> libc::pid_t, log: bool) -> libc::pid_t {
    let old = set_thread_mask(libc::SIG_BLOCK, &sigset_with(&[libc::SIGCHLD]));
    let mut r = -1;
    for _ in 0..64 {
        let guard = crate::startup_log::pid_hint_lock();
        let _ = replay::request_pid(target, 64);
        r = fork();
        if r == 0 {
            guard.forget();
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } != target {
                // SAFETY: _exit ends this child, which has run no program code, at once.
                unsafe { libc::_exit(0) };
            }
            set_thread_mask(libc::SIG_SETMASK, &old);
            return 0;
        }
        drop(guard);
        if r < 0 || r == target {
            break;
        }
        let mut st = 0;
        // SAFETY: libc's waitpid for our own child `r`, which exits at once; it writes
        // `st`, a live local.
        unsafe { real::waitpid()(r, &mut st, 0) };
    }
    // What the last fork told the program, whatever the mask and the warning do.
    let errno = ErrnoGuard::save();
    set_thread_mask(libc::SIG_SETMASK, &old);
    if r != target && r > 0 {
        crate::diag::warn(&format!("replay: the forked child got PID {r}, not {target} as in the old version"));
    }
    if log {
        record("fork", fp, Vec::new(), r as i64, if r < 0 { errno.saved() } else { 0 }, vec![]);
        note_forked(r);
    }
    r
}
