//! Frame-pointer stack walking that cannot crash: every word is read with
//! `process_vm_readv` on our own process, which fails with EFAULT instead of faulting.
//! Only used off the hot path (startup, quiesce, status), so a syscall per frame is fine.
//! Programs built without frame pointers yield short stacks, not crashes.

use crate::threads::MAX_STACK;

/// Frame pointer of the calling function (the wrapper that inlines this).
#[inline(always)]
pub fn frame_address() -> usize {
    let fp: usize;
    // SAFETY: reads a register into a local, touching no memory (nomem); the runtime is
    // built with frame pointers forced on, so rbp is the frame pointer.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags)) };
    fp
}

/// Fills `buf` with this process's bytes at `addr` through `process_vm_readv`: false,
/// not a fault, where they are not mapped (a thread's stack or set that went away while
/// another thread looked).
pub fn read_own(addr: usize, buf: &mut [u8]) -> bool {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: process_vm_readv writes at most `buf.len()` bytes into `buf` (through
    // `local`) and reads `addr` on the kernel's side, which fails with EFAULT instead of
    // faulting.
    let n = unsafe {
        crate::sys!(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            &local as *const libc::iovec,
            1,
            &remote as *const libc::iovec,
            1,
            0
        )
    };
    if n != buf.len() as i64 {
        let e = crate::errno::get();
        crate::diag::debug(|| format!("process_vm_readv({addr:#x}, {}) = {n}, errno {e}", buf.len()));
    }
    n == buf.len() as i64
}

fn read_pair(addr: usize) -> Option<[usize; 2]> {
    let mut buf = [0u8; 16];
    read_own(addr, &mut buf).then(|| {
        let word = |i: usize| usize::from_ne_bytes(buf[i..i + 8].try_into().unwrap_or_default());
        [word(0), word(8)]
    })
}

/// Return addresses of the callers of the function whose frame is `fp`, innermost first.
pub fn walk(fp: usize, out: &mut [usize; MAX_STACK]) -> usize {
    walk_with(fp, out, read_pair)
}

/// Like [`walk`], for a frame `fp` of the calling thread itself, without a system call
/// per frame (for walks that are many: every startup allocation). Frames between the
/// caller's frame and the top of the thread's stack mapping are read directly (that
/// memory is mapped as long as the thread runs); a frame outside it ends the walk: the
/// chain left the stack, as it does through code built without frame pointers (glibc),
/// whose saved frame pointer is any value (a signal handler on an alternate stack sees
/// only its own frames). Without the bounds, every frame goes through the safe read.
pub fn walk_own(fp: usize, out: &mut [usize; MAX_STACK]) -> usize {
    let here = frame_address();
    match crate::threads::local().stack_bounds(here, stack_mapping) {
        Some((_, hi)) => walk_with(fp, out, |addr| {
            (addr >= here && addr.checked_add(16).is_some_and(|end| end <= hi)).then(|| {
                // SAFETY: [addr, addr + 16) lies between this function's own frame and the
                // top of the mapping this thread's stack is in: mapped, and readable.
                unsafe { (addr as *const [usize; 2]).read() }
            })
        }),
        None => walk_with(fp, out, read_pair),
    }
}

/// The mapping of /proc/self/maps that holds `addr`: [start, end).
fn stack_mapping(addr: usize) -> Option<(usize, usize)> {
    let maps = {
        let _internal = crate::threads::InternalGuard::enter();
        let _errno = crate::errno::ErrnoGuard::save();
        mcr_procfs::maps::read(mcr_procfs::Process::Current).unwrap_or_default()
    };
    let m = maps.iter().find(|m| m.contains(addr as u64))?;
    Some((usize::try_from(m.start).ok()?, usize::try_from(m.end).ok()?))
}

fn walk_with(mut fp: usize, out: &mut [usize; MAX_STACK], read: impl Fn(usize) -> Option<[usize; 2]>) -> usize {
    let _errno = crate::errno::ErrnoGuard::save();
    let mut n = 0;
    while n < MAX_STACK && fp != 0 && fp.is_multiple_of(8) {
        let Some([next, ret]) = read(fp) else { break };
        if ret < 4096 {
            break;
        }
        out[n] = ret;
        n += 1;
        // Frames grow towards higher addresses; anything else is not a frame chain.
        if next <= fp || next - fp > (64 << 20) {
            break;
        }
        fp = next;
    }
    n
}

pub fn walk_vec(fp: usize) -> Vec<usize> {
    let mut buf = [0usize; MAX_STACK];
    let n = walk(fp, &mut buf);
    buf[..n].to_vec()
}
