//! ruby round trip: a thread counting and a `Timeout` block expiring again
//! and again (ruby's eventfds, its timer thread and POSIX timer), dumped,
//! killed and resumed by running its image: both go on.

use std::process::Command;

use crimg_tests::programs::{
    dump_and_run_image, expect_running, numbered, program_source, require_program, start_ready,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

#[test]
fn ruby_thread_and_timeout_go_on_after_restore() {
    skip_unless_root!();
    let Some(ruby) = require_program("ruby", "ruby") else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let mut command = Command::new(ruby);
    command.arg(program_source("thread_timeout.rb"));
    let mut rb = start_ready("ruby", command);
    rb.expect_line("TIMEOUT 2");

    let (_dump, mut restored) =
        dump_and_run_image(&bins, "ruby", &mut rb, &scratch.path().join("out"));
    restored.expect_line("TIMEOUT ");
    restored.expect_line("TIMEOUT ");
    expect_running(&mut restored, "ruby");
    for stream in ["TICK ", "TIMEOUT "] {
        let before = numbered(rb.stdout_lines(), stream);
        let after = numbered(restored.stdout_lines(), stream);
        before
            .check_resumed_by(&after)
            .unwrap_or_else(|e| panic!("ruby's {stream}lines: {e}\n{}", restored.stderr_report()));
    }
    assert!(
        !restored
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("FAIL")),
        "{:?}",
        restored.stdout_lines()
    );
}
