//! The plan's per-thread ops: each thread's own kernel state (fs/gs base,
//! rseq, robust list, clear_child_tid, name, credentials), the table of the
//! other threads that `crate::threads` creates before the point of no
//! return, the futex words that order them against the leader, and how
//! every thread leaves (its signal frame and the jump into it).

use core::fmt;

use image_format::records::{prot, CredsRecord, GadgetsRecord};
use zerocopy::IntoBytes;

use super::abi::tramp::FUTEX_WAKE_OP_PRIVATE;
use super::abi::{int_arg, layout, op_kind, rule};
use super::builder::Builder;
use super::window::{WindowLayout, THREAD_STACK};
use super::{PlanError, PlanInput, Range, ThreadClone, ThreadInput};
use crate::frame::{self, FramePlace};
use crate::sys::nr;

/// `clone3` flags of a restored thread.
pub const CLONE_THREAD_FLAGS: u64 = 0x100 /* VM */
    | 0x200 /* FS */
    | 0x400 /* FILES */
    | 0x800 /* SIGHAND */
    | 0x1_0000 /* THREAD */
    | 0x4_0000 /* SYSVSEM */
    | 0x10_0000 /* PARENT_SETTID */;
/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2), as clone3's
/// size argument and as a length.
pub const CLONE_ARGS_SIZE: u64 = CLONE_ARGS_LEN as u64;
pub const CLONE_ARGS_LEN: usize = 88;
const _: () = assert!(core::mem::size_of::<[u64; 11]>() == CLONE_ARGS_LEN);
/// Offset of `set_tid` in `struct clone_args` (`set_tid_size` follows).
pub const CLONE_ARGS_SET_TID: usize = 64;
/// `FUTEX_OP(FUTEX_OP_ADD, -1, FUTEX_OP_CMP_EQ, 0)`: decrement.
pub const FUTEX_OP_DECREMENT: u64 = (1 << 28) | (0xfff << 12);
/// `FUTEX_OP(FUTEX_OP_ADD, -1, FUTEX_OP_CMP_EQ, 1)`: decrement, and wake
/// the second address's waiters when it was the last (1 before).
pub const FUTEX_OP_DECREMENT_LAST: u64 = FUTEX_OP_DECREMENT | 1;
/// `XFEATURE_MASK_USER_DYNAMIC`: the register-state components Linux gives
/// a thread room for only at its first use of them (AMX tile data, XSAVE
/// component 18, armed in XFD until then). `rt_sigreturn` checks a frame
/// against the calling thread's current buffer (`magic2` at its user size,
/// the restore mask cut to its features): on a thread that never used
/// them, a frame sized for them falls back to FP/SSE only, losing AVX,
/// AVX-512 and the tile configuration (the task's next tile instruction
/// then dies of SIGILL). So every thread first uses them itself — an
/// `XRSTOR` of their init state, which takes the XFD fault the kernel
/// answers by growing the buffer — and only then loads its frame.
pub const XFEATURE_MASK_USER_DYNAMIC: u64 = 1 << 18;
/// Smallest XSAVE area the first-use `XRSTOR` reads (legacy + header).
pub(super) const FIRST_USE_AREA: usize = 576;

/// `PR_SET_NAME`, `PR_SET_NO_NEW_PRIVS`, `ARCH_SET_GS`, `ARCH_SET_FS`.
const PR_SET_NAME: u64 = 15;
pub(super) const PR_SET_NO_NEW_PRIVS: u64 = 38;
const ARCH_SET_GS: u64 = 0x1001;
pub(super) const ARCH_SET_FS: u64 = 0x1002;

/// Labels name the thread for every op but the leader's.
#[derive(Clone, Copy)]
pub(super) struct Who(pub(super) Option<i32>);

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(tid) => write!(f, " of thread {tid}"),
            None => Ok(()),
        }
    }
}

/// How a thread's op list ends.
#[derive(Clone, Copy)]
pub(super) enum Leave {
    /// The last thread out: munmap the window through the gadgets.
    Unmap(GadgetsRecord),
    /// Count out of the window (the u32 at the address) through the gadgets.
    CountOut(GadgetsRecord, u64),
    /// `rt_sigreturn` from the window, which stays; the gadget is only the
    /// frame's return address.
    Stay(Option<GadgetsRecord>),
}

/// The kernel's own place for a signal frame below `rsp`, if it lies in one
/// writable VMA of the target (then the window is not needed to leave).
pub(super) fn frame_on_stack(
    input: &PlanInput<'_>,
    rsp: u64,
    xsave_len: usize,
) -> Option<FramePlace> {
    FramePlace::below(rsp, xsave_len).filter(|p| {
        let i = input.vmas.partition_point(|v| v.end <= p.frame);
        input.vmas.get(i).is_some_and(|v| {
            v.start <= p.frame && rsp <= v.end && v.prot & prot::WRITE != 0 && !v.is_special()
        })
    })
}

impl Builder<'_> {
    /// A thread's own kernel state: fs/gs base, rseq, robust list,
    /// clear_child_tid, name.
    pub(super) fn thread_state(&mut self, t: &ThreadInput<'_>, who: Who) -> Result<(), PlanError> {
        self.sys(
            rule::OK,
            nr::ARCH_PRCTL,
            [ARCH_SET_FS, t.regs.fs_base, 0, 0, 0, 0],
            format_args!("arch_prctl ARCH_SET_FS{who}"),
        )?;
        self.sys(
            rule::OK,
            nr::ARCH_PRCTL,
            [ARCH_SET_GS, t.regs.gs_base, 0, 0, 0, 0],
            format_args!("arch_prctl ARCH_SET_GS{who}"),
        )?;
        if t.record.rseq_len != 0 {
            self.sys(
                rule::OK,
                nr::RSEQ,
                [
                    t.record.rseq_addr,
                    u64::from(t.record.rseq_len),
                    0,
                    u64::from(t.record.rseq_sig),
                    0,
                    0,
                ],
                format_args!("rseq {:#x}{who}", t.record.rseq_addr),
            )?;
        }
        if t.record.robust_list_head != 0 {
            self.sys(
                rule::OK,
                nr::SET_ROBUST_LIST,
                [
                    t.record.robust_list_head,
                    t.record.robust_list_len,
                    0,
                    0,
                    0,
                    0,
                ],
                format_args!("set_robust_list{who}"),
            )?;
        }
        self.sys(
            rule::ANY,
            nr::SET_TID_ADDRESS,
            [t.record.clear_child_tid, 0, 0, 0, 0, 0],
            format_args!("set_tid_address{who}"),
        )?;
        let comm = self.put(&t.record.comm, 8)?;
        self.sys(
            rule::OK,
            nr::PRCTL,
            [PR_SET_NAME, comm, 0, 0, 0, 0],
            format_args!("prctl PR_SET_NAME{who}"),
        )
    }

    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)` for the calling thread (a per-thread
    /// flag; it needs no privilege and cannot be undone, so it comes after
    /// the credentials).
    pub(super) fn no_new_privs(&mut self, who: Who) -> Result<(), PlanError> {
        self.sys(
            rule::OK,
            nr::PRCTL,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
            format_args!("prctl PR_SET_NO_NEW_PRIVS{who}"),
        )
    }

    /// The calling thread's credentials.
    pub(super) fn creds(&mut self, c: &CredsRecord, who: Who) -> Result<(), PlanError> {
        let n = usize::try_from(c.ngroups).map_or(c.groups.len(), |n| n.min(c.groups.len()));
        let g = self.put(c.groups[..n].as_bytes(), 8)?;
        self.sys(
            rule::OK,
            nr::SETGROUPS,
            [n as u64, g, 0, 0, 0, 0],
            format_args!("setgroups{who}"),
        )?;
        let gid = c.gid.map(u64::from);
        self.sys(
            rule::OK,
            nr::SETRESGID,
            [gid[0], gid[1], gid[2], 0, 0, 0],
            format_args!("setresgid{who}"),
        )?;
        let uid = c.uid.map(u64::from);
        self.sys(
            rule::OK,
            nr::SETRESUID,
            [uid[0], uid[1], uid[2], 0, 0, 0],
            format_args!("setresuid{who}"),
        )
    }

    /// When the restore mask holds dynamic features (AMX, permitted by
    /// stage 1 because a thread had live tile state): the calling thread's
    /// first use of them, so its kernel buffer has room for them before its
    /// `rt_sigreturn` (see [`XFEATURE_MASK_USER_DYNAMIC`]). On CPUs without
    /// them (XCR0 lacks bit 18) nothing is emitted.
    pub(super) fn first_use_of_dynamic_features(
        &mut self,
        input: &PlanInput<'_>,
        who: Who,
    ) -> Result<(), PlanError> {
        let dynamic = input.xfeatures & XFEATURE_MASK_USER_DYNAMIC;
        if dynamic == 0 {
            return Ok(());
        }
        // Zeroed: XSTATE_BV 0 loads the init state, XCOMP_BV 0 is the
        // standard format, and the legacy region is not read (RFBM lacks
        // x87 and SSE).
        let (area, _) = self.alloc(FIRST_USE_AREA, 64)?;
        self.op(
            op_kind::XRSTOR_FIRST_USE,
            rule::ANY,
            0,
            [area, dynamic, 0, 0, 0, 0],
            0,
            format_args!("xrstor first use of {dynamic:#x}{who}"),
        )
    }

    /// The thread's last ops: its frame, then the jump into it. The frame
    /// goes on the thread's own stack below its red zone when that lies in
    /// one writable VMA, else in the window (which then stays).
    pub(super) fn leave(
        &mut self,
        input: &PlanInput<'_>,
        t: &ThreadInput<'_>,
        window: Range,
        leave: Leave,
        who: Who,
    ) -> Result<(), PlanError> {
        let regs = &t.regs;
        let xsave = t.xsave;
        self.first_use_of_dynamic_features(input, who)?;
        let Some(place) = frame_on_stack(input, regs.rsp, xsave.len()) else {
            // A frame in the window: the task resumes, the window stays.
            let len = frame::FRAME_SIZE + 64 + xsave.len() as u64 + 4 + 64;
            let (addr, _) = self.alloc(self.size(len)?, 64)?;
            let place = FramePlace::below(addr + len + frame::RED_ZONE, xsave.len())
                .filter(|p| p.frame >= addr)
                .ok_or(PlanError::NoRoomForFrame { rsp: regs.rsp })?;
            let off = self.data_offset(place.frame)?;
            let end = off + self.size(place.len())?;
            let blob = &mut self.data[off..end];
            frame::write_frame(blob, place, regs, &t.record, xsave, input.xfeatures, 0);
            return self.op(
                op_kind::SIGRETURN,
                rule::ANY,
                nr::RT_SIGRETURN,
                [place.ucontext(), 0, 0, 0, 0, 0],
                0,
                format_args!("rt_sigreturn{who}"),
            );
        };
        let pretcode = match leave {
            Leave::Unmap(g) | Leave::CountOut(g, _) => g.rt_sigreturn,
            Leave::Stay(g) => g.map_or(0, |g| g.rt_sigreturn),
        };
        let (src, blob) = self.alloc(self.size(place.len())?, 64)?;
        frame::write_frame(
            blob,
            place,
            regs,
            &t.record,
            xsave,
            input.xfeatures,
            pretcode,
        );
        self.op(
            op_kind::MEMCPY,
            rule::ANY,
            0,
            [place.frame, src, place.len(), 0, 0, 0],
            0,
            format_args!("copy frame{who}"),
        )?;
        match leave {
            Leave::Unmap(g) => self.op(
                op_kind::GADGET_EXIT,
                rule::ANY,
                nr::MUNMAP,
                [place.frame, g.syscall_ret, window.start, window.len(), 0, 0],
                0,
                format_args!("leave via gadgets"),
            ),
            Leave::CountOut(g, left) => self.op(
                op_kind::GADGET_WAKE_EXIT,
                rule::ANY,
                nr::FUTEX,
                [place.frame, g.syscall_ret, left, FUTEX_OP_DECREMENT, 0, 0],
                0,
                format_args!("leave via gadgets{who}"),
            ),
            Leave::Stay(_) => self.op(
                op_kind::SIGRETURN,
                rule::ANY,
                nr::RT_SIGRETURN,
                [place.ucontext(), 0, 0, 0, 0, 0],
                0,
                format_args!("rt_sigreturn{who}"),
            ),
        }
    }
}

/// How the threads leave. Through the gadgets only when every frame can go
/// on its thread's own stack: then nothing needs the window after the
/// leader's munmap. The other threads leave first, each with a
/// FUTEX_WAKE_OP made from the `syscall; ret` gadget that counts it out:
/// when the count reaches zero every one of them is past its last
/// instruction in the window (see `op_kind::GADGET_WAKE_EXIT`).
#[derive(Clone, Copy)]
pub(super) struct Exit {
    /// The target's gadgets, when it has both.
    pub(super) gadgets: Option<GadgetsRecord>,
    /// The same, when the window is unmapped through them.
    pub(super) leave_by_gadgets: Option<GadgetsRecord>,
}

impl Exit {
    pub(super) fn for_input(input: &PlanInput<'_>) -> Exit {
        let gadgets = input
            .gadgets
            .filter(|g| g.syscall_ret != 0 && g.rt_sigreturn != 0);
        let all_on_stack = input
            .threads
            .iter()
            .all(|t| frame_on_stack(input, t.regs.rsp, t.xsave.len()).is_some());
        Exit {
            gadgets,
            leave_by_gadgets: gadgets.filter(|_| all_on_stack),
        }
    }
}

/// Where the other threads' shared words and table lie in the window (all
/// 0 when there are none): `built` (the leader's word that the memory is
/// back), `go` (everything process-wide is done), `left` (count of
/// threads still in the window), `tids` (the tid clone3 wrote for each)
/// and `clones` (their [`ThreadClone`] table).
#[derive(Clone, Copy)]
pub(super) struct Others {
    pub(super) count: usize,
    go: u64,
    /// Count of the other threads that have not yet dropped their
    /// credentials (0 when the plan changes none): no thread leaves the
    /// window before it is 0.
    dropped: u64,
    left: u64,
    built: u64,
    tids: u64,
    pub(super) clones: u64,
}

impl Others {
    /// Where clone3 wrote the tid of the `k`-th other thread (0-based): the
    /// recorded one, or a new one when that was taken.
    pub(super) fn tid_slot(&self, k: usize) -> u64 {
        self.tids + 4 * k as u64
    }
}

/// Step 8b: the other threads, created before the point of no return and
/// parked on `built` in the window (`crate::threads`), set their own state
/// once the memory is back, then wait for `go`. `tids[k]` receives the tid
/// each got (CLONE_PARENT_SETTID: the recorded one or, if that was taken,
/// a new one) for the signals the thread queues to itself. Lays out their
/// table and clone args, then lets them set their state.
pub(super) fn other_threads(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    window: Range,
    lay: &WindowLayout,
) -> Result<Others, PlanError> {
    let others = input.threads.len().saturating_sub(1);
    let (go, left, built, tids) = if others > 0 {
        let count = u32::try_from(others).map_err(|_| PlanError::PlanFull { ops: b.n })?;
        let (sync, words) = b.alloc(12, 64)?;
        words[4..8].copy_from_slice(&count.to_le_bytes());
        let (tids, _) = b.alloc(4 * others, 8)?;
        (sync, sync + 4, sync + 8, tids)
    } else {
        (0, 0, 0, 0)
    };
    let dropped = if others > 0 && (input.creds.is_some() || input.no_new_privs) {
        let count = u32::try_from(others).map_err(|_| PlanError::PlanFull { ops: b.n })?;
        let (word, bytes) = b.alloc(4, 4)?;
        bytes[..4].copy_from_slice(&count.to_le_bytes());
        word
    } else {
        0
    };
    let (clones, _) = b.alloc(core::mem::size_of::<ThreadClone>() * others, 8)?;
    for (k, t) in input.threads.iter().skip(1).enumerate() {
        let set_tid = if input.set_tids {
            b.put(&t.record.tid.to_le_bytes(), 8)?
        } else {
            0
        };
        let stack = window.start + lay.thread_stacks_off + k as u64 * THREAD_STACK;
        let args: [u64; 11] = [
            CLONE_THREAD_FLAGS,
            0,
            0,
            tids + 4 * k as u64,
            0,
            stack,
            THREAD_STACK,
            0,
            set_tid,
            u64::from(input.set_tids),
            0,
        ];
        let a = b.put(args.as_bytes(), 8)?;
        // Its op list is filled in once it is built (`other_thread_lists`).
        b.set_clone(
            clones,
            k,
            ThreadClone {
                args: a,
                tid: t.record.tid,
                ..Default::default()
            },
        )?;
    }
    if others > 0 {
        b.op(
            op_kind::STORE_WAKE,
            rule::OK,
            nr::FUTEX,
            [built, 1, 0, 0, 0, 0],
            0,
            format_args!("futex wake the other threads to set their state"),
        )?;
    }
    Ok(Others {
        count: others,
        go,
        dropped,
        left,
        built,
        tids,
        clones,
    })
}

/// Step 11: the leader's credentials, last: after them the plan may no
/// longer be allowed to do the rest. Credentials are per thread: every
/// thread sets its own (the others after `go`).
pub(super) fn leader_credentials(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
) -> Result<(), PlanError> {
    if let Some(c) = input.creds {
        b.creds(&c, Who(None))?;
    }
    if input.no_new_privs {
        b.no_new_privs(Who(None))?;
    }
    Ok(())
}

/// Step 12: let the other threads go, and wait until they have left the
/// window; then close the caller's stderr.
pub(super) fn release_others(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    o: &Others,
) -> Result<(), PlanError> {
    if o.count > 0 {
        b.op(
            op_kind::STORE_WAKE,
            rule::OK,
            nr::FUTEX,
            [o.go, 1, 0, 0, 0, 0],
            0,
            format_args!("futex wake the other threads"),
        )?;
        // Also when the window stays: the error fd may close only once
        // no other thread can fail.
        b.op(
            op_kind::WAIT_EQ,
            rule::OK,
            nr::FUTEX,
            [o.left, 0, 0, 0, 0, 0],
            0,
            format_args!("futex wait for the other threads to leave"),
        )?;
    }
    // No op after this one reports a failure (the leave ops cannot fail
    // and return), so the caller's stderr can go: nothing of the loader
    // stays open in the task.
    if let Some(fd) = input.err_fd {
        b.sys(
            rule::OK,
            nr::CLOSE,
            [int_arg(fd), 0, 0, 0, 0, 0],
            format_args!("close the loader's stderr"),
        )?;
    }
    Ok(())
}

/// Step 13: the leader's jump, last of its ops.
pub(super) fn leader_leaves(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    window: Range,
    exit: Exit,
) -> Result<(), PlanError> {
    let leave = match exit.leave_by_gadgets {
        Some(g) => Leave::Unmap(g),
        None => Leave::Stay(exit.gadgets),
    };
    b.leave(input, &input.threads[0], window, leave, Who(None))
}

/// The other threads' op lists, after the leader's (whose ops start at
/// `ops_addr`); each one's [`ThreadClone`] entry gets its list.
pub(super) fn other_thread_lists(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    window: Range,
    o: &Others,
    exit: Exit,
    ops_addr: u64,
) -> Result<(), PlanError> {
    let (go, left, built) = (o.go, o.left, o.built);
    for (k, t) in input.threads.iter().skip(1).enumerate() {
        let first = b.n;
        let who = Who(Some(t.record.tid));
        // Parked from its creation (before the point of no return) until
        // the memory it sets its state in is back.
        b.op(
            op_kind::WAIT_EQ,
            rule::OK,
            nr::FUTEX,
            [built, 1, 0, 0, 0, 0],
            0,
            format_args!("futex wait for the memory{who}"),
        )?;
        // Per task, and this thread was created before the leader set it.
        b.sys(
            rule::ANY,
            nr::PERSONALITY,
            [u64::from(input.personality), 0, 0, 0, 0, 0],
            format_args!("personality{who}"),
        )?;
        b.thread_state(t, who)?;
        // Its own pending signals, to its own tid: the one clone3 wrote to
        // `tids[k]` (read at run time: the recorded one, or a new one if
        // that was taken).
        let own = o.tids + 4 * k as u64;
        for p in input.pending.iter().filter(|p| p.tid == t.record.tid) {
            b.queue_signal(input.pid, p, Some((own, who)))?;
        }
        b.op(
            op_kind::WAIT_EQ,
            rule::OK,
            nr::FUTEX,
            [go, 1, 0, 0, 0, 0],
            0,
            format_args!("futex wait for go{who}"),
        )?;
        if let Some(c) = input.creds {
            b.creds(&c, who)?;
        }
        if input.no_new_privs {
            b.no_new_privs(who)?;
        }
        if o.dropped != 0 {
            // The second barrier: a thread that left now would run task
            // code (the owner's, when the credentials were lowered) while
            // a sibling is still uid 0 with every capability, running the
            // trampoline from the writable window. The leader dropped its
            // own before `go`; the last of the others to drop wakes them.
            b.sys(
                rule::OK,
                nr::FUTEX,
                [
                    o.dropped,
                    FUTEX_WAKE_OP_PRIVATE,
                    0,
                    i32::MAX as u64,
                    o.dropped,
                    FUTEX_OP_DECREMENT_LAST,
                ],
                format_args!("futex count credentials dropped{who}"),
            )?;
            b.op(
                op_kind::WAIT_EQ,
                rule::OK,
                nr::FUTEX,
                [o.dropped, 0, 0, 0, 0, 0],
                0,
                format_args!("futex wait for every thread's credentials{who}"),
            )?;
        }
        let leave = match exit.leave_by_gadgets {
            Some(g) => Leave::CountOut(g, left),
            None => {
                // Count out now: what remains (the frame, rt_sigreturn)
                // reports no failure.
                b.sys(
                    rule::OK,
                    nr::FUTEX,
                    [left, FUTEX_WAKE_OP_PRIVATE, 1, 0, left, FUTEX_OP_DECREMENT],
                    format_args!("futex count out{who}"),
                )?;
                Leave::Stay(exit.gadgets)
            }
        };
        b.leave(input, t, window, leave, who)?;
        let list = ops_addr + (first * layout::OP_SIZE) as u64;
        let count = (b.n - first) as u64;
        let mut c = b.clone_at(o.clones, k)?;
        c.ops = list;
        c.count = count;
        b.set_clone(o.clones, k, c)?;
    }
    Ok(())
}
