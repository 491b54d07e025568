//! The system calls that make sockets in stage 1: `socket`, `socketpair`,
//! `setsockopt`, `bind`, `listen`, `connect` (to tell a stale unix socket
//! file from a live one), `sendto` (refilling queues), `shutdown`, and
//! `unlinkat` of a stale socket file.
//!
//! # References
//! `socket(2)`, `socketpair(2)`, `setsockopt(2)`, `bind(2)`, `listen(2)`,
//! `connect(2)`, `send(2)`, `shutdown(2)`, `unlink(2)`.

use super::{fd_of, int_arg, result, syscall6, Errno, O_CLOEXEC, O_NONBLOCK};

const SOCKET: u64 = 41;
const CONNECT: u64 = 42;
const SENDTO: u64 = 44;
const SHUTDOWN: u64 = 48;
const BIND: u64 = 49;
const LISTEN: u64 = 50;
const SOCKETPAIR: u64 = 53;
const SETSOCKOPT: u64 = 54;

const AF_UNIX: u64 = 1;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_NOSIGNAL: u64 = 0x4000;

/// `SOCK_CLOEXEC | SOCK_NONBLOCK` (the `O_*` values): nothing in stage 1
/// may block, and nothing it makes may leak into an exec.
fn type_flags(sock_type: u32) -> u64 {
    u64::from(sock_type | O_CLOEXEC | O_NONBLOCK)
}

/// `socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol)`.
pub fn socket(family: u32, sock_type: u32, protocol: u32) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    let r = unsafe {
        syscall6(
            SOCKET,
            u64::from(family),
            type_flags(sock_type),
            u64::from(protocol),
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `socketpair(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)`.
pub fn socketpair(sock_type: u32) -> Result<(i32, i32), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: the kernel writes two ints into `fds`, which lives through
    // the call.
    let r = unsafe {
        syscall6(
            SOCKETPAIR,
            AF_UNIX,
            type_flags(sock_type),
            0,
            fds.as_mut_ptr() as u64,
            0,
            0,
        )
    };
    result(r)?;
    Ok((fds[0], fds[1]))
}

/// `setsockopt(fd, level, name, value, len)`.
pub fn setsockopt(fd: i32, level: u32, name: u32, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: the kernel reads `value.len()` bytes from a live slice.
    let r = unsafe {
        syscall6(
            SETSOCKOPT,
            int_arg(fd),
            u64::from(level),
            u64::from(name),
            value.as_ptr() as u64,
            value.len() as u64,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `bind(fd, addr, len)` (`connect` with `connect` true).
pub fn bind_or_connect(fd: i32, addr: &[u8], connect: bool) -> Result<(), Errno> {
    // SAFETY: the kernel reads `addr.len()` bytes from a live slice.
    let r = unsafe {
        syscall6(
            if connect { CONNECT } else { BIND },
            int_arg(fd),
            addr.as_ptr() as u64,
            addr.len() as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `listen(fd, backlog)`.
pub fn listen(fd: i32, backlog: u32) -> Result<(), Errno> {
    // SAFETY: integer arguments only.
    let r = unsafe { syscall6(LISTEN, int_arg(fd), u64::from(backlog), 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `sendto(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, NULL, 0)`: one
/// message of a datagram socket, or bytes of a stream; how many were
/// taken.
pub fn send(fd: i32, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel reads `buf.len()` bytes from a live slice.
    let r = unsafe {
        syscall6(
            SENDTO,
            int_arg(fd),
            buf.as_ptr() as u64,
            buf.len() as u64,
            MSG_DONTWAIT | MSG_NOSIGNAL,
            0,
            0,
        )
    };
    result(r).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// `shutdown(fd, how)`.
pub fn shutdown(fd: i32, how: u32) -> Result<(), Errno> {
    // SAFETY: integer arguments only.
    let r = unsafe { syscall6(SHUTDOWN, int_arg(fd), u64::from(how), 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `umask(mask)`: the old mask (a unix socket file is made with the
/// permissions the umask leaves).
pub fn umask(mask: u32) -> u32 {
    // SAFETY: integer argument only; umask cannot fail.
    let r = unsafe { syscall6(super::nr::UMASK, u64::from(mask & 0o777), 0, 0, 0, 0, 0) };
    result(r).map_or(0o022, |m| u32::try_from(m).unwrap_or(0o022))
}
