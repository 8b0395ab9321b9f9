//! The two supervisors' sides of an update's commit, as state machines: which request is
//! allowed when, and what a connection going away means. The protocol, its one commit
//! point and its failure cases are in `crates/update/README.md` ("The commit"); the
//! control connections drive these machines (`control`, `commit`), which do no I/O.

/// The old version's side: whether an update holds it, and for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OldSide {
    /// No update holds this version.
    #[default]
    Free,
    /// An update drained it (and may have quiesced it). `update`: the update's connection,
    /// while open; `successor`: the new version's link, once it asked for the handover.
    Held { update: Option<u64>, successor: Option<u64> },
    /// The new version asked it to retire on link `successor`: it stays parked, and never
    /// resumes unless that link closes before the new version releases it (the new version
    /// failed before the commit point).
    Retiring { successor: u64 },
    /// The new version committed: this version exits, and never resumes.
    Retired,
}

/// What the old supervisor must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldAction {
    Nothing,
    /// Take its name back if the new version had taken it, and release its processes.
    Resume,
    /// Take its name back if the new version had taken it; stay parked (the update, still
    /// connected, decides).
    RetakeName,
    /// Hand over: answer the new version with the instance lock's descriptor.
    HandOver,
    /// The commit point (the release): kill every process of this version and exit.
    Retire,
}

impl OldSide {
    /// An update's drain on connection `conn`.
    pub fn drain(&mut self, conn: u64) -> Result<(), &'static str> {
        match *self {
            OldSide::Retired => Err("this version is retired: the new version committed"),
            OldSide::Retiring { .. } => Err("this version is retiring: its new version is committing"),
            OldSide::Held { successor: Some(_), .. } => Err("this version is being handed over to its new version"),
            _ => {
                *self = OldSide::Held { update: Some(conn), successor: None };
                Ok(())
            }
        }
    }

    /// A resume request (the update rolling back, or a user). Never once retired: the new
    /// version owns the name and the connections.
    pub fn resume(&mut self) -> Result<OldAction, &'static str> {
        match *self {
            OldSide::Retired => Err("retired"),
            OldSide::Retiring { .. } => Err("retiring"),
            _ => {
                *self = OldSide::Free;
                Ok(OldAction::Resume)
            }
        }
    }

    /// The new version asks for the handover on its link `conn`: only while an update
    /// holds this version through a connection still open.
    pub fn handover(&mut self, conn: u64) -> Result<OldAction, &'static str> {
        match *self {
            OldSide::Held { update: Some(update), successor: None } => {
                *self = OldSide::Held { update: Some(update), successor: Some(conn) };
                Ok(OldAction::HandOver)
            }
            OldSide::Held { successor: Some(_), .. } => Err("another new version already asked for the handover"),
            OldSide::Held { update: None, .. } => Err("the update that held this version went away"),
            OldSide::Free => Err("no update holds this version (it was resumed)"),
            OldSide::Retiring { .. } | OldSide::Retired => Err("this version is retired"),
        }
    }

    /// Retire, asked by the new version on the link it asked the handover on: parked for
    /// good, unless that link closes before the release.
    pub fn retire(&mut self, conn: u64) -> Result<OldAction, &'static str> {
        match *self {
            OldSide::Held { successor: Some(link), .. } if link == conn => {
                *self = OldSide::Retiring { successor: conn };
                Ok(OldAction::Nothing)
            }
            OldSide::Retiring { .. } | OldSide::Retired => Err("already retired"),
            _ => Err("only the new version that asked for the handover can retire this version"),
        }
    }

    /// The commit point, asked by the new version on its link after the retire.
    pub fn release(&mut self, conn: u64) -> Result<OldAction, &'static str> {
        match *self {
            OldSide::Retiring { successor } if successor == conn => {
                *self = OldSide::Retired;
                Ok(OldAction::Retire)
            }
            OldSide::Retired => Err("already released"),
            _ => Err("only the new version this version retired for can release it"),
        }
    }

    /// Control connection `conn` went away; `asked_handover`: it was a new version's link.
    pub fn closed(&mut self, conn: u64, asked_handover: bool) -> OldAction {
        let action = self.closed_connection(conn);
        // A new version refused the commit point (the update resumed this version first)
        // may have renamed its socket over the name meanwhile: take it back.
        if action == OldAction::Nothing && asked_handover && *self != OldSide::Retired {
            return OldAction::RetakeName;
        }
        action
    }

    fn closed_connection(&mut self, conn: u64) -> OldAction {
        match *self {
            // The update died before any handover: nobody else will resume this version.
            OldSide::Held { update: Some(u), successor: None } if u == conn => {
                *self = OldSide::Free;
                OldAction::Resume
            }
            // The update died during the handover: the new version decides (it retires
            // this version, or its link closes and this version resumes).
            OldSide::Held { update: Some(u), successor: Some(s) } if u == conn => {
                *self = OldSide::Held { update: None, successor: Some(s) };
                OldAction::Nothing
            }
            // The new version gave up or died before the commit point: the name is this
            // version's again; the update, if still connected, decides the rest.
            OldSide::Held { update: Some(u), successor: Some(s) } if s == conn => {
                *self = OldSide::Held { update: Some(u), successor: None };
                OldAction::RetakeName
            }
            OldSide::Held { update: None, successor: Some(s) } if s == conn => {
                *self = OldSide::Free;
                OldAction::Resume
            }
            // The new version failed between the retire and the commit point: this
            // version holds all the state still, and serves again.
            OldSide::Retiring { successor } if successor == conn => {
                *self = OldSide::Free;
                OldAction::Resume
            }
            _ => OldAction::Nothing,
        }
    }
}

/// The new version's side, from its launch by an update until its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewSide {
    /// Starting or parked, waiting for the commit.
    #[default]
    Parked,
    /// The commit is under way (`lifeline_lost`: the update died meanwhile).
    Committing { lifeline_lost: bool },
    /// Past the commit point: this version is the instance.
    Committed,
    /// The update died before the commit: this version ends.
    Abandoned,
}

/// What the new supervisor must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewAction {
    Nothing,
    /// Kill every process of this version (the supervisor then exits, removing its files).
    Abandon,
}

impl NewSide {
    /// The update that launched this version is gone (its end of the lifeline closed).
    pub fn lifeline_lost(&mut self) -> NewAction {
        match *self {
            NewSide::Parked => {
                *self = NewSide::Abandoned;
                NewAction::Abandon
            }
            // The commit goes on by itself; if it fails before the commit point, nobody is
            // left to roll back but this version.
            NewSide::Committing { .. } => {
                *self = NewSide::Committing { lifeline_lost: true };
                NewAction::Nothing
            }
            NewSide::Committed | NewSide::Abandoned => NewAction::Nothing,
        }
    }

    pub fn begin_commit(&mut self) -> Result<(), &'static str> {
        match *self {
            NewSide::Parked => {
                *self = NewSide::Committing { lifeline_lost: false };
                Ok(())
            }
            NewSide::Committing { .. } => Err("a commit is already under way"),
            NewSide::Committed => Err("already committed"),
            NewSide::Abandoned => Err("the update that started this version went away; it is ending"),
        }
    }

    /// Whether the update that asked for the commit still lives (a new version may commit
    /// without its old one, which died, only then: see the README).
    pub fn update_alive(&self) -> bool {
        !matches!(self, NewSide::Committing { lifeline_lost: true } | NewSide::Abandoned)
    }

    /// The commit stopped before the commit point.
    pub fn abort_commit(&mut self) -> NewAction {
        match *self {
            NewSide::Committing { lifeline_lost: true } => {
                *self = NewSide::Abandoned;
                NewAction::Abandon
            }
            NewSide::Committing { lifeline_lost: false } => {
                *self = NewSide::Parked;
                NewAction::Nothing
            }
            _ => NewAction::Nothing,
        }
    }

    pub fn committed(&mut self) {
        *self = NewSide::Committed;
    }

    /// A resume request: before its commit, a new version must not run a single request.
    pub fn may_resume(&self) -> bool {
        matches!(self, NewSide::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATE: u64 = 1;
    const LINK: u64 = 2;
    const OTHER: u64 = 3;

    fn held() -> OldSide {
        let mut o = OldSide::Free;
        o.drain(UPDATE).unwrap();
        o
    }

    fn handing_over() -> OldSide {
        let mut o = held();
        assert_eq!(o.handover(LINK), Ok(OldAction::HandOver));
        o
    }

    #[test]
    fn an_update_that_dies_before_the_handover_resumes_the_old_version() {
        let mut o = held();
        assert_eq!(o.closed(OTHER, false), OldAction::Nothing, "another connection closing changes nothing");
        assert_eq!(o.closed(UPDATE, false), OldAction::Resume);
        assert_eq!(o, OldSide::Free);
        assert!(o.handover(LINK).is_err(), "a resumed version is not handed over");
    }

    #[test]
    fn during_the_handover_the_update_dying_leaves_the_decision_to_the_new_version() {
        // The new version commits.
        let mut o = handing_over();
        assert_eq!(o.closed(UPDATE, false), OldAction::Nothing);
        assert_eq!(o.retire(LINK), Ok(OldAction::Nothing));
        assert_eq!(o.release(LINK), Ok(OldAction::Retire));
        assert_eq!(o.closed(LINK, true), OldAction::Nothing);
        // The new version dies (or gives up) before the commit point.
        let mut o = handing_over();
        assert_eq!(o.closed(UPDATE, false), OldAction::Nothing);
        assert_eq!(o.closed(LINK, true), OldAction::Resume);
        assert_eq!(o, OldSide::Free);
    }

    #[test]
    fn a_new_version_that_dies_before_the_commit_point_gives_the_name_back_to_the_update() {
        let mut o = handing_over();
        assert_eq!(o.closed(LINK, true), OldAction::RetakeName);
        assert_eq!(o, OldSide::Held { update: Some(UPDATE), successor: None });
        // The update then rolls back.
        assert_eq!(o.resume(), Ok(OldAction::Resume));
    }

    #[test]
    fn only_the_link_that_asked_for_the_handover_retires_and_never_twice() {
        assert!(held().retire(LINK).is_err(), "no handover asked");
        let mut o = handing_over();
        assert!(o.retire(OTHER).is_err());
        assert!(o.retire(UPDATE).is_err(), "the update itself cannot retire");
        assert!(o.release(LINK).is_err(), "no release before the retire");
        assert_eq!(o.retire(LINK), Ok(OldAction::Nothing));
        assert!(o.retire(LINK).is_err());
        assert!(o.release(OTHER).is_err());
        assert_eq!(o.release(LINK), Ok(OldAction::Retire));
        assert!(o.release(LINK).is_err());
    }

    #[test]
    fn a_retiring_version_resumes_only_when_its_new_version_fails_before_the_release() {
        let mut o = handing_over();
        o.retire(LINK).unwrap();
        assert_eq!(o.resume(), Err("retiring"), "the update cannot resume it: the new version may release it");
        assert!(o.drain(OTHER).is_err());
        assert_eq!(o.closed(UPDATE, false), OldAction::Nothing, "the update dying changes nothing");
        assert_eq!(o.closed(LINK, true), OldAction::Resume, "the new version failed before the commit point");
        assert_eq!(o, OldSide::Free);
    }

    #[test]
    fn a_retired_version_never_resumes_nor_drains_again() {
        let mut o = handing_over();
        o.retire(LINK).unwrap();
        o.release(LINK).unwrap();
        assert_eq!(o.resume(), Err("retired"));
        assert!(o.drain(OTHER).is_err());
        assert_eq!(o.closed(UPDATE, false), OldAction::Nothing);
        assert_eq!(o, OldSide::Retired);
    }

    #[test]
    fn a_resume_during_the_handover_wins_over_a_later_retire() {
        // The update rolls back while the new version is between its handover and the
        // commit point: the new version's retire is refused, so it never commits.
        let mut o = handing_over();
        assert_eq!(o.resume(), Ok(OldAction::Resume));
        assert!(o.retire(LINK).is_err());
        assert_eq!(o.closed(LINK, true), OldAction::RetakeName, "the name, if it renamed its socket over it");
        assert_eq!(o, OldSide::Free);
    }

    #[test]
    fn the_handover_needs_an_update_that_still_holds_the_version() {
        assert!(OldSide::Free.handover(LINK).is_err());
        let mut o = held();
        assert_eq!(o.closed(UPDATE, false), OldAction::Resume);
        assert!(o.handover(LINK).is_err());
        let mut o = handing_over();
        assert!(o.handover(OTHER).is_err(), "one handover at a time");
        assert!(o.drain(OTHER).is_err(), "no new drain during a handover");
    }

    #[test]
    fn a_new_version_whose_update_dies_before_the_commit_ends() {
        let mut n = NewSide::Parked;
        assert_eq!(n.lifeline_lost(), NewAction::Abandon);
        assert!(n.begin_commit().is_err());
        assert!(!n.may_resume());
    }

    #[test]
    fn a_commit_under_way_goes_on_without_its_update() {
        let mut n = NewSide::Parked;
        n.begin_commit().unwrap();
        assert!(n.update_alive());
        assert_eq!(n.lifeline_lost(), NewAction::Nothing);
        assert!(!n.update_alive(), "it may no longer commit without its old version");
        n.committed();
        assert!(n.may_resume());
        assert_eq!(n.lifeline_lost(), NewAction::Nothing);
    }

    #[test]
    fn a_commit_that_fails_before_the_commit_point_ends_the_version_only_if_its_update_is_gone() {
        let mut n = NewSide::Parked;
        n.begin_commit().unwrap();
        assert_eq!(n.abort_commit(), NewAction::Nothing);
        assert_eq!(n, NewSide::Parked, "the update, still there, rolls back");
        n.begin_commit().unwrap();
        n.lifeline_lost();
        assert_eq!(n.abort_commit(), NewAction::Abandon);
        assert_eq!(n, NewSide::Abandoned);
    }

    #[test]
    fn a_new_version_never_resumes_before_its_commit() {
        let mut n = NewSide::Parked;
        assert!(!n.may_resume());
        n.begin_commit().unwrap();
        assert!(!n.may_resume());
        assert!(n.begin_commit().is_err());
    }
}
