//! Step 10b: the timerfds armed, next to the interval timers (as late as
//! the plan can: the time left runs from here), then given their unread
//! expirations back (`TFD_IOC_SET_TICKS`; arming zeroes the count).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, rule};
use super::builder::Builder;
use super::{PlanError, PlanInput};
use crate::sys::event_objects::{IOCTL, TFD_IOC_SET_TICKS, TIMERFD_SETTIME};

/// One timerfd to arm: `timerfd_settime(fd, flags, {interval, value})`
/// unless `value` is zero (it stays disarmed), then with `set_ticks`
/// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TimerfdArm {
    pub fd: i32,
    /// `TFD_TIMER_*`.
    pub flags: u32,
    /// (seconds, nanoseconds).
    pub value: [u64; 2],
    pub interval: [u64; 2],
    pub ticks: u64,
    pub set_ticks: u32,
    /// The timerfd's object number (stage 1's bookkeeping).
    pub object: u32,
}

pub(super) fn arm_timerfds(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for t in input.timerfd_arms {
        if t.value != [0, 0] {
            let spec = [t.interval[0], t.interval[1], t.value[0], t.value[1]];
            let a = b.put(spec.as_bytes(), 8)?;
            b.sys(
                rule::OK,
                TIMERFD_SETTIME,
                [int_arg(t.fd), u64::from(t.flags), a, 0, 0, 0],
                format_args!("timerfd_settime {}", t.fd),
            )?;
        }
        if t.set_ticks != 0 {
            let a = b.put(&t.ticks.to_le_bytes(), 8)?;
            b.sys(
                rule::OK,
                IOCTL,
                [int_arg(t.fd), TFD_IOC_SET_TICKS, a, 0, 0, 0],
                format_args!("ioctl {} TFD_IOC_SET_TICKS", t.fd),
            )?;
        }
    }
    Ok(())
}
