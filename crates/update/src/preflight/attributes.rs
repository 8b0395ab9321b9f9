//! Process attributes the old version changed after startup (signal mask and handlers, timers, umask, rlimits, cwd, credentials, prctl state).

use super::{Context, Unmovable};

/// Nothing of this kind is checked yet: the state suite (crates/cli/tests/state_suite.rs)
/// lists what is still lost.
pub(super) fn unmovable(_ctx: &Context) -> Vec<Unmovable> {
    Vec::new()
}
