//! The system calls of write tracking: userfaultfd's write-protect
//! ioctls (async for tracking, sync with fault and event messages for
//! the write-protected snapshot, `crate::snapshot::protected`) and the
//! holder's unix socket with an fd passed in `SCM_RIGHTS` (what was written
//! since: `crate::sys::pagemap_scan::written`).
//!
//! # References
//! `Documentation/admin-guide/mm/userfaultfd.rst` ("Write Protect
//! Notifications", `UFFD_FEATURE_WP_ASYNC`),
//! unix(7) (`SCM_RIGHTS`, `SO_PEERCRED`, abstract names).

// The casts here are between the C ABI's fixed widths (socket address
// families, struct sizes of a few dozen bytes, fd numbers the kernel
// gave): none can lose bits.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}

const UFFD_API: u64 = 0xaa;
/// `UFFD_FEATURE_WP_ASYNC`: a write to a protected page unprotects it
/// in the kernel, no fault message: the bit left is `PAGE_IS_WRITTEN`.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// `UFFD_FEATURE_EVENT_REMAP`, `_REMOVE`, `_UNMAP`: an `mremap` move, a
/// `madvise(MADV_DONTNEED/REMOVE)`, a `munmap` of a registered range is a
/// message (the task waits until it is read).
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_WP_UNPOPULATED`: protecting a range also protects its
/// pages not there yet (a marker in the page table), so that the first
/// write to one faults too.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `uffd_msg.event` values.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `sizeof(struct uffd_msg)`.
pub const UFFD_MSG_LEN: usize = 32;

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(uffd, UFFDIO_API, {UFFD_API, WP_ASYNC})`. Not
/// `WP_UNPOPULATED`: protecting a range would then fill the page tables of
/// all of it with markers (a 16 TiB reservation: gigabytes); an anonymous
/// page not there when protected is written when it first appears (a
/// write fault), or is the zero page (a read), which is never stored.
pub fn enable_wp_async(uffd: BorrowedFd<'_>) -> io::Result<()> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC,
        ioctls: 0,
    };
    // SAFETY: `api` is a live uffdio_api the kernel reads and writes.
    check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, &mut api) })
}

/// `ioctl(uffd, UFFDIO_API, {UFFD_API, features})` without `WP_ASYNC`:
/// a write to a protected page blocks the writer and is a fault message
/// for the uffd's reader, who unprotects the page to let it go on.
pub fn enable_wp_sync(uffd: BorrowedFd<'_>, features: u64) -> io::Result<()> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `api` is a live uffdio_api the kernel reads and writes.
    check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, &mut api) })
}

/// `ioctl(uffd, UFFDIO_WRITEPROTECT, {start, len, 0})`: unprotect, and
/// wake the threads blocked in a fault on the range.
pub fn unprotect(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut wp = UffdioWriteprotect {
        start,
        len,
        mode: 0,
    };
    // SAFETY: `wp` is a live uffdio_writeprotect the kernel reads.
    check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut wp) })
}

/// `read(uffd, buf)` of whole `uffd_msg`s (the uffd is non-blocking):
/// how many bytes, 0 when none is pending.
pub fn read_messages(uffd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live and writable for its length.
    let n = unsafe { libc::read(uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK)` of this process (crdump's own,
/// for a page of its own).
pub fn own_userfaultfd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd`, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One page of private anonymous memory of this process, never touched.
pub struct AnonPage {
    addr: u64,
    mapped: bool,
}

impl AnonPage {
    /// `mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)`.
    pub fn map() -> io::Result<AnonPage> {
        // SAFETY: a new mapping at an address the kernel picks; nothing
        // of this process is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonPage {
            addr: p as u64,
            mapped: true,
        })
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// `munmap` it.
    pub fn unmap(&mut self) {
        if self.mapped {
            self.mapped = false;
            // SAFETY: the page this value mapped, used by nothing else.
            unsafe {
                libc::munmap(self.addr as *mut libc::c_void, 4096);
            }
        }
    }
}

impl Drop for AnonPage {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// `ioctl(uffd, UFFDIO_REGISTER, {start, len, MODE_WP})`: the uffd's mm
/// is the task's (it made it), whoever calls.
pub fn register_wp(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut reg = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `reg` is a live uffdio_register the kernel reads and writes.
    check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) })
}

/// `ioctl(uffd, UFFDIO_WRITEPROTECT, {start, len, MODE_WP})`.
pub fn write_protect(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut wp = UffdioWriteprotect {
        start,
        len,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: `wp` is a live uffdio_writeprotect the kernel reads.
    check(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut wp) })
}

/// A unix stream socket bound to the abstract `name`, listening.
pub fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = abstract_addr(name)?;
    // SAFETY: `addr` is a sockaddr_un of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
    Ok(fd)
}

/// A unix stream socket connected to the abstract `name`.
pub fn connect_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = abstract_addr(name)?;
    // SAFETY: `addr` is a sockaddr_un of `len` bytes.
    check(unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) })?;
    Ok(fd)
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: the kernel just returned `fd`, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // sun_path[0] stays 0: the abstract namespace.
    for (d, &s) in addr.sun_path[1..].iter_mut().zip(name) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

/// `accept4(listener, NULL, NULL, SOCK_CLOEXEC)`.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: no address is asked for.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: the kernel just returned `fd`, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The uid of the process at the other end of `sock` (`SO_PEERCRED`).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` has `len` bytes for the kernel to fill.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// Sends `bytes` on `sock`, with `fd` in `SCM_RIGHTS` when given.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` has a control buffer of `space` bytes, room for
        // one header with one fd (`control` is 32 bytes, 8-aligned).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live buffers (`bytes`, `control`).
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes from `sock` in one message, and the
/// fd passed with them, if any.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<OwnedFd>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at live buffers (`buf`, `control`).
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    let mut fd = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`;
    // CMSG_FIRSTHDR/NXTHDR stay inside them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(fd)
}

/// `poll` on `a` and `b` for input, without a timeout: which is ready
/// (no allocation: the holder calls it after `fork`).
pub fn poll_two(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `p` holds two live pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if r >= 0 {
            return Ok((p[0].revents != 0, p[1].revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs `serve` in a new process that is not this one's child (a double
/// fork: the middle one exits at once and is reaped here), in a session
/// of its own with only the fds `keep` besides `/dev/null` on 0-2.
///
/// `serve` must not allocate or take locks: this process may have other
/// threads, whose locks the copy would hold forever.
pub fn spawn_detached(keep: [RawFd; 3], serve: impl FnOnce()) -> io::Result<()> {
    // SAFETY: the child makes only syscalls (fork, _exit) before it exits;
    // the grandchild runs `serve`, which the caller promises is safe.
    let child = unsafe { libc::fork() };
    match child {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: as above.
            if unsafe { libc::fork() } == 0 {
                detach_from_caller(keep);
                serve();
            }
            exit_now(0)
        }
        pid => {
            reap(pid);
            Ok(())
        }
    }
}

/// `setsid()`, `/dev/null` on fds 0-2 and every fd above 2 closed but
/// `keep` (the holder's own): it keeps no terminal and nothing of crdump.
/// No allocation (called after `fork`).
pub fn detach_from_caller(mut keep: [RawFd; 3]) {
    keep.sort_unstable();
    // SAFETY: integer arguments only; the fds touched are this process's;
    // `set` is a live sigset the kernel reads.
    unsafe {
        libc::setsid();
        // crdump's handlers (a Ctrl-C cancels a dump) and mask are not the
        // holder's: a signal that would end a plain process ends it.
        for sig in 1..libc::SIGRTMIN() {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 && !keep.contains(&null) {
                libc::close(null);
            }
        }
        let mut next: RawFd = 3;
        for &k in &keep {
            if k > next {
                libc::syscall(libc::SYS_close_range, next, k - 1, 0);
            }
            next = next.max(k + 1);
        }
        libc::syscall(libc::SYS_close_range, next, u32::MAX, 0);
    }
}

/// `_exit(code)`.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process, touching nothing of it.
    unsafe { libc::_exit(code) }
}

/// `waitpid(pid, NULL, 0)`.
pub fn reap(pid: i32) {
    // SAFETY: no status is asked for.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// This process's real uid.
pub fn uid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::getuid() }
}
