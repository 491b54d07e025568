//! Stage 2: turn a checked image into the plan the trampoline runs, a
//! flat list of [`Op`]s in the bootstrap window — pure code over plain
//! data, no system calls, so it runs and is tested on the host.
//!
//! The plan lives in the **bootstrap window**, one anonymous mapping free in
//! both the loader's current layout and the target's: a header, a copy of
//! the trampoline (`arch`), the flat array of [`Op`]s, their data (frames,
//! auxv, sigactions, failure messages), a small stack for the leader and one
//! per other thread, and room to park the kernel's vDSO block. After the
//! switch only the trampoline runs, reading ops from here; nothing it
//! touches lies outside the window except what the ops name.
//!
//! Threads: the leader's op list comes first. Each other thread is created
//! before the point of no return, by stage 1's code ([`crate::threads`]):
//! `clone3` (with its recorded tid when privileged and free) onto its
//! window stack, from the [`ThreadClone`] table the plan leaves in the
//! window, so that its tid is held by the restore from then on. It runs its
//! own op list there: a futex wait for `built` (the leader's word once the
//! memory is back), its personality, fs/gs base, rseq, robust list,
//! clear_child_tid and name, then a futex wait for `go`. The leader sets
//! `go` once everything process-wide is done (pending signals, timers, its
//! credentials); each thread then sets its own credentials and leaves. When
//! the window is to be unmapped, a thread leaves through the target's
//! gadgets with its frame on its own stack, and its last act is a
//! FUTEX_WAKE_OP that decrements the count of threads in the window — made
//! by the `syscall; ret` gadget, from outside the window, so a count of zero
//! proves that no thread will execute window code again. The leader waits
//! for zero, then unmaps the window through the same gadgets. (A thread
//! that forks in the instant between its leaving and the leader's munmap
//! gives its child a copy of the window; nothing runs in it.)

//!
//! The modules: [`abi`] (what the trampoline reads: ops, header, kinds,
//! rules, offsets), [`window`] (the window's layout and place), `builder`
//! (appending ops and their data), `vmas`, `process` and `thread_ops` (the
//! steps of [`build_plan`], in the order the trampoline runs them), and
//! [`printer`] (reading a built window back, the dry run).

use core::fmt;

use image_format::elf::UserRegs;
use image_format::records::{
    vma_flags, vma_kind, CredsRecord, GadgetsRecord, ItimerRecord, MmRecord, PendingSignalRecord,
    PosixTimerRecord, RlimitRecord, SigactionRecord, ThreadRecord,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod abi;
mod barrier;
mod builder;
pub mod epoll;
pub mod inotify;
pub mod lazy;
mod posix_timers;
pub mod printer;
mod process;
mod thread_ops;
pub mod timerfds;
mod vmas;
pub mod window;

pub use abi::{layout, op_kind, rule, Op, WindowHeader};
pub use epoll::EpollAdd;
pub use inotify::InotifyDrain;
pub use printer::{op_label, syscall_name, window_ops, write_plan};
pub use process::{charged_signals, check_sigqueue, parse_sigq, SigQueueError};
pub use thread_ops::{
    CLONE_ARGS_LEN, CLONE_ARGS_SET_TID, CLONE_ARGS_SIZE, CLONE_THREAD_FLAGS, FUTEX_OP_DECREMENT,
    XFEATURE_MASK_USER_DYNAMIC,
};
pub use timerfds::TimerfdArm;
pub use vmas::{copies_by_uffd, maps_read_only_shared, wants_fill_copies, LateSeal};
pub use window::{
    choose_window, find_free, occupied_ranges, WindowLayout, STACK_GUARD_GAP, THREAD_STACK,
    WINDOW_GAP, WINDOW_STACK,
};

use builder::Builder;
use thread_ops::{Exit, Who};

pub const PAGE: u64 = 4096;
/// Top of the 47-bit user address space (`TASK_SIZE`): the plan unmaps
/// everything of the loader up to here.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// A half-open address range.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(C)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// One target memory area and the fd stage 1 opened for its file (-1: none).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TargetVma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub prot: u32,
    pub flags: u32,
    pub kind: u32,
    pub fd: i32,
}

impl TargetVma {
    pub fn range(&self) -> Range {
        Range {
            start: self.start,
            end: self.end,
        }
    }
    /// The kernel's special mappings: recreated by moving the new vDSO block,
    /// or not at all (`[vsyscall]`).
    pub fn is_special(&self) -> bool {
        matches!(
            self.kind,
            vma_kind::VDSO | vma_kind::VVAR | vma_kind::VVAR_VCLOCK | vma_kind::VSYSCALL
        )
    }
    /// A shared mapping of a file opened by path (pages cannot be stored
    /// into it; a shared memory object's areas, `SHARED_ANON`, take them).
    pub(super) fn is_shared_file(&self) -> bool {
        self.fd >= 0 && self.flags & vma_flags::SHARED != 0 && self.kind != vma_kind::SHARED_ANON
    }
}

/// Stored pages: `len` bytes at offset `offset` of the image open at `fd`
/// belong at `vaddr` (`fd`: the image's own, or a parent image's for an
/// incremental image, `crate::parent`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PageLoad {
    pub vaddr: u64,
    pub offset: u64,
    pub len: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// The kernel's vDSO block (`[vvar]`, `[vvar_vclock]`, `[vdso]`), in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoBlock {
    pub parts: [Range; 3],
    pub count: usize,
}

impl VdsoBlock {
    pub fn push(&mut self, r: Range) -> bool {
        if self.count == 3 {
            return false;
        }
        self.parts[self.count] = r;
        self.count += 1;
        true
    }
    pub fn parts(&self) -> &[Range] {
        &self.parts[..self.count]
    }
    pub fn span(&self) -> Option<Range> {
        let p = self.parts();
        Some(Range {
            start: p.first()?.start,
            end: p.last()?.end,
        })
    }
    /// Same number of parts, same sizes and same spacing.
    pub fn same_shape(&self, o: &VdsoBlock) -> bool {
        let (a, b) = (self.parts(), o.parts());
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.len() == y.len() && x.start - a[0].start == y.start - b[0].start)
    }
}

/// An fd stage 1 opened, to be placed at `to`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FdMove {
    pub from: i32,
    pub to: i32,
    /// 1: set `FD_CLOEXEC` on `to`.
    pub cloexec: u32,
}

/// One other thread, for [`crate::threads::create_threads`] to create
/// before the point of no return: its `struct clone_args` in the window
/// (with `set_tid` pointing at `tid` when the plan asks for it; cleared to
/// fall back to a new tid) and the op list it runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ThreadClone {
    /// Address of its [`CLONE_ARGS_SIZE`]-byte `struct clone_args`.
    pub args: u64,
    /// Its op list and op count.
    pub ops: u64,
    pub count: u64,
    /// The tid it had.
    pub tid: i32,
    pub _pad: u32,
}

/// One thread the plan resumes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadInput<'a> {
    pub record: ThreadRecord,
    pub regs: UserRegs,
    /// Standard-format XSAVE area, trimmed to this CPU's size.
    pub xsave: &'a [u8],
}

/// Everything the planner needs, collected and checked by stage 1.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub image_fd: i32,
    /// A userfaultfd stage 1 made for the fill (`crate::sys::uffd`): the
    /// plan copies pages with it and closes it. `None`: every page by
    /// `pread`.
    pub fill_uffd: Option<i32>,
    /// A lazy restore (`--lazy`): the task's userfaultfd and the socket
    /// to the page server (`lazy::LazyFill`); `None`: an eager one.
    pub lazy: Option<lazy::LazyFill>,
    /// Sorted by address, not overlapping (special mappings included).
    pub vmas: &'a [TargetVma],
    pub loads: &'a [PageLoad],
    /// Every mapping the loader has now (except `[vsyscall]`).
    pub loader_maps: &'a [Range],
    /// The loader's own `[stack]` (also in `loader_maps`): the window keeps
    /// [`STACK_GUARD_GAP`] free below it too, or the kernel's stack guard
    /// would refuse to grow the stack into it (or the window would sit in
    /// the gap `mmap` keeps).
    pub loader_stack: Option<Range>,
    pub loader_vdso: VdsoBlock,
    pub target_vdso: VdsoBlock,
    pub mm: MmRecord,
    pub auxv: &'a [u8],
    pub exe_fd: Option<i32>,
    pub sigactions: &'a [SigactionRecord],
    /// Already clamped to what this process may set.
    pub rlimits: &'a [RlimitRecord],
    pub personality: u32,
    pub umask: u32,
    pub cwd_fd: Option<i32>,
    pub fd_moves: &'a [FdMove],
    /// Fds left as they are (inherited stdio).
    pub keep_fds: &'a [i32],
    /// The modes to set on the terminals the task resumes on, once its
    /// fds are in place.
    pub terminals: &'a [crate::objects::terminal::TerminalSetup],
    /// The caller's stderr, duplicated above every fd of the task, for
    /// failure messages; kept through the fd step and closed once no
    /// thread can fail any more. `None`: messages go to fd 2.
    pub err_fd: Option<i32>,
    /// A tree restore's barrier (`--barrier R,G`): its fds are kept
    /// through the fd step, and the plan writes a byte to `ready` and
    /// reads one from `go` once the memory and the threads are back.
    pub barrier: Option<crate::args::Barrier>,
    /// Inotify instances to drain of the restore's own events.
    pub inotify_drains: &'a [InotifyDrain],
    /// Epoll items to add once the fds are in place.
    pub epoll_adds: &'a [EpollAdd],
    /// Timerfds to arm, next to the interval timers.
    pub timerfd_arms: &'a [TimerfdArm],
    /// Leader first; the others are created before the plan runs
    /// (`crate::threads`, from the plan's [`ThreadClone`] table).
    pub threads: &'a [ThreadInput<'a>],
    /// Clone the other threads with their recorded tids (`set_tid`, needs
    /// privilege); otherwise they get new ones.
    pub set_tids: bool,
    /// Restore mask for XRSTOR (this CPU's XCR0).
    pub xfeatures: u64,
    pub pid: i32,
    pub pending: &'a [PendingSignalRecord],
    pub itimers: &'a [ItimerRecord],
    /// The POSIX timers, created with their ids and armed last.
    pub posix_timers: &'a [PosixTimerRecord],
    /// Seals added after the areas are filled (`F_SEAL_FUTURE_WRITE`).
    pub late_seals: &'a [LateSeal],
    /// Credentials to switch to, when they differ and we may.
    pub creds: Option<CredsRecord>,
    /// Set `PR_SET_NO_NEW_PRIVS` in every thread, after its credentials.
    pub no_new_privs: bool,
    pub gadgets: Option<GadgetsRecord>,
    pub mmap_min_addr: u64,
    /// `prctl(PR_SET_MDWE)` bits to set once the areas are final (0: none).
    pub mdwe: u64,
    pub trampoline: &'a [u8],
}

/// Why no plan could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No free range of `size` bytes in both layouts.
    NoWindow { size: u64 },
    /// The buffer given for the window is smaller than its layout.
    WindowTooSmall { need: u64, have: u64 },
    /// Ran out of op or data space (a bug in the size estimate).
    PlanFull { ops: usize },
    /// Stored pages at `vaddr` that no restorable VMA covers.
    LoadOutsideVmas { vaddr: u64 },
    /// Stored pages at `vaddr` inside a shared file mapping (would write the file).
    LoadInSharedFile { vaddr: u64 },
    /// Target VMA at `start` overlaps the previous one or is not page-aligned.
    BadVma { start: u64 },
    /// The target's vDSO block differs from this kernel's.
    VdsoMismatch,
    /// The thread's stack pointer leaves no room for a signal frame.
    NoRoomForFrame { rsp: u64 },
    /// The XSAVE area is shorter than legacy + header.
    XsaveTooSmall { len: usize },
    /// The input holds no thread at all.
    NoThread,
    /// POSIX timer `id` signals thread `tid`, which the input lacks.
    TimerThread { id: i32, tid: i32 },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PlanError::NoWindow { size } => write!(
                f,
                "no free range of {size:#x} bytes for the bootstrap window"
            ),
            PlanError::WindowTooSmall { need, have } => {
                write!(f, "window buffer has {have:#x} bytes, needs {need:#x}")
            }
            PlanError::PlanFull { ops } => write!(f, "plan full after {ops} ops"),
            PlanError::LoadOutsideVmas { vaddr } => {
                write!(f, "stored pages at {vaddr:#x} lie outside every VMA")
            }
            PlanError::LoadInSharedFile { vaddr } => {
                write!(f, "stored pages at {vaddr:#x} lie in a shared file mapping")
            }
            PlanError::BadVma { start } => write!(
                f,
                "VMA at {start:#x} is unaligned or overlaps its predecessor"
            ),
            PlanError::VdsoMismatch => {
                write!(f, "the image's vdso/vvar layout differs from this kernel's")
            }
            PlanError::NoRoomForFrame { rsp } => {
                write!(f, "no room for a signal frame below rsp {rsp:#x}")
            }
            PlanError::XsaveTooSmall { len } => write!(f, "xsave area of {len} bytes is too small"),
            PlanError::NoThread => write!(f, "the image holds no thread"),
            PlanError::TimerThread { id, tid } => write!(
                f,
                "POSIX timer {id} signals thread {tid}, which the image does not have"
            ),
        }
    }
}

/// What the plan does at the end, for the stage-1 warnings and the dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanSummary {
    pub ops: usize,
    pub window: Range,
    /// The window stays mapped in the restored task (no gadgets, or the
    /// frame could not go on the thread's stack).
    pub window_left: bool,
    /// Trampoline entry point (absolute address).
    pub entry: u64,
    /// The other threads to create: `nclones` [`ThreadClone`]s at this
    /// address in the window.
    pub clones: u64,
    pub nclones: usize,
}

/// Refuse an input the plan cannot be built from, before anything is
/// written: a short buffer, VMAs or loads that do not fit together, a vDSO
/// block of another shape, no thread, a short XSAVE area.
fn check_input(input: &PlanInput<'_>, lay: &WindowLayout, buf: &[u8]) -> Result<(), PlanError> {
    if (buf.len() as u64) < lay.size {
        return Err(PlanError::WindowTooSmall {
            need: lay.size,
            have: buf.len() as u64,
        });
    }
    vmas::check_loads(input)?;
    if !input.target_vdso.parts().is_empty() && !input.loader_vdso.same_shape(&input.target_vdso) {
        return Err(PlanError::VdsoMismatch);
    }
    if input.threads.is_empty() {
        return Err(PlanError::NoThread);
    }
    if let Some(t) = input
        .threads
        .iter()
        .find(|t| t.xsave.len() < crate::frame::XSAVE_MIN)
    {
        return Err(PlanError::XsaveTooSmall { len: t.xsave.len() });
    }
    Ok(())
}

/// The trampoline's code into the window, and the builder over its op
/// array and data area (both at the layout's offsets).
fn start_window<'w>(
    input: &PlanInput<'_>,
    lay: &WindowLayout,
    base: u64,
    buf: &'w mut [u8],
) -> Result<Builder<'w>, PlanError> {
    let full = PlanError::PlanFull { ops: 0 };
    let at = |off: u64| usize::try_from(off).map_err(|_| full);
    let code = at(lay.code_off)?;
    buf.get_mut(code..code + input.trampoline.len())
        .ok_or(full)?
        .copy_from_slice(input.trampoline);
    let (head, rest) = buf.split_at_mut(at(lay.data_off)?);
    let ops_bytes = head.get_mut(at(lay.ops_off)?..).ok_or(full)?;
    let ops = ops_bytes
        .get_mut(..lay.ops_cap * layout::OP_SIZE)
        .and_then(|b| <[Op]>::mut_from_bytes(b).ok())
        .ok_or(full)?;
    let data = rest.get_mut(..at(lay.data_len)?).ok_or(full)?;
    Ok(Builder {
        ops,
        n: 0,
        data,
        data_addr: base + lay.data_off,
        used: 0,
    })
}

/// Step 0: nothing may interrupt the plan: block every signal (the frame's
/// uc_sigmask puts the task's own mask back). The loader's `_start`
/// blocked them already; the plan does not rely on its runner.
fn block_signals(b: &mut Builder<'_>) -> Result<(), PlanError> {
    let all = b.put(&u64::MAX.to_le_bytes(), 8)?;
    b.sys(
        rule::OK,
        crate::sys::nr::RT_SIGPROCMASK,
        [2, all, 0, 8, 0, 0],
        format_args!("rt_sigprocmask block all"),
    )
}

/// Build the plan for `input` into `buf`, the window's bytes, which will run
/// at address `window.start`. `buf` must be zeroed and at least the layout's
/// size long.
pub fn build_plan(
    input: &PlanInput<'_>,
    window: Range,
    buf: &mut [u8],
) -> Result<PlanSummary, PlanError> {
    let lay = WindowLayout::for_input(input);
    check_input(input, &lay, buf)?;
    let base = window.start;
    let park = base + lay.park_off;
    let mut b = start_window(input, &lay, base, buf)?;

    block_signals(&mut b)?;
    // The memory: the loader goes, the target's areas come back.
    vmas::park_vdso(&mut b, input, park)?;
    vmas::unmap_loader(&mut b, window)?;
    vmas::build_vmas(&mut b, input)?;
    vmas::fill_pages(&mut b, input, window)?;
    vmas::finish_vmas(&mut b, input)?;
    vmas::late_seals(&mut b, input)?;
    vmas::place_vdso(&mut b, input, park)?;
    // Process-wide state that needs the memory back.
    process::mm_fields(&mut b, input)?;
    process::process_state(&mut b, input)?;
    process::files(&mut b, input)?;
    process::terminals(&mut b, input)?;
    inotify::drain_inotify(&mut b, input)?;
    epoll::epoll_items(&mut b, input)?;
    process::limits(&mut b, input)?;
    // Step 8: the leader's own thread state, then the other threads'.
    b.thread_state(&input.threads[0], Who(None))?;
    let exit = Exit::for_input(input);
    let others = thread_ops::other_threads(&mut b, input, window, &lay)?;
    process::pending_signals(&mut b, input)?;
    barrier::barrier(&mut b, input)?;
    posix_timers::create(&mut b, input, &others)?;
    process::timers(&mut b, input)?;
    timerfds::arm_timerfds(&mut b, input)?;
    posix_timers::arm(&mut b, input)?;
    thread_ops::leader_credentials(&mut b, input)?;
    thread_ops::release_others(&mut b, input, &others)?;
    thread_ops::leader_leaves(&mut b, input, window, exit)?;
    let n_leader = b.n;
    thread_ops::other_thread_lists(&mut b, input, window, &others, exit, base + lay.ops_off)?;

    let n_ops = b.n;
    let (label, label_len) = b.label(n_ops, format_args!("end of plan"))?;
    let header = WindowHeader {
        ops: base + lay.ops_off,
        op_count: n_leader as u64,
        stack_top: base + lay.stack_top_off,
        label,
        label_len,
        base,
        all_ops: n_ops as u64,
        err_fd: input.err_fd.map_or(2, abi::int_arg),
    };
    buf[..core::mem::size_of::<WindowHeader>()].copy_from_slice(header.as_bytes());
    Ok(PlanSummary {
        ops: n_ops,
        window,
        window_left: exit.leave_by_gadgets.is_none(),
        entry: base + lay.code_off,
        clones: others.clones,
        nclones: others.count,
    })
}

#[cfg(test)]
mod tests;
