//! Pids of a dump that are taken (the dumped tree still runs: `crdump
//! --leave-running`): `crrestore-tree` refuses with exit code 2 (see its
//! `--help`), naming the pid and the way out; with `--pidns` the same dump
//! restores while the original runs. Then the same dump is restored again
//! and again, each time after killing the previous copy, and each copy
//! carries the pipe's bytes through whole.

use crimg_tests::tree::{
    become_subreaper, hold_pidns_tree, restore_tree, restore_tree_command, run_restore_tree, Tree,
    TreeGuard, TreeOutput, TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// `crrestore-tree`'s exit code for a pid that is taken, as its `--help`
/// lists it (the line `  N    a pid ... is taken ...`).
fn pid_taken_code() -> i32 {
    let out = crimg_tests::cli::run_ok(
        restore_tree_command(std::path::Path::new("unused"), ["--help"]),
        TREE_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out.stdout
        .lines()
        .filter(|l| l.contains("is taken"))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("--help lists no exit code for a taken pid:\n{}", out.stdout))
}
const STREAM: u64 = 60 * 1024 + 256 * 1024;

/// Start the copy's producer and consumer (pids `outer`, consumer first)
/// and expect both verdicts in `out`.
fn check_copy(out: &mut TreeOutput, held: &TreeGuard, producer: i32, consumer: i32) {
    out.mark();
    held.signal(consumer, libc::SIGUSR1);
    held.signal(producer, libc::SIGUSR1);
    let got = out.expect_pass("consumer");
    assert_eq!(got.number("bytes").unwrap(), STREAM, "{}", got.line());
    out.expect_pass("producer");
}

#[test]
fn taken_pids_are_named_pidns_restores_and_a_dump_restores_again_and_again() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let mut tree = Tree::start_workload(
            "tree_pipe",
            ["--buffered", "61440", "--after", "262144"],
            &scratch.path().join("out"),
        );
        let producer = tree.pid();
        let consumer: i32 = tree.out.expect_lines("READY producer", 1)[0]
            .number("consumer")
            .unwrap()
            .try_into()
            .unwrap();
        tree.out.expect_lines("READY consumer", 1);
        let original = TreeGuard::hold_tree(producer);
        let dump = bins
            .dump(producer, &scratch.path().join("dump"), true)
            .unwrap_or_else(|e| panic!("{e}"));

        // The original runs on: its pids are taken.
        let out = run_restore_tree(&dump.dir, [] as [&str; 0], &[]).unwrap();
        assert_eq!(out.status.code(), Some(pid_taken_code()), "{out:?}");
        let named = [producer, consumer]
            .iter()
            .any(|p| out.stderr.contains(&format!("pid {p} is taken")));
        assert!(named && out.stderr.contains("--pidns"), "{}", out.stderr);
        assert_eq!(
            original.present(),
            original.pids(),
            "the refusal touched the original"
        );

        // In a pid namespace of its own the same dump restores beside it.
        restore_tree(&dump.dir, ["--pidns"], &original.pids());
        let (in_ns, mapping) = hold_pidns_tree(producer);
        let outer_of = |inner: i32| {
            mapping
                .iter()
                .find(|(i, _)| *i == inner)
                .unwrap_or_else(|| panic!("no pid {inner} in the namespace: {mapping:?}"))
                .1
        };
        // Only the copy may answer: the original goes first.
        original.kill();
        tree.wait_exit(TREE_TIMEOUT).unwrap();
        original
            .wait_gone(TREE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        check_copy(
            &mut tree.out,
            &in_ns,
            outer_of(producer),
            outer_of(consumer),
        );
        in_ns.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));

        // Twice more with the original pids, each after the previous is gone.
        for round in 1..=2 {
            restore_tree(&dump.dir, [] as [&str; 0], &original.pids());
            let copy = TreeGuard::hold_tree(producer);
            assert_eq!(copy.pids(), original.pids(), "restore {round}");
            check_copy(&mut tree.out, &copy, producer, consumer);
            copy.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
        }
    });
}
