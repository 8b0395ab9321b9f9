//! Quiesce/resume cycles through the real CLI (`mcr ctl NAME quiesce --json`), recording
//! the supervisor-measured convergence time (`elapsed_us`) of each cycle.
//!
//! Sample file format, one cycle a line, tab-separated:
//!   `ok <elapsed_us> <processes> <threads> <client_us>` or `fail <client_us> <message>`
//! where `client_us` is the wall time of the whole `mcr ctl ... quiesce` command
//! (process start, connect, quiesce, answer).

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

/// The unsigned integer value of `"key"` in a flat JSON object (std only; enough for the
/// CLI's `{"response":"quiesced","elapsed_us":N,...}`).
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let rest = &json[json.find(&pat)? + pat.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The string value of the first `"key"` (simple escapes decoded).
pub fn json_str(json: &str, key: &str) -> Option<String> {
    let mut chars = json_value(json, key)?.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).unwrap_or('?'));
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}

/// The text right after `"key":` (first occurrence), leading blanks skipped.
fn json_value<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\"");
    let rest = &json[json.find(&pat)? + pat.len()..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// The number value of the first `"key"` (`null` or absent: None).
pub fn json_f64(json: &str, key: &str) -> Option<f64> {
    let v = json_value(json, key)?;
    let end = v.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(v.len());
    v[..end].parse().ok()
}

pub fn json_bool(json: &str, key: &str) -> Option<bool> {
    let v = json_value(json, key)?;
    if v.starts_with("true") {
        Some(true)
    } else if v.starts_with("false") {
        Some(false)
    } else {
        None
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
    let text = String::from_utf8_lossy(&out.stdout);
    let sample = match json_str(&text, "response").as_deref() {
        Some("quiesced") => Sample::Ok {
            elapsed_us: json_u64(&text, "elapsed_us").ok_or("no elapsed_us in the answer")?,
            processes: json_u64(&text, "processes").unwrap_or(0),
            threads: json_u64(&text, "threads").unwrap_or(0),
            client_us,
        },
        Some(other) => {
            let msg = json_str(&text, "message").unwrap_or_else(|| other.to_string());
            Sample::Fail { client_us, message: msg }
        }
        None => {
            return Err(format!(
                "mcr ctl {} quiesce failed ({}): {}{}",
                cfg.name,
                out.status,
                text.trim(),
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
    fn parses_pretty_and_compact_json() {
        let pretty =
            "{\n  \"response\": \"quiesced\",\n  \"elapsed_us\": 293,\n  \"processes\": 1,\n  \"threads\": 1\n}\n";
        assert_eq!(json_str(pretty, "response").as_deref(), Some("quiesced"));
        assert_eq!(json_u64(pretty, "elapsed_us"), Some(293));
        assert_eq!(json_u64(pretty, "threads"), Some(1));
        let compact = r#"{"response":"quiesce_failed","message":"timed out","laggards":[]}"#;
        assert_eq!(json_str(compact, "response").as_deref(), Some("quiesce_failed"));
        assert_eq!(json_str(compact, "message").as_deref(), Some("timed out"));
        assert_eq!(json_u64(compact, "elapsed_us"), None);
    }

    #[test]
    fn parses_floats_bools_and_escapes() {
        let j = "{\n  \"committed\": true,\n  \"message\": \"'k' now \\\"runs\\\"\\n\",\n  \"phases\": {\n    \"quiesce_ms\": 0.193018,\n    \"restart_ms\": 23.122842000000002,\n    \"x\": 1e-3\n  },\n  \"startup_ms\": null\n}";
        assert_eq!(json_bool(j, "committed"), Some(true));
        assert_eq!(json_bool(r#"{"committed":false}"#, "committed"), Some(false));
        assert_eq!(json_f64(j, "quiesce_ms"), Some(0.193018));
        assert_eq!(json_f64(j, "restart_ms"), Some(23.122842000000002));
        assert_eq!(json_f64(j, "x"), Some(0.001));
        assert_eq!(json_f64(j, "startup_ms"), None);
        assert_eq!(json_f64(j, "commit_ms"), None);
        assert_eq!(json_str(j, "message").as_deref(), Some("'k' now \"runs\"\n"));
    }

    #[test]
    fn sample_lines_round_trip() {
        let a = Sample::Ok { elapsed_us: 5, processes: 3, threads: 3, client_us: 900 };
        assert_eq!(Sample::parse_line(&a.line()), Some(a));
        let b = Sample::Fail { client_us: 7, message: "x\ty".into() };
        assert_eq!(Sample::parse_line(&b.line()), Some(Sample::Fail { client_us: 7, message: "x y".into() }));
        assert_eq!(Sample::parse_line("junk"), None);
    }
}
