//! `crdump --force` images run: the fds whose objects are not saved (here
//! both ends of an established loopback TCP connection) are recorded as
//! dropped, listed by `crimg
//! info`, warned about by the loader in one line, and come back as
//! `/dev/null` at the same numbers with the same access mode and
//! FD_CLOEXEC; the workload checks that itself and counts on with no gap.
//! Needs root: skips otherwise.

use std::time::Duration;

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::untouched::next_tick;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TickStream, Workload};

#[test]
fn a_forced_image_with_dropped_tcp_fds_runs_and_finds_dev_null() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut target = Workload::start("blockers", ["--tcp"]);
    let pid = target.pid();
    let ready = target.ready().unwrap().clone();
    let (a, b) = (
        ready.require("tcp_client").unwrap(),
        ready.require("tcp_accepted").unwrap(),
    );
    // The original still has its connection: its check fails (so it can).
    assert!(target.check(CheckTrigger::Stdin, LINE_TIMEOUT).is_err());
    next_tick(&mut target);

    let dir = scratch.path().join("out");
    let mut command = bins.crdump_command(pid, &dir, false);
    command.arg("--force");
    let out = cli::run_ok(command, CLI_TIMEOUT).expect("forced dump");
    assert!(out.stdout.contains("not kept: fd"), "{}", out.stdout);
    let status = target.wait_exit(LINE_TIMEOUT).unwrap();
    assert!(!status.success(), "not killed by crdump: {status}");
    let before = TickStream::from_lines(target.stdout_lines()).unwrap();
    let image = dir.join(format!("task-{pid}.crimg"));

    let mut info = bins.crimg_command(["info"]);
    info.arg(&image);
    let info = cli::run_ok(info, CLI_TIMEOUT).unwrap().stdout;
    let listed = info
        .lines()
        .find(|l| l.contains("not saved (crdump --force), /dev/null at restore:"))
        .unwrap_or_else(|| panic!("no dropped fds in crimg info:\n{info}"));
    assert!(
        listed.contains(&format!("{a} (socket:[")) && listed.contains(&format!("{b} (socket:[")),
        "{a} and {b} in {listed}"
    );
    let json = bins.info_json(&image).unwrap();
    assert!(json.contains("\"dropped\": true"), "{json}");
    bins.verify(&image)
        .expect("crimg verify accepts a forced image");

    let mut restored = bins.restore("blockers", &image).unwrap();
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    let warning = restored
        .wait_stderr_containing("replaced by /dev/null", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    // The connection's two ends; the listener is saved (and rebound: the
    // dropped connections were reset at the kill, so no TIME_WAIT holds
    // its port).
    assert!(
        warning.contains(" fds not saved (crdump --force) replaced by /dev/null: ")
            && warning.contains(&format!(" {a} (socket:["))
            && warning.contains(&format!(" {b} (socket:[")),
        "{warning}"
    );
    assert_eq!(
        restored
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("replaced by /dev/null"))
            .count(),
        1
    );
    let at_check = facts.number("ticks").unwrap();
    assert!(at_check >= before.last().unwrap(), "{facts:?}");
    next_tick(&mut restored);
    let after = TickStream::from_lines(restored.stdout_lines()).unwrap();
    before
        .check_resumed_by(&after)
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
}
