//! A shell pipeline restored as a tree: `sh -c 'i=0; while :; do ...; echo
//! $i; sleep 0.02; done | cat > LOG'` dumped by the pid of that `sh` (the
//! shell, its subshell running the loop and `cat`, with the pipe between
//! them and whatever sits in it). Its LOG goes on with no number lost or
//! repeated, and `ps -o pid,ppid,pgid,sid,comm` of the tree (its lasting
//! processes: see `listing`) is what it was, the parent of the root (the
//! test) included.

use std::path::Path;

use crimg_tests::programs::wait_until;
use crimg_tests::tree::{
    become_subreaper, children_of, dump_and_kill_tree, restore_tree, Tree, TreeGuard, TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// The complete lines of LOG, as numbers; panics on anything else.
fn numbers(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("LOG has a line `{l}` that is not a number:\n{text}"))
        })
        .collect()
}

/// Panics unless `numbers` is 1, 2, 3, ... with nothing lost or repeated.
fn assert_counts_up(numbers: &[u64]) {
    for (at, n) in numbers.iter().enumerate() {
        let want = at as u64 + 1;
        assert_eq!(
            *n,
            want,
            "LOG line {} is {n}, not {want} (lost or repeated); around it: {:?}",
            at + 1,
            &numbers[at.saturating_sub(3)..(at + 3).min(numbers.len())]
        );
    }
}

/// The `ps` listing of the tree's lasting processes: the shell and its two
/// children (the loop's subshell and cat). The subshell's own children are
/// not state of the tree: it starts a `sleep` every 20 ms (which is, for a
/// moment, a copy of the subshell that has not exec'd yet), and which one
/// runs at a given instant is chance; one caught by the dump is restored
/// like the rest.
fn listing(root: i32) -> String {
    let mut pids = vec![root];
    pids.extend(children_of(root));
    pids.sort_unstable();
    crimg_tests::tree::ps_listing(&pids)
}

#[test]
fn a_shell_pipeline_logs_on_with_no_number_lost_or_repeated() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let log = scratch.path().join("LOG");
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done | cat > '{}'",
            log.display()
        );
        let mut tree = Tree::spawn(
            Path::new("sh"),
            ["-c", &script],
            &scratch.path().join("out"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let root = tree.pid();
        wait_until("the pipeline logs 10 numbers", TREE_TIMEOUT, || {
            let n = numbers(&log).len();
            if n >= 10 {
                Ok(())
            } else {
                Err(format!("{n} lines"))
            }
        });
        // sh, the loop's subshell and cat (and maybe a sleep).
        let held = TreeGuard::hold_tree(root);
        let before = listing(root);
        assert_eq!(
            before.lines().count(),
            4,
            "a header and 3 processes: {before}"
        );
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));
        let at_dump = numbers(&log).len();

        restore_tree(&dump.dir, [] as [&str; 0], &held.pids());
        let restored = TreeGuard::hold_tree(root);
        assert_eq!(
            listing(root),
            before,
            "the tree's listing after the restore (left) and before the dump (right)"
        );
        wait_until(
            "the restored pipeline logs 25 more numbers",
            TREE_TIMEOUT,
            || {
                let n = numbers(&log).len();
                if n >= at_dump + 25 {
                    Ok(())
                } else {
                    Err(format!("{n} lines, {at_dump} at the dump"))
                }
            },
        );
        restored.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
        let all = numbers(&log);
        assert!(all.len() >= at_dump + 25);
        assert_counts_up(&all);
    });
}
