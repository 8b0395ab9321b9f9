//! A program ends when its last thread does, under mcr as without it: the runtime's own
//! thread must not keep it alive (glibc counts it among the program's threads).

mod support;

use std::time::Duration;
use support::*;

#[test]
fn a_program_whose_main_thread_leaves_first_ends_with_its_last_thread() {
    let mcr = Mcr::new("lastthread");
    let transcript = same_output_file_with_and_without_mcr(
        &mcr,
        "lastthread",
        &fixture("lastthread"),
        Duration::from_secs(20), // it must end when its worker does
    );
    assert_eq!(transcript, "main leaves\nworker done\natexit ran\n");
}
