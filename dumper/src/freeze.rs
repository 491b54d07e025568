//! Freezing a thread group with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, and the
//! [`Frozen`] guard that lets it go again: detached (running on exactly as
//! before) or killed. Dropping the guard detaches, so an error or a panic
//! anywhere in the dump leaves the task running.

use std::collections::BTreeSet;
use std::io;
use std::time::{Duration, Instant};

use crate::sys::{process, ptrace};
use ptrace::{PtraceError, Stop};

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("pid {pid}: cannot list threads: {source}")]
    ListThreads {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} tid {tid}: PTRACE_SEIZE failed: {source}")]
    Seize {
        pid: i32,
        tid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: already traced by pid {tracer} (a debugger?)")]
    Traced { pid: i32, tracer: i32 },
    #[error(
        "pid {pid}: permission denied: it belongs to uid {owner} and crdump runs as uid {me} \
         (run crdump as that user or as root)"
    )]
    OtherUser { pid: i32, owner: u32, me: u32 },
    #[error("pid {pid}: permission denied to trace it ({source})")]
    NotPermitted {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("pid {pid}: the process exited while being frozen")]
    Exited { pid: i32 },
    #[error("pid {pid} tid {tid}: unexpected stop {stop:?} while freezing")]
    UnexpectedStop { pid: i32, tid: i32, stop: Stop },
    #[error("pid {pid}: dump cancelled while freezing")]
    Cancelled { pid: i32 },
    #[error(
        "pid {pid} tid {tid}: did not stop within {}s of PTRACE_INTERRUPT (state {state}, \
         waiting in {wchan}); the process was left running",
        STOP_LIMIT.as_secs()
    )]
    NoStop {
        pid: i32,
        tid: i32,
        state: String,
        wchan: String,
    },
    #[error("pid {pid}: cannot kill: {source}")]
    Kill {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// A thread group whose threads are all seized and parked in a ptrace stop.
/// Dropping it detaches every thread.
#[derive(Debug)]
pub struct Frozen {
    pid: i32,
    /// Seized threads, the leader first.
    tids: Vec<i32>,
    /// Whether a cancel request ends the freeze ([`Frozen::freeze`]), or
    /// not ([`Frozen::freeze_to_clean_up`]).
    cancellable: bool,
}

/// The thread ids in `/proc/P/task`, without io_uring's kernel threads.
fn list_threads(pid: i32) -> io::Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            if !is_io_worker(pid, tid) {
                out.insert(tid);
            }
        }
    }
    Ok(out)
}

/// Whether thread `tid` of `pid` is one of io_uring's kernel threads
/// (`PF_IO_WORKER`: `iou-sqp-N`, `iou-wrk-N`). It never stops for ptrace
/// (it does not return to user space), so waiting for it to stop would
/// hang the dump: it is not seized, and collection refuses it by name.
/// The flag is read, not the name: a thread may call itself anything.
pub fn is_io_worker(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|text| crate::procfs::stat::parse(&text).ok())
        .is_some_and(|stat| stat.flags & crate::collect::PF_IO_WORKER != 0)
}

impl Frozen {
    /// Seize and interrupt every thread of `pid`, re-reading `/proc/P/task`
    /// until a pass finds no thread that is not already stopped (a running
    /// thread may create new ones until it is stopped itself). io_uring's
    /// kernel threads are left alone ([`is_io_worker`]). A cancel request
    /// ([`crate::request_cancel`]) stops it between threads, detached.
    pub fn freeze(pid: i32) -> Result<Self, FreezeError> {
        Self::freeze_as(pid, true)
    }

    /// [`Self::freeze`] for cleaning up after crdump in a process that runs
    /// on (reaping a snapshot child): a cancel request does not stop it,
    /// since the clean-up is what a cancelled dump must still do.
    pub fn freeze_to_clean_up(pid: i32) -> Result<Self, FreezeError> {
        Self::freeze_as(pid, false)
    }

    fn freeze_as(pid: i32, cancellable: bool) -> Result<Self, FreezeError> {
        let mut frozen = Frozen {
            pid,
            tids: Vec::new(),
            cancellable,
        };
        loop {
            if cancellable && crate::cancel_requested() {
                return Err(FreezeError::Cancelled { pid });
            }
            let tids =
                list_threads(pid).map_err(|source| FreezeError::ListThreads { pid, source })?;
            if !tids.contains(&pid) {
                return Err(FreezeError::Exited { pid });
            }
            // Leader first, the rest in the order found.
            let mut new: Vec<i32> = tids
                .iter()
                .copied()
                .filter(|t| !frozen.tids.contains(t))
                .collect();
            new.sort_by_key(|&t| t != pid);
            if new.is_empty() {
                break;
            }
            for tid in new {
                if cancellable && crate::cancel_requested() {
                    return Err(FreezeError::Cancelled { pid });
                }
                match ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD) {
                    Ok(()) => {}
                    // The thread exited between the listing and the seize.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(source) => return Err(seize_error(pid, tid, source)),
                }
                frozen.tids.push(tid);
                if !frozen.interrupt_and_wait(tid)? {
                    frozen.tids.retain(|&t| t != tid);
                    if tid == pid {
                        return Err(FreezeError::Exited { pid });
                    }
                }
            }
        }
        Ok(frozen)
    }

    /// Stop one seized thread. Returns false when it exited instead.
    fn interrupt_and_wait(&mut self, tid: i32) -> Result<bool, FreezeError> {
        let pid = self.pid;
        ptrace::interrupt(tid).map_err(PtraceError::at(pid, tid, "PTRACE_INTERRUPT"))?;
        loop {
            let status = match wait_stop(pid, tid, self.cancellable) {
                Ok(status) => status,
                Err(e) => {
                    // Not stopped: detaching it would wait for its stop
                    // again. It stays seized until crdump exits, which
                    // detaches it (the process runs on either way).
                    self.tids.retain(|&t| t != tid);
                    return Err(e);
                }
            };
            match ptrace::decode_status(status) {
                Stop::Event {
                    event: ptrace::PTRACE_EVENT_STOP,
                    ..
                } => return Ok(true),
                // A signal arrived before the interrupt: let the thread take
                // it as it would have; the interrupt stays pending and stops
                // it right after.
                Stop::Signal(sig) => ptrace::resume_with_signal(tid, sig)
                    .map_err(PtraceError::at(pid, tid, "PTRACE_CONT"))?,
                Stop::Exited(_) | Stop::Killed(_) => return Ok(false),
                stop => return Err(FreezeError::UnexpectedStop { pid, tid, stop }),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The frozen threads, the leader first.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// Let every thread run on exactly as before.
    pub fn detach(mut self) -> Result<(), FreezeError> {
        let tids = std::mem::take(&mut self.tids);
        let mut first_error = None;
        for tid in tids {
            if let Err(e) = detach_thread(self.pid, tid) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Give up the guard without detaching: the threads stay traced (and,
    /// with `PTRACE_O_EXITKILL` set, die when crdump exits). For the kill
    /// phase, after which no process of a tree may run on.
    pub fn keep_traced(mut self) {
        self.tids.clear();
    }
}

/// Set `PTRACE_O_EXITKILL` on seized thread `tid` of `pid` (and keep
/// `PTRACE_O_TRACESYSGOOD`): from then on the kernel kills it if crdump
/// exits, even killed, while still attached.
pub fn arm_exit_kill(pid: i32, tid: i32) -> Result<(), FreezeError> {
    ptrace::set_options(
        tid,
        ptrace::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_EXITKILL,
    )
    .map_err(|e| PtraceError::at(pid, tid, "PTRACE_SETOPTIONS(EXITKILL)")(e).into())
}

/// Send SIGKILL to process `pid` (frozen: it never runs past the snapshot).
pub fn send_kill(pid: i32) -> Result<(), FreezeError> {
    process::kill(pid, libc::SIGKILL).map_err(|source| FreezeError::Kill { pid, source })
}

/// Collect the exit notifications of the threads `tids` of `pid`, killed.
pub fn reap_killed(pid: i32, tids: &[i32]) {
    // Non-leaders first: a leader's exit is reported only after its
    // threads are gone.
    for &tid in tids
        .iter()
        .filter(|&&t| t != pid)
        .chain(tids.iter().filter(|&&t| t == pid))
    {
        loop {
            match ptrace::wait(tid).map(ptrace::decode_status) {
                Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => break,
                // An exit stop or a late event: let it go on dying.
                Ok(_) => {
                    let _ = ptrace::resume(tid);
                }
            }
        }
    }
}

/// How long a thread may take to stop after `PTRACE_INTERRUPT`: one that
/// sleeps uninterruptibly (a `vfork` parent, a hung file system) does not
/// stop until it wakes, and crdump must not hang on it.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The next state change of seized thread `tid`, polled so that a cancel
/// request ([`crate::request_cancel`]) or a thread that does not stop
/// ([`STOP_LIMIT`]) ends the wait. A thread that is exiting is waited for
/// with [`ptrace::wait`], which handles a dying leader.
fn wait_stop(pid: i32, tid: i32, cancellable: bool) -> Result<i32, FreezeError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(10);
    loop {
        if let Some(status) = ptrace::try_wait(tid).map_err(PtraceError::at(pid, tid, "waitpid"))? {
            return Ok(status);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|text| crate::procfs::stat::parse(&text).ok());
        if stat.as_ref().is_none_or(|s| matches!(s.state, b'Z' | b'X')) {
            return ptrace::wait(tid).map_err(|e| PtraceError::at(pid, tid, "waitpid")(e).into());
        }
        if cancellable && crate::cancel_requested() {
            return Err(FreezeError::Cancelled { pid });
        }
        if started.elapsed() > STOP_LIMIT {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
                .unwrap_or_default();
            return Err(FreezeError::NoStop {
                pid,
                tid,
                state: stat.map_or('?', |s| char::from(s.state)).to_string(),
                wchan: if wchan.is_empty() { "?".into() } else { wchan },
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Why `PTRACE_SEIZE` of `tid` failed, in words: `EPERM` means another
/// tracer, another owner, a policy (dumpable flag, LSM) — or a process
/// that is exiting (the kernel refuses to attach to a task past its exit
/// with `EPERM` too: status gone, or state `Z`/`X`); the process is gone
/// for `ESRCH`.
fn seize_error(pid: i32, tid: i32, source: io::Error) -> FreezeError {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    match source.raw_os_error() {
        Some(libc::ESRCH) => FreezeError::Exited { pid },
        Some(libc::EPERM)
            if status.is_empty()
                || status
                    .lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .is_some_and(|v| matches!(v.trim_start().chars().next(), Some('Z' | 'X'))) =>
        {
            FreezeError::Exited { pid }
        }
        Some(libc::EPERM) => {
            let me = process::effective_uid();
            match (field("TracerPid:"), field("Uid:")) {
                (Some(tracer), _) if tracer != 0 => FreezeError::Traced {
                    pid,
                    // A pid: below pid_max (at most 2^22).
                    tracer: i32::try_from(tracer).unwrap_or(i32::MAX),
                },
                // Uid: real, effective, saved, fs; the real one owns it.
                (_, Some(owner)) if owner != me && me != 0 => {
                    FreezeError::OtherUser { pid, owner, me }
                }
                _ => FreezeError::NotPermitted { pid, source },
            }
        }
        _ => FreezeError::Seize { pid, tid, source },
    }
}

/// Detach one thread. A thread that is not in a ptrace stop (it was resumed
/// for an injected syscall and the wait was cut short) is stopped first.
fn detach_thread(pid: i32, tid: i32) -> Result<(), FreezeError> {
    match ptrace::detach(tid) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            // Either gone, or not stopped: try to stop it, then detach.
            if ptrace::interrupt(tid).is_err() {
                return Ok(()); // no longer traced or no longer alive
            }
            let _ = ptrace::wait(tid);
            ptrace::detach(tid)
                .map_err(PtraceError::at(pid, tid, "PTRACE_DETACH"))
                .map_err(FreezeError::from)
        }
        Err(source) => Err(PtraceError::at(pid, tid, "PTRACE_DETACH")(source).into()),
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for tid in std::mem::take(&mut self.tids) {
            let _ = detach_thread(self.pid, tid);
        }
    }
}
