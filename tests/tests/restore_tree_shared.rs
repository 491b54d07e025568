//! A parent and child sharing an anonymous shared mapping and one open
//! file description opened with `O_APPEND`: after a tree restore each sees
//! what the other wrote into the mapping before the dump and writes into it
//! after, their appends interleave without overwriting one another, and
//! the description is still one (an append by one moves the other's
//! offset). The workload checks all of it and reports; the same check
//! without a dump first shows the workload itself is sound.

use std::path::Path;

use crimg_tests::tree::{become_subreaper, dump_and_kill_tree, restore_tree, Tree, TreeGuard};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// The workload, ready: the tree and the child's pid.
fn start(dir: &Path) -> (Tree, i32) {
    let file = dir.join("appends").display().to_string();
    let tree = Tree::start_workload("tree_shared", ["--file", file.as_str()], &dir.join("out"));
    tree.out.expect_lines("READY child", 1);
    let child: i32 = tree.out.expect_lines("READY parent", 1)[0]
        .number("child")
        .unwrap()
        .try_into()
        .unwrap();
    (tree, child)
}

fn check(tree: &mut Tree, held: &TreeGuard, child: i32) {
    tree.out.mark();
    held.signal(child, libc::SIGUSR1);
    held.signal(tree.pid(), libc::SIGUSR1);
    tree.out.expect_pass("child");
    let parent = tree.out.expect_pass("parent");
    // 50 records each before the dump, 500 each after, one last.
    let records = parent.number("records").unwrap();
    assert_eq!(records, 1101, "{}", parent.line());
}

#[test]
fn without_a_dump_the_workload_sees_its_sharing() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (mut tree, child) = start(scratch.path());
    let held = TreeGuard::hold_tree(tree.pid());
    check(&mut tree, &held, child);
}

#[test]
fn shared_memory_and_an_append_description_stay_shared() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let (mut tree, child) = start(scratch.path());
        let held = TreeGuard::hold_tree(tree.pid());
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));

        restore_tree(&dump.dir, [] as [&str; 0], &held.pids());
        let restored = TreeGuard::hold_tree(tree.pid());
        assert_eq!(restored.pids(), held.pids());
        check(&mut tree, &restored, child);
    });
}
