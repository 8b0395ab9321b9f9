//! Talking to a running instance over its control socket.

use crate::render;
use anyhow::{bail, Context, Result};
use mcr_protocol::{InstanceDir, InstanceError, InstanceFiles, Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    pub fn open(dir: &InstanceDir, name: &str) -> Result<Self> {
        let files = dir.files(name)?;
        files.check_access(&dir.path)?;
        if !files.is_live() {
            if files.clean_stale() {
                bail!(
                    "no running instance named '{name}' (removed the stale files of a dead instance from {})",
                    dir.path.display()
                );
            }
            return Err(InstanceError::NotRunning { name: name.to_string(), dir: dir.path.clone() }.into());
        }
        let stream = UnixStream::connect(&files.socket)
            .with_context(|| format!("cannot connect to instance '{name}' at {}", files.socket.display()))?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    pub fn request(&mut self, req: &Request) -> Result<Response> {
        self.writer.write_all(&mcr_protocol::encode_line(req)).context("cannot send the request")?;
        let mut line = String::new();
        self.reader.read_line(&mut line).context("cannot read the answer")?;
        if line.is_empty() {
            bail!("the supervisor closed the connection without answering (it is exiting)");
        }
        mcr_protocol::decode_line(line.trim_end().as_bytes()).context("the supervisor sent an answer mcr cannot read")
    }
}

impl Connection {
    /// Like [`Connection::request`] for a request that may take long: `give_up` is asked
    /// every 100 ms while waiting, and ends the wait with an error when it says so.
    pub fn request_until(&mut self, req: &Request, give_up: impl Fn() -> bool) -> Result<Response> {
        self.writer.write_all(&mcr_protocol::encode_line(req)).context("cannot send the request")?;
        let sock = self.reader.get_ref();
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut line = String::new();
        let got = loop {
            match self.reader.read_line(&mut line) {
                Ok(_) => break Ok(()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if give_up() {
                        break Err(anyhow::anyhow!("interrupted"));
                    }
                }
                Err(e) => break Err(anyhow::Error::new(e).context("cannot read the answer")),
            }
        };
        self.reader.get_ref().set_read_timeout(None)?;
        got?;
        if line.is_empty() {
            bail!("the supervisor closed the connection without answering (it is exiting)");
        }
        mcr_protocol::decode_line(line.trim_end().as_bytes()).context("the supervisor sent an answer mcr cannot read")
    }
}

pub fn request(dir: &InstanceDir, name: &str, req: &Request) -> Result<Response> {
    Connection::open(dir, name)?.request(req)
}

pub fn status(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    match request(dir, name, &Request::Status)? {
        Response::Status(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", render::status(&st));
            }
            Ok(0)
        }
        other => unexpected(other),
    }
}

pub fn startup_logs(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    match request(dir, name, &Request::StartupLogs)? {
        Response::StartupLogs { processes } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&processes)?);
            } else {
                print!("{}", render::startup_logs(&processes));
            }
            Ok(0)
        }
        other => unexpected(other),
    }
}

pub fn list(dir: &InstanceDir, json: bool) -> Result<i32> {
    let mut rows = Vec::new();
    for name in dir.names() {
        let files: InstanceFiles = dir.files(&name)?;
        if let Err(e) = files.check_access(&dir.path) {
            eprintln!("mcr: {e}");
            continue;
        }
        if !files.is_live() {
            if files.clean_stale() {
                eprintln!("mcr: removed the stale files of dead instance '{name}'");
            }
            continue;
        }
        match request(dir, &name, &Request::Status) {
            Ok(Response::Status(st)) => rows.push(st),
            Ok(_) | Err(_) => eprintln!("mcr: instance '{name}' did not answer"),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render::list(&rows));
    }
    Ok(0)
}

pub fn quiesce(dir: &InstanceDir, name: &str, timeout_ms: u64, json: bool) -> Result<i32> {
    let resp = request(dir, name, &Request::Quiesce { timeout_ms })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    }
    match resp {
        Response::Quiesced { elapsed_us, processes, threads } => {
            if !json {
                println!(
                    "quiesced '{name}': {threads} threads in {processes} processes parked at quiescent points in {:.2} ms",
                    elapsed_us as f64 / 1000.0
                );
            }
            Ok(0)
        }
        Response::QuiesceFailed { message, laggards } => {
            if !json {
                eprintln!("mcr: {message}");
                eprint!("{}", render::laggards(&laggards));
            }
            Ok(1)
        }
        other => unexpected(other),
    }
}

pub fn resume(dir: &InstanceDir, name: &str) -> Result<i32> {
    match request(dir, name, &Request::Resume)? {
        Response::Resumed { processes } => {
            println!("resumed '{name}' ({processes} processes)");
            Ok(0)
        }
        other => unexpected(other),
    }
}

pub fn stop(dir: &InstanceDir, name: &str, timeout_s: u64) -> Result<i32> {
    let files = dir.files(name)?;
    let grace = Duration::from_secs(timeout_s);
    match request(dir, name, &Request::Stop { grace_ms: grace.as_millis() as u64 })? {
        Response::Stopping => {}
        other => return unexpected(other),
    }
    let t0 = Instant::now();
    while files.is_live() {
        if t0.elapsed() > grace + Duration::from_secs(5) {
            bail!("instance '{name}' is still running {} s after SIGTERM and SIGKILL", t0.elapsed().as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stopped '{name}'");
    Ok(0)
}

fn unexpected(resp: Response) -> Result<i32> {
    match resp {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}
