//! The control thread borrowing one of the program's descriptors (a pidfd_getfd copy in
//! its private table, to ask the kernel about a socket) while the program runs.
//!
//! A copy keeps the open file alive. If the program closed its descriptor meanwhile, the
//! file would outlive the close, and so would every epoll registration of it (epoll drops
//! an item only when the file goes, not the number): the program's event loop would then
//! get events for a connection it already freed, with a dangling pointer as their data.
//! Seen under load as a rolled-back kvd reading a closed descriptor and then freeing its
//! connection twice.
//!
//! So a borrow and a close of the same number exclude each other, Dekker-style: the
//! program's close publishes the number it closes, then looks at what is borrowed; the
//! control thread publishes what it borrows, then looks at what is being closed. With
//! sequentially consistent operations on both sides at least one sees the other: the
//! close waits for the borrow to end, or the borrow is given up (the descriptor is going
//! away: it is not there to be asked about).

use crate::{futex, rawfd};
use std::sync::atomic::{
    AtomicU32, AtomicU8,
    Ordering::{Relaxed, SeqCst},
};
use std::time::{Duration, Instant};

/// The program's descriptor the control thread holds a copy of, or NONE.
static BORROWED: AtomicU32 = AtomicU32::new(NONE);
const NONE: u32 = u32::MAX;

/// Descriptor numbers below this have a closing count of their own; closes of higher
/// ones (and close_range) count in `CLOSING_OTHERS`.
const COUNTED_FDS: usize = 1 << 16;

/// Closes in flight per descriptor number (program threads between publishing and the
/// end of the real close).
static CLOSING: [AtomicU8; COUNTED_FDS] = [const { AtomicU8::new(0) }; COUNTED_FDS];
/// Closes in flight of numbers past the table, and close_range calls.
static CLOSING_OTHERS: AtomicU32 = AtomicU32::new(0);

/// A close waits at most this long for a borrow to end (a borrow lasts a few system
/// calls; the bound only keeps a stuck control thread from hanging the program).
const CLOSE_WAITS_AT_MOST: Duration = Duration::from_secs(1);

/// What a close in flight covers.
#[derive(Clone, Copy)]
pub enum Closing {
    /// One descriptor (close, or dup2/dup3 onto it).
    One(i32),
    /// A range (close_range).
    Range(u32, u32),
}

impl Closing {
    fn covers(self, fd: u32) -> bool {
        match self {
            Closing::One(n) => n >= 0 && n as u32 == fd,
            Closing::Range(lo, hi) => lo <= fd && fd <= hi,
        }
    }

    fn publish(self) {
        self.count(true);
    }

    fn withdraw(self) {
        self.count(false);
    }

    /// One more (or one fewer) close in flight of what this covers.
    fn count(self, more: bool) {
        match (self.counted(), more) {
            (Some(c), true) => drop(c.fetch_add(1, SeqCst)),
            (Some(c), false) => drop(c.fetch_sub(1, SeqCst)),
            (None, true) => drop(CLOSING_OTHERS.fetch_add(1, SeqCst)),
            (None, false) => drop(CLOSING_OTHERS.fetch_sub(1, SeqCst)),
        }
    }

    /// The per-number counter, for one descriptor inside the table.
    fn counted(self) -> Option<&'static AtomicU8> {
        match self {
            Closing::One(n) => usize::try_from(n).ok().and_then(|i| CLOSING.get(i)),
            Closing::Range(..) => None,
        }
    }
}

/// A close in flight, published until dropped (after the real close returned).
pub struct CloseInFlight(Closing);

impl Drop for CloseInFlight {
    fn drop(&mut self) {
        self.0.withdraw();
    }
}

/// Called by the program's close (dup2/dup3 onto a descriptor, close_range) before the
/// real call: waits while the control thread borrows a descriptor it covers, then keeps
/// it from being borrowed until the guard is dropped.
#[inline]
pub fn begin_close(what: Closing) -> CloseInFlight {
    what.publish();
    let b = BORROWED.load(SeqCst);
    if b != NONE && what.covers(b) {
        wait_for_borrow_to_end(what);
    }
    CloseInFlight(what)
}

#[cold]
fn wait_for_borrow_to_end(what: Closing) {
    let t0 = Instant::now();
    loop {
        // Not published while waiting, or the borrower would back off for nothing (and
        // we wait for it anyway).
        what.withdraw();
        let b = BORROWED.load(SeqCst);
        if b != NONE && what.covers(b) {
            futex::wait(&BORROWED, b, Some(Duration::from_millis(10)));
        }
        what.publish();
        let b = BORROWED.load(SeqCst);
        if b == NONE || !what.covers(b) || t0.elapsed() > CLOSE_WAITS_AT_MOST {
            return;
        }
    }
}

/// Whether a close covering `fd` is in flight.
fn being_closed(fd: i32) -> bool {
    CLOSING_OTHERS.load(SeqCst) != 0 || Closing::One(fd).counted().is_some_and(|c| c.load(SeqCst) != 0)
}

/// Tests only: how long each borrow holds its copy (see `env::TEST_BORROW_HOLD_MS`).
static HOLD_MS: AtomicU32 = AtomicU32::new(0);

/// From the constructor.
pub fn init_from_env(hold_ms: Option<&str>) {
    HOLD_MS.store(hold_ms.and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(0).min(500), Relaxed);
}

/// How often a borrow is tried again while a close_range (or a close of a number past the
/// table) is in flight, which may or may not cover it.
const BORROW_ATTEMPTS: u32 = 50;

/// Run `f` on a copy, in the control thread's own table, of the program's descriptor `fd`
/// (None when it cannot be had: not open, or being closed). Only the control thread
/// borrows, one descriptor at a time; `f` must not close descriptors of the program.
pub fn with_program_fd<R>(fd: i32, f: impl FnOnce(i32) -> R) -> Option<R> {
    let n = u32::try_from(fd).ok()?;
    for _ in 0..BORROW_ATTEMPTS {
        BORROWED.store(n, SeqCst);
        if !being_closed(fd) {
            let r = copy_and_run(fd, f);
            end_borrow();
            return r;
        }
        end_borrow();
        if Closing::One(fd).counted().is_some_and(|c| c.load(SeqCst) != 0) {
            return None; // this very descriptor is going away
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn end_borrow() {
    BORROWED.store(NONE, SeqCst);
    futex::wake(&BORROWED, i32::MAX);
}

fn copy_and_run<R>(fd: i32, f: impl FnOnce(i32) -> R) -> Option<R> {
    let pidfd = rawfd::pidfd_of_self()?;
    let copy = rawfd::copy_from(pidfd, fd);
    // SAFETY: the pidfd was made just above, for this call only.
    unsafe { rawfd::close(pidfd) };
    let copy = copy?;
    let hold = HOLD_MS.load(Relaxed);
    if hold > 0 {
        std::thread::sleep(Duration::from_millis(u64::from(hold)));
    }
    let r = f(copy);
    // SAFETY: our own copy, made just above; `f` only borrowed it.
    unsafe { rawfd::close(copy) };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_covers_its_descriptor_or_its_range() {
        assert!(Closing::One(7).covers(7) && !Closing::One(7).covers(8));
        assert!(!Closing::One(-1).covers(u32::MAX), "a bad number covers nothing");
        assert!(Closing::Range(3, 9).covers(3) && Closing::Range(3, 9).covers(9) && !Closing::Range(3, 9).covers(10));
    }

    #[test]
    fn a_descriptor_being_closed_is_not_lent_and_one_not_being_closed_is() {
        let (r, w) = std::io::pipe().expect("pipe");
        use std::os::fd::AsRawFd;
        let fd = r.as_raw_fd();
        let closing = begin_close(Closing::One(fd));
        assert_eq!(with_program_fd(fd, |_| ()), None, "lent while its close was in flight");
        drop(closing);
        assert_eq!(with_program_fd(fd, |copy| copy != fd), Some(true), "a copy at another number");
        assert_eq!(BORROWED.load(SeqCst), NONE, "the borrow ended");
        drop((r, w));
    }
}
