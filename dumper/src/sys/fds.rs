//! Another process's fds: taking a copy of one (`pidfd_getfd`), telling
//! whether two share one open file description (`kcmp`), and the pipe
//! calls that read a pipe's buffered bytes without consuming them.
//!
//! # Safety
//!
//! Every call passes integers, or pointers to buffers owned by the caller
//! with their lengths; every returned fd is owned at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `kcmp` type comparing two fds' open file descriptions.
const KCMP_FILE: libc::c_int = 0;

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a copy of the target's fd `fd`, on the
/// same open file description (close-on-exec here).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// Whether fd `a` and fd `b` of process `pid` are one open file
/// description (`kcmp(pid, pid, KCMP_FILE, a, b) == 0`).
pub fn same_description(pid: i32, a: i32, b: i32) -> io::Result<bool> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// Whether fd `a` of process `pa` and fd `b` of process `pb` are one open
/// file description.
pub fn same_description_across(pa: i32, a: i32, pb: i32, b: i32) -> io::Result<bool> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb, KCMP_FILE, a, b) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two fds.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owned(fds[0].into())?, owned(fds[1].into())?))
}

/// `fcntl(F_GETPIPE_SZ)`.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    u32::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `fcntl(F_SETPIPE_SZ, size)`: the size the kernel set.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: u32) -> io::Result<u32> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: integer arguments only.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    u32::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `ioctl(FIONREAD)`: the bytes waiting in a pipe or socket.
pub fn bytes_waiting(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `n`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `tee(from, to, len, SPLICE_F_NONBLOCK)`: copy up to `len` buffered
/// bytes of pipe `from` into pipe `to` without consuming them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: integer arguments only.
    let r = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// `kcmp` type comparing two processes' address spaces.
const KCMP_VM: libc::c_int = 1;

/// Whether processes `a` and `b` share one address space
/// (`kcmp(a, b, KCMP_VM, 0, 0) == 0`): a `vfork()` child that has not
/// called `execve` yet, or a `clone(CLONE_VM)` child.
pub fn same_address_space(a: i32, b: i32) -> io::Result<bool> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}
