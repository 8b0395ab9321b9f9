//! A program ends when its last thread does, under mcr as without it: the runtime's own
//! thread must not keep it alive (glibc counts it among the program's threads).

mod support;

use std::ffi::OsString;
use std::time::Duration;
use support::*;

const EXIT_WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_program_whose_main_thread_leaves_first_ends_with_its_last_thread() {
    let program = fixture("lastthread");
    let mcr = Mcr::new("lastthread");
    let plain_out = mcr.tmp.join("plain.txt");
    let status = std::process::Command::new(&program).arg(&plain_out).status().expect("running lastthread");
    assert!(status.success(), "lastthread without mcr: {status}");
    let plain = std::fs::read_to_string(&plain_out).unwrap();
    assert_eq!(plain, "main leaves\nworker done\natexit ran\n", "without mcr");

    let under_out = mcr.tmp.join("under.txt");
    let argv: Vec<OsString> =
        vec!["run".into(), "--name".into(), "lastthread".into(), "--".into(), program.into(), under_out.clone().into()];
    let out = mcr.spawn(&argv).wait(EXIT_WAIT, "mcr run lastthread (it must end when its worker does)");
    assert_eq!(out.code(), 0, "{out}");
    let under = std::fs::read_to_string(&under_out).unwrap();
    assert_eq!(under, plain, "under mcr (left) and without (right) differ");
}
