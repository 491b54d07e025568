//! io_uring never hangs crdump, and Ctrl-C stops any dump: an io_uring fd
//! and its kernel threads (SQPOLL `iou-sqp-N`, io-wq `iou-wrk-N`: ptrace
//! never sees them stop) are refused by name before any of them is waited
//! for, even with `--force`, and the process runs on; node with
//! `UV_USE_IO_URING=1` (when node is installed) the same; SIGINT during the
//! page copy of a 1 GiB process ends the dump at once, the process running
//! and nothing left behind; a thread that never stops for ptrace (in
//! `vfork`) is named after a bounded wait, and SIGINT ends that wait at
//! once. Needs root: skips otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::process::{CheckTrigger, ChildGuard, PidGuard};
use crimg_tests::smaps::status_lines;
use crimg_tests::untouched::{assert_counts_on, assert_running_untraced, next_tick, wait_until};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Workload};
use nix::sys::signal::Signal;

/// A refusal must come within this.
const PROMPT: Duration = Duration::from_secs(10);

fn crdump(args: &[String]) -> (RunOutput, Duration) {
    let mut command = Command::new(binaries().crdump);
    command.args(args);
    let started = Instant::now();
    let out = cli::run(command, cli::CLI_TIMEOUT).expect("crdump ran");
    (out, started.elapsed())
}

#[test]
fn force_on_io_uring_returns_at_once_refusing_it_and_the_process_runs_on() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = Workload::start("blockers", ["--sqpoll", "--socketpair"]);
    let pid = target.pid();
    let before = next_tick(&mut target);
    let dir = scratch.path().join("out");
    let (out, took) = crdump(&[
        "--force".into(),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        dir.display().to_string(),
    ]);
    assert!(took < PROMPT, "crdump --force took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("is an io_uring instance")
            && out
                .stderr
                .contains(&format!("(iou-sqp-{pid}) is an io_uring kernel thread")),
        "{}",
        out.stderr
    );
    // What --force may lose is not named as a reason for refusing.
    assert!(!out.stderr.contains("is a socket"), "{}", out.stderr);
    assert!(
        out.stderr.contains("refused even with --force"),
        "{}",
        out.stderr
    );
    assert!(!dir.exists(), "output left behind");
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);
}

/// `node` on the PATH, or why the test is skipped.
fn node() -> Option<&'static str> {
    let found = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipping: node is not installed");
    }
    found.then_some("node")
}

#[test]
fn node_with_io_uring_is_refused_promptly_by_check_only_and_force() {
    skip_unless_root!();
    let Some(node) = node() else { return };
    let mut command = Command::new(node);
    command.env("UV_USE_IO_URING", "1").args([
        "-e",
        "let n = 0; setInterval(() => console.log('TICK ' + ++n), 20); \
         require('fs').readFile('/etc/passwd', () => console.log('READY pid=' + process.pid));",
    ]);
    let mut target = Workload::spawn_command("node", command).unwrap();
    if let Err(e) = target.wait_ready(Duration::from_secs(30)) {
        panic!("{e}\n{}", target.stderr_report());
    }
    let pid = target.pid();
    let before = next_tick(&mut target);

    let (out, took) = crdump(&["--check-only".into(), pid.to_string()]);
    assert!(took < PROMPT, "--check-only took {took:?}");
    assert_eq!(out.status.code(), Some(4), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("is an io_uring instance (anon_inode:[io_uring])"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("io_uring kernel thread"),
        "{}",
        out.stdout
    );
    // Every one of its io_uring fds (libuv makes one per loop), by number.
    let rings: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!rings.is_empty(), "node made no io_uring");
    for fd in rings {
        assert!(
            out.stdout
                .contains(&format!("fd {fd} is an io_uring instance")),
            "fd {fd}:\n{}",
            out.stdout
        );
    }
    assert_running_untraced(pid);
    assert_counts_on(&mut target, before);

    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let (out, took) = crdump(&[
        "--force".into(),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        dir.display().to_string(),
    ]);
    assert!(took < PROMPT, "crdump --force took {took:?}");
    assert_ne!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("io_uring"), "{}", out.stderr);
    assert!(!dir.exists(), "output left behind");
    assert_running_untraced(pid);
    let after = next_tick(&mut target);
    assert_counts_on(&mut target, after);
}

/// `wchar` of `/proc/PID/io`: bytes this process passed to write calls.
fn written_by(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn sigint_during_the_page_copy_stops_the_dump_and_the_process_runs_on() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = Workload::start("bigmem", ["--mb", "1024", "--write-pct", "100"]);
    let pid = target.pid();
    let dir = scratch.path().join("out");
    let mut command = Command::new(binaries().crdump);
    command
        .args(["-p", &pid.to_string(), "-o"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("crdump started");
    let mut stderr = child.stderr.take().unwrap();
    let mut crdump = ChildGuard::new("crdump", child);
    let dumper = crdump.pid();
    // In the middle of the copy: 64 MiB of the 1 GiB written.
    assert!(
        wait_until(Duration::from_secs(60), || written_by(dumper) > 64 << 20),
        "the dump did not start writing"
    );
    crdump.signal(Signal::SIGINT).unwrap();
    let sent = Instant::now();
    let status = crdump
        .wait_exit(PROMPT)
        .expect("crdump exited after SIGINT");
    let took = sent.elapsed();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    assert!(
        took < Duration::from_secs(3),
        "crdump took {took:?} after SIGINT"
    );
    assert!(!status.success(), "the dump completed: {text}");
    assert!(text.contains("cancelled"), "{text}");
    assert!(!dir.exists(), "output left behind");
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "a file was left in the scratch directory"
    );
    assert_running_untraced(pid);
    target.expect_pass(CheckTrigger::Stdin);
}

/// The blockers workload's main thread sitting in `vfork` (waiting for a
/// child that never execs): a thread that does not stop for ptrace. The
/// child is killed by its guard.
fn in_vfork() -> (Workload, PidGuard) {
    let target = Workload::start("blockers", ["--vfork"]);
    let pid = target.pid();
    let mut child = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            child = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|c| c.parse().ok()));
            child.is_some()
        }),
        "no vfork child"
    );
    let child = PidGuard::new(child.unwrap()).unwrap();
    (target, child)
}

#[test]
fn sigint_while_a_thread_does_not_stop_ends_the_freeze_at_once() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let (target, _child) = in_vfork();
    let pid = target.pid();
    let dir = scratch.path().join("out");
    let mut command = Command::new(binaries().crdump);
    command
        .args(["-p", &pid.to_string(), "-o"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("crdump started");
    let mut stderr = child.stderr.take().unwrap();
    let mut crdump = ChildGuard::new("crdump", child);
    let dumper = crdump.pid().to_string();
    // Seized: the freeze now waits for a stop that does not come.
    assert!(
        wait_until(Duration::from_secs(20), || {
            status_lines(pid, &["TracerPid"])[0].1.as_deref() == Some(&dumper)
        }),
        "crdump did not seize the target"
    );
    crdump.signal(Signal::SIGINT).unwrap();
    let sent = Instant::now();
    let status = crdump
        .wait_exit(PROMPT)
        .expect("crdump exited after SIGINT");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "took {:?}",
        sent.elapsed()
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    assert!(!status.success() && text.contains("cancelled"), "{text}");
    assert!(!dir.exists(), "output left behind");
    assert_eq!(status_lines(pid, &["TracerPid"])[0].1.as_deref(), Some("0"));
}

#[test]
fn a_thread_that_does_not_stop_is_named_instead_of_hanging() {
    skip_unless_root!();
    let (target, _child) = in_vfork();
    let pid = target.pid();
    let (out, took) = crdump(&["--check-only".into(), pid.to_string()]);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "tid {pid}: did not stop within 10s of PTRACE_INTERRUPT"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(status_lines(pid, &["TracerPid"])[0].1.as_deref(), Some("0"));
}
