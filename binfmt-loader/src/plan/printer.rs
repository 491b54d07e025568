//! Reading a built window back: its ops, their failure labels, and the dry
//! run that prints them one per line ([`write_plan`]; only the tests print
//! it so far). Reads only the window's bytes, which may be any bytes:
//! every offset is checked.

use core::fmt;

use zerocopy::FromBytes;

use super::abi::{layout, op_kind, Op, WindowHeader};
use crate::sys::nr;

/// A window address or length as an offset into the window's bytes;
/// `usize::MAX` (never in range) when it does not fit.
fn offset(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// The ops of a built window (for tests and the dry-run printer).
pub fn window_ops(buf: &[u8]) -> &[Op] {
    let Ok((h, _)) = WindowHeader::read_from_prefix(buf) else {
        return &[];
    };
    let off = offset(h.ops.wrapping_sub(h.base));
    let len = offset(h.all_ops.max(h.op_count)).saturating_mul(layout::OP_SIZE);
    buf.get(off..off.saturating_add(len))
        .and_then(|b| <[Op]>::ref_from_bytes(b).ok())
        .unwrap_or(&[])
}

/// The "what" part of an op's failure message.
pub fn op_label<'b>(buf: &'b [u8], op: &Op) -> &'b [u8] {
    let Ok((h, _)) = WindowHeader::read_from_prefix(buf) else {
        return b"";
    };
    let off = offset(op.label.wrapping_sub(h.base));
    let text = buf
        .get(off..off.saturating_add(offset(op.label_len)))
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
        nr::TIMER_CREATE => "timer_create",
        nr::TIMER_SETTIME => "timer_settime",
        nr::SETGROUPS => "setgroups",
        nr::SETRESGID => "setresgid",
        nr::SETRESUID => "setresuid",
        nr::RT_SIGRETURN => "rt_sigreturn",
        nr::CLONE3 => "clone3",
        nr::FUTEX => "futex",
        nr::READ => "read",
        nr::WRITE => "write",
        nr::CLOSE => "close",
        nr::FCNTL => "fcntl",
        crate::sys::terminal::IOCTL => "ioctl",
        _ => "syscall",
    }
}
