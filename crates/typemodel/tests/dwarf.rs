//! Loading real DWARF: a small two-unit C program compiled here with `cc -g`.

use mcr_typemodel::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const A: &str = r#"
#include <sys/types.h>
struct node { int v; struct node *next; };
enum color { RED, GREEN = 5, BLUE = -1 };
struct flags { unsigned a:3; unsigned b:5; int c; };
struct msg { int len; char data[]; };
struct node head;
static struct flags fl;
__thread long tls_counter;
pid_t owner;
enum color col;
int grid[2][3];
int (*handler)(int);
struct msg *last;
union u { int i; void *p; } un;
static int helper(int x) { static int calls; return x + calls++; }
int use_b(void);
int main(void) { handler = helper; fl.a = 1; tls_counter++; return helper(fl.a) + use_b(); }
"#;

const B: &str = r#"
struct node { int v; struct node *next; };
static struct node bnode;
int use_b(void) { return bnode.v; }
"#;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(label: &str) -> Tmp {
    let d = std::env::temp_dir().join(format!("mcr-typemodel-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Tmp(d)
}

fn build(dir: &Path, flags: &[&str]) -> PathBuf {
    std::fs::write(dir.join("a.c"), A).unwrap();
    std::fs::write(dir.join("b.c"), B).unwrap();
    let exe = dir.join("prog");
    let out =
        Command::new("cc").current_dir(dir).args(flags).args(["-o", "prog", "a.c", "b.c"]).output().expect("run cc");
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    exe
}

fn global<'p>(p: &'p Program, name: &str) -> &'p Global {
    p.globals.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no global {name}: {:?}", p.globals))
}

#[test]
fn globals_statics_tls_and_the_type_graph() {
    let t = tmp("load");
    let exe = build(&t.0, &["-g", "-O0"]);
    let p = Program::load(&exe).unwrap();
    assert!(p.has_debug_info && p.build_id.is_some(), "{:?}", p.warnings);

    let head = global(&p, "head");
    assert!(!head.is_static && head.address().is_some() && head.size == Some(16));
    let fl = global(&p, "fl");
    assert!(fl.is_static && fl.unit == "a.c");
    let calls = global(&p, "calls");
    assert_eq!(calls.function.as_deref(), Some("helper"));
    assert_eq!(calls.display_name(), "a.c:helper.calls");
    let tls = global(&p, "tls_counter");
    assert!(tls.is_tls() && tls.address().is_none(), "{tls:?}");
    assert_eq!(p.type_name(global(&p, "owner").ty), "pid_t", "typedef names are kept");

    // The same struct node from two units is one type.
    let bnode = global(&p, "bnode");
    assert_eq!(bnode.unit, "b.c");
    assert_eq!(bnode.ty, head.ty);

    let Type::Struct(f) = p.ty(p.strip(fl.ty)) else { panic!() };
    let bits: Vec<(Option<u64>, Option<u64>, u64)> =
        f.members.iter().map(|m| (m.bit_size, m.bit_offset, m.offset)).collect();
    assert_eq!(bits, [(Some(3), Some(0), 0), (Some(5), Some(3), 0), (None, None, 4)]);

    let Type::Enum { enumerators, signed, size, .. } = p.ty(p.strip(global(&p, "col").ty)) else { panic!() };
    assert_eq!(enumerators, &[("RED".to_string(), 0), ("GREEN".to_string(), 5), ("BLUE".to_string(), -1)]);
    assert!(*signed);
    assert_eq!(*size, 4);

    let grid = global(&p, "grid");
    assert!(matches!(p.ty(grid.ty), Type::Array { counts, .. } if counts == &[Some(2), Some(3)]));
    assert_eq!(p.size_of(grid.ty), Some(24));
    assert_eq!(p.type_name(grid.ty), "int[2][3]");

    let handler = global(&p, "handler");
    assert_eq!(p.layout(handler.ty, "handler").pointers[0].pointee, Pointee::Function);

    let last = global(&p, "last");
    let Type::Pointer { pointee, .. } = p.ty(last.ty) else { panic!() };
    let Type::Struct(msg) = p.ty(*pointee) else { panic!() };
    assert!(matches!(p.ty(msg.members[1].ty), Type::Array { counts, .. } if counts == &[None]));

    let l = p.layout(head.ty, "node");
    assert_eq!(l.pointers.len(), 1);
    assert_eq!((l.pointers[0].offset, l.pointers[0].path.as_str()), (8, "node.next"));
    assert_eq!(p.layout(global(&p, "un").ty, "un").opaque[0].reason, OpaqueReason::Union);

    let main = p.symbol("main").expect("main in the symbol table");
    assert_eq!(main.kind, SymbolKind::Function);
    assert_eq!(p.function_at(main.address).map(|s| s.name.as_str()), Some("main"));
    assert!(p.named_types().contains_key("struct node"));
}

#[test]
fn split_debug_info_through_gnu_debuglink() {
    let t = tmp("split");
    let exe = build(&t.0, &["-g", "-O0"]);
    let dbg = t.0.join("prog.debug");
    let stripped = t.0.join("prog.stripped");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("objcopy").current_dir(&t.0).args(args).output().expect("objcopy");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["--only-keep-debug".as_ref(), exe.as_os_str(), dbg.as_os_str()]);
    run(&["--strip-debug".as_ref(), "--add-gnu-debuglink=prog.debug".as_ref(), exe.as_os_str(), stripped.as_os_str()]);
    let p = Program::load(&stripped).unwrap();
    assert!(p.has_debug_info, "{:?}", p.warnings);
    assert_eq!(p.debug_file.as_deref().and_then(Path::file_name), Some("prog.debug".as_ref()));
    let full = Program::load(&exe).unwrap();
    assert_eq!(p.globals.len(), full.globals.len());
    assert_eq!(p.types.len(), full.types.len());
}

#[test]
fn a_binary_without_debug_info_loads_empty_with_a_warning() {
    let t = tmp("nodebug");
    let exe = build(&t.0, &["-O0"]);
    let p = Program::load(&exe).unwrap();
    assert!(!p.has_debug_info);
    assert!(p.types.is_empty() && p.globals.is_empty());
    assert!(p.warnings.iter().any(|w| w.contains("no debug info")), "{:?}", p.warnings);
    assert!(p.symbol("head").is_some(), "ELF symbols are still read");
}

#[test]
fn not_an_elf_is_an_error() {
    let t = tmp("notelf");
    let f = t.0.join("x");
    std::fs::write(&f, b"#!/bin/sh\n").unwrap();
    assert!(matches!(Program::load(&f), Err(TypeModelError::NotElf { .. })));
    assert!(matches!(Program::load(&t.0.join("missing")), Err(TypeModelError::Io { .. })));
}

#[test]
fn cache_round_trip_and_corrupt_entries() {
    let t = tmp("cache");
    let exe = build(&t.0, &["-g", "-O0"]);
    let cache = Cache::new(t.0.join("cache"));
    let first = cache.load(&exe).unwrap();
    let id = first.build_id.clone().unwrap();
    let hit = cache.get(&id).expect("stored");
    assert_eq!(hit.types, first.types);
    assert_eq!(hit.globals, first.globals);
    let entry = cache.dir().join(format!("{id}.json"));
    std::fs::write(&entry, b"garbage").unwrap();
    assert!(cache.get(&id).is_none());
    let again = cache.load(&exe).unwrap();
    assert_eq!(again.globals, first.globals);
    assert!(cache.get(&id).is_some(), "rewritten");
}
