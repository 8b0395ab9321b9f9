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
    /// Where the kernel laid out the process's initial stack at exec: `argc` (field 28),
    /// the argument strings (48, 49) and the environment strings (50, 51); `None`
    /// without ptrace access (the kernel shows 0). Two processes with the same layout
    /// hold their arguments and environment at the same addresses.
    pub initial_stack: Option<InitialStack>,
}

/// The initial stack's layout: addresses of `argc` and of the argument and environment
/// strings (`/proc/PID/stat` fields 28, 48–51).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialStack {
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
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
        initial_stack: initial_stack(&field),
    })
}

fn initial_stack<'a>(field: &impl Fn(usize) -> Option<&'a str>) -> Option<InitialStack> {
    let num = |n: usize| field(n)?.parse::<u64>().ok().filter(|&v| v != 0);
    Some(InitialStack {
        start_stack: num(28)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
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
        let layout = InitialStack {
            start_stack: 140737488346704,
            arg_start: 140737488347835,
            arg_end: 140737488347860,
            env_start: 140737488347860,
            env_end: 140737488351193,
        };
        assert_eq!(
            parse(stat),
            Some(Stat { state: 'S', ppid: 1, start_brk: Some(93824992260096), initial_stack: Some(layout) })
        );
    }

    #[test]
    fn zombies_short_lines_and_garbage() {
        let z = parse("77 (sh) Z 76 77 77 0 -1").unwrap();
        assert_eq!((z.state, z.ppid, z.start_brk), ('Z', 76, None));
        assert!(z.is_exited());
        // Fields 5 to 47 all 0: start_brk is hidden without ptrace access.
        let hidden_brk = format!("5 (a) R 1 {}", ["0"; 43].join(" "));
        assert_eq!(parse(&hidden_brk), Some(Stat { state: 'R', ppid: 1, start_brk: None, initial_stack: None }));
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
