//! Directory-relative file system calls for publishing a dump: every name
//! is resolved inside a directory held open, never through a path that
//! someone could redirect with a planted link between two calls.
//!
//! # Safety
//!
//! Every call passes NUL-terminated strings that outlive it and file
//! descriptors owned by the caller's `File`s.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `mkdirat(dir, name, mode)`: create a directory (fails with `EEXIST`
/// when anything, a symlink included, already has that name).
///
/// # References
/// mkdirat(2)
pub fn mkdir_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated and lives across the call; the fd is
    // owned by `dir`.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`:
/// open a subdirectory, refusing a symlink in its place.
///
/// # References
/// openat(2)
pub fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let name = c_name(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)`: open a file for
/// reading, refusing a symlink in its place.
pub fn open_read_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let name = c_name(name)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat(dir, ".", O_TMPFILE | O_RDWR | extra, 0600)`: an anonymous file
/// on the file system of `dir`, which [`link_at`] can give a name later.
///
/// # References
/// open(2) (`O_TMPFILE`)
pub fn tmpfile_in(dir: &File, extra_flags: libc::c_int) -> io::Result<File> {
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC | extra_flags;
    // SAFETY: the path is a static NUL-terminated string.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, 0o600) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `linkat(AT_FDCWD, "/proc/self/fd/N", dir, name, AT_SYMLINK_FOLLOW)`:
/// give the anonymous file `file` the name `name` in `dir`. Fails with
/// `EEXIST` when the name is taken (a planted symlink is never followed).
/// Following the fd's magic link is what links the file itself; unlike
/// `AT_EMPTY_PATH`, it needs no capability.
///
/// # References
/// linkat(2)
pub fn link_at(file: &File, dir: &File, name: &OsStr) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let to = c_name(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `renameat(dir, from, dir, to)`: replace `to` (whatever it is, a symlink
/// included, which is replaced and not followed) by `from`.
///
/// # References
/// rename(2)
pub fn rename_at(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let from = c_name(from)?;
    let to = c_name(to)?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
        .map(drop)
}

/// `unlinkat(dir, name, dir_too ? AT_REMOVEDIR : 0)`.
///
/// # References
/// unlinkat(2)
pub fn unlink_at(dir: &File, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let name = c_name(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated and lives across the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`: a
/// subdirectory to walk through, refusing a symlink in its place. `O_PATH`
/// needs only search permission, as a walk by path does.
///
/// # References
/// openat(2) (`O_PATH`)
pub fn open_walk_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let name = c_name(name)?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)`: the directory
/// held by `dir` (an `O_PATH` handle) opened for reading, which `fsync`
/// needs; the same directory, whatever its names have become since.
pub fn reopen_dir(dir: &File) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: the path is a static NUL-terminated string.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)`: a handle on the
/// name itself, a symlink included (not followed), to `fstat` or read it.
///
/// # References
/// openat(2) (`O_PATH`)
pub fn open_path_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let name = c_name(name)?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated and lives across the call.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)` for `/` or `.`, where a
/// walk from there starts (neither can be a symlink itself).
pub fn open_start(absolute: bool) -> io::Result<File> {
    let path = if absolute { c"/" } else { c"." };
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: the path is a static NUL-terminated string.
    let fd = check(unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `readlinkat(link, "", buf)`: the target of the symlink held by `link`
/// (from [`open_path_at`]), read from the handle, not through a name that
/// could have been replaced since.
///
/// # References
/// readlinkat(2) (empty path)
pub fn read_link_of(link: &File) -> io::Result<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    // PATH_MAX (4096) bytes and one more, to see a truncation.
    let mut buf = vec![0u8; 4097];
    // SAFETY: the path is a static NUL-terminated string; `buf` is writable
    // for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(std::ffi::OsString::from_vec(buf))
}
