//! POSIX timers (`timer_create`) of an image: the rules their records must
//! meet (the dumper's self-check and stage 1 share them, through
//! [`crate::rules::check_image`]) and the errors of stage 1's probes of
//! this kernel ([`crate::check::posix_timers`]). The plan creates every
//! timer with its id (`PR_TIMER_CREATE_RESTORE_IDS`) and arms it last
//! ([`crate::plan`]).
//!
//! The overrun count is not restored: no syscall sets it, so a restored
//! timer counts overruns from 0 (the dumper warned when it was not 0).

use core::fmt;

use image_format::records::{sigev_notify, PosixTimerRecord, TimerSpec};

use crate::sys::Errno;
use crate::ExitCode;

/// The most POSIX timers an image may have (the plan's window has room
/// for their ops and data; the kernel's own limit is `RLIMIT_SIGPENDING`).
pub const MAX_POSIX_TIMERS: usize = 1024;

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, …)` (Linux 6.14+): with `ON`, a
/// raw `timer_create` takes the new timer's id from its third argument.
pub const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
pub const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;
pub const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
pub const PR_TIMER_CREATE_RESTORE_IDS_GET: u64 = 2;

/// `struct sigevent` as `timer_create` reads it: 64 bytes, the value at 0,
/// `sigev_signo` at 8, `sigev_notify` at 12, the thread id at 16.
pub const SIGEVENT_LEN: usize = 64;
pub const SIGEVENT_TID: usize = 16;

/// Why an image's timers cannot be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PosixTimerError {
    TooMany {
        count: u64,
    },
    /// An id `timer_create` cannot be asked for (below 0).
    BadId {
        id: i32,
    },
    DuplicateId {
        id: i32,
    },
    BadNotify {
        id: i32,
        notify: u32,
    },
    /// A signal-sending timer's signal is not 1..=64.
    BadSignal {
        id: i32,
        signo: u32,
    },
    /// Its signal goes to a thread the image does not have.
    NoSuchThread {
        id: i32,
        tid: i32,
    },
    /// A clock the dumper never records (only the fixed clocks are).
    BadClock {
        id: i32,
        clock: i32,
    },
    /// An alarm clock's timer (it wakes the machine from suspend) needs
    /// `CAP_WAKE_ALARM`, which the restored task will not have: the loader
    /// must not create it with its own.
    AlarmNeedsCapability {
        id: i32,
        clock: i32,
    },
    /// A time `timer_settime` refuses (`timespec64_valid`).
    BadTime {
        id: i32,
        sec: i64,
        nsec: i64,
    },
    /// This kernel cannot create a timer with a given id (the prctl's
    /// errno: EINVAL before Linux 6.14).
    NoRestoreIds {
        count: usize,
        errno: Errno,
    },
    /// This process may not create a timer on the clock (no such clock,
    /// no timers on it, or `CAP_WAKE_ALARM` missing for an alarm clock).
    ClockRefused {
        id: i32,
        clock: i32,
        errno: Errno,
    },
    /// Every timer takes a signal queue entry of this user's
    /// `RLIMIT_SIGPENDING` when created (Linux 6.13+), after the pending
    /// signals took theirs: they do not fit.
    SigQueue {
        timers: usize,
        signals: u64,
        queued: u64,
        limit: u64,
    },
}

impl PosixTimerError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PosixTimerError::NoRestoreIds { .. }
            | PosixTimerError::ClockRefused { .. }
            | PosixTimerError::AlarmNeedsCapability { .. } => ExitCode::Unsupported,
            PosixTimerError::SigQueue { .. } => ExitCode::Environment,
            PosixTimerError::TooMany { .. } => ExitCode::Unsupported,
            _ => ExitCode::ImageCorrupt,
        }
    }
}

impl fmt::Display for PosixTimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PosixTimerError::TooMany { count } => write!(
                f,
                "{count} POSIX timers: at most {MAX_POSIX_TIMERS} are restored"
            ),
            PosixTimerError::BadId { id } => write!(f, "corrupt image: POSIX timer id {id}"),
            PosixTimerError::DuplicateId { id } => {
                write!(f, "corrupt image: two POSIX timers have id {id}")
            }
            PosixTimerError::BadNotify { id, notify } => write!(
                f,
                "corrupt image: POSIX timer {id} has notify kind {notify:#x}"
            ),
            PosixTimerError::BadSignal { id, signo } => {
                write!(f, "corrupt image: POSIX timer {id} sends signal {signo}")
            }
            PosixTimerError::NoSuchThread { id, tid } => write!(
                f,
                "corrupt image: POSIX timer {id} signals thread {tid}, which the image does not have"
            ),
            PosixTimerError::BadClock { id, clock } => {
                write!(f, "corrupt image: POSIX timer {id} is on clock {clock}")
            }
            PosixTimerError::AlarmNeedsCapability { id, clock } => write!(
                f,
                "POSIX timer {id} is on alarm clock {clock}, which needs CAP_WAKE_ALARM; the restored task would not have it"
            ),
            PosixTimerError::BadTime { id, sec, nsec } => write!(
                f,
                "corrupt image: POSIX timer {id} has time {sec} s {nsec} ns"
            ),
            PosixTimerError::NoRestoreIds { count, errno } => write!(
                f,
                "the task had {count} POSIX timer(s), and this kernel cannot create timers with given ids (prctl PR_TIMER_CREATE_RESTORE_IDS: {errno}; Linux 6.14+)"
            ),
            PosixTimerError::SigQueue {
                timers,
                signals,
                queued,
                limit,
            } => write!(
                f,
                "the task had {timers} POSIX timer(s) and {signals} queued signal(s) pending, each taking a signal queue entry; this user has {queued} queued already and RLIMIT_SIGPENDING is {limit}"
            ),
            PosixTimerError::ClockRefused { id, clock, errno } => write!(
                f,
                "POSIX timer {id}: this process may not create a timer on clock {clock}: {errno}"
            ),
        }
    }
}

/// The clocks a timer is restored on: REALTIME, MONOTONIC, the process's
/// and the thread's CPU time, BOOTTIME, the two alarm clocks and TAI (a
/// CPU clock of another process, or a dynamic clock, is never recorded).
pub const RESTORED_CLOCKS: [i32; 8] = [0, 1, 2, 3, 7, 8, 9, 11];

/// The alarm clocks (`CLOCK_REALTIME_ALARM`, `CLOCK_BOOTTIME_ALARM`).
pub const ALARM_CLOCKS: [i32; 2] = [8, 9];

/// `CAP_WAKE_ALARM`'s bit.
const CAP_WAKE_ALARM: u64 = 1 << 35;

/// Whether a task ending with effective capabilities `caps` may keep the
/// timers `timers` (an alarm clock needs `CAP_WAKE_ALARM`, checked by the
/// kernel only when the timer is created, by the loader).
pub fn check_alarm_capability(
    timers: &[PosixTimerRecord],
    caps: u64,
) -> Result<(), PosixTimerError> {
    match timers.iter().find(|t| ALARM_CLOCKS.contains(&t.clock)) {
        Some(t) if caps & CAP_WAKE_ALARM == 0 => Err(PosixTimerError::AlarmNeedsCapability {
            id: t.id,
            clock: t.clock,
        }),
        _ => Ok(()),
    }
}

/// Whether `timer_settime` takes `t` (`timespec64_valid`).
fn valid_time(t: &TimerSpec) -> bool {
    t.sec >= 0 && (0..1_000_000_000).contains(&t.nsec)
}

/// The rules the image's timers must meet: few enough, ids `timer_create`
/// can be asked for, each once, notify kinds and signals the kernel takes,
/// a target thread the image has, times `timer_settime` takes. `tids`:
/// the image's threads.
pub fn validate(
    timers: impl Iterator<Item = PosixTimerRecord> + Clone,
    count: u64,
    tids: impl Iterator<Item = i32> + Clone,
) -> Result<(), PosixTimerError> {
    if count > MAX_POSIX_TIMERS as u64 {
        return Err(PosixTimerError::TooMany { count });
    }
    for (i, t) in timers.clone().enumerate() {
        let id = t.id;
        if id < 0 {
            return Err(PosixTimerError::BadId { id });
        }
        if timers.clone().take(i).any(|o| o.id == id) {
            return Err(PosixTimerError::DuplicateId { id });
        }
        if !RESTORED_CLOCKS.contains(&t.clock) {
            return Err(PosixTimerError::BadClock { id, clock: t.clock });
        }
        let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
        match t.notify {
            sigev_notify::NONE => {}
            sigev_notify::SIGNAL | sigev_notify::THREAD => {}
            n if n == to_thread => {
                if !tids.clone().any(|tid| tid == t.tid) {
                    return Err(PosixTimerError::NoSuchThread { id, tid: t.tid });
                }
            }
            notify => return Err(PosixTimerError::BadNotify { id, notify }),
        }
        if t.notify != sigev_notify::NONE && !(1..=64).contains(&t.signo) {
            return Err(PosixTimerError::BadSignal { id, signo: t.signo });
        }
        for time in [t.interval, t.left] {
            if !valid_time(&time) {
                return Err(PosixTimerError::BadTime {
                    id,
                    sec: time.sec,
                    nsec: time.nsec,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(id: i32, notify: u32, tid: i32) -> PosixTimerRecord {
        PosixTimerRecord {
            id,
            clock: 1,
            signo: 34,
            notify,
            tid,
            ..PosixTimerRecord::default()
        }
    }

    fn run(t: &[PosixTimerRecord]) -> Result<(), PosixTimerError> {
        validate(t.iter().copied(), t.len() as u64, [100, 101].into_iter())
    }

    #[test]
    fn unknown_clocks_and_alarms_without_the_capability_are_refused() {
        let mut cpu_of_another = timer(3, 0, 0);
        cpu_of_another.clock = -(4242 * 8) - 6;
        assert_eq!(
            run(&[cpu_of_another]),
            Err(PosixTimerError::BadClock {
                id: 3,
                clock: cpu_of_another.clock
            })
        );
        let mut alarm = timer(4, 0, 0);
        alarm.clock = 9;
        assert_eq!(run(&[alarm]), Ok(()));
        assert_eq!(
            check_alarm_capability(&[alarm], 0),
            Err(PosixTimerError::AlarmNeedsCapability { id: 4, clock: 9 })
        );
        assert_eq!(check_alarm_capability(&[alarm], 1 << 35), Ok(()));
        assert_eq!(check_alarm_capability(&[timer(5, 0, 0)], 0), Ok(()));
    }

    #[test]
    fn sound_timers_pass() {
        let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
        let mut none = timer(7, sigev_notify::NONE, 0);
        none.signo = 0;
        assert_eq!(
            run(&[timer(0, 0, 0), timer(1, to_thread, 101), none]),
            Ok(())
        );
        assert_eq!(run(&[]), Ok(()));
    }

    #[test]
    fn what_the_kernel_would_refuse_is_named() {
        let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
        assert_eq!(
            run(&[timer(-1, 0, 0)]),
            Err(PosixTimerError::BadId { id: -1 })
        );
        assert_eq!(
            run(&[timer(3, 0, 0), timer(3, 1, 0)]),
            Err(PosixTimerError::DuplicateId { id: 3 })
        );
        assert_eq!(
            run(&[timer(2, to_thread, 555)]),
            Err(PosixTimerError::NoSuchThread { id: 2, tid: 555 })
        );
        assert_eq!(
            run(&[timer(2, 6, 100)]),
            Err(PosixTimerError::BadNotify { id: 2, notify: 6 })
        );
        let mut t = timer(4, 0, 0);
        t.signo = 65;
        assert_eq!(
            run(&[t]),
            Err(PosixTimerError::BadSignal { id: 4, signo: 65 })
        );
        let mut t = timer(5, 0, 0);
        t.left.nsec = 1_000_000_000;
        assert!(matches!(
            run(&[t]),
            Err(PosixTimerError::BadTime { id: 5, .. })
        ));
        let mut t = timer(5, 0, 0);
        t.interval.sec = -1;
        assert!(matches!(
            run(&[t]),
            Err(PosixTimerError::BadTime { id: 5, .. })
        ));
        assert_eq!(
            validate(
                core::iter::empty(),
                MAX_POSIX_TIMERS as u64 + 1,
                core::iter::empty()
            ),
            Err(PosixTimerError::TooMany {
                count: MAX_POSIX_TIMERS as u64 + 1
            })
        );
    }
}
