//! Mappings that are not the heap (shared file, memfd, shared anonymous, SysV and POSIX shared memory).

use super::{Context, Unmovable};

/// Nothing of this kind is checked yet: the state suite (crates/cli/tests/state_suite.rs)
/// lists what is still lost.
pub(super) fn unmovable(_ctx: &Context) -> Vec<Unmovable> {
    Vec::new()
}
