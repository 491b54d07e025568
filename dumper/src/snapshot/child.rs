//! The snapshot child: made by a `clone` injected into a frozen thread,
//! held in a ptrace stop while its memory is read, then killed and reaped
//! by its parent (see the module doc of [`crate::snapshot`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use image_format::records::prot;
use image_writer::model::{TaskState, VmaState};

use crate::freeze::{FreezeError, Frozen};
use crate::inject::{self, Borrowed, Gadgets, InjectError};
use crate::sys::process;
use crate::sys::ptrace::{self, PtraceError, Stop};

/// `clone`.
const CLONE: u64 = 56;
/// `waitid`.
const WAITID: u64 = 247;
/// The kernel's `ERESTARTNOINTR` (not in libc: never seen by a task).
const ERESTARTNOINTR: i64 = 513;
/// How often the clone is tried while a signal keeps it from running.
const CLONE_ATTEMPTS: usize = 4;
/// `P_PID`.
const P_PID: u64 = 1;
/// Shares the fd table (no new reference to any open file: peers see no
/// change) and the fs state; `CLONE_PTRACE`: traced by crdump from its
/// birth. The low byte, the exit signal, is 0: no SIGCHLD.
const CLONE_FLAGS: u64 = (libc::CLONE_FILES | libc::CLONE_FS | libc::CLONE_PTRACE) as u64;
/// The child's stack pointer: an unmapped page (below `mmap_min_addr`),
/// so that a child that ever reached user mode would fault on its first
/// `ret` and die of the forced SIGSEGV (its mask blocks every signal, so
/// no handler of the task runs).
const CHILD_SP: u64 = 8;
/// `WEXITED | WNOHANG | __WALL`: the child is a zombie already when the
/// original is asked to reap it, and a wait must never block the task.
const REAP_OPTIONS: u64 = (libc::WEXITED | libc::WNOHANG | libc::__WALL) as u64;

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error("pid {pid}: no thread has {len} bytes of its stack below the red zone to borrow")]
    NoScratch { pid: i32, len: usize },
    #[error("pid {pid}: {what}: {source}")]
    Io {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: the injected clone failed with errno {errno}")]
    CloneFailed { pid: i32, errno: i64 },
    #[error("pid {pid}: snapshot child {child}: unexpected first stop {stop:?}")]
    FirstStop { pid: i32, child: i32, stop: Stop },
    #[error(
        "pid {pid}: the snapshot child (pid {child} in the process's pid namespace) is not among \
         its children"
    )]
    NotFound { pid: i32, child: i32 },
    #[error("pid {pid}: snapshot child {child} is still a zombie after the reap ({why})")]
    NotReaped { pid: i32, child: i32, why: String },
}

/// A live snapshot child of process `parent`, stopped and traced. Dropping
/// it kills and reaps it (ignoring errors).
pub struct SnapshotChild {
    /// The process it is a snapshot of.
    parent: i32,
    /// The thread that cloned it (and reaps it).
    tid: i32,
    /// Its pid here, and in the pid namespace of the parent (the same
    /// unless the parent is in a pid namespace of its own, as in a
    /// container): what the injected waitid names.
    child: i32,
    child_in_ns: i32,
    gadgets: Gadgets,
    alive: bool,
}

/// Whether area `v` may lend scratch memory around stack pointer `rsp`
/// (the rule of `collect::areas::scratch_for`: private anonymous memory
/// holding the byte below `rsp`, the whole scratch inside it).
fn scratch_fits(start: u64, end: u64, usable: bool, rsp: u64) -> bool {
    let below = inject::scratch_below(rsp);
    usable && start < rsp && rsp <= end && below >= start && below < rsp
}

fn record_usable(v: &VmaState) -> bool {
    let rw = prot::READ | prot::WRITE;
    v.record.prot & rw == rw
        && v.record.flags & image_format::records::vma_flags::SHARED == 0
        && (v.path.is_empty() || v.path.starts_with('['))
}

/// The scratch address for a thread with registers `regs`, if the process's
/// areas (`areas`: start, end, usable) let it borrow one.
fn scratch_in(areas: impl IntoIterator<Item = (u64, u64, bool)>, rsp: u64) -> Option<u64> {
    areas
        .into_iter()
        .any(|(s, e, u)| scratch_fits(s, e, u, rsp))
        .then(|| inject::scratch_below(rsp))
}

/// Run syscall `nr` in thread `tid` of `pid` (in an interrupt stop) through
/// [`Borrowed`], giving it back as it was.
fn run_in(
    pid: i32,
    tid: i32,
    mem: &File,
    gadgets: Gadgets,
    scratch: u64,
    nr: u64,
    args: [u64; 6],
) -> Result<i64, InjectError> {
    let regs = ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
    let read_u64 = |addr: u64| {
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let temporary_mask = inject::uses_temporary_sigmask(&regs, read_u64);
    let mut b = Borrowed::begin(pid, tid, mem, gadgets, scratch, temporary_mask)?;
    let r = b.syscall(nr, args);
    b.finish()?;
    r
}

fn open_rw(pid: i32, what: &str) -> Result<File, ChildError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/{what}"))
        .map_err(|source| ChildError::Io {
            pid,
            what: format!("/proc/{pid}/{what}"),
            source,
        })
}

impl SnapshotChild {
    /// Clone frozen process `f` (`mem`: its `/proc/P/mem`, read-write;
    /// `state`: what was collected of it) into a stopped, traced child.
    pub fn clone_from(f: &Frozen, mem: &File, state: &TaskState) -> Result<Self, ChildError> {
        let pid = f.pid();
        let gadgets = Gadgets::for_task(pid, &state.gadgets)?;
        let areas: Vec<(u64, u64, bool)> = state
            .vmas
            .iter()
            .map(|v| (v.record.start, v.record.end, record_usable(v)))
            .collect();
        let mut chosen = None;
        for &tid in f.tids() {
            let regs =
                ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
            if let Some(scratch) = scratch_in(areas.iter().copied(), regs.rsp) {
                chosen = Some((tid, scratch));
                break;
            }
        }
        let Some((tid, scratch)) = chosen else {
            return Err(ChildError::NoScratch {
                pid,
                len: inject::SCRATCH_LEN,
            });
        };
        // The bytes the child must have there: the injection writes its
        // return frame into them before the clone copies the memory.
        let mut saved = vec![0u8; inject::SCRATCH_LEN];
        mem.read_exact_at(&mut saved, scratch)
            .map_err(|source| ChildError::Io {
                pid,
                what: format!("reading {scratch:#x}"),
                source,
            })?;
        // A clone refuses to run while a signal for the whole process is
        // pending (ERESTARTNOINTR: a SIGSTOP or SIGCONT sent meanwhile,
        // which no mask blocks), and the kernel would restart it: so is it
        // here, a few times (the signal is taken between the attempts).
        let mut r = Ok(-ERESTARTNOINTR);
        for _ in 0..CLONE_ATTEMPTS {
            r = run_in(
                pid,
                tid,
                mem,
                gadgets,
                scratch,
                CLONE,
                [CLONE_FLAGS, CHILD_SP, 0, 0, 0, 0],
            );
            if !matches!(r, Ok(c) if c == -ERESTARTNOINTR) {
                break;
            }
        }
        let child_in_ns = match r {
            Ok(c) if c > 0 => i32::try_from(c).unwrap_or(i32::MAX),
            Ok(c) => return Err(ChildError::CloneFailed { pid, errno: -c }),
            Err(e) => return Err(e.into()),
        };
        let child = pid_here(tid, child_in_ns).ok_or(ChildError::NotFound {
            pid,
            child: child_in_ns,
        })?;
        let mut snap = SnapshotChild {
            parent: pid,
            tid,
            child,
            child_in_ns,
            gadgets,
            alive: true,
        };
        // The tree is frozen: a failure from here on kills the child and
        // has the original reap it through the thread that cloned it.
        match snap.set_up(scratch, &saved) {
            Ok(()) => Ok(snap),
            Err(e) => {
                let _ = snap.release(Some(f));
                Err(e)
            }
        }
    }

    /// The child's first stop, then it made the OOM killer's first choice,
    /// then its copy of the scratch bytes put back.
    fn set_up(&mut self, scratch: u64, saved: &[u8]) -> Result<(), ChildError> {
        let (pid, child) = (self.parent, self.child);
        self.first_stop()?;
        // Before its memory is read: under memory pressure the child (whose
        // pages fill as the original writes its own copies) is the one
        // killed, never the original. A kernel that refuses it only costs
        // that preference, so a failure is not reported.
        let _ = std::fs::write(format!("/proc/{child}/oom_score_adj"), "1000");
        let child_mem = open_rw(child, "mem")?;
        child_mem
            .write_all_at(saved, scratch)
            .map_err(|source| ChildError::Io {
                pid,
                what: format!("snapshot child {child}: writing {scratch:#x}"),
                source,
            })
    }

    /// Wait for the child's first stop (the ptrace stop it is born into)
    /// and arm it with `PTRACE_O_EXITKILL`: from then on it dies with
    /// crdump, whatever kills crdump.
    fn first_stop(&mut self) -> Result<(), ChildError> {
        let (pid, child) = (self.parent, self.child);
        let status = ptrace::wait(child).map_err(PtraceError::at(pid, child, "waitpid"))?;
        match ptrace::decode_status(status) {
            Stop::Event {
                event: ptrace::PTRACE_EVENT_STOP,
                ..
            } => {}
            stop => {
                if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
                    self.alive = false;
                }
                return Err(ChildError::FirstStop { pid, child, stop });
            }
        }
        ptrace::set_options(
            child,
            ptrace::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_EXITKILL,
        )
        .map_err(PtraceError::at(pid, child, "PTRACE_SETOPTIONS(EXITKILL)"))?;
        Ok(())
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child
    }

    /// Kill the child, collect its death (as its tracer), and have the
    /// original reap it: `frozen` is the original's frozen guard while the
    /// tree is still frozen, else `None` (every thread is then stopped
    /// again for the reap). Returns how long the original was stopped for it.
    pub fn release(mut self, frozen: Option<&Frozen>) -> Result<Duration, ChildError> {
        self.alive = false;
        self.kill_and_wait();
        self.reap_in_parent(frozen)
    }

    fn kill_and_wait(&self) {
        let child = self.child;
        let _ = process::kill(child, libc::SIGKILL);
        loop {
            match ptrace::wait(child).map(ptrace::decode_status) {
                Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => break,
                // A stop reported before the kill: let it go on dying.
                Ok(_) => {
                    let _ = ptrace::resume(child);
                }
            }
        }
    }

    /// `waitid(P_PID, child, NULL, WEXITED | WNOHANG | __WALL)` injected
    /// into the original: its zombie child is gone.
    fn reap_in_parent(&self, frozen: Option<&Frozen>) -> Result<Duration, ChildError> {
        let (pid, child) = (self.parent, self.child);
        if !is_zombie_child(pid, child) {
            // Reaped already (the task waits with __WALL itself), or the
            // task is gone and the child went to a reaper with SIGCHLD.
            return Ok(Duration::ZERO);
        }
        let t = Instant::now();
        let mem = open_rw(pid, "mem")?;
        let r = match frozen {
            Some(f) if f.tids().contains(&self.tid) => {
                // Frozen: the thread that cloned is in its interrupt stop,
                // its scratch as it was.
                let regs = ptrace::get_regs(self.tid).map_err(PtraceError::at(
                    pid,
                    self.tid,
                    "PTRACE_GETREGSET",
                ))?;
                run_in(
                    pid,
                    self.tid,
                    &mem,
                    self.gadgets,
                    inject::scratch_below(regs.rsp),
                    WAITID,
                    reap_args(self.child_in_ns),
                )
                .map_err(ChildError::from)
            }
            _ => self.reap_running(&mem),
        };
        let stopped = t.elapsed();
        match r {
            Ok(0) => {}
            // ECHILD: reaped meanwhile by the task itself.
            Ok(e) if e == -i64::from(libc::ECHILD) => {}
            Ok(e) => {
                return Err(ChildError::NotReaped {
                    pid,
                    child,
                    why: format!("waitid returned {e}"),
                })
            }
            Err(e) => return Err(e),
        }
        if is_zombie_child(pid, child) {
            return Err(ChildError::NotReaped {
                pid,
                child,
                why: "waitid found nothing to reap".into(),
            });
        }
        Ok(stopped)
    }

    /// The reap in a running original: every thread of it is stopped, as
    /// by the freeze (the scratch bytes borrowed below one thread's stack
    /// pointer may be another thread's live memory, a goroutine's or a
    /// fiber's stack, whose writes the write-back would revert if that
    /// thread ran meanwhile), the `waitid` runs in one that can lend
    /// scratch memory, and all are detached again.
    fn reap_running(&self, mem: &File) -> Result<i64, ChildError> {
        let pid = self.parent;
        let frozen = Frozen::freeze_to_clean_up(pid)?;
        // Read while frozen: no thread maps or unmaps meanwhile.
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| {
            ChildError::Io {
                pid,
                what: format!("/proc/{pid}/maps"),
                source,
            }
        })?;
        let areas: Vec<(u64, u64, bool)> = crate::procfs::smaps::parse(&maps)
            .map(|list| {
                list.iter()
                    .map(|e| {
                        let usable = e.read
                            && e.write
                            && !e.shared
                            && (e.path.is_empty() || e.path.starts_with('['));
                        (e.start, e.end, usable)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut tids = frozen.tids().to_vec();
        // The thread that cloned first (it is known to have a stack).
        tids.sort_by_key(|&t| t != self.tid);
        for tid in tids {
            let regs =
                ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
            let Some(scratch) = scratch_in(areas.iter().copied(), regs.rsp) else {
                continue;
            };
            let r = run_in(
                pid,
                tid,
                mem,
                self.gadgets,
                scratch,
                WAITID,
                reap_args(self.child_in_ns),
            )?;
            frozen.detach()?;
            return Ok(r);
        }
        Err(ChildError::NoScratch {
            pid,
            len: inject::SCRATCH_LEN,
        })
    }
}

/// The pid here of the child of thread `tid` whose pid in its own pid
/// namespace is `in_ns` (the last `NSpid:` of its status).
fn pid_here(tid: i32, in_ns: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{tid}/task/{tid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|v| v.split_whitespace().last())
                        .and_then(|v| v.parse::<i32>().ok())
                })
                == Some(in_ns)
        })
}

fn reap_args(child: i32) -> [u64; 6] {
    // A pid: positive.
    let child = u64::try_from(child).unwrap_or(0);
    [P_PID, child, 0, REAP_OPTIONS, 0, 0]
}

/// Whether `child` is a zombie whose parent is `pid`.
fn is_zombie_child(pid: i32, child: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{child}/stat"))
        .ok()
        .and_then(|t| crate::procfs::stat::parse(&t).ok())
        .is_some_and(|s| s.state == b'Z' && s.ppid == pid)
}

impl Drop for SnapshotChild {
    fn drop(&mut self) {
        if self.alive {
            self.alive = false;
            self.kill_and_wait();
            // Still frozen (an error before the resume)? The thread is ours
            // already; else it is seized for the reap.
            let _ = self.reap_in_parent(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_must_lie_below_rsp_in_one_usable_area() {
        let rsp = 0x7000_0000_8000;
        let below = inject::scratch_below(rsp);
        assert_eq!(
            scratch_in([(0x7000_0000_0000, rsp, true)], rsp),
            Some(below)
        );
        assert_eq!(scratch_in([(0x7000_0000_0000, rsp, false)], rsp), None);
        // Too small below rsp.
        assert_eq!(scratch_in([(rsp - 0x1000, rsp + 0x1000, true)], rsp), None);
        // rsp near 0 wraps: no fit.
        assert_eq!(scratch_in([(0, 0x10000, true)], 8), None);
    }
}
