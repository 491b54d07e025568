//! End-to-end restore of POSIX timers (`timer_create`): the workload
//! `posix_timers` has four (a periodic process signal with a `sival_int`,
//! a one-shot on `CLOCK_REALTIME` an hour away with a 64-bit `sival_ptr`,
//! a periodic signal to its worker thread, a `SIGEV_NONE` one on
//! `CLOCK_BOOTTIME`), made after other timers were deleted so that their
//! ids are not the ones a fresh process gets. After the restore it checks
//! each itself: the same ids in `/proc/self/timers`, the same intervals,
//! signals that keep arriving with their values, the worker's still queued
//! for the worker thread. The test compares the time left it prints with
//! what the image recorded.

use std::path::Path;
use std::process::Command;

use image_format::records::{sigev_notify, PosixTimerRecord};
use image_format::Image;

use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, workload_path, Workload};

/// Who runs the loader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Root,
    /// Root without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE: no set_tid,
    /// so the worker gets a new tid, which its timer must name.
    RootWithoutRestoreCaps,
}

/// `"3599.494902287"` as nanoseconds.
fn nanos(s: &str) -> i128 {
    let (sec, nsec) = s.split_once('.').expect("sec.nsec");
    i128::from(sec.parse::<i64>().unwrap()) * 1_000_000_000
        + i128::from(nsec.parse::<i64>().unwrap())
}

fn recorded(image: &Path) -> Vec<PosixTimerRecord> {
    let bytes = std::fs::read(image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    img.records::<PosixTimerRecord>().unwrap().collect()
}

fn posix_timers_survive(runner: Runner) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original =
        Workload::spawn_command("posix_timers", Command::new(workload_path("posix_timers")))
            .unwrap();
    if let Err(err) = original.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let dumped = dump_and_kill(&bins, original, &scratch.path().join("out"));
    let ids = dumped.ready.get("ids").unwrap().to_owned();
    let field = |key: &str| -> i32 { dumped.ready.get(key).unwrap().parse().unwrap() };
    let (oneshot, silent) = (field("oneshot"), field("silent"));

    // What the image holds: the four ids, by id, with their kinds.
    let timers = recorded(&dumped.dump.image);
    let listed: Vec<String> = timers.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(listed.join(","), ids, "{timers:?}");
    let by_id = |id: i32| *timers.iter().find(|t| t.id == id).unwrap();
    let to_worker = timers
        .iter()
        .find(|t| t.notify == sigev_notify::SIGNAL | sigev_notify::THREAD_ID)
        .expect("the worker's timer is recorded as SIGEV_THREAD_ID");
    assert_eq!(to_worker.tid, field("worker"));
    assert_eq!(to_worker.value, 0x5678);
    assert_eq!(
        (to_worker.interval.sec, to_worker.interval.nsec),
        (0, 30_000_000)
    );
    assert_eq!(by_id(oneshot).value, 0xfeed_face_cafe);
    assert_eq!(by_id(oneshot).clock, 0);
    assert_eq!(
        (by_id(silent).clock, by_id(silent).notify),
        (7, sigev_notify::NONE)
    );

    let loader = match runner {
        Runner::Root => bins.loader_command(&dumped.dump.image),
        Runner::RootWithoutRestoreCaps => {
            let mut c = Command::new("setpriv");
            c.arg("--bounding-set=-sys_admin,-checkpoint_restore")
                .arg(&bins.loader)
                .arg(&dumped.dump.image);
            c
        }
    };
    let mut restored = Workload::spawn_command("restored posix_timers", loader).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("ids"), Some(ids.as_str()), "{}", pass.line());
    // The time left runs on from what was recorded: less now, by about
    // the time the restored task has run (well under a minute).
    for (id, key) in [(oneshot, "oneshot_left"), (silent, "silent_left")] {
        let t = by_id(id);
        let at_dump = i128::from(t.left.sec) * 1_000_000_000 + i128::from(t.left.nsec);
        let now = nanos(pass.get(key).unwrap());
        assert!(
            now <= at_dump && at_dump - now < 60_000_000_000,
            "timer {id}: {at_dump} ns left at the dump, {now} ns after the restore"
        );
    }
    let stderr = restored.stderr_lines().to_vec();
    assert!(
        !stderr.iter().any(|line| line.contains("restore failed")),
        "{}",
        restored.stderr_report()
    );
    if runner == Runner::RootWithoutRestoreCaps {
        if let Err(err) = restored.wait_stderr_containing("get new thread ids", LINE_TIMEOUT) {
            panic!("{err}\n{}", restored.stderr_report());
        }
    }
}

#[test]
fn posix_timers_keep_their_ids_signals_and_phase() {
    crimg_tests::skip_unless_root!();
    posix_timers_survive(Runner::Root);
}

/// The worker gets a new tid: its timer's sigevent names the new one.
#[test]
fn a_thread_timer_follows_its_thread_to_a_new_tid() {
    crimg_tests::skip_unless_root!();
    posix_timers_survive(Runner::RootWithoutRestoreCaps);
}
