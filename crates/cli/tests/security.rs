//! What another local user can do to a root instance, and what mcr refuses to trust:
//! each test plays the attacker for real (an unprivileged user through `setpriv`, a
//! planted symlink, a directory everybody can write).

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use support::*;

/// The unprivileged user the attacker runs as.
const NOBODY: u32 = 65534;

/// `mcr ARGS` as uid/gid 65534, with this test's runtime directory.
fn as_nobody(mcr: &Mcr, args: &[&str]) -> Out {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into(), "--".into()])
        .arg(&mcr.bin)
        .args(args)
        .env("MCR_RUNTIME_DIR", &mcr.runtime_dir)
        .env_remove("MCR_RUNTIME_LIB");
    Spawned::spawn(c, &mcr.tmp.path).wait(COMMAND_TIMEOUT, "mcr as nobody")
}

/// The scratch directory must be reachable by the unprivileged user (it holds the output
/// files of its commands).
fn open_scratch(mcr: &Mcr) {
    fs::set_permissions(&mcr.tmp.path, fs::Permissions::from_mode(0o777)).expect("chmod scratch dir");
}

#[test]
fn another_user_is_told_permission_denied_and_removes_nothing() {
    let mcr = Mcr::new("sec-other-user");
    open_scratch(&mcr);
    let port = free_port();
    let kvd = mcr.start("kvd", &fixture("kvd"), &["--port", &port.to_string()]);
    let before = mcr.instance_files();
    assert!(before.iter().any(|f| f == "kvd.lock"), "{before:?}");
    // Both a private runtime directory and one others may list (but not write).
    for mode in [0o700, 0o755] {
        fs::set_permissions(&mcr.runtime_dir, fs::Permissions::from_mode(mode)).expect("chmod runtime dir");
        for args in [&["status", "kvd"][..], &["ctl", "kvd", "quiesce"], &["stop", "kvd"]] {
            let out = as_nobody(&mcr, args);
            assert!(!out.success(), "mcr {args:?} as nobody succeeded (mode {mode:o}): {out}");
            assert!(out.stderr.contains("permission denied"), "mcr {args:?} (mode {mode:o}): {out}");
            assert!(!out.stderr.contains("no running instance"), "{out}");
        }
        // Listing must not take root's live instance for a dead one and clean it up.
        let _ = as_nobody(&mcr, &["list"]);
        assert_eq!(mcr.instance_files(), before, "files changed after nobody's commands (mode {mode:o})");
    }
    assert_eq!(kvd.status()["processes"].as_array().map(Vec::len), Some(1), "root's instance still answers");
}

#[test]
fn a_runtime_directory_others_can_write_is_refused() {
    let mcr = Mcr::new("sec-shared-dir");
    fs::create_dir_all(&mcr.runtime_dir).expect("create runtime dir");
    for mode in [0o1777, 0o777, 0o775] {
        fs::set_permissions(&mcr.runtime_dir, fs::Permissions::from_mode(mode)).expect("chmod");
        let port = free_port();
        let out = mcr.try_start("kvd", &fixture("kvd"), &["--port", &port.to_string()]);
        assert!(!out.success(), "mcr run accepted a runtime directory of mode {mode:o}: {out}");
        assert!(out.stderr.contains("writable by"), "mode {mode:o}: {out}");
        assert!(port_free(port), "the server started anyway (mode {mode:o})");
        assert!(mcr.runtime_files().is_empty(), "files created: {:?}", mcr.runtime_files());
    }
    // A symlink to a private directory is refused too (whoever owns the link decides
    // where root writes).
    let real = mcr.tmp.join("real");
    fs::create_dir(&real).expect("mkdir");
    fs::set_permissions(&mcr.runtime_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::remove_dir(&mcr.runtime_dir).expect("rmdir");
    symlink(&real, &mcr.runtime_dir).expect("symlink");
    let out = mcr.run(&["list"]);
    assert!(!out.success() && out.stderr.contains("symbolic link"), "{out}");
}

#[test]
fn planted_symlinks_in_the_runtime_directory_are_never_followed() {
    let mcr = Mcr::new("sec-symlink");
    fs::create_dir_all(&mcr.runtime_dir).expect("create runtime dir");
    fs::set_permissions(&mcr.runtime_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let victims: Vec<_> = ["log", "pid"]
        .iter()
        .map(|ext| {
            let v = mcr.tmp.join(&format!("victim-{ext}"));
            fs::write(&v, "precious\n").expect("write victim");
            symlink(&v, mcr.runtime_dir.join(format!("kvd.{ext}"))).expect("plant symlink");
            v
        })
        .collect();
    let port = free_port();
    let out = mcr.try_start("kvd", &fixture("kvd"), &["--port", &port.to_string()]);
    let _guard = out.success().then(|| mcr.guard("kvd"));
    for v in &victims {
        assert_eq!(
            fs::read_to_string(v).unwrap_or_default(),
            "precious\n",
            "{} was written through: {out}",
            v.display()
        );
    }
}
