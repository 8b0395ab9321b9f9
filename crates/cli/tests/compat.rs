//! Compatibility suite (issue 14): under `mcr run` a real server behaves exactly as
//! without it. Each test starts one server twice, once on its own and once under
//! `mcr run --detach`, each time in a fresh scratch folder with the same config on a new
//! port, drives both with the same client script, and requires the two transcripts to be
//! identical (the one without mcr must succeed: otherwise the build or the harness is
//! broken, and the test says so).
//!
//! The servers are the project's cached builds, found through the variables
//! scripts/test.sh sets: `MCR_VSFTPD` (scripts/vsftpd/build.sh), `MCR_HTTPD`
//! (scripts/httpd/build.sh), `MCR_SSHD` (scripts/sshd/build.sh) and `MCR_NGINX`. A test
//! whose variable is not set fails and names the script that builds its server.
//!
//! The clients: FTP (anonymous login, PWD, LIST, RETR, STOR and the file read back, all
//! in passive mode) by a small client below; HTTP/1.1 (GET, POST, a 404, keep-alive over
//! one connection, then `Connection: close`) likewise; SSH by the system's `ssh` with a
//! key made for the test, in batch mode. Everything listens on and connects to
//! 127.0.0.1 only, and every wait is bounded.
//!
//! The cases that break under mcr today are `#[ignore]`d with the reason (issue 14):
//! `cargo test --release -p mcr-cli --test compat -- --include-ignored` shows them failing.

mod support;

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Longest a server may take to accept connections once started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one read or write of a client may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one whole client script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a server without mcr may take to exit on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes a client accepts in one reply or transfer (the files here are tiny).
const MAX_REPLY: usize = 1 << 20;

/// What a client script saw, one line a step; equal transcripts mean equal behaviour.
type Transcript = Vec<String>;

// ---------------------------------------------------------------------------------------
// The harness.

/// How to start one server in a scratch folder.
struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    port: u16,
    /// Where a server that daemonizes writes its main PID (the run without mcr signals
    /// that process to stop it); `None` for one that stays in the foreground.
    pid_file: Option<PathBuf>,
}

/// Writes a server's config into a scratch folder for a port.
type Setup<'a> = &'a dyn Fn(&Path, u16) -> Launch;
/// Drives a server (its scratch folder, its port), writing what it sees into the
/// transcript; an error ends the script.
type Client<'a> = &'a dyn Fn(&Path, u16, &mut Transcript) -> Result<(), String>;

/// Runs a client script: its transcript, ending in "FAILED: why" if the script failed.
fn transcript_of(client: Client, dir: &Path, port: u16) -> (Transcript, bool) {
    let mut t = Transcript::new();
    match client(dir, port, &mut t) {
        Ok(()) => (t, true),
        Err(e) => {
            t.push(format!("FAILED: {e}"));
            (t, false)
        }
    }
}

/// Runs `client` against the server `setup` describes, without mcr and under mcr, and
/// asserts both saw the same. `name` names the mcr instance.
fn same_with_and_without_mcr(test: &str, name: &str, setup: Setup, client: Client) {
    let mcr = Mcr::new(test);
    let (plain, ok) = run_without_mcr(&mcr, setup, client);
    assert!(
        ok,
        "{test}: the client script fails WITHOUT mcr, so the server build or this harness is broken:\n{}",
        plain.join("\n")
    );

    let dir = scratch(&mcr, "under-mcr");
    let launch = setup(&dir, free_port());
    let inst = mcr.start(name, &launch.program, &launch.args);
    let under = if wait_until(STARTUP_TIMEOUT, || port_open(launch.port)) {
        transcript_of(client, &dir, launch.port).0
    } else {
        vec![format!("FAILED: nothing accepts connections on 127.0.0.1:{} after {STARTUP_TIMEOUT:?}", launch.port)]
    };
    if under != plain {
        let log = inst.log();
        drop(inst);
        panic!(
            "{test}: under mcr the client saw something else than without it\n--- without mcr ---\n{}\n--- under \
             mcr ---\n{}\n--- instance log ---\n{log}",
            plain.join("\n"),
            under.join("\n")
        );
    }
}

/// A fresh folder under the test's scratch space, 0755 (the servers read it after
/// dropping privileges).
fn scratch(mcr: &Mcr, label: &str) -> PathBuf {
    let dir = mcr.tmp.join(label);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    set_mode(&dir, 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Starts the server on its own, runs the client, stops the server (SIGTERM, bounded).
fn run_without_mcr(mcr: &Mcr, setup: Setup, client: Client) -> (Transcript, bool) {
    let dir = scratch(mcr, "without-mcr");
    let launch = setup(&dir, free_port());
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args);
    let mut server = Spawned::spawn(cmd, &mcr.tmp.path);
    let started = wait_until(STARTUP_TIMEOUT, || {
        port_open(launch.port) || (launch.pid_file.is_none() && server.try_wait().is_some())
    });
    let result = if started && port_open(launch.port) {
        transcript_of(client, &dir, launch.port)
    } else {
        let why = format!(
            "{} did not accept connections on 127.0.0.1:{} within {STARTUP_TIMEOUT:?}\n--- stdout ---\n{}--- stderr \
             ---\n{}",
            launch.program.display(),
            launch.port,
            server.stdout_text(),
            server.stderr_text()
        );
        (vec![why], false)
    };
    let main_pid = match &launch.pid_file {
        Some(f) => fs::read_to_string(f).ok().and_then(|s| s.trim().parse::<i32>().ok()),
        None => Some(server.pid()),
    };
    if let Some(pid) = main_pid.filter(|&p| alive(p)) {
        kill(pid, libc::SIGTERM);
        // A foreground server is our child (reaped here); a daemon is init's.
        let _ = server.wait_timeout(STOP_TIMEOUT);
        wait_for(STOP_TIMEOUT, "the server without mcr to exit on SIGTERM", || !alive(pid));
    }
    wait_for(STOP_TIMEOUT, "the server's port to be free again", || port_free(launch.port));
    result
}

/// A read deadline for a client script: each read may block until the earlier of
/// [`IO_TIMEOUT`] from now and the script's end.
struct Deadline(Instant);

impl Deadline {
    fn new() -> Self {
        Self(Instant::now() + SCRIPT_TIMEOUT)
    }

    fn arm(&self, s: &TcpStream) -> Result<(), String> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the client script took longer than {SCRIPT_TIMEOUT:?}"));
        }
        s.set_read_timeout(Some(left.min(IO_TIMEOUT))).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(left.min(IO_TIMEOUT))).map_err(|e| e.to_string())
    }
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Everything until EOF (bounded by the deadline and [`MAX_REPLY`]).
fn read_to_eof(s: &mut TcpStream, deadline: &Deadline) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        deadline.arm(s)?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) if out.len() + n <= MAX_REPLY => out.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(format!("more than {MAX_REPLY} bytes")),
            Err(e) => return Err(format!("read after {} bytes: {e}", out.len())),
        }
    }
}

// ---------------------------------------------------------------------------------------
// FTP: vsftpd.

/// The FTP client: the control connection, read line by line.
struct Ftp {
    ctrl: TcpStream,
    reader: BufReader<TcpStream>,
    deadline: Deadline,
}

impl Ftp {
    fn connect(port: u16) -> Result<Self, String> {
        let ctrl = connect(port)?;
        let reader = BufReader::new(ctrl.try_clone().map_err(|e| e.to_string())?);
        Ok(Self { ctrl, reader, deadline: Deadline::new() })
    }

    fn line(&mut self) -> Result<String, String> {
        self.deadline.arm(&self.ctrl)?;
        let mut line = String::new();
        match (&mut self.reader).take(MAX_REPLY as u64).read_line(&mut line) {
            Ok(0) => Err("the server closed the control connection".into()),
            Ok(_) if !line.ends_with('\n') => Err(format!("the server closed the control connection after {line:?}")),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(format!("reading a reply: {e}")),
        }
    }

    /// One reply (all lines of a multi-line one, joined by " | ").
    fn reply(&mut self) -> Result<(u16, String), String> {
        let first = self.line()?;
        let code: u16 = first.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not a reply: {first:?}"))?;
        let mut text = first.clone();
        if first.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            loop {
                let l = self.line()?;
                text.push_str(" | ");
                text.push_str(&l);
                if l.starts_with(&end) {
                    break;
                }
            }
        }
        Ok((code, text))
    }

    fn send(&mut self, command: &str) -> Result<(), String> {
        self.deadline.arm(&self.ctrl)?;
        self.ctrl.write_all(format!("{command}\r\n").as_bytes()).map_err(|e| format!("sending {command}: {e}"))
    }

    /// Sends a command and records "COMMAND -> reply".
    fn step(&mut self, t: &mut Transcript, command: &str) -> Result<u16, String> {
        self.send(command)?;
        let (code, text) = self.reply()?;
        t.push(format!("{command} -> {text}"));
        Ok(code)
    }

    /// PASV, and the data connection to the address it names (only loopback accepted).
    /// The reply's text holds a port that differs between runs: only its code is recorded.
    fn passive(&mut self, t: &mut Transcript) -> Result<TcpStream, String> {
        self.send("PASV")?;
        let (code, text) = self.reply()?;
        t.push(format!("PASV -> {code}"));
        if code != 227 {
            return Err(format!("PASV -> {text}"));
        }
        let inner = text.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(a, _)| a);
        let n: Vec<u16> =
            inner.map(|a| a.split(',').filter_map(|x| x.trim().parse().ok()).collect()).unwrap_or_default();
        if n.len() != 6 || n[..4] != [127, 0, 0, 1] || n[4] > 255 || n[5] > 255 {
            return Err(format!("PASV reply names no loopback address: {text}"));
        }
        connect(n[4] * 256 + n[5])
    }

    /// A transfer from the server (LIST, RETR): its data and the two replies recorded.
    fn download(&mut self, t: &mut Transcript, command: &str) -> Result<Vec<u8>, String> {
        let mut data = self.passive(t)?;
        if self.step(t, command)? != 150 {
            return Err(format!("{command} did not open the data connection"));
        }
        let bytes = read_to_eof(&mut data, &self.deadline).map_err(|e| format!("{command} data: {e}"))?;
        let (_, text) = self.reply()?;
        t.push(format!("{command} (end) -> {text}"));
        Ok(bytes)
    }

    /// A transfer to the server (STOR).
    fn upload(&mut self, t: &mut Transcript, command: &str, bytes: &[u8]) -> Result<(), String> {
        let mut data = self.passive(t)?;
        if self.step(t, command)? != 150 {
            return Err(format!("{command} did not open the data connection"));
        }
        self.deadline.arm(&data)?;
        data.write_all(bytes).map_err(|e| format!("{command} data: {e}"))?;
        data.shutdown(Shutdown::Both).map_err(|e| e.to_string())?;
        drop(data);
        let (_, text) = self.reply()?;
        t.push(format!("{command} (end) -> {text}"));
        Ok(())
    }
}

/// A LIST line without what differs between runs (link count, owner, group, date): the
/// mode, the size and the name.
fn list_entry(line: &str) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        [mode, _links, _owner, _group, size, _month, _day, _time, name @ ..] => {
            format!("{mode} {size} {}", name.join(" "))
        }
        _ => format!("unparsed: {line}"),
    }
}

const FTP_FILE: &str = "Hello over FTP.\n";
const FTP_UPLOAD: &str = "Uploaded over FTP, then read back.\n";

/// vsftpd's config for anonymous FTP in `dir`: anon_root `dir/ftp` (a file to get, a
/// world-writable `upload/`), its own empty secure_chroot_dir, its sandbox off (vsftpd
/// 3.0.2's seccomp filter rejects system calls of Debian 12's libc, with or without mcr).
fn vsftpd_setup(vsftpd: &Path, isolate: bool, dir: &Path, port: u16) -> Launch {
    vsftpd_release_setup(vsftpd, isolate, dir, port, "3.0.2")
}

/// [`vsftpd_setup`] for a `release` of vsftpd: its configuration file is the release's own
/// (`vsftpd-RELEASE.conf`: `seccomp_sandbox` exists from 3.0.0 on, and an older release
/// refuses a setting it does not know); the FTP root is shared.
fn vsftpd_release_setup(vsftpd: &Path, isolate: bool, dir: &Path, port: u16, release: &str) -> Launch {
    let root = dir.join("ftp");
    let empty = dir.join("empty");
    fs::create_dir_all(root.join("upload")).expect("create the FTP root");
    fs::create_dir_all(&empty).expect("create the secure chroot dir");
    set_mode(&root, 0o755);
    set_mode(&empty, 0o755);
    set_mode(&root.join("upload"), 0o777);
    write_file(&root.join("hello.txt"), FTP_FILE);
    let yes_no = if isolate { "YES" } else { "NO" };
    // ftp_username: anonymous sessions run as a user whose home exists (vsftpd changes
    // into it first); "daemon" (/usr/sbin) is in every Debian's base-passwd, unlike "ftp".
    let conf = dir.join(if release == "3.0.2" { "vsftpd.conf".into() } else { format!("vsftpd-{release}.conf") });
    let seccomp = if release.starts_with("2.") { "" } else { "seccomp_sandbox=NO\n" };
    write_file(
        &conf,
        &format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\nanonymous_enable=YES\n\
             local_enable=NO\nftp_username=daemon\nanon_root={root}\nanon_upload_enable=YES\nwrite_enable=YES\n\
             anon_umask=022\nsecure_chroot_dir={empty}\nisolate={yes_no}\nisolate_network={yes_no}\n\
             {seccomp}pasv_enable=YES\nport_enable=NO\nxferlog_enable=NO\nsyslog_enable=NO\n\
             vsftpd_log_file={dir}/vsftpd.log\n",
            root = root.display(),
            empty = empty.display(),
            dir = dir.display()
        ),
    );
    Launch { program: vsftpd.to_path_buf(), args: vec![conf.into()], port, pid_file: None }
}

/// Anonymous login, PWD, LIST, RETR, STOR into upload/, SIZE and RETR of what was stored.
fn ftp_script(_dir: &Path, port: u16, t: &mut Transcript) -> Result<(), String> {
    let mut ftp = ftp_login(port, t)?;
    ftp.step(t, "TYPE I")?;
    ftp.step(t, "PWD")?;
    let list = ftp.download(t, "LIST")?;
    let mut entries: Vec<String> = String::from_utf8_lossy(&list).lines().map(list_entry).collect();
    entries.sort();
    t.push(format!("LIST data: {}", entries.join("; ")));
    let got = ftp.download(t, "RETR hello.txt")?;
    t.push(format!("RETR data: {:?}", String::from_utf8_lossy(&got)));
    ftp.step(t, "CWD upload")?;
    ftp.upload(t, "STOR stored.txt", FTP_UPLOAD.as_bytes())?;
    ftp.step(t, "SIZE stored.txt")?;
    let back = ftp.download(t, "RETR stored.txt")?;
    t.push(format!("RETR stored data: {:?}", String::from_utf8_lossy(&back)));
    ftp.step(t, "QUIT")?;
    Ok(())
}

fn vsftpd_case(test: &str, isolate: bool) {
    let vsftpd = built_file("MCR_VSFTPD", "scripts/vsftpd/build.sh", test);
    same_with_and_without_mcr(
        test,
        "vsftpd",
        &|dir: &Path, port: u16| vsftpd_setup(&vsftpd, isolate, dir, port),
        &ftp_script,
    );
}

#[test]
fn vsftpd_isolate_no_serves_ftp_as_without_mcr() {
    vsftpd_case("vsftpd_isolate_no_serves_ftp_as_without_mcr", false);
}

#[test]
fn vsftpd_isolate_yes_serves_ftp_as_without_mcr() {
    vsftpd_case("vsftpd_isolate_yes_serves_ftp_as_without_mcr", true);
}

/// vsftpd with `isolate=YES` under mcr as instance "vsftpd", accepting connections; its
/// scratch folder, launch and the `mcr update` arguments that update it to the same build.
fn vsftpd_under_mcr<'m>(mcr: &'m Mcr, test: &str) -> (Instance<'m>, PathBuf, Launch, Vec<std::ffi::OsString>) {
    let vsftpd = built_file("MCR_VSFTPD", "scripts/vsftpd/build.sh", test);
    let dir = scratch(mcr, "under-mcr");
    let launch = vsftpd_setup(&vsftpd, true, &dir, free_port());
    let inst = mcr.start("vsftpd", &launch.program, &launch.args);
    assert!(wait_until(STARTUP_TIMEOUT, || port_open(launch.port)), "vsftpd does not accept connections");
    let mut update = vec!["update".into(), "vsftpd".into(), launch.program.clone().into_os_string()];
    update.extend(launch.args.iter().cloned());
    (inst, dir, launch, update)
}

/// An anonymous FTP login on `port`.
fn ftp_login(port: u16, t: &mut Transcript) -> Result<Ftp, String> {
    let mut ftp = Ftp::connect(port)?;
    let (_, banner) = ftp.reply()?;
    t.push(format!("connect -> {banner}"));
    ftp.step(t, "USER anonymous")?;
    if ftp.step(t, "PASS mcr@example.org")? != 230 {
        return Err(format!("not logged in: {t:?}"));
    }
    Ok(ftp)
}

/// Fifty committed live updates of vsftpd (isolate=YES, its default), each followed by a
/// login, a download and an upload: the instance stays listed and serving, and every
/// upload is there at the end.
#[test]
fn vsftpd_fifty_updates_each_followed_by_a_login_and_transfers() {
    const UPDATES: usize = 50;
    let mcr = Mcr::new("vsftpd-50");
    let (inst, dir, launch, update) =
        vsftpd_under_mcr(&mcr, "vsftpd_fifty_updates_each_followed_by_a_login_and_transfers");
    let session = |i: usize| vsftpd_session_after_update(launch.port, i);
    for i in 0..UPDATES {
        let out = mcr.run(&update);
        assert_eq!(out.code(), 0, "update {i} did not commit: {out}\nlog:\n{}", inst.log());
        session(i).unwrap_or_else(|e| panic!("FTP after update {i}: {e}\nlog:\n{}", inst.log()));
    }
    let list = mcr.run(&["list"]);
    assert!(list.stdout.contains("vsftpd"), "not listed after {UPDATES} updates: {list}");
    for i in 0..UPDATES {
        let stored = dir.join("ftp/upload").join(format!("after-update-{i}.txt"));
        assert_eq!(fs::read_to_string(&stored).ok().as_deref(), Some(format!("upload {i}\n").as_str()));
    }
    drop(inst);
}

/// An anonymous session after an update: a login, a download and an upload (named after
/// `i`), checked.
fn vsftpd_session_after_update(port: u16, i: usize) -> Result<Transcript, String> {
    let mut t: Transcript = Vec::new();
    let mut ftp = ftp_login(port, &mut t)?;
    ftp.step(&mut t, "TYPE I")?;
    let got = ftp.download(&mut t, "RETR hello.txt")?;
    if got != FTP_FILE.as_bytes() {
        return Err(format!("RETR gave {got:?}"));
    }
    ftp.upload(&mut t, &format!("STOR upload/after-update-{i}.txt"), format!("upload {i}\n").as_bytes())?;
    ftp.step(&mut t, "QUIT")?;
    Ok(t)
}

/// The cached build of vsftpd `release`, beside `$MCR_VSFTPD`'s (scripts/vsftpd/build.sh
/// --release R puts it there; scripts/test.sh builds the ones the suite uses).
fn vsftpd_release(latest: &Path, release: &str, test: &str) -> PathBuf {
    let built = latest.parent().and_then(Path::parent).map(|d| d.with_file_name(release).join("sbin/vsftpd"));
    built.filter(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{test} needs vsftpd {release} beside {}: run scripts/vsftpd/build.sh --release {release}",
            latest.display()
        )
    })
}

/// vsftpd live-updated with its state (no --fresh-state) through its upstream releases:
/// the series' first update, the update into 3.0.0 (it turned a static `char` array that
/// holds 0xff into `unsigned char`: the transfer refused "-1 does not fit" until character
/// types kept their byte), its last update, and the jumps between them. After each, a
/// login, a download and an upload work, and every upload is still there at the end.
#[test]
fn vsftpd_updates_with_its_state_through_its_releases() {
    let test = "vsftpd_updates_with_its_state_through_its_releases";
    let latest = built_file("MCR_VSFTPD", "scripts/vsftpd/build.sh", test);
    let chain = ["2.2.0", "2.2.1", "2.3.5", "3.0.0", "3.0.1", "3.0.2"];
    let mcr = Mcr::new("vsftpd-rel");
    let dir = scratch(&mcr, "releases");
    let port = free_port();
    let launches: Vec<Launch> =
        chain.iter().map(|r| vsftpd_release_setup(&vsftpd_release(&latest, r, test), false, &dir, port, r)).collect();
    let inst = mcr.start("vsftpd", &launches[0].program, &launches[0].args);
    assert!(wait_until(STARTUP_TIMEOUT, || port_open(port)), "vsftpd {} does not accept connections", chain[0]);
    vsftpd_session_after_update(port, 0).unwrap_or_else(|e| panic!("FTP on {}: {e}\nlog:\n{}", chain[0], inst.log()));
    for (i, launch) in launches.iter().enumerate().skip(1) {
        let mut update: Vec<std::ffi::OsString> = vec!["update".into(), "vsftpd".into(), launch.program.clone().into()];
        update.extend(launch.args.iter().cloned());
        let out = mcr.run(&update);
        let step = format!("{} -> {}", chain[i - 1], chain[i]);
        assert_eq!(out.code(), 0, "{step} did not commit: {out}\nlog:\n{}", inst.log());
        assert!(out.stdout.contains("globals copied"), "{step} moved no state: {out}");
        vsftpd_session_after_update(port, i).unwrap_or_else(|e| panic!("FTP after {step}: {e}\nlog:\n{}", inst.log()));
    }
    for i in 0..chain.len() {
        let stored = dir.join("ftp/upload").join(format!("after-update-{i}.txt"));
        assert_eq!(fs::read_to_string(&stored).ok().as_deref(), Some(format!("upload {i}\n").as_str()));
    }
    drop(inst);
}

/// vsftpd's isolated session lives in PID and network namespaces of its own, where mcr's
/// runtime cannot reach the supervisor: an update names it and refuses before it pauses
/// anything, and the session goes on.
#[test]
fn an_update_names_vsftpds_isolated_session_and_refuses() {
    let mcr = Mcr::new("vsftpd-isolated");
    let (inst, _dir, launch, update) = vsftpd_under_mcr(&mcr, "an_update_names_vsftpds_isolated_session_and_refuses");
    let mut t: Transcript = Vec::new();
    let mut ftp = ftp_login(launch.port, &mut t).expect("FTP login");

    let out = mcr.run(&update);
    assert_ne!(out.code(), 0, "the update went ahead with an isolated session open: {out}");
    assert!(out.stderr.contains("not registered with mcr") && out.stderr.contains("nothing was changed"), "{out}");
    assert!(!out.stderr.contains("rolled back"), "refused before the pause, not rolled back: {out}");
    assert_eq!(ftp.step(&mut t, "PWD").expect("PWD after the refused update"), 257, "{t:?}");
    drop(inst);
}

// ---------------------------------------------------------------------------------------
// HTTP: Apache httpd and nginx.

/// One HTTP/1.1 response, read from a kept-alive connection.
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// What the transcript keeps: the status line, the content type, whether the server
    /// keeps the connection, and the body (not Date, ETag, Last-Modified: they differ
    /// between runs).
    fn summary(&self) -> String {
        format!(
            "{} | type {} | connection {} | body {:?}",
            self.status,
            self.header("Content-Type").unwrap_or("-"),
            self.header("Connection").unwrap_or("-"),
            String::from_utf8_lossy(&self.body)
        )
    }
}

struct Http {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    deadline: Deadline,
}

impl Http {
    fn connect(port: u16) -> Result<Self, String> {
        let stream = connect(port)?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Self { reader, stream, deadline: Deadline::new() })
    }

    fn line(&mut self) -> Result<String, String> {
        self.deadline.arm(&self.stream)?;
        let mut line = String::new();
        match (&mut self.reader).take(MAX_REPLY as u64).read_line(&mut line) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => Err(format!("reading the response: {e}")),
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        if n > MAX_REPLY {
            return Err(format!("a body of {n} bytes"));
        }
        self.deadline.arm(&self.stream)?;
        let mut buf = vec![0u8; n];
        self.reader.read_exact(&mut buf).map_err(|e| format!("reading a body of {n} bytes: {e}"))?;
        Ok(buf)
    }

    fn request(&mut self, method: &str, path: &str, body: &str, close: bool) -> Result<Response, String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if close {
            req.push_str("Connection: close\r\n");
        }
        if method == "POST" {
            req.push_str(&format!("Content-Type: text/plain\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.deadline.arm(&self.stream)?;
        self.stream.write_all(req.as_bytes()).map_err(|e| format!("sending {method} {path}: {e}"))?;
        self.response(method).map_err(|e| format!("{method} {path}: {e}"))
    }

    fn response(&mut self, method: &str) -> Result<Response, String> {
        let status = self.line()?;
        if !status.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP response: {status:?}"));
        }
        let mut headers = Vec::new();
        for _ in 0..100 {
            let l = self.line()?;
            if l.is_empty() {
                let mut r = Response { status, headers, body: Vec::new() };
                r.body = self.body(&r, method)?;
                return Ok(r);
            }
            let (k, v) = l.split_once(':').ok_or_else(|| format!("bad header {l:?}"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Err("more than 100 headers".into())
    }

    fn body(&mut self, r: &Response, method: &str) -> Result<Vec<u8>, String> {
        if method == "HEAD" || r.status.contains(" 204 ") || r.status.contains(" 304 ") {
            return Ok(Vec::new());
        }
        if r.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            for _ in 0..10_000 {
                let size = self.line()?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                if size == 0 {
                    // Trailers, until the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(body);
                }
                body.extend(self.exact(size)?);
                self.exact(2)?;
            }
            return Err("more than 10000 chunks".into());
        }
        match r.header("Content-Length") {
            Some(n) => self.exact(n.parse().map_err(|_| format!("bad Content-Length {n:?}"))?),
            None => read_to_eof(&mut self.stream, &self.deadline),
        }
    }

    /// Whether the server closed the connection (EOF within the deadline).
    fn closed(&mut self) -> Result<bool, String> {
        self.deadline.arm(&self.stream)?;
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(format!("waiting for the server to close: {e}")),
        }
    }
}

/// On one kept-alive connection: GET `get`, POST to `post`, GET a missing page, then GET
/// `get` with `Connection: close` and see the server close; then one more connection.
fn http_script(port: u16, get: &str, post: &str, t: &mut Transcript) -> Result<(), String> {
    let mut c = Http::connect(port)?;
    t.push(format!("GET {get} -> {}", c.request("GET", get, "", false)?.summary()));
    let body = "posted=over&the=same&connection=1";
    t.push(format!("POST {post} -> {}", c.request("POST", post, body, false)?.summary()));
    t.push(format!("GET /missing -> {}", c.request("GET", "/missing", "", false)?.summary()));
    t.push(format!("GET {get} (close) -> {}", c.request("GET", get, "", true)?.summary()));
    t.push(format!("closed by the server: {}", c.closed()?));
    let mut again = Http::connect(port)?;
    t.push(format!("GET {get} (new connection) -> {}", again.request("GET", get, "", true)?.summary()));
    Ok(())
}

const HTTPD_INDEX: &str = "<html><body>Hello from httpd.</body></html>\n";

/// httpd's config in `dir` ([`httpd_conf`]).
fn httpd_setup(httpd: &Path, dir: &Path, port: u16) -> Launch {
    let conf = httpd_conf(dir, port, HTTPD_INDEX);
    Launch {
        program: httpd.to_path_buf(),
        args: vec!["-f".into(), conf.into(), "-DFOREGROUND".into()],
        port,
        pid_file: None,
    }
}

#[test]
fn httpd_serves_http_as_without_mcr() {
    let test = "httpd_serves_http_as_without_mcr";
    let httpd = built_file("MCR_HTTPD", "scripts/httpd/build.sh", test);
    same_with_and_without_mcr(
        test,
        "httpd",
        &|dir: &Path, port: u16| httpd_setup(&httpd, dir, port),
        &|_dir: &Path, port: u16, t: &mut Transcript| http_script(port, "/index.html", "/echo", t),
    );
}

#[test]
fn nginx_serves_http_as_without_mcr() {
    let test = "nginx_serves_http_as_without_mcr";
    let nginx = nginx_bin(test);
    same_with_and_without_mcr(
        test,
        "nginx",
        &|dir: &Path, port: u16| {
            let (prefix, conf) = nginx_config(dir, port);
            Launch {
                program: nginx.clone(),
                args: vec!["-p".into(), prefix.clone().into(), "-c".into(), conf.into()],
                port,
                pid_file: Some(prefix.join("logs/nginx.pid")),
            }
        },
        // scripts/nginx/conf.sh answers any method at /status.
        &|_dir: &Path, port: u16, t: &mut Transcript| http_script(port, "/index.html", "/status", t),
    );
}

// ---------------------------------------------------------------------------------------
// SSH: OpenSSH sshd.

/// `ssh-keygen` of an ed25519 key without passphrase at `path` (and `path`.pub).
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "mcr-compat", "-f"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen (openssh-client): {e}"));
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// sshd's config in `dir`: its own host key, root's login by a key made here (its
/// authorized_keys file in `dir`, whose modes sshd then cannot check: StrictModes off),
/// no passwords, the privilege-separation sandbox as built (seccomp), and the client's
/// known_hosts for this port.
fn sshd_setup(sshd: &Path, dir: &Path, port: u16) -> Launch {
    keygen(&dir.join("host_key"));
    keygen(&dir.join("user_key"));
    write_file(&dir.join("authorized_keys"), &read_text(&dir.join("user_key.pub")));
    let host_pub = read_text(&dir.join("host_key.pub"));
    let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    write_file(&dir.join("known_hosts"), &format!("[127.0.0.1]:{port} {}\n", host_pub.join(" ")));
    let conf = dir.join("sshd_config");
    write_file(
        &conf,
        &format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UseDNS no\nLogLevel VERBOSE\n",
            dir = dir.display()
        ),
    );
    // -D: in the foreground; -e: its log on stderr. sshd re-executes itself per
    // connection, so it wants its absolute path.
    Launch {
        program: sshd.to_path_buf(),
        args: vec!["-D".into(), "-e".into(), "-f".into(), conf.into()],
        port,
        pid_file: None,
    }
}

/// `ssh root@127.0.0.1 COMMAND` with the test's key and known_hosts, nothing from the
/// environment (no config file, no agent, batch mode): its exit status, stdout and stderr
/// (the port, which differs between runs, replaced by "PORT").
fn ssh_script(dir: &Path, port: u16, t: &mut Transcript) -> Result<(), String> {
    let mut cmd = Command::new("ssh");
    cmd.env_remove("SSH_AUTH_SOCK")
        .args(["-F", "/dev/null", "-T", "-i"])
        .arg(dir.join("user_key"))
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", dir.join("known_hosts").display()))
        .args(["-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2", "-p"])
        .arg(port.to_string())
        .arg("root@127.0.0.1")
        .arg("echo logged in as $(id -un); printf 'over %s\\n' ssh; exit 3");
    let mut ssh = Spawned::spawn(cmd, dir);
    let out =
        ssh.wait_timeout(SCRIPT_TIMEOUT).ok_or_else(|| format!("ssh did not finish within {SCRIPT_TIMEOUT:?}"))?;
    let port = port.to_string();
    t.push(format!("exit status {:?}", out.status.code()));
    t.extend(out.stdout.lines().map(|l| format!("stdout: {l}")));
    t.extend(out.stderr.lines().map(|l| format!("stderr: {}", l.replace(&port, "PORT"))));
    Ok(())
}

/// sshd (its sandbox on) updated with its state across a real Debian update, back and
/// forth (9.2p1-2+deb12u7 <-> deb12u10, three updates): each commits, the listening socket
/// stays the same one, and a key login runs its command after each as before the first.
/// Until 2026-12-07 every such update rolled back (sshd copies its environment and its
/// arguments at startup: mcr's variables, and the program path, had other lengths in the
/// new version, so no library block of its startup could be placed), and an update from
/// a version that had inherited its listener lost it (sshd's `closefrom` closed it before
/// the replay handed it back); a connection's process, sshd executed again, also took the
/// update's replay log for its own.
#[test]
fn sshd_updates_with_its_state_across_a_debian_update_and_serves_a_login_after_each() {
    let test = "sshd_updates_with_its_state_across_a_debian_update_and_serves_a_login_after_each";
    let current = built_file("MCR_SSHD", "scripts/sshd/build.sh", test);
    let previous = built_file("MCR_SSHD_PREV", "scripts/sshd/build.sh --deb-version 1:9.2p1-2+deb12u7", test);
    // A short label: the instance's sockets live under it.
    let mcr = Mcr::new("sshd_state");
    let dir = scratch(&mcr, "sshd");
    let launch = sshd_setup(&previous, &dir, free_port());
    let inst = mcr.start("sshd", &launch.program, &launch.args);
    wait_for(STARTUP_TIMEOUT, "sshd's listener", || port_open(launch.port));
    let login = || {
        let mut t = Transcript::new();
        ssh_script(&dir, launch.port, &mut t).map(|()| t)
    };
    let before = login().unwrap_or_else(|e| panic!("a login before any update: {e}\n{}", inst.log()));
    assert!(before.contains(&"stdout: logged in as root".to_string()), "{before:?}");
    let listener = listening_socket_inode(launch.port).expect("sshd's listening socket");
    let args: Vec<String> = launch.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    for (round, build) in [&current, &previous, &current].into_iter().enumerate() {
        let (out, report) = update_json(&mcr, "sshd", &[], build, &args);
        assert!(out.success(), "update {} to {}: {out}\n{report:#}", round + 1, build.display());
        assert_eq!(report["transfer"]["processes"], 1, "update {}: the state moved", round + 1);
        assert_eq!(
            listening_socket_inode(launch.port),
            Some(listener),
            "update {}: the listener was replaced",
            round + 1
        );
        let after = login().unwrap_or_else(|e| panic!("update {}: {e}\n{}", round + 1, inst.log()));
        assert_eq!(after, before, "update {}: the login\n{}", round + 1, inst.log());
    }
}

#[test]
fn sshd_serves_a_login_and_a_command_as_without_mcr() {
    let test = "sshd_serves_a_login_and_a_command_as_without_mcr";
    let sshd = built_file("MCR_SSHD", "scripts/sshd/build.sh", test);
    same_with_and_without_mcr(test, "sshd", &|dir: &Path, port: u16| sshd_setup(&sshd, dir, port), &ssh_script);
}
