//! Descriptors made after startup (other than the client connections the transfer moves).

use super::{Context, Unmovable};

/// Nothing of this kind is checked yet: the state suite (crates/cli/tests/state_suite.rs)
/// lists what is still lost.
pub(super) fn unmovable(_ctx: &Context) -> Vec<Unmovable> {
    Vec::new()
}
