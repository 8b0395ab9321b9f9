//! nginx under mcr as a service of a real systemd, booted in a container
//! (scripts/systemd/unit-test.sh: systemd-nspawn on the rootfs of scripts/systemd/rootfs.sh):
//! the Debian package installed with dpkg, a unit made from the example it ships, and
//! `systemctl start`, `status`, `reload` (a live update to the next nginx build), a reload
//! whose update rolls back, and `stop`, each checked here from the records the script
//! leaves (what systemctl, journalctl, curl and mcr said, and their exit statuses).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// The root file system tarball: `$MCR_SYSTEMD_ROOTFS` (scripts/test.sh builds it once,
/// cached, with scripts/systemd/rootfs.sh, and sets it).
fn rootfs() -> PathBuf {
    built_file("MCR_SYSTEMD_ROOTFS", "scripts/systemd/rootfs.sh", "the systemd test")
}

/// The .deb under test: `$MCR_DEB`, as crates/cli/tests/package.rs takes it.
fn deb() -> PathBuf {
    built_file("MCR_DEB", "packaging/deb/build.sh --fast", "the systemd test")
}

/// The records of one run of the script: each step's output and exit status.
struct Steps {
    dir: PathBuf,
    transcript: String,
}

impl Steps {
    fn read(&self, name: &str, ext: &str) -> String {
        let p = self.dir.join(format!("{name}.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("no record {}: {e}\n{}", p.display(), self.transcript))
    }

    fn out(&self, name: &str) -> String {
        self.read(name, "out")
    }

    fn rc(&self, name: &str) -> i32 {
        let rc = self.read(name, "rc");
        rc.trim().parse().unwrap_or_else(|_| panic!("{name}.rc is not a number: {rc:?}"))
    }

    /// Step `name` exited 0; its output.
    fn ok(&self, name: &str) -> String {
        assert_eq!(self.rc(name), 0, "step {name} failed: {}\n--- transcript:\n{}", self.out(name), self.transcript);
        self.out(name)
    }

    /// `systemctl show` properties recorded by step `name`.
    fn show(&self, name: &str) -> HashMap<String, String> {
        self.ok(name).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

fn run_unit_test(out: &Path, v1: &Path, v2: &Path) -> Steps {
    let script = repo_root().join("scripts/systemd/unit-test.sh");
    let started = Instant::now();
    let run = Command::new(&script)
        .arg("--out")
        .arg(out)
        .arg("--rootfs")
        .arg(rootfs())
        .arg("--deb")
        .arg(deb())
        .arg("--nginx")
        .arg(v1)
        .arg("--nginx-next")
        .arg(v2)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let transcript = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{} could not boot the container ({}):\n{transcript}", script.display(), run.status);
    eprintln!("unit-test.sh took {:.1} s", started.elapsed().as_secs_f64());
    Steps { dir: out.to_path_buf(), transcript }
}

#[test]
fn nginx_under_mcr_as_a_systemd_service_starts_reloads_live_fails_a_bad_reload_and_stops() {
    let nginx = nginx_bin("the systemd test");
    let patches = std::fs::read_to_string(nginx.parent().unwrap().parent().unwrap().join(".mcr-build"))
        .ok()
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("total=").map(|n| n.trim().parse::<u32>())))
        .and_then(Result::ok)
        .expect("the nginx build's .mcr-build names its patch total");
    // The service starts with the next-to-last patch level; the reload brings the last.
    let v1 = cached_nginx_build(&nginx, patches - 1, "the systemd test");
    let v2 = cached_nginx_build(&nginx, patches, "the systemd test");
    let (id1, id2) = (elf_build_id(&v1), elf_build_id(&v2));
    assert_ne!(id1, id2, "the two nginx builds are the same build");
    let tmp = TempDir::new("systemd");
    let started = Instant::now();
    let s = run_unit_test(&tmp.path, &v1, &v2);
    let t = &s.transcript;
    let command_line = "/usr/sbin/nginx -p /srv/nginx -c /srv/nginx/conf/mcr-test.conf";

    // The package installs; the unit is the shipped example with nginx's command line only.
    s.ok("install");
    let unit_diff = s.ok("unit");
    assert_eq!(unit_diff.lines().filter(|l| l.starts_with(['<', '>'])).count(), 2, "{unit_diff}");

    // start: READY=1 came (Type=notify), from mcr run, which is the main process, and
    // STATUS= names the binary, its arguments and its build.
    s.ok("start");
    let show = s.show("show");
    assert_eq!((show["ActiveState"].as_str(), show["SubState"].as_str()), ("active", "running"), "{show:?}");
    let main_pid = show["MainPID"].clone();
    assert_ne!(main_pid, "0", "{show:?}");
    assert_eq!(show["StatusText"], format!("running {command_line} (build {})", &id1[..12]), "{show:?}");
    let status = s.ok("status");
    assert!(status.contains(&format!("Main PID: {main_pid} (mcr)")), "{status}");
    assert!(status.contains(&format!("Status: \"running {command_line} (build {}", &id1[..12])), "{status}");
    assert_eq!(s.ok("http"), "ok\n");

    // reload: a live update to the build now at /usr/sbin/nginx. It succeeds; its report is
    // in the journal; the same mcr run stays the main process and says the new build.
    s.ok("install-next");
    s.ok("reload");
    let journal = s.ok("reload-journal");
    assert!(journal.lines().any(|l| l.starts_with("updated 'nginx': ")), "no update report in the journal:\n{journal}");
    assert!(journal.contains("Reloaded mcr-nginx.service"), "{journal}");
    let show = s.show("reload-show");
    assert_eq!(show["ActiveState"], "active", "{show:?}");
    assert_eq!(show["MainPID"], main_pid, "the main process changed across the live update: {show:?}");
    assert_eq!(show["StatusText"], format!("running {command_line} (build {})", &id2[..12]), "{show:?}");
    assert!(s.ok("reload-status").contains("ExecReload=/usr/bin/mcr update nginx"), "{t}");
    assert_eq!(s.ok("reload-http"), "ok\n");

    // A reload whose update rolls back (the new version's startup fails on a broken
    // configuration): systemctl reload fails, the report says why, and the same processes
    // serve on, the service active with the same main process and status.
    s.ok("break-conf");
    assert_ne!(s.rc("bad-reload"), 0, "a reload whose update rolled back succeeded:\n{t}");
    let journal = s.ok("bad-journal");
    assert!(journal.contains("mcr: update of 'nginx' rolled back; the old version is running as before."), "{journal}");
    assert!(
        journal.contains("unknown directive \"not_an_nginx_directive\""),
        "the reason is not in the journal:\n{journal}"
    );
    assert!(journal.contains("Reload failed for mcr-nginx.service"), "{journal}");
    let after = s.show("bad-show");
    assert_eq!(after["ActiveState"], "active", "{after:?}");
    assert_eq!(after["MainPID"], main_pid, "{after:?}");
    assert_eq!(after["StatusText"], show["StatusText"], "the status changed after a rollback");
    assert_eq!(s.ok("bad-http"), "ok\n");
    let before = s.ok("bad-pids-before");
    assert!(!before.trim().is_empty(), "no nginx process before the bad reload:\n{t}");
    assert_eq!(s.ok("bad-pids-after"), before, "other nginx processes after a rolled-back reload");
    s.ok("restore-conf");

    // stop: graceful (mcr forwards SIGQUIT to the updated nginx's master), well before the
    // unit's TimeoutStopSec, nothing left behind.
    s.ok("stop");
    let stop_ms: u64 = s.read("stop", "ms").trim().parse().unwrap();
    assert!(stop_ms < 10_000, "systemctl stop took {stop_ms} ms");
    let show = s.show("stop-show");
    assert_eq!((show["ActiveState"].as_str(), show["Result"].as_str()), ("inactive", "success"), "{show:?}");
    assert_eq!(s.ok("stop-procs").trim(), "", "processes left after systemctl stop");
    let nginx_log = s.ok("stop-nginx-log");
    assert!(nginx_log.contains("signal 3 (SIGQUIT) received") && nginx_log.contains("exit"), "{nginx_log}");
    let journal = s.ok("journal");
    assert!(journal.contains("Deactivated successfully"), "{journal}");
    for bad in ["Killing process", "timed out", "SIGKILL"] {
        assert!(!journal.contains(bad), "{bad:?} in the unit's journal:\n{journal}");
    }

    // The instance's history in the container: the committed reload, then the rolled-back one.
    let history = s.ok("history-end");
    let outcomes: Vec<&str> = history
        .lines()
        .filter_map(|l| ["committed", "rolled back"].into_iter().find(|o| l.contains(&format!("  {o}  "))))
        .collect();
    assert_eq!(outcomes, ["committed", "rolled back"], "{history}");

    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "the systemd test took {took:?} with the root file system cached");
}
