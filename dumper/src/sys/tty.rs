//! Terminal modes of another process's terminal, through a copy of its
//! open file (`pidfd_getfd`: the same open file, so `/dev/tty` means the
//! task's controlling terminal, not ours): `TCGETS` and `TIOCGWINSZ`.
//!
//! # Safety
//!
//! The ioctls write one kernel structure into a live value of exactly that
//! layout (sizes asserted in `image_format::records`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use image_format::records::{KernelTermios, Winsize};

/// `ioctl(fd, TCGETS, &termios)`: the terminal's modes (ENOTTY: not a terminal).
///
/// # References
/// `ioctl_tty(2)`.
pub fn termios(fd: &OwnedFd) -> io::Result<KernelTermios> {
    let mut t = KernelTermios::default();
    // SAFETY: TCGETS writes one kernel `struct termios` (36 bytes, the
    // layout of `KernelTermios`) at the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &raw mut t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

/// `ioctl(fd, TIOCGWINSZ, &winsize)`: the terminal's window size.
///
/// # References
/// `ioctl_tty(2)`.
pub fn winsize(fd: &OwnedFd) -> io::Result<Winsize> {
    let mut w = Winsize::default();
    // SAFETY: TIOCGWINSZ writes one `struct winsize` (8 bytes, the layout
    // of `Winsize`) at the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut w) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(w)
}
