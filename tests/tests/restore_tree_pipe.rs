//! A producer and its consumer child with ~60 KiB sitting in the pipe
//! between them at dump time: restored as a tree, every byte of the stream
//! arrives once and in order (the consumer checks each byte against its
//! position and checksums the whole stream). The same check without a dump
//! first shows the workload itself is sound.

use std::path::Path;

use crimg_tests::tree::{become_subreaper, dump_and_kill_tree, restore_tree, Tree, TreeGuard};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

const BUFFERED: u64 = 60 * 1024;
const AFTER: u64 = 1024 * 1024;

/// The workload, ready, with BUFFERED bytes in its pipe: the tree and the
/// consumer's pid.
fn start(dir: &Path) -> (Tree, i32) {
    let (buffered, after) = (BUFFERED.to_string(), AFTER.to_string());
    let tree = Tree::start_workload(
        "tree_pipe",
        ["--buffered", &buffered, "--after", &after],
        &dir.join("out"),
    );
    tree.out.expect_lines("READY consumer", 1);
    let producer = tree.out.expect_lines("READY producer", 1).remove(0);
    let consumer: i32 = producer.number("consumer").unwrap().try_into().unwrap();
    let queued = producer.number("queued").unwrap();
    assert_eq!(queued, BUFFERED, "{}", producer.line());
    (tree, consumer)
}

/// Let both go on; every byte must arrive once, in order.
fn check(tree: &mut Tree, held: &TreeGuard, consumer: i32) {
    tree.out.mark();
    held.signal(consumer, libc::SIGUSR1);
    held.signal(tree.pid(), libc::SIGUSR1);
    let got = tree.out.expect_pass("consumer");
    let bytes = got.number("bytes").unwrap();
    assert_eq!(bytes, BUFFERED + AFTER, "{}", got.line());
    tree.out.expect_pass("producer");
}

#[test]
fn without_a_dump_the_consumer_gets_every_byte() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (mut tree, consumer) = start(scratch.path());
    let held = TreeGuard::hold_tree(tree.pid());
    check(&mut tree, &held, consumer);
}

#[test]
fn the_bytes_in_a_pipe_between_two_processes_arrive_once_in_order() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let (mut tree, consumer) = start(scratch.path());
        let held = TreeGuard::hold_tree(tree.pid());
        let mut both = vec![tree.pid(), consumer];
        both.sort_unstable();
        assert_eq!(held.pids(), both);
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));

        restore_tree(&dump.dir, [] as [&str; 0], &held.pids());
        let restored = TreeGuard::hold_tree(tree.pid());
        assert_eq!(restored.pids(), held.pids());
        check(&mut tree, &restored, consumer);
    });
}
