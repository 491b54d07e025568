//! What collection asks of the OS, behind one narrow trait (youki's
//! `Syscall` trait is the model): the files of `/proc`, the frozen
//! threads' registers through ptrace, the syscalls injected into them, and
//! the task's memory. [`super::live::LiveTask`] answers for a frozen
//! process; the unit tests answer with a fake, so that the decisions made
//! on the answers (what is refused, what a thread's registers and masks
//! become, which areas and pages are kept) are tested without root.
//!
//! The trait answers with raw data only; every decision is in the
//! `collect` steps that call it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use image_format::elf::UserRegs;
use image_format::records::{FileId, GadgetsRecord, ItimerRecord, SigactionRecord};

use super::CollectError;
use crate::sys::ptrace::RseqConfiguration;

/// What `stat(2)` says about a file, as far as collection uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub id: FileId,
    /// `st_mode`.
    pub mode: u32,
    /// `st_rdev`.
    pub rdev: u64,
    /// `st_uid`, `st_gid`.
    pub uid: u32,
    pub gid: u32,
}

/// How another process's fd is known to be on the same object as one of
/// the task's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameWhen {
    /// The same `/proc/P/fd/N` link (`pipe:[ino]`: unique per pipe).
    Link,
    /// The same device and inode (a FIFO, reachable by several paths).
    Inode,
    /// The same open file description (`kcmp`): anonymous-inode objects,
    /// whose links and inode are one for all of their kind.
    Description,
}

/// One of the task's fds whose holders are asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub fd: i32,
    pub link: String,
    pub dev: u64,
    pub ino: u64,
    pub same_when: SameWhen,
}

/// The answer of [`Task::holders_elsewhere`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// (index into the question, pid).
    pub found: Vec<(usize, i32)>,
    /// Processes whose fds could not be read (not root, or hidden).
    pub unreadable: usize,
}

/// What ptrace says about one frozen thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundThread {
    pub regs: UserRegs,
    /// The `NT_X86_XSTATE` regset.
    pub xsave: Vec<u8>,
    /// The blocked mask ptrace shows (a temporary one while the thread
    /// waits in `ppoll`, `pselect`, `sigsuspend`, …).
    pub sigmask: u64,
    pub rseq: RseqConfiguration,
    /// `get_robust_list`: head and length.
    pub robust_list: (u64, u64),
}

/// The process-wide answers, asked in one borrowed thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessWide {
    pub brk: u64,
    /// `ProcessRecord::flags` bits of the mm (THP, KSM, MDWE).
    pub mm_flags: u32,
    pub securebits: u32,
    pub sigactions: Vec<SigactionRecord>,
    pub itimers: Vec<ItimerRecord>,
}

/// The process-wide questions asked in one borrowed thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessQuestions {
    /// The signals whose action `rt_sigaction` is asked for, bit `n - 1`
    /// for signal `n` (see `super::sigactions::to_ask`); the answers hold
    /// one record for each, in signal order.
    pub sigactions: u64,
}

/// What one borrowed thread answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadAnswers {
    /// The thread's real blocked mask: under a temporary mask, ptrace shows
    /// the temporary one.
    pub original_mask: u64,
    pub altstack_sp: u64,
    pub altstack_flags: i32,
    pub altstack_size: u64,
    pub clear_child_tid: u64,
    /// Asked only when requested.
    pub process: Option<ProcessWide>,
}

/// The OS as collection sees it: one frozen thread group and the files
/// that describe it.
pub trait Task {
    fn pid(&self) -> i32;
    /// The frozen threads, the leader first.
    fn tids(&self) -> &[i32];
    /// The contents of a file (`/proc/P/...` mostly).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// `stat(2)` (following links: the file behind `/proc/P/fd/N`).
    fn metadata(&self, path: &Path) -> io::Result<FileMeta>;
    /// The names in a directory.
    fn dir_names(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The dumper's effective uid.
    fn effective_uid(&self) -> u32;
    /// Whether the dump was asked to stop.
    fn cancelled(&self) -> bool;
    /// `len` bytes of the task's memory at `addr`.
    fn read_mem(&self, addr: u64, len: u64) -> io::Result<Vec<u8>>;
    /// The raw pagemap entries (8 bytes each) of the pages from `addr`,
    /// one per 8 bytes of `buf`.
    fn read_pagemap(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The ranges of `[start, end)` whose pages are present or swapped, as
    /// the page tables say (`PAGEMAP_SCAN`, Linux 6.7+), appended to `out`.
    fn scan_populated(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> io::Result<()>;
    /// The regions of `[start, end)` whose pages are present or swapped,
    /// with their `PAGEMAP_SCAN` categories, appended to `out`: enough to
    /// choose the pages to store without reading pagemap. Unsupported
    /// unless the task has it (then pagemap is read).
    fn scan_regions(
        &self,
        _start: u64,
        _end: u64,
        _out: &mut Vec<crate::pages::ScanRegion>,
    ) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// The data extents (`SEEK_DATA`/`SEEK_HOLE`, file offsets below
    /// `limit`) of the file behind `path`.
    fn data_extents(&self, path: &Path, limit: u64) -> io::Result<Vec<(u64, u64)>>;
    /// `fcntl(F_GET_SEALS)` of the file behind `path` (a memfd), opened
    /// read-only.
    fn seals(&self, path: &Path) -> io::Result<u32>;
    /// Registers and ptrace-visible state of one frozen thread.
    fn thread(&self, tid: i32) -> Result<FoundThread, CollectError>;
    /// Get ready to inject syscalls through the task's own `gadgets`;
    /// refuses when they are not enough.
    fn prepare_injection(&mut self, gadgets: &GadgetsRecord) -> Result<(), CollectError>;
    /// Borrow thread `tid` (whose registers are `regs`, with scratch memory
    /// at `scratch`) for the injected questions, the process-wide ones too
    /// when `process_wide` says which, and give it back as it was.
    fn ask(
        &mut self,
        tid: i32,
        regs: &UserRegs,
        scratch: u64,
        process_wide: Option<ProcessQuestions>,
    ) -> Result<ThreadAnswers, CollectError>;
    /// Borrow thread `tid` (as for [`Task::ask`]) to ask `timer_gettime`
    /// and `timer_getoverrun` of each POSIX timer in `ids`, in that order.
    fn ask_posix_timers(
        &mut self,
        tid: i32,
        regs: &UserRegs,
        scratch: u64,
        ids: &[i32],
    ) -> Result<Vec<super::posix_timers::TimerAnswer>, CollectError>;
    /// Copy queued siginfos of `tid` (its own queue, or with `shared` the
    /// process-wide one) from `offset` into `buf` without dequeuing them;
    /// returns how many.
    fn peek_siginfo(
        &self,
        tid: i32,
        offset: u64,
        shared: bool,
        buf: &mut [[u8; 128]],
    ) -> Result<usize, CollectError>;
    /// A copy of the task's fd `fd`, on the same open file description
    /// (`pidfd_getfd`): what the object modules read an fd's state
    /// through without changing it.
    fn take_fd(&self, fd: i32) -> io::Result<OwnedFd>;
    /// Whether the task's fds `a` and `b` share one open file description
    /// (`kcmp(KCMP_FILE)`).
    fn same_description(&self, a: i32, b: i32) -> io::Result<bool>;
    /// Which other processes hold the objects of `held` (the task's fds):
    /// (index in `held`, pid) pairs. An object another process holds too
    /// is not the task's alone.
    fn holders_elsewhere(&self, held: &[Held]) -> io::Result<Holders>;
}
