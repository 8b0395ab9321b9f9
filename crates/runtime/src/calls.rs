//! The wrapped blocking calls.

/// One list makes the enum (its discriminant is the call's index), the table of every
/// call in index order and the libc names: a call can be added in one place only.
macro_rules! wrapped_calls {
    ($($variant:ident => $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Call {
            $($variant,)*
        }

        const ALL: &[Call] = &[$(Call::$variant,)*];

        impl Call {
            pub fn name(self) -> &'static str {
                match self {
                    $(Call::$variant => $name,)*
                }
            }
        }
    };
}

wrapped_calls! {
    Accept => "accept",
    Accept4 => "accept4",
    EpollWait => "epoll_wait",
    EpollPwait => "epoll_pwait",
    EpollPwait2 => "epoll_pwait2",
    Poll => "poll",
    Ppoll => "ppoll",
    Select => "select",
    Pselect => "pselect",
    Read => "read",
    Readv => "readv",
    Recv => "recv",
    Recvfrom => "recvfrom",
    Recvmsg => "recvmsg",
    Nanosleep => "nanosleep",
    ClockNanosleep => "clock_nanosleep",
    Sleep => "sleep",
    Usleep => "usleep",
    CondWait => "pthread_cond_wait",
    CondTimedwait => "pthread_cond_timedwait",
    CondClockwait => "pthread_cond_clockwait",
    SemWait => "sem_wait",
    SemTimedwait => "sem_timedwait",
    SemClockwait => "sem_clockwait",
    Sigsuspend => "sigsuspend",
    Sigwait => "sigwait",
    Sigwaitinfo => "sigwaitinfo",
    Sigtimedwait => "sigtimedwait",
    Pause => "pause",
    Wait => "wait",
    Waitpid => "waitpid",
    Waitid => "waitid",
    Wait3 => "wait3",
    Wait4 => "wait4",
    Semop => "semop",
    Semtimedop => "semtimedop",
    Msgrcv => "msgrcv",
}

impl Call {
    /// An event loop's wait: its timeout and descriptor set come from the program's state.
    pub fn waits_for_events(self) -> bool {
        matches!(
            self,
            Call::EpollWait
                | Call::EpollPwait
                | Call::EpollPwait2
                | Call::Poll
                | Call::Ppoll
                | Call::Select
                | Call::Pselect
        )
    }

    /// A wait that, run with no time left, reports what is ready now and changes nothing
    /// else (select's descriptor sets would come back emptied).
    pub fn can_ask_without_waiting(self) -> bool {
        matches!(self, Call::EpollWait | Call::EpollPwait | Call::EpollPwait2 | Call::Poll | Call::Ppoll)
    }

    pub fn from_index(i: u32) -> Call {
        ALL.get(i as usize).copied().unwrap_or(Call::Read)
    }

    /// Reads, receives and accepts block only on blocking descriptors: on a non-blocking
    /// one (an event-driven server mid-event) they are not a quiescent point.
    pub fn depends_on_fd(self) -> bool {
        use Call::*;
        matches!(self, Read | Readv | Recv | Recvfrom | Recvmsg | Accept | Accept4)
    }

    /// Woken by a condition-variable broadcast rather than by a signal.
    /// Calls that wait on descriptors the runtime does not record (a poll or select set):
    /// a thread in one may be serving any descriptor.
    pub fn watches_a_set(self) -> bool {
        use Call::*;
        matches!(self, Poll | Ppoll | Select | Pselect)
    }

    pub fn is_condvar(self) -> bool {
        matches!(self, Call::CondWait | Call::CondTimedwait | Call::CondClockwait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_for_every_call() {
        for (i, c) in ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{} is out of order in ALL", c.name());
            assert_eq!(Call::from_index(i as u32), *c);
        }
    }

    #[test]
    fn names_are_unique_libc_names() {
        let mut names: Vec<&str> = ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn fd_dependent_calls_are_reads_and_accepts() {
        assert!(Call::Read.depends_on_fd() && Call::Accept4.depends_on_fd());
        assert!(!Call::EpollWait.depends_on_fd() && !Call::Sigsuspend.depends_on_fd());
        assert!(Call::CondWait.is_condvar() && !Call::SemWait.is_condvar());
    }
}
