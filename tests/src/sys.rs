//! Raw syscalls that neither std nor nix wrap: pidfds.
//!
//! A pidfd names one process for good: signalling or polling through it can
//! never hit another process that later got the same pid number, which is
//! what makes kill-on-drop guards for processes that are not our children
//! safe.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `pidfd_open(pid, 0)`: a file descriptor referring to process `pid`.
///
/// # References
/// pidfd_open(2)
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns; OwnedFd closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: send `sig` to the process the
/// pidfd refers to.
///
/// # References
/// pidfd_send_signal(2)
pub fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: a NULL siginfo pointer is allowed (the kernel fills in a
    // SI_USER siginfo); the other arguments are plain integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll([{fd, POLLIN}], 1, timeout)`: whether `fd` became readable within
/// `timeout` (for a pidfd: the process exited).
///
/// # References
/// poll(2)
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `entry` is one valid pollfd that lives across the call,
        // and the count passed is 1.
        let ret = unsafe { libc::poll(&mut entry, 1, millis) };
        if ret >= 0 {
            return Ok(ret > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `kill(pid, sig)` for any signal number, real-time ones included (nix's
/// `Signal` has only the classic signals).
///
/// # References
/// kill(2)
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    let ret = unsafe { libc::kill(pid, sig) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `command`'s child close every descriptor above 2 before it execs:
/// `close_range(3, ~0U, 0)`. A workload must start with just its stdio, not
/// with whatever the test runner happened to inherit (a stray pipe would be
/// dumped, or refused, as the workload's own).
///
/// # References
/// close_range(2)
pub fn close_fds_above_stdio(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one raw syscall, which is async-signal-safe and allocates
    // nothing; std's own pipes for the child's stdio are dup2'd onto 0-2
    // before pre_exec closures run.
    unsafe {
        command.pre_exec(|| {
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `sigqueue(pid, sig, value)`: a signal with `si_code` SI_QUEUE, which
/// (real-time) needs a queue entry under `RLIMIT_SIGPENDING`.
pub fn sigqueue(pid: i32, sig: i32, value: usize) -> io::Result<()> {
    let value = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    // SAFETY: plain syscall wrapper; `value` is passed by value.
    let ret = unsafe { libc::sigqueue(pid, sig, value) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
