//! The system calls that create the kernel objects behind fds (pipes,
//! eventfds) in stage 1.

use super::{fd_of, int_arg, result, syscall6, Errno, O_CLOEXEC, O_NONBLOCK};

const PIPE2: u64 = 293;
const EVENTFD2: u64 = 290;
const F_SETPIPE_SZ: u64 = 1031;

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end).
pub fn pipe() -> Result<(i32, i32), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: the kernel writes two ints into `fds`, which lives through
    // the call.
    let r = unsafe {
        syscall6(
            PIPE2,
            fds.as_mut_ptr() as u64,
            u64::from(O_CLOEXEC | O_NONBLOCK),
            0,
            0,
            0,
            0,
        )
    };
    result(r)?;
    Ok((fds[0], fds[1]))
}

/// `fcntl(fd, F_SETPIPE_SZ, size)`: the size the kernel set.
pub fn set_pipe_size(fd: i32, size: u32) -> Result<u32, Errno> {
    // SAFETY: resizing a pipe touches no memory of ours.
    let r = unsafe {
        syscall6(
            super::nr::FCNTL,
            int_arg(fd),
            F_SETPIPE_SZ,
            u64::from(size),
            0,
            0,
            0,
        )
    };
    result(r).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// `eventfd2(0, flags)` (`EFD_*` share the `O_*` values of CLOEXEC and
/// NONBLOCK; `EFD_SEMAPHORE` is 1).
pub fn eventfd(flags: u32) -> Result<i32, Errno> {
    // SAFETY: creating an eventfd touches no memory of ours.
    let r = unsafe { syscall6(EVENTFD2, 0, u64::from(flags), 0, 0, 0, 0) };
    result(r).and_then(fd_of)
}

const FIONREAD: u64 = 0x541b;
const IOCTL: u64 = 16;

/// `ioctl(fd, FIONREAD)`: the bytes waiting in a pipe.
pub fn bytes_waiting(fd: i32) -> Result<usize, Errno> {
    let mut n: i32 = 0;
    // SAFETY: FIONREAD writes one int to `n`, which lives through the call.
    let r = unsafe { syscall6(IOCTL, int_arg(fd), FIONREAD, (&raw mut n) as u64, 0, 0, 0) };
    result(r)?;
    usize::try_from(n).map_err(|_| Errno::EINVAL)
}
