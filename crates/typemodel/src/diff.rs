//! diff
pub struct Diff; pub fn diff(_a:&crate::Program,_b:&crate::Program)->Diff{Diff}
