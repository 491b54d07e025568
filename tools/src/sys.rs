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

/// `clone3({.set_tid = &pid, .set_tid_size = 1, .exit_signal = SIGCHLD})`
/// with a child that exits at once, then reaps it: whether this process may
/// create a task with a chosen pid (what restoring original pids needs).
///
/// # References
/// clone3(2)
pub fn try_clone3_set_tid(pid: i32) -> std::io::Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
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
