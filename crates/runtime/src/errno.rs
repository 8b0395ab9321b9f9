//! The C `errno` of the calling thread. Hooks save and restore it around their own work
//! so the program sees exactly what the real call set.

use core::marker::PhantomData;

pub fn get() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno, a valid, aligned int
    // for the thread's whole life.
    unsafe { *libc::__errno_location() }
}

pub fn set(v: i32) {
    // SAFETY: as in `get`.
    unsafe { *libc::__errno_location() = v }
}

/// Saves the calling thread's errno and puts it back when dropped, on every way out of
/// the scope: runtime work inside a hook (reading /proc, walking the stack, talking to
/// the supervisor) must leave the program the errno its own call set.
#[must_use = "errno is put back when the guard is dropped"]
pub struct ErrnoGuard {
    saved: i32,
    /// errno is per thread: the guard must be dropped on the thread that made it.
    _thread_bound: PhantomData<*const ()>,
}

impl ErrnoGuard {
    pub fn save() -> Self {
        Self { saved: get(), _thread_bound: PhantomData }
    }

    /// The errno that will be put back.
    pub fn saved(&self) -> i32 {
        self.saved
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        set(self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_puts_errno_back_on_every_way_out() {
        fn clobbers(early: bool) -> Option<()> {
            let _errno = ErrnoGuard::save();
            set(libc::EBADF);
            if early {
                return None;
            }
            set(libc::ENOENT);
            Some(())
        }
        set(libc::EAGAIN);
        assert_eq!(clobbers(true), None);
        assert_eq!(get(), libc::EAGAIN, "after an early return");
        assert_eq!(clobbers(false), Some(()));
        assert_eq!(get(), libc::EAGAIN, "after the normal return");
    }
}
