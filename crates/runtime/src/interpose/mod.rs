//! The FFI layer: libc symbols exported by libmcr.so that shadow the program's libc.
//! Everything here is `unsafe extern "C"`; the logic lives in the safe modules above.

pub mod annotations;
pub mod blocking;
pub mod fds;
pub mod malloc;
pub mod process;
pub mod signals;
pub mod startup;
