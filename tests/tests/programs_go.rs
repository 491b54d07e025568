//! A Go program round trip: goroutines, a `time.Ticker` and a TCP listener
//! (the Go runtime's netpoll epoll and pipe, its threads and signal
//! handlers) dumped, killed and resumed by running its image: it keeps
//! ticking and answers on the same port.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crimg_tests::cli::run_ok;
use crimg_tests::programs::{
    dump_and_run_image, expect_running, numbered, program_source, require_program, start_ready,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

/// Ask the ticker for its count over TCP.
fn ask_count(port: u64) -> Result<u64, String> {
    let port = u16::try_from(port).map_err(|e| e.to_string())?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    reply
        .trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("reply `{reply}`"))
}

#[test]
#[ignore = "needs: listening TCP socket (fd 3), epoll (fd 5)"]
fn go_ticker_ticks_on_and_answers_on_its_port_after_restore() {
    skip_unless_root!();
    let Some(go) = require_program("go", "golang-go") else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let binary = scratch.path().join("ticker");
    let mut build = Command::new(go);
    build
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(program_source("ticker.go"))
        .env("GOCACHE", scratch.path().join("gocache"))
        .env("GOPATH", scratch.path().join("gopath"))
        .env("GO111MODULE", "off");
    run_ok(build, Duration::from_secs(300)).unwrap_or_else(|e| panic!("go build: {e}"));

    let mut ticker = start_ready("go ticker", Command::new(&binary));
    let port = ticker.ready().unwrap().number("port").unwrap();
    ticker.expect_line("TICK 3");
    ask_count(port).unwrap_or_else(|e| panic!("before the dump: {e}"));

    let (_dump, mut restored) =
        dump_and_run_image(&bins, "go ticker", &mut ticker, &scratch.path().join("out"));
    let before = numbered(ticker.stdout_lines(), "TICK ");
    restored.expect_line("TICK ");
    expect_running(&mut restored, "go ticker");
    let after = numbered(restored.stdout_lines(), "TICK ");
    before
        .check_resumed_by(&after)
        .unwrap_or_else(|e| panic!("the Go ticker: {e}\n{}", restored.stderr_report()));
    let count = ask_count(port).unwrap_or_else(|e| {
        panic!(
            "the restored Go program does not answer on port {port}: {e}\n{}",
            restored.stderr_report()
        )
    });
    assert!(
        count > before.last().unwrap(),
        "count {count} after the restore"
    );
    restored.expect_line("TICK ");
}
