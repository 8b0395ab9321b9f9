//! The update's decisions about connections and processes, from what the versions
//! report: pure functions.

use crate::version::Drain;
use mcr_protocol::OpenConnections;
use std::collections::BTreeSet;

/// What the new build takes over itself, from its annotations
/// (`mcr_typemodel::diff::Sessions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handlers {
    /// MCR_ADD_RESUME_HANDLER: sessions threads serve from their stacks (and, without the
    /// state, idle connections to adopt).
    pub resume: bool,
    /// MCR_ADD_RESPAWN_HANDLER: per-connection processes.
    pub respawn: bool,
}

/// How an update treats the old version's connections.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// --fresh-state: the state (and so the connections' state) stays behind.
    pub fresh_state: bool,
    pub handlers: Handlers,
}

impl Policy {
    /// Without the state, the new version can still adopt the connections that hold none.
    pub fn adopts(&self) -> bool {
        self.fresh_state && self.handlers.resume
    }

    /// The drain before quiescing: with the state transfer, only connections held by
    /// processes nothing recreates must end; the rest move.
    pub fn drain(&self, timeout_ms: u64) -> Drain {
        Drain {
            timeout_ms,
            only_volatile: !self.fresh_state,
            move_pinned: self.handlers.resume,
            move_volatile: self.handlers.respawn,
            adopt_idle: self.adopts(),
        }
    }

    /// The open connections the update can neither move nor hand over: closed at
    /// commit with --fresh-state, a reason to roll back otherwise.
    pub fn stuck<'c>(&self, connections: &'c [OpenConnections]) -> Vec<&'c OpenConnections> {
        connections
            .iter()
            .filter(|c| !c.finished)
            .filter(|c| {
                if self.fresh_state {
                    !(self.adopts() && adoptable(c))
                } else {
                    (c.volatile && !self.handlers.respawn) || (!c.pinned.is_empty() && !self.handlers.resume)
                }
            })
            .collect()
    }

    /// The per-connection processes the new build's respawn handler recreates (the
    /// state transfer then moves them like any process).
    pub fn respawned(&self, connections: &[OpenConnections]) -> BTreeSet<i32> {
        if !self.handlers.respawn || self.fresh_state {
            return BTreeSet::new();
        }
        connections.iter().filter(|c| c.volatile && !c.fds.is_empty()).map(|c| c.pid).collect()
    }
}

/// A process's connections the new version can adopt without their state: an idle check
/// vouches for them, no thread serves them from its stack, and the process is not one
/// forked per connection.
pub fn adoptable(c: &OpenConnections) -> bool {
    c.idle_check && c.busy.is_empty() && c.pinned.is_empty() && !c.volatile
}

/// Per-connection processes whose client is gone have finished their sessions (they
/// would exit on their next read): nothing of them is recreated, they end with the old
/// version. Removes them from `processes` and their entries from `connections`.
pub fn drop_finished(processes: &mut Vec<i32>, connections: &mut Vec<OpenConnections>) {
    let finished: BTreeSet<i32> = connections.iter().filter(|c| c.finished).map(|c| c.pid).collect();
    processes.retain(|p| !finished.contains(p));
    connections.retain(|c| !c.finished);
}

/// The old version's tree the new version's startup must have recreated: its processes
/// still alive (`live`), except those the respawn handler recreates later.
pub fn expected_tree(old: &[i32], live: &BTreeSet<i32>, respawned: &BTreeSet<i32>) -> BTreeSet<i32> {
    old.iter().copied().filter(|p| !respawned.contains(p) && live.contains(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(pid: i32, fds: &[i32]) -> OpenConnections {
        OpenConnections::of(pid, fds)
    }

    fn volatile(pid: i32, fd: i32) -> OpenConnections {
        OpenConnections { volatile: true, ..conn(pid, &[fd]) }
    }

    fn pinned(pid: i32, fd: i32) -> OpenConnections {
        OpenConnections { pinned: vec![fd], ..conn(pid, &[fd]) }
    }

    fn idle(pid: i32, fd: i32) -> OpenConnections {
        OpenConnections { idle_check: true, ..conn(pid, &[fd]) }
    }

    const TRANSFER: Policy = Policy { fresh_state: false, handlers: Handlers { resume: false, respawn: false } };
    const FRESH: Policy = Policy { fresh_state: true, handlers: Handlers { resume: false, respawn: false } };
    const BOTH: Handlers = Handlers { resume: true, respawn: true };

    fn pids(c: &[&OpenConnections]) -> Vec<i32> {
        c.iter().map(|c| c.pid).collect()
    }

    #[test]
    fn the_drain_waits_for_what_the_transfer_cannot_move() {
        let d = TRANSFER.drain(200);
        assert!(d.only_volatile && !d.move_pinned && !d.move_volatile && !d.adopt_idle);
        assert_eq!(d.timeout_ms, 200);
        let d = Policy { handlers: BOTH, ..TRANSFER }.drain(0);
        assert!(d.only_volatile && d.move_pinned && d.move_volatile && !d.adopt_idle);
        let d = Policy { handlers: BOTH, ..FRESH }.drain(1000);
        assert!(!d.only_volatile && d.adopt_idle);
        assert!(!FRESH.drain(1000).adopt_idle, "no resume handler, nothing to adopt with");
    }

    #[test]
    fn with_the_transfer_only_unmovable_connections_are_stuck() {
        let open = [conn(2, &[5]), volatile(3, 4), pinned(4, 6)];
        assert_eq!(pids(&TRANSFER.stuck(&open)), [3, 4]);
        let respawns = Policy { handlers: Handlers { respawn: true, resume: false }, ..TRANSFER };
        assert_eq!(pids(&respawns.stuck(&open)), [4]);
        let resumes = Policy { handlers: Handlers { respawn: false, resume: true }, ..TRANSFER };
        assert_eq!(pids(&resumes.stuck(&open)), [3]);
        assert!(Policy { handlers: BOTH, ..TRANSFER }.stuck(&open).is_empty());
    }

    #[test]
    fn without_the_state_every_connection_not_adopted_is_stuck() {
        let busy = OpenConnections { busy: vec![7], ..idle(2, 7) };
        let open = [conn(2, &[5]), idle(3, 4), busy, OpenConnections { volatile: true, ..idle(5, 3) }];
        assert_eq!(pids(&FRESH.stuck(&open)), [2, 3, 2, 5], "no resume handler: nothing is adopted");
        assert_eq!(pids(&Policy { handlers: BOTH, ..FRESH }.stuck(&open)), [2, 2, 5]);
    }

    #[test]
    fn finished_sessions_are_never_stuck() {
        let open = [OpenConnections { finished: true, ..volatile(3, 4) }];
        assert!(TRANSFER.stuck(&open).is_empty());
        assert!(FRESH.stuck(&open).is_empty());
    }

    #[test]
    fn only_per_connection_processes_with_a_connection_are_respawned() {
        let open = [conn(2, &[5]), volatile(3, 4), OpenConnections { volatile: true, ..conn(4, &[]) }, volatile(6, 5)];
        let respawns = Policy { handlers: Handlers { respawn: true, resume: false }, ..TRANSFER };
        assert_eq!(respawns.respawned(&open), BTreeSet::from([3, 6]));
        assert!(TRANSFER.respawned(&open).is_empty(), "no respawn handler");
        assert!(Policy { handlers: BOTH, ..FRESH }.respawned(&open).is_empty(), "no state, no respawn");
    }

    #[test]
    fn finished_processes_leave_the_tree_and_the_connections() {
        let mut processes = vec![2, 3, 4];
        let mut open = vec![OpenConnections { finished: true, ..volatile(3, 4) }, volatile(4, 5), conn(2, &[6])];
        drop_finished(&mut processes, &mut open);
        assert_eq!(processes, [2, 4]);
        assert_eq!(open.iter().map(|c| c.pid).collect::<Vec<_>>(), [4, 2]);
    }

    #[test]
    fn the_expected_tree_leaves_out_exited_and_respawned_processes() {
        let live = BTreeSet::from([2, 3, 5]);
        assert_eq!(expected_tree(&[2, 3, 4, 5], &live, &BTreeSet::from([5])), BTreeSet::from([2, 3]));
    }

    #[test]
    fn adoptable_connections_are_idle_event_loop_ones() {
        assert!(adoptable(&idle(2, 5)));
        assert!(!adoptable(&conn(2, &[5])), "no idle check");
        assert!(!adoptable(&OpenConnections { busy: vec![5], ..idle(2, 5) }));
        assert!(!adoptable(&OpenConnections { pinned: vec![5], ..idle(2, 5) }));
        assert!(!adoptable(&OpenConnections { volatile: true, ..idle(2, 5) }));
    }
}
