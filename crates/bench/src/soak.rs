//! The load of scripts/soak.sh: a kvd writer that remembers every answer it got.
//!
//! `conns` connections, a thread each; connection `c` owns the keys `w<c>:<i>` (i below
//! `keys / conns`), so no two connections write the same key and the last value kvd
//! acknowledged for a key is known without ordering between connections. Round after
//! round, each connection sends batches of `depth` pairs `SET key value` + `GET key`
//! (the value names the round, so an old value is told from the latest) and checks every
//! reply: `OK` for the SET, `VALUE` with the value just set for the GET. Anything else
//! counts as a failed request; so does every request of a batch whose connection broke
//! (the connection is then reopened), and a SET without its reply may or may not have
//! happened: the key is then expected to hold either value.
//!
//! It runs until `stop_file` exists (or `max_time`), then reads every key back on a
//! fresh connection: a key whose SET was acknowledged must hold the last acknowledged
//! value (`lost`: NOTFOUND; `stale`: another value). The key space is bounded and the
//! values have a fixed length, so kvd's memory does not grow with the soak's duration.
//! `rate` (requests per second over all connections, 0 = none) caps the load, so a soak
//! of many minutes need not take a whole core from a shared machine.

use crate::kvload::addr;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Config {
    pub port: u16,
    pub conns: usize,
    pub keys: usize,
    /// SET+GET pairs per batch.
    pub depth: usize,
    pub rate: u64,
    pub stop_file: PathBuf,
    pub max_time: Duration,
    /// A reply not arriving within this time breaks the connection (counted as failed).
    pub io_timeout: Duration,
    /// Rewritten about every second with the figures so far (`key=value` words).
    pub progress: Option<PathBuf>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub requests: u64,
    pub failed: u64,
    pub reconnects: u64,
    /// Keys with an acknowledged SET, read back at the end.
    pub keys: u64,
    pub lost: u64,
    pub stale: u64,
    pub seconds: u64,
}

impl Outcome {
    pub fn line(&self) -> String {
        format!(
            "requests={} failed={} reconnects={} keys={} lost={} stale={} seconds={}",
            self.requests, self.failed, self.reconnects, self.keys, self.lost, self.stale, self.seconds
        )
    }
}

/// What kvd must answer to `GET key` after the run.
#[derive(Clone, Default)]
struct Expect {
    acked: Option<String>,
    /// A SET whose reply never came: kvd may hold this value instead.
    unsure: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    /// The first few failures, for the report.
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, n: u64, what: String) {
        self.failed.fetch_add(n, Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 10 {
            e.push(what);
        }
    }
}

struct Line {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

fn open(port: u16, io_timeout: Duration) -> std::io::Result<Line> {
    let s = TcpStream::connect_timeout(&addr(port), io_timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(io_timeout))?;
    s.set_write_timeout(Some(io_timeout))?;
    Ok(Line { r: BufReader::new(s.try_clone()?), w: s })
}

/// Reads one reply line (without its `\n`); EOF is an error.
fn reply(l: &mut Line) -> std::io::Result<String> {
    let mut s = String::new();
    if l.r.read_line(&mut s)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed the connection"));
    }
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

fn value(round: u64, c: usize, i: usize) -> String {
    format!("r{round:010}c{c:03}i{i:07}")
}

/// Connection `c`'s loop; returns what each of its keys must hold.
fn writer(cfg: &Config, c: usize, per_conn: usize, shared: &Shared, pace: Duration) -> Vec<Expect> {
    let mut expect = vec![Expect::default(); per_conn];
    let mut line: Option<Line> = None;
    let deadline = Instant::now() + cfg.max_time;
    let mut next_batch = Instant::now();
    let mut round = 0u64;
    let mut i = 0usize;
    while !shared.stop.load(Relaxed) && Instant::now() < deadline {
        let Some(l) = line.as_mut() else {
            match open(cfg.port, cfg.io_timeout) {
                Ok(l) => line = Some(l),
                Err(e) => {
                    // Connecting is not a request; a server that stays away ends the run
                    // through the deadline and the lost keys.
                    shared.fail(0, format!("conn {c}: cannot reconnect: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        };
        let batch: Vec<usize> = (0..cfg.depth.min(per_conn)).map(|k| (i + k) % per_conn).collect();
        let mut req = String::new();
        for &k in &batch {
            req.push_str(&format!("SET w{c}:{k} {}\nGET w{c}:{k}\n", value(round, c, k)));
        }
        let mut answered = 0usize;
        let result = l.w.write_all(req.as_bytes()).and_then(|()| {
            for &k in &batch {
                let v = value(round, c, k);
                let set = reply(l);
                answered += 1;
                match set {
                    Ok(r) if r == "OK" => expect[k] = Expect { acked: Some(v.clone()), unsure: None },
                    Ok(r) => {
                        expect[k].unsure = Some(v.clone());
                        shared.fail(1, format!("conn {c}: SET w{c}:{k} replied '{r}'"));
                    }
                    Err(e) => {
                        answered -= 1;
                        expect[k].unsure = Some(v);
                        return Err(e);
                    }
                }
                let got = reply(l)?;
                answered += 1;
                if got != format!("VALUE {v}") {
                    shared.fail(1, format!("conn {c}: GET w{c}:{k} replied '{got}', wanted 'VALUE {v}'"));
                }
            }
            Ok(())
        });
        shared.requests.fetch_add(answered as u64, Relaxed);
        if let Err(e) = result {
            // Every SET of the batch not answered may or may not have been applied.
            for &k in &batch[answered.div_ceil(2)..] {
                expect[k].unsure = Some(value(round, c, k));
            }
            shared.fail((2 * batch.len() - answered) as u64, format!("conn {c}: {e}"));
            shared.reconnects.fetch_add(1, Relaxed);
            line = None;
        }
        i += batch.len();
        if i >= per_conn {
            i = 0;
            round += 1;
        }
        if !pace.is_zero() {
            next_batch += pace;
            let now = Instant::now();
            if next_batch > now {
                std::thread::sleep(next_batch - now);
            } else if now - next_batch > Duration::from_secs(1) {
                next_batch = now; // the server stalled (an update): no burst to catch up
            }
        }
    }
    expect
}

/// Reads every key back; returns (keys checked, lost, stale) and reports each bad key.
fn verify(cfg: &Config, expect: &[Vec<Expect>], shared: &Shared) -> Result<(u64, u64, u64), String> {
    let mut l = open(cfg.port, cfg.io_timeout).map_err(|e| format!("verify: cannot connect: {e}"))?;
    let all: Vec<(String, &Expect)> = expect
        .iter()
        .enumerate()
        .flat_map(|(c, keys)| keys.iter().enumerate().map(move |(k, e)| (format!("w{c}:{k}"), e)))
        .filter(|(_, e)| e.acked.is_some() || e.unsure.is_some())
        .collect();
    let (mut checked, mut lost, mut stale) = (0, 0, 0);
    for chunk in all.chunks(512) {
        let req: String = chunk.iter().map(|(k, _)| format!("GET {k}\n")).collect();
        l.w.write_all(req.as_bytes()).map_err(|e| format!("verify: write: {e}"))?;
        for (k, e) in chunk {
            let got = reply(&mut l).map_err(|e| format!("verify: read: {e}"))?;
            let ok = |v: &Option<String>| v.as_ref().is_some_and(|v| got == format!("VALUE {v}"));
            if ok(&e.acked) || ok(&e.unsure) || (e.acked.is_none() && got == "NOTFOUND") {
                checked += e.acked.is_some() as u64;
                continue;
            }
            checked += 1;
            if got == "NOTFOUND" {
                lost += 1;
            } else {
                stale += 1;
            }
            shared.fail(0, format!("key {k}: '{got}', acknowledged {:?} (unsure {:?})", e.acked, e.unsure));
        }
    }
    Ok((checked, lost, stale))
}

fn write_progress(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

pub fn run(cfg: &Config) -> Result<Outcome, String> {
    if cfg.conns == 0 || cfg.depth == 0 || cfg.keys < cfg.conns {
        return Err("conns and depth must be positive and keys at least conns".into());
    }
    let per_conn = cfg.keys / cfg.conns;
    // Batches of 2*depth requests, spread over the connections.
    let pace = match cfg.rate {
        0 => Duration::ZERO,
        r => Duration::from_secs_f64((2 * cfg.depth.min(per_conn) * cfg.conns) as f64 / r as f64),
    };
    let shared = Shared {
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    };
    let t0 = Instant::now();
    let snapshot = |s: &Shared| {
        format!(
            "requests={} failed={} reconnects={} seconds={}\n",
            s.requests.load(Relaxed),
            s.failed.load(Relaxed),
            s.reconnects.load(Relaxed),
            t0.elapsed().as_secs()
        )
    };
    let expect = std::thread::scope(|scope| {
        let shared = &shared;
        let handles: Vec<_> =
            (0..cfg.conns).map(|c| scope.spawn(move || writer(cfg, c, per_conn, shared, pace))).collect();
        let mut last_progress = Instant::now();
        while !cfg.stop_file.exists() && t0.elapsed() < cfg.max_time && !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if let Some(p) = &cfg.progress {
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    write_progress(p, &snapshot(shared));
                    last_progress = Instant::now();
                }
            }
        }
        shared.stop.store(true, Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a writer thread panicked".to_string()))
            .collect::<Result<Vec<Vec<Expect>>, String>>()
    })?;
    if let Some(p) = &cfg.progress {
        write_progress(p, &snapshot(&shared));
    }
    let (keys, lost, stale) = verify(cfg, &expect, &shared)?;
    for e in shared.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        eprintln!("mcr-bench: kvd-soak: {e}");
    }
    Ok(Outcome {
        requests: shared.requests.load(Relaxed),
        failed: shared.failed.load(Relaxed),
        reconnects: shared.reconnects.load(Relaxed),
        keys,
        lost,
        stale,
        seconds: t0.elapsed().as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A stand-in for kvd's SET/GET that forgets the SETs of keys named in `forget`.
    fn fake_kvd(forget: &'static [&'static str]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let table = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let table = table.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        let mut it = line.splitn(3, ' ');
                        let mut t = table.lock().unwrap();
                        let reply = match (it.next(), it.next(), it.next()) {
                            (Some("SET"), Some(k), Some(v)) => {
                                t.insert(k.to_string(), v.to_string());
                                "OK".to_string()
                            }
                            (Some("GET"), Some(k), None) if forget.contains(&k) => "NOTFOUND".into(),
                            (Some("GET"), Some(k), None) => {
                                t.get(k).map_or("NOTFOUND".into(), |v| format!("VALUE {v}"))
                            }
                            _ => "ERR unknown command".into(),
                        };
                        drop(t);
                        if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn cfg(port: u16, dir: &std::path::Path) -> Config {
        Config {
            port,
            conns: 2,
            keys: 40,
            depth: 4,
            rate: 0,
            stop_file: dir.join("stop"),
            max_time: Duration::from_millis(300),
            io_timeout: Duration::from_secs(2),
            progress: Some(dir.join("progress")),
        }
    }

    fn tmp(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mcr-bench-soak-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_faithful_server_loses_nothing() {
        let dir = tmp("ok");
        let out = run(&cfg(fake_kvd(&[]), &dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.requests > 0 && out.keys == 40, "{out:?}");
        assert_eq!((out.failed, out.lost, out.stale, out.reconnects), (0, 0, 0, 0), "{out:?}");
    }

    #[test]
    fn a_key_the_server_forgets_is_lost_and_its_reads_fail() {
        let dir = tmp("lost");
        let out = run(&cfg(fake_kvd(&["w1:3"]), &dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((out.lost, out.stale), (1, 0), "{out:?}");
        assert!(out.failed > 0, "the GETs right after each SET of w1:3 failed: {out:?}");
    }

    #[test]
    fn the_stop_file_ends_the_run_and_the_rate_caps_it() {
        let dir = tmp("stop");
        let mut c = cfg(fake_kvd(&[]), &dir);
        c.max_time = Duration::from_secs(30);
        c.rate = 400;
        std::fs::write(&c.stop_file, "").unwrap();
        let t = Instant::now();
        let out = run(&c).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(out.requests <= 2 * 2 * 4 * 2, "at most a batch or two per connection: {out:?}");
    }
}
