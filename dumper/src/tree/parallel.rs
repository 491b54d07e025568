//! The images of a tree written in parallel: one worker thread per CPU
//! (at most one per process), each taking the next process in the tree's
//! order, so a tree of small processes (a shell pipeline) is not written
//! one after the other while a core sits idle, and a large process does
//! not hold up the small ones behind it.
//!
//! What the caller sees is what a sequential write gives: the results in
//! the tree's order, and the first error in that order is the dump's
//! error. Once a job fails no new one starts (those running finish: each
//! writes an anonymous file, which goes away when dropped). Progress is the
//! sum of the workers' bytes, reported from the calling thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::progress::Progress;

/// How often the calling thread reports progress while the workers run.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The workers for `jobs` jobs on this machine.
pub fn workers_for(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(jobs)
        .max(1)
}

/// A job's bytes, added to the total of all jobs.
struct Counted<'a> {
    total: &'a AtomicU64,
    /// What this job reported last.
    last: u64,
}

impl Progress for Counted<'_> {
    fn bytes(&mut self, done: u64, _total: u64) {
        self.total
            .fetch_add(done.saturating_sub(self.last), Ordering::Relaxed);
        self.last = self.last.max(done);
    }
}

/// Run `work(i, progress)` for every job `i` in `0..jobs` on
/// [`workers_for`] threads; `progress` is told the sum of their bytes, of
/// `total`. Each result in its job's place; `None` for a job not started
/// because an earlier-started one failed.
pub fn run_all<T: Send, E: Send>(
    jobs: usize,
    total: u64,
    progress: &mut dyn Progress,
    work: impl Fn(usize, &mut dyn Progress) -> Result<T, E> + Sync,
) -> Vec<Option<Result<T, E>>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done_bytes = AtomicU64::new(0);
    let mut results: Vec<Option<Result<T, E>>> = (0..jobs).map(|_| None).collect();
    let worker = |sender: mpsc::Sender<(usize, Result<T, E>)>| loop {
        if failed.load(Ordering::Acquire) {
            return;
        }
        let i = next.fetch_add(1, Ordering::AcqRel);
        if i >= jobs {
            return;
        }
        let mut counted = Counted {
            total: &done_bytes,
            last: 0,
        };
        let r = work(i, &mut counted);
        if r.is_err() {
            failed.store(true, Ordering::Release);
        }
        // The receiver lives until every worker is done.
        let _ = sender.send((i, r));
    };
    std::thread::scope(|scope| {
        let (sender, finished) = mpsc::channel::<(usize, Result<T, E>)>();
        let mut here = false;
        for _ in 0..workers_for(jobs) {
            let sender = sender.clone();
            let worker = &worker;
            let spawned = std::thread::Builder::new().spawn_scoped(scope, move || worker(sender));
            // A thread that cannot be made (a thread limit): the jobs are
            // done by the others, or here.
            here |= spawned.is_err();
        }
        if here {
            worker(sender.clone());
        }
        drop(sender);
        loop {
            match finished.recv_timeout(PROGRESS_EVERY) {
                Ok((i, r)) => results[i] = Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            progress.bytes(done_bytes.load(Ordering::Relaxed), total);
        }
    });
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    struct Last(u64);

    impl Progress for Last {
        fn bytes(&mut self, done: u64, _total: u64) {
            self.0 = done;
        }
    }

    #[test]
    fn every_job_runs_once_and_results_keep_their_place() {
        let runs: Vec<AtomicUsize> = (0..50).map(|_| AtomicUsize::new(0)).collect();
        let mut last = Last(0);
        let results = run_all(50, 50 * 10, &mut last, |i, progress| {
            runs[i].fetch_add(1, Ordering::Relaxed);
            progress.bytes(4, 10);
            progress.bytes(10, 10);
            Ok::<usize, ()>(i * 2)
        });
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r, Some(Ok(i * 2)));
            assert_eq!(runs[i].load(Ordering::Relaxed), 1);
        }
        assert_eq!(last.0, 500);
    }

    #[test]
    fn after_a_failure_no_new_job_starts_and_the_failure_is_in_its_place() {
        let started = AtomicUsize::new(0);
        let results = run_all(100, 0, &mut NoProgress, |i, _| {
            started.fetch_add(1, Ordering::Relaxed);
            if i == 3 {
                Err(i)
            } else {
                Ok(i)
            }
        });
        assert_eq!(results[3], Some(Err(3)));
        // Jobs are taken in order: everything before the failure ran.
        assert!(results[..3].iter().all(|r| matches!(r, Some(Ok(_)))));
        // At most one job per worker started after it.
        let n = started.load(Ordering::Relaxed);
        assert!(n <= 4 + workers_for(100), "{n} jobs started");
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), n);
    }
}
