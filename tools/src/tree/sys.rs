//! The system calls of the tree restore that need `unsafe`: process
//! creation with a chosen pid (`clone3` `set_tid`, optionally in a new
//! pid namespace), sessions, groups and the terminal, fd placement, the
//! exec, waiting and signalling.
//!
//! # Safety
//! The orchestrator is single-threaded (it starts no thread and std
//! starts none for it), so a child of `clone3` without `CLONE_VM` is a
//! copy of a whole, consistent process: it may allocate, format and run
//! any of the orchestrator's code, as after `fork()`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use crate::sys::CloneArgs;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// What a `clone3` returned.
pub enum Cloned {
    /// In the parent: the child's pid (in the caller's namespace).
    Parent(i32),
    /// In the child.
    Child,
}

/// `clone3({.flags, .set_tid = &pid, .set_tid_size = 1, .exit_signal =
/// SIGCHLD})`: a copy of this process with pid `pid` (`None`: any pid;
/// with `new_pidns`, `CLONE_NEWPID`: the child is pid 1 of a new
/// namespace). EEXIST: `pid` is taken.
///
/// # References
/// clone3(2)
pub fn clone_with_pid(pid: Option<i32>, new_pidns: bool) -> io::Result<Cloned> {
    let tid = pid.unwrap_or(0);
    let args = CloneArgs {
        flags: if new_pidns {
            libc::CLONE_NEWPID as u64
        } else {
            0
        },
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            &raw const tid as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..CloneArgs::default()
    };
    // SAFETY: like fork() in a single-threaded process (module doc): no
    // CLONE_VM, so the child runs on its own copy of our memory and
    // stack; `args` and `tid` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check_long(r)? {
        0 => Ok(Cloned::Child),
        child => Ok(Cloned::Parent(i32::try_from(child).unwrap_or(-1))),
    }
}

/// `setsid()`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::setsid() }).map(|_| ())
}

/// `setpgid(0, pgid)`.
pub fn setpgid(pgid: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::setpgid(0, pgid) }).map(|_| ())
}

/// `ioctl(fd, TIOCSCTTY, force)`: terminal `fd` becomes this session
/// leader's controlling terminal; with `force` (which needs CAP_SYS_ADMIN)
/// taken from another session if it has it, else refused (`EPERM`) then.
pub fn take_controlling_terminal(fd: RawFd, force: bool) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, libc::c_int::from(force)) }).map(|_| ())
}

/// `ioctl(fd, TIOCSPGRP, &pgid)` with SIGTTOU blocked (a background
/// process changing the foreground group is sent it), the mask restored
/// after.
pub fn set_foreground(fd: RawFd, pgid: i32) -> io::Result<()> {
    // SAFETY: sigset_t values on our stack, valid pointers for the
    // duration of each call; TIOCSPGRP reads one pid_t at `&pgid`.
    unsafe {
        let mut ttou: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &ttou, &mut old);
        let r = check(libc::ioctl(fd, libc::TIOCSPGRP, &raw const pgid));
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r.map(|_| ())
    }
}

/// Whether `fd` is a terminal (`isatty`).
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: no pointers.
    unsafe { libc::isatty(fd) == 1 }
}

/// `dup2(from, to)` (the copy is not close-on-exec).
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        // dup2 to itself keeps FD_CLOEXEC: clear it.
        // SAFETY: F_SETFD takes an integer.
        return check(unsafe { libc::fcntl(from, libc::F_SETFD, 0) }).map(|_| ());
    }
    // SAFETY: no pointers; `to` is ours to replace (a number of the task).
    check(unsafe { libc::dup2(from, to) }).map(|_| ())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: no pointers.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// `close(fd)`.
pub fn close(fd: RawFd) {
    // SAFETY: closing a number this code owns (or, before the exec, one
    // that is not to survive it).
    unsafe { libc::close(fd) };
}

/// `close_range(first, last, 0)`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: no pointers; called just before the exec, when no fd in the
    // range is in use by this code.
    check_long(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(|_| ())
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` holds the two ints pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// `write(fd, buf)` until all is written.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[usize::try_from(n).unwrap_or(0)..];
    }
    Ok(())
}

/// `read(fd, buf)`, retried on EINTR: the bytes read (0: end of file).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(usize::try_from(n).unwrap_or(0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `execve(path, argv, environ)` with every signal blocked (the loader
/// blocks them all from its first instruction; this closes the gap
/// before it). Returns only on failure.
pub fn exec_blocked(path: &CString, argv: &[CString]) -> io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: `ptrs` is a NULL-terminated array of pointers to live
    // C strings; `environ` is the process's environment; the sigset is on
    // our stack.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::execve(path.as_ptr(), ptrs.as_ptr(), environ);
    }
    io::Error::last_os_error()
}

/// `_exit(code)`: leave without running anything of the parent's copy
/// (no destructors, no stdio flush).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

/// Die of signal `sig` as a process with its default disposition does:
/// the handler reset, the signal unblocked, no core file (RLIMIT_CORE 0),
/// then `kill(getpid(), sig)`. Falls back to `_exit(128 + sig)`.
pub fn die_of(sig: i32) -> ! {
    // SAFETY: plain values on our stack; each call's pointers are valid
    // for its duration.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}

/// `waitpid(pid, &status, flags)`: `(pid, raw status)`, `None` with
/// WNOHANG and nothing to reap.
pub fn waitpid(pid: i32, nohang: bool) -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live out-pointer.
        let r = unsafe {
            libc::waitpid(
                pid,
                &mut status,
                if nohang { libc::WNOHANG } else { 0 } | libc::__WALL,
            )
        };
        if r > 0 {
            return Ok(Some((r, status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<RawFd> {
    // SAFETY: no pointers.
    let r = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    Ok(RawFd::try_from(r).unwrap_or(-1))
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_kill(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed (the kernel fills in SI_USER).
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(|_| ())
}

/// `poll(fds, timeout_ms)` on `(fd, events)` pairs: the `revents` of
/// each (EINTR: all zero).
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfds.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|p| p.revents).collect())
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphans of our descendants come
/// back to us instead of to init.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(|_| ())
}

/// Where [`forward_signals`] sends them.
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Whether that process is in our process group (then the terminal's
/// own signals reach it without us).
static SAME_GROUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Relaxed;
    let pid = FORWARD_TO.load(Relaxed);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    if pid > 0 && !(from_terminal && SAME_GROUP.load(Relaxed)) {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// SIGINT, SIGTERM and SIGHUP sent to this process go on to `pid` (which
/// decides what they do), `SA_RESTART` so that waiting goes on; a
/// terminal's Ctrl-C is not sent twice to a `pid` in our process group.
pub fn forward_signals(pid: i32) {
    use std::sync::atomic::Ordering::Relaxed;
    FORWARD_TO.store(pid, Relaxed);
    // SAFETY: no pointers.
    let same = unsafe { libc::getpgid(pid) == libc::getpgid(0) };
    SAME_GROUP.store(same, Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is "no flags, empty mask"; the handler
        // makes atomic loads, reads the siginfo the kernel gives and one
        // kill, all async-signal-safe, and lives as long as the program.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = forward
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as usize;
            act.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Every signal back to its default action (in a child, before it
/// execs or becomes a stand-in): an ignored disposition survives
/// `execve`, and the orchestrator's (SIGPIPE ignored, its forwarding
/// handlers) or its caller's (`nohup`'s SIGHUP, a background job's
/// SIGINT) are not the restored process's; the loader sets the image's.
pub fn default_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restores the default disposition; no pointers kept. A
        // signal the C library reserves refuses it (EINVAL): harmless.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// SIGPIPE ignored: a loader gone while we write to its barrier pipe is
/// an EPIPE, seen and reported, not our death.
pub fn ignore_sigpipe() {
    // SAFETY: sets a disposition, no pointers.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `fcntl(fd, F_SETFL, flags | O_NONBLOCK)`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take integers.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).map(|_| ())
    }
}

/// `prctl(PR_SET_NAME, name)` (cut to 15 bytes by the kernel).
pub fn set_name(name: &str) {
    let Ok(name) = CString::new(name) else { return };
    // SAFETY: `name` is a NUL-terminated string that outlives the call;
    // the kernel copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// Open `name` in directory `dir` for reading, never through a symbolic
/// link (`O_NOFOLLOW`) and without waiting (`O_NONBLOCK`: a FIFO would
/// wait for a writer), close-on-exec. What it is, the caller checks with
/// `fstat` of the file it got (the one it will read).
pub fn open_in(dir: RawFd, name: &str) -> io::Result<std::fs::File> {
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path on our stack; the fd returned is ours.
    let fd = check(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// This process's real uid (whom crrestore-tree acts for).
pub fn real_uid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getuid() }
}

/// This process's session id (`getsid(0)`).
pub fn session_id() -> i32 {
    // SAFETY: no pointers; getsid(0) of the caller cannot fail.
    unsafe { libc::getsid(0) }
}

/// This process's process group (`getpgrp()`).
pub fn process_group() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpgrp() }
}
