//! pthread keys the program created after startup (`pthread_key_create`): the transfer
//! recreates each at its index with the main thread's value (`transfer/keys.rs`). Named
//! here:
//! - a key at an index a startup key had (deleted since): the new version's startup takes
//!   it (should the new startup hold an index for another reason, recreating the key
//!   fails and the update rolls back, naming it);
//! - a key whose destructor is not a named function (its counterpart in the new binary
//!   cannot be found);
//! - another thread's value: each thread reads its own values when it parks, so they are
//!   known once the old version is parked. Only the main thread's move: threads made after
//!   startup are refused anyway, and nothing sets a startup thread's values in the new
//!   version yet.

use super::{Context, Unmovable};

pub(super) fn unmovable(ctx: &Context) -> Vec<Unmovable> {
    let mut found = Vec::new();
    for log in &ctx.logs {
        let Some(after) = log.log.as_ref().map(|l| &l.after_startup) else { continue };
        for k in &after.keys {
            if k.startup_index {
                found.push(Unmovable {
                    pid: log.pid,
                    what: format!("pthread key {}", k.index),
                    why: "made after startup at the index of a key startup made (deleted since): the new \
                          version's startup takes that index for its own key"
                        .to_string(),
                });
            }
            if k.destructor != 0 && k.destructor_symbol.is_none() {
                found.push(Unmovable {
                    pid: log.pid,
                    what: format!("pthread key {}", k.index),
                    why: format!(
                        "made after startup with destructor {:#x}, which is not the start of a named function: \
                         mcr cannot find it in the new binary",
                        k.destructor
                    ),
                });
            }
            found.extend(k.other_values.iter().map(|&(tid, value)| Unmovable {
                pid: log.pid,
                what: format!("pthread key {} (thread {tid}'s value {value:#x})", k.index),
                why: if k.startup {
                    "changed since the thread's startup: only the main thread's values of a key move".to_string()
                } else {
                    "made after startup: only the main thread's values of a key move".to_string()
                },
            }));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcr_protocol::attributes::HandlerSymbol;
    use mcr_protocol::{AfterStartup, ProcessLog, PthreadKey, StartupLog};

    fn context(keys: Vec<PthreadKey>) -> Context {
        let log = StartupLog {
            complete: true,
            ops: vec![],
            unreplayable: vec![],
            after_startup: AfterStartup { keys, ..Default::default() },
            waits_at: vec![],
            mapped_at_startup: vec![],
            allocated_at_startup: vec![],
        };
        Context {
            processes: Default::default(),
            logs: vec![ProcessLog {
                pid: 4,
                command_line: vec![],
                log: Some(log),
                error: None,
                registration: 0,
                refresh: None,
            }],
            attributes: Default::default(),
            post_startup_fds: Default::default(),
        }
    }

    #[test]
    fn a_reused_startup_index_a_nameless_destructor_and_other_threads_values_are_named() {
        let named = HandlerSymbol { function: "free_session".into(), module: "/srv/d".into(), in_executable: true };
        let key = |index, destructor, symbol: Option<&HandlerSymbol>, other_values| PthreadKey {
            index,
            startup: false,
            startup_index: index == 5,
            destructor,
            destructor_symbol: symbol.cloned(),
            main_value: Some(0x1000),
            other_values,
        };
        let found = unmovable(&context(vec![
            key(1, 0, None, vec![]),
            key(2, 0x40_1000, Some(&named), vec![]),
            key(3, 0x40_2008, None, vec![]),
            key(4, 0, None, vec![(7, 0x5000)]),
            key(5, 0, None, vec![]),
        ]));
        let what: Vec<&str> = found.iter().map(|u| u.what.as_str()).collect();
        assert_eq!(what, ["pthread key 3", "pthread key 4 (thread 7's value 0x5000)", "pthread key 5"]);
        assert!(found[2].why.contains("startup takes that index"), "{}", found[2].why);
        assert!(found[0].why.contains("0x402008"), "{}", found[0].why);
        assert!(found.iter().all(|u| u.pid == 4));
    }
}
