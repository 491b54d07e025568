//! Messages about an image stay one line and cannot drive a terminal: paths
//! and names come from the image (or its file name) and may hold control
//! bytes, which the loader and `crimg info` print escaped. An error is
//! printed once.

use std::fs;
use std::os::unix::process::ExitStatusExt;

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::process::LINE_TIMEOUT;
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

/// No byte of `text` is a control character but the line breaks between
/// lines (and no C1 control such as CSI).
fn assert_no_control_bytes(text: &str, what: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| (c.is_control() && c != '\n') || ('\u{80}'..='\u{9f}').contains(&c))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} holds control characters {bad:?}:\n{text:?}"
    );
}

#[test]
fn control_bytes_from_an_image_are_printed_escaped() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    // The counter maps a file it creates in --tmpdir: the escape sequence
    // and the bell end up in a path recorded in the image.
    let evil_dir = scratch.path().join("evil\x1b[2J\x07dir");
    fs::create_dir(&evil_dir).unwrap();
    let mut counter = Workload::start(
        "counter",
        [
            "--tmpdir".to_owned(),
            evil_dir.display().to_string(),
            "--heap-mb".to_owned(),
            "1".to_owned(),
        ],
    );
    counter.expect_line("TICK 2");
    let bins = binaries();
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));

    let info = cli::run_ok(
        {
            let mut c = bins.crimg_command(["info"]);
            c.arg(&dumped.dump.image);
            c
        },
        CLI_TIMEOUT,
    )
    .unwrap();
    assert_no_control_bytes(&info.stdout, "crimg info");
    assert!(
        info.stdout.contains("evil\\x1b[2J\\x07dir"),
        "{}",
        info.stdout
    );

    // The image under a name with a newline and an escape, and its mapped
    // file gone: the loader's refusal names both, on one line.
    let renamed = scratch.path().join("task\n\x1b[31mred.crimg");
    fs::rename(&dumped.dump.image, &renamed).unwrap();
    let file = dumped.ready.require("file").unwrap().to_owned();
    fs::remove_file(&file).unwrap();
    let out = cli::run(bins.loader_command(&renamed), LINE_TIMEOUT).unwrap();
    assert!(
        out.status.signal().is_none() && out.status.code() == Some(5),
        "loader: {} {:?}",
        out.status,
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert_no_control_bytes(&out.stderr, "the loader's message");
    assert!(
        out.stderr.contains("task\\n\\x1b[31mred.crimg")
            && out.stderr.contains("evil\\x1b[2J\\x07dir"),
        "{:?}",
        out.stderr
    );
}

#[test]
fn a_missing_image_is_one_error_said_once() {
    let scratch = scratch_dir();
    let missing = scratch.path().join("no-such.crimg");
    let bins = binaries();
    for sub in ["info", "verify"] {
        let mut command = bins.crimg_command([sub]);
        command.arg(&missing);
        let out = cli::run(command, CLI_TIMEOUT).unwrap();
        assert!(!out.status.success(), "crimg {sub}: {}", out.status);
        let first = out.stderr.lines().next().unwrap_or("");
        assert_eq!(
            first.matches("No such file or directory").count(),
            1,
            "crimg {sub}: {:?}",
            out.stderr
        );
        assert!(first.contains(&missing.display().to_string()), "{first}");
    }
}

/// crdump's messages show what the target chose (here the name of a deleted
/// file it holds open) escaped: one blocker stays one line (then the
/// refusal's summary line).
#[test]
fn a_deleted_file_with_control_bytes_in_its_name_is_one_escaped_line() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let name = scratch.path().join("x\n\x1b[31mFAKE");
    fs::write(&name, b"data").unwrap();
    let mut holder = std::process::Command::new("sh");
    holder
        .arg("-c")
        .arg(r#"exec 3<"$1" && rm -- "$1" && echo READY && exec sleep 600"#)
        .arg("sh")
        .arg(&name);
    let mut w = Workload::spawn_command("deleted-file holder", holder).unwrap();
    w.wait_line("READY", LINE_TIMEOUT).unwrap();
    let out = scratch.path().join("out");
    let mut crdump = std::process::Command::new(&binaries().crdump);
    crdump
        .arg("--pid")
        .arg(w.pid().to_string())
        .arg("-o")
        .arg(&out)
        .arg("--leave-running")
        // Deleted files are saved up to the limit: this one is above.
        .args(["--ghost-limit", "1"]);
    let r = cli::run(crdump, CLI_TIMEOUT).expect("run crdump");
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert_no_control_bytes(&r.stderr, "crdump's refusal");
    assert_eq!(r.stderr.lines().count(), 2, "{:?}", r.stderr);
    assert!(
        r.stderr.contains("deleted file") && r.stderr.contains("x\\n\\x1b[31mFAKE"),
        "{:?}",
        r.stderr
    );
}
