//! What stage 1 asks of the operating system, behind one narrow trait, so
//! that its decisions (which file is the same file, which fd is reopened,
//! which credentials the task gets, whether the gadgets are usable) are
//! unit-tested without root against a fake (`check::tests`), and run for
//! real through [`crate::sys::os::Kernel`] (youki's `Syscall` trait is the
//! model).
//!
//! Only what a decision reads or does goes here: the scratch memory, the
//! image mapping and the kernel probes of `memlimits`/`mm_state` stay real
//! (they change nothing a test can observe).

use core::fmt;

use crate::sys::{Errno, Stat};

/// The system calls of stage 1's decisions.
pub trait Os {
    /// `openat(AT_FDCWD, path, flags)`; `O_CLOEXEC` is the caller's to add.
    fn open(&self, path: &[u8], flags: u32) -> Result<i32, Errno>;
    fn fstat(&self, fd: i32) -> Result<Stat, Errno>;
    fn close(&self, fd: i32);
    /// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
    fn dup_above(&self, fd: i32, min: i32) -> Result<i32, Errno>;
    /// `fcntl(fd, F_SETFL, flags)`.
    fn set_status_flags(&self, fd: i32, flags: u32) -> Result<(), Errno>;
    /// `lseek(fd, off, SEEK_SET)`.
    fn seek_to(&self, fd: i32, off: u64) -> Result<u64, Errno>;
    fn fchdir(&self, fd: i32) -> Result<(), Errno>;
    fn pread(&self, fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno>;
    /// `fcntl(fd, F_SETLEASE, F_RDLCK)` without a lease-break signal: see
    /// [`super::stable`].
    fn take_read_lease(&self, fd: i32) -> Result<(), Errno>;
    /// Whether the lease taken on `fd` is still held with no writer
    /// waiting (`F_GETLEASE` is `F_RDLCK`).
    fn lease_intact(&self, fd: i32) -> bool;
    /// `(cur, max)` of this process's limit `resource`.
    fn get_rlimit(&self, resource: u32) -> Result<(u64, u64), Errno>;
    fn set_rlimit(&self, resource: u32, cur: u64, max: u64) -> Result<(), Errno>;
    /// `getresuid`, `getresgid`.
    fn ids(&self) -> ([u32; 3], [u32; 3]);
    /// The effective capability set (bit n: capability n).
    fn effective_caps(&self) -> u64;
    fn securebits(&self) -> u32;
    /// `fstatfs(fd)`'s `f_flags`: the flags of the mount `fd` is on.
    fn mount_flags(&self, fd: i32) -> Result<u64, Errno>;
    /// `getgroups`: this thread's supplementary groups into `buf`.
    fn groups(&self, buf: &mut [u32]) -> Result<usize, Errno>;
    /// `setgroups` for this thread.
    fn set_groups(&self, groups: &[u32]) -> Result<(), Errno>;
    /// `setfsgid(gid)`, then `setfsuid(uid)`, each checked: the old
    /// `(fsuid, fsgid)`. Only the ids file access is checked with change.
    fn set_fs_ids(&self, uid: u32, gid: u32) -> Result<(u32, u32), Errno>;
    fn getpid(&self) -> i32;
    /// `prctl(PR_TIMER_CREATE_RESTORE_IDS, GET)`: whether this kernel can
    /// create a POSIX timer with a given id.
    fn timer_restore_ids(&self) -> Result<(), Errno>;
    /// Whether this process may create a POSIX timer on `clock` (one is
    /// created and deleted: [`crate::sys::probe_timer_clock`]).
    fn probe_timer_clock(&self, clock: i32) -> Result<(), Errno>;
    /// XCR0, `None` without XSAVE.
    fn xcr0(&self) -> Option<u64>;
    /// `ARCH_GET_XCOMP_PERM`.
    fn xcomp_perm(&self) -> Result<u64, Errno>;
    /// `ARCH_REQ_XCOMP_PERM`.
    fn request_xcomp_perm(&self, feature: u32) -> Result<(), Errno>;
    fn mxcsr_mask(&self) -> u32;
    /// Where XSAVE component `i` ends (CPUID leaf 0xD).
    fn xsave_component_end(&self, i: u32) -> u32;
    /// The standard-format XSAVE area size for every feature enabled in
    /// XCR0 (CPUID leaf 0xD, 0: EBX): where the last of them ends.
    fn xsave_size(&self) -> u32;
    /// A warning or error line about image `name` for the caller.
    fn report(&self, name: &[u8], what: fmt::Arguments<'_>);

    /// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`.
    fn memfd_create(&self, name: &[u8]) -> Result<i32, Errno>;
    /// `open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode)`: a new unlinked
    /// file on `dir`'s file system.
    fn open_tmpfile(&self, dir: &[u8], mode: u32) -> Result<i32, Errno>;
    /// `openat2(path, O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC,
    /// mode, RESOLVE_NO_SYMLINKS)`: a new file, never through a symbolic
    /// link on the path, never one that is there.
    fn create_new(&self, path: &[u8], mode: u32) -> Result<i32, Errno>;
    /// `linkat(AT_FDCWD, "/proc/self/fd/FD", AT_FDCWD, path,
    /// AT_SYMLINK_FOLLOW)`: give an `O_TMPFILE` a name (fails if `path`
    /// exists).
    fn link_fd(&self, fd: i32, path: &[u8]) -> Result<(), Errno>;
    /// `unlinkat(AT_FDCWD, path, 0)`.
    fn unlink(&self, path: &[u8]) -> Result<(), Errno>;
    fn ftruncate(&self, fd: i32, len: u64) -> Result<(), Errno>;
    fn pwrite(&self, fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno>;
    fn fchmod(&self, fd: i32, mode: u32) -> Result<(), Errno>;
    /// `fcntl(fd, F_ADD_SEALS, seals)`.
    fn add_seals(&self, fd: i32, seals: u32) -> Result<(), Errno>;
    /// `fcntl(fd, F_GET_SEALS)`: the seals of a memfd or other shmem file
    /// (`EINVAL` for a file of any other file system).
    fn get_seals(&self, fd: i32) -> Result<u32, Errno>;

    /// The start of a small file (`/proc/...`) into `buf`: up to
    /// `buf.len()` bytes, read in order (`/proc` files are not all
    /// `pread`-able).
    fn read_file(&self, path: &[u8], buf: &mut [u8]) -> Result<usize, Errno>;

    // The kernel objects behind fds (`crate::objects`).
    /// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end).
    fn pipe(&self) -> Result<(i32, i32), Errno>;
    /// `fcntl(F_SETPIPE_SZ)`: the size set.
    fn set_pipe_size(&self, fd: i32, size: u32) -> Result<u32, Errno>;
    /// `write(fd, buf)`: how many bytes were taken.
    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno>;
    /// `eventfd2(0, flags)`.
    fn eventfd(&self, flags: u32) -> Result<i32, Errno>;
    /// `ioctl(fd, TIOCGWINSZ)`: the window size of the terminal `fd` is
    /// on (ENOTTY: not a terminal).
    fn window_size(&self, fd: i32) -> Result<image_format::records::Winsize, Errno>;
    /// `ioctl(FIONREAD)`: the bytes waiting in a pipe.
    fn bytes_waiting(&self, fd: i32) -> Result<usize, Errno>;
    /// `read(fd, buf)`: how many bytes came.
    fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno>;
    /// `signalfd4(-1, &mask, 8, flags)`.
    fn signalfd(&self, mask: u64, flags: u32) -> Result<i32, Errno>;
    /// `timerfd_create(clock, flags)`.
    fn timerfd_create(&self, clock: u32, flags: u32) -> Result<i32, Errno>;
    /// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`.
    fn timerfd_set_ticks(&self, fd: i32, ticks: u64) -> Result<(), Errno>;
    /// `inotify_init1(flags)`.
    fn inotify_init(&self, flags: u32) -> Result<i32, Errno>;
    /// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
    fn inotify_add_watch(&self, fd: i32, path: &[u8], mask: u32) -> Result<i32, Errno>;
    /// `inotify_rm_watch(fd, wd)`.
    fn inotify_rm_watch(&self, fd: i32, wd: i32) -> Result<(), Errno>;
    /// `epoll_create1(flags)`.
    fn epoll_create(&self, flags: u32) -> Result<i32, Errno>;
    /// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})`.
    fn epoll_add(&self, epfd: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno>;
    // Sockets (`crate::objects::socket`); every socket made is
    // close-on-exec and non-blocking.
    fn socket(&self, family: u32, sock_type: u32, protocol: u32) -> Result<i32, Errno>;
    /// `socketpair(AF_UNIX, sock_type, 0)`.
    fn socketpair(&self, sock_type: u32) -> Result<(i32, i32), Errno>;
    fn setsockopt(&self, fd: i32, level: u32, name: u32, value: &[u8]) -> Result<(), Errno>;
    /// `bind(fd, addr)`, or `connect` when `connect` is true.
    fn bind_or_connect(&self, fd: i32, addr: &[u8], connect: bool) -> Result<(), Errno>;
    fn listen(&self, fd: i32, backlog: u32) -> Result<(), Errno>;
    /// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: bytes taken.
    fn send(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno>;
    fn shutdown(&self, fd: i32, how: u32) -> Result<(), Errno>;
    /// `umask(mask)`: the old mask.
    fn umask(&self, mask: u32) -> u32;
}
