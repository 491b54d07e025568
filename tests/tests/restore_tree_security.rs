//! `crrestore-tree` run by root grants a dump nothing its files' owner did
//! not have (ARCHITECTURE.md, "Nobody gains"):
//! - an unprivileged user's tree holding a file that is root's alone by
//!   restore time is refused, as the direct run of its image refuses it
//!   (the shared objects are made as the task, not as root);
//! - a dump directory whose image is a symbolic link to (or a hard link
//!   of) another user's image is refused, not restored as that image;
//! - an unprivileged dump restored with its pids outside a pid namespace of
//!   its own is refused (`--pidns` restores it);
//! - the caller's terminal, controlling terminal of another session, is not
//!   taken from it for an unprivileged dump (the tree runs without one, and
//!   crrestore-tree says so), and `--stdio restore` opens the terminal as
//!   the task.
//!
//! The unprivileged tree is a shell of uid [`UID`] with a child, both
//! holding fd 3 on a file; its dump (made by root) is then given to that
//! user (`chown`), as a dump the user made or wrote would be.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{chown, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crimg_tests::process::ChildGuard;
use crimg_tests::tree::{
    become_subreaper, dump_and_kill_tree, dump_tree, hold_pidns_tree, kill_left_behind,
    restore_tree, restore_tree_command, run_restore_tree, stat_fields, tree_pids, Tree, TreeGuard,
    TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// The unprivileged user (no `/etc/passwd` entry needed).
const UID: u32 = 12345;

/// The little unsafe this test needs: privileges dropped and a terminal
/// taken in the child before it execs, and a pseudo-terminal pair.
mod sys {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// The child becomes uid and gid `uid` with no supplementary groups
    /// (and, with `session_tty`, first the leader of a new session whose
    /// controlling terminal is its fd 0).
    pub fn as_user(command: &mut Command, uid: u32, session_tty: bool) {
        // SAFETY: the closure runs between fork and exec and calls only
        // async-signal-safe system calls, no allocation.
        unsafe {
            command.pre_exec(move || {
                if session_tty
                    && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0 as libc::c_int) < 0)
                {
                    return Err(io::Error::last_os_error());
                }
                if uid != 0
                    && (libc::setgroups(0, std::ptr::null()) < 0
                        || libc::setresgid(uid, uid, uid) < 0
                        || libc::setresuid(uid, uid, uid) < 0)
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// A new pseudo-terminal: (master, slave path).
    pub fn pty() -> (OwnedFd, String) {
        // SAFETY: plain calls on the fd we just opened; ptsname_r writes
        // at most `buf.len()` bytes into our buffer.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
            let master = OwnedFd::from_raw_fd(m);
            assert_eq!(libc::grantpt(m), 0, "grantpt");
            assert_eq!(libc::unlockpt(m), 0, "unlockpt");
            let mut buf = [0 as libc::c_char; 64];
            assert_eq!(
                libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()),
                0,
                "ptsname_r"
            );
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            (master, name)
        }
    }
}

/// A directory uid [`UID`] may enter.
fn open_to_all(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Give `dir` and everything in it to uid [`UID`].
fn give_to_user(dir: &Path) {
    chown(dir, Some(UID), Some(UID)).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        chown(e.unwrap().path(), Some(UID), Some(UID)).unwrap();
    }
}

/// The unprivileged tree: `sh` (the root, in a session of its own) and its
/// child `sleep`, both holding fd 3 on `secret` (readable by uid [`UID`]
/// when it starts), their output in `out` (the user's).
fn start_user_tree(dir: &Path, secret: &Path) -> Tree {
    open_to_all(dir);
    std::fs::write(secret, "the user's, for now\n").unwrap();
    chown(secret, Some(UID), Some(UID)).unwrap();
    let out = dir.join("out");
    // The tree's output file exists before it starts: the user's.
    let mut command = Command::new("setsid");
    command
        .args([
            "sh",
            "-c",
            "exec 3<\"$1\"; sleep 1000 & echo READY child=$!; wait",
        ])
        .arg("sh")
        .arg(secret)
        .current_dir(dir);
    sys::as_user(&mut command, UID, false);
    let tree = Tree::spawn_command("sh", command, &out).unwrap_or_else(|e| panic!("{e}"));
    chown(&out, Some(UID), Some(UID)).unwrap();
    tree.out.expect_lines("READY child", 1);
    tree
}

/// Dump the unprivileged tree (root dumps it, then gives the dump to the
/// user); the dump's directory and the tree's pids.
fn dump_user_tree(dir: &Path) -> (std::path::PathBuf, Vec<i32>) {
    let bins = binaries();
    let mut tree = start_user_tree(dir, &dir.join("secret"));
    let held = TreeGuard::hold_tree(tree.pid());
    let pids = held.pids();
    assert_eq!(pids.len(), 2, "sh and sleep: {pids:?}");
    let dump = dump_and_kill_tree(&bins, &mut tree, &held, &dir.join("dump"));
    give_to_user(&dump.dir);
    (dump.dir, pids)
}

#[test]
fn an_unprivileged_tree_gets_no_file_only_root_may_open() {
    skip_unless_root!();
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    let (dump, pids) = dump_user_tree(scratch.path());
    // Root's alone now.
    let secret = scratch.path().join("secret");
    chown(&secret, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The direct run of the root's image refuses it (the loader opens as
    // the task): the tree restore must refuse it the same way.
    let image = dump.join(format!("task-{}.crimg", pids[0]));
    let direct = crimg_tests::cli::run(bins.loader_command(&image), TREE_TIMEOUT).unwrap();
    kill_left_behind(&pids);
    assert!(
        !direct.status.success() && direct.stderr.contains("errno 13"),
        "the direct run: {direct:?}"
    );
    let out = run_restore_tree(&dump, ["--pidns"], &pids).unwrap();
    if out.status.success() {
        drop(hold_pidns_tree(pids[0]));
    }
    assert!(
        !out.status.success(),
        "crrestore-tree restored uid {UID}'s tree holding a root-only file:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("fd 3") && out.stderr.contains("errno 13"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_unprivileged_dump_chooses_pids_only_in_a_namespace_of_its_own() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (dump, pids) = dump_user_tree(scratch.path());
    let out = run_restore_tree(&dump, [] as [&str; 0], &pids).unwrap();
    if out.status.success() {
        drop(TreeGuard::hold_tree(pids[0]));
    }
    assert!(
        !out.status.success(),
        "uid {UID}'s dump was restored with its pids in the initial pid namespace:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--pidns") && out.stderr.contains(&format!("uid {UID}")),
        "{}",
        out.stderr
    );
    // In a namespace of its own, the same dump restores (its file is
    // still the user's): the refusals above are not a broken restore.
    restore_tree(&dump, ["--pidns"], &pids);
    let (held, mapping) = hold_pidns_tree(pids[0]);
    let mut inner: Vec<i32> = mapping.iter().map(|(i, _)| *i).collect();
    inner.sort_unstable();
    assert_eq!(inner, pids);
    drop(held);
}

/// A manifest of zombies alone has no image, yet is its writer's dump: it
/// may not choose pids outside a pid namespace of its own either (nor
/// take root's terminal for a zombie session leader).
#[test]
fn a_manifest_of_zombies_only_is_its_writers_dump_too() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let dump = scratch.path().join("zombies");
    std::fs::create_dir(&dump).unwrap();
    // A pid no process has now (nor as its group or session).
    let pid = (400_000..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let manifest = format!(
        r#"{{"format":"crimg-manifest","version":2,"root":{pid},"processes":[{{"pid":{pid},"ppid":1,"pgid":{pid},"sid":{pid},"image":null,"threads":[],"tty_nr":34816,"tpgid":{pid},"zombie":{{"exited":7}}}}]}}"#
    );
    std::fs::write(dump.join("manifest.json"), manifest).unwrap();
    give_to_user(&dump);
    let out = run_restore_tree(&dump, [] as [&str; 0], &[pid]).unwrap();
    assert!(
        !out.status.success() && out.stderr.contains("--pidns"),
        "uid {UID}'s manifest of zombies chose pid {pid} in the initial pid namespace: {:?}\n{}",
        out.status,
        out.stderr
    );
}

#[test]
fn a_dump_directory_cannot_borrow_another_users_image() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        open_to_all(scratch.path());
        // Root's own tree, dumped by root: its image is root's.
        let mut tree =
            Tree::start_workload("tree_pipe", [] as [&str; 0], &scratch.path().join("out"));
        tree.out.expect_lines("READY producer", 1);
        tree.out.expect_lines("READY consumer", 1);
        let held = TreeGuard::hold_tree(tree.pid());
        let pids = held.pids();
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));
        let names: Vec<String> = std::fs::read_dir(&dump.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".crimg"))
            .collect();
        assert!(!names.is_empty());

        for how in ["symlink", "hardlink"] {
            // The attacker's directory: its own manifest, the images linked.
            let theirs = scratch.path().join(how);
            std::fs::create_dir(&theirs).unwrap();
            std::fs::copy(dump.dir.join("manifest.json"), theirs.join("manifest.json")).unwrap();
            for n in &names {
                if how == "symlink" {
                    std::os::unix::fs::symlink(dump.dir.join(n), theirs.join(n)).unwrap();
                } else {
                    std::fs::hard_link(dump.dir.join(n), theirs.join(n)).unwrap();
                }
            }
            chown(&theirs, Some(UID), Some(UID)).unwrap();
            std::os::unix::fs::lchown(theirs.join("manifest.json"), Some(UID), Some(UID)).unwrap();
            if how == "symlink" {
                // The links are the user's (a hard link is root's image
                // itself, its owner the inode's).
                for n in &names {
                    std::os::unix::fs::lchown(theirs.join(n), Some(UID), Some(UID)).unwrap();
                }
            }
            let out = run_restore_tree(&theirs, ["--pidns"], &pids).unwrap();
            if out.status.success() {
                drop(hold_pidns_tree(pids[0]));
            }
            assert!(
                !out.status.success(),
                "{how}: root's images restored from uid {UID}'s directory:\n{}",
                out.stderr
            );
            let why = if how == "symlink" {
                "symbolic link"
            } else {
                "belongs to uid 0, the manifest to uid 12345"
            };
            assert!(out.stderr.contains(why), "{how}: {}", out.stderr);
        }
        // A FIFO in place of an image: refused at once, not waited on.
        let fifo_dir = scratch.path().join("fifo");
        std::fs::create_dir(&fifo_dir).unwrap();
        std::fs::copy(
            dump.dir.join("manifest.json"),
            fifo_dir.join("manifest.json"),
        )
        .unwrap();
        for n in &names {
            let made = Command::new("mkfifo")
                .arg(fifo_dir.join(n))
                .status()
                .unwrap();
            assert!(made.success());
        }
        let started = std::time::Instant::now();
        let out = run_restore_tree(&fifo_dir, [] as [&str; 0], &pids).unwrap();
        assert!(!out.status.success(), "{}", out.stderr);
        assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
        assert!(started.elapsed() < Duration::from_secs(10));
        // Its own directory restores (as root, root's dump).
        restore_tree(&dump.dir, [] as [&str; 0], &pids);
        let restored = TreeGuard::hold_tree(pids[0]);
        assert_eq!(restored.pids(), pids);
    });
}

/// The `tty_nr` of `pid` (`stat` field 7), 0 for none.
fn tty_nr(pid: i32) -> u64 {
    stat_fields(pid)
        .and_then(|f| f.get(4)?.parse().ok())
        .unwrap_or(0)
}

/// A root session whose controlling terminal is `slave` (a root shell on
/// its terminal, as it were): held until dropped.
fn session_on(slave: &str) -> ChildGuard {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open(slave)
        .unwrap();
    let mut command = Command::new("sleep");
    command
        .arg("1000")
        .stdin(Stdio::from(tty.try_clone().unwrap()))
        .stdout(Stdio::from(tty.try_clone().unwrap()))
        .stderr(Stdio::from(tty));
    sys::as_user(&mut command, 0, true);
    crimg_tests::process::only_stdio(&mut command);
    ChildGuard::new("sleep", command.spawn().unwrap())
}

/// The unprivileged tree on its own terminal `slave` (its controlling
/// terminal, its stdio), dumped and given to the user: (dump, pids).
fn dump_user_tree_on_tty(dir: &Path, slave: &str) -> (std::path::PathBuf, Vec<i32>) {
    let bins = binaries();
    open_to_all(dir);
    chown(slave, Some(UID), None).unwrap();
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open(slave)
        .unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "sleep 1000 & wait"])
        .current_dir(dir)
        .stdin(Stdio::from(tty.try_clone().unwrap()))
        .stdout(Stdio::from(tty.try_clone().unwrap()))
        .stderr(Stdio::from(tty));
    sys::as_user(&mut command, UID, true);
    crimg_tests::process::only_stdio(&mut command);
    let child = command.spawn().unwrap();
    let root = child.id() as i32;
    std::mem::forget(child);
    let deadline = std::time::Instant::now() + TREE_TIMEOUT;
    while tree_pids(root).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "sh never forked");
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = TreeGuard::hold_tree(root);
    let pids = held.pids();
    let out = dir.join("dump");
    dump_tree(&bins, root, &out, false).unwrap_or_else(|e| panic!("crdump: {e}"));
    held.wait_gone(TREE_TIMEOUT).unwrap();
    drop(held);
    give_to_user(&out);
    (out, pids)
}

/// `crrestore-tree DIR args` with stdin on `tty` and its messages in
/// `log`: its exit status.
fn restore_on(dir: &Path, args: &[&str], tty: &str, log: &Path) -> std::process::ExitStatus {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(tty)
        .unwrap();
    let log = File::create(log).unwrap();
    let mut command = restore_tree_command(dir, args);
    command
        .stdin(Stdio::from(tty))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    let mut guard = ChildGuard::new("crrestore-tree", command.spawn().unwrap());
    guard.wait_exit(TREE_TIMEOUT).unwrap()
}

#[test]
fn the_callers_terminal_is_not_taken_for_an_unprivileged_tree() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (_tree_master, tree_slave): (OwnedFd, String) = sys::pty();
    let (dump, pids) = dump_user_tree_on_tty(scratch.path(), &tree_slave);

    // Root's terminal, the controlling terminal of root's session.
    let (_master, slave) = sys::pty();
    let victim = session_on(&slave);
    let deadline = std::time::Instant::now() + TREE_TIMEOUT;
    while tty_nr(victim.pid()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no terminal for the session"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = tty_nr(victim.pid());
    let log = scratch.path().join("log");
    let status = restore_on(&dump, &["--pidns"], &slave, &log);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{said}");
    let (held, mapping) = hold_pidns_tree(pids[0]);
    let after = tty_nr(victim.pid());
    let root_tty = mapping
        .iter()
        .find(|(inner, _)| *inner == pids[0])
        .map(|&(_, outer)| tty_nr(outer));
    drop(held);
    assert_eq!(
        after, before,
        "root's session lost its terminal to uid {UID}'s tree (now {root_tty:?}): {said}"
    );
    assert_eq!(root_tty, Some(0), "{said}");
    assert!(said.contains("without a controlling terminal"), "{said}");
    drop(victim);
}

#[test]
fn stdio_restore_opens_the_terminal_as_the_task() {
    skip_unless_root!();
    become_subreaper();
    let scratch = scratch_dir();
    let (_master, slave) = sys::pty();
    let (dump, pids) = dump_user_tree_on_tty(scratch.path(), &slave);
    // The user's terminal is root's alone now.
    chown(&slave, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&slave, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = scratch.path().join("log");
    let status = restore_on(&dump, &["--pidns", "--stdio", "restore"], "/dev/null", &log);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    if status.success() {
        drop(hold_pidns_tree(pids[0]));
    }
    assert!(
        !status.success(),
        "uid {UID}'s tree got a terminal only root may open: {said}"
    );
    assert!(said.contains(&slave) && said.contains("denied"), "{said}");
    // Not used after: the fd keeps the pty alive until here.
    let _ = _master.as_raw_fd();
}

#[test]
fn holders_of_one_file_restored_as_different_users_are_refused() {
    skip_unless_root!();
    become_subreaper();
    let bins = binaries();
    let scratch = scratch_dir();
    open_to_all(scratch.path());
    let shared = scratch.path().join("shared");
    std::fs::write(&shared, "both hold it\n").unwrap();
    // Root's shell and its child run as uid UID, one description of
    // `shared` in both: made once, it cannot be opened as both.
    let out = scratch.path().join("out");
    let mut command = Command::new("setsid");
    command
        .args([
            "sh",
            "-c",
            "exec 3<\"$1\"; setpriv --reuid=12345 --regid=12345 --clear-groups sleep 1000 & echo READY child=$!; wait",
        ])
        .arg("sh")
        .arg(&shared)
        .current_dir(scratch.path());
    let mut tree = Tree::spawn_command("sh", command, &out).unwrap_or_else(|e| panic!("{e}"));
    chown(&out, Some(UID), Some(UID)).unwrap();
    let child: i32 = tree.out.expect_lines("READY child", 1)[0]
        .number("child")
        .unwrap()
        .try_into()
        .unwrap();
    // The child has become the user.
    let deadline = std::time::Instant::now() + TREE_TIMEOUT;
    while !std::fs::read_to_string(format!("/proc/{child}/status"))
        .unwrap_or_default()
        .contains(&format!("Uid:\t{UID}\t"))
    {
        assert!(std::time::Instant::now() < deadline, "setpriv did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = TreeGuard::hold_tree(tree.pid());
    let pids = held.pids();
    let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));
    let out = run_restore_tree(&dump.dir, [] as [&str; 0], &pids).unwrap();
    if out.status.success() {
        drop(TreeGuard::hold_tree(pids[0]));
    }
    assert!(
        !out.status.success(),
        "one description restored for uid 0 and uid {UID}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("different users")
            && out.stderr.contains(&format!("pid {}", pids[0]))
            && out.stderr.contains(&format!("pid {child}")),
        "{}",
        out.stderr
    );
}
