//! End-to-end restore of multi-threaded tasks: a workload with worker
//! threads is dumped with `crdump` (which kills it) and restored with the
//! loader. Every thread must come back: the workers keep counting with
//! their own TLS values and registers (the counter's check verifies them),
//! the main thread's tick stream continues with no gap and no repeat, and
//! `/proc/PID/task` lists as many tasks as before. As root the loader
//! clones the threads with their original tids (`clone3` `set_tid`).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::cli;
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, assert_ticks_resume, dump_and_kill, maps_of, tasks_of};
use crimg_tests::{binaries, scratch_dir, workload_path, TestBinfmt, Workload};

#[test]
fn threaded_counter_resumes_with_every_thread() {
    crimg_tests::skip_unless_root!();
    resumes_with_every_thread(4, &[]);
}

/// Many threads spinning with their registers loaded: the dump catches them
/// anywhere in their loops, and the restore's threads leave the window
/// while others still run in it.
#[test]
fn busy_threads_resume_with_their_registers() {
    crimg_tests::skip_unless_root!();
    resumes_with_every_thread(12, &["--sleep-in", "busy"]);
}

/// Start the counter with `workers` worker threads and `extra` arguments,
/// dump it, restore it with the loader, and check every thread came back.
fn resumes_with_every_thread(workers: usize, extra: &[&str]) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut args = threaded_counter_args(scratch.path(), workers);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    assert_eq!(dumped.other_tids().len(), workers, "tasks before the dump");

    let mut restored = bins
        .restore("restored threaded counter", &dumped.dump.image)
        .unwrap();
    restored.expect_line("TICK ");
    let pid = restored.pid();
    // Read before the check runs anything that could change the layout.
    // Nothing of the loader stays: not its window, not the threads' stacks.
    let maps = maps_of(pid);
    assert_eq!(
        maps,
        dumped.view.maps,
        "/proc/PID/maps after the restore differs from before the dump\n{}",
        restored.stderr_report()
    );
    let tasks = tasks_of(pid);
    assert_eq!(
        tasks.len(),
        workers + 1,
        "/proc/{pid}/task after the restore: {tasks:?}\n{}",
        restored.stderr_report()
    );
    if crimg_tests::is_root() {
        let mut others = tasks.clone();
        others.remove(&pid);
        assert_eq!(
            others,
            dumped.other_tids(),
            "as root the threads get their original tids back"
        );
    }

    // A second restore of the image with --same-ids while the first runs
    // cannot give the threads their tids: refused before anything
    // changes, with one line, by the loader and by `crimg run`.
    let mut same_ids = bins.loader_command(&dumped.dump.image);
    same_ids.arg("--same-ids");
    let mut crimg_run = bins.run_image_command(&dumped.dump.image);
    crimg_run.arg("--same-ids");
    // Run as a program (binfmt_misc): the argument follows the image.
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|err| panic!("{err}"));
    let mut direct = Command::new(&dumped.dump.image);
    direct.arg("--same-ids");
    for command in [same_ids, crimg_run, direct] {
        let second = cli::run(command, LINE_TIMEOUT).unwrap();
        assert_eq!(
            second.status.code(),
            Some(10),
            "second restore with --same-ids while the first runs: {second:?}"
        );
        assert!(
            second.stderr.contains("is in use by another task")
                && second.stderr.lines().count() == 1,
            "{second:?}"
        );
    }

    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.pid().unwrap(), pid, "{}", pass.line());
    let worker_ticks = pass.get("thread_ticks").unwrap_or("-");
    assert_eq!(worker_ticks.split(',').count(), workers, "{}", pass.line());
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    // The loader's messages (warnings) came before the restore; nothing
    // may have failed after it.
    assert!(
        !restored
            .stderr_lines()
            .iter()
            .any(|line| line.contains("restore failed")),
        "{}",
        restored.stderr_report()
    );
}

/// Three restores of one 4-thread image started at once: each creates its
/// threads before it changes anything, taking a recorded tid or, where
/// another copy holds it, a new one (one warning). All three run and pass
/// their checks; between them they hold every original tid once.
#[test]
fn three_copies_of_one_threaded_image_run_at_once() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut counter = Workload::start("counter", threaded_counter_args(scratch.path(), 4));
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let original = dumped.other_tids();
    assert_eq!(original.len(), 4, "tasks before the dump");

    let mut copies: Vec<Workload> = (0..3)
        .map(|i| {
            bins.restore(&format!("restored copy {i}"), &dumped.dump.image)
                .unwrap()
        })
        .collect();
    let mut held = Vec::new();
    for copy in &mut copies {
        copy.expect_line("TICK ");
        let pid = copy.pid();
        let mut others = tasks_of(pid);
        others.remove(&pid);
        assert_eq!(
            others.len(),
            4,
            "/proc/{pid}/task: {others:?}\n{}",
            copy.stderr_report()
        );
        let got: Vec<i32> = others.intersection(&original).copied().collect();
        // A copy without all of them says so, once.
        let warned = copy
            .stderr_lines()
            .iter()
            .filter(|line| line.contains("get new thread ids"))
            .count();
        if got.len() < original.len() {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut warned = warned;
            while warned == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                warned = copy
                    .stderr_lines()
                    .iter()
                    .filter(|line| line.contains("get new thread ids"))
                    .count();
            }
            assert_eq!(warned, 1, "{}", copy.stderr_report());
        } else {
            assert_eq!(warned, 0, "{}", copy.stderr_report());
        }
        held.extend(got);
    }
    held.sort_unstable();
    assert_eq!(
        held,
        original.iter().copied().collect::<Vec<_>>(),
        "every original tid is held by exactly one copy"
    );
    for copy in &mut copies {
        let pid = copy.pid();
        let pass = copy.expect_pass(CheckTrigger::Stdin);
        assert_eq!(pass.pid().unwrap(), pid, "{}", pass.line());
        copy.expect_line("TICK ");
        assert_ticks_resume(&dumped, copy);
        assert!(
            !copy
                .stderr_lines()
                .iter()
                .any(|line| line.contains("restore failed")),
            "{}",
            copy.stderr_report()
        );
    }
}

/// The counter's arguments: small memory, `threads` workers.
fn threaded_counter_args(tmpdir: &Path, threads: usize) -> Vec<String> {
    [
        "--tmpdir",
        &tmpdir.display().to_string(),
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
        "--threads",
        &threads.to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect()
}

#[test]
fn threaded_counter_resumes_unprivileged_with_new_tids() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    // Sticky, as /tmp: crdump refuses to create its directory in a
    // shared directory that is not.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody exists");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .ok()
        .flatten()
        .expect("group nogroup exists");

    let mut command = as_nobody();
    command
        .arg(workload_path("counter"))
        .args(threaded_counter_args(scratch.path(), 2));
    let mut counter = Workload::spawn_command("counter as nobody", command).unwrap();
    if let Err(err) = counter.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", counter.stderr_report());
    }
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let dir = dumped.dump.image.parent().unwrap().to_owned();
    for path in [&dir, &dumped.dump.image] {
        chown(path, Some(nobody.uid.as_raw()), Some(nogroup.gid.as_raw())).unwrap();
    }

    // --same-ids cannot be honoured without the privilege set_tid needs:
    // refused before anything changes (after the warnings of stage 1,
    // the last line says why).
    let mut command = as_nobody();
    command
        .arg(&bins.loader)
        .arg(&dumped.dump.image)
        .arg("--same-ids");
    let refused = cli::run(command, LINE_TIMEOUT).unwrap();
    assert_eq!(refused.status.code(), Some(10), "{refused:?}");
    assert!(
        refused
            .stderr
            .lines()
            .last()
            .is_some_and(|line| line.contains("--same-ids") && line.contains("CAP_")),
        "{refused:?}"
    );
    assert!(
        !refused.stderr.contains("get new thread ids"),
        "{refused:?}"
    );

    let mut command = as_nobody();
    command.arg(&bins.loader).arg(&dumped.dump.image);
    let mut restored = Workload::spawn_command("loader as nobody", command).unwrap();
    restored.expect_line("TICK ");
    let pid = restored.pid();
    assert_eq!(
        tasks_of(pid).len(),
        3,
        "/proc/{pid}/task after the restore\n{}",
        restored.stderr_report()
    );
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.pid().unwrap(), pid, "{}", pass.line());
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);

    // Without privilege there is no set_tid: the loader says the threads
    // got new tids (its warnings are printed before the restore).
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = loop {
        let warned = restored
            .stderr_lines()
            .iter()
            .any(|line| line.contains("warning") && line.contains("new thread ids"));
        if warned || Instant::now() >= deadline {
            break warned;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        warned,
        "no warning that the threads get new tids; {}",
        restored.stderr_report()
    );
}

/// A Python program whose worker threads count (each its own counter,
/// taking the GIL in turn) while the main thread prints ticks and answers
/// "check" on stdin: PASS when every worker still counts.
const THREADED_PYTHON: &str = r#"
import os, select, sys, threading, time
N = 3
counts = [0] * N
def work(i):
    while True:
        counts[i] += 1
        time.sleep(0.002)
for i in range(N):
    threading.Thread(target=work, args=(i,), daemon=True).start()
print(f"READY pid={os.getpid()} threads={N}", flush=True)
tick = 0
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.01)
    if not ready:
        tick += 1
        print(f"TICK {tick}", flush=True)
        continue
    line = sys.stdin.readline().strip()
    if line == "check":
        before = list(counts)
        deadline = time.time() + 2
        moved = lambda: all(c > b for c, b in zip(counts, before))
        while time.time() < deadline and not moved():
            time.sleep(0.01)
        alive = len(threading.enumerate())
        if moved() and alive == N + 1:
            print(f"PASS threads.py pid={os.getpid()} tick={tick}", flush=True)
        else:
            print(f"FAIL threads.py counts {before} -> {counts}, {alive} threads", flush=True)
    elif line == "quit":
        print("BYE", flush=True)
        sys.exit(0)
"#;

#[test]
fn threaded_python_resumes() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut command = Command::new("python3");
    command.args(["-c", THREADED_PYTHON]);
    let mut python = Workload::spawn_command("threaded python", command).unwrap();
    if let Err(err) = python.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", python.stderr_report());
    }
    python.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, python, &scratch.path().join("out"));
    assert_eq!(dumped.other_tids().len(), 3, "tasks before the dump");

    let mut restored = bins
        .restore("restored threaded python", &dumped.dump.image)
        .unwrap();
    restored.expect_line("TICK ");
    let pid = restored.pid();
    let mut others = tasks_of(pid);
    others.remove(&pid);
    assert_eq!(others, dumped.other_tids(), "threads after the restore");
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.pid().unwrap(), pid, "{}", pass.line());
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    restored.send_line("quit").unwrap();
    restored.expect_line("BYE");
    let status = restored.wait_exit(LINE_TIMEOUT).unwrap();
    assert!(status.success(), "restored python quit with {status}");
}

/// More threads than the loader once took (256): the loader's limit is the
/// image format's (`image_format::read::limits::MAX_THREADS`, which the
/// writer and the dumper's self-check apply too), and its tables and the
/// bootstrap window grow with the thread count.
#[test]
fn three_hundred_threads_resume() {
    crimg_tests::skip_unless_root!();
    many_threads_resume(300);
}

/// A thousand threads, each with its own stack, TLS and registers.
#[test]
fn a_thousand_threads_resume() {
    crimg_tests::skip_unless_root!();
    many_threads_resume(1000);
}

/// `workers` threads sleeping in the register-holding loop, dumped and
/// restored: every one of them is back (with its tid, as root) and counts
/// on with its registers and TLS intact (the counter's check fails on any
/// worker that stopped or lost state).
fn many_threads_resume(workers: usize) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut args = threaded_counter_args(scratch.path(), workers);
    // Slow ticks: a thousand threads waking every 10 ms would keep both
    // cores busy.
    args.extend(["--interval-ms".to_owned(), "100".to_owned()]);
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 2");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    assert_eq!(dumped.other_tids().len(), workers, "tasks before the dump");

    let mut restored = bins
        .restore("restored counter with many threads", &dumped.dump.image)
        .unwrap();
    restored.expect_line("TICK ");
    let pid = restored.pid();
    let mut others = tasks_of(pid);
    others.remove(&pid);
    assert_eq!(
        others,
        dumped.other_tids(),
        "as root every thread gets its tid back\n{}",
        restored.stderr_report()
    );
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.pid().unwrap(), pid, "{}", pass.line());
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    assert!(
        !restored
            .stderr_lines()
            .iter()
            .any(|line| line.contains("restore failed")),
        "{}",
        restored.stderr_report()
    );
}
