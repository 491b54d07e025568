//! The kernel objects behind fds, restored in stage 1: one module per
//! kind, each creating its object (above the task's fd numbers, where the
//! plan's `dup3`s move it from) with the state the dumper's module of the
//! same name saved. [`Made`] remembers what was created, so that an
//! object several fds refer to is created once.

pub mod epoll;
pub mod eventfd;
pub mod inotify;
pub mod pipe;
pub mod shmem;
pub mod signalfd;
pub mod socket;
pub mod terminal;
pub mod timerfd;

use image_format::records::{
    fd_kind, EventfdRecord, FdRecord, PipeRecord, SignalfdRecord, SocketRecord, TerminalRecord,
    TimerfdRecord,
};
use image_format::Image;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::check::os::Os;
use crate::check::CheckError;
use crate::sys::Errno;

/// One object created: its fds (for a pipe: read end, write end; else
/// the first only) and whether the task's first description of each has
/// taken it (later ones open it again through `/proc/self/fd`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MadeObject {
    pub kind: u32,
    pub object: u32,
    pub fds: [i32; 2],
    pub taken: [u32; 2],
}

/// The objects stage 1 made so far (a table in its scratch memory, one
/// slot per fd record: an object has at least one fd).
pub struct Made {
    pub slots: &'static mut [MadeObject],
    pub len: usize,
}

impl Made {
    /// The object `kind`/`object` made earlier.
    pub fn find(&mut self, kind: u32, object: u32) -> Option<&mut MadeObject> {
        self.slots[..self.len]
            .iter_mut()
            .find(|m| m.kind == kind && m.object == object)
    }

    /// Remember a new object.
    pub fn add(&mut self, made: MadeObject) -> Result<&mut MadeObject, CheckError> {
        let slot = self
            .slots
            .get_mut(self.len)
            .ok_or(CheckError::ScratchShort {
                table: "objects",
                items: self.len + 1,
            })?;
        *slot = made;
        self.len += 1;
        Ok(slot)
    }
}

/// A restore step of an object that failed.
pub fn failed(f: &FdRecord, step: &'static str) -> impl FnOnce(Errno) -> CheckError {
    let fd = f.fd;
    move |errno| CheckError::Object { fd, step, errno }
}

/// `fd`, moved to a number at or above `base` if it is below.
pub fn lift(os: &impl Os, fd: i32, base: i32) -> Result<i32, Errno> {
    if fd >= base {
        return Ok(fd);
    }
    let high = os.dup_above(fd, base);
    os.close(fd);
    high
}

/// `/proc/sys/fs/pipe-max-size` (1 MiB when it cannot be read).
pub fn pipe_max_size(os: &impl Os) -> u32 {
    let mut buf = [0u8; 24];
    let n = os
        .read_file(b"/proc/sys/fs/pipe-max-size", &mut buf)
        .unwrap_or(0);
    let text = core::str::from_utf8(&buf[..n]).unwrap_or("");
    text.trim()
        .parse()
        .unwrap_or(image_format::records::MAX_PIPE_SIZE)
}

/// Whether the loader restores fds of `kind` as objects (from the note
/// `object` indexes).
pub fn is_object(kind: u32) -> bool {
    matches!(
        kind,
        fd_kind::PIPE
            | fd_kind::FIFO
            | fd_kind::EVENTFD
            | fd_kind::SIGNALFD
            | fd_kind::TIMERFD
            | fd_kind::EPOLL
            | fd_kind::INOTIFY
            | fd_kind::TTY
            | fd_kind::SOCKET
    )
}

/// How many objects of fd kind `kind` the image holds.
pub fn count(image: &Image<'_>, kind: u32) -> Result<u32, image_format::ImageError> {
    Ok(match kind {
        fd_kind::PIPE | fd_kind::FIFO => image.records::<PipeRecord>()?.len(),
        fd_kind::EVENTFD => image.records::<EventfdRecord>()?.len(),
        fd_kind::TTY => image.records::<TerminalRecord>()?.len(),
        fd_kind::SIGNALFD => image.records::<SignalfdRecord>()?.len(),
        fd_kind::TIMERFD => image.records::<TimerfdRecord>()?.len(),
        // Instance numbers: their watches (items) name them, and one
        // without any has no record; any number is an instance.
        fd_kind::EPOLL | fd_kind::INOTIFY => u32::MAX,
        fd_kind::SOCKET => image.records::<SocketRecord>()?.len(),
        _ => 0,
    })
}

/// Create (or find) the object of fd record `f` and return an fd on one
/// open file description of it, above `base`, with the record's status
/// flags.
pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    path: &'static [u8],
    base: i32,
    made: &mut Made,
) -> Result<i32, CheckError> {
    let fd = match f.kind {
        fd_kind::PIPE | fd_kind::FIFO => pipe::open(os, image, f, path, base, made)?,
        fd_kind::EVENTFD => eventfd::open(os, image, f, base)?,
        // Its status flags are set there (a duplicate of the caller's
        // terminal keeps the caller's).
        fd_kind::TTY => return terminal::open(os, image, f, base),
        fd_kind::SIGNALFD => signalfd::open(os, image, f, base)?,
        fd_kind::TIMERFD => timerfd::open(os, image, f, base)?,
        fd_kind::INOTIFY => inotify::open(os, image, f, base)?,
        fd_kind::EPOLL => epoll::open(os, f, base)?,
        fd_kind::SOCKET => socket::open(os, image, f, base, made)?,
        _ => {
            return Err(CheckError::UnsupportedFd {
                fd: f.fd,
                kind: f.kind,
                path,
            })
        }
    };
    os.set_status_flags(fd, f.open_flags)
        .map_err(failed(f, "set its status flags"))?;
    Ok(fd)
}
