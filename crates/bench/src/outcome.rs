//! What the benchmarks read from mcr's `--json` output, deserialized with mcr's own types:
//! `mcr ctl quiesce` prints the protocol's [`Response`](mcr_protocol::Response), `mcr
//! status` its [`InstanceStatus`](mcr_protocol::InstanceStatus), and `mcr update` the
//! update library's [`Report`].

pub use mcr_update::Report;

/// What `mcr update --json` printed: `Ok(None)` when it printed nothing (refused before
/// doing anything), Err when it printed something else than a report.
pub fn update_report(stdout: &[u8]) -> Result<Option<Report>, String> {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("mcr update --json printed what mcr-bench cannot read ({e}): {}", text.trim()))
}

/// The protocol's answer a `mcr ... --json` command printed.
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, stdout: &[u8]) -> Result<T, String> {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(&text).map_err(|e| format!("{what} printed what mcr-bench cannot read ({e}): {}", text.trim()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `mcr update --json` of a committed kvd update with the state transferred.
    pub const COMMITTED: &str = r#"{
  "instance": "s",
  "committed": true,
  "message": "'s' now runs target/fixtures/kvd-v2-layout --port 44149",
  "phases": { "preflight_ms": 0.412, "drain_ms": 3.446274, "quiesce_ms": 0.716906, "restart_ms": 52.056450999999996,
    "transfer_ms": 23.648202, "commit_ms": 11.302825, "total_ms": 99.212014, "paused_ms": 88.5, "rollback_ms": 0.0 },
  "conflicts": [],
  "connections_left": [ { "pid": 2, "fds": [5, 6], "volatile": false, "pinned": [], "idle_check": false, "busy": [], "finished": false } ],
  "transfer": { "processes": 1, "globals": 7, "globals_clean": 0, "globals_dropped": [], "objects": 30, "bytes": 690,
    "startup_matched": 0, "startup_kept": 0, "startup_reallocated": 0, "startup_notes": [], "live_objects": 31,
    "handled": 0, "warnings": [], "connections": 2, "descriptors": 0, "respawned_processes": 0, "dirty_pages": 140, "clean_pages": 2328,
    "heap_scan_ms": 1.3237990000000002, "startup_tables_ms": 0.366134, "trace_ms": 10.674312,
    "connections_ms": 0.0020729999999999998, "mapped_bytes": 0, "startup_mapped_bytes_carried": 0, "pthread_keys": 0,
    "in_place": 0, "in_place_bytes": 0, "old_freed": 0, "pinned": 0, "held_by_new_startup": 0, "untouched": 0, "untouched_bytes": 0,
    "walked_all": "struct kv_node changes layout", "walk_ms": 9.1, "check_ms": 0.0, "write_ms": 1.2,
    "heap_regions_adopted": 0, "heap_bytes_adopted": 0, "heap_bytes_mapped": 0,
    "heap_adopt_ms": 0.0 },
  "adopted_connections": 0,
  "old_processes": [2],
  "new_processes": [2],
  "rehearsed": false,
  "drain_would_wait": []
}"#;

    /// A rolled-back update with --fresh-state.
    pub const ROLLED_BACK: &str = r#"{
  "instance": "s", "committed": false,
  "message": "the new version exited with signal 6 (SIGABRT) during its startup",
  "phases": { "drain_ms": 0.339, "quiesce_ms": 0.761863, "restart_ms": 25.158662, "transfer_ms": 0.000481,
    "commit_ms": 0.0, "total_ms": 35.069198 },
  "conflicts": [], "connections_left": [], "transfer": null, "adopted_connections": 0,
  "old_processes": [2], "new_processes": []
}"#;

    #[test]
    fn update_reports() {
        let o = update_report(COMMITTED.as_bytes()).unwrap().unwrap();
        assert!(o.committed);
        // serde_json reads floats to within an ulp (not bit-exact without float_roundtrip).
        assert!((o.phases.restart_ms - 52.056451).abs() < 1e-9, "{:?}", o.phases);
        let t = o.transfer.as_ref().unwrap();
        assert_eq!((t.state.globals, t.state.objects, t.state.bytes, t.state.live_objects), (7, 30, 690, 31));
        assert_eq!((t.connections, t.dirty_pages, t.clean_pages), (2, 140, 2328));
        assert_eq!(o.connections_left[0].fds, [5, 6]);
        assert_eq!((o.old_processes.as_slice(), o.new_processes.as_slice()), (&[2][..], &[2][..]));
        let r = update_report(ROLLED_BACK.as_bytes()).unwrap().unwrap();
        assert!(!r.committed && r.transfer.is_none() && r.failure.is_none());
        assert_eq!(r.message, "the new version exited with signal 6 (SIGABRT) during its startup");
        assert!(update_report(b"  \n").unwrap().is_none(), "refused: nothing printed");
        let e = update_report(br#"{"committed": "yes"}"#).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_report_reads_back_as_the_update_wrote_it() {
        let o = update_report(COMMITTED.as_bytes()).unwrap().unwrap();
        let again = serde_json::to_string_pretty(&o).unwrap();
        let back = update_report(again.as_bytes()).unwrap().unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&o).unwrap());
        let fields: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
        assert_eq!(serde_json::to_value(&o).unwrap(), fields, "every field of the --json output is read");
    }

    #[test]
    fn protocol_answers() {
        use mcr_protocol::Response;
        let q: Response = parse_json(
            "mcr ctl quiesce",
            b"{\n  \"response\": \"quiesced\",\n  \"elapsed_us\": 4128,\n  \"processes\": 1,\n  \"threads\": 1\n}\n",
        )
        .unwrap();
        assert!(matches!(q, Response::Quiesced { elapsed_us: 4128, processes: 1, threads: 1 }), "{q:?}");
        let f: Response =
            parse_json("mcr ctl quiesce", br#"{"response":"quiesce_failed","message":"timed out","laggards":[]}"#)
                .unwrap();
        assert!(matches!(f, Response::QuiesceFailed { ref message, .. } if message == "timed out"), "{f:?}");
        assert!(parse_json::<Response>("mcr ctl quiesce", b"").is_err());
    }
}
