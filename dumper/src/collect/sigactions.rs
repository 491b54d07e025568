//! Which signal actions are asked by injection, and the full table made
//! from the answers.
//!
//! `/proc/P/status` says which signals have a handler (`SigCgt`) and
//! which are ignored (`SigIgn`); every other signal is `SIG_DFL` (the
//! kernel derives both sets from the same actions `rt_sigaction` reads,
//! and the task is frozen, so they cannot change in between). Only those
//! two sets are asked, plus SIGCHLD always: its `SA_NOCLDWAIT` changes
//! what the kernel does even under `SIG_DFL` (children are reaped at
//! once, `wait` finds none), and so does `SA_NOCLDSTOP` (with it no
//! SIGCHLD is queued when a child stops, which a task that blocks
//! SIGCHLD sees as a pending signal). For any other `SIG_DFL` signal the
//! kernel reads neither the flags, nor the mask, nor the restorer: it
//! runs the default action, so the table records them as zero (one
//! difference a task could see: `sigaction(sig, NULL, &old)` on such a
//! signal reads back flags 0, where glibc had left `SA_RESTORER` and its
//! restorer when the task reset it to `SIG_DFL` itself). Every signal
//! still gets its record: the loader sets them all, since the restoring
//! process may run with some ignored (execve keeps `SIG_IGN`).

use image_format::records::SigactionRecord;

/// The bit of signal `signo` (1..=64) in a kernel signal set.
const fn bit(signo: u32) -> u64 {
    1 << (signo - 1)
}

/// Signals whose action cannot be changed, and is not recorded.
const FIXED: u64 = bit(9) | bit(19);
/// SIGCHLD.
const SIGCHLD: u32 = 17;

/// The signals whose action is asked, from `SigIgn` and `SigCgt`.
pub(super) fn to_ask(sig_ign: u64, sig_cgt: u64) -> u64 {
    (sig_ign | sig_cgt | bit(SIGCHLD)) & !FIXED
}

/// The action of every signal but SIGKILL and SIGSTOP, in signal order:
/// those asked from `answers` (records of the signals in `asked`), the
/// others `SIG_DFL` with no flags.
pub(super) fn table(asked: u64, answers: &[SigactionRecord]) -> Vec<SigactionRecord> {
    (1..=64u32)
        .filter(|&signo| FIXED & bit(signo) == 0)
        .map(|signo| {
            answers
                .iter()
                .find(|a| a.signo == signo && asked & bit(signo) != 0)
                .copied()
                .unwrap_or(SigactionRecord {
                    signo,
                    ..SigactionRecord::default()
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_ignored_and_sigchld_are_asked_never_kill_and_stop() {
        // SIGINT caught, SIGPIPE ignored, SIGKILL in a set (never shown,
        // but never asked either).
        let asked = to_ask(bit(13) | bit(9), bit(2) | bit(34));
        assert_eq!(asked, bit(2) | bit(13) | bit(17) | bit(34));
        assert_eq!(to_ask(0, 0), bit(17));
    }

    #[test]
    fn the_table_has_every_signal_and_zero_for_the_default_ones() {
        let usr1 = SigactionRecord {
            signo: 10,
            handler: 0x40_1000,
            flags: 0x0400_0000,
            restorer: 0x40_2000,
            mask: 1,
            ..SigactionRecord::default()
        };
        // An answer for a signal that was not asked is not taken.
        let stray = SigactionRecord {
            signo: 12,
            handler: 1,
            ..SigactionRecord::default()
        };
        let t = table(bit(10) | bit(17), &[usr1, stray]);
        assert_eq!(t.len(), 62);
        assert!(t.iter().all(|s| s.signo != 9 && s.signo != 19));
        assert_eq!(t.iter().find(|s| s.signo == 10), Some(&usr1));
        let usr2 = t.iter().find(|s| s.signo == 12).unwrap();
        assert_eq!((usr2.handler, usr2.flags, usr2.restorer), (0, 0, 0));
        assert!(t.windows(2).all(|w| w[0].signo < w[1].signo));
    }
}
