//! Descriptors made after startup (other than the client connections the transfer moves).
//!
//! Which descriptors those are, only the process's runtime knows for sure: its own
//! (control socket, dirty tracking), what startup made (recorded or opened by libc on
//! its own), what was inherited at exec, and which sockets accept() returned. It answers
//! `PostStartupFds`; [`Context::post_startup_fds`] holds the answers. Here each one is
//! named as /proc shows it.

use super::{Context, Unmovable};

/// Why a post-startup descriptor cannot move today.
const NOT_MOVED: &str = "made after startup, and mcr moves only client connections: the new version would not have it";

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut found = Vec::new();
    for (&pid, fds) in &ctx.post_startup_fds {
        let host = ctx.processes.get(&pid).copied();
        match fds {
            Ok(fds) => found.extend(fds.iter().map(|&fd| Unmovable {
                pid,
                what: describe(host, fd),
                why: NOT_MOVED.to_string(),
            })),
            Err(e) => found.push(Unmovable {
                pid,
                what: "its descriptors".to_string(),
                why: format!("its runtime could not say which it made after startup: {e}"),
            }),
        }
    }
    found
}

/// "fd 9 (pipe:[1234])": the number and what /proc/PID/fd shows it is.
fn describe(host: Option<i32>, fd: i32) -> String {
    match host.and_then(|h| mcr_procfs::fd::target(h, fd).ok()) {
        Some(target) => format!("fd {fd} ({})", target.display()),
        None => format!("fd {fd}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::fd::AsRawFd;

    #[test]
    fn each_post_startup_descriptor_is_named_with_what_it_is() {
        let me = std::process::id() as i32;
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("a socketpair");
        let fd = a.as_raw_fd();
        let ctx = Context {
            processes: BTreeMap::from([(1, me), (2, me)]),
            logs: vec![],
            post_startup_fds: BTreeMap::from([(1, Ok(vec![fd])), (2, Err("process 2 is stopped".to_string()))]),
        };
        let found = unmovable(&ctx);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].pid, 1);
        assert!(found[0].what.starts_with(&format!("fd {fd} (socket:[")), "{}", found[0].what);
        assert_eq!((found[1].pid, found[1].what.as_str()), (2, "its descriptors"));
        assert!(found[1].why.contains("process 2 is stopped"));
        drop(b);
    }
}
