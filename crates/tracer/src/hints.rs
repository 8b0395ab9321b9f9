//! The annotations of `include/mcr.h` (`MCR_POINTS_TO`, `MCR_OPAQUE`), read from the
//! binaries' `mcr_hints` sections by the type model, matched against layout paths. One
//! reader for `mcr update` (the tracer) and `mcr check` (which previews what it will do).

use mcr_typemodel::{Program, Type, TypeId};
use std::collections::{HashMap, HashSet};

/// Which build a hint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Old,
    New,
    Both,
}

impl Origin {
    /// "the old build", "the new build", "both builds".
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Old => "the old build",
            Origin::New => "the new build",
            Origin::Both => "both builds",
        }
    }
}

#[derive(Debug, Default)]
pub struct Hints {
    /// Normalized path → the old program's type the word points to.
    pub points_to: HashMap<String, TypeId>,
    pub opaque: HashSet<String>,
    /// Normalized path → the hint as the program wrote it (`MCR_POINTS_TO("last_set",
    /// "struct kv_node")`) and the build it came from, for reports.
    pub written: HashMap<String, (String, Origin)>,
    /// Hints that name a type the program does not have, or cannot be read.
    pub unresolved: Vec<String>,
}

/// `struct conn.ctx`, `kvd.c:last_set`, `table[3].next` → `conn.ctx`, `last_set`, `table.next`.
pub fn normalize(path: &str) -> String {
    let p = path.trim();
    let p = p.strip_prefix("struct ").or_else(|| p.strip_prefix("union ")).unwrap_or(p);
    // A static's display name carries its unit (`kvd.c:last_set`, `kvd.c:f.x`); field
    // paths never contain a colon.
    let p = p.rsplit(':').next().unwrap_or(p);
    let mut out = String::with_capacity(p.len());
    let mut depth = 0;
    for ch in p.chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn resolve(prog: &Program, name: &str) -> Option<TypeId> {
    let name = name.trim();
    let (want_struct, want_union, bare) = match (name.strip_prefix("struct "), name.strip_prefix("union ")) {
        (Some(b), _) => (true, false, b.trim()),
        (_, Some(b)) => (false, true, b.trim()),
        _ => (false, false, name),
    };
    prog.types.iter().enumerate().find_map(|(i, t)| {
        let ok = match t {
            Type::Struct(c) => !want_union && !c.incomplete && c.name.as_deref() == Some(bare),
            Type::Union(c) => !want_struct && !c.incomplete && c.name.as_deref() == Some(bare),
            Type::Typedef { name: n, .. } | Type::Base { name: n, .. } => !want_struct && !want_union && n == bare,
            _ => false,
        };
        ok.then_some(i as TypeId)
    })
}

/// The hint key of the word at `layout_path` (`kv_node.ctx`, `last_set`, `tab[3].u`) in an
/// object whose hints are named from `root` (a global's name, or its type's tag).
pub fn key(root: &str, layout_path: &str) -> String {
    normalize(&format!("{root}{}", crate::trace::field_suffix(layout_path)))
}

impl Hints {
    /// One build's hints, about its own memory.
    pub fn of(prog: &Program) -> Hints {
        let mut h = Hints::default();
        h.read(prog, &prog.hints, Origin::Old, "the program");
        h
    }

    /// The hints that describe the old version's memory in an update from `old` to `new`:
    /// the old build's and the new build's (a developer may annotate a word in the build
    /// that needs it, and the place it names exists by that name in the old build too),
    /// types resolved in the old build. Where both builds annotate the same place
    /// differently, the new build's hint wins (and a warning says so).
    pub fn of_builds(old: &Program, new: &Program) -> Hints {
        let mut h = Hints::default();
        h.read(old, &old.hints, Origin::Old, "the old build");
        let mut n = Hints::default();
        n.read(old, &new.hints, Origin::New, "the old build, whose memory it describes");
        h.unresolved.append(&mut n.unresolved);
        for (k, (text, _)) in n.written {
            let same = match (n.points_to.get(&k), h.points_to.get(&k)) {
                (Some(a), Some(b)) => a == b,
                (None, None) => n.opaque.contains(&k) && h.opaque.contains(&k),
                _ => false,
            };
            let origin = match h.written.get(&k) {
                None => Origin::New,
                Some(_) if same => Origin::Both,
                Some((was, _)) => {
                    h.unresolved.push(format!("{was} (old build) is overridden by {text} (new build)"));
                    Origin::New
                }
            };
            h.points_to.remove(&k);
            h.opaque.remove(&k);
            match n.points_to.get(&k) {
                Some(&ty) => {
                    h.points_to.insert(k.clone(), ty);
                }
                None => {
                    h.opaque.insert(k.clone());
                }
            }
            h.written.insert(k, (text, origin));
        }
        h
    }

    /// Parse `raw` hints of one build, types resolved in `prog` (`in_what` names it in
    /// messages).
    fn read(&mut self, prog: &Program, raw: &[String], origin: Origin, in_what: &str) {
        for raw in raw {
            if let Some(rest) = raw.strip_prefix("points_to ") {
                match rest.split_once('=') {
                    Some((w, t)) => match resolve(prog, t) {
                        Some(ty) => {
                            let k = normalize(w);
                            self.opaque.remove(&k);
                            self.points_to.insert(k.clone(), ty);
                            self.written.insert(k, (format!("MCR_POINTS_TO({:?}, {:?})", w.trim(), t.trim()), origin));
                        }
                        None => self.unresolved.push(format!("{raw}: no type {t:?} in {in_what}")),
                    },
                    None => self.unresolved.push(format!("{raw}: expected WHERE=TYPE")),
                }
            } else if let Some(w) = raw.strip_prefix("opaque ") {
                let k = normalize(w);
                self.points_to.remove(&k);
                self.opaque.insert(k.clone());
                self.written.insert(k, (format!("MCR_OPAQUE({:?})", w.trim()), origin));
            } else if raw.starts_with("handler ") || raw.starts_with("resume ") || raw.starts_with("respawn ") {
                // Registrations of code, not hints about memory: the update reads them.
            } else {
                self.unresolved.push(format!("{raw}: unknown hint"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key, normalize, Hints, Origin};
    use mcr_typemodel::{Composite, Program, Type};

    fn program(hints: &[&str]) -> Program {
        let mut p = Program::empty("/x".into());
        p.has_debug_info = true;
        p.types.push(Type::Struct(Composite { name: Some("kv_node".into()), size: 8, members: vec![], incomplete: false }));
        p.hints = hints.iter().map(|h| h.to_string()).collect();
        p
    }

    #[test]
    fn an_update_reads_both_builds_hints_the_new_build_winning() {
        let old = program(&["points_to a=struct kv_node", "opaque b", "opaque same"]);
        let new = program(&[
            "points_to b=struct kv_node",
            "opaque c",
            "opaque same",
            "handler struct kv_node",
            "resume resume_sessions",
            "points_to d=struct nothere",
        ]);
        let h = Hints::of_builds(&old, &new);
        assert_eq!(h.points_to.get("a"), Some(&0));
        assert_eq!(h.written["a"], ("MCR_POINTS_TO(\"a\", \"struct kv_node\")".to_string(), Origin::Old));
        assert_eq!(h.points_to.get("b"), Some(&0), "the new build's hint wins");
        assert!(!h.opaque.contains("b"));
        assert_eq!(h.written["b"].1, Origin::New);
        assert!(h.opaque.contains("c") && h.written["c"].1 == Origin::New);
        assert_eq!(h.written["same"].1, Origin::Both);
        assert_eq!(h.unresolved.len(), 2, "{:?}", h.unresolved);
        assert!(h.unresolved.iter().any(|u| u.contains("struct nothere") && u.contains("old build")), "{:?}", h.unresolved);
        assert!(h.unresolved.iter().any(|u| u.contains("MCR_OPAQUE(\"b\")") && u.contains("overridden")), "{:?}", h.unresolved);
        // The old build alone, as before.
        let only = Hints::of(&old);
        assert!(only.opaque.contains("b") && only.points_to.len() == 1 && only.unresolved.is_empty());
    }

    #[test]
    fn hint_keys_are_the_layout_path_under_the_root() {
        assert_eq!(key("last_set", "<anonymous>"), "last_set");
        assert_eq!(key("kv_node", "kv_node.ctx"), "kv_node.ctx");
        assert_eq!(key("tab", "tab[3].u"), "tab.u");
    }

    #[test]
    fn paths_normalize_the_way_hints_are_written() {
        assert_eq!(normalize("struct conn.ctx"), "conn.ctx");
        assert_eq!(normalize("conn.ctx"), "conn.ctx");
        assert_eq!(normalize("kvd.c:last_set"), "last_set");
        assert_eq!(normalize("last_set"), "last_set");
        assert_eq!(normalize("table[12].next"), "table.next");
        assert_eq!(normalize("kvd.c:tab[3][4].u"), "tab.u");
        assert_eq!(normalize("kvd.c:main.counter"), "main.counter");
    }
}
