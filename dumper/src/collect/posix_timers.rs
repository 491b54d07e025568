//! The POSIX timers (`timer_create`): which timers there are, their clock,
//! signal, `sigev_value` and target (`/proc/P/timers`, read before
//! anything is injected, so that a timer that cannot be restored refuses
//! the dump untouched), then each one's interval, time left and overrun,
//! asked inside one borrowed thread (`timer_gettime`, `timer_getoverrun`).
//!
//! Refused by name: a timer whose signal goes to a thread that is not one
//! of the process's, a notify kind the kernel would not take back, and the
//! clocks a restore cannot name again: the CPU clock of another process or
//! thread, a dynamic (fd) clock, and the creating thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`) in a process of more than one thread
//! (`/proc` does not say which thread created it). The overrun count
//! cannot be set by any syscall: the restored timer counts from 0, said in
//! a warning when it was not 0.

use image_format::records::{sigev_notify, PendingSignalRecord, PosixTimerRecord, TimerSpec};

use super::task::Task;
use super::threads::Thread;
use super::{areas, CollectError, Collector};
use crate::procfs::smaps::SmapsEntry;
use crate::procfs::{self, timers::ListedTimer};

/// `CLOCK_PROCESS_CPUTIME_ID` and `CLOCK_THREAD_CPUTIME_ID`, as a
/// restore passes them to `timer_create`.
const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
/// How the kernel keeps those two (`make_process_cpuclock(0, CPUCLOCK_SCHED)`,
/// `make_thread_cpuclock(0, CPUCLOCK_SCHED)`: pid 0, the caller).
const PROCESS_CLOCK: i32 = -6;
const THREAD_CLOCK: i32 = -2;
/// `CLOCKFD`: the low bits of a dynamic clock's id (`FD_TO_CLOCKID`).
const CLOCKFD: i32 = 3;
/// `CPUCLOCK_PERTHREAD_MASK`.
const CPUCLOCK_PERTHREAD: i32 = 4;

/// What `timer_gettime` and `timer_getoverrun` said of one timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerAnswer {
    pub interval: TimerSpec,
    pub left: TimerSpec,
    pub overrun: i32,
}

/// The clock a restore gives `timer_create` for the kernel's `clock`, or
/// why there is none.
pub(super) fn restorable_clock(clock: i32, nthreads: usize) -> Result<i32, String> {
    match clock {
        c if c >= 0 => Ok(c),
        PROCESS_CLOCK => Ok(CLOCK_PROCESS_CPUTIME_ID),
        THREAD_CLOCK if nthreads == 1 => Ok(CLOCK_THREAD_CPUTIME_ID),
        THREAD_CLOCK => Err(
            "counts the CPU time of the thread that created it (CLOCK_THREAD_CPUTIME_ID), \
             and /proc does not say which of the threads that was"
                .into(),
        ),
        c if c & 7 == CLOCKFD => Err(format!(
            "runs on a dynamic clock (clock id {c}, of an open fd), which is not restored"
        )),
        c => {
            let whom = if c & CPUCLOCK_PERTHREAD != 0 {
                "thread"
            } else {
                "process"
            };
            Err(format!(
                "runs on the CPU clock of {whom} {} (clock id {c}), which a restore cannot name",
                !(c >> 3)
            ))
        }
    }
}

/// Why the timer cannot be restored, if it cannot.
fn refusal(t: &ListedTimer, tids: &[i32]) -> Option<String> {
    let why = match restorable_clock(t.clock, tids.len()) {
        Err(why) => why,
        Ok(_) => match t.notify {
            sigev_notify::SIGNAL | sigev_notify::NONE | sigev_notify::THREAD => return None,
            n if n == sigev_notify::SIGNAL | sigev_notify::THREAD_ID => {
                if tids.contains(&t.target) {
                    return None;
                }
                format!(
                    "signals thread {}, which is not a thread of this process",
                    t.target
                )
            }
            n => format!("has notify kind {n:#x}, which the kernel does not create"),
        },
    };
    Some(format!("POSIX timer {} (timer_create) {why}", t.id))
}

/// Step 1, before anything is injected: the timers `/proc/P/timers`
/// lists, each either restorable or refused (forced: dropped, and said).
pub(super) fn list<T: Task>(c: &mut Collector<'_, T>) -> Result<Vec<ListedTimer>, CollectError> {
    // /proc/P/timers exists only with CONFIG_CHECKPOINT_RESTORE.
    let text = match c.read_text("timers") {
        Ok(text) => text,
        Err(e) => {
            c.warnings.push(format!(
                "cannot check for POSIX timers (timer_create): {e}; any the process has are not saved"
            ));
            return Ok(Vec::new());
        }
    };
    let listed = c.parse(procfs::timers::parse(&text))?;
    let mut kept = Vec::with_capacity(listed.len());
    for t in listed {
        match refusal(&t, c.task.tids()) {
            Some(why) => c.unsupported(why)?,
            None => kept.push(t),
        }
    }
    Ok(kept)
}

/// Step 2, with the threads' answers: each listed timer's interval, time
/// left and overrun, asked in the first thread (one borrow for all).
pub(super) fn records<T: Task>(
    c: &mut Collector<'_, T>,
    smaps: &[SmapsEntry],
    threads: &[Thread],
    listed: &[ListedTimer],
) -> Result<Vec<PosixTimerRecord>, CollectError> {
    let Some((thread, found)) = threads.first() else {
        return Ok(Vec::new());
    };
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let pid = c.pid;
    let tid = thread.record.tid;
    let scratch = areas::scratch_for(smaps, found.rsp).map_err(|room| CollectError::NoScratch {
        pid,
        tid,
        rsp: found.rsp,
        room,
    })?;
    let ids: Vec<i32> = listed.iter().map(|t| t.id).collect();
    let answers = c.task.ask_posix_timers(tid, found, scratch, &ids)?;
    if answers.len() != ids.len() {
        return Err(CollectError::Unsupported {
            pid,
            what: format!(
                "thread {tid} answered for {} of its {} POSIX timers",
                answers.len(),
                ids.len()
            ),
        });
    }
    let nthreads = threads.len();
    let mut out = Vec::with_capacity(listed.len());
    for (t, a) in listed.iter().zip(answers) {
        if a.overrun != 0 {
            c.warnings.push(format!(
                "POSIX timer {} had an overrun count of {}; the restored timer counts from 0 \
                 (the kernel has no way to set it)",
                t.id, a.overrun
            ));
        }
        out.push(PosixTimerRecord {
            id: t.id,
            // `list` kept only timers whose clock is restorable.
            clock: restorable_clock(t.clock, nthreads).unwrap_or(t.clock),
            signo: t.signo,
            notify: t.notify,
            tid: if t.notify & sigev_notify::THREAD_ID != 0 {
                t.target
            } else {
                0
            },
            overrun: a.overrun,
            value: t.value,
            interval: a.interval,
            left: a.left,
        });
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// `SI_TIMER`: the `si_code` of a POSIX timer's own signal.
const SI_TIMER: i32 = -2;

/// A timer whose signal was pending at the dump keeps it as its own: the
/// signal is taken out of the pending signals (which the restore would
/// queue as a plain one) and the timer fires again at once (time left
/// 1 ns), so that its own signal is pending again, once, with its value
/// and id, and a periodic timer re-arms when it is taken, as the kernel
/// does (Linux 6.13+). Queued besides, the task would get the expiry
/// twice. (A timer has one such signal at a time; the phase moves to the
/// restore's.)
pub(super) fn own_pending_signals(
    timers: &mut [PosixTimerRecord],
    pending: &mut Vec<PendingSignalRecord>,
) {
    let int_at =
        |s: &[u8; 128], at: usize| i32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let mut owned = vec![false; timers.len()];
    pending.retain(|p| {
        // siginfo: si_signo at 0, si_code at 8, the timer id at 16.
        if int_at(&p.siginfo, 8) != SI_TIMER {
            return true;
        }
        let (signo, id) = (int_at(&p.siginfo, 0), int_at(&p.siginfo, 16));
        let found = timers.iter().position(|t| {
            let queue = if t.notify & sigev_notify::THREAD_ID != 0 {
                t.tid
            } else {
                0
            };
            t.id == id
                && i64::from(t.signo) == i64::from(signo)
                && t.notify != sigev_notify::NONE
                && p.tid == queue
        });
        match found {
            Some(k) if !owned[k] => {
                owned[k] = true;
                timers[k].left = TimerSpec { sec: 0, nsec: 1 };
                false
            }
            _ => true,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(notify: u32, target: i32, clock: i32) -> ListedTimer {
        ListedTimer {
            id: 3,
            signo: 10,
            value: 7,
            notify,
            target,
            clock,
        }
    }

    fn timer_signal(tid: i32, signo: i32, id: i32) -> PendingSignalRecord {
        let mut siginfo = [0u8; 128];
        siginfo[0..4].copy_from_slice(&signo.to_le_bytes());
        siginfo[8..12].copy_from_slice(&SI_TIMER.to_le_bytes());
        siginfo[16..20].copy_from_slice(&id.to_le_bytes());
        PendingSignalRecord {
            tid,
            _pad: 0,
            siginfo,
        }
    }

    #[test]
    fn a_pending_timer_signal_becomes_the_timers_own_again() {
        let timer = |id, notify, tid| PosixTimerRecord {
            id,
            signo: 35,
            notify,
            tid,
            interval: TimerSpec { sec: 1, nsec: 0 },
            left: TimerSpec {
                sec: 0,
                nsec: 400_000_000,
            },
            ..PosixTimerRecord::default()
        };
        let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
        let mut timers = [timer(3, 0, 0), timer(4, to_thread, 101), timer(5, 0, 0)];
        let mut user = timer_signal(0, 35, 5);
        // SI_QUEUE: sent with sigqueue, not the timer's own.
        user.siginfo[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        let mut pending = vec![
            timer_signal(0, 35, 3),
            timer_signal(101, 35, 4),
            // A second one for timer 3 cannot be its own (it has one).
            timer_signal(0, 35, 3),
            // On the wrong queue, of the wrong signal, of no timer.
            timer_signal(0, 35, 4),
            timer_signal(0, 36, 5),
            timer_signal(0, 35, 9),
            user,
        ];
        let kept_before = pending[2..].to_vec();
        own_pending_signals(&mut timers, &mut pending);
        assert_eq!(pending, kept_before);
        let left: Vec<i64> = timers.iter().map(|t| t.left.nsec).collect();
        assert_eq!(left, [1, 1, 400_000_000]);
    }

    #[test]
    fn clocks_are_named_as_timer_create_takes_them() {
        assert_eq!(restorable_clock(1, 3), Ok(1));
        assert_eq!(restorable_clock(0, 1), Ok(0));
        assert_eq!(
            restorable_clock(PROCESS_CLOCK, 4),
            Ok(CLOCK_PROCESS_CPUTIME_ID)
        );
        assert_eq!(
            restorable_clock(THREAD_CLOCK, 1),
            Ok(CLOCK_THREAD_CPUTIME_ID)
        );
        assert!(restorable_clock(THREAD_CLOCK, 2)
            .unwrap_err()
            .contains("CLOCK_THREAD_CPUTIME_ID"));
        // pthread_getcpuclockid of thread 4300: (~4300 << 3) | 6.
        let other = (!4300 << 3) | 6;
        assert!(restorable_clock(other, 2)
            .unwrap_err()
            .contains("CPU clock of thread 4300"));
        assert!(restorable_clock((!77 << 3) | 2, 1)
            .unwrap_err()
            .contains("CPU clock of process 77"));
        assert!(restorable_clock((!5 << 3) | 3, 1)
            .unwrap_err()
            .contains("dynamic clock"));
    }

    #[test]
    fn a_thread_target_must_be_a_thread_of_the_process() {
        let tids = [100, 101];
        let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
        assert_eq!(refusal(&listed(to_thread, 101, 1), &tids), None);
        let why = refusal(&listed(to_thread, 555, 1), &tids).unwrap();
        assert!(
            why.contains("POSIX timer 3") && why.contains("thread 555"),
            "{why}"
        );
        assert_eq!(refusal(&listed(sigev_notify::NONE, 100, 0), &tids), None);
        assert_eq!(refusal(&listed(sigev_notify::THREAD, 100, 0), &tids), None);
        let odd = sigev_notify::THREAD | sigev_notify::THREAD_ID;
        assert!(refusal(&listed(odd, 100, 0), &tids).is_some());
        assert!(refusal(&listed(sigev_notify::SIGNAL, 100, THREAD_CLOCK), &tids).is_some());
    }
}
