//! Terminals ([`TerminalRecord`], note `TERMINALS`): how each terminal fd of
//! the task comes back on a direct run, and the terminal's modes.
//!
//! A task resumes in the caller's terminal (its stdio is inherited), so a
//! terminal fd is one of: a stdio fd on a terminal; another fd on the same
//! terminal as a stdio fd (less's and top's fd 3, bash's fd 255), restored
//! as a duplicate of the caller's stdio fd; or `/dev/tty`, opened again
//! (the caller's controlling terminal). Any other terminal (another pty, a
//! pty master) is refused by the dumper.
//!
//! The modes are the terminal's, not an fd's: the record of the lowest fd on
//! a terminal carries them ([`terminal_flags::MODES`]), and the loader sets
//! them on the terminal that fd resumes on, then sends the task a SIGWINCH
//! so full-screen programs redraw.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record};

/// [`TerminalRecord::resume`]: how the fd is restored.
pub mod terminal_resume {
    /// Fd 0, 1 or 2 on a terminal: the caller's fd, inherited.
    pub const STDIO: u32 = 1;
    /// Another fd on the terminal of stdio fd [`super::TerminalRecord::stdio_fd`]:
    /// a duplicate of the caller's fd there (which must be a terminal).
    pub const DUP_STDIO: u32 = 2;
    /// `/dev/tty` (the controlling terminal), opened again by that name.
    pub const DEV_TTY: u32 = 3;
}

/// [`TerminalRecord::flags`] bits.
pub mod terminal_flags {
    /// [`super::TerminalRecord::termios`] holds the terminal's modes, to be
    /// set on the terminal this fd resumes on.
    pub const MODES: u32 = 1;
    /// [`super::TerminalRecord::winsize`] holds the terminal's window size.
    pub const WINSIZE: u32 = 2;
}

/// The kernel's `struct termios` as `TCGETS` fills it (`asm-generic/termbits.h`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct KernelTermios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// `NCCS` = 19 control characters.
    pub cc: [u8; 19],
}
const _: () = assert!(core::mem::size_of::<KernelTermios>() == 36);

/// `struct winsize` (`TIOCGWINSZ`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}
const _: () = assert!(core::mem::size_of::<Winsize>() == 8);

/// One terminal fd (or one open file description on a terminal).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TerminalRecord {
    /// The (lowest) fd of this description.
    pub fd: i32,
    /// One of [`terminal_resume`].
    pub resume: u32,
    /// For [`terminal_resume::DUP_STDIO`]: the stdio fd (0–2) on the same
    /// terminal; −1 otherwise.
    pub stdio_fd: i32,
    /// [`terminal_flags`] bits.
    pub flags: u32,
    /// The terminal's device number at the dump (`st_rdev`; for `/dev/tty`
    /// the controlling terminal's, from `/proc/PID/stat`), for `crimg info`
    /// and to tell which fds share a terminal.
    pub rdev: u64,
    pub termios: KernelTermios,
    pub _pad: u32,
    pub winsize: Winsize,
}
const _: () = assert!(core::mem::size_of::<TerminalRecord>() == 72);
impl Record for TerminalRecord {
    const NOTE_TYPE: u32 = note::TERMINALS;
}
