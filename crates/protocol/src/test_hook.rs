//! A test hook, for the fault-injection tests only (`crates/cli/tests/faults.rs`): it
//! holds an update at one of its phase boundaries so that a test can inject a fault there
//! deterministically. Not a user feature: no command-line option names it.
//!
//! With `MCR_TEST_PAUSE_AT=<point>` in its environment, the process that reaches `<point>`
//! (the `mcr update` CLI, or the new version's supervisor, which inherits the CLI's
//! environment; never the server) creates `<MCR_TEST_PAUSE_DIR>/<point>.paused` holding
//! its host PID, and waits until that file is removed (at most [`LIMIT`]). Without the
//! variable, or at any other point, nothing happens.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PAUSE_AT: &str = "MCR_TEST_PAUSE_AT";

/// The points, in the order an update reaches them.
pub mod point {
    /// The old version drained (the CLI).
    pub const DRAINED: &str = "drained";
    /// The old version parked, its processes and connections listed (the CLI).
    pub const QUIESCED: &str = "quiesced";
    /// The new version launched, replaying its startup (the CLI).
    pub const RESTARTING: &str = "restarting";
    /// A process's state moved into its counterpart, its connections not yet (the CLI).
    pub const TRANSFERRING: &str = "transferring";
    /// During the commit, before its commit point: the new version holds the instance's
    /// lock and name, the old one is not retired yet (the new version's supervisor).
    pub const COMMITTING: &str = "committing";
    /// The old version retiring (parked for good unless the new version fails before the
    /// commit point), before the new version releases it (the new version's supervisor).
    pub const RETIRING: &str = "retiring";
    /// Right after the commit point (the old version released), before the new version
    /// resumes (its supervisor).
    pub const COMMITTED: &str = "committed";
    /// Not an update's: `mcr run` in the foreground launched the server and does not
    /// forward signals yet (`crates/cli/tests/lifecycle.rs`).
    pub const LAUNCHED: &str = "launched";
}
/// Where the marker file goes (default: the system's temporary directory).
pub const PAUSE_DIR: &str = "MCR_TEST_PAUSE_DIR";

/// A paused process goes on by itself after this long (a test that died must not leave an
/// update held for ever).
pub const LIMIT: Duration = Duration::from_secs(120);

/// How often a paused process looks whether its marker is gone.
pub const POLL: Duration = Duration::from_millis(2);

/// The marker to create when `point` is the one asked for.
pub fn marker(point: &str) -> Option<PathBuf> {
    let asked = std::env::var(PAUSE_AT).ok()?;
    if asked != point {
        return None;
    }
    let dir = std::env::var_os(PAUSE_DIR).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    Some(dir.join(format!("{point}.paused")))
}

/// Announce the pause: the marker holds `pid` (the host PID of the process that pauses).
/// False when the marker cannot be written (then there is no pause).
pub fn announce(marker: &std::path::Path, pid: i32) -> bool {
    std::fs::write(marker, format!("{pid}\n")).is_ok()
}

/// Pause here if `point` is the one asked for (blocking; for the CLI).
pub fn pause(point: &str) {
    let Some(marker) = marker(point) else { return };
    if !announce(&marker, std::process::id() as i32) {
        return;
    }
    let t = Instant::now();
    while marker.exists() && t.elapsed() < LIMIT {
        std::thread::sleep(POLL);
    }
}
