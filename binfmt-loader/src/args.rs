//! The loader's command line: `crimg-loader IMAGE [OPTIONS]`, or, run by
//! binfmt_misc, `IMAGE [OPTIONS]` (the kernel puts the image path, or
//! with the `O` flag its name, in `argv[1]`; what follows is what the user
//! typed after the image).
//!
//! The options ([`USAGE`]): `--same-ids`, `--lazy` (the task resumes
//! before its anonymous memory is in: a page server fills it through a
//! userfaultfd, `crate::lazy`), `--eager` (all of it is in before; without
//! either, a direct run is lazy where that wins, [`LoaderArgs::auto_lazy`]),
//! and those of a tree restore
//! (`crrestore-tree` execs each process's loader with them): `--tree`
//! (stdio is not inherited; `check::tree`), `--placed N` (repeatable:
//! fd N of the image is in place, kept as it is), `--shmem IDX=FD`
//! (repeatable: SHMEM object IDX, 1-based, is the memfd at FD;
//! `objects::shmem`), `--barrier R,G` (the plan's barrier, `plan::barrier`:
//! one byte written to R, one read from G, anything else exit 9),
//! `--report E` (every message to fd E; `message`). Every number is decimal,
//! without sign. The repeatable ones fill fixed tables (the loader has no
//! heap): at most [`MAX_PLACED`] and [`MAX_SHMEM`]; more is refused, as is
//! anything unknown or malformed, and the tree options without `--tree`.

use core::fmt;

use crate::sys::startup::Startup;

/// The most `--placed` fds: more than any tree restore places in one
/// process (the orchestrator places only the fds shared with other
/// processes of the tree, and the caller's stdio).
pub const MAX_PLACED: usize = 256;
/// The most `--shmem` objects.
pub const MAX_SHMEM: usize = 64;

/// The usage line every argument error ends with.
pub const USAGE: &str = "usage: crimg-loader IMAGE [--same-ids] [--lazy|--eager] [--tree [--placed N]... [--shmem IDX=FD]... [--barrier R,G] [--report E]]";

/// `--shmem IDX=FD`: object `index` (1-based, in the SHMEM note) is the
/// memfd open at `fd`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShmemFd {
    pub index: u32,
    pub fd: i32,
}

/// `--barrier R,G`: the plan writes one byte to `ready` once the memory and
/// the threads are back, then reads one from `go`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Barrier {
    pub ready: i32,
    pub go: i32,
}

/// What the arguments after the image ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderArgs {
    /// A thread id of the image that is taken is an error (exit 10),
    /// instead of a new tid for that thread.
    pub same_ids: bool,
    /// Fill private anonymous memory lazily, after the task resumes
    /// (`crate::lazy`), instead of before.
    pub lazy: bool,
    /// Fill it all before the task resumes, whatever its size.
    pub eager: bool,
    /// Run by the tree restorer: stdio is not inherited, only the
    /// [`placed`](Self::placed) fds are kept as they are.
    pub tree: bool,
    placed: [i32; MAX_PLACED],
    nplaced: usize,
    shmem: [ShmemFd; MAX_SHMEM],
    nshmem: usize,
    pub barrier: Option<Barrier>,
    /// Where every message of the loader goes instead of fd 2.
    pub report: Option<i32>,
}

impl Default for LoaderArgs {
    fn default() -> Self {
        LoaderArgs {
            same_ids: false,
            lazy: false,
            eager: false,
            tree: false,
            placed: [0; MAX_PLACED],
            nplaced: 0,
            shmem: [ShmemFd::default(); MAX_SHMEM],
            nshmem: 0,
            barrier: None,
            report: None,
        }
    }
}

impl LoaderArgs {
    /// Neither `--lazy` nor `--eager`, in a direct run: lazy when the
    /// image has enough for a page server to fill and a lazy restore can
    /// be made here (`check`), eager otherwise. A tree restore is eager
    /// (its processes wait for each other at the barrier, filled).
    pub fn auto_lazy(&self) -> bool {
        !self.lazy && !self.eager && !self.tree
    }

    /// The fds of the image already in place (`--placed`), in the order given.
    pub fn placed(&self) -> &[i32] {
        &self.placed[..self.nplaced]
    }

    /// The shared memory objects made by the orchestrator (`--shmem`).
    pub fn shmem(&self) -> &[ShmemFd] {
        &self.shmem[..self.nshmem]
    }

    /// Add a placed fd (for callers building the arguments themselves:
    /// tests, and tools that run stage 1 as the tree restorer would).
    pub fn place(&mut self, fd: i32) -> Result<(), ArgError> {
        if self.placed().contains(&fd) {
            return Err(ArgError::Twice { opt: "--placed" });
        }
        let slot = self.placed.get_mut(self.nplaced).ok_or(ArgError::TooMany {
            opt: "--placed",
            max: MAX_PLACED,
        })?;
        *slot = fd;
        self.nplaced += 1;
        Ok(())
    }

    /// Add a `--shmem` object.
    pub fn add_shmem(&mut self, s: ShmemFd) -> Result<(), ArgError> {
        if self.shmem().iter().any(|o| o.index == s.index) {
            return Err(ArgError::Twice { opt: "--shmem" });
        }
        let slot = self.shmem.get_mut(self.nshmem).ok_or(ArgError::TooMany {
            opt: "--shmem",
            max: MAX_SHMEM,
        })?;
        *slot = s;
        self.nshmem += 1;
        Ok(())
    }

    /// The fd `--shmem` gives for object `index` (1-based).
    pub fn shmem_fd(&self, index: u32) -> Option<i32> {
        self.shmem().iter().find(|s| s.index == index).map(|s| s.fd)
    }
}

/// An argument the loader refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Not an option the loader knows.
    Unknown { arg: &'static [u8] },
    /// The option needs a value and is last.
    MissingValue { opt: &'static str },
    /// The value of `opt` is not of the form `want`.
    BadValue {
        opt: &'static str,
        value: &'static [u8],
        want: &'static str,
    },
    /// More than `max` of a repeatable option.
    TooMany { opt: &'static str, max: usize },
    /// The same fd placed twice, the same object given twice, or a
    /// single option repeated.
    Twice { opt: &'static str },
    /// A tree option without `--tree`.
    NeedsTree { opt: &'static str },
    /// Two options that exclude each other.
    Both { a: &'static str, b: &'static str },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::message::Escaped;
        match *self {
            ArgError::Unknown { arg } => write!(f, "unknown argument {}", Escaped(arg))?,
            ArgError::MissingValue { opt } => write!(f, "{opt} needs a value")?,
            ArgError::BadValue { opt, value, want } => {
                write!(f, "{opt} {}: expected {want}", Escaped(value))?
            }
            ArgError::TooMany { opt, max } => write!(f, "more than {max} {opt} arguments")?,
            ArgError::Twice { opt } => write!(f, "{opt} given twice for the same value")?,
            ArgError::NeedsTree { opt } => write!(f, "{opt} is only for a tree restore (--tree)")?,
            ArgError::Both { a, b } => write!(f, "{a} and {b} exclude each other")?,
        }
        write!(f, "; {USAGE}")
    }
}

/// A decimal number without sign that fits a non-negative `i32`.
fn number(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    i32::try_from(n).ok()
}

/// `A<sep>B`, two numbers.
fn pair(s: &[u8], sep: u8) -> Option<(i32, i32)> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((number(&s[..at])?, number(&s[at + 1..])?))
}

/// Parse `args`, the arguments after the image.
pub fn parse_args<'a>(
    args: impl Iterator<Item = &'static [u8]> + 'a,
) -> Result<LoaderArgs, ArgError> {
    let mut out = LoaderArgs::default();
    let mut args = args;
    // The first tree option seen, to refuse it without `--tree`.
    let mut tree_opt = None;
    while let Some(arg) = args.next() {
        let opt = match arg {
            b"--same-ids" => {
                out.same_ids = true;
                continue;
            }
            b"--tree" => {
                out.tree = true;
                continue;
            }
            b"--lazy" => {
                out.lazy = true;
                continue;
            }
            b"--eager" => {
                out.eager = true;
                continue;
            }
            b"--placed" => "--placed",
            b"--shmem" => "--shmem",
            b"--barrier" => "--barrier",
            b"--report" => "--report",
            _ => return Err(ArgError::Unknown { arg }),
        };
        tree_opt.get_or_insert(opt);
        let value = args.next().ok_or(ArgError::MissingValue { opt })?;
        let bad = |want| ArgError::BadValue { opt, value, want };
        match opt {
            "--placed" => out.place(number(value).ok_or(bad("an fd number"))?)?,
            "--shmem" => {
                let (index, fd) = pair(value, b'=').ok_or(bad("IDX=FD"))?;
                let index = u32::try_from(index)
                    .ok()
                    .filter(|&i| i >= 1)
                    .ok_or(bad("IDX=FD with IDX from 1"))?;
                out.add_shmem(ShmemFd { index, fd })?;
            }
            "--barrier" => {
                let (ready, go) = pair(value, b',').ok_or(bad("R,G"))?;
                if out.barrier.replace(Barrier { ready, go }).is_some() {
                    return Err(ArgError::Twice { opt });
                }
            }
            _ => {
                let fd = number(value).ok_or(bad("an fd number"))?;
                if out.report.replace(fd).is_some() {
                    return Err(ArgError::Twice { opt });
                }
            }
        }
    }
    if out.lazy && out.eager {
        return Err(ArgError::Both {
            a: "--lazy",
            b: "--eager",
        });
    }
    match tree_opt {
        Some(opt) if !out.tree => Err(ArgError::NeedsTree { opt }),
        _ => Ok(out),
    }
}

/// The arguments of the running loader.
pub fn loader_args(startup: &Startup) -> Result<LoaderArgs, ArgError> {
    parse_args((2..startup.argc()).filter_map(|i| startup.arg(i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn parse(args: &[&'static str]) -> Result<LoaderArgs, ArgError> {
        parse_args(args.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn same_ids_or_nothing() {
        assert_eq!(parse(&[]), Ok(LoaderArgs::default()));
        assert_eq!(
            parse(&["--same-ids"]),
            Ok(LoaderArgs {
                same_ids: true,
                ..LoaderArgs::default()
            })
        );
        assert_eq!(
            parse(&["--lazy", "--same-ids"]),
            Ok(LoaderArgs {
                same_ids: true,
                lazy: true,
                ..LoaderArgs::default()
            })
        );
        assert_eq!(
            parse(&["--same-ids", "-x"]),
            Err(ArgError::Unknown { arg: b"-x" })
        );
    }

    #[test]
    fn lazy_eager_or_as_it_wins() {
        assert!(parse(&[]).unwrap().auto_lazy());
        let eager = parse(&["--eager"]).unwrap();
        assert!(eager.eager && !eager.lazy && !eager.auto_lazy());
        assert!(!parse(&["--lazy"]).unwrap().auto_lazy());
        assert!(!parse(&["--tree"]).unwrap().auto_lazy());
        let both = parse(&["--eager", "--lazy"]).unwrap_err();
        assert_eq!(
            both,
            ArgError::Both {
                a: "--lazy",
                b: "--eager"
            }
        );
        assert!(format!("{both}").starts_with("--lazy and --eager exclude each other; usage:"));
    }

    #[test]
    fn the_tree_options() {
        let a = parse(&[
            "--same-ids",
            "--tree",
            "--placed",
            "0",
            "--placed",
            "5",
            "--shmem",
            "1=40",
            "--shmem",
            "3=41",
            "--barrier",
            "42,43",
            "--report",
            "44",
        ])
        .unwrap();
        assert!(a.same_ids && a.tree);
        assert_eq!(a.placed(), &[0, 5]);
        assert_eq!(
            a.shmem(),
            &[ShmemFd { index: 1, fd: 40 }, ShmemFd { index: 3, fd: 41 }]
        );
        assert_eq!(a.shmem_fd(3), Some(41));
        assert_eq!(a.shmem_fd(2), None);
        assert_eq!(a.barrier, Some(Barrier { ready: 42, go: 43 }));
        assert_eq!(a.report, Some(44));
        // --tree alone, and the options in any order around it.
        assert!(parse(&["--tree"]).unwrap().placed().is_empty());
        assert_eq!(parse(&["--report", "9", "--tree"]).unwrap().report, Some(9));
    }

    #[test]
    fn tree_options_need_tree() {
        for args in [
            &["--placed", "1"][..],
            &["--shmem", "1=4"],
            &["--barrier", "4,5"],
            &["--report", "4"],
            &["--same-ids", "--report", "4", "--placed", "1"],
        ] {
            let e = parse(args).unwrap_err();
            assert!(matches!(e, ArgError::NeedsTree { .. }), "{args:?}: {e:?}");
        }
        assert_eq!(
            parse(&["--barrier", "4,5"]),
            Err(ArgError::NeedsTree { opt: "--barrier" })
        );
    }

    #[test]
    fn malformed_values_are_refused_with_the_usage() {
        let bad = |args: &[&'static str]| {
            let e = parse(args).unwrap_err();
            let text = format!("{e}");
            assert!(text.ends_with(USAGE), "{text}");
            e
        };
        assert_eq!(
            bad(&["--tree", "--placed"]),
            ArgError::MissingValue { opt: "--placed" }
        );
        for v in ["", "-1", "+1", "x", "1x", "99999999999", "2147483648"] {
            let args: &[&'static str] = &["--tree", "--placed", v];
            assert!(
                matches!(
                    bad(args),
                    ArgError::BadValue {
                        opt: "--placed",
                        ..
                    }
                ),
                "{v:?}"
            );
        }
        for v in ["1", "=4", "1=", "0=4", "1,4", "a=b", "1=4=5"] {
            let args: &[&'static str] = &["--tree", "--shmem", v];
            assert!(
                matches!(bad(args), ArgError::BadValue { opt: "--shmem", .. }),
                "{v:?}"
            );
        }
        for v in ["4", "4,", ",5", "4;5", "4,5,6"] {
            let args: &[&'static str] = &["--tree", "--barrier", v];
            assert!(
                matches!(
                    bad(args),
                    ArgError::BadValue {
                        opt: "--barrier",
                        ..
                    }
                ),
                "{v:?}"
            );
        }
        assert_eq!(
            bad(&["--tree", "--placed", "3", "--placed", "3"]),
            ArgError::Twice { opt: "--placed" }
        );
        assert_eq!(
            bad(&["--tree", "--shmem", "1=5", "--shmem", "1=6"]),
            ArgError::Twice { opt: "--shmem" }
        );
        assert_eq!(
            bad(&["--tree", "--report", "5", "--report", "6"]),
            ArgError::Twice { opt: "--report" }
        );
        assert_eq!(
            bad(&["--tree", "--barrier", "5,6", "--barrier", "7,8"]),
            ArgError::Twice { opt: "--barrier" }
        );
        assert_eq!(
            bad(&["--tree", "--placed=3"]),
            ArgError::Unknown { arg: b"--placed=3" }
        );
    }

    #[test]
    fn the_tables_are_bounded() {
        let numbers: Vec<&'static str> = (0..=MAX_PLACED)
            .map(|i| &*std::format!("{i}").leak())
            .collect();
        let mut args = std::vec!["--tree"];
        for n in &numbers[..MAX_PLACED] {
            args.extend(["--placed", n]);
        }
        assert_eq!(parse(&args).unwrap().placed().len(), MAX_PLACED);
        args.extend(["--placed", numbers[MAX_PLACED]]);
        assert_eq!(
            parse(&args),
            Err(ArgError::TooMany {
                opt: "--placed",
                max: MAX_PLACED
            })
        );
        let specs: Vec<&'static str> = (1..=MAX_SHMEM + 1)
            .map(|i| &*std::format!("{i}=9").leak())
            .collect();
        let mut args = std::vec!["--tree"];
        for s in &specs[..MAX_SHMEM] {
            args.extend(["--shmem", s]);
        }
        assert_eq!(parse(&args).unwrap().shmem().len(), MAX_SHMEM);
        args.extend(["--shmem", specs[MAX_SHMEM]]);
        assert_eq!(
            parse(&args),
            Err(ArgError::TooMany {
                opt: "--shmem",
                max: MAX_SHMEM
            })
        );
    }
}
