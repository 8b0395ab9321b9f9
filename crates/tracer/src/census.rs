//! The pointers a transfer traced, counted as the paper's Table 2 counts them: pointers
//! mcr knows to be pointers from the types (precise) and words in memory of no known
//! type that hold an address (likely), each by where it is (static: a global; dynamic: a
//! heap block) and where it points (static: the program's binary; dynamic: a live heap
//! block; library: a shared library's mapping).
//!
//! A second pass over what the walk read (the globals written since startup and every
//! block it reached, with their bytes), made only when asked (`mcr update
//! --count-pointers`): the walk itself looks up heap addresses only.
//!
//! Precise: typed data pointers, function pointers, `void *` fields (a pointer, to an
//! object of unknown type) and the words `MCR_POINTS_TO` declares. Likely: the words of
//! unions, pointer-sized integers, memory of unknown type (incomplete structs, flexible
//! arrays, what follows a block's typed objects: a pool's arena) and of blocks reached
//! only through such words or a `void *`. Char arrays and blocks of bytes are not looked
//! into (mcr moves them as bytes), nor is what `MCR_OPAQUE` declares.

use crate::hints::{key, Hints};
use crate::roots::Root;
use crate::walk::{is_byte, typed_objects, Reach, Reached};
use mcr_heap::HeapIndex;
use mcr_typemodel::transform::root_name;
use mcr_typemodel::{OpaqueReason, Program, TypeId};
use std::collections::HashMap;
use std::rc::Rc;

/// Pointers of one kind (precise or likely), by source and by target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PointerCounts {
    pub total: u64,
    /// Held by a global (static) or by a heap block (dynamic).
    pub from_static: u64,
    pub from_dynamic: u64,
    /// Pointing into the program's binary (its data, read-only data or code), into a live
    /// heap block, into a shared library's mapping, or (precise pointers only) elsewhere:
    /// a thread's stack, memory the program mapped itself, or nothing mapped (a dangling
    /// or stale value).
    pub to_static: u64,
    pub to_dynamic: u64,
    pub to_library: u64,
    pub to_other: u64,
}

impl PointerCounts {
    fn add(&mut self, o: &PointerCounts) {
        self.total += o.total;
        self.from_static += o.from_static;
        self.from_dynamic += o.from_dynamic;
        self.to_static += o.to_static;
        self.to_dynamic += o.to_dynamic;
        self.to_library += o.to_library;
        self.to_other += o.to_other;
    }
}

/// Precise and likely pointers of a transfer (summed over its processes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PointerCensus {
    pub precise: PointerCounts,
    pub likely: PointerCounts,
}

impl PointerCensus {
    pub fn add(&mut self, o: &PointerCensus) {
        self.precise.add(&o.precise);
        self.likely.add(&o.likely);
    }
}

/// Where a value points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Static,
    Dynamic,
    Library,
    Other,
}

pub(crate) struct Census<'c> {
    prog: &'c Program,
    heap: &'c HeapIndex,
    hints: &'c Hints,
    /// Whether an address is in the old binary's image, or in a library's mapping.
    binary: &'c dyn Fn(u64) -> bool,
    library: &'c dyn Fn(u64) -> bool,
    layouts: HashMap<TypeId, Rc<mcr_typemodel::Layout>>,
    out: PointerCensus,
}

impl<'c> Census<'c> {
    pub(crate) fn new(
        prog: &'c Program,
        heap: &'c HeapIndex,
        hints: &'c Hints,
        binary: &'c dyn Fn(u64) -> bool,
        library: &'c dyn Fn(u64) -> bool,
    ) -> Self {
        Census { prog, heap, hints, binary, library, layouts: HashMap::new(), out: PointerCensus::default() }
    }

    /// Counts the pointers of the written globals `roots`, of the untyped words the trace
    /// started from besides (pthread keys' values, epoll data, memory the program mapped
    /// itself: likely pointers held outside the heap, counted as dynamic sources) and of
    /// the blocks the walk reached.
    pub(crate) fn count(mut self, roots: &[Root], words: &[(String, u64)], reached: &Reached) -> PointerCensus {
        for &(_, v) in words {
            self.note(v, true, false);
        }
        for r in roots {
            self.typed(&r.bytes, self.prog.strip(r.old_ty), false, &r.plain);
        }
        for b in reached.blocks.values() {
            let bytes = reached.blocks.bytes(b);
            match b.reach {
                Reach::Typed(t) => {
                    let stride = self.prog.size_of(t).unwrap_or(0);
                    if stride == 0 || is_byte(self.prog, t) {
                        continue;
                    }
                    let typed = (typed_objects(self.prog, t, b.obj.size) * stride) as usize;
                    let root = root_name(self.prog, t);
                    self.typed(&bytes[..typed.min(bytes.len())], t, true, &root);
                    self.likely_words(bytes.get(typed.next_multiple_of(8)..).unwrap_or_default(), true);
                }
                Reach::Opaque => self.likely_words(bytes, true),
            }
        }
        self.out
    }

    fn target(&self, v: u64) -> Target {
        if self.heap.find(v).is_some() {
            Target::Dynamic
        } else if (self.binary)(v) {
            Target::Static
        } else if (self.library)(v) {
            Target::Library
        } else {
            Target::Other
        }
    }

    fn note(&mut self, v: u64, dynamic_source: bool, precise: bool) {
        if v == 0 {
            return;
        }
        let target = self.target(v);
        if !precise && target == Target::Other {
            return; // a word that points nowhere mcr knows is no likely pointer
        }
        let c = if precise { &mut self.out.precise } else { &mut self.out.likely };
        c.total += 1;
        if dynamic_source {
            c.from_dynamic += 1;
        } else {
            c.from_static += 1;
        }
        match target {
            Target::Static => c.to_static += 1,
            Target::Dynamic => c.to_dynamic += 1,
            Target::Library => c.to_library += 1,
            Target::Other => c.to_other += 1,
        }
    }

    fn likely_words(&mut self, bytes: &[u8], dynamic_source: bool) {
        for w in bytes.chunks_exact(8) {
            self.note(u64::from_ne_bytes(w.try_into().expect("8 bytes")), dynamic_source, false);
        }
    }

    /// Objects of type `ty` in `bytes`, hints named from `hint_root` (as the walk names
    /// them).
    fn typed(&mut self, bytes: &[u8], ty: TypeId, dynamic_source: bool, hint_root: &str) {
        let prog = self.prog;
        let stride = prog.size_of(ty).unwrap_or(0);
        if stride == 0 || is_byte(prog, ty) {
            return;
        }
        let layout = self.layouts.entry(ty).or_insert_with(|| Rc::new(prog.layout(ty, &root_name(prog, ty)))).clone();
        let hinted = !self.hints.opaque.is_empty() || !self.hints.points_to.is_empty() || !self.hints.tagged.is_empty();
        let untag = |path: &str, v: u64| match self.hints.tagged.get(&key(hint_root, path)) {
            Some(t) => t.split(v).0,
            None => v,
        };
        for object in bytes.chunks_exact(stride as usize) {
            let word = |off: u64| -> u64 {
                let o = off as usize;
                object.get(o..o + 8).map_or(0, |w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
            };
            for slot in &layout.pointers {
                let v = if hinted { untag(&slot.path, word(slot.offset)) } else { word(slot.offset) };
                self.note(v, dynamic_source, true);
            }
            for r in &layout.opaque {
                let k = if hinted { key(hint_root, &r.path) } else { String::new() };
                if hinted && self.hints.opaque.contains(&k) {
                    continue;
                }
                let declared = hinted && self.hints.points_to.contains_key(&k);
                match r.reason {
                    OpaqueReason::CharArray if !declared => {}
                    OpaqueReason::VoidPointer => {
                        let v = if hinted { untag(&r.path, word(r.offset)) } else { word(r.offset) };
                        self.note(v, dynamic_source, true);
                    }
                    _ if declared => {
                        let v = untag(&r.path, word(r.offset));
                        self.note(v, dynamic_source, true);
                    }
                    _ => {
                        let start = (r.offset as usize).next_multiple_of(8).min(object.len());
                        let end = (r.offset + r.len).min(object.len() as u64) as usize;
                        let region = object.get(start..end.max(start)).unwrap_or_default();
                        for w in region.chunks_exact(8) {
                            let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                            let v = if hinted { untag(&r.path, v) } else { v };
                            self.note(v, dynamic_source, false);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PointerCensus, PointerCounts};
    use crate::testing::{list_program, old_list, World, LIBRARY};
    use mcr_typemodel::SymbolKind;

    /// A list (`head` and the nodes' `next`), a `void *` global to a block of bytes that
    /// holds a node's address, an address in the binary, one in a library and a small
    /// number, and a pointer-sized integer global holding a node's address.
    #[test]
    fn pointers_are_counted_by_kind_source_and_target() {
        let make = || {
            list_program(false, |b, ids| {
                let v = b.void_ptr();
                b.global("blob", 0x40_1030, v);
                b.global("word", 0x40_1038, ids.long);
                b.symbol("word", 0x40_1038, 8, SymbolKind::Object);
            })
        };
        let mut w = World::new(make(), make());
        w.adopted_heap = true;
        w.census = true;
        let nodes = old_list(&mut w, &[1, 2, 3]);
        let words = [nodes[0], 0x40_1038, LIBRARY.0 + 0x1000, 12345, 0];
        let blob = w.old_proc.block(&words.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>(), false);
        w.set_global("blob", &blob.to_ne_bytes());
        w.set_global("word", &nodes[1].to_ne_bytes());
        let t = w.transfer().expect("transfer");
        let precise = PointerCounts {
            total: 4,
            from_static: 2,  // head, blob
            from_dynamic: 2, // the first two nodes' next
            to_dynamic: 4,
            ..PointerCounts::default()
        };
        let likely = PointerCounts {
            total: 4,
            from_static: 1,  // word
            from_dynamic: 3, // the blob's node, binary and library addresses
            to_static: 1,
            to_dynamic: 2,
            to_library: 1,
            to_other: 0,
        };
        assert_eq!(t.report.pointers, Some(PointerCensus { precise, likely }), "{:?}", t.report);
        assert_eq!(t.report.walked_all.as_deref(), Some("--count-pointers"));
    }

    #[test]
    fn without_a_census_no_pointers_are_counted() {
        let mut w = World::new(list_program(false, |_, _| {}), list_program(true, |_, _| {}));
        old_list(&mut w, &[1, 2]);
        assert_eq!(w.transfer().expect("transfer").report.pointers, None);
    }
}
