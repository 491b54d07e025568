//! A thread in `rt_sigsuspend` runs under a temporary signal mask; the dump
//! must record its real mask (from the kernel's saved_sigmask), and after a
//! `leave_running` dump the thread must still wait in sigsuspend with its
//! temporary mask and take the signal (workload `sigsuspend_mask`). Needs
//! root: skips otherwise, saying why.

use std::time::Duration;

use crimg_tests::process::wait_in_syscall;
use crimg_tests::{scratch_dir, skip_unless_root, Workload};
use dumper::{DumpOptions, NoProgress};
use image_format::Image;
use nix::sys::signal::Signal;

#[test]
fn sigsuspend_keeps_its_real_mask() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = Workload::start("sigsuspend_mask", std::iter::empty::<&str>());
    let pid = target.pid();
    // Wait until it sits in rt_sigsuspend (130): the kernel's own view.
    wait_in_syscall(pid, 130, Duration::from_secs(20)).unwrap();

    let out = scratch.path().join("out");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    let report = dumper::dump(pid, &out, &opts, &mut NoProgress).expect("dump");
    let bytes = std::fs::read(&report.image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let t = img.threads().next().unwrap().unwrap();
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(
        t.record.sigmask & (bit(libc::SIGUSR1) | bit(libc::SIGUSR2)),
        bit(libc::SIGUSR1) | bit(libc::SIGUSR2),
        "the temporary mask was recorded instead of the real one: {:#x}",
        t.record.sigmask
    );

    // Runs on in sigsuspend with its temporary mask: SIGUSR1 is taken.
    target.signal(Signal::SIGUSR1).unwrap();
    assert_eq!(target.expect_line("got"), "got");
}
