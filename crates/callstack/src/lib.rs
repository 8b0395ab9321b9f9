//! Call-stack IDs (paper §5): a hash of the *function names* on a thread's stack, so the
//! same logical call site has the same ID in two builds of a program even though every
//! address moved. Used to name quiescent points, thread classes and, later, startup
//! operations.

pub mod profile;
pub mod symbol_cache;
pub mod symbols;

pub use profile::{Profile, ProfileError, QuiescentPoint, ThreadClass};
pub use symbol_cache::SymbolCache;
pub use symbols::{ModuleSymbols, SymbolError};

/// Frames deeper than this do not take part in the ID: the bottom of a stack (libc start
/// code, thread start trampolines) carries no information, and bounded work matters in
/// the paths that compute IDs.
pub const MAX_FRAMES: usize = 32;

/// FNV-1a over the names, each terminated by NUL so `ab`,`c` differs from `a`,`bc`.
/// Stable across Rust versions and platforms, unlike `DefaultHasher`.
pub fn stack_id<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in names.into_iter().take(MAX_FRAMES) {
        for b in name.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Name used in an ID for a frame whose function is unknown: the module's file name, so
/// the ID stays stable across runs (addresses would not), at the price of merging
/// unknown frames of one module.
pub fn unknown_frame_name(module: Option<&str>) -> String {
    match module {
        Some(m) => format!("?@{}", m.rsplit('/').next().unwrap_or(m)),
        None => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_depends_on_names_and_order_only() {
        let a = stack_id(["epoll_wait", "event_loop", "main"]);
        assert_eq!(a, stack_id(["epoll_wait", "event_loop", "main"]));
        assert_ne!(a, stack_id(["epoll_wait", "main", "event_loop"]));
        assert_ne!(stack_id(["ab", "c"]), stack_id(["a", "bc"]));
    }

    #[test]
    fn id_ignores_frames_past_the_limit() {
        let mut long: Vec<String> = (0..MAX_FRAMES).map(|i| format!("f{i}")).collect();
        let base = stack_id(long.iter().map(String::as_str));
        long.push("extra".into());
        assert_eq!(base, stack_id(long.iter().map(String::as_str)));
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = stack_id(["x"]);
        assert_eq!(parse_id(&format_id(id)), Some(id));
        assert_eq!(parse_id(&format!("0x{}", format_id(id))), Some(id));
        assert_eq!(parse_id("zz"), None);
    }
}
