//! python3 round trips: an asyncio loop (`call_later` timers and an
//! `asyncio.Queue` fed by a thread through `call_soon_threadsafe`: epoll
//! and the loop's self-socketpair) and `python3 -m http.server` (a
//! listening TCP socket), each dumped, killed and resumed by running its
//! image.

use std::process::Command;

use crimg_tests::process::Workload;
use crimg_tests::programs::{
    curl, dump_and_run_image, expect_running, free_port, numbered, program_source, require_program,
    start_ready, wait_until, PROGRAM_READY_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

#[test]
#[ignore = "needs: epoll (fd 3), unix socketpair (fds 4, 5)"]
fn asyncio_timers_and_threadsafe_queue_go_on_after_restore() {
    skip_unless_root!();
    let Some(python) = require_program("python3", "python3") else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let mut command = Command::new(python);
    command.arg(program_source("asyncio_queue.py"));
    let mut aio = start_ready("python3 asyncio", command);
    aio.expect_line("TICK 3");
    aio.expect_line("GOT 2");

    let (_dump, mut restored) = dump_and_run_image(
        &bins,
        "python3 asyncio",
        &mut aio,
        &scratch.path().join("out"),
    );
    restored.expect_line("TICK ");
    restored.expect_line("GOT ");
    restored.expect_line("GOT ");
    expect_running(&mut restored, "python3 asyncio");
    for stream in ["TICK ", "GOT "] {
        let before = numbered(aio.stdout_lines(), stream);
        let after = numbered(restored.stdout_lines(), stream);
        before.check_resumed_by(&after).unwrap_or_else(|e| {
            panic!("asyncio's {stream}lines: {e}\n{}", restored.stderr_report())
        });
    }
}

#[test]
#[ignore = "needs: listening TCP socket (fd 3)"]
fn http_server_answers_on_its_port_after_restore() {
    skip_unless_root!();
    let (Some(python), Some(_)) = (
        require_program("python3", "python3"),
        require_program("curl", "curl"),
    ) else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let www = scratch.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("before.txt"), "served before the dump\n").unwrap();
    let port = free_port();
    let mut command = Command::new(python);
    command
        .args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(&www);
    let mut server = Workload::spawn_command("python3 -m http.server", command)
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .wait_line("Serving HTTP on", PROGRAM_READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.stderr_report()));
    let url = format!("http://127.0.0.1:{port}");
    let body = wait_until("http.server answers", PROGRAM_READY_TIMEOUT, || {
        curl(&format!("{url}/before.txt"))
    });
    assert_eq!(body, "served before the dump\n");

    let (_dump, mut restored) = dump_and_run_image(
        &bins,
        "python3 -m http.server",
        &mut server,
        &scratch.path().join("out"),
    );
    // A file made after the restore is served too: the server reads its
    // directory now, it is not replaying anything.
    std::fs::write(www.join("after.txt"), "written after the restore\n").unwrap();
    let after = curl(&format!("{url}/after.txt")).unwrap_or_else(|e| {
        panic!(
            "the restored http.server does not answer on port {port}: {e}\n{}",
            restored.stderr_report()
        )
    });
    assert_eq!(after, "written after the restore\n");
    let before = curl(&format!("{url}/before.txt")).unwrap();
    assert_eq!(before, "served before the dump\n");
    expect_running(&mut restored, "python3 -m http.server");
}
