//! One connection to an instance's supervisor over its control socket: a request line
//! out, an answer line back (`mcr_protocol`).

use mcr_protocol::{
    InstanceDir, InstanceError, InstanceStatus, ProcessLog, Request, Response, RuntimeCommandKind, RuntimeReply,
    UpdateInfo,
};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Why a request to a supervisor got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("no running instance named '{name}' (removed the stale files of a dead instance from {})", dir.display())]
    Stale { name: String, dir: PathBuf },
    #[error("cannot connect to instance '{name}' at {}", socket.display())]
    Connect {
        name: String,
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send the request")]
    Send(#[source] std::io::Error),
    #[error("cannot read the answer")]
    Receive(#[source] std::io::Error),
    #[error("the supervisor closed the connection without answering (it is exiting)")]
    Closed,
    #[error("the supervisor sent an answer mcr cannot read")]
    Garbled(#[source] serde_json::Error),
    /// The caller's `give_up` said so while waiting for a long answer.
    #[error("interrupted")]
    Interrupted,
    /// The supervisor (or a runtime behind it) answered with an error.
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from the supervisor: {0:?}")]
    Unexpected(Box<Response>),
}

impl ClientError {
    /// An answer the request did not expect: the supervisor's own error, or anything else.
    pub fn unexpected(resp: Response) -> Self {
        match resp {
            Response::Error { message } => ClientError::Refused(message),
            other => ClientError::Unexpected(Box::new(other)),
        }
    }
}

/// How long a live instance's control socket may refuse connections: its supervisor died
/// and the namespace's init is starting another, which binds a fresh socket.
const SUPERVISOR_RESTART: Duration = Duration::from_secs(3);

/// Connect to a live instance's control socket, waiting out a supervisor's restart.
fn connect_live(files: &mcr_protocol::InstanceFiles) -> std::io::Result<UnixStream> {
    let t = std::time::Instant::now();
    loop {
        match UnixStream::connect(&files.socket) {
            Err(e)
                if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound)
                    && t.elapsed() < SUPERVISOR_RESTART
                    && files.is_live() =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// How often a long request checks whether its caller gave up.
const GIVE_UP_POLL: Duration = Duration::from_millis(100);

pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Connect to the supervisor of instance `name`; a dead instance's files are removed
    /// on the way (and said so).
    pub fn open(dir: &InstanceDir, name: &str) -> Result<Self, ClientError> {
        let files = dir.files(name)?;
        files.check_access(&dir.path)?;
        if !files.is_live() {
            if files.clean_stale() {
                return Err(ClientError::Stale { name: name.to_string(), dir: dir.path.clone() });
            }
            return Err(InstanceError::NotRunning { name: name.to_string(), dir: dir.path.clone() }.into());
        }
        let connect_error =
            |source| ClientError::Connect { name: name.to_string(), socket: files.socket.clone(), source };
        // std opens sockets close-on-exec; a supervisor this process forks later closes its
        // copy (see `launch`), so closing ours is what the supervisor sees.
        let stream = connect_live(&files).map_err(connect_error)?;
        let reader = stream.try_clone().map_err(connect_error)?;
        Ok(Self { reader: BufReader::new(reader), writer: stream })
    }

    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(ClientError::Receive)?;
        decode(&line)
    }

    /// Like [`Connection::request`] for a request that may take long: `give_up` is asked
    /// every 100 ms while waiting, and ends the wait with [`ClientError::Interrupted`]
    /// when it says so. The answer may still come later: the connection is then out of
    /// step and must not be used again.
    pub fn request_until(&mut self, req: &Request, give_up: &dyn Fn() -> bool) -> Result<Response, ClientError> {
        self.send(req)?;
        self.reader.get_ref().set_read_timeout(Some(GIVE_UP_POLL)).map_err(ClientError::Receive)?;
        let mut line = String::new();
        // A line cut by a timeout stays in `line` and the next read completes it.
        let got = loop {
            match self.reader.read_line(&mut line) {
                Ok(_) => break Ok(()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if give_up() {
                        break Err(ClientError::Interrupted);
                    }
                }
                Err(e) => break Err(ClientError::Receive(e)),
            }
        };
        self.reader.get_ref().set_read_timeout(None).map_err(ClientError::Receive)?;
        got?;
        decode(&line)
    }

    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        self.writer.write_all(&mcr_protocol::encode_line(req)).map_err(ClientError::Send)
    }

    pub fn status(&mut self) -> Result<InstanceStatus, ClientError> {
        match self.request(&Request::Status)? {
            Response::Status(st) => Ok(st),
            other => Err(ClientError::unexpected(other)),
        }
    }

    /// Every process's startup log.
    pub fn startup_logs(&mut self) -> Result<Vec<ProcessLog>, ClientError> {
        self.startup_logs_refreshing(&[])
    }

    /// Every process's startup log, or for the processes of `refresh` (PID,
    /// registration) whose log the caller holds, only what changed
    /// ([`ProcessLog::refresh`]).
    pub fn startup_logs_refreshing(&mut self, refresh: &[(i32, u64)]) -> Result<Vec<ProcessLog>, ClientError> {
        match self.request(&Request::StartupLogs { refresh: refresh.to_vec() })? {
            Response::StartupLogs { processes } => Ok(processes),
            other => Err(ClientError::unexpected(other)),
        }
    }

    /// How the instance was launched, and its processes now.
    pub fn update_info(&mut self) -> Result<UpdateInfo, ClientError> {
        match self.request(&Request::UpdateInfo)? {
            Response::UpdateInfo(info) => Ok(info),
            other => Err(ClientError::unexpected(other)),
        }
    }

    /// Release every parked thread (and end a drain); how many processes resumed.
    pub fn resume(&mut self) -> Result<usize, ClientError> {
        match self.request(&Request::Resume)? {
            Response::Resumed { processes } => Ok(processes),
            other => Err(ClientError::unexpected(other)),
        }
    }

    /// One command to the runtime of process `pid` (its PID in the instance), through the
    /// supervisor. A runtime's error reply is [`ClientError::Refused`].
    pub fn runtime(&mut self, pid: i32, command: RuntimeCommandKind) -> Result<RuntimeReply, ClientError> {
        match self.request(&Request::Runtime { pid, command })? {
            Response::Runtime { reply: RuntimeReply::Error { message } } => Err(ClientError::Refused(message)),
            Response::Runtime { reply } => Ok(reply),
            other => Err(ClientError::unexpected(other)),
        }
    }
}

impl Connection {
    /// The descriptors process `pid` made after its startup and still holds, other than
    /// client connections (its runtime's `PostStartupFds`).
    pub fn post_startup_fds(&mut self, pid: i32) -> Result<Vec<i32>, ClientError> {
        match self.runtime(pid, RuntimeCommandKind::PostStartupFds)? {
            RuntimeReply::PostStartupFds { fds } => Ok(fds),
            reply => Err(ClientError::unexpected(Response::Runtime { reply })),
        }
    }
}

fn decode(line: &str) -> Result<Response, ClientError> {
    if line.is_empty() {
        return Err(ClientError::Closed);
    }
    mcr_protocol::decode_line(line.trim_end().as_bytes()).map_err(ClientError::Garbled)
}

/// One request on a connection of its own.
pub fn request(dir: &InstanceDir, name: &str, req: &Request) -> Result<Response, ClientError> {
    Connection::open(dir, name)?.request(req)
}
