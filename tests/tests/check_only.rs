//! `crdump --check-only` and the refusal that names every blocker: a
//! workload holding several things crdump cannot save at once (an
//! established loopback TCP connection, an io_uring instance with its
//! SQPOLL kernel thread, a 1 GiB deleted open file; and a socketpair) is
//! refused with all of them listed, promptly, and keeps counting; a plain
//! counter checks clean (exit 0). Needs root: skips otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::facts::Facts;
use crimg_tests::untouched::{assert_counts_on, assert_running_untraced, next_tick};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Workload};

/// Every blocker must be found within this (the freeze is for the scan only).
const PROMPT: Duration = Duration::from_secs(10);

fn crdump(args: &[&str]) -> (RunOutput, Duration) {
    let mut command = Command::new(binaries().crdump);
    command.args(args);
    let started = Instant::now();
    let out = cli::run(command, cli::CLI_TIMEOUT).expect("crdump ran");
    (out, started.elapsed())
}

fn everything(tmpdir: &Path) -> Workload {
    Workload::start(
        "blockers",
        [
            "--socketpair",
            "--tcp",
            "--sqpoll",
            "--deleted",
            "--tmpdir",
            &tmpdir.display().to_string(),
        ],
    )
}

/// The blockers `text` must name, one line each, whatever words a kind's
/// refusal uses: the established connection's two ends, the io_uring fd
/// and its SQPOLL thread, the deleted file (1 GiB: beyond any ghost limit).
fn assert_names_every_blocker(text: &str, facts: &Facts) {
    let pid = facts.pid().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let names_fd = |key: &str| {
        let fd = facts.require(key).unwrap();
        assert!(
            lines.iter().any(|l| l.contains(&format!(": fd {fd} "))),
            "{key} (fd {fd}) not named:\n{text}"
        );
    };
    for key in ["tcp_client", "tcp_accepted", "uring", "deleted"] {
        names_fd(key);
    }
    assert!(
        text.contains(&format!(
            "fd {} is an io_uring instance",
            facts.require("uring").unwrap()
        )),
        "io_uring fd:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("(iou-sqp-{pid}) is an io_uring kernel thread"))),
        "SQPOLL thread:\n{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("crdump: pid {pid}"))),
        "a line without the pid:\n{text}"
    );
}

#[test]
fn check_only_lists_every_blocker_and_the_target_counts_on() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = everything(scratch.path());
    let pid = target.pid();
    let facts = target.ready().unwrap().clone();
    let before = next_tick(&mut target);

    let (out, took) = crdump(&["--check-only", &pid.to_string()]);
    assert!(took < PROMPT, "--check-only took {took:?}");
    assert_eq!(out.status.code(), Some(4), "{}\n{}", out.stdout, out.stderr);
    assert_names_every_blocker(&out.stdout, &facts);
    assert!(
        out.stdout.contains("refused even with --force"),
        "{}",
        out.stdout
    );
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);
}

#[test]
fn a_refused_dump_names_every_blocker_then_one_summary_line() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = everything(scratch.path());
    let pid = target.pid();
    let facts = target.ready().unwrap().clone();
    let before = next_tick(&mut target);
    let dir = scratch.path().join("out");

    let (out, took) = crdump(&["-p", &pid.to_string(), "-o", &dir.display().to_string()]);
    assert!(took < PROMPT, "the refusal took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_names_every_blocker(&out.stderr, &facts);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot be saved faithfully") && last.contains("blockers above"),
        "summary: {last}"
    );
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.contains("cannot be saved faithfully"))
            .count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!dir.exists(), "output left behind");
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);
}

#[test]
fn check_only_exits_3_when_only_force_would_dump() {
    skip_unless_root!();
    // Established TCP is not saved: only --force would dump it.
    let mut target = Workload::start("blockers", ["--tcp"]);
    let pid = target.pid();
    let before = next_tick(&mut target);
    let (out, _) = crdump(&["--check-only", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("--force would dump it"),
        "{}",
        out.stdout
    );
    // The loader's rules ran on the image --force would write.
    assert!(
        out.stdout
            .contains("the loader's image rules accept the image"),
        "{}",
        out.stdout
    );
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);
}

#[test]
fn check_only_on_a_plain_counter_exits_0() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let tmp = scratch.path().display().to_string();
    let mut target = Workload::start(
        "counter",
        ["--tmpdir", &tmp, "--heap-mb", "8", "--anon-mb", "4"],
    );
    let pid = target.pid();
    let before = next_tick(&mut target);
    let (out, took) = crdump(&["--check-only", "--pid", &pid.to_string()]);
    assert!(took < PROMPT, "--check-only took {took:?}");
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("a dump would succeed"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("blocker"), "{}", out.stdout);
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);
    // Nothing was written: no image anywhere near.
    assert!(std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".crimg")));
}

#[test]
fn check_only_names_a_thread_without_stack_room_refused_even_forced() {
    skip_unless_root!();
    let mut target = Workload::start("small_stack", std::iter::empty::<&str>());
    let pid = target.pid();
    let tid = target.ready().unwrap().require("tid").unwrap().to_owned();
    let (out, _) = crdump(&["--check-only", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("blocker: tid {tid}: its stack has")),
        "{}",
        out.stdout
    );
    assert_running_untraced(pid);
    target.expect_pass(crimg_tests::process::CheckTrigger::Stdin);
}
