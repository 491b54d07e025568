//! Sockets: what each is (family, type, state: `SO_DOMAIN`/`SO_TYPE`/
//! `SO_PROTOCOL`, `TCP_INFO`, the kernel's unix table through
//! [`crate::sys::sock_diag`]), whether crimg keeps it, and what a restore
//! needs: the address bound, the backlog of a listener, the options that
//! differ from a fresh socket's, and for a unix pair inside the process the
//! data queued on each end, read with `MSG_PEEK` at `SO_PEEK_OFF` offsets
//! (every queued message in turn, none consumed; the task's own peek
//! offset is put back).
//!
//! Kept: unix socket pairs whose both ends are in the process (or whose
//! peer was closed), listening sockets (unix by path or abstract name, TCP
//! over IPv4 and IPv6), and unconnected ones (bound UDP, unix datagram).
//! Refused by name: connected sockets whose peer is outside the process
//! (established TCP, connected UDP, unix to another process), listeners
//! with connections waiting to be accepted, fds in flight. Datagrams
//! queued on a bound UDP socket are dropped with a warning: UDP may lose
//! datagrams anyway, and they cannot be sent again from their senders'
//! addresses.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};

use image_format::records::{socket_flags, socket_mode, SockOpt, SocketRecord};
use image_format::text::Escaped;
use image_writer::model::SocketState;

use crate::sys::sock_diag::{self, UnixSocket};
use crate::sys::sockets::{self as sys, SO_PEEK_OFF};

use super::Refusal;

/// At most this many bytes are saved of one socket's queue; a fuller one is
/// refused rather than cut.
pub const MAX_QUEUE_BYTES: usize = 8 << 20;
/// At most this many bytes of all the sockets' queues (the image's notes
/// are bounded in all).
pub const MAX_TOTAL_QUEUE_BYTES: usize = 32 << 20;
/// At most this many messages of one queue (a bound on the walk).
const MAX_QUEUE_MESSAGES: usize = 1 << 20;

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;
const SO_TIMESTAMP_OLD: i32 = 29;

/// What the module decided for one socket.
#[derive(Debug)]
pub enum Outcome {
    /// Saved. `peer` is the inode of the peer of a unix pair (0: none),
    /// for the caller to link the two records.
    Saved {
        state: SocketState,
        peer: u64,
        /// A loss that is accepted (said once in the dump's warnings).
        warning: Option<String>,
    },
    /// A socket on fds 0–2 that crimg does not save: the caller's on a
    /// direct run, as before sockets were objects.
    Inherited,
}

/// What the module needs to know beyond the socket itself.
pub struct Context<'a> {
    /// The task's pid (the credentials of its own messages carry it).
    pub pid: i32,
    /// The inodes of every socket the task holds.
    pub task_sockets: &'a [u64],
    /// The pids of the other processes holding `socket:[ino]`.
    pub holders: &'a dyn Fn(u64) -> Vec<i32>,
    /// The unix socket table, read at the first unix socket.
    pub unix: Option<HashMap<u32, UnixSocket>>,
    /// The inode and mode of a path as the task sees it (`None`: missing).
    pub path_inode: &'a PathLookup<'a>,
    /// The pids of the tree being dumped (`None`: the process alone).
    pub tree: Option<&'a [i32]>,
}

/// The inode and `st_mode` of a path as the task sees it (`None`: missing).
pub type PathLookup<'a> = dyn Fn(&[u8]) -> Option<(u64, u32)> + 'a;

/// Why fd `fd`, a unix socket connected to `socket:[peer]` that the
/// process does not hold, is refused: the peer's holders `pids` are
/// named, as processes of the dumped tree (`tree`) or outside it.
fn peer_elsewhere(fd: i32, peer: u32, pids: &[i32], tree: Option<&[i32]>) -> String {
    let start =
        format!("fd {fd} is a unix socket connected to socket:[{peer}] outside this process");
    let (in_tree, outside): (Vec<i32>, Vec<i32>) = match tree {
        Some(t) => pids.iter().partition(|p| t.contains(p)),
        None => (Vec::new(), pids.to_vec()),
    };
    match (tree, in_tree.is_empty(), outside.is_empty()) {
        (_, true, true) => format!("{start} (no other process found holding it): not saved"),
        (None, _, _) => format!(
            "{start} (held by pid {}): not saved (sockets between processes need a tree dump)",
            join(&outside)
        ),
        (Some(_), _, false) => format!(
            "{start} (held by pid {}, outside the dumped tree): a socket connected to a process \
             outside the tree cannot be saved",
            join(&outside)
        ),
        (Some(_), false, true) => format!(
            "{start} (held by pid {} of the tree): a socket shared with pid {} of the tree \
             cannot be restored yet",
            join(&in_tree),
            join(&in_tree)
        ),
    }
}

/// Save the socket behind the task's fd `fd` (`sock` is a copy of it).
/// A socket on fds 0–2 that cannot be saved is inherited instead.
pub fn collect(
    fd: i32,
    ino: u64,
    sock: BorrowedFd<'_>,
    stdio: bool,
    cx: &mut Context<'_>,
) -> Result<Outcome, Refusal> {
    match save(fd, ino, sock, cx) {
        Err(_) if stdio => Ok(Outcome::Inherited),
        r => r,
    }
}

fn save(fd: i32, ino: u64, sock: BorrowedFd<'_>, cx: &mut Context<'_>) -> Result<Outcome, Refusal> {
    let int = |level, name, what: &str| {
        sys::getsockopt_int(sock, level, name)
            .map_err(|e| format!("fd {fd}: cannot read the socket's {what}: {e}"))
    };
    let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "family")?;
    let sock_type = int(libc::SOL_SOCKET, libc::SO_TYPE, "type")?;
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "protocol")?;
    let addr = sys::address(sock, false)
        .map_err(|e| format!("fd {fd}: cannot read the socket's address: {e}"))?;
    let mut record = SocketRecord {
        ino,
        family: u32::try_from(family).unwrap_or(0),
        sock_type: u32::try_from(sock_type).unwrap_or(0),
        protocol: u32::try_from(protocol).unwrap_or(0),
        ..SocketRecord::default()
    };
    let mut peer = 0;
    let mut queue = Vec::new();
    let mut warning = None;
    match family {
        libc::AF_UNIX => {
            if cx.unix.is_none() {
                cx.unix = Some(sock_diag::unix_sockets().map_err(|e| {
                    format!("fd {fd}: cannot read the unix socket table (sock_diag): {e}")
                })?);
            }
            let table = cx.unix.as_ref().map_or_else(HashMap::new, Clone::clone);
            let u = u32::try_from(ino)
                .ok()
                .and_then(|i| table.get(&i))
                .ok_or_else(|| {
                    format!(
                        "fd {fd}: socket:[{ino}] is not in this network namespace's unix socket table"
                    )
                })?;
            let shown = show_addr(&addr);
            if u.state == TCP_LISTEN {
                if u.rqueue > 0 {
                    return Err(format!(
                        "fd {fd} is a unix listener on {shown} with {} connection(s) waiting to be accepted: they cannot be kept (their clients would be cut off)",
                        u.rqueue
                    ));
                }
                check_unix_name(fd, &addr)?;
                record.mode = socket_mode::LISTEN;
                record.flags |= socket_flags::BOUND;
                record.backlog = u.wqueue;
                socket_file(&mut record, &addr, u, cx);
            } else if u.peer != 0 {
                if !cx.task_sockets.contains(&u64::from(u.peer)) {
                    let pids = (cx.holders)(u64::from(u.peer));
                    return Err(peer_elsewhere(fd, u.peer, &pids, cx.tree));
                }
                // A datagram socket connected to one that is not
                // connected back (a bound server socket): not a pair.
                let back = table.get(&u.peer).map_or(0, |p| p.peer);
                if u64::from(back) != ino {
                    return Err(format!(
                        "fd {fd} is a unix datagram socket connected to socket:[{}] of this process, which is not connected back: not saved yet",
                        u.peer
                    ));
                }
                record.mode = socket_mode::UNIX_PAIR;
                peer = u64::from(u.peer);
            } else if u.state == TCP_ESTABLISHED && sock_type != libc::SOCK_DGRAM {
                // A stream or seqpacket socket whose peer has closed.
                record.mode = socket_mode::UNIX_PAIR;
                record.flags |= socket_flags::PEER_CLOSED;
            } else {
                let queued = sys::receive_memory(sock).unwrap_or(1);
                if queued > 0 || u.rqueue > 0 {
                    return Err(format!(
                        "fd {fd} is an unconnected unix socket ({shown}) with messages queued from other sockets: not saved (their senders cannot be kept)"
                    ));
                }
                if addr.len() > 2 {
                    check_unix_name(fd, &addr)?;
                    record.flags |= socket_flags::BOUND;
                    socket_file(&mut record, &addr, u, cx);
                }
                record.mode = socket_mode::UNCONNECTED;
            }
            record.shutdown = u32::from(u.shutdown);
        }
        libc::AF_INET | libc::AF_INET6 => {
            let shown = show_addr(&addr);
            if sock_type == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP {
                let info = sys::tcp_info(sock)
                    .map_err(|e| format!("fd {fd}: cannot read TCP_INFO: {e}"))?;
                match info.state {
                    TCP_LISTEN => {
                        if info.unacked > 0 {
                            return Err(format!(
                                "fd {fd} is a TCP listener on {shown} with {} connection(s) waiting to be accepted: they cannot be kept (established connections are not saved yet)",
                                info.unacked
                            ));
                        }
                        record.mode = socket_mode::LISTEN;
                        record.flags |= socket_flags::BOUND;
                        record.backlog = info.sacked;
                    }
                    TCP_CLOSE => {
                        record.mode = socket_mode::UNCONNECTED;
                        if inet_port(&addr) != 0 {
                            record.flags |= socket_flags::BOUND;
                        }
                    }
                    state => {
                        let to = sys::address(sock, true)
                            .map_or_else(|_| "?".to_string(), |a| show_addr(&a));
                        return Err(if state == TCP_ESTABLISHED {
                            format!(
                                "fd {fd} is an established TCP connection {shown} -> {to}: not saved yet"
                            )
                        } else {
                            format!(
                                "fd {fd} is a TCP connection {shown} -> {to} in state {}: not saved yet",
                                tcp_state_name(state)
                            )
                        });
                    }
                }
            } else if sock_type == libc::SOCK_DGRAM && protocol == libc::IPPROTO_UDP {
                if let Ok(to) = sys::address(sock, true) {
                    return Err(format!(
                        "fd {fd} is a UDP socket connected {shown} -> {}: not saved yet",
                        show_addr(&to)
                    ));
                }
                record.mode = socket_mode::UNCONNECTED;
                if inet_port(&addr) != 0 {
                    record.flags |= socket_flags::BOUND;
                }
                if sys::receive_memory(sock).unwrap_or(0) > 0 {
                    warning = Some(format!(
                        "fd {fd}: the datagrams queued on UDP socket {shown} are dropped (they cannot be sent again from their senders' addresses; UDP may lose datagrams)"
                    ));
                }
            } else {
                return Err(format!(
                    "fd {fd} is a {} socket (type {sock_type}, protocol {protocol}): not saved",
                    if family == libc::AF_INET {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                ));
            }
        }
        _ => {
            return Err(format!(
                "fd {fd} is a {} socket: not saved",
                family_name(family)
            ))
        }
    }
    // Only unix pairs need it; other kinds may not have one.
    let peek_off = if record.mode == socket_mode::UNIX_PAIR {
        int(libc::SOL_SOCKET, SO_PEEK_OFF, "peek offset")?
    } else {
        sys::getsockopt_int(sock, libc::SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1)
    };
    if record.mode == socket_mode::UNIX_PAIR {
        queue = read_queue(fd, sock, sock_type, peek_off, cx.pid)?;
    }
    let mut options = options(fd, sock, family, sock_type, protocol)?;
    if peek_off >= 0 {
        options.push(opt(libc::SOL_SOCKET, SO_PEEK_OFF, &peek_off.to_ne_bytes()));
    }
    Ok(Outcome::Saved {
        state: SocketState {
            record,
            addr,
            queue,
            options,
        },
        peer,
        warning,
    })
}

/// The socket file of a unix socket bound to a path: its permissions,
/// or [`socket_flags::UNLINKED`] when the path no longer names it.
fn socket_file(record: &mut SocketRecord, addr: &[u8], u: &UnixSocket, cx: &Context<'_>) {
    let path = addr.get(2..).unwrap_or(&[]);
    if path.first().is_none_or(|&b| b == 0) {
        return;
    }
    let path = path.split(|&b| b == 0).next().unwrap_or(path);
    let here = (cx.path_inode)(path);
    match (here, u.vfs) {
        (Some((ino, mode)), Some((_, vfs_ino))) if ino == u64::from(vfs_ino) => {
            record.file_mode = mode & 0o7777;
        }
        _ => record.flags |= socket_flags::UNLINKED,
    }
}

/// Right before crdump kills a process whose TCP connections were dropped
/// (`--force`): set them to abort (`SO_LINGER` on, 0 s), so the kill
/// resets them instead of leaving them in TIME_WAIT, where they would hold
/// the port of the listener they were accepted from (one without
/// `SO_REUSEADDR`) against the restore for a minute. Best effort: a copy
/// that cannot be taken is left as it is.
pub fn abort_dropped_connections(pid: i32, fds: &[image_writer::model::FdState]) {
    use image_format::records::{fd_flags, fd_kind};
    let dropped = fds
        .iter()
        .filter(|f| f.record.kind == fd_kind::SOCKET && f.record.flags & fd_flags::DROPPED != 0);
    let mut pidfd = None;
    for f in dropped {
        if pidfd.is_none() {
            pidfd = crate::sys::fds::pidfd_open(pid).ok();
        }
        let Some(p) = pidfd.as_ref() else { return };
        let Ok(sock) = crate::sys::fds::pidfd_getfd(p.as_fd(), f.record.fd) else {
            continue;
        };
        let tcp = sys::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL)
            .is_ok_and(|p| p == libc::IPPROTO_TCP);
        let connected =
            sys::tcp_info(sock.as_fd()).is_ok_and(|i| !matches!(i.state, TCP_LISTEN | TCP_CLOSE));
        if tcp && connected {
            // struct linger { l_onoff = 1, l_linger = 0 }.
            let mut linger = [0u8; 8];
            linger[..4].copy_from_slice(&1i32.to_ne_bytes());
            let _ = sys::setsockopt(sock.as_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger);
        }
    }
}

/// A unix name the loader can bind again: abstract, or an absolute path.
fn check_unix_name(fd: i32, addr: &[u8]) -> Result<(), Refusal> {
    let path = addr.get(2..).unwrap_or(&[]);
    if path.first().is_some_and(|&b| b != 0 && b != b'/') {
        return Err(format!(
            "fd {fd} is a unix socket bound to the relative path {}: not saved (it would be bound again relative to another directory)",
            Escaped(path)
        ));
    }
    Ok(())
}

/// The data waiting on a unix socket, every message peeked at in turn
/// from offset 0 with `SO_PEEK_OFF` (the task's `old` offset is put back,
/// whatever happens).
fn read_queue(
    fd: i32,
    sock: BorrowedFd<'_>,
    sock_type: i32,
    old: i32,
    pid: i32,
) -> Result<Vec<u8>, Refusal> {
    sys::setsockopt_int(sock, libc::SOL_SOCKET, SO_PEEK_OFF, 0).map_err(|e| {
        format!("fd {fd}: cannot set a peek offset to read the socket's queue: {e}")
    })?;
    let walked = walk_queue(fd, sock, sock_type, pid);
    let put_back = sys::setsockopt_int(sock, libc::SOL_SOCKET, SO_PEEK_OFF, old);
    let queue = walked?;
    put_back.map_err(|e| format!("fd {fd}: cannot put the socket's peek offset back: {e}"))?;
    Ok(queue)
}

fn walk_queue(fd: i32, sock: BorrowedFd<'_>, sock_type: i32, pid: i32) -> Result<Vec<u8>, Refusal> {
    let stream = sock_type == libc::SOCK_STREAM;
    let framed = !stream;
    let mut buf = vec![0u8; MAX_QUEUE_BYTES];
    let mut queue = Vec::new();
    for _ in 0..MAX_QUEUE_MESSAGES {
        let Some(m) = sys::peek(sock, &mut buf)
            .map_err(|e| format!("fd {fd}: cannot peek at the socket's queue: {e}"))?
        else {
            return Ok(queue);
        };
        if !m.rights.is_empty() {
            return Err(format!(
                "fd {fd} is a unix socket with {} file descriptor(s) in flight (SCM_RIGHTS): not saved",
                m.rights.len()
            ));
        }
        if m.ctrunc {
            return Err(format!(
                "fd {fd} is a unix socket whose queued messages carry more ancillary data than crimg reads: not saved"
            ));
        }
        if let Some((from, uid, gid)) = m.creds {
            if from != pid {
                return Err(format!(
                    "fd {fd} is a unix socket with a message queued with the credentials of pid {from} (uid {uid}, gid {gid}; SCM_CREDENTIALS): not saved"
                ));
            }
        }
        // End of a stream (or seqpacket) whose sender has shut down.
        if m.len == 0 && !matches!(sock_type, libc::SOCK_DGRAM) {
            return Ok(queue);
        }
        if m.len > m.copied || queue.len() + m.len + 4 > MAX_QUEUE_BYTES {
            return Err(format!(
                "fd {fd} is a unix socket with more than the {MAX_QUEUE_BYTES} bytes crimg saves queued"
            ));
        }
        if framed {
            queue.extend_from_slice(&u32::try_from(m.len).unwrap_or(u32::MAX).to_le_bytes());
        }
        queue.extend_from_slice(&buf[..m.len]);
    }
    Err(format!(
        "fd {fd} is a unix socket with more than {MAX_QUEUE_MESSAGES} messages queued"
    ))
}

/// The options to set back: those whose value differs from a fresh
/// socket's of the same kind (so a restore changes only what the task
/// changed, and the kernel's own defaults stay its own).
fn options(
    fd: i32,
    sock: BorrowedFd<'_>,
    family: i32,
    sock_type: i32,
    protocol: i32,
) -> Result<Vec<SockOpt>, Refusal> {
    let fresh = sys::socket(family, sock_type, protocol)
        .map_err(|e| format!("fd {fd}: cannot make a fresh socket to compare options with: {e}"))?;
    let mut out = Vec::new();
    for &(level, name) in option_list(family, sock_type, protocol) {
        let mut now = [0u8; 16];
        let mut new = [0u8; 16];
        let (Ok(n), Ok(m)) = (
            sys::getsockopt(sock, level, name, &mut now),
            sys::getsockopt(fresh.as_fd(), level, name, &mut new),
        ) else {
            continue;
        };
        if now[..n] != new[..m] {
            out.push(opt(level, name, &now[..n]));
        }
    }
    Ok(out)
}

fn opt(level: i32, name: i32, value: &[u8]) -> SockOpt {
    let mut o = SockOpt {
        level: u32::try_from(level).unwrap_or(0),
        name: u32::try_from(name).unwrap_or(0),
        len: u32::try_from(value.len().min(16)).unwrap_or(16),
        ..SockOpt::default()
    };
    o.value[..value.len().min(16)].copy_from_slice(&value[..value.len().min(16)]);
    o
}

/// The options compared, in the order they are set back (before `bind`).
fn option_list(family: i32, sock_type: i32, protocol: i32) -> &'static [(i32, i32)] {
    use libc::*;
    const UNIX: &[(i32, i32)] = &[
        (SOL_SOCKET, SO_SNDBUF),
        (SOL_SOCKET, SO_RCVBUF),
        (SOL_SOCKET, SO_PASSCRED),
        (SOL_SOCKET, SO_PASSSEC),
        (SOL_SOCKET, SO_RCVLOWAT),
        (SOL_SOCKET, SO_RCVTIMEO_OLD),
        (SOL_SOCKET, SO_SNDTIMEO_OLD),
        (SOL_SOCKET, SO_TIMESTAMP_OLD),
        (SOL_SOCKET, SO_PRIORITY),
        (SOL_SOCKET, SO_MARK),
    ];
    const SOCKET: &[(i32, i32)] = &[
        (SOL_SOCKET, SO_REUSEADDR),
        (SOL_SOCKET, SO_REUSEPORT),
        (SOL_SOCKET, SO_KEEPALIVE),
        (SOL_SOCKET, SO_BROADCAST),
        (SOL_SOCKET, SO_OOBINLINE),
        (SOL_SOCKET, SO_LINGER),
        (SOL_SOCKET, SO_BINDTODEVICE),
    ];
    const TCP4: &[(i32, i32)] = &[
        (IPPROTO_IP, IP_TOS),
        (IPPROTO_IP, IP_TTL),
        (IPPROTO_IP, IP_FREEBIND),
        (IPPROTO_IP, IP_TRANSPARENT),
        (IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT),
        (IPPROTO_IP, IP_MTU_DISCOVER),
    ];
    const TCP6: &[(i32, i32)] = &[
        (IPPROTO_IPV6, IPV6_V6ONLY),
        (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
        (IPPROTO_IPV6, IPV6_TCLASS),
        (IPPROTO_IPV6, IPV6_MTU_DISCOVER),
    ];
    const TCP: &[(i32, i32)] = &[
        (IPPROTO_TCP, TCP_NODELAY),
        (IPPROTO_TCP, TCP_MAXSEG),
        (IPPROTO_TCP, TCP_CORK),
        (IPPROTO_TCP, TCP_KEEPIDLE),
        (IPPROTO_TCP, TCP_KEEPINTVL),
        (IPPROTO_TCP, TCP_KEEPCNT),
        (IPPROTO_TCP, TCP_SYNCNT),
        (IPPROTO_TCP, TCP_LINGER2),
        (IPPROTO_TCP, TCP_DEFER_ACCEPT),
        (IPPROTO_TCP, TCP_WINDOW_CLAMP),
        (IPPROTO_TCP, TCP_USER_TIMEOUT),
        (IPPROTO_TCP, TCP_FASTOPEN),
        (IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        (IPPROTO_TCP, TCP_CONGESTION),
    ];
    const UDP4: &[(i32, i32)] = &[
        (IPPROTO_IP, IP_PKTINFO),
        (IPPROTO_IP, IP_RECVERR),
        (IPPROTO_IP, IP_RECVTOS),
    ];
    const UDP6: &[(i32, i32)] = &[
        (IPPROTO_IPV6, IPV6_RECVPKTINFO),
        (IPPROTO_IPV6, IPV6_RECVERR),
    ];
    // One table per kind, options of every level in the order set.
    const UNIX_ALL: &[(i32, i32)] = UNIX;
    const TCP4_ALL: &[(i32, i32)] = &concat::<37>(&[UNIX, SOCKET, TCP4, TCP]);
    const TCP6_ALL: &[(i32, i32)] = &concat::<35>(&[UNIX, SOCKET, TCP6, TCP]);
    const UDP4_ALL: &[(i32, i32)] = &concat::<26>(&[UNIX, SOCKET, TCP4, UDP4]);
    const UDP6_ALL: &[(i32, i32)] = &concat::<23>(&[UNIX, SOCKET, TCP6, UDP6]);
    match (family, sock_type, protocol) {
        (AF_UNIX, _, _) => UNIX_ALL,
        (AF_INET, _, IPPROTO_TCP) => TCP4_ALL,
        (AF_INET6, _, IPPROTO_TCP) => TCP6_ALL,
        (AF_INET, SOCK_DGRAM, _) => UDP4_ALL,
        (AF_INET6, SOCK_DGRAM, _) => UDP6_ALL,
        _ => &[],
    }
}

/// The tables of `parts` end to end (`N` must be their total length).
const fn concat<const N: usize>(parts: &[&[(i32, i32)]]) -> [(i32, i32); N] {
    let mut out = [(0, 0); N];
    let mut k = 0;
    let mut i = 0;
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[k] = parts[i][j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(k == N);
    out
}

/// The port of an IPv4 or IPv6 `sockaddr` (0 if none).
fn inet_port(addr: &[u8]) -> u16 {
    addr.get(2..4)
        .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
}

/// A `sockaddr` for messages: `127.0.0.1:80`, `[::1]:80`, a unix path,
/// `@name` for an abstract one, `unnamed` for none.
pub fn show_addr(addr: &[u8]) -> String {
    let family = addr
        .get(..2)
        .map_or(0, |f| u16::from_ne_bytes([f[0], f[1]]));
    match i32::from(family) {
        libc::AF_INET if addr.len() >= 8 => {
            format!(
                "{}.{}.{}.{}:{}",
                addr[4],
                addr[5],
                addr[6],
                addr[7],
                inet_port(addr)
            )
        }
        libc::AF_INET6 if addr.len() >= 24 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&addr[8..24]);
            format!("[{}]:{}", std::net::Ipv6Addr::from(b), inet_port(addr))
        }
        libc::AF_UNIX => match addr.get(2..) {
            None | Some([]) => "unnamed".to_string(),
            Some([0, name @ ..]) => format!("@{}", Escaped(name)),
            Some(path) => {
                let path = path.split(|&b| b == 0).next().unwrap_or(path);
                Escaped(path).to_string()
            }
        },
        _ => format!("(address of family {family})"),
    }
}

fn tcp_state_name(state: u8) -> &'static str {
    match state {
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        11 => "CLOSING",
        _ => "unknown",
    }
}

fn family_name(family: i32) -> String {
    match family {
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_VSOCK => "vsock".into(),
        libc::AF_BLUETOOTH => "bluetooth".into(),
        libc::AF_ALG => "AF_ALG".into(),
        f => format!("family {f}"),
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn ino(fd: BorrowedFd<'_>) -> u64 {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    fn context<'a>(socks: &'a [u64], none: &'a dyn Fn(u64) -> Vec<i32>) -> Context<'a> {
        Context {
            pid: i32::try_from(std::process::id()).unwrap(),
            task_sockets: socks,
            holders: none,
            unix: None,
            path_inode: &|p| {
                use std::os::unix::ffi::OsStrExt;
                use std::os::unix::fs::MetadataExt;
                let p = std::path::Path::new(std::ffi::OsStr::from_bytes(p));
                std::fs::metadata(p).ok().map(|m| (m.ino(), m.mode()))
            },
            tree: None,
        }
    }

    #[test]
    fn a_peer_elsewhere_is_named_in_the_tree_or_outside_it() {
        let tree = [100, 200, 300];
        let why = peer_elsewhere(4, 77, &[200], Some(&tree));
        assert_eq!(
            why,
            "fd 4 is a unix socket connected to socket:[77] outside this process (held by pid \
             200 of the tree): a socket shared with pid 200 of the tree cannot be restored yet"
        );
        let why = peer_elsewhere(4, 77, &[200, 999], Some(&tree));
        assert!(
            why.contains(
                "(held by pid 999, outside the dumped tree): a socket connected to a process"
            ) && !why.contains("200"),
            "{why}"
        );
        assert!(!why.contains("need a tree dump"), "{why}");
        let why = peer_elsewhere(4, 77, &[999], None);
        assert!(why.contains("(held by pid 999)"), "{why}");
        let why = peer_elsewhere(4, 77, &[], Some(&tree));
        assert!(why.contains("no other process found holding it"), "{why}");
    }

    #[test]
    fn a_datagram_pair_keeps_every_datagram_and_the_peek_offset() {
        let (a, b) = UnixDatagram::pair().unwrap();
        for d in [&b"one"[..], b"", b"three!"] {
            a.send(d).unwrap();
        }
        sys::setsockopt_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF, 2).unwrap();
        let socks = [ino(a.as_fd()), ino(b.as_fd())];
        let none = |_| Vec::new();
        let mut cx = context(&socks, &none);
        let Outcome::Saved { state, peer, .. } =
            collect(4, socks[1], b.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_eq!(peer, socks[0]);
        assert_eq!(state.record.mode, socket_mode::UNIX_PAIR);
        assert_eq!(
            state.queue,
            b"\x03\0\0\0one\0\0\0\0\x06\0\0\0three!".to_vec()
        );
        assert_eq!(
            sys::getsockopt_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF).unwrap(),
            2
        );
        assert_eq!(state.options.last().unwrap().name, 42);
        // Nothing consumed.
        let mut buf = [0u8; 16];
        sys::setsockopt_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF, -1).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), 3);
    }

    #[test]
    fn a_stream_pair_keeps_its_bytes_and_shutdown() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[7u8; 3000]).unwrap();
        a.write_all(b"tail").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let socks = [ino(a.as_fd()), ino(b.as_fd())];
        let none = |_| Vec::new();
        let mut cx = context(&socks, &none);
        let Outcome::Saved { state, .. } = collect(5, socks[1], b.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_eq!(state.queue.len(), 3004);
        assert!(state.queue.ends_with(b"tail"));
        assert_eq!(state.record.shutdown, 1);
    }

    #[test]
    fn a_peer_outside_is_refused_and_inherited_on_stdio() {
        let (a, _b) = UnixStream::pair().unwrap();
        let socks = [ino(a.as_fd())];
        let holders = |_| vec![4242];
        let mut cx = context(&socks, &holders);
        let why = collect(6, socks[0], a.as_fd(), false, &mut cx).unwrap_err();
        assert!(why.contains("fd 6") && why.contains("pid 4242"), "{why}");
        assert!(matches!(
            collect(1, socks[0], a.as_fd(), true, &mut cx).unwrap(),
            Outcome::Inherited
        ));
    }

    #[test]
    fn a_datagram_socket_connected_one_way_is_refused() {
        let dir = std::env::temp_dir().join(format!("crimg-dgram-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = UnixDatagram::bind(&dir).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&dir).unwrap();
        let socks = [ino(server.as_fd()), ino(client.as_fd())];
        let none = |_| Vec::new();
        let mut cx = context(&socks, &none);
        let why = collect(8, socks[1], client.as_fd(), false, &mut cx).unwrap_err();
        assert!(why.contains("not connected back"), "{why}");
        // The bound server alone is kept, with its name.
        let Outcome::Saved { state, .. } =
            collect(9, socks[0], server.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_eq!(state.record.mode, socket_mode::UNCONNECTED);
        assert_ne!(state.record.flags & socket_flags::BOUND, 0);
        assert_eq!(state.record.flags & socket_flags::UNLINKED, 0);
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o741))
            .unwrap();
        let Outcome::Saved { state, .. } =
            collect(9, socks[0], server.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_eq!(state.record.file_mode, 0o741);
        // Its file removed: bound again, then removed again.
        std::fs::remove_file(&dir).unwrap();
        let Outcome::Saved { state, .. } =
            collect(9, socks[0], server.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_ne!(state.record.flags & socket_flags::UNLINKED, 0);
    }

    #[test]
    fn an_established_tcp_connection_is_refused_by_name() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let socks = [ino(c.as_fd())];
        let none = |_| Vec::new();
        let mut cx = context(&socks, &none);
        let why = collect(7, socks[0], c.as_fd(), false, &mut cx).unwrap_err();
        let want = format!(
            "fd 7 is an established TCP connection {} -> {}: not saved yet",
            c.local_addr().unwrap(),
            l.local_addr().unwrap()
        );
        assert_eq!(why, want);
    }

    #[test]
    fn options_that_differ_from_a_fresh_sockets_are_kept() {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_broadcast(true).unwrap();
        // SO_BINDTODEVICE needs CAP_NET_RAW: only where the test has it.
        let on_lo =
            sys::setsockopt(u.as_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, b"lo\0").is_ok();
        let socks = [ino(u.as_fd())];
        let none = |_| Vec::new();
        let mut cx = context(&socks, &none);
        let Outcome::Saved { state, .. } = collect(3, socks[0], u.as_fd(), false, &mut cx).unwrap()
        else {
            panic!("not saved")
        };
        assert_eq!(state.record.mode, socket_mode::UNCONNECTED);
        assert_ne!(state.record.flags & socket_flags::BOUND, 0);
        let names: Vec<(u32, u32)> = state.options.iter().map(|o| (o.level, o.name)).collect();
        assert!(names.contains(&(1, 6)), "SO_BROADCAST: {names:?}");
        if on_lo {
            let dev = state.options.iter().find(|o| o.name == 25).unwrap();
            assert_eq!(&dev.value[..dev.len as usize], b"lo\0");
        }
        // Nothing else differs from a fresh UDP socket.
        assert_eq!(names.len(), 1 + usize::from(on_lo), "{names:?}");
    }

    #[test]
    fn addresses_are_shown() {
        let mut v4 = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
        v4.extend([0; 8]);
        assert_eq!(show_addr(&v4), "127.0.0.1:8080");
        assert_eq!(show_addr(&[1, 0, 0, b'a', b'b']), "@ab");
        assert_eq!(show_addr(&[1, 0, b'/', b't', 0]), "/t");
        assert_eq!(show_addr(&[1, 0]), "unnamed");
    }
}
