//! Stage 1 for the POSIX timers: their records copied out of the image
//! (the rules checked them already: [`crate::posix_timers::validate`]),
//! and this kernel asked, before the point of no return, whether it can
//! give them back: that `timer_create` takes ids from its caller
//! (`PR_TIMER_CREATE_RESTORE_IDS`, probed with its `GET`, which changes
//! nothing) and that this process may create a timer on each clock they
//! use (one is created and deleted per clock). The ids themselves are
//! free: a process starts with no timer after `execve`, and the loader
//! creates none that outlives its probe, so only the plan's
//! `timer_create`s take ids in it.

use image_format::records::{PendingSignalRecord, PosixTimerRecord, RlimitRecord};
use image_format::Image;

use super::os::Os;
use super::CheckError;
use crate::posix_timers::{PosixTimerError, MAX_POSIX_TIMERS};

/// The image's timers, in memory that stays for the plan.
pub fn check_posix_timers(
    os: &impl Os,
    image: &Image<'static>,
) -> Result<&'static [PosixTimerRecord], CheckError> {
    let timers = image
        .records::<PosixTimerRecord>()
        .map_err(|error| CheckError::Corrupt { error })?;
    let count = usize::try_from(timers.len()).unwrap_or(usize::MAX);
    if count == 0 {
        return Ok(&[]);
    }
    let refused = |error| CheckError::PosixTimer { error };
    if count > MAX_POSIX_TIMERS {
        return Err(refused(PosixTimerError::TooMany {
            count: u64::from(timers.len()),
        }));
    }
    os.timer_restore_ids()
        .map_err(|errno| refused(PosixTimerError::NoRestoreIds { count, errno }))?;
    let table = crate::sys::map_table::<PosixTimerRecord>(count)
        .map_err(|errno| CheckError::Scratch { errno })?;
    let mut filled = 0;
    for (slot, t) in table.iter_mut().zip(timers) {
        *slot = t;
        filled += 1;
    }
    if filled != count {
        return Err(CheckError::ScratchShort {
            table: "POSIX timers",
            items: count,
        });
    }
    for (i, t) in table.iter().enumerate() {
        // Each clock once.
        if table[..i].iter().any(|o| o.clock == t.clock) {
            continue;
        }
        os.probe_timer_clock(t.clock).map_err(|errno| {
            refused(PosixTimerError::ClockRefused {
                id: t.id,
                clock: t.clock,
                errno,
            })
        })?;
    }
    Ok(table)
}

/// `RLIMIT_SIGPENDING`.
const RLIMIT_SIGPENDING: u32 = 11;

/// Check that `timers` POSIX timers fit in this user's signal queue after
/// the recorded pending signals the plan queues first: each takes an entry
/// when created. `sigq` is `/proc/self/status`'s `SigQ:` (`queued/limit`);
/// the limit in force then is the task's (`rlimits`, already lowered),
/// else the current one. Without `SigQ` nothing is checked.
pub fn fit_sigqueue(
    timers: usize,
    pending: &[PendingSignalRecord],
    rlimits: &[RlimitRecord],
    sigq: Option<(u64, u64)>,
) -> Result<(), PosixTimerError> {
    let Some((queued, limit_now)) = sigq else {
        return Ok(());
    };
    if timers == 0 {
        return Ok(());
    }
    let limit = rlimits
        .iter()
        .find(|r| r.resource == RLIMIT_SIGPENDING)
        .map_or(limit_now, |r| r.cur);
    let signals = crate::plan::charged_signals(pending);
    let need = signals.saturating_add(u64::try_from(timers).unwrap_or(u64::MAX));
    if queued.saturating_add(need) > limit {
        return Err(PosixTimerError::SigQueue {
            timers,
            signals,
            queued,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_take_signal_queue_entries_after_the_pending_signals() {
        let mut realtime = PendingSignalRecord {
            tid: 0,
            _pad: 0,
            siginfo: [0; 128],
        };
        realtime.siginfo[0] = 40;
        let pending = [realtime];
        let limit = |cur| RlimitRecord {
            resource: RLIMIT_SIGPENDING,
            _pad: 0,
            cur,
            max: cur,
        };
        // 2 queued + 1 signal + 5 timers = 8: fits 8, not 7.
        assert_eq!(fit_sigqueue(5, &pending, &[], Some((2, 8))), Ok(()));
        assert_eq!(
            fit_sigqueue(5, &pending, &[], Some((2, 7))),
            Err(PosixTimerError::SigQueue {
                timers: 5,
                signals: 1,
                queued: 2,
                limit: 7
            })
        );
        // The task's own limit is the one in force when they are created.
        assert!(fit_sigqueue(5, &pending, &[limit(4)], Some((0, 100))).is_err());
        assert_eq!(
            fit_sigqueue(5, &pending, &[limit(100)], Some((2, 7))),
            Ok(())
        );
        // No timers, or no SigQ: nothing to check.
        assert_eq!(fit_sigqueue(0, &pending, &[], Some((7, 7))), Ok(()));
        assert_eq!(fit_sigqueue(5, &pending, &[], None), Ok(()));
    }
}
