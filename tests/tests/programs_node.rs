//! node round trip: a `setInterval` counter, an `fs.watch` and an HTTP
//! server on a loopback port (libuv's epoll, eventfds, self-pipes, inotify
//! and a listening socket) dumped, killed and resumed by running its image:
//! it keeps counting, answers `curl` on the same port and still sees the
//! watched file change.

use std::process::Command;

use crimg_tests::programs::{
    curl, dump_and_run_image, expect_running, numbered, program_source, require_program,
    start_ready,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

#[test]
#[ignore = "needs: epoll (fds 3, 9, 13), inotify (fd 17), listening TCP socket (fd 19)"]
fn node_counts_on_answers_curl_and_watches_after_restore() {
    skip_unless_root!();
    let (Some(node), Some(_)) = (
        require_program("node", "nodejs"),
        require_program("curl", "curl"),
    ) else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let watched = scratch.path().join("watched");
    std::fs::write(&watched, "0\n").unwrap();

    let mut command = Command::new(node);
    command.arg(program_source("counter.js")).arg(&watched);
    let mut node = start_ready("node", command);
    let port = node.ready().unwrap().number("port").unwrap();
    node.expect_line("TICK 3");
    let url = format!("http://127.0.0.1:{port}/");
    let body = curl(&url).unwrap_or_else(|e| panic!("before the dump: {e}"));
    assert!(body.starts_with("count "), "node answered `{body}`");

    let (_dump, mut restored) =
        dump_and_run_image(&bins, "node", &mut node, &scratch.path().join("out"));
    let before = numbered(node.stdout_lines(), "TICK ");
    restored.expect_line("TICK ");
    expect_running(&mut restored, "node");
    let after = numbered(restored.stdout_lines(), "TICK ");
    before
        .check_resumed_by(&after)
        .unwrap_or_else(|e| panic!("node's counter: {e}\n{}", restored.stderr_report()));

    let body = curl(&url).unwrap_or_else(|e| {
        panic!(
            "the restored node does not answer on port {port}: {e}\n{}",
            restored.stderr_report()
        )
    });
    let count: u64 = body
        .trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the restored node answered `{body}`"));
    assert!(
        count > before.last().unwrap(),
        "the restored node answered count {count}, not past its last tick before the dump {}",
        before.last().unwrap()
    );

    std::fs::write(&watched, "1\n").unwrap();
    restored.expect_line("WATCH ");
    restored.expect_line("TICK ");
}
