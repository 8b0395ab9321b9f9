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

/// The main thread's values for the tracer to relocate, one word per key that has one.
pub(crate) fn value_words(pid: i32, keys: &[PthreadKey]) -> Result<Vec<(String, u64)>, TransferError> {
    keys.iter()
        .filter(|k| k.main_value != Some(0))
        .map(|k| match k.main_value {
            Some(v) => Ok((label(k.index), v)),
            None => Err(TransferError::PthreadKey {
                pid,
                index: k.index,
                why: "the main thread's value is unknown (it did not park since the key was created)".into(),
            }),
        })
        .collect()
}

/// What the new process creates: each key with its destructor moved to the new binary
/// (`destructor`: None when it has no counterpart there) and the relocated value
/// (`relocated`: the tracer's answer for [`value_words`], in its order).
pub(crate) fn to_recreate(
    pid: i32,
    keys: &[PthreadKey],
    relocated: &[u64],
    destructor: impl Fn(u64) -> Option<u64>,
) -> Result<Vec<KeyToRecreate>, TransferError> {
    let mut values = relocated.iter();
    keys.iter()
        .map(|k| {
            let main_value = if k.main_value == Some(0) { 0 } else { values.next().copied().unwrap_or(0) };
            let new_destructor = destructor(k.destructor).ok_or_else(|| TransferError::PthreadKey {
                pid,
                index: k.index,
                why: format!(
                    "its destructor {:#x}{} has no counterpart in the new binary",
                    k.destructor,
                    k.destructor_symbol.as_ref().map(|s| format!(" ({})", s.function)).unwrap_or_default()
                ),
            })?;
            Ok(KeyToRecreate { index: k.index, destructor: new_destructor, main_value })
        })
        .collect()
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
        assert_eq!(
            moved,
            [
                KeyToRecreate { index: 1, destructor: 0, main_value: 0x6000 },
                KeyToRecreate { index: 2, destructor: 0, main_value: 0 },
                KeyToRecreate { index: 4, destructor: 0x60_1000, main_value: 7 },
            ]
        );
    }

    #[test]
    fn an_unknown_value_or_a_lost_destructor_is_named() {
        let e = value_words(3, &[key(5, 0, None)]).expect_err("unknown");
        assert!(e.to_string().contains("pthread key 5") && e.to_string().contains("process 3"), "{e}");
        let e = to_recreate(3, &[key(6, 0x40_2000, Some(0))], &[], |_| None).expect_err("no counterpart");
        assert!(e.to_string().contains("pthread key 6") && e.to_string().contains("0x402000"), "{e}");
    }
}
