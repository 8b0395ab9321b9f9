//! pthread keys the old process created after startup (the new version's startup does not
//! create them): recreated at the same indices in the new process, each with its
//! destructor (the same function of the new binary) and the main thread's value, relocated
//! by the tracer like a `void *` ([`mcr_tracer::transfer_with_words`]). Other threads'
//! values are named by the preflight: only the main thread's move.

use super::runtime::NewProcess;
use super::TransferError;
use mcr_client::Connection;
use mcr_protocol::{KeyToRecreate, PthreadKey, RuntimeCommandKind, RuntimeReply};

/// The old process's keys made after startup (a runtime that does not know the command
/// answers with an error: it noted none).
pub(crate) fn of_old(conn: &mut Connection, pid: i32) -> Result<Vec<PthreadKey>, TransferError> {
    match conn.runtime(pid, RuntimeCommandKind::PthreadKeys)? {
        RuntimeReply::PthreadKeys { keys } => Ok(keys),
        RuntimeReply::Error { .. } => Ok(Vec::new()),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

fn label(index: u32) -> String {
    format!("pthread key {index} (the main thread's value)")
}

/// What becomes of a key's main-thread value in the new process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// A startup key whose value the main thread did not change: the new startup's stays.
    Nothing,
    /// NULL: nothing to relocate.
    Null,
    /// An address, or what looks like one: the tracer relocates it.
    Word(u64),
}

fn carry(pid: i32, k: &PthreadKey) -> Result<Carry, TransferError> {
    match k.main_value {
        // The runtime reports a startup key only when a thread changed its value.
        None if k.startup => Ok(Carry::Nothing),
        None => Err(TransferError::PthreadKey {
            pid,
            index: k.index,
            why: "the main thread's value is unknown (it did not park since the key was created)".into(),
        }),
        Some(0) => Ok(Carry::Null),
        Some(v) => Ok(Carry::Word(v)),
    }
}

/// The main thread's values for the tracer to relocate, one word per key that has one.
pub(crate) fn value_words(pid: i32, keys: &[PthreadKey]) -> Result<Vec<(String, u64)>, TransferError> {
    let mut words = Vec::new();
    for k in keys {
        if let Carry::Word(v) = carry(pid, k)? {
            words.push((label(k.index), v));
        }
    }
    Ok(words)
}

/// What the new process does: each key made after startup created with its destructor
/// moved to the new binary (`destructor`: None when it has no counterpart there), and the
/// main thread's values set, relocated (`relocated`: the tracer's answer for
/// [`value_words`], in its order). A startup key is the new startup's own: only its
/// value, when the old main thread changed it, is set.
pub(crate) fn to_recreate(
    pid: i32,
    keys: &[PthreadKey],
    relocated: &[u64],
    destructor: impl Fn(u64) -> Option<u64>,
) -> Result<Vec<KeyToRecreate>, TransferError> {
    let mut values = relocated.iter();
    let mut out = Vec::new();
    for k in keys {
        let main_value = match carry(pid, k)? {
            Carry::Nothing => continue,
            Carry::Null => 0,
            Carry::Word(_) => values.next().copied().unwrap_or(0),
        };
        let new_destructor = if k.startup {
            0
        } else {
            destructor(k.destructor).ok_or_else(|| TransferError::PthreadKey {
                pid,
                index: k.index,
                why: format!(
                    "its destructor {:#x}{} has no counterpart in the new binary",
                    k.destructor,
                    k.destructor_symbol.as_ref().map(|s| format!(" ({})", s.function)).unwrap_or_default()
                ),
            })?
        };
        out.push(KeyToRecreate { index: k.index, startup: k.startup, destructor: new_destructor, main_value });
    }
    Ok(out)
}

/// Ask the new process to recreate `keys`.
pub(crate) fn recreate(new: &mut NewProcess<'_>, keys: Vec<KeyToRecreate>) -> Result<(), TransferError> {
    if keys.is_empty() {
        return Ok(());
    }
    match new.runtime(RuntimeCommandKind::RecreatePthreadKeys { keys })? {
        RuntimeReply::Done => Ok(()),
        RuntimeReply::Error { message } => Err(TransferError::PthreadKeys { pid: new.pid, message }),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32, destructor: u64, main_value: Option<u64>) -> PthreadKey {
        PthreadKey {
            index,
            startup: false,
            startup_index: false,
            destructor,
            destructor_symbol: None,
            main_value,
            other_values: vec![],
        }
    }

    #[test]
    fn values_are_relocated_in_order_and_nulls_stay_null() {
        let keys = [key(1, 0, Some(0x5000)), key(2, 0, Some(0)), key(4, 0x40_1000, Some(7))];
        let words = value_words(9, &keys).expect("known values");
        assert_eq!(words, [(label(1), 0x5000), (label(4), 7)], "a NULL value is nothing to relocate");
        let moved = to_recreate(9, &keys, &[0x6000, 7], |d| Some(if d == 0x40_1000 { 0x60_1000 } else { d }))
            .expect("every destructor has its counterpart");
        let made = |index, destructor, main_value| KeyToRecreate { index, startup: false, destructor, main_value };
        assert_eq!(moved, [made(1, 0, 0x6000), made(2, 0, 0), made(4, 0x60_1000, 7)]);
    }

    #[test]
    fn a_startup_keys_value_moves_only_when_the_main_thread_changed_it() {
        let startup =
            |index, main_value| PthreadKey { startup: true, destructor: 0x40_1000, ..key(index, 0, main_value) };
        // Reported with a value: the main thread changed it (to NULL for key 3).
        let keys = [startup(0, None), startup(1, Some(0x5000)), startup(3, Some(0))];
        let words = value_words(9, &keys).expect("values");
        assert_eq!(words, [(label(1), 0x5000)]);
        let moved = to_recreate(9, &keys, &[0x6000], |_| None).expect("a startup key's destructor is not looked at");
        let set = |index, main_value| KeyToRecreate { index, startup: true, destructor: 0, main_value };
        assert_eq!(moved, [set(1, 0x6000), set(3, 0)], "key 0: only another thread changed it");
    }

    #[test]
    fn an_unknown_value_or_a_lost_destructor_is_named() {
        let e = value_words(3, &[key(5, 0, None)]).expect_err("unknown");
        assert!(e.to_string().contains("pthread key 5") && e.to_string().contains("process 3"), "{e}");
        let e = to_recreate(3, &[key(6, 0x40_2000, Some(0))], &[], |_| None).expect_err("no counterpart");
        assert!(e.to_string().contains("pthread key 6") && e.to_string().contains("0x402000"), "{e}");
    }
}
