//! Sockets: unix socket pairs whose both ends are in the process (with the
//! data queued in each direction), and listening or bound sockets (unix by
//! path or abstract name, TCP and UDP over IPv4 and IPv6) with their
//! address, backlog and the options that differ from a fresh socket's.
//! Connected sockets to a peer outside the process are refused at dump.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record, StrRef};

/// `SocketRecord::mode`: what the socket is, so what the loader makes.
pub mod socket_mode {
    /// A connected unix socket whose peer is another record of the note
    /// (`peer`), or gone ([`super::socket_flags::PEER_CLOSED`]): made with
    /// `socketpair`.
    pub const UNIX_PAIR: u32 = 1;
    /// A listening socket (unix stream/seqpacket, TCP): bound to `addr`,
    /// listening with `backlog`.
    pub const LISTEN: u32 = 2;
    /// Neither connected nor listening (a bound UDP or unix datagram
    /// socket, or one never bound): bound to `addr` when it names one.
    pub const UNCONNECTED: u32 = 3;
}

/// `SocketRecord::flags` bits.
pub mod socket_flags {
    /// A `UNIX_PAIR` socket whose peer was closed: the loader makes the
    /// pair, fills this end's queue and closes the other end.
    pub const PEER_CLOSED: u32 = 1;
    /// `addr` is to be bound (a fresh socket of the kind would not be).
    pub const BOUND: u32 = 2;
    /// A unix socket bound to a path whose file was removed since (or
    /// now names another file): the loader binds, then removes the file.
    pub const UNLINKED: u32 = 4;
}

/// `SocketRecord::shutdown` bits (the kernel's `sk_shutdown`).
pub mod socket_shutdown {
    /// No more receiving (`SHUT_RD`, or the peer's `SHUT_WR`).
    pub const RCV: u32 = 1;
    /// No more sending (`SHUT_WR`).
    pub const SEND: u32 = 2;
}

/// One socket option to set back: `setsockopt(level, name, value[..len])`.
/// `options` of a [`SocketRecord`] is an array of these (in the string
/// table, so read them with `read_from_bytes`: no alignment there).
/// `SO_RCVBUF`/`SO_SNDBUF` hold the value `getsockopt` gave (the kernel
/// doubles what is set): the loader sets half.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SockOpt {
    pub level: u32,
    pub name: u32,
    pub len: u32,
    pub _pad: u32,
    pub value: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SockOpt>() == 32);

/// A socket. Queued data of a stream socket is its bytes in order; of a
/// datagram or seqpacket socket a sequence of `u32` little-endian length
/// followed by that many bytes, one per datagram (boundaries kept).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SocketRecord {
    /// The socket's inode at the dump (`socket:[ino]`), for messages.
    pub ino: u64,
    /// `AF_UNIX`, `AF_INET`, `AF_INET6`.
    pub family: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub sock_type: u32,
    /// `SO_PROTOCOL` (`IPPROTO_TCP`, `IPPROTO_UDP`, 0 for unix).
    pub protocol: u32,
    /// [`socket_mode`].
    pub mode: u32,
    /// [`socket_flags`] bits.
    pub flags: u32,
    /// [`socket_shutdown`] bits.
    pub shutdown: u32,
    /// `UNIX_PAIR`: the 1-based index of the peer's record (0: closed).
    pub peer: u32,
    /// `LISTEN`: the `listen()` backlog (the kernel's `sk_max_ack_backlog`).
    pub backlog: u32,
    /// The address bound (`getsockname`'s `sockaddr`, its length as the
    /// kernel gave it: an abstract unix name is its length).
    pub addr: StrRef,
    /// The data waiting to be received on this socket (see above).
    pub queue: StrRef,
    /// [`SockOpt`]s, in the order to set them.
    pub options: StrRef,
    /// A unix socket bound to a path: the permission bits of its file
    /// (0: not known, the loader's umask decides).
    pub file_mode: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SocketRecord>() == 72);
impl Record for SocketRecord {
    const NOTE_TYPE: u32 = note::SOCKETS;
}
