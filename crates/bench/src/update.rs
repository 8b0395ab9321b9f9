//! Live updates through the real CLI (`mcr update NAME --json -- PROGRAM ARGS`), with the
//! cold starts they are compared with interleaved: each round starts the instance fresh
//! with `mcr run --detach` (timed; version A on even rounds, B on odd ones), updates it
//! back and forth between the two versions `--updates` times, and stops it.
//!
//! Sample file format, one event a line, tab-separated, times in microseconds, `-` when
//! unknown; `to` is `a` or `b`, the version started or updated to:
//!   `start <to> <wall_us> <startup_us>`
//!       a cold start: wall time of the whole `mcr run --detach` (it returns once startup
//!       completed) and the server's own startup time (`mcr status --json` `startup_ms`)
//!   `ok <to> <quiesce_us> <restart_us> <commit_us> <total_us> <client_us> <startup_us>`
//!       a committed update: the phases `mcr update --json` reports, the wall time of the
//!       whole command, and the new version's startup time (replayed) from `mcr status`
//!   `fail <to> <client_us> <message>`
//!       an update that did not commit (rolled back, refused, or committed but the server
//!       does not accept connections afterwards)

use crate::outcome::{parse_json, update_report};
use mcr_protocol::InstanceStatus;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Config {
    pub mcr: PathBuf,
    pub name: String,
    /// The two versions (program paths); both get the same `args`.
    pub a: String,
    pub b: String,
    pub args: Vec<String>,
    pub rounds: usize,
    pub updates: usize,
    /// When set, the server must accept connections on 127.0.0.1:port after each start
    /// and each committed update.
    pub port: Option<u16>,
    /// Pause after a start and after each update.
    pub gap: Duration,
    /// `--timeout` passed to `mcr update` (replay and park).
    pub timeout_ms: u64,
    /// Hard bound on the whole loop.
    pub max_time: Duration,
    /// Pass `--fresh-state` to `mcr update` (no state transfer: nginx).
    pub fresh_state: bool,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ver {
    A,
    B,
}

impl Ver {
    fn tag(self) -> &'static str {
        match self {
            Ver::A => "a",
            Ver::B => "b",
        }
    }
    fn other(self) -> Ver {
        match self {
            Ver::A => Ver::B,
            Ver::B => Ver::A,
        }
    }
    fn parse(s: &str) -> Option<Ver> {
        match s {
            "a" => Some(Ver::A),
            "b" => Some(Ver::B),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Start {
        to: Ver,
        wall_us: u64,
        startup_us: Option<u64>,
        /// The supervisor's measure, from the fork of the server (exec and library loading
        /// included): what restart + replay compares with.
        exec_us: Option<u64>,
    },
    Ok {
        to: Ver,
        quiesce_us: u64,
        restart_us: u64,
        commit_us: u64,
        total_us: u64,
        client_us: u64,
        startup_us: Option<u64>,
    },
    Fail {
        to: Ver,
        client_us: u64,
        message: String,
    },
}

fn opt(x: Option<u64>) -> String {
    x.map_or_else(|| "-".into(), |v| v.to_string())
}

fn parse_opt(s: &str) -> Option<Option<u64>> {
    if s == "-" {
        Some(None)
    } else {
        s.parse().ok().map(Some)
    }
}

impl Sample {
    pub fn line(&self) -> String {
        match self {
            Sample::Start { to, wall_us, startup_us, exec_us } => {
                format!("start\t{}\t{wall_us}\t{}\t{}", to.tag(), opt(*startup_us), opt(*exec_us))
            }
            Sample::Ok { to, quiesce_us, restart_us, commit_us, total_us, client_us, startup_us } => format!(
                "ok\t{}\t{quiesce_us}\t{restart_us}\t{commit_us}\t{total_us}\t{client_us}\t{}",
                to.tag(),
                opt(*startup_us)
            ),
            Sample::Fail { to, client_us, message } => {
                format!("fail\t{}\t{client_us}\t{}", to.tag(), message.replace(['\t', '\n'], " "))
            }
        }
    }

    pub fn parse_line(line: &str) -> Option<Sample> {
        let f: Vec<&str> = line.split('\t').collect();
        let to = Ver::parse(f.get(1)?)?;
        let n = |i: usize| f.get(i)?.parse::<u64>().ok();
        match *f.first()? {
            // Raw files from before the exec measure have 4 fields.
            "start" if f.len() == 4 || f.len() == 5 => Some(Sample::Start {
                to,
                wall_us: n(2)?,
                startup_us: parse_opt(f[3])?,
                exec_us: f.get(4).map_or(Some(None), |v| parse_opt(v))?,
            }),
            "ok" if f.len() == 8 => Some(Sample::Ok {
                to,
                quiesce_us: n(2)?,
                restart_us: n(3)?,
                commit_us: n(4)?,
                total_us: n(5)?,
                client_us: n(6)?,
                startup_us: parse_opt(f[7])?,
            }),
            "fail" if f.len() >= 3 => {
                Some(Sample::Fail { to, client_us: n(2)?, message: f.get(3).unwrap_or(&"").to_string() })
            }
            _ => None,
        }
    }
}

/// Like `Command::output`, with the wall time in microseconds, but bounded: the command
/// is killed after `limit` (an error then). Its output goes through files, not pipes, so
/// a detached descendant that keeps them open cannot hold us.
pub(crate) fn output_within(cmd: &mut Command, limit: Duration) -> Result<(Output, u64), String> {
    let what = format!("{:?}", cmd.get_program());
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("mcr-bench-{}-{seq}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("stdout"), base.with_extension("stderr"));
    let file = |p: &PathBuf| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let pid = child.id().to_string();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        let fire = watch.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if fire {
            let _ = Command::new("kill").args(["-KILL", &pid]).stderr(Stdio::null()).status();
        }
        fire
    });
    let status = child.wait().map_err(|e| format!("waiting for {what}: {e}"));
    let elapsed = t.elapsed().as_micros() as u64;
    let _ = done.send(());
    let killed = dog.join().unwrap_or(false);
    let read = |p: &PathBuf| {
        let v = std::fs::read(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        v
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    if killed {
        return Err(format!(
            "{what} did not finish within {limit:?} and was killed: {}",
            String::from_utf8_lossy(&stderr).trim()
        ));
    }
    Ok((Output { status: status?, stdout, stderr }, elapsed))
}

fn us(ms: f64) -> u64 {
    (ms * 1000.0).round().max(0.0) as u64
}

impl Config {
    fn program(&self, v: Ver) -> &str {
        match v {
            Ver::A => &self.a,
            Ver::B => &self.b,
        }
    }

    fn mcr(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        Ok(output_within(Command::new(&self.mcr).args(args), limit)?.0)
    }

    /// `mcr ARGS... -- PROGRAM(v) self.args`, timed.
    fn mcr_with_program(&self, args: &[&str], v: Ver, limit: Duration) -> Result<(Output, u64), String> {
        output_within(Command::new(&self.mcr).args(args).arg("--").arg(self.program(v)).args(&self.args), limit)
    }

    /// The instance's `startup_ms` (top level of `mcr status --json`); Err if the
    /// instance does not answer.
    fn startup_us(&self) -> Result<Option<u64>, String> {
        Ok(self.status()?.startup_ms.map(us))
    }

    fn status(&self) -> Result<InstanceStatus, String> {
        let out = self.mcr(&["status", &self.name, "--json"], Duration::from_secs(10))?;
        if !out.status.success() {
            return Err(format!("mcr status {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr).trim()));
        }
        parse_json("mcr status --json", &out.stdout)
    }

    fn serving(&self) -> bool {
        let Some(port) = self.port else { return true };
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            if std::net::TcpStream::connect_timeout(&crate::kvload::addr(port), Duration::from_millis(200)).is_ok() {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&self) -> Result<(), String> {
        let out = self.mcr(&["stop", &self.name, "--timeout", "5"], Duration::from_secs(20))?;
        if !out.status.success() {
            return Err(format!("mcr stop {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }
}

fn start(cfg: &Config, v: Ver) -> Result<Sample, String> {
    let (out, wall_us) = cfg.mcr_with_program(&["run", "--detach", "--name", &cfg.name], v, Duration::from_secs(30))?;
    if !out.status.success() {
        return Err(format!("mcr run {} failed: {}", cfg.name, String::from_utf8_lossy(&out.stderr).trim()));
    }
    if !cfg.serving() {
        return Err(format!("{} does not accept connections after mcr run", cfg.name));
    }
    let st = cfg.status()?;
    Ok(Sample::Start { to: v, wall_us, startup_us: st.startup_ms.map(us), exec_us: st.startup_from_exec_ms.map(us) })
}

/// One `mcr update`; Err only when the instance is gone afterwards.
fn update(cfg: &Config, to: Ver) -> Result<Sample, String> {
    let timeout = cfg.timeout_ms.to_string();
    // Its own bounds: quiesce 1 s, replay --timeout, commit 5 s; a margin on top.
    let limit = Duration::from_millis(cfg.timeout_ms) + Duration::from_secs(30);
    let mut args = vec!["update", cfg.name.as_str(), "--json", "--timeout", &timeout];
    if cfg.fresh_state {
        args.push("--fresh-state");
    }
    let (out, client_us) = cfg.mcr_with_program(&args, to, limit)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sample = match update_report(&out.stdout)? {
        Some(o) if o.committed => {
            let startup_us = cfg.startup_us()?;
            if cfg.serving() {
                let p = &o.phases;
                Sample::Ok {
                    to,
                    quiesce_us: us(p.quiesce_ms),
                    restart_us: us(p.restart_ms),
                    commit_us: us(p.commit_ms),
                    total_us: us(p.total_ms),
                    client_us,
                    startup_us,
                }
            } else {
                Sample::Fail {
                    to,
                    client_us,
                    message: "committed, but the server does not accept connections afterwards".into(),
                }
            }
        }
        Some(o) => Sample::Fail { to, client_us, message: format!("rolled back: {}", o.message) },
        // Refused before doing anything (quiesce failed, bad input): no JSON, exit 1.
        None => Sample::Fail { to, client_us, message: format!("refused ({}): {}", out.status, stderr.trim()) },
    };
    let Sample::Fail { to, client_us, message } = sample else {
        return Ok(sample);
    };
    eprintln!("mcr-bench: update {}: to {}: {message}", cfg.name, cfg.program(to));
    // A failed update must leave the old version running as before.
    cfg.startup_us().map_err(|e| format!("the instance is gone after a failed update ({message}): {e}"))?;
    let message = if cfg.serving() {
        message
    } else {
        eprintln!(
            "mcr-bench: update {}: the old version does not accept connections after the failed update",
            cfg.name
        );
        format!("{message}; afterwards the old version does not accept connections")
    };
    Ok(Sample::Fail { to, client_us, message })
}

/// Runs the rounds, appending each sample to `cfg.out` as it comes. Returns the number of
/// updates attempted (fewer than asked if `max_time` ran out).
pub fn run(cfg: &Config) -> Result<usize, String> {
    let mut f = std::fs::File::create(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let mut put = |s: &Sample| writeln!(f, "{}", s.line()).map_err(|e| e.to_string());
    let t0 = Instant::now();
    let mut n = 0;
    'rounds: for r in 0..cfg.rounds {
        if t0.elapsed() > cfg.max_time {
            eprintln!("mcr-bench: update: stopped after {r} rounds: --max-seconds reached");
            break;
        }
        let first = if r % 2 == 0 { Ver::A } else { Ver::B };
        put(&start(cfg, first)?)?;
        std::thread::sleep(cfg.gap);
        let mut running = first;
        for _ in 0..cfg.updates {
            if t0.elapsed() > cfg.max_time {
                eprintln!("mcr-bench: update: stopped after {n} updates: --max-seconds reached");
                cfg.stop()?;
                break 'rounds;
            }
            let s = update(cfg, running.other())?;
            if matches!(s, Sample::Ok { .. }) {
                running = running.other();
            }
            put(&s)?;
            n += 1;
            std::thread::sleep(cfg.gap);
        }
        cfg.stop()?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_round_trip() {
        let all = [
            Sample::Start { to: Ver::A, wall_us: 25000, startup_us: Some(280), exec_us: Some(1900) },
            Sample::Start { to: Ver::B, wall_us: 25000, startup_us: None, exec_us: None },
            Sample::Ok {
                to: Ver::B,
                quiesce_us: 193,
                restart_us: 23915,
                commit_us: 1608,
                total_us: 26185,
                client_us: 30000,
                startup_us: Some(2350),
            },
            Sample::Ok {
                to: Ver::A,
                quiesce_us: 1,
                restart_us: 2,
                commit_us: 3,
                total_us: 6,
                client_us: 9,
                startup_us: None,
            },
        ];
        for s in all {
            assert_eq!(Sample::parse_line(&s.line()), Some(s));
        }
        let f = Sample::Fail { to: Ver::A, client_us: 7, message: "x\ty\nz".into() };
        assert_eq!(
            Sample::parse_line(&f.line()),
            Some(Sample::Fail { to: Ver::A, client_us: 7, message: "x y z".into() })
        );
        assert_eq!(Sample::parse_line("ok\tc\t1\t2\t3\t4\t5\t6"), None);
        assert_eq!(Sample::parse_line("ok\ta\t1\t2"), None);
        assert_eq!(us(23.122842000000002), 23123);
    }

    #[test]
    fn commands_are_bounded() {
        let (out, us) =
            output_within(Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]), Duration::from_secs(10))
                .unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()),
            (Some(3), &b"hi\n"[..], &b"err\n"[..])
        );
        assert!(us > 0);
        let t = Instant::now();
        let e = output_within(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("was killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // A detached descendant holding the output open does not hold the caller.
        let t = Instant::now();
        output_within(Command::new("sh").args(["-c", "sleep 3 & echo x"]), Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
