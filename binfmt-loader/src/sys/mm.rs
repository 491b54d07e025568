//! The few memory-management calls stage 1 makes on its own process: mm-wide
//! settings (`prctl`) and probes of what this kernel accepts for an area.
//!
//! # Safety
//! Every call here acts on a fresh one-page mapping this module makes and
//! unmaps, or on mm-wide flags; nothing the caller holds is touched.
//!
//! # References
//! `prctl(2)` (`PR_SET_THP_DISABLE`, `PR_SET_MEMORY_MERGE`), `mmap(2)`,
//! `madvise(2)`.

use super::{nr, result, syscall6, CPath, Errno, MAP_ANONYMOUS, PROT_READ, PROT_WRITE};

/// `O_WRONLY`.
const O_WRONLY: u32 = 1;

/// Write `text` to a file of this process's own `/proc/self` (a setting of
/// its mm), in one `write`.
pub fn write_own_proc_file(path: &[u8], text: &[u8]) -> Result<(), Errno> {
    let path = CPath::new(path).ok_or(Errno::ENOENT)?;
    let fd = super::openat(super::AT_FDCWD, &path, O_WRONLY | super::O_CLOEXEC)?;
    let written = super::write(fd, text);
    let _ = super::close(fd);
    match written {
        Ok(n) if n == text.len() => Ok(()),
        Ok(_) => Err(Errno::EIO),
        Err(e) => Err(e),
    }
}

/// `prctl(option, a2, a3, 0, 0)` for options that take plain numbers.
pub fn prctl_numbers(option: u64, a2: u64, a3: u64) -> Result<u64, Errno> {
    // SAFETY: the options passed take no pointers; at most they change
    // mm-wide flags of this process.
    result(unsafe { syscall6(nr::PRCTL, option, a2, a3, 0, 0, 0) })
}

/// `mmap(NULL, 4096, PROT_READ|PROT_WRITE, map_flags|MAP_ANONYMOUS)`, then
/// `madvise(advice)` on it when given, then `munmap`: does this kernel
/// accept an area made so?
pub fn probe_anon_page(map_flags: u64, advice: Option<u64>) -> Result<(), Errno> {
    const LEN: u64 = 4096;
    // SAFETY: a fresh anonymous page (no MAP_FIXED) overlaps nothing.
    let addr = result(unsafe {
        syscall6(
            nr::MMAP,
            0,
            LEN,
            PROT_READ | PROT_WRITE,
            map_flags | MAP_ANONYMOUS,
            u64::MAX,
            0,
        )
    })?;
    let advised = advice.map_or(Ok(0), |a| {
        // SAFETY: `addr` is the page just made, used by nothing else.
        result(unsafe { syscall6(nr::MADVISE, addr, LEN, a, 0, 0, 0) })
    });
    // SAFETY: as above; nothing refers to the page.
    unsafe { syscall6(nr::MUNMAP, addr, LEN, 0, 0, 0, 0) };
    advised.map(|_| ())
}

/// `mmap(NULL, 4096, prot, MAP_PRIVATE, fd, offset)`, then `munmap`: may
/// this process map the file open at `fd` with `prot` (`PROT_EXEC`: a
/// `noexec` mount refuses it with EPERM, a security module with EACCES)?
/// Nothing is read from the file: the page is never touched.
pub fn probe_file_page(fd: i32, offset: u64, prot: u64) -> Result<(), Errno> {
    const LEN: u64 = 4096;
    let fd = u64::try_from(fd).map_err(|_| Errno(9))?; // EBADF
                                                       // SAFETY: a fresh mapping (no MAP_FIXED) overlaps nothing; it is never
                                                       // accessed, so a page past the end of the file cannot fault.
    let addr = result(unsafe { syscall6(nr::MMAP, 0, LEN, prot, super::MAP_PRIVATE, fd, offset) })?;
    // SAFETY: `addr` is the page just made, used by nothing else.
    unsafe { syscall6(nr::MUNMAP, addr, LEN, 0, 0, 0, 0) };
    Ok(())
}
