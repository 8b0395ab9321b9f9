//! Closed-loop pipelined GET/SET load against kvd (fixtures/README.md protocol).
//!
//! Each load thread owns a share of the connections, and each connection has one batch
//! of `depth` commands (alternating `SET k v` and `GET k` over a bounded key space) in
//! flight. The thread goes round its connections: read the `depth` replies of one
//! connection's batch, send that connection its next batch, go to the next connection.
//! So `conns * depth` requests are in flight at all times (closed loop), and the server
//! always has work queued on the other connections while the generator reads one.
//! Requests are counted per completed batch; the rate is measured between two snapshots
//! taken after the warm-up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub conns: usize,
    pub depth: usize,
    pub threads: usize,
    pub keys: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// A reply not arriving within this time is an error (a stuck server).
    pub io_timeout: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

struct Shared {
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
    failed: AtomicBool,
}

/// One connection's state: its next key number and the bytes of the current batch.
struct Conn {
    sock: TcpStream,
    next_key: u64,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Conn {
    fn fill_batch(&mut self, depth: usize, keys: u64) {
        self.out.clear();
        for i in 0..depth {
            let k = self.next_key % keys;
            if i % 2 == 0 {
                // 16-byte value: fixed size keeps the work per request constant.
                let _ = writeln!(self.out, "SET key:{k} value-{k:010}");
            } else {
                let _ = writeln!(self.out, "GET key:{k}");
                self.next_key = self.next_key.wrapping_add(7919);
            }
        }
    }

    /// Reads exactly `depth` reply lines. Returns the number of error replies.
    fn read_replies(&mut self, depth: usize) -> std::io::Result<u64> {
        let mut lines = 0usize;
        let mut errors = 0u64;
        let mut at_line_start = true;
        while lines < depth {
            let n = self.sock.read(&mut self.inbuf)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            for &b in &self.inbuf[..n] {
                if at_line_start {
                    // OK, VALUE, NOTFOUND are fine; anything else (ERR ...) is not.
                    if !matches!(b, b'O' | b'V' | b'N') {
                        errors += 1;
                    }
                    at_line_start = false;
                }
                if b == b'\n' {
                    lines += 1;
                    at_line_start = true;
                }
            }
            if lines > depth {
                return Err(std::io::Error::other("more replies than requests"));
            }
        }
        Ok(errors)
    }
}

fn connect(cfg: &Config, id: u64) -> std::io::Result<Conn> {
    let sock = TcpStream::connect_timeout(&addr(cfg.port), cfg.io_timeout)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(cfg.io_timeout))?;
    sock.set_write_timeout(Some(cfg.io_timeout))?;
    Ok(Conn { sock, next_key: id * 131, out: Vec::with_capacity(64 * cfg.depth), inbuf: vec![0; 64 * 1024] })
}

fn send_batch(c: &mut Conn, cfg: &Config) -> Result<(), String> {
    c.fill_batch(cfg.depth, cfg.keys);
    c.sock.write_all(&c.out).map_err(|e| format!("write: {e}"))
}

/// Reads the replies to `c`'s outstanding batch; returns the number of error replies.
fn recv_batch(c: &mut Conn, cfg: &Config) -> Result<u64, String> {
    c.read_replies(cfg.depth).map_err(|e| format!("read: {e}"))
}

fn worker(cfg: Config, mut conns: Vec<Conn>, shared: Arc<Shared>) -> Result<(), String> {
    for c in conns.iter_mut() {
        send_batch(c, &cfg)?;
    }
    while !shared.stop.load(Relaxed) {
        let mut errs = 0;
        for c in conns.iter_mut() {
            errs += recv_batch(c, &cfg)?;
            send_batch(c, &cfg)?;
        }
        if errs > 0 {
            shared.errors.fetch_add(errs, Relaxed);
        }
        shared.done.fetch_add((conns.len() * cfg.depth) as u64, Relaxed);
    }
    for c in conns.iter_mut() {
        recv_batch(c, &cfg)?;
    }
    Ok(())
}

/// Runs the load and returns the rate measured after the warm-up.
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    if cfg.conns == 0 || cfg.depth == 0 || cfg.threads == 0 || cfg.keys == 0 {
        return Err("conns, depth, threads and keys must be positive".into());
    }
    let threads = cfg.threads.min(cfg.conns);
    let mut per_thread: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.conns {
        let c = connect(cfg, i as u64).map_err(|e| format!("cannot connect to 127.0.0.1:{}: {e}", cfg.port))?;
        per_thread[i % threads].push(c);
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|conns| {
            let (cfg, shared) = (cfg.clone(), shared.clone());
            std::thread::spawn(move || {
                let r = worker(cfg, conns, shared.clone());
                if r.is_err() {
                    shared.failed.store(true, Relaxed);
                    shared.stop.store(true, Relaxed);
                }
                r
            })
        })
        .collect();

    let sleep_watching = |d: Duration| {
        let end = Instant::now() + d;
        while !shared.failed.load(Relaxed) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    };
    sleep_watching(cfg.warmup);
    let (t0, c0, e0) = (Instant::now(), shared.done.load(Relaxed), shared.errors.load(Relaxed));
    sleep_watching(cfg.duration);
    let (t1, c1, e1) = (Instant::now(), shared.done.load(Relaxed), shared.errors.load(Relaxed));
    shared.stop.store(true, Relaxed);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("a load thread panicked".into());
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Outcome { requests: c1 - c0, seconds: (t1 - t0).as_secs_f64(), errors: e1 - e0 })
}

/// One closed-loop slice on the calling thread: rounds over `conns` until `slice` has
/// passed; returns (requests, seconds) with the time taken up to the end of the last
/// completed round.
fn run_slice(conns: &mut [Conn], cfg: &Config, slice: Duration) -> Result<(u64, f64), String> {
    let t0 = Instant::now();
    let mut done = 0u64;
    for c in conns.iter_mut() {
        send_batch(c, cfg)?;
    }
    loop {
        let mut errs = 0;
        let last = t0.elapsed() >= slice;
        for c in conns.iter_mut() {
            errs += recv_batch(c, cfg)?;
            if !last {
                send_batch(c, cfg)?;
            }
        }
        if errs > 0 {
            return Err(format!("{errs} error replies from kvd"));
        }
        done += (conns.len() * cfg.depth) as u64;
        if last {
            return Ok((done, t0.elapsed().as_secs_f64()));
        }
    }
}

/// Which server a slice of an A/B run loads. ABBA order (A B B A A B B A ...) so a
/// linear drift of the machine's speed affects both halves of a pair alike.
pub fn abba_order(pairs: usize) -> Vec<(usize, bool)> {
    (0..pairs).flat_map(|p| if p % 2 == 0 { [(p, false), (p, true)] } else { [(p, true), (p, false)] }).collect()
}

/// Interleaved load on two servers that run at the same time: `cfg.conns` connections
/// to each, a warm-up on each, then `pairs` pairs of slices in ABBA order, one thread.
/// `after_warmup` runs once, between the warm-up and the first measured slice.
/// Returns, per pair, ((A requests/s, A requests), (B requests/s, B requests)).
pub type SideResult = (f64, f64);
pub fn run_ab(
    cfg: &Config,
    port_b: u16,
    pairs: usize,
    slice: Duration,
    after_warmup: impl FnOnce(),
) -> Result<Vec<(SideResult, SideResult)>, String> {
    let open = |port: u16| -> Result<Vec<Conn>, String> {
        let c = Config { port, ..cfg.clone() };
        (0..cfg.conns)
            .map(|i| connect(&c, i as u64).map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}")))
            .collect()
    };
    let mut sides = [open(cfg.port)?, open(port_b)?];
    for s in sides.iter_mut() {
        run_slice(s, cfg, cfg.warmup)?;
    }
    after_warmup();
    let mut out = vec![((0.0, 0.0), (0.0, 0.0)); pairs];
    for (p, b) in abba_order(pairs) {
        let (n, secs) = run_slice(&mut sides[b as usize], cfg, slice)?;
        let r = (n as f64 / secs, n as f64);
        if b {
            out[p].1 = r;
        } else {
            out[p].0 = r;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A tiny stand-in for kvd: answers SET with OK and GET with VALUE/NOTFOUND.
    fn fake_kvd() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut seen = std::collections::HashSet::new();
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        let mut it = line.splitn(3, ' ');
                        let reply = match (it.next(), it.next()) {
                            (Some("SET"), Some(k)) => {
                                seen.insert(k.to_string());
                                "OK\n".to_string()
                            }
                            (Some("GET"), Some(k)) if seen.contains(k) => "VALUE x\n".into(),
                            (Some("GET"), Some(_)) => "NOTFOUND\n".into(),
                            _ => "ERR unknown command\n".into(),
                        };
                        if w.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[test]
    fn batch_alternates_set_and_get() {
        let port = fake_kvd();
        let cfg = Config {
            port,
            conns: 1,
            depth: 4,
            threads: 1,
            keys: 10,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            io_timeout: Duration::from_secs(2),
        };
        let mut c = connect(&cfg, 0).unwrap();
        c.fill_batch(4, 10);
        let text = String::from_utf8(c.out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("SET key:0 "));
        assert_eq!(lines[1], "GET key:0");
        assert!(lines[2].starts_with("SET key:"));
        c.sock.write_all(&c.out).unwrap();
        assert_eq!(c.read_replies(4).unwrap(), 0);
    }

    #[test]
    fn measures_a_positive_rate_without_errors() {
        let port = fake_kvd();
        let cfg = Config {
            port,
            conns: 3,
            depth: 8,
            threads: 2,
            keys: 100,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            io_timeout: Duration::from_secs(2),
        };
        let out = run(&cfg).unwrap();
        assert!(out.requests > 0, "{out:?}");
        assert_eq!(out.errors, 0);
        assert!(out.seconds >= 0.2);
    }

    #[test]
    fn abba_alternates_which_side_goes_first() {
        assert_eq!(abba_order(3), vec![(0, false), (0, true), (1, true), (1, false), (2, false), (2, true)]);
    }

    #[test]
    fn ab_run_gives_a_rate_per_side_and_pair() {
        let (a, b) = (fake_kvd(), fake_kvd());
        let cfg = Config {
            port: a,
            conns: 2,
            depth: 4,
            threads: 1,
            keys: 50,
            warmup: Duration::from_millis(20),
            duration: Duration::ZERO,
            io_timeout: Duration::from_secs(2),
        };
        let mut called = false;
        let r = run_ab(&cfg, b, 2, Duration::from_millis(50), || called = true).unwrap();
        assert!(called);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|&(x, y)| x.0 > 0.0 && y.0 > 0.0 && x.1 > 0.0), "{r:?}");
    }

    #[test]
    fn refused_connection_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let cfg = Config {
            port,
            conns: 1,
            depth: 1,
            threads: 1,
            keys: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(10),
            io_timeout: Duration::from_secs(1),
        };
        assert!(run(&cfg).unwrap_err().contains("cannot connect"));
    }
}
