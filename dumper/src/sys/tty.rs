//! Terminal modes of another process's terminal: its open file taken with
//! `pidfd_getfd` (the same open file, so `/dev/tty` means the task's
//! controlling terminal, not ours), then `TCGETS` and `TIOCGWINSZ` on it.
//!
//! # Safety
//!
//! The ioctls write one kernel structure into a live value of exactly that
//! layout (sizes asserted in `image_format::records`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use image_format::records::{KernelTermios, Winsize};

/// `pidfd_open(pid, 0)` then `pidfd_getfd(pidfd, fd, 0)`: a duplicate, in
/// this process, of fd `fd` of process `pid` (close-on-exec).
///
/// # References
/// `pidfd_open(2)`, `pidfd_getfd(2)`: needs ptrace access to `pid`.
pub fn steal_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: no pointer is passed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; it is owned here only.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).map_err(io::Error::other)?) };
    // SAFETY: no pointer is passed.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel installed for us.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(got).map_err(io::Error::other)?) })
}

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
