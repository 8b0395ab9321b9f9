//! `/proc/PID/stat`: one line of space-separated fields, the second one (the command
//! name, in parentheses) free text that may itself hold spaces and parentheses.

use crate::Process;
use std::io;

/// The fields of a stat line mcr reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (field 3): R, S, D, Z (zombie), X (dead)...
    pub state: char,
    /// The parent (field 4).
    pub ppid: i32,
    /// Where the brk heap starts (field 47); `None` without ptrace access (the kernel
    /// then shows 0) or on old kernels.
    pub start_brk: Option<u64>,
}

impl Stat {
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parse a stat line; `None` when malformed.
pub fn parse(text: &str) -> Option<Stat> {
    // The command name may contain anything: the fields that follow start after its
    // last ')'. Field 3 is the first of them.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        start_brk: field(47).and_then(|b| b.parse().ok()).filter(|&b| b != 0),
    })
}

/// The stat of process `p`.
pub fn read(p: impl Into<Process>) -> io::Result<Stat> {
    let p = p.into();
    let text = crate::read_text(p, "stat")?;
    parse(&text).ok_or_else(|| crate::malformed(&p.file("stat")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "2 (kvd (x) y) S 1 2 2 0 -1 4194560 99 0 0 0 0 0 0 0 20 0 1 0 4087 6787072 418 18446744073709551615 93824992231424 93824992239177 140737488346704 0 0 0 0 4096 16384 1 0 0 17 0 0 0 0 0 0 93824992247152 93824992248352 93824992260096 140737488347835 140737488347860 140737488347860 140737488351193 0\n";
        assert_eq!(parse(stat), Some(Stat { state: 'S', ppid: 1, start_brk: Some(93824992260096) }));
    }

    #[test]
    fn zombies_short_lines_and_garbage() {
        let z = parse("77 (sh) Z 76 77 77 0 -1").unwrap();
        assert_eq!((z.state, z.ppid, z.start_brk), ('Z', 76, None));
        assert!(z.is_exited());
        // Fields 5 to 47 all 0: start_brk is hidden without ptrace access.
        let hidden_brk = format!("5 (a) R 1 {}", ["0"; 43].join(" "));
        assert_eq!(parse(&hidden_brk), Some(Stat { state: 'R', ppid: 1, start_brk: None }));
        for bad in ["", "5 (a", "5 (a)", "5 (a) ", "5 (a) S", "5 (a) S x"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_own_stat() {
        let s = read(Process::Current).unwrap();
        // The state is the main thread's (the test harness's, waiting for this test).
        assert!(!s.is_exited());
        assert_eq!(s.ppid as u32, std::os::unix::process::parent_id());
    }
}
