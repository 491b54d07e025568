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

use crate::sys::process;
use crate::sys::ptrace::{self, PtraceError, Stop};

/// Bytes of scratch memory for out-structs (the largest is `struct
/// sigaction`, 32 bytes).
pub const SCRATCH_LEN: usize = 64;
/// The System V x86_64 red zone below `rsp` that leaf code may use.
const RED_ZONE: u64 = 128;
/// `getpid`: the harmless syscall run to leave a temporary-mask stop.
const GETPID: u64 = 39;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
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
    #[error(
        "pid {pid} tid {tid}: signal {sig} arrived during the injected syscalls and could not be sent again: {source}"
    )]
    Redeliver {
        pid: i32,
        tid: i32,
        sig: i32,
        #[source]
        source: io::Error,
    },
}

/// Signals the thread was about to take while it ran our syscalls. They
/// are held back (a signal-delivery-stop resumed with signal 0) so that the
/// injected syscall completes, and sent again once the thread is restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeldSignals {
    signals: Vec<i32>,
}

impl HeldSignals {
    /// The thread stopped to take `sig`; it is held back.
    pub fn hold(&mut self, sig: i32) {
        self.signals.push(sig);
    }

    /// Send every held signal again, in the order they arrived, with
    /// `send`; all are attempted even if one fails, and the first failure
    /// is returned. Afterwards nothing is held (a signal is never sent
    /// twice).
    pub fn redeliver(
        &mut self,
        mut send: impl FnMut(i32) -> io::Result<()>,
    ) -> Result<(), (i32, io::Error)> {
        let mut first_error = None;
        for sig in std::mem::take(&mut self.signals) {
            if let Err(e) = send(sig) {
                first_error.get_or_insert((sig, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }
}

/// A frozen thread lent to the dumper to run syscalls. Dropping it without
/// [`finish`](Self::finish) still restores it, ignoring errors.
pub struct Borrowed<'a> {
    pid: i32,
    tid: i32,
    mem: &'a File,
    syscall_ip: u64,
    saved_regs: UserRegs,
    /// The thread's own mask, as far as known (see [`Self::original_mask`]).
    saved_mask: u64,
    /// The mask to write back on restore; `None`: leave the thread's mask
    /// alone, because it is still (or again) the thread's own. That is the
    /// case of a thread under a temporary mask until its real mask has been
    /// read: writing back the temporary mask that ptrace showed would make
    /// it permanent.
    restore_mask: Option<u64>,
    scratch: u64,
    saved_scratch: [u8; SCRATCH_LEN],
    held: HeldSignals,
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
    /// So instead of setting the mask by ptrace right away, a harmless
    /// syscall (`getpid`) is injected first: leaving the stop runs
    /// `restore_saved_sigmask()`, so at its syscall stop `PTRACE_GETSIGMASK`
    /// shows the real mask; only then is every signal blocked. That real
    /// mask is what [`Self::original_mask`] reports and what is put back at
    /// the end; the interrupted syscall, restarted on release, installs its
    /// temporary mask again itself. A signal the thread would take before
    /// that first syscall is held back and sent again (see [`HeldSignals`]).
    pub fn begin(
        pid: i32,
        tid: i32,
        mem: &'a File,
        syscall_ip: u64,
        scratch: u64,
        temporary_mask: bool,
    ) -> Result<Self, InjectError> {
        let saved_regs =
            ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
        let saved_mask =
            ptrace::get_sigmask(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETSIGMASK"))?;
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
            restore_mask: (!temporary_mask).then_some(saved_mask),
            scratch,
            saved_scratch,
            held: HeldSignals::default(),
            moved: false,
            done: false,
        };
        if temporary_mask {
            b.block_all_keeping_saved_mask()?;
        } else {
            // Block every signal, so none is delivered between our syscalls.
            ptrace::set_sigmask(tid, !0).map_err(PtraceError::at(pid, tid, "PTRACE_SETSIGMASK"))?;
        }
        Ok(b)
    }

    /// See `temporary_mask` in [`Self::begin`]. On an error, `restore_mask`
    /// is the real mask if it was read, else `None`: before the first
    /// syscall the thread's mask is untouched, and after it (or after a
    /// failed attempt that moved the thread) it is the real one again.
    fn block_all_keeping_saved_mask(&mut self) -> Result<(), InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        self.syscall(GETPID, [0; 6])?;
        let real =
            ptrace::get_sigmask(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETSIGMASK"))?;
        self.saved_mask = real;
        self.restore_mask = Some(real);
        ptrace::set_sigmask(tid, !0).map_err(PtraceError::at(pid, tid, "PTRACE_SETSIGMASK"))?;
        Ok(())
    }

    /// The thread's own signal mask (for a thread under a temporary mask,
    /// the real one that the kernel had saved).
    pub fn original_mask(&self) -> u64 {
        self.saved_mask
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
        ptrace::set_regs(tid, &regs).map_err(PtraceError::at(pid, tid, "PTRACE_SETREGSET"))?;
        self.moved = true;
        // Entry and exit stop. A signal-delivery-stop in between (a signal
        // the thread's mask lets through, e.g. before the first syscall of
        // a thread under a temporary mask) is held back and the thread
        // resumed without it, so the syscall runs; restore() sends it again.
        let mut syscall_stops = 0;
        while syscall_stops < 2 {
            ptrace::resume_to_syscall(tid).map_err(PtraceError::at(pid, tid, "PTRACE_SYSCALL"))?;
            let status = ptrace::wait(tid).map_err(PtraceError::at(pid, tid, "waitpid"))?;
            match ptrace::decode_status(status) {
                Stop::Syscall => syscall_stops += 1,
                Stop::Signal(sig) => self.held.hold(sig),
                stop => return Err(InjectError::UnexpectedStop { pid, tid, nr, stop }),
            }
        }
        let after = ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
        Ok(after.rax as i64)
    }

    /// Put everything back and park the thread in an interrupt stop again.
    pub fn finish(mut self) -> Result<(), InjectError> {
        self.done = true;
        self.restore()?;
        let (pid, tid) = (self.pid, self.tid);
        let regs = ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
        let mask =
            ptrace::get_sigmask(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETSIGMASK"))?;
        if regs != self.saved_regs || self.restore_mask.is_some_and(|m| m != mask) {
            return Err(InjectError::NotRestored { pid, tid });
        }
        Ok(())
    }

    /// Put registers, scratch memory and mask back, then send the held
    /// signals again (even if restoring failed: a signal must not be lost).
    fn restore(&mut self) -> Result<(), InjectError> {
        let restored = self.restore_state();
        let (pid, tid) = (self.pid, self.tid);
        // tgkill re-queues the signal number only: its siginfo (sender,
        // si_code, value) is not preserved, and a process-directed signal
        // comes back directed at this thread. rt_tgsigqueueinfo could carry
        // the siginfo, but the kernel refuses si_code >= 0 (what kill() and
        // the kernel itself send) from another process.
        let redelivered = self
            .held
            .redeliver(|sig| process::tgkill(pid, tid, sig))
            .map_err(|(sig, source)| InjectError::Redeliver {
                pid,
                tid,
                sig,
                source,
            });
        restored.and(redelivered)
    }

    fn restore_state(&mut self) -> Result<(), InjectError> {
        let (pid, tid, addr) = (self.pid, self.tid, self.scratch);
        let scratch = self.mem.write_all_at(&self.saved_scratch, addr);
        ptrace::set_regs(tid, &self.saved_regs).map_err(PtraceError::at(
            pid,
            tid,
            "PTRACE_SETREGSET",
        ))?;
        if self.moved {
            // We are in a syscall-exit stop. Leave it towards an interrupt
            // stop: the pending interrupt makes the thread stop in
            // get_signal() before it returns to user mode, which is where it
            // was frozen, so on release the kernel's restart logic sees the
            // original registers. Normally every signal is still blocked,
            // so none is dequeued on the way (only SIGKILL, which ends the
            // thread); if one is (the mask could not be set), it is held
            // back like during a syscall.
            ptrace::interrupt(tid).map_err(PtraceError::at(pid, tid, "PTRACE_INTERRUPT"))?;
            loop {
                ptrace::resume(tid).map_err(PtraceError::at(pid, tid, "PTRACE_CONT"))?;
                let status = ptrace::wait(tid).map_err(PtraceError::at(pid, tid, "waitpid"))?;
                match ptrace::decode_status(status) {
                    Stop::Event {
                        event: ptrace::PTRACE_EVENT_STOP,
                        ..
                    } => break,
                    Stop::Signal(sig) => self.held.hold(sig),
                    stop => {
                        return Err(InjectError::UnexpectedStop {
                            pid,
                            tid,
                            nr: u64::MAX,
                            stop,
                        })
                    }
                }
            }
            self.moved = false;
            ptrace::set_regs(tid, &self.saved_regs).map_err(PtraceError::at(
                pid,
                tid,
                "PTRACE_SETREGSET",
            ))?;
        }
        // The mask last: with it, pending signals become deliverable again.
        if let Some(mask) = self.restore_mask {
            ptrace::set_sigmask(tid, mask).map_err(PtraceError::at(
                pid,
                tid,
                "PTRACE_SETSIGMASK",
            ))?;
        }
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
mod held_signal_tests {
    use super::*;

    #[test]
    fn every_held_signal_is_sent_once_in_order() {
        let mut held = HeldSignals::default();
        held.hold(libc::SIGUSR1);
        held.hold(libc::SIGALRM);
        let mut sent = Vec::new();
        held.redeliver(|s| {
            sent.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(sent, [libc::SIGUSR1, libc::SIGALRM]);
        assert!(held.is_empty());
        held.redeliver(|_| panic!("sent twice")).unwrap();
    }

    #[test]
    fn a_failed_send_does_not_stop_the_others() {
        let mut held = HeldSignals::default();
        for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM] {
            held.hold(sig);
        }
        let mut sent = Vec::new();
        let err = held
            .redeliver(|s| {
                sent.push(s);
                if s == libc::SIGUSR2 {
                    Err(io::Error::from_raw_os_error(libc::ESRCH))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(err.0, libc::SIGUSR2);
        assert_eq!(sent.len(), 3);
        assert!(held.is_empty());
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
