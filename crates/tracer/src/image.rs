//! Where a process's main binary sits in memory, and how addresses inside it translate
//! between two versions: by symbol name, since the two builds lay out their code and
//! data differently.

use mcr_heap::Region;
use mcr_typemodel::{Program, Symbol};
use std::path::Path;

/// The main binary's mappings in one process.
#[derive(Debug, Clone)]
pub struct Image {
    /// Added to link-time addresses (DWARF, symbols) to get run-time addresses.
    pub bias: u64,
    ranges: Vec<(u64, u64)>,
    /// The main thread's block of the executable's thread-local variables (where DWARF's
    /// TLS offset 0 is), when known.
    pub tls_block: Option<u64>,
    /// The read-only mappings among `ranges` where string literals are: those that are
    /// not code (`.rodata`), or every read-only one for a binary linked with its constants
    /// in its code segment.
    readonly: Vec<(u64, u64)>,
}

/// The mappings of a binary that hold its constants ([`Image::readonly`]).
fn literal_ranges(mine: &[&Region]) -> Vec<(u64, u64)> {
    let readonly = |code: bool| -> Vec<(u64, u64)> {
        mine.iter().filter(|r| r.readable && !r.writable && (code || !r.executable)).map(|r| (r.start, r.end)).collect()
    };
    let data = readonly(false);
    if data.is_empty() {
        readonly(true)
    } else {
        data
    }
}

impl Image {
    /// From the process's memory map: the mappings of `exe`. A position-independent
    /// executable (ELF type ET_DYN) is offset by where its first mapping starts.
    /// Its loadable segments count whole, mapped from the file or not: the zero-filled
    /// end of the data segment (`.bss` past the last page the file holds) is anonymous
    /// memory in the map, but its globals are the binary's as much as `.data`'s.
    pub fn locate(maps: &[Region], exe: &Path) -> Option<Image> {
        let exe = exe.canonicalize().ok()?;
        let name = exe.to_string_lossy();
        let mine: Vec<&Region> = maps.iter().filter(|r| r.name == name).collect();
        let first = mine.iter().find(|r| r.offset == 0)?;
        let elf = ElfLayout::read(&exe);
        let bias = if elf.as_ref().is_some_and(|e| e.pie) { first.start } else { 0 };
        let mut ranges: Vec<(u64, u64)> = mine.iter().map(|r| (r.start, r.end)).collect();
        ranges.extend(elf.iter().flat_map(|e| &e.segments).map(|&(start, end)| (bias + start, bias + end)));
        Some(Image { bias, ranges, tls_block: None, readonly: literal_ranges(&mine) })
    }

    /// A binary loaded at `bias` in the mappings `ranges` (run-time `[start, end)`).
    /// The main thread's TLS block of the executable, as its runtime reported it.
    pub fn with_tls_block(self, tls_block: Option<u64>) -> Image {
        Image { tls_block, ..self }
    }

    /// A binary whose mappings are all read-only (tests).
    pub fn new(bias: u64, ranges: Vec<(u64, u64)>) -> Image {
        Image { bias, readonly: ranges.clone(), ranges, tls_block: None }
    }

    /// Its mappings and loadable segments, `[start, end)` (they may overlap).
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn readonly(&self) -> &[(u64, u64)] {
        &self.readonly
    }

    /// The read-only mapping `addr` is in: `[start, end)`.
    pub fn readonly_range(&self, addr: u64) -> Option<(u64, u64)> {
        self.readonly.iter().copied().find(|&(s, e)| addr >= s && addr < e)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// The aligned words of `bytes` (memory mcr cannot type) that hold an address in
    /// this binary, as (word index, value): what an update takes for pointers to relocate.
    pub fn addresses_in<'b>(&'b self, bytes: &'b [u8]) -> impl Iterator<Item = (usize, u64)> + 'b {
        bytes.chunks_exact(8).enumerate().filter_map(|(i, w)| {
            let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            (v != 0 && self.contains(v)).then_some((i, v))
        })
    }
}

/// What the ELF headers of a 64-bit little-endian executable say about its layout.
struct ElfLayout {
    /// Position-independent (ET_DYN): loaded at a bias.
    pie: bool,
    /// Its PT_LOAD segments, link-time `[vaddr, vaddr + memsz)`.
    segments: Vec<(u64, u64)>,
}

impl ElfLayout {
    fn read(exe: &Path) -> Option<ElfLayout> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(exe).ok()?;
        let mut eh = [0u8; 64];
        f.read_exact(&mut eh).ok()?;
        // ELF magic, ELFCLASS64, ELFDATA2LSB.
        if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
            return None;
        }
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let pie = u16_at(&eh, 16) == 3;
        let (phoff, entsize, count) =
            (u64_at(&eh, 0x20), usize::from(u16_at(&eh, 0x36)), usize::from(u16_at(&eh, 0x38)));
        if entsize < 0x30 || count > 1024 {
            return None;
        }
        let mut ph = vec![0u8; entsize * count];
        f.seek(SeekFrom::Start(phoff)).ok()?;
        f.read_exact(&mut ph).ok()?;
        const PT_LOAD: u32 = 1;
        let segments = ph
            .chunks_exact(entsize)
            .filter(|h| u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) == PT_LOAD)
            .map(|h| (u64_at(h, 0x10), u64_at(h, 0x10).saturating_add(u64_at(h, 0x28))))
            .collect();
        Some(ElfLayout { pie, segments })
    }
}

/// The symbol (function or object) of `prog` whose extent holds link-time address `at`.
pub fn symbol_containing(prog: &Program, at: u64) -> Option<&Symbol> {
    let i = prog.symbols.partition_point(|s| s.address <= at);
    prog.symbols[..i].iter().rev().take(64).find(|s| at >= s.address && (at < s.address + s.size.max(1)))
}

/// Translate a run-time address inside the old binary to the new one: the same symbol,
/// the same offset into it (when the new symbol is large enough).
pub fn translate(old: &Program, old_img: &Image, new: &Program, new_img: &Image, addr: u64) -> Option<u64> {
    let at = addr.checked_sub(old_img.bias)?;
    let s = symbol_containing(old, at)?;
    let off = at - s.address;
    let n = counterpart_symbol(s, &new.symbols)?;
    (off == 0 || off < n.size).then_some(new_img.bias + n.address + off)
}

/// The symbol of `new` that is `old`: the one of that name and kind, or, when several
/// share the name (`static` functions of different files), the one of the same linkage
/// and file. None when that still leaves more than one: a wrong guess would point the new
/// version at another function.
pub fn counterpart_symbol<'n>(old: &Symbol, new: &'n [Symbol]) -> Option<&'n Symbol> {
    let mut same_name = new.iter().filter(|n| n.name == old.name && n.kind == old.kind);
    let first = same_name.next()?;
    if same_name.next().is_none() {
        return Some(first);
    }
    let mut same_file =
        new.iter().filter(|n| n.name == old.name && n.kind == old.kind && n.global == old.global && n.file == old.file);
    match (same_file.next(), same_file.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcr_typemodel::SymbolKind;
    use std::sync::atomic::AtomicU64;

    /// Zero-initialized, so in `.bss`; 512 KiB, so past the page the file holds.
    static ZEROED: [AtomicU64; 65536] = [const { AtomicU64::new(0) }; 65536];

    /// A global in the zero-filled end of the data segment is in the binary, though the
    /// memory map shows it as anonymous memory: nginx's event queues and timer sentinel
    /// sit there, and pointers to them were left as they were when an update moved them.
    #[test]
    fn the_anonymous_end_of_bss_is_part_of_the_image() {
        let exe = std::env::current_exe().expect("the test executable");
        let maps = Region::read_all(std::process::id() as i32).expect("our own maps");
        let image = Image::locate(&maps, &exe).expect("the test executable is mapped");
        let last = std::ptr::addr_of!(ZEROED[65535]) as u64;
        let name = exe.canonicalize().expect("canonical").to_string_lossy().into_owned();
        let mapped_from_file = maps.iter().any(|r| r.name == name && (r.start..r.end).contains(&last));
        assert!(!mapped_from_file, "the test needs a global past the file's pages");
        assert!(image.contains(last), "{last:#x} is not in {image:?}");
        assert!(image.contains(std::ptr::addr_of!(ZEROED[0]) as u64));
        assert!(!image.contains(maps.iter().find(|r| r.name == "[stack]").expect("a stack").start));
    }

    fn local(name: &str, address: u64, file: &str) -> Symbol {
        Symbol {
            name: name.into(),
            address,
            size: 16,
            kind: SymbolKind::Function,
            global: false,
            file: Some(file.into()),
        }
    }

    #[test]
    fn static_functions_sharing_a_name_are_told_apart_by_their_file() {
        // vsftpd: standalone.c and twoprocess.c each have a static handle_sigchld.
        let old = [local("handle_sigchld", 0x100, "twoprocess.c"), local("handle_sigchld", 0x200, "standalone.c")];
        let new = [local("handle_sigchld", 0x300, "twoprocess.c"), local("handle_sigchld", 0x400, "standalone.c")];
        assert_eq!(counterpart_symbol(&old[1], &new).map(|s| s.address), Some(0x400));
        assert_eq!(counterpart_symbol(&old[0], &new).map(|s| s.address), Some(0x300));
        // One of that name: it, whatever its file says.
        assert_eq!(counterpart_symbol(&old[1], &new[..1]).map(|s| s.address), Some(0x300));
        // Several, and nothing to tell them apart: no guess.
        let unknown = [local("f", 0x500, "a.c"), local("f", 0x600, "a.c")];
        assert_eq!(counterpart_symbol(&local("f", 0x10, "a.c"), &unknown), None);
    }
}
