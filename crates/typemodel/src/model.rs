//! The data model: a program's C types, globals and symbols.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// Index of a type in [`Program::types`]. Only meaningful together with its program.
pub type TypeId = u32;

/// How a base type's bits are to be read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Signed,
    Unsigned,
    SignedChar,
    UnsignedChar,
    Bool,
    Float,
    /// Anything else (complex, decimal float, UTF): copied as bytes, never converted.
    Other,
}

impl Encoding {
    /// True for integers (including chars and bool) that are sign-extended.
    pub fn is_signed(self) -> bool {
        matches!(self, Encoding::Signed | Encoding::SignedChar)
    }
    /// True for every integer-like encoding (integers, chars, bool).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Encoding::Signed | Encoding::Unsigned | Encoding::SignedChar | Encoding::UnsignedChar | Encoding::Bool
        )
    }
    pub fn is_char(self) -> bool {
        matches!(self, Encoding::SignedChar | Encoding::UnsignedChar)
    }
}

/// One member of a struct or union.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// `None` for an anonymous struct/union member.
    pub name: Option<String>,
    pub ty: TypeId,
    /// Byte offset from the start of the containing object (for a bitfield: the byte
    /// holding its first bit).
    pub offset: u64,
    /// Width in bits, for a bitfield.
    pub bit_size: Option<u64>,
    /// For a bitfield: offset of its least significant bit from the start of the
    /// containing object, in bits (little-endian numbering).
    pub bit_offset: Option<u64>,
}

/// A struct or a union.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Composite {
    /// The tag (`kv_node` for `struct kv_node`); `None` when anonymous.
    pub name: Option<String>,
    pub size: u64,
    pub members: Vec<Member>,
    /// Only declared (`struct foo;`) and never defined in this program.
    pub incomplete: bool,
}

/// One node of the C type graph.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Type {
    /// `void` (the pointee of `void *`, the return type of a procedure).
    Void,
    Base {
        name: String,
        size: u64,
        encoding: Encoding,
    },
    /// A data or function pointer; `pointee` may be [`Type::Void`] or a [`Type::Function`].
    Pointer {
        pointee: TypeId,
        size: u64,
    },
    Struct(Composite),
    Union(Composite),
    /// `counts` has one entry per dimension, outermost first; `None` is a flexible or
    /// unknown bound (`char data[]`).
    Array {
        element: TypeId,
        counts: Vec<Option<u64>>,
    },
    Enum {
        name: Option<String>,
        size: u64,
        signed: bool,
        enumerators: Vec<(String, i64)>,
    },
    Typedef {
        name: String,
        target: TypeId,
    },
    /// `const`, `volatile`, `restrict`, `_Atomic`: transparent for layout, remembered.
    Qualified {
        qualifier: Qualifier,
        target: TypeId,
    },
    Function {
        ret: TypeId,
        params: Vec<TypeId>,
        variadic: bool,
    },
    /// A type the loader could not read (unsupported DWARF form or tag): opaque.
    Unknown {
        size: Option<u64>,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Qualifier {
    Const,
    Volatile,
    Restrict,
    Atomic,
}

/// Where a global lives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Location {
    /// Link-time address (add the load bias for a PIE).
    Address { address: u64 },
    /// Thread-local: offset in the module's TLS block.
    Tls { offset: u64 },
}

/// A global or static variable of the main binary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub name: String,
    /// Compilation unit (source file name as in DW_AT_name) that defines it.
    pub unit: String,
    /// For a `static` declared inside a function: that function's name.
    pub function: Option<String>,
    /// Internal linkage: matched across versions by name *and* unit (and function).
    pub is_static: bool,
    pub location: Location,
    pub size: Option<u64>,
    pub ty: TypeId,
}

impl Global {
    pub fn is_tls(&self) -> bool {
        matches!(self.location, Location::Tls { .. })
    }
    /// Link-time address, for a non-thread-local.
    pub fn address(&self) -> Option<u64> {
        match self.location {
            Location::Address { address } => Some(address),
            Location::Tls { .. } => None,
        }
    }
    /// Human name: `name`, `unit:name` for statics, `unit:function.name` for
    /// function-scope statics.
    pub fn display_name(&self) -> String {
        match (&self.function, self.is_static) {
            (Some(f), _) => format!("{}:{}.{}", self.unit, f, self.name),
            (None, true) => format!("{}:{}", self.unit, self.name),
            (None, false) => self.name.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SymbolKind {
    Function,
    Object,
    Tls,
}

/// An ELF symbol (from `.symtab`, else `.dynsym`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
    pub kind: SymbolKind,
    pub global: bool,
    /// For a local symbol: the source file the symbol table names before it (two `static`
    /// functions may share a name, as vsftpd's two `handle_sigchld`).
    #[serde(default)]
    pub file: Option<String>,
}

/// Everything mcr knows about one binary's data.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    /// GNU build ID, lowercase hex.
    pub build_id: Option<String>,
    /// False when no DWARF was found: the type model is empty and an update must treat
    /// the whole state conservatively.
    pub has_debug_info: bool,
    /// Where the DWARF came from when not from the binary itself.
    pub debug_file: Option<PathBuf>,
    /// The type graph, deduplicated by structure across compilation units.
    pub types: Vec<Type>,
    pub globals: Vec<Global>,
    /// Defined function and object symbols, sorted by address.
    pub symbols: Vec<Symbol>,
    /// Things the loader skipped or could not read.
    pub warnings: Vec<String>,
    /// Annotations compiled into the binary by `include/mcr.h` (its `mcr_hints` section),
    /// one per string: `points_to WHERE=TYPE`, `opaque WHERE`.
    #[serde(default)]
    pub hints: Vec<String>,
}

/// Pointee of a pointer slot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Pointee {
    /// A typed data pointer; the id is the pointee with typedefs and qualifiers kept.
    Data { ty: TypeId },
    /// `void *` (or a pointer to an incomplete/unknown type): the target is opaque.
    Void,
    /// A function pointer: relocate by symbol name.
    Function,
}

/// A pointer inside an object, for precise tracing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PointerSlot {
    pub offset: u64,
    pub pointee: Pointee,
    /// Field path, e.g. `kv_node.next`.
    pub path: String,
}

/// Why a region must be scanned conservatively.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OpaqueReason {
    Union,
    VoidPointer,
    CharArray,
    PointerSizedInteger,
    /// Unknown type, incomplete struct or flexible array.
    Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpaqueRegion {
    pub offset: u64,
    pub len: u64,
    pub reason: OpaqueReason,
    pub path: String,
}

/// Where the pointers are in an object of some type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    /// Typed pointers (data and function): follow precisely.
    pub pointers: Vec<PointerSlot>,
    /// Regions to scan conservatively for likely pointers.
    pub opaque: Vec<OpaqueRegion>,
}

/// Nesting limit when walking types (malformed DWARF can describe cycles by value).
pub(crate) const MAX_DEPTH: usize = 64;

impl Program {
    /// An empty model for a binary without DWARF.
    pub fn empty(path: PathBuf) -> Program {
        Program {
            path,
            build_id: None,
            has_debug_info: false,
            debug_file: None,
            types: Vec::new(),
            globals: Vec::new(),
            symbols: Vec::new(),
            warnings: Vec::new(),
            hints: Vec::new(),
        }
    }

    /// The type with this id; [`Type::Unknown`] for an id out of range.
    pub fn ty(&self, id: TypeId) -> &Type {
        const UNKNOWN: Type = Type::Unknown { size: None };
        self.types.get(id as usize).unwrap_or(&UNKNOWN)
    }

    /// Strips typedefs and qualifiers.
    pub fn strip(&self, mut id: TypeId) -> TypeId {
        for _ in 0..MAX_DEPTH {
            match self.ty(id) {
                Type::Typedef { target, .. } | Type::Qualified { target, .. } => id = *target,
                _ => return id,
            }
        }
        id
    }

    /// Size in bytes of an object of this type (`None` for void, functions, unknown,
    /// flexible arrays).
    pub fn size_of(&self, id: TypeId) -> Option<u64> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: TypeId, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.ty(self.strip(id)) {
            Type::Base { size, .. } | Type::Pointer { size, .. } | Type::Enum { size, .. } => Some(*size),
            Type::Struct(c) | Type::Union(c) => (!c.incomplete).then_some(c.size),
            Type::Array { element, counts } => {
                let mut n = 1u64;
                for c in counts {
                    n = n.checked_mul((*c)?)?;
                }
                self.size_of_depth(*element, depth + 1)?.checked_mul(n)
            }
            Type::Unknown { size } => *size,
            Type::Void | Type::Function { .. } | Type::Typedef { .. } | Type::Qualified { .. } => None,
        }
    }

    /// Global by name (first match: externals before statics).
    pub fn global(&self, name: &str) -> Option<&Global> {
        self.globals.iter().filter(|g| g.name == name && g.function.is_none()).min_by_key(|g| g.is_static)
    }

    /// Symbol by name (a defined function or object).
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// The function symbol starting exactly at `address` (link-time).
    pub fn function_at(&self, address: u64) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.kind == SymbolKind::Function && s.address == address)
    }

    /// Named struct/union/enum/typedef types, by tag: `struct kv_node`, `enum color`,
    /// `pid_t`. An anonymous struct/union/enum behind a typedef is named by the typedef.
    pub fn named_types(&self) -> HashMap<String, Vec<TypeId>> {
        let mut map: HashMap<String, Vec<TypeId>> = HashMap::new();
        for (i, t) in self.types.iter().enumerate() {
            let key = match t {
                Type::Struct(c) if !c.incomplete => c.name.as_ref().map(|n| format!("struct {n}")),
                Type::Union(c) if !c.incomplete => c.name.as_ref().map(|n| format!("union {n}")),
                Type::Enum { name: Some(n), .. } => Some(format!("enum {n}")),
                Type::Typedef { name, target } => {
                    let anonymous = match self.ty(*target) {
                        Type::Struct(c) | Type::Union(c) => c.name.is_none() && !c.incomplete,
                        Type::Enum { name, .. } => name.is_none(),
                        _ => false,
                    };
                    if anonymous {
                        // The typedef names the anonymous aggregate itself.
                        map.entry(name.clone()).or_default().push(*target);
                        None
                    } else {
                        Some(name.clone())
                    }
                }
                _ => None,
            };
            if let Some(k) = key {
                map.entry(k).or_default().push(i as TypeId);
            }
        }
        for v in map.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        map
    }

    /// C spelling of a type: `struct kv_node *`, `unsigned int[4]`, `pid_t`.
    pub fn type_name(&self, id: TypeId) -> String {
        self.type_name_depth(id, 0)
    }

    fn type_name_depth(&self, id: TypeId, depth: usize) -> String {
        if depth > 8 {
            return "...".into();
        }
        match self.ty(id) {
            Type::Void => "void".into(),
            Type::Base { name, .. } => name.clone(),
            Type::Pointer { pointee, .. } => match self.ty(self.strip(*pointee)) {
                Type::Function { .. } => format!("{} (*)()", self.fn_ret_name(*pointee, depth)),
                _ => format!("{} *", self.type_name_depth(*pointee, depth + 1)),
            },
            Type::Struct(c) => format!("struct {}", c.name.as_deref().unwrap_or("<anonymous>")),
            Type::Union(c) => format!("union {}", c.name.as_deref().unwrap_or("<anonymous>")),
            Type::Array { element, counts } => {
                let dims: String = counts
                    .iter()
                    .map(|c| match c {
                        Some(n) => format!("[{n}]"),
                        None => "[]".into(),
                    })
                    .collect();
                format!("{}{}", self.type_name_depth(*element, depth + 1), dims)
            }
            Type::Enum { name, .. } => format!("enum {}", name.as_deref().unwrap_or("<anonymous>")),
            Type::Typedef { name, .. } => name.clone(),
            Type::Qualified { qualifier, target } => {
                let q = match qualifier {
                    Qualifier::Const => "const",
                    Qualifier::Volatile => "volatile",
                    Qualifier::Restrict => "restrict",
                    Qualifier::Atomic => "_Atomic",
                };
                format!("{q} {}", self.type_name_depth(*target, depth + 1))
            }
            Type::Function { ret, .. } => format!("{} ()", self.type_name_depth(*ret, depth + 1)),
            Type::Unknown { .. } => "<unknown type>".into(),
        }
    }

    fn fn_ret_name(&self, f: TypeId, depth: usize) -> String {
        match self.ty(self.strip(f)) {
            Type::Function { ret, .. } => self.type_name_depth(*ret, depth + 1),
            _ => "?".into(),
        }
    }

    /// Typed pointers and opaque regions of an object of type `id` (arrays expanded).
    /// `root` names the object in the paths (e.g. `kv_node` or a global's name).
    pub fn layout(&self, id: TypeId, root: &str) -> Layout {
        let mut l = Layout { size: self.size_of(id).unwrap_or(0), ..Layout::default() };
        self.layout_into(id, 0, root.to_string(), &mut l, 0);
        l
    }

    fn layout_into(&self, id: TypeId, base: u64, path: String, out: &mut Layout, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let sid = self.strip(id);
        match self.ty(sid) {
            Type::Pointer { pointee, size } => {
                let p = self.strip(*pointee);
                match self.ty(p) {
                    Type::Function { .. } => {
                        out.pointers.push(PointerSlot { offset: base, pointee: Pointee::Function, path })
                    }
                    Type::Void | Type::Unknown { .. } => out.opaque.push(OpaqueRegion {
                        offset: base,
                        len: *size,
                        reason: OpaqueReason::VoidPointer,
                        path,
                    }),
                    Type::Struct(c) | Type::Union(c) if c.incomplete => out.opaque.push(OpaqueRegion {
                        offset: base,
                        len: *size,
                        reason: OpaqueReason::VoidPointer,
                        path,
                    }),
                    _ => out.pointers.push(PointerSlot { offset: base, pointee: Pointee::Data { ty: *pointee }, path }),
                }
            }
            Type::Base { size, encoding, .. } => {
                if *size == 8 && encoding.is_integer() {
                    out.opaque.push(OpaqueRegion {
                        offset: base,
                        len: 8,
                        reason: OpaqueReason::PointerSizedInteger,
                        path,
                    });
                }
            }
            Type::Struct(c) => {
                if c.incomplete {
                    out.opaque.push(OpaqueRegion { offset: base, len: c.size, reason: OpaqueReason::Unknown, path });
                    return;
                }
                for (i, m) in c.members.iter().enumerate() {
                    if m.bit_size.is_some() {
                        continue;
                    }
                    let name = m.name.clone().unwrap_or_else(|| format!("<anon{i}>"));
                    self.layout_into(m.ty, base + m.offset, format!("{path}.{name}"), out, depth + 1);
                }
            }
            Type::Union(c) => {
                out.opaque.push(OpaqueRegion { offset: base, len: c.size, reason: OpaqueReason::Union, path })
            }
            Type::Array { element, counts } => self.layout_array(*element, counts, base, path, out, depth),
            Type::Unknown { size } => out.opaque.push(OpaqueRegion {
                offset: base,
                len: size.unwrap_or(0),
                reason: OpaqueReason::Unknown,
                path,
            }),
            Type::Enum { .. } | Type::Void | Type::Function { .. } | Type::Typedef { .. } | Type::Qualified { .. } => {}
        }
    }

    fn layout_array(
        &self,
        element: TypeId,
        counts: &[Option<u64>],
        base: u64,
        path: String,
        out: &mut Layout,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let Some((first, inner)) = counts.split_first() else {
            return self.layout_into(element, base, path, out, depth + 1);
        };
        let stride = self.size_of(element).and_then(|e| inner.iter().try_fold(e, |a, c| a.checked_mul((*c)?)));
        let (Some(stride), Some(n)) = (stride, *first) else {
            out.opaque.push(OpaqueRegion { offset: base, len: 0, reason: OpaqueReason::Unknown, path });
            return;
        };
        if let Type::Base { encoding, size: 1, .. } = self.ty(self.strip(element)) {
            if encoding.is_char() {
                let len = stride.saturating_mul(n);
                out.opaque.push(OpaqueRegion { offset: base, len, reason: OpaqueReason::CharArray, path });
                return;
            }
        }
        // Arrays of plain scalars hold no pointers: skip the expansion.
        if !self.may_hold_pointers(element, 0) {
            return;
        }
        for i in 0..n {
            let off = base.saturating_add(i.saturating_mul(stride));
            self.layout_array(element, inner, off, format!("{path}[{i}]"), out, depth + 1);
        }
    }

    /// Whether an object of this type can contain a pointer or opaque region.
    pub(crate) fn may_hold_pointers(&self, id: TypeId, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return true;
        }
        match self.ty(self.strip(id)) {
            Type::Pointer { .. } | Type::Union(_) | Type::Unknown { .. } => true,
            Type::Base { size, encoding, .. } => *size == 8 && encoding.is_integer(),
            Type::Struct(c) => c.incomplete || c.members.iter().any(|m| self.may_hold_pointers(m.ty, depth + 1)),
            Type::Array { element, .. } => self.may_hold_pointers(*element, depth + 1),
            _ => false,
        }
    }
}
