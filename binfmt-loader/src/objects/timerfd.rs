//! timerfd: created on its clock in stage 1, armed by the plan next to
//! the interval timers (as late as possible, so the time left runs from
//! just before the task resumes: a periodic timer keeps its phase), then
//! given back the expirations not yet read (`TFD_IOC_SET_TICKS`, after the
//! arming, which zeroes them). A kernel without that ioctl (built without
//! CONFIG_CHECKPOINT_RESTORE) cannot be given a count: the timer is then
//! armed to expire at once, so a reader sees at least one expiration, and
//! a warning says what was lost. An absolute timer is armed at its saved
//! absolute time; `TFD_TIMER_CANCEL_ON_SET` is set again (a timer that the
//! clock change had already cancelled before the dump is not: fdinfo does
//! not show it).

use image_format::read::Records;
use image_format::records::{fd_kind, FdRecord, TimerfdRecord};
use image_format::Image;

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::scratch::Scratch;
use crate::check::CheckError;
use crate::plan::TimerfdArm;
use crate::sys::{Errno, O_CLOEXEC, O_NONBLOCK};

const CLOCK_MONOTONIC: u32 = 1;
const ENOTTY: Errno = Errno(25);

fn record_of(image: &Image<'static>, f: &FdRecord) -> Result<TimerfdRecord, CheckError> {
    image
        .records::<TimerfdRecord>()
        .map_err(|error| CheckError::Corrupt { error })?
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })
}

/// The timerfd of `f`, on its clock and disarmed.
pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
) -> Result<i32, CheckError> {
    let record = record_of(image, f)?;
    // TFD_CLOEXEC and TFD_NONBLOCK are O_CLOEXEC and O_NONBLOCK.
    let fd = os
        .timerfd_create(record.clockid, O_CLOEXEC | O_NONBLOCK)
        .map_err(failed(f, "create the timerfd"))?;
    lift(os, fd, base).map_err(failed(f, "move the timerfd"))
}

/// Whether this kernel has `TFD_IOC_SET_TICKS`: with a count of 0 it
/// refuses with EINVAL (and changes nothing), without it says ENOTTY.
fn has_set_ticks(os: &impl Os) -> bool {
    let Ok(probe) = os.timerfd_create(CLOCK_MONOTONIC, O_CLOEXEC | O_NONBLOCK) else {
        return false;
    };
    let answer = os.timerfd_set_ticks(probe, 0);
    os.close(probe);
    answer.is_err_and(|e| e != ENOTTY)
}

/// What the plan arms: one entry per timerfd (at the first fd number the
/// task has it at: every fd is in place when the plan arms them).
pub fn arms(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    fds: &Records<'static, FdRecord>,
    scratch: &mut Scratch,
) -> Result<&'static [TimerfdArm], CheckError> {
    let n = fds
        .clone()
        .filter(|f| f.kind == fd_kind::TIMERFD && f.object != 0)
        .count();
    let table = scratch.take::<TimerfdArm>("timerfd arms", n)?;
    let mut len = 0;
    let mut set_ticks = None;
    for f in fds.clone() {
        if f.kind != fd_kind::TIMERFD || f.object == 0 {
            continue;
        }
        if table[..len].iter().any(|a| a.object == f.object) {
            continue;
        }
        let r = record_of(image, &f)?;
        let mut arm = TimerfdArm {
            fd: f.fd,
            flags: r.flags,
            value: [r.value_sec, r.value_nsec],
            interval: [r.interval_sec, r.interval_nsec],
            ticks: r.ticks,
            set_ticks: u32::from(r.ticks != 0),
            object: f.object,
        };
        if r.ticks != 0 && !*set_ticks.get_or_insert_with(|| has_set_ticks(os)) {
            // Expire at once: a reader sees one expiration (a relative 1 ns,
            // or an absolute 1 ns after the clock's start: both past).
            arm.value = [0, 1];
            arm.set_ticks = 0;
            os.report(
                name,
                format_args!(
                    "warning: fd {}: this kernel cannot set a timerfd's expiration count (no TFD_IOC_SET_TICKS): its {} unread expiration(s) read as one, and its next expiry moves to now",
                    f.fd, r.ticks
                ),
            );
        }
        if let Some(slot) = table.get_mut(len) {
            *slot = arm;
            len += 1;
        }
    }
    Ok(&table[..len])
}
