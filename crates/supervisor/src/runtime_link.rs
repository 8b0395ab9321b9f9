//! Connections from the runtime inside each server process.

use crate::state::State;
use mcr_protocol::RuntimeEvent;
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
        let conn = {
            let mut g = state.lock();
            g.next_conn += 1;
            g.open_conns += 1;
            g.next_conn
        };
        tokio::spawn(serve(state.clone(), stream, pid, conn));
    }
}

async fn serve(state: State, stream: UnixStream, pid: i32, conn: u64) {
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
    while let Ok(Some(line)) = lines.next_line().await {
        match mcr_protocol::decode_line::<RuntimeEvent>(line.as_bytes()) {
            Ok(ev) => state.on_event(conn, pid, ev, &tx),
            Err(e) => eprintln!("mcr: bad message from process {pid}: {e}"),
        }
    }
    state.on_disconnect(conn, pid);
    writer.abort();
}
