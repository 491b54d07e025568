//! A JVM round trip: a Java program (many threads, a large reserved heap,
//! the JVM's own signal handlers) dumped, killed and resumed by the loader,
//! checking its own heap and tick stream afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TickStream, Workload};

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn task_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn java_loop_resumes_with_every_thread() {
    skip_unless_root!();
    let (Some(java), Some(javac)) = (on_path("java"), on_path("javac")) else {
        // tools/test.sh installs a JDK when it runs as root.
        crimg_tests::privilege::report_skip("no java and javac on PATH");
        return;
    };
    // Compiled ahead: java's source-file launcher keeps a socket open, which
    // crdump refuses.
    let classes = scratch_dir();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/Loop.java");
    let status = Command::new(javac)
        .arg("-d")
        .arg(classes.path())
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success(), "javac {} failed", source.display());
    let mut command = Command::new(java);
    command
        .arg("-Xmx256m")
        .arg("-cp")
        .arg(classes.path())
        .arg("Loop")
        .args(["--interval-ms", "20"]);
    let mut jvm = Workload::spawn_command("loop.java", command).unwrap_or_else(|e| panic!("{e}"));
    let ready = jvm
        .wait_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    jvm.expect_line("TICK 5");
    let threads = task_count(jvm.pid());
    assert!(threads > 5, "a JVM has many threads, found {threads}");

    let bins = binaries();
    let scratch = scratch_dir();
    let dump = bins
        .dump(jvm.pid(), scratch.path(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let before = TickStream::from_lines(jvm.stdout_lines()).unwrap();

    let mut restored = bins
        .restore("restored loop.java", &dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    assert_eq!(
        task_count(restored.pid()),
        threads,
        "threads after the restore"
    );
    let pass = restored
        .check(CheckTrigger::Stdin, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    assert_eq!(
        pass.number("sum").unwrap(),
        ready.number("sum").unwrap(),
        "heap checksum: READY `{}`, PASS `{}`",
        ready.line(),
        pass.line()
    );
    let after = TickStream::from_lines(restored.stdout_lines()).unwrap();
    before
        .check_resumed_by(&after)
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    restored.send_line("quit").unwrap();
    restored.expect_line("BYE");
    let status = restored
        .wait_exit(LINE_TIMEOUT)
        .expect("the restored JVM exits");
    assert!(status.success(), "the restored JVM exited with {status}");
}
