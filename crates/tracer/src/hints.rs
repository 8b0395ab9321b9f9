//! The annotations of `include/mcr.h` (`MCR_POINTS_TO`, `MCR_OPAQUE`, `MCR_TAGGED`), read from the
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

/// `MCR_TAGGED(where, bits)`: the word is a pointer whose low `bits` bits are a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// 1–4.
    pub bits: u8,
    /// As the program wrote it (`MCR_TAGGED("ev.data", 1)`), and the build it came from.
    pub written: String,
    pub origin: Origin,
}

/// The tag widths `MCR_TAGGED` accepts.
pub const TAG_BITS: std::ops::RangeInclusive<u8> = 1..=4;

impl Tagged {
    fn mask(&self) -> u64 {
        (1u64 << self.bits.clamp(*TAG_BITS.start(), *TAG_BITS.end())) - 1
    }

    /// A tagged word → (the pointer, the tag).
    pub fn split(&self, word: u64) -> (u64, u64) {
        (word & !self.mask(), word & self.mask())
    }

    /// The relocated pointer with the tag put back; `None` when the new address itself
    /// has a low bit set (it cannot carry the tag).
    pub fn join(&self, addr: u64, tag: u64) -> Option<u64> {
        (addr & self.mask() == 0).then_some(addr | (tag & self.mask()))
    }
}

/// For a report: a note when `word` is not the start of the live block at `block` but
/// would be without its low bits (a tagged pointer, perhaps); empty otherwise.
pub fn tag_note(word: u64, block: u64) -> &'static str {
    let low = (1u64 << TAG_BITS.end()) - 1;
    if word != block && word & !low == block {
        "; without its low bits it is the start of that block: if they are a tag, annotate the word with \
         MCR_TAGGED from mcr.h"
    } else {
        ""
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
    /// Normalized path → its tag (`MCR_TAGGED`); independent of the other two (a tagged
    /// integer also needs `MCR_POINTS_TO` to be followed as a typed pointer).
    pub tagged: HashMap<String, Tagged>,
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
    normalize(&format!("{root}{}", field_suffix(layout_path)))
}

/// A layout path without its root (`kv_node.next` → `.next`, `table[3].u` → `[3].u`):
/// what follows the name of the object, to put another name in front.
pub(crate) fn field_suffix(path: &str) -> &str {
    path.find(['.', '[']).map_or("", |i| &path[i..])
}

/// `MCR_ADD_OBJ_HANDLER` registrations of the new version (its `handler WHAT` hints):
/// normalized WHAT → as written.
pub(crate) fn object_handlers(new: &Program) -> HashMap<String, String> {
    new.hints.iter().filter_map(|h| h.strip_prefix("handler ")).map(|w| (normalize(w), w.to_string())).collect()
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
        for (k, mut t) in std::mem::take(&mut n.tagged) {
            match h.tagged.get(&k) {
                Some(was) if was.bits == t.bits => t.origin = Origin::Both,
                Some(was) => {
                    h.unresolved.push(format!("{} (old build) is overridden by {} (new build)", was.written, t.written))
                }
                None => {}
            }
            h.tagged.insert(k, t);
        }
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
        for (k, t) in &h.tagged {
            if h.opaque.contains(k) {
                h.unresolved.push(format!(
                    "{}: the same word is MCR_OPAQUE, copied as bytes (the tag changes nothing)",
                    t.written
                ));
            }
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
            } else if let Some(rest) = raw.strip_prefix("tagged ") {
                let parsed = rest.rsplit_once('=').and_then(|(w, b)| {
                    let bits = b.trim().parse::<u8>().ok().filter(|b| TAG_BITS.contains(b))?;
                    (!w.trim().is_empty()).then_some((w.trim(), bits))
                });
                match parsed {
                    Some((w, bits)) => {
                        let written = format!("MCR_TAGGED({w:?}, {bits})");
                        self.tagged.insert(normalize(w), Tagged { bits, written, origin });
                    }
                    None => self.unresolved.push(format!("{raw}: expected WHERE=BITS, BITS 1 to 4")),
                }
            } else if raw.starts_with("handler ")
                || raw.starts_with("resume ")
                || raw.starts_with("respawn ")
                || raw.starts_with("idle ")
            {
                // Registrations of code, not hints about memory: the update reads them.
            } else {
                self.unresolved.push(format!("{raw}: unknown hint"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key, normalize, tag_note, Hints, Origin, Tagged};
    use mcr_typemodel::{Composite, Program, Type};

    fn program(hints: &[&str]) -> Program {
        let mut p = Program::empty("/x".into());
        p.has_debug_info = true;
        p.types.push(Type::Struct(Composite {
            name: Some("kv_node".into()),
            size: 8,
            members: vec![],
            incomplete: false,
        }));
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
        assert!(
            h.unresolved.iter().any(|u| u.contains("struct nothere") && u.contains("old build")),
            "{:?}",
            h.unresolved
        );
        assert!(
            h.unresolved.iter().any(|u| u.contains("MCR_OPAQUE(\"b\")") && u.contains("overridden")),
            "{:?}",
            h.unresolved
        );
        // The old build alone, as before.
        let only = Hints::of(&old);
        assert!(only.opaque.contains("b") && only.points_to.len() == 1 && only.unresolved.is_empty());
    }

    #[test]
    fn tagged_hints_parse_with_their_width_and_merge_across_builds() {
        let old = program(&["tagged last_tagged=1", "tagged struct conn.ev=2", "tagged x=3"]);
        let new = program(&[
            "tagged conn.ev=2",
            "tagged x=1",
            "points_to word=struct kv_node",
            "tagged word=2",
            "tagged bad=0",
            "tagged bad2=5",
            "tagged bad3=one",
            "tagged =1",
            "opaque cookie",
            "tagged cookie=1",
        ]);
        let h = Hints::of_builds(&old, &new);
        assert_eq!(
            h.tagged["last_tagged"],
            Tagged { bits: 1, written: "MCR_TAGGED(\"last_tagged\", 1)".into(), origin: Origin::Old }
        );
        assert_eq!(
            (h.tagged["conn.ev"].bits, h.tagged["conn.ev"].origin),
            (2, Origin::Both),
            "struct prefix normalized"
        );
        assert_eq!((h.tagged["x"].bits, h.tagged["x"].origin), (1, Origin::New), "the new build wins");
        assert_eq!(h.tagged["word"].bits, 2);
        assert_eq!(h.points_to.get("word"), Some(&0), "a tag and a type for the same word coexist");
        assert!(!h.tagged.contains_key("bad") && !h.tagged.contains_key("bad2") && !h.tagged.contains_key("bad3"));
        let bad: Vec<_> = h.unresolved.iter().filter(|u| u.contains("expected WHERE=BITS")).collect();
        assert_eq!(bad.len(), 4, "{:?}", h.unresolved);
        assert!(
            h.unresolved.iter().any(|u| u.contains("MCR_TAGGED(\"x\", 3)") && u.contains("overridden")),
            "{:?}",
            h.unresolved
        );
        assert!(
            h.unresolved.iter().any(|u| u.contains("MCR_TAGGED(\"cookie\", 1)") && u.contains("MCR_OPAQUE")),
            "{:?}",
            h.unresolved
        );
    }

    #[test]
    fn tags_are_masked_off_and_put_back_on_the_relocated_pointer() {
        let t = |bits| Tagged { bits, written: String::new(), origin: Origin::Old };
        assert_eq!(t(1).split(0x5555_0000_1231), (0x5555_0000_1230, 1));
        assert_eq!(t(1).split(0x5555_0000_1230), (0x5555_0000_1230, 0), "an untagged value stays");
        assert_eq!(t(2).split(0x7000_0003), (0x7000_0000, 3));
        assert_eq!(t(4).split(0x7000_001f), (0x7000_0010, 0xf));
        assert_eq!(t(1).join(0x9990, 1), Some(0x9991));
        assert_eq!(t(2).join(0x9990, 2), Some(0x9992));
        assert_eq!(t(4).join(0x9990, 0xf), Some(0x999f));
        assert_eq!(t(1).join(0x9991, 1), None, "the new address has a low bit set: it cannot carry the tag");
        assert_eq!(t(2).join(0x9996, 1), None);
        assert_eq!(t(2).join(0x9994, 1), Some(0x9995));
        // Round trip through a move.
        let (p, tag) = t(2).split(0x1000_0042);
        assert_eq!(t(2).join(p - 0x1000_0000 + 0x2000_0000, tag), Some(0x2000_0042));
        // Report notes: only for a word that is a block's start but for its low bits.
        assert!(tag_note(0x1001, 0x1000).contains("MCR_TAGGED"));
        assert!(tag_note(0x100f, 0x1000).contains("MCR_TAGGED"));
        assert_eq!(tag_note(0x1000, 0x1000), "");
        assert_eq!(tag_note(0x1010, 0x1000), "");
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
