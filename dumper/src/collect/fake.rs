//! A [`Task`] made of fixtures, for the unit tests of the collection
//! steps: `/proc` files as text, threads as register sets, injected
//! answers as values. It records what it was asked, so that tests can see
//! that a refused task was never borrowed.

// Fixtures: small constants, and negative errnos written as the register
// bits the kernel leaves (`-514i64 as u64`), on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use image_format::elf::UserRegs;
use image_format::records::{FileId, GadgetsRecord, SigactionRecord};
use image_format::PAGE_SIZE;

use super::posix_timers::TimerAnswer;
use super::task::{
    FileMeta, FoundThread, Held, Holders, ProcessQuestions, ProcessWide, Task, ThreadAnswers,
};
use super::CollectError;

/// Where the fake executable is mapped, and its gadgets inside it.
pub const TEXT: u64 = 0x40_0000;
pub const SYSCALL_RET_AT: u64 = TEXT + 0x100;
pub const RT_SIGRETURN_AT: u64 = TEXT + 0x200;
pub const HEAP: u64 = 0x60_0000;
pub const STACK_END: u64 = 0x7fff_0000;

pub struct FakeTask {
    pub pid: i32,
    pub tids: Vec<i32>,
    pub files: HashMap<PathBuf, Vec<u8>>,
    pub links: HashMap<PathBuf, PathBuf>,
    pub metas: HashMap<PathBuf, FileMeta>,
    /// `F_GET_SEALS` answers by path.
    pub seals: HashMap<PathBuf, u32>,
    pub dirs: HashMap<PathBuf, Vec<String>>,
    pub euid: u32,
    pub cancelled: bool,
    /// `(address, bytes)` of the readable memory.
    pub memory: Vec<(u64, Vec<u8>)>,
    /// Pagemap entries by page address; other pages are absent (0).
    pub pagemap: HashMap<u64, u64>,
    pub threads: HashMap<i32, FoundThread>,
    /// What each borrowed thread answers (the process-wide part is added
    /// from `process_wide` when asked for).
    pub answers: HashMap<i32, ThreadAnswers>,
    pub process_wide: ProcessWide,
    /// Calls of `ask`: tid, the registers given, and whether the
    /// process-wide questions were asked.
    pub asked: Vec<(i32, UserRegs, bool)>,
    /// The signals whose actions the process-wide questions asked for.
    pub asked_sigactions: Option<u64>,
    pub prepared: Option<GadgetsRecord>,
    /// What `PAGEMAP_SCAN` answers; `None`: a kernel without it.
    pub scan: Option<Vec<(u64, u64)>>,
    /// Queued siginfos by (tid, shared queue).
    pub pending: HashMap<(i32, bool), Vec<[u8; 128]>>,
    /// Pages whose pagemap entries were read.
    pub pagemap_reads: std::cell::Cell<u64>,
    /// What `timer_gettime`/`timer_getoverrun` answer, by timer id.
    pub posix_timers: HashMap<i32, TimerAnswer>,
    /// Calls of `ask_posix_timers`: tid and the ids asked.
    pub asked_timers: Vec<(i32, Vec<i32>)>,
    /// What `take_fd` hands out, by fd number (real objects the test made).
    pub stolen: HashMap<i32, std::os::fd::OwnedFd>,
    /// Groups of fds sharing one open file description.
    pub shared_descs: Vec<Vec<i32>>,
    /// (link, pid) of the objects other processes hold too.
    pub elsewhere: Vec<(String, i32)>,
    /// How many other processes' fds the fake cannot read.
    pub unreadable_elsewhere: usize,
    /// Calls of `holders_elsewhere`.
    pub holders_asked: std::cell::Cell<usize>,
}

/// 52 fields of `/proc/P/stat`, `fields[n - 1]` being field n of proc(5).
fn stat_line(pid: i32, comm: &str) -> String {
    let mut fields: Vec<String> = (1..=52).map(|_| "0".to_owned()).collect();
    fields[0] = pid.to_string();
    fields[1] = format!("({comm})");
    fields[2] = "S".into();
    fields[3] = "1".into(); // ppid
    fields[4] = pid.to_string(); // pgrp
    fields[5] = pid.to_string(); // session
    fields[21] = "5555".into(); // start time
    fields[25] = TEXT.to_string(); // start_code
    fields[26] = (TEXT + PAGE_SIZE).to_string();
    fields[27] = (STACK_END - 0x100).to_string(); // start_stack
    fields[46] = HEAP.to_string(); // start_brk
    fields.join(" ") + "\n"
}

pub fn status_text(tgid: i32, groups: &[u32], seccomp: u32) -> String {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    format!(
        "Name:\tfake\nUmask:\t0027\nState:\tS (sleeping)\nTgid:\t{tgid}\nNgid:\t0\n\
         Pid:\t{tgid}\nPPid:\t1\nTracerPid:\t0\n\
         Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nFDSize:\t64\n\
         Groups:\t{}\nThreads:\t1\nSigQ:\t0/63204\nSigPnd:\t0000000000000000\n\
         ShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
         SigCgt:\t0000000000000200\n\
         CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n\
         Seccomp:\t{seccomp}\nuntag_mask:\t0xffffffffffffffff\n",
        groups.join(" ")
    )
}

const SMAPS: &str = "\
00400000-00401000 r-xp 00000000 08:01 1234                               /usr/bin/fake
Rss:                   4 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
00600000-00603000 rw-p 00000000 00:00 0                                  [heap]
Rss:                   8 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac
7ffd0000-7fff0000 rw-p 00000000 00:00 0                                  [stack]
Rss:                   4 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me gd ac
";

/// The page frame of the shared zero page in these fixtures.
pub const ZERO_PFN: u64 = 0x77;

impl FakeTask {
    /// A single-threaded process sleeping in `nanosleep`, with fds 0–2 on
    /// `/dev/null`, a heap, a stack and its executable mapped.
    pub fn sleeping(pid: i32) -> Self {
        let mut t = FakeTask {
            pid,
            tids: vec![pid],
            files: HashMap::new(),
            links: HashMap::new(),
            metas: HashMap::new(),
            seals: HashMap::new(),
            dirs: HashMap::new(),
            euid: 1000,
            cancelled: false,
            memory: Vec::new(),
            pagemap: HashMap::new(),
            threads: HashMap::new(),
            answers: HashMap::new(),
            process_wide: ProcessWide {
                brk: HEAP + 0x3000,
                mm_flags: 0,
                securebits: 0,
                sigactions: vec![SigactionRecord {
                    signo: 10,
                    _pad: 0,
                    handler: TEXT + 0x300,
                    flags: 0x0400_0000,
                    restorer: RT_SIGRETURN_AT,
                    mask: 0,
                }],
                itimers: Vec::new(),
            },
            asked: Vec::new(),
            asked_sigactions: None,
            stolen: HashMap::new(),
            shared_descs: Vec::new(),
            elsewhere: Vec::new(),
            unreadable_elsewhere: 0,
            holders_asked: std::cell::Cell::new(0),
            prepared: None,
            scan: None,
            pending: HashMap::new(),
            pagemap_reads: std::cell::Cell::new(0),
            posix_timers: HashMap::new(),
            asked_timers: Vec::new(),
        };
        t.file("stat", stat_line(pid, "fake"));
        t.file("status", status_text(pid, &[100, 27], 0));
        t.file("smaps", SMAPS);
        t.file("timers", "");
        t.file("limits", crate::procfs::limits::SAMPLE);
        t.file("personality", "00000000\n");
        t.file("coredump_filter", "00000033\n");
        t.file("cmdline", "fake\0");
        // AT_PAGESZ 4096, AT_NULL, then what the kernel leaves after it.
        let auxv: Vec<u8> = [6u64, 4096, 0, 0, 0xdead]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        t.file("auxv", auxv);
        t.link("exe", "/usr/bin/fake");
        t.link("cwd", "/home/fake");
        t.link("root", "/");
        let file = |ino| FileMeta {
            id: FileId {
                dev: 0x801,
                ino,
                size: 4096,
                mtime_sec: 1,
                mtime_nsec: 2,
            },
            mode: 0o100_755,
            rdev: 0,
            ..FileMeta::default()
        };
        t.meta("exe", file(1234));
        t.meta("cwd", file(99));
        t.meta("map_files/400000-401000", file(1234));
        for ns in ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"] {
            t.link(&format!("ns/{ns}"), &format!("{ns}:[4026531835]"));
            t.links.insert(
                Path::new("/proc/self/ns").join(ns),
                PathBuf::from(format!("{ns}:[4026531835]")),
            );
        }
        t.dirs
            .insert(t.path("fd"), vec!["0".into(), "1".into(), "2".into()]);
        for fd in 0..3 {
            t.fd(
                fd,
                "/dev/null",
                0o020_666,
                0x103,
                "pos:\t0\nflags:\t02\nmnt_id:\t25\n",
            );
        }
        let mut text = vec![0u8; 4096];
        text[0x100..0x103].copy_from_slice(crate::gadgets::SYSCALL_RET);
        text[0x200..0x207].copy_from_slice(crate::gadgets::RT_SIGRETURN);
        t.memory.push((TEXT, text));
        // The executable's page is the file's (not stored); of the heap,
        // a written page, the zero page, a swapped page; of the stack, the
        // top page.
        t.pagemap.insert(
            TEXT,
            crate::pages::PM_PRESENT | crate::pages::PM_FILE_OR_SHARED | 5,
        );
        t.pagemap.insert(HEAP, crate::pages::PM_PRESENT | 0x1234);
        t.pagemap
            .insert(HEAP + PAGE_SIZE, crate::pages::PM_PRESENT | ZERO_PFN);
        t.pagemap
            .insert(HEAP + 2 * PAGE_SIZE, crate::pages::PM_SWAPPED | 0x55);
        t.pagemap
            .insert(STACK_END - PAGE_SIZE, crate::pages::PM_PRESENT | 0x999);
        t.add_thread(pid, nanosleep_regs());
        t
    }

    pub fn path(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rest}", self.pid))
    }

    pub fn file(&mut self, rest: &str, contents: impl Into<Vec<u8>>) {
        self.files.insert(self.path(rest), contents.into());
    }

    pub fn link(&mut self, rest: &str, target: &str) {
        self.links.insert(self.path(rest), PathBuf::from(target));
    }

    pub fn meta(&mut self, rest: &str, meta: FileMeta) {
        self.metas.insert(self.path(rest), meta);
    }

    /// An open fd: its link, `stat` mode and rdev, and fdinfo.
    pub fn fd(&mut self, fd: i32, target: &str, mode: u32, rdev: u64, fdinfo: &str) {
        self.link(&format!("fd/{fd}"), target);
        self.meta(
            &format!("fd/{fd}"),
            FileMeta {
                id: FileId {
                    dev: 5,
                    ino: u64::from(fd.unsigned_abs()) + 10,
                    ..FileId::default()
                },
                mode,
                rdev,
                ..FileMeta::default()
            },
        );
        self.file(&format!("fdinfo/{fd}"), fdinfo);
        let names = self.dirs.entry(self.path("fd")).or_default();
        if !names.contains(&fd.to_string()) {
            names.push(fd.to_string());
        }
    }

    /// `/proc/P/task/TID` with `stat`.
    fn list_task(&mut self, tid: i32, stat: String) {
        self.file(&format!("task/{tid}/stat"), stat);
        let names = self.dirs.entry(self.path("task")).or_default();
        if !names.contains(&tid.to_string()) {
            names.push(tid.to_string());
        }
    }

    /// An io_uring kernel thread (`PF_IO_WORKER`) named `comm`: listed in
    /// `/proc/P/task` but never frozen (not among the tids).
    pub fn add_io_worker(&mut self, tid: i32, comm: &str) {
        let mut line = stat_line(tid, comm);
        line = line.replacen(
            &format!(") S 1 {tid} {tid} 0 0 0 "),
            &format!(") S 1 {tid} {tid} 0 0 {} ", 0x0040_4050),
            1,
        );
        assert!(line.contains("4210768"), "{line}");
        self.list_task(tid, line);
    }

    /// A thread with registers `regs`, its comm and status, answering the
    /// injected questions with its tid as the altstack size.
    pub fn add_thread(&mut self, tid: i32, regs: UserRegs) {
        if !self.tids.contains(&tid) {
            self.tids.push(tid);
        }
        self.file(&format!("task/{tid}/comm"), "fake\n");
        self.file(&format!("task/{tid}/children"), "");
        self.list_task(tid, stat_line(tid, "fake"));
        self.file(
            &format!("task/{tid}/status"),
            status_text(self.pid, &[100, 27], 0),
        );
        self.threads.insert(
            tid,
            FoundThread {
                regs,
                xsave: vec![0; 64],
                sigmask: 0x1,
                ..FoundThread::default()
            },
        );
        self.answers.insert(
            tid,
            ThreadAnswers {
                original_mask: 0x1,
                altstack_size: u64::from(tid.unsigned_abs()),
                altstack_flags: 2,
                ..ThreadAnswers::default()
            },
        );
    }
}

/// A thread that was in `nanosleep` (35), already returned 0.
pub fn nanosleep_regs() -> UserRegs {
    UserRegs {
        orig_rax: 35,
        rax: 0,
        rip: TEXT + 0x102,
        rsp: STACK_END - 0x1000,
        ..UserRegs::default()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl Task for FakeTask {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn tids(&self) -> &[i32] {
        &self.tids
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| not_found(path))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        self.links.get(path).cloned().ok_or_else(|| not_found(path))
    }

    fn metadata(&self, path: &Path) -> io::Result<FileMeta> {
        self.metas.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
        self.dirs.get(path).cloned().ok_or_else(|| not_found(path))
    }

    fn effective_uid(&self) -> u32 {
        self.euid
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn read_mem(&self, addr: u64, len: u64) -> io::Result<Vec<u8>> {
        self.memory
            .iter()
            .find(|(start, bytes)| *start == addr && bytes.len() as u64 == len)
            .map(|(_, bytes)| bytes.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
    }

    fn read_pagemap(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pagemap_reads
            .set(self.pagemap_reads.get() + buf.len() as u64 / 8);
        for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
            let page = addr + i as u64 * PAGE_SIZE;
            let entry = self.pagemap.get(&page).copied().unwrap_or(0);
            chunk.copy_from_slice(&entry.to_le_bytes());
        }
        Ok(())
    }

    fn scan_populated(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) -> io::Result<()> {
        let ranges = self
            .scan
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTTY))?;
        out.extend(ranges.iter().filter(|r| start <= r.0 && r.1 <= end));
        Ok(())
    }

    fn data_extents(&self, path: &Path, _limit: u64) -> io::Result<Vec<(u64, u64)>> {
        Err(not_found(path))
    }

    fn seals(&self, path: &Path) -> io::Result<u32> {
        self.seals.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn thread(&self, tid: i32) -> Result<FoundThread, CollectError> {
        self.threads
            .get(&tid)
            .cloned()
            .ok_or(CollectError::Unsupported {
                pid: self.pid,
                what: format!("fake: no thread {tid}"),
            })
    }

    fn prepare_injection(&mut self, gadgets: &GadgetsRecord) -> Result<(), CollectError> {
        self.prepared = Some(*gadgets);
        Ok(())
    }

    fn ask(
        &mut self,
        tid: i32,
        regs: &UserRegs,
        _scratch: u64,
        process_wide: Option<ProcessQuestions>,
    ) -> Result<ThreadAnswers, CollectError> {
        self.asked.push((tid, *regs, process_wide.is_some()));
        let mut answers = self.answers.get(&tid).cloned().unwrap_or_default();
        if let Some(questions) = process_wide {
            self.asked_sigactions = Some(questions.sigactions);
            // The actions of the signals asked for, as the kernel answers.
            let mut process = self.process_wide.clone();
            process.sigactions.retain(|s| {
                (1..=64).contains(&s.signo) && questions.sigactions & (1 << (s.signo - 1)) != 0
            });
            answers.process = Some(process);
        }
        Ok(answers)
    }

    fn ask_posix_timers(
        &mut self,
        tid: i32,
        _regs: &UserRegs,
        _scratch: u64,
        ids: &[i32],
    ) -> Result<Vec<TimerAnswer>, CollectError> {
        self.asked_timers.push((tid, ids.to_vec()));
        ids.iter()
            .map(|id| {
                self.posix_timers
                    .get(id)
                    .copied()
                    .ok_or(CollectError::InjectedSyscall {
                        pid: self.pid,
                        tid,
                        what: "timer_gettime",
                        errno: 22,
                    })
            })
            .collect()
    }

    fn peek_siginfo(
        &self,
        tid: i32,
        offset: u64,
        shared: bool,
        buf: &mut [[u8; 128]],
    ) -> Result<usize, CollectError> {
        let queue = self
            .pending
            .get(&(tid, shared))
            .map_or(&[][..], Vec::as_slice);
        let rest = queue.get(offset as usize..).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn take_fd(&self, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
        match self.stolen.get(&fd) {
            Some(f) => f.try_clone(),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn same_description(&self, a: i32, b: i32) -> io::Result<bool> {
        Ok(a == b
            || self
                .shared_descs
                .iter()
                .any(|g| g.contains(&a) && g.contains(&b)))
    }

    fn holders_elsewhere(&self, held: &[Held]) -> io::Result<Holders> {
        self.holders_asked.set(self.holders_asked.get() + 1);
        let mut found = Vec::new();
        for (i, h) in held.iter().enumerate() {
            for (link, pid) in &self.elsewhere {
                if *link == h.link {
                    found.push((i, *pid));
                }
            }
        }
        Ok(Holders {
            found,
            unreadable: self.unreadable_elsewhere,
        })
    }
}
