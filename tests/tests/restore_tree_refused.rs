//! A tree holding something a tree restore cannot place yet (a unix
//! socketpair between parent and child; one epoll instance in both): crdump
//! refuses it, naming the pid, the fd and the kind, leaves every process
//! running as it was (not stopped, not traced, not killed) and nothing in
//! the output directory; the processes then use what they share.

use std::path::Path;

use crimg_tests::cli::run;
use crimg_tests::tree::{
    become_subreaper, ps_tree, state_of, tracer_of, Tree, TreeGuard, TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// Nothing in `dir` (or no `dir`).
fn assert_nothing_in(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let left: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
    }
}

/// Whether a line of `err` names process `pid` (`pid P:` or `pid P `),
/// its fd `fd` and `kind`.
fn names(err: &str, pid: i32, fd: i32, kind: &str) -> bool {
    err.lines().any(|l| {
        (l.contains(&format!("pid {pid}:")) || l.contains(&format!("pid {pid} ")))
            && l.contains(&format!("fd {fd} "))
            && l.contains(kind)
    })
}

fn refused(kind: &str, expect: impl Fn(i32, i32, &str) -> bool) {
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    let tree = Tree::start_workload(
        "tree_refused",
        ["--kind", kind],
        &scratch.path().join("out"),
    );
    let parent = tree.pid();
    let child: i32 = tree.out.expect_lines("READY parent", 1)[0]
        .number("child")
        .unwrap()
        .try_into()
        .unwrap();
    tree.out.expect_lines("READY child", 1);
    let held = TreeGuard::hold_tree(parent);
    let before = ps_tree(parent);
    let out_dir = scratch.path().join("dump");
    let out = run(bins.crdump_command(parent, &out_dir, false), TREE_TIMEOUT).unwrap();
    assert!(
        !out.status.success(),
        "crdump dumped a tree sharing a {kind}: {out:?}"
    );
    assert!(
        expect(parent, child, &out.stderr),
        "crdump's error does not name the pid, fd and kind of the shared {kind}:\n{}",
        out.stderr
    );
    assert_nothing_in(&out_dir);
    assert_eq!(
        held.present(),
        held.pids(),
        "a process of the refused tree is gone"
    );
    assert_eq!(
        ps_tree(parent),
        before,
        "the tree after the refusal (left) and before"
    );
    for pid in held.pids() {
        let state = state_of(pid);
        assert!(
            matches!(state, Some('S' | 'R')),
            "pid {pid} is in state {state:?} after the refusal"
        );
        assert_eq!(tracer_of(pid), Some(0), "pid {pid} is still traced");
    }
    let mut tree = tree;
    held.signal(child, libc::SIGUSR1);
    held.signal(parent, libc::SIGUSR1);
    tree.out.expect_pass("child");
    tree.out.expect_pass("parent");
}

#[test]
fn a_socketpair_between_parent_and_child_is_refused_by_pid_fd_and_kind() {
    skip_unless_root!();
    refused("socketpair", |parent, child, err| {
        names(err, parent, 3, "socket") || names(err, child, 4, "socket")
    });
}

#[test]
fn an_epoll_shared_by_parent_and_child_is_refused_by_pid_fd_and_kind() {
    skip_unless_root!();
    refused("epoll", |parent, child, err| {
        names(err, parent, 3, "epoll") || names(err, child, 3, "epoll")
    });
}
