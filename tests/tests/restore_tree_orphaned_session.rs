//! A tree whose session's leader has exited while the session lives on
//! outside the tree, in a process group that an outside process leads: the
//! shape CI runs the tests in (`setsid` a shell that starts `timeout` in the
//! background and exits; `timeout` makes a group of its own). Neither the
//! session nor the group can be made again at its id (the kernel keeps a
//! pid number while a process has it as its group or session id), so a
//! restore from inside them puts the tree back in them, as it was.
//!
//! The same in a session without an id: the one the machine's init started
//! in, which a process that never called `setsid()` is in (CI runs there:
//! `/proc/PID/stat` gives its session as 0), or any session seen from a
//! pid namespace its leader is not in, which is how the test makes one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crimg_tests::process::{only_stdio, ChildGuard, PidGuard};
use crimg_tests::programs::wait_until;
use crimg_tests::tree::{crrestore_tree_binary, stat_fields, TreeGuard};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Session and process group of `pid` (`stat` fields 6 and 5).
fn session_and_group(pid: i32) -> Option<(i32, i32)> {
    let f = stat_fields(pid)?;
    Some((f.get(3)?.parse().ok()?, f.get(2)?.parse().ok()?))
}

fn read_pids(path: &Path) -> Result<Vec<i32>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if !text.ends_with('\n') {
        return Err(format!("{text:?} is not complete"));
    }
    text.split_whitespace()
        .map(|w| w.parse().map_err(|e| format!("{w:?}: {e}")))
        .collect()
}

#[test]
fn a_tree_in_a_session_whose_leader_is_gone_comes_back_in_its_session_and_group() {
    skip_unless_root!();
    let restorer = crrestore_tree_binary().unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let dir = scratch.path();
    let go = dir.join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // In `timeout`'s group: start the tree (a shell with two sleeps),
    // say the pids, wait for the test to dump it, reap its root, restore
    // it from there, and say crrestore-tree's exit status.
    let script = r#"
        sh -c 'sleep 1000 & sleep 1001 & wait' &
        root=$!
        echo "$PPID $$ $root" > "$DIR/pids.tmp" && mv "$DIR/pids.tmp" "$DIR/pids"
        read line < "$DIR/go"
        wait "$root"
        "$RESTORER" "$DIR/out" > "$DIR/restore.out" 2>&1
        echo $? > "$DIR/status.tmp" && mv "$DIR/status.tmp" "$DIR/status"
    "#;
    let mut command = Command::new("setsid");
    // The outer sh leads the new session and exits at once: `timeout`
    // runs on in a session whose leader is gone.
    command
        .args([
            "sh",
            "-c",
            "timeout 120 sh -c \"$SCRIPT\" < /dev/null > /dev/null 2>&1 &",
        ])
        .env("SCRIPT", script)
        .env("DIR", dir)
        .env("RESTORER", &restorer)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    assert!(command.status().unwrap().success());
    let pids = wait_until("the script's pids", TIMEOUT, || {
        read_pids(&dir.join("pids"))
    });
    let (timeout_pid, script, root) = (pids[0], pids[1], pids[2]);
    // Whatever happens, the script goes (a test that fails before it
    // says go would leave it blocked on the FIFO), and timeout with it.
    let _script = [script, timeout_pid].map(|p| PidGuard::new(p).unwrap());
    let (sid, pgid) = session_and_group(root).unwrap();
    assert_eq!(pgid, timeout_pid, "the tree is in timeout's group");
    assert_ne!(sid, pgid);
    assert!(
        stat_fields(sid).is_none(),
        "the session's leader {sid} has exited"
    );
    let sleeps = wait_until("the sleeps", TIMEOUT, || {
        let c = crimg_tests::tree::children_of(root);
        if c.len() == 2 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    });
    let _originals: Vec<PidGuard> = sleeps
        .iter()
        .chain([&root])
        .map(|&p| PidGuard::new(p).unwrap())
        .collect();
    binaries().dump(root, &dir.join("out"), false).unwrap();
    std::fs::write(&go, "go\n").unwrap();
    let status = wait_until("crrestore-tree's status", TIMEOUT, || {
        read_pids(&dir.join("status"))
    });
    let said = std::fs::read_to_string(dir.join("restore.out")).unwrap_or_default();
    let mut dumped = sleeps.clone();
    dumped.push(root);
    dumped.sort_unstable();
    if dumped
        .iter()
        .any(|p| said.contains(&format!("pid {p} is taken")))
    {
        // Another process of this machine took one of the dump's own
        // pids between the kill and the restore: not what this test is
        // about (the session's and the group's ids are never skipped).
        eprintln!("skipped: {said}");
        return;
    }
    assert_eq!(status, [0], "crrestore-tree said: {said}");
    let copy = TreeGuard::hold_tree(root);
    let mut restored = copy.pids();
    restored.sort_unstable();
    assert_eq!(restored, dumped);
    for &p in &dumped {
        assert_eq!(
            session_and_group(p),
            Some((sid, pgid)),
            "pid {p}: its session and group"
        );
    }
    copy.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));
}

/// The pid, parent, process group and session of each process of the
/// tree, one line each, as `ps` would give them (`stat` fields 1, 4, 5, 6).
const SAY_TREE: &str = r#"say_tree() {
    for p in $1 $(cat /proc/$1/task/$1/children); do
        cut -d')' -f2 /proc/$p/stat | { read -r _ ppid pgid sid _; echo "$p $ppid $pgid $sid"; }
    done
}"#;

#[test]
fn a_tree_in_a_session_without_an_id_comes_back_in_it_and_in_its_group() {
    skip_unless_root!();
    let restorer = crrestore_tree_binary().unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let dir = scratch.path();
    // In a pid namespace of its own, where the test's session has no id:
    // `timeout` leads a group; in it, a tree (a shell with two sleeps) is
    // dumped, reaped and restored by crdump and crrestore-tree of the
    // namespace, which says the tree before and after. Nothing else
    // takes pids in there, so the restore at the dump's pids never meets
    // a taken one.
    let script = format!(
        r#"{SAY_TREE}
        trap 'echo > "$DIR/done"' EXIT
        sh -c 'sleep 1000 & sleep 1001 & wait' &
        root=$!
        until [ "$(wc -w < /proc/$root/task/$root/children)" = 2 ]; do :; done
        say_tree $root > "$DIR/before"
        "$CRDUMP" --pid $root -o "$DIR/out" > "$DIR/dump.out" 2>&1 || exit 1
        wait $root
        "$RESTORER" -v "$DIR/out" > "$DIR/restore.out" 2>&1
        echo $? > "$DIR/status"
        [ -d /proc/$root ] && say_tree $root > "$DIR/after.tmp" && mv "$DIR/after.tmp" "$DIR/after"
    "#
    );
    let mut command = Command::new("unshare");
    // --kill-child: when the test's guard kills unshare, the namespace's
    // init dies, and every process of the namespace with it.
    command
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            "timeout 120 sh -c \"$SCRIPT\" < /dev/null > /dev/null 2>&1; exec sleep 200",
        ])
        .env("SCRIPT", script)
        .env("DIR", dir)
        .env("CRDUMP", &binaries().crdump)
        .env("RESTORER", &restorer)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    let mut namespace = ChildGuard::new("unshare", command.spawn().unwrap());
    wait_until("the script to finish", TIMEOUT, || {
        if dir.join("done").exists() {
            Ok(())
        } else if let Some(status) = namespace.try_status() {
            panic!("unshare exited ({status}) before the script finished");
        } else {
            Err(format!(
                "crdump said {:?}",
                std::fs::read_to_string(dir.join("dump.out")).unwrap_or_default()
            ))
        }
    });
    let said = std::fs::read_to_string(dir.join("restore.out")).unwrap_or_default();
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_else(|e| {
        let dumped = std::fs::read_to_string(dir.join("dump.out")).unwrap_or_default();
        panic!("no status of crrestore-tree ({e}): crdump said {dumped:?}")
    });
    assert_eq!(status.trim(), "0", "crrestore-tree said: {said}");
    let table = |name: &str| -> Vec<Vec<i32>> {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; crrestore-tree said: {said}"));
        text.lines()
            .map(|l| l.split(' ').map(|w| w.parse().unwrap()).collect())
            .collect()
    };
    let mut before = table("before");
    assert_eq!(before.len(), 3, "{before:?}");
    // [pid, ppid, pgid, sid]: in timeout's group, in a session not seen.
    let group = before[0][2];
    assert!(
        group > 0 && before.iter().all(|p| p[0] != group),
        "{before:?}"
    );
    for p in &before {
        assert_eq!(p[2..], [group, 0], "{before:?}");
    }
    // The restored tree is as the dumped one was, but for the root's
    // parent (crrestore-tree started it, not the script).
    let mut after = table("after");
    for t in [&mut before, &mut after] {
        t[0][1] = 0;
        t.sort_unstable();
    }
    assert_eq!(after, before, "{said}");
    assert!(
        said.contains("its session has no id in the dump's pid namespace"),
        "{said}"
    );
}
