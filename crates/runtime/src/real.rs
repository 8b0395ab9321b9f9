//! The program's libc functions behind our interposed ones, found with
//! `dlsym(RTLD_NEXT)`. Each pointer is resolved once and cached; a symbol that libc does
//! not have is fatal, with a message, because calling through null would be worse.

use core::sync::atomic::{AtomicUsize, Ordering};

pub fn resolve(slot: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: name is NUL-terminated; RTLD_NEXT looks past this library.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if f == 0 {
        crate::diag::fatal(&[b"mcr runtime: libc has no ", &name[..name.len() - 1]]);
    }
    slot.store(f, Ordering::Relaxed);
    f
}

/// `real!(name: fn(args) -> ret)` defines `real::name()` returning the next definition.
macro_rules! real_fns {
    ($($name:ident : fn($($arg:ty),*) -> $ret:ty;)*) => {
        $(
            #[allow(non_snake_case, dead_code)]
            pub fn $name() -> unsafe extern "C" fn($($arg),*) -> $ret {
                static SLOT: AtomicUsize = AtomicUsize::new(0);
                let p = resolve(&SLOT, concat!(stringify!($name), "\0").as_bytes());
                // SAFETY: the symbol has this C signature in glibc.
                unsafe { core::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
            }
        )*
    };
}

use libc::{
    c_int, c_long, c_uint, c_void, clockid_t, epoll_event, fd_set, id_t, idtype_t, iovec, msghdr, nfds_t, pid_t,
    pollfd, pthread_attr_t, pthread_cond_t, pthread_mutex_t, pthread_t, rusage, sem_t, sembuf, siginfo_t, sigset_t,
    size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

real_fns! {
    setenv: fn(*const libc::c_char, *const libc::c_char, c_int) -> c_int;
    unsetenv: fn(*const libc::c_char) -> c_int;
    putenv: fn(*mut libc::c_char) -> c_int;
    clearenv: fn() -> c_int;
    sigaltstack: fn(*const libc::stack_t, *mut libc::stack_t) -> c_int;
    prctl: fn(c_int, libc::c_ulong, libc::c_ulong, libc::c_ulong, libc::c_ulong) -> c_int;
    setrlimit: fn(c_int, *const libc::rlimit) -> c_int;
    syscall: fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;
    unshare: fn(c_int) -> c_int;
    _Fork: fn() -> pid_t;
    setns: fn(c_int, c_int) -> c_int;
    prlimit: fn(pid_t, c_int, *const libc::rlimit, *mut libc::rlimit) -> c_int;
    accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
    epoll_wait: fn(c_int, *mut epoll_event, c_int, c_int) -> c_int;
    epoll_pwait: fn(c_int, *mut epoll_event, c_int, c_int, *const sigset_t) -> c_int;
    epoll_pwait2: fn(c_int, *mut epoll_event, c_int, *const timespec, *const sigset_t) -> c_int;
    poll: fn(*mut pollfd, nfds_t, c_int) -> c_int;
    ppoll: fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;
    select: fn(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *mut timeval) -> c_int;
    pselect: fn(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *const timespec, *const sigset_t) -> c_int;
    read: fn(c_int, *mut c_void, size_t) -> ssize_t;
    readv: fn(c_int, *const iovec, c_int) -> ssize_t;
    recv: fn(c_int, *mut c_void, size_t, c_int) -> ssize_t;
    recvfrom: fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t;
    nanosleep: fn(*const timespec, *mut timespec) -> c_int;
    clock_nanosleep: fn(clockid_t, c_int, *const timespec, *mut timespec) -> c_int;
    pthread_cond_wait: fn(*mut pthread_cond_t, *mut pthread_mutex_t) -> c_int;
    pthread_cond_timedwait: fn(*mut pthread_cond_t, *mut pthread_mutex_t, *const timespec) -> c_int;
    pthread_cond_clockwait: fn(*mut pthread_cond_t, *mut pthread_mutex_t, clockid_t, *const timespec) -> c_int;
    pthread_cond_broadcast: fn(*mut pthread_cond_t) -> c_int;
    pthread_mutex_lock: fn(*mut pthread_mutex_t) -> c_int;
    pthread_mutex_unlock: fn(*mut pthread_mutex_t) -> c_int;
    sem_wait: fn(*mut sem_t) -> c_int;
    sem_timedwait: fn(*mut sem_t, *const timespec) -> c_int;
    sem_clockwait: fn(*mut sem_t, clockid_t, *const timespec) -> c_int;
    sigsuspend: fn(*const sigset_t) -> c_int;
    sigwait: fn(*const sigset_t, *mut c_int) -> c_int;
    sigwaitinfo: fn(*const sigset_t, *mut siginfo_t) -> c_int;
    sigtimedwait: fn(*const sigset_t, *mut siginfo_t, *const timespec) -> c_int;
    pause: fn() -> c_int;
    wait: fn(*mut c_int) -> pid_t;
    waitpid: fn(pid_t, *mut c_int, c_int) -> pid_t;
    waitid: fn(idtype_t, id_t, *mut siginfo_t, c_int) -> c_int;
    wait3: fn(*mut c_int, c_int, *mut rusage) -> pid_t;
    wait4: fn(pid_t, *mut c_int, c_int, *mut rusage) -> pid_t;
    semop: fn(c_int, *mut sembuf, size_t) -> c_int;
    semtimedop: fn(c_int, *mut sembuf, size_t, *const timespec) -> c_int;
    msgrcv: fn(c_int, *mut c_void, size_t, c_long, c_int) -> ssize_t;
    sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
    sigprocmask: fn(c_int, *const sigset_t, *mut sigset_t) -> c_int;
    pthread_sigmask: fn(c_int, *const sigset_t, *mut sigset_t) -> c_int;
    signalfd: fn(c_int, *const sigset_t, c_int) -> c_int;
    pthread_create: fn(*mut pthread_t, *const pthread_attr_t, extern "C" fn(*mut c_void) -> *mut c_void, *mut c_void) -> c_int;
    pthread_exit: fn(*mut c_void) -> !;
    pthread_key_create: fn(*mut libc::pthread_key_t, Option<unsafe extern "C" fn(*mut c_void)>) -> c_int;
    pthread_key_delete: fn(libc::pthread_key_t) -> c_int;
    close: fn(c_int) -> c_int;
    close_range: fn(c_uint, c_uint, c_int) -> c_int;
    closefrom: fn(c_int) -> ();
    dup2: fn(c_int, c_int) -> c_int;
    dup3: fn(c_int, c_int, c_int) -> c_int;
}

use libc::{c_char, gid_t, mode_t, uid_t};

real_fns! {
    socket: fn(c_int, c_int, c_int) -> c_int;
    socketpair: fn(c_int, c_int, c_int, *mut c_int) -> c_int;
    getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
    pipe: fn(*mut c_int) -> c_int;
    pipe2: fn(*mut c_int, c_int) -> c_int;
    bind: fn(c_int, *const sockaddr, socklen_t) -> c_int;
    listen: fn(c_int, c_int) -> c_int;
    setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
    open: fn(*const c_char, c_int, mode_t) -> c_int;
    open64: fn(*const c_char, c_int, mode_t) -> c_int;
    openat: fn(c_int, *const c_char, c_int, mode_t) -> c_int;
    openat64: fn(c_int, *const c_char, c_int, mode_t) -> c_int;
    creat: fn(*const c_char, mode_t) -> c_int;
    epoll_create: fn(c_int) -> c_int;
    epoll_create1: fn(c_int) -> c_int;
    epoll_ctl: fn(c_int, c_int, c_int, *mut epoll_event) -> c_int;
    eventfd: fn(c_uint, c_int) -> c_int;
    timerfd_create: fn(c_int, c_int) -> c_int;
    inotify_init: fn() -> c_int;
    inotify_init1: fn(c_int) -> c_int;
    dup: fn(c_int) -> c_int;
    fcntl: fn(c_int, c_int, c_long) -> c_int;
    setsid: fn() -> pid_t;
    chroot: fn(*const c_char) -> c_int;
    setuid: fn(uid_t) -> c_int;
    setgid: fn(gid_t) -> c_int;
    fork: fn() -> pid_t;
}
