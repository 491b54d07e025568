//! `ptrace(2)` requests used to freeze a thread group, read its registers and
//! borrow a thread to run a system call.
//!
//! # Safety
//!
//! Every request passes pointers to buffers owned by the caller and sized by
//! the types of the wrappers' arguments; the kernel writes at most `iov_len`
//! (or the documented struct size) bytes into them.
//!
//! The request's arguments are machine words: option bits, note types and
//! signal numbers (all small and non-negative) go into `usize` as they are
//! on x86_64, the only target.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io;

use image_format::elf::UserRegs;
use zerocopy::{FromZeros, IntoBytes};

/// `PTRACE_SEIZE`.
const PTRACE_SEIZE: libc::c_uint = 0x4206;
/// `PTRACE_INTERRUPT`.
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
/// `PTRACE_GETREGSET`.
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
/// `PTRACE_SETREGSET`.
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
/// `PTRACE_PEEKSIGINFO`.
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
/// `PTRACE_GETSIGMASK`.
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
/// `PTRACE_SETSIGMASK`.
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
/// `PTRACE_GET_RSEQ_CONFIGURATION`.
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `PTRACE_DETACH`.
const PTRACE_DETACH: libc::c_uint = 17;
/// `PTRACE_SYSCALL`.
const PTRACE_SYSCALL: libc::c_uint = 24;
/// `PTRACE_CONT`.
const PTRACE_CONT: libc::c_uint = 7;

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u64 = 1;
/// `PTRACE_O_EXITKILL`: the kernel sends SIGKILL to the tracee if the
/// tracer exits (even when killed itself) while it is still attached.
pub const PTRACE_O_EXITKILL: u64 = 1 << 20;
/// `PTRACE_SETOPTIONS`.
const PTRACE_SETOPTIONS: libc::c_uint = 0x4200;
/// `PTRACE_EVENT_STOP`: the event of a `PTRACE_INTERRUPT` (or group) stop.
pub const PTRACE_EVENT_STOP: i32 = 128;
/// `PTRACE_PEEKSIGINFO_SHARED`: peek the process-wide queue.
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

/// `NT_PRSTATUS` regset number.
const NT_PRSTATUS: libc::c_ulong = 1;
/// `NT_X86_XSTATE` regset number.
const NT_X86_XSTATE: libc::c_ulong = 0x202;
/// Upper bound for the xsave area (AMX machines need ~11 KiB).
const XSTATE_MAX: usize = 64 * 1024;

/// A failed ptrace (or `waitpid`) request on thread `tid` of process `pid`.
#[derive(Debug, thiserror::Error)]
#[error("pid {pid} tid {tid}: {what}: {source}")]
pub struct PtraceError {
    pub pid: i32,
    pub tid: i32,
    /// The request, e.g. `PTRACE_GETREGSET`.
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

impl PtraceError {
    /// A `map_err` adapter: `ptrace::get_regs(tid).map_err(PtraceError::at(pid, tid, "PTRACE_GETREGSET"))`.
    pub fn at(pid: i32, tid: i32, what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| PtraceError {
            pid,
            tid,
            what,
            source,
        }
    }
}

/// One `ptrace(request, tid, addr, data)` call that returns 0 or -1.
///
/// # Safety
///
/// `addr` and `data` must be valid for what `request` does with them.
unsafe fn request(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<i64> {
    // SAFETY: the caller guarantees that addr/data fit the request.
    let r = unsafe {
        libc::ptrace(
            request,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ptrace(PTRACE_SEIZE, tid, 0, options)`: attach without stopping.
///
/// # References
/// `ptrace(2)`.
pub fn seize(tid: i32, options: u64) -> io::Result<()> {
    // SAFETY: SEIZE reads no memory; options is passed by value.
    unsafe { request(PTRACE_SEIZE, tid, 0, options as usize) }.map(drop)
}

/// `ptrace(PTRACE_SETOPTIONS, tid, 0, options)`: replace the options of a
/// stopped tracee.
///
/// # References
/// `ptrace(2)`.
pub fn set_options(tid: i32, options: u64) -> io::Result<()> {
    // SAFETY: SETOPTIONS reads no memory; options is passed by value.
    unsafe { request(PTRACE_SETOPTIONS, tid, 0, options as usize) }.map(drop)
}

/// `ptrace(PTRACE_INTERRUPT, tid, 0, 0)`: ask a seized thread to stop.
pub fn interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: INTERRUPT takes no pointers.
    unsafe { request(PTRACE_INTERRUPT, tid, 0, 0) }.map(drop)
}

/// `ptrace(PTRACE_DETACH, tid, 0, 0)`: detach from a stopped thread, which
/// then runs on without a signal.
pub fn detach(tid: i32) -> io::Result<()> {
    // SAFETY: DETACH takes no pointers; data 0 means "no signal".
    unsafe { request(PTRACE_DETACH, tid, 0, 0) }.map(drop)
}

/// `ptrace(PTRACE_SYSCALL, tid, 0, 0)`: resume until the next syscall entry
/// or exit.
pub fn resume_to_syscall(tid: i32) -> io::Result<()> {
    // SAFETY: SYSCALL takes no pointers; data 0 means "no signal".
    unsafe { request(PTRACE_SYSCALL, tid, 0, 0) }.map(drop)
}

/// `ptrace(PTRACE_CONT, tid, 0, 0)`: resume without a signal.
pub fn resume(tid: i32) -> io::Result<()> {
    // SAFETY: CONT takes no pointers; data 0 means "no signal".
    unsafe { request(PTRACE_CONT, tid, 0, 0) }.map(drop)
}

/// `ptrace(PTRACE_CONT, tid, 0, sig)`: resume, delivering `sig`.
pub fn resume_with_signal(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: CONT takes no pointers; data is the signal number.
    unsafe { request(PTRACE_CONT, tid, 0, sig as usize) }.map(drop)
}

/// `ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, &iov)`: the general registers.
pub fn get_regs(tid: i32) -> io::Result<UserRegs> {
    let mut regs = UserRegs::new_zeroed();
    let bytes = regs.as_mut_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: iov describes `regs`, which lives across the call; the kernel
    // writes at most iov_len bytes.
    unsafe {
        request(
            PTRACE_GETREGSET,
            tid,
            NT_PRSTATUS as usize,
            &raw mut iov as usize,
        )
    }?;
    if iov.iov_len != size_of::<UserRegs>() {
        return Err(io::Error::other(format!(
            "NT_PRSTATUS is {} bytes, expected 216",
            iov.iov_len
        )));
    }
    Ok(regs)
}

/// `ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, &iov)`: load the general registers.
pub fn set_regs(tid: i32, regs: &UserRegs) -> io::Result<()> {
    let mut copy = *regs;
    let bytes = copy.as_mut_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: iov describes `copy`, which lives across the call; the kernel
    // only reads it.
    unsafe {
        request(
            PTRACE_SETREGSET,
            tid,
            NT_PRSTATUS as usize,
            &raw mut iov as usize,
        )
    }
    .map(drop)
}

/// `ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, &iov)`: the xsave area in
/// standard format, as long as the kernel says it is.
pub fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf` (XSTATE_MAX bytes); the kernel writes at
    // most that much and stores the length it wrote in iov_len.
    unsafe {
        request(
            PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &raw mut iov as usize,
        )
    }?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `ptrace(PTRACE_GETSIGMASK, tid, 8, &mask)`: the blocked signal set.
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: the kernel writes exactly 8 bytes (the size passed) to `mask`.
    unsafe { request(PTRACE_GETSIGMASK, tid, 8, &raw mut mask as usize) }?;
    Ok(mask)
}

/// `ptrace(PTRACE_SETSIGMASK, tid, 8, &mask)`: set the blocked signal set.
pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    let mut copy = mask;
    // SAFETY: the kernel reads exactly 8 bytes from `copy`.
    unsafe { request(PTRACE_SETSIGMASK, tid, 8, &raw mut copy as usize) }.map(drop)
}

/// `struct ptrace_rseq_configuration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RseqConfiguration {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// `ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, size, &conf)`: the thread's
/// registered rseq area (all zero when none).
pub fn get_rseq_configuration(tid: i32) -> io::Result<RseqConfiguration> {
    let mut conf = RseqConfiguration::default();
    // SAFETY: the kernel writes at most `size` bytes to `conf`.
    unsafe {
        request(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size_of::<RseqConfiguration>(),
            &raw mut conf as usize,
        )
    }?;
    Ok(conf)
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `ptrace(PTRACE_PEEKSIGINFO, tid, &args, buf)`: copy up to `buf.len()`
/// queued siginfos starting at `offset`, from the thread's own queue or the
/// process-wide one (`shared`), without dequeuing them. Returns how many.
pub fn peek_siginfo(
    tid: i32,
    offset: u64,
    shared: bool,
    buf: &mut [[u8; 128]],
) -> io::Result<usize> {
    let mut args = PeekSiginfoArgs {
        off: offset,
        flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
        nr: i32::try_from(buf.len()).unwrap_or(i32::MAX),
    };
    // SAFETY: args lives across the call; the kernel writes at most args.nr
    // siginfos of 128 bytes into buf, which holds buf.len() of them.
    let n = unsafe {
        request(
            PTRACE_PEEKSIGINFO,
            tid,
            &raw mut args as usize,
            buf.as_mut_ptr() as usize,
        )
    }?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `waitpid(tid, &status, __WALL | flags)`, retried on `EINTR`; `Ok(None)`
/// with `WNOHANG` when nothing changed.
fn waitpid(tid: i32, flags: i32) -> io::Result<Option<i32>> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(tid, &raw mut status, libc::__WALL | flags) };
        match r {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Ok(None),
            _ => return Ok(Some(status)),
        }
    }
}

/// `waitpid(tid, &status, __WALL | WNOHANG)`: the state change of a traced
/// thread if one is queued, else `None` (for a wait that can be given up).
pub fn try_wait(tid: i32) -> io::Result<Option<i32>> {
    waitpid(tid, libc::WNOHANG)
}

/// Reap the exit of `tid` if it has exited, and nothing else:
/// `waitid(P_PID, tid, WEXITED | WNOHANG | __WALL)` (stops stay queued).
fn reap_exited(tid: i32) {
    // SAFETY: an all-zero siginfo_t is valid; the kernel fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let id = libc::id_t::try_from(tid).unwrap_or(0);
    // SAFETY: info is a valid out-pointer for the call.
    unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG | libc::__WALL,
        )
    };
}

/// Wait for a state change of a traced thread; returns the raw status.
///
/// A thread-group leader needs care: when the process is killed, the
/// leader's exit is reported only once every other thread is gone, and a
/// traced thread is gone only when its tracer has reaped it. A blocking
/// `waitpid(leader)` while crdump traces other threads of a dying process
/// would wait forever. So a leader that has nothing to report at once is
/// polled, and meanwhile the exits of its other threads are reaped (their
/// stops stay queued for whoever waits for them).
pub fn wait(tid: i32) -> io::Result<i32> {
    if let Some(status) = waitpid(tid, libc::WNOHANG)? {
        return Ok(status);
    }
    if !is_group_leader(tid) {
        return waitpid(tid, 0).map(|s| s.unwrap_or(0));
    }
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        if let Some(status) = waitpid(tid, libc::WNOHANG)? {
            return Ok(status);
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{tid}/task")) {
            for t in tasks.flatten() {
                if let Some(other) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    if other != tid {
                        reap_exited(other);
                    }
                }
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(2));
    }
}

/// Whether `tid` is its thread group's leader (`Tgid:` in its status
/// equals it); false when that cannot be read.
fn is_group_leader(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        == Some(tid)
}

/// How a traced thread changed state (decoded `waitpid` status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP`: interrupt or group stop (with the stop signal).
    Event { event: i32, signal: i32 },
    /// Syscall entry or exit stop (`SIGTRAP | 0x80`).
    Syscall,
    /// Signal-delivery stop.
    Signal(i32),
    /// The thread exited with this code.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

/// Decode a raw `waitpid` status of a seized thread.
pub fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event != 0 {
            Stop::Event { event, signal: sig }
        } else if sig == (libc::SIGTRAP | 0x80) {
            Stop::Syscall
        } else {
            Stop::Signal(sig)
        }
    }
}
