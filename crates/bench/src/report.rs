//! Builds the markdown results table from the raw files bench/run.sh leaves in its
//! results directory:
//!
//! * `meta.txt`: `key=value` lines (machine facts, settings).
//! * `{kvd,nginx}-throughput.tsv`: `pair<TAB>variant<TAB>requests_per_s`, variant
//!   `base` or `mcr`, in run order.
//! * `{kvd,nginx}-cpu.tsv`: `key<TAB>variant<TAB>cpu_ns<TAB>requests`: on-CPU time of the
//!   server's whole process tree (under mcr: supervisor included) while it served
//!   `requests`; lines with the same key (a round, or a wrk run pair) are compared.
//! * `nginx-latency.tsv`: `pair<TAB>variant<TAB>p99_ms` from wrk --latency.
//! * `quiesce-{kvd,nginx}-{idle,load}.tsv`: samples written by `mcr-bench quiesce`.
//! * `update-{kvd,nginx}.tsv`: cold starts and live updates written by `mcr-bench update`;
//!   `meta.txt` keys `update_kvd` and `update_nginx` name the two versions.

use crate::quiesce::Sample;
use crate::stats;
use crate::update::Sample as UpdateSample;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

pub const THROUGHPUT_BUDGET: f64 = 0.99;
pub const QUIESCE_P99_BUDGET_MS: f64 = 5.0;
/// Control migration (restart + replay) may take at most the original startup time plus this.
pub const CONTROL_MIGRATION_SLACK_MS: f64 = 10.0;

#[derive(Debug, Default)]
pub struct Throughput {
    /// (pair, baseline rps, mcr rps), pairs with both halves only.
    pub pairs: Vec<(u32, f64, f64)>,
}

impl Throughput {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_pair: BTreeMap<u32, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("line {}: '{line}'", i + 1);
            if f.len() != 3 {
                return Err(bad());
            }
            let pair: u32 = f[0].parse().map_err(|_| bad())?;
            let rps: f64 = f[2].parse().map_err(|_| bad())?;
            let e = by_pair.entry(pair).or_default();
            match f[1] {
                "base" => e.0 = Some(rps),
                "mcr" => e.1 = Some(rps),
                _ => return Err(bad()),
            }
        }
        let pairs = by_pair.into_iter().filter_map(|(p, (b, m))| Some((p, b?, m?))).collect();
        Ok(Self { pairs })
    }

    pub fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(|&(_, b, m)| m / b).collect()
    }
    pub fn base(&self) -> Vec<f64> {
        self.pairs.iter().map(|p| p.1).collect()
    }
    pub fn mcr(&self) -> Vec<f64> {
        self.pairs.iter().map(|p| p.2).collect()
    }
}

/// Per-key (base, mcr) pairs of a value; the shared parser of the `key variant value...`
/// files. `value` picks the number from the fields after the variant.
fn paired(text: &str, value: impl Fn(&[f64]) -> Option<f64>) -> Result<Vec<(f64, f64)>, String> {
    let mut by_key: BTreeMap<u32, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || format!("line {}: '{line}'", i + 1);
        if f.len() < 3 {
            return Err(bad());
        }
        let key: u32 = f[0].parse().map_err(|_| bad())?;
        let nums: Vec<f64> = f[2..].iter().map(|x| x.parse::<f64>()).collect::<Result<_, _>>().map_err(|_| bad())?;
        let v = value(&nums).ok_or_else(bad)?;
        let e = by_key.entry(key).or_default();
        match f[1] {
            "base" => e.0 = Some(v),
            "mcr" => e.1 = Some(v),
            _ => return Err(bad()),
        }
    }
    Ok(by_key.into_values().filter_map(|(b, m)| Some((b?, m?))).collect())
}

/// CPU nanoseconds per request, (base, mcr) per key.
pub fn cpu_per_request(text: &str) -> Result<Vec<(f64, f64)>, String> {
    paired(text, |n| match n {
        [ns, reqs] if *reqs > 0.0 => Some(ns / reqs),
        _ => None,
    })
}

#[derive(Debug, Default)]
pub struct Quiescence {
    pub elapsed_ms: Vec<f64>,
    pub client_ms: Vec<f64>,
    pub processes: Vec<u64>,
    pub threads: Vec<u64>,
    pub failures: Vec<String>,
}

impl Quiescence {
    pub fn parse(text: &str) -> Self {
        let mut q = Quiescence::default();
        for line in text.lines() {
            match Sample::parse_line(line) {
                Some(Sample::Ok { elapsed_us, processes, threads, client_us }) => {
                    q.elapsed_ms.push(elapsed_us as f64 / 1000.0);
                    q.client_ms.push(client_us as f64 / 1000.0);
                    q.processes.push(processes);
                    q.threads.push(threads);
                }
                Some(Sample::Fail { message, .. }) => q.failures.push(message),
                None => {}
            }
        }
        q
    }

    pub fn cycles(&self) -> usize {
        self.elapsed_ms.len() + self.failures.len()
    }

    /// "3" or "3–4" for a count that varied across cycles.
    fn range(v: &[u64]) -> String {
        match (v.iter().min(), v.iter().max()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}–{b}"),
            _ => "?".into(),
        }
    }
}

/// Cold starts and live updates of one server (see update.rs), in milliseconds.
#[derive(Debug, Default)]
pub struct Updates {
    pub quiesce_ms: Vec<f64>,
    pub restart_ms: Vec<f64>,
    pub commit_ms: Vec<f64>,
    pub total_ms: Vec<f64>,
    /// Wall time of the whole `mcr update` command.
    pub client_ms: Vec<f64>,
    /// The new version's startup time (replayed), from `mcr status` after the update.
    pub new_startup_ms: Vec<f64>,
    /// Cold starts: wall time of `mcr run --detach`, and the server's own startup time.
    pub start_wall_ms: Vec<f64>,
    pub start_startup_ms: Vec<f64>,
    /// Cold starts: from the fork of the server to completed startup (the supervisor's).
    pub start_exec_ms: Vec<f64>,
    pub failures: Vec<String>,
}

impl Updates {
    pub fn parse(text: &str) -> Self {
        let mut u = Updates::default();
        let ms = |x: u64| x as f64 / 1000.0;
        for line in text.lines() {
            match UpdateSample::parse_line(line) {
                Some(UpdateSample::Start { wall_us, startup_us, exec_us, .. }) => {
                    u.start_wall_ms.push(ms(wall_us));
                    u.start_startup_ms.extend(startup_us.map(ms));
                    u.start_exec_ms.extend(exec_us.map(ms));
                }
                Some(UpdateSample::Ok {
                    quiesce_us, restart_us, commit_us, total_us, client_us, startup_us, ..
                }) => {
                    u.quiesce_ms.push(ms(quiesce_us));
                    u.restart_ms.push(ms(restart_us));
                    u.commit_ms.push(ms(commit_us));
                    u.total_ms.push(ms(total_us));
                    u.client_ms.push(ms(client_us));
                    u.new_startup_ms.extend(startup_us.map(ms));
                }
                Some(UpdateSample::Fail { message, .. }) => u.failures.push(message),
                None => {}
            }
        }
        u
    }

    pub fn committed(&self) -> usize {
        self.total_ms.len()
    }

    pub fn attempts(&self) -> usize {
        self.committed() + self.failures.len()
    }
}

fn p90(xs: &[f64]) -> Option<f64> {
    stats::percentile(xs, 90.0)
}

fn pct(r: f64) -> String {
    let d = (r - 1.0) * 100.0;
    if d >= 0.0 {
        format!("+{d:.1}%")
    } else {
        format!("−{:.1}%", -d)
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

fn krps(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}k", v / 1000.0)).unwrap_or_else(|| "–".into())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**NOT met**"
    }
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

pub fn parse_meta(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

struct Row {
    figure: String,
    measured: String,
    budget: String,
    paper: String,
}

fn throughput_row(label: &str, t: &Throughput, paper: &str) -> Row {
    let r = t.ratios();
    let Some(med) = stats::median(&r) else {
        return Row {
            figure: label.into(),
            measured: "not measured".into(),
            budget: format!("≥ {THROUGHPUT_BUDGET:.2}"),
            paper: paper.into(),
        };
    };
    let ci95 = stats::median_ci95(&r);
    let ci = ci95.map(|(a, b)| format!("95% CI of the median {a:.3}–{b:.3}; ")).unwrap_or_default();
    // Judged on the confidence interval of the median: a run too noisy to tell says so.
    let verdict = match ci95 {
        None => "too few pairs to judge".to_string(),
        Some((lo, _)) if lo >= THROUGHPUT_BUDGET => "met".to_string(),
        Some((_, hi)) if hi < THROUGHPUT_BUDGET => "**NOT met**".to_string(),
        Some(_) => format!(
            "not resolved: the CI contains {THROUGHPUT_BUDGET:.2}; median {}",
            if med >= THROUGHPUT_BUDGET { "within" } else { "below" }
        ),
    };
    Row {
        figure: label.into(),
        measured: format!(
            "{med:.3} ({}); {ci}pair ratios {:.3}–{:.3}, n={}",
            pct(med),
            stats::min(&r).unwrap(),
            stats::max(&r).unwrap(),
            r.len()
        ),
        budget: format!("≥ {THROUGHPUT_BUDGET:.2} ({verdict})"),
        paper: paper.into(),
    }
}

fn cpu_row(label: &str, pairs: &[(f64, f64)]) -> Row {
    let r: Vec<f64> = pairs.iter().map(|(b, m)| m / b).collect();
    let measured = match stats::median(&r) {
        None => "not measured".into(),
        Some(med) => format!(
            "{med:.3} ({}); {:.0} → {:.0} ns/request; ratios {:.3}–{:.3}, n={}",
            pct(med),
            stats::median(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()).unwrap(),
            stats::median(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).unwrap(),
            stats::min(&r).unwrap(),
            stats::max(&r).unwrap(),
            r.len()
        ),
    };
    Row {
        figure: label.into(),
        measured,
        budget: "— (diagnostic: the overhead itself, insensitive to scheduling noise)".into(),
        paper: "CPU utilization increase < 3% (§8)".into(),
    }
}

fn quiesce_row(label: &str, q: &Quiescence) -> Row {
    let p99 = stats::percentile(&q.elapsed_ms, 99.0);
    let measured = if q.cycles() == 0 {
        "not measured".into()
    } else {
        let mut s = format!(
            "{} / {} ms (max {}; n={}, {} proc, {} thr)",
            ms(stats::median(&q.elapsed_ms)),
            ms(p99),
            ms(stats::max(&q.elapsed_ms)),
            q.cycles(),
            Quiescence::range(&q.processes),
            Quiescence::range(&q.threads)
        );
        if !q.failures.is_empty() {
            let _ = write!(s, "; **{} failed**", q.failures.len());
        }
        s
    };
    let ok = q.failures.is_empty() && p99.is_some_and(|p| p < QUIESCE_P99_BUDGET_MS);
    let verdict = if q.cycles() == 0 { String::new() } else { format!(" ({})", met(ok)) };
    Row {
        figure: format!("{label}: median / p99"),
        measured,
        budget: format!("p99 < {QUIESCE_P99_BUDGET_MS} ms{verdict}"),
        paper: "< 100 ms (§8, all programs)".into(),
    }
}

fn update_row(label: &str, versions: &str, u: &Updates) -> Row {
    let figure = format!("{label} update ({versions}): quiesce / restart+replay / commit / total, median (p90)");
    let paper = "quiescence < 100 ms (§8)".to_string();
    if u.attempts() == 0 {
        return Row {
            figure,
            measured: "not measured".into(),
            budget: format!("quiescence < {QUIESCE_P99_BUDGET_MS} ms"),
            paper,
        };
    }
    let four = |f: &dyn Fn(&[f64]) -> Option<f64>| {
        [&u.quiesce_ms, &u.restart_ms, &u.commit_ms, &u.total_ms].map(|v| ms(f(v))).join(" / ")
    };
    let mut measured =
        format!("{} ms (p90 {}); {}/{} committed", four(&stats::median), four(&p90), u.committed(), u.attempts());
    if !u.failures.is_empty() {
        let _ = write!(measured, " (**{} failed**)", u.failures.len());
    }
    let q90 = p90(&u.quiesce_ms);
    let budget = format!(
        "quiescence < {QUIESCE_P99_BUDGET_MS} ms, on the p90 ({}); every update commits ({})",
        met(q90.is_some_and(|q| q < QUIESCE_P99_BUDGET_MS)),
        met(u.failures.is_empty())
    );
    Row { figure, measured, budget, paper }
}

fn migration_row(label: &str, u: &Updates) -> Row {
    let figure = format!("{label} control migration (restart+replay) vs original startup");
    let paper = "< 50 ms, 1–45% over the original startup (§8)".to_string();
    let budget = format!("≤ original startup + {CONTROL_MIGRATION_SLACK_MS} ms");
    let (Some(r90), Some(server), Some(wall)) =
        (p90(&u.restart_ms), stats::median(&u.start_startup_ms), stats::median(&u.start_wall_ms))
    else {
        return Row { figure, measured: "not measured".into(), budget, paper };
    };
    // Restart + replay runs from the fork of the new version's first process: the cold
    // start measured the same way (exec and library loading included) is its baseline;
    // the server's own measure starts at the runtime's constructor, after those.
    let exec = stats::median(&u.start_exec_ms);
    let measured = format!(
        "restart+replay {} / p90 {} ms; original startup under mcr (median of {} cold starts): from the server's exec {} ms, server's own (from the runtime's constructor) {} ms, whole `mcr run --detach` {} ms",
        ms(stats::median(&u.restart_ms)),
        ms(Some(r90)),
        u.start_wall_ms.len(),
        ms(exec),
        ms(Some(server)),
        ms(Some(wall))
    );
    let (lim_s, lim_w) = (server + CONTROL_MIGRATION_SLACK_MS, wall + CONTROL_MIGRATION_SLACK_MS);
    let vs_exec = exec.map_or_else(
        || "vs the startup from exec: not measured".to_string(),
        |e| {
            let lim = e + CONTROL_MIGRATION_SLACK_MS;
            format!("vs the startup from exec (the same span), ≤ {} ms ({})", ms(Some(lim)), met(r90 <= lim))
        },
    );
    let budget = format!(
        "{budget}, on the p90: {vs_exec}; vs the server's own startup, ≤ {} ms ({}); vs the whole `mcr run --detach`, ≤ {} ms ({})",
        ms(Some(lim_s)),
        met(r90 <= lim_s),
        ms(Some(lim_w)),
        met(r90 <= lim_w)
    );
    Row { figure, measured, budget, paper }
}

pub fn build(dir: &Path) -> Result<String, String> {
    let meta = parse_meta(&read(dir, "meta.txt").unwrap_or_default());
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
    let kvd = Throughput::parse(&read(dir, "kvd-throughput.tsv").unwrap_or_default())?;
    let ngx = Throughput::parse(&read(dir, "nginx-throughput.tsv").unwrap_or_default())?;
    let q = |n: &str| Quiescence::parse(&read(dir, &format!("quiesce-{n}.tsv")).unwrap_or_default());
    let (qki, qkl, qni, qnl) = (q("kvd-idle"), q("kvd-load"), q("nginx-idle"), q("nginx-load"));
    let kvd_cpu = cpu_per_request(&read(dir, "kvd-cpu.tsv").unwrap_or_default())?;
    let ngx_cpu = cpu_per_request(&read(dir, "nginx-cpu.tsv").unwrap_or_default())?;
    let ngx_p99 = paired(&read(dir, "nginx-latency.tsv").unwrap_or_default(), |n| n.first().copied())?;
    let (ukvd, ungx) = (
        Updates::parse(&read(dir, "update-kvd.tsv").unwrap_or_default()),
        Updates::parse(&read(dir, "update-nginx.tsv").unwrap_or_default()),
    );
    let (vkvd, vngx) = (m("update_kvd"), m("update_nginx"));

    let rows = [
        throughput_row(
            "kvd throughput, mcr / baseline",
            &kvd,
            "2% mean, 4.7% worst overhead (Table 3; kvd not in paper)",
        ),
        throughput_row("nginx throughput, mcr / baseline", &ngx, "1.000 (Table 3, nginx +QDet)"),
        cpu_row("kvd server CPU per request, mcr / baseline", &kvd_cpu),
        cpu_row("nginx server CPU per request, mcr / baseline", &ngx_cpu),
        quiesce_row("kvd quiescence, idle", &qki),
        quiesce_row("kvd quiescence, under load", &qkl),
        quiesce_row("nginx quiescence, idle", &qni),
        quiesce_row("nginx quiescence, under load", &qnl),
        update_row("kvd", &vkvd, &ukvd),
        migration_row("kvd", &ukvd),
        update_row("nginx", &vngx, &ungx),
        migration_row("nginx", &ungx),
    ];

    let mut o = String::new();
    let _ = writeln!(o, "## mcr benchmarks{}", if m("mode") == "quick" { " (quick smoke run)" } else { "" });
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{} · {} cores ({}) · Linux {} · mcr {} · load avg before/after {} / {}",
        m("date"),
        m("nproc"),
        m("cpu"),
        m("kernel"),
        m("git"),
        m("loadavg_start"),
        m("loadavg_end")
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "| figure | measured | budget | paper |");
    let _ = writeln!(o, "|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(o, "| {} | {} | {} | {} |", r.figure, r.measured, r.budget, r.paper);
    }
    if !kvd.pairs.is_empty() || !ngx.pairs.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Absolute throughput (median over runs, baseline → under mcr):");
        for (name, t, unit) in [("kvd", &kvd, "req/s"), ("nginx", &ngx, "req/s")] {
            let _ = writeln!(
                o,
                "* {name}: {} → {} {unit}; run-to-run CV of the baseline {}",
                krps(stats::median(&t.base())),
                krps(stats::median(&t.mcr())),
                stats::cv(&t.base()).map(|c| format!("{:.1}%", c * 100.0)).unwrap_or_else(|| "–".into())
            );
        }
        if !ngx_p99.is_empty() {
            let _ = writeln!(
                o,
                "* nginx p99 latency (wrk): {} → {} ms (median over runs)",
                ms(stats::median(&ngx_p99.iter().map(|p| p.0).collect::<Vec<_>>())),
                ms(stats::median(&ngx_p99.iter().map(|p| p.1).collect::<Vec<_>>()))
            );
        }
    }
    if [&qki, &qkl, &qni, &qnl].iter().any(|q| q.cycles() > 0) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Wall time of the whole `mcr ctl NAME quiesce --json` command (process start included), median / p99:"
        );
        for (name, qq) in
            [("kvd idle", &qki), ("kvd under load", &qkl), ("nginx idle", &qni), ("nginx under load", &qnl)]
        {
            let _ = writeln!(
                o,
                "* {name}: {} / {} ms",
                ms(stats::median(&qq.client_ms)),
                ms(stats::percentile(&qq.client_ms, 99.0))
            );
        }
        for (name, qq) in
            [("kvd idle", &qki), ("kvd under load", &qkl), ("nginx idle", &qni), ("nginx under load", &qnl)]
        {
            if let Some(f) = qq.failures.first() {
                let _ = writeln!(o, "* {name}: {} quiesce failures, first: {f}", qq.failures.len());
            }
        }
    }
    if ukvd.attempts() + ungx.attempts() > 0 {
        let _ = writeln!(o);
        let _ = writeln!(o, "Live updates, median / p90:");
        for (name, u) in [("kvd", &ukvd), ("nginx", &ungx)] {
            if u.attempts() == 0 {
                continue;
            }
            let _ = writeln!(
                o,
                "* {name}: wall time of the whole `mcr update` command {} / {} ms; the new version's startup under replay {} / {} ms (cold start: {} / {} ms)",
                ms(stats::median(&u.client_ms)),
                ms(p90(&u.client_ms)),
                ms(stats::median(&u.new_startup_ms)),
                ms(p90(&u.new_startup_ms)),
                ms(stats::median(&u.start_startup_ms)),
                ms(p90(&u.start_startup_ms))
            );
            if let Some(f) = u.failures.first() {
                let _ = writeln!(o, "* {name}: {} updates did not commit, first: {f}", u.failures.len());
            }
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Setup: {}", m("setup"));
    let _ = writeln!(o);
    let _ = writeln!(o, "Reproduce: `{}`", m("command"));
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_pairs_and_ratios() {
        let t = Throughput::parse("1\tbase\t100\n1\tmcr\t99\n2\tmcr\t101\n2\tbase\t100\n3\tbase\t50\n").unwrap();
        assert_eq!(t.pairs.len(), 2, "pair 3 has no mcr half");
        let r = t.ratios();
        assert!((r[0] - 0.99).abs() < 1e-9 && (r[1] - 1.01).abs() < 1e-9);
        assert!(Throughput::parse("1\tother\t5\n").is_err());
        assert!(Throughput::parse("x\n").is_err());
    }

    #[test]
    fn throughput_verdict_needs_six_pairs() {
        let text: String = (0..6).map(|p| format!("{p}\tbase\t100\n{p}\tmcr\t{}\n", 97 + p % 2)).collect();
        let row = throughput_row("x", &Throughput::parse(&text).unwrap(), "");
        assert!(row.budget.contains("NOT met"), "{}", row.budget);
        assert!(row.measured.contains("95% CI of the median 0.970–0.980"), "{}", row.measured);
        let text: String = (0..6).map(|p| format!("{p}\tbase\t100\n{p}\tmcr\t100\n")).collect();
        assert!(throughput_row("x", &Throughput::parse(&text).unwrap(), "").budget.ends_with("(met)"));
        let text: String = (0..6).map(|p| format!("{p}\tbase\t100\n{p}\tmcr\t{}\n", 97 + p)).collect();
        let b = throughput_row("x", &Throughput::parse(&text).unwrap(), "").budget;
        assert!(b.contains("not resolved") && b.contains("median within"), "{b}");
    }

    #[test]
    fn cpu_pairs() {
        let p = cpu_per_request("1\tbase\t1000\t10\n1\tmcr\t1200\t10\n2\tbase\t5\t0\n").unwrap_err();
        assert!(p.contains("line 3"));
        let p = cpu_per_request("1\tbase\t1000\t10\n1\tmcr\t1200\t10\n").unwrap();
        assert_eq!(p, vec![(100.0, 120.0)]);
    }

    #[test]
    fn quiescence_parse_counts_failures() {
        let q = Quiescence::parse("ok\t300\t1\t1\t2000\nfail\t9000\ttimed out\nok\t500\t1\t1\t2500\n");
        assert_eq!(q.cycles(), 3);
        assert_eq!(q.elapsed_ms, vec![0.3, 0.5]);
        assert_eq!(q.failures, vec!["timed out".to_string()]);
        assert_eq!(Quiescence::range(&q.processes), "1");
    }

    #[test]
    fn report_from_files() {
        let dir = std::env::temp_dir().join(format!("mcr-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meta.txt"), "date=today\nnproc=2\nmode=full\n").unwrap();
        std::fs::write(dir.join("kvd-throughput.tsv"), "1\tbase\t1000\n1\tmcr\t995\n").unwrap();
        std::fs::write(dir.join("quiesce-kvd-idle.tsv"), "ok\t300\t1\t1\t2000\n").unwrap();
        std::fs::write(dir.join("kvd-cpu.tsv"), "0\tbase\t1000\t10\n0\tmcr\t1100\t10\n").unwrap();
        std::fs::write(dir.join("quiesce-nginx-idle.tsv"), "ok\t6000\t3\t3\t9000\n").unwrap();
        let md = build(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(md.contains("| figure | measured | budget | paper |"));
        assert!(md.contains("0.995 (−0.5%)"), "{md}");
        assert!(md.contains("≥ 0.99 (too few pairs to judge)"), "{md}");
        assert!(md.contains("0.30 / 0.30 ms"));
        assert!(md.contains("6.00 / 6.00 ms"));
        assert!(md.contains("p99 < 5 ms (**NOT met**)"));
        assert!(md.contains("| kvd quiescence, under load: median / p99 | not measured | p99 < 5 ms |"), "{md}");
        assert!(md.contains("| nginx throughput, mcr / baseline | not measured |"));
        assert!(md.contains("1.100 (+10.0%); 100 → 110 ns/request"), "{md}");
        assert!(
            md.contains("| kvd update (?): quiesce / restart+replay / commit / total, median (p90) | not measured |"),
            "{md}"
        );
        assert!(md.contains("| nginx control migration (restart+replay) vs original startup | not measured |"), "{md}");
        assert!(!md.contains("Live updates"), "{md}");
    }

    #[test]
    fn update_rows() {
        // An old raw file's 4-field start line, and two with the exec measure.
        let mut text = String::from("start\ta\t25000\t300\nstart\tb\t27000\t-\t9000\nstart\tb\t26000\t500\t12000\n");
        for i in 0..10u64 {
            text.push_str(&format!(
                "ok\tb\t{}\t{}\t1700\t{}\t30000\t2000\n",
                200 + i * 100,
                20000 + i * 100,
                25000 + i * 100
            ));
        }
        text.push_str("fail\ta\t9000\trolled back: conflict\n");
        let u = Updates::parse(&text);
        assert_eq!((u.committed(), u.attempts()), (10, 11));
        assert_eq!(u.start_startup_ms, vec![0.3, 0.5]);
        assert_eq!(u.start_exec_ms, vec![9.0, 12.0]);
        let r = update_row("kvd", "kvd ↔ kvd-v2", &u);
        assert_eq!(r.figure, "kvd update (kvd ↔ kvd-v2): quiesce / restart+replay / commit / total, median (p90)");
        assert!(
            r.measured.starts_with(
                "0.65 / 20.4 / 1.70 / 25.4 ms (p90 1.00 / 20.8 / 1.70 / 25.8); 10/11 committed (**1 failed**)"
            ),
            "{}",
            r.measured
        );
        assert!(r.budget.contains("p90 (met); every update commits (**NOT met**)"), "{}", r.budget);
        let m = migration_row("kvd", &u);
        assert!(m.measured.contains("restart+replay 20.4 / p90 20.8 ms"), "{}", m.measured);
        assert!(
            m.measured.contains(
                "(median of 3 cold starts): from the server's exec 10.5 ms, server's own (from the runtime's constructor) 0.40 ms, whole `mcr run --detach` 26.0 ms"
            ),
            "{}",
            m.measured
        );
        assert!(m.budget.contains("≤ 10.4 ms (**NOT met**)") && m.budget.contains("≤ 36.0 ms (met)"), "{}", m.budget);
        assert!(m.budget.contains("vs the startup from exec (the same span), ≤ 20.5 ms (**NOT met**)"), "{}", m.budget);
    }
}
