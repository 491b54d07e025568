//! Instruction sequences the loader borrows from the task's own executable
//! memory so that nothing of its own stays mapped (LOADER.md, stage 4).
//!
//! The byte patterns are the loader's own (`binfmt_loader::check::gadgets`):
//! what the dumper records is what the loader accepts, one rule for both.

use binfmt_loader::check::gadgets as rule;

/// `syscall; ret`.
pub const SYSCALL_RET: &[u8] = rule::SYSCALL_RET[0];
/// `mov $15, %eax; syscall` (`rt_sigreturn`), as hand-written code has it.
pub const RT_SIGRETURN: &[u8] = rule::RT_SIGRETURN[0];
/// `mov $15, %rax; syscall`: glibc's `__restore_rt`, the `sa_restorer` of
/// every handler it installs.
pub const RT_SIGRETURN_REX: &[u8] = rule::RT_SIGRETURN[1];

/// The first `rt_sigreturn` sequence in `bytes` (read from `base`), in
/// any encoding the loader accepts.
pub fn find_rt_sigreturn(bytes: &[u8], base: u64) -> Option<u64> {
    rule::RT_SIGRETURN
        .iter()
        .find_map(|pattern| find(bytes, base, pattern))
}

/// The first `syscall; ret` sequence in `bytes` (read from `base`).
pub fn find_syscall_ret(bytes: &[u8], base: u64) -> Option<u64> {
    rule::SYSCALL_RET
        .iter()
        .find_map(|pattern| find(bytes, base, pattern))
}

/// The longest pattern of either gadget: a scan that reads in chunks
/// overlaps them by one byte less, so no sequence is cut in two.
pub const LONGEST: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < rule::RT_SIGRETURN.len() {
        if rule::RT_SIGRETURN[i].len() > n {
            n = rule::RT_SIGRETURN[i].len();
        }
        i += 1;
    }
    let mut i = 0;
    while i < rule::SYSCALL_RET.len() {
        if rule::SYSCALL_RET[i].len() > n {
            n = rule::SYSCALL_RET[i].len();
        }
        i += 1;
    }
    n
};

/// `syscall`.
pub const SYSCALL: &[u8] = &[0x0f, 0x05];

/// Address of the first occurrence of `pattern` in `bytes`, which were read
/// from address `base`.
pub fn find(bytes: &[u8], base: u64, pattern: &[u8]) -> Option<u64> {
    crate::sys::search::find_bytes(bytes, pattern).map(|i| base + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_occurrence_with_base() {
        let code = [
            0x90, 0x0f, 0x05, 0x90, 0x0f, 0x05, 0xc3, 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05,
        ];
        assert_eq!(find(&code, 0x1000, SYSCALL), Some(0x1001));
        assert_eq!(find(&code, 0x1000, SYSCALL_RET), Some(0x1004));
        assert_eq!(find_syscall_ret(&code, 0x1000), Some(0x1004));
        assert_eq!(find(&code, 0x1000, RT_SIGRETURN), Some(0x1007));
        assert_eq!(find(&code[..13], 0x1000, RT_SIGRETURN), None);
        assert_eq!(find(&[], 0, SYSCALL), None);
        let glibc = [0x90, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90];
        assert_eq!(find_rt_sigreturn(&glibc, 0x2000), Some(0x2001));
        assert_eq!(find_rt_sigreturn(&code, 0x1000), Some(0x1007));
        assert_eq!(LONGEST, 9);
    }
}
