//! Socket calls on a copy of the task's socket (taken with `pidfd_getfd`):
//! options, addresses, `TCP_INFO`, and peeking at the queued data without
//! consuming it.
//!
//! # Safety
//!
//! Every call passes integers, or pointers to buffers owned by the caller
//! with their lengths; every returned fd is owned at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEEK_OFF` (asm-generic/socket.h).
pub const SO_PEEK_OFF: i32 = 42;
/// `SO_MEMINFO`: `u32[SK_MEMINFO_VARS]`, `[0]` the receive memory in use.
const SO_MEMINFO: i32 = 55;
const SK_MEMINFO_VARS: usize = 9;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(libc::socklen_t::MAX)
}

/// `getsockopt(fd, level, name, buf)`: the bytes the kernel wrote.
pub fn getsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = socklen(buf.len());
    // SAFETY: the kernel writes at most `len` bytes into `buf` and the
    // length written into `len`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    })?;
    Ok(usize::try_from(len).unwrap_or(0).min(buf.len()))
}

/// `getsockopt` of an `int` option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt(fd, level, name, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

/// `setsockopt(fd, level, name, value)`.
pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    let len = socklen(value.len());
    // SAFETY: the kernel reads `value.len()` bytes from `value`.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) })?;
    Ok(())
}

/// `setsockopt` of an `int` option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    setsockopt(fd, level, name, &value.to_ne_bytes())
}

/// The receive memory in use (`SO_MEMINFO`'s `SK_MEMINFO_RMEM_ALLOC`):
/// non-zero while data waits, even a zero-length datagram.
pub fn receive_memory(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut b = [0u8; 4 * SK_MEMINFO_VARS];
    getsockopt(fd, libc::SOL_SOCKET, SO_MEMINFO, &mut b)?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// `getsockname` (`peer` false) or `getpeername`: the address bytes.
pub fn address(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = socklen(buf.len());
    // SAFETY: the kernel writes at most `len` bytes of address into `buf`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &raw mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &raw mut len)
        }
    };
    check(r)?;
    Ok(buf[..usize::try_from(len).unwrap_or(0).min(buf.len())].to_vec())
}

/// `socket(family, type | SOCK_CLOEXEC, protocol)`.
pub fn socket(family: i32, sock_type: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = check(unsafe { libc::socket(family, sock_type | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the kernel just returned `fd`, nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `TCP_INFO` says of a TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// `TCP_ESTABLISHED` 1 … `TCP_LISTEN` 10, `TCP_CLOSE` 7.
    pub state: u8,
    /// For a listener: the connections waiting in its accept queue.
    pub unacked: u32,
    /// For a listener: its backlog (`sk_max_ack_backlog`).
    pub sacked: u32,
}

/// `getsockopt(IPPROTO_TCP, TCP_INFO)`.
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    // SAFETY: `tcp_info` is plain integers: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = socklen(std::mem::size_of::<libc::tcp_info>());
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    })?;
    Ok(TcpInfo {
        state: info.tcpi_state,
        unacked: info.tcpi_unacked,
        sacked: info.tcpi_sacked,
    })
}

/// One message peeked at.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Its real length (`MSG_TRUNC`: more than the buffer if it did not fit).
    pub len: usize,
    /// How many of `buf`'s bytes hold it.
    pub copied: usize,
    /// fds that came with it (`SCM_RIGHTS`), now owned here, to be closed.
    pub rights: Vec<OwnedFd>,
    /// `SCM_CREDENTIALS` (pid, uid, gid), when the socket passes them.
    pub creds: Option<(i32, u32, u32)>,
    /// `MSG_CTRUNC`: ancillary data did not fit.
    pub ctrunc: bool,
}

/// `recvmsg(fd, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC)`
/// into `buf`: `None` when nothing (more) waits (`EAGAIN`). With
/// `SO_PEEK_OFF` set, each call moves past what it returned.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Peeked>> {
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is integers and pointers: all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, which live
    // through the call with the lengths given.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, flags) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(e);
    }
    let len = usize::try_from(r).unwrap_or(0);
    let mut out = Peeked {
        len,
        copied: len.min(buf.len()),
        ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
        ..Peeked::default()
    };
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within `msg_controllen`; each header's data is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let data_len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                for i in 0..data_len / 4 {
                    let fd = data.add(i * 4).cast::<i32>().read_unaligned();
                    out.rights.push(OwnedFd::from_raw_fd(fd));
                }
            } else if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                && data_len >= std::mem::size_of::<libc::ucred>()
            {
                let c = data.cast::<libc::ucred>().read_unaligned();
                out.creds = Some((c.pid, c.uid, c.gid));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok(Some(out))
}
