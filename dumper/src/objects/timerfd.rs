//! timerfd: its clock, how it was armed (`settime flags`), the time left
//! and the period (`timerfd_gettime` on a copy of the fd) and the
//! expirations not yet read (`ticks`), from fdinfo. An absolute timer
//! (`TFD_TIMER_ABSTIME`) is saved with its absolute expiry, so it fires at
//! the same time on its clock after a restore; a relative one with the
//! time it had left, so a periodic timer keeps its phase.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use image_format::records::{timerfd_flags, TimerfdRecord};

use super::{fdinfo_value, Refusal};
use crate::sys::event_objects::{clock_now, timerfd_gettime, Time};

/// The clocks `timerfd_create` takes.
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const CLOCK_BOOTTIME: u32 = 7;
const CLOCK_REALTIME_ALARM: u32 = 8;
const CLOCK_BOOTTIME_ALARM: u32 = 9;

const NSEC: u64 = 1_000_000_000;

/// What fdinfo says of a timerfd: (clock, ticks, settime flags).
pub fn parse(fd: i32, fdinfo: &str) -> Result<(u32, u64, u32), Refusal> {
    let missing = |what: &str| format!("fd {fd} is a timerfd whose {what} fdinfo does not show");
    let clockid = fdinfo_value(fdinfo, "clockid")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| missing("clock"))?;
    let ticks = fdinfo_value(fdinfo, "ticks")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| missing("expiration count"))?;
    // Printed in octal.
    let flags = fdinfo_value(fdinfo, "settime flags")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or_else(|| missing("settime flags"))?;
    if !matches!(
        clockid,
        CLOCK_REALTIME
            | CLOCK_MONOTONIC
            | CLOCK_BOOTTIME
            | CLOCK_REALTIME_ALARM
            | CLOCK_BOOTTIME_ALARM
    ) {
        return Err(format!(
            "fd {fd} is a timerfd on clock {clockid}, which crimg does not know"
        ));
    }
    if flags & !(timerfd_flags::ABSTIME | timerfd_flags::CANCEL_ON_SET) != 0 {
        return Err(format!(
            "fd {fd} is a timerfd armed with unknown flags {flags:#o}"
        ));
    }
    Ok((clockid, ticks, flags))
}

/// The clock an absolute expiry is read on (the alarm clocks count like
/// their plain twins).
fn reading_clock(clockid: u32) -> libc::clockid_t {
    match clockid {
        CLOCK_REALTIME | CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        CLOCK_BOOTTIME | CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        _ => libc::CLOCK_MONOTONIC,
    }
}

fn add(a: Time, b: Time) -> Time {
    let ns = a.1 + b.1;
    (a.0 + b.0 + ns / NSEC, ns % NSEC)
}

/// The timerfd behind the task's fd `fd`, read through `timer`, a copy.
pub fn collect(fd: i32, timer: &OwnedFd) -> Result<TimerfdRecord, Refusal> {
    // First: on a periodic timer that expired unread, this counts the
    // missed periods into `ticks`, which fdinfo then shows.
    let (left, interval) = timerfd_gettime(timer.as_fd())
        .map_err(|e| format!("fd {fd}: cannot read the timerfd's setting: {e}"))?;
    let own = format!("/proc/self/fdinfo/{}", timer.as_raw_fd());
    let fdinfo = std::fs::read_to_string(&own)
        .map_err(|e| format!("fd {fd}: cannot read the timerfd's fdinfo ({own}): {e}"))?;
    let (clockid, ticks, flags) = parse(fd, &fdinfo)?;
    let armed = left != (0, 0);
    let value = if armed && flags & timerfd_flags::ABSTIME != 0 {
        let now = clock_now(reading_clock(clockid))
            .map_err(|e| format!("fd {fd}: cannot read the timerfd's clock: {e}"))?;
        add(now, left)
    } else {
        left
    };
    Ok(TimerfdRecord {
        clockid,
        flags,
        ticks,
        value_sec: value.0,
        value_nsec: value.1,
        interval_sec: interval.0,
        interval_nsec: interval.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::event_objects::testing;

    #[test]
    fn parses_fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\nclockid: 1\nticks: 3\nsettime flags: 03\nit_value: (0, 49)\nit_interval: (1, 0)\n";
        assert_eq!(parse(6, text).unwrap(), (1, 3, 3));
        assert!(parse(6, "clockid: 1\n").unwrap_err().contains("fd 6"));
        assert!(parse(6, "clockid: 4\nticks: 0\nsettime flags: 0\n")
            .unwrap_err()
            .contains("clock 4"));
    }

    #[test]
    fn reads_a_periodic_timer() {
        let timer = testing::timerfd(libc::CLOCK_MONOTONIC);
        testing::arm(&timer, 0, (50, 0), (100, 0));
        let r = collect(6, &timer).unwrap();
        assert_eq!((r.clockid, r.flags, r.ticks), (1, 0, 0));
        assert_eq!((r.interval_sec, r.interval_nsec), (100, 0));
        assert!(r.value_sec == 49 || r.value_sec == 50, "{r:?}");
        // Absolute: the expiry on the clock, not the time left.
        let now = clock_now(libc::CLOCK_MONOTONIC).unwrap();
        let at = i64::try_from(now.0).unwrap() + 1000;
        testing::arm(&timer, libc::TFD_TIMER_ABSTIME, (at, 0), (0, 0));
        let r = collect(6, &timer).unwrap();
        assert_eq!(r.flags, timerfd_flags::ABSTIME);
        let expiry = now.0 + 1000;
        assert!(r.value_sec.abs_diff(expiry) <= 1, "{r:?} vs {expiry}");
    }
}
