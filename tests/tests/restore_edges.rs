//! End-to-end edge cases of the loader's stage 1: files that changed into
//! something else since the dump must be refused with a one-line message,
//! promptly (opening a path that is now a FIFO must not block), before
//! anything is changed.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::process::LINE_TIMEOUT;
use crimg_tests::roundtrip::{dump_and_kill, Dumped};
use crimg_tests::Workload;
use crimg_tests::{binaries, scratch_dir, Binaries};

/// A small counter, dumped (and killed), whose files the test then changes.
fn dumped_small_counter(scratch: &Path) -> (Binaries, Dumped) {
    let bins = binaries();
    let args: Vec<String> = [
        "--tmpdir",
        &scratch.display().to_string(),
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.join("out"));
    (bins, dumped)
}

/// Run the loader on `image`; it must exit (within the line timeout, not
/// by a signal) with `code` and one line on stderr, which is returned.
fn expect_refusal(bins: &Binaries, image: &Path, code: i32) -> String {
    let output: RunOutput =
        cli::run(bins.loader_command(image), LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    let status = output.status;
    assert!(
        status.signal().is_none() && status.code() == Some(code),
        "the loader exited with {status}, expected {code}; stderr:\n{}",
        output.stderr
    );
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", output.stderr);
    lines[0].to_owned()
}

#[test]
fn mapped_file_now_a_fifo_is_refused_without_blocking() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let file = dumped.ready.require("file").unwrap().to_owned();
    fs::remove_file(&file).unwrap();
    let made = Command::new("mkfifo").arg(&file).status().unwrap();
    assert!(made.success(), "mkfifo {file}: {made}");
    let message = expect_refusal(&bins, &dumped.dump.image, 5);
    assert!(
        message.contains(&file) && message.contains("now a FIFO"),
        "{message}"
    );
}

#[test]
fn mapped_file_now_a_directory_is_refused() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let file = dumped.ready.require("file").unwrap().to_owned();
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    let message = expect_refusal(&bins, &dumped.dump.image, 5);
    assert!(
        message.contains(&file) && message.contains("now a directory"),
        "{message}"
    );
}
