//! Startup operations on immutable objects (DESIGN.md "Startup log and replay"): each
//! forwards to libc, and while the process has not completed startup it also records the
//! operation and moves new descriptors to the reserved range. `open` and `fcntl` are
//! variadic in C; on x86-64 a fixed third integer argument reads the same register.

#![allow(clippy::missing_safety_doc)]

use crate::errno::{self, ErrnoGuard};
use crate::real;
use crate::replay::{self, Decision};
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

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the program passed a NUL-terminated path to a libc call that reads it too.
    unsafe { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
}

fn bytes(p: *const c_void, len: usize) -> String {
    if p.is_null() || len > 4096 {
        return String::new();
    }
    // SAFETY: as above: the caller hands libc `len` readable bytes.
    hex(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
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

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let f = real::socket();
    creating(
        "socket",
        frame_address(),
        || vec![OpArg::Int(domain as i64), OpArg::Int(ty as i64), OpArg::Int(proto as i64)],
        || f(domain, ty, proto),
    )
}

#[no_mangle]
pub unsafe extern "C" fn socketpair(domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int {
    let f = real::socketpair();
    let args = || vec![OpArg::Int(domain as i64), OpArg::Int(ty as i64), OpArg::Int(proto as i64)];
    creating_pair("socketpair", frame_address(), sv, args, || f(domain, ty, proto, sv))
}

/// A call that fills `fds[0..2]` (pipe, socketpair): both ends are reserved (or placed
/// at their old numbers) and recorded together.
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
        *fds = place_or_reserve(*fds, at.first());
        *fds.add(1) = place_or_reserve(*fds.add(1), at.get(1));
        created = vec![*fds, *fds.add(1)];
    }
    let e = if r < 0 { errno.saved() } else { 0 };
    record(call, fp, args, r as i64, e, created);
    r
}

#[no_mangle]
pub unsafe extern "C" fn pipe(fds: *mut c_int) -> c_int {
    let f = real::pipe();
    creating_pair("pipe", frame_address(), fds, || vec![OpArg::Int(0)], || f(fds))
}

#[no_mangle]
pub unsafe extern "C" fn pipe2(fds: *mut c_int, flags: c_int) -> c_int {
    let f = real::pipe2();
    creating_pair("pipe2", frame_address(), fds, || vec![OpArg::Int(flags as i64)], || f(fds, flags))
}

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let f = real::bind();
    configuring(
        "bind",
        frame_address(),
        || vec![OpArg::Fd(fd), OpArg::Bytes(bytes(addr.cast(), len as usize))],
        || f(fd, addr, len),
    )
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let f = real::listen();
    configuring("listen", frame_address(), || vec![OpArg::Fd(fd), OpArg::Int(backlog as i64)], || f(fd, backlog))
}

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
                OpArg::Bytes(bytes(val, len as usize)),
            ]
        },
        || f(fd, level, name, val, len),
    )
}

fn open_args(dirfd: Option<c_int>, path: *const c_char, flags: c_int, mode: mode_t) -> Vec<OpArg> {
    let mut v = Vec::new();
    if let Some(d) = dirfd {
        v.push(if d == libc::AT_FDCWD { OpArg::Int(d as i64) } else { OpArg::Fd(d) });
    }
    v.push(OpArg::Str(cstr(path)));
    v.push(OpArg::Int(flags as i64));
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        v.push(OpArg::Int(mode as i64));
    }
    v
}

#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::open();
    creating("open", frame_address(), || open_args(None, path, flags, mode), || f(path, flags, mode))
}

#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::open64();
    creating("open", frame_address(), || open_args(None, path, flags, mode), || f(path, flags, mode))
}

#[no_mangle]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::openat();
    creating("openat", frame_address(), || open_args(Some(dirfd), path, flags, mode), || f(dirfd, path, flags, mode))
}

#[no_mangle]
pub unsafe extern "C" fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let f = real::openat64();
    creating("openat", frame_address(), || open_args(Some(dirfd), path, flags, mode), || f(dirfd, path, flags, mode))
}

#[no_mangle]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    let f = real::creat();
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;
    creating("open", frame_address(), || open_args(None, path, flags, mode), || f(path, mode))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    let f = real::epoll_create();
    creating("epoll_create", frame_address(), || vec![OpArg::Int(size as i64)], || f(size))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    let f = real::epoll_create1();
    creating("epoll_create1", frame_address(), || vec![OpArg::Int(flags as i64)], || f(flags))
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let f = real::epoll_ctl();
    // The event's data is usually a pointer: not comparable across versions.
    let events = if ev.is_null() { 0 } else { (*ev).events as i64 };
    configuring(
        "epoll_ctl",
        frame_address(),
        || vec![OpArg::Fd(ep), OpArg::Int(op as i64), OpArg::Fd(fd), OpArg::Int(events)],
        || f(ep, op, fd, ev),
    )
}

#[no_mangle]
pub unsafe extern "C" fn eventfd(init: c_uint, flags: c_int) -> c_int {
    let f = real::eventfd();
    creating("eventfd", frame_address(), || vec![OpArg::Int(init as i64), OpArg::Int(flags as i64)], || f(init, flags))
}

#[no_mangle]
pub unsafe extern "C" fn timerfd_create(clock: c_int, flags: c_int) -> c_int {
    let f = real::timerfd_create();
    creating(
        "timerfd_create",
        frame_address(),
        || vec![OpArg::Int(clock as i64), OpArg::Int(flags as i64)],
        || f(clock, flags),
    )
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init() -> c_int {
    let f = real::inotify_init();
    creating("inotify_init", frame_address(), Vec::new, || f())
}

#[no_mangle]
pub unsafe extern "C" fn inotify_init1(flags: c_int) -> c_int {
    let f = real::inotify_init1();
    creating("inotify_init1", frame_address(), || vec![OpArg::Int(flags as i64)], || f(flags))
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let f = real::dup();
    creating("dup", frame_address(), || vec![OpArg::Fd(fd)], || f(fd))
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    let f = real::fcntl();
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => creating(
            "fcntl",
            frame_address(),
            || vec![OpArg::Fd(fd), OpArg::Int(cmd as i64), OpArg::Int(arg)],
            || f(fd, cmd, arg),
        ),
        libc::F_SETFD | libc::F_SETFL | libc::F_SETOWN | libc::F_SETPIPE_SZ => configuring(
            "fcntl",
            frame_address(),
            || vec![OpArg::Fd(fd), OpArg::Int(cmd as i64), OpArg::Int(arg)],
            || f(fd, cmd, arg),
        ),
        _ => f(fd, cmd, arg),
    }
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    fcntl(fd, cmd, arg)
}

#[no_mangle]
pub unsafe extern "C" fn setsid() -> libc::pid_t {
    let f = real::setsid();
    configuring("setsid", frame_address(), Vec::new, || f())
}

#[no_mangle]
pub unsafe extern "C" fn chroot(path: *const c_char) -> c_int {
    let f = real::chroot();
    configuring("chroot", frame_address(), || vec![OpArg::Str(cstr(path))], || f(path))
}

#[no_mangle]
pub unsafe extern "C" fn setuid(id: libc::uid_t) -> c_int {
    let f = real::setuid();
    configuring("setuid", frame_address(), || vec![OpArg::Int(id as i64)], || f(id))
}

#[no_mangle]
pub unsafe extern "C" fn setgid(id: libc::gid_t) -> c_int {
    let f = real::setgid();
    configuring("setgid", frame_address(), || vec![OpArg::Int(id as i64)], || f(id))
}

#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let f = real::fork();
    let fp = frame_address();
    let _profiling = crate::profiling::ForkNote::new(fp);
    // A respawn handler recreating a per-connection process: the old one's PID.
    if let Some(pid) = crate::resume::fork_target() {
        return fork_as(pid, fp, f, false);
    }
    if !recording() {
        return f();
    }
    // Replay: the child takes the PID its old counterpart had.
    if let Some(pid) = replay::creation_target("fork", fp) {
        let _ = replay_decision("fork", fp, &[]);
        return fork_as(pid, fp, f, true);
    }
    let r = f();
    if r != 0 {
        record("fork", fp, Vec::new(), r as i64, if r < 0 { errno::get() } else { 0 }, vec![]);
    }
    r
}

/// Fork so that the child gets PID `target`. ns_last_pid is only a hint: any thread or
/// process created in the namespace meanwhile takes the PID first. So the child checks
/// its PID before running any program code and leaves at once if it is not the one; the
/// parent reaps it (SIGCHLD held back meanwhile, so the program never sees it) and
/// tries again. `log`: a startup fork, recorded in the startup log.
unsafe fn fork_as(target: libc::pid_t, fp: usize, f: unsafe extern "C" fn() -> libc::pid_t, log: bool) -> libc::pid_t {
    let mut chld: libc::sigset_t = core::mem::zeroed();
    let mut old: libc::sigset_t = core::mem::zeroed();
    libc::sigemptyset(&mut chld);
    libc::sigaddset(&mut chld, libc::SIGCHLD);
    real::pthread_sigmask()(libc::SIG_BLOCK, &chld, &mut old);
    let mut r = -1;
    for _ in 0..64 {
        let guard = crate::startup_log::pid_hint_lock();
        replay::request_pid(target);
        r = f();
        if r == 0 {
            guard.forget();
            if libc::getpid() != target {
                libc::_exit(0);
            }
            real::pthread_sigmask()(libc::SIG_SETMASK, &old, core::ptr::null_mut());
            return 0;
        }
        drop(guard);
        if r < 0 || r == target {
            break;
        }
        let mut st = 0;
        real::waitpid()(r, &mut st, 0);
    }
    // What the last fork told the program, whatever the mask and the warning do.
    let errno = ErrnoGuard::save();
    real::pthread_sigmask()(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    if r != target && r > 0 {
        crate::diag::warn(&format!("replay: the forked child got PID {r}, not {target} as in the old version"));
    }
    if log {
        record("fork", fp, Vec::new(), r as i64, if r < 0 { errno.saved() } else { 0 }, vec![]);
    }
    r
}
