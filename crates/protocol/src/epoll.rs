//! Reading a process's epoll interests back from /proc (the kernel offers no other way):
//! the drain re-arms edge-triggered listeners from them, and the state transfer
//! re-creates them in the new version with relocated data.

use crate::EpollRegistration;
use mcr_procfs::Process;

/// Every interest of every epoll instance of process `pid` ("self" for the caller).
pub fn epoll_registrations(pid: &str) -> Vec<EpollRegistration> {
    let process = match pid {
        "self" => Process::Current,
        _ => match pid.parse() {
            Ok(pid) => Process::Pid(pid),
            Err(_) => return Vec::new(),
        },
    };
    mcr_procfs::fd::epoll_interests(process)
        .into_iter()
        .map(|(epfd, i)| EpollRegistration { epfd, fd: i.fd, events: i.events, data: i.data })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_of_this_process_and_of_none() {
        use std::os::fd::AsRawFd;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // SAFETY: plain system calls on descriptors this test owns; `ev` outlives the call.
        let epfd = unsafe {
            let epfd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(epfd >= 0);
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 77 };
            assert_eq!(libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev), 0);
            epfd
        };
        for pid in ["self".to_string(), std::process::id().to_string()] {
            let regs = epoll_registrations(&pid);
            let r = regs.iter().find(|r| r.epfd == epfd).unwrap_or_else(|| panic!("{pid}: {regs:?}"));
            assert_eq!((r.fd, r.data), (sock.as_raw_fd(), 77), "{pid}: {r:?}");
            assert_ne!(r.events & libc::EPOLLIN as u32, 0);
        }
        // SAFETY: the instance created above.
        unsafe { libc::close(epfd) };
        assert_eq!(epoll_registrations("not a pid"), vec![]);
        assert_eq!(epoll_registrations("-1"), vec![]);
    }
}
