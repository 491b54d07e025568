//! The few operations of the tools that need `unsafe`.
//!
//! # Safety
//! Each function states the contract its callers rely on.

use std::fs::File;

/// `mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0)` of a whole file.
///
/// # Safety (of the caller's use)
/// The mapping is private and read-only, so nothing the program does can
/// change what it reads. What it cannot rule out is another process
/// truncating the file while it is mapped: reading past the new end then
/// raises SIGBUS. crimg writes images under a temporary name and renames
/// them into place, never truncating one, so that takes someone else
/// rewriting the image during `crimg info` or `verify`; the tool then dies
/// of the signal instead of reporting an error, which is accepted.
///
/// # References
/// mmap(2)
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: a read-only private mapping of a file we opened; the only
    // hazard, a concurrent truncation raising SIGBUS, is described above
    // and cannot corrupt memory.
    unsafe { memmap2::Mmap::map(file) }
}

extern "C" fn on_interrupt(_sig: libc::c_int) {
    // Async-signal-safe: one atomic store. The dump notices it at its next
    // check, detaches every thread and removes its temporary files.
    dumper::request_cancel();
}

/// `sigaction(SIGINT|SIGTERM|SIGHUP, on_interrupt)`: a dump interrupted by
/// Ctrl-C or a polite kill detaches cleanly instead of dying with the target
/// still stopped under ptrace.
///
/// # References
/// sigaction(2)
pub fn cancel_dump_on_interrupt() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
        // the handler only performs an atomic store, which is
        // async-signal-safe, and stays valid for the life of the program.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// `struct clone_args` of `clone3(2)`, as far as crimg fills it.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// `clone3({.set_tid = &pid, .set_tid_size = 1, .exit_signal = SIGCHLD})`
/// with a child that exits at once, then reaps it: whether this process may
/// create a task with a chosen pid (what restoring original pids needs).
///
/// # References
/// clone3(2)
pub fn try_clone3_set_tid(pid: i32) -> std::io::Result<()> {
    let tid = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &raw const tid as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: like fork(): the child shares nothing with us but a copy of
    // the address space and only makes the exit_group syscall, which is
    // async-signal-safe; `args` and `tid` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY: the child leaves at once without running any of our code.
        unsafe { libc::syscall(libc::SYS_exit_group, 0) };
    }
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live out-pointer.
    unsafe { libc::waitpid(r as i32, &mut status, 0) };
    Ok(())
}

/// `execve` `command` in place of this process with every signal blocked
/// (`sigprocmask(SIG_SETMASK, all)` just before the exec; std's `exec`
/// empties the mask first, the `pre_exec` hook runs after that). The mask
/// survives `execve`: `crimg run` execs the loader so, and a signal sent
/// in the gap between the exec and the loader's first instruction (which
/// blocks everything too) stays pending instead of killing the
/// half-started restore. Returns only on failure.
///
/// # References
/// sigprocmask(2), execve(2) ("the signal mask is preserved")
pub fn exec_with_signals_blocked(command: &mut std::process::Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook makes two async-signal-safe libc calls on a sigset_t
    // of its own stack and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            if libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.exec()
}

/// `memfd_create(name, MFD_ALLOW_SEALING)`, not close-on-exec: the image
/// of a stream (`crimg run -`), which the loader it execs opens as
/// `/proc/self/fd/N` (the loader's plan closes it with every fd that is
/// not the task's).
///
/// # References
/// memfd_create(2)
pub fn memfd_inherited(name: &std::ffi::CStr) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is a valid NUL-terminated string for the call's
    // duration; the returned fd is new and owned by nobody else.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by this process and is closed only by
    // the returned File.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE |
/// F_SEAL_SEAL)`: the memfd's bytes can no longer change, for anyone.
///
/// # References
/// memfd_create(2) "File sealing", fcntl(2)
pub fn seal_all(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: an fcntl on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Take stdout for a stream (`crdump -o -`): a close-on-exec copy of fd 1
/// is returned, and fd 1 becomes a copy of fd 2, so that everything the
/// program prints goes to stderr and the stream carries nothing else.
///
/// # References
/// fcntl(2) `F_DUPFD_CLOEXEC`, dup2(2)
pub fn take_stdout() -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: duplicates fd 1 (whatever it is) to a new fd above 2.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is new and owned only by the File.
    let stream = unsafe { File::from_raw_fd(fd) };
    // SAFETY: replaces fd 1 with a copy of fd 2; std's stdout has no
    // buffered bytes yet (nothing was printed).
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// The credentials `(uid, gid)` of the peer of Unix socket `fd`
/// (`SO_PEERCRED`).
///
/// # References
/// unix(7) `SO_PEERCRED`
pub fn peer_credentials(fd: i32) -> std::io::Result<(u32, u32)> {
    // SAFETY: `ucred` is plain data the kernel fills.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which
    // outlives the call; `fd` is only read.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid))
}

/// `fcntl(fd, F_SETPIPE_SZ, 1 MiB)` when `fd` is a pipe, else nothing:
/// a dump stream moves through a pipe in far fewer wake-ups of its reader
/// and writer with 1 MiB in flight than with the default 64 KiB. Best
/// effort: a pipe that cannot grow (`pipe-max-size`, the user's pipe
/// quota) keeps its size. Returns the size it has, if a pipe.
///
/// # References
/// fcntl(2) "Changing the capacity of a pipe", pipe(7)
pub fn grow_pipe(fd: &impl std::os::fd::AsRawFd) -> Option<usize> {
    const WANTED: libc::c_int = 1 << 20;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an fd the caller holds open; F_GETPIPE_SZ fails
    // with EBADF on anything but a pipe and changes nothing.
    let now = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if now < 0 {
        return None;
    }
    // SAFETY: as above, with an integer argument.
    let grown = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, WANTED) };
    usize::try_from(if grown < 0 { now } else { grown }).ok()
}

/// `splice(from, NULL, to, NULL, len, SPLICE_F_MOVE)`: up to `len` bytes
/// moved from the pipe `from` to the file `to` at its offset, without a
/// copy through this process (a dump stream received into its memfd).
/// `EINVAL` when `from` is not a pipe (the caller then reads and writes).
///
/// # References
/// splice(2)
pub fn splice_to_file(
    from: &impl std::os::fd::AsRawFd,
    to: &File,
    len: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: both fds are held open by the caller; null offsets make
    // the kernel use (and advance) the files' own positions.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// `fallocate(file, 0, 0, len)`: the memory of a memfd allocated (and
/// zeroed) at once, before the image is moved in.
///
/// # References
/// fallocate(2)
pub fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: an fallocate on an fd we own, with integer arguments.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
