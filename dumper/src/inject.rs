//! Executing a system call inside a frozen thread: what only the task itself
//! can answer (its signal handlers, sigaltstack, timers, tid address, exact
//! brk) is asked by making the thread run that one syscall.
//!
//! A [`Borrowed`] thread has its registers, signal mask and a few bytes of its
//! stack (below the red zone) saved; each [`Borrowed::syscall`] points `rip`
//! at an existing `syscall` instruction, runs to the syscall-exit stop with
//! `PTRACE_SYSCALL` and reads `rax`. [`Borrowed::finish`] (or drop) writes
//! everything back and parks the thread in an interrupt stop again, so that
//! an interrupted syscall of its own restarts exactly as it would have. The
//! borrowed window is short and contains nothing but ptrace calls and
//! `/proc/P/mem` accesses.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use image_format::elf::UserRegs;

use crate::sys::ptrace::{self, Stop};

/// Bytes of scratch memory for out-structs (the largest is `struct
/// sigaction`, 32 bytes).
pub const SCRATCH_LEN: usize = 64;
/// The System V x86_64 red zone below `rsp` that leaf code may use.
const RED_ZONE: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("pid {pid} tid {tid}: {what}: {source}")]
    Ptrace {
        pid: i32,
        tid: i32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} tid {tid}: scratch memory at {addr:#x}: {source}")]
    Scratch {
        pid: i32,
        tid: i32,
        addr: u64,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} tid {tid}: syscall {nr}: unexpected stop {stop:?}")]
    UnexpectedStop {
        pid: i32,
        tid: i32,
        nr: u64,
        stop: Stop,
    },
    #[error("pid {pid} tid {tid}: registers differ after the injected syscalls were undone")]
    NotRestored { pid: i32, tid: i32 },
}

/// A frozen thread lent to the dumper to run syscalls. Dropping it without
/// [`finish`](Self::finish) still restores it, ignoring errors.
pub struct Borrowed<'a> {
    pid: i32,
    tid: i32,
    mem: &'a File,
    syscall_ip: u64,
    saved_regs: UserRegs,
    saved_mask: u64,
    scratch: u64,
    saved_scratch: [u8; SCRATCH_LEN],
    /// The thread is in a syscall-exit stop of ours (not its original stop).
    moved: bool,
    done: bool,
}

/// The scratch address for a thread whose stack pointer is `rsp`: below the
/// red zone, 16-byte aligned.
pub fn scratch_below(rsp: u64) -> u64 {
    rsp.wrapping_sub(RED_ZONE + SCRATCH_LEN as u64) & !15
}

impl<'a> Borrowed<'a> {
    /// Borrow thread `tid` (in an interrupt stop). `mem` is `/proc/P/mem`
    /// opened read-write, `syscall_ip` the address of a `syscall`
    /// instruction in the task, `scratch` a writable address for
    /// [`SCRATCH_LEN`] bytes (see [`scratch_below`]).
    ///
    /// `temporary_mask`: the thread is in a syscall running under a
    /// temporary signal mask ([`uses_temporary_sigmask`]). Its real mask is
    /// then the kernel's `saved_sigmask`, which no ptrace request shows and
    /// `PTRACE_SETSIGMASK` would discard (it clears `TIF_RESTORE_SIGMASK`).
    /// So instead of setting the mask by ptrace, the first injected syscall
    /// is `rt_sigprocmask(SIG_SETMASK, all, &old)`: leaving the stop runs
    /// `restore_saved_sigmask()`, so `old` is the real mask. That real mask
    /// is what [`Self::original_mask`] reports and what is put back at the
    /// end; the interrupted syscall, restarted on release, installs its
    /// temporary mask again itself.
    pub fn begin(
        pid: i32,
        tid: i32,
        mem: &'a File,
        syscall_ip: u64,
        scratch: u64,
        temporary_mask: bool,
    ) -> Result<Self, InjectError> {
        let perr = |what| {
            move |source| InjectError::Ptrace {
                pid,
                tid,
                what,
                source,
            }
        };
        let saved_regs = ptrace::get_regs(tid).map_err(perr("PTRACE_GETREGSET"))?;
        let saved_mask = ptrace::get_sigmask(tid).map_err(perr("PTRACE_GETSIGMASK"))?;
        let mut saved_scratch = [0u8; SCRATCH_LEN];
        mem.read_exact_at(&mut saved_scratch, scratch)
            .map_err(|source| InjectError::Scratch {
                pid,
                tid,
                addr: scratch,
                source,
            })?;
        let mut b = Borrowed {
            pid,
            tid,
            mem,
            syscall_ip,
            saved_regs,
            saved_mask,
            scratch,
            saved_scratch,
            moved: false,
            done: false,
        };
        if temporary_mask {
            b.block_all_keeping_saved_mask()?;
        } else {
            // Block every signal, so none is delivered between our syscalls.
            ptrace::set_sigmask(tid, !0).map_err(perr("PTRACE_SETSIGMASK"))?;
        }
        Ok(b)
    }

    /// See `temporary_mask` in [`Self::begin`].
    fn block_all_keeping_saved_mask(&mut self) -> Result<(), InjectError> {
        const SIG_SETMASK: u64 = 2;
        const RT_SIGPROCMASK: u64 = 14;
        let (pid, tid, addr) = (self.pid, self.tid, self.scratch);
        let scratch_err = |source| InjectError::Scratch {
            pid,
            tid,
            addr,
            source,
        };
        self.mem
            .write_all_at(&u64::MAX.to_le_bytes(), addr)
            .map_err(scratch_err)?;
        let ret = self.syscall(RT_SIGPROCMASK, [SIG_SETMASK, addr, addr + 8, 8, 0, 0])?;
        if ret != 0 {
            return Err(InjectError::Ptrace {
                pid,
                tid,
                what: "injected rt_sigprocmask",
                source: io::Error::from_raw_os_error((-ret) as i32),
            });
        }
        let mut old = [0u8; 8];
        self.mem
            .read_exact_at(&mut old, addr + 8)
            .map_err(scratch_err)?;
        self.saved_mask = u64::from_le_bytes(old);
        Ok(())
    }

    /// The thread's own signal mask (for a thread under a temporary mask,
    /// the real one that the kernel had saved).
    pub fn original_mask(&self) -> u64 {
        self.saved_mask
    }

    /// The registers the thread had when borrowed.
    pub fn original_regs(&self) -> &UserRegs {
        &self.saved_regs
    }

    /// Address of the scratch area.
    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    /// Read the first `buf.len()` bytes of the scratch area.
    pub fn read_scratch(&self, buf: &mut [u8]) -> Result<(), InjectError> {
        let (pid, tid, addr) = (self.pid, self.tid, self.scratch);
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|source| InjectError::Scratch {
                pid,
                tid,
                addr,
                source,
            })
    }

    /// Run syscall `nr` with `args` in the thread; returns its `rax`.
    pub fn syscall(&mut self, nr: u64, args: [u64; 6]) -> Result<i64, InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        let perr = |what| {
            move |source| InjectError::Ptrace {
                pid,
                tid,
                what,
                source,
            }
        };
        let regs = UserRegs {
            rax: nr,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            r10: args[3],
            r8: args[4],
            r9: args[5],
            rip: self.syscall_ip,
            // Not in a syscall: the kernel must not apply its restart logic
            // to these registers on the way out of the current stop.
            orig_rax: u64::MAX,
            ..self.saved_regs
        };
        ptrace::set_regs(tid, &regs).map_err(perr("PTRACE_SETREGSET"))?;
        self.moved = true;
        for _ in 0..2 {
            ptrace::resume_to_syscall(tid).map_err(perr("PTRACE_SYSCALL"))?;
            let status = ptrace::wait(tid).map_err(perr("waitpid"))?;
            match ptrace::decode_status(status) {
                Stop::Syscall => {}
                stop => return Err(InjectError::UnexpectedStop { pid, tid, nr, stop }),
            }
        }
        let after = ptrace::get_regs(tid).map_err(perr("PTRACE_GETREGSET"))?;
        Ok(after.rax as i64)
    }

    /// Put everything back and park the thread in an interrupt stop again.
    pub fn finish(mut self) -> Result<(), InjectError> {
        self.done = true;
        self.restore()?;
        let (pid, tid) = (self.pid, self.tid);
        let perr = |what| {
            move |source| InjectError::Ptrace {
                pid,
                tid,
                what,
                source,
            }
        };
        let regs = ptrace::get_regs(tid).map_err(perr("PTRACE_GETREGSET"))?;
        let mask = ptrace::get_sigmask(tid).map_err(perr("PTRACE_GETSIGMASK"))?;
        if regs != self.saved_regs || mask != self.saved_mask {
            return Err(InjectError::NotRestored { pid, tid });
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<(), InjectError> {
        let (pid, tid, addr) = (self.pid, self.tid, self.scratch);
        let perr = |what| {
            move |source| InjectError::Ptrace {
                pid,
                tid,
                what,
                source,
            }
        };
        let scratch = self.mem.write_all_at(&self.saved_scratch, addr);
        ptrace::set_regs(tid, &self.saved_regs).map_err(perr("PTRACE_SETREGSET"))?;
        if self.moved {
            // We are in a syscall-exit stop. Leave it towards an interrupt
            // stop: the pending interrupt makes the thread stop in
            // get_signal() before it returns to user mode, which is where it
            // was frozen, so on release the kernel's restart logic sees the
            // original registers. Every signal is still blocked, so none is
            // dequeued on the way (only SIGKILL, which ends the thread).
            ptrace::interrupt(tid).map_err(perr("PTRACE_INTERRUPT"))?;
            ptrace::resume(tid).map_err(perr("PTRACE_CONT"))?;
            let status = ptrace::wait(tid).map_err(perr("waitpid"))?;
            match ptrace::decode_status(status) {
                Stop::Event {
                    event: ptrace::PTRACE_EVENT_STOP,
                    ..
                } => {}
                stop => {
                    return Err(InjectError::UnexpectedStop {
                        pid,
                        tid,
                        nr: u64::MAX,
                        stop,
                    })
                }
            }
            self.moved = false;
            ptrace::set_regs(tid, &self.saved_regs).map_err(perr("PTRACE_SETREGSET"))?;
        }
        // The mask last: with it, pending signals become deliverable again.
        ptrace::set_sigmask(tid, self.saved_mask).map_err(perr("PTRACE_SETSIGMASK"))?;
        scratch.map_err(|source| InjectError::Scratch {
            pid,
            tid,
            addr,
            source,
        })?;
        Ok(())
    }
}

/// Whether a thread stopped in a syscall with registers `regs` is running
/// under a temporary signal mask that the kernel restores on return
/// (`TIF_RESTORE_SIGMASK`). Resuming such a thread without a signal makes
/// the kernel put the saved mask back, so it must not be borrowed, and the
/// mask ptrace shows for it is the temporary one.
///
/// Only `rt_sigsuspend` always has one; `pselect6`, `ppoll`, `epoll_pwait`,
/// `epoll_pwait2` and `io_pgetevents` install one only when their sigmask
/// argument is not NULL (glibc's `select`, `poll` and `epoll_wait` pass
/// NULL). `read_u64` reads a word of the task's memory, for the two whose
/// argument is a pointer to a `{sigmask, size}` pair.
pub fn uses_temporary_sigmask(regs: &UserRegs, read_u64: impl Fn(u64) -> Option<u64>) -> bool {
    match regs.orig_rax as i64 {
        130 => true,
        // ppoll(fds, nfds, tmo, sigmask, sigsetsize)
        271 => regs.r10 != 0,
        // epoll_pwait{,2}(epfd, events, maxevents, timeout, sigmask, sigsetsize)
        281 | 441 => regs.r8 != 0,
        // pselect6(n, in, out, ex, tmo, &{sigmask, size}) and
        // io_pgetevents(ctx, min, nr, events, tmo, &{sigmask, size}). If the
        // pair cannot be read, assume the worst.
        270 | 333 => regs.r9 != 0 && read_u64(regs.r9) != Some(0),
        _ => false,
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.restore();
        }
    }
}

#[cfg(test)]
mod temporary_sigmask_tests {
    use super::*;

    fn regs(nr: i64, r10: u64, r8: u64, r9: u64) -> UserRegs {
        UserRegs {
            orig_rax: nr as u64,
            r10,
            r8,
            r9,
            ..UserRegs::default()
        }
    }

    #[test]
    fn only_a_non_null_mask_argument_counts() {
        let none = |_| Some(0);
        let some = |_| Some(0x7ffd_0000);
        assert!(uses_temporary_sigmask(&regs(130, 0, 0, 0), none));
        assert!(!uses_temporary_sigmask(&regs(271, 0, 0, 0), none));
        assert!(uses_temporary_sigmask(&regs(271, 0x1000, 0, 0), none));
        assert!(!uses_temporary_sigmask(&regs(281, 0, 0, 0), none));
        assert!(uses_temporary_sigmask(&regs(441, 0, 0x1000, 0), none));
        // glibc's select(): pselect6 with a {NULL, 8} pair, or no pair.
        assert!(!uses_temporary_sigmask(&regs(270, 0, 0, 0x7ffd_1000), none));
        assert!(!uses_temporary_sigmask(&regs(270, 0, 0, 0), some));
        assert!(uses_temporary_sigmask(&regs(270, 0, 0, 0x7ffd_1000), some));
        assert!(uses_temporary_sigmask(
            &regs(270, 0, 0, 0x7ffd_1000),
            |_| None
        ));
        assert!(!uses_temporary_sigmask(&regs(0, 1, 1, 1), some));
    }
}
