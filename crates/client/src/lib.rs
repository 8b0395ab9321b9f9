//! The `mcr` command's side of an instance: start its supervisor and follow the launch
//! ([`launch`], [`attach`]), talk to the supervisor over the control socket
//! ([`connection`]), list and stop instances ([`instances`]), check a program before
//! running it ([`program`]), tell which host process is which process of an instance
//! ([`pids`]), and read what its processes wrote since startup ([`dirty`]). Every verb of
//! the CLI and `mcr-update` go through here; the CLI only parses arguments and prints.

pub mod attach;
pub mod connection;
pub mod dirty;
pub mod instances;
pub mod launch;
pub mod pids;
pub mod program;
pub mod reexec;

pub use connection::{request, ClientError, Connection};
