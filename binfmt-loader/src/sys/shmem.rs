//! The system calls that make shared memory objects and unlinked files:
//! `memfd_create`, `open(O_TMPFILE)`, `openat2` (create without following
//! links), `ftruncate`, `pwrite64`, `fchmod` and `F_ADD_SEALS`.
//!
//! # Safety
//! Each wrapper passes the kernel a NUL-terminated path inside a live
//! [`CPath`], or a live slice with its own length; nothing else is
//! dereferenced.

use super::{fd_of, int_arg, result, syscall6, CPath, Errno};

mod nr {
    pub const PWRITE64: u64 = 18;
    pub const FTRUNCATE: u64 = 77;
    pub const FCHMOD: u64 = 91;
    pub const MEMFD_CREATE: u64 = 319;
    pub const OPENAT2: u64 = 437;
    pub const FCNTL: u64 = 72;
    pub const OPENAT: u64 = 257;
    pub const UNLINKAT: u64 = 263;
    pub const LINKAT: u64 = 265;
}

/// `linkat`'s `AT_SYMLINK_FOLLOW`.
pub const AT_SYMLINK_FOLLOW: u64 = 0x400;

/// `MFD_CLOEXEC`, `MFD_ALLOW_SEALING`.
pub const MFD_CLOEXEC: u32 = 1;
pub const MFD_ALLOW_SEALING: u32 = 2;
/// `O_TMPFILE` (with `O_DIRECTORY`, as the kernel wants it).
pub const O_TMPFILE: u32 = 0o20_200_000;
/// `F_ADD_SEALS`, `F_GET_SEALS`.
const F_ADD_SEALS: u64 = 1033;
const F_GET_SEALS: u64 = 1034;
/// `openat2`'s `RESOLVE_NO_SYMLINKS`: no symbolic link anywhere on the path.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// `memfd_create(name, flags)`.
///
/// # References
/// memfd_create(2).
pub fn memfd_create(name: &CPath, flags: u32) -> Result<i32, Errno> {
    // SAFETY: `name` is NUL-terminated in its buffer.
    let r = unsafe {
        syscall6(
            nr::MEMFD_CREATE,
            name.buf.as_ptr() as u64,
            u64::from(flags),
            0,
            0,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `openat(AT_FDCWD, path, flags, mode)`, which may create (`O_TMPFILE`,
/// `O_CREAT`).
///
/// # References
/// open(2).
pub fn open_mode(path: &CPath, flags: u32, mode: u32) -> Result<i32, Errno> {
    // SAFETY: `path` is NUL-terminated in its buffer.
    let r = unsafe {
        syscall6(
            nr::OPENAT,
            int_arg(super::AT_FDCWD),
            path.buf.as_ptr() as u64,
            u64::from(flags),
            u64::from(mode),
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `openat2(AT_FDCWD, path, {flags, mode, resolve}, 24)`.
///
/// # References
/// openat2(2).
pub fn openat2(path: &CPath, flags: u32, mode: u32, resolve: u64) -> Result<i32, Errno> {
    let how = [u64::from(flags), u64::from(mode), resolve];
    // SAFETY: `path` is NUL-terminated; the kernel reads 24 bytes of `how`.
    let r = unsafe {
        syscall6(
            nr::OPENAT2,
            int_arg(super::AT_FDCWD),
            path.buf.as_ptr() as u64,
            (&raw const how) as u64,
            24,
            0,
            0,
        )
    };
    result(r).and_then(fd_of)
}

/// `linkat(AT_FDCWD, from, AT_FDCWD, to, flags)`.
///
/// # References
/// link(2); open(2) on linking an `O_TMPFILE` through `/proc/self/fd`.
pub fn linkat(from: &CPath, to: &CPath, flags: u64) -> Result<(), Errno> {
    // SAFETY: both paths are NUL-terminated in their buffers.
    let r = unsafe {
        syscall6(
            nr::LINKAT,
            int_arg(super::AT_FDCWD),
            from.buf.as_ptr() as u64,
            int_arg(super::AT_FDCWD),
            to.buf.as_ptr() as u64,
            flags,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `unlinkat(AT_FDCWD, path, 0)`.
pub fn unlink(path: &CPath) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated in its buffer.
    let r = unsafe {
        syscall6(
            nr::UNLINKAT,
            int_arg(super::AT_FDCWD),
            path.buf.as_ptr() as u64,
            0,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: i32, len: u64) -> Result<(), Errno> {
    // SAFETY: touches no memory of ours.
    let r = unsafe { syscall6(nr::FTRUNCATE, int_arg(fd), len, 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `pwrite64(fd, buf, len, off)`.
pub fn pwrite(fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno> {
    // SAFETY: the kernel reads `buf.len()` bytes from a live slice.
    let r = unsafe {
        syscall6(
            nr::PWRITE64,
            int_arg(fd),
            buf.as_ptr() as u64,
            buf.len() as u64,
            off,
            0,
            0,
        )
    };
    result(r).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: i32, mode: u32) -> Result<(), Errno> {
    // SAFETY: touches no memory of ours.
    let r = unsafe { syscall6(nr::FCHMOD, int_arg(fd), u64::from(mode), 0, 0, 0, 0) };
    result(r).map(|_| ())
}

/// `fcntl(fd, F_ADD_SEALS, seals)`.
///
/// # References
/// fcntl(2) "File Sealing".
pub fn add_seals(fd: i32, seals: u32) -> Result<(), Errno> {
    // SAFETY: touches no memory of ours.
    let r = unsafe {
        syscall6(
            nr::FCNTL,
            int_arg(fd),
            F_ADD_SEALS,
            u64::from(seals),
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ())
}

/// `fcntl(fd, F_GET_SEALS)`: only shmem files (memfds, tmpfs) and
/// hugetlbfs have seals; any other file is `EINVAL`.
///
/// # References
/// fcntl(2) "File Sealing".
pub fn get_seals(fd: i32) -> Result<u32, Errno> {
    // SAFETY: touches no memory of ours.
    let r = unsafe { syscall6(nr::FCNTL, int_arg(fd), F_GET_SEALS, 0, 0, 0, 0) };
    // The seals are a small bit set.
    result(r).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}
