//! The state transfer of one process pair: scan the old heap, trace and rebuild the
//! state in the new process, then move its connections and the other descriptors it made
//! after startup.

use super::adopt_heap;
use super::descriptors::{self, Moving};
use super::keys;
use super::mappings;
use super::runtime::{main_thread_tls, startup_table, NewProcess};
use super::target::TracerTarget;
use super::{Summary, TransferError};
use crate::preflight::Snapshots;
use crate::warning::{Warn, Warning};
use mcr_client::Connection;
use mcr_heap::ReadMemory;
use mcr_heap::{HeapIndex, MappedView, ProcessMemory, Region, Snapshot};
use mcr_protocol::{OpenConnections, RuntimeCommandKind, RuntimeReply};
use mcr_tracer::{Image, Pair, StackLayout, StackMap, StartupTables, Target, TargetError, Version};
use mcr_typemodel::Program;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One old process and its counterpart in the new version.
pub(crate) struct ProcessPair {
    pub pid: i32,
    pub old_host: i32,
    pub new_host: i32,
    pub old_exe: PathBuf,
    pub new_exe: PathBuf,
    /// Its descriptors made after startup that are a socket of the old version's startup.
    pub startup_sockets: descriptors::StartupSockets,
    /// Count the pointers the trace follows (`mcr update --count-pointers`).
    pub count_pointers: bool,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Move the state of `p`'s old process into its new one (`old`, `next`: connections to
/// the two supervisors; `programs`: the two builds' type models).
pub(crate) fn transfer(
    p: &ProcessPair,
    (old_prog, new_prog): (&Program, &Program),
    old: &mut Connection,
    next: &mut Connection,
    connections: &[OpenConnections],
    warn: Warn<'_>,
) -> Result<Summary, TransferError> {
    let ProcessPair { pid, old_host, new_host, ref old_exe, ref new_exe, .. } = *p;
    let mut sum = Summary::default();
    if !old_prog.has_debug_info || !new_prog.has_debug_info {
        let binary = if old_prog.has_debug_info { new_exe } else { old_exe };
        warn(Warning::NoDebugInfo { binary: binary.clone(), pid });
        take_over_attributes(pid, old, &mut NewProcess { next, pid, host_pid: new_host })?;
        return Ok(sum);
    }
    let t = Instant::now();
    let old_maps = Region::read_all(old_host)?;
    let new_maps = Region::read_all(new_host)?;
    let old_mem = ProcessMemory::open(old_host)?;
    // The heap's memfds, mapped here: the scan, the trace and the adoption read them in
    // place (what is private, a forked process's heap, is read and kept).
    let in_heap_window = |r: &Region| usize::try_from(r.start).ok().and_then(mcr_alloc::geometry::slot_of).is_some();
    let old_mapped = MappedView::open(old_host, &old_maps, in_heap_window, &old_mem);
    let (heap, extents) = HeapIndex::scan_with_extents(&old_mapped)?;
    // Blocks are read when the trace first needs them. The old runtime answers every
    // question of the update before the new process maps the old heap (below), and its
    // listings no longer allocate in the program's heap (getdents64).
    let old_view = Snapshot::lazy(&old_mapped, &extents);
    sum.heap_scan_ms += ms_since(t);

    let t = Instant::now();
    let old_img = Image::locate(&old_maps, old_exe).ok_or_else(|| TransferError::NoImage {
        binary: old_exe.clone(),
        pid,
        new: false,
    })?;
    let new_img = Image::locate(&new_maps, new_exe).ok_or_else(|| TransferError::NoImage {
        binary: new_exe.clone(),
        pid,
        new: true,
    })?;
    let old_img = old_img.with_tls_block(main_thread_tls(old, pid)?);
    let new_img = new_img.with_tls_block(main_thread_tls(next, pid)?);
    let dirt = match mcr_dirty::written_ranges(old_host) {
        Ok(d) => {
            let c = d.counts();
            sum.dirty_pages += c.dirty();
            sum.clean_pages += c.clean();
            Some(d)
        }
        Err(e) => {
            warn(Warning::NoDirtyTracking { pid, reason: e.to_string() });
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
        (Ok((old, _)), Ok((new, held))) => Some(StartupTables { old, new, held }),
        (Err(e), _) | (_, Err(e)) => {
            warn(Warning::StartupAllocationsUnknown { pid, reason: crate::error::chain(&e) });
            None
        }
    };
    sum.startup_tables_ms += ms_since(ts);
    let mem = File::options()
        .read(true)
        .write(true)
        .open(mcr_procfs::Process::Pid(new_host).file("mem"))
        .map_err(|source| TransferError::NewMemory { pid, source })?;
    let mut new_process = NewProcess { next, pid, host_pid: new_host };
    // Before tracing: the state may point into these mappings, and must find them there.
    // Each symbolizes its whole startup log: asked once.
    let old_log = mappings::startup_log(old, pid)?;
    let new_log = mappings::startup_log(new_process.next, pid)?;
    let (old_later, new_later) = (&old_log.after_startup.mapped, &new_log.after_startup.mapped);
    let library_blocks = old_log.allocated_at_startup.iter().filter(|b| b.pid == pid && b.live && b.placeable).count();
    sum.mapped_bytes += mappings::map_again(pid, old_host, &old_mem, old_later, new_later, &mut new_process, &mem)?;
    // What the old runtime has to say, asked before the new process maps the old heap:
    // the libc code its answers run may allocate there, and the new process sees the
    // memfd's current bytes wherever it has not written yet.
    let pthread_keys = keys::of_old(old, pid)?;
    let old_attributes = old_attributes(pid, old)?;
    // Asked now, while the connection list is from the quiesce: a client that left since
    // turns its connection into a "plain" descriptor in the runtime's answer. It moves
    // once, as the connection it was listed as.
    let mut made_after = old.post_startup_fds(pid)?;
    // A process forked after startup has a counterpart forked from the new parent, whose
    // adopted heap it inherited: its own old heap is copied block by block.
    let ta = Instant::now();
    let adopted = if volatile {
        None
    } else {
        match adopt_heap::adopt(pid, old_host, &old_mapped, &mut new_process, &mem)? {
            Ok(a) => Some(a),
            Err(adopt_heap::NotAdopted::Nothing) => None,
            Err(adopt_heap::NotAdopted::Overlap(why)) => {
                warn(Warning::HeapNotAdopted { pid, reason: why });
                None
            }
        }
    };
    let held = startup.as_ref().map_or(0, |s| s.held.len());
    if adopted.is_some() && library_blocks > held {
        return Err(TransferError::LibraryStateTwice { pid, live: library_blocks, held });
    }
    if let Some(a) = &adopted {
        sum.heap_regions_adopted += a.regions;
        sum.heap_bytes_adopted += a.bytes;
        sum.heap_bytes_mapped += a.mapped;
    }
    sum.heap_adopt_ms += ms_since(ta);
    let in_adopted = |addr: u64| adopted.as_ref().is_some_and(|a| a.contains(addr));
    let new_view = ProcessMemory::open(new_host)?;
    let mut target = TracerTarget::new(new_process, mem);
    let key_values = keys::value_words(pid, &pthread_keys)?;
    let mine: Vec<&OpenConnections> = connections.iter().filter(|c| c.pid == pid).collect();
    let fds: Vec<i32> = mine.iter().flat_map(|c| c.fds.iter().copied()).collect();
    made_after.retain(|fd| !fds.contains(fd));
    let moved: Vec<i32> = fds.iter().chain(&made_after).copied().collect();
    let registrations = if volatile { Vec::new() } else { descriptors::epoll_registrations(old_host) };
    // The kernel holds the data of the registrations that move, and a server may keep
    // its per-connection state nowhere else (`epoll_event.data.ptr`): each is a root of
    // the trace, an untyped word like a pthread key's value.
    let mut words: Vec<(String, u64)> =
        key_values.iter().cloned().chain(descriptors::epoll_data_words(&registrations, &moved, &made_after)).collect();
    let stack_map = stack_map(old_host, &old_maps, &old_mem, new_host, &new_maps);
    // Read now: the new process made the old one's later mappings again and adopted its
    // heap above.
    let mappings_error = |source| TransferError::Mappings { pid, source };
    let old_memory = Memory { maps: mcr_procfs::maps::read(old_host).map_err(mappings_error)?, log: old_log };
    let new_memory = Memory { maps: mcr_procfs::maps::read(new_host).map_err(mappings_error)?, log: new_log };
    let written = |v: u64| is_dirty(v & !4095, 4096);
    // Pages of memory the program mapped itself at startup and wrote since (libapr's
    // allocator blocks: httpd's pools) go to the new process as they are, over what its
    // own startup put there, as the globals written since startup do; every word in them
    // that holds an address of the heap or of the binary is a root of the trace (an
    // untyped word), rewritten where what it points to moved.
    // Untyped: nothing tells where its objects begin, so only into the same code (the
    // same build, the same libraries), whose startup laid that memory out the same way.
    // Between httpd's releases, whose types did not change, the carried pages still held
    // objects where the new startup's own objects expected others: the new children
    // crashed after the commit.
    let not_carried = other_code(old_prog, new_prog, &old_memory.maps, &new_memory.maps);
    let carried = match not_carried {
        None => written_startup_pages(&old_memory, &new_memory, &written),
        Some(_) => Vec::new(),
    };
    sum.startup_mapped_bytes_carried += carried.iter().map(|(s, e)| e - s).sum::<u64>();
    let carried_pages =
        CarriedPages::read(&carried, &old_view, &|v| heap.containing(v).is_some() || old_img.contains(v))
            .map_err(|source| TransferError::Mappings { pid, source })?;
    let first_carried_word = words.len();
    words.extend(carried_pages.roots());
    let in_carried = |v: u64| carried.iter().any(|&(s, e)| s <= v && v < e);
    let same_memory = |v: u64| {
        if in_carried(v) {
            Ok(())
        } else {
            same_memory_at(&old_memory, &new_memory, &written, v, not_carried.as_deref())
        }
    };
    let initial = super::initial_data::InitialData::read(old_exe);
    let initial_bytes = |a: u64, len: u64| initial.as_ref()?.bytes(a, len);
    let libraries: Vec<(u64, u64)> = old_maps
        .iter()
        .filter(|r| is_shared_library(&r.name) && Path::new(&r.name) != old_exe.as_path())
        .map(|r| (r.start, r.end))
        .collect();
    let in_library = |v: u64| libraries.iter().any(|&(s, e)| (s..e).contains(&v));
    let pair = Pair {
        old: Version { prog: old_prog, image: old_img },
        old_mem: &old_view,
        heap: &heap,
        new: Version { prog: new_prog, image: new_img },
        dirty: Some(&is_dirty),
        startup: startup.as_ref(),
        new_mem: Some(&new_view),
        adopted: adopted.is_some().then_some(&in_adopted as &dyn Fn(u64) -> bool),
        stack: stack_map.as_ref(),
        same_memory: Some(&same_memory),
        initial: initial.as_ref().map(|_| &initial_bytes as &dyn Fn(u64, u64) -> Option<Vec<u8>>),
        census: p.count_pointers.then_some(&in_library as &dyn Fn(u64) -> bool),
    };
    let moved_state = mcr_tracer::transfer_with_words(&pair, &mut target, &words)
        .map_err(|source| TransferError::Trace { pid, source })?;
    carried_pages
        .write(&mut target, &moved_state.words[first_carried_word..])
        .map_err(|e| TransferError::Trace { pid, source: e.into() })?;
    // A destructor in the old binary is the same function in the new one; one in a
    // library stays where it is (libraries load at the same addresses in both versions).
    let destructor = |d: u64| {
        if d == 0 || !pair.old.image.contains(d) {
            return Some(d);
        }
        mcr_tracer::translate(old_prog, &pair.old.image, new_prog, &pair.new.image, d)
    };
    let recreated = keys::to_recreate(pid, &pthread_keys, &moved_state.words[..key_values.len()], destructor)?;
    sum.pthread_keys += recreated.len();
    keys::recreate(&mut target.process, recreated)?;
    sum.trace_ms += ms_since(t);
    sum.processes += 1;
    sum.state.add(&moved_state.report);
    mcr_protocol::test_hook::pause(mcr_protocol::test_hook::point::TRANSFERRING);

    let t = Instant::now();
    let resumes_sessions = mcr_typemodel::diff::Sessions::of(new_prog).resumes();
    if let Some(&fd) = mine.iter().flat_map(|c| c.pinned.iter()).next().filter(|_| !resumes_sessions) {
        return Err(TransferError::ThreadServed { pid, fd });
    }
    if volatile {
        if let Some(&fd) = made_after.first() {
            return Err(TransferError::VolatileDescriptor { pid, fd });
        }
    } else {
        // A respawned process inherited its connection from the parent that forked it.
        if !fds.is_empty() {
            descriptors::import(old_host, &fds, &mut target.process, Moving::Connections)?;
        }
        if !made_after.is_empty() {
            let instead = &p.startup_sockets;
            descriptors::import_translating(old_host, &made_after, &mut target.process, Moving::Descriptors, instead)?;
        }
        if !moved.is_empty() {
            let regs = descriptors::epoll_registrations_to_add(
                registrations,
                &moved,
                &made_after,
                |data| {
                    if heap.containing(data).is_some() {
                        moved_state.relocate(&heap, data).ok_or(TransferError::EpollData(data))
                    } else {
                        Ok(data)
                    }
                },
                |r| TransferError::EpollDataInMovedSet { pid, epfd: r.epfd, fd: r.fd, data: r.data },
            )?;
            if !regs.is_empty() {
                target.process.runtime(RuntimeCommandKind::EpollAdd { registrations: regs })?;
            }
        }
    }
    sum.descriptors += made_after.len();
    sum.connections += fds.len();
    sum.connections_ms += ms_since(t);
    // Last: the credentials among them may drop the privileges the steps above need.
    apply_attributes(pid, old_attributes, &mut target.process)?;
    Ok(sum)
}

/// The old process's attributes, at startup and now.
fn old_attributes(pid: i32, old: &mut Connection) -> Result<Snapshots, TransferError> {
    match old.runtime(pid, RuntimeCommandKind::Attributes)? {
        RuntimeReply::Attributes { startup, now } => Ok(Snapshots { startup: startup.map(|s| *s), now: *now }),
        other => Err(TransferError::UnexpectedReply(Box::new(other))),
    }
}

/// The process attributes the old process changed after startup, applied in the new one
/// (the preflight refused the update for those that cannot be).
fn take_over_attributes(pid: i32, old: &mut Connection, new: &mut NewProcess<'_>) -> Result<(), TransferError> {
    let snaps = old_attributes(pid, old)?;
    apply_attributes(pid, snaps, new)
}

fn apply_attributes(pid: i32, snaps: Snapshots, new: &mut NewProcess<'_>) -> Result<(), TransferError> {
    let changes = snaps.changes(pid).map_err(|refused| TransferError::Attributes {
        pid,
        what: refused.into_iter().map(|(what, why)| format!("{what}: {why}")).collect::<Vec<_>>().join("; "),
    })?;
    if !changes.is_empty() {
        new.runtime(RuntimeCommandKind::ApplyAttributes { changes })?;
    }
    Ok(())
}

/// Where the old process's main stack is in the new one (`mcr_tracer::StackMap`); `None`
/// when either layout cannot be read (then pointers into it stay as they are).
fn stack_map(
    old_host: i32,
    old_maps: &[Region],
    old_mem: &ProcessMemory,
    new_host: i32,
    new_maps: &[Region],
) -> Option<StackMap> {
    let layout = |host: i32, maps: &[Region]| {
        let s = mcr_procfs::stat::read(host).ok()?.initial_stack?;
        let stack = maps.iter().find(|r| r.name == "[stack]")?;
        Some(StackLayout {
            low: stack.start,
            top: stack.end,
            start_stack: s.start_stack,
            arg_start: s.arg_start,
            arg_end: s.arg_end,
            env_start: s.env_start,
            env_end: s.env_end,
        })
    };
    let old = layout(old_host, old_maps)?;
    let new = layout(new_host, new_maps)?;
    Some(StackMap::between(old, new, user_env_end(old_mem, &old)))
}

/// Where the old process's own environment strings end: at the first of mcr's variables,
/// which the launcher puts after them (`LD_PRELOAD` first). `None` when the strings no
/// longer read so (a program that wrote its process title over them).
fn user_env_end(mem: &ProcessMemory, l: &StackLayout) -> Option<u64> {
    let len = l.env_end.checked_sub(l.env_start).filter(|&n| n <= 1 << 20)?;
    let mut buf = vec![0u8; len as usize];
    mem.read(l.env_start, &mut buf).ok()?;
    let mut at = 0usize;
    for s in buf.split(|&b| b == 0) {
        if s.starts_with(b"LD_PRELOAD=") {
            return Some(l.env_start + at as u64);
        }
        at += s.len() + 1;
    }
    None
}

/// A process's memory map and its startup log (what its startup mapped, and later).
struct Memory {
    maps: Vec<mcr_procfs::Mapping>,
    log: mcr_protocol::StartupLog,
}

/// Why the new version's code is not the old one's (memory mapped at startup is then not
/// carried): another build of the program (or one without a build ID), or a shared
/// library the new process maps from another file (upgraded on disk since).
fn other_code(
    old_prog: &Program,
    new_prog: &Program,
    old_maps: &[mcr_procfs::Mapping],
    new_maps: &[mcr_procfs::Mapping],
) -> Option<String> {
    match (&old_prog.build_id, &new_prog.build_id) {
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => return Some(format!("the new version is another build ({a} -> {b})")),
        _ => return Some("a build without a build ID".into()),
    }
    // mcr's own runtime is not the program's: what it maps is its own.
    let library = |m: &&mcr_procfs::Mapping| is_shared_library(&m.path) && !m.path.ends_with("/libmcr.so");
    old_maps.iter().filter(library).find_map(|o| {
        let same = new_maps.iter().any(|n| n.path == o.path && n.inode == o.inode);
        (!same).then(|| format!("{} is another file in the new version", o.path))
    })
}

/// The private pages the old version's startup mapped (where the new version's startup
/// mapped the same, at the same place) that the old version wrote since startup, as runs
/// [start, end) of whole pages.
fn written_startup_pages(old: &Memory, new: &Memory, written: &dyn Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let key = |m: &mcr_protocol::StartupMapping| (m.pid, m.tid, m.seq);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for m in &old.log.mapped_at_startup {
        let twin = new.log.mapped_at_startup.iter().any(|n| key(n) == key(m) && (n.start, n.len) == (m.start, m.len));
        let private = |at: u64| old.maps.iter().find(|o| o.contains(at)).is_some_and(|o| o.private && o.writable);
        if !twin || usize::try_from(m.start).ok().and_then(mcr_alloc::geometry::slot_of).is_some() {
            continue;
        }
        for page in (m.start..m.start + m.len).step_by(4096) {
            if !written(page) || !private(page) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.1 == page => r.1 += 4096,
                _ => runs.push((page, page + 4096)),
            }
        }
    }
    runs
}

/// Whether a mapping's path is a shared library's.
fn is_shared_library(path: &str) -> bool {
    path.starts_with('/') && path.contains(".so")
}

/// The pages of memory mapped at startup that move, read from the old process: their
/// bytes, and the words in them that `root` says are roots of the trace, as (page run,
/// offset, value).
struct CarriedPages {
    pages: Vec<(u64, Vec<u8>)>,
    words: Vec<(usize, usize, u64)>,
}

impl CarriedPages {
    fn read(runs: &[(u64, u64)], old: &dyn ReadMemory, root: &dyn Fn(u64) -> bool) -> Result<Self, std::io::Error> {
        let mut out = CarriedPages { pages: Vec::with_capacity(runs.len()), words: Vec::new() };
        for &(start, end) in runs {
            let mut bytes = vec![0u8; (end - start) as usize];
            old.read(start, &mut bytes)
                .map_err(|e| std::io::Error::other(format!("reading {start:#x}-{end:#x}: {e}")))?;
            for (i, w) in bytes.chunks_exact(8).enumerate() {
                let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                if v != 0 && root(v) {
                    out.words.push((out.pages.len(), 8 * i, v));
                }
            }
            out.pages.push((start, bytes));
        }
        Ok(out)
    }

    /// The word roots, labeled by address, in order.
    fn roots(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.words
            .iter()
            .map(|&(p, o, v)| (format!("memory mapped at startup, at {:#x}", self.pages[p].0 + o as u64), v))
    }

    /// Writes the pages into the new process, each word root as the trace relocated it
    /// (`relocated`, in the order of [`CarriedPages::roots`]).
    fn write(mut self, target: &mut dyn Target, relocated: &[u64]) -> Result<(), TargetError> {
        for (&(p, o, _), &v) in self.words.iter().zip(relocated) {
            self.pages[p].1[o..o + 8].copy_from_slice(&v.to_ne_bytes());
        }
        for (start, bytes) in self.pages {
            target.write_owned(start, bytes)?;
        }
        target.flush()
    }
}

/// Whether the new process has the same memory as the old one at `v`, an address in no
/// heap block, the binary or the main stack, which a pointer there keeps: else why not.
/// - What the old process mapped after startup is there (made again at its address).
/// - What its startup mapped (APR's blocks, shared memory zones) must be the new
///   startup's counterpart (the same thread's mapping of the same count) at the same
///   place, and, where private, unwritten since startup: the new process has its own
///   startup's contents there, not what the old one wrote since (httpd's keep-alive
///   queue, in a block of its child's pool: the moved connection was linked into the old
///   queue, the new child crashed on it).
/// - Elsewhere (threads' stacks, libraries) the same file or anonymous memory, shared or
///   private, with the same access.
///
/// An address the old process has nothing at is a dangling value, kept as it is.
/// `not_carried`: why memory mapped at startup and written since is not carried.
fn same_memory_at(
    old: &Memory,
    new: &Memory,
    written: &dyn Fn(u64) -> bool,
    v: u64,
    not_carried: Option<&str>,
) -> Result<(), String> {
    // The heap's window: an address there that is in no block (just past a pool's
    // arena) is the heap's, which the new process adopted (mapped privately).
    if usize::try_from(v).ok().and_then(mcr_alloc::geometry::slot_of).is_some() {
        return Ok(());
    }
    let Some(o) = old.maps.iter().find(|m| m.contains(v)) else { return Ok(()) };
    if old.log.after_startup.mapped.iter().any(|&(s, e)| s <= v && v < e) {
        return Ok(());
    }
    let inside = |m: &&mcr_protocol::StartupMapping| m.start <= v && v < m.start + m.len;
    if let Some(m) = old.log.mapped_at_startup.iter().rev().find(inside) {
        let key = |m: &mcr_protocol::StartupMapping| (m.pid, m.tid, m.seq);
        let twin = new.log.mapped_at_startup.iter().find(|n| key(n) == key(m));
        return match twin {
            Some(n) if (n.start, n.len) == (m.start, m.len) && !(o.private && written(v)) => Ok(()),
            Some(n) if (n.start, n.len) == (m.start, m.len) => Err(format!(
                "points to {v:#x}, into memory the old version's startup mapped at {:#x}-{:#x} (thread {} of \
                 process {}, its mapping {}), whose page the old version wrote since startup: what is there in the \
                 new process is its own startup's, and mcr carries memory a program maps itself at startup (libapr's \
                 allocator blocks, say) only as bytes, into the same build with the same libraries{}",
                m.start,
                m.start + m.len,
                m.tid,
                m.pid,
                m.seq + 1,
                not_carried.map(|why| format!(": {why}")).unwrap_or_default()
            )),
            _ => Err(format!(
                "points to {v:#x}, into memory the old version's startup mapped at {:#x}-{:#x} (thread {} of process \
                 {}, its mapping {}), which the new version's startup {}: what it holds there is another object",
                m.start,
                m.start + m.len,
                m.tid,
                m.pid,
                m.seq + 1,
                twin.map_or("did not make".to_string(), |n| format!("made at {:#x}-{:#x}", n.start, n.start + n.len))
            )),
        };
    }
    let what = |m: &mcr_procfs::Mapping| {
        let path = if m.path.is_empty() { "anonymous memory" } else { m.path.as_str() };
        let sharing = if m.private { "private" } else { "shared" };
        let access = format!("{}{}", if m.readable { 'r' } else { '-' }, if m.writable { 'w' } else { '-' });
        format!("{path} ({sharing}, {access}) at {:#x}-{:#x}", m.start, m.end)
    };
    let alike = |n: &&mcr_procfs::Mapping| {
        n.path == o.path && n.private == o.private && n.readable == o.readable && n.writable == o.writable
    };
    match new.maps.iter().find(|m| m.contains(v)) {
        Some(n) if alike(&n) => Ok(()),
        found => Err(format!(
            "points to {v:#x}, into the old version's {}, which the new version does not have there ({}): mcr \
             cannot tell where its contents went",
            what(o),
            found.map_or("nothing is mapped there".to_string(), |n| format!("it has {}", what(n)))
        )),
    }
}
