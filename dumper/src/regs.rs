//! The interrupted-syscall fix-up: what the registers of a thread frozen
//! inside a system call must say so that, once restored, it restarts the
//! call or sees `EINTR` — exactly what the kernel itself would have done on
//! its way back to user mode. Applied to the stored copy, never to the live
//! thread.

use image_format::elf::UserRegs;
use image_format::records::restart;

/// `-ERESTARTSYS`.
const ERESTARTSYS: i64 = -512;
/// `-ERESTARTNOINTR`.
const ERESTARTNOINTR: i64 = -513;
/// `-ERESTARTNOHAND`.
const ERESTARTNOHAND: i64 = -514;
/// `-ERESTART_RESTARTBLOCK`: the restart state lives in the kernel.
const ERESTART_RESTARTBLOCK: i64 = -516;
/// `-EINTR`.
const EINTR: i64 = -4;
/// Length of the `syscall` instruction.
const SYSCALL_INSN_LEN: u64 = 2;

/// A register as the signed value the kernel put there (a syscall's
/// return, or `orig_rax`, -1 outside a syscall): the same 64 bits.
pub fn signed(reg: u64) -> i64 {
    i64::from_ne_bytes(reg.to_ne_bytes())
}

/// A signed value as the register bits that hold it.
fn unsigned(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Registers to store, and what was done to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedRegs {
    pub regs: UserRegs,
    /// One of [`restart`].
    pub restart: u32,
    /// `orig_rax`, or -1 when the thread was not in a syscall.
    pub syscall_nr: i64,
    /// `rax` as found.
    pub syscall_ret: i64,
}

/// Apply the fix-up to a copy of a frozen thread's registers.
pub fn fix_up_interrupted_syscall(found: &UserRegs) -> FixedRegs {
    let nr = signed(found.orig_rax);
    let ret = signed(found.rax);
    let mut regs = *found;
    let mut kind = restart::NONE;
    if nr >= 0 {
        match ret {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                regs.rax = found.orig_rax;
                regs.rip = found.rip.wrapping_sub(SYSCALL_INSN_LEN);
                kind = restart::RESTART;
            }
            ERESTART_RESTARTBLOCK => {
                regs.rax = unsigned(EINTR);
                kind = restart::EINTR;
            }
            _ => {}
        }
    }
    FixedRegs {
        regs,
        restart: kind,
        syscall_nr: if nr >= 0 { nr } else { -1 },
        syscall_ret: ret,
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
mod tests {
    use super::*;

    fn regs(orig_rax: i64, rax: i64) -> UserRegs {
        UserRegs {
            orig_rax: orig_rax as u64,
            rax: rax as u64,
            rip: 0x1002,
            ..UserRegs::default()
        }
    }

    #[test]
    fn restartable_codes_rewind_to_the_syscall() {
        for code in [-512, -513, -514] {
            let f = fix_up_interrupted_syscall(&regs(0, code));
            assert_eq!(f.restart, restart::RESTART);
            assert_eq!((f.regs.rax, f.regs.rip), (0, 0x1000));
            assert_eq!((f.syscall_nr, f.syscall_ret), (0, code));
            assert_eq!(f.regs.orig_rax, 0);
        }
    }

    #[test]
    fn restart_block_becomes_eintr() {
        let f = fix_up_interrupted_syscall(&regs(230, -516));
        assert_eq!(f.restart, restart::EINTR);
        assert_eq!(f.regs.rax as i64, -4);
        assert_eq!(f.regs.rip, 0x1002);
        assert_eq!(f.syscall_nr, 230);
    }

    #[test]
    fn other_states_are_kept() {
        // Not in a syscall: orig_rax = -1, rax may hold anything.
        let f = fix_up_interrupted_syscall(&regs(-1, -512));
        assert_eq!((f.restart, f.syscall_nr), (restart::NONE, -1));
        assert_eq!(f.regs, regs(-1, -512));
        // A completed syscall returning an ordinary error.
        let f = fix_up_interrupted_syscall(&regs(0, -11));
        assert_eq!(f.restart, restart::NONE);
        assert_eq!(f.regs, regs(0, -11));
    }
}
