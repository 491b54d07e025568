//! The real [`Task`]: a thread group frozen by [`Frozen`], its `/proc`
//! files, ptrace, and the questions only the task itself can answer,
//! asked through syscalls injected into its stopped threads
//! ([`Borrowed`]).

use std::cell::OnceCell;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use image_format::elf::{Timeval, UserRegs};
use image_format::records::{GadgetsRecord, ItimerRecord, SigactionRecord, TimerSpec};
use image_writer::model::file_id;

use super::posix_timers::TimerAnswer;
use super::task::{
    FileMeta, FoundThread, Held, Holders, ProcessQuestions, ProcessWide, Task, ThreadAnswers,
};
use super::CollectError;
use crate::cancel::cancel_requested;
use crate::freeze::Frozen;
use crate::inject::{self, Borrowed, Gadgets};
use crate::sys::ptrace::PtraceError;
use crate::sys::{fds, process, ptrace};
use crate::vmas;

/// syscall numbers (x86_64) injected into the task.
mod nr {
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const GETITIMER: u64 = 36;
    pub const TIMER_GETTIME: u64 = 224;
    pub const TIMER_GETOVERRUN: u64 = 225;
    pub const SIGALTSTACK: u64 = 131;
    pub const PRCTL: u64 = 157;
}
const PR_GET_SECUREBITS: u64 = 27;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_GET_MDWE: u64 = 66;
const PR_GET_MEMORY_MERGE: u64 = 68;

/// A frozen thread group. `mem` is `/proc/P/mem` opened read-write
/// (injected syscalls use scratch memory in the task).
pub struct LiveTask<'a> {
    frozen: &'a Frozen,
    mem: &'a File,
    /// `/proc/P/pagemap`, opened when first read.
    pagemap: OnceCell<File>,
    /// Set by [`Task::prepare_injection`].
    injection: Option<Gadgets>,
    /// The process's pidfd, opened when an fd is first taken.
    pidfd: OnceCell<OwnedFd>,
    /// Every process's fds, read once for the tree (else `/proc` is read
    /// for each question of [`Task::holders_elsewhere`]).
    index: Option<&'a super::fd_index::FdIndex>,
}

impl<'a> LiveTask<'a> {
    pub fn new(frozen: &'a Frozen, mem: &'a File) -> Self {
        LiveTask {
            frozen,
            mem,
            pagemap: OnceCell::new(),
            injection: None,
            pidfd: OnceCell::new(),
            index: None,
        }
    }

    /// A frozen thread group of a tree, whose other holders are looked up
    /// in `index`.
    pub fn with_index(
        frozen: &'a Frozen,
        mem: &'a File,
        index: Option<&'a super::fd_index::FdIndex>,
    ) -> Self {
        LiveTask {
            index,
            ..LiveTask::new(frozen, mem)
        }
    }

    fn pagemap(&self) -> io::Result<&File> {
        if let Some(f) = self.pagemap.get() {
            return Ok(f);
        }
        let f = File::open(format!("/proc/{}/pagemap", self.frozen.pid()))?;
        Ok(self.pagemap.get_or_init(|| f))
    }
}

impl Task for LiveTask<'_> {
    fn pid(&self) -> i32 {
        self.frozen.pid()
    }

    fn tids(&self) -> &[i32] {
        self.frozen.tids()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMeta> {
        let m = fs::metadata(path)?;
        Ok(FileMeta {
            id: file_id(&m),
            mode: m.mode(),
            rdev: m.rdev(),
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    fn dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
        Ok(fs::read_dir(path)?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect())
    }

    fn effective_uid(&self) -> u32 {
        process::effective_uid()
    }

    fn cancelled(&self) -> bool {
        cancel_requested()
    }

    fn read_mem(&self, addr: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.mem.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }

    fn read_pagemap(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pagemap()?
            .read_exact_at(buf, addr / image_format::PAGE_SIZE * 8)
    }

    fn scan_populated(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> io::Result<()> {
        crate::sys::pagemap_scan::present_or_swapped(self.pagemap()?, start, end, out)
    }

    fn scan_regions(
        &self,
        start: u64,
        end: u64,
        out: &mut Vec<crate::pages::ScanRegion>,
    ) -> io::Result<()> {
        crate::sys::pagemap_scan::regions(self.pagemap()?, start, end, out)
    }

    fn data_extents(&self, path: &Path, limit: u64) -> io::Result<Vec<(u64, u64)>> {
        File::open(path).and_then(|f| process::data_extents(&f, limit))
    }

    fn seals(&self, path: &Path) -> io::Result<u32> {
        File::open(path).and_then(|f| process::file_seals(&f))
    }

    fn thread(&self, tid: i32) -> Result<FoundThread, CollectError> {
        let perr = |what| PtraceError::at(self.pid(), tid, what);
        Ok(FoundThread {
            regs: ptrace::get_regs(tid).map_err(perr("PTRACE_GETREGSET NT_PRSTATUS"))?,
            xsave: ptrace::get_xstate(tid).map_err(perr("PTRACE_GETREGSET NT_X86_XSTATE"))?,
            sigmask: ptrace::get_sigmask(tid).map_err(perr("PTRACE_GETSIGMASK"))?,
            rseq: ptrace::get_rseq_configuration(tid)
                .map_err(perr("PTRACE_GET_RSEQ_CONFIGURATION"))?,
            robust_list: process::get_robust_list(tid).map_err(perr("get_robust_list"))?,
        })
    }

    fn prepare_injection(&mut self, gadgets: &GadgetsRecord) -> Result<(), CollectError> {
        self.injection = Some(inject::Gadgets::for_task(self.pid(), gadgets)?);
        Ok(())
    }

    fn ask(
        &mut self,
        tid: i32,
        regs: &UserRegs,
        scratch: u64,
        process_wide: Option<ProcessQuestions>,
    ) -> Result<ThreadAnswers, CollectError> {
        self.with_borrowed(tid, regs, scratch, |b, pid| {
            ask_thread(b, pid, tid, process_wide)
        })
    }

    fn ask_posix_timers(
        &mut self,
        tid: i32,
        regs: &UserRegs,
        scratch: u64,
        ids: &[i32],
    ) -> Result<Vec<TimerAnswer>, CollectError> {
        self.with_borrowed(tid, regs, scratch, |b, pid| {
            ask_posix_timers(b, pid, tid, ids)
        })
    }

    fn peek_siginfo(
        &self,
        tid: i32,
        offset: u64,
        shared: bool,
        buf: &mut [[u8; 128]],
    ) -> Result<usize, CollectError> {
        Ok(
            ptrace::peek_siginfo(tid, offset, shared, buf).map_err(PtraceError::at(
                self.pid(),
                tid,
                "PTRACE_PEEKSIGINFO",
            ))?,
        )
    }

    fn take_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        fds::pidfd_getfd(self.pidfd()?.as_fd(), fd)
    }

    fn same_description(&self, a: i32, b: i32) -> io::Result<bool> {
        fds::same_description(self.pid(), a, b)
    }

    fn holders_elsewhere(&self, held: &[Held]) -> io::Result<Holders> {
        if held.is_empty() {
            return Ok(Holders::default());
        }
        match self.index {
            Some(index) => Ok(index.holders(self.pid(), held)),
            // Collected alone: one scan for this process.
            None => Ok(super::fd_index::FdIndex::scan()?.holders(self.pid(), held)),
        }
    }
}

impl LiveTask<'_> {
    /// Borrow thread `tid` (registers `regs`, scratch memory at
    /// `scratch`) for `questions`, and give it back as it was, whatever
    /// they answered.
    fn with_borrowed<R>(
        &self,
        tid: i32,
        regs: &UserRegs,
        scratch: u64,
        questions: impl FnOnce(&mut Borrowed<'_>, i32) -> Result<R, CollectError>,
    ) -> Result<R, CollectError> {
        let pid = self.pid();
        let Some(injection) = self.injection else {
            return Err(CollectError::Unsupported {
                pid,
                what: "a thread was to be borrowed before the gadgets were known".into(),
            });
        };
        let read_u64 = |addr| {
            let b = self.read_mem(addr, 8).ok()?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let temporary_mask = inject::uses_temporary_sigmask(regs, read_u64);
        let mut b = Borrowed::begin(pid, tid, self.mem, injection, scratch, temporary_mask)?;
        let answers = questions(&mut b, pid);
        b.finish()?;
        answers
    }

    fn pidfd(&self) -> io::Result<&OwnedFd> {
        if let Some(f) = self.pidfd.get() {
            return Ok(f);
        }
        let f = fds::pidfd_open(self.pid())?;
        Ok(self.pidfd.get_or_init(|| f))
    }
}

/// The little-endian word at `off` in `b` (the task's and the kernel's
/// answers are x86_64 memory).
pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The signed little-endian word at `off` in `b`.
fn i64_at(b: &[u8], off: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    i64::from_le_bytes(a)
}

/// `timer_gettime` and `timer_getoverrun` of each timer, inside one
/// borrowed thread.
fn ask_posix_timers(
    b: &mut Borrowed<'_>,
    pid: i32,
    tid: i32,
    ids: &[i32],
) -> Result<Vec<TimerAnswer>, CollectError> {
    let scratch = b.scratch();
    let check = |what: &'static str, r: i64| -> Result<i64, CollectError> {
        if (-4095..0).contains(&r) {
            Err(CollectError::InjectedSyscall {
                pid,
                tid,
                what,
                errno: -r,
            })
        } else {
            Ok(r)
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    // `struct itimerspec`: it_interval, then it_value.
    let mut buf = [0u8; 32];
    for &id in ids {
        // A timer id is a non-negative int: its bits are the argument.
        let arg = u64::from(id.cast_unsigned());
        check(
            "timer_gettime",
            b.syscall(nr::TIMER_GETTIME, [arg, scratch, 0, 0, 0, 0])?,
        )?;
        b.read_scratch(&mut buf)?;
        let overrun = check(
            "timer_getoverrun",
            b.syscall(nr::TIMER_GETOVERRUN, [arg, 0, 0, 0, 0, 0])?,
        )?;
        let spec = |off| TimerSpec {
            sec: i64_at(&buf, off),
            nsec: i64_at(&buf, off + 8),
        };
        out.push(TimerAnswer {
            interval: spec(0),
            left: spec(16),
            // At most DELAYTIMER_MAX (INT_MAX), as the kernel clamps it.
            overrun: i32::try_from(overrun).unwrap_or(i32::MAX),
        });
    }
    Ok(out)
}

/// The questions asked inside one borrowed thread.
fn ask_thread(
    b: &mut Borrowed<'_>,
    pid: i32,
    tid: i32,
    process_wide: Option<ProcessQuestions>,
) -> Result<ThreadAnswers, CollectError> {
    let scratch = b.scratch();
    let check = |what: &'static str, r: i64| -> Result<i64, CollectError> {
        if (-4095..0).contains(&r) {
            Err(CollectError::InjectedSyscall {
                pid,
                tid,
                what,
                errno: -r,
            })
        } else {
            Ok(r)
        }
    };
    let mut buf = [0u8; 32];
    check(
        "sigaltstack",
        b.syscall(nr::SIGALTSTACK, [0, scratch, 0, 0, 0, 0])?,
    )?;
    b.read_scratch(&mut buf[..24])?;
    let altstack_sp = u64_at(&buf, 0);
    // `stack_t.ss_flags` is an `int` at offset 8.
    let altstack_flags = i32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let altstack_size = u64_at(&buf, 16);
    check(
        "prctl(PR_GET_TID_ADDRESS)",
        b.syscall(nr::PRCTL, [PR_GET_TID_ADDRESS, scratch, 0, 0, 0, 0])?,
    )?;
    b.read_scratch(&mut buf[..8])?;
    let clear_child_tid = u64_at(&buf, 0);
    let process = if let Some(questions) = process_wide {
        // brk(0) returns the break, a user address (below 2^47): never
        // negative, so the bits are the address.
        #[allow(clippy::cast_sign_loss)]
        let brk = b.syscall(nr::BRK, [0; 6])? as u64;
        // An error (EINVAL: a kernel without THP, KSM or MDWE) means the
        // feature is not there to be turned on.
        let mm_flags = vmas::mm_flags(
            b.syscall(nr::PRCTL, [PR_GET_THP_DISABLE, 0, 0, 0, 0, 0])?,
            b.syscall(nr::PRCTL, [PR_GET_MEMORY_MERGE, 0, 0, 0, 0, 0])?,
            b.syscall(nr::PRCTL, [PR_GET_MDWE, 0, 0, 0, 0, 0])?,
        );
        let securebits = check(
            "prctl(PR_GET_SECUREBITS)",
            b.syscall(nr::PRCTL, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])?,
        )?;
        let mut sigactions = Vec::with_capacity(64);
        for signo in (1..=64u32).filter(|s| questions.sigactions & (1 << (s - 1)) != 0) {
            check(
                "rt_sigaction",
                b.syscall(nr::RT_SIGACTION, [u64::from(signo), 0, scratch, 8, 0, 0])?,
            )?;
            b.read_scratch(&mut buf)?;
            sigactions.push(SigactionRecord {
                signo,
                _pad: 0,
                handler: u64_at(&buf, 0),
                flags: u64_at(&buf, 8),
                restorer: u64_at(&buf, 16),
                mask: u64_at(&buf, 24),
            });
        }
        let mut itimers = Vec::with_capacity(3);
        for which in 0..3u32 {
            check(
                "getitimer",
                b.syscall(nr::GETITIMER, [u64::from(which), scratch, 0, 0, 0, 0])?,
            )?;
            b.read_scratch(&mut buf)?;
            let tv = |off| Timeval {
                sec: i64_at(&buf, off),
                usec: i64_at(&buf, off + 8),
            };
            itimers.push(ItimerRecord {
                which,
                _pad: 0,
                interval: tv(0),
                value: tv(16),
            });
        }
        Some(ProcessWide {
            brk,
            mm_flags,
            // `check` passed it: not an error, so 0 ..= SECURE_ALL_BITS
            // and the locks, eight bits.
            securebits: u32::try_from(securebits).unwrap_or(0),
            sigactions,
            itimers,
        })
    } else {
        None
    };
    Ok(ThreadAnswers {
        original_mask: b.original_mask(),
        altstack_sp,
        altstack_flags,
        altstack_size,
        clear_child_tid,
        process,
    })
}
