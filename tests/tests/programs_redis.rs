//! redis round trip: `redis-server` listening on a unix socket and a
//! loopback TCP port, with keys set through both, dumped, killed and
//! resumed by running its image: `redis-cli` reads every key back on both.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crimg_tests::cli::run;
use crimg_tests::process::Workload;
use crimg_tests::programs::{
    dump_and_run_image, expect_running, free_port, require_program, wait_until,
    PROGRAM_READY_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt};

/// Where redis-cli connects.
enum Via<'a> {
    Tcp(u16),
    Unix(&'a Path),
}

fn redis_cli(via: &Via<'_>, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("redis-cli");
    match via {
        Via::Tcp(port) => c.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
        Via::Unix(path) => c.arg("-s").arg(path),
    };
    c.args(args);
    match run(c, Duration::from_secs(20)) {
        Ok(out) if out.status.success() && !out.stdout.starts_with("ERR") => {
            Ok(out.stdout.trim_end().to_owned())
        }
        Ok(out) => Err(format!(
            "redis-cli {args:?}: {} {} {}",
            out.status, out.stdout, out.stderr
        )),
        Err(e) => Err(format!("redis-cli {args:?}: {e}")),
    }
}

#[test]
#[ignore = "needs: epoll (fd 5), listening TCP socket (fd 6) and unix socket (fd 7)"]
fn redis_serves_every_key_on_unix_socket_and_tcp_after_restore() {
    skip_unless_root!();
    let (Some(server), Some(_)) = (
        require_program("redis-server", "redis-server"),
        require_program("redis-cli", "redis-tools"),
    ) else {
        return;
    };
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let socket = scratch.path().join("redis.sock");
    let port = free_port();
    let mut command = Command::new(server);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--unixsocket")
        .arg(&socket)
        .args([
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--dir"])
        .arg(scratch.path());
    let mut redis =
        Workload::spawn_command("redis-server", command).unwrap_or_else(|e| panic!("{e}"));
    let (tcp, unix) = (Via::Tcp(port), Via::Unix(&socket));
    for via in [&tcp, &unix] {
        let pong = wait_until("redis answers PING", PROGRAM_READY_TIMEOUT, || {
            redis_cli(via, &["PING"])
        });
        assert_eq!(pong, "PONG");
    }
    let keys: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("key:{i}"),
                format!("value {i} {}", "x".repeat(i * 50)),
            )
        })
        .collect();
    for (i, (k, v)) in keys.iter().enumerate() {
        let via = if i % 2 == 0 { &tcp } else { &unix };
        assert_eq!(redis_cli(via, &["SET", k, v]).unwrap(), "OK");
    }

    let (_dump, mut restored) = dump_and_run_image(
        &bins,
        "redis-server",
        &mut redis,
        &scratch.path().join("out"),
    );
    for (name, via) in [("TCP", &tcp), ("the unix socket", &unix)] {
        let size = redis_cli(via, &["DBSIZE"]).unwrap_or_else(|e| {
            panic!(
                "the restored redis does not answer on {name}: {e}\n{}",
                restored.stderr_report()
            )
        });
        assert_eq!(size, keys.len().to_string(), "DBSIZE over {name}");
        for (k, v) in &keys {
            let got = redis_cli(via, &["GET", k]).unwrap();
            assert_eq!(&got, v, "GET {k} over {name}");
        }
    }
    // It still takes writes.
    assert_eq!(
        redis_cli(&unix, &["SET", "after", "restore"]).unwrap(),
        "OK"
    );
    assert_eq!(redis_cli(&tcp, &["GET", "after"]).unwrap(), "restore");
    expect_running(&mut restored, "redis-server");
}
