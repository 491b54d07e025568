//! The other threads of the task, created before the point of no return.
//!
//! A thread id the image needs can be taken by any task at any moment (a
//! second restore of the same image, above all), so looking for it first
//! and cloning later is a race. Instead every other thread is created here,
//! right after the plan is built and before the trampoline changes
//! anything: `clone3` with its recorded tid (`set_tid`) when the plan asks
//! for it, parked in the window on a futex until the leader has rebuilt the
//! memory (see [`crate::plan`]). From then on the restore holds the tid, as
//! CRIU holds pids by creating them. A tid that is taken (`EEXIST`) is the
//! one moment to decide: by default that thread gets a new tid (one
//! warning); with `--same-ids` the restore stops with
//! [`ExitCode::Environment`]. Either way nothing of the caller's process has
//! changed yet, and `exit_group` takes the parked threads with it.

use core::fmt;

use zerocopy::FromBytes;

use crate::plan::{
    PlanSummary, Range, ThreadClone, CLONE_ARGS_LEN, CLONE_ARGS_SET_TID, CLONE_ARGS_SIZE,
};
use crate::sys::Errno;
use crate::{arch, message, ExitCode};

/// Why the other threads could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadError {
    /// `--same-ids`: a thread id of the image belongs to a live task.
    TidTaken { tid: i32 },
    /// `--same-ids` without the privilege `set_tid` needs.
    SameIdsUnprivileged { threads: usize },
    /// clone3 of the thread that had `tid` failed otherwise.
    Clone { tid: i32, errno: Errno },
    /// The plan's thread table lies outside the window (a planner bug).
    BadTable { at: u64 },
}

impl ThreadError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::Environment
    }
}

impl fmt::Display for ThreadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ThreadError::TidTaken { tid } => write!(
                f,
                "thread id {tid} of the image is in use by another task; --same-ids refuses to give the thread a new one"
            ),
            ThreadError::SameIdsUnprivileged { threads } => write!(
                f,
                "--same-ids: giving the {threads} other thread(s) their ids back needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN"
            ),
            ThreadError::Clone { tid, errno } => {
                write!(f, "cannot create the thread that had id {tid}: {errno}")
            }
            ThreadError::BadTable { at } => {
                write!(f, "internal error: thread table at {at:#x} outside the window")
            }
        }
    }
}

/// What [`create_threads`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Created {
    /// Threads created.
    pub threads: usize,
    /// Of those, the ones whose recorded tid was taken and that got a new
    /// one; `first_taken` is the first such tid.
    pub new_ids: usize,
    pub first_taken: i32,
    /// `set_tid` was refused (EPERM: the caller's capabilities hold in a
    /// user namespace that does not own the pid namespace, e.g. under
    /// `unshare -U -r`): every thread from then on gets a new tid.
    pub unprivileged: bool,
}

/// How to create one thread: `clone3` over its clone args (window bytes),
/// returning the tid or the errno. The loader passes [`WindowCloner`];
/// tests pass a model.
pub trait Cloner {
    fn clone3(&mut self, c: &ThreadClone, args: &[u8]) -> Result<i32, Errno>;
}

/// The real one: through the clone stub of the trampoline copy (`entry`),
/// so the thread runs nothing outside the window; `header` is the window's.
pub struct WindowCloner {
    pub entry: u64,
    pub header: u64,
}

impl Cloner for WindowCloner {
    fn clone3(&mut self, c: &ThreadClone, args: &[u8]) -> Result<i32, Errno> {
        let r = arch::clone_into_window(
            args.as_ptr() as u64,
            CLONE_ARGS_SIZE,
            self.entry,
            self.header,
            c.ops,
            c.count,
        );
        // A tid (a positive i32) or -errno (errno at most 4095).
        match i32::try_from(r) {
            Ok(tid) if tid >= 0 => Ok(tid),
            _ => Err(Errno(u16::try_from(r.unsigned_abs()).unwrap_or(u16::MAX))),
        }
    }
}

/// The clone3 `set_tid` array pointer and size of `args`.
fn set_tid_of(args: &[u8]) -> (u64, u64) {
    let word = |off: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&args[off..off + 8]);
        u64::from_le_bytes(w)
    };
    (word(CLONE_ARGS_SET_TID), word(CLONE_ARGS_SET_TID + 8))
}

/// Create every other thread of `summary`'s plan, which lives in `buf`
/// (the window's bytes, mapped at `window.start`). `same_ids`: a taken
/// recorded tid is an error instead of a new tid.
pub fn create_threads(
    buf: &mut [u8],
    window: Range,
    summary: &PlanSummary,
    same_ids: bool,
    cloner: &mut impl Cloner,
) -> Result<Created, ThreadError> {
    let mut done = Created::default();
    let size = core::mem::size_of::<ThreadClone>();
    for k in 0..summary.nclones {
        let at = summary.clones + (k * size) as u64;
        let bad = ThreadError::BadTable { at };
        let offset = |addr: u64| {
            addr.checked_sub(window.start)
                .and_then(|off| usize::try_from(off).ok())
                .ok_or(bad)
        };
        let off = offset(at)?;
        let (c, _) = buf
            .get(off..)
            .and_then(|b| ThreadClone::read_from_prefix(b).ok())
            .ok_or(bad)?;
        let args_off = offset(c.args)?;
        let args_range = args_off..args_off + CLONE_ARGS_LEN;
        let args = buf.get_mut(args_range.clone()).ok_or(bad)?;
        if done.unprivileged {
            args[CLONE_ARGS_SET_TID..CLONE_ARGS_SET_TID + 16].fill(0);
        }
        let with_tid = set_tid_of(args).1 != 0;
        match cloner.clone3(&c, args) {
            Ok(_) => {}
            Err(Errno::EPERM) if with_tid && same_ids => {
                return Err(ThreadError::SameIdsUnprivileged {
                    threads: summary.nclones,
                })
            }
            Err(Errno::EPERM) if with_tid => {
                // Not privileged where it counts (the pid namespace's
                // owner): like an unprivileged caller, new tids from now.
                args[CLONE_ARGS_SET_TID..CLONE_ARGS_SET_TID + 16].fill(0);
                done.unprivileged = true;
                cloner
                    .clone3(&c, &buf[args_range])
                    .map_err(|errno| ThreadError::Clone { tid: c.tid, errno })?;
            }
            Err(Errno::EEXIST) if with_tid && same_ids => {
                return Err(ThreadError::TidTaken { tid: c.tid })
            }
            Err(Errno::EEXIST) if with_tid => {
                // Taken: this thread gets a new tid.
                args[CLONE_ARGS_SET_TID..CLONE_ARGS_SET_TID + 16].fill(0);
                if done.new_ids == 0 {
                    done.first_taken = c.tid;
                }
                done.new_ids += 1;
                cloner
                    .clone3(&c, &buf[args_range])
                    .map_err(|errno| ThreadError::Clone { tid: c.tid, errno })?;
            }
            Err(errno) => return Err(ThreadError::Clone { tid: c.tid, errno }),
        }
        done.threads += 1;
    }
    Ok(done)
}

/// Say that the `others` other threads get new ids: without the privilege
/// `set_tid` needs, the plan asks for none.
pub fn report_unprivileged(name: &[u8], others: usize) {
    message::report(
        name,
        format_args!(
            "warning: not privileged: the {others} other thread(s) get new thread ids (restoring them needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"
        ),
    );
}

/// Say once that threads got new ids because theirs were taken.
pub fn report(name: &[u8], created: &Created) {
    if created.unprivileged {
        report_unprivileged(name, created.threads);
    }
    if created.new_ids > 0 {
        message::report(
            name,
            format_args!(
                "warning: thread id {} of the image is in use by another task; {} of {} thread(s) get new thread ids (--same-ids refuses instead)",
                created.first_taken, created.new_ids, created.threads
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Tids in use; clone3 with set_tid of one of them fails with EEXIST.
    struct Model {
        taken: BTreeSet<i32>,
        next: i32,
        calls: Vec<(i32, bool)>,
    }

    impl Cloner for Model {
        fn clone3(&mut self, c: &ThreadClone, args: &[u8]) -> Result<i32, Errno> {
            let (_, n) = set_tid_of(args);
            self.calls.push((c.tid, n != 0));
            if n != 0 {
                if !self.taken.insert(c.tid) {
                    return Err(Errno::EEXIST);
                }
                return Ok(c.tid);
            }
            self.next += 1;
            self.taken.insert(self.next);
            Ok(self.next)
        }
    }

    /// A window with a table of `tids.len()` entries, each with clone args
    /// asking for its tid.
    fn window(tids: &[i32]) -> (Vec<u8>, Range, PlanSummary) {
        let base = 0x10_0000u64;
        let mut buf = vec![0u8; 4096];
        let table = 0x100usize;
        for (k, &tid) in tids.iter().enumerate() {
            let args = 0x400 + k * 128;
            let c = ThreadClone {
                args: base + args as u64,
                ops: base + 0x800,
                count: 3,
                tid,
                _pad: 0,
            };
            let at = table + k * core::mem::size_of::<ThreadClone>();
            buf[at..at + 32].copy_from_slice(zerocopy::IntoBytes::as_bytes(&c));
            buf[args + CLONE_ARGS_SET_TID..args + CLONE_ARGS_SET_TID + 8]
                .copy_from_slice(&(base + 0xf00).to_le_bytes());
            buf[args + CLONE_ARGS_SET_TID + 8..args + CLONE_ARGS_SET_TID + 16]
                .copy_from_slice(&1u64.to_le_bytes());
        }
        let window = Range {
            start: base,
            end: base + 4096,
        };
        let summary = PlanSummary {
            ops: 0,
            window,
            window_left: false,
            entry: base,
            clones: base + table as u64,
            nclones: tids.len(),
        };
        (buf, window, summary)
    }

    #[test]
    fn free_tids_are_taken_by_creating_the_threads() {
        let (mut buf, w, s) = window(&[501, 502, 503]);
        let mut m = Model {
            taken: BTreeSet::new(),
            next: 1000,
            calls: vec![],
        };
        let done = create_threads(&mut buf, w, &s, true, &mut m).unwrap();
        assert_eq!(done.threads, 3);
        assert_eq!(done.new_ids, 0);
        assert_eq!(m.calls, vec![(501, true), (502, true), (503, true)]);
        // A second restore of the same image now finds them taken.
        let (mut buf2, w2, s2) = window(&[501, 502, 503]);
        assert_eq!(
            create_threads(&mut buf2, w2, &s2, true, &mut m),
            Err(ThreadError::TidTaken { tid: 501 })
        );
        let done = create_threads(&mut buf2, w2, &s2, false, &mut m).unwrap();
        assert_eq!(done.threads, 3);
        assert_eq!(done.new_ids, 3);
        assert_eq!(done.first_taken, 501);
        // Each retried once without set_tid, and the window says so.
        assert_eq!(set_tid_of(&buf2[0x400..0x400 + 88]), (0, 0));
    }

    #[test]
    fn only_the_taken_tid_falls_back() {
        let (mut buf, w, s) = window(&[601, 602]);
        let mut m = Model {
            taken: [602].into_iter().collect(),
            next: 2000,
            calls: vec![],
        };
        let done = create_threads(&mut buf, w, &s, false, &mut m).unwrap();
        assert_eq!((done.threads, done.new_ids, done.first_taken), (2, 1, 602));
        assert_eq!(m.calls, vec![(601, true), (602, true), (602, false)]);
    }

    /// A caller privileged only in its own user namespace: set_tid is
    /// refused (EPERM), every thread gets a new tid, or --same-ids refuses.
    struct NoSetTid {
        calls: Vec<(i32, bool)>,
    }

    impl Cloner for NoSetTid {
        fn clone3(&mut self, c: &ThreadClone, args: &[u8]) -> Result<i32, Errno> {
            let with_tid = set_tid_of(args).1 != 0;
            self.calls.push((c.tid, with_tid));
            if with_tid {
                Err(Errno::EPERM)
            } else {
                Ok(3000)
            }
        }
    }

    #[test]
    fn set_tid_refused_gives_new_tids_unless_same_ids() {
        let (mut buf, w, s) = window(&[801, 802]);
        let mut m = NoSetTid { calls: vec![] };
        let done = create_threads(&mut buf, w, &s, false, &mut m).unwrap();
        assert_eq!(
            (done.threads, done.new_ids, done.unprivileged),
            (2, 0, true)
        );
        // Asked once with set_tid; the next thread not at all.
        assert_eq!(m.calls, vec![(801, true), (801, false), (802, false)]);
        let (mut buf, w, s) = window(&[801, 802]);
        assert_eq!(
            create_threads(&mut buf, w, &s, true, &mut NoSetTid { calls: vec![] }),
            Err(ThreadError::SameIdsUnprivileged { threads: 2 })
        );
    }

    #[test]
    fn other_clone_errors_are_reported_with_the_tid() {
        struct Fails;
        impl Cloner for Fails {
            fn clone3(&mut self, _: &ThreadClone, _: &[u8]) -> Result<i32, Errno> {
                Err(Errno(11))
            }
        }
        let (mut buf, w, s) = window(&[701]);
        assert_eq!(
            create_threads(&mut buf, w, &s, false, &mut Fails),
            Err(ThreadError::Clone {
                tid: 701,
                errno: Errno(11)
            })
        );
    }
}
