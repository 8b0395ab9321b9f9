//! Reading a binary's ELF symbols and DWARF into a [`Program`].

use crate::error::TypeModelError;
use crate::graph;
use crate::model::*;
use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection, ObjectSymbol};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Directories searched for split debug info (`/usr/lib/debug` layout).
pub const DEBUG_DIRS: &[&str] = &["/usr/lib/debug"];

/// Most DIE nesting the loader follows.
const MAX_DIE_DEPTH: usize = 256;

pub(crate) fn load(path: &Path) -> Result<Program, TypeModelError> {
    let data = std::fs::read(path).map_err(|e| TypeModelError::Io { path: path.to_path_buf(), source: e })?;
    let file = object::File::parse(&*data)
        .map_err(|e| TypeModelError::NotElf { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut prog = Program::empty(path.to_path_buf());
    prog.build_id = build_id(&file);
    prog.symbols = symbols(&file);
    prog.hints = hints(&file);

    if has_dwarf(&file) {
        read_dwarf(&file, &mut prog).map_err(|e| malformed(path, e))?;
        return Ok(prog);
    }
    match find_debug_file(path, &file, prog.build_id.as_deref()) {
        Some(dbg) => {
            let ddata = std::fs::read(&dbg).map_err(|e| TypeModelError::Io { path: dbg.clone(), source: e })?;
            let dfile = object::File::parse(&*ddata)
                .map_err(|e| TypeModelError::NotElf { path: dbg.clone(), reason: e.to_string() })?;
            if prog.symbols.is_empty() {
                prog.symbols = symbols(&dfile);
            }
            if has_dwarf(&dfile) {
                read_dwarf(&dfile, &mut prog).map_err(|e| malformed(&dbg, e))?;
                prog.debug_file = Some(dbg);
            } else {
                prog.warnings.push(format!("{} has no DWARF", dbg.display()));
            }
        }
        None => prog.warnings.push(format!(
            "{} has no debug info (build it with -g): an update must treat all its state conservatively",
            path.display()
        )),
    }
    Ok(prog)
}

/// The annotations of a binary (its `mcr_hints` section) without reading its DWARF: what
/// an update must know about the new version before it starts it.
pub fn read_hints(path: &Path) -> Result<Vec<String>, TypeModelError> {
    let data = std::fs::read(path).map_err(|e| TypeModelError::Io { path: path.to_path_buf(), source: e })?;
    let file = object::File::parse(&*data)
        .map_err(|e| TypeModelError::NotElf { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(hints(&file))
}

/// The strings `include/mcr.h` puts in the `mcr_hints` section, NUL-separated.
fn hints(file: &object::File) -> Vec<String> {
    use object::{Object, ObjectSection};
    let Some(data) = file.section_by_name("mcr_hints").and_then(|s| s.data().ok()) else { return Vec::new() };
    data.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).trim().to_string()).collect()
}

fn malformed(path: &Path, e: gimli::Error) -> TypeModelError {
    TypeModelError::MalformedDwarf { path: path.to_path_buf(), reason: e.to_string() }
}

fn has_dwarf(file: &object::File) -> bool {
    file.section_by_name(".debug_info").is_some_and(|s| s.size() > 0)
}

fn build_id(file: &object::File) -> Option<String> {
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn symbols(file: &object::File) -> Vec<Symbol> {
    fn read<'d, 'f>(out: &mut Vec<Symbol>, syms: &mut dyn Iterator<Item = object::Symbol<'d, 'f>>) {
        // ELF lists each file's local symbols after an STT_FILE symbol naming it.
        let mut file: Option<String> = None;
        for s in syms {
            if s.kind() == object::SymbolKind::File {
                file = s.name().ok().filter(|n| !n.is_empty()).map(str::to_string);
                continue;
            }
            if !s.is_definition() {
                continue;
            }
            let kind = match s.kind() {
                object::SymbolKind::Text => SymbolKind::Function,
                object::SymbolKind::Data => SymbolKind::Object,
                object::SymbolKind::Tls => SymbolKind::Tls,
                _ => continue,
            };
            let Ok(name) = s.name() else { continue };
            if name.is_empty() {
                continue;
            }
            out.push(Symbol {
                name: name.to_string(),
                address: s.address(),
                size: s.size(),
                kind,
                global: s.is_global(),
                file: if s.is_global() { None } else { file.clone() },
            });
        }
    }
    let mut out = Vec::new();
    read(&mut out, &mut file.symbols());
    if out.is_empty() {
        read(&mut out, &mut file.dynamic_symbols());
    }
    out.sort_by(|a, b| (a.address, &a.name).cmp(&(b.address, &b.name)));
    out.dedup_by(|a, b| a.address == b.address && a.name == b.name);
    out
}

/// Split debug info: by build ID under `/usr/lib/debug/.build-id`, then by
/// `.gnu_debuglink` beside the binary, in its `.debug/` and under `/usr/lib/debug`.
fn find_debug_file(path: &Path, file: &object::File, build_id: Option<&str>) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 2) {
        for d in DEBUG_DIRS {
            candidates.push(PathBuf::from(format!("{d}/.build-id/{}/{}.debug", &id[..2], &id[2..])));
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = path.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        if let Some(dir) = dir {
            candidates.push(dir.join(&name));
            candidates.push(dir.join(".debug").join(&name));
            for d in DEBUG_DIRS {
                let rel = dir.strip_prefix("/").unwrap_or(&dir);
                candidates.push(Path::new(d).join(rel).join(&name));
            }
        }
    }
    let me = path.canonicalize().ok();
    candidates.into_iter().find(|c| c.is_file() && c.canonicalize().ok() != me)
}

/// A type reference before resolution.
#[derive(Clone, Copy)]
enum Target {
    Void,
    Die(usize),
    Unknown,
}

struct RawVar {
    name: Option<String>,
    ty: Option<usize>, // slot
    external: bool,
    declaration: bool,
    spec: Option<usize>,
    location: Option<Location>,
    unit: usize,
    function: Option<String>,
}

struct Loader<'d, 'a> {
    dwarf: &'d gimli::Dwarf<R<'a>>,
    types: Vec<Type>,
    /// DIE offset -> node.
    nodes: HashMap<usize, TypeId>,
    /// Ref slots: each TypeId inside `types` during loading is an index here.
    slots: Vec<Target>,
    vars: HashMap<usize, RawVar>,
    subprogram_names: HashMap<usize, String>,
    units: Vec<String>,
    warnings: Vec<String>,
}

fn read_dwarf(file: &object::File, prog: &mut Program) -> Result<(), gimli::Error> {
    let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
    let load_section = |id: gimli::SectionId| -> Result<Cow<[u8]>, gimli::Error> {
        Ok(match file.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
            None => Cow::Borrowed(&[]),
        })
    };
    let dwarf_cow = gimli::DwarfSections::load(load_section)?;
    let dwarf = dwarf_cow.borrow(|s| EndianSlice::new(s, endian));

    let mut l = Loader {
        dwarf: &dwarf,
        types: vec![Type::Void],
        nodes: HashMap::new(),
        slots: Vec::new(),
        vars: HashMap::new(),
        subprogram_names: HashMap::new(),
        units: Vec::new(),
        warnings: Vec::new(),
    };
    let mut headers = dwarf.units();
    while let Some(header) = headers.next()? {
        let unit = dwarf.unit(header)?;
        let uidx = l.units.len();
        let name = {
            let mut tree = unit.entries_tree(None)?;
            let root = tree.root()?;
            l.string(&unit, root.entry(), gimli::DW_AT_name)?.unwrap_or_default()
        };
        l.units.push(name);
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        l.walk_children(&unit, root, uidx, None, 0)?;
    }
    l.finish(prog);
    Ok(())
}

fn die_offset(unit: &gimli::Unit<R>, off: gimli::UnitOffset) -> usize {
    off.to_debug_info_offset(&unit.header).map(|o| o.0).unwrap_or(usize::MAX)
}

impl<'d, 'a> Loader<'d, 'a> {
    fn string(
        &self,
        unit: &gimli::Unit<R<'a>>,
        e: &gimli::DebuggingInformationEntry<R<'a>>,
        at: gimli::DwAt,
    ) -> Result<Option<String>, gimli::Error> {
        // A string in a section this loader does not read (a dwz supplementary file)
        // leaves the name unknown rather than failing the whole program.
        match e.attr_value(at)? {
            Some(v) => Ok(self.dwarf.attr_string(unit, v).ok().map(|s| s.to_string_lossy().into_owned())),
            None => Ok(None),
        }
    }

    fn reference(&self, unit: &gimli::Unit<R<'a>>, v: Option<AttributeValue<R<'a>>>) -> Option<Target> {
        match v {
            None => None,
            Some(AttributeValue::UnitRef(o)) => Some(Target::Die(die_offset(unit, o))),
            Some(AttributeValue::DebugInfoRef(o)) => Some(Target::Die(o.0)),
            Some(_) => Some(Target::Unknown),
        }
    }

    fn slot(&mut self, t: Target) -> TypeId {
        self.slots.push(t);
        (self.slots.len() - 1) as TypeId
    }

    /// Slot for the entry's DW_AT_type (void when absent).
    fn type_slot(
        &mut self,
        unit: &gimli::Unit<R<'a>>,
        e: &gimli::DebuggingInformationEntry<R<'a>>,
    ) -> Result<TypeId, gimli::Error> {
        let t = self.reference(unit, e.attr_value(gimli::DW_AT_type)?).unwrap_or(Target::Void);
        Ok(self.slot(t))
    }

    fn walk_children(
        &mut self,
        unit: &gimli::Unit<R<'a>>,
        node: gimli::EntriesTreeNode<R<'a>>,
        uidx: usize,
        function: Option<String>,
        depth: usize,
    ) -> Result<(), gimli::Error> {
        if depth > MAX_DIE_DEPTH {
            return Ok(());
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            let off = die_offset(unit, e.offset());
            match e.tag() {
                gimli::DW_TAG_variable => {
                    self.variable(unit, e, off, uidx, function.clone())?;
                }
                gimli::DW_TAG_subprogram => {
                    let mut name = self.string(unit, e, gimli::DW_AT_name)?;
                    if name.is_none() {
                        for at in [gimli::DW_AT_specification, gimli::DW_AT_abstract_origin] {
                            if let Some(Target::Die(o)) = self.reference(unit, e.attr_value(at)?) {
                                name = self.subprogram_names.get(&o).cloned();
                            }
                        }
                    }
                    if let Some(n) = &name {
                        self.subprogram_names.insert(off, n.clone());
                    }
                    self.walk_children(unit, child, uidx, name.or(function.clone()), depth + 1)?;
                }
                gimli::DW_TAG_lexical_block | gimli::DW_TAG_inlined_subroutine | gimli::DW_TAG_namespace => {
                    self.walk_children(unit, child, uidx, function.clone(), depth + 1)?;
                }
                tag => {
                    if let Some(t) = self.type_die(unit, child, tag, depth)? {
                        let id = self.types.len() as TypeId;
                        self.types.push(t);
                        self.nodes.insert(off, id);
                    }
                }
            }
        }
        Ok(())
    }

    fn variable(
        &mut self,
        unit: &gimli::Unit<R<'a>>,
        e: &gimli::DebuggingInformationEntry<R<'a>>,
        off: usize,
        uidx: usize,
        function: Option<String>,
    ) -> Result<(), gimli::Error> {
        let name = self.string(unit, e, gimli::DW_AT_name)?;
        let ty = match e.attr_value(gimli::DW_AT_type)? {
            Some(v) => {
                let t = self.reference(unit, Some(v)).unwrap_or(Target::Unknown);
                Some(self.slot(t) as usize)
            }
            None => None,
        };
        let external = matches!(e.attr_value(gimli::DW_AT_external)?, Some(AttributeValue::Flag(true)));
        let declaration = matches!(e.attr_value(gimli::DW_AT_declaration)?, Some(AttributeValue::Flag(true)));
        let mut spec = None;
        for at in [gimli::DW_AT_specification, gimli::DW_AT_abstract_origin] {
            if let Some(Target::Die(o)) = self.reference(unit, e.attr_value(at)?) {
                spec = Some(o);
            }
        }
        let location = match e.attr(gimli::DW_AT_location)? {
            Some(a) => match a.exprloc_value() {
                Some(expr) => self.location(unit, expr),
                None => None,
            },
            None => None,
        };
        self.vars.insert(off, RawVar { name, ty, external, declaration, spec, location, unit: uidx, function });
        Ok(())
    }

    /// A static location: `DW_OP_addr A` / `DW_OP_addrx I`, or a TLS offset
    /// (`DW_OP_const* N; DW_OP_form_tls_address` or `DW_OP_GNU_push_tls_address`).
    fn location(&self, unit: &gimli::Unit<R<'a>>, expr: gimli::Expression<R<'a>>) -> Option<Location> {
        let mut ops = Vec::new();
        let mut bytes = expr.0;
        while !bytes.is_empty() && ops.len() < 4 {
            ops.push(gimli::Operation::parse(&mut bytes, unit.encoding()).ok()?);
        }
        if !bytes.is_empty() {
            return None;
        }
        match ops.as_slice() {
            [gimli::Operation::Address { address }] => Some(Location::Address { address: *address }),
            [gimli::Operation::AddressIndex { index }] => {
                self.dwarf.address(unit, *index).ok().map(|address| Location::Address { address })
            }
            [gimli::Operation::UnsignedConstant { value }, gimli::Operation::TLS] => {
                Some(Location::Tls { offset: *value })
            }
            [gimli::Operation::SignedConstant { value }, gimli::Operation::TLS] => {
                Some(Location::Tls { offset: *value as u64 })
            }
            _ => None,
        }
    }

    fn udata(e: &gimli::DebuggingInformationEntry<R<'a>>, at: gimli::DwAt) -> Result<Option<u64>, gimli::Error> {
        Ok(e.attr(at)?.and_then(|a| a.udata_value()))
    }

    fn flag(e: &gimli::DebuggingInformationEntry<R<'a>>, at: gimli::DwAt) -> Result<bool, gimli::Error> {
        Ok(matches!(e.attr_value(at)?, Some(AttributeValue::Flag(true))))
    }

    fn type_die(
        &mut self,
        unit: &gimli::Unit<R<'a>>,
        node: gimli::EntriesTreeNode<R<'a>>,
        tag: gimli::DwTag,
        depth: usize,
    ) -> Result<Option<Type>, gimli::Error> {
        let e = node.entry().clone();
        let name = self.string(unit, &e, gimli::DW_AT_name)?;
        let byte_size = Self::udata(&e, gimli::DW_AT_byte_size)?;
        let t = match tag {
            gimli::DW_TAG_base_type => {
                let encoding = match e.attr_value(gimli::DW_AT_encoding)? {
                    Some(AttributeValue::Encoding(enc)) => match enc {
                        gimli::DW_ATE_signed => Encoding::Signed,
                        gimli::DW_ATE_unsigned => Encoding::Unsigned,
                        gimli::DW_ATE_signed_char => Encoding::SignedChar,
                        gimli::DW_ATE_unsigned_char => Encoding::UnsignedChar,
                        gimli::DW_ATE_boolean => Encoding::Bool,
                        gimli::DW_ATE_float => Encoding::Float,
                        _ => Encoding::Other,
                    },
                    _ => Encoding::Other,
                };
                Type::Base { name: name.unwrap_or_default(), size: byte_size.unwrap_or(0), encoding }
            }
            gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type | gimli::DW_TAG_rvalue_reference_type => {
                let pointee = self.type_slot(unit, &e)?;
                Type::Pointer { pointee, size: byte_size.unwrap_or(unit.encoding().address_size as u64) }
            }
            gimli::DW_TAG_typedef => {
                let target = self.type_slot(unit, &e)?;
                Type::Typedef { name: name.unwrap_or_default(), target }
            }
            gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => {
                let qualifier = match tag {
                    gimli::DW_TAG_const_type => Qualifier::Const,
                    gimli::DW_TAG_volatile_type => Qualifier::Volatile,
                    gimli::DW_TAG_restrict_type => Qualifier::Restrict,
                    _ => Qualifier::Atomic,
                };
                let target = self.type_slot(unit, &e)?;
                Type::Qualified { qualifier, target }
            }
            gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type | gimli::DW_TAG_union_type => {
                let incomplete = Self::flag(&e, gimli::DW_AT_declaration)?;
                let members = self.members(unit, node, depth)?;
                let c = Composite { name, size: byte_size.unwrap_or(0), members, incomplete };
                if tag == gimli::DW_TAG_union_type {
                    Type::Union(c)
                } else {
                    Type::Struct(c)
                }
            }
            gimli::DW_TAG_array_type => {
                let element = self.type_slot(unit, &e)?;
                let mut counts = Vec::new();
                let mut children = node.children();
                while let Some(c) = children.next()? {
                    let ce = c.entry();
                    if ce.tag() != gimli::DW_TAG_subrange_type {
                        continue;
                    }
                    let count = if let Some(n) = Self::udata(ce, gimli::DW_AT_count)? {
                        Some(n)
                    } else {
                        match ce.attr(gimli::DW_AT_upper_bound)? {
                            Some(a) => match a.value() {
                                AttributeValue::Sdata(v) if v < 0 => Some(0),
                                _ => a.udata_value().map(|u| u.saturating_add(1)),
                            },
                            None => None,
                        }
                    };
                    counts.push(count);
                }
                if counts.is_empty() {
                    counts.push(None);
                }
                Type::Array { element, counts }
            }
            gimli::DW_TAG_enumeration_type => {
                let underlying = e.attr_value(gimli::DW_AT_type)?;
                let mut enumerators = Vec::new();
                let mut children = node.children();
                while let Some(c) = children.next()? {
                    let ce = c.entry();
                    if ce.tag() != gimli::DW_TAG_enumerator {
                        continue;
                    }
                    let n = self.string(unit, ce, gimli::DW_AT_name)?.unwrap_or_default();
                    let v = match ce.attr_value(gimli::DW_AT_const_value)? {
                        Some(AttributeValue::Sdata(v)) => v,
                        Some(AttributeValue::Udata(v)) => v as i64,
                        Some(AttributeValue::Data1(v)) => v as i64,
                        Some(AttributeValue::Data2(v)) => v as i64,
                        Some(AttributeValue::Data4(v)) => v as i64,
                        Some(AttributeValue::Data8(v)) => v as i64,
                        _ => 0,
                    };
                    enumerators.push((n, v));
                }
                // Signedness from the underlying type when given, else from the values.
                let mut signed = enumerators.iter().any(|(_, v)| *v < 0);
                if let Some(Target::Die(o)) = self.reference(unit, underlying) {
                    if let Some(&id) = self.nodes.get(&o) {
                        if let Type::Base { encoding, .. } = &self.types[id as usize] {
                            signed = encoding.is_signed();
                        }
                    }
                }
                Type::Enum { name, size: byte_size.unwrap_or(4), signed, enumerators }
            }
            gimli::DW_TAG_subroutine_type => {
                let ret = self.type_slot(unit, &e)?;
                let mut params = Vec::new();
                let mut variadic = false;
                let mut children = node.children();
                while let Some(c) = children.next()? {
                    match c.entry().tag() {
                        gimli::DW_TAG_formal_parameter => {
                            let ce = c.entry().clone();
                            params.push(self.type_slot(unit, &ce)?);
                        }
                        gimli::DW_TAG_unspecified_parameters => variadic = true,
                        _ => {}
                    }
                }
                Type::Function { ret, params, variadic }
            }
            gimli::DW_TAG_unspecified_type | gimli::DW_TAG_ptr_to_member_type | gimli::DW_TAG_string_type => {
                Type::Unknown { size: byte_size }
            }
            _ => return Ok(None),
        };
        Ok(Some(t))
    }

    fn members(
        &mut self,
        unit: &gimli::Unit<R<'a>>,
        node: gimli::EntriesTreeNode<R<'a>>,
        depth: usize,
    ) -> Result<Vec<Member>, gimli::Error> {
        let mut members = Vec::new();
        let mut children = node.children();
        while let Some(c) = children.next()? {
            let tag = c.entry().tag();
            if tag != gimli::DW_TAG_member {
                // Nested type definitions (`struct a { struct b {..} x; }`) are types too.
                if depth < MAX_DIE_DEPTH {
                    let off = die_offset(unit, c.entry().offset());
                    if let Some(t) = self.type_die(unit, c, tag, depth + 1)? {
                        let id = self.types.len() as TypeId;
                        self.types.push(t);
                        self.nodes.insert(off, id);
                    }
                }
                continue;
            }
            let e = c.entry().clone();
            let name = self.string(unit, &e, gimli::DW_AT_name)?;
            let ty = self.type_slot(unit, &e)?;
            let byte_off = match e.attr(gimli::DW_AT_data_member_location)? {
                Some(a) => match a.udata_value() {
                    Some(v) => Some(v),
                    None => a.exprloc_value().and_then(|expr| {
                        let mut b = expr.0;
                        match gimli::Operation::parse(&mut b, unit.encoding()).ok()? {
                            gimli::Operation::PlusConstant { value } if b.is_empty() => Some(value),
                            _ => None,
                        }
                    }),
                },
                None => None,
            };
            let bit_size = Self::udata(&e, gimli::DW_AT_bit_size)?;
            let mut bit_offset = None;
            if bit_size.is_some() {
                if let Some(dbo) = Self::udata(&e, gimli::DW_AT_data_bit_offset)? {
                    bit_offset = Some(dbo);
                } else if let (Some(bo), Some(bs)) = (Self::udata(&e, gimli::DW_AT_bit_offset)?, bit_size) {
                    // DWARF 2/3: offset of the MSB within a storage unit of DW_AT_byte_size.
                    let storage = Self::udata(&e, gimli::DW_AT_byte_size)?.unwrap_or(4) * 8;
                    bit_offset = Some(byte_off.unwrap_or(0) * 8 + storage.saturating_sub(bo + bs));
                } else {
                    bit_offset = Some(byte_off.unwrap_or(0) * 8);
                }
            }
            let offset = match bit_offset {
                Some(b) => b / 8,
                None => byte_off.unwrap_or(0),
            };
            members.push(Member { name, ty, offset, bit_size, bit_offset });
        }
        Ok(members)
    }

    fn finish(mut self, prog: &mut Program) {
        // Resolve slots to nodes.
        let mut unknown: Option<TypeId> = None;
        let slots = std::mem::take(&mut self.slots);
        let mut resolve = |t: Target, types: &mut Vec<Type>, nodes: &HashMap<usize, TypeId>| -> TypeId {
            match t {
                Target::Void => 0,
                Target::Die(o) if nodes.contains_key(&o) => nodes[&o],
                _ => *unknown.get_or_insert_with(|| {
                    types.push(Type::Unknown { size: None });
                    (types.len() - 1) as TypeId
                }),
            }
        };
        let resolved: Vec<TypeId> = slots.iter().map(|&t| resolve(t, &mut self.types, &self.nodes)).collect();
        for t in self.types.iter_mut() {
            graph::map_ids(t, |id| resolved.get(id as usize).copied().unwrap_or(0));
        }
        // Globals: variables with a static location.
        let mut globals: Vec<Global> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offs: Vec<usize> = self.vars.keys().copied().collect();
        offs.sort_unstable();
        for off in offs {
            let v = &self.vars[&off];
            let Some(location) = v.location else { continue };
            if v.declaration {
                continue;
            }
            let spec = v.spec.and_then(|s| self.vars.get(&s));
            let name = v.name.clone().or_else(|| spec.and_then(|s| s.name.clone()));
            let ty = v.ty.or_else(|| spec.and_then(|s| s.ty));
            let external = v.external || spec.is_some_and(|s| s.external);
            let (Some(name), Some(ty)) = (name, ty) else { continue };
            if !seen.insert(location) {
                continue;
            }
            let ty = resolved.get(ty).copied().unwrap_or(0);
            globals.push(Global {
                name,
                unit: self.units.get(v.unit).cloned().unwrap_or_default(),
                function: v.function.clone(),
                is_static: !external,
                location,
                size: None,
                ty,
            });
        }
        let (types, map) = graph::minimize(self.types);
        for g in globals.iter_mut() {
            g.ty = map.get(g.ty as usize).copied().unwrap_or(0);
        }
        prog.types = types;
        for g in globals.iter_mut() {
            g.size = prog.size_of(g.ty).or_else(|| {
                let a = g.address()?;
                prog.symbols.iter().find(|s| s.address == a && s.name == g.name).map(|s| s.size)
            });
        }
        globals.sort_by(|a, b| (&a.name, &a.unit).cmp(&(&b.name, &b.unit)));
        prog.globals = globals;
        prog.has_debug_info = true;
        prog.warnings.append(&mut self.warnings);
    }
}
