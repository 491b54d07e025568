//! End-to-end restore of the kernel objects an event loop opens for itself
//! (`workloads/fd_objects.c`): a pipe with 60 KiB buffered, eventfds, a
//! signalfd, timerfds, an inotify instance and nested epolls with
//! `EPOLLET`/`EPOLLONESHOT` items, each checked by the restored process
//! itself; and the states that cannot be saved refused by name with the
//! process left running.

use std::path::Path;
use std::time::Duration;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::privilege::skip_without_root;
use crimg_tests::process::{CheckTrigger, READY_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

/// Start the workload on `dir` (in `mode`, if any) and wait for READY.
fn start(dir: &Path, mode: Option<&str>) -> Workload {
    let mut args = vec![dir.display().to_string()];
    args.extend(mode.map(str::to_owned));
    Workload::start("fd_objects", args)
}

#[test]
fn event_loop_objects_survive_a_restore() {
    // Watches are found by file handle (CAP_DAC_READ_SEARCH), and the
    // task is traced as root.
    if skip_without_root("the dump resolves inotify watches by file handle") {
        return;
    }
    let bins = binaries();
    let scratch = scratch_dir();
    let original = start(scratch.path(), None);
    let dumped = dump_and_kill(&bins, original, &scratch.path().join("out"));
    bins.verify(&dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    let info = bins
        .info_json(&dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    for kind in ["signalfd", "timerfd", "epoll", "inotify"] {
        assert!(info.contains(kind), "crimg info names no {kind}: {info}");
    }
    // The fired one-shot was saved with its flag bits only; the watches
    // with their descriptors.
    for object in [
        "events 0x40000000 data 0x5555",
        "events 0x80000019 data 0x1111222233334444",
        "watch wd 3 mask 0x320",
        "unread 1",
    ] {
        assert!(
            info.contains(object),
            "crimg info shows no {object:?}: {info}"
        );
    }

    let mut restored = bins
        .restore("restored fd_objects", &dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    let ticks: u64 = pass.number("ticks").unwrap_or_else(|err| panic!("{err}"));
    assert!(ticks >= 1, "{}", pass.line());
    let stderr = restored.stderr_lines().to_vec();
    assert!(
        !stderr.iter().any(|l| l.contains("warning")),
        "the restore warned: {stderr:?}"
    );
}

/// crdump on the workload in `mode` fails naming `expect`, and the
/// workload runs on.
fn refused(mode: &str, expect: &str) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = start(scratch.path(), Some(mode));
    let command = bins.crdump_command(original.pid(), &scratch.path().join("out"), false);
    let RunOutput { status, stderr, .. } =
        cli::run(command, Duration::from_secs(60)).unwrap_or_else(|err| panic!("{err}"));
    assert!(!status.success(), "crdump dumped it: {stderr}");
    assert!(stderr.contains(expect), "{stderr}");
    assert!(!scratch.path().join("out").exists());
    // Still running, and answering.
    original
        .send_line("check")
        .unwrap_or_else(|err| panic!("{err}"));
    original
        .wait_line("", READY_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}\n{}", original.stderr_report()));
}

#[test]
fn inotify_events_not_yet_read_are_refused() {
    if skip_without_root("crdump traces the workload") {
        return;
    }
    refused("queued", "inotify instance with");
}

#[test]
fn an_epoll_item_whose_fd_now_names_another_file_is_refused() {
    if skip_without_root("crdump traces the workload") {
        return;
    }
    refused("stale", "now names another file");
}
