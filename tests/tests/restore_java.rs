//! A JVM round trip: a Java program (many threads, a large reserved heap,
//! the JVM's own signal handlers) dumped, killed and resumed by the loader,
//! checking its own heap and tick stream afterwards.

use std::fs;
use std::time::Duration;

use crimg_tests::java::{start_java_loop, JavaLoop};
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TickStream};

fn task_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn java_loop_resumes_with_every_thread() {
    skip_unless_root!();
    let Some(JavaLoop {
        mut jvm,
        classes: _classes,
    }) = start_java_loop(20)
    else {
        return;
    };
    let ready = jvm.ready().expect("READY").clone();
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
