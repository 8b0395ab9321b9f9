//! The rollback guard: an update that does not reach its commit point undoes itself when
//! it goes out of scope, whatever phase failed and however it returned.

use crate::version::{Launcher, NextVersion, Resumed, RunningVersion};
use crate::warning::{Warn, Warning};
use mcr_client::ClientError;

/// How the update ended, as far as the guard must act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not committed (yet): dropped like this, the guard rolls back.
    Pending,
    /// Rolled back already ([`Versions::roll_back`]): nothing left to do.
    RolledBack,
    /// The new version runs and the old one retired: nothing to undo.
    Committed,
    /// A commit that got no answer, settled by the old version resuming: only the new
    /// version is left to end.
    OldResumed,
    /// A commit that got no answer, and the old version is gone too: neither side can be
    /// told anything. A new version that did not commit ends itself once this update
    /// exits (its lifeline closes).
    LeftToSupervisors,
}

/// Both versions of an update in progress. Dropped before [`Versions::committed`], it
/// rolls back: kills the new version if it was started, removes what is left of it, and
/// resumes the old version — once.
pub(crate) struct Versions<'w, O: RunningVersion, L: Launcher> {
    pub old: O,
    pub launcher: L,
    /// The new version, once started.
    pub next: Option<L::Next>,
    outcome: Outcome,
    warn: Warn<'w>,
}

impl<'w, O: RunningVersion, L: Launcher> Versions<'w, O, L> {
    pub fn new(old: O, launcher: L, warn: Warn<'w>) -> Self {
        Self { old, launcher, next: None, outcome: Outcome::Pending, warn }
    }

    /// The new version runs and the old one is gone: nothing to roll back any more.
    pub fn committed(&mut self) {
        self.outcome = Outcome::Committed;
    }

    /// The commit was asked for and got no answer: whether it passed the commit point is
    /// the old version's to say, and asking it to resume is the question (it resumes if
    /// the new version did not commit, atomically with refusing that commit; it says it
    /// retired otherwise).
    pub fn settle_commit(&mut self) -> Result<Resumed, ClientError> {
        let asked = self.old.resume();
        self.outcome = match asked {
            Ok(Resumed::Resumed) => Outcome::OldResumed,
            Ok(Resumed::Retired) => Outcome::Committed,
            Err(_) => Outcome::LeftToSupervisors,
        };
        asked
    }

    /// Roll back now rather than when the guard goes (an update that ends without its
    /// commit, to time the rollback; a rehearsal): kill the new version if it was started,
    /// remove what is left of it, resume the old version. Once, however often it is called.
    pub fn roll_back(&mut self) {
        if matches!(self.outcome, Outcome::Committed | Outcome::LeftToSupervisors | Outcome::RolledBack) {
            return;
        }
        let old_resumed = self.outcome == Outcome::OldResumed;
        self.outcome = Outcome::RolledBack;
        if let Some(next) = self.next.as_mut() {
            next.kill();
        }
        self.launcher.discard();
        if old_resumed {
            return;
        }
        match self.old.resume() {
            Ok(Resumed::Resumed) => {}
            Ok(Resumed::Retired) => (self.warn)(Warning::NotResumed(ClientError::Refused(
                "it had retired: its new version passed the commit point".into(),
            ))),
            Err(e) => (self.warn)(Warning::NotResumed(e)),
        }
    }
}

impl<O: RunningVersion, L: Launcher> Drop for Versions<'_, O, L> {
    fn drop(&mut self) {
        self.roll_back();
    }
}
