//! Checks on the program to run, before anything is started: each failure is one clear
//! line, and nothing has changed yet.

use object::Object;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("no program given")]
    NoProgram,
    #[error("program has no file name")]
    NoFileName,
    #[error("program '{0}' not found in PATH")]
    NotInPath(String),
    #[error("program {} not found", .path.display())]
    NotFound {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("program {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("program {} is not executable (chmod +x?)", .0.display())]
    NotExecutable(PathBuf),
    #[error("cannot resolve {}", .path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is neither an ELF executable nor a script", .path.display())]
    NotElf {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error(
        "{} is statically linked: mcr works by preloading its runtime into the dynamic linker's process, which a static binary never loads; rebuild it without -static",
        .0.display()
    )]
    Static(PathBuf),
    #[error("MCR_RUNTIME_LIB points to {}, which does not exist", .0.display())]
    RuntimeLibMissing(PathBuf),
    #[error("cannot locate the mcr binary")]
    OwnExe(#[source] std::io::Error),
    #[error(
        "the mcr runtime library libmcr.so is not beside {} (build it with `cargo build --release`, or set MCR_RUNTIME_LIB)",
        .0.display()
    )]
    RuntimeLibNotBeside(PathBuf),
    #[error("{} is not the mcr runtime library: {reason}", .path.display())]
    NotRuntimeLib { path: PathBuf, reason: String },
}

/// A symbol only mcr's runtime exports: a file without it is not libmcr.so.
const RUNTIME_MARKER: &str = "mcr_runtime_is_live_update";
/// A server's command line ready to launch under mcr: its program found and checked, and
/// the runtime library found. What `mcr run`, `mcr profile` and `mcr update` check first.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    /// The program, canonical.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// libmcr.so, to preload into it.
    pub runtime_lib: PathBuf,
    /// Warnings to print (no debug info, a script).
    pub warnings: Vec<String>,
    /// The program has DWARF: its state can be moved.
    pub has_debug_info: bool,
}

impl ServerCommand {
    /// `command`: the program and its arguments.
    pub fn prepare(command: &[String]) -> Result<Self, ProgramError> {
        let (program, args) = command.split_first().ok_or(ProgramError::NoProgram)?;
        let program = resolve(program)?;
        let checked = check(&program)?;
        let runtime_lib = runtime_library()?;
        Ok(Self {
            program,
            args: args.to_vec(),
            runtime_lib,
            warnings: checked.warnings,
            has_debug_info: checked.has_debug_info,
        })
    }

    /// The program's file name (the default instance name).
    pub fn file_name(&self) -> Result<String, ProgramError> {
        self.program.file_name().map(|s| s.to_string_lossy().into_owned()).ok_or(ProgramError::NoFileName)
    }
}

/// Find PROGRAM as a shell would (PATH lookup when it has no slash).
pub fn resolve(program: &str) -> Result<PathBuf, ProgramError> {
    let candidate = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| ProgramError::NotInPath(program.to_string()))?
    };
    let meta =
        std::fs::metadata(&candidate).map_err(|source| ProgramError::NotFound { path: candidate.clone(), source })?;
    if !meta.is_file() {
        return Err(ProgramError::NotAFile(candidate));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::NotExecutable(candidate));
    }
    std::fs::canonicalize(&candidate).map_err(|source| ProgramError::Resolve { path: candidate, source })
}

/// What was learned about the binary.
pub struct Checked {
    /// Warnings to print (no debug info, a script).
    pub warnings: Vec<String>,
    /// DWARF is there (in the binary or an installed debug file): state can be moved.
    pub has_debug_info: bool,
}

pub fn check(path: &Path) -> Result<Checked, ProgramError> {
    let data = std::fs::read(path).map_err(|source| ProgramError::Read { path: path.to_path_buf(), source })?;
    let mut warnings = Vec::new();
    if data.starts_with(b"#!") {
        warnings.push(format!("{} is a script: mcr manages the interpreter and whatever it starts", path.display()));
        return Ok(Checked { warnings, has_debug_info: false });
    }
    let file =
        object::File::parse(&*data).map_err(|source| ProgramError::NotElf { path: path.to_path_buf(), source })?;
    // No program interpreter: nothing would ever honour LD_PRELOAD.
    if file.section_by_name(".interp").is_none() {
        return Err(ProgramError::Static(path.to_path_buf()));
    }
    let has_debug = file.section_by_name(".debug_info").is_some() || separate_debug_file(&file, path).is_some();
    if !has_debug {
        warnings.push(format!(
            "{} has no debug info: quiescence works, but live updates will need DWARF (rebuild with -g)",
            path.display()
        ));
    }
    Ok(Checked { warnings, has_debug_info: has_debug })
}

/// Whether someone other than root and this user could change what `path` is (the file,
/// or the directory that holds it): says who, for a warning. A program or runtime
/// library such a user can replace runs with the server's privileges after the update.
pub fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let dir = path.parent().unwrap_or(Path::new("/"));
    for (what, p) in [("", path), ("the directory of ", dir)] {
        let Ok(m) = std::fs::metadata(p) else { continue };
        let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
        if m.uid() != 0 && m.uid() != me {
            return Some(format!("{what}{} belongs to uid {}", path.display(), m.uid()));
        }
        // A sticky directory (/tmp) lets nobody replace another user's file.
        if m.mode() & 0o022 != 0 && !sticky_dir {
            let who = if m.mode() & 0o002 != 0 { "every user" } else { "its group" };
            return Some(format!("{what}{} is writable by {who} (mode {:o})", path.display(), m.mode() & 0o7777));
        }
    }
    None
}

/// `path` is mcr's runtime library: an ELF shared object that exports the runtime's
/// symbols (a wrong MCR_RUNTIME_LIB would otherwise show up as a startup timeout).
pub fn check_runtime_library(path: &Path) -> Result<(), ProgramError> {
    let bad = |reason: String| ProgramError::NotRuntimeLib { path: path.to_path_buf(), reason };
    let data = std::fs::read(path).map_err(|source| ProgramError::Read { path: path.to_path_buf(), source })?;
    let file = object::File::parse(&*data).map_err(|e| bad(format!("not an ELF file ({e})")))?;
    if file.kind() != object::ObjectKind::Dynamic {
        return Err(bad("not a shared library".into()));
    }
    let exports = file.exports().map_err(|e| bad(format!("cannot read its symbols ({e})")))?;
    if !exports.iter().any(|e| e.name() == RUNTIME_MARKER.as_bytes()) {
        return Err(bad(format!("a shared library without the runtime's symbols ({RUNTIME_MARKER})")));
    }
    Ok(())
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
pub fn runtime_library() -> Result<PathBuf, ProgramError> {
    if let Some(p) = std::env::var_os(mcr_protocol::env::RUNTIME_LIB).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            let p = std::fs::canonicalize(&p).map_err(|source| ProgramError::Resolve { path: p, source })?;
            check_runtime_library(&p)?;
            return Ok(p);
        }
        return Err(ProgramError::RuntimeLibMissing(p));
    }
    let exe = std::env::current_exe().map_err(ProgramError::OwnExe)?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for cand in [dir.join("libmcr.so"), dir.join("../lib/mcr/libmcr.so")] {
        if cand.is_file() {
            return std::fs::canonicalize(&cand).map_err(|source| ProgramError::Resolve { path: cand, source });
        }
    }
    Err(ProgramError::RuntimeLibNotBeside(exe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_needs_a_program_that_exists() {
        assert!(matches!(ServerCommand::prepare(&[]), Err(ProgramError::NoProgram)));
        let missing = ServerCommand::prepare(&["/nonexistent/mcr-test-server".into(), "--port".into()]);
        assert!(matches!(missing, Err(ProgramError::NotFound { .. })), "{missing:?}");
    }

    #[test]
    fn the_default_name_is_the_file_name() {
        let c = ServerCommand {
            program: PathBuf::from("/srv/bin/kvd"),
            args: vec![],
            runtime_lib: PathBuf::from("/usr/lib/mcr/libmcr.so"),
            warnings: vec![],
            has_debug_info: true,
        };
        assert_eq!(c.file_name().unwrap(), "kvd");
        let root = ServerCommand { program: PathBuf::from("/"), ..c };
        assert!(matches!(root.file_name(), Err(ProgramError::NoFileName)));
    }
}
