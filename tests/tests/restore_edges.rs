//! End-to-end edge cases of the loader's stage 1: files that changed into
//! something else since the dump must be refused with a one-line message,
//! promptly (opening a path that is now a FIFO must not block), before
//! anything is changed.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::process::{LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, dump_and_kill, nobody_ids, Dumped};
use crimg_tests::Workload;
use crimg_tests::{binaries, scratch_dir, workload_path, Binaries};

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
    refusal_of(bins.loader_command(image), code)
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

/// The loader run on a FIFO or a device instead of an image: refused at
/// once as not a regular file (exit 3), never opened for reading (a FIFO
/// would block until a writer came).
#[test]
fn an_image_path_that_is_not_a_regular_file_is_refused_at_once() {
    let bins = binaries();
    let scratch = scratch_dir();
    let fifo = scratch.path().join("fifo.crimg");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}: {made}", fifo.display());
    let message = expect_refusal(&bins, &fifo, 3);
    assert!(
        message.contains("not a regular file: it is a FIFO"),
        "{message}"
    );
    let message = expect_refusal(&bins, Path::new("/dev/zero"), 3);
    assert!(message.contains("a character device"), "{message}");
    let message = expect_refusal(&bins, scratch.path(), 3);
    assert!(message.contains("a directory"), "{message}");
}

/// A working directory that the restoring user cannot enter: `O_PATH`
/// opens it without search permission, the plan's `fchdir` would fail
/// after the point of no return. Refused first (exit 5), in one line.
#[test]
fn a_working_directory_the_caller_cannot_enter_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    // Sticky, as /tmp: crdump refuses to create its directory in a
    // shared directory that is not.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let cwd = scratch.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = as_nobody();
    command
        .arg(workload_path("counter"))
        .args(["--tmpdir", scratch.path().to_str().unwrap()])
        .args(["--heap-mb", "8", "--anon-mb", "4"])
        .current_dir(&cwd);
    let mut counter = Workload::spawn_command("counter as nobody", command).unwrap();
    if let Err(err) = counter.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", counter.stderr_report());
    }
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let (nobody, nogroup) = nobody_ids();
    let dir = dumped.dump.image.parent().unwrap().to_owned();
    for path in [&dir, &dumped.dump.image] {
        chown(path, Some(nobody), Some(nogroup)).unwrap();
    }
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o000)).unwrap();

    let mut command = as_nobody();
    command.arg(&bins.loader).arg(&dumped.dump.image);
    let message = refusal_of(command, 5);
    assert!(
        message.contains("working directory") && message.contains("cannot be entered"),
        "{message}"
    );
    // Enterable again, the same image restores.
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = as_nobody();
    command.arg(&bins.loader).arg(&dumped.dump.image);
    let mut restored = Workload::spawn_command("loader as nobody", command).unwrap();
    restored.expect_line("TICK ");
    assert_eq!(
        fs::read_link(format!("/proc/{}/cwd", restored.pid())).unwrap(),
        cwd
    );
}

/// Run `command` (a loader): it must exit (within the line timeout, not by
/// a signal) with `code` and one line on stderr, which is returned; an
/// unprivileged loader may have said what it will not restore before, in
/// warning lines.
fn refusal_of(command: Command, code: i32) -> String {
    let output: RunOutput = cli::run(command, LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    let status = output.status;
    assert!(
        status.signal().is_none() && status.code() == Some(code),
        "the loader exited with {status}, expected {code}; stderr:\n{}",
        output.stderr
    );
    let lines: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| !line.contains(": warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", output.stderr);
    lines[0].to_owned()
}
