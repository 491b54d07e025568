//! crimg's own notes (owner `CRIMG`): fixed-layout little-endian records.
//!
//! Every crimg note's descriptor starts with a [`RecordHeader`] giving the
//! record version, the size of one record and their count; the records follow
//! back to back. A reader copies `min(record_size, size_of::<T>())` bytes of
//! each record and zero-fills the rest, so a newer writer may append fields to
//! a record and an older reader still reads the prefix it knows; note types a
//! reader does not know are skipped. Strings live once in the
//! [`note::STRTAB`] note and records refer to them with [`StrRef`].
//!
//! # Versions
//!
//! Two numbers, as in firecracker's snapshots: the image format version in
//! `e_ident` ([`crate::FORMAT_VERSION`]), for changes of the ELF layout
//! itself, and one version per record type ([`Record::VERSION`]), in every
//! [`RecordHeader`]. Appending a field to a record is *not* a new version
//! (the record size says it, and old readers read the prefix). A change an
//! old reader would misread (a field moved, resized or given a new meaning)
//! bumps [`Record::VERSION`]; a reader accepts the versions from
//! [`Record::OLDEST_VERSION`] to [`Record::VERSION`] and refuses any other
//! with [`crate::ImageError::UnsupportedRecordVersion`], naming the note.
//! Every known note's version is checked when an image is parsed
//! ([`KNOWN_NOTES`]), not only when it is first read.
//!
//! The golden image `tests/golden/v1/` (crate `crimg-tests`, test `golden`)
//! pins all of this: the current reader must parse it, with the same
//! values, for as long as it claims to read version 1.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

mod terminals;
pub use terminals::*;
mod event_objects;
mod shmem;
pub use shmem::*;
mod posix_timers;
pub use posix_timers::*;
mod fd_objects;
pub use event_objects::*;
pub use fd_objects::*;
mod sockets;
pub use sockets::*;
mod parent;
pub use parent::*;

/// Owner name of crimg's notes.
pub const OWNER_CRIMG: &[u8] = b"CRIMG";

/// Note types of crimg's own notes.
pub mod note {
    /// One [`super::ProcessRecord`].
    pub const PROCESS: u32 = 0x4352_0001;
    /// One [`super::CredsRecord`].
    pub const CREDS: u32 = 0x4352_0002;
    /// One [`super::MmRecord`].
    pub const MM: u32 = 0x4352_0003;
    /// [`super::RlimitRecord`]s, one per resource.
    pub const RLIMITS: u32 = 0x4352_0004;
    /// [`super::SigactionRecord`]s for signals 1..=64.
    pub const SIGACTIONS: u32 = 0x4352_0005;
    /// [`super::ItimerRecord`]s: real, virtual, prof.
    pub const ITIMERS: u32 = 0x4352_0006;
    /// [`super::ThreadRecord`]s, in the same order as the `NT_PRSTATUS` notes.
    pub const THREADS: u32 = 0x4352_0007;
    /// [`super::VmaRecord`]s, sorted by address, not overlapping.
    pub const VMAS: u32 = 0x4352_0008;
    /// [`super::FdRecord`]s, sorted by fd number.
    pub const FDS: u32 = 0x4352_0009;
    /// [`super::PendingSignalRecord`]s.
    pub const PENDING: u32 = 0x4352_000a;
    /// Raw bytes (no record header): the strings [`super::StrRef`]s point into.
    pub const STRTAB: u32 = 0x4352_000b;
    /// One [`super::GadgetsRecord`].
    pub const GADGETS: u32 = 0x4352_000c;
    /// [`super::WarningRecord`]s: state the dump could not keep.
    pub const WARNINGS: u32 = 0x4352_000d;
    /// [`super::SegmentChecksumRecord`]s, one per `PT_LOAD`, in program header order.
    pub const SEGMENT_CHECKSUMS: u32 = 0x4352_000e;
    /// One [`super::ChecksumRecord`]; always the last note of the image.
    pub const CHECKSUM: u32 = 0x4352_000f;
    // The kernel objects behind fds and areas (one note per kind; an
    // `FdRecord::object` is a 1-based index into its kind's note).
    /// [`super::PipeRecord`]s: pipes and FIFOs with their buffered bytes.
    pub const PIPES: u32 = 0x4352_0010;
    /// [`super::EventfdRecord`]s.
    pub const EVENTFDS: u32 = 0x4352_0011;
    /// [`super::SignalfdRecord`]s.
    pub const SIGNALFDS: u32 = 0x4352_0012;
    /// [`super::TimerfdRecord`]s.
    pub const TIMERFDS: u32 = 0x4352_0013;
    /// The interest lists of the epoll fds, one record per watched fd
    /// ([`super::EpollItemRecord`]).
    pub const EPOLL_ITEMS: u32 = 0x4352_0014;
    /// [`super::InotifyWatchRecord`]s.
    pub const INOTIFY_WATCHES: u32 = 0x4352_0015;
    /// [`super::PosixTimerRecord`]s, one per POSIX timer (`timer_create`).
    pub const POSIX_TIMERS: u32 = 0x4352_0016;
    /// memfds, shared anonymous memory and deleted files.
    pub const SHMEM: u32 = 0x4352_0017;
    /// [`super::SocketRecord`]s.
    pub const SOCKETS: u32 = 0x4352_0018;
    /// [`super::TerminalRecord`]s, one per terminal fd's description.
    pub const TERMINALS: u32 = 0x4352_0019;
    /// fds whose object was not saved (`crdump --force`).
    pub const DROPPED: u32 = 0x4352_001a;
    /// One [`super::ParentRecord`]: an incremental image's parent.
    pub const PARENT: u32 = 0x4352_001b;

    /// The lowest and highest crimg note type numbers in use; the reader
    /// indexes these at parse.
    pub const FIRST: u32 = PROCESS;
    pub const LAST: u32 = PARENT;

    /// The name of a crimg note type, for messages (`"unknown"` for a type
    /// this build does not know).
    pub const fn name(note_type: u32) -> &'static str {
        match note_type {
            PROCESS => "PROCESS",
            CREDS => "CREDS",
            MM => "MM",
            RLIMITS => "RLIMITS",
            SIGACTIONS => "SIGACTIONS",
            ITIMERS => "ITIMERS",
            THREADS => "THREADS",
            VMAS => "VMAS",
            FDS => "FDS",
            PENDING => "PENDING",
            STRTAB => "STRTAB",
            GADGETS => "GADGETS",
            WARNINGS => "WARNINGS",
            SEGMENT_CHECKSUMS => "SEGMENT_CHECKSUMS",
            CHECKSUM => "CHECKSUM",
            PIPES => "PIPES",
            EVENTFDS => "EVENTFDS",
            SIGNALFDS => "SIGNALFDS",
            TIMERFDS => "TIMERFDS",
            EPOLL_ITEMS => "EPOLL_ITEMS",
            INOTIFY_WATCHES => "INOTIFY_WATCHES",
            POSIX_TIMERS => "POSIX_TIMERS",
            SHMEM => "SHMEM",
            SOCKETS => "SOCKETS",
            TERMINALS => "TERMINALS",
            DROPPED => "DROPPED",
            PARENT => "PARENT",
            _ => "unknown",
        }
    }
}

/// Start of every crimg note descriptor except [`note::STRTAB`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RecordHeader {
    pub version: u16,
    pub record_size: u16,
    pub count: u32,
}
const _: () = assert!(core::mem::size_of::<RecordHeader>() == 8);

/// A record type of a crimg note.
pub trait Record: FromBytes + IntoBytes + Immutable + KnownLayout + Copy {
    /// The note type carrying records of this type.
    const NOTE_TYPE: u32;
    /// Layout version written by this crate, and the newest it reads.
    const VERSION: u16 = 1;
    /// The oldest layout version this crate still reads.
    const OLDEST_VERSION: u16 = 1;
    /// `RecordHeader::record_size` of this record as written.
    const SIZE: u16 = {
        assert!(core::mem::size_of::<Self>() <= u16::MAX as usize);
        #[allow(clippy::cast_possible_truncation)] // asserted just above
        let size = core::mem::size_of::<Self>() as u16;
        size
    };
}

/// The record versions a reader accepts for one note type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteVersions {
    pub note_type: u32,
    pub oldest: u16,
    pub newest: u16,
}

impl NoteVersions {
    /// The versions of record type `T`'s note.
    pub const fn of<T: Record>() -> NoteVersions {
        NoteVersions {
            note_type: T::NOTE_TYPE,
            oldest: T::OLDEST_VERSION,
            newest: T::VERSION,
        }
    }

    /// Whether a record header of this version can be read.
    pub const fn accepts(&self, version: u16) -> bool {
        self.oldest <= version && version <= self.newest
    }
}

/// Every crimg note with a [`RecordHeader`] (all but [`note::STRTAB`]), and
/// the record versions this build reads.
pub const KNOWN_NOTES: &[NoteVersions] = &[
    NoteVersions::of::<ProcessRecord>(),
    NoteVersions::of::<CredsRecord>(),
    NoteVersions::of::<MmRecord>(),
    NoteVersions::of::<RlimitRecord>(),
    NoteVersions::of::<SigactionRecord>(),
    NoteVersions::of::<ItimerRecord>(),
    NoteVersions::of::<ThreadRecord>(),
    NoteVersions::of::<VmaRecord>(),
    NoteVersions::of::<FdRecord>(),
    NoteVersions::of::<PendingSignalRecord>(),
    NoteVersions::of::<GadgetsRecord>(),
    NoteVersions::of::<WarningRecord>(),
    NoteVersions::of::<SegmentChecksumRecord>(),
    NoteVersions::of::<ChecksumRecord>(),
    NoteVersions::of::<PosixTimerRecord>(),
    NoteVersions::of::<PipeRecord>(),
    NoteVersions::of::<EventfdRecord>(),
    NoteVersions::of::<TerminalRecord>(),
    NoteVersions::of::<SignalfdRecord>(),
    NoteVersions::of::<TimerfdRecord>(),
    NoteVersions::of::<EpollItemRecord>(),
    NoteVersions::of::<InotifyWatchRecord>(),
    NoteVersions::of::<SocketRecord>(),
    NoteVersions::of::<ShmemRecord>(),
    NoteVersions::of::<ParentRecord>(),
];

/// A string in the [`note::STRTAB`] note (bytes, not NUL-terminated).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct StrRef {
    pub offset: u32,
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<StrRef>() == 8);

/// What identifies a file's contents well enough to notice it changed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}
const _: () = assert!(core::mem::size_of::<FileId>() == 40);

/// `ProcessRecord::flags`: the dump ran with privileges the restorer may lack.
pub const PROCESS_DUMPED_AS_ROOT: u32 = 1;
/// `ProcessRecord::flags`: transparent huge pages were disabled for the
/// process (`prctl(PR_SET_THP_DISABLE, 1)`, status `THP_enabled: 0`).
/// Images written before this bit existed never set it.
pub const PROCESS_THP_DISABLED: u32 = 1 << 1;
/// `ProcessRecord::flags`, with [`PROCESS_THP_DISABLED`]: disabled except
/// in areas advised `MADV_HUGEPAGE` (`PR_THP_DISABLE_EXCEPT_ADVISED`).
pub const PROCESS_THP_EXCEPT_ADVISED: u32 = 1 << 2;
/// `ProcessRecord::flags`: KSM merges every eligible area of the process
/// (`prctl(PR_SET_MEMORY_MERGE, 1)`, `ksm_merge_any: yes`).
pub const PROCESS_KSM_MERGE_ANY: u32 = 1 << 3;
/// `ProcessRecord::flags`: memory-deny-write-execute was on
/// (`prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`).
pub const PROCESS_MDWE_REFUSE_EXEC_GAIN: u32 = 1 << 4;
/// `ProcessRecord::flags`, with [`PROCESS_MDWE_REFUSE_EXEC_GAIN`]: not
/// inherited by children (`PR_MDWE_NO_INHERIT`).
pub const PROCESS_MDWE_NO_INHERIT: u32 = 1 << 5;
/// `ProcessRecord::flags`: bits [`PROCESS_COREDUMP_FILTER_SHIFT`].. hold
/// the mm's `/proc/P/coredump_filter` (9 bits). Without this bit (images
/// written before it existed) the filter is unknown and left as it is.
pub const PROCESS_COREDUMP_FILTER_KNOWN: u32 = 1 << 6;
pub const PROCESS_COREDUMP_FILTER_SHIFT: u32 = 16;
pub const PROCESS_COREDUMP_FILTER_MASK: u32 = 0x1ff << PROCESS_COREDUMP_FILTER_SHIFT;

#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ProcessRecord {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub nthreads: u32,
    pub umask: u32,
    pub personality: u32,
    pub flags: u32,
    /// `tty_nr` from `/proc/P/stat` (0: no controlling terminal).
    pub tty_nr: u32,
    pub page_size: u32,
    /// Process start time, clock ticks after boot (`/proc/P/stat` field 22).
    pub start_time: u64,
    /// `CLOCK_REALTIME` at the dump, nanoseconds.
    pub dump_time_ns: u64,
    pub exe: StrRef,
    pub exe_id: FileId,
    pub cwd: StrRef,
    pub root: StrRef,
    /// The command line as NUL-separated bytes (what `/proc/P/cmdline` showed).
    pub cmdline: StrRef,
    pub comm: [u8; 16],
    /// The working directory's identity; only `dev` and `ino` are meaningful
    /// (a directory's size and mtime change with its entries). Zero when
    /// unknown, or in images written before this field existed.
    pub cwd_id: FileId,
}
const _: () = assert!(core::mem::size_of::<ProcessRecord>() == 184);
impl Record for ProcessRecord {
    const NOTE_TYPE: u32 = note::PROCESS;
}

/// Maximum supplementary groups kept.
pub const MAX_GROUPS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CredsRecord {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub ngroups: u32,
    pub securebits: u32,
    pub groups: [u32; MAX_GROUPS],
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CredsRecord>() == 344);
impl Record for CredsRecord {
    const NOTE_TYPE: u32 = note::CREDS;
}

/// The mm fields that `prctl(PR_SET_MM, PR_SET_MM_MAP)` takes (the auxv is the
/// `NT_AUXV` note).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MmRecord {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    /// The exact program break, as `brk(0)` returned inside the task.
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}
const _: () = assert!(core::mem::size_of::<MmRecord>() == 88);
impl Record for MmRecord {
    const NOTE_TYPE: u32 = note::MM;
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RlimitRecord {
    pub resource: u32,
    pub _pad: u32,
    pub cur: u64,
    pub max: u64,
}
const _: () = assert!(core::mem::size_of::<RlimitRecord>() == 24);
impl Record for RlimitRecord {
    const NOTE_TYPE: u32 = note::RLIMITS;
}

/// A signal's disposition, as the kernel's `struct sigaction` for
/// `rt_sigaction` (handler 0 = SIG_DFL, 1 = SIG_IGN).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SigactionRecord {
    pub signo: u32,
    pub _pad: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}
const _: () = assert!(core::mem::size_of::<SigactionRecord>() == 40);
impl Record for SigactionRecord {
    const NOTE_TYPE: u32 = note::SIGACTIONS;
}

/// One interval timer (`which`: 0 real, 1 virtual, 2 prof).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ItimerRecord {
    pub which: u32,
    pub _pad: u32,
    pub interval: crate::elf::Timeval,
    pub value: crate::elf::Timeval,
}
const _: () = assert!(core::mem::size_of::<ItimerRecord>() == 40);
impl Record for ItimerRecord {
    const NOTE_TYPE: u32 = note::ITIMERS;
}

/// `ThreadRecord::restart`: what the dumper did to a syscall the thread was in.
pub mod restart {
    /// The thread was not in a syscall (or the syscall had completed).
    pub const NONE: u32 = 0;
    /// `-ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND`: `rip -= 2`, `rax = orig_rax`.
    pub const RESTART: u32 = 1;
    /// `-ERESTART_RESTARTBLOCK`: the kernel's restart data is lost; `rax = -EINTR`.
    pub const EINTR: u32 = 2;
}

/// Per-thread state not carried by the standard register notes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ThreadRecord {
    pub tid: i32,
    /// One of [`restart`].
    pub restart: u32,
    pub sigmask: u64,
    pub altstack_sp: u64,
    pub altstack_size: u64,
    pub altstack_flags: i32,
    pub rseq_len: u32,
    pub rseq_addr: u64,
    pub rseq_sig: u32,
    pub rseq_flags: u32,
    pub robust_list_head: u64,
    pub robust_list_len: u64,
    pub clear_child_tid: u64,
    pub comm: [u8; 16],
    /// The syscall the thread was in (`orig_rax`), or -1.
    pub syscall_nr: i64,
    /// `rax` as the dumper found it, before the restart fix-up.
    pub syscall_ret: i64,
}
const _: () = assert!(core::mem::size_of::<ThreadRecord>() == 112);
impl Record for ThreadRecord {
    const NOTE_TYPE: u32 = note::THREADS;
}

/// `VmaRecord::kind`.
pub mod vma_kind {
    pub const ANON: u32 = 0;
    pub const FILE: u32 = 1;
    pub const HEAP: u32 = 2;
    pub const STACK: u32 = 3;
    pub const VDSO: u32 = 4;
    pub const VVAR: u32 = 5;
    pub const VVAR_VCLOCK: u32 = 6;
    pub const VSYSCALL: u32 = 7;
    /// Shared anonymous memory (`/dev/zero`, `MAP_SHARED|MAP_ANONYMOUS`, SysV shm).
    pub const SHARED_ANON: u32 = 8;
}

/// `VmaRecord::flags` bits (from `/proc/P/smaps` `VmFlags`).
pub mod vma_flags {
    pub const SHARED: u32 = 1 << 0;
    pub const GROWSDOWN: u32 = 1 << 1;
    pub const DONTDUMP: u32 = 1 << 2;
    pub const DONTFORK: u32 = 1 << 3;
    pub const HUGEPAGE: u32 = 1 << 4;
    pub const NOHUGEPAGE: u32 = 1 << 5;
    pub const LOCKED: u32 = 1 << 6;
    pub const WIPEONFORK: u32 = 1 << 7;
    pub const RANDOM: u32 = 1 << 8;
    pub const SEQUENTIAL: u32 = 1 << 9;
    /// `/proc/P/maps` showed the mapped file as `(deleted)`.
    pub const FILE_DELETED: u32 = 1 << 10;
    pub const MAYSHARE: u32 = 1 << 11;
    // The bits below were added after the first images were written; an
    // older image simply lacks them (and restores as older loaders did).
    /// `nr` (`VM_NORESERVE`, `MAP_NORESERVE`): no commit charge.
    pub const NORESERVE: u32 = 1 << 12;
    /// `ac` (`VM_ACCOUNT`): the area is charged to the commit count (it was
    /// writable once, even if it is not now).
    pub const ACCOUNT: u32 = 1 << 13;
    /// `lf` (`VM_LOCKONFAULT`, `mlock2(MLOCK_ONFAULT)`); with [`LOCKED`].
    pub const LOCKONFAULT: u32 = 1 << 14;
    /// `mg` (`VM_MERGEABLE`, `MADV_MERGEABLE`).
    pub const MERGEABLE: u32 = 1 << 15;
    /// `dp` (`VM_DROPPABLE`, `MAP_DROPPABLE`, Linux 6.11+).
    pub const DROPPABLE: u32 = 1 << 16;
    /// `mw` (`VM_MAYWRITE`): with [`SHARED`] on a file, the task's fd was
    /// writable, so `mprotect(PROT_WRITE)` works on the area.
    pub const MAYWRITE: u32 = 1 << 17;
}

/// `VmaRecord::prot` uses the `PROT_*` values: read 1, write 2, exec 4.
pub mod prot {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const EXEC: u32 = 4;
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VmaRecord {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`, in bytes.
    pub pgoff: u64,
    pub prot: u32,
    pub flags: u32,
    /// One of [`vma_kind`].
    pub kind: u32,
    pub _pad: u32,
    /// The path as `/proc/P/maps` printed it (without ` (deleted)`).
    pub path: StrRef,
    pub file: FileId,
    /// The shared memory object or saved file the area maps: 1-based index
    /// of its [`ShmemRecord`] in the [`note::SHMEM`] note; 0 (and in images
    /// written before this field existed): none, a file is opened by path.
    pub object: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<VmaRecord>() == 96);
impl Record for VmaRecord {
    const NOTE_TYPE: u32 = note::VMAS;
}

/// `FdRecord::kind`.
pub mod fd_kind {
    pub const REGULAR: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const PIPE: u32 = 2;
    pub const FIFO: u32 = 3;
    pub const SOCKET: u32 = 4;
    pub const CHAR: u32 = 5;
    pub const BLOCK: u32 = 6;
    /// `anon_inode:[…]` (eventfd, epoll, signalfd, timerfd, …); the path says which.
    pub const ANON_INODE: u32 = 7;
    /// A terminal (pty or console), kept apart from other character devices.
    pub const TTY: u32 = 8;
    pub const MEMFD: u32 = 9;
    // The `anon_inode:[…]` kinds crimg knows; images written before these
    // existed say ANON_INODE for all of them (and were refused).
    pub const EVENTFD: u32 = 10;
    pub const SIGNALFD: u32 = 11;
    pub const TIMERFD: u32 = 12;
    pub const EPOLL: u32 = 13;
    pub const INOTIFY: u32 = 14;
    pub const IO_URING: u32 = 15;
}

/// `FdRecord::flags` bits.
pub mod fd_flags {
    /// `FD_CLOEXEC` was set.
    pub const CLOEXEC: u32 = 1;
    /// The file was deleted while open.
    pub const DELETED: u32 = 2;
    /// The fd's object was not saved (`crdump --force`): the loader puts
    /// `/dev/null` there, opened with the fd's access mode, and says so.
    /// `kind` and `path` still tell what it was.
    pub const DROPPED: u32 = 4;
    /// Another process of the dumped tree holds this fd's object too
    /// (`manifest.json` lists where): `crrestore-tree` places it shared;
    /// a direct run of this image alone gets a private copy, and says so.
    pub const SHARED_IN_TREE: u32 = 8;
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FdRecord {
    pub fd: i32,
    /// One of [`fd_kind`].
    pub kind: u32,
    /// [`fd_flags`] bits.
    pub flags: u32,
    /// `O_*` status flags from `/proc/P/fdinfo/N`.
    pub open_flags: u32,
    pub pos: u64,
    pub mnt_id: u32,
    /// `st_mode` of the open file.
    pub mode: u32,
    /// `readlink /proc/P/fd/N`.
    pub path: StrRef,
    pub file: FileId,
    // Appended (images before have none: every fd its own description,
    // no object).
    /// The open file description, 1-based: fds sharing one (`dup`,
    /// `2>&1`) have the same number and are restored as one. 0: unknown.
    pub desc: u32,
    /// 1-based index of the fd's object in its kind's note ([`note::PIPES`]
    /// for a pipe, …); 0: none.
    pub object: u32,
}
const _: () = assert!(core::mem::size_of::<FdRecord>() == 88);
impl Record for FdRecord {
    const NOTE_TYPE: u32 = note::FDS;
}

/// A pending signal; `tid == 0` means process-wide (shared) pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PendingSignalRecord {
    pub tid: i32,
    pub _pad: u32,
    /// The kernel's `siginfo_t`, as `PTRACE_PEEKSIGINFO` returned it.
    pub siginfo: [u8; 128],
}
const _: () = assert!(core::mem::size_of::<PendingSignalRecord>() == 136);
impl Record for PendingSignalRecord {
    const NOTE_TYPE: u32 = note::PENDING;
}

/// Instruction sequences found in the task's own executable memory, which the
/// loader borrows to leave no trace (see LOADER.md, stage 4). 0: none found.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GadgetsRecord {
    /// Address of `syscall; ret` (`0f 05 c3`).
    pub syscall_ret: u64,
    /// Address of `mov $15, %eax; syscall` (`b8 0f 00 00 00 0f 05`).
    pub rt_sigreturn: u64,
}
const _: () = assert!(core::mem::size_of::<GadgetsRecord>() == 16);
impl Record for GadgetsRecord {
    const NOTE_TYPE: u32 = note::GADGETS;
}

/// State the dump could not keep, said in the image rather than lost silently.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WarningRecord {
    pub message: StrRef,
}
const _: () = assert!(core::mem::size_of::<WarningRecord>() == 8);
impl Record for WarningRecord {
    const NOTE_TYPE: u32 = note::WARNINGS;
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SegmentChecksumRecord {
    /// [`crate::checksum`] of the segment's file bytes.
    pub checksum: u64,
}
const _: () = assert!(core::mem::size_of::<SegmentChecksumRecord>() == 8);
impl Record for SegmentChecksumRecord {
    const NOTE_TYPE: u32 = note::SEGMENT_CHECKSUMS;
}

/// The image's own integrity record, in the last note.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ChecksumRecord {
    /// [`crate::checksum`] of the ELF header and program header table.
    pub headers: u64,
    /// [`crate::checksum`] of every note byte before this note.
    pub notes: u64,
    /// Total image size in bytes; catches truncation before anything else.
    pub file_size: u64,
}
const _: () = assert!(core::mem::size_of::<ChecksumRecord>() == 24);
impl Record for ChecksumRecord {
    const NOTE_TYPE: u32 = note::CHECKSUM;
}
