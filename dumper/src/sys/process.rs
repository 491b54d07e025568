//! Process-level system calls: reading another process's memory, its robust
//! futex list and resource limits, sending signals, probing the zero page,
//! and mapping a written image to check it.
//!
//! # Safety
//!
//! Every call passes pointers to buffers owned by the caller, with the
//! lengths of those buffers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// `process_vm_readv(pid, [buf], 1, [remote, buf.len()], 1, 0)`: copy bytes
/// from another process's memory into `buf`. Returns how many bytes were
/// read; a short count means the remote range stopped being readable.
///
/// # References
/// `process_vm_readv(2)`.
pub fn process_vm_read(pid: i32, remote: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, writable for buf.len() bytes; the
    // remote iovec is only interpreted in the other process's address space.
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// `process_vm_readv(pid, [buf], 1, remote, remote.len(), 0)`: copy the
/// remote ranges `remote` (address, length), one after the other, into
/// `buf`, in one call. Returns how many bytes were read: a count short of
/// `buf.len()` means the range holding the byte after them is not readable
/// (the kernel stops there). At most `IOV_MAX` (1024) ranges.
///
/// # References
/// `process_vm_readv(2)`.
pub fn process_vm_read_many(
    pid: i32,
    remote: &[(u64, usize)],
    buf: &mut [u8],
) -> io::Result<usize> {
    let total: usize = remote.iter().map(|&(_, len)| len).sum();
    if total > buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: total,
    };
    let remote: Vec<libc::iovec> = remote
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    let count = libc::c_ulong::try_from(remote.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `local` describes the first `total` bytes of `buf` (checked
    // to fit), writable; the remote iovecs (as many as `count` says, alive
    // for the call) are only interpreted in the other process's address
    // space.
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, remote.as_ptr(), count, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: start writing
/// the dirty pages of that range of `file` to the disk, without waiting
/// for it. Only a head start: the data is durable after `fsync`, which
/// waits for this writeback and does the rest. Errors are the `fsync`'s
/// to report.
///
/// # References
/// `sync_file_range(2)`.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a descriptor owned by `file`; no pointers.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// `fallocate(fd, 0, 0, len)`: reserve the disk blocks of the first `len`
/// bytes of `file` (which then reads zeros there), so that writing them
/// cannot run out of space. Not done on tmpfs, where it would allocate and
/// clear the memory that the writes then fill, nor where the file system
/// has no `fallocate` (`EOPNOTSUPP`): both are `Ok`.
///
/// # References
/// `fallocate(2)`, `statfs(2)`.
pub fn reserve_blocks(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `statfs` is a plain struct the kernel fills; it outlives the
    // call.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor owned by `file`, writing into `fs`.
    if unsafe { libc::fstatfs(fd, &raw mut fs) } == 0 && fs.f_type == libc::TMPFS_MAGIC {
        return Ok(());
    }
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate on a descriptor owned by `file`; no pointers.
    if unsafe { libc::fallocate(fd, 0, 0, len) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        Ok(())
    } else {
        Err(e)
    }
}

/// `get_robust_list(tid, &head, &len)`: the thread's robust futex list head.
///
/// # References
/// `get_robust_list(2)`.
pub fn get_robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: both out-pointers are valid for the 8 bytes the kernel writes.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &raw mut head, &raw mut len) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok((head, len as u64))
    }
}

/// `kill(pid, sig)`.
///
/// # References
/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    if unsafe { libc::kill(pid, sig) } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `tgkill(pid, tid, sig)`: send `sig` to thread `tid` of process `pid`.
///
/// # References
/// `tgkill(2)`.
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: tgkill takes no pointers.
    if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Map `file` read-only and shared, to read it without copying it (a page
/// of the mapping is only read from the page cache when touched).
pub fn map_read_only(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and the file is a private temporary
    // file of this process (mode 0600, created with O_EXCL): nothing else
    // truncates or writes it while the mapping lives, so the slice it
    // derefs to stays valid and unchanged.
    unsafe { memmap2::Mmap::map(file) }
}

/// `geteuid()`.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() }
}

/// `getegid()`.
pub fn effective_gid() -> u32 {
    // SAFETY: getegid cannot fail and takes no arguments.
    unsafe { libc::getegid() }
}

/// The page frame number of the kernel's shared zero page, as
/// `/proc/self/pagemap` shows it: map a fresh anonymous page, read it (a read
/// fault maps the zero page), look up its PFN. `Ok(None)` when PFNs are
/// hidden (no `CAP_SYS_ADMIN`).
pub fn zero_page_pfn() -> io::Result<Option<u64>> {
    const PAGE: usize = 4096;
    // SAFETY: an anonymous private mapping of one page at an address the
    // kernel chooses; it is unmapped below and never escapes this function.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `addr` is a readable mapping of PAGE bytes made above; the
    // volatile read makes sure the fault really happens.
    let _ = unsafe { std::ptr::read_volatile(addr.cast::<u8>()) };
    let result = (|| {
        let pagemap = File::open("/proc/self/pagemap")?;
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, (addr as u64 / PAGE as u64) * 8)?;
        let entry = u64::from_le_bytes(entry);
        let present = entry & (1 << 63) != 0;
        let pfn = entry & ((1 << 55) - 1);
        Ok(if present && pfn != 0 { Some(pfn) } else { None })
    })();
    // SAFETY: unmapping exactly the page mapped above.
    unsafe { libc::munmap(addr, PAGE) };
    result
}

/// `fcntl(fd, F_GET_SEALS)`: the seals of a memfd (or any shmem file).
///
/// # References
/// `memfd_create(2)`, `fcntl(2)` "File Sealing".
pub fn file_seals(file: &File) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl F_GET_SEALS on a descriptor owned by `file`; no pointers.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    u32::try_from(r).map_err(|_| io::Error::last_os_error())
}

/// The data extents of a file (`lseek` with `SEEK_DATA`/`SEEK_HOLE`), as
/// `(start, end)` byte offsets, up to `limit`.
///
/// # References
/// `lseek(2)`.
pub fn data_extents(file: &File, limit: u64) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence: i32| -> io::Result<Option<u64>> {
        let off = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: lseek on a descriptor owned by `file`; no pointers.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            Ok(Some(r.unsigned_abs()))
        } else {
            let e = io::Error::last_os_error();
            // ENXIO: no more data after `off`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < limit {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if start >= limit {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(limit).min(limit);
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

/// `linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)`:
/// gives the anonymous file `file` (opened with `O_TMPFILE`) the name
/// `path`. Following the fd's magic link is what links the file itself;
/// unlike `AT_EMPTY_PATH`, it needs no capability.
///
/// # References
/// linkat(2), open(2) (`O_TMPFILE`)
pub fn link_anonymous(file: &std::fs::File, path: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(io::Error::other)?;
    let to = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call;
    // the kernel only reads them.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `memfd_create(name, MFD_CLOEXEC)`: an anonymous file in memory, for an
/// image that is built only to be checked (`crdump --check-only`).
///
/// # References
/// memfd_create(2)
pub fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is a valid NUL-terminated string for the call's
    // duration; the returned fd is new and owned by nobody else.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by this process and is closed only by
    // the returned File.
    Ok(unsafe { File::from_raw_fd(fd) })
}
