//! python3 round trips: an asyncio loop (`call_later` timers and an
//! `asyncio.Queue` fed by a thread through `call_soon_threadsafe`: epoll
//! and the loop's self-socketpair), dumped, killed and restored by
//! `crrestore-tree` with its pid, and `python3 -m http.server` (a
//! listening TCP socket), dumped, killed and resumed by running its image.

use std::process::Command;

use crimg_tests::process::{PidGuard, Workload, LINE_TIMEOUT};
use crimg_tests::programs::{
    curl, dump_and_run_image, dump_or_panic, expect_running, free_port, numbered, program_source,
    require_program, start_ready, wait_until, PROGRAM_READY_TIMEOUT,
};
use crimg_tests::tree::restore_tree_command;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

#[test]
fn asyncio_timers_and_threadsafe_queue_go_on_after_restore() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let Some(python) = require_program("python3", "python3") else {
            return;
        };
        let bins = binaries();
        let scratch = scratch_dir();
        let mut command = Command::new(python);
        command.arg(program_source("asyncio_queue.py"));
        let mut aio = start_ready("python3 asyncio", command);
        aio.expect_line("TICK 3");
        aio.expect_line("GOT 2");
        let pid = aio.pid();
        let dump = dump_or_panic(&bins, "python3 asyncio", pid, &scratch.path().join("out"));
        aio.wait_exit(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("crdump did not kill python3 asyncio: {e}"));

        // Restored through crrestore-tree, it gets its pid back (CPython ties
        // its running loop to getpid()), and its stdio is crrestore-tree's: the
        // test reads it as it read the original's.
        let mut restorer = Workload::spawn_command(
            "crrestore-tree of python3 asyncio",
            restore_tree_command(&dump.dir, [] as [&str; 0]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let status = restorer
            .child()
            .wait_exit(PROGRAM_READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        crimg_tests::tree::panic_if_pid_taken(status.code(), &restorer.stderr_report());
        assert!(
            status.success(),
            "crrestore-tree exited {status}\n{}",
            restorer.stderr_report()
        );
        let _restored = PidGuard::new(pid).unwrap_or_else(|e| panic!("no restored pid {pid}: {e}"));
        restorer.expect_line("TICK ");
        restorer.expect_line("GOT ");
        restorer.expect_line("GOT ");
        for stream in ["TICK ", "GOT "] {
            let before = numbered(aio.stdout_lines(), stream);
            let after = numbered(restorer.stdout_lines(), stream);
            before.check_resumed_by(&after).unwrap_or_else(|e| {
                panic!("asyncio's {stream}lines: {e}\n{}", restorer.stderr_report())
            });
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert!(comm.starts_with("python3"), "pid {pid} is `{comm}` now");
    });
}

#[test]
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
