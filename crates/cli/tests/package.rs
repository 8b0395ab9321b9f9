//! The Debian package (packaging/deb/build.sh), installed with dpkg into a scratch root:
//! its files where they belong, and the demo's live update run from the installed files
//! only (the installed mcr, its runtime found without MCR_RUNTIME_LIB, servers compiled
//! against the installed mcr.h), nothing from target/.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// The .deb under test: `$MCR_DEB` (scripts/test.sh builds it once and sets it).
fn deb() -> PathBuf {
    built_file("MCR_DEB", "packaging/deb/build.sh --fast", "the package test")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?}: {}\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    text
}

/// Each of the package's dependencies is installed on this machine at a version that
/// satisfies it (the scratch root's own dpkg database is empty, so the install there
/// cannot check them).
fn assert_host_satisfies(depends: &str) {
    for dep in depends.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let alternatives: Vec<&str> = dep.split('|').map(str::trim).collect();
        let satisfied = alternatives.iter().any(|alt| {
            let (name, constraint) = match alt.split_once('(') {
                Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim())),
                None => (alt.trim(), None),
            };
            let Ok(q) = Command::new("dpkg-query").args(["-W", "-f=${Version}", name]).output() else {
                return false;
            };
            let version = String::from_utf8_lossy(&q.stdout).trim().to_string();
            if !q.status.success() || version.is_empty() {
                return false;
            }
            let Some((op, wanted)) = constraint.and_then(|c| c.split_once(' ')) else { return true };
            let op = match op {
                ">=" => "ge",
                "<=" => "le",
                ">>" => "gt",
                "<<" => "lt",
                "=" => "eq",
                other => panic!("unknown relation {other} in Depends: {depends}"),
            };
            Command::new("dpkg")
                .args(["--compare-versions", &version, op, wanted.trim()])
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(satisfied, "this machine does not satisfy the package's dependency {dep} (Depends: {depends})");
    }
}

/// `cc` a kvd build from the fixture's source with `defines`, against the installed mcr.h
/// only (`include`), into `out`.
fn compile_kvd(include: &Path, out: &Path, defines: &[&str]) -> PathBuf {
    let src = repo_root().join("fixtures/kvd.c");
    run(Command::new("cc")
        .args(["-g", "-O2", "-fno-omit-frame-pointer", "-std=gnu11"])
        .args(defines)
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(out)
        .arg(&src));
    out.to_path_buf()
}

fn gunzip(path: &Path) -> String {
    run(Command::new("gzip").arg("-dc").arg(path))
}

#[test]
fn the_package_installs_and_its_files_run_a_live_update() {
    let deb = deb();
    let tmp = TempDir::new("deb");
    let root = tmp.join("root");

    // What dpkg says about the package, then the install into a root of its own.
    let fields = run(Command::new("dpkg-deb").args(["--field"]).arg(&deb).args(["Package", "Depends"]));
    assert!(fields.contains("Package: mcr"), "{fields}");
    let depends = fields.lines().find_map(|l| l.strip_prefix("Depends: ")).unwrap_or_default();
    assert!(depends.contains("libc6"), "Depends from the binaries' shared libraries: {fields}");
    assert_host_satisfies(depends);
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--log=/dev/null", "--force-depends", "--install"])
        .arg(&deb));
    let status = run(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["--status", "mcr"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    let listed = run(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["--listfiles", "mcr"]));
    for file in [
        "/usr/bin/mcr",
        "/usr/lib/mcr/libmcr.so",
        "/usr/include/mcr.h",
        "/usr/share/man/man1/mcr.1.gz",
        "/usr/share/man/man1/mcr-update.1.gz",
        "/usr/share/man/man1/mcr-ctl-quiesce.1.gz",
        "/usr/share/bash-completion/completions/mcr",
        "/usr/share/zsh/vendor-completions/_mcr",
        "/usr/share/fish/vendor_completions.d/mcr.fish",
        "/usr/share/doc/mcr/examples/mcr-nginx.service.example",
        "/usr/share/doc/mcr/copyright",
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} is not in the package:\n{listed}");
        assert!(root.join(&file[1..]).is_file(), "{file} was not installed");
    }

    // The man pages and completions come from the clap definitions: every option of
    // `mcr update` is there, the hidden generator is not.
    let page = gunzip(&root.join("usr/share/man/man1/mcr-update.1.gz"));
    assert!(page.starts_with(".ie") || page.contains(".TH mcr-update 1"), "{page}");
    assert!(page.contains("fresh\\-state") && page.contains("drain\\-timeout"), "{page}");
    assert!(gunzip(&root.join("usr/share/man/man1/mcr.1.gz")).contains("mcr\\-history(1)"));
    for completion in [
        "usr/share/bash-completion/completions/mcr",
        "usr/share/zsh/vendor-completions/_mcr",
        "usr/share/fish/vendor_completions.d/mcr.fish",
    ] {
        let text = std::fs::read_to_string(root.join(completion)).unwrap();
        assert!(text.contains("fresh-state") && text.contains("history"), "{completion}:\n{text}");
        assert!(!text.contains("generate-docs"), "{completion} offers the hidden generator");
    }
    let installed = root.join("usr/bin/mcr");
    let version = run(Command::new(&installed).arg("--version"));
    assert_eq!(version.trim(), format!("mcr {}", env!("CARGO_PKG_VERSION")));

    // The demo, from the installed files: kvd and its v2 (structs changed) built against
    // the installed mcr.h, run by the installed mcr, which finds the installed runtime.
    let include = root.join("usr/include");
    let v1 = compile_kvd(&include, &tmp.join("kvd"), &[]);
    let v2 = compile_kvd(&include, &tmp.join("kvd-v2-layout"), &["-DKVD_V2_LAYOUT"]);
    // v3 moves a field through an MCR_ADD_OBJ_HANDLER: the header's macros at work.
    let v3 = compile_kvd(&include, &tmp.join("kvd-v3-meta-handled"), &["-DKVD_V3_META", "-DKVD_V3_HANDLER"]);
    let scratch = TempDir::new("deb-run");
    let mcr = Mcr { bin: installed.clone(), runtime_dir: scratch.join("run"), tmp: scratch };
    let port = free_port();
    let args = vec!["--port".to_string(), port.to_string()];
    let inst = mcr.start("demo", &v1, &args);
    let main = host_pid(&v1, port);
    let maps = std::fs::read_to_string(format!("/proc/{main}/maps")).unwrap();
    let runtime = root.join("usr/lib/mcr/libmcr.so").canonicalize().unwrap();
    assert!(maps.contains(&runtime.display().to_string()), "the server runs the installed runtime:\n{maps}");
    assert!(!maps.contains("/target/"), "nothing from target/ in the server:\n{maps}");

    let mut c = Client::connect(port);
    let replies = pipelined(&mut c, (1..=1000).map(|i| format!("SET key{i} value number {i}")));
    assert!(replies.iter().all(|r| r == "OK"), "{:?}", &replies[..3]);
    for _ in 0..7 {
        assert_eq!(c.request("GET key42"), "VALUE value number 42");
    }
    c.send_raw(b"SET half").unwrap();
    let out = update(&mcr, "demo", &[], &v2, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert!(out.stdout.contains("updated 'demo'"), "{out}");
    c.send_raw(b" finished after the update\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "OK", "the half-sent SET completes on the new version");
    assert_eq!(c.request("VERSION"), "VERSION kvd 2");
    assert_eq!(c.request("HITS key42"), "HITS 7");
    assert_eq!(c.request("GET half"), "VALUE finished after the update");
    assert_eq!(c.request("COUNT"), "COUNT 1001");

    // Back to v1 from the history, then to v3, whose handler carries the hit counts.
    assert_eq!(mcr.run(&["update", "demo", "--back"]).code(), 0);
    assert_eq!(c.request("VERSION"), "VERSION kvd 1");
    let (out, report) = update_json(&mcr, "demo", &[], &v3, &args);
    assert_eq!(out.code(), 0, "{out}\nlog:\n{}", inst.log());
    assert!(report["transfer"]["handled"].as_u64().is_some_and(|n| n > 0), "{report:#}");
    assert_eq!(c.request("VERSION"), "VERSION kvd 3");
    assert_eq!(c.request("HITS key42"), "HITS 7");
    assert_eq!(c.request("GET key1000"), "VALUE value number 1000");
    let history: Value = serde_json::from_str(&mcr.run(&["history", "demo", "--json"]).ok().stdout).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(3), "{history:#}");
    drop(c);
    inst.stop().ok();
}
