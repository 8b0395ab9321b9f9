//! The walk (paper §6, "mutable tracing"): from the roots, every heap block the old
//! process reaches, and how. A block reached through a typed pointer to its start takes
//! that pointer's type (an array of it when it holds several; one object followed by
//! memory mcr cannot type when the block is not a whole number of them: a pool's header
//! before its arena); a block only untyped words lead to (a `void *`, a tagged word, a
//! pointer into its middle) is opaque: its bytes are copied as they are. Memory mcr
//! cannot type (unions, pointer-sized integers, opaque blocks, what follows a block's
//! typed objects) must not hold a heap address, unless a hint of `mcr.h` says what the
//! word is: `MCR_POINTS_TO` makes it a typed pointer, `MCR_OPAQUE` data, `MCR_TAGGED` a
//! pointer with a tag in its low bits; or unless the block it points to can stay where it
//! is (the adopted heap), which pins it.
//!
//! The walk only reads the old process. Its output, [`Reached`], is what the later phases
//! work from: which blocks, reached how (typed or opaque), from where, with their bytes.

use crate::hints::{field_suffix, key, tag_note, Hints, Tagged};
use crate::roots::Root;
use crate::transfer::{conflict, TransferError};
use mcr_heap::{HeapIndex, Object, ReadMemory};
use mcr_typemodel::transform::root_name;
use mcr_typemodel::{Layout, OpaqueReason, Pointee, Program, Type, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;

/// How the walk reached a block, which decides how it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A typed pointer to its start: objects of this old type (typedefs stripped), as
    /// many as fit, rebuilt in the new layout. A byte type (`char *`) is copied as bytes.
    Typed(TypeId),
    /// Only untyped words lead to it: copied as bytes, once the walk made sure they hold
    /// no heap address.
    Opaque,
}

impl Reach {
    pub fn ty(self) -> Option<TypeId> {
        match self {
            Reach::Typed(t) => Some(t),
            Reach::Opaque => None,
        }
    }
}

/// A heap block of the old process that the walk reached.
#[derive(Debug, Clone)]
pub struct Block {
    pub obj: Object,
    pub reach: Reach,
    /// The block whose pointer first reached it (`None`: a global), and through which
    /// field, for reports (paths are built only when one is needed: chains of blocks are
    /// long, and repeating every path would cost time quadratic in their length).
    pub parent: Option<u64>,
    pub hop: Hop,
    /// Where its contents in the old process are in [`Blocks`]'s copy ([`NOT_READ`]
    /// until the walk reads them).
    at: usize,
    /// Its position in the heap index ([`HeapIndex::locate`]).
    pub pos: u32,
}

/// Whether a block's bytes may stay as they are (see [`walk`]).
pub type KeepBytes<'k> = dyn Fn(&[u8]) -> bool + 'k;

/// A block whose bytes the walk did not read yet.
const NOT_READ: usize = usize::MAX;

/// The field a block was reached through, named only when a report needs it (a name per
/// block would cost an allocation and a format per block: most are never shown).
#[derive(Debug, Clone)]
pub enum Hop {
    Text(String),
    /// Pointer `slot` of the layout's typed pointers (or, `void_pointer`, of its regions
    /// mcr cannot type) in element `index` of objects named `root` (a global's name, or a
    /// type's), `array` when there were several.
    Field {
        root: Rc<str>,
        layout: Rc<Layout>,
        slot: u32,
        void_pointer: bool,
        index: u32,
        array: bool,
    },
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Text(t) => f.write_str(t),
            Hop::Field { root, layout, slot, void_pointer, index, array } => {
                let path = if *void_pointer {
                    layout.opaque.get(*slot as usize).map(|r| r.path.as_str())
                } else {
                    layout.pointers.get(*slot as usize).map(|p| p.path.as_str())
                };
                let suffix = field_suffix(path.unwrap_or_default());
                match array {
                    true => write!(f, "{root}[{index}]{suffix}")?,
                    false => write!(f, "{root}{suffix}")?,
                }
                if *void_pointer {
                    f.write_str(" (void *)")?;
                }
                Ok(())
            }
        }
    }
}

/// The blocks the walk reached, in address order, with a copy of their contents (one
/// buffer for all: no allocation per block).
#[derive(Debug, Default)]
pub struct Blocks {
    list: Vec<Block>,
    contents: Vec<u8>,
}

impl Blocks {
    /// The contents of `b` (one of these blocks) in the old process.
    pub fn bytes(&self, b: &Block) -> &[u8] {
        self.contents.get(b.at..b.at.saturating_add(b.obj.size as usize)).unwrap_or_default()
    }

    pub fn get(&self, addr: &u64) -> Option<&Block> {
        self.list.binary_search_by_key(addr, |b| b.obj.addr).ok().map(|i| &self.list[i])
    }

    pub fn contains_key(&self, addr: &u64) -> bool {
        self.get(addr).is_some()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// (address, block), in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Block)> {
        self.list.iter().map(|b| (&b.obj.addr, b))
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.list.iter().map(|b| &b.obj.addr)
    }

    pub fn values(&self) -> impl Iterator<Item = &Block> {
        self.list.iter()
    }
}

impl std::ops::Index<&u64> for Blocks {
    type Output = Block;
    fn index(&self, addr: &u64) -> &Block {
        self.get(addr).expect("a block the walk reached")
    }
}

impl<'b> IntoIterator for &'b Blocks {
    type Item = (&'b u64, &'b Block);
    type IntoIter = std::iter::Map<std::slice::Iter<'b, Block>, fn(&'b Block) -> (&'b u64, &'b Block)>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter().map(|b| (&b.obj.addr, b))
    }
}

/// A word mcr cannot type that holds a heap block's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Where the word is (`kvd.c:last_set+0`).
    pub place: String,
    /// What it is and holds (`a union holds 0x…`, with a note when the low bits may be a
    /// tag).
    pub holds: String,
    /// Not a word: the new version's startup holds the block at its address
    /// ([`crate::StartupTables::held`]).
    pub held: bool,
}

/// Every block reached from the roots, by address.
#[derive(Debug, Default)]
pub struct Reached {
    pub blocks: Blocks,
    /// Blocks of the adopted heap made after startup that typed pointers reach only as
    /// bytes (`char *`: strings, buffers) and that hold nothing to rewrite: they stay where
    /// they are, as they are, without being listed, planned or written (a table's keys and
    /// values are most of its blocks): (address, heap index position), by address.
    pub kept: Vec<(u64, u32)>,
    /// Blocks memory mcr cannot type (a union, a `void *` target's bytes, an integer) may
    /// point to, with the first such word: they must stay where they are (conservative
    /// tracing; only possible where the new process adopted the old heap).
    pub pinned: BTreeMap<u64, Pin>,
    /// Objects a typed pointer reaches inside memory mcr cannot type (a pool's arena, an
    /// untyped block), one per type, in the order the walk met them: they stay where they
    /// are, as they are, so their types must not change.
    pub embedded: Vec<Embedded>,
    /// Objects of types embedded objects may lead to (see [`Beside`]), the first of each
    /// type: they stay where they are, as they are, too.
    pub beside: Vec<Beside>,
}

/// An object of a known type inside memory mcr cannot type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    pub ty: TypeId,
    /// The heap block it is in, and where.
    pub block: u64,
    pub offset: u64,
    /// The typed pointer that reaches it (`conf`, `conn.req`).
    pub place: String,
    /// The walk guessed what it leads to, and what the memory next to it leads to where
    /// that looks like more objects of its type (it may be one element of an array whose
    /// length nothing says): [`Reached::beside`]. Otherwise (too many, or the object does
    /// not fit in its block) every type it leads to counts.
    pub bounded: bool,
}

/// An object guessed from an embedded one: memory next to it that looks like more of its
/// type, or what it or such memory leads to where no typed pointer of the walk does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beside {
    pub ty: TypeId,
    /// The embedded object it comes from (its place in [`Reached::embedded`]).
    pub next_to: usize,
    pub addr: u64,
}

/// A typed pointer into the middle of a block, noted by the walk (whether the object it
/// points to is inside the block's typed objects is known once the walk is over).
struct Interior {
    block: u64,
    offset: u64,
    ty: TypeId,
    from: Option<u64>,
    hop: String,
}

impl Reached {
    /// How the walk reached the block at `addr`, from a global (`items[2].next -> kv_node.next`).
    pub fn path_of(&self, addr: u64) -> String {
        path_of(&|a| self.blocks.get(&a), addr)
    }
}

fn path_of<'b>(block: &dyn Fn(u64) -> Option<&'b Block>, addr: u64) -> String {
    let mut hops: Vec<&Hop> = Vec::new();
    let mut cur = Some(addr);
    while let Some(a) = cur {
        let Some(f) = block(a) else { break };
        hops.push(&f.hop);
        cur = f.parent;
        if hops.len() > 100_000 {
            break;
        }
    }
    hops.reverse();
    let join = |hops: &[&Hop]| hops.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(" -> ");
    if hops.len() > 8 {
        format!("{} -> …({} more)… -> {}", join(&hops[..3]), hops.len() - 6, join(&hops[hops.len() - 3..]))
    } else {
        join(&hops)
    }
}

/// Walk the old process from `roots` (the old program `old`, its memory and heap blocks)
/// and from `words`: (label, value) pairs it holds outside its memory (a pthread key's
/// value), each an untyped pointer: a heap block one points into moves, as bytes unless a
/// typed pointer reaches it too.
///
/// `pinnable`: whether a heap block may stay where it is in the new process (the adopted
/// heap): a heap address found in memory mcr cannot type then pins its block instead of
/// stopping the update.
///
/// `seal`: the walk does not go into a block a typed pointer reaches when it says so for
/// the block and that type: such a block is not read, scanned or listed, and neither is
/// what only it leads to. An update whose types do not change seals the blocks of the
/// adopted heap (they stay where they are, as they are); what makes that right is checked
/// after the walk (`crate::untouched`).
///
/// `keep_bytes`: whether a block's bytes need no rewriting; with it, a block of the
/// adopted heap made after startup that typed pointers reach only as bytes is kept where
/// it is when its bytes say so ([`Reached::kept`]), instead of being listed.
#[allow(clippy::too_many_arguments)]
pub fn walk(
    old: &Program,
    mem: &dyn ReadMemory,
    heap: &HeapIndex,
    hints: &Hints,
    roots: &[Root],
    words: &[(String, u64)],
    held: &[u64],
    pinnable: &dyn Fn(u64) -> bool,
    seal: &dyn Fn(&Object, TypeId) -> bool,
    keep_bytes: Option<&KeepBytes<'_>>,
) -> Result<Reached, TransferError> {
    let mut w = Walker {
        keeps: keep_bytes.is_some(),
        kept_ty: None,
        kept_list: Vec::new(),
        prog: old,
        heap,
        hints,
        list: Vec::new(),
        slots: vec![0; heap.len()],
        typed_queue: VecDeque::new(),
        opaque_queue: VecDeque::new(),
        layouts: HashMap::new(),
        pinnable,
        pinned: BTreeMap::new(),
        interior: Vec::new(),
        interior_seen: HashSet::new(),
        seal,
    };
    for r in roots {
        let name: Rc<str> = Rc::from(r.name.as_str());
        w.scan_typed(&r.bytes, old.strip(r.old_ty), None, &name, &r.plain)?;
    }
    for (label, v) in words {
        if let Some(found) = heap.find(*v).filter(|_| *v != 0) {
            w.reach(found, None, None, || Hop::Text(label.clone()))?;
        }
    }
    // What the new version's startup holds at the old blocks' addresses stays there: a
    // root, pinned, whatever else reaches it.
    for &addr in held {
        let Some(found) = heap.find(addr).filter(|(_, o)| o.addr == addr) else {
            return Err(conflict(
                HELD_PLACE,
                format!(
                    "its startup allocated {addr:#x}, where the old version's startup had allocated the same block, \
                     which the old process has freed since: the new code would use memory the state transfer \
                     gives to other objects"
                ),
            ));
        };
        let holds = format!("its startup allocated the block at {addr:#x} where the old version's startup had it");
        w.pinned.entry(addr).or_insert(Pin { place: HELD_PLACE.to_string(), holds, held: true });
        w.reach(found, None, None, || Hop::Text(HELD_PLACE.to_string()))?;
    }
    // Everything reachable from them, through typed pointers first: a block untyped
    // memory leads to is scanned as untyped memory only once no typed pointer can reach
    // it any more (scanned first, its words would pin the blocks they point to, which a
    // type change then forbids). A block comes back into the typed queue when a typed
    // pointer refines what an untyped one reached; its bytes are read once.
    let mut roots_by_type: HashMap<TypeId, Rc<str>> = HashMap::new();
    let next = |w: &mut Walker| {
        w.typed_queue.pop_front().map(|a| (a, true)).or_else(|| w.opaque_queue.pop_front().map(|a| (a, false)))
    };
    let mut contents: Vec<u8> = Vec::new();
    while let Some((i, queued_typed)) = next(&mut w) {
        let i = i as usize;
        let (obj, reach) = (w.list[i].obj, w.list[i].reach);
        if !queued_typed && reach != Reach::Opaque {
            continue; // a typed pointer reached it since: scanned from the typed queue
        }
        if w.list[i].at == NOT_READ {
            let at = contents.len();
            contents.resize(at + obj.size as usize, 0);
            mem.read(obj.addr, &mut contents[at..])?;
            w.list[i].at = at;
        }
        let at = w.list[i].at;
        w.scan_block(&contents[at..at + obj.size as usize], obj, reach, &mut roots_by_type)?;
    }
    // A kept block whose bytes hold something to rewrite (an address in the old binary)
    // is listed after all, as bytes (they lead nowhere: nothing more to walk).
    let mut kept = Vec::new();
    if let (Some(keep), Some(ty)) = (keep_bytes, w.kept_ty) {
        let mut buf = Vec::new();
        let mut candidates = std::mem::take(&mut w.kept_list);
        candidates.sort_unstable();
        for pos in candidates.into_iter().map(|p| p as usize) {
            if w.slots[pos] != KEPT {
                continue; // walked after all: another pointer gave it a type
            }
            let obj = heap.get(pos);
            buf.resize(obj.size as usize, 0);
            mem.read(obj.addr, &mut buf)?;
            if keep(&buf) {
                kept.push((obj.addr, pos as u32));
                continue;
            }
            let at = contents.len();
            contents.extend_from_slice(&buf);
            let hop = Hop::Text(format!("({})", old.type_name(ty)));
            w.slots[pos] = w.list.len() as u32 + 1;
            w.list.push(Block { obj, reach: Reach::Typed(ty), parent: None, hop, at, pos: pos as u32 });
        }
    }
    let Walker { mut list, pinned, interior, .. } = w;
    // In address order: the heap index's (sorting what was reached, not going through a
    // table as long as the heap: an update that seals the heap reaches a few blocks of
    // millions).
    list.sort_unstable_by_key(|b| b.pos);
    let blocks = Blocks { list, contents };
    let (embedded, beside) = embedded(old, heap, mem, &blocks, &kept, interior);
    Ok(Reached { blocks, kept, pinned, embedded, beside })
}

/// A block the walk does not go into (see [`walk`]'s `seal`), in [`Walker::slots`].
const SEALED: u32 = u32::MAX;
/// A block reached only as bytes that may stay as it is (see [`walk`]'s `keep_bytes`).
const KEPT: u32 = u32::MAX - 1;

/// The typed pointers into the middle of blocks that point outside the blocks' typed
/// objects (into an untyped block, or past a typed block's objects): the objects there,
/// the first of each type that is [`Embedded::bounded`] and the first that is not; and
/// what they and the memory next to them lead to ([`Reached::beside`]).
fn embedded(
    prog: &Program,
    heap: &HeapIndex,
    mem: &dyn ReadMemory,
    blocks: &Blocks,
    kept: &[(u64, u32)],
    interior: Vec<Interior>,
) -> (Vec<Embedded>, Vec<Beside>) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut guess = Guess::new(prog, heap, mem, blocks);
    for i in interior {
        let typed_end = match blocks.get(&i.block) {
            Some(b) => typed_end(prog, b),
            // Bytes: no object of theirs covers it.
            None if kept.binary_search_by_key(&i.block, |k| k.0).is_ok() => 0,
            None => continue,
        };
        if i.offset < typed_end {
            continue;
        }
        let before = guess.found.len();
        let bounded = guess.follow_embedded(i.block, typed_end, i.offset, i.ty, out.len());
        if !seen.insert((i.ty, bounded)) && guess.found.len() == before {
            continue;
        }
        let place = match i.from {
            Some(p) => format!("{} -> {}", path_of(&|a| blocks.get(&a), p), i.hop),
            None => i.hop,
        };
        out.push(Embedded { ty: i.ty, block: i.block, offset: i.offset, place, bounded });
    }
    (out, guess.found)
}

/// Where a block's typed objects end: what follows is memory mcr cannot type.
fn typed_end(prog: &Program, b: &Block) -> u64 {
    match b.reach {
        Reach::Typed(t) => typed_objects(prog, t, b.obj.size) * prog.size_of(t).unwrap_or(0),
        Reach::Opaque => 0,
    }
}

/// The data pointers of `ty`: (offset, pointee), those within one object.
fn data_pointers(prog: &Program, ty: TypeId) -> Vec<(u64, TypeId)> {
    let stride = prog.size_of(ty).unwrap_or(0);
    prog.layout(ty, &root_name(prog, ty))
        .pointers
        .iter()
        .filter_map(|s| match s.pointee {
            Pointee::Data { ty } if s.offset + 8 <= stride => Some((s.offset, prog.strip(ty))),
            _ => None,
        })
        .collect()
}

fn word(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The memory on either side of the object of type `ty` at `offset` in a block's `bytes`
/// (untyped from `typed_end` on) that may hold more objects of its type: a pointer to one
/// may as well point into an array of them, whose length nothing says. Memory is taken
/// for one as long as it looks like one (every pointer field null or an address the
/// process maps); the offsets of those that hold an address (the others lead nowhere),
/// and the run of offsets looked at. `None` when the object does not fit in the block.
fn neighbours(
    prog: &Program,
    mapped: &mut dyn FnMut(u64) -> bool,
    bytes: &[u8],
    (typed_end, offset): (u64, u64),
    ty: TypeId,
    slots: &[(u64, TypeId)],
) -> Option<(std::ops::Range<u64>, Vec<u64>)> {
    let stride = prog.size_of(ty).unwrap_or(0);
    if stride == 0 || offset + stride > bytes.len() as u64 {
        return None;
    }
    let mut out = Vec::new();
    if slots.is_empty() {
        return Some((offset..offset + stride, out));
    }
    // None: not like one; Some(true): like one, holding an address.
    let mut looks = |at: u64| -> Option<bool> {
        let mut any = false;
        for (off, _) in slots {
            let v = word(bytes, at + off);
            if v != 0 {
                if !mapped(v) {
                    return None;
                }
                any = true;
            }
        }
        Some(any)
    };
    let mut end = offset + stride;
    while end + stride <= bytes.len() as u64 {
        match looks(end) {
            None => break,
            Some(true) => out.push(end),
            Some(false) => {}
        }
        end += stride;
    }
    let mut start = offset;
    while start >= typed_end + stride {
        match looks(start - stride) {
            None => break,
            Some(true) => out.push(start - stride),
            Some(false) => {}
        }
        start -= stride;
    }
    Some((start..end, out))
}

/// How many objects the walk may guess (see [`Guess`]) before it gives up and the
/// types an embedded object leads to are checked instead.
const GUESS_LIMIT: usize = 1 << 20;

/// Objects the walk does not type but guesses: what embedded objects (and memory next to
/// them that looks like more of their type) point to where no typed pointer of the walk
/// leads, taken for objects of the pointers' types, and so on. Pool memory is not typed
/// by this: C code points to memory through types it only partly holds (nginx's
/// `ngx_pool_t *` to a pool's later blocks, which hold only its first member), and
/// typing a block by such a pointer would read its data as fields. A guess is only ever
/// used to refuse an update (a guessed object whose type changes), never to move
/// anything: what it covers stays where it is, as it is (memory mcr cannot type pins
/// what it points to).
struct Guess<'g> {
    prog: &'g Program,
    heap: &'g HeapIndex,
    mem: &'g dyn ReadMemory,
    blocks: &'g Blocks,
    visited: HashSet<(u64, TypeId), Words>,
    pointers: HashMap<TypeId, Rc<[(u64, TypeId)]>, Words>,
    /// The runs of objects alike already looked at, by (block, type, offset modulo the
    /// type's size).
    runs: HashMap<(u64, TypeId, u64), Vec<std::ops::Range<u64>>, Words>,
    /// Whether the old process maps each page asked about (see [`Guess::mapped`]).
    pages: HashMap<u64, bool, Words>,
    types: HashSet<TypeId>,
    /// The first guessed object of each type.
    found: Vec<Beside>,
}

impl<'g> Guess<'g> {
    fn new(prog: &'g Program, heap: &'g HeapIndex, mem: &'g dyn ReadMemory, blocks: &'g Blocks) -> Self {
        Guess {
            prog,
            heap,
            mem,
            blocks,
            visited: HashSet::default(),
            pointers: HashMap::default(),
            runs: HashMap::default(),
            pages: HashMap::default(),
            types: HashSet::new(),
            found: Vec::new(),
        }
    }

    /// The data pointers of `ty`: (offset, pointee), those within one object.
    fn pointers(&mut self, ty: TypeId) -> Rc<[(u64, TypeId)]> {
        let prog = self.prog;
        self.pointers.entry(ty).or_insert_with(|| data_pointers(prog, ty).into()).clone()
    }

    /// Whether the old process maps the address `v` (in its heap, or any page it can
    /// read: known per page once asked).
    fn mapped(&mut self, v: u64) -> bool {
        if self.heap.locate(v).is_some() {
            return true;
        }
        let mem = self.mem;
        *self.pages.entry(v >> 12).or_insert_with(|| mem.read(v, &mut [0u8]).is_ok())
    }

    /// The bytes of the heap block `obj` (a copy when the walk did not read it).
    fn block_bytes(&self, obj: Object) -> Option<std::borrow::Cow<'g, [u8]>> {
        let blocks = self.blocks;
        if let Some(b) = blocks.get(&obj.addr).filter(|b| b.at != NOT_READ) {
            return Some(std::borrow::Cow::Borrowed(blocks.bytes(b)));
        }
        let mut buf = vec![0u8; usize::try_from(obj.size).ok().filter(|&n| n <= 1 << 24)?];
        self.mem.read(obj.addr, &mut buf).ok()?;
        Some(std::borrow::Cow::Owned(buf))
    }

    /// Guess from the embedded object of type `ty` at `offset` in the block at `block`
    /// (untyped from `typed_end` on): it and the memory next to it that looks like more
    /// of them. False when that cannot be bounded: the object does not fit in its block,
    /// or it leads to too many.
    fn follow_embedded(&mut self, block: u64, typed_end: u64, offset: u64, ty: TypeId, from: usize) -> bool {
        let Some((_, obj)) = self.heap.find(block) else { return false };
        let Some(bytes) = self.block_bytes(obj) else { return false };
        let slots = self.pointers(ty);
        let prog = self.prog;
        let Some((_, next_to)) = neighbours(prog, &mut |v| self.mapped(v), &bytes, (typed_end, offset), ty, &slots)
        else {
            return false;
        };
        let mut start = vec![(block + offset, ty)];
        start.extend(next_to.into_iter().map(|off| (block + off, ty)));
        self.follow(start, from)
    }

    /// Guess the objects `start` (address, type) and what they lead to; `from` names the
    /// embedded object they come from. False when there were too many to follow.
    fn follow(&mut self, start: Vec<(u64, TypeId)>, from: usize) -> bool {
        let (prog, heap) = (self.prog, self.heap);
        // Breadth first: the first guess of a type is the nearest, for reports.
        let mut todo = VecDeque::from(start);
        while let Some((addr, ty)) = todo.pop_front() {
            if !self.visited.insert((addr, ty)) {
                continue;
            }
            if self.visited.len() > GUESS_LIMIT {
                return false;
            }
            if self.types.insert(ty) {
                self.found.push(Beside { ty, next_to: from, addr });
            }
            let stride = prog.size_of(ty).unwrap_or(0);
            let Some((_, obj)) = heap.find(addr) else { continue };
            let Some(bytes) = self.block_bytes(obj) else { continue };
            let at = addr - obj.addr;
            if stride == 0 || is_byte(prog, ty) || at + stride > bytes.len() as u64 {
                continue;
            }
            for &(off, pointee) in self.pointers(ty).iter() {
                let v = word(&bytes, at + off);
                let size = prog.size_of(pointee).unwrap_or(0);
                if v == 0 || size == 0 || is_byte(prog, pointee) {
                    continue;
                }
                let Some((_, target)) = heap.find(v) else { continue };
                let typed_end = self.blocks.get(&target.addr).map_or(0, |b| typed_end(prog, b));
                if v - target.addr < typed_end {
                    continue; // the walk typed it: the plan checks it
                }
                if v == target.addr {
                    let n = typed_objects(prog, pointee, target.size).max(1);
                    todo.extend((0..n).map(|k| (v + k * size, pointee)));
                    continue;
                }
                todo.push_back((v, pointee));
                // The memory around it, once per run of objects that look alike (many
                // pointers lead into one array).
                let at = v - target.addr;
                let runs = self.runs.entry((target.addr, pointee, at % size)).or_default();
                if runs.iter().any(|r| r.contains(&at)) {
                    continue;
                }
                let Some(target_bytes) = self.block_bytes(target) else { continue };
                let slots = self.pointers(pointee);
                let mut mapped = |v| self.mapped(v);
                if let Some((run, n)) = neighbours(prog, &mut mapped, &target_bytes, (typed_end, at), pointee, &slots) {
                    self.runs.entry((target.addr, pointee, at % size)).or_default().push(run);
                    todo.extend(n.into_iter().map(|off| (target.addr + off, pointee)));
                }
            }
        }
        true
    }
}

/// Hashing for sets of addresses and type ids (hundreds of thousands of keys per update):
/// a multiply-rotate mix, several times faster than the default SipHash, which guards
/// against keys chosen by an attacker that these are not.
type Words = std::hash::BuildHasherDefault<WordHasher>;

#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// How many objects of type `ty` a block of `size` bytes that a typed pointer reaches at
/// its start holds, from the start (the rest is copied as bytes). An array when they fill
/// it, as `calloc(n, sizeof(T))` and `malloc(n * sizeof(T))` make it, or leave fewer bytes
/// than a pointer (slack, a terminator); otherwise one object followed by memory of
/// another kind (a pool's arena after its header, a flexible array member's elements),
/// or none when the block is smaller than one. Taking such memory for more objects of
/// the type would give whatever it holds that type's fields and their pointees' types.
/// Byte types (a `char *` block) hold no objects to scan.
pub(crate) fn typed_objects(p: &Program, ty: TypeId, size: u64) -> u64 {
    let stride = p.size_of(ty).unwrap_or(0);
    if stride == 0 || is_byte(p, ty) {
        return 0;
    }
    match size % stride {
        rest if rest < 8 => size / stride,
        _ => u64::from(size >= stride),
    }
}

/// Whether an object of type `outer` begins with one of type `inner`: its first member
/// (any member of a union, the first element of an array) is one, or begins with one.
fn begins_with(p: &Program, outer: TypeId, inner: TypeId) -> bool {
    let inner = p.strip(inner);
    let mut todo = vec![p.strip(outer)];
    let mut seen = 0;
    while let Some(t) = todo.pop() {
        seen += 1;
        if seen > 64 {
            return false;
        }
        match p.ty(t) {
            Type::Struct(c) | Type::Union(c) if t != inner => {
                todo.extend(c.members.iter().filter(|m| m.offset == 0 && m.bit_size.is_none()).map(|m| p.strip(m.ty)))
            }
            Type::Array { element, .. } if t != inner => todo.push(p.strip(*element)),
            _ if t == inner && seen > 1 => return true,
            _ => {}
        }
    }
    false
}

/// Where a block the new version's startup holds is reached from.
const HELD_PLACE: &str = "the new version's startup";

pub(crate) fn is_byte(p: &Program, ty: TypeId) -> bool {
    matches!(p.ty(p.strip(ty)), Type::Base { size: 1, .. })
}

struct Walker<'w> {
    prog: &'w Program,
    heap: &'w HeapIndex,
    hints: &'w Hints,
    /// Reached so far, in the order reached.
    list: Vec<Block>,
    /// By heap index position: 0 not reached, [`SEALED`], or 1 + the block's place in
    /// `list`.
    slots: Vec<u32>,
    /// Blocks to scan (places in `list`): typed ones first (see [`walk`]).
    typed_queue: VecDeque<u32>,
    opaque_queue: VecDeque<u32>,
    layouts: HashMap<TypeId, Rc<Layout>>,
    pinnable: &'w dyn Fn(u64) -> bool,
    pinned: BTreeMap<u64, Pin>,
    /// Typed pointers into the middle of blocks, the first per object.
    interior: Vec<Interior>,
    interior_seen: HashSet<(u64, TypeId)>,
    seal: &'w dyn Fn(&Object, TypeId) -> bool,
    /// Whether blocks reached only as bytes may be kept ([`KEPT`]), and the byte type
    /// they were reached as.
    keeps: bool,
    kept_ty: Option<TypeId>,
    /// The positions that became [`KEPT`] (some may be walked since).
    kept_list: Vec<u32>,
}

impl Walker<'_> {
    fn layout(&mut self, ty: TypeId) -> Rc<Layout> {
        let prog = self.prog;
        self.layouts.entry(ty).or_insert_with(|| Rc::new(prog.layout(ty, &root_name(prog, ty)))).clone()
    }

    /// The reached block at `addr`, if any.
    fn block(&self, addr: u64) -> Option<&Block> {
        let pos = self.heap.locate(addr)?;
        match self.slots[pos] {
            0 | SEALED | KEPT => None,
            s => self.list.get(s as usize - 1).filter(|b| b.obj.addr == addr),
        }
    }

    fn path_of(&self, addr: u64) -> String {
        path_of(&|a| self.block(a), addr)
    }

    /// Scan a dequeued block's `bytes` as the walk reached it.
    fn scan_block(
        &mut self,
        bytes: &[u8],
        obj: Object,
        reach: Reach,
        roots_by_type: &mut HashMap<TypeId, Rc<str>>,
    ) -> Result<(), TransferError> {
        let old = self.prog;
        let addr = obj.addr;
        match reach {
            Reach::Typed(t) => {
                let root = roots_by_type.entry(t).or_insert_with(|| Rc::from(root_name(old, t))).clone();
                let stride = old.size_of(t).unwrap_or(0);
                if stride == 0 || is_byte(old, t) {
                    return Ok(());
                }
                let typed = typed_objects(old, t, obj.size) * stride;
                self.scan_typed(&bytes[..typed as usize], t, Some(addr), &root, &root)?;
                // What follows the objects (a pool's arena after its header): memory mcr
                // cannot type, scanned conservatively.
                let found = self.hidden_pointers_from(bytes, typed as usize);
                if !found.is_empty() {
                    let place = self.path_of(addr);
                    self.pin_or_refuse(found, Some(addr), (&place, &root), OpaqueReason::Unknown)?;
                }
            }
            Reach::Opaque => {
                let found = self.hidden_pointers(bytes);
                if !found.is_empty() {
                    let place = self.path_of(addr);
                    self.pin_or_refuse(found, Some(addr), (&place, ""), OpaqueReason::VoidPointer)?;
                }
            }
        }
        Ok(())
    }

    /// Note the block at heap position `pos`, reached from `parent` through `hop`, with
    /// the type its pointer gives it (`None`: an untyped word).
    fn reach(
        &mut self,
        (pos, obj): (usize, Object),
        ty: Option<TypeId>,
        parent: Option<u64>,
        hop: impl FnOnce() -> Hop,
    ) -> Result<(), TransferError> {
        let prog = self.prog;
        match self.slots[pos] {
            SEALED => {} // it stays where it is, as it is, however else it is reached
            // Bytes it stays; another type makes it an object to walk.
            KEPT if ty.is_none_or(|t| is_byte(prog, t)) => {}
            s @ (0 | KEPT) => {
                if s == 0 && ty.is_some_and(|t| (self.seal)(&obj, t)) {
                    self.slots[pos] = SEALED;
                    return Ok(());
                }
                if let Some(t) = ty
                    .filter(|&t| s == 0 && self.keeps && !obj.startup && is_byte(prog, t) && (self.pinnable)(obj.addr))
                {
                    self.slots[pos] = KEPT;
                    self.kept_ty = Some(t);
                    self.kept_list.push(pos as u32);
                    return Ok(());
                }
                let reach = ty.map_or(Reach::Opaque, Reach::Typed);
                let i = self.list.len() as u32;
                self.list.push(Block { obj, reach, parent, hop: hop(), at: NOT_READ, pos: pos as u32 });
                self.slots[pos] = i + 1;
                match reach {
                    Reach::Typed(_) => self.typed_queue.push_back(i),
                    Reach::Opaque => self.opaque_queue.push_back(i),
                }
            }
            s => {
                let i = s - 1;
                let f = &mut self.list[i as usize];
                match (f.reach, ty) {
                    (_, None) => {}
                    (Reach::Opaque, Some(t)) => {
                        f.reach = Reach::Typed(t);
                        self.typed_queue.push_back(i);
                    }
                    (Reach::Typed(a), Some(b)) if a == b || is_byte(prog, b) => {}
                    (Reach::Typed(a), Some(b)) if is_byte(prog, a) => {
                        f.reach = Reach::Typed(b);
                        self.typed_queue.push_back(i);
                    }
                    // A pointer to an object's first member (an intrusive list's `T **`
                    // back-pointer to the `next` field that starts its element, as in
                    // sys/queue.h and libevent) is a pointer into the object, not a
                    // second type for its block: the block is the object.
                    (Reach::Typed(a), Some(b)) if begins_with(prog, a, b) => {}
                    (Reach::Typed(a), Some(b)) if begins_with(prog, b, a) => {
                        f.reach = Reach::Typed(b);
                        self.typed_queue.push_back(i);
                    }
                    (Reach::Typed(a), Some(b)) => {
                        let here = match parent {
                            Some(p) => format!("{} -> {}", self.path_of(p), hop()),
                            None => hop().to_string(),
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
                }
            }
        }
        Ok(())
    }

    /// Follow the pointers in `bytes` (objects of type `ty`: the block at `from`, or a
    /// global; `name` names them in paths: the global's name, or the type's; hints name
    /// their fields from `hint_root`: a global's name, or the type's).
    fn scan_typed(
        &mut self,
        bytes: &[u8],
        ty: TypeId,
        from: Option<u64>,
        name: &Rc<str>,
        hint_root: &str,
    ) -> Result<(), TransferError> {
        let prog = self.prog;
        let stride = prog.size_of(ty).unwrap_or(0);
        if stride == 0 || is_byte(prog, ty) {
            return Ok(());
        }
        let layout = self.layout(ty);
        let count = bytes.len() as u64 / stride;
        let tags = !self.hints.tagged.is_empty();
        for i in 0..count {
            let at = |off: u64| -> u64 {
                let o = (i * stride + off) as usize;
                u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"))
            };
            let field = |slot: usize, void_pointer: bool| Hop::Field {
                root: name.clone(),
                layout: layout.clone(),
                slot: slot as u32,
                void_pointer,
                index: i as u32,
                array: count > 1,
            };
            let elem = |suffix: &str| -> String {
                if count > 1 {
                    format!("{name}[{i}]{suffix}")
                } else {
                    format!("{name}{suffix}")
                }
            };
            for (k, slot) in layout.pointers.iter().enumerate() {
                let Pointee::Data { ty: pointee } = slot.pointee else { continue };
                let mut v = at(slot.offset);
                if tags {
                    if let Some(t) = self.tag_at(hint_root, &slot.path) {
                        v = t.split(v).0;
                    }
                }
                if v == 0 {
                    continue;
                }
                if let Some((pos, obj)) = self.heap.find(v) {
                    if v != obj.addr {
                        self.note_interior(obj, v, pointee, from, || elem(field_suffix(&slot.path)));
                    }
                    let t = (v == obj.addr).then(|| prog.strip(pointee));
                    self.reach((pos, obj), t, from, || field(k, false))?;
                }
            }
            for (k, r) in layout.opaque.iter().enumerate() {
                let here = || {
                    let e = elem(field_suffix(&r.path));
                    match from {
                        Some(a) => format!("{} -> {e}", self.path_of(a)),
                        None => e,
                    }
                };
                let hinted = !self.hints.opaque.is_empty() || !self.hints.points_to.is_empty();
                let key = if hinted || tags { key(hint_root, &r.path) } else { String::new() };
                if hinted && self.hints.opaque.contains(&key) {
                    continue;
                }
                let tag = if tags { self.tag_at(hint_root, &r.path) } else { None };
                if let Some(&hinted) = self.hints.points_to.get(&key).filter(|_| hinted) {
                    let v = tag.as_ref().map_or(at(r.offset), |t| t.split(at(r.offset)).0);
                    if let Some((pos, obj)) = self.heap.find(v) {
                        let hop =
                            || format!("{} (MCR_POINTS_TO {})", elem(field_suffix(&r.path)), prog.type_name(hinted));
                        if v != obj.addr {
                            self.note_interior(obj, v, hinted, from, hop);
                        }
                        let t = (v == obj.addr).then(|| prog.strip(hinted));
                        self.reach((pos, obj), t, from, || Hop::Text(hop()))?;
                    }
                    continue;
                }
                if let Some(t) = &tag {
                    // A tagged pointer of no declared type (an integer, a union, a void *):
                    // the block it points to moves, untyped unless a typed pointer reaches it.
                    if r.len >= 8 && r.reason != OpaqueReason::CharArray {
                        let v = t.split(at(r.offset)).0;
                        if let Some(found) = self.heap.find(v).filter(|_| v != 0) {
                            self.reach(found, None, from, || {
                                Hop::Text(format!("{} ({})", elem(field_suffix(&r.path)), t.written))
                            })?;
                        }
                        continue;
                    }
                }
                match r.reason {
                    OpaqueReason::CharArray => {}
                    OpaqueReason::VoidPointer => {
                        let v = at(r.offset);
                        if let Some(found) = self.heap.find(v) {
                            self.reach(found, None, from, || field(k, true))?;
                        }
                    }
                    OpaqueReason::PointerSizedInteger | OpaqueReason::Union | OpaqueReason::Unknown => {
                        let start = (i * stride + r.offset) as usize;
                        let end = (start + r.len as usize).min(bytes.len());
                        let found = self.hidden_pointers(&bytes[start..end]);
                        if !found.is_empty() {
                            let rel = elem(field_suffix(&r.path));
                            self.pin_or_refuse(found, from, (&here(), &rel), r.reason)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Note a typed pointer (to `pointee`) that holds `v`, inside the block `obj` but not
    /// at its start: an object of that type there, unless the block's own typed objects
    /// cover it (a member, an element, a tagged pointer), which the walk knows at its end.
    fn note_interior(&mut self, obj: Object, v: u64, pointee: TypeId, from: Option<u64>, hop: impl FnOnce() -> String) {
        let ty = self.prog.strip(pointee);
        if is_byte(self.prog, ty) || self.prog.size_of(ty).unwrap_or(0) == 0 || !self.interior_seen.insert((v, ty)) {
            return;
        }
        self.interior.push(Interior { block: obj.addr, offset: v - obj.addr, ty, from, hop: hop() });
    }

    /// The `MCR_TAGGED` hint for the word at `layout_path` under `root`, if there is one.
    fn tag_at(&self, root: &str, layout_path: &str) -> Option<Tagged> {
        if self.hints.tagged.is_empty() {
            return None;
        }
        self.hints.tagged.get(&key(root, layout_path)).cloned()
    }

    /// The heap addresses in memory mcr cannot type: (offset, value, its block).
    fn hidden_pointers(&self, bytes: &[u8]) -> Vec<(usize, u64, usize)> {
        self.hidden_pointers_from(bytes, 0)
    }

    /// [`Self::hidden_pointers`] in the aligned words of `bytes` from offset `from` on,
    /// offsets counted from the start of `bytes`.
    fn hidden_pointers_from(&self, bytes: &[u8], from: usize) -> Vec<(usize, u64, usize)> {
        let from = from.next_multiple_of(8);
        bytes
            .get(from..)
            .unwrap_or_default()
            .chunks_exact(8)
            .enumerate()
            .filter_map(|(k, w)| {
                let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                self.heap.locate(v).filter(|_| v != 0).map(|pos| (from + k * 8, v, pos))
            })
            .collect()
    }

    /// Heap addresses `found` in memory mcr cannot type at `path` (in the block at `from`;
    /// `rel`: that place within the block, for the hop a pinned block records: its path is
    /// built from the hops, so a hop holding the whole path would make paths grow
    /// exponentially along a chain of pinned blocks): each may be a pointer, so its block
    /// stays where it is when the new process adopted it (pinned, and its own bytes
    /// scanned the same way); otherwise the block would move and the word could not be
    /// updated: the update stops.
    fn pin_or_refuse(
        &mut self,
        found: Vec<(usize, u64, usize)>,
        from: Option<u64>,
        (path, rel): (&str, &str),
        why: OpaqueReason,
    ) -> Result<(), TransferError> {
        for (off, v, pos) in found {
            let obj = self.heap.get(pos);
            let what = match why {
                OpaqueReason::Union => "a union",
                OpaqueReason::PointerSizedInteger => "a pointer-sized integer",
                OpaqueReason::Unknown => "memory of unknown type",
                OpaqueReason::VoidPointer => "a void * target",
                OpaqueReason::CharArray => "a char array",
            };
            let place = format!("{path}+{off}");
            let holds = format!("{what} holds {v:#x}{}", tag_note(v, obj.addr));
            if matches!(self.slots[pos], SEALED | KEPT) {
                // It stays where it is, as it is, pinned or not: counted, not walked.
                self.pinned.entry(obj.addr).or_insert(Pin { place, holds, held: false });
                continue;
            }
            if (self.pinnable)(obj.addr) {
                let hop = format!("{rel}+{off} (may point here)");
                self.pinned.entry(obj.addr).or_insert(Pin { place, holds, held: false });
                self.reach((pos, obj), None, from, || Hop::Text(hop))?;
                continue;
            }
            return Err(conflict(
                place,
                format!(
                    "{what} holds {v:#x}, the address of a live heap block; mcr cannot tell whether it is a pointer, \
                     so it can neither move the block nor leave it (declare the field with its pointer type, or \
                     annotate it with MCR_POINTS_TO or MCR_OPAQUE from mcr.h){}",
                    tag_note(v, obj.addr)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Reach, Reached};
    use crate::testing::{
        list_program, node, old_list, pool_and_cfg, pool_and_other, pool_with_arena, words, Build, Ids, World,
    };
    use crate::transfer::{transfer_with_words, TransferError};

    /// The list program, with `more` added to both versions (they do not change here).
    fn world(more: impl Fn(&mut Build, Ids)) -> World {
        World::new(list_program(false, &more), list_program(true, &more))
    }

    fn typed_as(w: &World, reached: &Reached, addr: u64) -> String {
        match reached.blocks[&addr].reach {
            Reach::Typed(t) => w.old.type_name(t),
            Reach::Opaque => "opaque".into(),
        }
    }

    fn conflict(r: Result<impl std::fmt::Debug, TransferError>) -> (String, String) {
        match r {
            Err(TransferError::Conflict { path, reason }) => (path, reason),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn typed_pointers_reach_every_node_with_its_type_its_path_and_its_bytes() {
        let mut w = world(|_, _| {});
        w.old_proc.block(&node(9, 0), false);
        let nodes = old_list(&mut w, &[1, 2, 3]);
        let (_, reached) = w.walk().expect("walk");
        let mut sorted = nodes.clone();
        sorted.sort();
        assert_eq!(reached.blocks.keys().copied().collect::<Vec<_>>(), sorted, "the unreached block is not there");
        for &n in &nodes {
            assert_eq!(typed_as(&w, &reached, n), "struct node");
        }
        assert_eq!(reached.path_of(nodes[2]), "head -> node.next -> node.next");
        assert_eq!(reached.blocks[&nodes[2]].parent, Some(nodes[1]));
        assert_eq!(reached.blocks.bytes(&reached.blocks[&nodes[1]]), node(2, nodes[2]));
    }

    fn blob(b: &mut Build, _: Ids) {
        let v = b.void_ptr();
        b.global("blob", 0x40_1030, v);
    }

    #[test]
    fn a_void_pointer_target_is_opaque_and_must_hold_no_heap_address() {
        let mut w = world(blob);
        let data = w.old_proc.block(b"some bytes, no pointer", false);
        w.set_global("blob", &data.to_ne_bytes());
        let (_, reached) = w.walk().expect("walk");
        assert_eq!(typed_as(&w, &reached, data), "opaque");
        assert_eq!(reached.path_of(data), "blob (void *)");

        let mut w = world(blob);
        let n = w.old_proc.block(&node(1, 0), false);
        let data = w.old_proc.block(&words(&[7, n]), false);
        w.set_global("blob", &data.to_ne_bytes());
        let (path, reason) = conflict(w.walk());
        assert_eq!(path, "blob (void *)+8", "the word that holds the address");
        assert!(reason.starts_with(&format!("a void * target holds {n:#x}")), "{reason}");
    }

    #[test]
    fn in_an_adopted_heap_an_address_in_untyped_memory_pins_its_block_in_place() {
        let mut w = World::new(list_program(false, blob), list_program(false, blob));
        w.adopted_heap = true;
        let n = w.old_proc.block(&node(1, 0), false);
        let data = w.old_proc.block(&words(&[7, n]), false);
        w.set_global("blob", &data.to_ne_bytes());
        let t = w.transfer().expect("the block is pinned, not a conflict");
        let r = &t.report;
        assert_eq!((r.pinned, r.in_place, r.old_freed), (1, 2, 0), "{r:?}");
        assert!(w.new_proc.freed.is_empty(), "a pinned block is not freed");
        assert_eq!(w.new_proc.mem.u64(w.new_global("blob")), data);
        assert_eq!(w.new_proc.mem.u64(data + 8), n, "the word still points to the block, which stayed");
    }

    #[test]
    fn a_word_outside_memory_that_points_deep_into_typed_state_pins_nothing() {
        // Epoll data pointing to the third node of a list whose type grows: the walk must
        // not take the node's bytes for untyped memory before the list's typed pointers
        // reach it, which would pin the fourth (and a pinned node cannot grow).
        let mut w = World::new(list_program(false, |_, _| {}), list_program(true, |_, _| {}));
        w.adopted_heap = true;
        let nodes = old_list(&mut w, &[1, 2, 3, 4]);
        let words = vec![("epoll data of fd 5 (epoll fd 4)".to_string(), nodes[2])];
        let t = w.with_pair(|pair, np| transfer_with_words(pair, np, &words)).expect("every node is typed");
        assert_eq!((t.report.pinned, t.report.objects), (0, 4), "{:?}", t.report);
        let moved = t.words[0];
        assert_ne!(moved, nodes[2], "the grown node moved, and the word with it");
        assert_eq!(w.new_proc.mem.i64(moved), 3);
    }

    #[test]
    fn a_pinned_block_whose_type_changes_size_is_a_conflict() {
        let mut w = world(blob);
        w.adopted_heap = true;
        let nodes = old_list(&mut w, &[1, 2]);
        let data = w.old_proc.block(&words(&[nodes[1]]), false);
        w.set_global("blob", &data.to_ne_bytes());
        let (path, reason) = conflict(w.transfer().map(|t| t.report));
        assert_eq!(path, "blob (void *)+0", "the word that holds the address");
        assert!(
            reason.starts_with(&format!("a void * target holds {:#x}, the address of the heap block", nodes[1])),
            "{reason}"
        );
        assert!(reason.contains("(head -> node.next)"), "how the block is reached: {reason}");
        assert!(
            reason.contains("must stay where it is, as it is, but its type struct node changes size (16 -> 24 bytes)"),
            "{reason}"
        );
    }

    /// `struct entry { struct entry *next; struct entry **prev; long val; }`, as sys/queue.h's
    /// lists link their elements, with globals `first` and `tail` (`struct entry **`).
    fn entries(b: &mut Build, ids: Ids) {
        let entry = b.reserve();
        let entry_ptr = b.ptr(entry);
        let entry_ptr_ptr = b.ptr(entry_ptr);
        b.set(
            entry,
            Build::composite_struct(
                "entry",
                24,
                &[("next", entry_ptr, 0), ("prev", entry_ptr_ptr, 8), ("val", ids.long, 16)],
            ),
        );
        b.global("first", 0x40_1040, entry_ptr);
        b.global("tail", 0x40_1048, entry_ptr_ptr);
    }

    #[test]
    fn a_pointer_to_an_objects_first_member_is_a_pointer_into_it_not_a_second_type() {
        let mut w = world(entries);
        // first -> e1 -> e2; e2.prev = &e1.next (e1's start); tail = &e2.next (e2's start),
        // met before e2 is reached as an entry.
        let e2 = w.old_proc.block(&words(&[0, 0, 2]), false);
        let e1 = w.old_proc.block(&words(&[e2, 0x40_1040, 1]), false);
        w.old_proc.mem.write(e2 + 8, &e1.to_ne_bytes());
        w.set_global("first", &e1.to_ne_bytes());
        w.set_global("tail", &e2.to_ne_bytes());
        let (_, reached) = w.walk().expect("no conflict");
        assert_eq!(typed_as(&w, &reached, e1), "struct entry");
        assert_eq!(typed_as(&w, &reached, e2), "struct entry", "the larger type wins, whichever came first");
    }

    #[test]
    fn a_typed_pointer_gives_a_block_an_untyped_word_reached_its_type() {
        let mut w = world(blob);
        let nodes = old_list(&mut w, &[1, 2]);
        w.set_global("blob", &nodes[1].to_ne_bytes());
        let (_, reached) = w.walk().expect("walk");
        assert_eq!(typed_as(&w, &reached, nodes[1]), "struct node");
        assert_eq!(reached.path_of(nodes[1]), "blob (void *)", "reported by the first way in");
    }

    /// `struct slot { int kind; union val { long n; struct node *p; } v; } *cur`, and hints.
    fn slots(hints: &'static [&'static str]) -> impl Fn(&mut Build, Ids) {
        move |b: &mut Build, ids: Ids| {
            let u = b.union("val", 8, &[("n", ids.long), ("p", ids.node_ptr)]);
            let slot = b.strukt("slot", 16, &[("kind", ids.int, 0), ("v", u, 8)]);
            let p = b.ptr(slot);
            b.global("cur", 0x40_1040, p);
            for h in hints {
                b.hint(h);
            }
        }
    }

    /// The slot's union holds the address of a node no typed pointer reaches.
    fn slot_holding_a_node(w: &mut World) -> (u64, u64) {
        let n = w.old_proc.block(&node(1, 0), false);
        let s = w.old_proc.block(&words(&[1, n]), false);
        w.set_global("cur", &s.to_ne_bytes());
        (s, n)
    }

    #[test]
    fn a_union_holding_a_heap_address_is_a_conflict_naming_its_path() {
        let mut w = world(slots(&[]));
        let (_, n) = slot_holding_a_node(&mut w);
        let (path, reason) = conflict(w.walk());
        assert_eq!(path, "cur -> slot.v+0");
        assert!(reason.starts_with(&format!("a union holds {n:#x}, the address of a live heap block")), "{reason}");
    }

    #[test]
    fn mcr_points_to_makes_the_union_a_typed_pointer_and_mcr_opaque_makes_it_data() {
        let mut w = world(slots(&["points_to slot.v=struct node"]));
        let (_, n) = slot_holding_a_node(&mut w);
        let (_, reached) = w.walk().expect("hinted");
        assert_eq!(typed_as(&w, &reached, n), "struct node");
        assert_eq!(reached.path_of(n), "cur -> slot.v (MCR_POINTS_TO struct node)");

        let mut w = world(slots(&["opaque slot.v"]));
        let (s, n) = slot_holding_a_node(&mut w);
        let (_, reached) = w.walk().expect("hinted");
        assert!(reached.blocks.contains_key(&s) && !reached.blocks.contains_key(&n), "data: not followed");
    }

    #[test]
    fn a_block_reached_as_two_types_is_a_conflict_naming_both_paths() {
        let mut w = world(|b, ids| {
            let other = b.strukt("other", 16, &[("a", ids.long, 0), ("b", ids.long, 8)]);
            let p = b.ptr(other);
            b.global("o", 0x40_1050, p);
        });
        let nodes = old_list(&mut w, &[1, 2]);
        w.set_global("o", &nodes[1].to_ne_bytes());
        // Roots first: `o` reaches the second node before the walk follows the first.
        let (path, reason) = conflict(w.walk());
        assert_eq!(path, "head -> node.next");
        assert_eq!(
            reason,
            format!(
                "the block at {:#x} is reached as struct node here and as struct other from o; mcr cannot tell which \
                 it is",
                nodes[1]
            )
        );
    }

    #[test]
    fn typed_objects_fill_a_block_or_head_it() {
        let mut b = Build::default();
        let long = b.long();
        let pair = b.strukt("pair", 16, &[("a", long, 0), ("b", long, 8)]);
        let c = b.char();
        let p = b.done();
        let objects = |size| super::typed_objects(&p, pair, size);
        assert_eq!([objects(48), objects(52), objects(16), objects(0)], [3, 3, 1, 0], "an array, slack after it");
        assert_eq!([objects(56), objects(4104), objects(24)], [1, 1, 1], "a header before other data");
        assert_eq!(objects(8), 0, "smaller than one");
        assert_eq!(super::typed_objects(&p, c, 100), 0, "bytes hold no objects");
    }

    #[test]
    fn a_block_larger_than_its_type_holds_one_object_then_memory_mcr_cannot_type() {
        // Taken for four struct pools, the arena's fourth word would be a pool's `first`
        // and reach `other` as a struct node, which `o` reaches as struct other.
        let mut w = World::new(list_program(false, pool_and_other), list_program(false, pool_and_other));
        w.adopted_heap = true;
        let (pool, other) = pool_with_arena(&mut w);
        let (_, reached) = w.walk().expect("the arena is scanned conservatively");
        assert_eq!(typed_as(&w, &reached, pool), "struct pool");
        assert_eq!(typed_as(&w, &reached, other), "struct other", "typed by its own pointer only");
        let pin = &reached.pinned[&other];
        assert_eq!(pin.place, "pool+40", "the word in the arena, by its offset in the block");
        assert!(pin.holds.starts_with(&format!("memory of unknown type holds {other:#x}")), "{pin:?}");

        // Where the block cannot stay (a heap copied block by block), such a word stops the
        // update, as any heap address in memory mcr cannot type does.
        let mut w = World::new(list_program(false, pool_and_other), list_program(false, pool_and_other));
        let (_, other) = pool_with_arena(&mut w);
        let (path, reason) = conflict(w.walk());
        assert_eq!(path, "pool+40");
        assert!(reason.starts_with(&format!("memory of unknown type holds {other:#x}")), "{reason}");
    }

    #[test]
    fn a_typed_pointer_into_memory_mcr_cannot_type_notes_the_object_there() {
        let mut w = World::new(list_program(false, pool_and_cfg), list_program(false, pool_and_cfg));
        w.adopted_heap = true;
        // A node array the pool's header reaches, `head` pointing to its second element:
        // inside its typed objects.
        let nodes = w.old_proc.block(&[node(1, 0), node(2, 0)].concat(), false);
        w.set_global("head", &(nodes + 16).to_ne_bytes());
        // `cfg` points into the pool's arena, 24 bytes into the block.
        let pool = w.old_proc.block(&words(&[56, nodes, 7, 5, 0, 0, 0]), false);
        w.set_global("pool", &pool.to_ne_bytes());
        w.set_global("cfg", &(pool + 24).to_ne_bytes());
        let (_, reached) = w.walk().expect("walk");
        let embedded: Vec<(String, u64, u64, &str)> =
            reached.embedded.iter().map(|e| (w.old.type_name(e.ty), e.block, e.offset, e.place.as_str())).collect();
        assert_eq!(embedded, [("struct cfg".to_string(), pool, 24, "cfg")], "not the node: an element of its block");
    }

    fn tagged_word(hints: &'static [&'static str]) -> impl Fn(&mut Build, Ids) {
        move |b: &mut Build, ids: Ids| {
            b.global("word", 0x40_1060, ids.long);
            for h in hints {
                b.hint(h);
            }
        }
    }

    #[test]
    fn a_tagged_word_reaches_its_block_and_an_untagged_one_is_a_conflict_that_suggests_the_hint() {
        let tagged = |w: &mut World| {
            let n = w.old_proc.block(&node(1, 0), false);
            w.set_global("word", &(n | 3).to_ne_bytes());
            n
        };
        let mut w = world(tagged_word(&["tagged word=2"]));
        let n = tagged(&mut w);
        let (_, reached) = w.walk().expect("tagged");
        assert_eq!(typed_as(&w, &reached, n), "opaque", "a tag says where it points, not what");
        assert_eq!(reached.path_of(n), "word (MCR_TAGGED(\"word\", 2))");

        let mut w = world(tagged_word(&["tagged word=2", "points_to word=struct node"]));
        let n = tagged(&mut w);
        let (_, reached) = w.walk().expect("tagged and typed");
        assert_eq!(typed_as(&w, &reached, n), "struct node");

        let mut w = world(tagged_word(&[]));
        tagged(&mut w);
        let (path, reason) = conflict(w.walk());
        assert_eq!(path, "word+0");
        assert!(reason.starts_with("a pointer-sized integer holds") && reason.contains("MCR_TAGGED"), "{reason}");
    }
}
