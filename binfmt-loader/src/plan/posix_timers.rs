//! The plan's POSIX timer ops: every timer created with its own id
//! (`prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)`, a raw `timer_create` per
//! timer with the id at its third argument, then the prctl `OFF` again),
//! once every thread exists, and armed last, beside the interval timers
//! (`timer_settime` with the saved interval and time left, relative: a
//! periodic timer keeps its phase against the task's own run, as the
//! itimers do). A timer whose signal goes to one thread names that
//! thread's tid as it is now: the loader's pid for the leader, and for
//! another thread the tid clone3 wrote into the window (the recorded one,
//! or a new one when it was taken), copied into the timer's sigevent by
//! the plan itself just before the `timer_create`. The overrun count is
//! not set (no syscall can): a restored timer counts from 0.

use image_format::records::{sigev_notify, PosixTimerRecord};
use zerocopy::IntoBytes;

use super::abi::{int_arg, op_kind, rule};
use super::builder::Builder;
use super::thread_ops::Others;
use super::{PlanError, PlanInput};
use crate::posix_timers::{
    PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON,
    SIGEVENT_LEN, SIGEVENT_TID,
};
use crate::sys::nr;

/// The timer's `struct sigevent`, the target tid left 0 for the caller.
fn sigevent(t: &PosixTimerRecord) -> [u8; SIGEVENT_LEN] {
    let mut ev = [0u8; SIGEVENT_LEN];
    ev[0..8].copy_from_slice(&t.value.to_le_bytes());
    ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
    ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
    ev
}

/// Step 9b: create every timer with its id (disarmed).
pub(super) fn create(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    others: &Others,
) -> Result<(), PlanError> {
    if input.posix_timers.is_empty() {
        return Ok(());
    }
    b.sys(
        rule::OK,
        nr::PRCTL,
        [
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_ON,
            0,
            0,
            0,
            0,
        ],
        format_args!("prctl PR_TIMER_CREATE_RESTORE_IDS on"),
    )?;
    for t in input.posix_timers {
        let mut ev = sigevent(t);
        // Which thread it signals: 0 the leader, k the k-th other one.
        let thread = if t.notify & sigev_notify::THREAD_ID != 0 {
            let k = input
                .threads
                .iter()
                .position(|th| th.record.tid == t.tid)
                .ok_or(PlanError::TimerThread {
                    id: t.id,
                    tid: t.tid,
                })?;
            Some(k)
        } else {
            None
        };
        if thread == Some(0) {
            ev[SIGEVENT_TID..SIGEVENT_TID + 4].copy_from_slice(&input.pid.to_le_bytes());
        }
        let ev_addr = b.put(&ev, 8)?;
        if let Some(k) = thread.filter(|&k| k > 0) {
            b.op(
                op_kind::MEMCPY,
                rule::ANY,
                0,
                [
                    ev_addr + SIGEVENT_TID as u64,
                    others.tid_slot(k - 1),
                    4,
                    0,
                    0,
                    0,
                ],
                0,
                format_args!(
                    "copy the tid of thread {} into timer {}'s sigevent",
                    t.tid, t.id
                ),
            )?;
        }
        let id_addr = b.put(t.id.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::TIMER_CREATE,
            [int_arg(t.clock), ev_addr, id_addr, 0, 0, 0],
            format_args!("timer_create {} clock {}", t.id, t.clock),
        )?;
    }
    b.sys(
        rule::OK,
        nr::PRCTL,
        [
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_OFF,
            0,
            0,
            0,
            0,
        ],
        format_args!("prctl PR_TIMER_CREATE_RESTORE_IDS off"),
    )
}

/// Step 10b, after the interval timers: arm every timer that was armed.
pub(super) fn arm(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for t in input
        .posix_timers
        .iter()
        .filter(|t| t.left.sec != 0 || t.left.nsec != 0)
    {
        let spec = [t.interval.sec, t.interval.nsec, t.left.sec, t.left.nsec];
        let a = b.put(spec.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::TIMER_SETTIME,
            [int_arg(t.id), 0, a, 0, 0, 0],
            format_args!("timer_settime {}", t.id),
        )?;
    }
    Ok(())
}
