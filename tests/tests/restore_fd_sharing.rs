//! Open file descriptions across a round trip: two fds on one description
//! keep one offset (`prog > log 2>&1`), a second open of the same file
//! keeps its own, a FIFO comes back with its bytes, a copy of stdin at a
//! high fd is the caller's stdin again; and a pipe and an eventfd shared
//! with a child are dumped with the child, as one tree.

use crimg_tests::process::{CheckTrigger, PidGuard};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

#[test]
fn shared_offsets_fifo_and_a_copy_of_stdin_survive() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let w = Workload::start("fd_sharing", ["--dir", dir.as_str()]);
    let dumped = dump_and_kill(&bins, w, &scratch.path().join("out"));
    let mut restored = bins
        .restore("restored fd_sharing", &dumped.dump.image)
        .unwrap();
    // The check command goes to the restored process's stdin and is read
    // through its fd 10: a copy of the caller's stdin.
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(
        facts.get("fifo"),
        Some("3000"),
        "{}",
        restored.stderr_report()
    );
}

#[test]
fn a_pipe_and_an_eventfd_shared_with_a_child_are_dumped_with_it_as_one_tree() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let mut w = Workload::start("fd_sharing", ["--dir", dir.as_str(), "--share-pipe"]);
    let child: i32 = w
        .ready()
        .unwrap()
        .require("child")
        .unwrap()
        .parse()
        .unwrap();
    let _child = PidGuard::new(child).unwrap();
    // No dump splits a tree: the child is dumped with its parent, and
    // what they share is listed once in the manifest.
    let out = scratch.path().join("out");
    let dumped = bins.dump(w.pid(), &out, true).unwrap();
    assert!(out.join(format!("task-{child}.crimg")).is_file());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dumped.manifest).unwrap()).unwrap();
    let shared = m["shared"].as_array().unwrap();
    let held_by_both = |kind: &str, fd: i32| {
        shared.iter().any(|o| {
            o["kind"] == kind
                && [w.pid(), child].iter().all(|&p| {
                    o["holders"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|h| h["pid"] == p && h["fd"] == fd)
                })
        })
    };
    assert!(held_by_both("event", 12), "{m:#}");
    assert!(held_by_both("file", 5) && held_by_both("file", 6), "{m:#}");
    assert!(held_by_both("pipe", 11), "{m:#}");
    // Left running: the workload runs on as it was.
    let facts = w.expect_pass(CheckTrigger::Stdin);
    assert_eq!(facts.get("fifo"), Some("3000"));
}

/// The dumped workload, killed, and its scratch directory.
fn dumped() -> (
    crimg_tests::Binaries,
    tempfile::TempDir,
    crimg_tests::roundtrip::Dumped,
) {
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let w = Workload::start("fd_sharing", ["--dir", dir.as_str()]);
    let dumped = dump_and_kill(&bins, w, &scratch.path().join("out"));
    (bins, scratch, dumped)
}

#[test]
fn a_fifo_someone_else_filled_meanwhile_is_refused_before_anything_changes() {
    crimg_tests::skip_unless_root!();
    let (bins, scratch, dumped) = dumped();
    // Another process opens the FIFO and leaves bytes in it.
    let fifo = scratch.path().join("fifo");
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    std::io::Write::write_all(&mut &other, b"not the task's").unwrap();
    let out = crimg_tests::cli::run(
        bins.loader_command(&dumped.dump.image),
        crimg_tests::process::LINE_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(
        out.stderr.contains("has bytes in it already"),
        "{}",
        out.stderr
    );
    drop(other);
}

#[test]
fn a_copy_of_stdin_without_a_stdin_is_refused_before_anything_changes() {
    crimg_tests::skip_unless_root!();
    let (bins, _scratch, dumped) = dumped();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("exec \"$0\" \"$1\" <&-")
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let out = crimg_tests::cli::run(sh, crimg_tests::process::LINE_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(
        out.stderr.contains("fd 10 is a copy of fd 0"),
        "{}",
        out.stderr
    );
}
