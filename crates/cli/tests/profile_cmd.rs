//! `mcr profile`: for each sample server and nginx, the workload script in
//! scripts/workloads finds the quiescent point of every long-lived thread class; a
//! server run with the written profile quiesces (and updates) as with the built-in
//! defaults; slowd's worker, which also blocks in read() mid-request, gets its loop-top
//! wait as quiescent point and a report saying why the read is not one.

mod support;

use serde_json::Value;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

struct Profiled {
    out: Out,
    profile: Value,
    report: String,
    path: PathBuf,
}

/// `mcr profile --workload 'scripts/workloads/SCRIPT PORT' -- PROGRAM ARGS`.
fn profile(mcr: &Mcr, script: &str, port: u16, program: &Path, args: &[OsString]) -> Profiled {
    let path = mcr.tmp.join(&format!("{script}.profile.json"));
    let report_path = mcr.tmp.join(&format!("{script}.report.txt"));
    let workload = format!("{} {port}", repo_root().join("scripts/workloads").join(script).display());
    let mut argv: Vec<OsString> = vec![
        "profile".into(),
        "--name".into(),
        format!("prof-{script}").into(),
        "--out".into(),
        path.clone().into(),
        "--report".into(),
        report_path.clone().into(),
        "--workload".into(),
        workload.into(),
        "--".into(),
        program.into(),
    ];
    argv.extend(args.iter().cloned());
    let out = mcr.run(&argv);
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert!(out.success(), "mcr profile failed: {out}\nreport:\n{report}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("no profile written ({e}): {out}"));
    let profile: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("profile is not JSON ({e}): {text}"));
    assert_eq!(profile["format"], "mcr-profile/1", "{text}");
    assert!(
        mcr.instance_files().is_empty(),
        "the profiled server is stopped and its files gone: {:?}",
        mcr.instance_files()
    );
    Profiled { out, profile, report, path }
}

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// The quiescent point of the class whose label contains `class`: (call, frames).
fn qp_of<'a>(p: &'a Profiled, class: &str) -> &'a Value {
    let classes = p.profile["thread_classes"].as_array().expect("thread_classes");
    let c = classes
        .iter()
        .find(|c| c["label"].as_str().is_some_and(|l| l.contains(class)))
        .unwrap_or_else(|| panic!("no class {class:?}: {:#}\n{}", p.profile, p.report));
    let id = c["quiescent_point"]
        .as_str()
        .unwrap_or_else(|| panic!("class {class:?} has no quiescent point: {:#}", p.profile));
    p.profile["quiescent_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == id)
        .unwrap_or_else(|| panic!("quiescent point {id} of {class:?} not listed: {:#}", p.profile))
}

fn assert_qp(p: &Profiled, class: &str, call: &str, function: &[&str]) {
    let q = qp_of(p, class);
    assert_eq!(q["call"], call, "class {class:?}: {q:#}\n{}", p.report);
    let first = q["frames"][0].as_str().unwrap_or_default();
    assert!(
        function.contains(&first),
        "class {class:?}: {call} called from {first}, expected one of {function:?}: {q:#}\n{}",
        p.report
    );
}

/// (SL, LL, QP, Per, Vol) as the report's table says.
fn table(p: &Profiled) -> Vec<u64> {
    let mut lines = p.report.lines().skip_while(|l| !l.contains("SL  LL  QP  Per  Vol"));
    lines.next();
    let row = lines.next().unwrap_or_else(|| panic!("no Table 1 row in the report:\n{}", p.report));
    row.split_whitespace().map(|n| n.parse().unwrap_or_else(|_| panic!("bad row {row:?}"))).collect()
}

/// The IDs of the quiescent points `mcr status` shows for a server run with the default
/// rule: the profile must name the same call stacks.
fn default_qp_ids(st: &Value) -> std::collections::BTreeSet<String> {
    threads(st).iter().filter_map(|(_, t)| t["quiescent_point"]["id"].as_str().map(str::to_string)).collect()
}

fn profile_ids(p: &Profiled) -> std::collections::BTreeSet<String> {
    p.profile["quiescent_points"].as_array().unwrap().iter().map(|q| q["id"].as_str().unwrap().to_string()).collect()
}

fn run_profiled<'a>(mcr: &'a Mcr, name: &str, profile: &Path, program: &Path, args: &[OsString]) -> Instance<'a> {
    let mut argv: Vec<OsString> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        name.into(),
        "--profile".into(),
        profile.into(),
        "--".into(),
        program.into(),
    ];
    argv.extend(args.iter().cloned());
    let out = mcr.run(&argv);
    let inst = mcr.guard(name);
    assert!(out.success(), "mcr run --profile failed: {out}\nlog:\n{}", inst.log());
    inst
}

fn quiesce_parked(inst: &Instance, procs: usize, threads: usize) {
    let out = inst.quiesce(2000);
    assert!(out.success(), "quiesce with the profile failed: {out}");
    assert_all_parked(&inst.status(), procs, threads);
    assert!(inst.resume().success());
}

#[test]
fn kvd_profile_names_epoll_wait_in_main_and_the_profiled_server_quiesces_and_updates() {
    let mcr = Mcr::new("prof-kvd");
    let port = free_port();
    let a = args(&["--port", &port.to_string()]);
    let p = profile(&mcr, "kvd.sh", port, &fixture("kvd"), &a);
    assert_qp(&p, "main thread of kvd", "epoll_wait", &["main"]);
    assert_eq!(table(&p), vec![0, 1, 1, 1, 0], "{}", p.report);
    assert!(
        p.report.contains("long-lived loop: main") && p.report.contains("kvd.c:"),
        "symbolized with file:line:\n{}",
        p.report
    );
    assert!(p.report.contains("profiling cost:"), "{}", p.report);

    let plain = mcr.start("kvd-plain", &fixture("kvd"), &a);
    assert_eq!(profile_ids(&p), default_qp_ids(&plain.status()), "same call stacks as the default rule");
    drop(plain);

    let port = free_port();
    let a = args(&["--port", &port.to_string()]);
    let inst = run_profiled(&mcr, "kvd", &p.path, &fixture("kvd"), &a);
    quiesce_parked(&inst, 1, 1);
    let mut c = Client::connect(port);
    assert_eq!(c.request("SET a 1"), "OK");
    let a2: Vec<String> = vec!["--port".into(), port.to_string()];
    let mut argv: Vec<OsString> = vec!["update".into(), "kvd".into(), "--".into(), fixture("kvd-v2").into()];
    argv.extend(a2.iter().map(OsString::from));
    let out = mcr.run(&argv);
    assert!(out.success(), "update of the profiled kvd: {out}");
    assert_eq!(Client::connect(port).request("VERSION"), "VERSION kvd 2");
    let st = mcr.status("kvd");
    assert!(
        threads(&st)
            .iter()
            .all(|(_, t)| t["quiescent_point"]["id"].as_str().is_some_and(|id| profile_ids(&p).contains(id))),
        "{st:#}"
    );
}

#[test]
fn poold_profile_names_accept_and_the_workers_condition_wait() {
    let mcr = Mcr::new("prof-poold");
    let port = free_port();
    let a = args(&["--port", &port.to_string(), "--threads", "3"]);
    let p = profile(&mcr, "poold.sh", port, &fixture("poold"), &a);
    assert_qp(&p, "main thread of poold", "accept", &["main"]);
    assert_qp(&p, "worker_main", "pthread_cond_wait", &["worker_main"]);
    assert_eq!(table(&p), vec![0, 2, 2, 2, 0], "{}", p.report);
    let plain = mcr.start("poold-plain", &fixture("poold"), &a);
    assert_eq!(profile_ids(&p), default_qp_ids(&plain.status()));
    drop(plain);

    let port = free_port();
    let inst = run_profiled(
        &mcr,
        "poold",
        &p.path,
        &fixture("poold"),
        &args(&["--port", &port.to_string(), "--threads", "3"]),
    );
    quiesce_parked(&inst, 1, 4);
    assert_eq!(Client::connect(port).request("INCR"), "VALUE 1");
}

#[test]
fn forkd_profile_names_the_master_and_worker_processes() {
    let mcr = Mcr::new("prof-forkd");
    let port = free_port();
    let a = args(&["--port", &port.to_string(), "--workers", "2"]);
    let p = profile(&mcr, "forkd.sh", port, &fixture("forkd"), &a);
    assert_qp(&p, "main thread of forkd", "sigsuspend", &["main"]);
    // The worker loop (worker_main, inlined by the compiler into its caller).
    assert_qp(&p, "process forked at fork", "accept", &["worker_main", "spawn", "spawn_missing"]);
    assert_eq!(table(&p), vec![0, 2, 2, 2, 0], "{}", p.report);
    // The workload never talks to the master.
    assert!(p.report.contains("main thread of forkd (exec): the workload did not reach this class"), "{}", p.report);

    let port = free_port();
    let inst = run_profiled(
        &mcr,
        "forkd",
        &p.path,
        &fixture("forkd"),
        &args(&["--port", &port.to_string(), "--workers", "2"]),
    );
    quiesce_parked(&inst, 3, 3);
    assert_eq!(Client::connect(port).request("PING"), "PONG");
}

#[test]
fn connd_profile_finds_a_volatile_class_for_its_session_processes() {
    let mcr = Mcr::new("prof-connd");
    let port = free_port();
    let a = args(&["--port", &port.to_string()]);
    let p = profile(&mcr, "connd.sh", port, &fixture("connd"), &a);
    assert_qp(&p, "main thread of connd", "select", &["main", "accept_clients"]);
    assert_qp(&p, "process forked at fork", "read", &["serve", "child_main", "main", "accept_clients"]);
    // The session processes appear only once clients connect: volatile.
    assert_eq!(table(&p), vec![0, 2, 2, 1, 1], "{}", p.report);

    let port = free_port();
    let inst = run_profiled(&mcr, "connd", &p.path, &fixture("connd"), &args(&["--port", &port.to_string()]));
    let mut sessions = [Client::connect(port), Client::connect(port)];
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(s.request(&format!("SET who s{i}")), "OK");
    }
    assert!(wait_until(Duration::from_secs(5), || processes(&inst.status()).len() == 3));
    quiesce_parked(&inst, 3, 3);
    assert_eq!(sessions[1].request("GET who"), "VALUE s1");
}

#[test]
fn nginx_profile_matches_table_1_and_the_profiled_nginx_quiesces() {
    let nginx = nginx_bin("nginx_profile_matches_table_1_and_the_profiled_nginx_quiesces");
    let mcr = Mcr::new("prof-nginx");
    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
    let a: Vec<OsString> = vec!["-p".into(), prefix.clone().into(), "-c".into(), conf.clone().into()];
    let p = profile(&mcr, "nginx.sh", port, &nginx, &a);
    // Paper Table 1, nginx: 1 short-lived class (daemonization), 2 long-lived, both
    // persistent.
    assert_eq!(table(&p), vec![1, 2, 2, 2, 0], "{}", p.report);
    let qps = p.profile["quiescent_points"].as_array().unwrap();
    let has = |call: &str, f: &str| {
        qps.iter().any(|q| q["call"] == call && q["frames"].as_array().unwrap().iter().any(|x| x == f))
    };
    assert!(has("sigsuspend", "ngx_master_process_cycle"), "{:#}", p.profile);
    assert!(
        has("epoll_wait", "ngx_epoll_process_events") && has("epoll_wait", "ngx_worker_process_cycle"),
        "{:#}",
        p.profile
    );

    let port = free_port();
    let (prefix, conf) = nginx_config(&mcr.tmp.join("second"), port);
    let a: Vec<OsString> = vec!["-p".into(), prefix.into(), "-c".into(), conf.into()];
    let inst = run_profiled(&mcr, "nginx", &p.path, &nginx, &a);
    quiesce_parked(&inst, 3, 3);
    assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".to_string()));
}

#[test]
fn slowd_worker_quiesces_at_its_loop_top_wait_not_in_the_read_of_a_slow_request() {
    let mcr = Mcr::new("prof-slowd");
    let port = free_port();
    let a = args(&["--port", &port.to_string(), "--threads", "2"]);
    let p = profile(&mcr, "slowd.sh", port, &fixture("slowd"), &a);
    assert_qp(&p, "main thread of slowd", "accept", &["main"]);
    assert_qp(&p, "worker_main", "pthread_cond_wait", &["worker_main"]);
    assert_eq!(qp_of(&p, "worker_main")["long_lived_loop"], "worker_main", "{:#}", p.profile);
    // The report names the read and says why it is not a quiescent point.
    let why = p.report.lines().skip_while(|l| !l.contains("not a quiescent point: read")).nth(1).unwrap_or_default();
    assert!(why.contains("inside handle_client") && why.contains("middle of an iteration"), "{}", p.report);
    assert!(!p.out.stderr.contains("panicked"), "{}", p.out);

    // With the profile, a worker inside a slow request is not parked there: quiescence
    // waits for the request to finish, then holds the worker at its loop top.
    let port = free_port();
    let inst = run_profiled(
        &mcr,
        "slowd",
        &p.path,
        &fixture("slowd"),
        &args(&["--port", &port.to_string(), "--threads", "2"]),
    );
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to slowd");
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"PI").unwrap();
    assert!(wait_until(Duration::from_secs(5), || threads(&inst.status()).iter().any(|(_, t)| t["call"] == "read")));
    let out = inst.quiesce(300);
    assert_eq!(out.code(), 1, "a worker mid-request cannot park: {out}");
    assert!(out.stderr.contains("read") && out.stderr.contains("not a quiescent point"), "{out}");
    slow.write_all(b"NG\n").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(&slow).read_line(&mut reply).unwrap();
    assert_eq!(reply, "PONG\n");
    quiesce_parked(&inst, 1, 3);
}

#[test]
fn a_failing_workload_is_reported_and_the_server_stopped() {
    let mcr = Mcr::new("prof-fail");
    let port = free_port();
    let out = mcr.run(&[
        "profile".as_ref(),
        "--out".as_ref(),
        mcr.tmp.join("p.json").as_os_str(),
        "--workload".as_ref(),
        "exit 3".as_ref(),
        "--".as_ref(),
        fixture("kvd").as_os_str(),
        "--port".as_ref(),
        port.to_string().as_ref(),
    ]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("the workload failed"), "{out}");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.instance_files());
    assert!(wait_until(Duration::from_secs(5), || port_free(port)), "the server is stopped");
}

/// `mcr profile` of a server that fails to start shows the server's lines of this run,
/// not those an earlier run of the same name left in the log (kept across runs).
#[test]
fn a_failed_profile_shows_only_its_own_log_lines() {
    let mcr = Mcr::new("prof-own-lines");
    let kvd = fixture("kvd");
    let profile = |args: &[&str]| {
        let mut argv: Vec<OsString> =
            vec!["profile".into(), "--out".into(), mcr.tmp.join("p.json").into(), "--duration".into(), "1".into()];
        argv.push("--".into());
        argv.push(kvd.clone().into());
        argv.extend(args.iter().map(OsString::from));
        mcr.run(&argv)
    };
    // First run: kvd prints its usage and exits.
    let out = profile(&["--no-such-option"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("before completing startup") && out.stderr.contains("usage"), "{out}");
    // Second run of the same name: its port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().unwrap().port();
    let out = profile(&["--port", &port.to_string()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("Address already in use"), "{out}");
    assert!(!out.stderr.contains("usage"), "the first run's lines are shown again: {out}");
    assert!(mcr.instance_files().is_empty(), "{:?}", mcr.instance_files());
}

/// Apache httpd (event MPM): its listener thread and its workers are made by the same
/// call of libapr's `apr_thread_create` (through httpd's `ap_thread_create`) from
/// `start_threads`, once directly (the workers) and once through
/// `create_listener_thread`, which gcc inlines into it. By symbol the two creation stacks
/// are the same, and the listener and 50 workers made one class whose quiescent point was
/// the workers' wait: the listener's `epoll_wait` was left out of the profile and it could
/// never park. Named from DWARF's inline information, the listener is a class of its own
/// with its own quiescent point.
#[test]
fn httpd_profile_tells_the_listener_from_the_workers_through_inlined_callers() {
    let test = "httpd_profile_tells_the_listener_from_the_workers_through_inlined_callers";
    let httpd = built_file("MCR_HTTPD", "scripts/httpd/build.sh", test);
    let mcr = Mcr::new("t-prof-httpd");
    let port = free_port();
    let dir = mcr.tmp.join("httpd");
    let conf = httpd_conf(&dir, port, "<html>profiled</html>\n");
    let p = profile(&mcr, "httpd.sh", port, &httpd, &["-f".into(), conf.into(), "-DFOREGROUND".into()]);
    // Its wait is inside libapr (built without frame pointers: the frames above it are not
    // named), the call is what tells it.
    assert_eq!(qp_of(&p, "create_listener_thread")["call"], "epoll_wait", "the listener's wait:\n{}", p.report);
    assert_qp(&p, "(pthread_create < start_threads", "pthread_cond_wait", &["ap_queue_pop_something"]);
    let classes = p.profile["thread_classes"].as_array().expect("thread_classes");
    let listeners =
        classes.iter().filter(|c| c["label"].as_str().is_some_and(|l| l.contains("create_listener_thread")));
    assert_eq!(listeners.count(), 1, "one listener class:\n{}", p.report);

    // Run with the profile, httpd (a binary under /root, which its children, `nobody`,
    // cannot read: their runtime loads its symbols before setuid) completes startup and
    // every thread of its master and two children parks at a quiescent point.
    let port = free_port();
    let conf = httpd_conf(&mcr.tmp.join("second"), port, "<html>profiled</html>\n");
    let inst = run_profiled(&mcr, "httpd", &p.path, &httpd, &["-f".into(), conf.into(), "-DFOREGROUND".into()]);
    let threads = threads(&inst.status()).len();
    assert!(threads >= 50, "httpd runs {threads} threads");
    quiesce_parked(&inst, 3, threads);
    assert_eq!(http_get(port, "/index.html", Duration::from_secs(5)).map(|r| r.0).ok(), Some(200));
}

/// vsftpd 3.0.2 (`isolate=NO`, `scripts/workloads/vsftpd.sh`): its sessions' processes
/// `chroot` (the privileged parent to `secure_chroot_dir`, the logged-in child to the FTP
/// root), where their runtime can open no symbol table; they are named all the same, from
/// the tables their parent loaded before it forked them (a session's classes were named by
/// address, one set per session, while a process replaced its module map with the empty
/// one it read in the chroot). One class per kind: SL 1 (the pre-login child), LL 3 (the
/// listener; per session the privileged parent and the logged-in child), QP 3, Per 1,
/// Vol 2; and vsftpd run with the profile quiesces with a logged-in session open.
#[test]
fn vsftpd_profile_names_its_chrooted_sessions_and_the_profiled_server_quiesces_with_one_open() {
    let test = "vsftpd_profile_names_its_chrooted_sessions_and_the_profiled_server_quiesces_with_one_open";
    let vsftpd = built_file("MCR_VSFTPD", "scripts/vsftpd/build.sh", test);
    let mcr = Mcr::new("prof-vsftpd");
    let conf = |label: &str, port: u16| -> OsString {
        use std::os::unix::fs::PermissionsExt;
        let dir = mcr.tmp.join(label);
        let (root, empty) = (dir.join("ftp"), dir.join("empty"));
        for (d, mode) in [(&dir, 0o755), (&root, 0o755), (&empty, 0o755)] {
            std::fs::create_dir_all(d).expect("create the FTP folders");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let conf = dir.join("vsftpd.conf");
        let text = format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\nanonymous_enable=YES\n\
             local_enable=NO\nftp_username=daemon\nanon_root={}\nsecure_chroot_dir={}\nisolate=NO\n\
             isolate_network=NO\nseccomp_sandbox=NO\nxferlog_enable=NO\nsyslog_enable=NO\n",
            root.display(),
            empty.display()
        );
        std::fs::write(&conf, text).expect("write vsftpd.conf");
        conf.into()
    };
    let port = free_port();
    let p = profile(&mcr, "vsftpd.sh", port, &vsftpd, &[conf("first", port)]);
    assert_eq!(table(&p), vec![1, 3, 3, 1, 2], "{}", p.report);
    assert_qp(&p, "main thread of vsftpd", "accept", &["vsf_sysutil_accept_timeout"]);
    let classes = p.profile["thread_classes"].as_array().expect("thread_classes");
    assert!(
        classes.iter().all(|c| !c["label"].as_str().unwrap_or_default().contains("< 0x")),
        "a class named by address:\n{}",
        p.report
    );

    let port = free_port();
    let inst = run_profiled(&mcr, "vsftpd", &p.path, &vsftpd, &[conf("second", port)]);
    let mut ftp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to vsftpd");
    ftp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut reader = std::io::BufReader::new(ftp.try_clone().expect("clone"));
    let mut expect = |code: &str| {
        let mut line = String::new();
        reader.read_line(&mut line).expect("an FTP reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
    };
    expect("220");
    ftp.write_all(b"USER anonymous\r\n").expect("USER");
    expect("331");
    ftp.write_all(b"PASS mcr@example.org\r\n").expect("PASS");
    expect("230");
    // The listener, and the open session's privileged parent and logged-in child.
    wait_for(Duration::from_secs(5), "the session's processes to wait", || {
        threads(&inst.status()).iter().filter(|(_, t)| t["state"] != "running").count() == 3
    });
    quiesce_parked(&inst, 3, 3);
    ftp.write_all(b"PWD\r\n").expect("PWD");
    expect("257");
}
