//! Stage 2: turn a checked image into a [`RestorePlan`] — pure code over
//! plain data, no system calls, so it runs and is tested on the host.
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

use core::fmt::{self, Write as _};

use image_format::elf::UserRegs;
use image_format::records::{
    prot, vma_flags, vma_kind, CredsRecord, GadgetsRecord, ItimerRecord, MmRecord,
    PendingSignalRecord, RlimitRecord, SigactionRecord, ThreadRecord,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::arch::layout;
use crate::frame::{self, FramePlace};
use crate::mm_state;
use crate::sys::{self, nr};

pub const PAGE: u64 = 4096;
/// Top of the 47-bit user address space (`TASK_SIZE`): the plan unmaps
/// everything of the loader up to here.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Free pages kept between the window and its neighbours, so it never merges
/// with them and never sits in a stack's guard gap.
pub const WINDOW_GAP: u64 = PAGE;
/// Growsdown stacks keep this much free below them (`stack_guard_gap`).
pub const STACK_GUARD_GAP: u64 = 256 * PAGE;
/// The trampoline's own stack.
pub const WINDOW_STACK: u64 = 4 * PAGE;
/// Each other thread's stack in the window: it runs only the trampoline,
/// with every signal blocked, so it needs a few words.
pub const THREAD_STACK: u64 = PAGE;
/// `clone3` flags of a restored thread.
pub const CLONE_THREAD_FLAGS: u64 = 0x100 /* VM */
    | 0x200 /* FS */
    | 0x400 /* FILES */
    | 0x800 /* SIGHAND */
    | 0x1_0000 /* THREAD */
    | 0x4_0000 /* SYSVSEM */
    | 0x10_0000 /* PARENT_SETTID */;
/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
pub const CLONE_ARGS_SIZE: u64 = 88;
/// Offset of `set_tid` in `struct clone_args` (`set_tid_size` follows).
pub const CLONE_ARGS_SET_TID: usize = 64;
/// `FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG`.
const FUTEX_WAKE_OP_PRIVATE: u64 = 5 | 128;
/// `FUTEX_OP(FUTEX_OP_ADD, -1, FUTEX_OP_CMP_EQ, 0)`: decrement.
pub const FUTEX_OP_DECREMENT: u64 = (1 << 28) | (0xfff << 12);
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
const FIRST_USE_AREA: usize = 576;

/// Bytes reserved per op for its failure message.
const LABEL_BYTES: usize = 112;

const fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// `Op::kind`: what the trampoline does.
pub mod op_kind {
    /// `syscall(nr, args[0..6])`, then check the result rule.
    pub const SYSCALL: u32 = 0;
    /// `pread64(args[0], args[1], args[2], args[3])` until all bytes are in.
    pub const PREAD_ALL: u32 = 1;
    /// Copy `args[2]` bytes from `args[1]` to `args[0]`.
    pub const MEMCPY: u32 = 2;
    /// `rt_sigreturn` with `%rsp = args[0]` (the ucontext).
    pub const SIGRETURN: u32 = 3;
    /// Leave through the target's gadgets: `%rsp = args[0]`, `munmap(args[2],
    /// args[3])` via the `syscall; ret` at `args[1]`, whose `ret` pops the
    /// `rt_sigreturn` gadget from `args[0]`.
    pub const GADGET_EXIT: u32 = 4;
    // 5 was `clone3` from the plan: the threads are now created before
    // the point of no return (`crate::threads`).
    /// Wait (futex) until the u32 at `args[0]` equals `args[1]`.
    pub const WAIT_EQ: u32 = 6;
    /// Store `args[1]` into the u32 at `args[0]` and wake all its waiters.
    pub const STORE_WAKE: u32 = 7;
    /// Leave like [`GADGET_EXIT`], but the gadget's syscall is
    /// `futex(args[2], FUTEX_WAKE_OP, 1, 0, args[2], args[3])`: it
    /// decrements the count of threads still in the window and wakes the
    /// leader, from outside the window.
    pub const GADGET_WAKE_EXIT: u32 = 8;
    /// `xrstor64 (args[0])` with RFBM `args[1]`: the thread's first use of
    /// the dynamic (XFD) features, see [`super::XFEATURE_MASK_USER_DYNAMIC`].
    pub const XRSTOR_FIRST_USE: u32 = 9;
}

/// `Op::rule`: how the trampoline judges a syscall's result.
pub mod rule {
    /// Not an error.
    pub const OK: u32 = 0;
    /// Equal to `expect`.
    pub const EQ: u32 = 1;
    /// Anything.
    pub const ANY: u32 = 2;
    /// Not an error, or exactly errno `expect`.
    pub const OK_OR_ERRNO: u32 = 3;
    /// Flag: on success, skip the next op (its fallback).
    pub const SKIP_NEXT_IF_OK: u32 = 0x100;
    /// Flag: `args[1]` is the address of a u32 to pass in its place (a
    /// thread id that clone3 wrote there).
    pub const LOAD_ARG1: u32 = 0x200;
}

/// One operation of the plan, as the trampoline reads it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Op {
    pub kind: u32,
    pub rule: u32,
    pub nr: u64,
    pub args: [u64; 6],
    pub expect: u64,
    /// Address and length of the failure message prefix in the window.
    pub label: u64,
    pub label_len: u64,
}
const _: () = assert!(core::mem::size_of::<Op>() == layout::OP_SIZE);
const _: () = assert!(core::mem::offset_of!(Op, rule) == layout::OP_RULE);
const _: () = assert!(core::mem::offset_of!(Op, kind) == layout::OP_KIND);
const _: () = assert!(core::mem::offset_of!(Op, nr) == layout::OP_NR);
const _: () = assert!(core::mem::offset_of!(Op, args) == layout::OP_ARGS);
const _: () = assert!(core::mem::offset_of!(Op, expect) == layout::OP_EXPECT);
const _: () = assert!(core::mem::offset_of!(Op, label) == layout::OP_LABEL);
const _: () = assert!(core::mem::offset_of!(Op, label_len) == layout::OP_LABEL_LEN);

/// The first bytes of the window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WindowHeader {
    pub ops: u64,
    pub op_count: u64,
    pub stack_top: u64,
    /// Message used if the ops run out without a jump.
    pub label: u64,
    pub label_len: u64,
    /// The window's own address (not read by the trampoline; lets a reader
    /// of the bytes turn addresses back into offsets).
    pub base: u64,
    /// Ops of every thread: the leader's `op_count`, then each other
    /// thread's list (not read by the trampoline; for readers of the plan).
    pub all_ops: u64,
    /// Where failure messages go: the caller's stderr, duplicated apart
    /// from the task's fds (its fd 2 may be the task's log file by then).
    pub err_fd: u64,
}
const _: () = assert!(core::mem::offset_of!(WindowHeader, ops) == layout::HDR_OPS);
const _: () = assert!(core::mem::offset_of!(WindowHeader, op_count) == layout::HDR_COUNT);
const _: () = assert!(core::mem::offset_of!(WindowHeader, stack_top) == layout::HDR_STACK);
const _: () = assert!(core::mem::offset_of!(WindowHeader, label) == layout::HDR_LABEL);
const _: () = assert!(core::mem::offset_of!(WindowHeader, label_len) == layout::HDR_LABEL_LEN);
const _: () = assert!(core::mem::offset_of!(WindowHeader, err_fd) == layout::HDR_ERR_FD);
const HEADER_BYTES: u64 = 64;
const _: () = assert!(core::mem::size_of::<WindowHeader>() as u64 <= HEADER_BYTES);

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
    fn is_shared_file(&self) -> bool {
        self.fd >= 0 && self.flags & vma_flags::SHARED != 0
    }
}

/// Stored pages: `len` bytes at image offset `offset` belong at `vaddr`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PageLoad {
    pub vaddr: u64,
    pub offset: u64,
    pub len: u64,
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
    /// The caller's stderr, duplicated above every fd of the task, for
    /// failure messages; kept through the fd step and closed once no
    /// thread can fail any more. `None`: messages go to fd 2.
    pub err_fd: Option<i32>,
    /// Leader first; the others are cloned by the plan.
    pub threads: &'a [ThreadInput<'a>],
    /// Clone the other threads with their recorded tids (`set_tid`, needs
    /// privilege); otherwise they get new ones.
    pub set_tids: bool,
    /// Restore mask for XRSTOR (this CPU's XCR0).
    pub xfeatures: u64,
    pub pid: i32,
    pub pending: &'a [PendingSignalRecord],
    pub itimers: &'a [ItimerRecord],
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
        }
    }
}

/// Offsets of the window's parts, from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLayout {
    pub size: u64,
    pub code_off: u64,
    pub ops_off: u64,
    pub ops_cap: usize,
    pub data_off: u64,
    pub data_len: u64,
    pub stack_top_off: u64,
    /// The other threads' stacks, [`THREAD_STACK`] each, in thread order.
    pub thread_stacks_off: u64,
    pub park_off: u64,
}

impl WindowLayout {
    pub fn for_input(input: &PlanInput<'_>) -> WindowLayout {
        let others = input.threads.len().saturating_sub(1);
        let ops_cap = 64
            + others * 20
            + input.vmas.len() * 16
            + input.loads.len()
            + input.sigactions.len()
            + input.rlimits.len()
            + input.fd_moves.len() * 2
            + input.keep_fds.len()
            + input.pending.len()
            + input.itimers.len();
        let code_off = HEADER_BYTES;
        let ops_off = (code_off + input.trampoline.len() as u64 + 63) & !63;
        let data_off = ops_off + (ops_cap * layout::OP_SIZE) as u64;
        let data_len = (ops_cap * LABEL_BYTES) as u64
            + input
                .threads
                .iter()
                .map(|t| 2 * (frame::FRAME_SIZE + t.xsave.len() as u64 + 256) + 640)
                .sum::<u64>()
            + others as u64 * (512 + 32 + 4 * image_format::records::MAX_GROUPS as u64)
            + input.auxv.len() as u64
            + 32 * input.sigactions.len() as u64
            + 16 * input.rlimits.len() as u64
            + 32 * input.itimers.len() as u64
            + 128 * input.pending.len() as u64
            + 4 * image_format::records::MAX_GROUPS as u64
            + 1024;
        let stack_top_off = page_up(data_off + data_len) + WINDOW_STACK;
        let thread_stacks_off = stack_top_off;
        let park_off = thread_stacks_off + others as u64 * THREAD_STACK;
        let park_len = input.loader_vdso.span().map_or(0, |s| s.len());
        WindowLayout {
            size: park_off + park_len,
            code_off,
            ops_off,
            ops_cap,
            data_off,
            data_len,
            stack_top_off,
            thread_stacks_off,
            park_off,
        }
    }
}

/// Lowest address `>= lo` where `size` bytes fit with [`WINDOW_GAP`] free on
/// both sides, below `hi`, given `occupied` (sorted in place by start).
pub fn find_free(occupied: &mut [Range], size: u64, lo: u64, hi: u64) -> Option<u64> {
    occupied.sort_unstable();
    let mut cursor = page_up(lo.max(WINDOW_GAP));
    for r in occupied.iter() {
        if r.end.saturating_add(WINDOW_GAP) <= cursor {
            continue;
        }
        if r.start >= cursor.checked_add(size)?.checked_add(WINDOW_GAP)? {
            return Some(cursor);
        }
        cursor = cursor.max(page_up(r.end).checked_add(WINDOW_GAP)?);
    }
    (cursor.checked_add(size)? <= hi).then_some(cursor)
}

/// Fill `scratch` with everything the window must avoid; returns the count.
/// `scratch` needs `vmas + loader_maps + 4` entries.
pub fn occupied_ranges(input: &PlanInput<'_>, scratch: &mut [Range]) -> usize {
    let mut n = 0;
    let mut add = |r: Range| {
        if n < scratch.len() {
            scratch[n] = r;
            n += 1;
        }
    };
    for v in input.vmas {
        let mut r = v.range();
        if v.flags & vma_flags::GROWSDOWN != 0 || v.kind == vma_kind::STACK {
            r.start = r.start.saturating_sub(STACK_GUARD_GAP);
        }
        add(r);
    }
    for r in input.loader_maps {
        add(*r);
    }
    if let Some(mut r) = input.loader_stack {
        r.start = r.start.saturating_sub(STACK_GUARD_GAP);
        add(r);
    }
    for r in input.loader_vdso.parts() {
        add(*r);
    }
    n
}

/// Choose the window: free in both layouts.
pub fn choose_window(input: &PlanInput<'_>, scratch: &mut [Range]) -> Result<Range, PlanError> {
    let size = WindowLayout::for_input(input).size;
    let n = occupied_ranges(input, scratch);
    let lo = input.mmap_min_addr.max(0x10000);
    let start =
        find_free(&mut scratch[..n], size, lo, TASK_SIZE).ok_or(PlanError::NoWindow { size })?;
    Ok(Range {
        start,
        end: start + size,
    })
}

/// What the plan does at the end, for the stage-1 warnings and `crimg plan`.
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

struct Builder<'w> {
    ops: &'w mut [Op],
    n: usize,
    data: &'w mut [u8],
    data_addr: u64,
    used: usize,
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Builder<'_> {
    fn alloc(&mut self, len: usize, align: usize) -> Result<(u64, &mut [u8]), PlanError> {
        let addr = self.data_addr + self.used as u64;
        let pad = ((addr as usize).wrapping_neg()) & (align - 1);
        let start = self.used + pad;
        let end = start
            .checked_add(len)
            .ok_or(PlanError::PlanFull { ops: self.n })?;
        if end > self.data.len() {
            return Err(PlanError::PlanFull { ops: self.n });
        }
        self.used = end;
        Ok((self.data_addr + start as u64, &mut self.data[start..end]))
    }

    fn put(&mut self, bytes: &[u8], align: usize) -> Result<u64, PlanError> {
        let (addr, buf) = self.alloc(bytes.len(), align)?;
        buf.copy_from_slice(bytes);
        Ok(addr)
    }

    fn label(&mut self, index: usize, what: fmt::Arguments<'_>) -> Result<(u64, u64), PlanError> {
        let (addr, buf) = self.alloc(LABEL_BYTES, 1)?;
        let mut c = Cursor { buf, len: 0 };
        let _ = write!(c, "crimg-loader: restore failed at op {index} ({what}): ");
        let len = c.len;
        // Give back the unused tail of the label.
        self.used -= LABEL_BYTES - len;
        Ok((addr, len as u64))
    }

    fn op(
        &mut self,
        kind: u32,
        rule: u32,
        nr: u64,
        args: [u64; 6],
        expect: u64,
        what: fmt::Arguments<'_>,
    ) -> Result<(), PlanError> {
        if self.n >= self.ops.len() {
            return Err(PlanError::PlanFull { ops: self.n });
        }
        let (label, label_len) = self.label(self.n, what)?;
        self.ops[self.n] = Op {
            kind,
            rule,
            nr,
            args,
            expect,
            label,
            label_len,
        };
        self.n += 1;
        Ok(())
    }

    fn sys(
        &mut self,
        rule: u32,
        nr: u64,
        args: [u64; 6],
        what: fmt::Arguments<'_>,
    ) -> Result<(), PlanError> {
        self.op(op_kind::SYSCALL, rule, nr, args, 0, what)
    }
}

/// `PR_SET_MM`, `PR_SET_MM_MAP`, `PR_SET_NAME`.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_NAME: u64 = 15;
/// `PR_SET_NO_NEW_PRIVS`.
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const EPERM: u64 = 1;

/// `struct prctl_mm_map`.
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() == 104);

fn madvise_for(flags: u32) -> impl Iterator<Item = (u64, &'static str)> {
    const TABLE: [(u32, u64, &str); 7] = [
        (vma_flags::DONTDUMP, 16, "MADV_DONTDUMP"),
        (vma_flags::DONTFORK, 10, "MADV_DONTFORK"),
        (vma_flags::HUGEPAGE, 14, "MADV_HUGEPAGE"),
        (vma_flags::NOHUGEPAGE, 15, "MADV_NOHUGEPAGE"),
        (vma_flags::WIPEONFORK, 18, "MADV_WIPEONFORK"),
        (vma_flags::RANDOM, 1, "MADV_RANDOM"),
        (vma_flags::SEQUENTIAL, 2, "MADV_SEQUENTIAL"),
    ];
    TABLE
        .into_iter()
        .filter(move |(bit, _, _)| flags & bit != 0)
        .map(|(_, advice, name)| (advice, name))
}

/// Check the loads against the VMAs: each lies in restorable, non-shared-file
/// VMAs that cover it without holes. Returns for each VMA whether it gets pages.
fn check_loads(input: &PlanInput<'_>) -> Result<(), PlanError> {
    let mut prev_end = 0;
    for v in input.vmas {
        if v.start % PAGE != 0 || v.end % PAGE != 0 || v.end <= v.start || v.start < prev_end {
            return Err(PlanError::BadVma { start: v.start });
        }
        prev_end = v.end;
    }
    for l in input.loads {
        let mut at = l.vaddr;
        let end = l.vaddr + l.len;
        while at < end {
            let i = input.vmas.partition_point(|v| v.end <= at);
            let v = input
                .vmas
                .get(i)
                .filter(|v| v.start <= at && !v.is_special());
            let v = v.ok_or(PlanError::LoadOutsideVmas { vaddr: at })?;
            if v.is_shared_file() {
                return Err(PlanError::LoadInSharedFile { vaddr: at });
            }
            at = v.end;
        }
    }
    Ok(())
}

/// A read-only shared file mapping (`MAP_SHARED` of a read-only fd: the
/// kernel keeps `VM_MAYSHARE` but not `VM_SHARED`) is mapped shared again,
/// so the task keeps seeing the file's changes; its fd is read-only like the
/// task's was. Not when stored pages must be written into it (they would
/// need write access the fd does not give): then it stays private, with a
/// stage-1 warning.
pub fn maps_read_only_shared(v: &TargetVma, gets_pages: bool) -> bool {
    v.fd >= 0
        && v.flags & vma_flags::MAYSHARE != 0
        && v.flags & vma_flags::SHARED == 0
        && v.prot & prot::WRITE == 0
        && !gets_pages
}

fn vma_gets_pages(input: &PlanInput<'_>, v: &TargetVma) -> bool {
    input.loads.iter().any(|l| {
        (Range {
            start: l.vaddr,
            end: l.vaddr + l.len,
        })
        .overlaps(&v.range())
    })
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
    if (buf.len() as u64) < lay.size {
        return Err(PlanError::WindowTooSmall {
            need: lay.size,
            have: buf.len() as u64,
        });
    }
    check_loads(input)?;
    if !input.target_vdso.parts().is_empty() && !input.loader_vdso.same_shape(&input.target_vdso) {
        return Err(PlanError::VdsoMismatch);
    }
    if input.threads.is_empty() {
        return Err(PlanError::NoThread);
    }
    if let Some(t) = input
        .threads
        .iter()
        .find(|t| t.xsave.len() < frame::XSAVE_MIN)
    {
        return Err(PlanError::XsaveTooSmall { len: t.xsave.len() });
    }
    let base = window.start;
    buf[lay.code_off as usize..lay.code_off as usize + input.trampoline.len()]
        .copy_from_slice(input.trampoline);
    let (head, rest) = buf.split_at_mut(lay.data_off as usize);
    let ops_bytes = &mut head[lay.ops_off as usize..];
    let ops = <[Op]>::mut_from_bytes(&mut ops_bytes[..lay.ops_cap * layout::OP_SIZE])
        .map_err(|_| PlanError::PlanFull { ops: 0 })?;
    let data = &mut rest[..lay.data_len as usize];
    let mut b = Builder {
        ops,
        n: 0,
        data,
        data_addr: base + lay.data_off,
        used: 0,
    };

    // 0. Nothing may interrupt the plan: block every signal (the frame's
    //    uc_sigmask puts the task's own mask back). The loader's `_start`
    //    blocked them already; the plan does not rely on its runner.
    let all = b.put(&u64::MAX.to_le_bytes(), 8)?;
    b.sys(
        rule::OK,
        nr::RT_SIGPROCMASK,
        [2, all, 0, 8, 0, 0],
        format_args!("rt_sigprocmask block all"),
    )?;

    // 1. Park this kernel's vDSO block in the window, keeping its spacing.
    let park = base + lay.park_off;
    if let Some(span) = input.loader_vdso.span() {
        for p in input.loader_vdso.parts() {
            let to = park + (p.start - span.start);
            b.sys(
                rule::EQ,
                nr::MREMAP,
                [
                    p.start,
                    p.len(),
                    p.len(),
                    sys::MREMAP_MAYMOVE | sys::MREMAP_FIXED,
                    to,
                    0,
                ],
                format_args!("mremap vdso part {:#x} to {to:#x}", p.start),
            )?;
            b.ops[b.n - 1].expect = to;
        }
    }

    // 2. Unmap everything of the loader below and above the window.
    b.sys(
        rule::OK,
        nr::MUNMAP,
        [0, base, 0, 0, 0, 0],
        format_args!("munmap below window"),
    )?;
    b.sys(
        rule::OK,
        nr::MUNMAP,
        [window.end, TASK_SIZE - window.end, 0, 0, 0, 0],
        format_args!("munmap above window"),
    )?;

    // 3. Build every target VMA at its address; stored pages need write
    //    access until they are in.
    for (i, v) in input
        .vmas
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_special())
    {
        let fill = vma_gets_pages(input, v);
        let apart = mm_state::kept_apart(input.vmas, i);
        let writable_first = fill || mm_state::write_first(v) || apart.is_some();
        let mut p = u64::from(v.prot) | if writable_first { sys::PROT_WRITE } else { 0 };
        if apart == Some(true) {
            p ^= sys::PROT_READ;
        }
        let shared = v.flags & vma_flags::SHARED != 0 || maps_read_only_shared(v, fill);
        let (flags, fd, off) = if v.fd >= 0 {
            (
                if shared {
                    sys::MAP_SHARED
                } else {
                    sys::MAP_PRIVATE
                } | sys::MAP_FIXED,
                v.fd as u64,
                v.pgoff,
            )
        } else {
            let mut f = sys::MAP_ANONYMOUS | sys::MAP_FIXED;
            f |= if shared || v.kind == vma_kind::SHARED_ANON {
                sys::MAP_SHARED
            } else {
                sys::MAP_PRIVATE
            };
            if v.flags & vma_flags::GROWSDOWN != 0 {
                f |= sys::MAP_GROWSDOWN;
            }
            (f, u64::MAX, 0)
        };
        let flags = mm_state::mmap_flags(v, flags);
        b.sys(
            rule::EQ,
            nr::MMAP,
            [v.start, v.end - v.start, p, flags, fd, off],
            format_args!("mmap {:#x}-{:#x}", v.start, v.end),
        )?;
        b.ops[b.n - 1].expect = v.start;
        if apart == Some(true) {
            b.sys(
                rule::OK,
                nr::MADVISE,
                [v.start, v.end - v.start, mm_state::apart_advice(v), 0, 0, 0],
                format_args!("madvise {:#x} apart", v.start),
            )?;
        }
    }
    for l in input.loads {
        b.op(
            op_kind::PREAD_ALL,
            rule::OK,
            nr::PREAD64,
            [input.image_fd as u64, l.vaddr, l.len, l.offset, 0, 0],
            0,
            format_args!("pread pages {:#x}+{:#x}", l.vaddr, l.len),
        )?;
    }
    for (i, v) in input
        .vmas
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_special())
    {
        let fill = vma_gets_pages(input, v);
        let apart = mm_state::kept_apart(input.vmas, i);
        let populate = match apart {
            Some(_) if !fill => Some([v.start, PAGE, mm_state::MADV_POPULATE_WRITE, 0, 0, 0]),
            Some(_) => None,
            None => mm_state::charge_op(v, fill),
        };
        if let Some(args) = populate {
            b.sys(
                rule::OK,
                nr::MADVISE,
                args,
                format_args!("madvise {:#x} MADV_POPULATE_WRITE", v.start),
            )?;
        }
        let writable_first = fill || mm_state::write_first(v);
        if apart.is_some() || (writable_first && v.prot & prot::WRITE == 0) {
            b.sys(
                rule::OK,
                nr::MPROTECT,
                [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
                format_args!("mprotect {:#x}", v.start),
            )?;
        }
        if apart == Some(true) {
            // The advice below puts the area's own read-ahead flags back.
            b.sys(
                rule::OK,
                nr::MADVISE,
                [v.start, v.end - v.start, mm_state::MADV_NORMAL, 0, 0, 0],
                format_args!("madvise {:#x} MADV_NORMAL", v.start),
            )?;
        }
        for (advice, name) in madvise_for(v.flags) {
            // Advice is a hint; a kernel without THP refuses MADV_HUGEPAGE.
            b.sys(
                rule::ANY,
                nr::MADVISE,
                [v.start, v.end - v.start, advice, 0, 0, 0],
                format_args!("madvise {:#x} {name}", v.start),
            )?;
        }
        for (nr, args, name) in mm_state::after_fill_ops(v) {
            b.sys(
                rule::OK,
                nr,
                args,
                format_args!("{name} {:#x}-{:#x}", v.start, v.end),
            )?;
        }
    }

    // 4. The vDSO block onto the target's old addresses (or away).
    if let Some(span) = input.loader_vdso.span() {
        let target = input.target_vdso.parts();
        for (i, p) in input.loader_vdso.parts().iter().enumerate() {
            let from = park + (p.start - span.start);
            if let Some(t) = target.get(i) {
                b.sys(
                    rule::EQ,
                    nr::MREMAP,
                    [
                        from,
                        p.len(),
                        p.len(),
                        sys::MREMAP_MAYMOVE | sys::MREMAP_FIXED,
                        t.start,
                        0,
                    ],
                    format_args!("mremap vdso part to {:#x}", t.start),
                )?;
                b.ops[b.n - 1].expect = t.start;
            } else {
                b.sys(
                    rule::OK,
                    nr::MUNMAP,
                    [from, p.len(), 0, 0, 0, 0],
                    format_args!("munmap unused vdso part"),
                )?;
            }
        }
    }

    // 5. mm fields. With the exe fd first (privileged); on EPERM again without.
    let auxv = if input.auxv.is_empty() {
        0
    } else {
        b.put(input.auxv, 8)?
    };
    let m = input.mm;
    let mut map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv,
        auxv_size: input.auxv.len() as u32,
        exe_fd: u32::MAX,
    };
    if let Some(fd) = input.exe_fd {
        let mut with_exe = map;
        with_exe.exe_fd = fd as u32;
        let a = b.put(with_exe.as_bytes(), 8)?;
        b.op(
            op_kind::SYSCALL,
            rule::OK_OR_ERRNO | rule::SKIP_NEXT_IF_OK,
            nr::PRCTL,
            [PR_SET_MM, PR_SET_MM_MAP, a, 104, 0, 0],
            EPERM,
            format_args!("prctl PR_SET_MM_MAP with exe"),
        )?;
    }
    map.exe_fd = u32::MAX;
    let a = b.put(map.as_bytes(), 8)?;
    b.sys(
        rule::OK,
        nr::PRCTL,
        [PR_SET_MM, PR_SET_MM_MAP, a, 104, 0, 0],
        format_args!("prctl PR_SET_MM_MAP"),
    )?;

    // 6. Process-wide state.
    for s in input
        .sigactions
        .iter()
        .filter(|s| (1..=64).contains(&s.signo) && s.signo != 9 && s.signo != 19)
    {
        let act = [s.handler, s.flags, s.restorer, s.mask];
        let a = b.put(act.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::RT_SIGACTION,
            [u64::from(s.signo), a, 0, 8, 0, 0],
            format_args!("rt_sigaction {}", s.signo),
        )?;
    }
    b.sys(
        rule::ANY,
        nr::PERSONALITY,
        [u64::from(input.personality), 0, 0, 0, 0, 0],
        format_args!("personality"),
    )?;
    b.sys(
        rule::ANY,
        nr::UMASK,
        [u64::from(input.umask), 0, 0, 0, 0, 0],
        format_args!("umask"),
    )?;
    if let Some(fd) = input.cwd_fd {
        b.sys(
            rule::OK,
            nr::FCHDIR,
            [fd as u64, 0, 0, 0, 0, 0],
            format_args!("fchdir cwd"),
        )?;
    }

    // 7. Files: every opened fd into place, then close everything else
    //    (the image, the mapped files, anything the caller leaked).
    for m in input.fd_moves {
        b.op(
            op_kind::SYSCALL,
            rule::EQ,
            nr::DUP3,
            [
                m.from as u64,
                m.to as u64,
                if m.cloexec != 0 {
                    u64::from(sys::O_CLOEXEC)
                } else {
                    0
                },
                0,
                0,
                0,
            ],
            m.to as u64,
            format_args!("dup3 {} to {}", m.from, m.to),
        )?;
    }
    let mut next = 0u64;
    loop {
        // The smallest kept fd at or above `next`.
        let kept = input
            .fd_moves
            .iter()
            .map(|m| m.to)
            .chain(input.keep_fds.iter().copied())
            .chain(input.err_fd)
            .filter(|&fd| fd >= 0 && fd as u64 >= next)
            .map(|fd| fd as u64)
            .min();
        match kept {
            Some(k) => {
                if k > next {
                    b.sys(
                        rule::OK,
                        nr::CLOSE_RANGE,
                        [next, k - 1, 0, 0, 0, 0],
                        format_args!("close_range {next}-{}", k - 1),
                    )?;
                }
                next = k + 1;
            }
            None => {
                b.sys(
                    rule::OK,
                    nr::CLOSE_RANGE,
                    [next, u64::from(u32::MAX), 0, 0, 0, 0],
                    format_args!("close_range {next}-"),
                )?;
                break;
            }
        }
    }
    for r in input.rlimits {
        let a = b.put([r.cur, r.max].as_bytes(), 8)?;
        b.op(
            op_kind::SYSCALL,
            rule::OK_OR_ERRNO,
            nr::PRLIMIT64,
            [0, u64::from(r.resource), a, 0, 0, 0],
            EPERM,
            format_args!("prlimit64 {}", r.resource),
        )?;
    }
    // Memory-deny-write-execute, once no area will be made executable.
    if input.mdwe != 0 {
        b.sys(
            rule::OK,
            nr::PRCTL,
            [mm_state::PR_SET_MDWE, input.mdwe, 0, 0, 0, 0],
            format_args!("prctl PR_SET_MDWE"),
        )?;
    }

    // 8. The leader's own thread state.
    let threads = input.threads;
    let leader = &threads[0];
    b.thread_state(leader, Who(None))?;

    // How the threads leave. Through the gadgets only when every frame can
    // go on its thread's own stack: then nothing needs the window after
    // the leader's munmap. The other threads leave first, each with a
    // FUTEX_WAKE_OP made from the `syscall; ret` gadget that counts it out:
    // when the count reaches zero every one of them is past its last
    // instruction in the window (see `op_kind::GADGET_WAKE_EXIT`).
    let gadgets = input
        .gadgets
        .filter(|g| g.syscall_ret != 0 && g.rt_sigreturn != 0);
    let all_on_stack = threads
        .iter()
        .all(|t| frame_on_stack(input, t.regs.rsp, t.xsave.len()).is_some());
    let leave_by_gadgets = gadgets.filter(|_| all_on_stack);
    let others = threads.len() - 1;

    // 8b. The other threads, created before the point of no return and
    //     parked on `built` in the window (`crate::threads`), set their own
    //     state now that the memory is back, then wait for `go`. `tids[k]`
    //     receives the tid each got (CLONE_PARENT_SETTID: the recorded one
    //     or, if that was taken, a new one) for the signals the thread
    //     queues to itself.
    let (go, left, built, tids) = if others > 0 {
        let (sync, words) = b.alloc(12, 64)?;
        words[4..8].copy_from_slice(&(others as u32).to_le_bytes());
        let (tids, _) = b.alloc(4 * others, 8)?;
        (sync, sync + 4, sync + 8, tids)
    } else {
        (0, 0, 0, 0)
    };
    let (clones, _) = b.alloc(core::mem::size_of::<ThreadClone>() * others, 8)?;
    for (k, t) in threads[1..].iter().enumerate() {
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
        // Its op list is filled in once it is built (below).
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

    // 9. Pending signals (all blocked until the frame's mask applies).
    //    The process-wide ones and the leader's own are queued here; each
    //    other thread queues its own from its op list: rt_tgsigqueueinfo
    //    refuses (EPERM) a kernel or SI_USER/SI_TKILL code unless the
    //    caller's tid is the target tid. Signals sent to the process during
    //    the restore are pending already (blocked since `_start`) and so
    //    queue before these: a real-time one is delivered before a recorded
    //    one of the same number, and a classic one merges with a recorded
    //    one of the same number keeping the later siginfo (after the dump
    //    the recorded one would have won). The kernel cannot queue at the
    //    front, nor say which queue (thread or process) a signal took.
    for p in input.pending {
        let other = threads[1..].iter().any(|t| t.record.tid == p.tid);
        if !other {
            b.queue_signal(input.pid, p, None)?;
        }
    }

    // 10. Timers, armed last.
    for it in input
        .itimers
        .iter()
        .filter(|it| it.value.sec != 0 || it.value.usec != 0)
    {
        let val = [
            it.interval.sec,
            it.interval.usec,
            it.value.sec,
            it.value.usec,
        ];
        let a = b.put(val.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::SETITIMER,
            [u64::from(it.which), a, 0, 0, 0, 0],
            format_args!("setitimer {}", it.which),
        )?;
    }

    // 11. Credentials, last: after them the plan may no longer be allowed
    //     to do the rest. Credentials are per thread: every thread sets its
    //     own (the others after `go`).
    if let Some(c) = input.creds {
        b.creds(&c, Who(None))?;
    }
    if input.no_new_privs {
        b.no_new_privs(Who(None))?;
    }

    // 12. Let the other threads go, and wait until they have left the
    //     window if it is to be unmapped.
    if others > 0 {
        b.op(
            op_kind::STORE_WAKE,
            rule::OK,
            nr::FUTEX,
            [go, 1, 0, 0, 0, 0],
            0,
            format_args!("futex wake the other threads"),
        )?;
        // Also when the window stays: the error fd may close only once
        // no other thread can fail.
        b.op(
            op_kind::WAIT_EQ,
            rule::OK,
            nr::FUTEX,
            [left, 0, 0, 0, 0, 0],
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
            [fd as u64, 0, 0, 0, 0, 0],
            format_args!("close the loader's stderr"),
        )?;
    }

    // 13. The jump.
    let leave = match leave_by_gadgets {
        Some(g) => Leave::Unmap(g),
        None => Leave::Stay(gadgets),
    };
    b.leave(input, leader, window, leave, Who(None))?;
    let n_leader = b.n;

    // The other threads' op lists, after the leader's.
    for (k, t) in threads[1..].iter().enumerate() {
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
        let own = tids + 4 * k as u64;
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
        let leave = match leave_by_gadgets {
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
                Leave::Stay(gadgets)
            }
        };
        b.leave(input, t, window, leave, who)?;
        let list = base + lay.ops_off + (first * layout::OP_SIZE) as u64;
        let count = (b.n - first) as u64;
        let mut c = b.clone_at(clones, k)?;
        c.ops = list;
        c.count = count;
        b.set_clone(clones, k, c)?;
    }

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
        err_fd: input.err_fd.map_or(2, |fd| fd as u64),
    };
    buf[..core::mem::size_of::<WindowHeader>()].copy_from_slice(header.as_bytes());
    Ok(PlanSummary {
        ops: n_ops,
        window,
        window_left: leave_by_gadgets.is_none(),
        entry: base + lay.code_off,
        clones,
        nclones: others,
    })
}

/// Labels name the thread for every op but the leader's.
#[derive(Clone, Copy)]
struct Who(Option<i32>);

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
enum Leave {
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
fn frame_on_stack(input: &PlanInput<'_>, rsp: u64, xsave_len: usize) -> Option<FramePlace> {
    FramePlace::below(rsp, xsave_len).filter(|p| {
        let i = input.vmas.partition_point(|v| v.end <= p.frame);
        input.vmas.get(i).is_some_and(|v| {
            v.start <= p.frame && rsp <= v.end && v.prot & prot::WRITE != 0 && !v.is_special()
        })
    })
}

impl Builder<'_> {
    /// Entry `k` of the [`ThreadClone`] table at `table` (window address).
    fn clone_at(&self, table: u64, k: usize) -> Result<ThreadClone, PlanError> {
        let off = (table - self.data_addr) as usize + k * core::mem::size_of::<ThreadClone>();
        self.data
            .get(off..)
            .and_then(|b| ThreadClone::read_from_prefix(b).ok())
            .map(|(c, _)| c)
            .ok_or(PlanError::PlanFull { ops: self.n })
    }

    fn set_clone(&mut self, table: u64, k: usize, c: ThreadClone) -> Result<(), PlanError> {
        let off = (table - self.data_addr) as usize + k * core::mem::size_of::<ThreadClone>();
        let n = self.n;
        self.data
            .get_mut(off..off + core::mem::size_of::<ThreadClone>())
            .ok_or(PlanError::PlanFull { ops: n })?
            .copy_from_slice(c.as_bytes());
        Ok(())
    }

    /// A thread's own kernel state: fs/gs base, rseq, robust list,
    /// clear_child_tid, name.
    fn thread_state(&mut self, t: &ThreadInput<'_>, who: Who) -> Result<(), PlanError> {
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

    /// Queue one pending signal. `thread` None: the leader queues a
    /// process-wide signal (tid 0) or its own; `Some`: the calling (other)
    /// thread queues one to itself, its tid read from the u32 at the
    /// address (where clone3 wrote it).
    fn queue_signal(
        &mut self,
        pid: i32,
        p: &PendingSignalRecord,
        thread: Option<(u64, Who)>,
    ) -> Result<(), PlanError> {
        let signo = u64::from(u32::from_le_bytes([
            p.siginfo[0],
            p.siginfo[1],
            p.siginfo[2],
            p.siginfo[3],
        ]));
        let info = self.put(&p.siginfo, 8)?;
        let pid = pid as u64;
        match thread {
            None if p.tid == 0 => self.sys(
                rule::OK,
                nr::RT_SIGQUEUEINFO,
                [pid, signo, info, 0, 0, 0],
                format_args!("rt_sigqueueinfo {signo}"),
            ),
            None => self.sys(
                rule::OK,
                nr::RT_TGSIGQUEUEINFO,
                [pid, pid, signo, info, 0, 0],
                format_args!("rt_tgsigqueueinfo {signo}"),
            ),
            Some((addr, who)) => self.sys(
                rule::OK | rule::LOAD_ARG1,
                nr::RT_TGSIGQUEUEINFO,
                [pid, addr, signo, info, 0, 0],
                format_args!("rt_tgsigqueueinfo {signo} to itself{who}"),
            ),
        }
    }

    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)` for the calling thread (a per-thread
    /// flag; it needs no privilege and cannot be undone, so it comes after
    /// the credentials).
    fn no_new_privs(&mut self, who: Who) -> Result<(), PlanError> {
        self.sys(
            rule::OK,
            nr::PRCTL,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
            format_args!("prctl PR_SET_NO_NEW_PRIVS{who}"),
        )
    }

    /// The calling thread's credentials.
    fn creds(&mut self, c: &CredsRecord, who: Who) -> Result<(), PlanError> {
        let n = (c.ngroups as usize).min(c.groups.len());
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
    fn first_use_of_dynamic_features(
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
    fn leave(
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
            let (addr, _) = self.alloc(len as usize, 64)?;
            let place = FramePlace::below(addr + len + frame::RED_ZONE, xsave.len())
                .filter(|p| p.frame >= addr)
                .ok_or(PlanError::NoRoomForFrame { rsp: regs.rsp })?;
            let off = (place.frame - self.data_addr) as usize;
            let blob = &mut self.data[off..off + place.len() as usize];
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
        let (src, blob) = self.alloc(place.len() as usize, 64)?;
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

/// The ops of a built window (for tests and the dry-run printer).
pub fn window_ops(buf: &[u8]) -> &[Op] {
    let Ok((h, _)) = WindowHeader::read_from_prefix(buf) else {
        return &[];
    };
    let off = h.ops.wrapping_sub(h.base) as usize;
    let len = (h.all_ops.max(h.op_count) as usize).saturating_mul(layout::OP_SIZE);
    buf.get(off..off.saturating_add(len))
        .and_then(|b| <[Op]>::ref_from_bytes(b).ok())
        .unwrap_or(&[])
}

/// The "what" part of an op's failure message.
pub fn op_label<'b>(buf: &'b [u8], op: &Op) -> &'b [u8] {
    let Ok((h, _)) = WindowHeader::read_from_prefix(buf) else {
        return b"";
    };
    let off = op.label.wrapping_sub(h.base) as usize;
    let text = buf
        .get(off..off.saturating_add(op.label_len as usize))
        .unwrap_or(b"");
    let start = text.iter().position(|&c| c == b'(').map_or(0, |i| i + 1);
    let end = text
        .windows(3)
        .rposition(|w| w == b"): ")
        .unwrap_or(text.len());
    text.get(start..end.max(start)).unwrap_or(b"")
}

/// Print the plan in `buf` (a built window), one op per line: the dry run.
pub fn write_plan(buf: &[u8], out: &mut impl fmt::Write) -> fmt::Result {
    for (i, op) in window_ops(buf).iter().enumerate() {
        let what = core::str::from_utf8(op_label(buf, op)).unwrap_or("?");
        let kind = match op.kind {
            op_kind::SYSCALL => syscall_name(op.nr),
            op_kind::PREAD_ALL => "pread-all",
            op_kind::MEMCPY => "memcpy",
            op_kind::SIGRETURN => "rt_sigreturn",
            op_kind::GADGET_EXIT => "gadget-exit",
            op_kind::WAIT_EQ => "futex-wait-eq",
            op_kind::STORE_WAKE => "store-wake",
            op_kind::GADGET_WAKE_EXIT => "gadget-wake-exit",
            op_kind::XRSTOR_FIRST_USE => "xrstor-first-use",
            _ => "?",
        };
        let a = op.args;
        writeln!(
            out,
            "{i:5} {kind:<17} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x}  rule {:#x}  # {what}",
            a[0], a[1], a[2], a[3], a[4], a[5], op.rule
        )?;
    }
    Ok(())
}

/// Name of a syscall the plan uses, for the dry-run printer.
pub fn syscall_name(n: u64) -> &'static str {
    match n {
        nr::MMAP => "mmap",
        nr::MUNMAP => "munmap",
        nr::MPROTECT => "mprotect",
        nr::MREMAP => "mremap",
        nr::MADVISE => "madvise",
        nr::PREAD64 => "pread64",
        nr::RT_SIGPROCMASK => "rt_sigprocmask",
        nr::RT_SIGACTION => "rt_sigaction",
        nr::PRCTL => "prctl",
        nr::PERSONALITY => "personality",
        nr::UMASK => "umask",
        nr::FCHDIR => "fchdir",
        nr::DUP3 => "dup3",
        nr::CLOSE_RANGE => "close_range",
        nr::PRLIMIT64 => "prlimit64",
        nr::ARCH_PRCTL => "arch_prctl",
        nr::RSEQ => "rseq",
        nr::SET_ROBUST_LIST => "set_robust_list",
        nr::SET_TID_ADDRESS => "set_tid_address",
        nr::RT_SIGQUEUEINFO => "rt_sigqueueinfo",
        nr::RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
        nr::SETITIMER => "setitimer",
        nr::SETGROUPS => "setgroups",
        nr::SETRESGID => "setresgid",
        nr::SETRESUID => "setresuid",
        nr::RT_SIGRETURN => "rt_sigreturn",
        nr::CLONE3 => "clone3",
        nr::FUTEX => "futex",
        _ => "syscall",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// xorshift64*: deterministic random layouts without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn random_ranges(rng: &mut Rng, n: usize, lo: u64, hi: u64) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for _ in 0..n {
            let start = (lo + rng.below((hi - lo) / PAGE) * PAGE) & !(PAGE - 1);
            let len = (1 + rng.below(64)) * PAGE;
            let r = Range {
                start,
                end: (start + len).min(hi),
            };
            if !r.is_empty() && out.iter().all(|o| !o.overlaps(&r)) {
                out.push(r);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn find_free_is_the_lowest_fit() {
        let mut rng = Rng(0x1234_5678);
        for _ in 0..2000 {
            let (lo, hi) = (0x10000, 0x10000 + 4096 * PAGE);
            let n = rng.below(40) as usize;
            let mut occ = random_ranges(&mut rng, n, 0, hi + 64 * PAGE);
            let size = (1 + rng.below(200)) * PAGE;
            let valid = |a: u64, occ: &[Range]| {
                a >= lo
                    && a.is_multiple_of(PAGE)
                    && a + size <= hi
                    && occ.iter().all(|r| {
                        !r.overlaps(&Range {
                            start: a - WINDOW_GAP,
                            end: a + size + WINDOW_GAP,
                        })
                    })
            };
            let got = find_free(&mut occ, size, lo, hi);
            // The only candidates are `lo` and just past each range's gap.
            let mut cands: Vec<u64> = occ.iter().map(|r| r.end + WINDOW_GAP).collect();
            cands.push(lo);
            let best = cands.into_iter().filter(|&a| valid(a, &occ)).min();
            assert_eq!(got, best, "size {size:#x} occupied {occ:x?}");
        }
    }

    /// A simple model of an address space: page → protection.
    #[derive(Default)]
    struct Model {
        pages: BTreeMap<u64, u64>,
        written: BTreeMap<u64, u32>,
    }

    impl Model {
        fn map(&mut self, start: u64, len: u64, prot: u64) {
            for p in (start..start + len).step_by(PAGE as usize) {
                self.pages.insert(p, prot);
            }
        }
        fn unmap(&mut self, start: u64, len: u64) {
            let end = start.saturating_add(len);
            let gone: Vec<u64> = self.pages.range(start..end).map(|(k, _)| *k).collect();
            for p in gone {
                self.pages.remove(&p);
            }
        }
        fn apply(&mut self, op: &Op) {
            let a = op.args;
            match (op.kind, op.nr) {
                (op_kind::SYSCALL, nr::MMAP) => {
                    assert!(a[3] & sys::MAP_FIXED != 0);
                    self.map(a[0], a[1], a[2]);
                }
                (op_kind::SYSCALL, nr::MUNMAP) => self.unmap(a[0], a[1]),
                (op_kind::SYSCALL, nr::MPROTECT) => {
                    for p in (a[0]..a[0] + a[1]).step_by(PAGE as usize) {
                        assert!(self.pages.contains_key(&p), "mprotect of unmapped {p:#x}");
                        self.pages.insert(p, a[2]);
                    }
                }
                (op_kind::SYSCALL, nr::MREMAP) => {
                    let moved: Vec<(u64, u64)> = self
                        .pages
                        .range(a[0]..a[0] + a[1])
                        .map(|(k, v)| (*k, *v))
                        .collect();
                    assert_eq!(
                        moved.len() as u64,
                        a[1] / PAGE,
                        "mremap of a hole at {:#x}",
                        a[0]
                    );
                    self.unmap(a[0], a[1]);
                    self.unmap(a[4], a[2]);
                    for (k, v) in moved {
                        self.pages.insert(k - a[0] + a[4], v);
                    }
                }
                (op_kind::PREAD_ALL, _) => {
                    for p in (a[1]..a[1] + a[2]).step_by(PAGE as usize) {
                        let prot = self.pages.get(&p).copied();
                        assert!(
                            prot.is_some_and(|x| x & sys::PROT_WRITE != 0),
                            "pread into {p:#x} ({prot:?})"
                        );
                        *self.written.entry(p).or_default() += 1;
                    }
                }
                (op_kind::MEMCPY, _) => {
                    let first = a[0] & !(PAGE - 1);
                    for p in (first..a[0] + a[2]).step_by(PAGE as usize) {
                        assert!(
                            self.pages.get(&p).is_some_and(|x| x & sys::PROT_WRITE != 0),
                            "memcpy to {p:#x}"
                        );
                    }
                }
                _ => {}
            }
        }
    }

    struct Fixture {
        vmas: Vec<TargetVma>,
        loads: Vec<PageLoad>,
        loader_maps: Vec<Range>,
        loader_vdso: VdsoBlock,
        target_vdso: VdsoBlock,
        threads: Vec<ThreadInput<'static>>,
    }

    /// Every thread's (zeroed) XSAVE area in the fixtures.
    static XSAVE: [u8; 832] = [0; 832];

    fn vdso_at(base: u64) -> VdsoBlock {
        let mut b = VdsoBlock::default();
        b.push(Range {
            start: base,
            end: base + 4 * PAGE,
        });
        b.push(Range {
            start: base + 4 * PAGE,
            end: base + 6 * PAGE,
        });
        b.push(Range {
            start: base + 6 * PAGE,
            end: base + 8 * PAGE,
        });
        b
    }

    fn fixture(rng: &mut Rng) -> Fixture {
        let hi = 0x7fff_0000_0000;
        let target_vdso = vdso_at(0x7ffd_0000_0000);
        let mut vmas: Vec<TargetVma> = random_ranges(rng, 30, 0x40_0000, 0x7ffc_0000_0000)
            .into_iter()
            .map(|r| TargetVma {
                start: r.start,
                end: r.end,
                prot: (rng.below(8)) as u32,
                flags: if rng.below(4) == 0 {
                    vma_flags::DONTDUMP
                } else {
                    0
                },
                fd: if rng.below(3) == 0 { 7 } else { -1 },
                kind: vma_kind::ANON,
                pgoff: 0,
            })
            .collect();
        // The stack, with its frame room.
        let stack = TargetVma {
            start: 0x7ffe_0000_0000,
            end: 0x7ffe_0002_0000,
            prot: 3,
            flags: vma_flags::GROWSDOWN,
            kind: vma_kind::STACK,
            fd: -1,
            pgoff: 0,
        };
        vmas.push(stack);
        for (i, p) in target_vdso.parts().iter().enumerate() {
            let kind = [vma_kind::VVAR, vma_kind::VVAR_VCLOCK, vma_kind::VDSO][i];
            vmas.push(TargetVma {
                start: p.start,
                end: p.end,
                prot: 1,
                kind,
                fd: -1,
                ..Default::default()
            });
        }
        vmas.sort_by_key(|v| v.start);
        let mut loads = Vec::new();
        let mut off = 0x10000;
        for v in vmas.iter().filter(|v| !v.is_special()) {
            let pages = (v.end - v.start) / PAGE;
            let mut p = 0;
            while p < pages {
                let skip = rng.below(4);
                let len = 1 + rng.below(4);
                if p + skip + len > pages {
                    break;
                }
                loads.push(PageLoad {
                    vaddr: v.start + (p + skip) * PAGE,
                    offset: off,
                    len: len * PAGE,
                });
                off += len * PAGE;
                p += skip + len;
            }
        }
        let loader_maps = random_ranges(rng, 8, 0x40_0000, hi);
        let loader_vdso = vdso_at(0x7fff_1000_0000);
        let regs = UserRegs {
            rsp: stack.end - 0x100,
            rip: 0x40_1000,
            ..Default::default()
        };
        let mut threads = std::vec![ThreadInput {
            record: ThreadRecord {
                tid: 100,
                ..Default::default()
            },
            regs,
            xsave: &XSAVE,
        }];
        // Other threads, each on its own (glibc-style) stack mapping; now
        // and then one whose rsp leaves no room for a frame on its stack.
        let others = rng.below(4);
        let odd_one = (rng.below(3) == 0).then(|| rng.below(others.max(1)));
        for k in 0..others {
            let start = 0x7ffc_8000_0000 + k * 0x10_0000;
            let v = TargetVma {
                start,
                end: start + 0x8_0000,
                prot: 3,
                kind: vma_kind::ANON,
                fd: -1,
                ..Default::default()
            };
            vmas.push(v);
            let rsp = if odd_one == Some(k) {
                // Right at the bottom: the frame would fall below the VMA.
                v.start + 0x200
            } else {
                v.end - 0x40 - 8 * rng.below(64)
            };
            threads.push(ThreadInput {
                record: ThreadRecord {
                    tid: 101 + k as i32,
                    ..Default::default()
                },
                regs: UserRegs {
                    rsp,
                    rip: 0x40_1100,
                    fs_base: 0x1000 * (k + 1),
                    ..Default::default()
                },
                xsave: &XSAVE,
            });
        }
        vmas.sort_by_key(|v| v.start);
        Fixture {
            vmas,
            loads,
            loader_maps,
            loader_vdso,
            target_vdso,
            threads,
        }
    }

    fn input<'a>(f: &'a Fixture, gadgets: bool) -> PlanInput<'a> {
        PlanInput {
            image_fd: 9,
            vmas: &f.vmas,
            loads: &f.loads,
            loader_maps: &f.loader_maps,
            loader_stack: None,
            loader_vdso: f.loader_vdso,
            target_vdso: f.target_vdso,
            mm: MmRecord::default(),
            auxv: &[6, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            exe_fd: Some(11),
            sigactions: &[],
            rlimits: &[],
            personality: 0,
            umask: 0o22,
            cwd_fd: Some(12),
            fd_moves: &[
                FdMove {
                    from: 13,
                    to: 0,
                    cloexec: 0,
                },
                FdMove {
                    from: 14,
                    to: 5,
                    cloexec: 1,
                },
            ],
            keep_fds: &[1, 2],
            err_fd: Some(20),
            threads: &f.threads,
            set_tids: true,
            xfeatures: 3,
            pid: 100,
            pending: &[],
            itimers: &[],
            creds: None,
            no_new_privs: false,
            gadgets: gadgets.then_some(GadgetsRecord {
                syscall_ret: 0x40_2000,
                rt_sigreturn: 0x40_2010,
            }),
            mmap_min_addr: 0x10000,
            mdwe: 0,
            trampoline: crate::arch::trampoline_code(),
        }
    }

    /// The loader's own stack keeps its guard gap free, like the target's:
    /// a window placed right below it would be refused by the kernel's
    /// stack guard or break the loader's stack growth.
    #[test]
    fn the_window_keeps_clear_of_the_loaders_stack_guard_gap() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..50 {
            let f = fixture(&mut rng);
            let mut inp = input(&f, true);
            let n = f.vmas.len() + f.loader_maps.len() + 4;
            let free = choose_window(&inp, &mut std::vec![Range::default(); n]).unwrap();
            // A stack just above where the window would go.
            let stack = Range {
                start: free.end + 2 * PAGE,
                end: free.end + 2 * PAGE + 32 * PAGE,
            };
            inp.loader_stack = Some(stack);
            let w = choose_window(&inp, &mut std::vec![Range::default(); n]).unwrap();
            let guarded = Range {
                start: stack.start.saturating_sub(STACK_GUARD_GAP),
                end: stack.end,
            };
            assert!(!w.overlaps(&guarded), "window {w:x?} stack {stack:x?}");
            assert_ne!(w, free);
        }
    }

    #[test]
    fn plans_rebuild_the_target_layout_exactly() {
        let mut rng = Rng(0xfeed_beef);
        for round in 0..200 {
            let f = fixture(&mut rng);
            let inp = input(&f, round % 2 == 0);
            let mut scratch = std::vec![Range::default(); f.vmas.len() + f.loader_maps.len() + 4];
            let window = choose_window(&inp, &mut scratch).unwrap();
            for r in f
                .vmas
                .iter()
                .map(|v| v.range())
                .chain(f.loader_maps.iter().copied())
                .chain(f.loader_vdso.parts().iter().copied())
            {
                assert!(!r.overlaps(&window), "window {window:x?} overlaps {r:x?}");
            }
            let mut buf = std::vec![0u8; window.len() as usize];
            let summary = build_plan(&inp, window, &mut buf).unwrap();
            let all_on_stack = f
                .threads
                .iter()
                .all(|t| frame_on_stack(&inp, t.regs.rsp, t.xsave.len()).is_some());
            assert_eq!(summary.window_left, round % 2 != 0 || !all_on_stack);
            check_threads(&f, &inp, window, &buf, &summary);

            // Run the ops on the model.
            let mut m = Model::default();
            for r in &f.loader_maps {
                m.map(r.start, r.len(), 5);
            }
            for r in f.loader_vdso.parts() {
                m.map(r.start, r.len(), 1);
            }
            m.map(window.start, window.len(), 7);
            let ops = window_ops(&buf);
            assert_eq!(ops.len(), summary.ops);
            for op in ops {
                m.apply(op);
            }
            // Every target page mapped with its final protection.
            for v in f.vmas.iter().filter(|v| !v.is_special()) {
                for p in (v.start..v.end).step_by(PAGE as usize) {
                    assert_eq!(
                        m.pages.get(&p),
                        Some(&u64::from(v.prot)),
                        "page {p:#x} of {v:x?}"
                    );
                }
            }
            // The vDSO block sits where the target had it.
            for p in f.target_vdso.parts() {
                assert!(m.pages.contains_key(&p.start));
            }
            // Every stored page written exactly once, nothing else written.
            let mut expected = BTreeMap::new();
            for l in &f.loads {
                for p in (l.vaddr..l.vaddr + l.len).step_by(PAGE as usize) {
                    expected.insert(p, 1u32);
                }
            }
            assert_eq!(m.written, expected);
            // Nothing else is left but the window (the gadgets unmap it).
            for &p in m.pages.keys() {
                let in_target = f.vmas.iter().any(|v| v.start <= p && p < v.end);
                let in_window = window.start <= p && p < window.end;
                assert!(in_target || in_window, "stray page {p:#x}");
            }
            // The last op leaves; failure labels name their op.
            let last = ops.last().unwrap();
            assert!(matches!(
                last.kind,
                op_kind::GADGET_EXIT | op_kind::GADGET_WAKE_EXIT | op_kind::SIGRETURN
            ));
            assert_eq!(op_label(&buf, &ops[0]), b"rt_sigprocmask block all");
        }
    }

    /// The other threads: each cloned once, in order, onto its own stack in
    /// the window; every frame in its own place; the lists end right.
    /// The plan's table of threads to create before the point of no return.
    fn clones_of(buf: &[u8], window: Range, s: &PlanSummary) -> Vec<ThreadClone> {
        (0..s.nclones)
            .map(|k| {
                let off = (s.clones - window.start) as usize + k * 32;
                ThreadClone::read_from_prefix(&buf[off..]).unwrap().0
            })
            .collect()
    }

    fn check_threads(
        f: &Fixture,
        inp: &PlanInput<'_>,
        window: Range,
        buf: &[u8],
        summary: &PlanSummary,
    ) {
        let left = summary.window_left;
        let lay = WindowLayout::for_input(inp);
        let (h, _) = WindowHeader::read_from_prefix(buf).unwrap();
        let ops = window_ops(buf);
        let leader = &ops[..h.op_count as usize];
        let at = |addr: u64| (addr - window.start) as usize;
        let word = |addr: u64| u64::from_le_bytes(buf[at(addr)..at(addr) + 8].try_into().unwrap());
        let clones = clones_of(buf, window, summary);
        assert_eq!(clones.len(), f.threads.len() - 1);
        // No thread is cloned by the plan: they exist before it runs and
        // wait for the leader's word that the memory is back.
        let built = leader
            .iter()
            .filter(|o| o.kind == op_kind::STORE_WAKE)
            .collect::<Vec<_>>();
        if clones.is_empty() {
            assert!(built.is_empty());
        } else {
            assert_eq!(built.len(), 2, "built, then go");
        }
        // Parts of the window no thread stack may touch.
        let mut taken = std::vec![
            Range {
                start: window.start,
                end: window.start + lay.data_off + lay.data_len
            },
            Range {
                start: window.start + lay.stack_top_off - WINDOW_STACK,
                end: window.start + lay.stack_top_off,
            },
            Range {
                start: window.start + lay.park_off,
                end: window.end
            },
        ];
        let mut lists = std::vec![(h.ops, h.op_count)];
        for (k, c) in clones.iter().enumerate() {
            let t = &f.threads[k + 1];
            assert_eq!(c.tid, t.record.tid);
            assert_eq!(word(c.args), CLONE_THREAD_FLAGS);
            let (stack, size) = (word(c.args + 40), word(c.args + 48));
            let r = Range {
                start: stack,
                end: stack + size,
            };
            assert!(
                r.start >= window.start && r.end <= window.end,
                "stack {r:x?} outside {window:x?}"
            );
            assert!(size >= THREAD_STACK && stack % 16 == 0);
            for o in &taken {
                assert!(
                    !o.overlaps(&r),
                    "thread {} stack {r:x?} overlaps {o:x?}",
                    t.record.tid
                );
            }
            taken.push(r);
            // set_tid: the recorded tid, one level.
            let set_tid = word(c.args + 64);
            assert_eq!(word(c.args + 72), 1);
            assert_eq!(
                buf[at(set_tid)..at(set_tid) + 4],
                t.record.tid.to_le_bytes()
            );
            lists.push((c.ops, c.count));
        }
        // Each list lies in the op array, disjoint from the others, and
        // ends in a jump into the thread's frame.
        let mut covered = 0;
        let mut frames: Vec<Range> = Vec::new();
        for (k, &(addr, count)) in lists.iter().enumerate() {
            let first = ((addr - h.ops) / layout::OP_SIZE as u64) as usize;
            assert_eq!(first, covered, "list {k} does not follow the previous one");
            covered += count as usize;
            let list = &ops[first..first + count as usize];
            let last = list.last().unwrap();
            let t = &f.threads[k];
            let expected = match (k, left) {
                (_, true) => op_kind::SIGRETURN,
                (0, false) => op_kind::GADGET_EXIT,
                (_, false) => op_kind::GADGET_WAKE_EXIT,
            };
            assert_eq!(last.kind, expected, "end of list {k}");
            if k > 0 {
                // First of all: wait until the leader has built the memory.
                assert_eq!(list[0].kind, op_kind::WAIT_EQ);
                assert_eq!(list[0].args[..2], built[0].args[..2]);
                assert!(
                    list.iter()
                        .any(|o| o.kind == op_kind::WAIT_EQ && o.args[..2] == built[1].args[..2]),
                    "list {k} never waits for go"
                );
                assert!(
                    list.iter().any(|o| o.nr == nr::PERSONALITY
                        && o.args[0] == u64::from(inp.personality)),
                    "list {k} does not set its personality"
                );
                let fs = list
                    .iter()
                    .find(|o| o.nr == nr::ARCH_PRCTL && o.args[0] == ARCH_SET_FS)
                    .unwrap();
                assert_eq!(fs.args[1], t.regs.fs_base);
            }
            // Its frame: on its own stack below the red zone, or in the
            // window's data.
            let frame = match list.iter().find(|o| o.kind == op_kind::MEMCPY) {
                Some(copy) => {
                    let r = Range {
                        start: copy.args[0],
                        end: copy.args[0] + copy.args[2],
                    };
                    assert!(
                        r.end <= t.regs.rsp - frame::RED_ZONE,
                        "frame {r:x?} in the red zone"
                    );
                    let v = f
                        .vmas
                        .iter()
                        .find(|v| v.start <= r.start && r.start < v.end)
                        .unwrap();
                    assert!(
                        r.end <= v.end && t.regs.rsp <= v.end,
                        "frame {r:x?} leaves {v:x?}"
                    );
                    r
                }
                None => {
                    let uc = last.args[0];
                    let r = Range {
                        start: uc - 8,
                        end: uc - 8 + frame::FRAME_SIZE,
                    };
                    let data = Range {
                        start: window.start + lay.data_off,
                        end: window.start + lay.data_off + lay.data_len,
                    };
                    assert!(
                        data.start <= r.start && r.end <= data.end,
                        "frame {r:x?} outside the data"
                    );
                    r
                }
            };
            for o in &frames {
                assert!(!o.overlaps(&frame), "frames {o:x?} and {frame:x?} overlap");
            }
            frames.push(frame);
        }
        assert_eq!(covered, ops.len());
        if f.threads.len() > 1 {
            // The leader lets them go, and waits for all to count out before
            // it unmaps the window.
            let wake = leader
                .iter()
                .rposition(|o| o.kind == op_kind::STORE_WAKE)
                .unwrap();
            let go = leader[wake].args[0];
            // They wait for `built` (first) and for `go`, nothing else.
            assert!(ops[h.op_count as usize..]
                .iter()
                .filter(|o| o.kind == op_kind::WAIT_EQ)
                .all(|o| o.args[0] == go || o.args[0] == built[0].args[0]));
            // The leader waits for every other thread to count out (the
            // window may go, and the error fd may close), then closes the
            // error fd; only its leave ops follow.
            let wait = &leader[leader.len() - 4];
            assert_eq!(wait.kind, op_kind::WAIT_EQ);
            assert_eq!(wait.args[1], 0);
            let count = &buf[at(wait.args[0])..at(wait.args[0]) + 4];
            assert_eq!(count, (f.threads.len() as u32 - 1).to_le_bytes());
            if !left {
                for o in ops.iter().filter(|o| o.kind == op_kind::GADGET_WAKE_EXIT) {
                    assert_eq!(o.args[2], wait.args[0]);
                    assert_eq!(o.args[3], FUTEX_OP_DECREMENT);
                }
            } else {
                let count_outs = ops
                    .iter()
                    .filter(|o| o.nr == nr::FUTEX && o.kind == op_kind::SYSCALL)
                    .inspect(|o| {
                        assert_eq!(
                            o.args,
                            [
                                wait.args[0],
                                FUTEX_WAKE_OP_PRIVATE,
                                1,
                                0,
                                wait.args[0],
                                FUTEX_OP_DECREMENT
                            ]
                        )
                    })
                    .count();
                assert_eq!(count_outs, f.threads.len() - 1);
            }
        }
        // The loader's stderr (fd 20 here) survives the fd step and is
        // closed by the leader right before it leaves.
        let close = &leader[leader.len() - 3];
        assert_eq!((close.nr, close.args[0]), (nr::CLOSE, 20));
        for o in ops.iter().filter(|o| o.nr == nr::CLOSE_RANGE) {
            assert!(!(o.args[0]..=o.args[1]).contains(&20), "{o:?}");
        }
    }

    #[test]
    fn per_thread_signals_go_to_the_new_tids() {
        let mut rng = Rng(5);
        let mut f = fixture(&mut rng);
        while f.threads.len() < 3 {
            f = fixture(&mut rng);
        }
        let mut info = [0u8; 128];
        info[0] = 10;
        let pending = [
            PendingSignalRecord {
                tid: 0,
                _pad: 0,
                siginfo: info,
            },
            PendingSignalRecord {
                tid: f.threads[2].record.tid,
                _pad: 0,
                siginfo: info,
            },
            PendingSignalRecord {
                tid: f.threads[0].record.tid,
                _pad: 0,
                siginfo: info,
            },
        ];
        for set_tids in [true, false] {
            // Either way the plan reads the tid clone3 wrote.
            let mut inp = input(&f, true);
            inp.pending = &pending;
            inp.set_tids = set_tids;
            let mut scratch = std::vec![Range::default(); 64];
            let window = choose_window(&inp, &mut scratch).unwrap();
            let mut buf = std::vec![0u8; window.len() as usize];
            let summary = build_plan(&inp, window, &mut buf).unwrap();
            let ops = window_ops(&buf);
            let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
            let leader = &ops[..header.op_count as usize];
            let is_queue = |o: &&Op| matches!(o.nr, nr::RT_SIGQUEUEINFO | nr::RT_TGSIGQUEUEINFO);
            let clones = clones_of(&buf, window, &summary);
            let at = |addr: u64| (addr - window.start) as usize;
            let parent_tid = |k: usize| {
                let a = at(clones[k].args + 24);
                u64::from_le_bytes(buf[a..a + 8].try_into().unwrap())
            };
            let list = |k: usize| {
                let first = (clones[k].ops - header.ops) as usize / layout::OP_SIZE;
                &ops[first..first + clones[k].count as usize]
            };

            // The leader queues the process-wide signal and its own.
            let queued: Vec<&Op> = leader.iter().filter(is_queue).collect();
            assert_eq!(queued.len(), 2);
            assert_eq!(queued[0].nr, nr::RT_SIGQUEUEINFO);
            assert_eq!(queued[1].rule, rule::OK);
            assert_eq!(queued[1].args[..2], [100, 100]);
            assert!(!list(0).iter().any(|o| is_queue(&o)));

            // Thread 2 queues its own, to its own tid, before it waits for go.
            let own = list(1);
            let q = own.iter().position(|o| is_queue(&o)).unwrap();
            let wait = own
                .iter()
                .rposition(|o| o.kind == op_kind::WAIT_EQ)
                .unwrap();
            assert!(q < wait);
            assert_eq!(own.iter().filter(is_queue).count(), 1);
            assert_eq!(own[q].nr, nr::RT_TGSIGQUEUEINFO);
            assert_eq!(own[q].args[0], 100);
            // Its tid is read from where clone3 wrote it: the recorded one
            // with set_tid, or a new one if that was taken (or without).
            assert_eq!(own[q].rule, rule::OK | rule::LOAD_ARG1);
            assert_eq!(own[q].args[1], parent_tid(1));
        }
    }

    #[test]
    fn refuses_pages_outside_vmas_and_mismatched_vdso() {
        let mut rng = Rng(7);
        let mut f = fixture(&mut rng);
        f.loads.push(PageLoad {
            vaddr: 0x1000_0000_0000 - PAGE,
            offset: 0,
            len: PAGE,
        });
        let inp = input(&f, true);
        let mut buf = std::vec![0u8; WindowLayout::for_input(&inp).size as usize];
        let w = Range {
            start: 0x10000,
            end: 0x10000 + buf.len() as u64,
        };
        assert!(matches!(
            build_plan(&inp, w, &mut buf),
            Err(PlanError::LoadOutsideVmas { .. })
        ));
        f.loads.pop();
        f.target_vdso.parts[2].end += PAGE;
        let inp = input(&f, true);
        assert_eq!(build_plan(&inp, w, &mut buf), Err(PlanError::VdsoMismatch));
    }

    #[test]
    fn dry_run_prints_every_op() {
        let mut rng = Rng(99);
        let f = fixture(&mut rng);
        let inp = input(&f, true);
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        let s = build_plan(&inp, window, &mut buf).unwrap();
        let mut text = std::string::String::new();
        write_plan(&buf, &mut text).unwrap();
        assert_eq!(text.lines().count(), s.ops);
        let leaves = if s.window_left {
            "rt_sigreturn"
        } else {
            "gadget-exit"
        };
        assert!(
            text.contains("prctl") && text.contains("pread-all") && text.contains(leaves),
            "{text}"
        );
        // The other threads are created before the plan runs; each has
        // its own op list, printed after the leader's.
        assert_eq!(s.nclones, f.threads.len() - 1);
        assert_eq!(
            text.lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("personality"))
                .count(),
            f.threads.len(),
            "{text}"
        );
    }

    /// no_new_privs is set in every thread, after its credentials, and only
    /// when the image had it.
    #[test]
    fn no_new_privs_comes_after_each_threads_credentials() {
        let mut rng = Rng(7);
        let f = fixture(&mut rng);
        for nnp in [false, true] {
            let mut inp = input(&f, true);
            inp.no_new_privs = nnp;
            let mut creds = <CredsRecord as zerocopy::FromZeros>::new_zeroed();
            creds.uid = [1000; 4];
            creds.gid = [1000; 4];
            inp.creds = Some(creds);
            let mut scratch = std::vec![Range::default(); 64];
            let window = choose_window(&inp, &mut scratch).unwrap();
            let mut buf = std::vec![0u8; window.len() as usize];
            build_plan(&inp, window, &mut buf).unwrap();
            let ops = window_ops(&buf);
            let labels: Vec<std::string::String> = ops
                .iter()
                .map(|op| std::string::String::from_utf8_lossy(op_label(&buf, op)).into_owned())
                .collect();
            let nnp_at: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i].starts_with("prctl PR_SET_NO_NEW_PRIVS"))
                .collect();
            let uid_at: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i].starts_with("setresuid"))
                .collect();
            assert_eq!(uid_at.len(), f.threads.len());
            if !nnp {
                assert!(nnp_at.is_empty());
                continue;
            }
            assert_eq!(nnp_at.len(), f.threads.len(), "{labels:?}");
            for (n, u) in nnp_at.iter().zip(&uid_at) {
                assert_eq!(*n, u + 1, "{labels:?}");
                assert_eq!(ops[*n].args[0], PR_SET_NO_NEW_PRIVS);
            }
        }
    }

    /// With AMX tile data in the restore mask every thread first uses it
    /// (an XRSTOR of its init state from a zeroed, aligned area) right
    /// before it loads its frame; without it, no thread does.
    #[test]
    fn every_thread_first_uses_dynamic_features_before_its_frame() {
        let mut rng = Rng(11);
        let f = fixture(&mut rng);
        for xfeatures in [0x207u64, 0x6_0207] {
            let mut inp = input(&f, true);
            inp.xfeatures = xfeatures;
            let mut scratch = std::vec![Range::default(); 64];
            let window = choose_window(&inp, &mut scratch).unwrap();
            let mut buf = std::vec![0u8; window.len() as usize];
            let summary = build_plan(&inp, window, &mut buf).unwrap();
            let ops = window_ops(&buf);
            let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
            let mut lists = std::vec![&ops[..header.op_count as usize]];
            for c in clones_of(&buf, window, &summary) {
                let first = (c.ops - header.ops) as usize / layout::OP_SIZE;
                lists.push(&ops[first..first + c.count as usize]);
            }
            assert_eq!(lists.len(), f.threads.len());
            for list in lists {
                let uses: Vec<usize> = (0..list.len())
                    .filter(|&i| list[i].kind == op_kind::XRSTOR_FIRST_USE)
                    .collect();
                if xfeatures & XFEATURE_MASK_USER_DYNAMIC == 0 {
                    assert!(uses.is_empty());
                    continue;
                }
                assert_eq!(uses.len(), 1);
                let op = &list[uses[0]];
                assert_eq!(op.args[1], XFEATURE_MASK_USER_DYNAMIC);
                assert_eq!(op.args[0] % 64, 0);
                let at = (op.args[0] - window.start) as usize;
                assert!(buf[at..at + FIRST_USE_AREA].iter().all(|&b| b == 0));
                // After it only the frame copy and the jump.
                assert!(list[uses[0] + 1..].iter().all(|o| matches!(
                    o.kind,
                    op_kind::MEMCPY
                        | op_kind::SIGRETURN
                        | op_kind::GADGET_EXIT
                        | op_kind::GADGET_WAKE_EXIT
                )));
            }
        }
    }

    #[test]
    fn area_flags_and_mdwe_reach_the_plan() {
        let mut rng = Rng(11);
        let mut f = fixture(&mut rng);
        let ordinary = |v: &TargetVma| !v.is_special() && v.fd < 0 && v.kind == vma_kind::ANON;
        let mut picked = f.vmas.iter_mut().filter(|v| ordinary(v));
        let reserved = picked.next().expect("an anonymous area");
        reserved.flags |= vma_flags::NORESERVE | vma_flags::LOCKED;
        let reserved = reserved.start;
        let accounted = picked.next().expect("a second anonymous area");
        accounted.flags |= vma_flags::ACCOUNT;
        accounted.prot = prot::READ;
        let accounted = accounted.start;
        let mut inp = input(&f, true);
        inp.mdwe = 1;
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        build_plan(&inp, window, &mut buf).unwrap();
        let ops = window_ops(&buf);
        let mmap_of = |start| {
            ops.iter()
                .find(|op| op.nr == nr::MMAP && op.args[0] == start)
                .expect("an mmap of the area")
        };
        assert_ne!(mmap_of(reserved).args[3] & mm_state::MAP_NORESERVE, 0);
        assert!(ops
            .iter()
            .any(|op| op.nr == mm_state::NR_MLOCK && op.args[0] == reserved));
        // Accounted once, so mapped writable first and then made read-only.
        assert_ne!(mmap_of(accounted).args[2] & sys::PROT_WRITE, 0);
        assert!(ops.iter().any(|op| op.nr == nr::MPROTECT
            && op.args[0] == accounted
            && op.args[2] == u64::from(prot::READ)));
        let mdwe = ops
            .iter()
            .position(|op| op.nr == nr::PRCTL && op.args[0] == mm_state::PR_SET_MDWE)
            .expect("a PR_SET_MDWE op");
        assert_eq!(ops[mdwe].args[1], 1);
        let last_area_op = ops
            .iter()
            .rposition(|op| matches!(op.nr, nr::MMAP | nr::MPROTECT))
            .unwrap();
        assert!(
            mdwe > last_area_op,
            "PR_SET_MDWE at op {mdwe}, area op at {last_area_op}"
        );
    }

    #[test]
    fn read_only_shared_file_mappings_stay_shared_unless_filled() {
        let v = TargetVma {
            start: 0x10000,
            end: 0x20000,
            prot: prot::READ,
            flags: vma_flags::MAYSHARE,
            kind: vma_kind::FILE,
            fd: 5,
            ..Default::default()
        };
        assert!(maps_read_only_shared(&v, false));
        assert!(!maps_read_only_shared(&v, true));
        assert!(!maps_read_only_shared(&TargetVma { fd: -1, ..v }, false));
        assert!(!maps_read_only_shared(
            &TargetVma {
                flags: vma_flags::MAYSHARE | vma_flags::SHARED,
                ..v
            },
            false
        ));
    }
}
