//! Resuming in the caller's terminal: a program reading its terminal is
//! dumped, then its image is run from a shell prompt in the same terminal
//! (through a binfmt entry), and what is typed afterwards reaches it.
//!
//! The terminal is a tmux pane on a private tmux server (its own socket),
//! read with `capture-pane`, written with `send-keys`.

use std::path::PathBuf;

use crimg_tests::tmux::{have_tmux, Tmux};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, workload_path, TestBinfmt};

#[test]
fn a_reader_resumes_in_the_terminal_that_runs_its_image() {
    skip_unless_root!();
    if !have_tmux() {
        // tools/test.sh installs tmux when it runs as root.
        crimg_tests::privilege::report_skip("no tmux");
        return;
    }
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let tmux = Tmux::start(scratch.path(), 200, 50, "bash", ["--norc", "--noprofile"])
        .unwrap_or_else(|e| panic!("{e}"));
    let type_line = |text: &str| tmux.type_line(text).unwrap_or_else(|e| panic!("{e}"));
    let wait_for = |what: &str, pred: &dyn Fn(&str) -> bool| {
        tmux.wait_line(what, pred).unwrap_or_else(|e| panic!("{e}"))
    };

    let counter: PathBuf = workload_path("counter");
    type_line(&format!(
        "{} --sleep-in read --heap-mb 4 --tmpdir {}",
        counter.display(),
        scratch.path().display()
    ));
    let ready = wait_for("READY line", &|l| l.starts_with("READY pid="));
    let pid: i32 = ready["READY pid=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    type_line("before the dump");
    wait_for("echo of the first line", &|l| l == "GOT before the dump");

    let dump = bins
        .dump(pid, &scratch.path().join("out"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    // The shell notices its job was killed and prompts again.
    wait_for("the shell's prompt after the kill", &|l| {
        l.contains("Killed")
    });

    type_line(&dump.image.display().to_string());
    // The restored reader is blocked in read() on this terminal again.
    type_line("after the restore");
    wait_for("echo of the typed line", &|l| l == "GOT after the restore");
    type_line("check");
    let pass = wait_for("PASS or FAIL", &|l| {
        l.starts_with("PASS ") || l.starts_with("FAIL ")
    });
    assert!(
        pass.starts_with("PASS counter"),
        "{pass}\n{}",
        tmux.screen().unwrap_or_default()
    );
    // The restored process runs under a new pid, in this terminal.
    assert!(!pass.contains(&format!("pid={pid} ")), "{pass}");
    type_line("quit");
    wait_for("BYE", &|l| l == "BYE");
}
