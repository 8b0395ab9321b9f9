//! `mcr check OLD NEW`: what changed between two builds and whether mcr can transform
//! it by itself (offline; touches no running instance).

use crate::render;
use anyhow::{Context, Result};
use clap::Args;
use mcr_typemodel::diff::{Change, Class, Diff, FieldChange, Sessions};
use mcr_typemodel::Program;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Exit status when every difference is transformed automatically.
pub const EXIT_AUTOMATIC: i32 = 0;
/// Exit status when some change needs a handler (a conflict if its objects are live).
pub const EXIT_NEEDS_HANDLER: i32 = 1;
/// Exit status when a binary cannot be read.
pub const EXIT_ERROR: i32 = 2;

#[derive(Args)]
pub struct CheckArgs {
    /// The build that is running (or would be)
    pub old: PathBuf,
    /// The build to update to
    pub new: PathBuf,
    /// Print the full comparison as JSON
    #[arg(long)]
    pub json: bool,
}

fn load(path: &Path) -> Result<Program> {
    Program::load_cached(path).with_context(|| format!("cannot read the type model of {}", path.display()))
}

pub fn check(args: &CheckArgs) -> i32 {
    let progs = load(&args.old).and_then(|o| Ok((o, load(&args.new)?)));
    let (old, new) = match progs {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mcr: {}", render::error_chain(&e));
            return EXIT_ERROR;
        }
    };
    let d = mcr_tracer::compare(&old, &new);
    for w in &d.warnings {
        eprintln!("mcr: warning: {w}");
    }
    if args.json {
        match serde_json::to_string_pretty(&d) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("mcr: cannot print the comparison: {e}");
                return EXIT_ERROR;
            }
        }
    } else {
        print!("{}", human(&d));
    }
    if d.is_automatic() {
        EXIT_AUTOMATIC
    } else {
        EXIT_NEEDS_HANDLER
    }
}

fn class_word(c: Class) -> &'static str {
    match c {
        Class::Unchanged => "unchanged",
        Class::Automatic => "automatic",
        Class::NeedsHandler => "NEEDS HANDLER",
    }
}

fn change_word(c: Change) -> &'static str {
    match c {
        Change::Added => "added",
        Change::Removed => "removed",
        Change::Changed => "changed",
    }
}

fn fields(out: &mut String, fs: &[FieldChange]) {
    let w = fs.iter().map(|f| f.path.len()).max().unwrap_or(0);
    for f in fs {
        let mark = if f.class == Class::NeedsHandler { "!" } else { " " };
        let _ = writeln!(out, "    {mark} {:w$}  {}", f.path, f.explanation);
    }
}

/// What happens to the sessions of the old version (whatever the types say).
fn sessions(out: &mut String, s: &Sessions) {
    let _ = writeln!(out, "\nSessions:");
    if s.resume_handlers.is_empty() {
        let _ = writeln!(
            out,
            "  no MCR_ADD_RESUME_HANDLER in the new build: connections a thread serves from its stack must close before \
             an update (--drain-timeout), else it rolls back; event-loop connections move"
        );
    } else {
        let _ = writeln!(
            out,
            "  resume handler {}: connections threads serve from their stacks move with their heap state, and the handler \
             hands them back after commit",
            s.resume_handlers.join(", ")
        );
    }
    if s.respawn_handlers.is_empty() {
        let _ = writeln!(
            out,
            "  no MCR_ADD_RESPAWN_HANDLER in the new build: processes forked per connection must end before an update"
        );
    } else if s.resume_handlers.is_empty() {
        let _ = writeln!(
            out,
            "  respawn handler {} is unused: a respawned process needs a resume handler to serve its session",
            s.respawn_handlers.join(", ")
        );
    } else {
        let _ = writeln!(
            out,
            "  respawn handler {}: processes forked per connection are recreated, their heap moves",
            s.respawn_handlers.join(", ")
        );
    }
}

/// The human report.
pub fn human(d: &Diff) -> String {
    let mut out = String::new();
    let id =
        |b: &Option<String>| b.as_deref().map(|s| format!(" (build {})", &s[..s.len().min(12)])).unwrap_or_default();
    let _ = writeln!(out, "old: {}{}", d.old.path, id(&d.old.build_id));
    let _ = writeln!(out, "new: {}{}", d.new.path, id(&d.new.build_id));
    if d.types.is_empty() && d.globals.is_empty() && d.old.has_debug_info && d.new.has_debug_info {
        let _ = writeln!(out, "\nNo difference in globals or types: the state is copied as it is.");
    }
    let changed: Vec<_> = d.types.iter().filter(|t| t.change == Change::Changed).collect();
    if !changed.is_empty() {
        let _ = writeln!(out, "\nTypes changed:");
        for t in changed {
            let _ = writeln!(out, "  {} [{}]: {}", t.name, class_word(t.class), t.explanation);
            fields(&mut out, &t.fields);
        }
    }
    let others: Vec<_> = d.types.iter().filter(|t| t.change != Change::Changed).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\nTypes added or removed:");
        for t in others {
            let _ = writeln!(out, "  {} {}: {}", change_word(t.change), t.name, t.explanation);
        }
    }
    if !d.globals.is_empty() {
        let _ = writeln!(out, "\nGlobals:");
        for g in &d.globals {
            let _ =
                writeln!(out, "  {} {} [{}]: {}", change_word(g.change), g.name, class_word(g.class), g.explanation);
            // A global of a changed named type: its fields are listed with the type.
            let named = g.new_type.as_ref().is_some_and(|t| d.types.iter().any(|x| &x.name == t));
            if !named {
                fields(&mut out, &g.fields);
            }
        }
    }
    if !d.opaque.is_empty() {
        let _ = writeln!(out, "\nWords DWARF cannot type (unions, void *, integers) that the update meets:");
        for w in &d.opaque {
            let class = if w.class == Class::NeedsHandler { "NEEDS HINT" } else { class_word(w.class) };
            let _ = writeln!(out, "  {} [{class}]: {}", w.path, w.explanation);
        }
    }
    sessions(&mut out, &d.sessions);
    let handlers = d.needing_handlers();
    let _ = writeln!(out);
    if d.is_automatic() {
        let _ = writeln!(out, "Verdict: automatic. mcr transforms every difference by itself (exit status 0).");
    } else if handlers == 0 {
        let _ = writeln!(out, "Verdict: not automatic. Without debug info mcr cannot transform state (exit status 1).");
    } else {
        let _ = writeln!(
            out,
            "Verdict: {handlers} change(s) marked NEEDS HANDLER or NEEDS HINT: an update conflicts (and rolls back) \
             if objects they affect are live, unless MCR_ADD_OBJ_HANDLER or a hint in mcr.h resolves them (exit status 1)."
        );
    }
    out
}
