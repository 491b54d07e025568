//! Raw Linux system calls for x86_64, without libc.
//!
//! # Safety
//! This module and `arch` are the only places of the crate with `unsafe`.
//! Every wrapper exported here is safe to call: it takes Rust slices for
//! the memory the kernel reads or writes, so the kernel sees valid addresses
//! and lengths; the few that hand out `'static` memory (`mmap`) own the
//! mapping they return.
//!
//! # References
//! `syscall(2)`, `arch/x86/entry/syscalls/syscall_64.tbl`.

use core::arch::asm;

pub mod event_objects;
pub mod machine;
pub mod mm;
pub mod objects;
pub mod os;
pub mod shmem;
pub mod sockets;
pub mod startup;
pub mod terminal;
pub mod uffd;

/// The real OS for stage 1.
pub fn kernel_os() -> os::Kernel {
    os::Kernel
}

/// System call numbers (x86_64).
pub mod nr {
    pub const READ: u64 = 0;
    pub const CAPGET: u64 = 125;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const FSTAT: u64 = 5;
    pub const LSEEK: u64 = 8;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const RT_SIGACTION: u64 = 13;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const RT_SIGRETURN: u64 = 15;
    pub const RT_SIGTIMEDWAIT: u64 = 128;
    pub const PREAD64: u64 = 17;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
    pub const SETITIMER: u64 = 38;
    pub const GETPID: u64 = 39;
    pub const EXIT: u64 = 60;
    pub const FCNTL: u64 = 72;
    pub const FCHDIR: u64 = 81;
    pub const UMASK: u64 = 95;
    pub const GETUID: u64 = 102;
    pub const GETGID: u64 = 104;
    pub const SETRESUID: u64 = 117;
    pub const GETRESUID: u64 = 118;
    pub const SETRESGID: u64 = 119;
    pub const GETRESGID: u64 = 120;
    pub const SETGROUPS: u64 = 116;
    pub const GETGROUPS: u64 = 115;
    pub const SETFSUID: u64 = 122;
    pub const SETFSGID: u64 = 123;
    pub const FSTATFS: u64 = 138;
    pub const PERSONALITY: u64 = 135;
    pub const PRCTL: u64 = 157;
    pub const ARCH_PRCTL: u64 = 158;
    pub const GETTID: u64 = 186;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const EXIT_GROUP: u64 = 231;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const DUP3: u64 = 292;
    pub const PRLIMIT64: u64 = 302;
    pub const OPENAT: u64 = 257;
    pub const READLINKAT: u64 = 267;
    pub const RSEQ: u64 = 334;
    pub const CLOSE_RANGE: u64 = 436;
    pub const CLONE3: u64 = 435;
    pub const FUTEX: u64 = 202;
    pub const TIMER_CREATE: u64 = 222;
    pub const TIMER_SETTIME: u64 = 223;
    pub const TIMER_DELETE: u64 = 226;
}

pub const AT_FDCWD: i32 = -100;
pub const O_RDONLY: u32 = 0;
pub const O_RDWR: u32 = 2;
pub const O_CLOEXEC: u32 = 0o2_000_000;
pub const O_DIRECTORY: u32 = 0o200_000;
pub const O_PATH: u32 = 0o10_000_000;
pub const O_NOCTTY: u32 = 0o400;
pub const O_NONBLOCK: u32 = 0o4000;
pub const O_CREAT: u32 = 0o100;
pub const O_EXCL: u32 = 0o200;
pub const O_TRUNC: u32 = 0o1000;

pub const PROT_READ: u64 = 1;
pub const PROT_WRITE: u64 = 2;
pub const PROT_EXEC: u64 = 4;
pub const MAP_SHARED: u64 = 0x01;
pub const MAP_PRIVATE: u64 = 0x02;
pub const MAP_FIXED: u64 = 0x10;
pub const MAP_ANONYMOUS: u64 = 0x20;
pub const MAP_GROWSDOWN: u64 = 0x100;
pub const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
pub const MREMAP_MAYMOVE: u64 = 1;
pub const MREMAP_FIXED: u64 = 2;
pub const F_DUPFD_CLOEXEC: u64 = 1030;
pub const F_SETFL: u64 = 4;

/// An error number returned by the kernel (positive, `1..=4095`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub u16);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EINTR: Errno = Errno(4);
    pub const EIO: Errno = Errno(5);
    pub const EEXIST: Errno = Errno(17);
    pub const EINVAL: Errno = Errno(22);
    pub const EPIPE: Errno = Errno(32);
    pub const ENOTTY: Errno = Errno(25);
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// The raw return value of a system call, split into success or [`Errno`].
fn result(ret: i64) -> Result<u64, Errno> {
    if (-4095..0).contains(&ret) {
        // `ret` is in -4095..=-1, so the negation fits in u16.
        Err(Errno(u16::try_from(ret.unsigned_abs()).unwrap_or(u16::MAX)))
    } else {
        // Bit for bit: addresses and counts the kernel returns.
        Ok(u64::from_ne_bytes(ret.to_ne_bytes()))
    }
}

/// `syscall(nr, a0..a5)`: the raw instruction.
///
/// # Safety
/// The arguments must satisfy the contract of system call `nr` (valid,
/// writable memory where the kernel writes, nothing the caller still uses
/// unmapped or closed behind its back).
#[inline(always)]
pub unsafe fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller upholds the contract of the call; the kernel clobbers
    // only rax, rcx and r11, which are declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            in("r8") a4,
            in("r9") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `write(fd, buf, len)`: write bytes; returns how many were written.
pub fn write(fd: i32, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel reads `buf.len()` bytes from a live slice.
    let r = unsafe {
        syscall6(
            nr::WRITE,
            int_arg(fd),
            buf.as_ptr() as u64,
            buf.len() as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(count)
}

/// Write all of `buf` to `fd`, retrying short writes; errors are dropped
/// (used for diagnostics, which have nowhere else to go).
pub fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return,
            Ok(n) => buf = &buf[n.min(buf.len())..],
            Err(Errno::EINTR) => {}
            Err(Errno::EPIPE) => {
                discard_own_sigpipe();
                return;
            }
            Err(_) => return,
        }
    }
}

/// `rt_sigtimedwait({SIGPIPE}, NULL, {0, 0}, 8)`: take back the SIGPIPE a
/// write to a pipe without readers just sent this thread. Every signal is
/// blocked in the loader (`_start`), so it would stay pending and reach the
/// restored task, which never wrote there. (Should another SIGPIPE have
/// been pending already, the two were one signal: one is taken.)
///
/// # References
/// sigtimedwait(2), pipe(7) ("EPIPE ... the calling process is also sent a
/// SIGPIPE signal")
pub fn discard_own_sigpipe() {
    let set: u64 = 1 << (SIGPIPE - 1);
    let zero = [0u64; 2];
    // SAFETY: the kernel reads an 8-byte set and a timespec from live
    // locals and writes no siginfo (NULL).
    unsafe {
        syscall6(
            nr::RT_SIGTIMEDWAIT,
            (&raw const set) as u64,
            0,
            (&raw const zero) as u64,
            8,
            0,
            0,
        )
    };
}

/// `SIGPIPE`.
const SIGPIPE: u32 = 13;

/// `read(fd, buf, len)`.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a live,
    // exclusively borrowed slice.
    let r = unsafe {
        syscall6(
            nr::READ,
            int_arg(fd),
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(count)
}

/// `pread64(fd, buf, len, off)`.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: as for `read`.
    let r = unsafe {
        syscall6(
            nr::PREAD64,
            int_arg(fd),
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            off,
            0,
            0,
        )
    };
    result(r).map(count)
}

/// A NUL-terminated path in a fixed buffer (no allocation).
pub struct CPath {
    buf: [u8; 4096],
}

impl CPath {
    /// `None` when `path` is too long or contains a NUL byte.
    pub fn new(path: &[u8]) -> Option<CPath> {
        if path.len() >= 4096 || path.contains(&0) {
            return None;
        }
        let mut buf = [0u8; 4096];
        buf[..path.len()].copy_from_slice(path);
        Some(CPath { buf })
    }
}

/// `openat(dirfd, path, flags, 0)`: open without creating.
pub fn openat(dirfd: i32, path: &CPath, flags: u32) -> Result<i32, Errno> {
    // SAFETY: `path` is NUL-terminated inside its buffer; no O_CREAT, so the
    // mode argument is unused.
    let r = unsafe {
        syscall6(
            nr::OPENAT,
            int_arg(dirfd),
            path.buf.as_ptr() as u64,
            u64::from(flags & !O_CREAT),
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `readlinkat(AT_FDCWD, path, buf, buf.len())`: the link's target, its
/// length in `buf` (cut at `buf.len()`).
pub fn readlink(path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
    let cpath = CPath::new(path).ok_or(Errno::ENOENT)?;
    // SAFETY: `cpath` is NUL-terminated inside its buffer; the kernel
    // writes at most `buf.len()` bytes into `buf`, which we own.
    let r = unsafe {
        syscall6(
            nr::READLINKAT,
            int_arg(AT_FDCWD),
            cpath.buf.as_ptr() as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            0,
            0,
        )
    };
    result(r).map(|n| usize::try_from(n).unwrap_or(0))
}

/// `close(fd)`.
pub fn close(fd: i32) -> Result<(), Errno> {
    // SAFETY: closing an fd touches no memory of ours.
    let r = unsafe { syscall6(nr::CLOSE, int_arg(fd), 0, 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `fcntl(fd, F_SETFL, flags)`: the file status flags the kernel lets
/// change (`O_APPEND`, `O_NONBLOCK`, `O_ASYNC`, `O_DIRECT`, `O_NOATIME`).
pub fn set_status_flags(fd: i32, flags: u32) -> Result<(), Errno> {
    // SAFETY: changing an fd's status flags touches no memory of ours.
    let r = unsafe { syscall6(nr::FCNTL, int_arg(fd), F_SETFL, u64::from(flags), 0, 0, 0) };
    result(r).map(|_| ())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`: a close-on-exec copy numbered ≥ `min`.
pub fn dup_above(fd: i32, min: i32) -> Result<i32, Errno> {
    // SAFETY: duplicating an fd touches no memory of ours.
    let r = unsafe {
        syscall6(
            nr::FCNTL,
            int_arg(fd),
            F_DUPFD_CLOEXEC,
            int_arg(min),
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `lseek(fd, off, SEEK_SET)`.
pub fn seek_to(fd: i32, off: u64) -> Result<u64, Errno> {
    // SAFETY: seeking touches no memory of ours.
    let r = unsafe { syscall6(nr::LSEEK, int_arg(fd), off, 0, 0, 0, 0) };
    result(r)
}

/// `fchdir(fd)`.
pub fn fchdir(fd: i32) -> Result<(), Errno> {
    // SAFETY: changing the working directory touches no memory of ours.
    let r = unsafe { syscall6(nr::FCHDIR, int_arg(fd), 0, 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// The fields of `struct stat` the loader compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    /// The owner (`st_uid`, `st_gid`).
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
}

pub const S_IFMT: u32 = 0o170_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFIFO: u32 = 0o010_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFSOCK: u32 = 0o140_000;

/// x86_64 `struct stat` as the kernel writes it (`arch/x86/include/uapi/asm/stat.h`).
#[derive(
    Clone,
    Copy,
    Default,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(C)]
struct KernelStat {
    dev: u64,
    ino: u64,
    nlink: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    _pad0: u32,
    rdev: u64,
    size: i64,
    blksize: i64,
    blocks: i64,
    atime_sec: i64,
    atime_nsec: i64,
    mtime_sec: i64,
    mtime_nsec: i64,
    ctime_sec: i64,
    ctime_nsec: i64,
    _unused: [i64; 3],
}
const _: () = assert!(core::mem::size_of::<KernelStat>() == 144);

/// `fstat(fd, &st)`.
pub fn fstat(fd: i32) -> Result<Stat, Errno> {
    let mut st = KernelStat::default();
    // SAFETY: the kernel writes one `struct stat` (144 bytes, the size
    // asserted above) into a live value of that layout.
    let r = unsafe {
        syscall6(
            nr::FSTAT,
            int_arg(fd),
            core::ptr::from_mut(&mut st) as u64,
            0,
            0,
            0,
            0,
        )
    };
    result(r)?;
    Ok(Stat {
        dev: st.dev,
        ino: st.ino,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        // A file size is never negative.
        size: u64::try_from(st.size).unwrap_or(0),
        mtime_sec: st.mtime_sec,
        mtime_nsec: st.mtime_nsec,
        ctime_sec: st.ctime_sec,
        ctime_nsec: st.ctime_nsec,
    })
}

/// `fcntl(fd, F_SETLEASE, F_RDLCK)`, then `fcntl(fd, F_SETOWN, 0)`: a read
/// lease on the open file, so that any `open` for writing (or `truncate`)
/// by another process blocks until this fd is closed or
/// `/proc/sys/fs/lease-break-time` passes. Without an owner the kernel sends
/// no `SIGIO` when a writer waits (`send_sigio` needs a pid): a pending
/// signal would reach the restored task.
///
/// # References
/// fcntl(2) "Leases", `fs/locks.c`.
pub fn take_read_lease(fd: i32) -> Result<(), Errno> {
    const F_SETLEASE: u64 = 1024;
    const F_SETOWN: u64 = 8;
    const F_RDLCK: u64 = 0;
    // SAFETY: fcntl on an fd touches no memory of ours.
    let r = unsafe { syscall6(nr::FCNTL, int_arg(fd), F_SETLEASE, F_RDLCK, 0, 0, 0) };
    result(r)?;
    // SAFETY: as above.
    let r = unsafe { syscall6(nr::FCNTL, int_arg(fd), F_SETOWN, 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `fcntl(fd, F_GETLEASE)` is `F_RDLCK`: the lease is held and no writer
/// waits for it (a waiting writer turns it into `F_UNLCK`).
pub fn lease_intact(fd: i32) -> bool {
    const F_GETLEASE: u64 = 1025;
    const F_RDLCK: u64 = 0;
    // SAFETY: fcntl on an fd touches no memory of ours.
    let r = unsafe { syscall6(nr::FCNTL, int_arg(fd), F_GETLEASE, 0, 0, 0, 0) };
    result(r) == Ok(F_RDLCK)
}

/// An `int` (fd, exit code) as a system-call argument: the kernel reads the
/// low 32 bits, so the sign extension of a negative one is what it expects.
fn int_arg(fd: i32) -> u64 {
    u64::from_ne_bytes(i64::from(fd).to_ne_bytes())
}

/// A byte count the kernel returned (at most the buffer's length).
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An fd the kernel returned (an `int`).
fn fd_of(fd: u64) -> Result<i32, Errno> {
    i32::try_from(fd).map_err(|_| Errno::EINVAL)
}

/// Read the start of a small file into `buf` (up to its length).
pub fn read_small_file(path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
    let p = CPath::new(path).ok_or(Errno::ENOENT)?;
    let fd = openat(AT_FDCWD, &p, O_RDONLY | O_CLOEXEC)?;
    let mut n = 0;
    let r = loop {
        match read(fd, &mut buf[n..]) {
            Ok(0) => break Ok(n),
            Ok(k) => {
                n += k;
                if n == buf.len() {
                    break Ok(n);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = close(fd);
    r
}

/// `mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0)`: a read-only view of a
/// file, kept for the life of the process (the trampoline unmaps it).
pub fn map_file_readonly(fd: i32, len: usize) -> Result<&'static [u8], Errno> {
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: a fresh mapping chosen by the kernel overlaps nothing of ours.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            0,
            len as u64,
            PROT_READ,
            MAP_PRIVATE,
            int_arg(fd),
            0,
        )
    };
    let addr = result(r)?;
    // The whole image is read (checksums, then every page into place):
    // start reading it all from the disk now rather than fault by fault.
    // Advice only: a failure changes nothing.
    const MADV_WILLNEED: u64 = 3;
    // SAFETY: advice on the mapping just made; it changes no contents.
    unsafe { syscall6(nr::MADVISE, addr, len as u64, MADV_WILLNEED, 0, 0, 0) };
    // SAFETY: the kernel mapped `len` readable bytes at `addr`; the mapping is
    // never unmapped while the process runs this code (a file shrinking under
    // it would raise SIGBUS, which ends the loader before any change).
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS)`:
/// zeroed scratch memory for the life of the process.
pub fn map_scratch(len: usize) -> Result<&'static mut [u8], Errno> {
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: a fresh anonymous mapping overlaps nothing of ours.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            0,
            len as u64,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            u64::MAX,
            0,
        )
    };
    let addr = result(r)?;
    // SAFETY: `len` fresh zeroed bytes, owned by nobody else.
    Ok(unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) })
}

/// A table of `n` values of `T`, each `T::default()`, in fresh anonymous
/// memory kept for the life of the process (the loader has no heap; tables
/// sized by the image, such as its threads, live here).
pub fn map_table<T: Copy + Default>(n: usize) -> Result<&'static mut [T], Errno> {
    const PAGE: usize = 4096;
    const { assert!(core::mem::align_of::<T>() <= PAGE) };
    let len = n
        .checked_mul(core::mem::size_of::<T>())
        .ok_or(Errno::EINVAL)?;
    let bytes = map_scratch(len)?;
    if n == 0 || bytes.is_empty() {
        return Ok(&mut []);
    }
    let first = bytes.as_mut_ptr().cast::<T>();
    for i in 0..n {
        // SAFETY: `bytes` is a fresh page-aligned mapping (alignment of `T`
        // is at most a page) of `n * size_of::<T>()` bytes owned by nobody
        // else, so element `i` is in bounds and aligned; writing a `Copy`
        // value drops nothing.
        unsafe { first.add(i).write(T::default()) };
    }
    // SAFETY: all `n` elements were initialised above, in memory that lives
    // (is never unmapped) for the rest of the process and is only reachable
    // through the returned slice.
    Ok(unsafe { core::slice::from_raw_parts_mut(first, n) })
}

/// `mmap(addr, len, RWX, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)`:
/// the bootstrap window, exactly at `addr` or an error (never over an
/// existing mapping).
pub fn map_window(addr: u64, len: usize) -> Result<&'static mut [u8], Errno> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; a kernel that
    // ignores the flag (< 4.17) may return another address, checked below.
    let r = unsafe {
        syscall6(
            nr::MMAP,
            addr,
            len as u64,
            PROT_READ | PROT_WRITE | PROT_EXEC,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            u64::MAX,
            0,
        )
    };
    let got = result(r)?;
    if got != addr {
        // SAFETY: `got` is the mapping the kernel just created for us.
        unsafe { syscall6(nr::MUNMAP, got, len as u64, 0, 0, 0, 0) };
        return Err(Errno(17)); // EEXIST
    }
    // SAFETY: `len` fresh zeroed bytes at `addr`, owned by nobody else.
    Ok(unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) })
}

/// `munmap(addr, len)` of a window made by [`map_window`] that will not be
/// used (a check failed after it was made).
pub fn unmap_window(window: &'static mut [u8]) {
    // SAFETY: the slice is consumed, so no reference to it remains.
    unsafe {
        syscall6(
            nr::MUNMAP,
            window.as_ptr() as u64,
            window.len() as u64,
            0,
            0,
            0,
            0,
        )
    };
}

/// `munmap` of a table made by [`map_table`], no longer used.
pub fn unmap_table<T: Copy>(table: &'static mut [T]) {
    if table.is_empty() {
        return;
    }
    // SAFETY: the slice is consumed, so no reference to it remains; it is
    // a whole mapping of its own (`map_table`), page-aligned.
    unsafe {
        syscall6(
            nr::MUNMAP,
            table.as_ptr() as u64,
            core::mem::size_of_val(table) as u64,
            0,
            0,
            0,
            0,
        )
    };
}

/// `fstatfs(fd)`: the mount flags (`f_flags`, `ST_*`) of the file
/// system `fd` is on.
pub fn fstatfs_flags(fd: i32) -> Result<u64, Errno> {
    // `struct statfs` (x86-64): eleven 8-byte fields, `f_flags` the
    // eleventh, then four spare words.
    let mut st = [0u64; 15];
    // SAFETY: the kernel writes one 120-byte `struct statfs` into a live
    // 120-byte array.
    let r = unsafe { syscall6(nr::FSTATFS, int_arg(fd), st.as_mut_ptr() as u64, 0, 0, 0, 0) };
    result(r)?;
    Ok(st[10])
}

/// `getgroups(buf.len(), buf)`: this thread's supplementary groups.
pub fn get_groups(buf: &mut [u32]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` u32 into `buf`.
    let r = unsafe {
        syscall6(
            nr::GETGROUPS,
            buf.len() as u64,
            buf.as_mut_ptr() as u64,
            0,
            0,
            0,
            0,
        )
    };
    result(r).map(|n| usize::try_from(n).unwrap_or(0))
}

/// `setgroups(groups.len(), groups)` for this thread only (the raw call:
/// the C library's wrapper would set it in every thread).
pub fn set_groups(groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: the kernel reads `groups.len()` u32 from a live slice.
    let r = unsafe {
        syscall6(
            nr::SETGROUPS,
            groups.len() as u64,
            groups.as_ptr() as u64,
            0,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `setfsuid`/`setfsgid` (`call`) to `id`, checked: they return the old
/// id whether or not they changed it, so a second call with the invalid
/// id -1 (which changes nothing) reads the new one. `Ok(old)`, or EPERM
/// when the id did not change to `id`.
fn set_fs_id(call: u64, id: u32) -> Result<u32, Errno> {
    // SAFETY: no memory involved.
    let old = unsafe { syscall6(call, u64::from(id), 0, 0, 0, 0, 0) };
    // SAFETY: as above; -1 is refused by the kernel, which returns the id.
    let now = unsafe { syscall6(call, u64::from(u32::MAX), 0, 0, 0, 0, 0) };
    if u32::try_from(now).ok() != Some(id) {
        return Err(Errno(1));
    }
    Ok(u32::try_from(old).unwrap_or(u32::MAX))
}

/// `setfsuid(uid)`, checked: the old fsuid. Leaving fsuid 0 clears the
/// file-system capabilities (CAP_DAC_OVERRIDE, ...) from the effective
/// set; coming back to 0 raises them again from the permitted set.
pub fn set_fsuid(uid: u32) -> Result<u32, Errno> {
    set_fs_id(nr::SETFSUID, uid)
}

/// `setfsgid(gid)`, checked: the old fsgid.
pub fn set_fsgid(gid: u32) -> Result<u32, Errno> {
    set_fs_id(nr::SETFSGID, gid)
}

/// `prlimit64(0, resource, &new, NULL)`: set this process's limits.
pub fn set_rlimit(resource: u32, cur: u64, max: u64) -> Result<(), Errno> {
    let new = [cur, max];
    // SAFETY: the kernel reads 16 bytes from a live 16-byte array.
    let r = unsafe {
        syscall6(
            nr::PRLIMIT64,
            0,
            u64::from(resource),
            new.as_ptr() as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `prlimit64(0, resource, NULL, &old)`: the current limits (cur, max).
pub fn get_rlimit(resource: u32) -> Result<(u64, u64), Errno> {
    let mut old = [0u64; 2];
    // SAFETY: the kernel writes 16 bytes into a live 16-byte array.
    let r = unsafe {
        syscall6(
            nr::PRLIMIT64,
            0,
            u64::from(resource),
            0,
            old.as_mut_ptr() as u64,
            0,
            0,
        )
    };
    result(r)?;
    Ok((old[0], old[1]))
}

/// `capget` on this thread: its effective capability set (bit n:
/// capability n), 0 if the call fails.
pub fn effective_caps() -> u64 {
    /// `_LINUX_CAPABILITY_VERSION_3`: two data structs (64 bits).
    const VERSION_3: u32 = 0x2008_0522;
    // `cap_user_header_t { version, pid }`.
    let mut header = [VERSION_3, 0u32];
    // Two `cap_user_data_t { effective, permitted, inheritable }`.
    let mut data = [0u32; 6];
    // SAFETY: the kernel reads the 8-byte header and writes at most the two
    // 12-byte data structs the version names, all in live arrays.
    let r = unsafe {
        syscall6(
            nr::CAPGET,
            header.as_mut_ptr() as u64,
            data.as_mut_ptr() as u64,
            0,
            0,
            0,
            0,
        )
    };
    if result(r).is_err() {
        return 0;
    }
    u64::from(data[0]) | u64::from(data[3]) << 32
}

/// `getresuid`/`getresgid`: (real, effective, saved).
pub fn get_ids() -> ([u32; 3], [u32; 3]) {
    let mut u = [0u32; 3];
    let mut g = [0u32; 3];
    // SAFETY: each call writes three u32 into live arrays.
    unsafe {
        syscall6(
            nr::GETRESUID,
            u.as_mut_ptr() as u64,
            u.as_mut_ptr().add(1) as u64,
            u.as_mut_ptr().add(2) as u64,
            0,
            0,
            0,
        );
        syscall6(
            nr::GETRESGID,
            g.as_mut_ptr() as u64,
            g.as_mut_ptr().add(1) as u64,
            g.as_mut_ptr().add(2) as u64,
            0,
            0,
            0,
        );
    }
    (u, g)
}

/// `arch_prctl(ARCH_GET_XCOMP_PERM, &mask)`: the XSAVE features this process
/// may use. Dynamic features (AMX tile data) are off until requested.
pub fn xcomp_perm() -> Result<u64, Errno> {
    const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
    let mut mask = 0u64;
    // SAFETY: the kernel writes one u64 into a live u64.
    let r = unsafe {
        syscall6(
            nr::ARCH_PRCTL,
            ARCH_GET_XCOMP_PERM,
            &raw mut mask as u64,
            0,
            0,
            0,
            0,
        )
    };
    result(r)?;
    Ok(mask)
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, feature)`: ask to use a dynamic XSAVE
/// feature (and the ones it depends on).
pub fn request_xcomp_perm(feature: u32) -> Result<(), Errno> {
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    // SAFETY: no memory involved.
    let r = unsafe {
        syscall6(
            nr::ARCH_PRCTL,
            ARCH_REQ_XCOMP_PERM,
            u64::from(feature),
            0,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `prctl(PR_GET_SECUREBITS)`: this thread's securebits (0 if it fails).
pub fn securebits() -> u32 {
    const PR_GET_SECUREBITS: u64 = 27;
    // SAFETY: no memory involved.
    let r = unsafe { syscall6(nr::PRCTL, PR_GET_SECUREBITS, 0, 0, 0, 0, 0) };
    result(r).map_or(0, |bits| u32::try_from(bits).unwrap_or(0))
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET)`:
/// whether `timer_create` takes ids from its caller now (an error: this
/// kernel cannot; EINVAL before Linux 6.14). Changes nothing.
///
/// # References
/// `Documentation/userspace-api/` of Linux 6.14, `kernel/time/posix-timers.c`.
pub fn timer_restore_ids() -> Result<u64, Errno> {
    use crate::posix_timers::{PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET};
    // SAFETY: no memory involved.
    let r = unsafe {
        syscall6(
            nr::PRCTL,
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0,
            0,
            0,
            0,
        )
    };
    result(r)
}

/// `timer_create(clock, {SIGEV_NONE}, &id)` then `timer_delete(id)`:
/// whether this process may have a timer on `clock` (the clock exists,
/// has timers, and alarm clocks need `CAP_WAKE_ALARM`). The timer sends
/// nothing and is gone when this returns.
///
/// # References
/// `timer_create(2)`, `timer_delete(2)`.
pub fn probe_timer_clock(clock: i32) -> Result<(), Errno> {
    // `struct sigevent`: sigev_notify (at 12) SIGEV_NONE (1), the rest 0.
    let mut sigevent = [0u8; crate::posix_timers::SIGEVENT_LEN];
    sigevent[12] = 1;
    // `execve` turned PR_TIMER_CREATE_RESTORE_IDS off, so the kernel picks
    // the id and writes it here; the timer is deleted below, so no id an
    // image wants stays taken.
    let mut id: i32 = -1;
    // SAFETY: the kernel reads the 64-byte sigevent and reads and writes the
    // int `id`, both live locals.
    let r = unsafe {
        syscall6(
            nr::TIMER_CREATE,
            int_arg(clock),
            sigevent.as_ptr() as u64,
            (&raw mut id) as u64,
            0,
            0,
            0,
        )
    };
    result(r)?;
    // SAFETY: no memory involved; deletes the timer just created.
    let r = unsafe { syscall6(nr::TIMER_DELETE, int_arg(id), 0, 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `getpid()`.
pub fn getpid() -> i32 {
    // SAFETY: no memory involved.
    let pid = unsafe { syscall6(nr::GETPID, 0, 0, 0, 0, 0, 0) };
    i32::try_from(pid).unwrap_or(0)
}

/// `exit_group(code)`.
pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: ends the process; touches no memory.
        unsafe { syscall6(nr::EXIT_GROUP, int_arg(code), 0, 0, 0, 0, 0) };
    }
}
