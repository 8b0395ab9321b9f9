//! What changed between two builds, and what mcr can do about each change.
//!
//! Globals are matched by name (statics also by compilation unit and, for
//! function-scope statics, function); named types (`struct kv_node`, `enum state`,
//! typedefs) by name. Each change is classified by the rules of [`crate::transform`]:
//! [`Class::Automatic`] when mcr transforms it by itself, [`Class::NeedsHandler`] when
//! an object of that type that is live at update time is a conflict unless a handler or
//! hint resolves it.

use crate::model::*;
use crate::transform::{analyze, same_type, FieldRule, Rule};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// How an update deals with a change.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Unchanged,
    /// mcr transforms it without help.
    Automatic,
    /// A live object affected by it is a conflict unless `MCR_ADD_OBJ_HANDLER` (or a
    /// hint) resolves it.
    NeedsHandler,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One build, as the diff saw it.
#[derive(Serialize, Clone, Debug)]
pub struct Build {
    pub path: String,
    pub build_id: Option<String>,
    pub has_debug_info: bool,
}

/// One field's change inside a type (or a global's type).
#[derive(Serialize, Clone, Debug)]
pub struct FieldChange {
    /// `kv_node.hits`
    pub path: String,
    pub class: Class,
    /// The rule that transforms it (absent for a problem).
    pub rule: Option<Rule>,
    /// Why it cannot be transformed automatically.
    pub problem: Option<String>,
    pub explanation: String,
}

/// A named type that was added, removed or changed.
#[derive(Serialize, Clone, Debug)]
pub struct TypeChange {
    /// `struct kv_node`, `enum state`, `pid_t`
    pub name: String,
    pub change: Change,
    pub class: Class,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// Fields that changed relative order (listed on the new side).
    pub reordered: Vec<String>,
    pub fields: Vec<FieldChange>,
    /// False when no typed path from a global reaches objects of this type in the old
    /// version: they can only be found through `void *`, unions, char buffers or
    /// stacks, where mcr cannot tell their type.
    pub reached_from_globals: bool,
    /// When no typed path reaches its objects but an `MCR_POINTS_TO` hint does: that hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached_through_hint: Option<String>,
    pub explanation: String,
}

/// A global or static that was added, removed or changed.
#[derive(Serialize, Clone, Debug)]
pub struct GlobalChange {
    /// `stats`; `kvd.c:table` for a static; `kvd.c:main.opts` for a function static.
    pub name: String,
    pub change: Change,
    pub class: Class,
    pub old_type: Option<String>,
    pub new_type: Option<String>,
    pub fields: Vec<FieldChange>,
    /// Changed named types reachable from this global through typed pointers.
    pub changed_types_reached: Vec<String>,
    pub explanation: String,
}

/// The difference between two builds.
#[derive(Serialize, Clone, Debug)]
pub struct Diff {
    pub old: Build,
    pub new: Build,
    pub globals: Vec<GlobalChange>,
    pub types: Vec<TypeChange>,
    /// Words DWARF cannot type (a union, a `void *`, an integer) that may hold pointers to
    /// objects whose type changed (by their union members, or by a hint), and what the
    /// hints in mcr.h make of them.
    pub opaque: Vec<OpaqueChange>,
    pub warnings: Vec<String>,
    /// The worst class of any change: `Automatic` (or `Unchanged`) means an update is
    /// expected to need no handler.
    pub verdict: Class,
    /// How the new build takes over sessions the old one serves from threads' stacks and
    /// per-connection processes.
    pub sessions: Sessions,
}

/// The new build's `MCR_ADD_RESUME_HANDLER` and `MCR_ADD_RESPAWN_HANDLER` (function names).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sessions {
    pub resume_handlers: Vec<String>,
    pub respawn_handlers: Vec<String>,
}

impl Sessions {
    pub fn of(new: &Program) -> Sessions {
        Sessions::from_hints(&new.hints)
    }

    /// From a build's `mcr_hints` strings (see [`crate::read_hints`]).
    pub fn from_hints(hints: &[String]) -> Sessions {
        let named =
            |prefix: &str| hints.iter().filter_map(|h| h.strip_prefix(prefix)).map(|f| f.trim().to_string()).collect();
        Sessions { resume_handlers: named("resume "), respawn_handlers: named("respawn ") }
    }

    /// Connections threads serve from their stacks can move.
    pub fn resumes(&self) -> bool {
        !self.resume_handlers.is_empty()
    }

    /// Per-connection processes can be recreated (and then resumed).
    pub fn respawns(&self) -> bool {
        self.resumes() && !self.respawn_handlers.is_empty()
    }
}

/// What the `include/mcr.h` hints of the two builds mean for the old version's memory:
/// the input of [`diff_with`], worked out (with the hint reader and the walk `mcr update`
/// makes) by `mcr_tracer::annotations`.
#[derive(Clone, Debug, Default)]
pub struct Annotations {
    /// Opaque words the walk from the globals reaches: every hinted one, and every union
    /// that has pointer members.
    pub words: Vec<Word>,
    /// Named types of the old build (display names) that only hints reach (no typed path
    /// from a global does), each with the first hint that reaches it, as written.
    pub hinted_types: BTreeMap<String, String>,
    /// Hints that were ignored or that reach nothing.
    pub warnings: Vec<String>,
}

/// One opaque word (see [`Annotations`]).
#[derive(Clone, Debug)]
pub struct Word {
    /// `kvd.c:last_set`, `conn.ctx`
    pub path: String,
    /// The global that holds it (display name); `None` for a field of heap objects.
    pub global: Option<String>,
    /// The WHERE an mcr.h hint for it names: `last_set`, `conn.ctx`.
    pub hint_where: String,
    pub reason: OpaqueReason,
    /// For a union: the types its pointer members point to (old build, display names;
    /// `void` for a `void *` member).
    pub candidates: Vec<String>,
    pub hint: Option<WordHint>,
}

/// The hint that covers a [`Word`].
#[derive(Clone, Debug)]
pub enum WordHint {
    /// `MCR_POINTS_TO`: followed as a pointer to `ty` (old build's display name).
    PointsTo { ty: String, written: String, from: String },
    /// `MCR_OPAQUE`: copied as bytes.
    Opaque { written: String, from: String },
}

/// What the update does with one opaque word.
#[derive(Serialize, Clone, Debug)]
pub struct OpaqueChange {
    /// `kvd.c:last_set`, `conn.ctx`
    pub path: String,
    pub reason: OpaqueReason,
    pub class: Class,
    /// The hint that decides it, as written, and the build it is in.
    pub hint: Option<String>,
    /// The types it may point to (a union's pointer members), or the hinted one.
    pub points_to: Vec<String>,
    /// Of those, the ones that changed between the builds.
    pub changed: Vec<String>,
    /// The annotation that resolves it, when it needs one.
    pub resolve_with: Option<String>,
    pub explanation: String,
}

impl Diff {
    /// True when an update is expected to transfer all state without a handler.
    pub fn is_automatic(&self) -> bool {
        self.verdict <= Class::Automatic
    }

    /// How many changes need a handler or a hint: types, globals, and the words DWARF
    /// cannot type, except words inside a global that already counts. Zero while the
    /// verdict is not automatic means a build has no debug info.
    pub fn needing_handlers(&self) -> usize {
        let in_globals = |path: &str| {
            self.globals.iter().any(|g| g.class == Class::NeedsHandler && path.starts_with(g.name.as_str()))
        };
        self.types.iter().filter(|t| t.class == Class::NeedsHandler).count()
            + self.globals.iter().filter(|g| g.class == Class::NeedsHandler).count()
            + self.opaque.iter().filter(|w| w.class == Class::NeedsHandler && !in_globals(&w.path)).count()
    }
}

fn build(p: &Program) -> Build {
    Build { path: p.path.display().to_string(), build_id: p.build_id.clone(), has_debug_info: p.has_debug_info }
}

/// Compares two builds of a program.
pub fn diff(old: &Program, new: &Program) -> Diff {
    diff_with(old, new, &Annotations::default())
}

/// Compares two builds of a program, with what their mcr.h hints say about the old
/// version's memory.
pub fn diff_with(old: &Program, new: &Program, notes: &Annotations) -> Diff {
    let mut d = Diff {
        old: build(old),
        new: build(new),
        globals: vec![],
        types: vec![],
        opaque: vec![],
        warnings: vec![],
        verdict: Class::Unchanged,
        sessions: Sessions::of(new),
    };
    for (p, which) in [(old, "old"), (new, "new")] {
        if !p.has_debug_info {
            d.warnings.push(format!(
                "the {which} build {} has no DWARF (build with -g): mcr cannot see its types, so an update \
                 treats all state as immutable and non-updatable",
                p.path.display()
            ));
            d.verdict = Class::NeedsHandler;
        }
        for w in p.warnings.iter().filter(|_| p.has_debug_info) {
            d.warnings.push(format!("{which}: {w}"));
        }
    }
    if !old.has_debug_info || !new.has_debug_info {
        return d;
    }
    d.warnings.extend(notes.warnings.iter().cloned());
    d.types = type_changes(old, new, &notes.hinted_types);
    let changed: HashSet<String> =
        d.types.iter().filter(|t| t.change == Change::Changed).map(|t| t.name.clone()).collect();
    d.globals = global_changes(old, new, &changed);
    apply_handlers(new, &mut d);
    apply_words(&notes.words, &changed, &mut d);
    let worst = d
        .types
        .iter()
        .map(|t| t.class)
        .chain(d.globals.iter().map(|g| g.class))
        .chain(d.opaque.iter().map(|w| w.class))
        .max();
    d.verdict = d.verdict.max(worst.unwrap_or(Class::Unchanged));
    d
}

/// The new build's `MCR_ADD_OBJ_HANDLER(WHAT, fn)` registrations (its `handler WHAT`
/// hints) take over the types and globals they name: what mcr alone cannot transform,
/// or would drop, the handler deals with.
fn apply_handlers(new: &Program, d: &mut Diff) {
    let norm = |s: &str| s.trim().trim_start_matches("struct ").trim_start_matches("union ").trim().to_string();
    let handled: HashSet<String> = new.hints.iter().filter_map(|h| h.strip_prefix("handler ")).map(norm).collect();
    if handled.is_empty() {
        return;
    }
    let note = " The new build has an MCR_ADD_OBJ_HANDLER for it: after mcr's own transformation it runs on every \
                object, with the old bytes, so fields mcr drops or cannot convert are its to carry over.";
    for t in d.types.iter_mut().filter(|t| t.change == Change::Changed && handled.contains(&norm(&t.name))) {
        t.class = t.class.min(Class::Automatic);
        if !t.explanation.ends_with('.') {
            t.explanation.push('.');
        }
        t.explanation.push_str(note);
    }
    for g in d.globals.iter_mut().filter(|g| g.change == Change::Changed) {
        let plain = g.name.rsplit(':').next().unwrap_or(&g.name).to_string();
        if handled.contains(&plain) {
            g.class = g.class.min(Class::Automatic);
            if !g.explanation.ends_with('.') {
                g.explanation.push('.');
            }
            g.explanation.push_str(note);
        }
    }
}

fn reason_words(r: OpaqueReason) -> &'static str {
    match r {
        OpaqueReason::Union => "a union",
        OpaqueReason::VoidPointer => "a void *",
        OpaqueReason::PointerSizedInteger => "a pointer-sized integer",
        OpaqueReason::CharArray => "a char array",
        OpaqueReason::Unknown => "memory of unknown type",
    }
}

/// What the update does with each opaque word, as `mcr update`'s tracer does it: a hinted
/// word is followed (or copied as bytes); a union that can hold a pointer to a type that
/// changed, without a hint, is a conflict if it holds a live heap address at update time.
/// A changed global that holds such a word says so too.
fn apply_words(words: &[Word], changed: &HashSet<String>, d: &mut Diff) {
    for w in words {
        let what = reason_words(w.reason);
        // (class, hint, points to, resolved by, explanation, the same said briefly)
        let (class, hint, points_to, resolve_with, explanation, short) = match &w.hint {
            Some(WordHint::PointsTo { ty, written, from }) => {
                let h = format!("{written} in {from}");
                let (e, short) = if changed.contains(ty) {
                    (
                        format!(
                            "{what}, followed as a {ty} * ({h}): the {ty} it points to changed; transformed \
                             automatically, and the word relocated"
                        ),
                        format!("{what}, transformed automatically ({h})"),
                    )
                } else {
                    (
                        format!("{what}, followed as a {ty} * ({h}): relocated to the block it points to"),
                        format!("{what}, followed as a {ty} * ({h})"),
                    )
                };
                (Class::Automatic, Some(h), vec![ty.clone()], None, e, short)
            }
            Some(WordHint::Opaque { written, from }) => {
                let h = format!("{written} in {from}");
                let e = format!("{what}, copied as bytes ({h}): mcr leaves its value as it is");
                let short = format!("{what}, copied as bytes ({h})");
                (Class::Automatic, Some(h), w.candidates.clone(), None, e, short)
            }
            None => {
                let Some(target) = w.candidates.iter().find(|c| changed.contains(*c)) else { continue };
                let fix = format!("MCR_POINTS_TO({:?}, {:?})", w.hint_where, target);
                let e = format!(
                    "{what} that can hold a {} *, and {target} changed: mcr cannot tell whether it holds a pointer, \
                     so it can neither transform the block nor leave it; needs a hint: a conflict if it holds the \
                     address of a live heap block at update time, unless {fix} (or MCR_OPAQUE({:?}) if it never \
                     holds a pointer mcr must update) is added to the new build",
                    w.candidates.join(" * or a "),
                    w.hint_where
                );
                let short = format!(
                    "{what} that can hold a {target} *: needs a hint ({fix}), a conflict if it holds a live heap \
                     address at update time"
                );
                (Class::NeedsHandler, None, w.candidates.clone(), Some(fix), e, short)
            }
        };
        let now_changed: Vec<String> = points_to.iter().filter(|t| changed.contains(*t)).cloned().collect();
        if now_changed.is_empty() {
            // Nothing it may point to changed: the update treats it as it did before.
            continue;
        }
        if let Some(g) = w.global.as_ref().and_then(|name| d.globals.iter_mut().find(|g| &g.name == name)) {
            g.class = g.class.max(class);
            g.explanation.push_str(&format!("; {}: {short}", w.path));
        }
        d.opaque.push(OpaqueChange {
            path: w.path.clone(),
            reason: w.reason,
            class,
            hint,
            points_to,
            changed: now_changed,
            resolve_with,
            explanation,
        });
    }
}

/// Key matching a global across versions.
fn gkey(g: &Global) -> (String, Option<String>, Option<String>) {
    (g.name.clone(), g.is_static.then(|| g.unit.clone()), g.function.clone())
}

fn global_changes(old: &Program, new: &Program, changed: &HashSet<String>) -> Vec<GlobalChange> {
    let mut out = Vec::new();
    // mcr.h's hint strings (`mcr_hint_N` in the mcr_hints section) are annotations, not state.
    let state = |g: &&Global| !g.name.starts_with("mcr_hint_");
    let olds: BTreeMap<_, &Global> = old.globals.iter().filter(state).map(|g| (gkey(g), g)).collect();
    let news: BTreeMap<_, &Global> = new.globals.iter().filter(state).map(|g| (gkey(g), g)).collect();
    for (k, og) in &olds {
        let name = og.display_name();
        let Some(ng) = news.get(k) else {
            out.push(GlobalChange {
                explanation: format!("{name} was removed: its data is dropped"),
                name,
                change: Change::Removed,
                class: Class::Automatic,
                old_type: Some(old.type_name(og.ty)),
                new_type: None,
                fields: vec![],
                changed_types_reached: vec![],
            });
            continue;
        };
        if same_type(old, og.ty, new, ng.ty) && og.is_tls() == ng.is_tls() {
            continue;
        }
        let (ot, nt) = (old.type_name(og.ty), new.type_name(ng.ty));
        let reached: Vec<String> = {
            let mut r: Vec<String> =
                reachable_named(old, &[og.ty]).into_iter().filter(|n| changed.contains(n)).collect();
            r.sort();
            r
        };
        let (plan, problems) = analyze(old, og.ty, new, ng.ty, &og.name);
        let fields = field_changes(&plan.rules, &problems);
        let mut class = if problems.is_empty() { Class::Automatic } else { Class::NeedsHandler };
        let mut explanation = if !problems.is_empty() {
            format!(
                "{name} changed type from {ot} to {nt}, which mcr cannot transform: a handler \
                 (MCR_ADD_OBJ_HANDLER({}, fn)) must convert it",
                og.name
            )
        } else if ot != nt {
            format!("{name} changed type from {ot} to {nt}: transformed automatically")
        } else if !fields.is_empty() {
            format!("{name} ({nt}) changed layout: transformed automatically, field by field")
        } else {
            format!(
                "{name} ({nt}) keeps its type, but objects it points to changed: they are reallocated and transformed"
            )
        };
        if og.is_tls() != ng.is_tls() {
            class = Class::NeedsHandler;
            explanation = format!("{name} changed between thread-local and global storage: needs a handler");
        }
        if !reached.is_empty() {
            explanation.push_str(&format!(" (changed types reached from it: {})", reached.join(", ")));
        }
        out.push(GlobalChange {
            name,
            change: Change::Changed,
            class,
            old_type: Some(ot),
            new_type: Some(nt),
            fields,
            changed_types_reached: reached,
            explanation,
        });
    }
    for (k, ng) in &news {
        if olds.contains_key(k) {
            continue;
        }
        let name = ng.display_name();
        out.push(GlobalChange {
            explanation: format!("{name} is new: the new version's startup initializes it"),
            name,
            change: Change::Added,
            class: Class::Automatic,
            old_type: None,
            new_type: Some(new.type_name(ng.ty)),
            fields: vec![],
            changed_types_reached: vec![],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn field_changes(rules: &[FieldRule], problems: &[crate::transform::Problem]) -> Vec<FieldChange> {
    let mut v: Vec<FieldChange> = rules
        .iter()
        .map(|r| FieldChange {
            path: r.path.clone(),
            class: Class::Automatic,
            rule: Some(r.rule.clone()),
            problem: None,
            explanation: explain_rule(&r.rule),
        })
        .collect();
    v.extend(problems.iter().map(|p| FieldChange {
        path: p.path.clone(),
        class: Class::NeedsHandler,
        rule: None,
        problem: Some(p.reason.clone()),
        explanation: format!("{}: needs a handler if an object holding it is live at update time", p.reason),
    }));
    v
}

/// One sentence for a rule.
pub fn explain_rule(r: &Rule) -> String {
    match r {
        Rule::Copied { old_offset, new_offset } => {
            format!("moved from offset {old_offset} to {new_offset}: copied unchanged")
        }
        Rule::IntConverted { from, to, checked: false, old_offset, new_offset } => {
            let mv = if old_offset != new_offset { format!(", moved from offset {old_offset} to {new_offset}") } else { String::new() };
            format!("{from} becomes {to}{mv}: converted automatically, every old value fits")
        }
        Rule::IntConverted { from, to, checked: true, old_offset, new_offset } => {
            let mv = if old_offset != new_offset { format!(", moved from offset {old_offset} to {new_offset}") } else { String::new() };
            format!(
                "{from} becomes {to}{mv}: converted with a run-time range check; a value that does not fit is a conflict"
            )
        }
        Rule::FloatConverted { from, to, checked } => {
            if *checked {
                format!("{from} becomes {to}: converted; a value the new type cannot hold exactly is a conflict")
            } else {
                format!("{from} becomes {to}: converted exactly")
            }
        }
        Rule::EnumByName { removed, added, renumbered } => {
            let mut s = String::from("enum values mapped by enumerator name");
            if !renumbered.is_empty() {
                s.push_str(&format!("; renumbered: {}", renumbered.join(", ")));
            }
            if !added.is_empty() {
                s.push_str(&format!("; added: {}", added.join(", ")));
            }
            if !removed.is_empty() {
                s.push_str(&format!(
                    "; removed: {} (an object holding a removed enumerator at update time is a conflict)",
                    removed.join(", ")
                ));
            }
            s
        }
        Rule::PointerRelocated { function, old_pointee, new_pointee, old_offset, new_offset } => {
            let mv = if old_offset != new_offset { format!(", moved from offset {old_offset} to {new_offset}") } else { String::new() };
            if *function {
                format!("function pointer{mv}: relocated by symbol name")
            } else if old_pointee == new_pointee {
                format!("pointer to {new_pointee}{mv}: relocated to the transferred object")
            } else {
                format!("pointer to {old_pointee} becomes pointer to {new_pointee}{mv}: relocated, the pointee transformed")
            }
        }
        Rule::ArrayResized { old_count, new_count } if new_count > old_count => {
            format!("array grows from {old_count} to {new_count} elements: the new ones are zeroed")
        }
        Rule::ArrayResized { old_count, new_count } => format!(
            "array shrinks from {old_count} to {new_count} elements: the dropped ones must be zero, else it is a conflict"
        ),
        Rule::Added { ty, offset } => format!("new field ({ty}, offset {offset}): zeroed in transferred objects"),
        Rule::Removed { ty } => format!("removed field ({ty}): its data is dropped"),
    }
}

/// Composite and enum definitions by display name (`struct kv_node`); typedefs of
/// anonymous aggregates name them.
fn defs(p: &Program) -> BTreeMap<String, Vec<TypeId>> {
    p.named_types().into_iter().collect()
}

fn kind_prefix(p: &Program, id: TypeId) -> &'static str {
    match p.ty(id) {
        Type::Struct(_) => "struct",
        Type::Union(_) => "union",
        Type::Enum { .. } => "enum",
        _ => "typedef",
    }
}

fn type_changes(old: &Program, new: &Program, hinted: &BTreeMap<String, String>) -> Vec<TypeChange> {
    let (od, nd) = (defs(old), defs(new));
    let reached = reachable_named(old, &old.globals.iter().map(|g| g.ty).collect::<Vec<_>>());
    let mut out = Vec::new();
    for (name, oids) in &od {
        let Some(nids) = nd.get(name) else {
            out.push(TypeChange {
                name: name.clone(),
                change: Change::Removed,
                class: Class::Automatic,
                old_size: old.size_of(oids[0]),
                new_size: None,
                reordered: vec![],
                fields: vec![],
                reached_from_globals: reached.contains(name),
                reached_through_hint: None,
                explanation: format!("{name} is gone from the new version: objects of it that are still reached through a changed field are dropped"),
            });
            continue;
        };
        // Several definitions under one name (different compilation units): pair them
        // in order; the usual case is one each.
        for (i, (&ot, &nt)) in oids.iter().zip(nids.iter()).enumerate() {
            if let Some(c) = compare_type(old, ot, new, nt, name, reached.contains(name), hinted.get(name)) {
                if i > 0 || oids.len() > 1 || nids.len() > 1 {
                    let mut c = c;
                    c.explanation.push_str(" (several definitions share this name; compared in order)");
                    out.push(c);
                } else {
                    out.push(c);
                }
            }
        }
    }
    for (name, nids) in &nd {
        if od.contains_key(name) {
            continue;
        }
        out.push(TypeChange {
            name: name.clone(),
            change: Change::Added,
            class: Class::Automatic,
            old_size: None,
            new_size: new.size_of(nids[0]),
            reordered: vec![],
            fields: vec![],
            reached_from_globals: false,
            reached_through_hint: None,
            explanation: format!("{name} is new: no old object has it"),
        });
    }
    out
}

fn compare_type(
    old: &Program,
    ot: TypeId,
    new: &Program,
    nt: TypeId,
    name: &str,
    reached: bool,
    hinted: Option<&String>,
) -> Option<TypeChange> {
    if same_type(old, ot, new, nt) {
        return None;
    }
    let root = crate::transform::root_name(new, nt);
    let (plan, problems) = analyze(old, ot, new, nt, &root);
    // Differences that are only deeper (a pointee changed) belong to that pointee.
    let layout_same = plan.rules.is_empty()
        && problems.is_empty()
        && old.size_of(ot) == new.size_of(nt)
        && kind_prefix(old, ot) == kind_prefix(new, nt);
    let typedef_retargeted = matches!((old.ty(ot), new.ty(nt)), (Type::Typedef { target: a, .. }, Type::Typedef { target: b, .. })
        if old.type_name(*a) != new.type_name(*b));
    if layout_same && !typedef_retargeted {
        return None;
    }
    let fields = field_changes(&plan.rules, &problems);
    let reordered = reordered_fields(old, ot, new, nt);
    let mut class = if problems.is_empty() { Class::Automatic } else { Class::NeedsHandler };
    let (os, ns) = (old.size_of(ot), new.size_of(nt));
    let size = match (os, ns) {
        (Some(a), Some(b)) if a != b => format!(" (size {a} -> {b} bytes)"),
        _ => String::new(),
    };
    let mut explanation = if problems.is_empty() {
        format!("{name} changed{size}: mcr transforms its objects automatically")
    } else {
        format!(
            "{name} changed{size} in a way mcr cannot transform: every live object of it needs a handler \
             (MCR_ADD_OBJ_HANDLER), else the update conflicts"
        )
    };
    if typedef_retargeted {
        explanation.push_str(&format!(
            "; now an alias of {} (was {})",
            new.type_name(new.strip(nt)),
            old.type_name(old.strip(ot))
        ));
    }
    if !reordered.is_empty() {
        let moves: Vec<String> = reordered
            .iter()
            .map(|(f, before)| match before {
                Some(b) => format!("{f} moved before {b}"),
                None => format!("{f} moved to the end"),
            })
            .collect();
        explanation.push_str(&format!("; field order changed: {}", moves.join(", ")));
    }
    let reached_through_hint = hinted.filter(|_| !reached).cloned();
    if let Some(h) = &reached_through_hint {
        explanation.push_str(&format!(
            "; no typed pointer from a global reaches its objects, but the hint {h} does: mcr follows it and \
             finds them with their type"
        ));
    } else if class == Class::Automatic && !reached {
        class = Class::NeedsHandler;
        explanation.push_str(
            "; but no typed pointer from a global reaches its objects, so mcr can find them only through \
             void *, unions, char buffers or stacks, where their type is unknown: a live one is a conflict \
             unless a hint or handler names its type",
        );
    }
    Some(TypeChange {
        name: name.to_string(),
        change: Change::Changed,
        class,
        old_size: os,
        new_size: ns,
        reordered: reordered.into_iter().map(|(f, _)| f).collect(),
        fields,
        reached_from_globals: reached,
        reached_through_hint,
        explanation,
    })
}

/// Fields whose order relative to the other common fields changed: the new-side fields
/// outside a longest common subsequence, each with the common field it now precedes.
fn reordered_fields(old: &Program, ot: TypeId, new: &Program, nt: TypeId) -> Vec<(String, Option<String>)> {
    let names = |p: &Program, t: TypeId| -> Vec<String> {
        match p.ty(p.strip(t)) {
            Type::Struct(c) => c.members.iter().filter_map(|m| m.name.clone()).collect(),
            _ => vec![],
        }
    };
    let (o, n) = (names(old, ot), names(new, nt));
    let o: Vec<&String> = o.iter().filter(|x| n.contains(x)).collect();
    let n: Vec<&String> = n.iter().filter(|x| o.contains(x)).collect();
    let (a, b) = (o.len(), n.len());
    let mut dp = vec![vec![0usize; b + 1]; a + 1];
    for i in (0..a).rev() {
        for j in (0..b).rev() {
            dp[i][j] = if o[i] == n[j] { dp[i + 1][j + 1] + 1 } else { dp[i + 1][j].max(dp[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut in_lcs = vec![false; b];
    while i < a && j < b {
        if o[i] == n[j] {
            in_lcs[j] = true;
            i += 1;
            j += 1;
        } else if dp[i + 1][j] > dp[i][j + 1] {
            i += 1;
        } else {
            // On a tie, call the new-side field the one that moved.
            j += 1;
        }
    }
    (0..b).filter(|&j| !in_lcs[j]).map(|j| (n[j].clone(), n.get(j + 1).map(|s| (*s).clone()))).collect()
}

/// Display names of the named types reachable from `roots` by typed paths (members,
/// array elements, typed pointers; not into unions or through `void *`).
pub fn reachable_named(p: &Program, roots: &[TypeId]) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut stack: Vec<TypeId> = roots.to_vec();
    while let Some(t) = stack.pop() {
        if !seen.insert(t) {
            continue;
        }
        match p.ty(t) {
            Type::Typedef { name, target } => {
                names.insert(name.clone());
                // An anonymous aggregate behind a typedef is named by it.
                stack.push(*target);
            }
            Type::Qualified { target, .. } => stack.push(*target),
            Type::Struct(c) => {
                if let Some(n) = &c.name {
                    names.insert(format!("struct {n}"));
                }
                stack.extend(c.members.iter().map(|m| m.ty));
            }
            Type::Union(c) => {
                if let Some(n) = &c.name {
                    names.insert(format!("union {n}"));
                }
            }
            Type::Enum { name: Some(n), .. } => {
                names.insert(format!("enum {n}"));
            }
            Type::Array { element, .. } => stack.push(*element),
            Type::Pointer { pointee, .. } => stack.push(*pointee),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> Build {
        Build { path: "/srv/kvd".into(), build_id: None, has_debug_info: true }
    }

    fn global(name: &str, class: Class) -> GlobalChange {
        GlobalChange {
            name: name.into(),
            change: Change::Changed,
            class,
            old_type: None,
            new_type: None,
            fields: vec![],
            changed_types_reached: vec![],
            explanation: String::new(),
        }
    }

    fn word(path: &str, class: Class) -> OpaqueChange {
        OpaqueChange {
            path: path.into(),
            reason: OpaqueReason::VoidPointer,
            class,
            hint: None,
            points_to: vec![],
            changed: vec![],
            resolve_with: None,
            explanation: String::new(),
        }
    }

    fn diff(globals: Vec<GlobalChange>, opaque: Vec<OpaqueChange>, verdict: Class) -> Diff {
        Diff {
            old: build(),
            new: build(),
            globals,
            types: vec![],
            opaque,
            warnings: vec![],
            verdict,
            sessions: Sessions::default(),
        }
    }

    #[test]
    fn a_word_inside_a_global_needing_a_handler_counts_once() {
        let d = diff(
            vec![global("stats", Class::NeedsHandler), global("table", Class::Automatic)],
            vec![
                word("stats.owner", Class::NeedsHandler),
                word("table.ctx", Class::NeedsHandler),
                word("last_set", Class::Automatic),
            ],
            Class::NeedsHandler,
        );
        assert_eq!(d.needing_handlers(), 2, "stats, and table.ctx (its global is transformed automatically)");
        assert!(!d.is_automatic());
        let none = diff(vec![global("table", Class::Automatic)], vec![], Class::Automatic);
        assert_eq!(none.needing_handlers(), 0);
        assert!(none.is_automatic());
    }
}
