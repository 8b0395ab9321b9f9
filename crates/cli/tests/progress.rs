//! `mcr update`'s progress display, through the real binary: on a terminal (a pty made by
//! `script`) each step shows as it runs and leaves a line with its time; with --json, or
//! when stdout is not a terminal, the output is the report alone.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use support::*;

/// The line a finished step leaves (crates/cli/src/progress.rs): its name padded to 15.
fn step_line(name: &str) -> String {
    format!("  {name:<15}")
}

const STEPS: [&str; 6] = ["preflight", "drain", "quiesce", "restart+replay", "state transfer", "commit"];

/// `mcr ARGS` with its stdout and stderr on a pseudo-terminal: what the terminal got.
fn on_a_terminal(mcr: &Mcr, args: &[String]) -> (i32, String) {
    let quoted: Vec<String> = std::iter::once(mcr.bin.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["--quiet", "--return", "--command", &quoted.join(" "), "/dev/null"])
        .env("MCR_RUNTIME_DIR", &mcr.runtime_dir)
        .env_remove("MCR_RUNTIME_LIB")
        .stdin(Stdio::null());
    let out = Spawned::spawn(cmd, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr under script");
    (out.code(), out.stdout)
}

fn update_args(name: &str, flags: &[&str], program: &Path, args: &[String]) -> Vec<String> {
    let mut v: Vec<String> = vec!["update".into(), name.into()];
    v.extend(flags.iter().map(|f| f.to_string()));
    v.push("--".into());
    v.push(program.display().to_string());
    v.extend(args.iter().cloned());
    v
}

#[test]
fn update_shows_its_steps_on_a_terminal_only() {
    let mcr = Mcr::new("progress");
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let _inst = mcr.start("kvd", &fixture("kvd"), &args);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET kept yes"), "OK");

    // On a terminal: every phase, then the report.
    let (code, screen) = on_a_terminal(&mcr, &update_args("kvd", &[], &fixture("kvd-v2"), &args));
    assert_eq!(code, 0, "{screen}");
    for step in STEPS {
        assert!(screen.contains(&step_line(step)), "{step} is not shown:\n{screen:?}");
    }
    assert!(screen.contains("updated 'kvd'"), "{screen:?}");
    assert!(
        screen.find(&step_line("commit")) < screen.find("updated 'kvd'"),
        "the steps come before the report: {screen:?}"
    );
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");

    // A rehearsal shows its rollback.
    let (code, screen) = on_a_terminal(&mcr, &update_args("kvd", &["--rehearse"], &fixture("kvd-v2-layout"), &args));
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains(&step_line("rollback")) && !screen.contains(&step_line("commit")), "{screen:?}");

    // With --json, on a terminal too: the report alone.
    let (code, screen) = on_a_terminal(&mcr, &update_args("kvd", &["--json"], &fixture("kvd-v2-layout"), &args));
    assert_eq!(code, 0, "{screen}");
    assert!(STEPS.iter().all(|s| !screen.contains(&step_line(s))), "{screen:?}");
    let json: serde_json::Value = serde_json::from_str(&screen.replace("\r\n", "\n"))
        .unwrap_or_else(|e| panic!("--json on a terminal is not JSON alone ({e}): {screen:?}"));
    assert_eq!(json["committed"], true);

    // Not a terminal: the report, line for line as before, nothing drawn.
    let out = update(&mcr, "kvd", &[], &fixture("kvd-v2"), &args);
    assert_eq!(out.code(), 0, "{out}");
    assert!(STEPS.iter().all(|s| !out.stdout.contains(&step_line(s))), "{out}");
    assert!(!out.stdout.contains('\x1b') && !out.stdout.contains('\r') && !out.stdout.contains('…'), "{out}");
    assert!(out.stdout.starts_with("updated 'kvd': drain "), "{out}");
    let kinds = ["updated '", "state: ", "heap: ", "startup objects: "];
    assert!(out.stdout.lines().all(|l| kinds.iter().any(|k| l.starts_with(k))), "{out}");
    assert_eq!(c.request("GET kept"), "VALUE yes");
}
