//! `mcr status`, `mcr list`, `mcr ctl quiesce|resume`, `mcr stop`: ask an instance, print
//! the answer.

use crate::render;
use anyhow::{bail, Result};
use mcr_client::instances::{self, Listed};
use mcr_client::{ClientError, Connection};
use mcr_protocol::{InstanceDir, Request, Response};
use std::time::Duration;

pub fn status(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    let st = Connection::open(dir, name)?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render::status(&st));
    }
    Ok(0)
}

pub fn startup_logs(dir: &InstanceDir, name: &str, json: bool) -> Result<i32> {
    let processes = Connection::open(dir, name)?.startup_logs()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&processes)?);
    } else {
        print!("{}", render::startup_logs(&processes));
    }
    Ok(0)
}

pub fn list(dir: &InstanceDir, json: bool) -> Result<i32> {
    let mut rows = Vec::new();
    for listed in instances::list(dir)? {
        match listed {
            Listed::Running(st) => rows.push(st),
            Listed::Untrusted(e) => eprintln!("mcr: {e}"),
            Listed::Stale(name) => eprintln!("mcr: removed the stale files of dead instance '{name}'"),
            Listed::Silent(name) => eprintln!("mcr: instance '{name}' did not answer"),
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
    let resp = mcr_client::request(dir, name, &Request::Quiesce { timeout_ms })?;
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
        other => bail!(ClientError::unexpected(other)),
    }
}

pub fn resume(dir: &InstanceDir, name: &str) -> Result<i32> {
    let processes = Connection::open(dir, name)?.resume()?;
    println!("resumed '{name}' ({processes} processes)");
    Ok(0)
}

pub fn stop(dir: &InstanceDir, name: &str, timeout_s: u64) -> Result<i32> {
    instances::stop(dir, name, Duration::from_secs(timeout_s))?;
    println!("stopped '{name}'");
    Ok(0)
}
