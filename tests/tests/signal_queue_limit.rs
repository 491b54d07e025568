//! Pending signals that need a queue entry (a real-time one sent with
//! `sigqueue`) are charged to the user's `RLIMIT_SIGPENDING`: an image
//! whose recorded ones do not fit is refused by the loader before anything
//! changes (it failed with EAGAIN after the point of no return).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use crimg_tests::cli;
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

#[test]
fn queued_signals_beyond_the_sigpending_limit_are_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let args = [
        "--tmpdir",
        scratch.path().to_str().unwrap(),
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
    ];
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 2");
    // SIGRTMIN+1 is blocked in the counter: all stay pending (queued).
    for value in 1..=8 {
        crimg_tests::sigqueue(counter.pid(), libc::SIGRTMIN() + 1, value).unwrap();
    }
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    // This user (root: shared with every root process, so with a margin)
    // may queue four signals more than it has queued now: not eight.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let queued: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("SigQ:"))
        .and_then(|q| q.trim().split('/').next()?.parse().ok())
        .expect("SigQ in /proc/self/status");
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--sigpending={}", queued + 4))
        .arg("--")
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let output = cli::run(command, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.signal().is_none() && output.status.code() == Some(10),
        "the loader exited with {}, expected 10; stderr:\n{}",
        output.status,
        output.stderr
    );
    let last = output.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("RLIMIT_SIGPENDING") && last.contains("8 queued signal"),
        "{}",
        output.stderr
    );
    // With room for them, the same image restores.
    let mut restored = bins
        .restore("restored counter", &dumped.dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    // Running again (a signal sent before it is would find the loader).
    restored.expect_line("TICK ");
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(pass.get("rt_pending"), Some("1"), "{}", pass.line());
}
