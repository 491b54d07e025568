//! The kernel objects behind fds that live inside one process: pipes and
//! FIFOs, eventfds. Each kind has its own note; `FdRecord::object` is a
//! 1-based index into it, and every fd on the object names the same one.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record, StrRef};

/// `PipeRecord::flags` bits.
pub mod pipe_flags {
    /// A named pipe, reopened by the path of its fds (`FdRecord::path`).
    pub const FIFO: u32 = 1;
    /// Every bit this format defines.
    pub const KNOWN: u32 = FIFO;
}

/// The largest pipe crimg saves and restores, bytes: the default
/// `pipe-max-size`, above which an unprivileged process cannot go (and
/// which a loader running as root must not grant a user's image).
pub const MAX_PIPE_SIZE: u32 = 1 << 20;

/// A pipe (or FIFO) whose ends are all in the process, with the bytes
/// that were buffered in it, in order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PipeRecord {
    /// The pipe's inode at the dump (`pipe:[ino]`), for messages.
    pub ino: u64,
    /// `F_GETPIPE_SZ`, bytes.
    pub size: u32,
    /// [`pipe_flags`] bits.
    pub flags: u32,
    /// The buffered bytes (in the string table).
    pub data: StrRef,
}
const _: () = assert!(core::mem::size_of::<PipeRecord>() == 24);
impl Record for PipeRecord {
    const NOTE_TYPE: u32 = note::PIPES;
}

/// `EventfdRecord::flags` bits.
pub mod eventfd_flags {
    /// `EFD_SEMAPHORE`.
    pub const SEMAPHORE: u32 = 1;
    /// Every bit this format defines.
    pub const KNOWN: u32 = SEMAPHORE;
}

/// The largest count an eventfd holds (`ULLONG_MAX - 1`).
pub const MAX_EVENTFD_COUNT: u64 = u64::MAX - 1;

/// An eventfd's counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EventfdRecord {
    pub count: u64,
    /// [`eventfd_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventfdRecord>() == 16);
impl Record for EventfdRecord {
    const NOTE_TYPE: u32 = note::EVENTFDS;
}
