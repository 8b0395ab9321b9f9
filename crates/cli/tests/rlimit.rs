//! A server that lowers its address-space limit after startup (vsftpd sets RLIMIT_AS to
//! 100 MB in each session process) allocates under mcr exactly as without it: mcr's heap
//! maps only the part of its 64 GiB slot in use, so the limit counts what the server uses,
//! and an allocation past the limit fails with ENOMEM as glibc's would.

mod support;

use std::time::Duration;
use support::*;

#[test]
fn a_lowered_address_space_limit_allows_the_same_allocations_under_mcr() {
    let mcr = Mcr::new("rlimit-as");
    let transcript =
        same_output_file_with_and_without_mcr(&mcr, "aslimit", &fixture("aslimit"), Duration::from_secs(30));
    assert!(transcript.contains("mmap 16 MiB: ok") && transcript.ends_with("done\n"), "{transcript}");
}
