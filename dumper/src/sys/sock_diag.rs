//! The kernel's unix socket table through `NETLINK_SOCK_DIAG`
//! (`unix_diag`): what `/proc/net/unix` lacks, the peer of each socket,
//! its queue lengths (a listener's backlog and waiting connections) and its
//! shutdown state.
//!
//! # Safety
//!
//! Every call passes integers, or pointers to buffers owned by the caller
//! with their lengths; the netlink socket is owned at once.
//!
//! # References
//! `sock_diag(7)`, `include/uapi/linux/unix_diag.h`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One unix socket as `unix_diag` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    pub ino: u32,
    /// `SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5.
    pub sock_type: u8,
    /// `TCP_ESTABLISHED` 1, `TCP_CLOSE` 7, `TCP_LISTEN` 10.
    pub state: u8,
    /// The peer's inode (0: none, or closed).
    pub peer: u32,
    /// The bound name (`sun_path` bytes; abstract ones start with NUL).
    pub name: Option<Vec<u8>>,
    /// The socket file's (device, inode) of a name bound in the filesystem.
    pub vfs: Option<(u32, u32)>,
    /// A listener: connections waiting; else the bytes waiting to be read.
    pub rqueue: u32,
    /// A listener: its backlog; else the bytes sent and not yet read.
    pub wqueue: u32,
    /// `sk_shutdown`: 1 receive, 2 send.
    pub shutdown: u8,
}

/// Every unix socket of this network namespace, by inode.
pub fn unix_sockets() -> io::Result<HashMap<u32, UnixSocket>> {
    // SAFETY: integer arguments only.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd`, nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };

    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = u8::try_from(libc::AF_UNIX).unwrap_or(1);
    // udiag_states: every state.
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
    req[28..32].copy_from_slice(&show.to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]);
    // SAFETY: the kernel reads `req.len()` bytes of `req`.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Ok(out);
        }
        let mut msgs = &buf[..n];
        while msgs.len() >= 16 {
            let len = usize::try_from(u32_at(msgs, 0)).unwrap_or(0);
            let kind = u16_at(msgs, 4);
            if len < 16 || len > msgs.len() {
                return Err(bad("a netlink message length"));
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(u32_at(msgs, 16).to_ne_bytes());
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    let s = parse(&msgs[16..len])?;
                    out.insert(s.ino, s);
                }
                _ => {}
            }
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag answered with a bad {what}"),
    )
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A `unix_diag_msg` (16 bytes) and its attributes.
fn parse(msg: &[u8]) -> io::Result<UnixSocket> {
    if msg.len() < 16 {
        return Err(bad("unix_diag_msg"));
    }
    let mut s = UnixSocket {
        sock_type: msg[1],
        state: msg[2],
        ino: u32_at(msg, 4),
        ..UnixSocket::default()
    };
    let mut attrs = &msg[16..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        let kind = u16_at(attrs, 2) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(bad("attribute length"));
        }
        let data = &attrs[4..len];
        match kind {
            UNIX_DIAG_NAME => s.name = Some(data.to_vec()),
            UNIX_DIAG_VFS if data.len() >= 8 => s.vfs = Some((u32_at(data, 4), u32_at(data, 0))),
            UNIX_DIAG_PEER if data.len() >= 4 => s.peer = u32_at(data, 0),
            UNIX_DIAG_RQLEN if data.len() >= 8 => {
                s.rqueue = u32_at(data, 0);
                s.wqueue = u32_at(data, 4);
            }
            UNIX_DIAG_SHUTDOWN if !data.is_empty() => s.shutdown = data[0],
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn ino(fd: std::os::fd::BorrowedFd<'_>) -> u32 {
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        u32::try_from(meta.ino()).unwrap()
    }

    #[test]
    fn a_pair_names_its_peer_and_queue() {
        let (a, b) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &a, b"hello").unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let table = unix_sockets().unwrap();
        let (ia, ib) = (ino(a.as_fd()), ino(b.as_fd()));
        let sa = &table[&ia];
        let sb = &table[&ib];
        assert_eq!(sa.peer, ib);
        assert_eq!(sb.peer, ia);
        assert_eq!(sb.rqueue, 5);
        assert_eq!(sb.shutdown & 2, 2);
        assert_eq!(sa.shutdown & 1, 1);
    }

    #[test]
    fn a_listener_shows_its_backlog_and_name() {
        let path = std::env::temp_dir().join(format!("crimg-diag-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        let s = &unix_sockets().unwrap()[&ino(l.as_fd())];
        assert_eq!(s.state, 10);
        assert_eq!(s.rqueue, 1);
        assert!(s.wqueue > 0);
        // A path name comes with its terminating NUL.
        let name = s.name.clone().unwrap();
        assert_eq!(
            name.strip_suffix(&[0]).unwrap_or(&name),
            path.as_os_str().as_encoded_bytes()
        );
        assert!(s.vfs.is_some());
        std::fs::remove_file(&path).unwrap();
    }
}
