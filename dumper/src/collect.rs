//! Collecting the state of a frozen thread group into a plain
//! [`TaskState`]: `/proc` files, ptrace requests, and syscalls injected into
//! the stopped threads for what only the task can answer (STATE.md, loader
//! side).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use image_format::elf::Timeval;
use image_format::records::{
    fd_flags, CredsRecord, FdRecord, FileId, GadgetsRecord, ItimerRecord, MmRecord,
    PendingSignalRecord, ProcessRecord, RlimitRecord, SigactionRecord, ThreadRecord, VmaRecord,
    MAX_GROUPS, PROCESS_DUMPED_AS_ROOT,
};
use image_format::PAGE_SIZE;
use image_writer::model::{file_id, FdState, PageRun, TaskState, ThreadState, VmaState};

use crate::freeze::Frozen;
use crate::inject::{self, Borrowed, InjectError};
use crate::pages::{self, PagePolicy};
use crate::procfs::{self, smaps::SmapsEntry, ParseError};
use crate::sys::ptrace::PtraceError;
use crate::sys::{process, ptrace};
use crate::{fds, gadgets, regs, vmas, DumpOptions, VmaStat};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("pid {pid}: cannot read {path}: {source}")]
    Read {
        pid: i32,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: {source}")]
    Parse {
        pid: i32,
        #[source]
        source: ParseError,
    },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("pid {pid} tid {tid}: injected {what} failed with errno {errno}")]
    InjectedSyscall {
        pid: i32,
        tid: i32,
        what: &'static str,
        errno: i64,
    },
    #[error("pid {pid} tid {tid}: no writable scratch memory near rsp {rsp:#x}")]
    NoScratch { pid: i32, tid: i32, rsp: u64 },
    #[error(
        "pid {pid}: cannot be saved faithfully: {what} (use --force to dump anyway, losing it)"
    )]
    Unsupported { pid: i32, what: String },
    #[error(
        "pid {pid} tid {tid}: seccomp mode {mode} is active: seccomp filters are not saved, \
         and injecting syscalls into a filtered task could trip its filter (refused even with --force)"
    )]
    Seccomp { pid: i32, tid: i32, mode: u32 },
    #[error("pid {pid}: dump cancelled")]
    Cancelled { pid: i32 },
}

/// The collected state and per-VMA statistics for the report.
pub struct Collected {
    pub state: TaskState,
    pub vma_stats: Vec<VmaStat>,
}

/// syscall numbers (x86_64) injected into the task.
mod nr {
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const GETITIMER: u64 = 36;
    pub const SIGALTSTACK: u64 = 131;
    pub const PRCTL: u64 = 157;
}
const PR_GET_SECUREBITS: u64 = 27;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_GET_MDWE: u64 = 66;
const PR_GET_MEMORY_MERGE: u64 = 68;
/// `RLIM_NLIMITS`.
const RLIMIT_COUNT: u32 = 16;

struct Collector<'a> {
    pid: i32,
    opts: &'a DumpOptions,
    warnings: Vec<String>,
}

impl Collector<'_> {
    fn proc_path(&self, rest: &str) -> String {
        format!("/proc/{}/{rest}", self.pid)
    }

    fn read_bytes(&self, rest: &str) -> Result<Vec<u8>, CollectError> {
        let path = self.proc_path(rest);
        fs::read(&path).map_err(|source| CollectError::Read {
            pid: self.pid,
            path,
            source,
        })
    }

    fn read_text(&self, rest: &str) -> Result<String, CollectError> {
        Ok(String::from_utf8_lossy(&self.read_bytes(rest)?).into_owned())
    }

    fn read_link(&self, rest: &str) -> Result<String, CollectError> {
        let path = self.proc_path(rest);
        fs::read_link(&path)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|source| CollectError::Read {
                pid: self.pid,
                path,
                source,
            })
    }

    fn parse<T>(&self, r: Result<T, ParseError>) -> Result<T, CollectError> {
        r.map_err(|source| CollectError::Parse {
            pid: self.pid,
            source,
        })
    }

    /// State that cannot be kept: an error, or with `force` a warning.
    fn unsupported(&mut self, what: String) -> Result<(), CollectError> {
        if self.opts.force {
            self.warnings.push(what);
            Ok(())
        } else {
            Err(CollectError::Unsupported {
                pid: self.pid,
                what,
            })
        }
    }

    fn check_cancel(&self) -> Result<(), CollectError> {
        if crate::cancel_requested() {
            Err(CollectError::Cancelled { pid: self.pid })
        } else {
            Ok(())
        }
    }
}

fn comm16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let n = bytes.len().min(15);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn dump_time_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Read a whole memory range of the task through `/proc/P/mem`.
fn read_mem(mem: &File, addr: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    mem.read_exact_at(&mut buf, addr)?;
    Ok(buf)
}

/// Collect everything about the frozen thread group. `mem` is `/proc/P/mem`
/// opened read-write (injected syscalls use scratch memory in the task).
pub fn collect(
    frozen: &Frozen,
    mem: &File,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
) -> Result<Collected, CollectError> {
    let pid = frozen.pid();
    let mut c = Collector {
        pid,
        opts,
        warnings: Vec::new(),
    };

    let stat = c.parse(procfs::stat::parse(&c.read_text("stat")?))?;
    let status = c.parse(procfs::status::parse(&c.read_text("status")?))?;
    let smaps = c.parse(procfs::smaps::parse(&c.read_text("smaps")?))?;

    // Everything that can refuse the dump comes before the first injected
    // syscall: a task that is not going to be dumped is not touched (a
    // seccomp filter, for one, could kill it for a syscall it never makes).
    process_checks(&mut c, &status, frozen)?;
    refuse_numa_policies(&mut c)?;
    if let Some(mask) = status.untag_mask.filter(|&m| m != u64::MAX) {
        c.unsupported(format!(
            "tagged addresses (x86 LAM, untag_mask {mask:#x}) are not restored"
        ))?;
    }
    let fd_states = collect_fds(&mut c)?;
    if status.groups.len() > MAX_GROUPS {
        c.unsupported(format!(
            "{} supplementary groups (at most {MAX_GROUPS} are kept)",
            status.groups.len()
        ))?;
    }
    c.check_cancel()?;

    // VMAs.
    let mut vma_states = Vec::with_capacity(smaps.len());
    let mut classes = Vec::with_capacity(smaps.len());
    for e in &smaps {
        let class = match vmas::classify(e) {
            Ok(class) => class,
            Err(what) => {
                c.unsupported(what)?;
                // Forced: keep the area's layout, without contents.
                vmas::VmaClass {
                    kind: image_format::records::vma_kind::ANON,
                    policy: PagePolicy::Nothing,
                    warning: None,
                }
            }
        };
        if let Some(w) = &class.warning {
            c.warnings.push(w.clone());
        }
        let mut record = VmaRecord {
            start: e.start,
            end: e.end,
            pgoff: e.offset,
            prot: vmas::prot_of(e),
            flags: vmas::flags_of(e),
            kind: class.kind,
            ..VmaRecord::default()
        };
        if class.kind == image_format::records::vma_kind::FILE {
            let link = c.proc_path(&format!("map_files/{:x}-{:x}", e.start, e.end));
            let meta = fs::metadata(&link).or_else(|_| fs::metadata(&e.path));
            match meta {
                Ok(m) => record.file = file_id(&m),
                Err(source) => {
                    return Err(CollectError::Read {
                        pid,
                        path: e.path.clone(),
                        source,
                    })
                }
            }
        }
        vma_states.push(VmaState {
            record,
            path: e.path.clone(),
        });
        classes.push(class);
    }

    if let Some(w) = vmas::mlockall_warning(&smaps) {
        c.warnings.push(w);
    }

    // Gadgets, also those injection runs through.
    let found_gadgets = find_gadgets(&smaps, &classes, mem);
    let injection = inject::Gadgets::for_task(pid, &found_gadgets)?;
    c.check_cancel()?;

    // Threads: registers first, before anything is borrowed.
    let mut threads = Vec::with_capacity(frozen.tids().len());
    for &tid in frozen.tids() {
        let perr = |what| PtraceError::at(pid, tid, what);
        let found_regs = ptrace::get_regs(tid).map_err(perr("PTRACE_GETREGSET NT_PRSTATUS"))?;
        let xsave = ptrace::get_xstate(tid).map_err(perr("PTRACE_GETREGSET NT_X86_XSTATE"))?;
        let sigmask = ptrace::get_sigmask(tid).map_err(perr("PTRACE_GETSIGMASK"))?;
        let rseq =
            ptrace::get_rseq_configuration(tid).map_err(perr("PTRACE_GET_RSEQ_CONFIGURATION"))?;
        let (robust_head, robust_len) =
            process::get_robust_list(tid).map_err(perr("get_robust_list"))?;
        let comm = c.read_bytes(&format!("task/{tid}/comm"))?;
        let fixed = regs::fix_up_interrupted_syscall(&found_regs);
        let record = ThreadRecord {
            tid,
            restart: fixed.restart,
            sigmask,
            rseq_len: rseq.rseq_abi_size,
            rseq_addr: rseq.rseq_abi_pointer,
            rseq_sig: rseq.signature,
            rseq_flags: rseq.flags,
            robust_list_head: robust_head,
            robust_list_len: robust_len,
            comm: comm16(&comm),
            syscall_nr: fixed.syscall_nr,
            syscall_ret: fixed.syscall_ret,
            ..ThreadRecord::default()
        };
        threads.push((
            ThreadState {
                record,
                regs: fixed.regs,
                xsave,
            },
            found_regs,
        ));
    }

    // Injected syscalls: per thread, and the process-wide ones in the first
    // thread that can be borrowed.
    // Scratch memory for every thread is found first, so that no thread is
    // borrowed when another one cannot be.
    let scratches = threads
        .iter()
        .map(|(thread, found)| {
            scratch_for(&smaps, found.rsp).ok_or(CollectError::NoScratch {
                pid,
                tid: thread.record.tid,
                rsp: found.rsp,
            })
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let mut process_wide = None;
    for ((thread, found), scratch) in threads.iter_mut().zip(scratches) {
        let tid = thread.record.tid;
        let read_u64 = |addr| {
            let b = read_mem(mem, addr, 8).ok()?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        };
        let temporary_mask = inject::uses_temporary_sigmask(found, read_u64);
        c.check_cancel()?;
        let mut b = Borrowed::begin(pid, tid, mem, injection, scratch, temporary_mask)?;
        // Under a temporary mask, ptrace showed the temporary one.
        thread.record.sigmask = b.original_mask();
        let answers = ask_thread(&mut b, pid, tid, process_wide.is_none());
        b.finish()?;
        let answers = answers?;
        thread.record.altstack_sp = answers.altstack_sp;
        thread.record.altstack_flags = answers.altstack_flags;
        thread.record.altstack_size = answers.altstack_size;
        thread.record.clear_child_tid = answers.clear_child_tid;
        if answers.process.is_some() {
            process_wide = answers.process;
        }
    }
    let Some(process_wide) = process_wide else {
        return Err(CollectError::Unsupported {
            pid,
            what: "no thread could be borrowed to answer the process-wide questions".into(),
        });
    };
    c.check_cancel()?;

    // Pending signals.
    let mut pending = Vec::new();
    for (i, (thread, _)) in threads.iter().enumerate() {
        let tid = thread.record.tid;
        if i == 0 {
            peek_pending(&mut pending, pid, tid, true)?;
        }
        peek_pending(&mut pending, pid, tid, false)?;
    }

    // Process identity and mm.
    let exe = c.read_link("exe")?;
    let exe_id = match fs::metadata(c.proc_path("exe")) {
        Ok(m) => file_id(&m),
        Err(e) => {
            c.warnings.push(format!(
                "cannot stat the executable {exe} ({e}): the restore cannot check that it is unchanged"
            ));
            FileId::default()
        }
    };
    let cwd_id = match fs::metadata(c.proc_path("cwd")) {
        Ok(m) => file_id(&m),
        Err(e) => {
            c.warnings.push(format!(
                "cannot stat the working directory ({e}): the restore cannot check that it is the same"
            ));
            FileId::default()
        }
    };
    let personality_text = c.read_text("personality")?;
    let personality =
        u32::from_str_radix(personality_text.trim(), 16).map_err(|_| CollectError::Parse {
            pid,
            source: ParseError {
                file: "personality",
                line: 1,
                what: format!("bad value {personality_text:?}"),
            },
        })?;
    let umask = status.umask.unwrap_or_else(|| {
        c.warnings
            .push("the kernel shows no umask in /proc/P/status: 022 is assumed".into());
        0o022
    });
    let process = ProcessRecord {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        nthreads: threads.len() as u32,
        umask,
        personality,
        flags: if process::effective_uid() == 0 {
            PROCESS_DUMPED_AS_ROOT
        } else {
            0
        } | process_wide.mm_flags
            | c.read_text("coredump_filter")
                .map_or(0, |t| vmas::coredump_filter_flags(&t)),
        tty_nr: stat.tty_nr,
        page_size: PAGE_SIZE as u32,
        start_time: stat.start_time,
        dump_time_ns: dump_time_ns(),
        exe: Default::default(),
        exe_id,
        cwd: Default::default(),
        root: Default::default(),
        cmdline: Default::default(),
        comm: comm16(&stat.comm),
        cwd_id,
    };
    let mm = MmRecord {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk: process_wide.brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
    };
    let auxv_bytes = c.read_bytes("auxv")?;
    let mut auxv: Vec<u64> = auxv_bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect();
    if let Some(end) = auxv.chunks_exact(2).position(|p| p[0] == 0) {
        auxv.truncate(end * 2 + 2);
    }

    // Credentials.
    let mut groups = [0u32; MAX_GROUPS];
    for (slot, g) in groups.iter_mut().zip(&status.groups) {
        *slot = *g;
    }
    let creds = CredsRecord {
        uid: status.uid,
        gid: status.gid,
        ngroups: status.groups.len().min(MAX_GROUPS) as u32,
        securebits: process_wide.securebits,
        groups,
        cap_inheritable: status.cap_inheritable,
        cap_permitted: status.cap_permitted,
        cap_effective: status.cap_effective,
        cap_bounding: status.cap_bounding,
        cap_ambient: status.cap_ambient,
        no_new_privs: status.no_new_privs,
        _pad: 0,
    };

    // Resource limits, from /proc: prlimit64 on another user's process
    // needs CAP_SYS_RESOURCE.
    let limits_path = format!("/proc/{pid}/limits");
    let limits_text = fs::read_to_string(&limits_path).map_err(|source| CollectError::Read {
        pid,
        path: limits_path.clone(),
        source,
    })?;
    let limits = procfs::limits::parse(&limits_text)
        .map_err(|source| CollectError::Parse { pid, source })?;
    let rlimits: Vec<RlimitRecord> = limits
        .iter()
        .take(RLIMIT_COUNT as usize)
        .zip(0..)
        .map(|(&(cur, max), resource)| RlimitRecord {
            resource,
            _pad: 0,
            cur,
            max,
        })
        .collect();

    c.check_cancel()?;

    // Pages.
    let (page_runs, vma_stats) = select_pages(&c, &smaps, &classes, zero_pfn)?;

    let state = TaskState {
        process,
        exe,
        cwd: c.read_link("cwd")?,
        root: c.read_link("root")?,
        cmdline: c.read_bytes("cmdline")?,
        creds,
        mm,
        auxv,
        rlimits,
        sigactions: process_wide.sigactions,
        itimers: process_wide.itimers,
        threads: threads.into_iter().map(|(t, _)| t).collect(),
        vmas: vma_states,
        fds: fd_states,
        pending,
        gadgets: found_gadgets,
        warnings: std::mem::take(&mut c.warnings),
        pages: page_runs,
    };
    Ok(Collected { state, vma_stats })
}

/// Scan the executable file mappings for the loader's gadgets.
fn find_gadgets(smaps: &[SmapsEntry], classes: &[vmas::VmaClass], mem: &File) -> GadgetsRecord {
    let mut g = GadgetsRecord::default();
    for (e, class) in smaps.iter().zip(classes) {
        if !e.exec || class.kind != image_format::records::vma_kind::FILE {
            continue;
        }
        let Ok(bytes) = read_mem(mem, e.start, e.end - e.start) else {
            continue;
        };
        if g.syscall_ret == 0 {
            g.syscall_ret = gadgets::find(&bytes, e.start, gadgets::SYSCALL_RET).unwrap_or(0);
        }
        if g.rt_sigreturn == 0 {
            g.rt_sigreturn = gadgets::find_rt_sigreturn(&bytes, e.start).unwrap_or(0);
        }
        if g.syscall_ret != 0 && g.rt_sigreturn != 0 {
            break;
        }
    }
    g
}

/// Scratch memory for injected syscalls: below the red zone of the thread's
/// stack if that is writable private memory, else the start of the first
/// writable private anonymous area (all threads are stopped, and the bytes
/// are put back).
fn scratch_for(smaps: &[SmapsEntry], rsp: u64) -> Option<u64> {
    let usable = |e: &SmapsEntry| {
        e.write && e.read && !e.shared && (e.path.is_empty() || e.path.starts_with('['))
    };
    let below = inject::scratch_below(rsp);
    let fits = |e: &SmapsEntry, a: u64| e.start <= a && a + inject::SCRATCH_LEN as u64 <= e.end;
    if smaps.iter().any(|e| usable(e) && fits(e, below)) {
        return Some(below);
    }
    smaps
        .iter()
        .find(|e| usable(e) && e.path != "[vvar]" && e.path != "[vvar_vclock]" && fits(e, e.start))
        .map(|e| e.start)
}

struct ProcessWide {
    brk: u64,
    /// `ProcessRecord::flags` bits of the mm (THP, KSM).
    mm_flags: u32,
    securebits: u32,
    sigactions: Vec<SigactionRecord>,
    itimers: Vec<ItimerRecord>,
}

struct ThreadAnswers {
    altstack_sp: u64,
    altstack_flags: i32,
    altstack_size: u64,
    clear_child_tid: u64,
    process: Option<ProcessWide>,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The questions asked inside one borrowed thread.
fn ask_thread(
    b: &mut Borrowed<'_>,
    pid: i32,
    tid: i32,
    process_wide: bool,
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
    let altstack_flags = u64_at(&buf, 8) as u32 as i32;
    let altstack_size = u64_at(&buf, 16);
    check(
        "prctl(PR_GET_TID_ADDRESS)",
        b.syscall(nr::PRCTL, [PR_GET_TID_ADDRESS, scratch, 0, 0, 0, 0])?,
    )?;
    b.read_scratch(&mut buf[..8])?;
    let clear_child_tid = u64_at(&buf, 0);
    let process = if process_wide {
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
        for signo in 1..=64u32 {
            if signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32 {
                continue;
            }
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
                sec: u64_at(&buf, off) as i64,
                usec: u64_at(&buf, off + 8) as i64,
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
            securebits: securebits as u32,
            sigactions,
            itimers,
        })
    } else {
        None
    };
    Ok(ThreadAnswers {
        altstack_sp,
        altstack_flags,
        altstack_size,
        clear_child_tid,
        process,
    })
}

/// Append the queued signals of `tid` (its own queue, or with `shared` the
/// process-wide one) without dequeuing them.
fn peek_pending(
    out: &mut Vec<PendingSignalRecord>,
    pid: i32,
    tid: i32,
    shared: bool,
) -> Result<(), CollectError> {
    let mut buf = [[0u8; 128]; 32];
    let mut offset = 0u64;
    loop {
        let n = ptrace::peek_siginfo(tid, offset, shared, &mut buf).map_err(PtraceError::at(
            pid,
            tid,
            "PTRACE_PEEKSIGINFO",
        ))?;
        if n == 0 {
            return Ok(());
        }
        for siginfo in &buf[..n] {
            out.push(PendingSignalRecord {
                tid: if shared { 0 } else { tid },
                _pad: 0,
                siginfo: *siginfo,
            });
        }
        offset += n as u64;
    }
}

fn collect_fds(c: &mut Collector<'_>) -> Result<Vec<FdState>, CollectError> {
    let pid = c.pid;
    let dir = c.proc_path("fd");
    let entries = fs::read_dir(&dir).map_err(|source| CollectError::Read {
        pid,
        path: dir.clone(),
        source,
    })?;
    let mut numbers: Vec<i32> = entries
        .filter_map(|e| {
            e.ok()
                .and_then(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        })
        .collect();
    numbers.sort_unstable();
    let mut out = Vec::with_capacity(numbers.len());
    for fd in numbers {
        let link = match c.read_link(&format!("fd/{fd}")) {
            Ok(l) => l,
            // Closed since the listing (impossible while frozen, unless the
            // fd table is shared with another process): its state is gone.
            Err(e) => {
                c.unsupported(format!("fd {fd} vanished during the dump ({e})"))?;
                continue;
            }
        };
        let fd_path = c.proc_path(&format!("fd/{fd}"));
        let meta = fs::metadata(&fd_path).map_err(|source| CollectError::Read {
            pid,
            path: fd_path,
            source,
        })?;
        let info = c.parse(procfs::fdinfo::parse(
            &c.read_text(&format!("fdinfo/{fd}"))?,
        ))?;
        let deleted = link.ends_with(" (deleted)");
        let path = link.strip_suffix(" (deleted)").unwrap_or(&link).to_owned();
        let rdev_major = ((meta.rdev() >> 8) & 0xfff) as u32;
        let kind = fds::kind_of(&link, meta.mode(), rdev_major);
        if let Some(why) = fds::unsupported_reason(fd, kind, deleted, &link) {
            c.unsupported(why)?;
        }
        let mut flags = 0;
        if info.flags & libc::O_CLOEXEC as u32 != 0 {
            flags |= fd_flags::CLOEXEC;
        }
        if deleted {
            flags |= fd_flags::DELETED;
        }
        let record = FdRecord {
            fd,
            kind,
            flags,
            open_flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            mnt_id: info.mnt_id,
            mode: meta.mode(),
            file: file_id(&meta),
            ..FdRecord::default()
        };
        out.push(FdState { record, path });
    }
    Ok(out)
}

/// Process-wide state crimg does not restore yet.
fn process_checks(
    c: &mut Collector<'_>,
    status: &procfs::status::Status,
    frozen: &Frozen,
) -> Result<(), CollectError> {
    refuse_seccomp(c, status, frozen)?;
    // /proc/P/timers exists only with CONFIG_CHECKPOINT_RESTORE.
    let timers = c.read_text("timers").unwrap_or_else(|e| {
        c.warnings.push(format!(
            "cannot check for POSIX timers (timer_create), which are not saved: {e}"
        ));
        String::new()
    });
    if !timers.trim().is_empty() {
        let n = timers.lines().filter(|l| l.starts_with("ID:")).count();
        c.unsupported(format!("{n} POSIX timer(s) (timer_create) are not saved"))?;
    }
    let mut children = Vec::new();
    for &tid in frozen.tids() {
        if let Ok(text) = c.read_text(&format!("task/{tid}/children")) {
            children.extend(text.split_whitespace().map(str::to_owned));
        }
    }
    if !children.is_empty() {
        c.warnings.push(format!(
            "child processes are not part of this image: {}",
            children.join(" ")
        ));
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"] {
        let theirs = fs::read_link(c.proc_path(&format!("ns/{ns}")));
        let ours = fs::read_link(Path::new("/proc/self/ns").join(ns));
        if let (Ok(a), Ok(b)) = (theirs, ours) {
            if a != b {
                c.warnings.push(format!(
                    "the process runs in its own {ns} namespace, which is not recreated"
                ));
            }
        }
    }
    Ok(())
}

/// Memory policies of single areas (`mbind`) are not restored: refused by
/// name. `/proc/P/numa_maps` exists only with NUMA support, and without
/// it there are no policies.
fn refuse_numa_policies(c: &mut Collector<'_>) -> Result<(), CollectError> {
    let Ok(text) = c.read_text("numa_maps") else {
        return Ok(());
    };
    for (start, policy) in vmas::numa_policies(&text) {
        c.unsupported(format!(
            "the NUMA memory policy `{policy}` (mbind) of the area at {start:#x} is not restored"
        ))?;
    }
    Ok(())
}

/// Refuse a task with a seccomp filter or strict mode in any thread, even
/// with `force`: the filter is not saved, and the syscalls injected into
/// the threads could trip it (killing the task, or worse, a trap that runs
/// its handler). Seccomp is per thread; `status` is the leader's.
fn refuse_seccomp(
    c: &Collector<'_>,
    status: &procfs::status::Status,
    frozen: &Frozen,
) -> Result<(), CollectError> {
    let pid = c.pid;
    if status.seccomp != 0 {
        return Err(CollectError::Seccomp {
            pid,
            tid: pid,
            mode: status.seccomp,
        });
    }
    for &tid in frozen.tids().iter().filter(|&&t| t != pid) {
        let s = c.parse(procfs::status::parse(
            &c.read_text(&format!("task/{tid}/status"))?,
        ))?;
        if s.seccomp != 0 {
            return Err(CollectError::Seccomp {
                pid,
                tid,
                mode: s.seccomp,
            });
        }
    }
    Ok(())
}

/// Choose the stored pages of every VMA from pagemap.
fn select_pages(
    c: &Collector<'_>,
    smaps: &[SmapsEntry],
    classes: &[vmas::VmaClass],
    zero_pfn: Option<u64>,
) -> Result<(Vec<PageRun>, Vec<VmaStat>), CollectError> {
    /// Pagemap entries read per call (64 MiB of address space = 128 KiB).
    const CHUNK_PAGES: u64 = 16384;
    let pid = c.pid;
    let pagemap_path = c.proc_path("pagemap");
    let pagemap = File::open(&pagemap_path).map_err(|source| CollectError::Read {
        pid,
        path: pagemap_path.clone(),
        source,
    })?;
    let mut runs = Vec::new();
    let mut stats = Vec::with_capacity(smaps.len());
    let mut raw = vec![0u8; (CHUNK_PAGES * 8) as usize];
    let mut entries = Vec::with_capacity(CHUNK_PAGES as usize);
    for (e, class) in smaps.iter().zip(classes) {
        let mut stored = 0;
        if class.kind == image_format::records::vma_kind::SHARED_ANON {
            stored = shared_extents(c, e, &mut runs);
        } else if class.policy != PagePolicy::Nothing && (e.rss_kb > 0 || e.swap_kb > 0) {
            for (from, to) in populated_ranges(&pagemap, e) {
                let mut addr = from;
                while addr < to {
                    let n = ((to - addr) / PAGE_SIZE).min(CHUNK_PAGES);
                    let bytes = &mut raw[..(n * 8) as usize];
                    pagemap
                        .read_exact_at(bytes, addr / PAGE_SIZE * 8)
                        .map_err(|source| CollectError::Read {
                            pid,
                            path: pagemap_path.clone(),
                            source,
                        })?;
                    entries.clear();
                    entries.extend(bytes.chunks_exact(8).map(|b| u64_at(b, 0)));
                    stored +=
                        pages::select(&mut runs, e.start, addr, &entries, class.policy, zero_pfn);
                    addr += n * PAGE_SIZE;
                }
            }
        }
        stats.push(VmaStat {
            start: e.start,
            end: e.end,
            kind: class.kind,
            prot: vmas::prot_of(e),
            path: e.path.clone(),
            stored_pages: stored,
        });
    }
    Ok((runs, stats))
}

/// Where in area `e` pages may be present or swapped: for a large area the
/// ranges `PAGEMAP_SCAN` finds (a reservation of terabytes is mostly empty
/// page tables, and reading its pagemap would take minutes), else, or on a
/// kernel without the ioctl, the whole area.
fn populated_ranges(pagemap: &File, e: &SmapsEntry) -> Vec<(u64, u64)> {
    /// Below this, reading the pagemap (2 KiB per MiB) is as quick.
    const SCAN_FROM: u64 = 1 << 30;
    if e.end - e.start >= SCAN_FROM {
        let mut ranges = Vec::new();
        if crate::sys::pagemap_scan::present_or_swapped(pagemap, e.start, e.end, &mut ranges)
            .is_ok()
        {
            return ranges;
        }
    }
    vec![(e.start, e.end)]
}

/// Shared anonymous memory: the data extents of the shared object (pages
/// other processes wrote count too, even if not mapped here); the whole area
/// when the object cannot be opened.
fn shared_extents(c: &Collector<'_>, e: &SmapsEntry, runs: &mut Vec<PageRun>) -> u64 {
    let link = c.proc_path(&format!("map_files/{:x}-{:x}", e.start, e.end));
    let limit = e.offset.saturating_add(e.end - e.start);
    match File::open(&link).and_then(|f| process::data_extents(&f, limit)) {
        Ok(extents) => pages::select_extents(runs, e.start, e.end, e.offset, &extents),
        Err(_) => pages::select_extents(runs, e.start, e.end, e.offset, &[(e.offset, limit)]),
    }
}
