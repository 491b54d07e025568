//! A task with a seccomp filter is refused before anything is injected into
//! it, even with `force`: the dump would make it run getitimer, which its
//! filter punishes with death (workload `seccomp_echo`). Needs root: skips
//! otherwise, saying why.

use crimg_tests::{scratch_dir, skip_unless_root, Workload};
use dumper::{DumpOptions, NoProgress};

#[test]
fn seccomp_task_is_refused_untouched_even_with_force() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let mut target = Workload::start("seccomp_echo", std::iter::empty::<&str>());
    let pid = target.pid();

    // The output directory does not exist yet: a refused dump must not
    // leave it behind.
    let out = scratch.path().join("out/images");
    let opts = DumpOptions {
        leave_running: true,
        force: true,
        ..DumpOptions::default()
    };
    let err = dumper::dump(pid, &out, &opts, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("seccomp"), "{err}");
    assert!(
        !scratch.path().join("out").exists(),
        "output directory left behind"
    );

    // Still alive, untraced, and answering.
    assert_eq!(target.child().try_status(), None, "the target died");
    target.send_line("still here").unwrap();
    assert_eq!(target.expect_line("still"), "still here");
}
