//! pthread keys the program creates after startup (issue 12: the state suite's `tls-key`
//! lost its key and value). The new version's startup does not create them, so an update
//! recreates each at the index the old version's threads use (the program keeps its
//! `pthread_key_t` in a global, which moves as it is) and sets the main thread's value,
//! relocated like any pointer.
//!
//! glibc's per-thread key data lives in its private `struct pthread`: the runtime never
//! reads it. Each thread reads its own values with `pthread_getspecific` when it parks
//! ([`on_park`]), and the new version's main thread sets its values with
//! `pthread_setspecific` as it leaves its parking place ([`on_unpark`]).
//!
//! Keys created during startup are the startup's (the new version's startup creates its
//! own), as are keys glibc or a library creates through libc-internal entry points,
//! which bypass the interposed symbols. A key made after startup at the index of a
//! startup key the program deleted is reported as such: the new version's startup holds
//! that index, and the preflight names the key.

use crate::sync::SpinLock;
use crate::threads::{self, Slot};
use mcr_protocol::{KeyToRecreate, PthreadKey, RuntimeReply};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};

/// glibc's PTHREAD_KEYS_MAX: no loop here creates more keys than a process can have.
const KEYS_MAX: usize = 1024;

/// A key the program created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    destructor: usize,
    /// Made during startup: the new version's startup makes its own at this index, and
    /// only a value a thread changed since its startup moves.
    startup: bool,
    /// A startup key the program deleted after startup: kept for its index (a key made
    /// at it later cannot have it back in the new version).
    deleted: bool,
}

/// The program's keys, in the order made.
#[derive(Debug, Default, PartialEq, Eq)]
struct Noted {
    keys: Vec<Key>,
}

impl Noted {
    const fn new() -> Self {
        Self { keys: Vec::new() }
    }

    fn created(&mut self, index: u32, destructor: usize, startup: bool) {
        self.keys.retain(|k| k.index != index || (k.startup && k.deleted && !startup));
        self.keys.push(Key { index, destructor, startup, deleted: false });
    }

    fn deleted(&mut self, index: u32, startup: bool) {
        if !startup {
            if let Some(k) = self.keys.iter_mut().find(|k| k.index == index && k.startup && !k.deleted) {
                k.deleted = true;
                return;
            }
        }
        self.keys.retain(|k| k.index != index || (k.startup && k.deleted));
    }

    /// The keys that exist.
    fn live(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(|k| !k.deleted)
    }

    /// Whether `index` was a startup key's.
    fn startup_index(&self, index: u32) -> bool {
        self.keys.iter().any(|k| k.index == index && k.startup)
    }
}

static KEYS: SpinLock<Noted> = SpinLock::new(Noted::new());
/// How many keys exist, read without the lock on every park.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// One thread's values of the keys: at its first quiescent point (its startup's end), or
/// when it last parked.
struct ThreadValues {
    tid: i32,
    is_main: bool,
    values: Vec<(u32, u64)>,
}

static AT_STARTUP: SpinLock<Vec<ThreadValues>> = SpinLock::new(Vec::new());
static PARKED_VALUES: SpinLock<Vec<ThreadValues>> = SpinLock::new(Vec::new());

/// For the main thread to set as it leaves its parking place: (index, value).
static FOR_MAIN_THREAD: SpinLock<Vec<(u32, u64)>> = SpinLock::new(Vec::new());
static MAIN_THREAD_WORK: AtomicBool = AtomicBool::new(false);

/// Whether a key the calling thread creates or deletes now is to be noted: the call is
/// the program's (not the runtime's, not a re-entered hook).
#[inline(always)]
pub fn noting() -> bool {
    crate::is_active() && !threads::is_internal()
}

fn startup_done() -> bool {
    crate::quiesce::STARTUP_DONE.load(Acquire)
}

/// The program created key `index` with `destructor` (0: none).
pub fn note_created(index: u32, destructor: usize) {
    let _internal = threads::InternalGuard::enter();
    let mut noted = KEYS.lock();
    noted.created(index, destructor, !startup_done());
    COUNT.store(noted.live().count(), Release);
}

/// The program deleted key `index`.
pub fn note_deleted(index: u32) {
    let _internal = threads::InternalGuard::enter();
    let mut noted = KEYS.lock();
    noted.deleted(index, !startup_done());
    COUNT.store(noted.live().count(), Release);
}

/// The calling thread's values of the keys that exist (and are startup's, with
/// `startup_only`).
fn own_values(startup_only: bool) -> Vec<(u32, u64)> {
    let indices: Vec<u32> = KEYS.lock().live().filter(|k| k.startup || !startup_only).map(|k| k.index).collect();
    indices
        .into_iter()
        // SAFETY: pthread_getspecific reads the calling thread's own value of a key the
        // program created; for a key deleted meanwhile it returns NULL or a stale value,
        // never faults (glibc checks the index against PTHREAD_KEYS_MAX).
        .map(|k| (k, unsafe { libc::pthread_getspecific(k) } as u64))
        .collect()
}

fn store(table: &SpinLock<Vec<ThreadValues>>, slot: &Slot, values: Vec<(u32, u64)>) {
    let tid = slot.tid.load(Acquire);
    let mut all = table.lock();
    all.retain(|t| t.tid != tid);
    all.push(ThreadValues { tid, is_main: slot.is_main.load(Acquire), values });
}

/// The calling thread reached its first quiescent point: the values it has now are its
/// startup's (what the new version's startup sets for itself).
pub fn on_first_quiescent_point(slot: &Slot) {
    if COUNT.load(Acquire) == 0 {
        return;
    }
    let _internal = threads::InternalGuard::enter();
    store(&AT_STARTUP, slot, own_values(true));
}

/// The calling thread, about to park: note its values of the keys (before it says it
/// parked, so that a quiesced process has them all).
pub fn on_park(slot: &Slot) {
    if COUNT.load(Acquire) == 0 {
        return;
    }
    let _internal = threads::InternalGuard::enter();
    store(&PARKED_VALUES, slot, own_values(false));
}

/// The keys, their destructors and the values of the threads that live, as they were
/// when each last parked: every key made after startup, and the startup keys a thread
/// changed the value of since its startup.
pub fn report() -> Vec<PthreadKey> {
    let _internal = threads::InternalGuard::enter();
    // Each key, and whether it was made after startup at a startup key's index.
    let keys: Vec<(Key, bool)> = {
        let noted = KEYS.lock();
        noted.live().map(|k| (*k, !k.startup && noted.startup_index(k.index))).collect()
    };
    if keys.is_empty() {
        return Vec::new();
    }
    let live: Vec<i32> = threads::used().map(|(_, s)| s.tid.load(Acquire)).collect();
    let parked = PARKED_VALUES.lock();
    let at_startup = AT_STARTUP.lock();
    let value_in = |table: &[ThreadValues], tid: i32, k: u32| {
        table.iter().find(|t| t.tid == tid).and_then(|t| t.values.iter().find(|v| v.0 == k)).map(|v| v.1)
    };
    let mut out = Vec::new();
    for (key, startup_index) in keys {
        let index = key.index;
        // What a thread's startup left (a key made after startup: NULL).
        let initial = |tid: i32| if key.startup { value_in(&at_startup, tid, index).unwrap_or(0) } else { 0 };
        let threads = parked.iter().filter(|t| live.contains(&t.tid));
        let main = parked.iter().find(|t| t.is_main && live.contains(&t.tid));
        let main_value = main.and_then(|t| value_in(&parked, t.tid, index));
        let main_initial = main.map_or(0, |t| initial(t.tid));
        let other_values: Vec<(i32, u64)> = threads
            .filter(|t| !t.is_main)
            .filter_map(|t| value_in(&parked, t.tid, index).filter(|&v| v != initial(t.tid)).map(|v| (t.tid, v)))
            .collect();
        if key.startup && main_value.is_none_or(|v| v == main_initial) && other_values.is_empty() {
            continue;
        }
        out.push(PthreadKey {
            index,
            startup: key.startup,
            startup_index,
            destructor: key.destructor as u64,
            destructor_symbol: (key.destructor != 0 && !key.startup)
                .then(|| crate::attributes::handler_symbol(key.destructor as u64))
                .flatten(),
            main_value,
            other_values,
        });
    }
    out
}

/// What creates and deletes keys: glibc, or a model of it in tests.
pub trait KeyTable {
    /// A new key with `destructor`: its index, or the error number.
    fn create(&mut self, destructor: usize) -> Result<u32, i32>;
    fn delete(&mut self, index: u32);
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecreateError {
    /// The index is taken in this process already (by its startup, or by a library).
    InUse(u32),
    Create {
        index: u32,
        errno: i32,
    },
    TooMany(u32),
}

impl std::fmt::Display for RecreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecreateError::InUse(k) => write!(
                f,
                "pthread key {k}, which the old version created after its startup, is in use in the new version \
                 already (its startup created it); the key cannot be recreated at its index"
            ),
            RecreateError::Create { index, errno } => write!(
                f,
                "pthread key {index}: pthread_key_create failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            RecreateError::TooMany(k) => write!(f, "pthread key {k}: too many keys to reach its index"),
        }
    }
}

/// Create each of `wanted` (index, destructor) at its index. glibc hands out the lowest
/// free index: keys are created in index order until the index comes up, and those
/// created on the way (free indices below it) are deleted at the end. An index that is
/// taken shows as a key created above it. On an error every key made here is deleted.
pub fn recreate_at(table: &mut dyn KeyTable, wanted: &[(u32, usize)]) -> Result<(), RecreateError> {
    let mut wanted = wanted.to_vec();
    wanted.sort_by_key(|w| w.0);
    let mut made: Vec<u32> = Vec::new();
    let mut filler: Vec<u32> = Vec::new();
    let mut result = Ok(());
    'wanted: for &(index, destructor) in &wanted {
        for _ in 0..KEYS_MAX {
            let got = match table.create(destructor) {
                Ok(got) => got,
                Err(errno) => {
                    result = Err(RecreateError::Create { index, errno });
                    break 'wanted;
                }
            };
            if got == index {
                made.push(got);
                continue 'wanted;
            }
            if got > index {
                filler.push(got);
                result = Err(RecreateError::InUse(index));
                break 'wanted;
            }
            filler.push(got);
        }
        result = Err(RecreateError::TooMany(index));
        break;
    }
    for k in filler {
        table.delete(k);
    }
    if result.is_err() {
        for k in made {
            table.delete(k);
        }
    }
    result
}

/// glibc's key table.
struct Glibc;

impl KeyTable for Glibc {
    fn create(&mut self, destructor: usize) -> Result<u32, i32> {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a live local for the key. The destructor is the address of a function
        // of the program's new binary (or a library's) that takes one pointer, as the old
        // version's was: the update relocated it by symbol.
        let rc = unsafe {
            let dtor: Option<unsafe extern "C" fn(*mut libc::c_void)> = core::mem::transmute(destructor);
            crate::real::pthread_key_create()(&mut key, dtor)
        };
        if rc == 0 {
            Ok(key)
        } else {
            Err(rc)
        }
    }

    fn delete(&mut self, index: u32) {
        // SAFETY: a key this module created a moment ago.
        unsafe { crate::real::pthread_key_delete()(index) };
    }
}

/// State transfer, new version (control thread, the program's threads parked): create
/// the old version's keys at their indices; the main thread sets its values on resuming.
pub fn recreate(keys: &[KeyToRecreate]) -> RuntimeReply {
    let _internal = threads::InternalGuard::enter();
    let _errno = crate::errno::ErrnoGuard::save();
    let (live, startup): (Vec<u32>, Vec<u32>) = {
        let noted = KEYS.lock();
        (noted.live().map(|k| k.index).collect(), noted.live().filter(|k| k.startup).map(|k| k.index).collect())
    };
    // A startup key's value moves only to this version's own startup key at that index.
    if let Some(k) = keys.iter().find(|k| k.startup && !startup.contains(&k.index)) {
        return RuntimeReply::Error {
            message: format!(
                "pthread key {}: the old version's startup made it and its main thread changed its value since, \
                 but the new version's startup made no key there",
                k.index
            ),
        };
    }
    // A key this process noted already is there: a process forked from one whose keys
    // were recreated inherited them.
    let wanted: Vec<(u32, usize)> = keys
        .iter()
        .filter(|k| !k.startup && !live.contains(&k.index))
        .map(|k| (k.index, k.destructor as usize))
        .collect();
    if let Err(e) = recreate_at(&mut Glibc, &wanted) {
        return RuntimeReply::Error { message: e.to_string() };
    }
    {
        // Noted as made after startup, as they were in the old version: the next update
        // moves them again.
        let mut noted = KEYS.lock();
        for &(index, destructor) in &wanted {
            noted.created(index, destructor, false);
        }
        COUNT.store(noted.live().count(), Release);
    }
    // A startup key's value is set even when it is NULL: the new startup may have set one.
    let values: Vec<(u32, u64)> =
        keys.iter().filter(|k| k.startup || k.main_value != 0).map(|k| (k.index, k.main_value)).collect();
    if !values.is_empty() {
        *FOR_MAIN_THREAD.lock() = values;
        MAIN_THREAD_WORK.store(true, Release);
    }
    RuntimeReply::Done
}

/// The main thread, leaving its parking place: set the values the update carried over.
/// Not marked runtime-internal: `pthread_setspecific` of a key past the first 32 makes
/// glibc allocate the thread's second-level block, which is the program's memory (glibc
/// frees it when the thread exits).
pub fn on_unpark(is_main: bool) {
    if !is_main || !MAIN_THREAD_WORK.swap(false, AcqRel) {
        return;
    }
    let _errno = crate::errno::ErrnoGuard::save();
    let values = {
        let _internal = threads::InternalGuard::enter();
        core::mem::take(&mut *FOR_MAIN_THREAD.lock())
    };
    for (index, value) in values {
        // SAFETY: a key recreated for this value; the value is the old thread's, relocated
        // into this process (glibc stores it and never dereferences it).
        let rc = unsafe { libc::pthread_setspecific(index, value as *const libc::c_void) };
        if rc != 0 {
            let _internal = threads::InternalGuard::enter();
            crate::diag::warn(&format!("could not set the main thread's value of pthread key {index}: error {rc}"));
        }
    }
}

/// In a fork child: the keys are the parent's (the key table is the process's), and its
/// only thread has neither completed its startup nor parked yet.
pub fn reset_after_fork() {
    KEYS.force_unlock();
    AT_STARTUP.force_unlock();
    PARKED_VALUES.force_unlock();
    FOR_MAIN_THREAD.force_unlock();
    // The child completes a startup of its own (its first quiescent point notes it).
    AT_STARTUP.lock().clear();
    PARKED_VALUES.lock().clear();
    FOR_MAIN_THREAD.lock().clear();
    MAIN_THREAD_WORK.store(false, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's rule: the lowest free index.
    #[derive(Default)]
    struct Model {
        used: std::collections::BTreeMap<u32, usize>,
        creates: usize,
    }

    impl KeyTable for Model {
        fn create(&mut self, destructor: usize) -> Result<u32, i32> {
            self.creates += 1;
            let free = (0..KEYS_MAX as u32).find(|k| !self.used.contains_key(k)).ok_or(libc::EAGAIN)?;
            self.used.insert(free, destructor);
            Ok(free)
        }

        fn delete(&mut self, index: u32) {
            self.used.remove(&index);
        }
    }

    #[test]
    fn startup_keys_deleted_after_startup_keep_their_index_noted() {
        let mut n = Noted::new();
        n.created(0, 0, true);
        n.created(1, 0x10, true);
        n.created(2, 0, true);
        n.deleted(2, true);
        assert!(!n.startup_index(2), "deleted during startup: startup's no more");
        n.deleted(1, false);
        n.created(1, 0x20, false);
        n.created(3, 0x30, false);
        n.deleted(3, false);
        let live: Vec<(u32, bool)> = n.live().map(|k| (k.index, k.startup)).collect();
        assert_eq!(live, [(0, true), (1, false)], "key 1 made again after startup; key 3 gone");
        assert!(n.startup_index(1) && !n.startup_index(3));
        n.deleted(1, false);
        n.created(1, 0x40, false);
        assert_eq!(n.live().filter(|k| k.index == 1).count(), 1, "one key per index");
        assert!(n.startup_index(1), "still at a startup key's index");
    }

    #[test]
    fn keys_are_recreated_at_their_indices_and_the_fillers_deleted() {
        let mut t = Model::default();
        t.used.insert(0, 0);
        t.used.insert(3, 0);
        recreate_at(&mut t, &[(5, 0x55), (2, 0x22)]).expect("recreated");
        let used: Vec<(u32, usize)> = t.used.into_iter().collect();
        assert_eq!(used, [(0, 0), (2, 0x22), (3, 0), (5, 0x55)], "1 and 4 were made on the way, then deleted");
    }

    #[test]
    fn an_index_taken_already_is_named_and_nothing_made_stays() {
        let mut t = Model::default();
        for k in [0, 1, 4] {
            t.used.insert(k, 0);
        }
        let e = recreate_at(&mut t, &[(2, 0x22), (4, 0x44)]).expect_err("4 is taken");
        assert_eq!(e, RecreateError::InUse(4));
        assert!(e.to_string().contains("pthread key 4"), "{e}");
        let used: Vec<u32> = t.used.into_keys().collect();
        assert_eq!(used, [0, 1, 4], "key 2 and the one made at 3 were deleted again");
    }

    #[test]
    fn a_failing_create_is_reported_for_the_key_it_was_for() {
        let mut t = Model::default();
        for k in (0..KEYS_MAX as u32).filter(|&k| k != 7) {
            t.used.insert(k, 0);
        }
        let e = recreate_at(&mut t, &[(7, 1), (9, 1)]).expect_err("the table is full after 7");
        assert_eq!(e, RecreateError::Create { index: 9, errno: libc::EAGAIN });
        assert!(!t.used.contains_key(&7), "key 7 deleted again");
        assert_eq!(recreate_at(&mut Model::default(), &[]), Ok(()));
    }
}
