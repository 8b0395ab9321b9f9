//! Apache httpd (event MPM) under `mcr update` with its state (issue 15). Its children
//! keep their objects in blocks libapr maps itself (Debian builds its allocator on
//! `mmap`), at startup and after it. What they mapped after startup moves to the same
//! addresses; what their startup mapped is the new startup's, and where the old version
//! wrote into it since (its pools allocate on from their last block), mcr cannot carry it
//! yet: the update rolls back, naming that memory, before anything changed, and the old
//! version serves on, its keep-alive connections too. Before, the update either rolled
//! back on an address the new startup had taken ("File exists"), or committed and the
//! new children crashed on pointers into memory laid out differently.

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
fn httpd_update_with_state_rolls_back_naming_memory_its_startup_mapped_and_serves_on() {
    let test = "httpd_update_with_state_rolls_back_naming_memory_its_startup_mapped_and_serves_on";
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
    let before = inst.status();
    for n in 1..=2 {
        let (out, outcome) = update_json(&mcr, "httpd", &[], &httpd, &args);
        assert_ne!(out.code(), 0, "update {n} committed: {outcome:#}\nlog:\n{}", inst.log());
        assert_eq!(outcome["committed"], serde_json::Value::Bool(false), "{outcome:#}");
        let message = outcome["message"].as_str().unwrap_or_default();
        assert!(message.contains("memory the old version's startup mapped at"), "update {n}: {message}");
        assert_eq!(kept.get("/index.html"), Ok((200, INDEX.to_string())), "the kept connection after update {n}");
        assert_eq!(
            http_get(port, "/index.html", Duration::from_secs(5)),
            Ok((200, INDEX.to_string())),
            "a new connection after update {n}"
        );
    }
    let pids = |st: &serde_json::Value| processes(st).iter().map(|p| p["pid"].clone()).collect::<Vec<_>>();
    assert_eq!(pids(&inst.status()), pids(&before), "the same processes serve on");
    assert_eq!(deaths(&dir), Vec::<String>::new(), "children died");
}
