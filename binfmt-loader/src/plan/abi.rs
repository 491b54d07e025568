//! The trampoline's ABI, written down once: the [`Op`] and [`WindowHeader`]
//! it reads, the op kinds and result rules it obeys, and every byte offset,
//! syscall number and errno its machine code (`crate::arch`) uses. The
//! `global_asm!` there receives all of these as `const` operands, so a field
//! that moves, an op kind that is renumbered or a syscall that changes
//! reaches the machine code by itself; what the code cannot follow (a field
//! that changes width, a header that outgrows its room) fails the const
//! assertions below, at build time, never during a restore.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::sys::nr;
use crate::ExitCode;

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
    /// the dynamic (XFD) features, see
    /// [`crate::plan::XFEATURE_MASK_USER_DYNAMIC`].
    pub const XRSTOR_FIRST_USE: u32 = 9;
}

/// `Op::rule`: how the trampoline judges a syscall's result. The low byte
/// is the rule, the bits above it are flags.
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

/// Room for the header at the start of the window; the trampoline's code
/// follows it.
pub const HEADER_BYTES: u64 = 64;

/// Byte offsets the trampoline reads, all derived from the structs above.
pub mod layout {
    use super::{offset_of, size_of, Op, WindowHeader};

    pub const HDR_OPS: usize = offset_of!(WindowHeader, ops);
    pub const HDR_COUNT: usize = offset_of!(WindowHeader, op_count);
    pub const HDR_STACK: usize = offset_of!(WindowHeader, stack_top);
    pub const HDR_LABEL: usize = offset_of!(WindowHeader, label);
    pub const HDR_LABEL_LEN: usize = offset_of!(WindowHeader, label_len);
    /// The fd failure messages go to (the caller's stderr, kept apart).
    pub const HDR_ERR_FD: usize = offset_of!(WindowHeader, err_fd);
    pub const OP_KIND: usize = offset_of!(Op, kind);
    pub const OP_RULE: usize = offset_of!(Op, rule);
    pub const OP_NR: usize = offset_of!(Op, nr);
    pub const OP_ARGS: usize = offset_of!(Op, args);
    /// `args[i]`; the trampoline reads `args[1]` also as two u32 halves
    /// (`xrstor`'s EDX:EAX), which little-endian u64s give it.
    pub const fn op_arg(i: usize) -> usize {
        OP_ARGS + 8 * i
    }
    pub const OP_EXPECT: usize = offset_of!(Op, expect);
    pub const OP_LABEL: usize = offset_of!(Op, label);
    pub const OP_LABEL_LEN: usize = offset_of!(Op, label_len);
    /// The stride of the op array.
    pub const OP_SIZE: usize = size_of::<Op>();
}

/// The syscalls the trampoline makes itself (an op's own syscall is its
/// `nr`), and the constants it passes them.
pub mod tramp {
    use super::nr;

    pub const NR_WRITE: u64 = nr::WRITE;
    pub const NR_MUNMAP: u64 = nr::MUNMAP;
    pub const NR_RT_SIGRETURN: u64 = nr::RT_SIGRETURN;
    pub const NR_PREAD64: u64 = nr::PREAD64;
    pub const NR_FUTEX: u64 = nr::FUTEX;
    pub const NR_EXIT_GROUP: u64 = nr::EXIT_GROUP;
    pub const NR_CLONE3: u64 = nr::CLONE3;
    /// `FUTEX_PRIVATE_FLAG` with `FUTEX_WAIT`, `FUTEX_WAKE`, `FUTEX_WAKE_OP`.
    pub const FUTEX_WAIT_PRIVATE: u64 = 128;
    pub const FUTEX_WAKE_PRIVATE: u64 = 128 | 1;
    pub const FUTEX_WAKE_OP_PRIVATE: u64 = 128 | 5;
    /// Wake every waiter.
    pub const FUTEX_WAKE_ALL: u32 = 0x7fff_ffff;
    /// A result in `-MAX_ERRNO..0` is `-errno`.
    pub const MAX_ERRNO: i64 = 4095;
    /// The errnos the trampoline itself reports or retries on.
    pub const EINTR: i64 = 4;
    pub const EIO: i64 = 5;
    pub const EAGAIN: i64 = 11;
    pub const EINVAL: i64 = 22;
    /// `exit_group` status after a failed op.
    pub const EXIT_RESTORE_FAILED: i32 = super::ExitCode::RestoreFailed as i32;
}

/// A syscall argument register holding a C `int` (an fd, a pid): the
/// kernel reads the low 32 bits, and the C ABI sign-extends, so `-1` stays
/// `-1` (`mmap`'s "no fd" is `u64::MAX`).
pub const fn int_arg(v: i32) -> u64 {
    u64::from_ne_bytes((v as i64).to_ne_bytes())
}

// What the machine code cannot follow by itself: the width of each field
// it reads (a u32 is read into a 32-bit register, the rest as u64), the
// header's room before the code, and the op stride.
const _: fn(&Op) -> &u32 = |o| &o.kind;
const _: fn(&Op) -> &u32 = |o| &o.rule;
const _: fn(&Op) -> &u64 = |o| &o.nr;
const _: fn(&Op) -> &[u64; 6] = |o| &o.args;
const _: fn(&Op) -> &u64 = |o| &o.expect;
const _: fn(&Op) -> &u64 = |o| &o.label;
const _: fn(&Op) -> &u64 = |o| &o.label_len;
const _: fn(&WindowHeader) -> &u64 = |h| &h.ops;
const _: fn(&WindowHeader) -> &u64 = |h| &h.op_count;
const _: fn(&WindowHeader) -> &u64 = |h| &h.stack_top;
const _: fn(&WindowHeader) -> &u64 = |h| &h.label;
const _: fn(&WindowHeader) -> &u64 = |h| &h.label_len;
const _: fn(&WindowHeader) -> &u64 = |h| &h.err_fd;
const _: () = assert!(
    size_of::<WindowHeader>() as u64 <= HEADER_BYTES,
    "the window header outgrew HEADER_BYTES"
);
const _: () = assert!(
    layout::OP_SIZE.is_multiple_of(8),
    "ops must stay 8-byte aligned in their array"
);
const _: () = assert!(
    rule::OK < 0x100
        && rule::EQ < 0x100
        && rule::ANY < 0x100
        && rule::OK_OR_ERRNO < 0x100
        && rule::SKIP_NEXT_IF_OK & 0xff == 0
        && rule::LOAD_ARG1 & 0xff == 0,
    "the trampoline reads the rule from the low byte, the flags above it"
);
const _: () = assert!(
    ExitCode::RestoreFailed as i32 == 9,
    "the README's exit table says 9"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The trampoline's syscall numbers are the kernel's (x86_64).
    #[test]
    fn trampoline_syscalls_are_the_kernels() {
        assert_eq!(
            [
                tramp::NR_WRITE,
                tramp::NR_MUNMAP,
                tramp::NR_RT_SIGRETURN,
                tramp::NR_PREAD64,
                tramp::NR_FUTEX,
                tramp::NR_EXIT_GROUP,
                tramp::NR_CLONE3,
            ],
            [1, 11, 15, 17, 202, 231, 435]
        );
        assert_eq!(int_arg(-1), u64::MAX);
        assert_eq!(int_arg(7), 7);
    }
}
