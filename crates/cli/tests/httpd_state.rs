//! Apache httpd (event MPM) under `mcr update` with its state (issue 15). Its children
//! keep their objects in blocks libapr maps itself (Debian builds its allocator on
//! `mmap`), at startup and after it. What they mapped after startup moves to the same
//! addresses; the pages their startup mapped and wrote since (its pools allocate on from
//! their last block) are carried as bytes over what the new startup put there, their
//! words traced as roots, into the same build with the same libraries (another build's
//! startup lays that memory out its own way). Before, the update rolled
//! back naming that memory (and before that, it committed and the new children crashed
//! on pointers into memory laid out differently).

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const INDEX: &str = "<html><body>httpd under mcr</body></html>\n";

/// The children that died, as the master logs them ("child pid 5 exit signal
/// Segmentation fault (11)").
fn deaths(dir: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("logs/error_log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("exit signal")).map(String::from).collect()
}

#[test]
fn httpd_updates_with_its_state_and_its_keep_alive_connections_answer_on() {
    let test = "httpd_updates_with_its_state_and_its_keep_alive_connections_answer_on";
    let httpd = built_file("MCR_HTTPD", "scripts/httpd/build.sh", test);
    // A short label: the instance's sockets live under it.
    let mcr = Mcr::new("httpd_state");
    let dir = mcr.tmp.join("httpd");
    let port = free_port();
    let conf = httpd_conf(&dir, port, INDEX);
    let args: Vec<String> = vec!["-f".into(), conf.display().to_string(), "-DFOREGROUND".into()];
    let inst = mcr.start("httpd", &httpd, &args);
    wait_for(Duration::from_secs(10), "httpd to answer", || http_get(port, "/", Duration::from_secs(2)).is_ok());
    let mut kept = KeepAlive::connect(port);
    assert_eq!(kept.get("/index.html"), Ok((200, INDEX.to_string())));
    for n in 1..=3 {
        let (out, outcome) = update_json(&mcr, "httpd", &[], &httpd, &args);
        assert_eq!(out.code(), 0, "update {n} did not commit: {outcome:#}\nlog:\n{}", inst.log());
        assert_eq!(outcome["committed"], serde_json::Value::Bool(true), "{outcome:#}");
        let carried = outcome["transfer"]["startup_mapped_bytes_carried"].as_u64().unwrap_or(0);
        assert!(carried >= 4096, "update {n}: no page of libapr's startup blocks carried: {outcome:#}");
        assert_eq!(kept.get("/index.html"), Ok((200, INDEX.to_string())), "the kept connection after update {n}");
        for _ in 0..5 {
            assert_eq!(
                http_get(port, "/index.html", Duration::from_secs(5)),
                Ok((200, INDEX.to_string())),
                "a new connection after update {n}"
            );
        }
    }
    assert_eq!(deaths(&dir), Vec::<String>::new(), "children died");
}
