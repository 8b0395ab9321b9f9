use crate::hints::{normalize, tag_note, Hints, Tagged};
use crate::image::{translate, Image};
use crate::startup::{self, Candidate, Placement, StartupKey, StartupTables, Unmatched};
use crate::target::{startup_block_size, Target, TargetError};
use mcr_heap::{HeapIndex, MemoryError, Object, ReadMemory};
use mcr_protocol::Relocation;
use mcr_typemodel::transform::{root_name, same_type, Plan, PointerSite};
use mcr_typemodel::{Layout, OpaqueReason, Pointee, Program, Qualifier, Type, TypeId};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// At most this many reasons for reallocated startup objects go into a report.
const MAX_STARTUP_NOTES: usize = 16;

fn describe_unmatched(walk: &Walk, tables: Option<&StartupTables>, addr: u64, why: &Unmatched) -> String {
    let path = walk.path_of(addr);
    let site = |k: &StartupKey| match tables.and_then(|t| t.old.site(k.stack)) {
        Some(s) => format!("{k}, {s}"),
        None => k.to_string(),
    };
    match why {
        Unmatched::NoRecord => format!(
            "{path}: startup block {addr:#x} reallocated: no allocation record (its call stack stops inside a library, short of the program's code, or it predates mcr's runtime)"
        ),
        Unmatched::NoCounterpart(k) => {
            format!("{path}: startup block {addr:#x} ({}) has no counterpart in the new version's startup; reallocated", site(k))
        }
        Unmatched::TooSmall { key, have, need } => format!(
            "{path}: startup block {addr:#x} ({}) reallocated: the new version's counterpart has {have} bytes, the transferred object needs {need}",
            site(key)
        ),
    }
}

/// `MCR_ADD_OBJ_HANDLER` registrations of the new version (its `handler WHAT` hints):
/// normalized WHAT → as written.
fn object_handlers(new: &Program) -> HashMap<String, String> {
    new.hints.iter().filter_map(|h| h.strip_prefix("handler ")).map(|w| (normalize(w), w.to_string())).collect()
}

/// One version's binary and where it is loaded.
pub struct Version<'a> {
    pub prog: &'a Program,
    pub image: Image,
}

/// An old process and its new counterpart.
pub struct Pair<'a> {
    pub old: Version<'a>,
    pub old_mem: &'a dyn ReadMemory,
    pub heap: &'a HeapIndex,
    pub new: Version<'a>,
    /// Whether old memory `[addr, addr + len)` was written since startup; `None` when
    /// nothing tracked writes (everything counts as written).
    pub dirty: Option<&'a dyn Fn(u64, u64) -> bool>,
    /// Both versions' startup allocations, to match startup objects (`None`: every
    /// reached block is reallocated).
    pub startup: Option<&'a StartupTables>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {reason}")]
    Conflict { path: String, reason: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the new version: {0}")]
    Target(#[from] TargetError),
    #[error("the new version: asked for {asked} blocks, got {got}")]
    Allocated { asked: usize, got: usize },
    /// The new version's object handler failed on `object` (a global's name, or the type
    /// of the heap objects it was given).
    #[error("{object}: {source}")]
    Handler {
        object: String,
        #[source]
        source: TargetError,
    },
}

fn conflict(path: impl Into<String>, reason: impl Into<String>) -> TransferError {
    TransferError::Conflict { path: path.into(), reason: reason.into() }
}

/// What a transfer did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Globals copied into the new version (written since startup).
    pub globals: usize,
    /// Globals left as the new version's startup made them (not written since startup).
    pub globals_clean: usize,
    /// Globals of the old version the new one no longer has: their data is dropped.
    pub globals_dropped: Vec<String>,
    /// Heap blocks carried into the new version (fresh blocks, and startup blocks of the
    /// new version matched with old ones), and the bytes written into them.
    pub objects: usize,
    pub bytes: u64,
    /// Old startup objects matched with the new version's startup block of the same
    /// call-stack ID, thread and ordinal (reused: not reallocated, nothing leaked).
    pub startup_matched: usize,
    /// Of those, how many kept what the new version's startup put in them (the old
    /// version never wrote them since startup).
    pub startup_kept: usize,
    /// Old startup objects reallocated instead (no counterpart, or one too small), and
    /// why (the first few).
    pub startup_reallocated: usize,
    pub startup_notes: Vec<String>,
    /// Live heap blocks in the old process (reached or not).
    pub live_objects: usize,
    /// Objects an MCR_ADD_OBJ_HANDLER of the new version adjusted.
    pub handled: usize,
    pub warnings: Vec<String>,
}

impl Report {
    /// Add another process's figures to these.
    pub fn add(&mut self, o: &Report) {
        self.globals += o.globals;
        self.globals_clean += o.globals_clean;
        self.globals_dropped.extend(o.globals_dropped.iter().cloned());
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.live_objects += o.live_objects;
        self.handled += o.handled;
        self.startup_matched += o.startup_matched;
        self.startup_kept += o.startup_kept;
        self.startup_reallocated += o.startup_reallocated;
        self.startup_notes.extend(o.startup_notes.iter().cloned());
        self.warnings.extend(o.warnings.iter().cloned());
    }
}

/// Where one old block went.
#[derive(Debug, Clone, Copy)]
struct Moved {
    new: u64,
    old_stride: u64,
    new_stride: u64,
}

impl Moved {
    /// New address for `offset` bytes into the old block.
    fn at(&self, offset: u64) -> Option<u64> {
        if self.old_stride == self.new_stride || self.old_stride == 0 {
            return Some(self.new + offset);
        }
        let (i, within) = (offset / self.old_stride, offset % self.old_stride);
        (within == 0).then_some(self.new + i * self.new_stride)
    }
}

/// The result: what moved where, for relocating what the kernel holds (epoll data).
pub struct Transfer {
    moved: BTreeMap<u64, Moved>,
    pub report: Report,
}

impl Transfer {
    /// The new value of `v` if it points into a block this transfer moved.
    pub fn relocate(&self, heap: &HeapIndex, v: u64) -> Option<u64> {
        let o = heap.containing(v)?;
        self.moved.get(&o.addr)?.at(v - o.addr)
    }
}

/// A block reached during the walk.
struct Found {
    obj: Object,
    /// Old element type (typedefs stripped) when a typed pointer to its start reached it.
    ty: Option<TypeId>,
    /// The block whose pointer first reached it (None: a global), and through which
    /// field, for reports (paths are built only when one is needed: chains of blocks are
    /// long, and repeating every path would cost time quadratic in their length).
    parent: Option<u64>,
    hop: String,
}

struct Walk<'p, 'a> {
    pair: &'p Pair<'a>,
    hints: Hints,
    found: BTreeMap<u64, Found>,
    queue: VecDeque<u64>,
    layouts: HashMap<TypeId, std::rc::Rc<Layout>>,
}

fn is_byte(p: &Program, ty: TypeId) -> bool {
    matches!(p.ty(p.strip(ty)), Type::Base { size: 1, .. })
}

pub(crate) fn is_const(p: &Program, mut ty: TypeId) -> bool {
    for _ in 0..16 {
        match p.ty(ty) {
            Type::Qualified { qualifier: Qualifier::Const, .. } => return true,
            Type::Qualified { target, .. } | Type::Typedef { target, .. } => ty = *target,
            _ => return false,
        }
    }
    false
}

impl<'p, 'a> Walk<'p, 'a> {
    fn layout(&mut self, ty: TypeId) -> std::rc::Rc<Layout> {
        let prog = self.pair.old.prog;
        self.layouts.entry(ty).or_insert_with(|| std::rc::Rc::new(prog.layout(ty, &root_name(prog, ty)))).clone()
    }

    /// How the walk reached the block at `addr`, from a global.
    fn path_of(&self, addr: u64) -> String {
        let mut hops: Vec<&str> = Vec::new();
        let mut cur = Some(addr);
        while let Some(a) = cur {
            let Some(f) = self.found.get(&a) else { break };
            hops.push(&f.hop);
            cur = f.parent;
            if hops.len() > 100_000 {
                break;
            }
        }
        hops.reverse();
        if hops.len() > 8 {
            format!(
                "{} -> …({} more)… -> {}",
                hops[..3].join(" -> "),
                hops.len() - 6,
                hops[hops.len() - 3..].join(" -> ")
            )
        } else {
            hops.join(" -> ")
        }
    }

    /// Note a block reached from `parent` through `hop`, with the type its pointer gives it.
    fn reach(
        &mut self,
        obj: Object,
        ty: Option<TypeId>,
        parent: Option<u64>,
        hop: impl FnOnce() -> String,
    ) -> Result<(), TransferError> {
        let prog = self.pair.old.prog;
        match self.found.get_mut(&obj.addr) {
            Some(f) => match (f.ty, ty) {
                (_, None) => {}
                (None, Some(t)) => {
                    f.ty = Some(t);
                    self.queue.push_back(obj.addr);
                }
                (Some(a), Some(b)) if a == b || is_byte(prog, b) => {}
                (Some(a), Some(_)) if is_byte(prog, a) => {
                    f.ty = ty;
                    self.queue.push_back(obj.addr);
                }
                (Some(a), Some(b)) => {
                    let here = match parent {
                        Some(p) => format!("{} -> {}", self.path_of(p), hop()),
                        None => hop(),
                    };
                    return Err(conflict(
                        here,
                        format!(
                            "the block at {:#x} is reached as {} here and as {} from {}; mcr cannot tell which it is",
                            obj.addr,
                            prog.type_name(b),
                            prog.type_name(a),
                            self.path_of(obj.addr)
                        ),
                    ));
                }
            },
            None => {
                self.found.insert(obj.addr, Found { obj, ty, parent, hop: hop() });
                self.queue.push_back(obj.addr);
            }
        }
        Ok(())
    }

    /// Follow the pointers in `bytes` (objects of type `ty`: the block at `from`, or the
    /// global `label`; hints name its fields from `hint_root`: a global's name, or the
    /// type's).
    fn scan_typed(
        &mut self,
        bytes: &[u8],
        ty: TypeId,
        from: Option<u64>,
        label: &str,
        hint_root: &str,
    ) -> Result<(), TransferError> {
        let prog = self.pair.old.prog;
        let stride = prog.size_of(ty).unwrap_or(0);
        if stride == 0 || is_byte(prog, ty) {
            return Ok(());
        }
        let layout = self.layout(ty);
        let count = bytes.len() as u64 / stride;
        for i in 0..count {
            let at = |off: u64| -> u64 {
                let o = (i * stride + off) as usize;
                u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"))
            };
            let elem = |suffix: &str| -> String {
                let name = if from.is_some() { hint_root } else { label };
                if count > 1 {
                    format!("{name}[{i}]{suffix}")
                } else {
                    format!("{name}{suffix}")
                }
            };
            for slot in &layout.pointers {
                let Pointee::Data { ty: pointee } = slot.pointee else { continue };
                let mut v = at(slot.offset);
                if let Some(t) = self.tag_at(hint_root, &slot.path) {
                    v = t.split(v).0;
                }
                if v == 0 {
                    continue;
                }
                if let Some(&obj) = self.pair.heap.containing(v) {
                    let t = (v == obj.addr).then(|| prog.strip(pointee));
                    self.reach(obj, t, from, || elem(field_suffix(&slot.path)))?;
                }
            }
            for r in &layout.opaque {
                let here = || {
                    let e = elem(field_suffix(&r.path));
                    match from {
                        Some(a) => format!("{} -> {e}", self.path_of(a)),
                        None => e,
                    }
                };
                let key = normalize(&format!("{hint_root}{}", field_suffix(&r.path)));
                if self.hints.opaque.contains(&key) {
                    continue;
                }
                let tag = self.tag_at(hint_root, &r.path);
                if let Some(&hinted) = self.hints.points_to.get(&key) {
                    let v = tag.as_ref().map_or(at(r.offset), |t| t.split(at(r.offset)).0);
                    if let Some(&obj) = self.pair.heap.containing(v) {
                        let t = (v == obj.addr).then(|| prog.strip(hinted));
                        self.reach(obj, t, from, || {
                            format!("{} (MCR_POINTS_TO {})", elem(field_suffix(&r.path)), prog.type_name(hinted))
                        })?;
                    }
                    continue;
                }
                if let Some(t) = &tag {
                    // A tagged pointer of no declared type (an integer, a union, a void *):
                    // the block it points to moves, untyped unless a typed pointer reaches it.
                    if r.len >= 8 && r.reason != OpaqueReason::CharArray {
                        let v = t.split(at(r.offset)).0;
                        if let Some(&obj) = self.pair.heap.containing(v).filter(|_| v != 0) {
                            self.reach(obj, None, from, || format!("{} ({})", elem(field_suffix(&r.path)), t.written))?;
                        }
                        continue;
                    }
                }
                match r.reason {
                    OpaqueReason::CharArray => {}
                    OpaqueReason::VoidPointer => {
                        let v = at(r.offset);
                        if let Some(&obj) = self.pair.heap.containing(v) {
                            self.reach(obj, None, from, || format!("{} (void *)", elem(field_suffix(&r.path))))?;
                        }
                    }
                    OpaqueReason::PointerSizedInteger | OpaqueReason::Union | OpaqueReason::Unknown => {
                        let start = (i * stride + r.offset) as usize;
                        let end = (start + r.len as usize).min(bytes.len());
                        self.no_hidden_pointers(&bytes[start..end], here, r.reason)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The `MCR_TAGGED` hint for the word at `layout_path` under `root`, if there is one.
    fn tag_at(&self, root: &str, layout_path: &str) -> Option<Tagged> {
        if self.hints.tagged.is_empty() {
            return None;
        }
        self.hints.tagged.get(&normalize(&format!("{root}{}", field_suffix(layout_path)))).cloned()
    }

    /// Memory mcr cannot type must not hold a heap address: the block it points to
    /// would move and the word could not be updated.
    fn no_hidden_pointers(
        &self,
        bytes: &[u8],
        path: impl FnOnce() -> String,
        why: OpaqueReason,
    ) -> Result<(), TransferError> {
        for (k, w) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            if let Some(obj) = self.pair.heap.containing(v).filter(|_| v != 0) {
                let what = match why {
                    OpaqueReason::Union => "a union",
                    OpaqueReason::PointerSizedInteger => "a pointer-sized integer",
                    OpaqueReason::Unknown => "memory of unknown type",
                    OpaqueReason::VoidPointer => "a void * target",
                    OpaqueReason::CharArray => "a char array",
                };
                return Err(conflict(
                    format!("{}+{}", path(), k * 8),
                    format!(
                        "{what} holds {v:#x}, the address of a live heap block; mcr cannot tell whether it is a pointer, \
                         so it can neither move the block nor leave it (declare the field with its pointer type, or \
                         annotate it with MCR_POINTS_TO or MCR_OPAQUE from mcr.h){}",
                        tag_note(v, obj.addr)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Words a `MCR_POINTS_TO` or `MCR_TAGGED` hint makes pointers although their type is
/// opaque (a union, an integer): (offset in the old object, offset in the new, the tag),
/// for the transform to relocate. (`void *` fields need nothing: the transform relocates
/// every pointer, tags included.)
fn hinted_words(
    old: &Program,
    ot: TypeId,
    new: &Program,
    nt: TypeId,
    root: &str,
    hints: &Hints,
) -> Vec<(usize, usize, Option<Tagged>)> {
    if hints.points_to.is_empty() && hints.tagged.is_empty() {
        return Vec::new();
    }
    let (ol, nl) = (old.layout(ot, &root_name(old, ot)), new.layout(nt, &root_name(new, nt)));
    let mut out = Vec::new();
    for r in ol.opaque.iter().filter(|r| !matches!(r.reason, OpaqueReason::VoidPointer | OpaqueReason::CharArray)) {
        let key = normalize(&format!("{root}{}", field_suffix(&r.path)));
        let tag = hints.tagged.get(&key);
        if !(hints.points_to.contains_key(&key) || tag.is_some()) || hints.opaque.contains(&key) || r.len < 8 {
            continue;
        }
        if let Some(n) = nl.opaque.iter().find(|n| field_suffix(&n.path) == field_suffix(&r.path) && n.len >= 8) {
            out.push((r.offset as usize, n.offset as usize, tag.cloned()));
        }
    }
    out
}

pub(crate) fn field_suffix(path: &str) -> &str {
    // Layout paths start with the root name (`kv_node.next`): keep from the first dot.
    path.find(['.', '[']).map_or("", |i| &path[i..])
}

/// The new version's type for an old one: same kind and name.
fn counterpart(
    old: &Program,
    ty: TypeId,
    new: &Program,
    cache: &mut HashMap<TypeId, Option<TypeId>>,
) -> Option<TypeId> {
    if let Some(c) = cache.get(&ty) {
        return *c;
    }
    let want = old.strip(ty);
    let found = match old.ty(want) {
        Type::Pointer { pointee, .. } => {
            let inner = counterpart(old, *pointee, new, cache);
            new.types.iter().position(
                |t| matches!(t, Type::Pointer { pointee: p, .. } if Some(new.strip(*p)) == inner.map(|i| new.strip(i))),
            )
        }
        other => {
            let name = root_name(old, want);
            let kind = std::mem::discriminant(other);
            new.types
                .iter()
                .enumerate()
                .filter(|(_, t)| std::mem::discriminant(*t) == kind)
                .find(|(i, t)| {
                    root_name(new, *i as TypeId) == name
                        && !matches!(t, Type::Struct(c) | Type::Union(c) if c.incomplete)
                })
                .map(|(i, _)| i)
        }
    }
    .map(|i| i as TypeId);
    cache.insert(ty, found);
    found
}

fn read_vec(mem: &dyn ReadMemory, addr: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
    let mut b = vec![0u8; len as usize];
    mem.read(addr, &mut b)?;
    Ok(b)
}

/// Same NUL-terminated string at both addresses (up to 4 KiB)?
fn same_c_string(old: &dyn ReadMemory, a: u64, new: &dyn Target, b: u64) -> bool {
    let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
    for k in 0..64u64 {
        if old.read(a + k * 64, &mut x).is_err() || new.read(b + k * 64, &mut y).is_err() || x != y {
            return false;
        }
        if x.contains(&0) {
            return true;
        }
    }
    false
}

/// Every old object whose new address the transfer knows: the heap blocks it moved
/// (`heap`) and the main binary's globals the new version has (by name; link-time
/// addresses plus each binary's load bias), sorted by old address.
fn relocation_table(
    old: &Program,
    old_bias: u64,
    new: &Program,
    new_bias: u64,
    mut heap: Vec<Relocation>,
) -> Vec<Relocation> {
    let news: HashMap<String, &mcr_typemodel::Global> =
        new.globals.iter().filter(|g| !g.is_tls()).map(|g| (g.display_name(), g)).collect();
    // One element of an array, or the whole object.
    let element = |p: &Program, t: TypeId| match p.ty(p.strip(t)) {
        Type::Array { element, .. } => p.size_of(*element),
        _ => p.size_of(t),
    };
    for g in &old.globals {
        let (Some(addr), Some(len)) = (g.address(), g.size) else { continue };
        let Some(ng) = news.get(&g.display_name()) else { continue };
        let (Some(naddr), Some(nlen)) = (ng.address(), ng.size) else { continue };
        // Offsets carry over when the type did not change; else only element starts do.
        let (old_stride, new_stride) = if same_type(old, g.ty, new, ng.ty) {
            (0, 0)
        } else {
            (element(old, g.ty).unwrap_or(len), element(new, ng.ty).unwrap_or(nlen))
        };
        heap.push(Relocation { old: old_bias + addr, len, new: new_bias + naddr, old_stride, new_stride });
    }
    mcr_protocol::relocation::sorted(heap)
}

/// Move the state of one old process into its new counterpart.
pub fn transfer(pair: &Pair, target: &mut dyn Target) -> Result<Transfer, TransferError> {
    let (old, new) = (pair.old.prog, pair.new.prog);
    let mut report = Report { live_objects: pair.heap.len(), ..Report::default() };
    let hints = Hints::of_builds(old, new);
    report.warnings.extend(hints.unresolved.iter().map(|u| format!("hint ignored: {u}")));
    let mut walk = Walk { pair, hints, found: BTreeMap::new(), queue: VecDeque::new(), layouts: HashMap::new() };

    // Roots: the globals written since startup that the new version still has.
    struct Root {
        plain: String,
        new_addr: u64,
        old_ty: TypeId,
        new_ty: TypeId,
        name: String,
        bytes: Vec<u8>,
    }
    let mut roots = Vec::new();
    for g in &old.globals {
        let (Some(addr), Some(size)) = (g.address(), g.size) else { continue };
        if size == 0 || is_const(old, g.ty) {
            continue;
        }
        let name = g.display_name();
        let Some(ng) = new.globals.iter().find(|n| n.display_name() == name && !n.is_tls()) else {
            report.globals_dropped.push(name);
            continue;
        };
        let (Some(naddr), Some(_)) = (ng.address(), ng.size) else { continue };
        let old_addr = pair.old.image.bias + addr;
        if let Some(dirty) = pair.dirty {
            if !dirty(old_addr, size) {
                report.globals_clean += 1;
                continue;
            }
        }
        let bytes = read_vec(pair.old_mem, old_addr, size)?;
        walk.scan_typed(&bytes, old.strip(g.ty), None, &name, &g.name)?;
        roots.push(Root {
            plain: g.name.clone(),
            new_addr: pair.new.image.bias + naddr,
            old_ty: g.ty,
            new_ty: ng.ty,
            name,
            bytes,
        });
    }
    // Everything reachable from them.
    let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut roots_by_type: HashMap<TypeId, String> = HashMap::new();
    while let Some(addr) = walk.queue.pop_front() {
        let f = &walk.found[&addr];
        let (obj, ty) = (f.obj, f.ty);
        if let std::collections::hash_map::Entry::Vacant(e) = contents.entry(addr) {
            e.insert(read_vec(pair.old_mem, obj.addr, obj.size)?);
        }
        let bytes = &contents[&addr];
        match ty {
            Some(t) => {
                let root = roots_by_type.entry(t).or_insert_with(|| root_name(old, t)).clone();
                walk.scan_typed(bytes, t, Some(addr), "", &root)?
            }
            None => {
                let place = || walk.path_of(addr);
                walk.no_hidden_pointers(bytes, place, OpaqueReason::VoidPointer)?
            }
        }
    }

    // Plans and sizes in the new version.
    let mut types = HashMap::new();
    let handlers = object_handlers(new);
    // None: the automatic transformation is impossible, but the new version's handler
    // builds the object (it starts zeroed).
    let mut plans: HashMap<TypeId, (Option<Plan>, u64, u64)> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    let mut strides: Vec<(u64, u64)> = Vec::new();
    for (addr, f) in &walk.found {
        let (old_stride, new_stride) = match f.ty {
            Some(t) if !is_byte(old, t) && old.size_of(t).unwrap_or(0) > 0 => {
                if let std::collections::hash_map::Entry::Vacant(slot) = plans.entry(t) {
                    let Some(nt) = counterpart(old, t, new, &mut types) else {
                        return Err(conflict(
                            walk.path_of(*addr),
                            format!("type {} has no counterpart in the new version", old.type_name(t)),
                        ));
                    };
                    let handled = handlers.contains_key(&normalize(&root_name(new, nt)));
                    match Plan::with_root(old, t, new, nt, &root_name(old, t)) {
                        Ok(plan) => {
                            let (o, n) = (plan.old_size, plan.new_size);
                            slot.insert((Some(plan), o, n));
                        }
                        Err(_) if handled => {
                            let (o, n) = (old.size_of(t).unwrap_or(0), new.size_of(nt).unwrap_or(0));
                            slot.insert((None, o, n));
                        }
                        Err(e) => {
                            return Err(conflict(
                                walk.path_of(*addr),
                                format!("cannot transform {}: {e}", old.type_name(t)),
                            ))
                        }
                    }
                }
                let p = &plans[&t];
                (p.1, p.2)
            }
            _ => (0, 0),
        };
        let size = match f.obj.size.checked_div(old_stride) {
            None => f.obj.size,
            Some(n) => n * new_stride + f.obj.size % old_stride,
        };
        order.push(*addr);
        sizes.push(size);
        strides.push((old_stride, new_stride));
    }
    // Startup objects go into the new version's own startup blocks with the same
    // call-stack ID, thread and ordinal; everything else into fresh blocks.
    let cands: Vec<Candidate> = order
        .iter()
        .zip(&sizes)
        .map(|(a, &needed)| Candidate { addr: *a, startup: walk.found[a].obj.startup, needed })
        .collect();
    let (places, unmatched) = startup::place(&cands, pair.startup, &mut |b| startup_block_size(&*target, b));
    for (a, why) in &unmatched {
        report.startup_reallocated += 1;
        if report.startup_notes.len() < MAX_STARTUP_NOTES {
            report.startup_notes.push(describe_unmatched(&walk, pair.startup, *a, why));
        }
    }
    let fresh: Vec<u64> =
        places.iter().zip(&sizes).filter(|(p, _)| matches!(p, Placement::Fresh { .. })).map(|(_, &s)| s).collect();
    let got = if fresh.is_empty() { Vec::new() } else { target.allocate(&fresh)? };
    if got.len() != fresh.len() {
        return Err(TransferError::Allocated { asked: fresh.len(), got: got.len() });
    }
    let mut got = got.into_iter();
    let addrs: Vec<u64> = places
        .iter()
        .map(|p| match p {
            Placement::Matched { new, .. } => *new,
            Placement::Fresh { .. } => got.next().unwrap_or_default(),
        })
        .collect();
    let mut moved = BTreeMap::new();
    for (i, addr) in order.iter().enumerate() {
        moved.insert(*addr, Moved { new: addrs[i], old_stride: strides[i].0, new_stride: strides[i].1 });
    }
    // Where everything went, for the handlers' mcr_translate() (only if there are any).
    let relocations = if handlers.is_empty() {
        Vec::new()
    } else {
        let blocks = moved
            .iter()
            .filter_map(|(a, m)| {
                Some(Relocation {
                    old: *a,
                    len: walk.found.get(a)?.obj.size,
                    new: m.new,
                    old_stride: m.old_stride,
                    new_stride: m.new_stride,
                })
            })
            .collect();
        relocation_table(old, pair.old.image.bias, new, pair.new.image.bias, blocks)
    };
    let heap = pair.heap;
    let relocate_data = |v: u64, path: &str| -> Result<u64, String> {
        if let Some(o) = heap.containing(v) {
            let m = moved.get(&o.addr).ok_or_else(|| format!("{path}: points to a heap block mcr did not move"))?;
            return m.at(v - o.addr).ok_or_else(|| {
                format!("{path}: {v:#x} points into the middle of an element whose type changed{}", tag_note(v, o.addr))
            });
        }
        if pair.old.image.contains(v) {
            return translate(old, &pair.old.image, new, &pair.new.image, v)
                .ok_or_else(|| format!("{path}: points into the old binary at {v:#x}, where no symbol is"));
        }
        // Libraries, stacks and other mappings sit at the same addresses in both versions.
        Ok(v)
    };

    // A typed or `void *` pointer: relocated, with its tag when an MCR_TAGGED hint
    // names it (masked off to relocate, put back on the new address).
    let tags = &walk.hints.tagged;
    let relocate_tagged = |v: u64, path: &str| -> Result<u64, String> {
        let Some(t) = (!tags.is_empty()).then(|| tags.get(&normalize(path))).flatten() else {
            return relocate_data(v, path);
        };
        let (p, tag) = t.split(v);
        if p == 0 {
            return Ok(v);
        }
        let n = relocate_data(p, path)?;
        t.join(n, tag).ok_or_else(|| {
            format!("{path}: the new address {n:#x} has a low bit set, so it cannot carry the tag of {}", t.written)
        })
    };
    // A word `hinted_words` found: relocated (with its tag) if it points into the heap.
    let relocate_word = |v: u64, tag: &Option<Tagged>, path: &str| -> Result<Option<u64>, String> {
        let (p, bits) = tag.as_ref().map_or((v, 0), |t| t.split(v));
        if p == 0 || heap.containing(p).is_none() {
            return Ok(None);
        }
        let n = relocate_data(p, path)?;
        match tag {
            Some(t) => t
                .join(n, bits)
                .map(Some)
                .ok_or_else(|| format!("{path}: the new address {n:#x} cannot carry the tag of {}", t.written)),
            None => Ok(Some(n)),
        }
    };

    // Rebuild every block in the new layout.
    let mut for_handlers: BTreeMap<String, Vec<(Vec<u8>, u64, u64)>> = BTreeMap::new();
    for (i, addr) in order.iter().enumerate() {
        let f = &walk.found[addr];
        let old_bytes = &contents[addr];
        let mut out = vec![0u8; sizes[i] as usize];
        // Heap pointers of the rebuilt object (offset, relocated value): what a matched
        // block the old version never wrote must agree with to keep the new contents.
        let mut heap_sites: Vec<(usize, u64)> = Vec::new();
        let plan = f.ty.and_then(|t| plans.get(&t));
        // Typed, but only the program's handler can build it.
        let handler_only = plan.is_some_and(|p| p.0.is_none());
        match plan.and_then(|p| p.0.as_ref()) {
            Some(plan) => {
                let (os, ns) = (plan.old_size as usize, plan.new_size as usize);
                let n = old_bytes.len() / os;
                let t = f.ty.expect("typed");
                let nt = counterpart(old, t, new, &mut types).expect("counterpart found before");
                let root = root_name(old, t);
                let fix = hinted_words(old, t, new, nt, &root, &walk.hints);
                for k in 0..n {
                    plan.apply(
                        &old_bytes[k * os..(k + 1) * os],
                        &mut out[k * ns..(k + 1) * ns],
                        &mut |s: PointerSite| match s.old_pointee {
                            Pointee::Function => translate(old, &pair.old.image, new, &pair.new.image, s.old_value)
                                .ok_or_else(|| {
                                    format!("{}: function pointer {:#x} has no counterpart", s.path, s.old_value)
                                }),
                            _ => {
                                let v = relocate_tagged(s.old_value, s.path)?;
                                if heap.containing(s.old_value).is_some() {
                                    heap_sites.push((k * ns + s.new_offset as usize, v));
                                }
                                Ok(v)
                            }
                        },
                    )
                    .map_err(|e| conflict(walk.path_of(*addr), e.to_string()))?;
                    for (oo, no, tag) in &fix {
                        let (oo, no) = (*oo, *no);
                        let v =
                            u64::from_ne_bytes(old_bytes[k * os + oo..k * os + oo + 8].try_into().expect("8 bytes"));
                        if let Some(nv) = relocate_word(v, tag, "").map_err(|e| conflict(walk.path_of(*addr), e))? {
                            out[k * ns + no..k * ns + no + 8].copy_from_slice(&nv.to_ne_bytes());
                            heap_sites.push((k * ns + no, nv));
                        }
                    }
                }
                let tail = &old_bytes[n * os..];
                out[n * ns..n * ns + tail.len()].copy_from_slice(tail);
            }
            // Typed, handled by the program: starts zeroed.
            None if handler_only => {}
            // Untyped: copied as bytes (the walk made sure they hold no heap address).
            None => out.copy_from_slice(old_bytes),
        }
        let write = match places[i] {
            Placement::Fresh { .. } => true,
            Placement::Matched { new: at, .. } => {
                report.startup_matched += 1;
                // Written since startup: the old contents win. Never written: the new
                // version's startup made the same object, its contents stay, unless its
                // pointers disagree with the transferred state, or only a handler knows
                // what the object holds.
                let clean = pair.dirty.is_some_and(|d| !d(f.obj.addr, f.obj.size));
                let keep = clean && !handler_only && {
                    let mut cur = vec![0u8; out.len()];
                    target.read(at, &mut cur)?;
                    startup::keeps_new_contents(&heap_sites, &cur)
                };
                if keep {
                    report.startup_kept += 1;
                }
                !keep
            }
        };
        if !write {
            continue;
        }
        if let Some(t) = f.ty {
            let (_, os, ns) = plans.get(&t).map(|p| (0, p.1, p.2)).unwrap_or((0, 0, 0));
            if let (Some(nt), true) = (counterpart(old, t, new, &mut types), os > 0) {
                if let Some(what) = handlers.get(&normalize(&root_name(new, nt))) {
                    let list = for_handlers.entry(what.clone()).or_default();
                    for k in 0..(old_bytes.len() as u64 / os) {
                        let (o, n) = ((k * os) as usize, addrs[i] + k * ns);
                        list.push((old_bytes[o..o + os as usize].to_vec(), n, ns));
                    }
                }
            }
        }
        target.write(addrs[i], &out)?;
        report.bytes += out.len() as u64;
    }
    // Fresh blocks standing for old startup objects take over their identity: the next
    // update matches them rather than copying them again (and leaking its own).
    let adopted: Vec<(u64, StartupKey)> = places
        .iter()
        .zip(&addrs)
        .filter_map(|(p, &a)| match p {
            Placement::Fresh { identity: Some(k) } => Some((a, *k)),
            _ => None,
        })
        .collect();
    if !adopted.is_empty() {
        target.flush()?;
        target.adopt_startup(&adopted)?;
    }
    report.objects = order.len();
    target.flush()?;
    for (what, objs) in &for_handlers {
        target
            .run_handlers(what, objs, &relocations)
            .map_err(|source| TransferError::Handler { object: what.clone(), source })?;
        report.handled += objs.len();
    }

    // Then the globals, which now can point at them.
    for r in &roots {
        let handler = handlers.get(&normalize(&r.plain)).cloned();
        let plan = match Plan::with_root(old, r.old_ty, new, r.new_ty, &r.name) {
            Ok(p) => p,
            // The program's handler builds it from the old bytes.
            Err(_) if handler.is_some() => {
                let len = new.size_of(r.new_ty).unwrap_or(0);
                target
                    .run_handlers(
                        handler.as_deref().unwrap_or_default(),
                        &[(r.bytes.clone(), r.new_addr, len)],
                        &relocations,
                    )
                    .map_err(|source| TransferError::Handler { object: r.name.clone(), source })?;
                report.handled += 1;
                report.globals += 1;
                continue;
            }
            Err(e) => return Err(conflict(&r.name, e.to_string())),
        };
        let mut cur = vec![0u8; plan.new_len(r.bytes.len() as u64) as usize];
        target.read(r.new_addr, &mut cur)?;
        let before = cur.clone();
        plan.apply(&r.bytes, &mut cur, &mut |s: PointerSite| {
            let got = match s.old_pointee {
                Pointee::Function => translate(old, &pair.old.image, new, &pair.new.image, s.old_value)
                    .ok_or_else(|| format!("{}: function pointer {:#x} has no counterpart", s.path, s.old_value)),
                _ => relocate_tagged(s.old_value, s.path),
            };
            got.or_else(|e| {
                // A pointer to a string literal (no symbol): the new version's startup
                // set the same global to its own copy of the same string.
                let o = s.new_offset as usize;
                let mine = u64::from_ne_bytes(before[o..o + 8].try_into().expect("8 bytes"));
                if pair.old.image.contains(s.old_value) && same_c_string(pair.old_mem, s.old_value, &*target, mine) {
                    Ok(mine)
                } else {
                    Err(e)
                }
            })
        })
        .map_err(|e| conflict(&r.name, e.to_string()))?;
        for (oo, no, tag) in hinted_words(old, r.old_ty, new, r.new_ty, &r.plain, &walk.hints) {
            let v = u64::from_ne_bytes(r.bytes[oo..oo + 8].try_into().expect("8 bytes"));
            if let Some(nv) = relocate_word(v, &tag, &r.name).map_err(|e| conflict(&r.name, e))? {
                cur[no..no + 8].copy_from_slice(&nv.to_ne_bytes());
            }
        }
        if cur != before {
            target.write(r.new_addr, &cur)?;
        }
        if let Some(what) = &handler {
            target
                .run_handlers(what, &[(r.bytes.clone(), r.new_addr, cur.len() as u64)], &relocations)
                .map_err(|source| TransferError::Handler { object: r.name.clone(), source })?;
            report.handled += 1;
        }
        report.globals += 1;
    }
    target.flush()?;
    Ok(Transfer { moved, report })
}

#[cfg(test)]
mod tests {
    use super::{relocation_table, Moved};
    use mcr_protocol::relocation::translate;
    use mcr_protocol::Relocation;
    use mcr_typemodel::{Composite, Encoding, Global, Location, Member, Program, Type};

    /// A program with `int counter`, `static struct item items[4]` (in kvd.c) and a
    /// thread-local, `struct item` being `{ int a; }` or, with `grown`, `{ long z; int a; }`.
    fn program(grown: bool, base: u64) -> Program {
        let mut p = Program::empty("/x".into());
        p.has_debug_info = true;
        p.types.push(Type::Base { name: "int".into(), size: 4, encoding: Encoding::Signed }); // 0
        p.types.push(Type::Base { name: "long".into(), size: 8, encoding: Encoding::Signed }); // 1
        let members = if grown {
            vec![
                Member { name: Some("z".into()), ty: 1, offset: 0, bit_size: None, bit_offset: None },
                Member { name: Some("a".into()), ty: 0, offset: 8, bit_size: None, bit_offset: None },
            ]
        } else {
            vec![Member { name: Some("a".into()), ty: 0, offset: 0, bit_size: None, bit_offset: None }]
        };
        let size = if grown { 16 } else { 4 };
        p.types.push(Type::Struct(Composite { name: Some("item".into()), size, members, incomplete: false })); // 2
        p.types.push(Type::Array { element: 2, counts: vec![Some(4)] }); // 3
        let g = |name: &str, unit: &str, is_static: bool, location: Location, size: u64, ty: u32| Global {
            name: name.into(),
            unit: unit.into(),
            function: None,
            is_static,
            location,
            size: Some(size),
            ty,
        };
        p.globals.push(g("counter", "a.c", false, Location::Address { address: base }, 4, 0));
        p.globals.push(g("items", "kvd.c", true, Location::Address { address: base + 0x100 }, size * 4, 3));
        p.globals.push(g("tls", "a.c", false, Location::Tls { offset: 0 }, 4, 0));
        p
    }

    #[test]
    fn handlers_translate_pointers_into_globals_and_moved_blocks() {
        let (old, new) = (program(false, 0x4000), program(true, 0x6000));
        let block = Relocation { old: 0x55_0000, len: 64, new: 0x77_0000, old_stride: 0, new_stride: 0 };
        let t = relocation_table(&old, 0x1000, &new, 0x2000, vec![block]);
        assert_eq!(t.len(), 3, "counter, items and the block; not the thread-local: {t:?}");
        assert!(t.windows(2).all(|w| w[0].old < w[1].old), "sorted");
        // counter: same type, any offset.
        assert_eq!(translate(&t, 0x5000), Some(0x8000));
        assert_eq!(translate(&t, 0x5002), Some(0x8002));
        // items: struct item grew from 4 to 16 bytes; element starts translate.
        assert_eq!(translate(&t, 0x5100), Some(0x8100));
        assert_eq!(translate(&t, 0x5100 + 3 * 4), Some(0x8100 + 3 * 16));
        assert_eq!(translate(&t, 0x5100 + 2), None, "inside an element whose layout changed");
        assert_eq!(translate(&t, 0x5100 + 16), None, "past the old array");
        // The heap block, interior.
        assert_eq!(translate(&t, 0x55_0010), Some(0x77_0010));
        assert_eq!(translate(&t, 0x55_0040), None);
        assert_eq!(translate(&t, 0x1234), None);
    }

    #[test]
    fn pointers_into_moved_arrays_follow_their_element() {
        let m = Moved { new: 0x9000, old_stride: 24, new_stride: 40 };
        assert_eq!(m.at(0), Some(0x9000));
        assert_eq!(m.at(48), Some(0x9000 + 80), "third element");
        assert_eq!(m.at(50), None, "inside an element whose layout changed");
        let same = Moved { new: 0x9000, old_stride: 16, new_stride: 16 };
        assert_eq!(same.at(50), Some(0x9000 + 50));
        let bytes = Moved { new: 0x9000, old_stride: 0, new_stride: 0 };
        assert_eq!(bytes.at(7), Some(0x9007));
    }
}
