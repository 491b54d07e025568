//! userfaultfd for the eager fill: the plan copies stored pages into fresh
//! private anonymous areas with `UFFDIO_COPY`, which allocates each page
//! and copies into it without zeroing it first and without a page fault
//! per page (a `pread` into fresh memory pays both; see KERNEL.md and
//! `tools/fill-bench`). The fd is made here, in stage 1, so the plan knows
//! its number; the plan registers the areas, copies, and closes it (which
//! unregisters them) before the areas get their final protections.
//!
//! `UFFD_USER_MODE_ONLY`: the fill never takes a fault on a registered
//! area (it copies every stored page itself and closes the fd before the
//! task runs), so the kind of userfaultfd any user may make is enough.
//!
//! # Safety
//! The only memory the calls here touch is the `uffdio_api` struct on this
//! stack.
//!
//! # References
//! `userfaultfd(2)`, `ioctl_userfaultfd(2)`, linux/userfaultfd.h.

use super::{result, syscall6, O_CLOEXEC};

/// `userfaultfd(2)`.
const NR_USERFAULTFD: u64 = 323;
/// `ioctl(2)`.
pub const NR_IOCTL: u64 = 16;
/// `UFFD_USER_MODE_ONLY`.
const UFFD_USER_MODE_ONLY: u64 = 1;
/// `UFFD_API`, and the ioctl numbers (`_IOWR(0xAA, n, struct)`).
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: u64 = 0xc018_aa3f;
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
pub const UFFDIO_COPY: u64 = 0xc028_aa03;
/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = 1;
/// `struct uffdio_register` (range start, len, mode, ioctls out) and
/// `struct uffdio_copy` (dst, src, len, mode, copy out): sizes in bytes.
pub const REGISTER_SIZE: usize = 32;
pub const COPY_SIZE: usize = 40;

/// A userfaultfd of this process, its API handshake done, for the fill;
/// `None` when this kernel refuses one (the fill then reads every page
/// with `pread`, as before).
pub fn open_for_fill() -> Option<i32> {
    // SAFETY: makes an fd; touches no memory.
    let fd = result(unsafe {
        syscall6(
            NR_USERFAULTFD,
            u64::from(O_CLOEXEC) | UFFD_USER_MODE_ONLY,
            0,
            0,
            0,
            0,
            0,
        )
    })
    .ok()?;
    let fd = i32::try_from(fd).ok()?;
    // `struct uffdio_api { api, features, ioctls }`: no features asked.
    let mut api = [UFFD_API, 0, 0];
    // SAFETY: UFFDIO_API reads and writes the 24-byte struct at `api`,
    // which lives on this stack for the call.
    let done = result(unsafe {
        syscall6(
            NR_IOCTL,
            super::int_arg(fd),
            UFFDIO_API,
            api.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    });
    // The ioctls the fd offers once registered include UFFDIO_COPY
    // (bit _UFFDIO_COPY = 3 of the register answer; checked by the
    // kernel at each copy anyway).
    if done.is_err() {
        let _ = super::close(fd);
        return None;
    }
    Some(fd)
}

// ---- The lazy restore (`--lazy`): the task's userfaultfd and the page
// server's calls (`crate::lazy`). ----

/// `O_NONBLOCK`: the page server reads the fd's messages until `EAGAIN`.
const O_NONBLOCK: u64 = 0o4000;
/// `UFFD_FEATURE_EVENT_FORK`, `_EVENT_REMAP`, `_EVENT_REMOVE`,
/// `_EVENT_UNMAP`: a child of the task keeps its areas registered (with a
/// new fd sent to the server), and a moved, dropped (`MADV_DONTNEED`) or
/// unmapped range is told to the server before it can fill it again.
/// `UFFD_FEATURE_THREAD_ID` too: a fault says which thread took it (the
/// server takes a pidfd of a child's first faulting thread, to kill it if
/// it cannot go on).
pub const LAZY_FEATURES: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 8);
/// `UFFD_FEATURE_POISON` (Linux 6.6), asked for when the kernel has it:
/// pages a dying server leaves poisoned, not zero.
const FEATURE_POISON: u64 = 1 << 14;
/// `UFFDIO_POISON` (`struct uffdio_poison`: range, mode, result).
const UFFDIO_POISON: u64 = 0xc020_aa08;
/// `UFFDIO_ZEROPAGE` (`struct uffdio_zeropage`: range, mode, result) and
/// `UFFDIO_WAKE` (`struct uffdio_range`).
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_WAKE: u64 = 0x8010_aa02;

/// The message kinds of `struct uffd_msg`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_FORK: u8 = 0x13;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

/// `struct uffd_msg`: 8 bytes of header (the event in the first), then 24
/// of arguments: pagefault (flags, address, ptid), fork (ufd), remap
/// (from, to, len), remove/unmap (start, end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdMsg {
    pub head: u64,
    pub arg: [u64; 3],
}

impl UffdMsg {
    pub fn event(&self) -> u8 {
        self.head.to_le_bytes()[0]
    }
}

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK)` without `UFFD_USER_MODE_ONLY`
/// (the task's faults taken in the kernel, as a `read(2)` into a page not
/// yet in, must wait for the server too: that needs `CAP_SYS_PTRACE` or
/// `vm.unprivileged_userfaultfd`), with [`LAZY_FEATURES`]: its
/// `UFFD_FEATURE_EVENT_FORK` needs `CAP_SYS_PTRACE` in any case (`EPERM`
/// from `UFFDIO_API` otherwise, whatever the sysctl says).
///
/// # References
/// `userfaultfd(2)`: "UFFD_USER_MODE_ONLY", "Userfaultfd operation".
pub fn open_for_lazy() -> Result<i32, super::Errno> {
    // SAFETY: makes an fd; touches no memory.
    let fd = result(unsafe {
        syscall6(
            NR_USERFAULTFD,
            u64::from(O_CLOEXEC) | O_NONBLOCK,
            0,
            0,
            0,
            0,
            0,
        )
    })?;
    let fd = i32::try_from(fd).map_err(|_| super::Errno::EINVAL)?;
    let api_call = |features: u64| {
        let mut api = [UFFD_API, features, 0];
        // SAFETY: UFFDIO_API reads and writes the 24-byte struct at
        // `api`, which lives on this stack for the call.
        result(unsafe {
            syscall6(
                NR_IOCTL,
                super::int_arg(fd),
                UFFDIO_API,
                api.as_mut_ptr() as u64,
                0,
                0,
                0,
            )
        })
    };
    // Without poison on kernels before 6.6 (`EINVAL` for an unknown
    // feature; a failed UFFDIO_API leaves the fd fresh for another).
    let done = match api_call(LAZY_FEATURES | FEATURE_POISON) {
        Err(super::Errno::EINVAL) => api_call(LAZY_FEATURES),
        other => other,
    };
    if let Err(e) = done {
        let _ = super::close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// `ioctl(fd, UFFDIO_COPY, {dst, src, len, 0})`: copy `src` (this
/// process's memory) into the registered range at `dst` of the fd's
/// process. Returns the bytes copied, which may be fewer than asked when
/// a page of the range is present already (`EEXIST` for the first) or
/// the task's memory map is changing (`EAGAIN`).
pub fn copy(fd: i32, dst: u64, src: &[u8]) -> (u64, Result<(), super::Errno>) {
    let mut c = [dst, src.as_ptr() as u64, src.len() as u64, 0, 0];
    // SAFETY: the kernel reads `src` (borrowed for the call) and reads
    // and writes the 40-byte struct at `c`, on this stack; it writes into
    // the other process's memory only.
    let r = result(unsafe {
        syscall6(
            NR_IOCTL,
            super::int_arg(fd),
            UFFDIO_COPY,
            c.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    });
    // `copy`: bytes copied, or a negative errno.
    let done = i64::from_ne_bytes(c[4].to_ne_bytes());
    (u64::try_from(done).unwrap_or(0), r.map(|_| ()))
}

/// `ioctl(fd, UFFDIO_ZEROPAGE, {start, len})`: zero pages into a
/// registered range (what a page of the task dropped or never stored
/// reads). Returns like [`copy`].
pub fn zeropage(fd: i32, start: u64, len: u64) -> (u64, Result<(), super::Errno>) {
    let mut z = [start, len, 0, 0];
    // SAFETY: the kernel reads and writes the 32-byte struct at `z`, on
    // this stack; no memory of ours is touched otherwise.
    let r = result(unsafe {
        syscall6(
            NR_IOCTL,
            super::int_arg(fd),
            UFFDIO_ZEROPAGE,
            z.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    });
    let done = i64::from_ne_bytes(z[3].to_ne_bytes());
    (u64::try_from(done).unwrap_or(0), r.map(|_| ()))
}

/// `ioctl(fd, UFFDIO_POISON, {start, len})`: a page not filled yet
/// raises `SIGBUS` when touched, even once the fd is closed.
pub fn poison(fd: i32, start: u64, len: u64) -> (u64, Result<(), super::Errno>) {
    let mut z = [start, len, 0, 0];
    // SAFETY: the kernel reads and writes the 32-byte struct at `z`, on
    // this stack; no memory of ours is touched otherwise.
    let r = result(unsafe {
        syscall6(
            NR_IOCTL,
            super::int_arg(fd),
            UFFDIO_POISON,
            z.as_mut_ptr() as u64,
            0,
            0,
            0,
        )
    });
    let done = i64::from_ne_bytes(z[3].to_ne_bytes());
    (u64::try_from(done).unwrap_or(0), r.map(|_| ()))
}

/// `ioctl(fd, UFFDIO_WAKE, {start, len})`: wake the threads waiting on a
/// fault in the range (its page came in by another copy).
pub fn wake(fd: i32, start: u64, len: u64) -> Result<(), super::Errno> {
    let w = [start, len];
    // SAFETY: the kernel reads the 16-byte struct at `w`, on this stack.
    let r = unsafe {
        syscall6(
            NR_IOCTL,
            super::int_arg(fd),
            UFFDIO_WAKE,
            w.as_ptr() as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `read(fd, msgs)`: the messages waiting on a userfaultfd (non-blocking:
/// `EAGAIN` when none).
pub fn read_msgs(fd: i32, msgs: &mut [UffdMsg]) -> Result<usize, super::Errno> {
    let len = core::mem::size_of_val(msgs);
    // SAFETY: the kernel writes at most `len` bytes into `msgs`, which we
    // own mutably; a `UffdMsg` is plain integers, any bytes are valid.
    let r = unsafe {
        syscall6(
            super::nr::READ,
            super::int_arg(fd),
            msgs.as_mut_ptr() as u64,
            len as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|n| usize::try_from(n).unwrap_or(0) / core::mem::size_of::<UffdMsg>())
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)`: the line over
/// which the plan sends the task's userfaultfd to the page server.
pub fn socketpair() -> Result<[i32; 2], super::Errno> {
    const NR_SOCKETPAIR: u64 = 53;
    const SOCK_STREAM_CLOEXEC: u64 = 1 | 0o2_000_000;
    let mut fds = [-1i32; 2];
    // SAFETY: the kernel writes two ints at `fds`, on this stack.
    let r = unsafe {
        syscall6(
            NR_SOCKETPAIR,
            1,
            SOCK_STREAM_CLOEXEC,
            0,
            fds.as_mut_ptr() as u64,
            0,
            0,
        )
    };
    result(r).map(|_| fds)
}

/// `sendmsg`'s syscall number (the plan sends the fd).
pub const NR_SENDMSG: u64 = 46;

/// `recvmsg(sock)` of one byte with one fd passed (`SCM_RIGHTS`): the fd,
/// or `None` at end of file (the loader gave up before sending it).
pub fn recv_fd(sock: i32) -> Result<Option<i32>, super::Errno> {
    const NR_RECVMSG: u64 = 47;
    const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
    let mut byte = [0u8; 1];
    let iov = [byte.as_mut_ptr() as u64, 1];
    // `struct cmsghdr` (len, level, type) and one int, padded.
    let mut control = [0u64; 4];
    let mut msg = [
        0,
        0,
        iov.as_ptr() as u64,
        1,
        control.as_mut_ptr() as u64,
        core::mem::size_of_val(&control) as u64,
        0,
    ];
    // SAFETY: the kernel reads `msg` and `iov` and writes at most one byte
    // at `byte`, `controllen` bytes at `control` and the lengths in `msg`,
    // all on this stack for the call.
    let r = unsafe {
        syscall6(
            NR_RECVMSG,
            super::int_arg(sock),
            msg.as_mut_ptr() as u64,
            MSG_CMSG_CLOEXEC,
            0,
            0,
            0,
        )
    };
    if result(r)? == 0 {
        return Ok(None);
    }
    // SOL_SOCKET 1, SCM_RIGHTS 1, length 20 (header 16 + one int).
    let kind = control[1].to_le_bytes();
    if control[0] != 20 || kind != [1, 0, 0, 0, 1, 0, 0, 0] {
        return Err(super::Errno::EINVAL);
    }
    let fd = u32::try_from(control[2] & 0xffff_ffff).unwrap_or(u32::MAX);
    Ok(Some(i32::try_from(fd).map_err(|_| super::Errno::EINVAL)?))
}

/// `fork()` (`clone(SIGCHLD)`): 0 in the child, its pid in the parent.
pub fn fork() -> Result<i32, super::Errno> {
    const NR_FORK: u64 = 57;
    // SAFETY: the child gets a copy of this address space and continues
    // here; nothing is shared that either could corrupt for the other.
    let r = unsafe { syscall6(NR_FORK, 0, 0, 0, 0, 0, 0) };
    result(r).map(|p| i32::try_from(p).unwrap_or(-1))
}

/// `wait4(pid, &status, 0, NULL)`: reap the child `pid`; its status.
pub fn wait_child(pid: i32) -> Result<i32, super::Errno> {
    const NR_WAIT4: u64 = 61;
    let mut status = 0i32;
    loop {
        // SAFETY: the kernel writes one int at `status`, on this stack.
        let r = unsafe {
            syscall6(
                NR_WAIT4,
                super::int_arg(pid),
                core::ptr::addr_of_mut!(status) as u64,
                0,
                0,
                0,
                0,
            )
        };
        match result(r) {
            Err(super::Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(status),
        }
    }
}

/// `setsid()`: a session of its own (no terminal, out of the caller's
/// process group, so its keyboard signals do not reach it).
pub fn setsid() -> Result<(), super::Errno> {
    const NR_SETSID: u64 = 112;
    // SAFETY: no memory involved.
    result(unsafe { syscall6(NR_SETSID, 0, 0, 0, 0, 0, 0) }).map(|_| ())
}

/// `close_range(first, last, 0)`.
pub fn close_range(first: u32, last: u32) -> Result<(), super::Errno> {
    // SAFETY: closing fds touches no memory of ours.
    let r = unsafe {
        syscall6(
            super::nr::CLOSE_RANGE,
            u64::from(first),
            u64::from(last),
            0,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `pidfd_open(pid, flags)`: an fd that names the process (or, with
/// [`PIDFD_THREAD`], the thread) `pid` for as long as the fd lives, so a
/// signal sent through it can never reach a later holder of the number.
pub fn pidfd_open(pid: i32, flags: u64) -> Result<i32, super::Errno> {
    const NR_PIDFD_OPEN: u64 = 434;
    // SAFETY: makes an fd; touches no memory.
    let r = unsafe { syscall6(NR_PIDFD_OPEN, super::int_arg(pid), flags, 0, 0, 0, 0) };
    result(r).map(|fd| i32::try_from(fd).unwrap_or(-1))
}

/// `PIDFD_THREAD` (`O_EXCL`): `pidfd_open` of a thread id (Linux 6.9).
pub const PIDFD_THREAD: u64 = 0o200;

/// `pidfd_send_signal(pidfd, SIGKILL, NULL, 0)`: kill the process the
/// pidfd names (a no-op once it is gone: its number is never reused for
/// the fd).
pub fn kill_task(pidfd: i32) {
    const NR_PIDFD_SEND_SIGNAL: u64 = 424;
    // SAFETY: no memory involved (no siginfo passed).
    let _ = unsafe { syscall6(NR_PIDFD_SEND_SIGNAL, super::int_arg(pidfd), 9, 0, 0, 0, 0) };
}

/// The page server's credentials: those the task will have (`ids`:
/// groups, then real/effective/saved gid and uid; `None`: the loader's,
/// which the task keeps), no capability at all, `no_new_privs`, and not
/// dumpable (the task, of the same user, may not ptrace it or read its
/// memory). Each step in that order, so the id changes still have the
/// privilege they need; the first failure is returned with its step.
pub fn drop_privileges(
    ids: Option<(&[u32], [u32; 3], [u32; 3])>,
) -> Result<(), (&'static str, super::Errno)> {
    const NR_SETGROUPS: u64 = 116;
    const NR_SETRESUID: u64 = 117;
    const NR_SETRESGID: u64 = 119;
    const NR_CAPSET: u64 = 126;
    const PR_SET_DUMPABLE: u64 = 4;
    const PR_SET_NO_NEW_PRIVS: u64 = 38;
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let step = |what: &'static str, r: i64| result(r).map(|_| ()).map_err(|e| (what, e));
    if let Some((groups, gid, uid)) = ids {
        let g = |i: usize| u64::from(gid[i]);
        let u = |i: usize| u64::from(uid[i]);
        // SAFETY: the kernel reads `groups.len()` ints at `groups`,
        // borrowed for the call.
        let r = unsafe {
            syscall6(
                NR_SETGROUPS,
                groups.len() as u64,
                groups.as_ptr() as u64,
                0,
                0,
                0,
                0,
            )
        };
        step("setgroups", r)?;
        // SAFETY: no memory involved.
        step("setresgid", unsafe {
            syscall6(NR_SETRESGID, g(0), g(1), g(2), 0, 0, 0)
        })?;
        // SAFETY: no memory involved.
        step("setresuid", unsafe {
            syscall6(NR_SETRESUID, u(0), u(1), u(2), 0, 0, 0)
        })?;
    }
    // `struct __user_cap_header_struct { version, pid 0 }` and two
    // `struct __user_cap_data_struct { effective, permitted, inheritable }`,
    // all zero: no capability left in any set.
    let header = [LINUX_CAPABILITY_VERSION_3, 0];
    let data = [0u32; 6];
    // SAFETY: the kernel reads the 8-byte header and the 24 bytes of data,
    // on this stack for the call.
    step("capset", unsafe {
        syscall6(
            NR_CAPSET,
            header.as_ptr() as u64,
            data.as_ptr() as u64,
            0,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: no memory involved.
    step("PR_SET_NO_NEW_PRIVS", unsafe {
        syscall6(super::nr::PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0)
    })?;
    // SAFETY: no memory involved.
    step("PR_SET_DUMPABLE", unsafe {
        syscall6(super::nr::PRCTL, PR_SET_DUMPABLE, 0, 0, 0, 0, 0)
    })
}

/// `sched_yield()`: let the task's thread that waits for an event's
/// completion run (a copy meanwhile returns `EAGAIN`).
pub fn yield_now() {
    const NR_SCHED_YIELD: u64 = 24;
    // SAFETY: no memory involved.
    let _ = unsafe { syscall6(NR_SCHED_YIELD, 0, 0, 0, 0, 0, 0) };
}

/// `exit(code)`: this thread (the forked helpers have one).
pub fn exit_thread(code: i32) -> ! {
    loop {
        // SAFETY: ends the thread; touches no memory.
        unsafe { syscall6(super::nr::EXIT, super::int_arg(code), 0, 0, 0, 0, 0) };
    }
}
