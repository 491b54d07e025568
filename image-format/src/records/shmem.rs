//! Shared memory objects and files without a name: memfds, shared
//! anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, `/dev/zero`, SysV
//! segments), deleted files still open or mapped ("ghosts"), and shared
//! file mappings that another program may delete while the task is in its
//! image (the JVM's perf-data file). One [`ShmemRecord`] per object (per
//! inode); every [`super::VmaRecord`] that maps one, and every
//! [`super::FdRecord`] open on one, names it by its 1-based index in the
//! [`super::note::SHMEM`] note (`object`, 0: none).
//!
//! The object's bytes are kept once: either as the stored pages of the
//! areas that map it (each object offset in the first area that maps it;
//! the loader maps every area from the one restored file, so the pages land
//! in the file), or, for objects whose content cannot be written through a
//! mapping (write-sealed memfds, deleted files mapped privately or only
//! open, data no area maps), as the whole content in
//! [`ShmemRecord::content`], bounded by the dumper's `--ghost-limit`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, FileId, Record, StrRef};

/// `ShmemRecord::kind`.
pub mod shmem_kind {
    /// A memfd (`memfd_create`): restored as a memfd with the same name.
    pub const MEMFD: u32 = 1;
    /// Shared anonymous memory (a shmem inode with no name a program can
    /// open): restored as a memfd named as `/proc/P/maps` named the object.
    pub const SHARED_ANON: u32 = 2;
    /// A regular file deleted while open or mapped: restored as an
    /// unlinked file with the saved content.
    pub const GHOST: u32 = 3;
    /// A shared-mapped file that still exists, whose content is saved
    /// because other programs delete such files (the JVM's
    /// `/tmp/hsperfdata_USER/PID`): recreated at its path when missing.
    pub const RECREATE: u32 = 4;
}

/// `ShmemRecord::flags` bits.
pub mod shmem_flags {
    /// [`super::ShmemRecord::content`] holds the object's whole content
    /// (`size` bytes, holes as zeros); no area of the object has stored
    /// pages.
    pub const WHOLE_CONTENT: u32 = 1;
}

/// `fcntl(F_GET_SEALS)` bits.
pub mod seals {
    pub const SEAL: u32 = 0x1;
    pub const SHRINK: u32 = 0x2;
    pub const GROW: u32 = 0x4;
    pub const WRITE: u32 = 0x8;
    pub const FUTURE_WRITE: u32 = 0x10;
    pub const EXEC: u32 = 0x20;
    /// Seals that forbid writing the content through a new mapping or
    /// `write`. An object sealed `WRITE` has its content saved whole and is
    /// sealed before it is mapped again (no writable shared mapping of it
    /// can exist); one sealed `FUTURE_WRITE` (which keeps the writable
    /// mappings made before it) is filled through its areas and sealed
    /// after them.
    pub const ANY_WRITE: u32 = WRITE | FUTURE_WRITE;
}

/// One shared memory object or saved file.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ShmemRecord {
    /// One of [`shmem_kind`].
    pub kind: u32,
    /// [`shmem_flags`] bits.
    pub flags: u32,
    /// The file size (`st_size`) at the dump.
    pub size: u64,
    /// `F_GET_SEALS` ([`seals`]); 0 for files that are not memfds. A memfd
    /// made without `MFD_ALLOW_SEALING` shows `F_SEAL_SEAL`: the restored
    /// one is made with it and sealed so, which is the same.
    pub seals: u32,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// `st_uid`, `st_gid`.
    pub uid: u32,
    pub gid: u32,
    /// A memfd's name (what follows `memfd:`), or the path of a ghost or
    /// recreated file as `/proc/P/maps` showed it.
    pub name: StrRef,
    /// With [`shmem_flags::WHOLE_CONTENT`]: the content, in the string
    /// table (at most `size` bytes; the rest is zeros).
    pub content: StrRef,
    /// The object's identity at the dump (`dev`, `ino` find its areas and
    /// fds; a recreated file's is compared when the file is there).
    pub file: FileId,
}
const _: () = assert!(core::mem::size_of::<ShmemRecord>() == 88);
impl Record for ShmemRecord {
    const NOTE_TYPE: u32 = note::SHMEM;
}
