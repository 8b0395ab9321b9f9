//! The wire protocol of mcr and the layout of an instance's runtime directory.
//!
//! Two channels exist:
//! - the **control socket** of an instance (`<runtime dir>/<name>.sock`): the CLI sends one
//!   [`Request`] per line and reads one [`Response`] line back;
//! - the **runtime socket** (an abstract Unix socket, so it still works after the server
//!   chroots): every process of the server connects once, sends [`RuntimeEvent::Hello`],
//!   then answers [`RuntimeCommand`]s with [`RuntimeEvent::Reply`].
//!
//! Every message is one line of JSON, which keeps both ends trivially debuggable
//! (`socat - UNIX-CONNECT:/run/mcr/kvd.sock` works).

pub mod attributes;
pub mod epoll;
pub mod instance;
pub mod messages;
pub mod profiling;
pub mod relocation;
pub mod test_hook;

pub use attributes::{AttributeChange, ProcessAttributes, SEM_UNDO_ADJUSTMENT};
pub use epoll::epoll_registrations;
pub use instance::{InstanceDir, InstanceError, InstanceFiles};
pub use messages::*;
pub use profiling::*;
pub use relocation::{Relocation, RelocationTable};

/// Environment variables the supervisor sets for the server and the runtime reads.
pub mod env {
    /// Abstract socket name (without the leading NUL) the runtime registers with.
    pub const RUNTIME_SOCKET: &str = "MCR_RUNTIME_SOCKET";
    /// Instance name, for messages.
    pub const INSTANCE: &str = "MCR_INSTANCE";
    /// Path of a quiescence profile that overrides the default quiescent points.
    pub const PROFILE: &str = "MCR_PROFILE";
    /// Real-time signal number the runtime uses to interrupt blocked threads.
    pub const KICK_SIGNAL: &str = "MCR_KICK_SIGNAL";
    /// The instance log, where the runtime also writes its warnings.
    pub const INSTANCE_LOG: &str = "MCR_INSTANCE_LOG";
    /// Set to `1` to let the runtime print diagnostics on stderr.
    pub const DEBUG: &str = "MCR_DEBUG";
    /// Overrides where the CLI finds `libmcr.so`.
    pub const RUNTIME_LIB: &str = "MCR_RUNTIME_LIB";
    /// Update: path of the old version's startup logs (JSON) the new version replays.
    pub const REPLAY: &str = "MCR_REPLAY";
    /// Update: the heap slots the old version's processes use (`mcr_alloc::SlotSet` list,
    /// e.g. `0-1,7`), which the new version's heap keeps free, so that any old block can
    /// sit at its old address in the new process.
    pub const HEAP_AVOID: &str = "MCR_HEAP_AVOID";
    /// Update: the descriptor of the socket an update's new server, executed ahead of the
    /// pause, waits on in the runtime's constructor for its go (empty otherwise; the
    /// runtime overwrites the digits once it used them).
    pub const GO_FD: &str = "MCR_GO_FD";
    /// Padding, always the server's last environment variable: its length makes an
    /// update's new version lay out its initial stack (arguments, environment, auxiliary
    /// vector) at the same addresses as the old one, so that a pointer the state keeps
    /// into it (nginx's `ngx_os_argv`) means the same in both. A fresh start reserves
    /// slack; an update's new version takes what the difference needs.
    pub const STACK_PAD: &str = "MCR_STACK_PAD";
    /// In a re-executed `mcr` (an update's new supervisor, its init): the descriptor of
    /// what it is to supervise. Never passed on to the server.
    pub const SUPERVISOR_SPEC_FD: &str = "MCR_SUPERVISOR_SPEC_FD";
    /// Set to `1` by the supervisor when the server runs in its own PID namespace.
    pub const PID_NAMESPACE: &str = "MCR_PID_NAMESPACE";
    /// Set to `1` to run without a PID namespace even where one is permitted.
    pub const NO_PID_NAMESPACE: &str = "MCR_NO_PID_NAMESPACE";
    /// Set to `off` to run without dirty tracking (every page then counts as dirty).
    pub const DIRTY_TRACKING: &str = "MCR_DIRTY_TRACKING";
    /// Overrides the instance directory.
    pub const RUNTIME_DIR: &str = "MCR_RUNTIME_DIR";
    /// Profiling mode (`mcr profile`): the sampling period in microseconds. Unset: the
    /// runtime samples nothing and costs nothing extra.
    pub const PROFILING: &str = "MCR_PROFILING";
    /// Tests only: milliseconds the control thread holds each copy it borrows of a
    /// program's descriptor (at most 500), widening the window in which the program may close it (the
    /// tests show that window is closed).
    pub const TEST_BORROW_HOLD_MS: &str = "MCR_TEST_BORROW_HOLD_MS";
    /// Tests only: milliseconds (at most 10 000) `mcr update` waits, once it has bound a
    /// descriptor socket, for a connection from another process before it asks the new
    /// process to fetch the descriptors, so that a test's intruder certainly meets the
    /// peer check (otherwise whether it gets there first is timing).
    pub const TEST_TRANSFER_WAIT_FOR_INTRUDER_MS: &str = "MCR_TEST_TRANSFER_WAIT_FOR_INTRUDER_MS";
}

/// Serialize one message as a JSON line.
pub fn encode_line<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    // Serialization of these plain data types cannot fail.
    let mut v = serde_json::to_vec(msg).unwrap_or_else(|_| b"null".to_vec());
    v.push(b'\n');
    v
}

/// Parse one JSON line.
pub fn decode_line<'a, T: serde::Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line)
}
