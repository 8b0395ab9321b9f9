//! `mcr profile` as a library (paper §4): find a server's quiescent points under a
//! workload.
//!
//! - [`session`] runs the server under mcr in profiling mode (each process samples where
//!   its threads block), drives it with the workload and takes the snapshots;
//! - [`analyze`] turns the snapshots into thread classes, each with its long-lived loop
//!   and quiescent point, and [`Analysis::to_profile`] into the profile `mcr run
//!   --profile` reads (pure logic, unit-tested on hand-made snapshots);
//! - [`lines`] gives the file:line of a frame, from the modules' DWARF, for the report.
//!
//! The CLI parses the arguments and renders the report.
//!
//! A crate of its own rather than part of mcr-callstack (the profile format's home): that
//! one is linked into the preloaded runtime, which has no use for the protocol's
//! snapshots, DWARF line tables or launching supervisors.

pub mod analyze;
pub mod lines;
mod profile;
pub mod session;

pub use analyze::{analyze, Analysis, Class, Site};
pub use lines::Lines;
pub use session::{prepare, Prepared, Profiled, Session, SessionError, Settings, Snapshots, WorkloadOutcome};
