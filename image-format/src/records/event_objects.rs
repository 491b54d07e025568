//! The event-loop objects behind fds: signalfds, timerfds, inotify
//! instances with their watches, and epoll instances with their interest
//! lists. A signalfd's or timerfd's `FdRecord::object` indexes its note;
//! an inotify's or epoll's object is a 1-based instance number that its
//! watch (item) records name, so an instance without any has no record.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record, StrRef};

/// A signalfd: the signals it reads (bit `n - 1`: signal `n`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SignalfdRecord {
    pub mask: u64,
}
const _: () = assert!(core::mem::size_of::<SignalfdRecord>() == 8);
impl Record for SignalfdRecord {
    const NOTE_TYPE: u32 = note::SIGNALFDS;
}

/// `TimerfdRecord::flags` bits (the kernel's `TFD_TIMER_*` values).
pub mod timerfd_flags {
    /// `TFD_TIMER_ABSTIME`: `value` is an absolute time on the clock.
    pub const ABSTIME: u32 = 1;
    /// `TFD_TIMER_CANCEL_ON_SET`.
    pub const CANCEL_ON_SET: u32 = 2;
}

/// A timerfd: its clock, how it was armed, when it next expires and the
/// expirations not yet read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TimerfdRecord {
    /// `CLOCK_*` of `timerfd_create`.
    pub clockid: u32,
    /// [`timerfd_flags`] of the last `timerfd_settime`.
    pub flags: u32,
    /// Expirations not yet read.
    pub ticks: u64,
    /// The next expiry: the time left at the dump, or with
    /// [`timerfd_flags::ABSTIME`] the absolute time on the clock. Zero:
    /// disarmed.
    pub value_sec: u64,
    pub value_nsec: u64,
    /// The period (zero: one-shot).
    pub interval_sec: u64,
    pub interval_nsec: u64,
}
const _: () = assert!(core::mem::size_of::<TimerfdRecord>() == 48);
impl Record for TimerfdRecord {
    const NOTE_TYPE: u32 = note::TIMERFDS;
}

/// One watch of an inotify instance, on the file at `path`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InotifyWatchRecord {
    /// The instance (the `FdRecord::object` of its fds).
    pub inotify: u32,
    /// The watch descriptor, as the task knows it.
    pub wd: i32,
    /// `IN_*` events and flags as `inotify_add_watch` takes them.
    pub mask: u32,
    pub _pad: u32,
    /// The watched file (`st_dev`, `st_ino`), checked at restore.
    pub dev: u64,
    pub ino: u64,
    pub path: StrRef,
}
const _: () = assert!(core::mem::size_of::<InotifyWatchRecord>() == 40);
impl Record for InotifyWatchRecord {
    const NOTE_TYPE: u32 = note::INOTIFY_WATCHES;
}

/// One item of an epoll instance's interest list: the task's fd `tfd`,
/// watched for `events` with `data`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EpollItemRecord {
    /// The instance (the `FdRecord::object` of its fds).
    pub epoll: u32,
    pub tfd: i32,
    /// `EPOLL*` bits as the kernel holds them: a one-shot item that has
    /// fired shows only its flag bits (`EPOLLONESHOT`, `EPOLLET`, …).
    pub events: u32,
    pub _pad: u32,
    pub data: u64,
}
const _: () = assert!(core::mem::size_of::<EpollItemRecord>() == 24);
impl Record for EpollItemRecord {
    const NOTE_TYPE: u32 = note::EPOLL_ITEMS;
}
