//! Checks on the program to run, before anything is started: each failure is one clear
//! line, and nothing has changed yet.

use anyhow::{bail, Context, Result};
use object::Object;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Find PROGRAM as a shell would (PATH lookup when it has no slash).
pub fn resolve(program: &str) -> Result<PathBuf> {
    let candidate = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .with_context(|| format!("program '{program}' not found in PATH"))?
    };
    let meta = std::fs::metadata(&candidate).with_context(|| format!("program {} not found", candidate.display()))?;
    if !meta.is_file() {
        bail!("program {} is not a regular file", candidate.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("program {} is not executable (chmod +x?)", candidate.display());
    }
    std::fs::canonicalize(&candidate).with_context(|| format!("cannot resolve {}", candidate.display()))
}

/// What was learned about the binary.
pub struct Checked {
    /// Warnings to print (no debug info, a script).
    pub warnings: Vec<String>,
}

pub fn check(path: &Path) -> Result<Checked> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut warnings = Vec::new();
    if data.starts_with(b"#!") {
        warnings.push(format!("{} is a script: mcr manages the interpreter and whatever it starts", path.display()));
        return Ok(Checked { warnings });
    }
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is neither an ELF executable nor a script", path.display()))?;
    // No program interpreter: nothing would ever honour LD_PRELOAD.
    if file.section_by_name(".interp").is_none() {
        bail!(
            "{} is statically linked: mcr works by preloading its runtime into the dynamic linker's process, which a static binary never loads; rebuild it without -static",
            path.display()
        );
    }
    let has_debug = file.section_by_name(".debug_info").is_some() || separate_debug_file(&file, path).is_some();
    if !has_debug {
        warnings.push(format!(
            "{} has no debug info: quiescence works, but live updates will need DWARF (rebuild with -g)",
            path.display()
        ));
    }
    Ok(Checked { warnings })
}

/// Where a stripped binary's DWARF lives, if it is installed: by build-id under
/// /usr/lib/debug/.build-id, else by its .gnu_debuglink name next to the binary, in its
/// .debug/ folder, or under /usr/lib/debug (gdb's search order).
pub fn separate_debug_file(file: &object::File<'_>, path: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(Some(id)) = file.build_id() {
        if id.len() > 1 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            candidates.push(PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..])));
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = path.parent().unwrap_or(Path::new("/"));
        candidates.push(dir.join(&name));
        candidates.push(dir.join(".debug").join(&name));
        candidates.push(Path::new("/usr/lib/debug").join(dir.strip_prefix("/").unwrap_or(dir)).join(&name));
    }
    candidates.into_iter().find(|c| c.is_file() && c != path)
}

/// libmcr.so: $MCR_RUNTIME_LIB, else beside the mcr binary, else ../lib/mcr/.
pub fn runtime_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(mcr_protocol::env::RUNTIME_LIB).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(std::fs::canonicalize(p)?);
        }
        bail!("MCR_RUNTIME_LIB points to {}, which does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot locate the mcr binary")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for cand in [dir.join("libmcr.so"), dir.join("../lib/mcr/libmcr.so")] {
        if cand.is_file() {
            return Ok(std::fs::canonicalize(cand)?);
        }
    }
    bail!(
        "the mcr runtime library libmcr.so is not beside {} (build it with `cargo build --release`, or set MCR_RUNTIME_LIB)",
        exe.display()
    )
}
