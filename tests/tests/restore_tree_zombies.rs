//! A parent with two zombie children (one exited with 7, one killed by
//! SIGTERM) and a child in a process group of its own (with a grandchild in
//! it): restored as a tree, the listing is what it was (zombies included),
//! the parent's `waitpid` returns both statuses, and `kill -- -PGID`
//! reaches the whole group. The same checks without a dump first show the
//! workload itself is sound.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crimg_tests::cli::run;
use crimg_tests::tree::{
    become_subreaper, dump_and_kill_tree, ps_tree, restore_tree, state_of, Tree, TreeGuard,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Facts, PidGuard};

fn pid(facts: &Facts, key: &str) -> i32 {
    facts.number(key).unwrap().try_into().unwrap()
}

/// The workload's processes: the zombies a and b, the group leader c and
/// the group's members (c and its child), sorted.
struct Shape {
    a: i32,
    b: i32,
    c: i32,
    members: Vec<i32>,
}

fn start(dir: &Path) -> (Tree, Shape) {
    let tree = Tree::start_workload("tree_zombies", [] as [&str; 0], &dir.join("out"));
    let ready = tree.out.expect_lines("READY parent", 1).remove(0);
    let mut members: Vec<i32> = tree
        .out
        .expect_lines("READY member", 2)
        .iter()
        .map(|m| pid(m, "pid"))
        .collect();
    members.sort_unstable();
    let shape = Shape {
        a: pid(&ready, "a"),
        b: pid(&ready, "b"),
        c: pid(&ready, "c"),
        members,
    };
    assert!(shape.members.contains(&shape.c), "{:?}", shape.members);
    for zombie in [shape.a, shape.b] {
        assert_eq!(state_of(zombie), Some('Z'), "pid {zombie} is not a zombie");
    }
    (tree, shape)
}

/// The parent reaps both zombies (their statuses checked), the group gets
/// `kill -- -PGID`, and the parent exits 0 (the test reaps it: it is the
/// test's child, the original directly and the restored one through the
/// subreaper).
fn check(tree: &mut Tree, held: &TreeGuard, shape: &Shape) {
    tree.out.mark();
    held.signal(tree.pid(), libc::SIGUSR1);
    let zombies = tree.out.expect_pass("zombies");
    assert_eq!(zombies.get("a"), Some("exited:7"), "{}", zombies.line());
    assert_eq!(zombies.get("b"), Some("signaled:15"), "{}", zombies.line());

    let c = shape.c;
    let mut kill = Command::new("kill");
    kill.args(["--", &format!("-{c}")]);
    let out = run(kill, Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "kill -- -{c}: {}", out.stderr);
    let termed = tree.out.expect_lines("TERM ", 2);
    let mut got: Vec<i32> = termed.iter().map(|t| pid(t, "pid")).collect();
    got.sort_unstable();
    assert_eq!(got, shape.members, "the group's members that got SIGTERM");
    for t in &termed {
        assert_eq!(pid(t, "pgid"), c, "{}", t.line());
    }
    tree.out.expect_pass("group");
    let parent = PidGuard::new(tree.pid()).unwrap();
    parent.wait_gone(Duration::from_secs(20)).unwrap();
}

#[test]
fn without_a_dump_the_zombies_and_the_group_behave() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (mut tree, shape) = start(scratch.path());
    let held = TreeGuard::hold_tree(tree.pid());
    check(&mut tree, &held, &shape);
    let status = tree.wait_exit(Duration::from_secs(20)).unwrap();
    let root = nix::unistd::Pid::from_raw(tree.pid());
    assert_eq!(status, Some(nix::sys::wait::WaitStatus::Exited(root, 0)));
}

#[test]
fn zombies_keep_their_status_and_a_group_gets_its_signal() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let (mut tree, shape) = start(scratch.path());
        let held = TreeGuard::hold_tree(tree.pid());
        assert_eq!(
            held.pids().len(),
            5,
            "parent, a, b, c and c's child: {:?}",
            held.pids()
        );
        let before = ps_tree(tree.pid());
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));

        restore_tree(&dump.dir, [] as [&str; 0], &held.pids());
        let restored = TreeGuard::hold_tree(tree.pid());
        let after = ps_tree(tree.pid());
        assert_eq!(
            after, before,
            "the listing after the restore (left) and before the dump (right)"
        );
        for zombie in [shape.a, shape.b] {
            assert_eq!(
                state_of(zombie),
                Some('Z'),
                "pid {zombie} is not a zombie again"
            );
        }
        check(&mut tree, &restored, &shape);
        let root = nix::unistd::Pid::from_raw(tree.pid());
        let status = nix::sys::wait::waitpid(root, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(root, 0));
    });
}
