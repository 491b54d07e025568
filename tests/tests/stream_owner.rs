//! A stream gets nothing its image file could not: `crimg run -` receives
//! the image into a memfd of its own, which it gives to the stream's owner
//! (the file on stdin's, a pipe writer's) before the loader bounds the
//! task's credentials by it. Root running another user's stream restores
//! it with that user's ids, as root running that user's image file does.

use std::fs::{self, File};
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crimg_tests::cli::CLI_TIMEOUT;
use crimg_tests::process::only_stdio;
use crimg_tests::roundtrip::nobody_ids;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, ChildGuard};

/// A `sleep` with only fds 0-2 (all /dev/null), its pid.
fn sleeper() -> ChildGuard {
    let mut command = Command::new("sleep");
    command
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    ChildGuard::new("sleep", command.spawn().unwrap())
}

/// The effective uid of `pid` and whether it has any capability, once
/// its command is `comm` again (the loader's own name before that).
fn ids_once_restored(pid: i32, comm: &str) -> (u32, bool) {
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        };
        if field("Name:").is_some_and(|n| n == [comm]) {
            let uid = field("Uid:").unwrap()[1].parse().unwrap();
            let caps = u64::from_str_radix(&field("CapEff:").unwrap()[0], 16).unwrap();
            return (uid, caps != 0);
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} was not restored: {status}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `crimg run -` with the stream file `stream` on its stdin: its guard
/// (the restored process is that pid) and its stderr file.
fn run_stream(stream: &Path, err: &Path) -> ChildGuard {
    let mut command = binaries().crimg_command(["run", "-"]);
    command
        .stdin(File::open(stream).unwrap())
        .stdout(Stdio::null())
        .stderr(File::create(err).unwrap());
    only_stdio(&mut command);
    ChildGuard::new("crimg run -", command.spawn().unwrap())
}

#[test]
fn another_users_stream_file_is_restored_with_that_users_ids_only() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path();
    let original = sleeper();
    let stream = dir.join("s.tar");
    let mut dump = bins.crdump_command(original.pid(), Path::new("-"), true);
    dump.stdout(File::create(&stream).unwrap());
    let out = dump.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(original);

    // Root's own stream file: root's ids, as dumped.
    let err = dir.join("root.err");
    let run = run_stream(&stream, &err);
    assert_eq!(ids_once_restored(run.pid(), "sleep"), (0, true));
    drop(run);

    // The same bytes, the file given to nobody: nobody's ids, no
    // capabilities (the loader says it lowered them).
    let (uid, gid) = nobody_ids();
    chown(&stream, Some(uid), Some(gid)).unwrap();
    let err = dir.join("nobody.err");
    let run = run_stream(&stream, &err);
    assert_eq!(ids_once_restored(run.pid(), "sleep"), (uid, false));
    let said = fs::read_to_string(&err).unwrap();
    assert!(said.contains("credentials lowered"), "{said}");
}
