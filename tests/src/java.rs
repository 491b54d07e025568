//! The Java workload (`workloads/Loop.java`): compiled ahead (java's
//! source-file launcher keeps a socket open, which crdump refuses) and
//! started as a self-checking JVM with a large reserved heap and many
//! threads.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use crate::process::{CheckTrigger, Workload, LINE_TIMEOUT, READY_TIMEOUT};
use crate::{paths::scratch_dir, privilege::report_skip, Facts, TickStream};

/// A running `Loop` JVM that printed READY; its classes live as long as it.
pub struct JavaLoop {
    pub jvm: Workload,
    pub classes: tempfile::TempDir,
}

/// `program` found in a directory of `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Compile and start `Loop` ticking every `interval_ms`, waiting for its
/// READY line; `None` (after printing `skipped: …`) without a JDK on PATH
/// (tools/test.sh installs one when it runs as root).
pub fn start_java_loop(interval_ms: u32) -> Option<JavaLoop> {
    start_java_loop_with(interval_ms, &[])
}

/// [`start_java_loop`] with more JVM options (`-XX:+UseZGC`).
pub fn start_java_loop_with(interval_ms: u32, jvm_args: &[&str]) -> Option<JavaLoop> {
    let (Some(java), Some(javac)) = (on_path("java"), on_path("javac")) else {
        report_skip("no java and javac on PATH");
        return None;
    };
    let classes = scratch_dir();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/Loop.java");
    let status = Command::new(javac)
        .arg("-d")
        .arg(classes.path())
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("javac: {e}"));
    assert!(status.success(), "javac {} failed", source.display());
    let mut command = Command::new(java);
    command
        .arg("-Xmx256m")
        .args(jvm_args)
        .arg("-cp")
        .arg(classes.path())
        .arg("Loop")
        .args(["--interval-ms", &interval_ms.to_string()]);
    let mut jvm = Workload::spawn_command("loop.java", command).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = jvm.wait_ready(READY_TIMEOUT) {
        panic!("{e}\n{}", jvm.stderr_report());
    }
    Some(JavaLoop { jvm, classes })
}

/// A restored `Loop` JVM (which printed a TICK) carries on as the dumped
/// one would have: its heap checksum is the one it gave at READY
/// (`ready`), its ticks continue `before` with none lost or repeated, and
/// it quits on `quit` with status 0.
pub fn assert_loop_resumed(ready: &Facts, before: &TickStream, restored: &mut Workload) {
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
