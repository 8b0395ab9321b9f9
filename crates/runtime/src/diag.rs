//! Messages on stderr that never allocate through the program and never take locks.

use core::sync::atomic::{AtomicBool, Ordering};

pub static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn write_parts(parts: &[&[u8]]) {
    for p in parts.iter().chain([&&b"\n"[..]]) {
        // SAFETY: write(2) reads `p.len()` bytes of `p`, a live slice; errors are ignored
        // on purpose (nowhere to report them).
        unsafe { crate::sys!(libc::SYS_write, 2, p.as_ptr(), p.len()) };
    }
}

pub fn fatal(parts: &[&[u8]]) -> ! {
    write_parts(parts);
    // SAFETY: abort never returns.
    unsafe { libc::abort() }
}

/// A formatted diagnostic, only when MCR_DEBUG=1 (formatting allocates with the
/// runtime's own allocator, never the program's).
pub fn debug(msg: impl FnOnce() -> String) {
    if DEBUG.load(Ordering::Relaxed) {
        let s = msg();
        write_parts(&[b"mcr runtime: ", s.as_bytes()]);
    }
}

/// Instance log path (NUL-terminated), so warnings reach the operator even from a
/// daemon whose stderr is /dev/null.
pub static LOG_PATH: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A warning for the operator: to the instance log only. The program's fd 2 may be
/// anything by now (vsftpd's session process has its client's socket there: a warning on
/// fd 2 went into the FTP control connection), and under mcr a server writes nothing it
/// would not write without it. Only a runtime without an instance log (preloaded by hand,
/// not started by `mcr run`) falls back to stderr.
pub fn warn(msg: &str) {
    let line = format!("mcr: pid {}: {msg}", crate::pid());
    let Some(path) = LOG_PATH.get() else {
        write_parts(&[line.as_bytes()]);
        return;
    };
    // SAFETY: raw open/write/close of the instance log; failures are ignored.
    unsafe {
        let fd = crate::sys!(libc::SYS_open, path.as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC);
        if fd >= 0 {
            crate::sys!(libc::SYS_write, fd, line.as_ptr(), line.len());
            crate::sys!(libc::SYS_write, fd, b"\n".as_ptr(), 1);
            crate::sys!(libc::SYS_close, fd);
        }
    }
}
