//! Quiesce/resume cycles through the real CLI (`mcr ctl NAME quiesce --json`), recording
//! the supervisor-measured convergence time (`elapsed_us`) of each cycle.
//!
//! Sample file format, one cycle a line, tab-separated:
//!   `ok <elapsed_us> <processes> <threads> <client_us>` or `fail <client_us> <message>`
//! where `client_us` is the wall time of the whole `mcr ctl ... quiesce` command
//! (process start, connect, quiesce, answer).

use crate::outcome::parse_json;
use mcr_protocol::Response;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Config {
    pub mcr: PathBuf,
    pub name: String,
    pub cycles: usize,
    /// Pause between a resume and the next quiesce, so a loaded server does work between.
    pub gap: Duration,
    /// `--timeout` passed to `mcr ctl quiesce`.
    pub quiesce_timeout_ms: u64,
    /// Hard bound on the whole loop.
    pub max_time: Duration,
    pub out: PathBuf,
}

#[derive(Debug, PartialEq)]
pub enum Sample {
    Ok { elapsed_us: u64, processes: u64, threads: u64, client_us: u64 },
    Fail { client_us: u64, message: String },
}

impl Sample {
    pub fn line(&self) -> String {
        match self {
            Sample::Ok { elapsed_us, processes, threads, client_us } => {
                format!("ok\t{elapsed_us}\t{processes}\t{threads}\t{client_us}")
            }
            Sample::Fail { client_us, message } => {
                format!("fail\t{client_us}\t{}", message.replace(['\t', '\n'], " "))
            }
        }
    }

    pub fn parse_line(line: &str) -> Option<Sample> {
        let f: Vec<&str> = line.split('\t').collect();
        match *f.first()? {
            "ok" if f.len() == 5 => Some(Sample::Ok {
                elapsed_us: f[1].parse().ok()?,
                processes: f[2].parse().ok()?,
                threads: f[3].parse().ok()?,
                client_us: f[4].parse().ok()?,
            }),
            "fail" if f.len() >= 2 => {
                Some(Sample::Fail { client_us: f[1].parse().ok()?, message: f.get(2).unwrap_or(&"").to_string() })
            }
            _ => None,
        }
    }
}

fn mcr(cfg: &Config, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(&cfg.mcr).arg("ctl").arg(&cfg.name).args(args).output()
}

pub fn one_cycle(cfg: &Config) -> Result<Sample, String> {
    let t = Instant::now();
    let timeout = cfg.quiesce_timeout_ms.to_string();
    let out = mcr(cfg, &["quiesce", "--json", "--timeout", &timeout]).map_err(|e| format!("cannot run mcr: {e}"))?;
    let client_us = t.elapsed().as_micros() as u64;
    let sample = match parse_json::<Response>("mcr ctl quiesce --json", &out.stdout) {
        Ok(Response::Quiesced { elapsed_us, processes, threads }) => {
            Sample::Ok { elapsed_us, processes: processes as u64, threads: threads as u64, client_us }
        }
        Ok(Response::QuiesceFailed { message, .. } | Response::Error { message }) => {
            Sample::Fail { client_us, message }
        }
        Ok(other) => Sample::Fail { client_us, message: format!("unexpected answer: {other:?}") },
        Err(_) => {
            return Err(format!(
                "mcr ctl {} quiesce failed ({}): {}{}",
                cfg.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    // A failed quiesce has already been rolled back by the supervisor; resume anyway
    // only after a success.
    if matches!(sample, Sample::Ok { .. }) {
        let r = mcr(cfg, &["resume"]).map_err(|e| format!("cannot run mcr: {e}"))?;
        if !r.status.success() {
            return Err(format!("mcr ctl {} resume failed: {}", cfg.name, String::from_utf8_lossy(&r.stderr).trim()));
        }
    }
    Ok(sample)
}

/// Runs the cycles, appending each sample to `cfg.out` as it comes. Returns how many
/// cycles ran (fewer than asked if `max_time` ran out).
pub fn run(cfg: &Config) -> Result<usize, String> {
    let mut f = std::fs::File::create(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let start = Instant::now();
    let mut n = 0;
    while n < cfg.cycles {
        if start.elapsed() > cfg.max_time {
            eprintln!("mcr-bench: quiesce: stopped after {n} cycles: --max-seconds reached");
            break;
        }
        let s = one_cycle(cfg)?;
        writeln!(f, "{}", s.line()).map_err(|e| e.to_string())?;
        n += 1;
        std::thread::sleep(cfg.gap);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_round_trip() {
        let a = Sample::Ok { elapsed_us: 5, processes: 3, threads: 3, client_us: 900 };
        assert_eq!(Sample::parse_line(&a.line()), Some(a));
        let b = Sample::Fail { client_us: 7, message: "x\ty".into() };
        assert_eq!(Sample::parse_line(&b.line()), Some(Sample::Fail { client_us: 7, message: "x y".into() }));
        assert_eq!(Sample::parse_line("junk"), None);
    }
}
