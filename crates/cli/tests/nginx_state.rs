//! nginx 1.22.1 updated with its state (issue 13) through its Debian patch series (issue
//! 15): requests in progress finish on the new version (a slow download, a slow upload),
//! keep-alive connections keep their request counts, `wrk` sees no failure across 20
//! updates, and a client session lives across the first, middle and last update of the
//! series (`scripts/nginx/series.sh` runs the whole series).
//!
//! Every server runs conf.sh's config plus [`EXTRA_LOCATIONS`]; every update is `mcr
//! update` with the state (no `--fresh-state`).

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;

/// What these tests add to conf.sh's server block: a location that stores what is PUT
/// to it (the dav module; a 4 KiB body buffer, so a large body goes to a temporary file
/// while it arrives) and one whose keep-alive connections end after `{KEEPALIVE}`
/// requests (a count nginx keeps in each connection, `c->requests`). Static files (the
/// large one) are served by conf.sh's `location /`, with sendfile.
const EXTRA_LOCATIONS: &str = "        location /upload/ {
            dav_methods PUT;
            client_body_buffer_size 4k;
            client_max_body_size 64m;
        }

        location /counted {
            keepalive_requests {KEEPALIVE};
            return 200 \"counted\\n\";
        }

";

/// The large static file: big enough that the kernel's socket buffers cannot hold what is
/// left of it when the update starts.
const BIG_FILE_LEN: usize = 50 << 20;
const BIG_FILE: &str = "/big.bin";

/// The body of the slow upload.
const UPLOAD_LEN: usize = 8 << 20;

/// Pace of the slow clients until the update ends: one small read or write, then a
/// pause (at most ~4 MB/s).
const SLOW_CHUNK: usize = 16 << 10;
const SLOW_PAUSE: Duration = Duration::from_millis(4);

/// Bound on any one transfer of these tests.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

/// Deterministic bytes (xorshift64), so a shifted or repeated chunk cannot compare equal.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Where two byte strings first differ, for a failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("they differ first at byte {i} (lengths {} and {})", a.len(), b.len()),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

/// One running nginx under mcr with the test config.
struct Nginx<'a> {
    inst: Instance<'a>,
    port: u16,
    prefix: PathBuf,
    args: Vec<String>,
    /// The content of [`BIG_FILE`].
    big: Vec<u8>,
}

impl<'a> Nginx<'a> {
    /// nginx `program` started under `mcr` with conf.sh's config plus [`EXTRA_LOCATIONS`]
    /// (`/counted` closing keep-alive connections after `keepalive_requests` requests).
    fn start(mcr: &'a Mcr, program: &Path, keepalive_requests: u32) -> Nginx<'a> {
        let port = free_port();
        let (prefix, conf) = nginx_config(&mcr.tmp.path, port);
        let text = std::fs::read_to_string(&conf).expect("read the nginx config");
        let anchor = "        location /status {";
        assert!(text.contains(anchor), "conf.sh's config has no {anchor:?}:\n{text}");
        let extra = EXTRA_LOCATIONS.replace("{KEEPALIVE}", &keepalive_requests.to_string());
        std::fs::write(&conf, text.replace(anchor, &format!("{extra}{anchor}"))).expect("write the nginx config");
        std::fs::create_dir_all(prefix.join("html/upload")).expect("mkdir html/upload");
        let big = pattern(BIG_FILE_LEN, 0x006e_6769_6e78);
        std::fs::write(prefix.join("html").join(&BIG_FILE[1..]), &big).expect("write the large file");
        let args = nginx_args(&prefix, &conf);
        let inst = mcr.start("nginx", program, &args);
        assert_eq!(http_get(port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".into()));
        Nginx { inst, port, prefix, args, big }
    }

    /// `mcr update` with the state to `program`; panics unless it committed. Returns the
    /// outcome (`mcr update --json`).
    fn update(&self, program: &Path) -> Value {
        let (out, outcome) = update_json(self.inst.mcr, &self.inst.name, &[], program, &self.args);
        assert_eq!(
            out.code(),
            0,
            "the update to {} did not commit: {out}\nlog:\n{}\nerror.log:\n{}",
            program.display(),
            self.inst.log(),
            self.error_log()
        );
        assert_eq!(outcome["committed"], Value::Bool(true), "{outcome:#}");
        let st = self.inst.status();
        assert_eq!(st["program"].as_str(), program.to_str(), "{st:#}");
        outcome
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// Panics when a worker died (nginx's master logs it and forks another, which serves
    /// with a fresh state: requests could go on succeeding).
    fn assert_no_worker_died(&self) {
        let log = self.error_log();
        let died: Vec<&str> = log.lines().filter(|l| l.contains("exited on signal")).collect();
        assert!(died.is_empty(), "a worker died:\n{}\nerror.log:\n{log}", died.join("\n"));
    }

    /// Resident memory of the server's processes together (kB).
    fn rss_kb(&self) -> u64 {
        host_pids_in_namespace_of(self.inst.supervisor_pid())
            .iter()
            .filter_map(|&p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }
}

/// The phases and what moved, in one line.
fn summary(outcome: &Value) -> String {
    let p = &outcome["phases"];
    format!(
        "total {:.1} ms, transfer {:.1} ms, {} connections and {} other descriptors moved, {} blocks pinned",
        p["total_ms"].as_f64().unwrap_or(f64::NAN),
        p["transfer_ms"].as_f64().unwrap_or(f64::NAN),
        outcome["transfer"]["connections"],
        outcome["transfer"]["descriptors"],
        outcome["transfer"]["pinned"]
    )
}

fn connections_moved(outcome: &Value) -> u64 {
    outcome["transfer"]["connections"].as_u64().unwrap_or_else(|| panic!("no transfer.connections: {outcome:#}"))
}

/// The largest send buffer TCP gives a socket that sets none (nginx sets none): with the
/// client's receive buffer, what the kernel can hold of a response its sender no longer
/// has to write.
fn tcp_wmem_max() -> u64 {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("read tcp_wmem");
    text.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("tcp_wmem: {text:?}"))
}

/// Sets a socket's receive buffer (which also stops the kernel from growing it) and
/// returns the size the kernel granted.
fn set_receive_buffer(s: &TcpStream, bytes: i32) -> u64 {
    let fd = s.as_raw_fd();
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt on a socket we own, with a c_int value of the size given.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes as *const i32 as *const libc::c_void, len)
    };
    assert_eq!(rc, 0, "setsockopt(SO_RCVBUF): {}", std::io::Error::last_os_error());
    let mut got: libc::c_int = 0;
    let mut got_len = len;
    // SAFETY: getsockopt into a c_int of the size given.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &mut got as *mut i32 as *mut libc::c_void, &mut got_len)
    };
    assert_eq!(rc, 0, "getsockopt(SO_RCVBUF): {}", std::io::Error::last_os_error());
    got as u64
}

/// An HTTP response's status, its `Content-Length` and whether it said `Connection: close`.
struct Head {
    status: u16,
    length: Option<usize>,
    closing: bool,
}

/// Reads a response's head from `s` byte by byte (nothing of the body is consumed).
fn read_head(s: &mut TcpStream) -> Result<Head, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err(format!("no end of the response head in {:?}", String::from_utf8_lossy(&head)));
        }
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("closed in the response head {:?}", String::from_utf8_lossy(&head))),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("response head: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let mut length = None;
    let mut closing = false;
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse().map_err(|_| format!("bad Content-Length {v:?}"))?);
        }
        if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
            closing = true;
        }
    }
    Ok(Head { status, length, closing })
}

/// A transfer in a thread of its own that goes slowly (one small read or write, then a
/// pause) until [`SlowTransfer::hurry`], then as fast as it can.
struct SlowTransfer<T> {
    /// Body bytes received (download) or sent (upload) so far.
    progress: Arc<AtomicU64>,
    hurry: Arc<AtomicBool>,
    thread: JoinHandle<Result<T, String>>,
}

impl<T> SlowTransfer<T> {
    fn progress(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `bytes` of the body went through.
    fn wait_progress(&self, bytes: u64, what: &str) {
        wait_for(Duration::from_secs(30), &format!("{bytes} bytes of the {what}"), || {
            self.progress() >= bytes || self.thread.is_finished()
        });
        assert!(!self.thread.is_finished(), "the {what} ended before the update: {} bytes", self.progress());
    }

    /// From now on as fast as it can; waits for the end.
    fn finish(self) -> Result<T, String> {
        self.hurry.store(true, Ordering::SeqCst);
        self.thread.join().expect("transfer thread panicked")
    }
}

/// What a download received.
struct Download {
    head: Head,
    body: Vec<u8>,
    /// The client's receive buffer, as the kernel granted it.
    receive_buffer: u64,
}

/// GET `path` with `Connection: close`, reading the body slowly: its bytes, and a clean
/// end (EOF, no reset, no timeout) once nginx has sent them.
fn slow_download(port: u16, path: &str) -> SlowTransfer<Download> {
    let progress = Arc::new(AtomicU64::new(0));
    let hurry = Arc::new(AtomicBool::new(false));
    let (p, h, path) = (progress.clone(), hurry.clone(), path.to_string());
    let thread = std::thread::spawn(move || -> Result<Download, String> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        // A small receive buffer keeps the kernel from holding much of what nginx has
        // yet to send: the response is really in progress in nginx during the update.
        let receive_buffer = set_receive_buffer(&s, 64 << 10);
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let head = read_head(&mut s)?;
        let mut body = Vec::with_capacity(head.length.unwrap_or(0));
        let mut chunk = vec![0u8; SLOW_CHUNK];
        loop {
            if t0.elapsed() > TRANSFER_DEADLINE {
                return Err(format!("the download took over {TRANSFER_DEADLINE:?} ({} bytes)", body.len()));
            }
            let n = s.read(&mut chunk).map_err(|e| format!("body after {} bytes: {e}", body.len()))?;
            if n == 0 {
                break; // EOF: nginx closed the connection after the response.
            }
            body.extend_from_slice(&chunk[..n]);
            p.store(body.len() as u64, Ordering::SeqCst);
            if !h.load(Ordering::SeqCst) {
                std::thread::sleep(SLOW_PAUSE);
            }
        }
        Ok(Download { head, body, receive_buffer })
    });
    SlowTransfer { progress, hurry, thread }
}

/// PUT `body` to `path` with `Connection: close`, writing it slowly; the response's head.
fn slow_upload(port: u16, path: &str, body: Arc<Vec<u8>>) -> SlowTransfer<Head> {
    let progress = Arc::new(AtomicU64::new(0));
    let hurry = Arc::new(AtomicBool::new(false));
    let (p, h, path) = (progress.clone(), hurry.clone(), path.to_string());
    let thread = std::thread::spawn(move || -> Result<Head, String> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(|e| format!("send the head: {e}"))?;
        for chunk in body.chunks(SLOW_CHUNK) {
            if t0.elapsed() > TRANSFER_DEADLINE {
                return Err(format!("the upload took over {TRANSFER_DEADLINE:?} ({} bytes)", p.load(Ordering::SeqCst)));
            }
            s.write_all(chunk).map_err(|e| format!("body after {} bytes: {e}", p.load(Ordering::SeqCst)))?;
            p.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            if !h.load(Ordering::SeqCst) {
                std::thread::sleep(SLOW_PAUSE);
            }
        }
        let head = read_head(&mut s)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).map_err(|e| format!("after the response head: {e}"))?;
        Ok(head)
    });
    SlowTransfer { progress, hurry, thread }
}

/// A slow download of [`BIG_FILE`] running across `update`: it must be mid-way when the
/// update commits, and complete, byte for byte, with a clean end, on the new version.
/// Returns the bytes the new version had to send at least.
fn download_across(ngx: &Nginx, update: impl FnOnce() -> Value) -> (Value, u64) {
    let download = slow_download(ngx.port, BIG_FILE);
    download.wait_progress(1 << 20, "download");
    let before = download.progress();
    let outcome = update();
    let at_commit = download.progress();
    let d = download.finish().unwrap_or_else(|e| panic!("the download across the update failed: {e}"));
    assert_eq!(d.head.status, 200, "download status");
    assert_eq!(d.head.length, Some(BIG_FILE_LEN), "download Content-Length");
    assert!(d.head.closing, "nginx did not answer Connection: close");
    assert!(
        d.body == ngx.big,
        "the file downloaded across the update is not the file: {}",
        first_difference(&d.body, &ngx.big)
    );
    // At most the sender's and the receiver's socket buffers were in flight when the old
    // version stopped: the rest was sent by the new version.
    let in_flight = tcp_wmem_max() + d.receive_buffer;
    let by_new = (BIG_FILE_LEN as u64).saturating_sub(at_commit + in_flight);
    eprintln!(
        "download: {before} bytes when the update started, {at_commit} when it committed; at least {by_new} sent by \
         the new version"
    );
    assert!(
        by_new > 0,
        "the download was not in progress in nginx when the update committed: {at_commit} of {BIG_FILE_LEN} bytes \
         received, {in_flight} may have been in the socket buffers"
    );
    ngx.assert_no_worker_died();
    (outcome, by_new)
}

/// A slow download of a 50 MB file continues on the next Debian patch: every byte
/// arrives, in order, and nginx ends the connection as it should (EOF after the
/// Content-Length bytes).
#[test]
fn nginx_slow_download_in_progress_completes_on_the_next_patch() {
    let test = "nginx_slow_download_in_progress_completes_on_the_next_patch";
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    let mcr = Mcr::new("ns-download");
    let ngx = Nginx::start(&mcr, &p1, 100);
    let (outcome, _) = download_across(&ngx, || ngx.update(&p2));
    eprintln!("p1 -> p2 with a download in progress: {}", summary(&outcome));
    assert!(connections_moved(&outcome) >= 1, "the download's connection did not move: {outcome:#}");
}

/// A slow upload (PUT, 8 MB, stored by the dav module through a temporary file) continues
/// on the next Debian patch: the answer is the one nginx gives without an update, and the
/// stored file is what was sent.
#[test]
fn nginx_slow_upload_in_progress_completes_on_the_next_patch() {
    let test = "nginx_slow_upload_in_progress_completes_on_the_next_patch";
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    let mcr = Mcr::new("ns-upload");
    let ngx = Nginx::start(&mcr, &p1, 100);
    let body = Arc::new(pattern(UPLOAD_LEN, 0x7570_6c6f_6164));
    let stored = |name: &str| std::fs::read(ngx.prefix.join("html/upload").join(name)).unwrap_or_default();

    // The reference: the same PUT without an update.
    let reference = slow_upload(ngx.port, "/upload/reference", body.clone()).finish().expect("the reference PUT");
    assert!((200..300).contains(&reference.status), "PUT without an update: {}", reference.status);
    assert!(stored("reference") == *body, "the reference PUT stored something else");

    let upload = slow_upload(ngx.port, "/upload/across", body.clone());
    upload.wait_progress(1 << 20, "upload");
    // nginx is reading the body: it spilled past the 4 KiB buffer into a temporary file.
    let temp_dir = ngx.prefix.join("tmp/client_body");
    wait_for(Duration::from_secs(10), "nginx to write the body to a temporary file", || {
        std::fs::read_dir(&temp_dir).is_ok_and(|d| d.count() > 0)
    });
    let before = upload.progress();
    let outcome = ngx.update(&p2);
    let at_commit = upload.progress();
    let head = upload.finish().unwrap_or_else(|e| panic!("the upload across the update failed: {e}"));
    eprintln!(
        "p1 -> p2 with an upload in progress: {}; {before} bytes sent when the update started, {at_commit} when it \
         committed, of {UPLOAD_LEN}",
        summary(&outcome)
    );
    // What was sent after the commit was read by the new version.
    assert!(at_commit < UPLOAD_LEN as u64, "the upload was complete before the update committed");
    assert_eq!(head.status, reference.status, "PUT across the update (left) and without (right)");
    let across = stored("across");
    assert!(
        across == *body,
        "the file PUT across the update is not what was sent: {}",
        first_difference(&across, &body)
    );
    assert!(connections_moved(&outcome) >= 1, "the upload's connection did not move: {outcome:#}");
    assert!(std::fs::read_dir(&temp_dir).is_ok_and(|d| d.count() == 0), "a temporary body file was left");
    ngx.assert_no_worker_died();
}

/// A process's private anonymous memory (`RssAnon`), in kB.
fn private_memory_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read a supervisor's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

/// With `keepalive_requests 5`, a connection that made 3 requests before the update is
/// closed by nginx after exactly 2 more: the count is in the connection's state (a
/// fresh-state update would start it again from 0).
#[test]
fn nginx_keepalive_connection_keeps_its_request_count_across_an_update() {
    let test = "nginx_keepalive_connection_keeps_its_request_count_across_an_update";
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    let mcr = Mcr::new("ns-keepalive");
    let ngx = Nginx::start(&mcr, &p1, 5);
    let mut session = KeepAlive::connect(ngx.port);
    let counted = |c: &mut KeepAlive, n: u32| {
        let r = c.request("/counted").unwrap_or_else(|e| panic!("request {n} on the keep-alive connection: {e}"));
        assert_eq!((r.status, r.body.as_str()), (200, "counted\n"), "request {n}");
        r.closing
    };
    for n in 1..=3 {
        assert!(!counted(&mut session, n), "nginx closes the connection after request {n} of 5");
    }
    let first_supervisor = private_memory_kb(ngx.inst.supervisor_pid());
    let outcome = ngx.update(&p2);
    eprintln!("p1 -> p2 with a keep-alive connection after 3 requests: {}", summary(&outcome));
    // The new supervisor is a fresh image of mcr, not the update's process forked with
    // the old version's startup logs and both builds' type models (6.9 MB here before).
    let supervisor = private_memory_kb(ngx.inst.supervisor_pid());
    assert!(
        supervisor <= first_supervisor + 2048,
        "the new version's supervisor holds {supervisor} kB of private memory, the first one {first_supervisor} kB"
    );
    assert!(connections_moved(&outcome) >= 1, "the keep-alive connection did not move: {outcome:#}");
    assert!(!counted(&mut session, 4), "nginx closes the connection after request 4 of 5");
    assert!(counted(&mut session, 5), "request 5 of 5 did not end the connection: its count started again");
    session.closed_by_server(Duration::from_secs(10)).expect("nginx ends the connection after request 5");
    ngx.assert_no_worker_died();
}

/// `wrk` keep-alive load across 20 updates back and forth between patches 1 and 2: every
/// update commits, no request fails. Prints the updates' times, the connections moved
/// and the servers' resident memory after each.
#[test]
fn nginx_twenty_updates_under_wrk_fail_no_request() {
    let test = "nginx_twenty_updates_under_wrk_fail_no_request";
    let nginx = nginx_bin(test);
    let (p1, p2) = (cached_nginx_build(&nginx, 1, test), cached_nginx_build(&nginx, 2, test));
    let mcr = Mcr::new("ns-wrk");
    let ngx = Nginx::start(&mcr, &p1, 100);
    let rss_start = ngx.rss_kb();
    // Bounded by its duration; ended by SIGINT once the updates are done. The timeout is
    // wrk's for a slow answer: an update pauses the server for a moment, which is not a
    // failed request.
    let wrk = Wrk::start(ngx.port, 8, Duration::from_secs(300), &["--timeout", "10s"]);
    wait_for(Duration::from_secs(10), "nginx to accept wrk's 8 connections", || {
        open_server_ends(ngx.port).iter().filter(|s| s.inode != 0).count() >= 8
    });
    let mut rows = Vec::new();
    for i in 1..=20 {
        let (to, level) = if i % 2 == 1 { (&p2, 2) } else { (&p1, 1) };
        let outcome = ngx.update(to);
        let moved = connections_moved(&outcome);
        rows.push(format!("update {i:2} to p{level}: {}; RSS {} kB", summary(&outcome), ngx.rss_kb()));
        assert!(moved >= 1, "update {i}: no connection moved under wrk's load: {outcome:#}");
    }
    let report = wrk.stop();
    eprintln!("RSS at start {rss_start} kB\n{}\nwrk:\n{}", rows.join("\n"), report.text);
    report.assert_no_failures("across 20 updates");
    assert!(report.requests() > 1000, "wrk made {} requests:\n{}", report.requests(), report.text);
    assert_eq!(http_get(ngx.port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".into()));
    ngx.assert_no_worker_died();
}

/// The update from the 19th Debian patch to the 20th (an OCSP fix) moves nginx's
/// globals: its `.bss` starts 4 KiB further. Pointers to globals in the zero-filled end
/// of `.bss` (the event timer tree's sentinel, the posted-event queues, which point to
/// themselves) must follow them: left as they were, both workers crashed on their first
/// loop after the commit. A keep-alive session and a slow download go across it.
///
/// It also changes a type, `struct ngx_ssl_ocsp_ctx_s`, which `struct ngx_cycle_s` (carved
/// from a pool) leads to by type, though no such object exists without SSL: the update
/// commits because mcr looks at what the pool's objects lead to, not at every type they
/// could.
#[test]
fn nginx_update_that_moves_its_globals_keeps_its_workers_and_connections() {
    let test = "nginx_update_that_moves_its_globals_keeps_its_workers_and_connections";
    let nginx = nginx_bin(test);
    let (from, to) = (cached_nginx_build(&nginx, 19, test), cached_nginx_build(&nginx, 20, test));
    let sentinel = |exe: &Path| elf_symbol(exe, "ngx_event_timer_sentinel").0;
    assert_ne!(sentinel(&from), sentinel(&to), "{test} needs two builds whose globals are laid out differently");
    let mcr = Mcr::new("ns-moved-globals");
    let ngx = Nginx::start(&mcr, &from, 3);
    let pids = processes(&ngx.inst.status()).iter().filter_map(|p| p["pid"].as_i64()).collect::<Vec<_>>();
    let mut session = KeepAlive::connect(ngx.port);
    assert!(!session.request("/counted").expect("the session's first request").closing);
    let (outcome, _) = download_across(&ngx, || ngx.update(&to));
    eprintln!("p19 -> p20: {}", summary(&outcome));
    let r = session.request("/counted").expect("the session's request after the update");
    assert_eq!((r.status, r.closing), (200, false), "the session's request 2 of 3 after the update");
    assert_eq!(http_get(ngx.port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".into()));
    let after = processes(&ngx.inst.status()).iter().filter_map(|p| p["pid"].as_i64()).collect::<Vec<_>>();
    assert_eq!(after, pids, "the master and its workers are the same processes");
    ngx.assert_no_worker_died();
}

/// nginx's Debian update 22 -> 23 adds an HTTP module: every later module's number
/// (`ctx_index`, which each startup computes) shifts by one, while the state that would move
/// (requests, their configuration arrays) is indexed by the old numbers. Until the
/// fifteenth session the update committed and a worker crashed on its next request; now it
/// rolls back naming a module number, and the old version serves on, its keep-alive
/// session too.
#[test]
fn nginx_update_that_adds_a_module_rolls_back_naming_a_module_number() {
    let test = "nginx_update_that_adds_a_module_rolls_back_naming_a_module_number";
    let nginx = nginx_bin(test);
    let (from, to) = (cached_nginx_build(&nginx, 22, test), cached_nginx_build(&nginx, 23, test));
    let mcr = Mcr::new("ns-added-module");
    let ngx = Nginx::start(&mcr, &from, 3);
    let mut session = KeepAlive::connect(ngx.port);
    assert!(!session.request("/counted").expect("the session's first request").closing);
    let (out, outcome) = update_json(&mcr, &ngx.inst.name, &[], &to, &ngx.args);
    assert_ne!(out.code(), 0, "the update committed: {outcome:#}");
    assert_eq!(outcome["committed"], Value::Bool(false), "{outcome:#}");
    let message = outcome["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(".ctx_index: the old version's startup set it to") && message.contains("more such values"),
        "{message}"
    );
    let r = session.request("/counted").expect("the session's request after the rollback");
    assert_eq!((r.status, r.closing), (200, false), "the session's request 2 of 3 on the old version");
    assert_eq!(http_get(ngx.port, "/status", Duration::from_secs(5)).expect("GET /status"), (200, "ok\n".into()));
    assert_eq!(ngx.inst.status()["program"].as_str(), from.to_str(), "the old version runs");
    ngx.assert_no_worker_died();
}

/// How many patches the Debian series of `$MCR_NGINX`'s build has (its `.mcr-build`
/// says; the default build applies all of them).
fn series_length(nginx: &Path) -> u32 {
    let build = nginx.parent().and_then(Path::parent).map(|p| p.join(".mcr-build")).expect("nginx's prefix");
    let text = std::fs::read_to_string(&build).unwrap_or_else(|e| panic!("{}: {e}", build.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("total=").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("{} says no total=", build.display()))
}

/// The short version of `scripts/nginx/series.sh`: the first, the middle and the last
/// update of nginx's Debian patch series (0 -> 1, N/2 -> N/2+1, N-1 -> N), each with the
/// state, a keep-alive session and a slow download across it. The session makes two
/// requests before the update and one after, on a location whose `keepalive_requests` is
/// 3: the one after must be the last.
#[test]
fn nginx_short_series_first_middle_and_last_update_with_a_session_and_a_download() {
    let test = "nginx_short_series_first_middle_and_last_update_with_a_session_and_a_download";
    let nginx = nginx_bin(test);
    let total = series_length(&nginx);
    let mut rows = Vec::new();
    for (from, to) in [(0, 1), (total / 2, total / 2 + 1), (total - 1, total)] {
        let (old, new) = (cached_nginx_build(&nginx, from, test), cached_nginx_build(&nginx, to, test));
        let mcr = Mcr::new(&format!("ns-series-p{from}"));
        let ngx = Nginx::start(&mcr, &old, 3);
        let update = format!("p{from} -> p{to}");
        let mut session = KeepAlive::connect(ngx.port);
        let mut counted = |n: u32| {
            let r = session.request("/counted").unwrap_or_else(|e| panic!("{update}: the session's request {n}: {e}"));
            assert_eq!((r.status, r.body.as_str()), (200, "counted\n"), "{update}: the session's request {n}");
            assert_eq!(r.closing, n == 3, "{update}: request {n} of 3: closing is {}", r.closing);
        };
        counted(1);
        counted(2);
        let (outcome, by_new) = download_across(&ngx, || ngx.update(&new));
        assert!(
            connections_moved(&outcome) >= 2,
            "{update}: the session and the download did not both move: {outcome:#}"
        );
        counted(3);
        session.closed_by_server(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{update}: the session: {e}"));
        ngx.assert_no_worker_died();
        rows.push(format!("{update}: {}; download: {by_new} bytes at least by the new version", summary(&outcome)));
    }
    eprintln!("{}", rows.join("\n"));
}

/// `scripts/nginx/series.sh`, which runs the whole series, on one update (patches 1 -> 2,
/// a smaller download): it passes, with its line for the update.
#[test]
fn nginx_series_script_passes_on_a_short_series() {
    let nginx = nginx_bin("nginx_series_script_passes_on_a_short_series");
    // The script builds what is missing; the test wants the cached builds only.
    let _ = (cached_nginx_build(&nginx, 1, "series.sh"), cached_nginx_build(&nginx, 2, "series.sh"));
    let mcr = Mcr::new("ns-series-script");
    let mut cmd = std::process::Command::new(repo_root().join("scripts/nginx/series.sh"));
    cmd.args(["--levels", "1,2", "--size", "16", "--rate", "4M"]);
    let out = Spawned::spawn(cmd, &mcr.tmp.path).wait(Duration::from_secs(300), "scripts/nginx/series.sh");
    eprintln!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code(), 0, "series.sh failed: {out}");
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with('p')).collect();
    assert_eq!(rows.len(), 1, "one line per update: {out}");
    assert!(rows[0].starts_with("p1 -> p2") && rows[0].contains("committed") && rows[0].contains("sha256 ok"), "{out}");
}
