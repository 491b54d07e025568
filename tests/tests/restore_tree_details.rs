//! What a tree restore must not add or leave. `crrestore-tree --wait`
//! stays with the tree until its root ends, and holds nothing of it
//! meanwhile: a pipe between two restored processes
//! reaches end of file when its last writer in the tree exits (the
//! orchestrator's own copies of the shared objects are closed once every
//! process has its fds), so a pipeline ends and `--wait` returns the
//! root's status. A high fd restores under a lower soft fd limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crimg_tests::tree::{
    become_subreaper, dump_and_kill_tree, restore_tree_command, Tree, TreeGuard, TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// Start `program -c script` as a tree in a session of its own, wait for
/// its `READY` line, check its root with `before_dump`, then dump it into
/// `scratch/dump` and kill it: (root, the tree's pids, the dump directory).
fn dumped_tree(
    scratch: &Path,
    program: &str,
    script: &str,
    before_dump: impl FnOnce(i32),
) -> (i32, Vec<i32>, PathBuf) {
    let mut command = Command::new("setsid");
    command.args([program, "-c", script]);
    let mut tree = Tree::spawn_command(program, command, &scratch.join("log"))
        .unwrap_or_else(|e| panic!("{e}"));
    tree.out.expect_line("READY");
    let root = tree.pid();
    before_dump(root);
    let held = TreeGuard::hold_tree(root);
    let pids = held.pids();
    let dir = scratch.join("dump");
    dump_and_kill_tree(&binaries(), &mut tree, &held, &dir);
    (root, pids, dir)
}

#[test]
fn a_restored_pipeline_ends_and_wait_returns_the_roots_status() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let scratch = scratch_dir();
        let go = scratch.path().join("GO");
        let out_file = scratch.path().join("OUT");
        // bash forks its commands (no vfork window); the writer waits for GO,
        // says one line and exits; cat then sees end of file, and the root
        // exits 7 after it.
        let script = format!(
            "(echo READY >&2; while [ ! -e {go} ]; do read -t 0.05 < /dev/zero 2>/dev/null; done; echo hi) | cat > {out}; exit 7",
            go = go.display(),
            out = out_file.display()
        );
        let (_, pids, dir) = dumped_tree(scratch.path(), "bash", &script, drop);

        let mut restore = restore_tree_command(&dir, ["--wait"]);
        restore
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = restore.spawn().expect("crrestore-tree --wait");
        // Held once crrestore-tree has made them (they are its descendants
        // then): a pid of the dump another process took is not held.
        let restorer = i32::try_from(child.id()).unwrap();
        let made = |tree: &[i32]| pids.iter().all(|p| tree.contains(p));
        let deadline = Instant::now() + TREE_TIMEOUT;
        while !made(&crimg_tests::tree::tree_pids(restorer))
            && child.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let tree = crimg_tests::tree::tree_pids(restorer);
        let restored = made(&tree).then(|| TreeGuard::hold(&pids).ok()).flatten();
        std::fs::write(&go, b"").unwrap();
        let deadline = Instant::now() + TREE_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            drop(restored);
            panic!(
                "crrestore-tree --wait did not return: the restored pipeline never ended (OUT: {:?})",
                std::fs::read_to_string(&out_file)
            );
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        crimg_tests::tree::panic_if_pid_taken(status.code(), &err);
        assert_eq!(
            status.code(),
            Some(7),
            "crrestore-tree --wait: {status:?}\n{err}"
        );
        assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "hi\n");
    });
}

/// A tree with a high fd restored from a shell whose soft `RLIMIT_NOFILE`
/// is below it: crrestore-tree raises its soft limit to the hard one (as
/// the loader does), since it holds the shared objects above every fd of
/// the tree.
#[test]
fn a_high_fd_restores_under_a_lower_soft_fd_limit() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let scratch = scratch_dir();
        let script = "ulimit -Sn 4096; exec 1500</dev/null; (echo READY >&2; while :; do read -t 0.05 < /dev/zero 2>/dev/null; done) | cat > /dev/null";
        let (root, pids, dir) = dumped_tree(scratch.path(), "bash", script, drop);
        let binary = crimg_tests::tree::crrestore_tree_binary().unwrap();
        let mut restore = Command::new("bash");
        restore
            .arg("-c")
            .arg("ulimit -Sn 1024 && exec \"$0\" \"$1\"")
            .arg(&binary)
            .arg(&dir);
        crimg_tests::process::only_stdio(&mut restore);
        let out = crimg_tests::cli::run(restore, TREE_TIMEOUT).unwrap();
        crimg_tests::tree::panic_if_pid_taken(out.status.code(), &out.stderr);
        let restored = out
            .status
            .success()
            .then(|| TreeGuard::hold(&pids).ok())
            .flatten();
        assert!(
            out.status.success(),
            "crrestore-tree under ulimit -Sn 1024: {out:?}"
        );
        let fd = std::fs::read_link(format!("/proc/{root}/fd/1500"));
        assert!(fd.is_ok(), "the restored root has no fd 1500: {fd:?}");
        drop(restored);
    });
}

/// A manifest may not make crrestore-tree open anything as itself: an
/// object no process holds, or a "caller" object (the caller's stdio) the
/// root does not hold at that fd, is refused before anything is made.
#[test]
fn objects_without_their_holders_are_refused_before_anything_is_made() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let script = "(echo READY >&2; while :; do read -t 0.05 < /dev/zero 2>/dev/null; done) | cat > /dev/null";
    let mut command = Command::new("setsid");
    command.args(["bash", "-c", script]);
    let mut tree = Tree::spawn_command("bash", command, &scratch.path().join("log"))
        .unwrap_or_else(|e| panic!("{e}"));
    tree.out.expect_line("READY");
    let root = tree.pid();
    let held = TreeGuard::hold_tree(root);
    let dir = scratch.path().join("dump");
    binaries()
        .dump(root, &dir, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let original = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let other = held.pids().into_iter().find(|&p| p != root).unwrap();
    for (object, expect) in [
        (
            r#"{"kind": "caller", "caller_fd": 0, "holders": []}"#.to_owned(),
            "that no process holds",
        ),
        (
            format!(
                r#"{{"kind": "caller", "caller_fd": 0, "holders": [{{"pid": {other}, "fd": 0, "desc": 1}}]}}"#
            ),
            "does not hold it there",
        ),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
        let shared = m
            .as_object_mut()
            .unwrap()
            .entry("shared")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        shared
            .as_array_mut()
            .unwrap()
            .insert(0, serde_json::from_str(&object).unwrap());
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let out = crimg_tests::tree::run_restore_tree(&dir, ["--stdio", "restore"], &[]).unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains(expect), "{}", out.stderr);
    }
    held.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
}
