//! Pointers into the main stack's top: the arguments, the environment and the arrays
//! that point to them, which the kernel lays out at exec (fs/exec.c, from the top down:
//! 8 zero bytes, the program path, the environment strings, the argument strings; below
//! them the auxiliary vector, `envp`, `argv` and `argc`). Servers keep pointers into it
//! in globals (`progname = argv[0]`, a configuration path taken from `optarg`, nginx's
//! `ngx_os_argv` and the end of the environment strings for its process title).
//!
//! The stack itself does not move: each version has its own, laid out by its own exec.
//! The launcher pads the environment (`MCR_STACK_PAD`, the last variable) so that both
//! versions' strings take as many bytes; with the same program path that makes every
//! address the same. With another program path (same length or not) the first argument
//! and the program path at the top differ in length, and what lies between them shifts:
//! [`StackMap`] says where each old address is in the new stack, or that it has no
//! counterpart (mcr's own variables and the padding, or a layout it cannot match).

/// Where the kernel put one process's initial stack (`/proc/PID/stat` fields 28, 48–51,
/// and the end of its `[stack]` mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackLayout {
    /// The `[stack]` mapping: `[low, top)`.
    pub low: u64,
    pub top: u64,
    /// Where `argc` is; `argv`, `envp` and the auxiliary vector follow.
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

impl StackLayout {
    /// The program path at the top (8 zero bytes above it): its length without the NUL.
    /// mcr's launcher passes the same path as `argv[0]`.
    fn program_len(&self) -> Option<u64> {
        self.top.checked_sub(self.env_end)?.checked_sub(9)
    }
}

/// One piece of the old stack and how far it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: u64,
    end: u64,
    delta: i64,
}

/// Old main-stack addresses → new ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackMap {
    old: StackLayout,
    pieces: Vec<Piece>,
    /// Why nothing of the old stack has a counterpart, when that is so.
    mismatch: Option<String>,
}

impl StackMap {
    /// The map from `old` to `new`. `user_env_end`: where the old process's own
    /// environment variables end (the first of mcr's variables, which follow them, and
    /// then the padding), when its environment strings could be read; `None` leaves
    /// pointers into the environment strings without counterpart (but the end of them,
    /// which nginx keeps, still has one).
    pub fn between(old: StackLayout, new: StackLayout, user_env_end: Option<u64>) -> StackMap {
        let mismatch = |why: String| StackMap { old, pieces: Vec::new(), mismatch: Some(why) };
        if old == new {
            return StackMap { old, pieces: vec![Piece { start: old.low, end: old.top, delta: 0 }], mismatch: None };
        }
        if (old.top, old.start_stack, old.arg_start) != (new.top, new.start_stack, new.arg_start) {
            return mismatch(format!(
                "the new process's initial stack is laid out elsewhere (arguments at {:#x}, not {:#x}: its arguments \
                 or environment take more room than the old one's padding left)",
                new.arg_start, old.arg_start
            ));
        }
        let (Some(old_len0), Some(_)) = (old.program_len(), new.program_len()) else {
            return mismatch("its initial stack cannot be read".into());
        };
        let shift = |a: u64, b: u64| b as i64 - a as i64;
        // The arrays, the frames below them and the first argument: same addresses.
        let first_arg_end = old.arg_start + old_len0 + 1;
        let mut pieces = vec![Piece { start: old.low, end: first_arg_end, delta: 0 }];
        // The other arguments, then the program's own variables, follow the first
        // argument, whose length changed with the program path.
        let args_shift = shift(old.arg_end, new.arg_end);
        let after_args =
            user_env_end.filter(|&e| (old.env_start..=old.env_end).contains(&e)).unwrap_or(old.arg_end + 1);
        pieces.push(Piece { start: first_arg_end, end: after_args, delta: args_shift });
        // The end of the environment strings and the program path above it: from the top.
        // The strings' last byte (the NUL ending mcr's padding) is the end too: nginx keeps
        // the last byte its process title may overwrite (`ngx_os_argv_last`, one below
        // `env_end`), and the new stack has that byte one below its own `env_end`.
        let env_last = old.env_end.saturating_sub(1).max(after_args);
        pieces.push(Piece { start: env_last, end: old.top, delta: shift(old.env_end, new.env_end) });
        StackMap { old, pieces, mismatch: None }
    }

    /// Whether `v` is in the old main stack.
    /// The old stack's addresses this map covers: `[low, top)`.
    pub fn bounds(&self) -> (u64, u64) {
        (self.old.low, self.old.top)
    }

    pub fn covers(&self, v: u64) -> bool {
        (self.old.low..self.old.top).contains(&v)
    }

    /// Where the old stack address `v` is in the new process, or why it has no
    /// counterpart there.
    pub fn relocate(&self, v: u64) -> Result<u64, String> {
        if let Some(p) = self.pieces.iter().find(|p| (p.start..p.end).contains(&v)) {
            return Ok(v.wrapping_add_signed(p.delta));
        }
        let what = if v < self.old.start_stack {
            "a frame of main"
        } else if v < self.old.arg_start {
            "the argument and environment arrays"
        } else if v < self.old.env_start {
            "the arguments"
        } else {
            "mcr's own environment variables"
        };
        Err(match &self.mismatch {
            Some(why) => format!("{v:#x} is in the old process's main stack ({what}), and {why}"),
            None => {
                format!("{v:#x} is in the old process's main stack ({what}), which has no counterpart in the new one")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: u64 = 0x7fff_ffff_f000;

    /// A layout with `argc` arguments' strings of `args` bytes (the first one the program
    /// path, `program` bytes without its NUL) and `env` bytes of environment strings.
    fn layout(program: u64, args: u64, env: u64) -> StackLayout {
        let env_end = TOP - 8 - (program + 1);
        let env_start = env_end - env;
        let arg_start = env_start - args;
        StackLayout {
            low: TOP - 0x21000,
            top: TOP,
            start_stack: arg_start - 0x340,
            arg_start,
            arg_end: env_start,
            env_start,
            env_end,
        }
    }

    #[test]
    fn the_same_layout_keeps_every_address() {
        let l = layout(20, 60, 900);
        let m = StackMap::between(l, l, None);
        for v in [l.low, l.start_stack, l.arg_start + 30, l.env_start + 5, l.env_end, TOP - 1] {
            assert_eq!(m.relocate(v), Ok(v), "{v:#x}");
        }
    }

    /// The program path 3 bytes longer (`stated` → `stated-v2`), the padding 6 bytes
    /// shorter: the arrays and the first argument stay, the other arguments and the
    /// program's variables move up 3 bytes, the end of the environment (and its last byte)
    /// down 3.
    #[test]
    fn a_longer_program_path_shifts_what_lies_between_the_first_argument_and_the_top() {
        let old = layout(20, 21 + 40, 900);
        let new = layout(23, 24 + 40, 900 - 6);
        assert_eq!((old.arg_start, old.start_stack), (new.arg_start, new.start_stack));
        let user_env_end = old.env_start + 300;
        let m = StackMap::between(old, new, Some(user_env_end));
        assert_eq!(m.relocate(old.start_stack + 8), Ok(old.start_stack + 8), "argv");
        assert_eq!(m.relocate(old.arg_start), Ok(new.arg_start), "argv[0]");
        assert_eq!(m.relocate(old.arg_start + 21), Ok(new.arg_start + 24), "argv[1]");
        assert_eq!(m.relocate(old.env_start + 10), Ok(new.env_start + 10), "a variable of the program's");
        assert_eq!(m.relocate(old.env_end), Ok(new.env_end), "the end of the environment strings");
        assert_eq!(m.relocate(old.env_end - 1), Ok(new.env_end - 1), "their last byte (nginx's ngx_os_argv_last)");
        let err = m.relocate(user_env_end + 4).unwrap_err();
        assert!(err.contains("mcr's own environment variables"), "{err}");
    }

    #[test]
    fn arguments_that_do_not_fit_the_padding_leave_nothing_with_a_counterpart() {
        let old = layout(20, 61, 900);
        let new = layout(20, 61 + 2000, 900);
        let m = StackMap::between(old, new, None);
        let err = m.relocate(old.start_stack + 8).unwrap_err();
        assert!(err.contains("laid out elsewhere"), "{err}");
        assert!(m.covers(old.start_stack) && !m.covers(TOP));
    }
}
