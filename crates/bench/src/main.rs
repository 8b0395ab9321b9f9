//! `mcr-bench`: the pieces of bench/run.sh that are better in Rust than in bash.
//!
//!   mcr-bench kvd-load --port P [--conns 8] [--depth 16] [--threads 1] [--keys 1024]
//!                      [--warmup 0.5] [--duration 3] [--io-timeout 5]
//!       closed-loop pipelined GET/SET load on 127.0.0.1:P; prints requests/s on stdout
//!       (details on stderr). --duration is capped at 600 s.
//!   mcr-bench kvd-ab --port-a P --port-b Q [--pairs 4] [--slice 1] [--warmup 0.5]
//!                    [--conns 8] [--depth 16] [--keys 1024] [--out FILE --round R]
//!       the same load, one thread, on two servers running side by side, alternating
//!       between them in slices (ABBA order); per pair prints "A_rps B_rps" and, with
//!       --out, appends `pair<TAB>base|mcr<TAB>rps` lines (A = base, B = mcr), pairs
//!       numbered from R*1000.
//!       --tree-a PID --tree-b PID: also measure the on-CPU time of each server's whole
//!       process tree (for mcr: the supervisor and everything under it) over the
//!       interleaved part, printed as "cpu A_ns A_requests B_ns B_requests" and, with
//!       --cpu-out FILE, appended as `round<TAB>base|mcr<TAB>ns<TAB>requests` lines.
//!   mcr-bench cpu --tree PID     prints the on-CPU ns of PID's process tree
//!   mcr-bench quiesce --mcr PATH --name N --out FILE [--cycles 200] [--gap-ms 10]
//!                     [--timeout-ms 1000] [--max-seconds 60]
//!       quiesce/resume cycles through `mcr ctl N quiesce --json`; samples go to FILE, a
//!       one-line summary to stdout (so do update's and transfer's).
//!   mcr-bench update --mcr PATH --name N --a PROG --b PROG --out FILE [--rounds 5]
//!                    [--updates 4] [--port P] [--gap-ms 100] [--timeout-ms 10000]
//!                    [--max-seconds 120] [--fresh-state 1] -- ARGS...
//!       rounds of: a timed cold start (`mcr run --detach --name N -- PROG ARGS`, A on
//!       even rounds, B on odd ones), --updates live updates alternating between the two
//!       versions (`mcr update N --json -- PROG ARGS`), `mcr stop N`; samples go to FILE
//!       (format in src/update.rs). With --port, the server must accept connections on
//!       127.0.0.1:P after each start and each committed update.
//!   mcr-bench report --dir DIR
//!       prints the markdown results table built from DIR (see report.rs).
//!   mcr-bench transfer --mcr PATH --name N --a PROG --b PROG --port P --out FILE
//!                      [--proto kvd|http|connd|poold] [--conns 0] [--keys 0] [--updates 5]
//!                      [--fresh-state 1] [--timeout-ms 10000] -- ARGS...
//!       starts N under mcr, fills it with --keys keys (kvd), opens --conns idle client
//!       connections (connd, poold: sessions, each served by its own process or worker
//!       thread), then --updates live updates alternating B, A, B...; each update's
//!       phases and transfer figures go to FILE (format in src/transfer.rs); after each,
//!       every connection must still answer as its own session.
//!   mcr-bench transfer-report --dir DIR   the markdown section of bench/transfer.sh
//!   mcr-bench fill --port P --keys K     SETs K keys into kvd on 127.0.0.1:P
//!   mcr-bench fill-check --port P --keys K   GETs them back; fails naming the first wrong one
//!   mcr-bench rss --tree PID [--comm NAME]
//!       prints the summed VmRSS (kB) of PID's process tree (only processes named NAME)
//!   mcr-bench rss --pid PID      prints the VmRSS (kB) of process PID alone
//!   mcr-bench pss --tree PID [--comm NAME]   the same as rss --tree, with PSS (smaps_rollup)
//!   mcr-bench supervisor-pid --mcr PATH --name N
//!   mcr-bench instance-root --mcr PATH --name N   (the root of the instance's process
//!     tree: the init of its PID namespace, whose children are the supervisor and the
//!     server's orphans, e.g. a daemonized nginx master; else the supervisor)
//!       prints the host PID of instance N's supervisor (from `mcr status N --json`)
//!   mcr-bench free-port          prints a free TCP port on 127.0.0.1
//!   mcr-bench wait-port --port P [--timeout 10]
//!       waits until 127.0.0.1:P accepts connections (exit 1 on timeout).
//!   mcr-bench kvd-soak --port P --stop-file F [--conns 4] [--keys 4096] [--depth 8]
//!                      [--rate 0] [--max-seconds 3600] [--io-timeout 30] [--progress FILE]
//!       scripts/soak.sh's writer (src/soak.rs): SET+GET pairs on keys of its own, every
//!       reply checked, until F exists; then every acknowledged key is read back. Prints
//!       `requests= failed= reconnects= keys= lost= stale= seconds=`; exit 1 when a
//!       request failed or a key was lost. --rate caps requests/s (0: closed loop).

mod args;
mod cpu;
mod kvload;
mod outcome;
mod quiesce;
mod report;
mod soak;
mod stats;
mod transfer;
mod update;

use args::Args;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: mcr-bench kvd-load|kvd-ab|kvd-soak|quiesce|update|report|transfer|transfer-report|fill|fill-check|rss|pss|\
                     cpu|supervisor-pid|instance-root|free-port|wait-port [options] (see src/main.rs)";

fn secs(x: f64, what: &str) -> Result<Duration, String> {
    if !(0.0..=600.0).contains(&x) {
        return Err(format!("--{what} must be between 0 and 600 seconds"));
    }
    Ok(Duration::from_secs_f64(x))
}

fn kvd_load(a: &Args) -> Result<(), String> {
    let cfg = kvload::Config {
        port: a.required("port")?,
        conns: a.get("conns", 8)?,
        depth: a.get("depth", 16)?,
        threads: a.get("threads", 1)?,
        keys: a.get("keys", 1024)?,
        warmup: secs(a.get("warmup", 0.5)?, "warmup")?,
        duration: secs(a.get("duration", 3.0)?, "duration")?,
        io_timeout: secs(a.get("io-timeout", 5.0)?, "io-timeout")?,
    };
    a.finish()?;
    let out = kvload::run(&cfg)?;
    eprintln!(
        "mcr-bench: kvd-load: {} requests in {:.3} s = {:.0} req/s ({} conns x depth {}, {} thread(s), {} error replies)",
        out.requests,
        out.seconds,
        out.rps(),
        cfg.conns,
        cfg.depth,
        cfg.threads.min(cfg.conns),
        out.errors
    );
    if out.errors > 0 {
        return Err(format!("{} error replies from kvd", out.errors));
    }
    println!("{:.1}", out.rps());
    Ok(())
}

fn kvd_soak(a: &Args) -> Result<(), String> {
    let max_seconds: f64 = a.get("max-seconds", 3600.0)?;
    if !(0.0..=7200.0).contains(&max_seconds) {
        return Err("--max-seconds must be between 0 and 7200".into());
    }
    let cfg = soak::Config {
        port: a.required("port")?,
        conns: a.get("conns", 4)?,
        keys: a.get("keys", 4096)?,
        depth: a.get("depth", 8)?,
        rate: a.get("rate", 0)?,
        stop_file: a.required::<String>("stop-file")?.into(),
        max_time: Duration::from_secs_f64(max_seconds),
        io_timeout: secs(a.get("io-timeout", 30.0)?, "io-timeout")?,
        progress: a.get("progress", String::new()).map(|p| (!p.is_empty()).then(|| p.into()))?,
    };
    a.finish()?;
    let out = soak::run(&cfg)?;
    println!("{}", out.line());
    if out.failed + out.lost + out.stale > 0 {
        return Err(format!("{} failed requests, {} lost keys, {} stale keys", out.failed, out.lost, out.stale));
    }
    Ok(())
}

fn kvd_ab(a: &Args) -> Result<(), String> {
    let cfg = kvload::Config {
        port: a.required("port-a")?,
        conns: a.get("conns", 8)?,
        depth: a.get("depth", 16)?,
        threads: 1,
        keys: a.get("keys", 1024)?,
        warmup: secs(a.get("warmup", 0.5)?, "warmup")?,
        duration: Duration::ZERO,
        io_timeout: secs(a.get("io-timeout", 5.0)?, "io-timeout")?,
    };
    let port_b: u16 = a.required("port-b")?;
    let pairs: usize = a.get("pairs", 4)?;
    let slice = secs(a.get("slice", 1.0)?, "slice")?;
    let out: String = a.get("out", String::new())?;
    let round: u32 = a.get("round", 0)?;
    let trees: (i32, i32) = (a.get("tree-a", 0)?, a.get("tree-b", 0)?);
    let cpu_out: String = a.get("cpu-out", String::new())?;
    a.finish()?;
    let cpu_of = |pid: i32| if pid > 0 { cpu::tree_ns(pid) } else { 0 };
    let mut cpu_start = (0, 0);
    let r = kvload::run_ab(&cfg, port_b, pairs, slice, || cpu_start = (cpu_of(trees.0), cpu_of(trees.1)))?;
    let cpu = (cpu_of(trees.0) - cpu_start.0, cpu_of(trees.1) - cpu_start.1);
    let mut lines = String::new();
    for (i, ((x, _), (y, _))) in r.iter().enumerate() {
        println!("{x:.1} {y:.1}");
        eprintln!("mcr-bench: kvd-ab: pair {i}: A {x:.0} req/s, B {y:.0} req/s, B/A {:.4}", y / x);
        let p = round * 1000 + i as u32;
        lines.push_str(&format!("{p}\tbase\t{x:.1}\n{p}\tmcr\t{y:.1}\n"));
    }
    append(&out, &lines)?;
    if trees.0 > 0 && trees.1 > 0 {
        let reqs: (f64, f64) = (r.iter().map(|p| p.0 .1).sum(), r.iter().map(|p| p.1 .1).sum());
        println!("cpu {} {} {} {}", cpu.0, reqs.0, cpu.1, reqs.1);
        eprintln!(
            "mcr-bench: kvd-ab: server CPU per request: A {:.1} ns, B {:.1} ns, B/A {:.4}",
            cpu.0 as f64 / reqs.0,
            cpu.1 as f64 / reqs.1,
            (cpu.1 as f64 / reqs.1) / (cpu.0 as f64 / reqs.0)
        );
        append(&cpu_out, &format!("{round}\tbase\t{}\t{}\n{round}\tmcr\t{}\t{}\n", cpu.0, reqs.0, cpu.1, reqs.1))?;
    }
    Ok(())
}

/// Appends `text` to `path` ("" = nowhere).
fn append(path: &str, text: &str) -> Result<(), String> {
    use std::io::Write;
    if path.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{path}: {e}"))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{path}: {e}"))
}

fn quiesce_cmd(a: &Args) -> Result<(), String> {
    let cfg = quiesce::Config {
        mcr: a.required::<String>("mcr")?.into(),
        name: a.required("name")?,
        out: a.required::<String>("out")?.into(),
        cycles: a.get("cycles", 200)?,
        gap: Duration::from_millis(a.get("gap-ms", 10)?),
        quiesce_timeout_ms: a.get("timeout-ms", 1000)?,
        max_time: secs(a.get("max-seconds", 60.0)?, "max-seconds")?,
    };
    a.finish()?;
    let n = quiesce::run(&cfg)?;
    let q = report::Quiescence::parse(&std::fs::read_to_string(&cfg.out).map_err(|e| e.to_string())?);
    println!(
        "quiesce {}: {n} cycles, convergence median {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} failed",
        cfg.name,
        stats::median(&q.elapsed_ms).unwrap_or(f64::NAN),
        stats::percentile(&q.elapsed_ms, 99.0).unwrap_or(f64::NAN),
        stats::max(&q.elapsed_ms).unwrap_or(f64::NAN),
        q.failures.len()
    );
    Ok(())
}

fn update_cmd(a: &Args) -> Result<(), String> {
    let cfg = update::Config {
        mcr: a.required::<String>("mcr")?.into(),
        name: a.required("name")?,
        a: a.required("a")?,
        b: a.required("b")?,
        out: a.required::<String>("out")?.into(),
        rounds: a.get("rounds", 5)?,
        updates: a.get("updates", 4)?,
        port: match a.get("port", 0u16)? {
            0 => None,
            p => Some(p),
        },
        gap: Duration::from_millis(a.get("gap-ms", 100)?),
        timeout_ms: a.get("timeout-ms", 10_000)?,
        max_time: secs(a.get("max-seconds", 120.0)?, "max-seconds")?,
        fresh_state: a.get("fresh-state", 0u8)? != 0,
        args: a.rest(),
    };
    a.finish()?;
    let n = update::run(&cfg)?;
    let u = report::Updates::parse(&std::fs::read_to_string(&cfg.out).map_err(|e| e.to_string())?);
    let med = |v: &[f64]| stats::median(v).unwrap_or(f64::NAN);
    println!(
        "update {}: {n} updates, {} committed; median quiesce {:.2} / restart+replay {:.2} / commit {:.2} / total {:.2} ms; \
         cold start: mcr run {:.2} ms wall, server startup {:.2} ms",
        cfg.name,
        u.committed(),
        med(&u.quiesce_ms),
        med(&u.restart_ms),
        med(&u.commit_ms),
        med(&u.total_ms),
        med(&u.start_wall_ms),
        med(&u.start_startup_ms)
    );
    Ok(())
}

fn transfer_cmd(a: &Args) -> Result<(), String> {
    let cfg = transfer::Config {
        mcr: a.required::<String>("mcr")?.into(),
        name: a.required("name")?,
        a: a.required("a")?,
        b: a.required("b")?,
        port: a.required("port")?,
        proto: {
            let p: String = a.get("proto", "kvd".to_string())?;
            transfer::Proto::parse(&p).ok_or_else(|| format!("--proto must be kvd, http, connd or poold, not {p}"))?
        },
        conns: a.get("conns", 0)?,
        keys: a.get("keys", 0)?,
        updates: a.get("updates", 5)?,
        fresh_state: a.get("fresh-state", 0u8)? != 0,
        timeout_ms: a.get("timeout-ms", 10_000)?,
        out: a.required::<String>("out")?.into(),
        args: a.rest(),
    };
    a.finish()?;
    let n = transfer::run(&cfg)?;
    let (ok, fail) = transfer::parse(&std::fs::read_to_string(&cfg.out).map_err(|e| e.to_string())?);
    let med = |k: &str| stats::median(&ok.iter().filter_map(|s| s.get(k)).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    println!(
        "transfer {} ({} conns, {} keys): {n} updates, {} committed, {} failed; median transfer {:.2} ms, total {:.2} ms",
        cfg.name,
        cfg.conns,
        cfg.keys,
        ok.len(),
        fail.len(),
        med("transfer_ms"),
        med("total_ms")
    );
    Ok(())
}

/// The host PID of instance `name`'s supervisor, from `mcr status NAME --json`.
fn supervisor_pid(mcr: &str, name: &str) -> Result<i32, String> {
    let (out, _) = update::output_within(
        std::process::Command::new(mcr).args(["status", name, "--json"]),
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        return Err(format!("mcr status {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let st: mcr_protocol::InstanceStatus = outcome::parse_json("mcr status --json", &out.stdout)?;
    Ok(st.supervisor_pid)
}

/// The supervisor's parent when it shares the supervisor's PID namespace (the init, PID 1
/// there), else the supervisor itself (no namespace).
fn instance_root(supervisor: i32) -> i32 {
    let parent = mcr_procfs::stat::read(supervisor).map_or(0, |s| s.ppid);
    let same_ns = |p: i32| mcr_procfs::pid_namespace(p).ok();
    if parent > 1 && same_ns(parent).is_some() && same_ns(parent) == same_ns(supervisor) {
        parent
    } else {
        supervisor
    }
}

fn wait_port(a: &Args) -> Result<(), String> {
    let port: u16 = a.required("port")?;
    let timeout = secs(a.get("timeout", 10.0)?, "timeout")?;
    a.finish()?;
    let end = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&kvload::addr(port), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("nothing accepts connections on 127.0.0.1:{port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let parsed = Args::parse(rest, &[]);
    let result = parsed.and_then(|a| match cmd.as_str() {
        "kvd-load" => kvd_load(&a),
        "kvd-ab" => kvd_ab(&a),
        "kvd-soak" => kvd_soak(&a),
        "quiesce" => quiesce_cmd(&a),
        "update" => update_cmd(&a),
        "report" => {
            let dir: String = a.required("dir")?;
            a.finish()?;
            print!("{}", report::build(std::path::Path::new(&dir))?);
            Ok(())
        }
        "free-port" => {
            a.finish()?;
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
            Ok(())
        }
        "wait-port" => wait_port(&a),
        "transfer" => transfer_cmd(&a),
        "transfer-report" => {
            let dir: String = a.required("dir")?;
            a.finish()?;
            print!("{}", transfer::report(std::path::Path::new(&dir)));
            Ok(())
        }
        "fill" => {
            let (port, keys) = (a.required("port")?, a.required("keys")?);
            a.finish()?;
            transfer::fill(port, keys)
        }
        "fill-check" => {
            let (port, keys) = (a.required("port")?, a.required("keys")?);
            a.finish()?;
            transfer::check_fill(port, keys)
        }
        "rss" => {
            let (tree, pid): (i32, i32) = (a.get("tree", 0)?, a.get("pid", 0)?);
            let comm: String = a.get("comm", String::new())?;
            a.finish()?;
            let kb = match (tree, pid) {
                (t, 0) if t > 0 => cpu::rss_kb(t, &comm),
                (0, p) if p > 0 && comm.is_empty() => mcr_procfs::status::read(p)
                    .ok()
                    .and_then(|s| s.vm_rss_kb())
                    .ok_or_else(|| format!("no VmRSS for process {p}"))?,
                _ => return Err("rss takes --tree PID [--comm NAME] or --pid PID".into()),
            };
            println!("{kb}");
            Ok(())
        }
        "pss" => {
            let (tree, comm): (i32, String) = (a.required("tree")?, a.get("comm", String::new())?);
            a.finish()?;
            println!("{}", cpu::pss_kb(tree, &comm));
            Ok(())
        }
        "instance-root" => {
            let (mcr, name): (String, String) = (a.required("mcr")?, a.required("name")?);
            a.finish()?;
            println!("{}", instance_root(supervisor_pid(&mcr, &name)?));
            Ok(())
        }
        "supervisor-pid" => {
            let (mcr, name): (String, String) = (a.required("mcr")?, a.required("name")?);
            a.finish()?;
            println!("{}", supervisor_pid(&mcr, &name)?);
            Ok(())
        }
        "cpu" => {
            let pid: i32 = a.required("tree")?;
            a.finish()?;
            println!("{}", cpu::tree_ns(pid));
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    });
    if let Err(e) = result {
        eprintln!("mcr-bench: {cmd}: {e}");
        std::process::exit(1);
    }
}
