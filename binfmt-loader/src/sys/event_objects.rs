//! The system calls that create the event-loop objects behind fds in
//! stage 1 (signalfd, timerfd, inotify, epoll) and set their state.
//! Adding epoll items and arming timerfds happen later, as plan ops
//! (`crate::plan::epoll`, `crate::plan::timerfds`); their numbers are here.

use super::{fd_of, int_arg, result, syscall6, CPath, Errno};

pub const SIGNALFD4: u64 = 289;
pub const TIMERFD_CREATE: u64 = 283;
pub const TIMERFD_SETTIME: u64 = 286;
pub const IOCTL: u64 = 16;
pub const INOTIFY_INIT1: u64 = 294;
pub const INOTIFY_ADD_WATCH: u64 = 254;
pub const INOTIFY_RM_WATCH: u64 = 255;
pub const EPOLL_CREATE1: u64 = 291;
pub const EPOLL_CTL: u64 = 233;
/// `_IOW('T', 0, u64)`: set a timerfd's expiration count (kernels with
/// CONFIG_CHECKPOINT_RESTORE; others say ENOTTY).
pub const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
pub const EPOLL_CTL_ADD: u64 = 1;

/// `signalfd4(-1, &mask, 8, flags)`: a new signalfd reading `mask`.
pub fn signalfd(mask: u64, flags: u32) -> Result<i32, Errno> {
    // SAFETY: the kernel reads 8 bytes of mask from `mask`, which lives
    // through the call.
    let r = unsafe {
        syscall6(
            SIGNALFD4,
            int_arg(-1),
            &raw const mask as u64,
            8,
            u64::from(flags),
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `timerfd_create(clock, flags)`.
pub fn timerfd_create(clock: u32, flags: u32) -> Result<i32, Errno> {
    // SAFETY: creating a timerfd touches no memory of ours.
    let r = unsafe {
        syscall6(
            TIMERFD_CREATE,
            u64::from(clock),
            u64::from(flags),
            0,
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`. With `ticks` 0 the kernel
/// refuses (EINVAL) and changes nothing: a probe for the ioctl.
pub fn timerfd_set_ticks(fd: i32, ticks: u64) -> Result<(), Errno> {
    // SAFETY: the kernel reads one u64 at `ticks`, alive through the call.
    let r = unsafe {
        syscall6(
            IOCTL,
            int_arg(fd),
            TFD_IOC_SET_TICKS,
            &raw const ticks as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `inotify_init1(flags)`.
pub fn inotify_init(flags: u32) -> Result<i32, Errno> {
    // SAFETY: creating an inotify instance touches no memory of ours.
    let r = unsafe { syscall6(INOTIFY_INIT1, u64::from(flags), 0, 0, 0, 0, 0) };
    result(r).and_then(fd_of)
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: i32, path: &[u8], mask: u32) -> Result<i32, Errno> {
    let p = CPath::new(path).ok_or(Errno::EINVAL)?;
    // SAFETY: `p` is NUL-terminated inside its buffer, alive through the
    // call.
    let r = unsafe {
        syscall6(
            INOTIFY_ADD_WATCH,
            int_arg(fd),
            p.buf.as_ptr() as u64,
            u64::from(mask),
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: i32, wd: i32) -> Result<(), Errno> {
    // SAFETY: integer arguments only.
    let r = unsafe { syscall6(INOTIFY_RM_WATCH, int_arg(fd), int_arg(wd), 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `epoll_create1(flags)`.
pub fn epoll_create(flags: u32) -> Result<i32, Errno> {
    // SAFETY: creating an epoll instance touches no memory of ours.
    let r = unsafe { syscall6(EPOLL_CREATE1, u64::from(flags), 0, 0, 0, 0, 0) };
    result(r).and_then(fd_of)
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})` (the packed
/// 12-byte `struct epoll_event` of x86_64).
pub fn epoll_add(epfd: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
    let mut event = [0u8; 12];
    event[..4].copy_from_slice(&events.to_le_bytes());
    event[4..].copy_from_slice(&data.to_le_bytes());
    // SAFETY: the kernel reads 12 bytes at `event`, alive through the call.
    let r = unsafe {
        syscall6(
            EPOLL_CTL,
            int_arg(epfd),
            EPOLL_CTL_ADD,
            int_arg(fd),
            event.as_ptr() as u64,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}
