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

#[derive(Debug, Clone)]
struct Sym {
    start: u64,
    size: u64,
    name: String,
}

/// Function symbols of a module, sorted by address (link-time addresses: subtract the
/// module's load bias before looking up a runtime address).
#[derive(Debug, Clone, Default)]
pub struct ModuleSymbols {
    syms: Vec<Sym>,
    /// Lowest PT_LOAD virtual address: runtime base minus this is the load bias.
    pub first_load_vaddr: u64,
}

impl ModuleSymbols {
    pub fn load(path: &Path) -> Result<Self, SymbolError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| SymbolError::Read { path: p.clone(), source })?;
        Self::parse(&data).map_err(|source| SymbolError::Parse { path: p, source })
    }

    pub fn parse(data: &[u8]) -> Result<Self, object::Error> {
        let file = object::File::parse(data)?;
        // The full symbol table when present (static functions included), else dynsym.
        let collect = |it: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| {
            let mut syms = Vec::new();
            for s in it {
                if s.kind() != SymbolKind::Text || s.address() == 0 || s.is_undefined() {
                    continue;
                }
                if let Ok(name) = s.name() {
                    if !name.is_empty() {
                        syms.push(Sym { start: s.address(), size: s.size(), name: strip_version(name) });
                    }
                }
            }
            syms
        };
        let mut syms = collect(&mut file.symbols());
        if syms.is_empty() {
            syms = collect(&mut file.dynamic_symbols());
        }
        syms.sort_by(|a, b| a.start.cmp(&b.start).then(b.size.cmp(&a.size)));
        syms.dedup_by(|b, a| a.start == b.start);
        let first_load_vaddr = first_load_vaddr(&file);
        Ok(Self { syms, first_load_vaddr })
    }

    /// Function containing the link-time address `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let idx = self.syms.partition_point(|s| s.start <= addr);
        let s = self.syms.get(idx.checked_sub(1)?)?;
        // Symbols with size 0 (hand-written assembly) cover up to the next symbol.
        let end = if s.size > 0 { s.start + s.size } else { self.syms.get(idx).map_or(u64::MAX, |n| n.start) };
        (addr < end).then_some(s.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Link-time address of a function by name (first match).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| s.name == name).map(|s| s.start)
    }
}

fn first_load_vaddr(file: &object::File<'_>) -> u64 {
    use object::ObjectSegment;
    file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff
}

fn strip_version(name: &str) -> String {
    name.split('@').next().unwrap_or(name).to_string()
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
    fn versions_are_stripped() {
        assert_eq!(strip_version("memcpy@@GLIBC_2.14"), "memcpy");
        assert_eq!(strip_version("plain"), "plain");
    }
}
