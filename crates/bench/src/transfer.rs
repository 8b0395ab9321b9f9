//! State transfer against open connections and live objects: one instance started under
//! `mcr run --detach`, optionally filled with keys, with `--conns` idle client connections
//! open (each made a couple of requests first), then updated `--updates` times back and
//! forth between two versions with `mcr update --json`; the phases and the `transfer`
//! section of every update are recorded.
//!
//! Protocols: `kvd` (fixtures/kvd.c; `--keys` SETs, 3 heap blocks each; every connection
//! SETs and GETs its own key), `http` (one keep-alive `GET /` per connection, nginx), and
//! two where each connection is a client session a server serves from a stack:
//! `connd` (fixtures/connd.c, a process per connection: `PID` and 3 session variables
//! SET) and `poold` (fixtures/poold.c, a worker thread per connection: `SESSION`).
//! After each committed update the connections are checked: with the state transferred
//! every connection must still answer with its own value (kvd; and `COUNT` must be
//! unchanged), its own 3 variables from the same PID (connd) or the same session id
//! (poold), else the sample is a failure (a session that died); with `--fresh-state`
//! connections closed by the update are counted (`closed`) and reopened, so the next
//! update sees as many.
//!
//! Sample file, one update a line, tab-separated: `ok <to> <conns> <keys> <closed>`
//! followed by the values of [`FIELDS`] in order (`-` when absent), or
//! `fail <to> <conns> <keys> <message>`.

use crate::kvload::addr;
use crate::outcome::{update_report, Report};
use crate::update::output_within;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The numbers taken from `mcr update --json`, in the order of the sample file.
pub const FIELDS: [&str; 28] = [
    "drain_ms",
    "quiesce_ms",
    "restart_ms",
    "transfer_ms",
    "commit_ms",
    "total_ms",
    "client_ms",
    "globals",
    "globals_clean",
    "objects",
    "bytes",
    "live_objects",
    "connections",
    "dirty_pages",
    "clean_pages",
    "heap_scan_ms",
    "trace_ms",
    "connections_ms",
    "respawned_processes",
    "in_place",
    "pinned",
    "heap_adopt_ms",
    "untouched",
    "heap_bytes_adopted",
    "heap_bytes_mapped",
    "walk_ms",
    "check_ms",
    "write_ms",
];

/// The value of field `name` of [`FIELDS`] in an update's outcome (`client_ms` is the
/// benchmark's own); `None` when the outcome has none (no transfer with --fresh-state).
fn figure(o: &Report, name: &str) -> Option<f64> {
    let p = &o.phases;
    let phase = match name {
        "drain_ms" => Some(p.drain_ms),
        "quiesce_ms" => Some(p.quiesce_ms),
        "restart_ms" => Some(p.restart_ms),
        "transfer_ms" => Some(p.transfer_ms),
        "commit_ms" => Some(p.commit_ms),
        "total_ms" => Some(p.total_ms),
        _ => None,
    };
    if phase.is_some() {
        return phase;
    }
    let t = o.transfer.as_ref()?;
    Some(match name {
        "globals" => t.state.globals as f64,
        "globals_clean" => t.state.globals_clean as f64,
        "objects" => t.state.objects as f64,
        "bytes" => t.state.bytes as f64,
        "live_objects" => t.state.live_objects as f64,
        "connections" => t.connections as f64,
        "dirty_pages" => t.dirty_pages as f64,
        "clean_pages" => t.clean_pages as f64,
        "heap_scan_ms" => t.heap_scan_ms,
        "trace_ms" => t.trace_ms,
        "connections_ms" => t.connections_ms,
        "respawned_processes" => t.respawned_processes as f64,
        "in_place" => t.state.in_place as f64,
        "pinned" => t.state.pinned as f64,
        "heap_adopt_ms" => t.heap_adopt_ms,
        "untouched" => t.state.untouched as f64,
        "heap_bytes_adopted" => t.heap_bytes_adopted as f64,
        "heap_bytes_mapped" => t.heap_bytes_mapped as f64,
        "walk_ms" => t.state.walk_ms,
        "check_ms" => t.state.check_ms,
        "write_ms" => t.state.write_ms,
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Kvd,
    Http,
    /// fixtures/connd: each connection a session in its own process.
    Connd,
    /// fixtures/poold: each connection a session served by a worker thread.
    Poold,
}

impl Proto {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kvd" => Some(Self::Kvd),
            "http" => Some(Self::Http),
            "connd" => Some(Self::Connd),
            "poold" => Some(Self::Poold),
            _ => None,
        }
    }

    /// Connections are client sessions (the report calls them so).
    fn sessions(self) -> bool {
        matches!(self, Self::Connd | Self::Poold)
    }
}

/// An open client connection and what identifies its session on the server: connd's
/// `PID n` reply, poold's session id (empty for kvd and http).
struct Conn {
    s: TcpStream,
    ident: String,
}

pub struct Config {
    pub mcr: PathBuf,
    pub name: String,
    pub a: String,
    pub b: String,
    pub args: Vec<String>,
    pub port: u16,
    pub proto: Proto,
    pub conns: usize,
    pub keys: usize,
    pub updates: usize,
    pub fresh_state: bool,
    pub timeout_ms: u64,
    pub out: PathBuf,
}

const IO: Duration = Duration::from_secs(10);

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr(port), IO).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO)).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends `req` and reads until `n` reply lines arrived; returns them.
fn lines(s: &mut TcpStream, req: &[u8], n: usize) -> Result<Vec<String>, String> {
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while buf.iter().filter(|&&b| b == b'\n').count() < n {
        let k = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(String::from_utf8_lossy(&buf).lines().map(str::to_string).collect())
}

/// One keep-alive HTTP GET; Ok once the whole response (Content-Length) was read.
fn http_get(s: &mut TcpStream) -> Result<(), String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let k = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..k]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or("no Content-Length in the response")?;
            if !text.starts_with("HTTP/1.1 200") {
                return Err(format!("bad response: {}", text.lines().next().unwrap_or("")));
            }
            if buf.len() >= h + 4 + len {
                return Ok(());
            }
        }
    }
}

/// Checks that kvd holds every key [`fill`] stored, with its value (pipelined GETs).
pub fn check_fill(port: u16, keys: usize) -> Result<(), String> {
    let mut s = connect(port)?;
    let mut i = 0;
    while i < keys {
        let n = (keys - i).min(512);
        let mut req = Vec::with_capacity(n * 16);
        for k in i..i + n {
            let _ = writeln!(req, "GET k:{k}");
        }
        let r = lines(&mut s, &req, n)?;
        if let Some((k, bad)) = r.iter().enumerate().find(|(j, l)| **l != format!("VALUE v-{:014}", i + j)) {
            return Err(format!("GET k:{} replied '{bad}'", i + k));
        }
        i += n;
    }
    Ok(())
}

/// Fills kvd with `keys` keys (`k:<i>` = 16-byte value), pipelined in batches.
pub fn fill(port: u16, keys: usize) -> Result<(), String> {
    let mut s = connect(port)?;
    let mut i = 0;
    while i < keys {
        let n = (keys - i).min(512);
        let mut req = Vec::with_capacity(n * 32);
        for k in i..i + n {
            let _ = writeln!(req, "SET k:{k} v-{k:014}");
        }
        let r = lines(&mut s, &req, n)?;
        if let Some(bad) = r.iter().find(|l| *l != "OK") {
            return Err(format!("SET replied '{bad}'"));
        }
        i += n;
    }
    Ok(())
}

/// connd: the 3 session variables of session `i`, (name, value).
fn connd_vars(i: usize) -> [(String, String); 3] {
    ["colour", "shape", "size"].map(|v| (format!("{v}:{i}"), format!("{v}-of-session-{i}")))
}

/// poold: the session id in a `SESSION id=N cmds=M` reply.
fn poold_id(line: &str) -> Option<&str> {
    line.strip_prefix("SESSION ")?.split_whitespace().find_map(|kv| kv.strip_prefix("id="))
}

/// Opens connection `i` and makes its first requests.
fn open(cfg: &Config, i: usize) -> Result<Conn, String> {
    let mut s = connect(cfg.port)?;
    let mut ident = String::new();
    match cfg.proto {
        Proto::Kvd => {
            let r = lines(&mut s, format!("SET c:{i} conn-{i}\nGET c:{i}\n").as_bytes(), 2)?;
            if r != ["OK".to_string(), format!("VALUE conn-{i}")] {
                return Err(format!("connection {i}: unexpected replies {r:?}"));
            }
        }
        Proto::Http => {
            http_get(&mut s)?;
            http_get(&mut s)?;
        }
        Proto::Connd => {
            let vars = connd_vars(i);
            let mut req = b"PID\n".to_vec();
            for (k, v) in &vars {
                let _ = writeln!(req, "SET {k} {v}");
            }
            let r = lines(&mut s, &req, 1 + vars.len())?;
            if !r[0].starts_with("PID ") || r[1..].iter().any(|l| l != "OK") {
                return Err(format!("session {i}: unexpected replies {r:?}"));
            }
            ident = r[0].clone();
        }
        Proto::Poold => {
            // The reply comes from the worker thread that now serves the session.
            let r = lines(&mut s, b"SESSION\n", 1)?;
            ident = poold_id(&r[0]).ok_or_else(|| format!("session {i}: unexpected reply '{}'", r[0]))?.to_string();
        }
    }
    Ok(Conn { s, ident })
}

fn count(port: u16) -> Result<String, String> {
    let mut s = connect(port)?;
    Ok(lines(&mut s, b"COUNT\n", 1)?.remove(0))
}

/// After an update: every connection still serves (Err otherwise), or with
/// `--fresh-state` the closed ones are counted and reopened.
fn check(cfg: &Config, socks: &mut [Conn]) -> Result<usize, String> {
    let mut closed = 0;
    for (i, c) in socks.iter_mut().enumerate() {
        let s = &mut c.s;
        let r = match cfg.proto {
            Proto::Kvd => lines(s, format!("GET c:{i}\n").as_bytes(), 1).and_then(|r| {
                if r[0] == format!("VALUE conn-{i}") {
                    Ok(())
                } else {
                    Err(format!("GET c:{i} replied '{}'", r[0]))
                }
            }),
            Proto::Http => http_get(s),
            Proto::Connd => {
                let vars = connd_vars(i);
                let mut req = Vec::new();
                for (k, _) in &vars {
                    let _ = writeln!(req, "GET {k}");
                }
                req.extend_from_slice(b"PID\n");
                lines(s, &req, vars.len() + 1).and_then(|r| {
                    for ((k, v), got) in vars.iter().zip(&r) {
                        if *got != format!("VALUE {v}") {
                            return Err(format!("GET {k} replied '{got}'"));
                        }
                    }
                    match r.get(vars.len()) {
                        Some(p) if *p == c.ident => Ok(()),
                        p => Err(format!("PID replied {p:?}, '{}' before the update", c.ident)),
                    }
                })
            }
            Proto::Poold => lines(s, b"SESSION\nPING\n", 2).and_then(|r| match (poold_id(&r[0]), r.get(1)) {
                (Some(id), Some(p)) if id == c.ident && p == "PONG" => Ok(()),
                _ => Err(format!("replied {r:?}, session id={} before the update", c.ident)),
            }),
        };
        if let Err(e) = r {
            if !cfg.fresh_state {
                let what = if cfg.proto.sessions() { "session" } else { "connection" };
                return Err(format!("{what} {i} after the update: {e}"));
            }
            closed += 1;
            *c = open(cfg, i)?;
        }
    }
    Ok(closed)
}

fn mcr(cfg: &Config, args: &[&str], limit: Duration) -> Result<std::process::Output, String> {
    Ok(output_within(Command::new(&cfg.mcr).args(args), limit)?.0)
}

pub fn run(cfg: &Config) -> Result<usize, String> {
    let mut f = std::fs::File::create(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let out = output_within(
        Command::new(&cfg.mcr).args(["run", "--detach", "--name", &cfg.name, "--"]).arg(&cfg.a).args(&cfg.args),
        Duration::from_secs(30),
    )?
    .0;
    if !out.status.success() {
        return Err(format!("mcr run failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let result = (|| {
        let t = Instant::now();
        while connect(cfg.port).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the server does not accept connections".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if cfg.proto == Proto::Kvd && cfg.keys > 0 {
            fill(cfg.port, cfg.keys)?;
        }
        let mut socks = (0..cfg.conns).map(|i| open(cfg, i)).collect::<Result<Vec<_>, _>>()?;
        let expect = if cfg.proto == Proto::Kvd { Some(count(cfg.port)?) } else { None };
        let mut running_b = false;
        let mut n = 0;
        for _ in 0..cfg.updates {
            let to = if running_b { &cfg.a } else { &cfg.b };
            let tag = if running_b { "a" } else { "b" };
            let timeout = cfg.timeout_ms.to_string();
            let mut cmd = Command::new(&cfg.mcr);
            cmd.args(["update", &cfg.name, "--json", "--timeout", &timeout]);
            if cfg.fresh_state {
                cmd.arg("--fresh-state");
            }
            cmd.arg("--").arg(to).args(&cfg.args);
            let head = format!("{tag}\t{}\t{}", cfg.conns, cfg.keys);
            n += 1;
            let (o, client_us) =
                match output_within(&mut cmd, Duration::from_millis(cfg.timeout_ms) + Duration::from_secs(10)) {
                    Ok(x) => x,
                    Err(e) => {
                        let e = if e.contains("did not finish") {
                            format!("mcr update hung: killed after {} s", cfg.timeout_ms / 1000 + 10)
                        } else {
                            e.replace(['\t', '\n'], " ")
                        };
                        writeln!(f, "fail\t{head}\t{e}").map_err(|e| e.to_string())?;
                        return Err(e);
                    }
                };
            let outcome = match update_report(&o.stdout) {
                Ok(outcome) => outcome,
                Err(e) => {
                    writeln!(f, "fail\t{head}\t{}", e.replace(['\t', '\n'], " ")).map_err(|e| e.to_string())?;
                    return Err(e);
                }
            };
            let outcome = match outcome {
                Some(o) if o.committed => o,
                other => {
                    let why =
                        other.map_or_else(|| String::from_utf8_lossy(&o.stderr).trim().to_string(), |o| o.message);
                    writeln!(f, "fail\t{head}\t{}", why.replace(['\t', '\n'], " ")).map_err(|e| e.to_string())?;
                    eprintln!("mcr-bench: transfer: update to {to} did not commit: {why}");
                    continue;
                }
            };
            running_b = !running_b;
            let closed = match check(cfg, &mut socks) {
                Ok(c) => c,
                Err(e) => {
                    writeln!(f, "fail\t{head}\t{e}").map_err(|e| e.to_string())?;
                    return Err(e);
                }
            };
            if let Some(want) = &expect {
                let got = count(cfg.port)?;
                if &got != want {
                    let e = format!("{want} before the updates, {got} after");
                    writeln!(f, "fail\t{head}\t{e}").map_err(|e| e.to_string())?;
                    return Err(e);
                }
            }
            let vals: Vec<String> = FIELDS
                .iter()
                .map(|k| {
                    let v = if *k == "client_ms" { Some(client_us as f64 / 1000.0) } else { figure(&outcome, k) };
                    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
                })
                .collect();
            writeln!(f, "ok\t{head}\t{closed}\t{}", vals.join("\t")).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(socks);
        Ok(n)
    })();
    if result.is_err() {
        // An update killed half-way may leave its new version behind.
        let _ = mcr(cfg, &["stop", &format!("{}.next", cfg.name), "--timeout", "2"], Duration::from_secs(20));
    }
    let stop = mcr(cfg, &["stop", &cfg.name, "--timeout", "5"], Duration::from_secs(20));
    let n = result?;
    match stop {
        Ok(o) if o.status.success() => Ok(n),
        Ok(o) => Err(format!("mcr stop failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(e),
    }
}

/// One parsed `ok` line (conns and keys are kept for ad-hoc analysis of the raw files).
#[allow(dead_code)]
pub struct Sample {
    pub conns: usize,
    pub keys: usize,
    pub closed: usize,
    pub v: Vec<Option<f64>>,
}

impl Sample {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.v[FIELDS.iter().position(|f| *f == k)?]
    }
}

/// Parses a sample file: the committed updates, and the failure messages.
pub fn parse(text: &str) -> (Vec<Sample>, Vec<String>) {
    let (mut ok, mut fail) = (Vec::new(), Vec::new());
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        match f.first() {
            Some(&"ok") if f.len() == 5 + FIELDS.len() => {
                let (Ok(conns), Ok(keys), Ok(closed)) = (f[2].parse(), f[3].parse(), f[4].parse()) else { continue };
                ok.push(Sample { conns, keys, closed, v: f[5..].iter().map(|x| x.parse().ok()).collect() });
            }
            Some(&"fail") => fail.push(f[4..].join(" ")),
            _ => {}
        }
    }
    (ok, fail)
}

fn med(xs: &[f64]) -> Option<f64> {
    crate::stats::median(xs)
}

fn p90(xs: &[f64]) -> Option<f64> {
    crate::stats::percentile(xs, 90.0)
}

fn f(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.prec$}"))
}

fn col(ok: &[Sample], k: &str) -> Vec<f64> {
    ok.iter().filter_map(|s| s.get(k)).collect()
}

fn verdict(x: Option<f64>, budget: f64) -> String {
    match x {
        Some(v) if v < budget => format!("< {budget} ms (met)"),
        Some(_) => format!("< {budget} ms (**NOT met**)"),
        None => format!("< {budget} ms (not measured)"),
    }
}

/// `round<TAB>variant<TAB>value...` lines: values by round for each variant.
fn by_round(text: &str, col_idx: usize) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> {
    let mut m: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> = Default::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if let (Some(r), Some(v), Some(x)) = (f.first(), f.get(1), f.get(col_idx).and_then(|x| x.parse::<f64>().ok())) {
            m.entry(r.to_string()).or_default().insert(v.to_string(), x);
        }
    }
    m
}

/// Per-round ratios `num/den` of the values in column `col_idx`.
fn ratios(text: &str, col_idx: usize, num: &str, den: &str) -> Vec<f64> {
    by_round(text, col_idx).values().filter_map(|v| Some(v.get(num)? / v.get(den)?)).collect()
}

fn ratio_cell(r: &[f64]) -> String {
    if r.is_empty() {
        return "not measured".into();
    }
    format!("{} (rounds {}–{}, n={})", f(med(r), 3), f(crate::stats::min(r), 3), f(crate::stats::max(r), 3), r.len())
}

/// The markdown section of bench/transfer.sh, from the files in `dir`.
pub fn report(dir: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    let meta = crate::report::parse_meta(&read("meta.txt"));
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut o = String::new();
    let _ = writeln!(o, "## State transfer, allocation metadata and memory (bench/transfer.sh)");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{} · {} cores · Linux {} · mcr {} · load avg before/after {} / {} · {} run",
        m("date"),
        m("nproc"),
        m("kernel"),
        m("git"),
        m("loadavg_start"),
        m("loadavg_end"),
        m("mode")
    );
    let _ = writeln!(o);
    // 1a. connections
    let _ = writeln!(o, "**State transfer vs open connections** (kvd ↔ kvd-v2-layout, idle clients that each made 2 requests, no keys; median / p90 over the committed updates):");
    let _ = writeln!(o);
    let _ = writeln!(o, "| connections | committed | transfer_ms | of which connections_ms | whole update (total_ms) | budget (transfer) | paper (fig. 3) |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for (c, budget, paper) in [
        (0, 20.0, "28–187 ms"),
        (4, 50.0, "–"),
        (10, 50.0, "–"),
        (100, 50.0, "+371 ms over no connections"),
        (1000, 200.0, "–"),
    ] {
        let text = read(&format!("transfer-conns-{c}.tsv"));
        let (ok, fail) = parse(&text);
        let t = col(&ok, "transfer_ms");
        let budget_txt = if c == 4 || c == 10 { "– (50 ms at 100)".to_string() } else { verdict(p90(&t), budget) };
        let state = committed(&text, ok.len(), &fail);
        let _ = writeln!(
            o,
            "| {c} | {state} | {} / {} | {} / {} | {} / {} | {budget_txt} (on the p90) | {paper} |",
            f(med(&t), 2),
            f(p90(&t), 2),
            f(med(&col(&ok, "connections_ms")), 2),
            f(p90(&col(&ok, "connections_ms")), 2),
            f(med(&col(&ok, "total_ms")), 2),
            f(p90(&col(&ok, "total_ms")), 2),
        );
    }
    let _ = writeln!(o);
    sessions_table(&mut o, &read);
    // 1b. keys, code-only
    code_only_table(&mut o, &read);
    // 1c. keys, layout
    let _ = writeln!(o, "**State transfer vs live objects, layout update** (kvd ↔ kvd-v2-layout: the node struct grows, keys and values do not change; no connections; 3 heap blocks per key; median over the committed updates). Per transformed object: transfer time over the blocks not left in place (budget 0.5 µs):");
    let _ = writeln!(o);
    let _ = writeln!(o, "| keys | committed | live objects | objects / MB moved | transfer_ms (p90) | heap_scan_ms | trace_ms (walk / write) | pages skipped as clean | globals skipped as clean | whole update | in place | µs per transformed object |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for k in [0, 1000, 10000, 100000, 1000000] {
        let text = read(&format!("transfer-keys-{k}.tsv"));
        let (ok, fail) = parse(&text);
        let state = committed(&text, ok.len(), &fail);
        let share = |a: &str, b: &str| {
            let v: Vec<f64> = ok
                .iter()
                .filter_map(|s| {
                    let (x, y) = (s.get(a)?, s.get(b)?);
                    (x + y > 0.0).then(|| x / (x + y))
                })
                .collect();
            med(&v).map_or_else(|| "–".into(), |v| format!("{:.0}%", v * 100.0))
        };
        let t = col(&ok, "transfer_ms");
        let _ = writeln!(
            o,
            "| {k} | {state} | {} | {} / {} | {} ({}) | {} | {} ({} / {}) | {} (of {} pages) | {} (of {}) | {} | {} | {} |",
            f(med(&col(&ok, "live_objects")), 0),
            f(med(&col(&ok, "objects")), 0),
            f(med(&col(&ok, "bytes")).map(|b| b / 1e6), 2),
            f(med(&t), 2),
            f(p90(&t), 2),
            f(med(&col(&ok, "heap_scan_ms")), 2),
            f(med(&col(&ok, "trace_ms")), 2),
            f(med(&col(&ok, "walk_ms")), 1),
            f(med(&col(&ok, "write_ms")), 1),
            share("clean_pages", "dirty_pages"),
            f(
                med(&ok.iter().filter_map(|s| Some(s.get("clean_pages")? + s.get("dirty_pages")?)).collect::<Vec<_>>()),
                0
            ),
            f(med(&col(&ok, "globals_clean")), 0),
            f(med(&col(&ok, "globals")), 0),
            f(med(&col(&ok, "total_ms")), 2),
            f(med(&col(&ok, "in_place")), 0),
            per_transformed(&ok),
        );
    }
    let _ = writeln!(o);
    // 1d. nginx and httpd, with their state
    for (file, title) in [
        ("nginx-state", "**nginx update with its state** (master + 2 workers, patch level of `scripts/nginx/build.sh` to itself; keep-alive connections move with the workers' heap; median / p90):"),
        ("httpd-state", "**Apache httpd (event MPM) update with its state** (master + 2 children, `scripts/httpd/build.sh` to itself; keep-alive connections move with the children's listener; the pages libapr mapped at startup and wrote since are carried; median / p90):"),
    ] {
        let with_state: Vec<_> = [0, 10, 100].iter().map(|c| (c, read(&format!("transfer-{file}-{c}.tsv")))).collect();
        if with_state.iter().all(|(_, t)| t.is_empty()) {
            continue;
        }
        let _ = writeln!(o, "{title}");
        let _ = writeln!(o);
        let _ = writeln!(o, "| keep-alive connections | committed | closed by the update (median) | connections moved | pinned blocks | transfer_ms | trace_ms | whole update (total_ms) |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for (c, text) in &with_state {
            let (ok, fail) = parse(text);
            let state = committed(text, ok.len(), &fail);
            let pp = |k: &str| format!("{} / {}", f(med(&col(&ok, k)), 2), f(p90(&col(&ok, k)), 2));
            let closed: Vec<f64> = ok.iter().map(|s| s.closed as f64).collect();
            let _ = writeln!(
                o,
                "| {c} | {state} | {} | {} | {} | {} | {} | {} |",
                f(med(&closed), 0),
                f(med(&col(&ok, "connections")), 0),
                f(med(&col(&ok, "pinned")), 0),
                pp("transfer_ms"),
                pp("trace_ms"),
                pp("total_ms")
            );
        }
        let _ = writeln!(o);
    }
    let ngx: Vec<_> = [0, 10, 100].iter().map(|c| (c, read(&format!("transfer-nginx-{c}.tsv")))).collect();
    if ngx.iter().any(|(_, t)| !t.is_empty()) {
        let _ = writeln!(o, "**nginx update with `--fresh-state`** (no state transfer: the new version keeps what its startup made; idle keep-alive connections move into it, which adopts them through mcr's nginx module (scripts/nginx/mcr-module); a connection closed by the update would be counted; median / p90):");
        let _ = writeln!(o);
        let _ = writeln!(o, "| keep-alive connections | committed | closed by the update (median) | drain_ms | restart_ms | commit_ms | whole update (total_ms) |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for (c, text) in &ngx {
            let (ok, fail) = parse(text);
            let state = committed(text, ok.len(), &fail);
            let pp = |k: &str| format!("{} / {}", f(med(&col(&ok, k)), 2), f(p90(&col(&ok, k)), 2));
            let closed: Vec<f64> = ok.iter().map(|s| s.closed as f64).collect();
            let _ = writeln!(
                o,
                "| {c} | {state} | {} | {} | {} | {} | {} |",
                f(med(&closed), 0),
                pp("drain_ms"),
                pp("restart_ms"),
                pp("commit_ms"),
                pp("total_ms")
            );
        }
        let _ = writeln!(o);
    }
    // 2, 3. overheads
    let alloc = read("alloc.tsv");
    let rss = read("rss.tsv");
    let _ = writeln!(o, "**Overheads, measured against the same program in the same run** (ratio = mcr / baseline per round; median, min–max of the rounds):");
    let _ = writeln!(o);
    let _ = writeln!(o, "| figure | measured | budget | paper |");
    let _ = writeln!(o, "|---|---|---|---|");
    // Issue 13's budget: the micro-benchmark under mcr at most 1.05x plain glibc.
    let alloc_row = |label: &str, num: &str, col_idx: usize| {
        let r = ratios(&alloc, col_idx, num, "plain");
        let verdict = match (crate::stats::median(&r), crate::stats::max(&r)) {
            (Some(x), _) if x > 1.05 => "≤ 1.05 (**NOT met**)",
            (Some(_), Some(mx)) if mx <= 1.05 => "≤ 1.05 (met, every round)",
            (Some(_), _) => "≤ 1.05 (met on the median)",
            _ => "≤ 1.05",
        };
        format!("| {label} | {} | {verdict} | 5% (perlbench 36%) |", ratio_cell(&r))
    };
    let _ = writeln!(o, "{}", alloc_row("allocation micro-benchmark (bench/allocbench.c) CPU time, `LD_PRELOAD=libmcr.so` (inert: mcr's allocator only) / plain", "preload", 2));
    let _ = writeln!(o, "{}", alloc_row("allocation micro-benchmark CPU time, under `mcr run` / plain", "mcr", 2));
    let _ = writeln!(o, "{}", alloc_row("allocation micro-benchmark wall time, `LD_PRELOAD` / plain", "preload", 3));
    let pss = read("pss.tsv");
    let mem_row = |label: &str, what: &str, budget: f64| {
        let of = |tsv: &str| -> String {
            tsv.lines().filter(|l| l.split('\t').nth(2) == Some(what)).map(|l| format!("{l}\n")).collect()
        };
        let (text, pss_text) = (of(&rss), of(&pss));
        let r = ratios(&text, 3, "mcr", "base");
        let rp = ratios(&pss_text, 3, "mcr", "base");
        let bm = by_round(&text, 3);
        let abs = |v: &str| med(&bm.values().filter_map(|x| x.get(v).copied()).collect::<Vec<_>>());
        let sup = med(&bm.values().filter_map(|x| x.get("supervisor").copied()).collect::<Vec<_>>());
        let verdict = match med(&r) {
            Some(x) if x <= budget => format!("≤ {budget:.2}x (met)"),
            Some(_) => format!("≤ {budget:.2}x (**NOT met**)"),
            None => format!("≤ {budget:.2}x (not measured)"),
        };
        format!(
            "| {label} | RSS {}, PSS {}; VmRSS {} → {} MB (mcr supervisor, not counted: {} MB) | {verdict} | 3.9x mean |",
            ratio_cell(&r),
            ratio_cell(&rp),
            f(abs("base").map(|k| k / 1024.0), 1),
            f(abs("mcr").map(|k| k / 1024.0), 1),
            f(sup.map(|k| k / 1024.0), 1)
        )
    };
    let _ = writeln!(o, "{}", mem_row("resident memory, kvd with 100 000 keys, under mcr / plain", "kvd", 1.10));
    let _ = writeln!(
        o,
        "{}",
        mem_row("resident memory, nginx idle (master + 2 workers), under mcr / plain", "nginx", 1.15)
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Setup: {}", m("setup"));
    let _ = writeln!(o);
    let _ = writeln!(o, "Reproduce: `{}`", m("command"));
    o
}

/// Open sessions of each session server, as bench/transfer.sh sweeps them.
pub const SESSIONS: [usize; 3] = [0, 10, 100];

/// Update time vs open sessions (connd: a process per session; poold: a worker thread
/// per session), from `transfer-sessions-<server>-<n>.tsv`. The increases are over the
/// same server's 0-session row of the same run.
/// Transfer time per object the update did not leave in place (the transformed ones), in
/// µs: median over the committed updates; `–` when every object stayed.
fn per_transformed(ok: &[Sample]) -> String {
    let v: Vec<f64> = ok
        .iter()
        .filter_map(|s| {
            let moved = s.get("objects")? - s.get("in_place")?;
            let ms = s.get("transfer_ms")?;
            (moved > 0.0).then(|| ms * 1000.0 / moved)
        })
        .collect();
    f(med(&v), 2)
}

/// kvd ↔ kvd-v2: no type changes, so no object should move; the budget is a whole
/// update under 100 ms at 1 000 000 keys, whatever the heap's size.
fn code_only_table(o: &mut String, read: &dyn Fn(&str) -> String) {
    use std::fmt::Write as _;
    let rows: Vec<_> =
        [0, 10000, 100000, 1000000].iter().map(|k| (*k, read(&format!("transfer-code-{k}.tsv")))).collect();
    if rows.iter().all(|(_, t)| t.is_empty()) {
        return;
    }
    let _ = writeln!(o, "**State transfer vs live objects, code-only update** (kvd ↔ kvd-v2: the same types; no connections; 3 heap blocks per key; median over the committed updates):");
    let _ = writeln!(o);
    let _ = writeln!(o, "| keys | committed | live objects | untouched | walked in place | objects copied | heap adopted: MB mapped / copied (ms) | trace_ms | transfer_ms (p90) | whole update | budget (whole update, 1 000 000 keys) |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, text) in rows {
        let (ok, fail) = parse(&text);
        let state = committed(&text, ok.len(), &fail);
        let t = col(&ok, "transfer_ms");
        let total = col(&ok, "total_ms");
        let budget = if k == 1000000 { verdict(med(&total), 100.0) } else { "–".to_string() };
        let copied: Vec<f64> = ok.iter().filter_map(|s| Some(s.get("objects")? - s.get("in_place")?)).collect();
        let _ = writeln!(
            o,
            "| {k} | {state} | {} | {} | {} | {} | {} / {} ({}) | {} | {} ({}) | {} | {budget} |",
            f(med(&col(&ok, "live_objects")), 0),
            f(med(&col(&ok, "untouched")), 0),
            f(med(&col(&ok, "in_place")), 0),
            f(med(&copied), 0),
            f(med(&col(&ok, "heap_bytes_mapped")).map(|b| b / 1e6), 1),
            f(med(&col(&ok, "heap_bytes_adopted")).map(|b| b / 1e6), 1),
            f(med(&col(&ok, "heap_adopt_ms")), 2),
            f(med(&col(&ok, "trace_ms")), 2),
            f(med(&t), 2),
            f(p90(&t), 2),
            f(med(&total), 2),
        );
    }
    let _ = writeln!(o);
}

fn sessions_table(o: &mut String, read: &dyn Fn(&str) -> String) {
    use std::fmt::Write as _;
    let rows: Vec<(&str, usize, String)> = ["connd", "poold"]
        .iter()
        .flat_map(|srv| SESSIONS.iter().map(move |&n| (*srv, n, read(&format!("transfer-sessions-{srv}-{n}.tsv")))))
        .collect();
    if rows.iter().all(|(_, _, t)| t.is_empty()) {
        return;
    }
    let _ = writeln!(o, "**Update time vs open sessions** (connd ↔ connd-v2-layout: a process per session, each with 3 session variables, recreated in the new version by its respawn handler; poold ↔ poold-v2-layout with `--threads` = sessions + 2: each session idle in a worker thread, re-queued by the new version's resume handler; median / p90 over the committed updates; \"over 0\" = increase of the median over the same server's 0-session row of this run):");
    let _ = writeln!(o);
    let _ = writeln!(o, "| server | sessions | committed | moved: connections / processes respawned | whole update (total_ms) | over 0 | transfer_ms | over 0 | per session: transfer_ms / sessions (above 0, per session) | heap_scan_ms | paper (fig. 3) |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (srv, n, text) in &rows {
        let (ok, fail) = parse(text);
        let state = committed(text, ok.len(), &fail);
        let base = rows.iter().find(|(s, m, _)| s == srv && *m == 0).map(|(_, _, t)| parse(t).0).unwrap_or_default();
        let (t, tot) = (col(&ok, "transfer_ms"), col(&ok, "total_ms"));
        let over = |k: &str, m: Option<f64>| match (m, med(&col(&base, k))) {
            (Some(x), Some(b)) if *n > 0 => format!("{:+.2}", x - b),
            _ => "–".into(),
        };
        // A committed update that did not move every session is reported, not hidden.
        let (conns, resp) = (col(&ok, "connections"), col(&ok, "respawned_processes"));
        let want_resp = if *srv == "connd" { *n as f64 } else { 0.0 };
        let wrong =
            conns.iter().filter(|&&c| c != *n as f64).count() + resp.iter().filter(|&&r| r != want_resp).count();
        let mut moved = format!("{} / {}", f(med(&conns), 0), f(med(&resp), 0));
        if wrong > 0 {
            let _ = write!(moved, " (**{wrong} counts off**: expected {n} / {want_resp})");
        }
        let per = if *n > 0 {
            let each: Vec<f64> = t.iter().map(|x| x / *n as f64).collect();
            let above = match (med(&t), med(&col(&base, "transfer_ms"))) {
                (Some(x), Some(b)) => f(Some((x - b) / *n as f64), 2),
                _ => "–".into(),
            };
            format!("{} ({above})", f(med(&each), 2))
        } else {
            "–".into()
        };
        let paper = match n {
            0 => "transfer 28–187 ms with no connections",
            100 => "+371 ms transfer at 100 connections (mean; vsftpd and OpenSSH, a process per connection, respawned by MCR's annotations)",
            _ => "–",
        };
        let _ = writeln!(
            o,
            "| {srv} | {n} | {state} | {moved} | {} / {} | {} | {} / {} | {} | {per} | {} | {paper} |",
            f(med(&tot), 2),
            f(p90(&tot), 2),
            over("total_ms", med(&tot)),
            f(med(&t), 2),
            f(p90(&t), 2),
            over("transfer_ms", med(&t)),
            f(med(&col(&ok, "heap_scan_ms")), 2),
        );
    }
    let _ = writeln!(o);
}

/// The "committed" cell of a row: how many updates of the row committed, with the first
/// failure's message when one did not.
fn committed(text: &str, ok: usize, fail: &[String]) -> String {
    if text.is_empty() {
        "not run".to_string()
    } else if let Some(e) = fail.first() {
        format!("{}/{} (failed: {})", ok, ok + fail.len(), e.chars().take(160).collect::<String>())
    } else {
        format!("{ok}/{ok}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_comes_from_the_outcome() {
        let o = update_report(crate::outcome::tests::COMMITTED.as_bytes()).unwrap().unwrap();
        for k in FIELDS.iter().filter(|k| **k != "client_ms") {
            assert!(figure(&o, k).is_some(), "{k}");
        }
        assert_eq!(figure(&o, "client_ms"), None);
        assert!(figure(&o, "restart_ms").is_some_and(|ms| (ms - 52.056451).abs() < 1e-9));
        assert_eq!(figure(&o, "live_objects"), Some(31.0));
        let fresh = update_report(crate::outcome::tests::ROLLED_BACK.as_bytes()).unwrap().unwrap();
        assert_eq!((figure(&fresh, "total_ms"), figure(&fresh, "objects")), (Some(35.069198), None));
    }

    #[test]
    fn parses_samples() {
        let vals: Vec<String> = (0..FIELDS.len()).map(|i| if i == 1 { "-".into() } else { format!("{i}.5") }).collect();
        let text = format!("ok\tb\t10\t1000\t0\t{}\nfail\ta\t10\t1000\tno\nok\tb\t1\n", vals.join("\t"));
        let (ok, fail) = parse(&text);
        assert_eq!(ok.len(), 1);
        assert_eq!((ok[0].conns, ok[0].keys, ok[0].closed), (10, 1000, 0));
        assert_eq!(ok[0].get("drain_ms"), Some(0.5));
        assert_eq!(ok[0].get("quiesce_ms"), None);
        assert_eq!(ok[0].get("connections_ms"), Some(17.5));
        assert_eq!(fail, vec!["no".to_string()]);
    }

    /// An `ok` line with these values (others absent).
    fn sample(conns: usize, vals: &[(&str, f64)]) -> String {
        let v: Vec<String> = FIELDS
            .iter()
            .map(|k| vals.iter().find(|(n, _)| n == k).map_or("-".into(), |(_, x)| x.to_string()))
            .collect();
        format!("ok\tb\t{conns}\t0\t0\t{}\n", v.join("\t"))
    }

    #[test]
    fn sessions_table_rows_over_the_zero_row_and_wrong_counts() {
        let files: std::collections::HashMap<String, String> = [
            (
                "transfer-sessions-connd-0.tsv",
                sample(
                    0,
                    &[("transfer_ms", 10.0), ("total_ms", 30.0), ("connections", 0.0), ("respawned_processes", 0.0)],
                ),
            ),
            (
                "transfer-sessions-connd-10.tsv",
                sample(
                    10,
                    &[("transfer_ms", 60.0), ("total_ms", 100.0), ("connections", 10.0), ("respawned_processes", 10.0)],
                ) + &sample(
                    10,
                    &[("transfer_ms", 80.0), ("total_ms", 120.0), ("connections", 9.0), ("respawned_processes", 10.0)],
                ),
            ),
            ("transfer-sessions-poold-0.tsv", "fail\tb\t0\t0\tmcr update hung\n".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut o = String::new();
        sessions_table(&mut o, &|n: &str| files.get(n).cloned().unwrap_or_default());
        let row = |srv: &str, n: usize| {
            o.lines()
                .find(|l| l.starts_with(&format!("| {srv} | {n} |")))
                .unwrap_or_else(|| panic!("no {srv} {n} row in {o}"))
                .to_string()
        };
        assert!(row("connd", 0).contains("| 1/1 | 0 / 0 | 30.00 / 30.00 | – | 10.00 / 10.00 | – | – |"), "{o}");
        let r = row("connd", 10);
        assert!(r.contains("| 2/2 | 10 / 10 (**1 counts off**: expected 10 / 10) | 110.00 / 120.00 | +80.00 | 70.00 / 80.00 | +60.00 | 7.00 (6.00) |"), "{r}");
        assert!(row("connd", 100).contains("| not run |"), "{o}");
        assert!(row("poold", 0).contains("0/1 (failed: mcr update hung)"), "{o}");
        assert!(row("poold", 10).contains("| – | – |"), "no 0-session row to compare with: {o}");
    }
}
