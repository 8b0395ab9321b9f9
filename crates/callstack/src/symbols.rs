//! Function symbols of one ELF module, for address → function-name lookup.

use object::{Object, ObjectSymbol, SymbolKind};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {source}")]
    Parse { path: String, source: object::Error },
}

/// A function: its name is `names[name.0..name.1]`. One buffer of names and no
/// allocation per symbol: a new process under mcr loads the tables of every module its
/// startup call stacks pass through (libcrypto has 5 000 functions) on its restart's clock.
#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u64,
    size: u64,
    name: (u32, u32),
}

/// Function symbols of a module, sorted by address (link-time addresses: subtract the
/// module's load bias before looking up a runtime address).
#[derive(Debug, Clone, Default)]
pub struct ModuleSymbols {
    syms: Vec<Sym>,
    names: String,
    /// Lowest PT_LOAD virtual address: runtime base minus this is the load bias.
    pub first_load_vaddr: u64,
}

impl ModuleSymbols {
    /// The module's symbols, reading only the ELF headers and symbol tables of the file:
    /// a server's binary built with `-g` is mostly debug information, and every process
    /// under mcr (an update's new version on its restart's clock) symbolizes its startup
    /// call stacks: reading whole files (the binary, libc's 2 MB) took ~2 ms of it.
    pub fn load(path: &Path) -> Result<Self, SymbolError> {
        let p = path.display().to_string();
        let data = read_symbol_parts(path).map_err(|source| SymbolError::Read { path: p.clone(), source })?;
        Self::parse(data.as_slice()).map_err(|source| SymbolError::Parse { path: p, source })
    }

    pub fn parse<'d, R: object::ReadRef<'d>>(data: R) -> Result<Self, object::Error> {
        let file = object::File::parse(data)?;
        let mut names = String::new();
        // The full symbol table when present (static functions included), else dynsym.
        let mut collect = |it: &mut dyn Iterator<Item = object::Symbol<'d, '_, R>>| {
            let mut syms = Vec::new();
            for s in it {
                if s.kind() != SymbolKind::Text || s.address() == 0 || s.is_undefined() {
                    continue;
                }
                if let Ok(name) = s.name() {
                    let name = strip_version(name);
                    if !name.is_empty() {
                        let at = names.len();
                        names.push_str(name);
                        let span =
                            (u32::try_from(at).unwrap_or(u32::MAX), u32::try_from(names.len()).unwrap_or(u32::MAX));
                        syms.push(Sym { start: s.address(), size: s.size(), name: span });
                    }
                }
            }
            syms
        };
        let mut syms = collect(&mut file.symbols());
        if syms.is_empty() {
            syms = collect(&mut file.dynamic_symbols());
        }
        // Of the symbols at one address (aliases), the largest, then the first in the table.
        syms.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.size.cmp(&a.size)).then(a.name.0.cmp(&b.name.0)));
        syms.dedup_by(|b, a| a.start == b.start);
        let first_load_vaddr = first_load_vaddr(&file);
        Ok(Self { syms, names, first_load_vaddr })
    }

    fn name(&self, s: &Sym) -> &str {
        self.names.get(s.name.0 as usize..s.name.1 as usize).unwrap_or("")
    }

    /// Function containing the link-time address `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let idx = self.syms.partition_point(|s| s.start <= addr);
        let s = self.syms.get(idx.checked_sub(1)?)?;
        // Symbols with size 0 (hand-written assembly) cover up to the next symbol.
        let end = if s.size > 0 { s.start + s.size } else { self.syms.get(idx).map_or(u64::MAX, |n| n.start) };
        (addr < end).then(|| self.name(s))
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Link-time address of a function by name (first match).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| self.name(s) == name).map(|s| s.start)
    }

    /// The table as bytes [`ModuleSymbols::from_bytes`] reads back: a header, the sorted
    /// entries, the names. What `mcr update` prepares off the paused clock, so that the new
    /// version's processes read a table instead of parsing ELF symbol tables.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TABLE_HEADER + self.syms.len() * TABLE_ENTRY + self.names.len());
        out.extend_from_slice(TABLE_MAGIC);
        for v in [self.first_load_vaddr, self.syms.len() as u64, self.names.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for s in &self.syms {
            out.extend_from_slice(&s.start.to_le_bytes());
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.name.0.to_le_bytes());
            out.extend_from_slice(&s.name.1.to_le_bytes());
        }
        out.extend_from_slice(self.names.as_bytes());
        out
    }

    /// A table [`ModuleSymbols::to_bytes`] wrote; `None` when `bytes` is not one (another
    /// format version, cut short, a name out of bounds or not UTF-8).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        if bytes.get(..TABLE_MAGIC.len())? != TABLE_MAGIC {
            return None;
        }
        let (first_load_vaddr, count, names_len) = (word(8)?, usize::try_from(word(16)?).ok()?, word(24)?);
        let entries = bytes.get(TABLE_HEADER..TABLE_HEADER.checked_add(count.checked_mul(TABLE_ENTRY)?)?)?;
        let names = bytes.get(TABLE_HEADER + entries.len()..)?;
        if names.len() as u64 != names_len {
            return None;
        }
        let names = std::str::from_utf8(names).ok()?.to_string();
        let mut syms = Vec::with_capacity(count);
        for e in entries.chunks_exact(TABLE_ENTRY) {
            let u64_at = |at: usize| e.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let u32_at = |at: usize| e.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
            let name = (u32_at(16)?, u32_at(20)?);
            if name.0 > name.1 || !names.is_char_boundary(name.0 as usize) || !names.is_char_boundary(name.1 as usize) {
                return None;
            }
            syms.push(Sym { start: u64_at(0)?, size: u64_at(8)?, name });
        }
        if syms.windows(2).any(|w| w[0].start > w[1].start) {
            return None;
        }
        Some(Self { syms, names, first_load_vaddr })
    }
}

const TABLE_MAGIC: &[u8; 8] = b"MCRSYM1\0";
/// Magic, first PT_LOAD address, entry count, names length.
const TABLE_HEADER: usize = 32;
/// Start, size, name start, name end.
const TABLE_ENTRY: usize = 24;

/// The bytes of the ELF file at `path` that symbol lookup reads, at their offsets, the
/// rest left zero: the header, the program and section headers, and every symbol and
/// string table. (A 64-bit little-endian file; anything else is read whole.)
fn read_symbol_parts(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let read = |data: &mut [u8], off: u64, n: u64| -> std::io::Result<()> {
        let (start, end) = (off.min(len) as usize, off.saturating_add(n).min(len) as usize);
        file.read_exact_at(&mut data[start..end], start as u64)
    };
    read(&mut data, 0, 64)?;
    let u16_at = |d: &[u8], at: usize| d.get(at..at + 2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let u32_at =
        |d: &[u8], at: usize| d.get(at..at + 4).map_or(0, |b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    let u64_at =
        |d: &[u8], at: usize| d.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if data.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return std::fs::read(path);
    }
    let (phoff, shoff) = (u64_at(&data, 0x20), u64_at(&data, 0x28));
    let (phsize, phnum) = (u16_at(&data, 0x36), u16_at(&data, 0x38));
    let (shsize, shnum) = (u16_at(&data, 0x3a), u16_at(&data, 0x3c));
    read(&mut data, phoff, phsize * phnum)?;
    read(&mut data, shoff, shsize * shnum)?;
    const SYMTAB: u64 = 2;
    const STRTAB: u64 = 3;
    const DYNSYM: u64 = 11;
    for i in 0..shnum {
        let at = (shoff + i * shsize) as usize;
        if matches!(u32_at(&data, at + 4), SYMTAB | STRTAB | DYNSYM) {
            let (off, size) = (u64_at(&data, at + 0x18), u64_at(&data, at + 0x20));
            read(&mut data, off, size)?;
        }
    }
    Ok(data)
}

fn first_load_vaddr<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> u64 {
    use object::ObjectSegment;
    file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff
}

fn strip_version(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let syms = ModuleSymbols::load(&exe).unwrap();
        assert!(!syms.is_empty());
        let addr = syms.address_of("main").expect("main in symtab");
        assert_eq!(syms.lookup(addr), Some("main"));
        assert_eq!(syms.lookup(addr + 1), Some("main"));
    }

    #[test]
    fn the_symbol_parts_of_a_file_give_the_symbols_the_whole_file_gives() {
        for path in [std::env::current_exe().unwrap(), std::path::PathBuf::from("/proc/self/exe")] {
            let whole = ModuleSymbols::parse(std::fs::read(&path).unwrap().as_slice()).unwrap();
            let parts = ModuleSymbols::load(&path).unwrap();
            assert_eq!(parts.len(), whole.len());
            assert_eq!(parts.first_load_vaddr, whole.first_load_vaddr);
            let main = whole.address_of("main").unwrap();
            assert_eq!(parts.address_of("main"), Some(main));
        }
        let libc = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .find_map(|l| l.split_whitespace().nth(5).filter(|p| p.contains("libc.so")).map(String::from))
            .expect("libc mapped");
        let (whole, parts) = (
            ModuleSymbols::parse(std::fs::read(&libc).unwrap().as_slice()).unwrap(),
            ModuleSymbols::load(Path::new(&libc)).unwrap(),
        );
        assert!(parts.len() > 1000 && parts.len() == whole.len(), "{} {}", parts.len(), whole.len());
        assert_eq!(parts.address_of("malloc"), whole.address_of("malloc"));
    }

    #[test]
    fn versions_are_stripped() {
        assert_eq!(strip_version("memcpy@@GLIBC_2.14"), "memcpy");
        assert_eq!(strip_version("plain"), "plain");
    }
}
