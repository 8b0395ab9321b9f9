//! A sleep lasts what the program asked for under mcr too: a program that sleeps again
//! with the time left after a signal (nanosleep's `rem`, clock_nanosleep's `rem`,
//! sleep()'s return value) sleeps its whole time, even when the signal arrives while mcr
//! holds the thread parked at its quiescent point; and no longer than that, as for a
//! process the kernel stopped (the time parked counts as time slept).

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const SECONDS: u64 = 4;
/// How long the test keeps the sleeper parked: long enough that a sleep which does not
/// count it (or counts it twice) is off by far more than scheduling noise.
const HOLD: Duration = Duration::from_secs(2);

/// clock_nanosleep(2), which glibc's nanosleep and sleep use too (x86_64), and nanosleep(2).
const SLEEP_SYSCALLS: [i64; 2] = [230, 35];

/// The reports sleepd wrote to `out` so far: (milliseconds slept, interruptions, handled).
fn reports(out: &Path) -> Vec<(u64, u64, u64)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| w.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad report {l:?}"));
            (num(1), num(3), num(5))
        })
        .collect()
}

/// Quiesce sleepd mid-sleep, send it a signal it handles while parked, resume it: the
/// sleep that was interrupted still lasts its whole time.
fn sleep_survives_a_signal_while_parked(call: &str) {
    let mcr = Mcr::new(&format!("sleep-{call}"));
    let out = mcr.tmp.join("report");
    let program = fixture("sleepd");
    let secs = SECONDS.to_string();
    let inst = mcr.start(
        "sleepd",
        &program,
        &["--out".as_ref(), out.as_os_str(), "--call".as_ref(), call.as_ref(), "--seconds".as_ref(), secs.as_ref()],
    );
    let needle = out.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            pids = host_pids_containing(&needle)
                .into_iter()
                .filter(|&p| cmdline(p).is_some_and(|argv| argv[0].ends_with("sleepd")))
                .collect();
            pids.len() == 1
        }),
        "expected one sleepd process: {pids:?}"
    );
    let pid = pids[0];
    assert!(wait_in_syscall(pid, &SLEEP_SYSCALLS), "sleepd is not sleeping: {:?}", current_syscall(pid));

    let q = inst.quiesce(2000);
    assert_eq!(q.code(), 0, "{q}");
    kill(pid, libc::SIGUSR1);
    assert!(wait_signal_delivered(pid, libc::SIGUSR1), "SIGUSR1 still pending while parked");
    // The scenario itself, not a wait for a condition: the thread stays parked a while.
    std::thread::sleep(HOLD);
    let r = inst.resume();
    assert_eq!(r.code(), 0, "{r}");

    assert!(
        wait_until(Duration::from_secs(SECONDS + 10), || !reports(&out).is_empty()),
        "sleepd never finished its first sleep; log:\n{}",
        inst.log()
    );
    let (slept_ms, interrupted, handled) = reports(&out)[0];
    assert_eq!(handled, 1, "the program's handler ran for the SIGUSR1 sent while parked");
    assert!(interrupted >= 1, "{call} reported the signal as an interruption ({interrupted})");
    assert!(
        slept_ms >= SECONDS * 1000,
        "{call} with the time left after the signal slept {slept_ms} ms of {SECONDS} s: it woke early"
    );
    let limit = SECONDS * 1000 + HOLD.as_millis() as u64 / 2;
    assert!(
        slept_ms < limit,
        "{call} with the time left after the signal slept {slept_ms} ms of {SECONDS} s (parked {HOLD:?}): \
         the time parked was not counted as time slept"
    );
}

#[test]
fn nanosleep_with_rem_sleeps_its_whole_time_after_a_signal_while_parked() {
    sleep_survives_a_signal_while_parked("nanosleep");
}

#[test]
fn clock_nanosleep_with_rem_sleeps_its_whole_time_after_a_signal_while_parked() {
    sleep_survives_a_signal_while_parked("clock_nanosleep");
}

#[test]
fn sleep_with_its_return_value_sleeps_its_whole_time_after_a_signal_while_parked() {
    sleep_survives_a_signal_while_parked("sleep");
}
