//! Transformation of an object of an old type into the new version's type.
//!
//! The rules (DESIGN.md "Mutable tracing"): struct fields are matched by name (anonymous
//! members by position among the anonymous ones); integers are resized and
//! sign-converted with a run-time range check; floats are converted (a `double` that a
//! `float` cannot hold exactly is an error); arrays are truncated (the dropped elements
//! must be all zero bytes) or extended with zeros; added fields are zeroed; removed
//! fields are dropped; enums are mapped by enumerator name; data and function pointers
//! are handed to the caller to relocate. Unions, unknown types and other opaque bytes
//! are copied only when their type is unchanged. Anything else is [`Incompatible`]: the
//! object needs a handler (`MCR_ADD_OBJ_HANDLER`).
//!
//! A [`Plan`] is computed once per (old type, new type) pair and applied to any number
//! of objects.

use crate::model::{MAX_DEPTH, *};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;

/// Where an integer lives: `width` bits from bit `bit` (little-endian numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BitLoc {
    pub bit: u64,
    pub width: u32,
    pub signed: bool,
}

impl BitLoc {
    fn bytes(off: u64, size: u64, signed: bool) -> BitLoc {
        BitLoc { bit: off * 8, width: (size * 8) as u32, signed }
    }
    fn end_byte(&self) -> u64 {
        (self.bit + self.width as u64).div_ceil(8)
    }
}

/// One step of a plan. Offsets are relative to the object (or array element).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Identical representation: copy bytes.
    Copy { old: u64, new: u64, len: u64 },
    /// Integer (or bitfield, or bool, or char) conversion with a range check.
    Int { old: BitLoc, new: BitLoc, checked: bool, path: String },
    /// Floating-point conversion between `float` and `double`.
    Float { old: u64, old_size: u64, new: u64, new_size: u64, path: String },
    /// Enum value mapped by enumerator name. `map` pairs each old value with its new
    /// value, or with `Err(name)` when that enumerator was removed.
    Enum { old: BitLoc, new: BitLoc, map: Vec<(i64, Result<i64, String>)>, identity: bool, path: String },
    /// A pointer for the caller to relocate.
    Pointer { old: u64, new: u64, size: u64, old_pointee: Pointee, new_pointee: Pointee, path: String },
    /// An added field (or added array elements): zero bits.
    Zero { new: BitLoc },
    /// Array elements the new version drops: must be all zero bytes.
    Dropped { old: u64, len: u64, path: String },
    /// `count` elements, each transformed by `ops`.
    Array { old: u64, new: u64, count: u64, old_stride: u64, new_stride: u64, ops: Vec<Op>, path: String },
}

/// What the plan does to one field, in words a `mcr check` reader understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Rule {
    /// Same type, possibly at another offset.
    Copied {
        old_offset: u64,
        new_offset: u64,
    },
    IntConverted {
        from: String,
        to: String,
        checked: bool,
        old_offset: u64,
        new_offset: u64,
    },
    FloatConverted {
        from: String,
        to: String,
        checked: bool,
    },
    EnumByName {
        removed: Vec<String>,
        added: Vec<String>,
        renumbered: Vec<String>,
    },
    PointerRelocated {
        function: bool,
        old_pointee: String,
        new_pointee: String,
        old_offset: u64,
        new_offset: u64,
    },
    ArrayResized {
        old_count: u64,
        new_count: u64,
    },
    Added {
        ty: String,
        offset: u64,
    },
    Removed {
        ty: String,
    },
}

/// A rule applied at a field path (`kv_node.hits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldRule {
    pub path: String,
    #[serde(flatten)]
    pub rule: Rule,
}

/// One reason a type pair cannot be transformed automatically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub reason: String,
}

/// The old type cannot be transformed into the new one without a handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Incompatible {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.path, p.reason)?;
        }
        Ok(())
    }
}

/// A value that does not survive the transformation, or a relocation failure.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("{path}: value {value} does not fit in {bits}-bit {signedness} integer", signedness = if *signed { "signed" } else { "unsigned" })]
    OutOfRange { path: String, value: i128, bits: u32, signed: bool },
    #[error("{path}: value {value} is not a known enumerator, and the enum's values changed")]
    UnknownEnumValue { path: String, value: i64 },
    #[error("{path}: holds enumerator {name}, which the new version removed")]
    EnumeratorRemoved { path: String, name: String },
    #[error("{path}: {value} cannot be represented exactly in the new float type")]
    FloatPrecision { path: String, value: f64 },
    #[error("{path}: array elements the new version drops hold data ({len} bytes from offset {offset})")]
    Truncated { path: String, offset: u64, len: u64 },
    #[error("{which} object is {got} bytes, the plan needs at least {need}")]
    Size { which: &'static str, need: u64, got: u64 },
    #[error("{path}: cannot relocate pointer {value:#x}: {source}")]
    Relocate {
        path: String,
        value: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A pointer found while applying a plan: the caller returns its new value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerSite<'a> {
    /// Field path, e.g. `kv_node.next` (array elements as `table[12]`).
    pub path: &'a str,
    /// Offset of the pointer in the old and the new object.
    pub old_offset: u64,
    pub new_offset: u64,
    /// The old pointer value (never null: null pointers stay null without a call).
    pub old_value: u64,
    /// Pointee in the old program's type ids.
    pub old_pointee: Pointee,
    /// Pointee in the new program's type ids.
    pub new_pointee: Pointee,
}

/// A flexible array member at the end of the object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tail {
    pub old_offset: u64,
    pub new_offset: u64,
    pub old_stride: u64,
    pub new_stride: u64,
    pub ops: Vec<Op>,
    pub path: String,
}

/// The transformation of objects of one old type into one new type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub old_size: u64,
    pub new_size: u64,
    ops: Vec<Op>,
    /// Trailing flexible array member, transformed for as many elements as the old
    /// object holds.
    pub tail: Option<Tail>,
    /// What happens to each field that is not copied unchanged at the same offset.
    pub rules: Vec<FieldRule>,
    /// True when old and new bytes are identical for every object (a plain copy).
    pub identity: bool,
}

impl Plan {
    /// Plans the transformation of `old_type` (of `old`) into `new_type` (of `new`).
    /// Paths in rules and errors start with the type's name (`kv_node.hits`).
    pub fn new(old: &Program, old_type: TypeId, new: &Program, new_type: TypeId) -> Result<Plan, Incompatible> {
        let root = root_name(new, new_type);
        Plan::with_root(old, old_type, new, new_type, &root)
    }

    /// Like [`Plan::new`], naming the object `root` in paths (a global's name).
    pub fn with_root(
        old: &Program,
        old_type: TypeId,
        new: &Program,
        new_type: TypeId,
        root: &str,
    ) -> Result<Plan, Incompatible> {
        let (plan, problems) = analyze(old, old_type, new, new_type, root);
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(Incompatible { problems })
        }
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Size of the new object for an old object of `old_len` bytes (differs from
    /// `new_size` only with a flexible array member).
    pub fn new_len(&self, old_len: u64) -> u64 {
        match &self.tail {
            Some(t) if t.old_stride > 0 => {
                let n = old_len.saturating_sub(t.old_offset) / t.old_stride;
                self.new_size.max(t.new_offset + n * t.new_stride)
            }
            _ => self.new_size,
        }
    }

    /// Writes the transformed `old_bytes` into `new_bytes` (at least
    /// [`Plan::new_len`] bytes). Every field of the new object is written: mapped
    /// fields converted, added fields zeroed; padding is left as it is. Non-null
    /// pointers go through `relocate`, which returns their new value.
    pub fn apply<E>(
        &self,
        old_bytes: &[u8],
        new_bytes: &mut [u8],
        relocate: &mut dyn FnMut(PointerSite) -> Result<u64, E>,
    ) -> Result<(), TransformError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut reloc = |site: PointerSite| relocate(site).map_err(Into::into);
        let need_new = self.new_len(old_bytes.len() as u64);
        if (old_bytes.len() as u64) < self.old_size {
            return Err(TransformError::Size { which: "old", need: self.old_size, got: old_bytes.len() as u64 });
        }
        if (new_bytes.len() as u64) < need_new {
            return Err(TransformError::Size { which: "new", need: need_new, got: new_bytes.len() as u64 });
        }
        run(&self.ops, old_bytes, 0, new_bytes, 0, &mut reloc, None)?;
        if let Some(t) = &self.tail {
            if let Some(n) = (old_bytes.len() as u64).saturating_sub(t.old_offset).checked_div(t.old_stride) {
                let arr = Op::Array {
                    old: t.old_offset,
                    new: t.new_offset,
                    count: n,
                    old_stride: t.old_stride,
                    new_stride: t.new_stride,
                    ops: t.ops.clone(),
                    path: t.path.clone(),
                };
                run(std::slice::from_ref(&arr), old_bytes, 0, new_bytes, 0, &mut reloc, None)?;
            }
        }
        Ok(())
    }
}

type Reloc<'r> = dyn FnMut(PointerSite) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> + 'r;

fn index_path(path: &str, idx: Option<(&str, u64)>) -> String {
    match idx {
        Some((prefix, i)) if path.starts_with(prefix) && path[prefix.len()..].starts_with("[]") => {
            format!("{prefix}[{i}]{}", &path[prefix.len() + 2..])
        }
        _ => path.to_string(),
    }
}

fn run(
    ops: &[Op],
    old: &[u8],
    obase: u64,
    new: &mut [u8],
    nbase: u64,
    reloc: &mut Reloc<'_>,
    idx: Option<(&str, u64)>,
) -> Result<(), TransformError> {
    for op in ops {
        match op {
            Op::Copy { old: o, new: n, len } => {
                check(old, "old", obase + o + len)?;
                check(new, "new", nbase + n + len)?;
                let (o, n, l) = ((obase + o) as usize, (nbase + n) as usize, *len as usize);
                new[n..n + l].copy_from_slice(&old[o..o + l]);
            }
            Op::Int { old: o, new: n, path, .. } => {
                check(old, "old", obase + o.end_byte())?;
                check(new, "new", nbase + n.end_byte())?;
                let v = read_bits(old, obase * 8, o);
                if !fits(v, n) {
                    return Err(TransformError::OutOfRange {
                        path: index_path(path, idx),
                        value: v,
                        bits: n.width,
                        signed: n.signed,
                    });
                }
                write_bits(new, nbase * 8, n, v);
            }
            Op::Float { old: o, old_size, new: n, new_size, path } => {
                check(old, "old", obase + o + old_size)?;
                check(new, "new", nbase + n + new_size)?;
                let o = (obase + o) as usize;
                let n = (nbase + n) as usize;
                let v = match old_size {
                    4 => f32::from_le_bytes(old[o..o + 4].try_into().unwrap_or([0; 4])) as f64,
                    _ => f64::from_le_bytes(old[o..o + 8].try_into().unwrap_or([0; 8])),
                };
                match new_size {
                    4 => {
                        let f = v as f32;
                        if !v.is_nan() && f as f64 != v {
                            return Err(TransformError::FloatPrecision { path: index_path(path, idx), value: v });
                        }
                        new[n..n + 4].copy_from_slice(&f.to_le_bytes());
                    }
                    _ => new[n..n + 8].copy_from_slice(&v.to_le_bytes()),
                }
            }
            Op::Enum { old: o, new: n, map, identity, path } => {
                check(old, "old", obase + o.end_byte())?;
                check(new, "new", nbase + n.end_byte())?;
                let v = read_bits(old, obase * 8, o) as i64;
                let mapped = match map.iter().find(|(ov, _)| *ov == v) {
                    Some((_, Ok(nv))) => *nv,
                    Some((_, Err(name))) => {
                        return Err(TransformError::EnumeratorRemoved {
                            path: index_path(path, idx),
                            name: name.clone(),
                        })
                    }
                    None if *identity => v,
                    None => return Err(TransformError::UnknownEnumValue { path: index_path(path, idx), value: v }),
                };
                if !fits(mapped as i128, n) {
                    return Err(TransformError::OutOfRange {
                        path: index_path(path, idx),
                        value: mapped as i128,
                        bits: n.width,
                        signed: n.signed,
                    });
                }
                write_bits(new, nbase * 8, n, mapped as i128);
            }
            Op::Pointer { old: o, new: n, size, old_pointee, new_pointee, path } => {
                check(old, "old", obase + o + size)?;
                check(new, "new", nbase + n + size)?;
                let loc = BitLoc::bytes(obase + o, *size, false);
                let v = read_bits(old, 0, &loc) as u64;
                let nv = if v == 0 {
                    0
                } else {
                    // Named with its element index only inside an array (a name per
                    // pointer of every object would cost an allocation each).
                    let p: std::borrow::Cow<str> = match idx {
                        None => std::borrow::Cow::Borrowed(path.as_str()),
                        Some(_) => std::borrow::Cow::Owned(index_path(path, idx)),
                    };
                    reloc(PointerSite {
                        path: &p,
                        old_offset: obase + o,
                        new_offset: nbase + n,
                        old_value: v,
                        old_pointee: *old_pointee,
                        new_pointee: *new_pointee,
                    })
                    .map_err(|source| TransformError::Relocate {
                        path: p.to_string(),
                        value: v,
                        source,
                    })?
                };
                write_bits(new, 0, &BitLoc::bytes(nbase + n, *size, false), nv as i128);
            }
            Op::Zero { new: n } => {
                check(new, "new", nbase + n.end_byte())?;
                write_bits_zero(new, nbase * 8, n)
            }
            Op::Dropped { old: o, len, path } => {
                check(old, "old", obase + o + len)?;
                let o = (obase + o) as usize;
                if old[o..o + *len as usize].iter().any(|b| *b != 0) {
                    return Err(TransformError::Truncated { path: index_path(path, idx), offset: o as u64, len: *len });
                }
            }
            Op::Array { old: o, new: n, count, old_stride, new_stride, ops, path } => {
                let p = index_path(path, idx);
                for i in 0..*count {
                    run(ops, old, obase + o + i * old_stride, new, nbase + n + i * new_stride, reloc, Some((&p, i)))?;
                }
            }
        }
    }
    Ok(())
}

fn check(buf: &[u8], which: &'static str, end: u64) -> Result<(), TransformError> {
    if end > buf.len() as u64 {
        Err(TransformError::Size { which, need: end, got: buf.len() as u64 })
    } else {
        Ok(())
    }
}

fn read_bits(buf: &[u8], base_bit: u64, loc: &BitLoc) -> i128 {
    let start = base_bit + loc.bit;
    let first = (start / 8) as usize;
    let shift = (start % 8) as u32;
    let nbytes = ((shift as u64 + loc.width as u64).div_ceil(8)) as usize;
    let mut raw: u128 = 0;
    for (i, b) in buf[first..first + nbytes.min(16)].iter().enumerate() {
        raw |= (*b as u128) << (8 * i);
    }
    raw >>= shift;
    let w = loc.width;
    if w >= 128 {
        return raw as i128;
    }
    let mask = (1u128 << w) - 1;
    raw &= mask;
    if loc.signed && w > 0 && (raw >> (w - 1)) & 1 == 1 {
        (raw | !mask) as i128
    } else {
        raw as i128
    }
}

fn write_bits(buf: &mut [u8], base_bit: u64, loc: &BitLoc, v: i128) {
    let start = base_bit + loc.bit;
    let w = loc.width as u64;
    if start.is_multiple_of(8) && w.is_multiple_of(8) && w <= 128 {
        // Whole bytes (every field but a bitfield): little-endian, as the loop below.
        let (at, n) = ((start / 8) as usize, (w / 8) as usize);
        buf[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        return;
    }
    for k in 0..w {
        let bit = start + k;
        let byte = (bit / 8) as usize;
        let m = 1u8 << (bit % 8);
        if (v >> k.min(127)) & 1 == 1 {
            buf[byte] |= m;
        } else {
            buf[byte] &= !m;
        }
    }
}

fn write_bits_zero(buf: &mut [u8], base_bit: u64, loc: &BitLoc) {
    write_bits(buf, base_bit, loc, 0)
}

fn fits(v: i128, loc: &BitLoc) -> bool {
    let w = loc.width;
    if w == 0 {
        return v == 0;
    }
    if w >= 128 {
        return loc.signed || v >= 0;
    }
    if loc.signed {
        let half = 1i128 << (w - 1);
        v >= -half && v < half
    } else {
        v >= 0 && v < (1i128 << w)
    }
}

/// True if every value of `from` fits in `to`.
fn always_fits(from: &BitLoc, to: &BitLoc) -> bool {
    match (from.signed, to.signed) {
        (false, false) | (true, true) => to.width >= from.width,
        (false, true) => to.width > from.width,
        (true, false) => false,
    }
}

/// The name paths start with for a type: its tag, typedef name or C spelling.
pub fn root_name(p: &Program, id: TypeId) -> String {
    match p.ty(id) {
        Type::Struct(c) | Type::Union(c) => c.name.clone().unwrap_or_else(|| p.type_name(id)),
        Type::Enum { name: Some(n), .. } | Type::Typedef { name: n, .. } => n.clone(),
        _ => p.type_name(id),
    }
}

/// Analyzes a type pair: the plan (meaningful only without problems) and every problem.
pub(crate) fn analyze(old: &Program, ot: TypeId, new: &Program, nt: TypeId, root: &str) -> (Plan, Vec<Problem>) {
    let mut b = Builder { old, new, rules: Vec::new(), problems: Vec::new(), tail: None };
    let mut ops = Vec::new();
    let old_size = old.size_of(ot);
    let new_size = new.size_of(nt);
    b.pair(ot, nt, 0, 0, root.to_string(), &mut ops, 0, true);
    let identity = b.problems.is_empty()
        && b.tail.is_none()
        && old_size == new_size
        && matches!(ops.as_slice(), [Op::Copy { old: 0, new: 0, len }] if Some(*len) == old_size);
    let ops = coalesce(ops);
    // Malformed DWARF can place members past the declared size: size the plan by what
    // its ops touch, so that `apply` never indexes out of bounds.
    let (oe, ne) = extents(&ops);
    let plan = Plan {
        old_size: old_size.unwrap_or(0).max(oe),
        new_size: new_size.unwrap_or(0).max(ne),
        ops,
        tail: b.tail,
        rules: b.rules,
        identity,
    };
    (plan, b.problems)
}

/// Bytes of the old and the new object that `ops` read and write.
fn extents(ops: &[Op]) -> (u64, u64) {
    let (mut o, mut n) = (0u64, 0u64);
    for op in ops {
        let (a, b) = match op {
            Op::Copy { old, new, len } => (old + len, new + len),
            Op::Int { old, new, .. } | Op::Enum { old, new, .. } => (old.end_byte(), new.end_byte()),
            Op::Float { old, old_size, new, new_size, .. } => (old + old_size, new + new_size),
            Op::Pointer { old, new, size, .. } => (old + size, new + size),
            Op::Zero { new } => (0, new.end_byte()),
            Op::Dropped { old, len, .. } => (old + len, 0),
            Op::Array { old, new, count, old_stride, new_stride, ops, .. } => {
                let (eo, en) = extents(ops);
                if *count == 0 {
                    (0, 0)
                } else {
                    (
                        old.saturating_add((count - 1).saturating_mul(*old_stride)).saturating_add(eo),
                        new.saturating_add((count - 1).saturating_mul(*new_stride)).saturating_add(en),
                    )
                }
            }
        };
        o = o.max(a);
        n = n.max(b);
    }
    (o, n)
}

/// Merges adjacent copies.
fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        if let (Some(Op::Copy { old: po, new: pn, len: pl }), Op::Copy { old, new, len }) = (out.last_mut(), &op) {
            if *po + *pl == *old && *pn + *pl == *new {
                *pl += len;
                continue;
            }
        }
        out.push(op);
    }
    out
}

struct Builder<'p> {
    old: &'p Program,
    new: &'p Program,
    rules: Vec<FieldRule>,
    problems: Vec<Problem>,
    tail: Option<Tail>,
}

impl Builder<'_> {
    fn problem(&mut self, path: &str, reason: String) {
        self.problems.push(Problem { path: path.to_string(), reason });
    }

    fn rule(&mut self, path: &str, rule: Rule) {
        self.rules.push(FieldRule { path: path.to_string(), rule });
    }

    #[allow(clippy::too_many_arguments)]
    fn pair(
        &mut self,
        ot: TypeId,
        nt: TypeId,
        oo: u64,
        no: u64,
        path: String,
        ops: &mut Vec<Op>,
        depth: usize,
        top: bool,
    ) {
        if depth > MAX_DEPTH {
            self.problem(&path, "types nest too deeply".into());
            return;
        }
        let (old, new) = (self.old, self.new);
        let (so, sn) = (old.strip(ot), new.strip(nt));
        let (to, tn) = (old.ty(so), new.ty(sn));
        let oname = old.type_name(ot);
        let nname = new.type_name(nt);
        match (to, tn) {
            (Type::Base { size: os, encoding: oe, .. }, Type::Base { size: ns, encoding: ne, .. })
                if oe.is_integer() && ne.is_integer() =>
            {
                let ol = BitLoc::bytes(oo, *os, oe.is_signed());
                let nl = BitLoc::bytes(no, *ns, ne.is_signed());
                // A character type that changes signedness holds the same byte: C reads
                // every char type as a byte (buffers, strings, 0xff markers), and a -1 in
                // `char` is the 255 of `unsigned char` it becomes (vsftpd 3.0's
                // `unsigned char pattern[]` was `char`).
                let same_byte = *os == 1 && *ns == 1 && oe.is_char() && ne.is_char();
                if (os == ns && oe.is_signed() == ne.is_signed()) || same_byte {
                    ops.push(Op::Copy { old: oo, new: no, len: *os });
                    self.moved(&path, oo, no, &oname, &nname);
                } else {
                    let checked = !always_fits(&ol, &nl);
                    ops.push(Op::Int { old: ol, new: nl, checked, path: path.clone() });
                    self.rule(
                        &path,
                        Rule::IntConverted { from: oname, to: nname, checked, old_offset: oo, new_offset: no },
                    );
                }
            }
            (
                Type::Base { size: os, encoding: Encoding::Float, .. },
                Type::Base { size: ns, encoding: Encoding::Float, .. },
            ) => {
                if os == ns {
                    ops.push(Op::Copy { old: oo, new: no, len: *os });
                    self.moved(&path, oo, no, &oname, &nname);
                } else if matches!((os, ns), (4, 8) | (8, 4)) {
                    ops.push(Op::Float { old: oo, old_size: *os, new: no, new_size: *ns, path: path.clone() });
                    self.rule(&path, Rule::FloatConverted { from: oname, to: nname, checked: *ns < *os });
                } else {
                    self.problem(&path, format!("{oname} becomes {nname}: mcr converts only between float and double"));
                }
            }
            (Type::Base { size: os, encoding: oe, .. }, Type::Base { size: ns, encoding: ne, .. }) => {
                if os == ns && oe == ne {
                    ops.push(Op::Copy { old: oo, new: no, len: *os });
                    self.moved(&path, oo, no, &oname, &nname);
                } else {
                    self.problem(
                        &path,
                        format!("{oname} becomes {nname}: a change between incompatible kinds of scalar"),
                    );
                }
            }
            (
                Type::Enum { size: os, signed: osg, enumerators: oen, .. },
                Type::Enum { size: ns, signed: nsg, enumerators: nen, .. },
            ) => {
                let ol = BitLoc::bytes(oo, *os, *osg);
                let nl = BitLoc::bytes(no, *ns, *nsg);
                self.enum_op(ol, nl, oen, nen, &path, &oname, &nname, ops, oo, no);
            }
            (Type::Enum { size: os, signed: osg, .. }, Type::Base { size: ns, encoding: ne, .. })
                if ne.is_integer() =>
            {
                let ol = BitLoc::bytes(oo, *os, *osg);
                let nl = BitLoc::bytes(no, *ns, ne.is_signed());
                let checked = !always_fits(&ol, &nl);
                ops.push(Op::Int { old: ol, new: nl, checked, path: path.clone() });
                self.rule(
                    &path,
                    Rule::IntConverted { from: oname, to: nname, checked, old_offset: oo, new_offset: no },
                );
            }
            (Type::Pointer { pointee: op, size: os }, Type::Pointer { pointee: np, size: ns }) if os == ns => {
                let opt = pointee(old, *op);
                let npt = pointee(new, *np);
                let function = opt == Pointee::Function || npt == Pointee::Function;
                if (opt == Pointee::Function) != (npt == Pointee::Function) {
                    self.problem(&path, format!("{oname} becomes {nname}: a change between data and function pointer"));
                    return;
                }
                ops.push(Op::Pointer {
                    old: oo,
                    new: no,
                    size: *os,
                    old_pointee: opt,
                    new_pointee: npt,
                    path: path.clone(),
                });
                let (opn, npn) = (old.type_name(*op), new.type_name(*np));
                // A pointee that changed only in layout is reported with that type.
                if opn != npn || oo != no {
                    let rule = Rule::PointerRelocated {
                        function,
                        old_pointee: opn,
                        new_pointee: npn,
                        old_offset: oo,
                        new_offset: no,
                    };
                    self.rule(&path, rule);
                }
            }
            (Type::Struct(oc), Type::Struct(nc)) => {
                if oc.incomplete || nc.incomplete {
                    self.problem(&path, format!("{oname} becomes {nname}: layout unknown (incomplete type)"));
                    return;
                }
                self.members(oc, nc, oo, no, &path, ops, depth, top);
            }
            (Type::Union(_), Type::Union(_)) | (Type::Unknown { .. }, Type::Unknown { .. }) => {
                // Copied as bytes when the bytes mean the same: a pointer member counts as
                // unchanged whatever it points to (its value is an address; relocating it
                // is the tracer's business, which refuses an unhinted heap address there).
                if same_bytes(old, so, new, sn) {
                    if let Some(len) = old.size_of(so) {
                        ops.push(Op::Copy { old: oo, new: no, len });
                        self.moved(&path, oo, no, &oname, &nname);
                        return;
                    }
                }
                self.problem(&path, format!("{oname} becomes {nname}: the layout of an opaque type (union) changed"));
            }
            (Type::Array { element: oe, counts: oc }, Type::Array { element: ne, counts: nc }) => {
                self.array(*oe, oc, *ne, nc, oo, no, &path, ops, depth, top);
            }
            _ => {
                let (ok, nk) = (kind_word(to), kind_word(tn));
                self.problem(&path, format!("{oname} becomes {nname}: a change from {ok} to {nk}"));
            }
        }
    }

    fn moved(&mut self, path: &str, oo: u64, no: u64, _o: &str, _n: &str) {
        if oo != no {
            self.rule(path, Rule::Copied { old_offset: oo, new_offset: no });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enum_op(
        &mut self,
        ol: BitLoc,
        nl: BitLoc,
        oen: &[(String, i64)],
        nen: &[(String, i64)],
        path: &str,
        oname: &str,
        nname: &str,
        ops: &mut Vec<Op>,
        oo: u64,
        no: u64,
    ) {
        let mut map: Vec<(i64, Result<i64, String>)> = Vec::new();
        let mut removed = Vec::new();
        let mut renumbered = Vec::new();
        for (name, v) in oen {
            if map.iter().any(|(ov, _)| ov == v) {
                continue;
            }
            // Aliases: any old name of this value that survives will do.
            let names: Vec<&String> = oen.iter().filter(|(_, ov)| ov == v).map(|(n, _)| n).collect();
            match names.iter().find_map(|n| nen.iter().find(|(nn, _)| nn == *n)) {
                Some((_, nv)) => {
                    if nv != v {
                        renumbered.push(name.clone());
                    }
                    map.push((*v, Ok(*nv)));
                }
                None => {
                    removed.push(name.clone());
                    map.push((*v, Err(name.clone())));
                }
            }
        }
        let added: Vec<String> =
            nen.iter().filter(|(n, _)| !oen.iter().any(|(on, _)| on == n)).map(|(n, _)| n.clone()).collect();
        let identity = removed.is_empty() && renumbered.is_empty();
        if identity && ol.width == nl.width && ol.signed == nl.signed {
            ops.push(Op::Copy { old: oo, new: no, len: (ol.width / 8) as u64 });
            if added.is_empty() {
                self.moved(path, oo, no, oname, nname);
                return;
            }
        } else {
            ops.push(Op::Enum { old: ol, new: nl, map, identity, path: path.to_string() });
        }
        self.rule(path, Rule::EnumByName { removed, added, renumbered });
    }

    #[allow(clippy::too_many_arguments)]
    fn members(
        &mut self,
        oc: &Composite,
        nc: &Composite,
        oo: u64,
        no: u64,
        path: &str,
        ops: &mut Vec<Op>,
        depth: usize,
        top: bool,
    ) {
        let (old, new) = (self.old, self.new);
        let key = |c: &Composite, i: usize| -> String {
            match &c.members[i].name {
                Some(n) => n.clone(),
                None => format!("<anonymous #{}>", c.members[..i].iter().filter(|m| m.name.is_none()).count()),
            }
        };
        let okeys: Vec<String> = (0..oc.members.len()).map(|i| key(oc, i)).collect();
        let nkeys: Vec<String> = (0..nc.members.len()).map(|i| key(nc, i)).collect();
        let last = nc.members.len().saturating_sub(1);
        for (ni, nm) in nc.members.iter().enumerate() {
            let fpath = format!("{path}.{}", nkeys[ni]);
            let Some(oi) = okeys.iter().position(|k| *k == nkeys[ni]) else {
                // Added field: zero it.
                let ty = new.type_name(nm.ty);
                match (nm.bit_size, nm.bit_offset, new.size_of(nm.ty)) {
                    (Some(w), Some(b), _) => {
                        ops.push(Op::Zero { new: BitLoc { bit: no * 8 + b, width: w as u32, signed: false } })
                    }
                    (_, _, Some(s)) => ops.push(Op::Zero { new: BitLoc::bytes(no + nm.offset, s, false) }),
                    _ => {} // flexible array: nothing to zero
                }
                self.rule(&fpath, Rule::Added { ty, offset: nm.offset });
                continue;
            };
            let om = &oc.members[oi];
            match (om.bit_size.zip(om.bit_offset), nm.bit_size.zip(nm.bit_offset)) {
                (None, None) => {
                    // A flexible array member at the very end of the top-level object.
                    if top && ni == last && is_flexible(new, nm.ty) && is_flexible(old, om.ty) {
                        self.flexible(om, nm, oo, no, &fpath, depth);
                        continue;
                    }
                    self.pair(om.ty, nm.ty, oo + om.offset, no + nm.offset, fpath, ops, depth + 1, false);
                }
                (obits, nbits) => {
                    // Bitfields (either side): integer conversion bit by bit.
                    let oint = int_info(old, om.ty);
                    let nint = int_info(new, nm.ty);
                    let (Some((osg, osz)), Some((nsg, nsz))) = (oint, nint) else {
                        self.problem(
                            &fpath,
                            format!(
                                "{} becomes {}: a bitfield changed to or from a non-integer",
                                old.type_name(om.ty),
                                new.type_name(nm.ty)
                            ),
                        );
                        continue;
                    };
                    let ol = match obits {
                        Some((w, b)) => BitLoc { bit: oo * 8 + b, width: w as u32, signed: osg },
                        None => BitLoc::bytes(oo + om.offset, osz, osg),
                    };
                    let nl = match nbits {
                        Some((w, b)) => BitLoc { bit: no * 8 + b, width: w as u32, signed: nsg },
                        None => BitLoc::bytes(no + nm.offset, nsz, nsg),
                    };
                    let checked = !always_fits(&ol, &nl);
                    ops.push(Op::Int { old: ol, new: nl, checked, path: fpath.clone() });
                    if ol.width != nl.width || ol.signed != nl.signed || ol.bit - oo * 8 != nl.bit - no * 8 {
                        let fmt = |t: String, l: &BitLoc, bits: bool| if bits { format!("{t}:{}", l.width) } else { t };
                        self.rule(
                            &fpath,
                            Rule::IntConverted {
                                from: fmt(old.type_name(om.ty), &ol, obits.is_some()),
                                to: fmt(new.type_name(nm.ty), &nl, nbits.is_some()),
                                checked,
                                old_offset: om.offset,
                                new_offset: nm.offset,
                            },
                        );
                    }
                }
            }
        }
        for (oi, om) in oc.members.iter().enumerate() {
            if !nkeys.contains(&okeys[oi]) {
                self.rule(&format!("{path}.{}", okeys[oi]), Rule::Removed { ty: old.type_name(om.ty) });
            }
        }
    }

    fn flexible(&mut self, om: &Member, nm: &Member, oo: u64, no: u64, path: &str, depth: usize) {
        let (old, new) = (self.old, self.new);
        let (Type::Array { element: oe, .. }, Type::Array { element: ne, .. }) =
            (old.ty(old.strip(om.ty)), new.ty(new.strip(nm.ty)))
        else {
            return;
        };
        let (Some(os), Some(ns)) = (old.size_of(*oe), new.size_of(*ne)) else {
            self.problem(path, "flexible array of elements of unknown size".into());
            return;
        };
        let mut eops = Vec::new();
        self.pair(*oe, *ne, 0, 0, format!("{path}[]"), &mut eops, depth + 1, false);
        self.tail = Some(Tail {
            old_offset: oo + om.offset,
            new_offset: no + nm.offset,
            old_stride: os,
            new_stride: ns,
            ops: coalesce(eops),
            path: path.to_string(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn array(
        &mut self,
        oe: TypeId,
        oc: &[Option<u64>],
        ne: TypeId,
        nc: &[Option<u64>],
        oo: u64,
        no: u64,
        path: &str,
        ops: &mut Vec<Op>,
        depth: usize,
        _top: bool,
    ) {
        let (old, new) = (self.old, self.new);
        if oc.len() != nc.len() {
            self.problem(
                path,
                format!("{} becomes {}: the number of dimensions changed", old.type_name(oe), new.type_name(ne)),
            );
            return;
        }
        let (Some(Some(on)), Some(Some(nn))) = (oc.first(), nc.first()) else {
            self.problem(path, "array of unknown length (flexible array not at the end of the object)".into());
            return;
        };
        let (on, nn) = (*on, *nn);
        // Element: the inner dimensions (if any) over the element type.
        let (orest, nrest) = (&oc[1..], &nc[1..]);
        let ostride = old.size_of(oe).and_then(|s| orest.iter().try_fold(s, |a, c| a.checked_mul((*c)?)));
        let nstride = new.size_of(ne).and_then(|s| nrest.iter().try_fold(s, |a, c| a.checked_mul((*c)?)));
        let (Some(ostride), Some(nstride)) = (ostride, nstride) else {
            self.problem(path, "array of elements of unknown size".into());
            return;
        };
        let epath = format!("{path}[]");
        let mut eops = Vec::new();
        let nrules = self.rules.len();
        if orest.is_empty() {
            self.pair(oe, ne, 0, 0, epath, &mut eops, depth + 1, false);
        } else {
            self.array(oe, orest, ne, nrest, 0, 0, &epath, &mut eops, depth + 1, false);
        }
        let eops = coalesce(eops);
        let n = on.min(nn);
        if matches!(eops.as_slice(), [Op::Copy { old: 0, new: 0, len }] if *len == ostride && ostride == nstride) {
            ops.push(Op::Copy { old: oo, new: no, len: n * ostride });
        } else {
            ops.push(Op::Array {
                old: oo,
                new: no,
                count: n,
                old_stride: ostride,
                new_stride: nstride,
                ops: eops,
                path: path.to_string(),
            });
        }
        if on != nn {
            if nn > on {
                ops.push(Op::Zero { new: BitLoc::bytes(no + on * nstride, (nn - on) * nstride, false) });
            } else {
                ops.push(Op::Dropped { old: oo + nn * ostride, len: (on - nn) * ostride, path: path.to_string() });
            }
            self.rules.insert(
                nrules,
                FieldRule { path: path.to_string(), rule: Rule::ArrayResized { old_count: on, new_count: nn } },
            );
        } else if oo != no && self.rules.len() == nrules {
            self.rule(path, Rule::Copied { old_offset: oo, new_offset: no });
        }
    }
}

fn is_flexible(p: &Program, t: TypeId) -> bool {
    matches!(p.ty(p.strip(t)), Type::Array { counts, .. } if counts.first() == Some(&None) || counts.first() == Some(&Some(0)))
}

fn int_info(p: &Program, t: TypeId) -> Option<(bool, u64)> {
    match p.ty(p.strip(t)) {
        Type::Base { size, encoding, .. } if encoding.is_integer() => Some((encoding.is_signed(), *size)),
        Type::Enum { size, signed, .. } => Some((*signed, *size)),
        _ => None,
    }
}

fn kind_word(t: &Type) -> &'static str {
    match t {
        Type::Void => "void",
        Type::Base { encoding: Encoding::Float, .. } => "floating point",
        Type::Base { .. } => "integer",
        Type::Pointer { .. } => "pointer",
        Type::Struct(_) => "struct",
        Type::Union(_) => "union",
        Type::Array { .. } => "array",
        Type::Enum { .. } => "enum",
        Type::Function { .. } => "function",
        Type::Typedef { .. } | Type::Qualified { .. } => "typedef",
        Type::Unknown { .. } => "unknown type",
    }
}

/// What a pointer of type `pointee` points to, for a [`PointerSite`].
pub fn pointee(p: &Program, pointee: TypeId) -> Pointee {
    match p.ty(p.strip(pointee)) {
        Type::Function { .. } => Pointee::Function,
        Type::Void | Type::Unknown { .. } => Pointee::Void,
        Type::Struct(c) | Type::Union(c) if c.incomplete => Pointee::Void,
        _ => Pointee::Data { ty: pointee },
    }
}

/// Whether two types of two programs are the same C type: same kinds, names, sizes,
/// member names and offsets, enumerators, typedef names, recursively (recursive types
/// compare equal when no difference is found).
pub fn same_type(a: &Program, at: TypeId, b: &Program, bt: TypeId) -> bool {
    let mut assumed = HashSet::new();
    same(a, at, b, bt, &mut assumed, 0, true)
}

/// Like [`same_type`], but pointers compare by size only: whether objects of the two
/// types hold the same bytes with the same meaning, addresses aside.
pub fn same_bytes(a: &Program, at: TypeId, b: &Program, bt: TypeId) -> bool {
    let mut assumed = HashSet::new();
    same(a, at, b, bt, &mut assumed, 0, false)
}

#[allow(clippy::too_many_arguments)]
fn same(
    a: &Program,
    at: TypeId,
    b: &Program,
    bt: TypeId,
    assumed: &mut HashSet<(TypeId, TypeId)>,
    depth: usize,
    pointees: bool,
) -> bool {
    if depth > 4 * MAX_DEPTH {
        return false;
    }
    if !assumed.insert((at, bt)) {
        return true;
    }
    let ok = match (a.ty(at), b.ty(bt)) {
        (Type::Void, Type::Void) => true,
        (Type::Base { .. }, Type::Base { .. }) | (Type::Unknown { .. }, Type::Unknown { .. }) => a.ty(at) == b.ty(bt),
        (Type::Pointer { pointee: x, size: s }, Type::Pointer { pointee: y, size: t }) => {
            s == t && (!pointees || same(a, *x, b, *y, assumed, depth + 1, pointees))
        }
        (Type::Struct(x), Type::Struct(y)) | (Type::Union(x), Type::Union(y)) => {
            x.name == y.name
                && x.size == y.size
                && x.incomplete == y.incomplete
                && x.members.len() == y.members.len()
                && x.members.iter().zip(&y.members).all(|(m, n)| {
                    m.name == n.name
                        && m.offset == n.offset
                        && m.bit_size == n.bit_size
                        && m.bit_offset == n.bit_offset
                        && same(a, m.ty, b, n.ty, assumed, depth + 1, pointees)
                })
        }
        (Type::Array { element: x, counts: c }, Type::Array { element: y, counts: d }) => {
            c == d && same(a, *x, b, *y, assumed, depth + 1, pointees)
        }
        (Type::Enum { .. }, Type::Enum { .. }) => a.ty(at) == b.ty(bt),
        (Type::Typedef { name: m, target: x }, Type::Typedef { name: n, target: y }) => {
            m == n && same(a, *x, b, *y, assumed, depth + 1, pointees)
        }
        (Type::Qualified { qualifier: q, target: x }, Type::Qualified { qualifier: r, target: y }) => {
            q == r && same(a, *x, b, *y, assumed, depth + 1, pointees)
        }
        (Type::Function { ret: r, params: p, variadic: v }, Type::Function { ret: s, params: q, variadic: w }) => {
            v == w
                && p.len() == q.len()
                && same(a, *r, b, *s, assumed, depth + 1, pointees)
                && p.iter().zip(q).all(|(x, y)| same(a, *x, b, *y, assumed, depth + 1, pointees))
        }
        _ => false,
    };
    if !ok {
        assumed.remove(&(at, bt));
    }
    ok
}

#[cfg(test)]
mod tests;
