//! The holder of a task's write-tracking userfaultfd.
//!
//! Async write-protect lives as long as the userfaultfd that registered
//! the task's areas: closing it unregisters them, and every page then
//! reads as written. crdump exits after a dump, and the task itself must
//! keep no extra fd, so a small process holds it: made by crdump (a double
//! fork, so it is not crdump's child and not the task's; a session of its
//! own, `/dev/null` on its stdio, no other fd), it serves the uffd on an
//! abstract unix socket named after the task's pid and start time, to
//! processes of its own uid or root only (`SO_PEERCRED`), and exits when
//! the task exits (its pidfd becomes readable).
//!
//! With the uffd it keeps the *identity* of the image whose dump last
//! protected the task's memory (that image's checksum record): the pages
//! reported written are those written since that dump, so a later dump
//! trusts them only over that very image as its parent. The identity is
//! cleared before the memory is protected again and set once it is, so an
//! interrupted dump leaves it cleared (nothing trusted), never wrong.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::sys;

/// An image's identity: its checksum record's headers, notes and size.
pub type Identity = [u8; 24];

/// No image: nothing the uffd reports is trusted.
pub const NO_IDENTITY: Identity = [0; 24];

/// The identity of the image whose checksum record is `sum`.
pub fn identity_of(sum: &image_format::records::ChecksumRecord) -> Identity {
    let mut id = [0u8; 24];
    id[..8].copy_from_slice(&sum.headers.to_le_bytes());
    id[8..16].copy_from_slice(&sum.notes.to_le_bytes());
    id[16..].copy_from_slice(&sum.file_size.to_le_bytes());
    id
}

fn socket_name(pid: i32, start_time: u64) -> String {
    format!("crimg-incr-{pid}-{start_time}")
}

/// Whether process `pid` (as it is now: its start time) has a holder of
/// this user or root: its areas registered for async write-protect
/// (`VmFlags` `uw`) are then crimg's tracking, not the task's state.
pub fn tracks(pid: i32) -> bool {
    let start_time = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| crate::procfs::stat::parse(&t).ok())
        .map(|s| s.start_time);
    start_time.is_some_and(|st| matches!(Holder::connect(pid, st), Ok(Some(_))))
}

/// Requests: one byte, then an identity (ignored by [`GET`]).
const GET: u8 = b'G';
const SET: u8 = b'S';

/// A connection to the holder of one task's uffd.
pub struct Holder {
    sock: OwnedFd,
}

impl Holder {
    /// The holder of process `pid` started at `start_time`, if one runs
    /// (and belongs to this user or root).
    pub fn connect(pid: i32, start_time: u64) -> io::Result<Option<Holder>> {
        let sock = match sys::connect_abstract(socket_name(pid, start_time).as_bytes()) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let uid = sys::peer_uid(sock.as_fd())?;
        if uid != sys::uid() && uid != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the write-tracking holder of pid {pid} belongs to uid {uid}"),
            ));
        }
        Ok(Some(Holder { sock }))
    }

    /// A copy of the uffd, and the identity of the image it tracks from.
    pub fn take(&mut self) -> io::Result<(Identity, OwnedFd)> {
        let mut req = [0u8; 25];
        req[0] = GET;
        sys::send(self.sock.as_fd(), &req, None)?;
        let mut id = NO_IDENTITY;
        let fd = sys::recv(self.sock.as_fd(), &mut id)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTO))?;
        Ok((id, fd))
    }

    /// Sets the identity.
    pub fn set(&mut self, id: &Identity) -> io::Result<()> {
        let mut req = [0u8; 25];
        req[0] = SET;
        req[1..].copy_from_slice(id);
        sys::send(self.sock.as_fd(), &req, None)?;
        let mut ok = [0u8; 1];
        sys::recv(self.sock.as_fd(), &mut ok)?;
        if ok[0] != b'k' {
            return Err(io::Error::from_raw_os_error(libc::EPROTO));
        }
        Ok(())
    }
}

/// Starts the holder of `uffd` for process `pid` (started at
/// `start_time`), tracking from the image of identity `id`.
pub fn spawn(uffd: &OwnedFd, pid: i32, start_time: u64, id: &Identity) -> io::Result<()> {
    // Bound here, so that a name taken (another holder) fails the call.
    let listener = sys::listen_abstract(socket_name(pid, start_time).as_bytes())?;
    let pidfd = crate::sys::fds::pidfd_open(pid)?;
    let id = *id;
    sys::spawn_detached(
        [uffd.as_raw_fd(), listener.as_raw_fd(), pidfd.as_raw_fd()],
        || serve(uffd, &listener, &pidfd, id),
    )
}

/// The holder's loop: answers requests until the task exits.
fn serve(uffd: &OwnedFd, listener: &OwnedFd, pidfd: &OwnedFd, mut id: Identity) -> ! {
    let me = sys::uid();
    loop {
        let Ok((request, gone)) = sys::poll_two(listener.as_fd(), pidfd.as_fd()) else {
            sys::exit_now(1)
        };
        if gone {
            sys::exit_now(0);
        }
        if !request {
            continue;
        }
        let Ok(conn) = sys::accept(listener.as_fd()) else {
            continue;
        };
        match sys::peer_uid(conn.as_fd()) {
            Ok(uid) if uid == me || uid == 0 => {}
            _ => continue,
        }
        // One connection's requests, until it closes.
        let mut req = [0u8; 25];
        while sys::recv(conn.as_fd(), &mut req).is_ok() {
            let sent = match req[0] {
                GET => sys::send(conn.as_fd(), &id, Some(uffd.as_fd())),
                SET => {
                    id.copy_from_slice(&req[1..]);
                    sys::send(conn.as_fd(), b"k", None)
                }
                _ => break,
            };
            if sent.is_err() {
                break;
            }
        }
    }
}
