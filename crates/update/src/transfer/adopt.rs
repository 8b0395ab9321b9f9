//! `--fresh-state` with a resume handler in the new build: the old version's idle
//! connections move into the new version's processes (same PIDs, same numbers) for its
//! program to adopt as new ones; their state stays behind.

use super::descriptors::{self, DescriptorError};
use super::runtime::NewProcess;
use mcr_client::Connection;

/// Move connections `fds` of old process `old_host` into new process `pid` (host PID
/// `new_host`, supervised on `next`).
pub fn adopt(
    old_host: i32,
    pid: i32,
    new_host: i32,
    next: &mut Connection,
    fds: &[i32],
) -> Result<(), DescriptorError> {
    let mut target = NewProcess { next, pid, host_pid: new_host };
    descriptors::import(old_host, fds, &mut target, descriptors::Moving::Adopted)
}
