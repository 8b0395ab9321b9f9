//! The new version's side of the state transfer (DESIGN.md "Mutable tracing"): the
//! tracer in `mcr update` reads the old version and writes the new one's memory from
//! outside; what must happen inside the new process is done here, by the control thread,
//! which shares the program's descriptor table until commit: allocating blocks through
//! the program's malloc, installing the old version's connections at their old numbers,
//! and registering them with the new version's epoll instances.

use crate::rawfd;
use crate::sync::SpinLock;
use mcr_protocol::{EpollRegistration, HandlerObject, ImportedFd, Relocation, RelocationTable, RuntimeReply};

/// `struct mcr_obj` of include/mcr.h.
#[repr(C)]
pub struct McrObj {
    pub what: *const libc::c_char,
    pub old: *const libc::c_void,
    pub old_size: libc::c_ulong,
    pub new_obj: *mut libc::c_void,
    pub new_size: libc::c_ulong,
}

pub type ObjHandler = unsafe extern "C" fn(*const McrObj) -> libc::c_int;

/// MCR_ADD_OBJ_HANDLER registrations: (what, handler, its name).
static OBJ_HANDLERS: SpinLock<Vec<(String, ObjHandler, String)>> = SpinLock::new(Vec::new());

pub fn add_obj_handler(what: String, h: ObjHandler, name: String) {
    OBJ_HANDLERS.lock().push((what, h, name));
}

fn same_what(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_start_matches("struct ").trim_start_matches("union ").trim().to_string();
    norm(a) == norm(b)
}

/// The relocation table of the handlers running now, for `mcr_translate()`; `None`
/// outside a RunObjHandlers command.
static RELOCATIONS: SpinLock<Option<RelocationTable>> = SpinLock::new(None);

/// Most entries a relocation table may have (a sanity bound: 2^32 objects).
const MAX_RELOCATIONS: u64 = 1 << 32;

/// `mcr_translate()`: the new address of old address `p`, while handlers run.
pub fn translate(p: u64) -> Option<u64> {
    let active = RELOCATIONS.lock();
    let t = (*active)?;
    // SAFETY: `t` is set only for the duration of a RunObjHandlers command, after checking
    // that it names an aligned, non-null block of `count` entries (`usable_table`); the
    // update wrote that block before sending the command and frees it only after the
    // reply, which is sent after `t` is unset under this same lock, held here until the
    // lookup is done. The entries are plain integers, valid for any bytes.
    let table = unsafe { core::slice::from_raw_parts(t.addr as usize as *const Relocation, t.count as usize) };
    mcr_protocol::relocation::translate(table, p)
}

fn usable_table(t: &RelocationTable) -> Result<(), String> {
    let aligned = t.addr != 0 && t.addr.is_multiple_of(core::mem::align_of::<Relocation>() as u64);
    let sized = t.count <= MAX_RELOCATIONS && t.addr.checked_add(t.count * Relocation::SIZE as u64).is_some();
    if aligned && sized {
        Ok(())
    } else {
        Err(format!("unusable relocation table ({} entries at {:#x})", t.count, t.addr))
    }
}

/// Run the program's handler for `what` on each object; `mcr_translate()` answers from
/// `relocations` meanwhile.
pub fn run_obj_handlers(what: &str, objects: &[HandlerObject], relocations: Option<RelocationTable>) -> RuntimeReply {
    let found =
        OBJ_HANDLERS.lock().iter().find(|(w, _, _)| same_what(w, what)).map(|(w, h, n)| (w.clone(), *h, n.clone()));
    let Some((w, h, name)) = found else {
        return error(format!("no MCR_ADD_OBJ_HANDLER for {what} is registered in the new version"));
    };
    if let Some(Err(e)) = relocations.as_ref().map(usable_table) {
        return error(e);
    }
    let cw = std::ffi::CString::new(w).unwrap_or_default();
    *RELOCATIONS.lock() = relocations;
    let reply = run_each(h, &cw, &name, what, objects);
    *RELOCATIONS.lock() = None;
    reply
}

fn run_each(h: ObjHandler, cw: &std::ffi::CStr, name: &str, what: &str, objects: &[HandlerObject]) -> RuntimeReply {
    for (i, o) in objects.iter().enumerate() {
        let obj = McrObj {
            what: cw.as_ptr(),
            old: o.old as usize as *const libc::c_void,
            old_size: o.old_size as libc::c_ulong,
            new_obj: o.new as usize as *mut libc::c_void,
            new_size: o.new_size as libc::c_ulong,
        };
        // SAFETY: the program's own handler, called as mcr.h documents, on a scratch copy
        // of the old bytes and the new object the update just built.
        let rc = unsafe { h(&obj) };
        if rc != 0 {
            return error(format!("object handler {name} refused {what} #{i} (at {:#x}): it returned {rc}", o.new));
        }
    }
    RuntimeReply::Done
}

pub fn free(addrs: &[u64]) -> RuntimeReply {
    for &a in addrs {
        // SAFETY: blocks this update allocated with `allocate` for scratch copies, or old
        // blocks of the adopted heap the state no longer holds.
        unsafe { crate::interpose::malloc::free(a as usize as *mut libc::c_void) };
    }
    // The blocks just freed sit in this thread's cache until it fills: back to their spans
    // first, or a region they emptied is not seen empty, and stays mapped (and adopted by
    // the next version) until some later flush.
    crate::heap::flush_own_cache();
    crate::heap::flush_shared_cache();
    crate::heap::retire_empty_regions();
    crate::heap::trim_adopted_regions();
    RuntimeReply::Done
}

pub fn reset_after_fork() {
    OBJ_HANDLERS.force_unlock();
    RELOCATIONS.force_unlock();
}

fn error(message: String) -> RuntimeReply {
    RuntimeReply::Error { message }
}

pub fn allocate(sizes: &[u64]) -> RuntimeReply {
    let mut addrs = Vec::with_capacity(sizes.len());
    for &n in sizes {
        // SAFETY: the program's own malloc (our interposed one), as the program would call it.
        let p = unsafe { crate::interpose::malloc::malloc(n.max(1) as usize) };
        if p.is_null() {
            for &a in &addrs {
                // SAFETY: blocks we just allocated and nobody else knows about.
                unsafe { crate::interpose::malloc::free(a as usize as *mut libc::c_void) };
            }
            return error(format!(
                "out of memory allocating {} blocks ({} bytes)",
                sizes.len(),
                sizes.iter().sum::<u64>()
            ));
        }
        addrs.push(p as u64);
    }
    populate(&addrs, sizes);
    RuntimeReply::Allocated { addrs }
}

/// Fault in the pages of freshly allocated blocks before the update writes them: one
/// `MADV_POPULATE_WRITE` per run of pages, where `process_vm_writev` would otherwise
/// fault every new page in through the slower remote path (a layout update writes every
/// transformed object into a new block). Best effort: an older kernel or a filter that
/// refuses it only leaves the faults where they were.
fn populate(addrs: &[u64], sizes: &[u64]) {
    const PAGE: u64 = 4096;
    if addrs.len() < 64 {
        return;
    }
    let mut run: Option<(u64, u64)> = None;
    let flush = |r: (u64, u64)| {
        // SAFETY: the range covers pages of blocks this process just allocated (mapped
        // read-write by its own heap); populating them changes no byte of theirs.
        unsafe { crate::sys!(libc::SYS_madvise, r.0, r.1 - r.0, libc::MADV_POPULATE_WRITE) };
    };
    for (&a, &n) in addrs.iter().zip(sizes) {
        let (start, end) = (a & !(PAGE - 1), (a + n.max(1)).next_multiple_of(PAGE));
        run = match run {
            Some((s, e)) if start <= e && start >= s => Some((s, e.max(end))),
            Some(r) => {
                flush(r);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some(r) = run {
        flush(r);
    }
}

/// Most descriptors one SCM_RIGHTS message carries (the kernel's SCM_MAX_FD).
pub const FDS_PER_MESSAGE: usize = 253;

/// Install the descriptors the update sends on `socket` at their targets: client
/// connections (`plain` false), adopted ones among them, or other descriptors the old
/// version made after startup (`plain`).
pub fn import_fds(socket: &str, targets: &[ImportedFd], adopt: bool, plain: bool) -> RuntimeReply {
    for t in targets {
        if rawfd::is_open(t.target) {
            let what = std::fs::read_link(format!("/proc/self/fd/{}", t.target))
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            return error(format!(
                "fd {} is already in use in the new version{what}, so the old version's descriptor cannot take its number",
                t.target
            ));
        }
    }
    // Our own descriptors (the socket, what arrives on it) must stay clear of the
    // numbers being filled, or installing one would close another.
    let above = targets.iter().map(|t| t.target).max().unwrap_or(0) + 1;
    let (received, mut failure) = match receive_from_update(socket, targets.len(), above) {
        Ok(fds) => (fds, None),
        Err((fds, m)) => (fds, Some(m)),
    };
    if failure.is_none() {
        for (fd, t) in received.iter().zip(targets) {
            let flags = if t.cloexec { libc::O_CLOEXEC } else { 0 };
            // SAFETY: `t.target` was checked free above, and stays so: the new version is
            // held at its quiescent points, and our own descriptors sit above the targets.
            if !unsafe { rawfd::dup_onto(*fd, t.target, flags) } {
                failure =
                    Some(format!("cannot place a descriptor at {}: {}", t.target, std::io::Error::last_os_error()));
                break;
            }
            if plain {
                continue;
            }
            // A client connection here too, for the next update.
            crate::drain::note_accepted(t.target);
            if adopt {
                crate::resume::note_adopted(t.target);
            }
        }
    }
    for &fd in &received {
        // SAFETY: our own copies (the installed descriptors stay).
        unsafe { rawfd::close(fd) };
    }
    match failure {
        Some(m) => error(m),
        None => RuntimeReply::Done,
    }
}

/// Receive `count` descriptors the update sends on its abstract socket `socket`, each at a
/// number at least `above`. On failure, what arrived (the caller's to close) and why.
pub(crate) fn receive_from_update(socket: &str, count: usize, above: i32) -> Result<Vec<i32>, (Vec<i32>, String)> {
    let sock = match rawfd::connect_abstract(socket.as_bytes()) {
        // SAFETY: the socket just made, ours alone.
        Ok(s) => unsafe { out_of_the_way(s, above) },
        Err(e) => return Err((Vec::new(), format!("cannot reach the update's descriptor socket: {e}"))),
    };
    // Abstract sockets are open to every local user: descriptors are taken only from mcr.
    match rawfd::peer_credentials(sock) {
        Some((_, uid)) if rawfd::trusted_peer_uid(uid) => {}
        other => {
            // SAFETY: the socket made above, ours alone.
            unsafe { rawfd::close(sock) };
            return Err((
                Vec::new(),
                format!(
                    "the descriptor socket {socket} is held by uid {}, not by mcr; nothing was taken from it",
                    other.map_or(-1, |(_, uid)| uid as i64)
                ),
            ));
        }
    }
    let mut received: Vec<i32> = Vec::with_capacity(count);
    let mut failure = None;
    while received.len() < count {
        match recv_fds(sock, (count - received.len()).min(FDS_PER_MESSAGE)) {
            Ok(fds) if fds.is_empty() => {
                failure = Some(format!("the update sent {} of {count} descriptors", received.len()));
                break;
            }
            // SAFETY: descriptors that just arrived in our table, ours alone.
            Ok(fds) => received.extend(fds.into_iter().map(|fd| unsafe { out_of_the_way(fd, above) })),
            Err(e) => {
                failure = Some(format!("receiving descriptors: {e}"));
                break;
            }
        }
    }
    // SAFETY: the socket made above, ours alone.
    unsafe { rawfd::close(sock) };
    match failure {
        None => Ok(received),
        Some(m) => Err((received, m)),
    }
}

pub fn epoll_add(regs: &[EpollRegistration]) -> RuntimeReply {
    for r in regs {
        let mut ev = libc::epoll_event { events: r.events, u64: r.data };
        // SAFETY: both descriptors are the program's (shared table), the event a local.
        let rc = unsafe {
            crate::sys!(libc::SYS_epoll_ctl, r.epfd, libc::EPOLL_CTL_ADD, r.fd, &mut ev as *mut libc::epoll_event)
        };
        if rc < 0 {
            return error(format!(
                "epoll_ctl(ADD) of fd {} on epoll fd {}: {}",
                r.fd,
                r.epfd,
                std::io::Error::last_os_error()
            ));
        }
    }
    RuntimeReply::Done
}

/// Private anonymous memory at exactly [start, start + len), for the old version's
/// mapping of the same range (the update writes its contents next).
pub fn map_private(start: u64, len: u64, prot: i32, locked: bool) -> RuntimeReply {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: an anonymous mapping, no descriptor.
    match unsafe { map_exactly(start, len, prot, flags, -1, 0) }.and_then(|()| lock_if(start, len, locked)) {
        Ok(()) => {
            crate::mappings::note_mapped(start as usize, len as usize);
            RuntimeReply::Done
        }
        Err(m) => error(m),
    }
}

/// The old version's file, memfd or shared memory mapping of [start, start + len), again,
/// from the object the update sends on `socket`.
pub fn map_file(
    socket: &str,
    start: u64,
    len: u64,
    offset: u64,
    prot: i32,
    shared: bool,
    locked: bool,
) -> RuntimeReply {
    let fd = match receive_from_update(socket, 1, 0) {
        Ok(fds) => fds[0],
        Err((fds, m)) => {
            for fd in fds {
                // SAFETY: descriptors that just arrived, ours alone.
                unsafe { rawfd::close(fd) };
            }
            return error(m);
        }
    };
    let sharing = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping (see map_exactly); `fd` is ours.
    let r = unsafe { map_exactly(start, len, prot, sharing, fd, offset) };
    // SAFETY: our own descriptor: the mapping keeps its own reference to the object.
    unsafe { rawfd::close(fd) };
    match r.and_then(|()| lock_if(start, len, locked)) {
        Ok(()) => {
            crate::mappings::note_mapped(start as usize, len as usize);
            RuntimeReply::Done
        }
        Err(m) => error(m),
    }
}

/// The old version's SysV segment `shmid`, attached again at `start`.
pub fn attach_sysv(shmid: i32, start: u64, len: u64, readonly: bool, locked: bool) -> RuntimeReply {
    let remap = if crate::held_ranges::take(start, start.saturating_add(len)) { libc::SHM_REMAP } else { 0 };
    let flags = if readonly { libc::SHM_RDONLY } else { 0 } | remap;
    // SAFETY: without SHM_REMAP, shmat fails on any overlap with an existing mapping: no
    // memory of the program's or ours changes; with it, it replaces only a hold of the
    // runtime's (held_ranges.rs).
    let p = unsafe { crate::sys!(libc::SYS_shmat, shmid, start, flags) };
    if p == -1 {
        let e = std::io::Error::last_os_error();
        return error(format!(
            "attaching SysV segment {shmid} at {start:#x} again: {e} (the new version uses that address itself, \
             or the segment is gone)"
        ));
    }
    if let Err(m) = lock_if(start, len, locked) {
        // SAFETY: the attachment just made, nobody else's.
        unsafe { crate::sys!(libc::SYS_shmdt, start) };
        return error(m);
    }
    crate::mappings::note_attached(start as usize, len as usize);
    RuntimeReply::Done
}

/// mmap at exactly [start, start + len).
///
/// # Safety
/// `fd` is -1 with MAP_ANONYMOUS in `flags`, or a descriptor of the caller's.
unsafe fn map_exactly(start: u64, len: u64, prot: i32, flags: i32, fd: i32, offset: u64) -> Result<(), String> {
    let end = start.saturating_add(len);
    // Over a range held for it (held_ranges.rs), in one step; elsewhere never over any
    // mapping.
    let fixed = if crate::held_ranges::take(start, end) { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping: it fails on any overlap, so
    // no memory of the program's or ours changes; MAP_FIXED replaces only a hold of the
    // runtime's, inaccessible, that no memory of anyone's lives in.
    let p = unsafe { crate::sys!(libc::SYS_mmap, start, len, prot, flags | fixed, fd, offset) };
    if p == -1 {
        let e = std::io::Error::last_os_error();
        let why =
            if e.raw_os_error() == Some(libc::EEXIST) { " (the new version uses that address itself)" } else { "" };
        return Err(format!("mapping {start:#x}-{end:#x} again: {e}{why}"));
    }
    if p as u64 != start {
        // A kernel without MAP_FIXED_NOREPLACE took it as a hint.
        // SAFETY: the mapping just made, nobody else's.
        unsafe { crate::sys!(libc::SYS_munmap, p, len) };
        return Err(format!("mapping {start:#x}-{end:#x} again: the kernel placed it elsewhere"));
    }
    Ok(())
}

/// mlock [start, start + len) when `locked`; on failure the range is unmapped.
fn lock_if(start: u64, len: u64, locked: bool) -> Result<(), String> {
    // SAFETY: the range the caller just mapped, ours.
    if locked && unsafe { crate::sys!(libc::SYS_mlock, start, len) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { crate::sys!(libc::SYS_munmap, start, len) };
        return Err(format!("locking {start:#x}-{:#x} as it was: {e}", start.saturating_add(len)));
    }
    Ok(())
}

/// `fd` moved to a number at least `above` (it stays where it is if it already is, or
/// when no number is free).
///
/// # Safety
/// `fd` is the caller's own: its old number is closed.
unsafe fn out_of_the_way(fd: i32, above: i32) -> i32 {
    if fd >= above {
        return fd;
    }
    let Some(moved) = rawfd::dup_at_least(fd, above) else { return fd };
    // SAFETY: ours (the caller's contract), and replaced by `moved`.
    unsafe { rawfd::close(fd) };
    moved
}

/// One message's descriptors (at most `max`); empty at end of stream.
fn recv_fds(sock: i32, max: usize) -> std::io::Result<Vec<i32>> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((max * core::mem::size_of::<i32>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut msg = libc::msghdr {
        msg_name: core::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: &mut iov,
        msg_iovlen: 1,
        msg_control: control.as_mut_ptr().cast(),
        msg_controllen: space,
        msg_flags: 0,
    };
    // SAFETY: recvmsg writes at most `data.len()` bytes into `data` (through `iov`), at most
    // `space` bytes into `control` (8 * space.div_ceil(8) long), and updates `msg`: all
    // live locals.
    let n = unsafe { crate::sys!(libc::SYS_recvmsg, sock, &mut msg as *mut libc::msghdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    // SAFETY: the CMSG_* functions walk the control messages the kernel just wrote into
    // `control`, never past `msg.msg_controllen`; an SCM_RIGHTS payload is `count` ints
    // right after its header, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / core::mem::size_of::<i32>();
                let p = libc::CMSG_DATA(c) as *const i32;
                for i in 0..count {
                    out.push(p.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        for &fd in &out {
            // SAFETY: descriptors that just arrived in our table, ours alone.
            unsafe { rawfd::close(fd) };
        }
        return Err(std::io::Error::other("descriptors were truncated in transit"));
    }
    Ok(out)
}
