//! Mistakes get one clear line on stderr, a non-zero exit, and change nothing.

mod support;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// Runs `mcr ARGS`, expects failure with exactly one stderr line containing every one of
/// `needles`, and no instance files afterwards.
fn fails_with_one_line<S: AsRef<std::ffi::OsStr>>(mcr: &Mcr, args: &[S], needles: &[&str]) -> String {
    let out = mcr.run(args);
    assert_ne!(out.code(), 0, "expected failure: {out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {out}");
    let line = lines[0].to_string();
    for n in needles {
        assert!(line.contains(n), "stderr should mention {n:?}: {out}");
    }
    assert!(line.starts_with("mcr: "), "{out}");
    assert!(out.stdout.is_empty(), "nothing on stdout expected: {out}");
    assert!(mcr.instance_files().is_empty(), "files left behind: {:?}", mcr.runtime_files());
    line
}

fn run_args(name: &str, program: &Path, args: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["run".into(), "--name".into(), name.into(), "--".into(), program.into()];
    v.extend(args.iter().map(OsString::from));
    v
}

fn compile_c(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).unwrap();
    let out = Command::new("cc").args(flags).arg("-o").arg(&exe).arg(&c).output().expect("run cc");
    assert!(out.status.success(), "cc {flags:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    exe
}

#[test]
fn status_and_ctl_of_an_unknown_instance() {
    let mcr = Mcr::new("err-unknown");
    fails_with_one_line(&mcr, &["status", "nosuch"], &["no running instance", "nosuch"]);
    fails_with_one_line(&mcr, &["status", "nosuch", "--json"], &["no running instance", "nosuch"]);
    fails_with_one_line(&mcr, &["ctl", "nosuch", "quiesce"], &["no running instance", "nosuch"]);
    fails_with_one_line(&mcr, &["ctl", "nosuch", "resume"], &["no running instance", "nosuch"]);
    fails_with_one_line(&mcr, &["stop", "nosuch"], &["no running instance", "nosuch"]);
    // An empty list is not an error.
    let out = mcr.run(&["list"]).ok();
    assert!(out.stdout.contains("no running instances"), "{out}");
}

#[test]
fn run_of_a_missing_program() {
    let mcr = Mcr::new("err-missing");
    let missing = mcr.tmp.join("no-such-server");
    fails_with_one_line(&mcr, &run_args("x", &missing, &[]), &["not found", "no-such-server"]);
    let mut detach = run_args("x", &missing, &[]);
    detach.insert(1, "--detach".into());
    fails_with_one_line(&mcr, &detach, &["not found"]);
    // Looked up in PATH.
    fails_with_one_line(
        &mcr,
        &run_args("x", Path::new("mcr-test-no-such-program"), &[]),
        &["not found", "mcr-test-no-such-program"],
    );
}

#[test]
fn run_of_a_non_executable_file() {
    let mcr = Mcr::new("err-noexec");
    let kvd_copy = mcr.tmp.join("kvd-copy");
    std::fs::copy(fixture("kvd"), &kvd_copy).unwrap();
    std::fs::set_permissions(&kvd_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails_with_one_line(&mcr, &run_args("x", &kvd_copy, &["--port", "1"]), &["not executable", "kvd-copy"]);
    // A directory is no program either.
    fails_with_one_line(&mcr, &run_args("x", &mcr.tmp.path, &[]), &["not a regular file"]);
}

#[test]
fn run_of_a_statically_linked_program() {
    let mcr = Mcr::new("err-static");
    let exe = compile_c(&mcr.tmp.path, "static-true", "int main(void) { return 0; }\n", &["-static"]);
    fails_with_one_line(&mcr, &run_args("x", &exe, &[]), &["statically linked"]);
}

#[test]
fn run_with_an_invalid_instance_name() {
    let mcr = Mcr::new("err-name");
    let kvd = fixture("kvd");
    for bad in ["../x", "a/b", ".hidden", ""] {
        fails_with_one_line(&mcr, &run_args(bad, &kvd, &["--port", "1"]), &["invalid instance name"]);
    }
    fails_with_one_line(&mcr, &["status", "../x"], &["invalid instance name"]);
    // Nothing was created outside the runtime directory either.
    assert!(!mcr.runtime_dir.parent().unwrap().join("x.lock").exists());
}

#[test]
fn program_without_debug_info_gets_a_warning() {
    let mcr = Mcr::new("err-nodebug");
    // Built without -g (and so without any .gnu_debuglink).
    let exe = compile_c(&mcr.tmp.path, "plain-true", "int main(void) { return 0; }\n", &["-O2"]);
    let out = mcr.run(&run_args("t", &exe, &[]));
    assert_eq!(out.code(), 0, "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("warning") && lines[0].contains("debug info"), "{out}");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());

    // A program with debug info gets no such warning.
    let exe = compile_c(&mcr.tmp.path, "debug-true", "int main(void) { return 0; }\n", &["-g"]);
    let out = mcr.run(&run_args("t", &exe, &[]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(!out.stderr.contains("debug info"), "{out}");
}

#[test]
fn stripped_system_binary_gets_the_debug_info_warning() {
    let mcr = Mcr::new("err-bintrue");
    let out = mcr.run(&run_args("t", Path::new("/bin/true"), &[]));
    assert_eq!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("debug info"), "no warning about debug info: {out}");
}

#[test]
fn detached_server_that_exits_at_once_is_reported() {
    let mcr = Mcr::new("err-false");
    let mut argv = run_args("f", Path::new("/bin/false"), &[]);
    argv.insert(1, "--detach".into());
    let out = mcr.run(&argv);
    assert_ne!(out.code(), 0, "{out}");
    let first = out
        .stderr_lines()
        .into_iter()
        .find(|l| l.starts_with("mcr: ") && !l.contains("warning"))
        .unwrap_or_default()
        .to_string();
    assert!(first.contains("exited") && first.contains("before completing startup"), "{out}");
    assert!(first.contains("exit status 1"), "should tell how it exited: {out}");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());
    let out = mcr.run(&["status", "f"]);
    assert_ne!(out.code(), 0, "{out}");
}

#[test]
fn detached_server_with_bad_options_shows_its_own_error() {
    let mcr = Mcr::new("err-usage");
    let out = mcr.try_start("k", &fixture("kvd"), &["--no-such-option"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("before completing startup"), "{out}");
    assert!(out.stderr.contains("exit status 2"), "kvd exits 2 on bad options: {out}");
    // The server's own message is shown from the log.
    assert!(out.stderr.contains("usage"), "kvd's usage message should be shown: {out}");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());
}

#[test]
fn detached_server_that_never_completes_startup_times_out_clearly() {
    let mcr = Mcr::new("err-startup");
    let port = free_port();
    // stuckd without --stuck-after-start: one thread never makes a wrapped call.
    let stuckd = fixture("stuckd");
    let mut argv: Vec<OsString> = vec![
        "run".into(),
        "--detach".into(),
        "--startup-timeout".into(),
        "1".into(),
        "--name".into(),
        "s".into(),
        "--".into(),
    ];
    argv.extend([stuckd.clone().into(), "--port".into(), port.to_string().into()]);
    let t0 = std::time::Instant::now();
    let out = mcr.run(&argv);
    let _guard = mcr.guard("s");
    assert_ne!(out.code(), 0, "{out}");
    assert!(t0.elapsed() < Duration::from_secs(10), "--startup-timeout 1 took {:?}", t0.elapsed());
    assert!(out.stderr.contains("did not complete startup"), "{out}");
    assert!(out.stderr.contains("mcr stop s"), "should tell how to stop it: {out}");
    // It is left running, as the message says.
    let st = mcr.status("s");
    assert_eq!(st["started"], serde_json::Value::Bool(false), "{st:#}");
    assert_eq!(Client::connect(port).request("PING"), "PONG");
}

#[test]
fn a_runtime_library_that_is_not_mcrs_is_a_clear_error() {
    let mcr = Mcr::new("err-runtime-lib");
    let text = mcr.tmp.join("notes.txt");
    std::fs::write(&text, "not a library\n").expect("write");
    let text = text.display().to_string();
    for (lib, says) in [
        (text.as_str(), "not an ELF file"),
        ("/bin/true", "runtime's symbols"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "runtime's symbols"),
    ] {
        let t0 = std::time::Instant::now();
        let mut argv = run_args("k", &fixture("kvd"), &["--port", &free_port().to_string()]);
        argv.insert(1, "--detach".into());
        let out = mcr.command(&argv).env("MCR_RUNTIME_LIB", lib).output().expect("run mcr");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "MCR_RUNTIME_LIB={lib} accepted: {stderr}");
        assert!(stderr.contains("is not the mcr runtime library") && stderr.contains(says), "{lib}: {stderr}");
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}: not a startup timeout", t0.elapsed());
        assert!(mcr.instance_files().is_empty(), "{:?}", mcr.runtime_files());
    }
}

#[test]
fn an_unbounded_profile_is_refused() {
    let mcr = Mcr::new("err-profile-zero");
    let mut argv = run_args("k", &fixture("kvd"), &["--port", &free_port().to_string()]);
    argv.splice(1..1, ["--detach".into(), "--profile".into(), "/dev/zero".into()]);
    let t0 = std::time::Instant::now();
    let out = mcr.run(&argv);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("/dev/zero") && out.stderr.contains("regular file"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}

/// `mcr run` that fails shows the server's lines of this run, not those an earlier run
/// of the same name left in the log.
#[test]
fn a_failed_run_shows_only_its_own_log_lines() {
    let mcr = Mcr::new("err-own-lines");
    // First run: kvd prints its usage and exits.
    let out = mcr.try_start("k", &fixture("kvd"), &["--no-such-option"]);
    assert!(!out.success() && out.stderr.contains("usage"), "{out}");
    // Second run of the same name: its port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().unwrap().port();
    let out = mcr.try_start("k", &fixture("kvd"), &["--port", &port.to_string()]);
    assert!(!out.success() && out.stderr.contains("Address already in use"), "{out}");
    assert!(!out.stderr.contains("usage"), "the first run's lines are shown again: {out}");
}
