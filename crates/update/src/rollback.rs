//! The rollback guard: an update that does not reach its commit point undoes itself when
//! it goes out of scope, whatever phase failed and however it returned.

use crate::version::{Launcher, NextVersion, RunningVersion};
use crate::warning::{Warn, Warning};

/// Both versions of an update in progress. Dropped before [`Versions::committed`], it
/// rolls back: kills the new version if it was started, removes what is left of it, and
/// resumes the old version — once.
pub(crate) struct Versions<'w, O: RunningVersion, L: Launcher> {
    pub old: O,
    pub launcher: L,
    /// The new version, once started.
    pub next: Option<L::Next>,
    committed: bool,
    warn: Warn<'w>,
}

impl<'w, O: RunningVersion, L: Launcher> Versions<'w, O, L> {
    pub fn new(old: O, launcher: L, warn: Warn<'w>) -> Self {
        Self { old, launcher, next: None, committed: false, warn }
    }

    /// The new version runs and the old one is gone: nothing to roll back any more.
    pub fn committed(&mut self) {
        self.committed = true;
    }
}

impl<O: RunningVersion, L: Launcher> Drop for Versions<'_, O, L> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(next) = self.next.as_mut() {
            next.kill();
        }
        self.launcher.discard();
        if let Err(e) = self.old.resume() {
            (self.warn)(Warning::NotResumed(e));
        }
    }
}
