//! Errors of the type model.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TypeModelError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an ELF binary mcr can read: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error("malformed DWARF in {}: {reason}", path.display())]
    MalformedDwarf { path: PathBuf, reason: String },
}
