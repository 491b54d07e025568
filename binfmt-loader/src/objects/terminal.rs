//! Terminals: the task resumes in the caller's terminal. Stdio fds on a
//! terminal are the caller's (inherited, see `rules::fd_is_inherited`);
//! another fd that was on the same terminal as stdio fd S becomes a
//! duplicate of the caller's fd S, which must be a terminal; `/dev/tty` is
//! opened again (the caller's controlling terminal).
//!
//! The terminal's saved modes go back on the terminal the task resumes on
//! ([`setups`], applied by the plan after the fds are in place): the
//! termios as they were, the window size only where the terminal has none
//! (0x0: the caller's terminal knows its own size better than the image),
//! then a SIGWINCH ([`with_sigwinch`]) so that full-screen programs ask
//! the size and redraw.

use image_format::records::{
    terminal_flags, terminal_resume, FdRecord, KernelTermios, PendingSignalRecord, TerminalRecord,
    Winsize,
};
use image_format::Image;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::scratch::Scratch;
use crate::check::CheckError;
use crate::sys::{O_CLOEXEC, O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC};

/// `SIGWINCH`.
const SIGWINCH: u32 = 28;
/// `SI_KERNEL`: the code of the SIGWINCH a terminal sends on a resize.
const SI_KERNEL: i32 = 0x80;

/// What the plan sets on one terminal the task resumes on.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TerminalSetup {
    /// The task's fd on it (at its final number when the plan runs).
    pub fd: i32,
    /// 1: also set `winsize` (the terminal has no size of its own).
    pub set_winsize: u32,
    pub termios: KernelTermios,
    pub winsize: Winsize,
}
const _: () = assert!(core::mem::size_of::<TerminalSetup>() == 52);

fn record_of(image: &Image<'static>, f: &FdRecord) -> Result<TerminalRecord, CheckError> {
    image
        .records::<TerminalRecord>()
        .map_err(|error| CheckError::Corrupt { error })?
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })
}

/// The fd (above `base`) that fd record `f`, on a terminal, resumes as.
/// Its status flags are the caller's terminal's where it is a duplicate
/// (they belong to the caller's open file); an opened `/dev/tty` gets the
/// recorded ones.
pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
) -> Result<i32, CheckError> {
    let r = record_of(image, f)?;
    match r.resume {
        terminal_resume::DUP_STDIO if (0..=2).contains(&r.stdio_fd) => {
            if os.window_size(r.stdio_fd).is_err() {
                return Err(CheckError::NotOnTerminal {
                    fd: f.fd,
                    stdio_fd: r.stdio_fd,
                });
            }
            os.dup_above(r.stdio_fd, base)
                .map_err(failed(f, "duplicate the caller's terminal"))
        }
        terminal_resume::DEV_TTY => {
            let flags =
                f.open_flags & !(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC) | O_NOCTTY | O_CLOEXEC;
            let fd = os.open(b"/dev/tty", flags).map_err(failed(
                f,
                "open /dev/tty (the task's controlling terminal; does this process have one?)",
            ))?;
            lift(os, fd, base).map_err(failed(f, "move /dev/tty"))
        }
        _ => Err(CheckError::ObjectMissing { fd: f.fd }),
    }
}

/// Fd record `f` shares the open file of the task's stdio fd `from` on a
/// terminal (bash's fd 255): it becomes a copy of the caller's fd there,
/// which must then be a terminal too.
pub fn check_copy_of_stdio(os: &impl Os, f: &FdRecord, from: i32) -> Result<(), CheckError> {
    if (0..=2).contains(&from) && f.fd > 2 && os.window_size(from).is_err() {
        return Err(CheckError::NotOnTerminal {
            fd: f.fd,
            stdio_fd: from,
        });
    }
    Ok(())
}

/// The modes to set, one per terminal the task resumes on. A stdio
/// terminal whose fd the caller gave as something else (a pipe, a file) is
/// left alone: the task's stdio is whatever the caller gives it.
pub fn setups(
    os: &impl Os,
    image: &Image<'static>,
    scratch: &mut Scratch,
    max: usize,
) -> Result<&'static [TerminalSetup], CheckError> {
    let records = image
        .records::<TerminalRecord>()
        .map_err(|error| CheckError::Corrupt { error })?;
    let n = usize::try_from(records.len())
        .unwrap_or(usize::MAX)
        .min(max);
    let out = scratch.take::<TerminalSetup>("terminal modes", n)?;
    let mut len = 0;
    for r in records.filter(|r| r.flags & terminal_flags::MODES != 0) {
        // The terminal it resumes on, as this process has it now.
        let size = match r.resume {
            terminal_resume::STDIO => os.window_size(r.fd),
            terminal_resume::DUP_STDIO => os.window_size(r.stdio_fd),
            terminal_resume::DEV_TTY => match os.open(b"/dev/tty", O_NOCTTY | O_CLOEXEC) {
                Ok(fd) => {
                    let size = os.window_size(fd);
                    os.close(fd);
                    size
                }
                Err(e) => Err(e),
            },
            _ => continue,
        };
        let Ok(size) = size else {
            continue;
        };
        let Some(slot) = out.get_mut(len) else {
            break;
        };
        let sizeless = size.rows == 0 && size.cols == 0;
        *slot = TerminalSetup {
            fd: r.fd,
            set_winsize: u32::from(sizeless && r.flags & terminal_flags::WINSIZE != 0),
            termios: r.termios,
            winsize: r.winsize,
        };
        len += 1;
    }
    Ok(&out[..len])
}

/// The pending signals to queue: the recorded ones, and a SIGWINCH (as a
/// terminal sends it, `SI_KERNEL`) when a terminal's modes are set.
pub fn with_sigwinch(
    pending: &'static [PendingSignalRecord],
    setups: &[TerminalSetup],
    scratch: &mut Scratch,
) -> Result<&'static [PendingSignalRecord], CheckError> {
    if setups.is_empty() {
        return Ok(pending);
    }
    let out = scratch.take::<PendingSignalRecord>("pending signals", pending.len() + 1)?;
    out[..pending.len()].copy_from_slice(pending);
    let mut siginfo = [0u8; 128];
    siginfo[0..4].copy_from_slice(&SIGWINCH.to_le_bytes());
    siginfo[8..12].copy_from_slice(&SI_KERNEL.to_le_bytes());
    out[pending.len()] = PendingSignalRecord {
        tid: 0,
        _pad: 0,
        siginfo,
    };
    Ok(out)
}
