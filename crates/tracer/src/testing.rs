//! In-memory stand-ins for the two processes of a transfer, and synthetic programs built
//! by hand, for the phases' unit tests: the old process is bytes and a list of heap
//! blocks; the new one ([`NewProcess`]) is bytes, a bump allocator, and a record of what
//! the transfer asked of it.

use crate::image::Image;
use crate::plan::{plan, TransferPlan};
use crate::roots::{self, Roots};
use crate::startup::{StartupKey, StartupRecord, StartupTable, StartupTables};
use crate::target::{startup_block_size, Target, TargetError};
use crate::transfer::{transfer, Pair, Transfer, TransferError, Version};
use crate::walk::{walk, Reached};
use crate::write::{self, Destinations, Writer};
use crate::Hints;
use mcr_heap::{HeapIndex, MemoryError, Object, ReadMemory};

/// Room the fake heaps leave before each block (blocks do not touch, as in a real heap).
const GAP: u64 = 16;
use mcr_protocol::Relocation;
use mcr_typemodel::{Composite, Encoding, Global, Location, Member, Program, Symbol, SymbolKind, Type, TypeId};
use std::collections::BTreeMap;

/// Where the old binary is mapped (non-PIE: bias 0) and where its link-time addresses
/// fall; the new binary has the same link-time range, loaded `NEW_BIAS` higher.
pub const OLD_IMAGE: (u64, u64) = (0x40_0000, 0x50_0000);
pub const NEW_BIAS: u64 = 0x20_0000;
/// Where each process's heap blocks start.
pub const OLD_HEAP: u64 = 0x1000_0000;
pub const NEW_HEAP: u64 = 0x2000_0000;

const PAGE: u64 = 4096;

/// Sparse memory: the pages something was written to.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    pages: BTreeMap<u64, Vec<u8>>,
}

impl Memory {
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let a = addr + i as u64;
            self.pages.entry(a / PAGE).or_insert_with(|| vec![0; PAGE as usize])[(a % PAGE) as usize] = *b;
        }
    }

    /// `len` bytes at `addr`, `None` if any is unmapped.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        (0..len as u64)
            .map(|i| {
                let a = addr + i;
                self.pages.get(&(a / PAGE)).map(|p| p[(a % PAGE) as usize])
            })
            .collect()
    }

    pub fn u64(&self, addr: u64) -> u64 {
        u64::from_ne_bytes(self.bytes(addr, 8).expect("mapped").try_into().expect("8 bytes"))
    }

    pub fn i64(&self, addr: u64) -> i64 {
        self.u64(addr) as i64
    }

    pub fn i32(&self, addr: u64) -> i32 {
        i32::from_ne_bytes(self.bytes(addr, 4).expect("mapped").try_into().expect("4 bytes"))
    }
}

fn unmapped() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not mapped")
}

impl ReadMemory for Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let got = self.bytes(addr, buf.len()).ok_or(MemoryError::Read {
            pid: 0,
            addr,
            len: buf.len(),
            source: unmapped(),
        })?;
        buf.copy_from_slice(&got);
        Ok(())
    }
}

/// The old process: memory and its live heap blocks.
#[derive(Debug)]
pub struct OldProcess {
    pub mem: Memory,
    blocks: Vec<Object>,
    next: u64,
}

impl Default for OldProcess {
    fn default() -> Self {
        OldProcess { mem: Memory::default(), blocks: Vec::new(), next: OLD_HEAP }
    }
}

impl OldProcess {
    /// A live heap block holding `bytes`; its address.
    pub fn block(&mut self, bytes: &[u8], startup: bool) -> u64 {
        let addr = self.next + GAP;
        self.next = (addr + bytes.len() as u64).next_multiple_of(16);
        self.mem.write(addr, bytes);
        self.blocks.push(Object { addr, size: bytes.len() as u64, startup });
        addr
    }

    /// The address the next [`Self::block`] gets (for a block that points into itself).
    pub fn next_block(&self) -> u64 {
        self.next + GAP
    }

    pub fn heap(&self) -> HeapIndex {
        HeapIndex::from_objects(self.blocks.clone(), 0)
    }
}

/// One call of [`Target::run_handlers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerCall {
    pub what: String,
    pub objects: Vec<(Vec<u8>, u64, u64)>,
    pub relocations: Vec<Relocation>,
}

/// The new process: memory, its live blocks (as its allocator's metadata would list
/// them), and what the transfer asked of it.
#[derive(Debug)]
pub struct NewProcess {
    pub mem: Memory,
    next: u64,
    blocks: Vec<Object>,
    /// Every `allocate` call's sizes.
    pub allocations: Vec<Vec<u64>>,
    /// (address, length) of every write.
    pub writes: Vec<(u64, usize)>,
    pub handler_calls: Vec<HandlerCall>,
    pub adopted: Vec<(u64, StartupKey)>,
    /// Make `run_handlers` fail with this message.
    pub handler_failure: Option<String>,
    /// Make `allocate` return one block fewer than asked for.
    pub short_allocation: bool,
    /// Every block `free` was asked to free.
    pub freed: Vec<u64>,
}

impl Default for NewProcess {
    fn default() -> Self {
        NewProcess {
            mem: Memory::default(),
            next: NEW_HEAP,
            blocks: Vec::new(),
            allocations: Vec::new(),
            writes: Vec::new(),
            handler_calls: Vec::new(),
            adopted: Vec::new(),
            handler_failure: None,
            short_allocation: false,
            freed: Vec::new(),
        }
    }
}

impl NewProcess {
    fn malloc(&mut self, size: u64, startup: bool) -> u64 {
        let addr = self.next + GAP;
        self.next = (addr + size).next_multiple_of(16);
        self.blocks.push(Object { addr, size, startup });
        self.mem.write(addr, &vec![0; size as usize]);
        addr
    }

    /// A block the new version's startup allocated, holding `bytes`.
    pub fn startup_block(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.malloc(bytes.len() as u64, true);
        self.mem.write(addr, bytes);
        addr
    }

    /// Whether anything was written into `[addr, addr + len)`.
    pub fn wrote(&self, addr: u64, len: u64) -> bool {
        self.writes.iter().any(|&(a, l)| a < addr + len && addr < a + l as u64)
    }
}

impl Target for NewProcess {
    fn allocate(&mut self, sizes: &[u64]) -> Result<Vec<u64>, TargetError> {
        self.allocations.push(sizes.to_vec());
        let sizes = &sizes[..sizes.len() - usize::from(self.short_allocation && !sizes.is_empty())];
        Ok(sizes.iter().map(|&s| self.malloc(s, false)).collect())
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), TargetError> {
        if self.mem.bytes(addr, bytes.len()).is_none() {
            return Err(TargetError::Write { addr, len: bytes.len(), source: unmapped() });
        }
        self.mem.write(addr, bytes);
        self.writes.push((addr, bytes.len()));
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let got =
            self.mem.bytes(addr, buf.len()).ok_or(TargetError::Read { addr, len: buf.len(), source: unmapped() })?;
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn run_handlers(
        &mut self,
        what: &str,
        objects: &[(Vec<u8>, u64, u64)],
        relocations: &[Relocation],
    ) -> Result<(), TargetError> {
        self.handler_calls.push(HandlerCall {
            what: what.to_string(),
            objects: objects.to_vec(),
            relocations: relocations.to_vec(),
        });
        match &self.handler_failure {
            Some(m) => Err(TargetError::Runtime(m.clone())),
            None => Ok(()),
        }
    }

    fn free(&mut self, blocks: &[u64]) -> Result<(), TargetError> {
        self.freed.extend_from_slice(blocks);
        Ok(())
    }

    fn adopt_startup(&mut self, blocks: &[(u64, StartupKey)]) -> Result<(), TargetError> {
        self.adopted.extend_from_slice(blocks);
        Ok(())
    }

    fn block(&self, addr: u64) -> Option<Object> {
        self.blocks.iter().find(|b| b.addr <= addr && (addr < b.end() || addr == b.addr)).copied()
    }
}

/// Builds a synthetic program by hand; `types[0]` is void.
pub struct Build(Program);

impl Default for Build {
    fn default() -> Self {
        let mut p = Program::empty("synthetic".into());
        p.has_debug_info = true;
        p.types.push(Type::Void);
        Build(p)
    }
}

pub fn members(fields: &[(&str, TypeId, u64)]) -> Vec<Member> {
    fields
        .iter()
        .map(|(n, t, o)| Member { name: Some(n.to_string()), ty: *t, offset: *o, bit_size: None, bit_offset: None })
        .collect()
}

impl Build {
    pub fn add(&mut self, t: Type) -> TypeId {
        self.0.types.push(t);
        (self.0.types.len() - 1) as TypeId
    }

    /// An id to fill in later with [`Build::set`] (a struct its own members point to).
    pub fn reserve(&mut self) -> TypeId {
        self.add(Type::Unknown { size: None })
    }

    pub fn set(&mut self, id: TypeId, t: Type) {
        self.0.types[id as usize] = t;
    }

    pub fn base(&mut self, name: &str, size: u64, encoding: Encoding) -> TypeId {
        self.add(Type::Base { name: name.into(), size, encoding })
    }

    pub fn int(&mut self) -> TypeId {
        self.base("int", 4, Encoding::Signed)
    }

    pub fn long(&mut self) -> TypeId {
        self.base("long", 8, Encoding::Signed)
    }

    pub fn char(&mut self) -> TypeId {
        self.base("char", 1, Encoding::SignedChar)
    }

    pub fn ptr(&mut self, to: TypeId) -> TypeId {
        self.add(Type::Pointer { pointee: to, size: 8 })
    }

    /// `void *` (type 0 is void).
    pub fn void_ptr(&mut self) -> TypeId {
        self.ptr(0)
    }

    /// A pointer to `void f(void)`.
    pub fn fn_ptr(&mut self) -> TypeId {
        let f = self.add(Type::Function { ret: 0, params: vec![], variadic: false });
        self.ptr(f)
    }

    pub fn strukt(&mut self, name: &str, size: u64, fields: &[(&str, TypeId, u64)]) -> TypeId {
        self.add(Self::composite_struct(name, size, fields))
    }

    pub fn composite_struct(name: &str, size: u64, fields: &[(&str, TypeId, u64)]) -> Type {
        Type::Struct(Composite { name: Some(name.into()), size, members: members(fields), incomplete: false })
    }

    pub fn union(&mut self, name: &str, size: u64, fields: &[(&str, TypeId)]) -> TypeId {
        let fields: Vec<(&str, TypeId, u64)> = fields.iter().map(|&(n, t)| (n, t, 0)).collect();
        self.add(Type::Union(Composite { name: Some(name.into()), size, members: members(&fields), incomplete: false }))
    }

    /// A global at link-time address `addr`, its size from its type.
    pub fn global(&mut self, name: &str, addr: u64, ty: TypeId) -> &mut Global {
        let size = self.0.size_of(ty);
        self.0.globals.push(Global {
            name: name.into(),
            unit: "t.c".into(),
            function: None,
            is_static: false,
            location: Location::Address { address: addr },
            size,
            ty,
        });
        self.0.globals.last_mut().expect("just pushed")
    }

    pub fn symbol(&mut self, name: &str, addr: u64, size: u64, kind: SymbolKind) {
        self.0.symbols.push(Symbol { name: name.into(), address: addr, size, kind, global: true, file: None });
    }

    pub fn hint(&mut self, h: &str) {
        self.0.hints.push(h.into());
    }

    pub fn done(mut self) -> Program {
        self.0.symbols.sort_by_key(|s| s.address);
        self.0
    }
}

/// Both processes of a transfer, and what else the transfer reads.
pub struct World {
    pub old: Program,
    pub new: Program,
    pub old_proc: OldProcess,
    pub new_proc: NewProcess,
    /// Old memory written since startup, `[start, end)`; `None`: nothing tracked writes.
    pub written: Option<Vec<(u64, u64)>>,
    pub startup: Option<StartupTables>,
    /// The main thread's TLS blocks (old, new); `None`: not known.
    pub tls_blocks: Option<(u64, u64)>,
    /// The new process adopted the old heap: its blocks are there at their addresses.
    pub adopted_heap: bool,
    /// Where the old main stack is in the new process.
    pub stack: Option<crate::StackMap>,
    /// Old memory outside the heap and the binary that the new process has no counterpart
    /// of, [start, end).
    pub not_in_new: Option<(u64, u64)>,
    /// The old binary's initial data: (link-time address, bytes); `None`: unknown.
    pub initial_data: Option<(u64, Vec<u8>)>,
    /// Count the pointers ([`crate::PointerCensus`]); addresses in `LIBRARY` are a
    /// library's.
    pub census: bool,
}

/// A shared library's mapping in the old process, for the pointer census.
pub const LIBRARY: (u64, u64) = (0x7fff_f7a0_0000, 0x7fff_f7c0_0000);

impl World {
    pub fn new(old: Program, new: Program) -> World {
        World {
            old,
            new,
            old_proc: OldProcess::default(),
            new_proc: NewProcess::default(),
            written: None,
            startup: None,
            tls_blocks: None,
            adopted_heap: false,
            stack: None,
            not_in_new: None,
            initial_data: None,
            census: false,
        }
    }

    pub fn old_image() -> Image {
        Image::new(0, vec![OLD_IMAGE])
    }

    pub fn new_image() -> Image {
        Image::new(NEW_BIAS, vec![(OLD_IMAGE.0 + NEW_BIAS, OLD_IMAGE.1 + NEW_BIAS)])
    }

    /// Set the old global `name` to `bytes`, and map the new one (zeroed, or as the new
    /// version's startup set it: `new_bytes`).
    pub fn set_global(&mut self, name: &str, bytes: &[u8]) {
        let at = self.old.global(name).and_then(Global::address).expect("old global");
        self.old_proc.mem.write(at, bytes);
        if let Some(n) = self.new.global(name) {
            let len = n.size.unwrap_or(0) as usize;
            let at = n.address().expect("new global") + NEW_BIAS;
            if self.new_proc.mem.bytes(at, len).is_none() {
                self.new_proc.mem.write(at, &vec![0; len]);
            }
        }
    }

    pub fn set_new_global(&mut self, name: &str, bytes: &[u8]) {
        let at = self.new_global(name);
        self.new_proc.mem.write(at, bytes);
    }

    /// Run-time address of the new version's global `name`.
    pub fn new_global(&self, name: &str) -> u64 {
        self.new.global(name).and_then(Global::address).expect("new global") + NEW_BIAS
    }

    /// Both versions' startup allocation tables: (old block, new block, call stack).
    pub fn startup_tables(&mut self, old: &[(u64, u64)], new: &[(u64, u64)]) {
        let rec = |&(addr, stack): &(u64, u64)| StartupRecord {
            addr,
            key: StartupKey { stack, thread: 1, ordinal: 0 },
            site: format!("alloc_{stack}"),
        };
        self.startup = Some(StartupTables {
            old: StartupTable::new(&old.iter().map(rec).collect::<Vec<_>>()),
            new: StartupTable::new(&new.iter().map(rec).collect::<Vec<_>>()),
            held: Vec::new(),
        });
    }

    /// Run `f` on the pair this world describes, and its new process.
    pub fn with_pair<R>(&mut self, f: impl FnOnce(&Pair, &mut NewProcess) -> R) -> R {
        let heap = self.old_proc.heap();
        // What the new process holds before the transfer writes (its binary's literals).
        let new_mem = self.new_proc.mem.clone();
        let written = self.written.clone();
        let dirty = move |a: u64, len: u64| written.iter().flatten().any(|&(s, e)| a < e && s < a + len);
        if self.adopted_heap {
            // The adopted heap: every old block is in the new process at its address.
            for o in heap.iter() {
                if let Some(bytes) = self.old_proc.mem.bytes(o.addr, o.size as usize) {
                    self.new_proc.mem.write(o.addr, &bytes);
                }
            }
        }
        let in_old_heap = |a: u64| (OLD_HEAP..NEW_HEAP).contains(&a);
        let missing = self.not_in_new;
        let same_memory = move |a: u64| match missing {
            Some((s, e)) if (s..e).contains(&a) => Err(format!("nothing of the kind at {a:#x} in the new process")),
            _ => Ok(()),
        };
        let data = self.initial_data.clone();
        let initial = move |a: u64, len: u64| {
            let (start, bytes) = data.as_ref()?;
            let from = usize::try_from(a.checked_sub(*start)?).ok()?;
            bytes.get(from..from + len as usize).map(<[u8]>::to_vec)
        };
        let pair = Pair {
            old: Version { prog: &self.old, image: Self::old_image().with_tls_block(self.tls_blocks.map(|b| b.0)) },
            old_mem: &self.old_proc.mem,
            heap: &heap,
            new: Version { prog: &self.new, image: Self::new_image().with_tls_block(self.tls_blocks.map(|b| b.1)) },
            dirty: self.written.is_some().then_some(&dirty as &dyn Fn(u64, u64) -> bool),
            startup: self.startup.as_ref(),
            new_mem: Some(&new_mem),
            adopted: self.adopted_heap.then_some(&in_old_heap as &dyn Fn(u64) -> bool),
            stack: self.stack.as_ref(),
            same_memory: Some(&same_memory),
            initial: self.initial_data.is_some().then_some(&initial as &dyn Fn(u64, u64) -> Option<Vec<u8>>),
            census: self.census.then_some(&|v| (LIBRARY.0..LIBRARY.1).contains(&v)),
        };
        f(&pair, &mut self.new_proc)
    }

    /// The whole transfer.
    pub fn transfer(&mut self) -> Result<Transfer, TransferError> {
        self.with_pair(|pair, target| transfer(pair, target))
    }

    /// The roots and the walk.
    pub fn walk(&mut self) -> Result<(Roots, Reached), TransferError> {
        self.with_pair(|pair, _| {
            let (_, roots, reached) = walk_everything(pair)?;
            Ok((roots, reached))
        })
    }

    /// The roots, the walk and the plan.
    pub fn plan(&mut self) -> Result<(Reached, TransferPlan), TransferError> {
        self.with_pair(|pair, target| {
            let (_, _, reached) = walk_everything(pair)?;
            let handlers = crate::hints::object_handlers(pair.new.prog);
            let p = plan(pair.old.prog, pair.new.prog, &reached, &handlers, pair.startup, &|_| false, &mut |b| {
                startup_block_size(&*target, b)
            })?;
            Ok((reached, p))
        })
    }

    /// Every phase before the write, then `f` with a [`Writer`] over their results.
    pub fn with_writer<R>(
        &mut self,
        f: impl FnOnce(&Writer, &Roots, &Destinations, &mut NewProcess) -> Result<R, TransferError>,
    ) -> Result<R, TransferError> {
        self.with_pair(|pair, target| {
            let (hints, roots, reached) = walk_everything(pair)?;
            let handlers = crate::hints::object_handlers(pair.new.prog);
            let p = plan(pair.old.prog, pair.new.prog, &reached, &handlers, pair.startup, &|_| false, &mut |b| {
                startup_block_size(&*target, b)
            })?;
            let moved = write::allocate(target, &p, pair.heap.len(), &reached.kept)?;
            let relocations = write::relocations(pair, &reached, &moved);
            let writer = Writer {
                pair,
                hints: &hints,
                reached: &reached,
                plan: &p,
                moved: &moved,
                handlers: &handlers,
                relocations: &relocations,
                literals: Default::default(),
                literal_moves: Default::default(),
            };
            f(&writer, &roots, &moved, target)
        })
    }
}

/// Little-endian bytes of several words, for building objects.
/// The hints, the roots and a walk of everything from them (nothing sealed or kept).
fn walk_everything(pair: &Pair) -> Result<(Hints, Roots, Reached), TransferError> {
    let hints = Hints::of_builds(pair.old.prog, pair.new.prog);
    let roots = roots::collect(pair)?;
    let pinnable = |a| pair.adopted.is_some_and(|f| f(a));
    let (no_seal, globals) = (&|_: &Object, _| false, &roots.globals);
    let reached = walk(pair.old.prog, pair.old_mem, pair.heap, &hints, globals, &[], &[], &pinnable, no_seal, None)?;
    Ok((hints, roots, reached))
}

pub fn words(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Type ids of [`list_program`], for `more` to build on.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub int: TypeId,
    pub long: TypeId,
    pub char: TypeId,
    pub node_ptr: TypeId,
}

/// Link-time address of `head` in the old version (the new one has it at `NEW_HEAD`).
pub const HEAD: u64 = 0x40_1000;
pub const NEW_HEAD: u64 = 0x40_1800;

/// A program with `struct node { int val; struct node *next; }` (or, `grown`,
/// `{ long val; int extra; struct node *next; }`: a field added, an int widened) and
/// `struct node *head`; `more` adds to it.
pub fn list_program(grown: bool, more: impl FnOnce(&mut Build, Ids)) -> Program {
    let mut b = Build::default();
    let (int, long, char) = (b.int(), b.long(), b.char());
    let node = b.reserve();
    let node_ptr = b.ptr(node);
    let fields: &[(&str, TypeId, u64)] = if grown {
        &[("val", long, 0), ("extra", int, 8), ("next", node_ptr, 16)]
    } else {
        &[("val", int, 0), ("next", node_ptr, 8)]
    };
    b.set(node, Build::composite_struct("node", if grown { 24 } else { 16 }, fields));
    b.global("head", if grown { NEW_HEAD } else { HEAD }, node_ptr);
    more(&mut b, Ids { int, long, char, node_ptr });
    b.done()
}

/// An old `struct node`'s bytes.
pub fn node(val: i32, next: u64) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[..4].copy_from_slice(&val.to_ne_bytes());
    b[8..].copy_from_slice(&next.to_ne_bytes());
    b
}

/// An old list `head` → nodes of these values; the nodes' addresses.
pub fn old_list(w: &mut World, vals: &[i32]) -> Vec<u64> {
    let mut next = 0;
    let mut addrs = Vec::new();
    for &v in vals.iter().rev() {
        next = w.old_proc.block(&node(v, next), false);
        addrs.push(next);
    }
    addrs.reverse();
    w.set_global("head", &next.to_ne_bytes());
    addrs
}

/// The values of the new version's list from `head` (grown nodes), and their addresses.
pub fn new_list(w: &World) -> Vec<(i64, u64)> {
    let mem = &w.new_proc.mem;
    let mut at = mem.u64(w.new_global("head"));
    let mut out = Vec::new();
    while at != 0 && out.len() < 100 {
        out.push((mem.i64(at), at));
        at = mem.u64(at + 16);
    }
    out
}

/// For [`list_program`]'s `more`: `struct pool { long used; struct node *first; }` (16
/// bytes: the header of a pool block) and `struct pool *pool`, `struct other { long a;
/// long b; } *o`.
pub fn pool_and_other(b: &mut Build, ids: Ids) {
    let pool = b.strukt("pool", 16, &[("used", ids.long, 0), ("first", ids.node_ptr, 8)]);
    let p = b.ptr(pool);
    b.global("pool", 0x40_1070, p);
    let other = b.strukt("other", 16, &[("a", ids.long, 0), ("b", ids.long, 8)]);
    let o = b.ptr(other);
    b.global("o", 0x40_1078, o);
}

/// [`pool_and_other`] and `struct cfg { long n; struct node *first; } *cfg` (an object
/// carved from a pool).
pub fn pool_and_cfg(b: &mut Build, ids: Ids) {
    pool_and_other(b, ids);
    let cfg = b.strukt("cfg", 16, &[("n", ids.long, 0), ("first", ids.node_ptr, 8)]);
    let p = b.ptr(cfg);
    b.global("cfg", 0x40_1080, p);
}

/// A 72-byte pool block that `pool` reaches at its start: a struct pool, then 56 bytes of
/// arena whose fourth word (offset 40, where a third struct pool's `first` would be) is
/// the address of a 16-byte block `other`, which `o` reaches as struct other; its last
/// two words are zero. (pool, other).
pub fn pool_with_arena(w: &mut World) -> (u64, u64) {
    let other = w.old_proc.block(&words(&[1, 2]), false);
    let pool = w.old_proc.block(&words(&[72, 0, 7, 8, 9, other, 0, 0, 0]), false);
    w.set_global("pool", &pool.to_ne_bytes());
    w.set_global("o", &other.to_ne_bytes());
    (pool, other)
}
