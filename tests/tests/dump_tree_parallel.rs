//! The images of a tree are written in parallel (one worker per CPU):
//! what a failure in the write phase of one process leaves is what a
//! sequential write left: the dump fails naming that process, nothing is
//! left in the output directory, and every process runs on untraced.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::process::only_stdio;
use crimg_tests::tmpfs::Tmpfs;
use crimg_tests::tree::{children_of, TreeGuard};
use crimg_tests::untouched::{assert_running_untraced, wait_until};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, workload_path, ChildGuard};

#[test]
fn a_full_disk_while_a_tree_is_written_leaves_it_running_and_nothing_behind() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let counter = workload_path("counter");
    let args = format!("--heap-mb 8 --tmpdir {}", scratch.path().display());
    // sh (a small image) and three counters (10 MiB images each).
    let script = format!(
        "{c} {a} & {c} {a} & {c} {a} & wait",
        c = counter.display(),
        a = args
    );
    let mut command = Command::new("sh");
    command
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    let sh = ChildGuard::new("sh", command.spawn().unwrap());
    let root = sh.pid();
    assert!(
        wait_until(Duration::from_secs(10), || children_of(root).len() == 3),
        "the counters did not start"
    );
    let counters = children_of(root);
    let _tree = TreeGuard::hold_tree(root);
    // Room for a few MiB: the counters' images do not fit.
    let full = scratch.path().join("full");
    let _full = Tmpfs::mount(&full, "size=4m,mode=0700");
    let out = full.join("out");
    let r = run(bins.crdump_command(root, &out, false), CLI_TIMEOUT).unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("no space left"),
        "{}",
        r.stderr
    );
    // The one error named is a counter's.
    let named: Vec<i32> = counters
        .iter()
        .copied()
        .filter(|p| r.stderr.contains(&format!("task-{p}.crimg")))
        .collect();
    assert_eq!(named.len(), 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!out.exists(), "the output directory was left behind");
    assert!(
        fs::read_dir(&full).unwrap().next().is_none(),
        "something was left on the disk"
    );
    for p in std::iter::once(root).chain(counters) {
        assert_running_untraced(p);
    }
}
