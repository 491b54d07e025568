//! A target that dies while it is being dumped: crdump fails with one line
//! that names the pid and says the process is gone (not a confusing
//! "no syscall instruction found" or "already traced by a debugger?"), and
//! leaves nothing in the output directory.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crimg_tests::cli::CLI_TIMEOUT;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, ChildGuard, Workload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How many targets are killed, at delays spread over 0–`SPREAD_US` after
/// crdump's start.
const RUNS: u64 = 60;
const SPREAD_US: u64 = 25_000;

#[test]
fn a_target_killed_during_its_dump_is_reported_as_gone() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut failed = 0;
    let mut messages = std::collections::BTreeMap::<String, u32>::new();
    for k in 0..RUNS {
        let mut target = Workload::start(
            "counter",
            ["--interval-ms", "2", "--heap-mb", "4", "--threads", "1"],
        );
        let pid = target.pid();
        let out = scratch.path().join(format!("out-{k}"));
        let mut command = binaries().crdump_command(pid, &out, false);
        let stderr_path = scratch.path().join(format!("stderr-{k}"));
        command
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let started = Instant::now();
        let mut crdump = ChildGuard::new("crdump", command.spawn().unwrap());
        let at = started + Duration::from_micros((k * 37 % RUNS) * SPREAD_US / (RUNS - 1));
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let status = crdump.wait_exit(CLI_TIMEOUT).unwrap();
        let _ = target.wait_exit(Duration::from_secs(10));
        if status.success() {
            // The dump had completed (and killed the target) first.
            continue;
        }
        failed += 1;
        let stderr = fs::read_to_string(&stderr_path).unwrap();
        let line = stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "crdump said:\n{line}");
        assert!(line.contains(&format!("pid {pid}")), "{line}");
        assert!(
            line.contains("exited") || line.contains("no such process"),
            "a target killed {:?} after crdump started: {line}",
            at - started
        );
        let left: Vec<_> = fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} holds {left:?}", out.display());
        // "crdump: pid N: what": count the whats.
        let kind = line.splitn(3, ": ").nth(2).unwrap_or(line);
        *messages.entry(kind.to_owned()).or_default() += 1;
    }
    println!("{RUNS} targets killed during their dump: {failed} dumps failed, with {messages:?}");
    assert!(
        failed > 0,
        "no dump was still running when its target was killed"
    );
}
