//! A session whose leader has exited while its members live on
//! (`workloads/tree_session.c`: the root R, a subreaper, keeps the members
//! M1 (in the leader's group), M2 (in a group of its own) and K (M1's
//! child) after their leader S exited), restored with `--pidns`: in the new
//! pid namespace every process has its pid, session and group again, the
//! members are still in the leaderless session (no process has the
//! leader's pid), each checks it and reports.
//!
//! Two trees: the whole of it, dumped by R (the members in a session that
//! is not their parent's), and M1's, dumped by M1 (a root whose session
//! and group leader is gone).

use std::path::Path;

use crimg_tests::tree::{
    become_subreaper, dump_and_kill_tree, hold_pidns_tree, restore_tree, Tree, TreeGuard,
    TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Facts, PidGuard};

fn pid(facts: &Facts, key: &str) -> i32 {
    facts.number(key).unwrap().try_into().unwrap()
}

/// The workload, ready.
struct Session {
    tree: Tree,
    leader: i32,
    /// Each member's pid and parent, by pid.
    members: Vec<(i32, i32)>,
}

fn start(dir: &Path) -> Session {
    let tree = Tree::start_workload("tree_session", [] as [&str; 0], &dir.join("out"));
    let leader = pid(&tree.out.expect_lines("READY root", 1)[0], "leader");
    let ready = tree.out.expect_lines("READY member", 3);
    let mut members: Vec<(i32, i32)> = ready
        .iter()
        .map(|m| (pid(m, "pid"), pid(m, "ppid")))
        .collect();
    members.sort_unstable();
    for m in &ready {
        assert_eq!(pid(m, "sid"), leader, "{}", m.line());
    }
    Session {
        tree,
        leader,
        members,
    }
}

/// SIGUSR1 to each of `outer` (the processes' pids as the test sees
/// them): `roots` root and every member of `members` pass their checks
/// (in whatever order they write them); their verdicts, by pid.
fn check(
    s: &mut Session,
    held: &TreeGuard,
    outer: &[i32],
    members: &[i32],
    roots: usize,
) -> Vec<Facts> {
    s.tree.out.mark();
    for p in outer {
        held.signal(*p, libc::SIGUSR1);
    }
    let mut passed = s.tree.out.expect_lines("PASS member", members.len());
    s.tree.out.expect_lines("PASS root", roots);
    passed.sort_by_key(|m| pid(m, "pid"));
    let passed_pids: Vec<i32> = passed.iter().map(|m| pid(m, "pid")).collect();
    assert_eq!(passed_pids, members);
    let fails: Vec<String> = s
        .tree
        .out
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(fails.is_empty(), "{fails:?}");
    for m in &passed {
        assert_eq!(pid(m, "sid"), s.leader, "{}", m.line());
    }
    passed
}

#[test]
fn without_a_dump_the_members_keep_the_leaderless_session() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let mut s = start(scratch.path());
    let held = TreeGuard::hold_tree(s.tree.pid());
    let all = held.pids();
    let members: Vec<i32> = s.members.iter().map(|m| m.0).collect();
    check(&mut s, &held, &all, &members, 1);
}

#[test]
fn a_session_without_its_leader_comes_back_in_a_pid_namespace() {
    skip_unless_root!();
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut s = start(scratch.path());
    let root = s.tree.pid();
    let held = TreeGuard::hold_tree(root);
    let members: Vec<i32> = s.members.iter().map(|m| m.0).collect();
    let mut all = vec![root];
    all.extend(&members);
    all.sort_unstable();
    assert_eq!(
        held.pids(),
        all,
        "the root and its members (the leader is gone)"
    );
    let dump = dump_and_kill_tree(&bins, &mut s.tree, &held, &scratch.path().join("dump"));

    restore_tree(&dump.dir, ["--pidns"], &held.pids());
    let (restored, mapping) = hold_pidns_tree(root);
    let mut inner: Vec<i32> = mapping.iter().map(|(i, _)| *i).collect();
    inner.sort_unstable();
    assert_eq!(inner, all, "the pids in the new namespace");
    let outer: Vec<i32> = mapping.iter().map(|(_, o)| *o).collect();
    let passed = check(&mut s, &restored, &outer, &members, 1);
    // Every parent as it was, in the namespace.
    let parents: Vec<(i32, i32)> = passed
        .iter()
        .map(|m| (pid(m, "pid"), pid(m, "ppid")))
        .collect();
    assert_eq!(parents, s.members);
    restored.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_member_of_a_leaderless_session_comes_back_in_it_in_a_pid_namespace() {
    skip_unless_root!();
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut s = start(scratch.path());
    // M1 (in the leader's group) and its child K.
    let (m1, k) = {
        let k = s
            .members
            .iter()
            .find(|m| s.members.iter().any(|p| p.0 == m.1))
            .unwrap_or_else(|| panic!("no member whose parent is a member: {:?}", s.members));
        (k.1, k.0)
    };
    let original = TreeGuard::hold_tree(s.tree.pid());
    let subtree = TreeGuard::hold_tree(m1);
    assert_eq!(subtree.pids(), {
        let mut v = vec![m1, k];
        v.sort_unstable();
        v
    });
    bins.dump(m1, &scratch.path().join("dump"), false)
        .unwrap_or_else(|e| panic!("crdump refused the tree of pid {m1}: {e}"));
    for p in [m1, k] {
        PidGuard::new(p)
            .and_then(|g| g.wait_gone(TREE_TIMEOUT))
            .or_else(|e| {
                if crimg_tests::tree::state_of(p).is_none() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .unwrap_or_else(|e| panic!("crdump did not kill pid {p}: {e}"));
    }

    // The original's pids are taken (R and M2 run on, M1 and K are their
    // zombies): in a namespace of its own.
    restore_tree(&scratch.path().join("dump"), ["--pidns"], &subtree.pids());
    let (restored, mapping) = hold_pidns_tree(m1);
    let mut inner: Vec<i32> = mapping.iter().map(|(i, _)| *i).collect();
    inner.sort_unstable();
    assert_eq!(inner, subtree.pids(), "the pids in the new namespace");
    let outer: Vec<i32> = mapping.iter().map(|(_, o)| *o).collect();
    let members = subtree.pids();
    let passed = check(&mut s, &restored, &outer, &members, 0);
    let k_ppid = passed
        .iter()
        .find(|m| pid(m, "pid") == k)
        .map(|m| pid(m, "ppid"));
    assert_eq!(k_ppid, Some(m1), "K's parent in the namespace");
    restored.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
    drop(original);
}
