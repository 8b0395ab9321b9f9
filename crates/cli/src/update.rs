//! `mcr update`: the arguments, and what the update (mcr-update) did, printed.

use crate::history::{self, Build, Entry};
use crate::progress::UpdateProgress;
use crate::render;
use anyhow::Result;
use clap::Args;
use mcr_protocol::InstanceDir;
use mcr_update::{Report, Settings, Warning};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

#[derive(Args)]
pub struct UpdateArgs {
    /// The running instance to update
    name: String,
    /// Milliseconds the new version has to replay its startup and park (the old one is
    /// resumed if it does not)
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Milliseconds the old version has to quiesce
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    quiesce_timeout: u64,
    /// Before quiescing, stop accepting (new connections wait in the listen backlog for
    /// the next version) and give the old version up to this many milliseconds to close
    /// the client connections the update cannot move: those of processes forked after
    /// startup (a per-connection child), or, with --fresh-state, all of them. The state
    /// transfer moves the rest. 0 skips the drain.
    #[arg(long, value_name = "MS")]
    drain_timeout: Option<u64>,
    /// Do not transfer the old version's state (globals, heap, connections): the new
    /// version keeps what its own startup made. For servers whose state mcr cannot move
    /// yet, or need not (nginx: its state is its configuration, which startup rebuilds).
    /// Connections close at commit, except idle ones the new build adopts (an idle check in
    /// the old build and a resume handler in the new one, see include/mcr.h).
    #[arg(long)]
    fresh_state: bool,
    /// Print the outcome and phase timings as JSON
    #[arg(long)]
    json: bool,
    /// Refuse the update when the new program or the runtime library (or the directory
    /// holding it) can be changed by a user other than root and you; without it, a warning
    #[arg(long)]
    strict: bool,
    /// Start the new version with no arguments when only PROGRAM is given (without it, the
    /// new version gets the running version's arguments)
    #[arg(long)]
    no_args: bool,
    /// Go back to the build that ran before the last committed update (from `mcr history`),
    /// with the arguments it ran with; an error when no update was committed, or when the
    /// file now holds another build (its build ID changed)
    #[arg(long, conflicts_with_all = ["command", "no_args"])]
    back: bool,
    /// Rehearse the update against the live server: everything it does up to the commit
    /// point but the drain (connections are not touched), then a deliberate rollback. Reports
    /// what the update would do (conflicts, handlers, objects transformed and pinned,
    /// connections that would move or wait, phase times, how long the server was paused);
    /// exit 0 when it would commit
    #[arg(long)]
    rehearse: bool,
    /// Count the pointers the state transfer follows, as the MCR paper's Table 2 does:
    /// precise ones (typed pointers, function pointers, void *) and likely ones (words in
    /// unions, pointer-sized integers and memory of unknown type that hold an address),
    /// each by source (a global or a heap block) and target (the binary, the heap, a
    /// shared library, elsewhere). The whole state is traced even when no type changes,
    /// which makes such an update slower; the counts are in the summary and in --json
    /// under transfer.pointers. With --rehearse: the counts, and nothing changed
    #[arg(long, conflicts_with = "fresh_state")]
    count_pointers: bool,
    /// The new version and its arguments; PROGRAM alone runs it with the running version's
    /// arguments (see --no-args)
    #[arg(
        required_unless_present = "back",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    command: Vec<String>,
}

pub fn update(dir: &InstanceDir, args: UpdateArgs) -> Result<i32> {
    let checks = mcr_update::Checks { fresh_state: args.fresh_state, strict: args.strict };
    let began = std::time::SystemTime::now();
    let running = mcr_client::Connection::open(dir, &args.name)?.status()?;
    let mut command = if args.back { history::back_command(dir, &args.name)? } else { args.command.clone() };
    if command.len() == 1 && !args.no_args && !args.back {
        // Replacing the binary is the common case: a new build started without the
        // configuration the running one was given would be another server.
        if !running.args.is_empty() {
            eprintln!(
                "mcr: the new version gets the running version's arguments: {} (--no-args: none)",
                running.args.join(" ")
            );
            command.extend(running.args.iter().cloned());
        }
    }
    let (from, to) = (Build::running(&running), Build::of_command(&command));
    // Read before the update: the file may be replaced once it runs.
    let handlers = if args.rehearse { handlers(Path::new(&to.program)) } else { Vec::new() };
    let prepared = mcr_update::prepare(dir, &args.name, &command, checks)?;
    for w in &prepared.warnings {
        eprintln!("mcr: warning: {w}");
    }
    let settings = Settings {
        fresh_state: args.fresh_state,
        drain_timeout_ms: args.drain_timeout.unwrap_or(1000),
        quiesce_timeout_ms: args.quiesce_timeout,
        startup_timeout: Duration::from_millis(args.timeout),
        rehearse: args.rehearse,
        count_pointers: args.count_pointers,
    };
    let progress = UpdateProgress::new(!args.json && std::io::stdout().is_terminal(), settings.drain_timeout_ms);
    let warn = |w: Warning| progress.suspend(|| eprintln!("mcr: warning: {w}"));
    let report = prepared.run(settings, &warn, &|step| progress.step(step));
    progress.finish();
    if let Err(e) = history::record(dir, &args.name, &Entry::new(began, from, to, &report)) {
        eprintln!("mcr: warning: the update is not in the history: {}", render::error_chain(&e));
    }
    if let Some(failure) = report.failure.as_ref().filter(|f| f.before_restart()) {
        // Nothing was changed: one line, like any error before anything started.
        let rehearsal = if report.rehearsed { "rehearsal: the update would stop here: " } else { "" };
        eprintln!("mcr: {rehearsal}{}{}", mcr_update::error::chain(failure), laggards(failure));
        return Ok(1);
    }
    if report.rehearsed {
        return rehearsal(&report, &command.join(" "), &handlers, &args);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.failure.as_ref().is_some_and(|f| f.undecided()) {
        eprintln!("mcr: update of '{}': {}", report.instance, report.message);
    } else if report.committed {
        print!("{}", committed(&report));
        for w in report.transfer.iter().flat_map(|t| &t.state.warnings) {
            eprintln!("mcr: warning: {w}");
        }
    } else {
        eprint!("{}", render::update_failure(&report.instance, &report.message, &report.conflicts));
    }
    Ok(if report.committed { 0 } else { 1 })
}

/// What a rehearsal found: the update would commit (exit 0) or roll back (exit 1).
fn rehearsal(report: &Report, command: &str, handlers: &[Handler], args: &UpdateArgs) -> Result<i32> {
    let would_commit = report.failure.is_none();
    if args.json {
        let mut v = serde_json::to_value(report)?;
        v["would_commit"] = would_commit.into();
        v["handlers"] = serde_json::to_value(handlers)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if would_commit {
        print!("{}", rehearsed(report, command, handlers, args.drain_timeout.unwrap_or(1000)));
    } else {
        eprint!("{}", render::rehearsal_failure(&report.instance, &report.message, &report.conflicts));
    }
    Ok(if would_commit { 0 } else { 1 })
}

/// A handler of the new build (include/mcr.h) the update would run, from its hints.
#[derive(serde::Serialize)]
struct Handler {
    /// The macro that declares it.
    kind: &'static str,
    /// The type it adjusts (MCR_ADD_OBJ_HANDLER) or the function.
    what: String,
}

fn handlers(program: &Path) -> Vec<Handler> {
    let hints = mcr_typemodel::read_hints(program).unwrap_or_default();
    let kinds = [
        ("handler ", "MCR_ADD_OBJ_HANDLER"),
        ("respawn ", "MCR_ADD_RESPAWN_HANDLER"),
        ("resume ", "MCR_ADD_RESUME_HANDLER"),
    ];
    kinds
        .iter()
        .flat_map(|&(prefix, kind)| {
            hints.iter().filter_map(move |h| Some(Handler { kind, what: h.strip_prefix(prefix)?.trim().to_string() }))
        })
        .collect()
}

/// What the rehearsed update would do, and how long the rehearsal paused the server.
fn rehearsed(r: &Report, command: &str, handlers: &[Handler], drain_timeout_ms: u64) -> String {
    use std::fmt::Write;
    let p = &r.phases;
    let mut o = format!(
        "rehearsal of the update of '{}' to {command}: it would commit; rolled back on purpose, the old version runs \
         on as before\n",
        r.instance
    );
    let _ = writeln!(
        o,
        "paused {:.1} ms: quiesce {:.1} ms, restart+replay {:.1} ms, state transfer {:.1} ms, rollback {:.1} ms \
         (the update drains first, up to {drain_timeout_ms} ms, and commits where the rehearsal rolled back); processes {:?}",
        p.paused_ms, p.quiesce_ms, p.restart_ms, p.transfer_ms, p.rollback_ms, r.new_processes
    );
    let waiting: usize = r.drain_would_wait.iter().map(|c| c.fds.len()).sum();
    let moving = r.transfer.as_ref().map_or(0, |t| t.connections);
    let _ = write!(o, "connections: {moving} would move");
    if r.adopted_connections > 0 {
        let _ = write!(o, ", {} idle ones would be adopted by the new version", r.adopted_connections);
    }
    match waiting {
        0 => o.push_str("; the drain would wait for none\n"),
        n => {
            let pids: Vec<i32> = r.drain_would_wait.iter().map(|c| c.pid).collect();
            let _ = writeln!(
                o,
                "; the drain would wait for {n} the update cannot move (processes {pids:?}), up to {drain_timeout_ms} ms"
            );
        }
    }
    if let Some(t) = &r.transfer {
        let _ = writeln!(
            o,
            "objects: {} heap blocks carried into the new version ({} rewritten where they are, {} pinned at their \
             address because memory mcr cannot type holds it), {} adjusted by handlers; the rehearsal moved them and \
             discarded them with the new version:",
            t.state.objects, t.state.in_place, t.state.pinned, t.state.handled
        );
    }
    o.push_str(&moved(r));
    let handled = r.transfer.as_ref().map_or(0, |t| t.state.handled);
    if handlers.is_empty() {
        o.push_str("handlers of the new build: none\n");
    }
    for h in handlers {
        let when = match h.kind {
            "MCR_ADD_OBJ_HANDLER" => format!("would adjust objects of its type ({handled} objects in all)"),
            "MCR_ADD_RESPAWN_HANDLER" => "would recreate the per-connection processes".into(),
            _ => "would run when the new version first resumes".into(),
        };
        let _ = writeln!(o, "handler {}({}) {when}", h.kind, h.what);
    }
    o.push_str("conflicts: none\n");
    o
}

/// The threads that did not park, when quiescence failed.
fn laggards(failure: &mcr_update::UpdateError) -> String {
    match failure.laggards() {
        [] => String::new(),
        l => format!("\n{}", render::laggards(l)),
    }
}

/// What a committed update did: its phases, then what moved.
fn committed(r: &Report) -> String {
    use std::fmt::Write;
    let p = &r.phases;
    let mut o = format!(
        "updated '{}': drain {:.1} ms, quiesce {:.1} ms, restart+replay {:.1} ms, state transfer {:.1} ms, commit {:.1} ms (total {:.1} ms); processes {:?}\n",
        r.instance, p.drain_ms, p.quiesce_ms, p.restart_ms, p.transfer_ms, p.commit_ms, p.total_ms, r.new_processes
    );
    if r.adopted_connections > 0 {
        let _ = writeln!(o, "{} idle connections adopted by the new version", r.adopted_connections);
    }
    o.push_str(&moved(r));
    o
}

/// What the state transfer moved (nothing without it).
fn moved(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let Some(t) = &r.transfer else { return o };
    let _ = writeln!(
        o,
        "state: {} globals copied ({} untouched since startup skipped; {} of {} pages written since startup), {} heap blocks ({} bytes) of {} live, {} connections moved",
        t.state.globals,
        t.state.globals_clean,
        t.dirty_pages,
        t.dirty_pages + t.clean_pages,
        t.state.objects,
        t.state.bytes,
        t.state.live_objects,
        t.connections
    );
    if t.heap_regions_adopted > 0 {
        let how = match &t.state.walked_all {
            None => format!(
                "{} blocks untouched (no type changed: checked for addresses that move, {} bytes)",
                t.state.untouched, t.state.untouched_bytes
            ),
            Some(why) => format!("every reachable block walked ({why}); {} stayed where they were", t.state.in_place),
        };
        let _ = writeln!(
            o,
            "heap: {} regions adopted at their addresses ({} bytes mapped from the old memfds, {} copied); {how}",
            t.heap_regions_adopted, t.heap_bytes_mapped, t.heap_bytes_adopted
        );
    }
    if t.startup_mapped_bytes_carried > 0 {
        let _ = writeln!(
            o,
            "memory the server mapped itself at startup: {} bytes written since carried over the new startup's",
            t.startup_mapped_bytes_carried
        );
    }
    if t.state.startup_matched + t.state.startup_reallocated > 0 {
        let _ = writeln!(
            o,
            "startup objects: {} matched with the new version's ({} kept as its startup made them), {} reallocated",
            t.state.startup_matched, t.state.startup_kept, t.state.startup_reallocated
        );
    }
    for n in &t.state.startup_notes {
        let _ = writeln!(o, "  {n}");
    }
    if t.state.handled > 0 {
        let _ = writeln!(o, "{} objects adjusted by the new version's MCR_ADD_OBJ_HANDLERs", t.state.handled);
    }
    if t.respawned_processes > 0 {
        let _ = writeln!(
            o,
            "{} per-connection processes recreated by the new version's MCR_ADD_RESPAWN_HANDLER",
            t.respawned_processes
        );
    }
    if !t.state.globals_dropped.is_empty() {
        let _ = writeln!(o, "dropped (no longer in the new version): {}", t.state.globals_dropped.join(", "));
    }
    if let Some(p) = &t.state.pointers {
        for (kind, c) in [("precise", &p.precise), ("likely", &p.likely)] {
            let _ = writeln!(
                o,
                "{kind} pointers: {} (from globals {}, from heap blocks {}; to the binary {}, to the heap {}, to \
                 libraries {}, elsewhere {})",
                c.total, c.from_static, c.from_dynamic, c.to_static, c.to_dynamic, c.to_library, c.to_other
            );
        }
    }
    o
}
