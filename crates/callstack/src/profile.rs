//! The quiescence profile: which blocking calls are quiescent points, by call-stack ID.
//!
//! Format (JSON, written by `mcr profile`, read by `mcr run --profile FILE`):
//! ```json
//! {
//!   "format": "mcr-profile/1",
//!   "program": "/usr/sbin/nginx",
//!   "quiescent_points": [
//!     { "id": "9f1c2e0a5b7d3e41", "call": "epoll_wait",
//!       "frames": ["epoll_wait", "ngx_epoll_process_events", "ngx_process_events_and_timers"],
//!       "thread_class": "main" }
//!   ]
//! }
//! ```
//! Only `id` decides; `call`, `frames` and `thread_class` are for the people reading it,
//! as are the fields `mcr profile` adds (`long_lived_loop` and `share` per quiescent
//! point, `thread_classes`, `workload`): a reader ignores what it does not know.
//! Without a profile every wrapped blocking call is a quiescent point, except reads and
//! receives on non-blocking descriptors (they never block).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

pub const FORMAT: &str = "mcr-profile/1";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("profile {path} is not valid: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("profile {path} has format {found:?}, expected {FORMAT:?}")]
    Format { path: String, found: String },
    #[error("profile {path}: quiescent point {index} has an invalid id {id:?} (16 hex digits expected)")]
    BadId { path: String, index: usize, id: String },
    #[error("profile {path} lists no quiescent point: no thread could ever park")]
    Empty { path: String },
    #[error("profile {path} is not a regular file of at most {} MiB", MAX_PROFILE >> 20)]
    TooLarge { path: String },
}

/// The largest profile read: a real one is a few KiB; anything bigger (a device, a wrong
/// path) is refused instead of filling memory.
pub const MAX_PROFILE: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuiescentPoint {
    pub id: String,
    #[serde(default)]
    pub call: String,
    #[serde(default)]
    pub frames: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_class: Option<String>,
    /// `mcr profile`: the function of the class's long-lived loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived_loop: Option<String>,
    /// `mcr profile`: share of the class's blocked time spent here (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// `mcr profile`: one thread class it saw (informative; never read by the runtime).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadClass {
    /// The class's call-stack ID (the `pthread_create` or `fork` call that makes its
    /// threads, or the program for an exec'd process).
    pub id: String,
    pub label: String,
    pub long_lived: bool,
    pub persistent: bool,
    /// ID of the class's quiescent point, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiescent_point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived_loop: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub format: String,
    #[serde(default)]
    pub program: String,
    pub quiescent_points: Vec<QuiescentPoint>,
    /// `mcr profile`: every thread class seen, short-lived ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thread_classes: Vec<ThreadClass>,
    /// `mcr profile`: the workload command the profile was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        use std::io::Read;
        let p = path.display().to_string();
        let read_err = |source| ProfileError::Read { path: p.clone(), source };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() || meta.len() > MAX_PROFILE {
            return Err(ProfileError::TooLarge { path: p });
        }
        let mut text = String::new();
        file.take(MAX_PROFILE + 1).read_to_string(&mut text).map_err(read_err)?;
        if text.len() as u64 > MAX_PROFILE {
            return Err(ProfileError::TooLarge { path: p });
        }
        Self::parse(&text, &p)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ProfileError> {
        let profile: Profile =
            serde_json::from_str(text).map_err(|source| ProfileError::Parse { path: path.to_string(), source })?;
        if profile.format != FORMAT {
            return Err(ProfileError::Format { path: path.to_string(), found: profile.format });
        }
        if profile.quiescent_points.is_empty() {
            return Err(ProfileError::Empty { path: path.to_string() });
        }
        for (index, qp) in profile.quiescent_points.iter().enumerate() {
            if crate::parse_id(&qp.id).is_none() || qp.id.trim_start_matches("0x").len() > 16 {
                return Err(ProfileError::BadId { path: path.to_string(), index, id: qp.id.clone() });
            }
        }
        Ok(profile)
    }

    pub fn ids(&self) -> HashSet<u64> {
        self.quiescent_points.iter().filter_map(|q| crate::parse_id(&q.id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let ok = r#"{"format":"mcr-profile/1","quiescent_points":[{"id":"00000000000000ff","call":"poll"}]}"#;
        let p = Profile::parse(ok, "p").unwrap();
        assert!(p.ids().contains(&0xff));
        let bad_fmt = ok.replace("mcr-profile/1", "other");
        assert!(matches!(Profile::parse(&bad_fmt, "p"), Err(ProfileError::Format { .. })));
        let bad_id = ok.replace("00000000000000ff", "xyz");
        assert!(matches!(Profile::parse(&bad_id, "p"), Err(ProfileError::BadId { .. })));
        let empty = r#"{"format":"mcr-profile/1","quiescent_points":[]}"#;
        assert!(matches!(Profile::parse(empty, "p"), Err(ProfileError::Empty { .. })));
        assert!(matches!(Profile::parse("{", "p"), Err(ProfileError::Parse { .. })));
    }

    #[test]
    fn what_mcr_profile_adds_round_trips_and_older_readers_skip_it() {
        let p = Profile {
            format: FORMAT.into(),
            program: "/srv/kvd".into(),
            quiescent_points: vec![QuiescentPoint {
                id: "00000000000000ff".into(),
                call: "epoll_wait".into(),
                frames: vec!["main".into()],
                thread_class: Some("main".into()),
                long_lived_loop: Some("main".into()),
                share: Some(0.9),
            }],
            thread_classes: vec![ThreadClass {
                id: "0000000000000001".into(),
                label: "main".into(),
                long_lived: true,
                persistent: true,
                quiescent_point: Some("00000000000000ff".into()),
                long_lived_loop: Some("main".into()),
            }],
            workload: Some("w.sh".into()),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(Profile::parse(&text, "p").unwrap(), p);
        // A reader that knows only the original fields still reads it.
        #[derive(Deserialize)]
        struct Old {
            format: String,
            quiescent_points: Vec<OldQp>,
        }
        #[derive(Deserialize)]
        struct OldQp {
            id: String,
        }
        let old: Old = serde_json::from_str(&text).unwrap();
        assert_eq!((old.format.as_str(), old.quiescent_points[0].id.as_str()), (FORMAT, "00000000000000ff"));
    }
}
