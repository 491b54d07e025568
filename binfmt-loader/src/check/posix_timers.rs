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

use image_format::records::PosixTimerRecord;
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
