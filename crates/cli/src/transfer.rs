//! `mcr update`, state transfer (paper §6): after the new version replayed its startup
//! and parked, and before commit, each old process's state moves into its new
//! counterpart: globals and the heap blocks they reach, type-transformed
//! (`mcr-tracer`), the client connections still open (installed at their old numbers)
//! and their epoll registrations (data pointers relocated). The old processes are only
//! read, so a failure here rolls back with nothing to undo.

use crate::client::Connection;
use mcr_heap::{HeapIndex, ProcessMemory, Region, Snapshot};
use mcr_protocol::{
    EpollRegistration, HandlerObject, ImportedFd, OpenConnections, Relocation, RelocationTable, Request, Response,
    RuntimeCommandKind, RuntimeReply, StartupAlloc,
};
use mcr_tracer::{Image, Pair, StartupKey, StartupRecord, StartupTable, StartupTables, Target, TargetError, Version};
use mcr_typemodel::Program;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the transfer did, for the update's report.
#[derive(serde::Serialize, Default, Debug)]
pub struct Summary {
    pub processes: usize,
    /// Globals, heap blocks and handlers, summed over the processes.
    #[serde(flatten)]
    pub state: mcr_tracer::Report,
    pub connections: usize,
    /// Per-connection processes the new version's respawn handler recreated.
    pub respawned_processes: usize,
    /// Dirty tracking in the old processes: pages written since startup, and pages the
    /// tracking showed clean (what the new version's startup already made is not copied).
    pub dirty_pages: u64,
    pub clean_pages: u64,
    pub heap_scan_ms: f64,
    /// Fetching both versions' startup allocation tables (to match startup objects).
    pub startup_tables_ms: f64,
    pub trace_ms: f64,
    pub connections_ms: f64,
}

/// The old and new versions' processes, by PID inside their namespaces → host PIDs.
pub struct Processes {
    pub old: BTreeMap<i32, i32>,
    pub new: BTreeMap<i32, i32>,
}

/// The new version through its supervisor and /proc/PID/mem.
struct NewProcess<'c> {
    next: &'c mut Connection,
    pid: i32,
    host_pid: i32,
    mem: File,
    /// Writes not yet made, sent together (process_vm_writev, many blocks per call).
    pending: Vec<(u64, Vec<u8>)>,
}

/// Blocks per process_vm_writev (the kernel takes at most IOV_MAX = 1024).
const WRITE_BATCH: usize = 512;

impl NewProcess<'_> {
    fn runtime(&mut self, command: RuntimeCommandKind) -> Result<RuntimeReply, String> {
        ask_runtime(self.next, self.pid, command)
    }
}

/// One command to the runtime of process `pid` (PID in its namespace), through the
/// supervisor on `conn`.
fn ask_runtime(conn: &mut Connection, pid: i32, command: RuntimeCommandKind) -> Result<RuntimeReply, String> {
    match conn.request(&Request::Runtime { pid, command }).map_err(|e| e.to_string())? {
        Response::Runtime { reply: RuntimeReply::Error { message } } => Err(message),
        Response::Runtime { reply } => Ok(reply),
        Response::Error { message } => Err(message),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// A process's startup allocations, as its runtime recorded them.
fn startup_table(conn: &mut Connection, pid: i32) -> Result<StartupTable, String> {
    match ask_runtime(conn, pid, RuntimeCommandKind::StartupAllocations)? {
        RuntimeReply::StartupAllocations { allocs } => Ok(StartupTable::new(&records(&allocs))),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn records(allocs: &[StartupAlloc]) -> Vec<StartupRecord> {
    allocs
        .iter()
        .filter_map(|a| {
            let stack = mcr_callstack::parse_id(&a.stack)?;
            Some(StartupRecord {
                addr: a.addr,
                key: StartupKey { stack, thread: a.thread, ordinal: a.ordinal },
                site: a.site.clone(),
            })
        })
        .collect()
}

impl Target for NewProcess<'_> {
    fn allocate(&mut self, sizes: &[u64]) -> Result<Vec<u64>, TargetError> {
        match self.runtime(RuntimeCommandKind::Allocate { sizes: sizes.to_vec() }).map_err(TargetError::Runtime)? {
            RuntimeReply::Allocated { addrs } => Ok(addrs),
            other => Err(TargetError::Runtime(format!("unexpected answer {other:?}"))),
        }
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), TargetError> {
        self.pending.push((addr, bytes.to_vec()));
        if self.pending.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TargetError> {
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(WRITE_BATCH) {
            let local: Vec<libc::iovec> = chunk
                .iter()
                .map(|(_, b)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|(a, b)| libc::iovec { iov_base: *a as usize as *mut libc::c_void, iov_len: b.len() })
                .collect();
            let want: usize = chunk.iter().map(|(_, b)| b.len()).sum();
            // SAFETY: iovecs over live local buffers and the new process's addresses (the
            // kernel checks those); nothing here is aliased.
            let n = unsafe {
                libc::process_vm_writev(
                    self.host_pid,
                    local.as_ptr(),
                    local.len() as _,
                    remote.as_ptr(),
                    remote.len() as _,
                    0,
                )
            };
            if n < 0 || n as usize != want {
                // Partial or refused (a read-only page): one block at a time through
                // /proc/PID/mem, which says which one fails.
                for (a, b) in chunk {
                    self.mem.write_all_at(b, *a).map_err(|source| TargetError::Write {
                        addr: *a,
                        len: b.len(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let len = buf.len();
        self.mem.read_exact_at(buf, addr).map_err(|source| TargetError::Read { addr, len, source })
    }

    fn adopt_startup(&mut self, blocks: &[(u64, StartupKey)]) -> Result<(), TargetError> {
        let blocks = blocks
            .iter()
            .map(|(addr, k)| StartupAlloc {
                addr: *addr,
                stack: mcr_callstack::format_id(k.stack),
                thread: k.thread,
                ordinal: k.ordinal,
                site: String::new(),
            })
            .collect();
        self.runtime(RuntimeCommandKind::AdoptStartupBlocks { blocks }).map(|_| ()).map_err(TargetError::Runtime)
    }

    /// The old bytes go to scratch blocks in the new process, with the relocation table
    /// the handlers' mcr_translate() reads; the handler runs there; the scratch blocks
    /// are freed.
    fn run_handlers(
        &mut self,
        what: &str,
        objects: &[(Vec<u8>, u64, u64)],
        relocations: &[Relocation],
    ) -> Result<(), TargetError> {
        self.flush()?;
        let mut sizes: Vec<u64> = objects.iter().map(|(b, _, _)| b.len() as u64).collect();
        if !relocations.is_empty() {
            sizes.push((relocations.len() * Relocation::SIZE) as u64);
        }
        let scratch = self.allocate(&sizes)?;
        let mut batch = Vec::with_capacity(objects.len());
        for ((bytes, new, new_size), at) in objects.iter().zip(&scratch) {
            self.write(*at, bytes)?;
            batch.push(HandlerObject { old: *at, old_size: bytes.len() as u64, new: *new, new_size: *new_size });
        }
        let table = match scratch.get(objects.len()) {
            Some(&addr) if !relocations.is_empty() => {
                let bytes: Vec<u8> = relocations.iter().flat_map(|r| r.to_bytes()).collect();
                self.write(addr, &bytes)?;
                Some(RelocationTable { addr, count: relocations.len() as u64 })
            }
            _ => None,
        };
        self.flush()?;
        let r = self.runtime(RuntimeCommandKind::RunObjHandlers {
            what: what.to_string(),
            objects: batch,
            relocations: table,
        });
        let _ = self.runtime(RuntimeCommandKind::Free { addrs: scratch });
        r.map(|_| ()).map_err(TargetError::Runtime)
    }
}

fn exe(host_pid: i32) -> Result<PathBuf, String> {
    std::fs::read_link(format!("/proc/{host_pid}/exe"))
        .map_err(|e| format!("cannot find the binary of process {host_pid}: {e}"))
}

fn load(path: &Path) -> Result<Program, String> {
    Program::load_cached(path).map_err(|e| e.to_string())
}

/// Move the state of every old process into its new counterpart (`old`, `next`: the old
/// and new versions' supervisors).
/// Move the state of every old process into its new counterpart: one tracer per process
/// pair, as many at once as there are cores, each with its own connections to both
/// supervisors (`connect` opens them: old version, new version).
pub fn run(
    procs: &Processes,
    connect: &(dyn Fn() -> Result<(Connection, Connection), String> + Sync),
    connections: &[OpenConnections],
) -> Result<Summary, String> {
    let mut programs: BTreeMap<PathBuf, Program> = BTreeMap::new();
    let mut pairs = Vec::new();
    for (&pid, &old_host) in &procs.old {
        let Some(&new_host) = procs.new.get(&pid) else {
            return Err(format!("process {pid} has no counterpart in the new version"));
        };
        let (old_exe, new_exe) = (exe(old_host)?, exe(new_host)?);
        for p in [&old_exe, &new_exe] {
            if !programs.contains_key(p) {
                programs.insert(p.clone(), load(p)?);
            }
        }
        pairs.push(ProcessPair { pid, old_host, new_host, old_exe, new_exe });
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(pairs.len().max(1));
    let next_pair = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<Summary, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Summary, String> {
                    let (mut old, mut next) = connect()?;
                    let mut sum = Summary::default();
                    loop {
                        let i = next_pair.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= pairs.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
                            return Ok(sum);
                        }
                        let p = &pairs[i];
                        let r = transfer_process(
                            p,
                            &programs[&p.old_exe],
                            &programs[&p.new_exe],
                            &mut old,
                            &mut next,
                            connections,
                        );
                        match r {
                            Ok(s) => sum.absorb(s),
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a tracer thread panicked".into()))).collect()
    });
    let mut sum = Summary::default();
    for r in results {
        sum.absorb(r?);
    }
    Ok(sum)
}

/// One old process and its counterpart in the new version.
struct ProcessPair {
    pid: i32,
    old_host: i32,
    new_host: i32,
    old_exe: PathBuf,
    new_exe: PathBuf,
}

impl Summary {
    fn absorb(&mut self, o: Summary) {
        self.processes += o.processes;
        self.state.add(&o.state);
        self.connections += o.connections;
        self.respawned_processes += o.respawned_processes;
        self.dirty_pages += o.dirty_pages;
        self.clean_pages += o.clean_pages;
        self.heap_scan_ms += o.heap_scan_ms;
        self.startup_tables_ms += o.startup_tables_ms;
        self.trace_ms += o.trace_ms;
        self.connections_ms += o.connections_ms;
    }
}

/// The state transfer of one process pair.
fn transfer_process(
    p: &ProcessPair,
    old_prog: &Program,
    new_prog: &Program,
    old: &mut Connection,
    next: &mut Connection,
    connections: &[OpenConnections],
) -> Result<Summary, String> {
    let ProcessPair { pid, old_host, new_host, ref old_exe, ref new_exe } = *p;
    let mut sum = Summary::default();
    if !old_prog.has_debug_info || !new_prog.has_debug_info {
        eprintln!(
            "mcr: warning: {} has no debug information (build with -g): process {pid}'s heap and globals are not transferred",
            if old_prog.has_debug_info { new_exe.display() } else { old_exe.display() }
        );
        return Ok(sum);
    }
    let t = Instant::now();
    let old_maps = Region::read_all(old_host).map_err(|e| e.to_string())?;
    let new_maps = Region::read_all(new_host).map_err(|e| e.to_string())?;
    let old_mem = ProcessMemory::open(old_host).map_err(|e| e.to_string())?;
    // Thread stacks as glibc makes them (a mapping of their own, a guard page right below)
    // hold no heap blocks; a stack the program carved out of malloc'd memory is scanned.
    let stacks = mcr_heap::thread_stack_pointers(old_host);
    let is_thread_stack = |i: usize, r: &Region| {
        r.name.is_empty()
            && stacks.iter().any(|&sp| r.start <= sp && sp < r.end)
            && i > 0
            && old_maps[i - 1].end == r.start
            && !old_maps[i - 1].readable
            && !old_maps[i - 1].writable
    };
    let candidates: Vec<Region> = old_maps
        .iter()
        .enumerate()
        .filter(|&(i, r)| r.may_hold_heap_blocks() && !is_thread_stack(i, r))
        .map(|(_, r)| r.clone())
        .collect();
    let heap_regions = mcr_heap::touched_parts(old_host, &candidates);
    let (heap, pieces) = HeapIndex::scan_keeping(&old_mem, &heap_regions).map_err(|e| e.to_string())?;
    let old_view = Snapshot::new(&old_mem, pieces);
    sum.heap_scan_ms += t.elapsed().as_secs_f64() * 1000.0;

    let t = Instant::now();
    let old_img = Image::locate(&old_maps, old_exe)
        .ok_or_else(|| format!("cannot find {} in process {pid}'s memory map", old_exe.display()))?;
    let new_img = Image::locate(&new_maps, new_exe)
        .ok_or_else(|| format!("cannot find {} in the new process {pid}'s memory map", new_exe.display()))?;
    let dirt = match mcr_dirty::written_ranges(old_host) {
        Ok(d) => {
            let c = d.counts();
            sum.dirty_pages += c.dirty();
            sum.clean_pages += c.clean();
            Some(d)
        }
        Err(e) => {
            eprintln!("mcr: warning: no dirty tracking for process {pid} ({e}): every global counts as written");
            None
        }
    };
    // A process forked after startup (one per connection) set its session up before
    // its tracking was armed, and its counterpart is a fresh fork of the new parent:
    // everything it holds counts as written.
    let volatile = connections.iter().any(|c| c.pid == pid && c.volatile);
    let is_dirty = |addr: u64, len: u64| volatile || dirt.as_ref().is_none_or(|d| d.is_dirty(addr, len));
    let ts = Instant::now();
    let startup = match (startup_table(old, pid), startup_table(next, pid)) {
        (Ok(old), Ok(new)) => Some(StartupTables { old, new }),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("mcr: warning: process {pid}'s startup allocations are unknown ({e}): its startup objects are reallocated, not matched");
            None
        }
    };
    sum.startup_tables_ms += ts.elapsed().as_secs_f64() * 1000.0;
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{new_host}/mem"))
        .map_err(|e| format!("cannot open the new process {pid}'s memory: {e}"))?;
    let mut target = NewProcess { next, pid, host_pid: new_host, mem, pending: Vec::new() };
    let pair = Pair {
        old: Version { prog: old_prog, image: old_img },
        old_mem: &old_view,
        heap: &heap,
        new: Version { prog: new_prog, image: new_img },
        dirty: Some(&is_dirty),
        startup: startup.as_ref(),
    };
    let moved = mcr_tracer::transfer(&pair, &mut target).map_err(|e| format!("process {pid}: {e}"))?;
    sum.trace_ms += t.elapsed().as_secs_f64() * 1000.0;
    sum.processes += 1;
    sum.state.add(&moved.report);

    let t = Instant::now();
    let mine: Vec<&OpenConnections> = connections.iter().filter(|c| c.pid == pid).collect();
    let resumes_sessions = mcr_typemodel::diff::Sessions::of(new_prog).resumes();
    if let Some(fd) = mine.iter().flat_map(|c| c.pinned.iter()).next().filter(|_| !resumes_sessions) {
        return Err(format!(
            "process {pid}'s connection fd {fd} is served by a thread, not an event loop: its state is on that thread's stack, \
             which mcr does not move. Give the new version an MCR_ADD_RESUME_HANDLER that hands such sessions back to its \
             workers (see include/mcr.h), or let them close first (--drain-timeout, or update when idle)"
        ));
    }
    let fds: Vec<i32> = mine.iter().flat_map(|c| c.fds.iter().copied()).collect();
    // A respawned process inherited its connection from the parent that forked it.
    if !fds.is_empty() && !volatile {
        move_connections(old_host, &fds, &mut target)?;
        let regs = epoll_registrations(old_host, &fds, |data| {
            if heap.containing(data).is_some() {
                moved
                    .relocate(&heap, data)
                    .ok_or_else(|| format!("epoll data {data:#x} points to a heap block the transfer did not move"))
            } else {
                Ok(data)
            }
        })?;
        if !regs.is_empty() {
            target.runtime(RuntimeCommandKind::EpollAdd { registrations: regs })?;
        }
    }
    sum.connections += fds.len();
    sum.connections_ms += t.elapsed().as_secs_f64() * 1000.0;
    Ok(sum)
}

/// Recreate in the new version every process the old one forked after startup to serve
/// a connection (its startup never recreates them): install the connection in the new
/// parent, whose respawn handler forks a child with the old child's PID. The state
/// transfer then pairs them like any processes. Returns how many were respawned.
pub fn respawn_volatile(
    old: &BTreeMap<i32, i32>,
    new: &BTreeMap<i32, i32>,
    next: &mut Connection,
    connections: &[OpenConnections],
) -> Result<usize, String> {
    let old_ns: BTreeMap<i32, i32> = old.iter().map(|(&ns, &host)| (host, ns)).collect();
    let mut n = 0;
    for c in connections.iter().filter(|c| c.volatile && !c.fds.is_empty()) {
        let pid = c.pid;
        let &old_host = old.get(&pid).ok_or_else(|| format!("process {pid} is gone"))?;
        let parent_host = std::fs::read_to_string(format!("/proc/{old_host}/status"))
            .ok()
            .and_then(|st| st.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<i32>().ok()))
            .ok_or_else(|| format!("cannot read the parent of process {pid}"))?;
        let parent =
            *old_ns.get(&parent_host).ok_or_else(|| format!("process {pid}'s parent is not part of the instance"))?;
        let &[fd] = c.fds.as_slice() else {
            return Err(format!(
                "process {pid} (forked after startup) serves {} connections (fds {:?}); a respawn handler recreates a process for one",
                c.fds.len(),
                c.fds
            ));
        };
        let &new_parent_host =
            new.get(&parent).ok_or_else(|| format!("process {parent} has no counterpart in the new version"))?;
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{new_parent_host}/mem"))
            .map_err(|e| format!("cannot open the new process {parent}'s memory: {e}"))?;
        let mut target =
            NewProcess { next: &mut *next, pid: parent, host_pid: new_parent_host, mem, pending: Vec::new() };
        move_connections(old_host, &[fd], &mut target)?;
        match target.runtime(RuntimeCommandKind::Respawn { pid, fd }) {
            Ok(RuntimeReply::Respawned { .. }) => n += 1,
            Ok(other) => return Err(format!("unexpected answer to respawn: {other:?}")),
            Err(e) => {
                return Err(format!("process {parent} could not respawn process {pid} (connection fd {fd}): {e}"))
            }
        }
    }
    Ok(n)
}

/// Move connections of old process `old_host` into new process `pid` for its program to
/// adopt as new ones (their state stays behind).
pub fn adopt(old_host: i32, pid: i32, new_host: i32, next: &mut Connection, fds: &[i32]) -> Result<(), String> {
    let mem = File::options()
        .read(true)
        .open(format!("/proc/{new_host}/mem"))
        .map_err(|e| format!("cannot open the new process {pid}: {e}"))?;
    let mut target = NewProcess { next, pid, host_pid: new_host, mem, pending: Vec::new() };
    import_connections(old_host, fds, &mut target, true)
}

/// Copy the old process's connections out (pidfd_getfd) and hand them to the new
/// process's runtime over an abstract Unix socket (SCM_RIGHTS), which installs each at
/// its old number.
fn move_connections(old_host: i32, fds: &[i32], target: &mut NewProcess) -> Result<(), String> {
    import_connections(old_host, fds, target, false)
}

fn import_connections(old_host: i32, fds: &[i32], target: &mut NewProcess, adopt: bool) -> Result<(), String> {
    // SAFETY: pidfd_open on a process of the old version.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, old_host as libc::c_long, 0 as libc::c_long) } as i32;
    if pidfd < 0 {
        return Err(format!("cannot open old process {old_host}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: our own new descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut copies = Vec::new();
    let mut targets = Vec::new();
    for &fd in fds {
        // SAFETY: copying a descriptor of the old process into ours.
        let c = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                pidfd.as_raw_fd() as libc::c_long,
                fd as libc::c_long,
                0 as libc::c_long,
            )
        } as i32;
        if c < 0 {
            return Err(format!("cannot take fd {fd} of old process {old_host}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the copy is ours.
        copies.push(unsafe { OwnedFd::from_raw_fd(c) });
        let flags = std::fs::read_to_string(format!("/proc/{old_host}/fdinfo/{fd}")).unwrap_or_default();
        let cloexec = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0);
        targets.push(ImportedFd { target: fd, cloexec });
    }
    let name = format!("mcr-transfer/{}/{}", std::process::id(), old_host);
    let listener = abstract_listener(&name).map_err(|e| format!("cannot open the descriptor socket: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = gave_up.clone();
    let sender = std::thread::spawn(move || -> Result<(), String> {
        // The runtime connects as soon as it gets the request; stop waiting if it
        // answered without connecting (an error), or after a bound.
        let t0 = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(std::sync::atomic::Ordering::SeqCst)
                        || t0.elapsed() > std::time::Duration::from_secs(30)
                    {
                        return Err("the new process never fetched the descriptors".into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        for chunk in copies.chunks(253) {
            send_fds(&conn, chunk).map_err(|e| format!("sending descriptors: {e}"))?;
        }
        Ok(())
    });
    let r = target.runtime(RuntimeCommandKind::ImportFds { socket: name, targets, adopt });
    gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let s = sender.join().map_err(|_| "the descriptor sender panicked".to_string())?;
    r?;
    s
}

fn abstract_listener(name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&addr)
}

fn send_fds(conn: &std::os::unix::net::UnixStream, fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    // SAFETY: CMSG_SPACE/CMSG_LEN are size computations; the msghdr points at live locals.
    unsafe {
        let space = libc::CMSG_SPACE((raw.len() * 4) as u32) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c) as *mut i32, raw.len());
        if libc::sendmsg(conn.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The old process's epoll registrations of `fds`, data relocated by `relocate`.
fn epoll_registrations(
    old_host: i32,
    fds: &[i32],
    relocate: impl Fn(u64) -> Result<u64, String>,
) -> Result<Vec<EpollRegistration>, String> {
    mcr_protocol::epoll_registrations(&old_host.to_string())
        .into_iter()
        .filter(|r| fds.contains(&r.fd))
        .map(|r| Ok(EpollRegistration { data: relocate(r.data)?, ..r }))
        .collect()
}
