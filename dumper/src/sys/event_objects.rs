//! The calls that read the event-loop objects behind a task's fds through
//! copies of them: a timerfd's setting (`timerfd_gettime`), a clock's time,
//! an inotify watch's file from its handle (`open_by_handle_at`), and
//! whether an epoll item watches a given file (`kcmp(KCMP_EPOLL_TFD)`).
//!
//! # Safety
//!
//! Every call passes integers, or pointers to buffers owned by the caller
//! with their lengths; every returned fd is owned at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use zerocopy::IntoBytes;

/// `kcmp` type comparing a file with an epoll item's target.
const KCMP_EPOLL_TFD: libc::c_int = 7;

/// A time as (seconds, nanoseconds).
pub type Time = (u64, u64);

fn time_of(t: libc::timespec) -> Time {
    (
        u64::try_from(t.tv_sec).unwrap_or(0),
        u64::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// `timerfd_gettime(fd)`: (time left, interval). On a periodic timer that
/// expired unread it also moves the expiry on and counts the expirations
/// missed in its `ticks`, as a `read` would before returning them: nothing
/// the task can see changes.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<(Time, Time)> {
    // SAFETY: an all-zero itimerspec is a valid value.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerspec to `cur`, which lives
    // through the call.
    let r = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &raw mut cur) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((time_of(cur.it_value), time_of(cur.it_interval)))
}

/// `clock_gettime(clock)`.
pub fn clock_now(clock: libc::clockid_t) -> io::Result<Time> {
    // SAFETY: an all-zero timespec is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one timespec to `t`.
    let r = unsafe { libc::clock_gettime(clock, &raw mut t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(time_of(t))
}

/// `open_by_handle_at(mount, {bytes, type, handle}, O_PATH)`: the file a
/// handle names on the filesystem `mount` is on (needs
/// CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount: BorrowedFd<'_>, kind: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    let len =
        u32::try_from(handle.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // struct file_handle: u32 handle_bytes, int handle_type, bytes; as
    // u32 words so that it is aligned.
    let mut words = vec![0u32; 2 + handle.len().div_ceil(4)];
    words[0] = len;
    words[1] = u32::from_ne_bytes(kind.to_ne_bytes());
    words[2..]
        .as_mut_bytes()
        .get_mut(..handle.len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        .copy_from_slice(handle);
    // SAFETY: `words` holds a struct file_handle with `handle_bytes` bytes
    // of handle after its two header words, and lives through the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            words.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `file` (an fd of ours) is the target of the `nth` (0-based)
/// item for fd number `tfd` in the epoll instance `epoll` (an fd of ours):
/// `kcmp(self, self, KCMP_EPOLL_TFD, file, {epoll, tfd, nth}) == 0`.
pub fn epoll_item_is(
    file: BorrowedFd<'_>,
    epoll: BorrowedFd<'_>,
    tfd: i32,
    nth: u32,
) -> io::Result<bool> {
    let slot: [u32; 3] = [
        u32::try_from(epoll.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        u32::try_from(tfd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        nth,
    ];
    let me = std::process::id();
    // SAFETY: `slot` is the struct kcmp_epoll_slot the call reads, alive
    // through the call; the rest are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            me,
            me,
            KCMP_EPOLL_TFD,
            file.as_raw_fd(),
            slot.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// Object makers for the unit tests of `crate::objects` (which have no
/// unsafe code of their own).
#[cfg(test)]
pub mod testing {
    use super::*;

    fn owned(fd: libc::c_int) -> OwnedFd {
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: the kernel just returned `fd`; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// `timerfd_create(clock, TFD_CLOEXEC)`.
    pub fn timerfd(clock: libc::clockid_t) -> OwnedFd {
        // SAFETY: integer arguments only.
        owned(unsafe { libc::timerfd_create(clock, libc::TFD_CLOEXEC) })
    }

    /// `timerfd_settime(fd, flags, {interval, value})`.
    pub fn arm(fd: &OwnedFd, flags: libc::c_int, value: (i64, i64), interval: (i64, i64)) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: interval.0,
                tv_nsec: interval.1,
            },
            it_value: libc::timespec {
                tv_sec: value.0,
                tv_nsec: value.1,
            },
        };
        // SAFETY: `spec` lives through the call; no old value is asked.
        let r = unsafe {
            libc::timerfd_settime(fd.as_raw_fd(), flags, &raw const spec, std::ptr::null_mut())
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub fn epoll() -> OwnedFd {
        // SAFETY: integer arguments only.
        owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
    }

    /// `epoll_ctl(ep, EPOLL_CTL_ADD, fd, {events, data})`.
    pub fn epoll_add(ep: &OwnedFd, fd: &OwnedFd, events: u32, data: u64) {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` lives through the call.
        let r = unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &raw mut ev,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    /// `eventfd(0, EFD_CLOEXEC)`.
    pub fn eventfd() -> OwnedFd {
        // SAFETY: integer arguments only.
        owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
    }

    /// `inotify_init1(IN_CLOEXEC)`.
    pub fn inotify() -> OwnedFd {
        // SAFETY: integer arguments only.
        owned(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })
    }

    /// `inotify_add_watch(fd, path, mask)`: the wd.
    pub fn add_watch(fd: &OwnedFd, path: &std::path::Path, mask: u32) -> i32 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path alive through the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
        assert!(wd > 0, "{}", io::Error::last_os_error());
        wd
    }
}
