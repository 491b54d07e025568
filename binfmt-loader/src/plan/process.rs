//! The plan's process-wide steps, between the memory and the threads: the
//! mm fields (`PR_SET_MM_MAP`), signal handlers, personality, umask and
//! cwd, the fds, rlimits and MDWE, then (after the threads' own state) the
//! pending signals and the timers.

use image_format::records::PendingSignalRecord;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, op_kind, rule};
use super::builder::Builder;
use super::thread_ops::Who;
use super::{PlanError, PlanInput};
use crate::mm_state;
use crate::sys::{self, nr};

/// `PR_SET_MM`, `PR_SET_MM_MAP`.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
pub(super) const EPERM: u64 = 1;
/// `fcntl` `F_SETFD`, `FD_CLOEXEC`.
const F_SETFD: u64 = 2;
const FD_CLOEXEC: u64 = 1;

/// `struct prctl_mm_map`.
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}
const PRCTL_MM_MAP_SIZE: u64 = 104;
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() as u64 == PRCTL_MM_MAP_SIZE);

/// Step 5: the mm fields in one `PR_SET_MM_MAP`, once every VMA exists.
/// With the exe fd first (privileged); on EPERM again without.
pub(super) fn mm_fields(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    let auxv = if input.auxv.is_empty() {
        0
    } else {
        b.put(input.auxv, 8)?
    };
    let m = input.mm;
    let mut map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv,
        // The kernel refuses more than its `saved_auxv` (EINVAL), so a
        // length beyond u32 can only be refused too.
        auxv_size: u32::try_from(input.auxv.len()).unwrap_or(u32::MAX),
        exe_fd: u32::MAX,
    };
    if let Some(fd) = input.exe_fd {
        let mut with_exe = map;
        // The field is the C struct's `__u32`; the kernel reads it as an int.
        with_exe.exe_fd = u32::from_ne_bytes(fd.to_ne_bytes());
        let a = b.put(with_exe.as_bytes(), 8)?;
        b.op(
            op_kind::SYSCALL,
            rule::OK_OR_ERRNO | rule::SKIP_NEXT_IF_OK,
            nr::PRCTL,
            [PR_SET_MM, PR_SET_MM_MAP, a, PRCTL_MM_MAP_SIZE, 0, 0],
            EPERM,
            format_args!("prctl PR_SET_MM_MAP with exe"),
        )?;
    }
    map.exe_fd = u32::MAX;
    let a = b.put(map.as_bytes(), 8)?;
    b.sys(
        rule::OK,
        nr::PRCTL,
        [PR_SET_MM, PR_SET_MM_MAP, a, PRCTL_MM_MAP_SIZE, 0, 0],
        format_args!("prctl PR_SET_MM_MAP"),
    )
}

/// Step 6: signal handlers (not SIGKILL's and SIGSTOP's), personality,
/// umask, cwd.
pub(super) fn process_state(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for s in input
        .sigactions
        .iter()
        .filter(|s| (1..=64).contains(&s.signo) && s.signo != 9 && s.signo != 19)
    {
        let act = [s.handler, s.flags, s.restorer, s.mask];
        let a = b.put(act.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::RT_SIGACTION,
            [u64::from(s.signo), a, 0, 8, 0, 0],
            format_args!("rt_sigaction {}", s.signo),
        )?;
    }
    b.sys(
        rule::ANY,
        nr::PERSONALITY,
        [u64::from(input.personality), 0, 0, 0, 0, 0],
        format_args!("personality"),
    )?;
    b.sys(
        rule::ANY,
        nr::UMASK,
        [u64::from(input.umask), 0, 0, 0, 0, 0],
        format_args!("umask"),
    )?;
    if let Some(fd) = input.cwd_fd {
        b.sys(
            rule::OK,
            nr::FCHDIR,
            [int_arg(fd), 0, 0, 0, 0, 0],
            format_args!("fchdir cwd"),
        )?;
    }
    Ok(())
}

/// Step 7: every opened fd into place, then close everything else (the
/// image, the mapped files, anything the caller leaked) but the kept fds
/// and the error fd (and the barrier's fds, closed after it).
/// A move of an fd onto itself (a placed fd of a tree restore) sets its
/// `FD_CLOEXEC` instead: dup3 refuses `from == to`.
pub(super) fn files(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for m in input.fd_moves {
        if m.from == m.to {
            b.sys(
                rule::OK,
                nr::FCNTL,
                [int_arg(m.to), F_SETFD, FD_CLOEXEC, 0, 0, 0],
                format_args!("fcntl F_SETFD FD_CLOEXEC {}", m.to),
            )?;
            continue;
        }
        b.op(
            op_kind::SYSCALL,
            rule::EQ,
            nr::DUP3,
            [
                int_arg(m.from),
                int_arg(m.to),
                if m.cloexec != 0 {
                    u64::from(sys::O_CLOEXEC)
                } else {
                    0
                },
                0,
                0,
                0,
            ],
            int_arg(m.to),
            format_args!("dup3 {} to {}", m.from, m.to),
        )?;
    }
    let mut next = 0u64;
    loop {
        // The smallest kept fd at or above `next`.
        let kept = input
            .fd_moves
            .iter()
            .map(|m| m.to)
            .chain(input.keep_fds.iter().copied())
            .chain(input.err_fd)
            .chain(input.barrier.iter().flat_map(|b| [b.ready, b.go]))
            .filter_map(|fd| u64::try_from(fd).ok())
            .filter(|&fd| fd >= next)
            .min();
        match kept {
            Some(k) => {
                if k > next {
                    b.sys(
                        rule::OK,
                        nr::CLOSE_RANGE,
                        [next, k - 1, 0, 0, 0, 0],
                        format_args!("close_range {next}-{}", k - 1),
                    )?;
                }
                next = k + 1;
            }
            None => {
                b.sys(
                    rule::OK,
                    nr::CLOSE_RANGE,
                    [next, u64::from(u32::MAX), 0, 0, 0, 0],
                    format_args!("close_range {next}-"),
                )?;
                break;
            }
        }
    }
    Ok(())
}

/// Step 7a: the terminals' modes (and a window size where the terminal
/// has none) on the fds the task resumes on, now at their numbers.
pub(super) fn terminals(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    use crate::sys::terminal::{IOCTL, TCSETS, TIOCSWINSZ};
    for t in input.terminals {
        let fd = int_arg(t.fd);
        let a = b.put(t.termios.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            IOCTL,
            [fd, TCSETS, a, 0, 0, 0],
            format_args!("ioctl TCSETS fd {}", t.fd),
        )?;
        if t.set_winsize != 0 {
            let a = b.put(t.winsize.as_bytes(), 8)?;
            b.sys(
                rule::OK,
                IOCTL,
                [fd, TIOCSWINSZ, a, 0, 0, 0],
                format_args!("ioctl TIOCSWINSZ fd {}", t.fd),
            )?;
        }
    }
    Ok(())
}

/// Step 7b: resource limits (a hard limit this process may not raise is
/// EPERM, which is let pass), then memory-deny-write-execute, once no area
/// will be made executable.
pub(super) fn limits(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for r in input.rlimits {
        let a = b.put([r.cur, r.max].as_bytes(), 8)?;
        b.op(
            op_kind::SYSCALL,
            rule::OK_OR_ERRNO,
            nr::PRLIMIT64,
            [0, u64::from(r.resource), a, 0, 0, 0],
            EPERM,
            format_args!("prlimit64 {}", r.resource),
        )?;
    }
    if input.mdwe != 0 {
        b.sys(
            rule::OK,
            nr::PRCTL,
            [mm_state::PR_SET_MDWE, input.mdwe, 0, 0, 0, 0],
            format_args!("prctl PR_SET_MDWE"),
        )?;
    }
    Ok(())
}

/// Step 9: pending signals (all blocked until the frame's mask applies).
/// The process-wide ones and the leader's own are queued here; each other
/// thread queues its own from its op list: rt_tgsigqueueinfo refuses
/// (EPERM) a kernel or SI_USER/SI_TKILL code unless the caller's tid is the
/// target tid. Signals sent to the process during the restore are pending
/// already (blocked since `_start`) and so queue before these: a real-time
/// one is delivered before a recorded one of the same number, and a
/// classic one merges with a recorded one of the same number keeping the
/// later siginfo (after the dump the recorded one would have won). The
/// kernel cannot queue at the front, nor say which queue (thread or
/// process) a signal took.
pub(super) fn pending_signals(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    let others = input.threads.get(1..).unwrap_or(&[]);
    for p in input.pending {
        let other = others.iter().any(|t| t.record.tid == p.tid);
        if !other {
            b.queue_signal(input.pid, p, None)?;
        }
    }
    Ok(())
}

/// Step 10: interval timers, armed last.
pub(super) fn timers(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for it in input
        .itimers
        .iter()
        .filter(|it| it.value.sec != 0 || it.value.usec != 0)
    {
        let val = [
            it.interval.sec,
            it.interval.usec,
            it.value.sec,
            it.value.usec,
        ];
        let a = b.put(val.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            nr::SETITIMER,
            [u64::from(it.which), a, 0, 0, 0, 0],
            format_args!("setitimer {}", it.which),
        )?;
    }
    Ok(())
}

/// `RLIMIT_SIGPENDING`.
const RLIMIT_SIGPENDING: u32 = 11;
/// `SIGRTMIN` as the kernel counts it.
const SIGRTMIN: u32 = 32;

/// The recorded pending signals that need a queue entry charged to the
/// user's `RLIMIT_SIGPENDING` count: every real-time signal, and a classic
/// one whose `si_code` is negative (sent with `sigqueue` or `tkill`); the
/// kernel lets the others past the limit (`__send_signal_locked`,
/// `override_rlimit`). At the limit a real-time one fails with EAGAIN
/// after the point of no return, the others lose their siginfo silently.
pub fn charged_signals(pending: &[PendingSignalRecord]) -> u64 {
    let word =
        |s: &[u8; 128], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let n = pending
        .iter()
        .filter(|p| {
            let signo = word(&p.siginfo, 0);
            let code = word(&p.siginfo, 8).cast_signed();
            signo >= SIGRTMIN || code < 0
        })
        .count();
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The recorded pending signals do not fit in the queue this user has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigQueueError {
    pub need: u64,
    pub queued: u64,
    pub limit: u64,
}

impl core::fmt::Display for SigQueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "the task had {} queued signal(s) pending; this user has {} queued already and RLIMIT_SIGPENDING is {}",
            self.need, self.queued, self.limit
        )
    }
}

/// Check that [`charged_signals`] of `pending` fit: `sigq` is the
/// `SigQ:` value of `/proc/self/status` (`queued/limit`: queued counts
/// every process of this user, and the signals sent to this one during the
/// load), and the limit in force when the plan queues them is the task's
/// (`rlimits`, already lowered to what this process may set), else the
/// current one. Without `SigQ` (no `/proc`) nothing is checked.
pub fn check_sigqueue(
    pending: &[PendingSignalRecord],
    rlimits: &[image_format::records::RlimitRecord],
    sigq: Option<(u64, u64)>,
) -> Result<(), SigQueueError> {
    let need = charged_signals(pending);
    let Some((queued, limit_now)) = sigq else {
        return Ok(());
    };
    let limit = rlimits
        .iter()
        .find(|r| r.resource == RLIMIT_SIGPENDING)
        .map_or(limit_now, |r| r.cur);
    // The kernel counts the entry being queued: `count <= limit` passes.
    if need > 0 && queued.saturating_add(need) > limit {
        return Err(SigQueueError {
            need,
            queued,
            limit,
        });
    }
    Ok(())
}

/// The `queued/limit` numbers of the `SigQ:` line in `status` text.
pub fn parse_sigq(status: &[u8]) -> Option<(u64, u64)> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"SigQ:"))?;
    let mut parts = line.split(|&b| b == b'/');
    let mut number = || {
        let digits = parts.next()?.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0u64, |a, &d| {
            a.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }))
    };
    Some((number()?, number()?))
}

impl Builder<'_> {
    /// Queue one pending signal. `thread` None: the leader queues a
    /// process-wide signal (tid 0) or its own; `Some`: the calling (other)
    /// thread queues one to itself, its tid read from the u32 at the
    /// address (where clone3 wrote it).
    pub(super) fn queue_signal(
        &mut self,
        pid: i32,
        p: &PendingSignalRecord,
        thread: Option<(u64, Who)>,
    ) -> Result<(), PlanError> {
        let signo = u64::from(u32::from_le_bytes([
            p.siginfo[0],
            p.siginfo[1],
            p.siginfo[2],
            p.siginfo[3],
        ]));
        let info = self.put(&p.siginfo, 8)?;
        let pid = int_arg(pid);
        match thread {
            None if p.tid == 0 => self.sys(
                rule::OK,
                nr::RT_SIGQUEUEINFO,
                [pid, signo, info, 0, 0, 0],
                format_args!("rt_sigqueueinfo {signo}"),
            ),
            None => self.sys(
                rule::OK,
                nr::RT_TGSIGQUEUEINFO,
                [pid, pid, signo, info, 0, 0],
                format_args!("rt_tgsigqueueinfo {signo}"),
            ),
            Some((addr, who)) => self.sys(
                rule::OK | rule::LOAD_ARG1,
                nr::RT_TGSIGQUEUEINFO,
                [pid, addr, signo, info, 0, 0],
                format_args!("rt_tgsigqueueinfo {signo} to itself{who}"),
            ),
        }
    }
}

#[cfg(test)]
mod sigqueue_tests {
    use super::*;
    use image_format::records::RlimitRecord;
    use zerocopy::FromZeros;

    fn pending(signo: u32, code: i32) -> PendingSignalRecord {
        let mut p = PendingSignalRecord::new_zeroed();
        p.siginfo[0..4].copy_from_slice(&signo.to_le_bytes());
        p.siginfo[8..12].copy_from_slice(&code.to_le_bytes());
        p
    }

    #[test]
    fn sigq_line_parsed() {
        let status = b"Name:\tx\nSigQ:\t3/63457\nSigPnd:\t0\n";
        assert_eq!(parse_sigq(status), Some((3, 63457)));
        assert_eq!(parse_sigq(b"SigQ:\t3\n"), None);
        assert_eq!(parse_sigq(b"Name:\tx\n"), None);
    }

    #[test]
    fn only_signals_that_need_a_queue_entry_count() {
        // SIGUSR1 from kill (SI_USER 0) and from the kernel (positive) pass
        // the limit; from sigqueue (SI_QUEUE -1) and any real-time one do not.
        let list = [
            pending(10, 0),
            pending(10, 1),
            pending(10, -1),
            pending(34, 0),
            pending(35, -1),
        ];
        assert_eq!(charged_signals(&list), 3);
        let rl = |cur| RlimitRecord {
            resource: RLIMIT_SIGPENDING,
            _pad: 0,
            cur,
            max: cur,
        };
        assert_eq!(check_sigqueue(&list, &[], Some((5, 8))), Ok(()));
        assert_eq!(
            check_sigqueue(&list, &[], Some((6, 8))),
            Err(SigQueueError {
                need: 3,
                queued: 6,
                limit: 8
            })
        );
        // The task's limit is the one in force when they are queued.
        assert!(check_sigqueue(&list, &[rl(4)], Some((2, 100))).is_err());
        assert_eq!(check_sigqueue(&list, &[rl(100)], Some((6, 8))), Ok(()));
        assert_eq!(check_sigqueue(&list, &[], None), Ok(()));
        assert_eq!(check_sigqueue(&list[..2], &[], Some((8, 8))), Ok(()));
    }
}
