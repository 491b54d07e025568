//! Sockets, made in stage 1 as the dumper's `objects::socket` saved them:
//! a unix pair with `socketpair` (both ends at once: the peer's record is
//! remembered in [`Made`]), its options set, each end's receive queue
//! refilled by sending from the other end (one send per datagram or
//! record, so boundaries are kept), then its shutdown state; a listening
//! or bound socket with `socket`, its options, `bind` to the same address
//! and `listen` with the same backlog. A unix socket file left by the
//! dumped process is removed only if it is a socket nobody listens on
//! (`connect` is refused) and not a symlink. An address that is taken
//! (the dumped process still runs: `--leave-running`) fails here, before
//! anything of the loader is torn down.

use core::fmt;

use image_format::read::Records;
use image_format::records::{
    fd_kind, socket_flags, socket_mode, socket_shutdown, FdRecord, SockOpt, SocketRecord,
};
use image_format::Image;
use zerocopy::FromBytes;

use super::{failed, lift, Made, MadeObject};
use crate::check::os::Os;
use crate::check::CheckError;
use crate::sys::{self, Errno};

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const SOL_SOCKET: u32 = 1;
const SO_REUSEADDR: u32 = 2;
const SO_SNDBUF: u32 = 7;
const SO_RCVBUF: u32 = 8;
const SO_PEEK_OFF: u32 = 42;
const SHUT_RD: u32 = 0;
const SHUT_WR: u32 = 1;
const ECONNREFUSED: Errno = Errno(111);
const EADDRINUSE: Errno = Errno(98);

pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
    made: &mut Made,
) -> Result<i32, CheckError> {
    // The second end of a pair made for its peer.
    if let Some(m) = made.find(f.kind, f.object) {
        return Ok(m.fds[0]);
    }
    let corrupt = |error| CheckError::Corrupt { error };
    let sockets = image.records::<SocketRecord>().map_err(corrupt)?;
    let record = sockets
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    let fd = match record.mode {
        socket_mode::UNIX_PAIR => pair(os, image, &sockets, f, &record, base, made)?,
        socket_mode::LISTEN | socket_mode::UNCONNECTED => {
            let fd = single(os, image, f, &record, base)?;
            made.add(MadeObject {
                kind: fd_kind::SOCKET,
                object: f.object,
                fds: [fd, -1],
                taken: [1, 0],
            })?;
            fd
        }
        _ => {
            return Err(CheckError::UnsupportedFd {
                fd: f.fd,
                kind: f.kind,
                path: b"socket of a mode this loader does not know",
            })
        }
    };
    Ok(fd)
}

fn bad(what: &'static str) -> CheckError {
    CheckError::Corrupt {
        error: image_format::ImageError::BadRecords {
            note_type: image_format::records::note::SOCKETS,
            what,
        },
    }
}

/// A unix pair: this record's end and its peer's (or a peer closed after
/// it filled this end's queue).
fn pair(
    os: &impl Os,
    image: &Image<'static>,
    sockets: &Records<'static, SocketRecord>,
    f: &FdRecord,
    record: &SocketRecord,
    base: i32,
    made: &mut Made,
) -> Result<i32, CheckError> {
    let peer = if record.peer == 0 {
        None
    } else {
        let p = sockets
            .object(record.peer)
            .ok_or(bad("a socket's peer is not in the note"))?;
        if p.mode != socket_mode::UNIX_PAIR || p.peer != f.object || p.sock_type != record.sock_type
        {
            return Err(bad("two sockets of a pair do not name each other"));
        }
        Some(p)
    };
    let (a, b) = os
        .socketpair(record.sock_type)
        .map_err(failed(f, "create the socket pair"))?;
    let lifted = lift(os, a, base).and_then(|a| Ok((a, lift(os, b, base)?)));
    let (a, b) = lifted.map_err(failed(f, "move the socket pair"))?;
    let filled = (|| {
        set_options(os, image, f, a, record, false)?;
        if let Some(p) = &peer {
            set_options(os, image, f, b, p, false)?;
        }
        refill(os, image, f, b, record)?;
        if let Some(p) = &peer {
            refill(os, image, f, a, p)?;
            shut(os, f, b, p)?;
        }
        shut(os, f, a, record)?;
        set_peek_offset(os, image, f, a, record)?;
        if let Some(p) = &peer {
            set_peek_offset(os, image, f, b, p)?;
        }
        Ok(())
    })();
    if let Err(e) = filled {
        os.close(a);
        os.close(b);
        return Err(e);
    }
    made.add(MadeObject {
        kind: fd_kind::SOCKET,
        object: f.object,
        fds: [a, -1],
        taken: [1, 0],
    })?;
    match peer {
        Some(_) => {
            made.add(MadeObject {
                kind: fd_kind::SOCKET,
                object: record.peer,
                fds: [b, -1],
                taken: [1, 0],
            })?;
        }
        // The peer had closed: this end reads its queue, then end of file.
        None => os.close(b),
    }
    Ok(a)
}

/// Send `record`'s queue from `from`, the other end of its socket, so that
/// it waits in `record`'s receive queue as it did.
fn refill(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    from: i32,
    record: &SocketRecord,
) -> Result<(), CheckError> {
    let queue = image
        .string(record.queue)
        .map_err(|error| CheckError::Corrupt { error })?;
    let step = "refill the socket's queue";
    let short = || CheckError::Object {
        fd: f.fd,
        step,
        errno: Errno(11),
    };
    if record.sock_type == SOCK_STREAM {
        let mut rest = queue;
        while !rest.is_empty() {
            let n = os.send(from, rest).map_err(failed(f, step))?;
            if n == 0 {
                return Err(short());
            }
            rest = rest.get(n..).unwrap_or(&[]);
        }
        return Ok(());
    }
    let mut rest = queue;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(bad("a queued datagram's length is cut"))?;
        let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
        let message = tail.get(..len).ok_or(bad("a queued datagram is cut"))?;
        let n = os.send(from, message).map_err(failed(f, step))?;
        if n != len {
            return Err(short());
        }
        rest = &tail[len..];
    }
    Ok(())
}

/// `shutdown` as it was (a unix socket's shutdown also marks its peer's,
/// as the kernel had it).
fn shut(os: &impl Os, f: &FdRecord, fd: i32, record: &SocketRecord) -> Result<(), CheckError> {
    if record.shutdown & socket_shutdown::SEND != 0 {
        os.shutdown(fd, SHUT_WR)
            .map_err(failed(f, "shut the socket down for sending"))?;
    }
    if record.shutdown & socket_shutdown::RCV != 0 {
        os.shutdown(fd, SHUT_RD)
            .map_err(failed(f, "shut the socket down for receiving"))?;
    }
    Ok(())
}

/// The options of `record`.
fn options(image: &Image<'static>, record: &SocketRecord) -> Result<OptionIter, CheckError> {
    let bytes = image
        .string(record.options)
        .map_err(|error| CheckError::Corrupt { error })?;
    if bytes.len() % core::mem::size_of::<SockOpt>() != 0 {
        return Err(bad("a socket's options are cut"));
    }
    Ok(OptionIter { bytes })
}

struct OptionIter {
    bytes: &'static [u8],
}

impl Iterator for OptionIter {
    type Item = SockOpt;
    fn next(&mut self) -> Option<SockOpt> {
        let (o, rest) = SockOpt::read_from_prefix(self.bytes).ok()?;
        self.bytes = rest;
        Some(o)
    }
}

fn value(o: &SockOpt) -> &[u8] {
    &o.value[..usize::try_from(o.len).unwrap_or(16).min(16)]
}

/// Every option but the peek offset (set once the queue is in); with
/// `tcp_bind`, `SO_REUSEADDR` is set on for the bind (a port in TIME_WAIT
/// would refuse it) and put back by [`put_back_reuseaddr`].
fn set_options(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    fd: i32,
    record: &SocketRecord,
    tcp_bind: bool,
) -> Result<(), CheckError> {
    for o in options(image, record)? {
        if o.level == SOL_SOCKET && o.name == SO_PEEK_OFF {
            continue;
        }
        let v = value(&o);
        // `getsockopt` shows twice what `setsockopt` asks for.
        let halved;
        let v = if o.level == SOL_SOCKET && matches!(o.name, SO_SNDBUF | SO_RCVBUF) && v.len() == 4
        {
            let n = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]) / 2;
            halved = n.to_ne_bytes();
            &halved[..]
        } else {
            v
        };
        os.setsockopt(fd, o.level, o.name, v)
            .map_err(|errno| CheckError::SocketOption {
                fd: f.fd,
                level: o.level,
                name: o.name,
                errno,
            })?;
    }
    if tcp_bind {
        os.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &1i32.to_ne_bytes())
            .map_err(failed(f, "set SO_REUSEADDR for the bind"))?;
    }
    Ok(())
}

/// `SO_REUSEADDR` back to the task's value after a TCP bind.
fn put_back_reuseaddr(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    fd: i32,
    record: &SocketRecord,
) -> Result<(), CheckError> {
    let mut saved = [0u8; 4];
    if let Some(o) =
        options(image, record)?.find(|o| o.level == SOL_SOCKET && o.name == SO_REUSEADDR)
    {
        let v = value(&o);
        saved[..v.len().min(4)].copy_from_slice(&v[..v.len().min(4)]);
    }
    os.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &saved)
        .map_err(failed(f, "put SO_REUSEADDR back"))
}

fn set_peek_offset(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    fd: i32,
    record: &SocketRecord,
) -> Result<(), CheckError> {
    if let Some(o) =
        options(image, record)?.find(|o| o.level == SOL_SOCKET && o.name == SO_PEEK_OFF)
    {
        os.setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, value(&o))
            .map_err(failed(f, "set the socket's peek offset"))?;
    }
    Ok(())
}

/// A listening or unconnected socket.
fn single(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    record: &SocketRecord,
    base: i32,
) -> Result<i32, CheckError> {
    if !matches!(record.family, AF_UNIX | AF_INET | AF_INET6) {
        return Err(bad("a socket of an unknown family"));
    }
    let addr = image
        .string(record.addr)
        .map_err(|error| CheckError::Corrupt { error })?;
    let fd = os
        .socket(record.family, record.sock_type, record.protocol)
        .and_then(|fd| lift(os, fd, base))
        .map_err(failed(f, "create the socket"))?;
    let made = (|| {
        let bound = record.flags & socket_flags::BOUND != 0;
        let tcp_bind = bound && record.family != AF_UNIX && record.protocol == IPPROTO_TCP;
        set_options(os, image, f, fd, record, tcp_bind)?;
        if bound {
            let path = if record.family == AF_UNIX {
                clear_stale_path(os, f, addr, record.sock_type)?;
                unix_path(addr)
            } else {
                None
            };
            // The socket file gets the permissions it had: bind makes it
            // 0777 less the umask.
            let old_mask = (path.is_some() && record.file_mode != 0)
                .then(|| os.umask(0o777 & !record.file_mode));
            let bound = os.bind_or_connect(fd, addr, false);
            if let Some(m) = old_mask {
                os.umask(m);
            }
            bound.map_err(|errno| CheckError::SocketAddress {
                fd: f.fd,
                step: "bind",
                addr,
                errno,
            })?;
            // Its file had been removed: so again (the name stays bound).
            if let (Some(path), true) = (path, record.flags & socket_flags::UNLINKED != 0) {
                os.unlink(path)
                    .map_err(failed(f, "remove the socket's file, as it was"))?;
            }
        }
        if record.mode == socket_mode::LISTEN {
            os.listen(fd, record.backlog)
                .map_err(|errno| CheckError::SocketAddress {
                    fd: f.fd,
                    step: "listen on",
                    addr,
                    errno,
                })?;
        }
        if tcp_bind {
            put_back_reuseaddr(os, image, f, fd, record)?;
        }
        set_peek_offset(os, image, f, fd, record)
    })();
    if let Err(e) = made {
        os.close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// The path of a unix `sockaddr` bound in the filesystem (`None` for an
/// abstract or unnamed one).
fn unix_path(addr: &[u8]) -> Option<&[u8]> {
    let path = addr.get(2..)?;
    if path.first().is_none_or(|&b| b == 0) {
        return None;
    }
    Some(path.split(|&b| b == 0).next().unwrap_or(path))
}

/// Make room for binding `addr` again: the socket file the dumped process
/// left is removed if it is one nobody listens on. Anything else there (a
/// live socket, a file, a symlink) is left alone and refused.
fn clear_stale_path(
    os: &impl Os,
    f: &FdRecord,
    addr: &'static [u8],
    sock_type: u32,
) -> Result<(), CheckError> {
    let Some(path) = unix_path(addr) else {
        return Ok(());
    };
    let refuse = |why| CheckError::SocketPath {
        fd: f.fd,
        path,
        why,
    };
    // O_PATH | O_NOFOLLOW: a symlink is seen as itself, never followed.
    let probe = match os.open(path, sys::O_PATH | O_NOFOLLOW | sys::O_CLOEXEC) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(_) => return Err(refuse("it cannot be looked at")),
    };
    let st = os.fstat(probe);
    os.close(probe);
    let st = st.map_err(|_| refuse("it cannot be looked at"))?;
    if st.mode & sys::S_IFMT != sys::S_IFSOCK {
        return Err(refuse("the path exists and is not a socket (left alone)"));
    }
    let test = os
        .socket(AF_UNIX, sock_type, 0)
        .map_err(failed(f, "create a socket to test the old socket file"))?;
    let answer = os.bind_or_connect(test, addr, true);
    os.close(test);
    match answer {
        Err(ECONNREFUSED) => os
            .unlink(path)
            .map_err(failed(f, "remove the old socket file")),
        // Gone meanwhile: nothing in the way.
        Err(Errno::ENOENT) => Ok(()),
        // A socket answers there (or one of another type: EPROTOTYPE).
        _ => Err(CheckError::SocketAddress {
            fd: f.fd,
            step: "bind",
            addr,
            errno: EADDRINUSE,
        }),
    }
}

const O_NOFOLLOW: u32 = 0o400_000;

/// A `sockaddr` for messages (no allocation): `127.0.0.1:80`,
/// `[::1]:80`, a unix path, `@name` for an abstract unix name.
pub struct SockAddr<'a>(pub &'a [u8]);

impl fmt::Display for SockAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::message::Lossy;
        let a = self.0;
        let family = a.get(..2).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        let port = a.get(2..4).map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
        match u32::from(family) {
            AF_INET if a.len() >= 8 => write!(f, "{}.{}.{}.{}:{port}", a[4], a[5], a[6], a[7]),
            AF_INET6 if a.len() >= 24 => {
                let mut g = [0u16; 8];
                for (i, w) in g.iter_mut().enumerate() {
                    *w = u16::from_be_bytes([a[8 + 2 * i], a[9 + 2 * i]]);
                }
                f.write_str("[")?;
                write_ipv6(f, &g)?;
                write!(f, "]:{port}")
            }
            AF_UNIX => match a.get(2..) {
                None | Some([]) => f.write_str("an unnamed unix socket"),
                Some([0, name @ ..]) => write!(f, "@{}", Lossy(name)),
                Some(_) => write!(f, "{}", Lossy(unix_path(a).unwrap_or(&[]))),
            },
            _ => write!(f, "an address of family {family}"),
        }
    }
}

/// The eight groups of an IPv6 address, the longest run of two or more
/// zero groups written `::` (RFC 5952).
fn write_ipv6(f: &mut fmt::Formatter<'_>, g: &[u16; 8]) -> fmt::Result {
    let (mut best, mut best_len, mut i) = (8, 1, 0);
    while i < 8 {
        let start = i;
        while i < 8 && g[i] == 0 {
            i += 1;
        }
        if i - start > best_len {
            (best, best_len) = (start, i - start);
        }
        i += 1;
    }
    let mut k = 0;
    while k < 8 {
        if k == best {
            f.write_str("::")?;
            k += best_len;
            continue;
        }
        if k > 0 && k != best + best_len {
            f.write_str(":")?;
        }
        write!(f, "{:x}", g[k])?;
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn addresses_are_shown() {
        let mut v4 = std::vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
        v4.extend([0; 8]);
        assert_eq!(SockAddr(&v4).to_string(), "127.0.0.1:8080");
        let mut v6 = std::vec![10, 0, 0, 80, 0, 0, 0, 0];
        v6.extend([0; 15]);
        v6.push(1);
        assert_eq!(SockAddr(&v6).to_string(), "[::1]:80");
        v6[8] = 0xfe;
        v6[9] = 0x80;
        v6[19] = 0xab;
        assert_eq!(SockAddr(&v6).to_string(), "[fe80::ab:0:1]:80");
        v6[8..24].copy_from_slice(&[0; 16]);
        assert_eq!(SockAddr(&v6).to_string(), "[::]:80");
        assert_eq!(SockAddr(b"\x01\0\0ab").to_string(), "@ab");
        assert_eq!(SockAddr(b"\x01\0/tmp/s\0").to_string(), "/tmp/s");
    }

    #[test]
    fn unix_paths() {
        assert_eq!(unix_path(b"\x01\0/tmp/s\0"), Some(&b"/tmp/s"[..]));
        assert_eq!(unix_path(b"\x01\0\0abstract"), None);
        assert_eq!(unix_path(b"\x01\0"), None);
    }
}
