//! file:line of call-stack frames, from the modules' DWARF line tables (offline, in the
//! CLI: the runtime only ever reads symbol tables).

use addr2line::gimli;
use mcr_protocol::Frame;
use object::{Object, ObjectSection};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

// Section data is leaked: the CLI loads each module once and exits soon after.
type Reader = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

struct Module {
    ctx: addr2line::Context<Reader>,
    first_load_vaddr: u64,
}

/// Loads each module once; a module without DWARF (or unreadable) yields no lines.
#[derive(Default)]
pub struct Lines {
    modules: HashMap<String, Option<Module>>,
}

fn load(path: &str) -> Option<Module> {
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let section = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let bytes: Cow<[u8]> =
            file.section_by_name(id.name()).and_then(|s| s.uncompressed_data().ok()).unwrap_or(Cow::Borrowed(&[]));
        let bytes: &'static [u8] = Box::leak(bytes.into_owned().into_boxed_slice());
        Ok(gimli::EndianSlice::new(bytes, endian))
    };
    let dwarf = gimli::Dwarf::load(section).ok()?;
    let ctx = addr2line::Context::from_dwarf(dwarf).ok()?;
    let first_load_vaddr = mcr_callstack::ModuleSymbols::parse(data.as_slice()).ok()?.first_load_vaddr;
    Some(Module { ctx, first_load_vaddr })
}

impl Lines {
    /// The module of the return address `frame` (loaded at its first use) and the address
    /// of its call instruction there.
    fn call_site(&mut self, frame: &Frame) -> Option<(&Module, u64)> {
        let path = frame.module.as_deref()?;
        let m = self.modules.entry(path.to_string()).or_insert_with(|| load(path)).as_ref()?;
        // A return address is just after the call instruction.
        let vaddr = (frame.module_offset + m.first_load_vaddr).checked_sub(1)?;
        Some((m, vaddr))
    }

    /// `file:line` of the call a return address `frame` comes back to.
    pub fn of(&mut self, frame: &Frame) -> Option<String> {
        let (m, vaddr) = self.call_site(frame)?;
        let loc = m.ctx.find_location(vaddr).ok()??;
        let file = loc.file?;
        let short = shorten(file);
        Some(match loc.line {
            Some(l) => format!("{short}:{l}"),
            None => short,
        })
    }

    /// The functions the call a return address `frame` comes back to was made in, when
    /// the compiler inlined it: the innermost (where the call is in the source) first,
    /// down to the function the address is in. Empty when nothing is inlined there (or no
    /// DWARF): the symbol table's name says it all.
    pub fn inlined(&mut self, frame: &Frame) -> Vec<String> {
        let Some((m, vaddr)) = self.call_site(frame) else { return Vec::new() };
        let mut names = Vec::new();
        if let Ok(mut frames) = m.ctx.find_frames(vaddr).skip_all_loads() {
            while let Ok(Some(f)) = frames.next() {
                match f.function.as_ref().and_then(|n| n.raw_name().ok()) {
                    Some(n) => names.push(n.into_owned()),
                    None => return Vec::new(),
                }
            }
        }
        if names.len() < 2 {
            names.clear();
        }
        names
    }
}

/// Paths relative to the current directory when below it.
fn shorten(file: &str) -> String {
    let p = Path::new(file);
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = p.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    file.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> u64 {
        let f: fn() -> u64 = here;
        f as usize as u64
    }

    #[test]
    fn finds_the_line_of_a_function_in_this_test_binary() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap().display().to_string();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let base = maps
            .lines()
            .find(|l| l.ends_with(&exe))
            .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
            .unwrap();
        // +1: `of` takes return addresses and looks one byte before.
        let addr = here() + 1;
        let frame = Frame { address: addr, function: None, module: Some(exe), module_offset: addr - base };
        let line = Lines::default().of(&frame).expect("the test binary has line tables");
        assert!(line.contains("lines.rs:"), "{line}");
    }
}
