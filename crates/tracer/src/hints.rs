//! The annotations of `include/mcr.h` (`MCR_POINTS_TO`, `MCR_OPAQUE`), read from the old
//! binary's `mcr_hints` section by the type model, matched against layout paths.

use mcr_typemodel::{Program, Type, TypeId};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Hints {
    /// Normalized path → the old program's type the word points to.
    pub points_to: HashMap<String, TypeId>,
    pub opaque: HashSet<String>,
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

impl Hints {
    pub fn of(prog: &Program) -> Hints {
        let mut h = Hints::default();
        for raw in &prog.hints {
            if let Some(rest) = raw.strip_prefix("points_to ") {
                match rest.split_once('=') {
                    Some((w, t)) => match resolve(prog, t) {
                        Some(ty) => {
                            h.points_to.insert(normalize(w), ty);
                        }
                        None => h.unresolved.push(format!("{raw}: no type {t:?} in the program")),
                    },
                    None => h.unresolved.push(format!("{raw}: expected WHERE=TYPE")),
                }
            } else if let Some(w) = raw.strip_prefix("opaque ") {
                h.opaque.insert(normalize(w));
            } else if raw.starts_with("handler ") || raw.starts_with("resume ") || raw.starts_with("respawn ") {
                // Registrations of code, not hints about memory: the update reads them.
            } else {
                h.unresolved.push(format!("{raw}: unknown hint"));
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

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
