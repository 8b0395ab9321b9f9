//! A server that lowers its address-space limit after startup (vsftpd sets RLIMIT_AS to
//! 100 MB in each session process) allocates under mcr exactly as without it: mcr's heap
//! maps only the part of its 64 GiB slot in use, so the limit counts what the server uses,
//! and an allocation past the limit fails with ENOMEM as glibc's would.

mod support;

use std::ffi::OsString;
use std::time::Duration;
use support::*;

const EXIT_WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_lowered_address_space_limit_allows_the_same_allocations_under_mcr() {
    let aslimit = fixture("aslimit");
    let mcr = Mcr::new("rlimit-as");
    let plain_out = mcr.tmp.join("plain.txt");
    let status = std::process::Command::new(&aslimit).arg(&plain_out).status().expect("running aslimit");
    assert!(status.success(), "aslimit without mcr: {status}");
    let plain = std::fs::read_to_string(&plain_out).unwrap();
    assert!(plain.contains("mmap 16 MiB: ok") && plain.ends_with("done\n"), "without mcr:\n{plain}");

    let under_out = mcr.tmp.join("under.txt");
    let argv: Vec<OsString> =
        vec!["run".into(), "--name".into(), "aslimit".into(), "--".into(), aslimit.into(), under_out.clone().into()];
    let out = mcr.spawn(&argv).wait(EXIT_WAIT, "mcr run aslimit");
    assert_eq!(out.code(), 0, "{out}");
    let under = std::fs::read_to_string(&under_out).unwrap();
    assert_eq!(under, plain, "under mcr (left) and without (right) differ");
}
