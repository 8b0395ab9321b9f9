//! `mcr update` as a library: the paper's phases (drain, quiesce, restart with the replay
//! check, state transfer, commit) as a state machine ([`machine`]) over two versions it
//! asks through traits ([`version`]), with a typed error per phase ([`error`]) and a guard
//! that rolls back whatever phase failed ([`rollback`]).
//!
//! [`supervised`] runs it against real supervisors; unit tests drive it with fakes. How an
//! update ends (its one commit point, and what each part does when another dies at any
//! moment) is in this crate's README.md, "The commit".
//! [`preflight`] names the state no update could move, before anything is touched.
//! [`decide`] holds the decisions about connections and processes, [`transfer`] the
//! state transfer between process pairs.

pub mod decide;
pub mod error;
pub mod interrupt;
pub mod machine;
pub mod preflight;
mod rollback;
pub mod supervised;
pub mod transfer;
pub mod version;
pub mod warning;

pub use decide::{Handlers, Policy};
pub use error::UpdateError;
pub use machine::{Options, Phase, Progress, Report, Step, Timings, Update};
pub use supervised::{prepare, Checks, Prepared, Settings};
pub use version::{Drain, HostPids, Launcher, NextVersion, Quiescence, Resumed, RunningVersion, StartupFailure};
pub use warning::{Warn, Warning};
