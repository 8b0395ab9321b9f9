//! Issue 13's first fixture: an in-memory store whose hash table holds `void *` keys and
//! values (fixtures/voidkv.c), updated with its data and its clients' connections and no
//! annotation, through the real `mcr` binary. Keys and values are reached only through
//! `void *`, the hash callbacks' context only through the table's `void *user_data`, and
//! a connection's state only through its `epoll_event.data.ptr`: mcr traces them
//! conservatively, and what their bytes point to is pinned where it is.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

/// Keys the store holds (values `value {i} with spaces`: those from 1000 on are 24 bytes
/// with their NUL, the size of the old `struct store_ctx`).
const KEYS: usize = 3000;
/// Keys deleted after the fill (every 100th), so the heap has holes.
const DELETED_EVERY: usize = 100;
/// Connections held open across the updates, each with a command half sent.
const HELD: usize = 3;

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// `mcr update voidkv --json -- PROGRAM --port PORT`: the exit code and the outcome.
/// First waits until voidkv closed every connection but the `held` ones (the clients that
/// checked the store hung up), so that exactly those move.
fn update(mcr: &Mcr, port: u16, program: &Path, held: usize) -> (Out, Value) {
    wait_for(Duration::from_secs(5), "voidkv to close the connections its checkers left", || {
        open_server_ends(port).len() == held
    });
    update_json(mcr, "voidkv", &[], program, &port_args(port))
}

fn value_of(i: usize) -> String {
    format!("value {i} with spaces")
}

fn deleted(i: usize) -> bool {
    i.is_multiple_of(DELETED_EVERY)
}

fn live_keys() -> usize {
    (0..KEYS).filter(|&i| !deleted(i)).count()
}

/// SETs every key, then DELs every `DELETED_EVERY`th.
fn fill(port: u16) {
    let mut c = Client::connect(port);
    let set = pipelined(&mut c, (0..KEYS).map(|i| format!("SET key{i} {}", value_of(i))));
    assert!(set.iter().all(|r| r == "OK"), "a SET failed: {:?}", set.iter().find(|r| *r != "OK"));
    let del = pipelined(&mut c, (0..KEYS).filter(|&i| deleted(i)).map(|i| format!("DEL key{i}")));
    assert!(del.iter().all(|r| r == "DELETED"), "a DEL failed: {del:?}");
    assert_eq!(c.request("COUNT"), format!("COUNT {}", live_keys()));
}

/// Every key holds its value (the deleted ones none), and COUNT says so, plus `extra`
/// keys the held connections set.
fn assert_every_key(port: u16, extra: usize, when: &str) {
    let mut c = Client::connect(port);
    let got = pipelined(&mut c, (0..KEYS).map(|i| format!("GET key{i}")));
    for (i, reply) in got.iter().enumerate() {
        let want = if deleted(i) { "NOTFOUND".to_string() } else { format!("VALUE {}", value_of(i)) };
        assert_eq!(reply, &want, "key{i} {when}");
    }
    assert_eq!(c.request("COUNT"), format!("COUNT {}", live_keys() + extra), "{when}");
}

/// A connection kept open across updates, a command half sent on it before each one.
struct Held {
    client: Client,
    /// The rest of the half-sent command and the reply the whole one gets.
    rest: Option<(String, String)>,
}

impl Held {
    fn open(port: u16) -> Held {
        let mut client = Client::connect(port);
        assert_eq!(client.request("PING"), "PONG");
        Held { client, rest: None }
    }

    /// Sends `head` without its end; `rest` completes it, and `reply` answers it.
    fn half_send(&mut self, port: u16, head: &str, rest: &str, reply: &str) {
        self.client.send_raw(head.as_bytes()).expect("half a command");
        self.rest = Some((rest.to_string(), reply.to_string()));
        wait_for(Duration::from_secs(5), "voidkv to read the half-sent command", || {
            server_read_all_of(port, &self.client)
        });
    }

    /// Completes the half-sent command: its reply.
    fn complete(&mut self) -> (String, String) {
        let (rest, want) = self.rest.take().expect("a command half sent");
        self.client.send_raw(format!("{rest}\n").as_bytes()).expect("the rest of the command");
        (self.client.read_line().expect("the reply to the completed command"), want)
    }
}

/// Half-sends one command on each held connection (`round` tells them apart): a SET of a
/// key of their own, a GET cut inside the key, a STRLEN cut inside the command name.
/// `version`: the one that completes them (STRLEN counts the NUL in v1).
fn half_send_all(port: u16, held: &mut [Held], round: usize, version: u32) {
    let strlen = "value 7 with spaces".len() + usize::from(version == 1);
    for (j, h) in held.iter_mut().enumerate() {
        match j % 3 {
            0 => h.half_send(port, &format!("SET held{round}x{j} done"), &format!(" {round}"), "OK"),
            1 => h.half_send(port, "GET key4", "2", &format!("VALUE {}", value_of(42))),
            _ => h.half_send(port, "STR", "LEN key7", &format!("STRLEN {strlen}")),
        }
    }
}

/// Completes each held connection's command, and checks the connection then answers
/// from `version`. Returns how many keys the completed commands added.
fn complete_all(held: &mut [Held], version: u32, when: &str) -> usize {
    let mut added = 0;
    for (j, h) in held.iter_mut().enumerate() {
        let (got, want) = h.complete();
        assert_eq!(got, want, "held connection {j}'s command, completed {when}");
        assert_eq!(h.client.request("VERSION"), format!("VERSION voidkv {version}"), "held connection {j} {when}");
        added += usize::from(j % 3 == 0);
    }
    added
}

/// The update committed, moved the held connections, and traced conservatively: the
/// blocks the untyped memory points to (the context's name, each held connection's
/// buffers) were pinned and the data stayed in the adopted heap. Prints its figures.
fn assert_committed(label: &str, out: &Out, v: &Value, log: &str) {
    assert_eq!(out.code(), 0, "{label}: {out}\nlog:\n{log}");
    assert_eq!(v["committed"], Value::Bool(true), "{label}: {v:#}");
    let t = &v["transfer"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{label}: no transfer.{k}: {v:#}"));
    eprintln!(
        "{label}: total {:.1} ms, transfer {:.1} ms (trace {:.1} ms); objects {}, in place {}, untouched {}, pinned {}, \
         old freed {}, connections {}",
        v["phases"]["total_ms"].as_f64().unwrap_or(f64::NAN),
        v["phases"]["transfer_ms"].as_f64().unwrap_or(f64::NAN),
        t["trace_ms"].as_f64().unwrap_or(f64::NAN),
        n("objects"),
        n("in_place"),
        n("untouched"),
        n("pinned"),
        n("old_freed"),
        n("connections")
    );
    assert_eq!(n("connections"), HELD as u64, "{label}: the held connections move: {v:#}");
    assert!(n("pinned") > 2 * HELD as u64, "{label}: the name and each held connection's two buffers: {v:#}");
    // Each live key is an entry, its key and its value: all kept where they are (none of
    // their types changes), walked in place or, when no type changes, left untouched.
    let per_key = 3 * live_keys() as u64;
    assert!(n("in_place") + n("untouched") >= per_key, "{label}: {v:#}");
}

fn stat(c: &mut Client, field: &str) -> u64 {
    parse_stats(&c.request("STATS"))[field]
}

/// voidkv v1 → voidkv-v2 (code only) → voidkv-v2-layout (struct htable grows in the
/// middle) → v1, without --fresh-state and without annotations: every key and value
/// survives, the held connections complete the commands half sent before each update
/// and answer from the new version, and each update pinned blocks.
#[test]
fn voidkv_keeps_its_void_pointer_store_and_connections_through_code_and_layout_updates() {
    let mcr = Mcr::new("t-voidkv");
    let port = free_port();
    let args = port_args(port);
    let (v1, v2, v2_layout) = (fixture("voidkv"), fixture("voidkv-v2"), fixture("voidkv-v2-layout"));
    let inst = mcr.start("voidkv", &v1, &args);
    fill(port);
    let mut held: Vec<Held> = (0..HELD).map(|_| Held::open(port)).collect();
    let mut added = 0;
    let (buckets, resizes) = {
        let mut c = Client::connect(port);
        assert_eq!(c.request("STRLEN key7"), "STRLEN 20", "v1's bug counts the NUL");
        (stat(&mut c, "buckets"), stat(&mut c, "resizes"))
    };
    assert!(resizes > 0, "the bucket array grew after startup");

    for (round, (to, version)) in [(&v2, 2), (&v2_layout, 2), (&v1, 1)].into_iter().enumerate() {
        let label = format!("update {round} to {}", to.file_name().unwrap().to_string_lossy());
        half_send_all(port, &mut held, round, version);
        let (out, v) = update(&mcr, port, to, HELD);
        assert_committed(&label, &out, &v, &inst.log());
        added += complete_all(&mut held, version, &format!("after {label}"));
        assert_every_key(port, added, &format!("after {label}"));
        let mut c = Client::connect(port);
        let strlen = if version == 1 { "STRLEN 20" } else { "STRLEN 19" };
        assert_eq!(c.request("STRLEN key7"), strlen, "after {label}");
        // The table header (moved and rebuilt by the layout update) kept its figures,
        // and its callbacks still reach the context behind user_data.
        assert_eq!((stat(&mut c, "buckets"), stat(&mut c, "resizes")), (buckets, resizes), "after {label}");
        assert_eq!(c.request("NAME"), "NAME voidkv store", "after {label}");
    }
}

/// An update into a build whose `struct store_ctx`, which only the table's `void
/// *user_data` leads to, gains a field rolls back: mcr cannot know that block's type, so
/// it names the block, the path to it, the type and the annotation. The old version keeps
/// serving every key and the held connection. The build with that annotation commits.
#[test]
fn voidkv_refuses_a_layout_change_only_a_void_pointer_leads_to_until_annotated() {
    let mcr = Mcr::new("t-voidkv-ctx");
    let port = free_port();
    let args = port_args(port);
    let inst = mcr.start("voidkv", &fixture("voidkv"), &args);
    fill(port);
    let mut held = vec![Held::open(port)];
    let hashed = stat(&mut Client::connect(port), "hashed");

    half_send_all(port, &mut held, 0, 1);
    let (out, v) = update(&mcr, port, &fixture("voidkv-v2-ctxlayout"), held.len());
    assert_eq!(out.code(), 1, "{out}\nlog:\n{}", inst.log());
    let msg = v["message"].as_str().unwrap_or_default();
    for word in ["voidkv.c:store -> htable.user_data (void *)", "looks like struct store_ctx", "(24 -> 32 bytes)"] {
        assert!(msg.contains(word), "the rollback should name {word:?}: {v:#}");
    }
    assert!(msg.contains("MCR_POINTS_TO"), "and the annotation that resolves it: {v:#}");
    let added = complete_all(&mut held, 1, "after the rollback");
    assert_every_key(port, added, "after the rollback");

    half_send_all(port, &mut held, 1, 2);
    let (out, v) = update(&mcr, port, &fixture("voidkv-v2-ctxlayout-hinted"), held.len());
    assert_eq!(out.code(), 0, "MCR_POINTS_TO types user_data: {out}\nlog:\n{}", inst.log());
    assert_eq!(v["transfer"]["connections"], 1, "{v:#}");
    let added = added + complete_all(&mut held, 2, "after the annotated update");
    assert_every_key(port, added, "after the annotated update");
    let mut c = Client::connect(port);
    assert!(stat(&mut c, "hashed") > hashed, "the context moved into its new layout with its counter");
    assert_eq!(c.request("NAME"), "NAME voidkv store");
}
