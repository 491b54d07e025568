//! Terminals at any fd: which of the task's terminal fds can come back on a
//! direct run (the task resumes in the caller's terminal) and how, and the
//! terminal's modes (termios, window size) the loader puts back.
//!
//! - fd 0–2 on a terminal: the caller's (inherited);
//! - another fd on the same terminal as a stdio fd (less's and top's fd 3,
//!   bash's fd 255): a duplicate of the caller's stdio fd;
//! - `/dev/tty` (device 5:0): opened again, the caller's controlling
//!   terminal;
//! - anything else (another pty, a pty master, a console the stdio is not
//!   on) is refused by name.
//!
//! [`plan_terminals`] is pure: the collector hands in each terminal fd's
//! link and device number and the controlling terminal from
//! `/proc/PID/stat`; [`modes_of`] reads the modes through a copy of the
//! task's own file.

use image_format::records::{
    terminal_flags, terminal_resume, KernelTermios, TerminalRecord, Winsize,
};
use image_format::text::Escaped;

/// `/dev/tty`'s device number (5, 0).
const DEV_TTY: (u64, u64) = (5, 0);
/// The pty multiplexer `/dev/ptmx` and `/dev/pts/ptmx` (5, 2): a pty master.
const PTMX: (u64, u64) = (5, 2);

/// `(major, minor)` of a `dev_t` in glibc's encoding (which `/proc/PID/stat`'s
/// `tty_nr` also uses for the numbers that fit it).
pub fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// One terminal fd of the task, as the collector found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalFd {
    pub fd: i32,
    /// `readlink /proc/PID/fd/N`.
    pub link: String,
    /// `st_rdev` of the open file.
    pub rdev: u64,
}

/// A terminal's modes, read through one of the task's fds on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalModes {
    pub termios: Option<KernelTermios>,
    pub winsize: Option<Winsize>,
}

/// The modes of the terminal behind `file` (a copy of the task's fd).
pub fn modes_of(file: &std::os::fd::OwnedFd) -> std::io::Result<TerminalModes> {
    Ok(TerminalModes {
        termios: Some(crate::sys::tty::termios(file)?),
        // Without a size (never set: 0x0 is what it answers then) the
        // modes still count.
        winsize: crate::sys::tty::winsize(file).ok(),
    })
}

/// How the terminal fds come back: one record per fd, in fd order, and for
/// each the terminal it is on (`rdev`), whose modes the caller reads
/// ([`needs_modes`](TerminalPlan::needs_modes)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalPlan {
    pub records: Vec<TerminalRecord>,
}

impl TerminalPlan {
    /// The fds whose terminal's modes belong in their record: the lowest fd
    /// on each terminal.
    pub fn needs_modes(&self) -> impl Iterator<Item = i32> + '_ {
        self.records.iter().enumerate().filter_map(|(i, r)| {
            let first = !self.records[..i].iter().any(|o| o.rdev == r.rdev);
            first.then_some(r.fd)
        })
    }

    /// Put `modes` (read through fd `fd`) in that fd's record.
    pub fn set_modes(&mut self, fd: i32, modes: TerminalModes) {
        if let Some(r) = self.records.iter_mut().find(|r| r.fd == fd) {
            if let Some(t) = modes.termios {
                r.termios = t;
                r.flags |= terminal_flags::MODES;
            }
            if let Some(w) = modes.winsize {
                r.winsize = w;
                r.flags |= terminal_flags::WINSIZE;
            }
        }
    }
}

/// Decide how each terminal fd resumes. `ctty` is the controlling
/// terminal's device number (`tty_nr` of `/proc/PID/stat`, 0: none).
/// Returns the plan and, separately, one refusal line per fd that cannot
/// come back (the link is the target's choice: shown escaped).
pub fn plan_terminals(fds: &[TerminalFd], ctty: u64) -> (TerminalPlan, Vec<String>) {
    // The terminal each fd is on: `/dev/tty` stands for the controlling one.
    let terminal_of = |f: &TerminalFd| {
        if major_minor(f.rdev) == DEV_TTY {
            ctty
        } else {
            f.rdev
        }
    };
    let mut plan = TerminalPlan::default();
    let mut refusals = Vec::new();
    for f in fds {
        let link = Escaped(f.link.as_bytes());
        let rdev = terminal_of(f);
        let (resume, stdio_fd) = if (0..=2).contains(&f.fd) {
            (terminal_resume::STDIO, -1)
        } else if major_minor(f.rdev) == DEV_TTY {
            (terminal_resume::DEV_TTY, -1)
        } else if major_minor(f.rdev) == PTMX {
            refusals.push(format!(
                "fd {} is a pty master ({link}): pty masters are not saved yet",
                f.fd
            ));
            continue;
        } else if let Some(s) = fds
            .iter()
            .find(|s| (0..=2).contains(&s.fd) && terminal_of(s) == rdev && rdev != 0)
        {
            (terminal_resume::DUP_STDIO, s.fd)
        } else {
            let (major, minor) = major_minor(f.rdev);
            refusals.push(format!(
                "fd {} is a terminal ({link}, device {major}:{minor}) that none of its fds 0-2 is on: only the stdio's terminal is restored (as the caller's)",
                f.fd
            ));
            continue;
        };
        plan.records.push(TerminalRecord {
            fd: f.fd,
            resume,
            stdio_fd,
            rdev,
            ..TerminalRecord::default()
        });
    }
    (plan, refusals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's `makedev`.
    fn dev(major: u64, minor: u64) -> u64 {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    fn tty(fd: i32, link: &str, rdev: u64) -> TerminalFd {
        TerminalFd {
            fd,
            link: link.to_owned(),
            rdev,
        }
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(major_minor(dev(136, 3)), (136, 3));
        assert_eq!(major_minor(dev(136, 300)), (136, 300));
        assert_eq!(major_minor(dev(5, 0)), DEV_TTY);
        // tty_nr of a process on /dev/pts/1: 34817 = 136 << 8 | 1.
        assert_eq!(major_minor(34817), (136, 1));
    }

    #[test]
    fn an_fd_on_the_stdio_terminal_resumes_as_a_dup_of_the_stdio_fd() {
        let pts = dev(136, 2);
        let fds = [
            tty(0, "/dev/pts/2", pts),
            tty(1, "/dev/pts/2", pts),
            tty(3, "/dev/pts/2", pts),
            tty(255, "/dev/pts/2", pts),
        ];
        let (plan, refusals) = plan_terminals(&fds, pts);
        assert!(refusals.is_empty(), "{refusals:?}");
        let resumes: Vec<_> = plan
            .records
            .iter()
            .map(|r| (r.fd, r.resume, r.stdio_fd))
            .collect();
        assert_eq!(
            resumes,
            [
                (0, terminal_resume::STDIO, -1),
                (1, terminal_resume::STDIO, -1),
                (3, terminal_resume::DUP_STDIO, 0),
                (255, terminal_resume::DUP_STDIO, 0),
            ]
        );
        // One terminal: its modes go in fd 0's record only.
        assert_eq!(plan.needs_modes().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn dev_tty_is_opened_again_and_stands_for_the_controlling_terminal() {
        let pts = dev(136, 7);
        // `cat file | less`: stdin a pipe, stdout the terminal, /dev/tty open.
        let fds = [tty(1, "/dev/pts/7", pts), tty(3, "/dev/tty", dev(5, 0))];
        let (plan, refusals) = plan_terminals(&fds, pts);
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(plan.records[1].resume, terminal_resume::DEV_TTY);
        assert_eq!(plan.records[1].rdev, pts);
        // The same terminal as fd 1: modes once.
        assert_eq!(plan.needs_modes().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn another_terminal_and_a_pty_master_are_refused_by_name() {
        let fds = [
            tty(0, "/dev/pts/1", dev(136, 1)),
            tty(4, "/dev/pts/9", dev(136, 9)),
            tty(5, "/dev/ptmx", dev(5, 2)),
            tty(6, "/dev/tty1\n", dev(4, 1)),
        ];
        let (plan, refusals) = plan_terminals(&fds, dev(136, 1));
        assert_eq!(plan.records.len(), 1);
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(refusals[0].starts_with("fd 4 is a terminal (/dev/pts/9, device 136:9)"));
        assert!(refusals[1].starts_with("fd 5 is a pty master (/dev/ptmx)"));
        assert!(
            refusals[2].contains("(/dev/tty1\\n, device 4:1)"),
            "{}",
            refusals[2]
        );
    }

    #[test]
    fn without_a_terminal_on_stdio_an_fd_on_one_is_refused() {
        // A daemon that opened a pty itself (its stdio are files).
        let (plan, refusals) = plan_terminals(&[tty(3, "/dev/pts/4", dev(136, 4))], 0);
        assert!(plan.records.is_empty());
        assert_eq!(refusals.len(), 1);
    }

    #[test]
    fn modes_land_in_the_record_they_were_read_for() {
        let pts = dev(136, 2);
        let (mut plan, _) = plan_terminals(&[tty(0, "/dev/pts/2", pts)], pts);
        let termios = KernelTermios {
            lflag: 0o12,
            ..KernelTermios::default()
        };
        let winsize = Winsize {
            rows: 30,
            cols: 100,
            ..Winsize::default()
        };
        plan.set_modes(
            0,
            TerminalModes {
                termios: Some(termios),
                winsize: Some(winsize),
            },
        );
        let r = plan.records[0];
        assert_eq!(r.flags, terminal_flags::MODES | terminal_flags::WINSIZE);
        assert_eq!((r.termios, r.winsize), (termios, winsize));
    }
}
