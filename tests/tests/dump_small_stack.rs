//! A thread whose stack has too little room below its stack pointer for the
//! memory injected syscalls borrow is refused by name: crdump never borrows
//! other memory of the task (the heap, a neighbouring area), which a dumper
//! killed mid-injection would leave overwritten while the task runs on.

use std::fs;
use std::process::Command;

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::process::CheckTrigger;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Workload};

#[test]
fn a_thread_on_a_small_stack_is_refused_and_nothing_else_is_borrowed() {
    skip_unless_root!();
    let mut w = Workload::start("small_stack", [] as [&str; 0]);
    let tid = w.ready().unwrap().get("tid").unwrap().to_owned();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    for force in [false, true] {
        let mut command = Command::new(&binaries().crdump);
        command
            .arg("--pid")
            .arg(w.pid().to_string())
            .arg("-o")
            .arg(&out)
            .arg("--leave-running");
        if force {
            command.arg("--force");
        }
        let r = run(command, CLI_TIMEOUT).expect("run crdump");
        assert_eq!(r.status.code(), Some(1), "force {force}: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        // The blocker, then the refusal's summary line.
        assert_eq!(lines.len(), 2, "{}", r.stderr);
        assert!(
            lines[0].contains(&format!("tid {tid}")) && lines[0].contains("stack"),
            "{}",
            lines[0]
        );
        assert!(!out.exists() || fs::read_dir(&out).unwrap().count() == 0);
        w.expect_pass(CheckTrigger::Stdin);
    }
}
