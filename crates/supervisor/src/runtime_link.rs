//! Connections from the runtime inside each server process.

use crate::init_link::Message;
use crate::state::State;
use mcr_protocol::RuntimeEvent;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub async fn accept_loop(state: State, listener: UnixListener) {
    let mut backoff = crate::control::AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                backoff.wait(&e).await;
                continue;
            }
        };
        // The socket is abstract, so anyone on the host can connect: only processes of
        // our own instance (same PID namespace, hence a PID we can see) are served.
        let Ok(cred) = stream.peer_cred() else { continue };
        let Some(pid) = cred.pid().filter(|&p| p > 0) else { continue };
        if !state.pid_namespace && !state.processes().iter().any(|p| p.pid == pid) {
            continue;
        }
        // The init keeps a copy: the connection outlives this supervisor, and the one the
        // init starts after it takes it over.
        state.tell_init(&Message::Hold { pid }, &[stream.as_raw_fd()]);
        let conn = new_connection(&state);
        tokio::spawn(serve(state.clone(), stream, pid, conn, None));
    }
}

fn new_connection(state: &State) -> u64 {
    let mut g = state.lock();
    g.next_conn += 1;
    g.open_conns += 1;
    g.next_conn
}

/// A runtime connection of process `pid` that the previous supervisor held (a copy the
/// init kept). The process registered then; it is registered again here, as started
/// (it was: the init starts another supervisor only for a version that runs), and the
/// line in flight when that supervisor died, in either direction, is cut off.
pub fn adopt(state: State, pid: i32, fd: OwnedFd) {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(stream) = UnixStream::from_std(std_stream) else { return };
    let conn = new_connection(&state);
    let argv = mcr_procfs::cmdline(pid).unwrap_or_default();
    tokio::spawn(serve(state, stream, pid, conn, Some(argv)));
}

/// `adopted`: a connection taken over (with the process's command line), not a new one.
async fn serve(state: State, stream: UnixStream, pid: i32, conn: u64, adopted: Option<Vec<String>>) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if wr.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let mut lines = crate::lines::Lines::new(rd);
    let mut resync = adopted.is_some();
    if let Some(argv) = adopted {
        // An empty line ends whatever command the previous supervisor left half-written.
        let _ = tx.send(b"\n".to_vec());
        state.adopt(conn, pid, argv, &tx);
    }
    while let Ok(Some(line)) = lines.next_line().await {
        match mcr_protocol::decode_line::<RuntimeEvent>(line.as_bytes()) {
            Ok(ev) => state.on_event(conn, pid, ev, &tx),
            // The rest of a line the previous supervisor had begun to read.
            Err(_) if resync => {}
            Err(e) => eprintln!("mcr: bad message from process {pid}: {e}"),
        }
        resync = false;
    }
    state.on_disconnect(conn, pid);
    writer.abort();
}
