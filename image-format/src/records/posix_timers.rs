//! POSIX timers (`timer_create`): one [`PosixTimerRecord`] per timer of the
//! process, in the [`super::note::POSIX_TIMERS`] note.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record};

/// `PosixTimerRecord::notify`: the kernel's `sigev_notify` values.
pub mod sigev_notify {
    /// `SIGEV_SIGNAL`: a signal to the process.
    pub const SIGNAL: u32 = 0;
    /// `SIGEV_NONE`: nothing is sent; the timer is read with `timer_gettime`.
    pub const NONE: u32 = 1;
    /// `SIGEV_THREAD`: what the kernel sees of it is a signal to the
    /// process (libc's helper thread waits for it).
    pub const THREAD: u32 = 2;
    /// `SIGEV_THREAD_ID` (with [`SIGNAL`]): a signal to one thread.
    pub const THREAD_ID: u32 = 4;
}

/// A `struct timespec`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TimerSpec {
    pub sec: i64,
    pub nsec: i64,
}
const _: () = assert!(core::mem::size_of::<TimerSpec>() == 16);

/// One POSIX timer: what `/proc/P/timers` shows of it, and what
/// `timer_gettime` and `timer_getoverrun` answered inside the task.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct PosixTimerRecord {
    /// The timer id the task knows it by (`timer_t`).
    pub id: i32,
    /// The clock `timer_create` is given (`CLOCK_*`; the process and
    /// thread CPU clocks as `CLOCK_PROCESS_CPUTIME_ID` 2 and
    /// `CLOCK_THREAD_CPUTIME_ID` 3).
    pub clock: i32,
    /// `sigev_signo`.
    pub signo: u32,
    /// `sigev_notify`: one of [`sigev_notify`] (`THREAD_ID` ORed with `SIGNAL`).
    pub notify: u32,
    /// With [`sigev_notify::THREAD_ID`]: the tid of the thread the signal
    /// goes to, as recorded (the restore maps it to the thread's new tid).
    pub tid: i32,
    /// `timer_getoverrun` at the dump (not restorable: the kernel has no
    /// way to set it; the restored timer counts from 0).
    pub overrun: i32,
    /// `sigev_value` (`sival_ptr`; `sival_int` is its low 32 bits).
    pub value: u64,
    /// `it_interval`: the period (0: one-shot).
    pub interval: TimerSpec,
    /// `it_value`: time left until the next expiry (0: disarmed).
    pub left: TimerSpec,
}
const _: () = assert!(core::mem::size_of::<PosixTimerRecord>() == 64);
impl Record for PosixTimerRecord {
    const NOTE_TYPE: u32 = note::POSIX_TIMERS;
}
