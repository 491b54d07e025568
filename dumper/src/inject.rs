//! Executing a system call inside a frozen thread: what only the task itself
//! can answer (its signal handlers, sigaltstack, timers, tid address, exact
//! brk) is asked by making the thread run that one syscall.
//!
//! A [`Borrowed`] thread has its registers, signal mask and a region of its
//! stack (below the red zone) saved. Before anything else changes, a
//! hand-built `rt_sigreturn` frame is written into that region: its
//! ucontext holds the thread's own registers (with the fix-up the kernel
//! applies to an interrupted syscall, STATE.md), its own signal mask and its
//! xsave area. Each [`Borrowed::syscall`] then runs through the task's own
//! `syscall; ret` gadget with `rsp` at the frame, whose return address is
//! the task's `rt_sigreturn` gadget. crdump normally stops the thread at the
//! syscall exit and never lets it reach the `ret`; [`Borrowed::finish`] (or
//! drop) writes everything back by ptrace and parks the thread in an
//! interrupt stop again, so that an interrupted syscall of its own restarts
//! exactly as it would have. But if crdump vanishes at any instant (SIGKILL,
//! out of memory), the kernel lets the thread go on from where it is: it
//! finishes the harmless injected syscall, returns into `rt_sigreturn`, and
//! the frame puts back its registers, vector state and mask. Either way the
//! task ends up the same.
//!
//! The undoing keeps that property at every step: first the thread is
//! brought back to an interrupt stop (still armed with the frame), then its
//! mask is put back (the frame has the same one), then its registers (from
//! here on the frame is no longer needed), and only then the stack bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use binfmt_loader::frame::{self, FramePlace};
use image_format::elf::{FpxSwBytes, UserRegs, FP_XSTATE_MAGIC1, FX_SW_BYTES_OFFSET};
use image_format::records::{GadgetsRecord, ThreadRecord};
use zerocopy::FromBytes;

use crate::regs;
use crate::sys::process;
use crate::sys::ptrace::{self, PtraceError, Stop};

/// Bytes of the thread's memory borrowed below its red zone: out-structs
/// for the injected syscalls at the bottom ([`OUT_LEN`] bytes, the largest is
/// `struct sigaction`), the `rt_sigreturn` frame and xsave area at the top
/// (room for 15 KiB of xsave state: AMX needs 11 KiB).
pub const SCRATCH_LEN: usize = 16 * 1024;
/// The out-struct part of the borrowed region, at its start.
const OUT_LEN: u64 = 64;
/// The System V x86_64 red zone below `rsp` that leaf code may use.
pub const RED_ZONE: u64 = 128;
/// `getpid`: the harmless syscall the thread is armed with.
const GETPID: u64 = 39;
/// `rt_sigprocmask`.
const RT_SIGPROCMASK: u64 = 14;
/// `SIG_BLOCK`.
const SIG_BLOCK: u64 = 0;
/// Offset of `uc_sigmask` in the frame (after `pretcode`).
const FRAME_SIGMASK: u64 = 8 + 296;
/// Offset of `uc_stack` in the frame.
const FRAME_STACK: usize = 8 + 16;
/// Offset of the frame's `siginfo`, which `rt_sigreturn` does not read:
/// it holds the all-ones set the first injected `rt_sigprocmask` blocks.
const FRAME_SIGINFO: u64 = 8 + frame::UCONTEXT_SIZE;

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
    #[error("pid {pid} tid {tid}: injected {what} returned {ret}")]
    Failed {
        pid: i32,
        tid: i32,
        what: &'static str,
        ret: i64,
    },
    #[error("pid {pid}: the process exited during the dump")]
    Exited { pid: i32 },
    #[error(
        "pid {pid}: no {what} found in the task's executable file mappings: syscalls cannot be \
         injected so that the task survives a dumper that dies (refused even with --force)"
    )]
    NoGadget { pid: i32, what: &'static str },
    #[error(
        "pid {pid} tid {tid}: its xsave area ({len} bytes) does not fit the {SCRATCH_LEN} bytes \
         borrowed for the return frame"
    )]
    FrameTooLarge { pid: i32, tid: i32, len: usize },
}

/// Whether process `pid` is gone, or dying: a zombie (`Z`, `X`), a SIGKILL
/// pending for it (it is on its way out; its state may still say running),
/// or its memory already released (no `VmSize:`: a user process that still
/// has its mm always shows one).
pub fn process_exited(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let state_dead = field("State:")
        .and_then(|v| v.bytes().next())
        .is_some_and(|state| matches!(state, b'Z' | b'X'));
    let sigkill_pending = ["ShdPnd:", "SigPnd:"].iter().any(|key| {
        field(key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
    });
    state_dead || sigkill_pending || field("VmSize:").is_none()
}

/// The task's own code an injected syscall runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gadgets {
    /// `syscall; ret`.
    pub syscall_ret: u64,
    /// `mov $15, %eax; syscall`: where the `ret` goes.
    pub rt_sigreturn: u64,
}

impl Gadgets {
    /// The gadgets found in the task (see `collect::areas::find_gadgets`). Without
    /// both, no thread can be borrowed so that it survives a vanished
    /// dumper: refused before anything is touched. A task that exited
    /// meanwhile (nothing could be read) is reported as such.
    pub fn for_task(pid: i32, found: &GadgetsRecord) -> Result<Self, InjectError> {
        let missing = if found.syscall_ret == 0 {
            Some("`syscall; ret` instruction sequence")
        } else if found.rt_sigreturn == 0 {
            Some("`rt_sigreturn` instruction sequence (mov $15, %eax; syscall)")
        } else {
            None
        };
        match missing {
            None => Ok(Gadgets {
                syscall_ret: found.syscall_ret,
                rt_sigreturn: found.rt_sigreturn,
            }),
            Some(_) if process_exited(pid) => Err(InjectError::Exited { pid }),
            Some(what) => Err(InjectError::NoGadget { pid, what }),
        }
    }
}

/// Signals the thread was about to take while it ran our syscalls. They
/// are held back (a signal-delivery-stop resumed with signal 0) so that the
/// injected syscall completes, and sent again as soon as the thread blocks
/// every signal ([`Self::requeue_blocked`]): then they stay pending, and
/// are delivered when the thread's own mask comes back, by crdump's restore
/// or by the frame's `rt_sigreturn` if crdump is gone by then. What cannot
/// be sent that early (SIGSTOP, which no mask blocks: sent again it would
/// stop the thread at once; a failed send) is sent once the thread is
/// restored.
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

    /// The thread now blocks every signal: send each held signal that a
    /// mask can block again with `send` at once, so that it stays pending
    /// instead of living only in crdump's memory. Those sent are no longer
    /// held; the others (SIGSTOP, failed sends) stay for
    /// [`Self::redeliver`].
    pub fn requeue_blocked(&mut self, mut send: impl FnMut(i32) -> io::Result<()>) {
        self.signals
            .retain(|&sig| sig == libc::SIGSTOP || sig == libc::SIGKILL || send(sig).is_err());
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
    gadgets: Gadgets,
    saved_regs: UserRegs,
    /// The thread's own mask, as far as known (see [`Self::original_mask`]).
    saved_mask: u64,
    /// The mask to write back on restore; `None`: leave the thread's mask
    /// alone, because it is still (or again) the thread's own. That is the
    /// case of a thread under a temporary mask until its real mask has been
    /// read: writing back the temporary mask that ptrace showed would make
    /// it permanent.
    restore_mask: Option<u64>,
    /// Start of the borrowed region ([`SCRATCH_LEN`] bytes); the out-structs
    /// are at its start.
    scratch: u64,
    saved_scratch: Vec<u8>,
    /// Where the `rt_sigreturn` frame is, inside the borrowed region.
    place: FramePlace,
    /// The region holds our bytes (the frame): they must be put back.
    written: bool,
    /// The registers point at the gadget and the frame.
    armed: bool,
    held: HeldSignals,
    /// The thread's mask blocks every signal (set by us, or by the first
    /// injected syscall): a held signal can be queued again at once.
    all_blocked: bool,
    /// The thread was resumed by us: it is in a syscall stop of ours (or
    /// somewhere on the way), not in its original stop.
    moved: bool,
    done: bool,
}

/// The start of the borrowed region for a thread whose stack pointer is
/// `rsp`: [`SCRATCH_LEN`] bytes below the red zone, 16-byte aligned.
pub fn scratch_below(rsp: u64) -> u64 {
    rsp.wrapping_sub(RED_ZONE + SCRATCH_LEN as u64) & !15
}

/// The registers the thread gets back from the frame if crdump vanishes:
/// its own, as the kernel would have resumed it. An interrupted syscall is
/// restarted or fails with `EINTR` (STATE.md; `rt_sigreturn` disables the
/// kernel's own restart logic and its restart block), and a thread stopped
/// inside an rseq critical section continues at the section's abort
/// handler, as after any preemption.
fn resume_regs(tid: i32, mem: &File, found: &UserRegs) -> UserRegs {
    let mut regs = regs::fix_up_interrupted_syscall(found).regs;
    let read_u64 = |addr: u64| {
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let conf = ptrace::get_rseq_configuration(tid).ok();
    let cs = conf
        .filter(|c| c.rseq_abi_pointer != 0)
        .and_then(|c| read_u64(c.rseq_abi_pointer + 8))
        .filter(|&cs| cs != 0);
    if let Some(cs) = cs {
        // struct rseq_cs { u32 version, flags; u64 start_ip, post_commit_offset, abort_ip }
        let fields = (read_u64(cs + 8), read_u64(cs + 16), read_u64(cs + 24));
        if let (Some(start), Some(len), Some(abort)) = fields {
            if regs.rip >= start && regs.rip - start < len {
                regs.rip = abort;
            }
        }
    }
    regs
}

/// The `xfeatures` mask to restore from an xsave area read by ptrace: the
/// kernel fills its software-reserved bytes as for a signal frame; else
/// what the header says is present, plus x87 and SSE.
fn xfeatures_of(xsave: &[u8]) -> u64 {
    let sw = xsave
        .get(FX_SW_BYTES_OFFSET..)
        .and_then(|b| FpxSwBytes::read_from_prefix(b).ok())
        .map(|(sw, _)| sw);
    match sw {
        Some(sw) if sw.magic1 == FP_XSTATE_MAGIC1 && sw.xfeatures != 0 => sw.xfeatures,
        _ => frame::xstate_bv(xsave).unwrap_or(0) | 3,
    }
}

impl<'a> Borrowed<'a> {
    /// Borrow thread `tid` (in an interrupt stop). `mem` is `/proc/P/mem`
    /// opened read-write, `gadgets` the task's `syscall; ret` and
    /// `rt_sigreturn` sequences, `scratch` the start of [`SCRATCH_LEN`]
    /// writable bytes (see [`scratch_below`]). Nothing of the thread is
    /// changed until every piece is read; then the frame is written, and
    /// only then are its registers pointed at it.
    ///
    /// `temporary_mask`: the thread is in a syscall running under a
    /// temporary signal mask ([`uses_temporary_sigmask`]). Its real mask is
    /// then the kernel's `saved_sigmask`, which no ptrace request shows and
    /// `PTRACE_SETSIGMASK` would discard (it clears `TIF_RESTORE_SIGMASK`).
    /// So instead of setting the mask by ptrace, the first injected syscall
    /// is `rt_sigprocmask(SIG_BLOCK, all, &frame.uc_sigmask)`: leaving the
    /// stop runs `restore_saved_sigmask()`, so the thread itself blocks
    /// everything and stores its real mask straight into the frame (which
    /// thus undoes the blocking even if crdump vanishes). That real mask is
    /// what [`Self::original_mask`] reports and what is put back at the end;
    /// the interrupted syscall, restarted on release, installs its temporary
    /// mask again itself. A signal the thread would take before that first
    /// syscall is held back and sent again (see [`HeldSignals`]).
    pub fn begin(
        pid: i32,
        tid: i32,
        mem: &'a File,
        gadgets: Gadgets,
        scratch: u64,
        temporary_mask: bool,
    ) -> Result<Self, InjectError> {
        let saved_regs =
            ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
        let saved_mask =
            ptrace::get_sigmask(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETSIGMASK"))?;
        let xsave = ptrace::get_xstate(tid).map_err(PtraceError::at(
            pid,
            tid,
            "PTRACE_GETREGSET NT_X86_XSTATE",
        ))?;
        let too_large = InjectError::FrameTooLarge {
            pid,
            tid,
            len: xsave.len(),
        };
        let top = scratch + SCRATCH_LEN as u64;
        let place = match FramePlace::below(top + frame::RED_ZONE, xsave.len()) {
            Some(p) if p.frame >= scratch + OUT_LEN && xsave.len() >= frame::XSAVE_MIN => p,
            _ => return Err(too_large),
        };
        let mut saved_scratch = vec![0u8; SCRATCH_LEN];
        mem.read_exact_at(&mut saved_scratch, scratch)
            .map_err(|source| InjectError::Scratch {
                pid,
                tid,
                addr: scratch,
                source,
            })?;
        let record = ThreadRecord {
            tid,
            // Under a temporary mask, the first syscall overwrites it.
            sigmask: saved_mask,
            ..ThreadRecord::default()
        };
        // A signal frame: a few KiB.
        #[allow(clippy::cast_possible_truncation)]
        let mut blob = vec![0u8; place.len() as usize];
        let resume = resume_regs(tid, mem, &saved_regs);
        frame::write_frame(
            &mut blob,
            place,
            &resume,
            &record,
            &xsave,
            xfeatures_of(&xsave),
            gadgets.rt_sigreturn,
        );
        // uc_stack all zero: rt_sigreturn then leaves the sigaltstack as it
        // is (a zero size is refused, ENOMEM, and ignored), which is the
        // thread's own; it is not known yet.
        blob[FRAME_STACK..FRAME_STACK + 24].fill(0);
        // An offset into the frame.
        #[allow(clippy::cast_possible_truncation)]
        let all = FRAME_SIGINFO as usize;
        blob[all..all + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut b = Borrowed {
            pid,
            tid,
            mem,
            gadgets,
            saved_regs,
            saved_mask,
            restore_mask: (!temporary_mask).then_some(saved_mask),
            scratch,
            saved_scratch,
            place,
            written: true,
            armed: false,
            held: HeldSignals::default(),
            all_blocked: false,
            moved: false,
            done: false,
        };
        crate::snapshot::protected::before_write(pid, place.frame, blob.len() as u64);
        mem.write_all_at(&blob, place.frame)
            .map_err(|source| InjectError::Scratch {
                pid,
                tid,
                addr: place.frame,
                source,
            })?;
        if temporary_mask {
            b.block_all_keeping_saved_mask()?;
        } else {
            // Armed first, so that from now on the thread resumes through
            // the frame whatever happens; then every signal is blocked, so
            // none is delivered between our syscalls.
            b.arm(GETPID, [0; 6])?;
            ptrace::set_sigmask(tid, !0).map_err(PtraceError::at(pid, tid, "PTRACE_SETSIGMASK"))?;
            b.all_blocked = true;
        }
        Ok(b)
    }

    /// See `temporary_mask` in [`Self::begin`]. On an error, `restore_mask`
    /// is the real mask if it was read, else `None`: before the first
    /// syscall the thread's mask is untouched, and after a failed attempt
    /// that moved the thread it is the real one again.
    fn block_all_keeping_saved_mask(&mut self) -> Result<(), InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        let all = self.place.frame + FRAME_SIGINFO;
        let old = self.place.frame + FRAME_SIGMASK;
        let r = self.syscall(RT_SIGPROCMASK, [SIG_BLOCK, all, old, 8, 0, 0])?;
        if r != 0 {
            return Err(InjectError::Failed {
                pid,
                tid,
                what: "rt_sigprocmask(SIG_BLOCK)",
                ret: r,
            });
        }
        let mut real = [0u8; 8];
        self.mem
            .read_exact_at(&mut real, old)
            .map_err(|source| InjectError::Scratch {
                pid,
                tid,
                addr: old,
                source,
            })?;
        let real = u64::from_le_bytes(real);
        self.saved_mask = real;
        self.restore_mask = Some(real);
        self.all_blocked = true;
        self.requeue_held();
        Ok(())
    }

    /// Queue the held signals again now if the thread blocks every signal
    /// (see [`HeldSignals::requeue_blocked`]): from then on a dumper that
    /// vanishes cannot lose them.
    fn requeue_held(&mut self) {
        if self.all_blocked {
            let (pid, tid) = (self.pid, self.tid);
            self.held
                .requeue_blocked(|sig| process::tgkill(pid, tid, sig));
        }
    }

    /// The thread's own signal mask (for a thread under a temporary mask,
    /// the real one that the kernel had saved).
    pub fn original_mask(&self) -> u64 {
        self.saved_mask
    }

    /// Address of the scratch area for out-structs.
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

    /// Point the thread at `syscall; ret` with syscall `nr` and `args`,
    /// `rsp` at the frame: resumed by anyone (or by nobody, once crdump is
    /// gone), it runs that syscall and returns through the frame.
    fn arm(&mut self, nr: u64, args: [u64; 6]) -> Result<(), InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        let regs = UserRegs {
            rax: nr,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            r10: args[3],
            r8: args[4],
            r9: args[5],
            rip: self.gadgets.syscall_ret,
            // `ret` pops `pretcode` (the rt_sigreturn gadget); the kernel
            // then finds the ucontext at rsp.
            rsp: self.place.frame,
            // Not in a syscall: the kernel must not apply its restart logic
            // to these registers on the way out of the current stop.
            orig_rax: u64::MAX,
            ..self.saved_regs
        };
        ptrace::set_regs(tid, &regs).map_err(PtraceError::at(pid, tid, "PTRACE_SETREGSET"))?;
        self.armed = true;
        Ok(())
    }

    /// Run syscall `nr` with `args` in the thread; returns its `rax`.
    pub fn syscall(&mut self, nr: u64, args: [u64; 6]) -> Result<i64, InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        self.arm(nr, args)?;
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
                // A group stop (SIGSTOP, SIGTSTP, ... sent to the process
                // meanwhile) or the trap that tells of its end (SIGCONT):
                // the thread stopped before it reached the syscall. It is
                // resumed on to it; the group stop itself stays in effect
                // for the process, and the kernel puts the thread back
                // into it when it is detached.
                Stop::Event {
                    event: ptrace::PTRACE_EVENT_STOP,
                    ..
                } => {}
                Stop::Exited(_) | Stop::Killed(_) => return Err(InjectError::Exited { pid }),
                stop => return Err(InjectError::UnexpectedStop { pid, tid, nr, stop }),
            }
        }
        self.requeue_held();
        let after = ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))?;
        Ok(crate::regs::signed(after.rax))
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

    /// Each step leaves a thread that, resumed without us, ends up in its
    /// own state: through the frame until the registers are back, then by
    /// itself.
    fn restore_state(&mut self) -> Result<(), InjectError> {
        let (pid, tid) = (self.pid, self.tid);
        if self.moved {
            // We are in a syscall stop of ours, registers still at the
            // gadget. Leave it towards an interrupt stop: the pending
            // interrupt makes the thread stop in get_signal() before it
            // returns to user mode, which is where it was frozen, so on
            // release the kernel's restart logic sees the original
            // registers. Normally every signal is still blocked, so none is
            // dequeued on the way (only SIGKILL, which ends the thread); if
            // one is (the mask could not be set), it is held back like
            // during a syscall.
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
            self.requeue_held();
        }
        // The mask before the registers: while they still point at the
        // gadget, the frame would set the same mask. With it, pending
        // signals become deliverable again (on the next resume).
        if let Some(mask) = self.restore_mask {
            ptrace::set_sigmask(tid, mask).map_err(PtraceError::at(
                pid,
                tid,
                "PTRACE_SETSIGMASK",
            ))?;
            self.all_blocked = false;
        }
        if self.armed {
            ptrace::set_regs(tid, &self.saved_regs).map_err(PtraceError::at(
                pid,
                tid,
                "PTRACE_SETREGSET",
            ))?;
            self.armed = false;
        }
        // The stack bytes last: until the registers were back, the frame
        // was what a vanished dumper would have left the thread with.
        if self.written {
            let addr = self.scratch;
            crate::snapshot::protected::before_write(pid, addr, self.saved_scratch.len() as u64);
            self.mem
                .write_all_at(&self.saved_scratch, addr)
                .map_err(|source| InjectError::Scratch {
                    pid,
                    tid,
                    addr,
                    source,
                })?;
            self.written = false;
        }
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
    match crate::regs::signed(regs.orig_rax) {
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
    fn blockable_signals_are_queued_again_at_once_and_sigstop_waits() {
        let mut held = HeldSignals::default();
        for sig in [libc::SIGUSR1, libc::SIGSTOP, libc::SIGALRM, libc::SIGUSR2] {
            held.hold(sig);
        }
        let mut sent = Vec::new();
        held.requeue_blocked(|s| {
            sent.push(s);
            if s == libc::SIGALRM {
                Err(io::Error::from_raw_os_error(libc::EAGAIN))
            } else {
                Ok(())
            }
        });
        assert_eq!(sent, [libc::SIGUSR1, libc::SIGALRM, libc::SIGUSR2]);
        // SIGSTOP and the failed send are left for the end.
        let mut later = Vec::new();
        held.redeliver(|s| {
            later.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(later, [libc::SIGSTOP, libc::SIGALRM]);
    }

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
// Fixtures: register bits written as the signed values they hold, and
// small counts, on purpose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
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
