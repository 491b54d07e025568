//! crdump runs the tree restorer's own rules on the tree before it writes
//! or kills anything: a tree `crrestore-tree` would refuse is refused at
//! dump time, with the restorer's reason, and left running as it was.

use std::path::Path;
use std::process::Command;

use crimg_tests::cli::run;
use crimg_tests::tree::{become_subreaper, ps_tree, state_of, Tree, TreeGuard, TREE_TIMEOUT};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// A process that left its session for one of its own while its child
/// stayed in the old one: the child is in a session that is neither its
/// own nor its parent's, which no sequence of fork, setsid and setpgid
/// makes again.
const SESSION_LEFT_BEHIND: &str =
    r#"( sleep 1000 & exec setsid sh -c 'echo READY; exec sleep 1001' ); wait"#;

fn nothing_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_tree_the_restorer_would_refuse_is_refused_at_dump_time_and_left_running() {
    skip_unless_root!();
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut command = Command::new("setsid");
    command.args(["bash", "-c", SESSION_LEFT_BEHIND]);
    let mut tree = Tree::spawn_command("bash", command, &scratch.path().join("out"))
        .unwrap_or_else(|e| panic!("{e}"));
    tree.out.expect_line("READY");
    let root = tree.pid();
    // Both sleeps exec'd (a forked bash that has not yet would change
    // the listing between `before` and after).
    let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let deadline = std::time::Instant::now() + TREE_TIMEOUT;
    while crimg_tests::tree::tree_pids(root)
        .iter()
        .filter(|&&p| comm(p).trim() == "sleep")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeps never ran: {}",
            ps_tree(root)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let held = TreeGuard::hold_tree(root);
    assert_eq!(held.pids().len(), 3, "the tree: {}", ps_tree(root));
    let before = ps_tree(root);
    // --check-only says so too (exit 3: a blocker --force cannot help).
    let mut check = Command::new(&bins.crdump);
    check.args(["--check-only", "--pid", &root.to_string()]);
    let checked = run(check, TREE_TIMEOUT).unwrap();
    assert!(
        !checked.status.success()
            && checked
                .stdout
                .contains("crrestore-tree would refuse this tree"),
        "crdump --check-only passes a tree the restorer refuses: {checked:?}"
    );
    let out_dir = scratch.path().join("dump");
    let out = run(bins.crdump_command(root, &out_dir, false), TREE_TIMEOUT).unwrap();
    assert!(!out.status.success(), "crdump dumped it: {out:?}");
    assert!(
        out.stderr.contains("crrestore-tree would refuse this tree")
            && out.stderr.contains("session"),
        "crdump's error does not give the restorer's reason:\n{}",
        out.stderr
    );
    assert!(
        nothing_in(&out_dir),
        "crdump left files in {}",
        out_dir.display()
    );
    assert_eq!(held.present(), held.pids(), "a process of the tree is gone");
    assert_eq!(
        ps_tree(root),
        before,
        "the tree after the refusal and before"
    );
    for pid in held.pids() {
        assert!(
            matches!(state_of(pid), Some('S' | 'R')),
            "pid {pid} is not running on after the refusal"
        );
    }
    held.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
}
