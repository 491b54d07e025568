//! End-to-end restore of POSIX timers (`timer_create`): the workload
//! `posix_timers` has four (a periodic process signal with a `sival_int`,
//! a one-shot on `CLOCK_REALTIME` an hour away with a 64-bit `sival_ptr`,
//! a periodic signal to its worker thread, a `SIGEV_NONE` one on
//! `CLOCK_BOOTTIME`, and one whose signal is pending, blocked, at the
//! dump), made after other timers were deleted so that their
//! ids are not the ones a fresh process gets. After the restore it checks
//! each itself: the same ids in `/proc/self/timers`, the same intervals,
//! signals that keep arriving with their values, the worker's still queued
//! for the worker thread, the held one's pending once, as the timer's own
//! (a copy queued besides would be taken first, counting no overrun). The
//! test compares the time left it prints with what the image recorded.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use image_format::records::{sigev_notify, PosixTimerRecord};
use image_format::Image;

use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, dump_and_kill};
use crimg_tests::{binaries, scratch_dir, workload_path, Workload};

/// Who runs the loader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Root,
    /// nobody:nogroup runs the workload and the loader: no privilege at
    /// all (the restore-ids prctl needs none), and a new tid.
    Nobody,
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
    let command = if runner == Runner::Nobody {
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = as_nobody();
        c.arg(workload_path("posix_timers"));
        c
    } else {
        Command::new(workload_path("posix_timers"))
    };
    let mut original = Workload::spawn_command("posix_timers", command).unwrap();
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
    // The held timer's pending signal is its own again: it fires at once.
    let held = timers.iter().find(|t| t.value == 0x9abc).unwrap();
    assert_eq!((held.left.sec, held.left.nsec), (0, 1));

    // `crimg info` lists them.
    let mut info = bins.crimg_command(["info"]);
    info.arg(&dumped.dump.image);
    let info = crimg_tests::cli::run_ok(info, crimg_tests::cli::CLI_TIMEOUT).unwrap();
    assert!(info.stdout.contains("POSIX timers (5):"), "{}", info.stdout);
    assert!(
        info.stdout
            .contains(&format!("thread-id to tid {}", field("worker"))),
        "{}",
        info.stdout
    );

    let loader = match runner {
        Runner::Root => bins.loader_command(&dumped.dump.image),
        Runner::Nobody => {
            // Let nobody read the image root wrote.
            let dir = dumped.dump.image.parent().unwrap();
            for (path, mode) in [(dir, 0o755), (dumped.dump.image.as_path(), 0o644)] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let mut c = as_nobody();
            c.arg(&bins.loader).arg(&dumped.dump.image);
            c
        }
        Runner::RootWithoutRestoreCaps => {
            let mut c = Command::new("setpriv");
            c.arg("--bounding-set=-sys_admin,-checkpoint_restore")
                .arg(&bins.loader)
                .arg(&dumped.dump.image);
            c
        }
    };
    let started = std::time::Instant::now();
    let mut restored = Workload::spawn_command("restored posix_timers", loader).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    let ran = i128::try_from(started.elapsed().as_nanos()).unwrap();
    assert_eq!(pass.get("ids"), Some(ids.as_str()), "{}", pass.line());
    assert!(pass.get("held_overrun").is_some(), "{}", pass.line());
    // The time left runs on from what was recorded: less now, by no more
    // than the restored task has run (the time between the dump and the
    // restore does not count: the timers are relative, as itimers).
    for (id, key) in [(oneshot, "oneshot_left"), (silent, "silent_left")] {
        let t = by_id(id);
        let at_dump = i128::from(t.left.sec) * 1_000_000_000 + i128::from(t.left.nsec);
        let now = nanos(pass.get(key).unwrap());
        assert!(
            now <= at_dump && at_dump - now <= ran,
            "timer {id}: {at_dump} ns left at the dump, {now} ns after the restore, which ran {ran} ns"
        );
    }
    let stderr = restored.stderr_lines().to_vec();
    assert!(
        !stderr.iter().any(|line| line.contains("restore failed")),
        "{}",
        restored.stderr_report()
    );
    if runner != Runner::Root {
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

/// Nothing about POSIX timers needs privilege: nobody restores them too.
#[test]
fn posix_timers_survive_an_unprivileged_restore() {
    crimg_tests::skip_unless_root!();
    posix_timers_survive(Runner::Nobody);
}

/// A timer on another thread's CPU clock cannot be named again: refused
/// by name, the task left running as it was; forced, it is dropped and
/// said, and the rest is kept.
#[test]
fn a_timer_on_another_threads_cpu_clock_is_refused_by_name() {
    use dumper::{DumpOptions, NoProgress};
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = Workload::start("posix_timers", ["foreign-clock"]);
    let pid = target.pid();
    let ids = target.ready().unwrap().get("ids").unwrap().to_owned();
    let foreign = ids.rsplit(',').next().unwrap().to_owned();
    let out = scratch.path().join("out");
    let refuse = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    let err = dumper::dump(pid, &out, &refuse, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("POSIX timer {foreign} ")) && err.contains("CPU clock of thread"),
        "{err}"
    );
    assert!(!out.exists(), "output directory left behind");
    let forced = DumpOptions {
        leave_running: true,
        force: true,
        ..DumpOptions::default()
    };
    dumper::dump(pid, &out, &forced, &mut NoProgress).unwrap();
    let image = out.join(format!("task-{pid}.crimg"));
    let kept: Vec<i32> = recorded(&image).iter().map(|t| t.id).collect();
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(!kept.iter().any(|id| id.to_string() == foreign));
    let mut info = binaries().crimg_command(["info"]);
    info.arg(&image);
    let info = crimg_tests::cli::run_ok(info, crimg_tests::cli::CLI_TIMEOUT).unwrap();
    assert!(
        info.stdout.contains(&format!("POSIX timer {foreign} ")),
        "{}",
        info.stdout
    );
    // Both dumps left it as it was: every timer of its own still there.
    let pass = target.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("ids"), Some(ids.as_str()), "{}", pass.line());
}
