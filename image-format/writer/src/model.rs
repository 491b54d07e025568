//! The collected state of one task as plain data: what the dumper fills in
//! and the writer lays out. Records hold fixed fields; strings and variable
//! payloads (paths, xsave areas, auxv) sit beside them as owned values, and
//! the writer interns the strings into the string table.

use image_format::elf::UserRegs;
use image_format::records::{
    CredsRecord, EventfdRecord, FdRecord, GadgetsRecord, ItimerRecord, MmRecord,
    PendingSignalRecord, PosixTimerRecord, ProcessRecord, RlimitRecord, ShmemRecord,
    SigactionRecord, ThreadRecord, VmaRecord,
};

/// One thread: its registers and per-thread extras.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadState {
    /// `tid`, restart, sigmask, altstack, rseq, robust list, tid address, comm.
    pub record: ThreadRecord,
    /// General registers after the interrupted-syscall fix-up.
    pub regs: UserRegs,
    /// The `NT_X86_XSTATE` regset as ptrace returned it (standard format); its
    /// first 512 bytes are the `NT_PRFPREG` payload.
    pub xsave: Vec<u8>,
}

/// One memory area. `record.path` is filled in by the writer from `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaState {
    pub record: VmaRecord,
    pub path: String,
}

/// One open file descriptor. `record.path` is filled in by the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdState {
    pub record: FdRecord,
    pub path: String,
}

/// One shared memory object or saved file (`records::ShmemRecord`);
/// `record.name` and `record.content` are filled in by the writer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShmemState {
    pub record: ShmemRecord,
    pub name: Vec<u8>,
    /// The whole content, with `shmem_flags::WHOLE_CONTENT`; else empty.
    pub content: Vec<u8>,
}

/// A pipe or FIFO: its record (`data` is filled in by the writer) and
/// the bytes buffered in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipeState {
    pub record: image_format::records::PipeRecord,
    pub data: Vec<u8>,
}

/// The kernel objects behind the task's fds, one list per kind, in the
/// order `FdRecord::object` counts them (1-based).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectStates {
    pub pipes: Vec<PipeState>,
    pub eventfds: Vec<EventfdRecord>,
    /// One per terminal fd's description, in fd order.
    pub terminals: Vec<image_format::records::TerminalRecord>,
    pub signalfds: Vec<image_format::records::SignalfdRecord>,
    pub timerfds: Vec<image_format::records::TimerfdRecord>,
    /// Every watch of every inotify instance (`path` is filled in by the
    /// writer).
    pub inotify_watches: Vec<InotifyWatchState>,
    /// Every item of every epoll instance.
    pub epoll_items: Vec<image_format::records::EpollItemRecord>,
    pub sockets: Vec<SocketState>,
    /// Shared memory objects and saved files; `VmaRecord::object` and
    /// `FdRecord::object` of a memfd are 1-based indexes into it.
    pub shmem: Vec<ShmemState>,
    /// The POSIX timers (`timer_create`), by id; not behind an fd.
    pub posix_timers: Vec<PosixTimerRecord>,
}

/// One inotify watch: its record and the watched file's path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InotifyWatchState {
    pub record: image_format::records::InotifyWatchRecord,
    pub path: Vec<u8>,
}

/// A socket: its record (`addr`, `queue`, `options` are filled in by the
/// writer) and what they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub record: image_format::records::SocketRecord,
    /// The `sockaddr` bound.
    pub addr: Vec<u8>,
    /// The data waiting to be received (framed per datagram for
    /// datagram and seqpacket sockets, see `SocketRecord`).
    pub queue: Vec<u8>,
    pub options: Vec<image_format::records::SockOpt>,
}

/// A run of pages to store: `[start, start + len)`, page-aligned, inside one
/// VMA. Runs are sorted and do not overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageRun {
    pub start: u64,
    pub len: u64,
}

impl PageRun {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Everything an image says about one process (thread group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// `exe`, `cwd`, `root`, `cmdline` are filled in by the writer.
    pub process: ProcessRecord,
    pub exe: String,
    pub cwd: String,
    pub root: String,
    /// NUL-separated arguments, as `/proc/P/cmdline`.
    pub cmdline: Vec<u8>,
    pub creds: CredsRecord,
    pub mm: MmRecord,
    /// The auxiliary vector as (type, value) pairs, ending with `AT_NULL`.
    pub auxv: Vec<u64>,
    pub rlimits: Vec<RlimitRecord>,
    pub sigactions: Vec<SigactionRecord>,
    pub itimers: Vec<ItimerRecord>,
    /// The thread group leader first.
    pub threads: Vec<ThreadState>,
    /// Sorted by address.
    pub vmas: Vec<VmaState>,
    /// Sorted by fd number.
    pub fds: Vec<FdState>,
    /// What the fds refer to beyond a path.
    pub objects: ObjectStates,
    pub pending: Vec<PendingSignalRecord>,
    pub gadgets: GadgetsRecord,
    /// State the dump could not keep.
    pub warnings: Vec<String>,
    /// Pages whose contents go into the image.
    pub pages: Vec<PageRun>,
}

/// A file's identity as the image records it, from its metadata.
pub fn file_id(m: &std::fs::Metadata) -> image_format::records::FileId {
    use std::os::unix::fs::MetadataExt;
    image_format::records::FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    }
}
