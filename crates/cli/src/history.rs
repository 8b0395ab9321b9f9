//! The update history of an instance: one JSON line per update that reached it
//! (committed, rolled back, refused), in `<runtime dir>/<name>.history`, kept across runs
//! of the name like its log. `mcr history` prints it; `mcr update --back` reads it.

use anyhow::{bail, Context, Result};
use mcr_protocol::{InstanceDir, InstanceStatus};
use mcr_update::transfer::Summary;
use mcr_update::{Report, Timings};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The journal keeps this many entries: older ones are dropped when it grows past it.
pub const KEPT_ENTRIES: usize = 1000;

/// One update, as the journal keeps it.
#[derive(Serialize, Deserialize, Debug)]
pub struct Entry {
    /// When the update began, UTC (RFC 3339).
    pub time: String,
    pub instance: String,
    /// The version that ran before, and the one the update started.
    pub from: Build,
    pub to: Build,
    pub outcome: Outcome,
    pub phases: Timings,
    /// What the state transfer moved (absent with --fresh-state or when it did not run).
    pub transfer: Option<Summary>,
    /// With --fresh-state: idle connections the new version adopted.
    #[serde(default)]
    pub adopted_connections: usize,
    /// Replay conflicts that made it roll back.
    #[serde(default)]
    pub conflicts: usize,
}

/// A build of the server and the arguments it ran (or was to run) with.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Build {
    pub program: String,
    pub args: Vec<String>,
    /// The ELF build ID (GNU note), when the binary has one.
    pub build_id: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    /// The new version was started and killed again; the old one runs on.
    RolledBack {
        reason: String,
    },
    /// Stopped before the new version started (state that cannot move, drain or
    /// quiescence failed): the old version was resumed.
    Refused {
        reason: String,
    },
    /// Neither version could say whether the commit point was passed.
    Unknown {
        reason: String,
    },
    /// `mcr update --rehearse`: run up to the commit point and rolled back on purpose; the
    /// reason the update would not commit, if it would not.
    Rehearsed {
        would_commit: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Build {
    /// The running version: its program and arguments, and the build ID of the binary its
    /// main process runs (through /proc, so a file replaced on disk since does not count).
    pub fn running(st: &InstanceStatus) -> Build {
        let exe = st
            .main_pid
            .and_then(|pid| mcr_client::pids::host_pids(st.pid_namespace, st.supervisor_pid, [pid]).ok()?.remove(&pid))
            .map(|host| PathBuf::from(format!("/proc/{host}/exe")));
        let build_id = exe.and_then(|e| build_id(&e)).or_else(|| build_id(Path::new(&st.program)));
        Build { program: st.program.clone(), args: st.args.clone(), build_id }
    }

    /// The build `command` names (the program found as `mcr update` finds it).
    pub fn of_command(command: &[String]) -> Build {
        let (program, args) = command.split_first().map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
        let path = mcr_client::program::resolve(program).unwrap_or_else(|_| PathBuf::from(program));
        Build { program: path.display().to_string(), args: args.to_vec(), build_id: build_id(&path) }
    }

    /// `PROGRAM ARGS (build ID)`, for a service manager's status line.
    pub fn describe(&self) -> String {
        let mut s = std::iter::once(&self.program).chain(&self.args).cloned().collect::<Vec<_>>().join(" ");
        if let Some(id) = &self.build_id {
            let _ = write!(s, " (build {})", &id[..id.len().min(12)]);
        }
        s
    }

    fn label(&self) -> String {
        let file = Path::new(&self.program).file_name().map_or(self.program.clone(), |f| f.to_string_lossy().into());
        match &self.build_id {
            Some(id) => format!("{file} ({})", &id[..id.len().min(8)]),
            None => file,
        }
    }
}

fn build_id(path: &Path) -> Option<String> {
    mcr_typemodel::read_build_id(path).ok().flatten()
}

impl Entry {
    /// The journal entry for `report`, an update from `from` to `to` begun at `time`.
    pub fn new(time: SystemTime, from: Build, to: Build, report: &Report) -> Entry {
        let reason = || report.message.clone();
        let outcome = match &report.failure {
            _ if report.rehearsed => Outcome::Rehearsed {
                would_commit: report.failure.is_none(),
                reason: report.failure.as_ref().map(|_| reason()),
            },
            _ if report.committed => Outcome::Committed,
            Some(f) if f.before_restart() => Outcome::Refused { reason: mcr_update::error::chain(f) },
            Some(f) if f.undecided() => Outcome::Unknown { reason: reason() },
            _ => Outcome::RolledBack { reason: reason() },
        };
        Entry {
            time: rfc3339(time),
            instance: report.instance.clone(),
            from,
            to,
            outcome,
            phases: report.phases.clone(),
            transfer: report.transfer.as_ref().map(copy_summary),
            adopted_connections: report.adopted_connections,
            conflicts: report.conflicts.len(),
        }
    }
}

/// Summary is not Clone (it is built once, for one report): a round trip through JSON.
fn copy_summary(s: &Summary) -> Summary {
    serde_json::to_value(s).and_then(serde_json::from_value).unwrap_or_default()
}

/// The journal of instance `name`.
pub fn path(dir: &InstanceDir, name: &str) -> Result<PathBuf> {
    mcr_protocol::instance::validate_name(name)?;
    Ok(dir.path.join(format!("{name}.history")))
}

/// Append `entry` to the journal of `name`: one `write` of one line on a file opened with
/// O_APPEND, so a crash leaves every earlier line whole (a torn last line is skipped when
/// read). Past [`KEPT_ENTRIES`], the file is rewritten with the newest ones and renamed
/// over the old one.
pub fn record(dir: &InstanceDir, name: &str, entry: &Entry) -> Result<()> {
    let path = path(dir, name)?;
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    append_bounded(&path, &line, KEPT_ENTRIES).with_context(|| format!("cannot write {}", path.display()))
}

fn append_bounded(path: &Path, line: &[u8], kept: usize) -> std::io::Result<()> {
    let before = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    // A line torn by a crash is ended first, or this entry would be part of it.
    let torn = !before.is_empty() && !before.ends_with(b"\n");
    let line = [if torn { &b"\n"[..] } else { b"" }, line].concat();
    mcr_protocol::instance::open_append(path)?.write_all(&line)?;
    let text = [before, line].concat();
    let lines = text.split_inclusive(|&b| b == b'\n').count();
    if lines <= kept {
        return Ok(());
    }
    let newest: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').skip(lines - kept).collect();
    let tmp = path.with_extension(format!("history.{}.tmp", std::process::id()));
    mcr_protocol::instance::write_private(&tmp, &newest.concat())?;
    std::fs::rename(&tmp, path)
}

/// The entries of the journal of `name`, oldest first (none when there is no journal).
/// `skipped` counts lines that are not entries (a line torn by a crash).
pub fn read(dir: &InstanceDir, name: &str) -> Result<(Vec<Entry>, usize)> {
    let path = path(dir, name)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut skipped = 0;
    let entries = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).map_err(|_| skipped += 1).ok())
        .collect();
    Ok((entries, skipped))
}

/// `mcr history NAME [--json]`.
pub fn show(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    let (entries, skipped) = read(dir, name)?;
    if skipped > 0 {
        eprintln!("mcr: warning: {skipped} unreadable lines in {} skipped", path(dir, name)?.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        println!("no update of '{name}' recorded in {}", dir.path.display());
    } else {
        print!("{}", table(&entries));
    }
    Ok(0)
}

fn table(entries: &[Entry]) -> String {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let outcome = match &e.outcome {
                Outcome::Committed => "committed",
                Outcome::RolledBack { .. } => "rolled back",
                Outcome::Refused { .. } => "refused",
                Outcome::Unknown { .. } => "unknown",
                Outcome::Rehearsed { would_commit: true, .. } => "rehearsed",
                Outcome::Rehearsed { would_commit: false, .. } => "rehearsed: would roll back",
            };
            let moved = match &e.transfer {
                Some(t) => format!(
                    "{} objects ({} bytes), {} globals, {} connections",
                    t.state.objects, t.state.bytes, t.state.globals, t.connections
                ),
                None if e.adopted_connections > 0 => format!("{} connections adopted", e.adopted_connections),
                None => "-".into(),
            };
            [
                e.time.clone(),
                outcome.into(),
                format!("{} -> {}", e.from.label(), e.to.label()),
                format!("{:.1} ms", e.phases.total_ms),
                moved,
            ]
        })
        .collect();
    let head = ["TIME (UTC)", "OUTCOME", "FROM -> TO", "TOTAL", "MOVED"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (c, w) in cells.iter().zip(width) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head);
    for (r, e) in rows.iter().zip(entries) {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
        if let Outcome::RolledBack { reason }
        | Outcome::Refused { reason }
        | Outcome::Unknown { reason }
        | Outcome::Rehearsed { reason: Some(reason), .. } = &e.outcome
        {
            let first = reason.lines().next().unwrap_or_default();
            line(["", "", &format!("  {first}"), "", ""]);
        }
    }
    out
}

/// `mcr update NAME --back`: the build that ran before the last committed update, with
/// the arguments it ran with, as a command line.
pub fn back_command(dir: &InstanceDir, name: &str) -> Result<Vec<String>> {
    let (entries, _) = read(dir, name)?;
    let Some(last) = entries.iter().rev().find(|e| e.outcome == Outcome::Committed) else {
        bail!(
            "no committed update of '{name}' in its history ({}): there is no build to go back to",
            path(dir, name)?.display()
        );
    };
    let from = &last.from;
    let now = build_id(Path::new(&from.program));
    if let (Some(then), Some(now)) = (&from.build_id, &now) {
        if then != now {
            bail!(
                "{} now holds build {now}, not build {then} that ran before the update of {}: the previous build is gone",
                from.program,
                last.time
            );
        }
    }
    eprintln!(
        "mcr: back to the build that ran before the update of {}: {} {}",
        last.time,
        from.program,
        from.args.join(" ")
    );
    Ok(std::iter::once(from.program.clone()).chain(from.args.iter().cloned()).collect())
}

/// `time` as RFC 3339, UTC, to the second.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000, divisible by 400
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_journal_keeps_the_newest_entries_and_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("mcr-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.history");
        for i in 0..7 {
            append_bounded(&path, format!("{i}\n").as_bytes(), 5).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n3\n4\n5\n6\n");
        // A crash in the middle of a write: the earlier lines stay readable.
        let idir = InstanceDir { path: dir.clone() };
        std::fs::write(&path, "").unwrap();
        let entry = Entry {
            time: rfc3339(SystemTime::now()),
            instance: "k".into(),
            from: Build { program: "/a".into(), args: vec!["-p".into()], build_id: Some("ab".into()) },
            to: Build { program: "/b".into(), args: vec![], build_id: None },
            outcome: Outcome::Committed,
            phases: Timings::default(),
            transfer: None,
            adopted_connections: 0,
            conflicts: 0,
        };
        record(&idir, "k", &entry).unwrap();
        mcr_protocol::instance::open_append(&path).unwrap().write_all(b"{\"time\":\"20").unwrap();
        let (entries, skipped) = read(&idir, "k").unwrap();
        assert_eq!((entries.len(), skipped), (1, 1));
        assert_eq!(entries[0].from, entry.from);
        // The next entry does not join the torn line.
        record(&idir, "k", &entry).unwrap();
        let (entries, skipped) = read(&idir, "k").unwrap();
        assert_eq!((entries.len(), skipped), (2, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
