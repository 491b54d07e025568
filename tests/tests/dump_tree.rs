//! The dump side of a tree: `crdump --pid P` dumps P and every descendant,
//! and the manifest says what the tree was. A shell pipeline lists its
//! processes, groups and session, and its pipe once with both ends; a
//! pipe with 60 KiB in it is kept in its reader's image; zombies are
//! recorded with their status; a tree with something refused is left
//! running, untouched, and nothing is written.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crimg_tests::cli::run;
use crimg_tests::process::{only_stdio, PidGuard};
use crimg_tests::tree::{children_of as children, tracer_of};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, ChildGuard, Workload};
use image_format::records::{fd_flags, FdRecord, PipeRecord};
use image_format::Image;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Poll `ok` every few milliseconds for at most [`TIMEOUT`].
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn process(m: &Value, pid: i32) -> &Value {
    m["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in the manifest: {m:#}"))
}

/// Fd `fd`'s record in the image of `pid` in `dir`, and the image's pipes.
fn fd_in_image(dir: &Path, pid: i32, fd: i32) -> (FdRecord, Vec<(PipeRecord, Vec<u8>)>) {
    let bytes = std::fs::read(dir.join(format!("task-{pid}.crimg"))).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let record = img
        .fds()
        .unwrap()
        .find(|f| f.fd == fd)
        .unwrap_or_else(|| panic!("pid {pid} has no fd {fd} in its image"));
    let pipes = img
        .records::<PipeRecord>()
        .unwrap()
        .map(|p| (p, img.string(p.data).unwrap().to_vec()))
        .collect();
    (record, pipes)
}

fn python(script: &str) -> Workload {
    let mut command = Command::new("python3");
    command.args(["-u", "-c", script]);
    let mut w = Workload::spawn_command("python3", command).unwrap_or_else(|e| panic!("{e}"));
    w.expect_line("ready");
    w
}

/// The numbers on `w`'s last line (`ready 12 3 ...`), after its first word.
fn ready_numbers(w: &mut Workload) -> Vec<i32> {
    let line = w.stdout_lines().last().unwrap().clone();
    line.split(' ')
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect()
}

#[test]
fn a_shell_pipeline_is_one_tree_with_its_pipe_shared_between_two_processes() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let log = scratch.path().join("LOG");
    // setsid(1) execs sh in a session of its own (the test is no group
    // leader, so it does not fork): sh's pid is the child's.
    let mut command = Command::new("setsid");
    command
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done | cat > {}",
            log.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    let sh = ChildGuard::new("sh", command.spawn().unwrap());
    let root = sh.pid();
    wait_until("the pipeline", || {
        children(root).len() == 2 && std::fs::read(&log).is_ok_and(|l| l.len() > 4)
    });
    let kids: Vec<PidGuard> = children(root)
        .into_iter()
        .map(|p| PidGuard::new(p).unwrap())
        .collect();
    let comm = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let cat = kids
        .iter()
        .map(PidGuard::pid)
        .find(|&p| comm(p) == "cat")
        .unwrap();
    let subshell = kids.iter().map(PidGuard::pid).find(|&p| p != cat).unwrap();

    let out = scratch.path().join("out");
    let dumped = binaries().dump(root, &out, false).unwrap();
    // Killed, all of them, once the dump was written.
    for k in &kids {
        k.wait_gone(TIMEOUT).unwrap();
    }
    let tree_line = dumped
        .output
        .stdout
        .lines()
        .find(|l| l.starts_with("crdump: dumped "))
        .unwrap_or_else(|| panic!("no tree line: {}", dumped.output.stdout))
        .to_owned();
    assert!(tree_line.contains("processes"), "{tree_line}");

    let m = manifest(&out);
    assert_eq!(m["version"], 2);
    assert_eq!(m["root"], root);
    let pids: Vec<i64> = m["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "not sorted: {pids:?}");
    for (p, ppid, name) in [(root, 0, "sh"), (subshell, root, "sh"), (cat, root, "cat")] {
        let entry = process(&m, p);
        if ppid != 0 {
            assert_eq!(entry["ppid"], ppid, "{entry}");
        }
        assert_eq!(entry["pgid"], root, "{entry}");
        assert_eq!(entry["sid"], root, "{entry}");
        assert_eq!(entry["comm"], name, "{entry}");
        assert_eq!(entry["image"], format!("task-{p}.crimg"), "{entry}");
        assert!(out.join(format!("task-{p}.crimg")).is_file());
    }
    // Every live process listed has its image (a `sleep` of the loop may
    // have been a zombie), and nothing else is there.
    let images = m["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["image"].is_null())
        .count();
    let files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(files, images + 1, "{m:#}");

    // One pipe, its write end in the loop's subshell (and in a `sleep` it
    // started, if one ran at the dump) and its read end in cat.
    let pipes: Vec<&Value> = m["shared"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "pipe")
        .collect();
    assert_eq!(pipes.len(), 1, "{m:#}");
    let holders = pipes[0]["holders"].as_array().unwrap();
    let at = |pid: i32, fd: i32| {
        holders
            .iter()
            .find(|h| h["pid"] == pid && h["fd"] == fd)
            .unwrap_or_else(|| panic!("no holder pid {pid} fd {fd}: {holders:?}"))
    };
    assert_ne!(at(subshell, 1)["desc"], at(cat, 0)["desc"]);
    for h in holders {
        let p = i32::try_from(h["pid"].as_i64().unwrap()).unwrap();
        assert!(
            p == cat || p == subshell || comm_in(&m, p) == "sleep",
            "{h}"
        );
    }
    // In the images: both ends marked shared; cat's pipe object is the
    // pipe (it holds the read end, so its bytes are in its image).
    let (cat_fd, cat_pipes) = fd_in_image(&out, cat, 0);
    assert_ne!(cat_fd.flags & fd_flags::SHARED_IN_TREE, 0);
    assert!(cat_fd.object != 0 && !cat_pipes.is_empty());
    let (sub_fd, _) = fd_in_image(&out, subshell, 1);
    assert_ne!(sub_fd.flags & fd_flags::SHARED_IN_TREE, 0);
    assert_eq!(sub_fd.file.ino, cat_fd.file.ino);
}

fn comm_in(m: &Value, pid: i32) -> String {
    process(m, pid)["comm"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn sixty_kib_in_a_pipe_between_two_processes_is_kept_in_the_readers_image() {
    skip_unless_root!();
    let mut w = python(
        r#"
import os, sys, time, fcntl
r, w = os.pipe()
fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
sr, sw = os.pipe()
c = os.fork()
if c == 0:
    os.close(w)
    os.close(sr)
    os.close(sw)
    while True:
        time.sleep(1)
os.close(sw)
# The child has closed its end of the sync pipe (and w before it).
os.read(sr, 1)
os.close(sr)
os.close(r)
os.write(w, bytes(range(256)) * 240)
print("ready", c, w, r, flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
    );
    let fields = ready_numbers(&mut w);
    let (consumer, wfd, rfd) = (fields[0], fields[1], fields[2]);
    let _consumer = PidGuard::new(consumer).unwrap();
    let producer = w.pid();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    binaries().dump(producer, &out, true).unwrap();
    // Left running, untraced.
    w.send_line("x").unwrap();
    w.expect_line("alive");
    assert_eq!(tracer_of(consumer), Some(0));

    let m = manifest(&out);
    let pipe = m["shared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "pipe")
        .unwrap_or_else(|| panic!("no pipe: {m:#}"));
    let holders = pipe["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(holders
        .iter()
        .any(|h| h["pid"] == producer && h["fd"] == wfd && h["desc"] == 1));
    assert!(holders
        .iter()
        .any(|h| h["pid"] == consumer && h["fd"] == rfd && h["desc"] == 2));
    // The python's stdout, which its child holds too, is the caller's.
    assert!(
        m["shared"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "caller" && o["caller_fd"] == 1),
        "{m:#}"
    );
    let (rec, pipes) = fd_in_image(&out, consumer, rfd);
    assert_ne!(rec.flags & fd_flags::SHARED_IN_TREE, 0);
    let data = &pipes[usize::try_from(rec.object - 1).unwrap()].1;
    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * 240).collect();
    assert_eq!(data.len(), expected.len());
    assert!(*data == expected, "the bytes differ");
    // The writer holds no read end: its image has the pipe's size only.
    let (rec, pipes) = fd_in_image(&out, producer, wfd);
    assert_ne!(rec.flags & fd_flags::SHARED_IN_TREE, 0);
    let (p, data) = &pipes[usize::try_from(rec.object - 1).unwrap()];
    assert!(data.is_empty() && p.size >= 1 << 20, "{p:?}");
}

#[test]
fn zombies_are_recorded_with_their_status_and_a_group_of_its_own_is_kept() {
    skip_unless_root!();
    let mut w = python(
        r#"
import os, sys, time, signal
a = os.fork()
if a == 0:
    os._exit(3)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    os._exit(0)
c = os.fork()
if c == 0:
    os.setpgid(0, 0)
    while True:
        time.sleep(1)
def zombie(p):
    while open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
zombie(a); zombie(b)
while os.getpgid(c) != c:
    time.sleep(0.01)
print("ready", a, b, c, flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
    );
    let pids = ready_numbers(&mut w);
    let (a, b, c) = (pids[0], pids[1], pids[2]);
    let _c = PidGuard::new(c).unwrap();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let dumped = binaries().dump(w.pid(), &out, true).unwrap();
    assert!(
        dumped.output.stdout.contains(&format!("{a} exited 3"))
            && dumped
                .output
                .stdout
                .contains(&format!("{b} killed by signal 15")),
        "{}",
        dumped.output.stdout
    );
    let m = manifest(&out);
    let za = process(&m, a);
    assert_eq!(za["zombie"]["exited"], 3, "{za}");
    assert!(za["image"].is_null() && za["threads"].as_array().unwrap().is_empty());
    assert_eq!(za["ppid"], w.pid());
    assert_eq!(process(&m, b)["zombie"]["signaled"], 15);
    let pc = process(&m, c);
    assert_eq!(pc["pgid"], c);
    assert!(pc["zombie"].is_null());
    assert!(out.join(format!("task-{c}.crimg")).is_file());
    assert!(!out.join(format!("task-{a}.crimg")).exists());
    // Left running: the zombies are still the parent's to reap.
    w.send_line("x").unwrap();
    w.expect_line("alive");
    assert!(std::fs::read_to_string(format!("/proc/{a}/stat"))
        .unwrap()
        .contains(") Z "));
}

#[test]
fn a_tree_with_something_refused_is_left_running_and_nothing_is_written() {
    skip_unless_root!();
    // One socket, held by the parent and its child (a socket shared
    // between processes cannot be restored shared yet).
    let mut w = python(
        r#"
import os, sys, time, socket
a, b = socket.socketpair()
c = os.fork()
if c == 0:
    while True:
        time.sleep(1)
print("ready", c, a.fileno(), flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
    );
    let fields = ready_numbers(&mut w);
    let (child, fd) = (fields[0], fields[1]);
    let _child = PidGuard::new(child).unwrap();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let bins = binaries();
    let r = run(bins.crdump_command(w.pid(), &out, false), TIMEOUT).unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    // Named by pid, fd and kind.
    assert!(
        r.stderr
            .contains(&format!("pid {}: fd {fd} (socket:[", w.pid()))
            && r.stderr
                .contains(&format!("a socket shared with pid {child} of the tree")),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "the output directory was created");
    assert!(std::fs::read_dir(scratch.path()).unwrap().next().is_none());
    // Every process runs on, untraced.
    for p in [w.pid(), child] {
        assert_eq!(tracer_of(p), Some(0), "pid {p}");
        assert!(!std::fs::read_to_string(format!("/proc/{p}/stat"))
            .unwrap()
            .contains(") T "));
    }
    w.send_line("x").unwrap();
    w.expect_line("alive");
    // A check of the same tree says why too, and runs nothing over.
    let r = run(
        {
            let mut c = Command::new(&bins.crdump);
            c.args(["--check-only", &w.pid().to_string()]);
            c
        },
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status.code(), Some(3), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("a socket shared with pid"),
        "{}",
        r.stdout
    );
    w.send_line("x").unwrap();
    w.expect_line("alive");
}

/// A python parent running `command` as its child, and that child's pid.
fn parent_of(command: &[&str]) -> (Workload, i32) {
    let args: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let mut w = python(&format!(
        r#"
import subprocess, sys
p = subprocess.Popen([{}], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print("ready", p.pid, flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
        args.join(", ")
    ));
    let child = ready_numbers(&mut w)[0];
    (w, child)
}

/// Dump `w`'s tree; it must be refused with `why`, leave every process in
/// `pids` running untraced and write nothing. Returns crdump's stderr.
fn refused(w: &mut Workload, pids: &[i32], why: &str) -> String {
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let r = run(binaries().crdump_command(w.pid(), &out, false), TIMEOUT).unwrap();
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(why), "{}", r.stderr);
    assert!(!out.exists());
    for &p in pids {
        assert_eq!(tracer_of(p), Some(0), "pid {p}");
    }
    w.send_line("x").unwrap();
    w.expect_line("alive");
    r.stderr
}

#[test]
fn a_child_in_vfork_and_one_in_another_pid_namespace_are_refused_by_name() {
    skip_unless_root!();
    let blockers = crimg_tests::workload_path("blockers");
    let (mut w, child) = parent_of(&[blockers.to_str().unwrap(), "--vfork"]);
    let _child = PidGuard::new(child).unwrap();
    // The vfork child: it shares the blocker's memory until it execs.
    wait_until("the vfork child", || !children(child).is_empty());
    let vforked = PidGuard::new(children(child)[0]).unwrap();
    let started = Instant::now();
    let pids = [w.pid(), child, vforked.pid()];
    refused(&mut w, &pids, &format!("pid {child}: is in vfork()"));
    // Named at once, not after the 10 s a thread gets to stop.
    assert!(started.elapsed() < Duration::from_secs(5));

    let (mut w, child) = parent_of(&["unshare", "--pid", "--fork", "sleep", "1000"]);
    let _child = PidGuard::new(child).unwrap();
    wait_until("the child in its pid namespace", || {
        !children(child).is_empty()
    });
    let inner = PidGuard::new(children(child)[0]).unwrap();
    let pids = [w.pid(), child, inner.pid()];
    refused(
        &mut w,
        &pids,
        &format!("pid {}: runs in another pid namespace", inner.pid()),
    );
}

#[test]
fn shared_anonymous_memory_and_an_append_log_are_one_object_each() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let log = scratch.path().join("log");
    let mut w = python(&format!(
        r#"
import mmap, os, sys, time
m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED)
m[0:5] = b"hello"
f = open({:?}, "a")
c = os.fork()
if c == 0:
    while True:
        time.sleep(1)
print("ready", c, f.fileno(), flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
        log.display().to_string()
    ));
    let fields = ready_numbers(&mut w);
    let (child, fd) = (fields[0], fields[1]);
    let _child = PidGuard::new(child).unwrap();
    let out = scratch.path().join("out");
    binaries().dump(w.pid(), &out, true).unwrap();
    w.send_line("x").unwrap();
    w.expect_line("alive");
    let m = manifest(&out);
    let shared = m["shared"].as_array().unwrap();
    let shmem: Vec<&Value> = shared.iter().filter(|o| o["kind"] == "shmem").collect();
    assert_eq!(shmem.len(), 1, "{m:#}");
    let holders = shmem[0]["holders"].as_array().unwrap();
    for p in [w.pid(), child] {
        let h = holders
            .iter()
            .find(|h| h["pid"] == p)
            .unwrap_or_else(|| panic!("pid {p} does not hold the shared memory: {m:#}"));
        assert!(
            h["fd"].is_null() && h["shmem"].as_u64().unwrap() >= 1,
            "{h}"
        );
    }
    let file = shared
        .iter()
        .find(|o| {
            o["kind"] == "file"
                && o["holders"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["pid"] == child && h["fd"] == fd)
        })
        .unwrap_or_else(|| panic!("the log is not shared: {m:#}"));
    assert!(file["holders"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["pid"] == w.pid() && h["fd"] == fd));
    for p in [w.pid(), child] {
        let (rec, _) = fd_in_image(&out, p, fd);
        assert_ne!(rec.flags & fd_flags::SHARED_IN_TREE, 0, "pid {p}");
    }
}

/// `sh -c script` with only its stdio open, all of it `/dev/null`.
fn quiet_sh(script: &str) -> ChildGuard {
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    ChildGuard::new("sh", command.spawn().unwrap())
}

/// The pids of the two sleeps a script of `root` starts, once both run.
fn the_sleeps_of(root: i32) -> Vec<i32> {
    wait_until("the sleeps", || children(root).len() == 2);
    children(root)
}

/// Whether `pid` has exited: gone, or a zombie not reaped yet.
fn dead(pid: i32) -> bool {
    crimg_tests::tree::state_of(pid).is_none_or(|c| c == 'Z')
}

/// State and parent of `pid` (`/proc/P/stat` fields 3 and 4).
fn state_and_parent(pid: i32) -> (String, i32) {
    let fields = crimg_tests::tree::stat_fields(pid).unwrap();
    (fields[0].clone(), fields[1].parse().unwrap())
}

/// A killed tree restores with its pids right after crdump returns:
/// crdump does not wait for its zombies to be reaped (that can take the
/// kernel's reaper a second or two), `crrestore-tree` waits for a pid
/// held by a zombie. One its parent keeps unreaped is named with that
/// parent.
#[test]
fn a_killed_tree_restores_right_after_crdump_and_a_root_its_parent_keeps_is_named() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let me = i32::try_from(std::process::id()).unwrap();
        // The outer sh waits for the inner, the dumped root, and reaps it as
        // soon as it dies; the sleeps, orphaned, go to the kernel's reaper.
        let outer = quiet_sh("sh -c 'sleep 1000 & sleep 1001 & wait' & wait");
        wait_until("the inner sh", || children(outer.pid()).len() == 1);
        let root = children(outer.pid())[0];
        let mut pids = the_sleeps_of(root);
        pids.push(root);
        let _guards: Vec<PidGuard> = pids.iter().map(|&p| PidGuard::new(p).unwrap()).collect();
        let scratch = scratch_dir();
        let out = scratch.path().join("out");
        binaries().dump(root, &out, false).unwrap();
        for &p in &pids {
            assert!(dead(p), "pid {p} is not dead when crdump returns");
        }
        drop(outer);
        crimg_tests::tree::restore_tree(&out, [] as [&str; 0], &pids);
        let copy = crimg_tests::tree::TreeGuard::hold_tree(root);
        let mut restored = copy.pids();
        restored.sort_unstable();
        pids.sort_unstable();
        assert_eq!(restored, pids);
        copy.kill_and_wait().unwrap_or_else(|e| panic!("{e}"));

        // This time the root's parent is the test, which does not reap it:
        // its pid stays a zombie's, and crrestore-tree says whose.
        let sh = quiet_sh("sleep 1000 & sleep 1001 & wait");
        let root = sh.pid();
        let kids: Vec<PidGuard> = the_sleeps_of(root)
            .into_iter()
            .map(|p| PidGuard::new(p).unwrap())
            .collect();
        let out = scratch.path().join("out2");
        binaries().dump(root, &out, false).unwrap();
        assert_eq!(state_and_parent(root), ("Z".to_owned(), me));
        let restore = crimg_tests::tree::run_restore_tree(&out, [] as [&str; 0], &[]).unwrap();
        assert_eq!(restore.status.code(), Some(2), "{restore:?}");
        let named = format!("pid {root} is taken (by \"sh\", which has exited but is not yet reaped by its parent {me})");
        assert!(restore.stderr.contains(&named), "{}", restore.stderr);
        drop(kids);
    });
}

#[test]
fn a_shell_that_keeps_vforking_short_commands_is_dumped_at_the_first_call() {
    skip_unless_root!();
    // dash starts /bin/true with vfork(): most of the time some process of
    // the tree is in vfork() or is a vfork child before its execve.
    let (w, child) = parent_of(&["sh", "-c", "while :; do /bin/true; done"]);
    let _child = PidGuard::new(child).unwrap();
    let scratch = scratch_dir();
    // Each dump must succeed at its first call: three left running (a
    // vfork is met often enough that one of them would meet it), then one
    // that kills the tree.
    for (i, leave_running) in [true, true, true, false].into_iter().enumerate() {
        let out = scratch.path().join(format!("out{i}"));
        let dumped = binaries().dump(w.pid(), &out, leave_running).unwrap();
        let m = manifest(&out);
        assert_eq!(process(&m, child)["comm"], "sh", "{m:#}");
        assert!(out.join(format!("task-{child}.crimg")).is_file());
        assert!(
            dumped.output.stdout.contains("crdump: dumped "),
            "{}",
            dumped.output.stdout
        );
        if leave_running {
            assert_eq!(tracer_of(child), Some(0));
        }
    }
    // Killed: gone, or an exited process the kernel's reaper has not
    // reaped yet.
    assert!(dead(child));
}

#[test]
fn a_socket_pair_between_two_processes_of_the_tree_is_refused_in_the_trees_words() {
    skip_unless_root!();
    let mut w = python(
        r#"
import os, socket, sys, time
a, b = socket.socketpair()
r, w = os.pipe()
c = os.fork()
if c == 0:
    # Only its end of the pair: no stdio of the test's, no parent's end.
    a.close()
    os.close(r)
    null = os.open("/dev/null", os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(null, n)
    os.close(null)
    os.close(w)
    while True:
        time.sleep(1)
b.close()
os.close(w)
assert os.read(r, 1) == b""
os.close(r)
print("ready", c, a.fileno(), flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#,
    );
    let fields = ready_numbers(&mut w);
    let (child, fd) = (fields[0], fields[1]);
    let _child = PidGuard::new(child).unwrap();
    let expected = format!(
        "pid {}: fd {fd} is a unix socket connected to socket:[",
        w.pid()
    );
    let err = refused(&mut w, &[child], &expected);
    assert!(
        err.contains(&format!(
            "(held by pid {child} of the tree): a socket shared with pid {child} of the tree \
             cannot be restored yet"
        )),
        "{err}"
    );
    assert!(!err.contains("need a tree dump"), "{err}");
}

/// `command` run as nobody:nogroup, with no supplementary groups.
fn as_nobody(command: &[&str]) -> Command {
    use crimg_tests::roundtrip::{NOBODY, NOGROUP};
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOGROUP,
        "--clear-groups",
        "--",
    ])
    .args(command);
    c
}

#[test]
fn unprivileged_a_fifo_end_whose_other_holders_could_not_be_read_is_refused() {
    skip_unless_root!();
    use std::os::unix::fs::PermissionsExt;
    let scratch = scratch_dir();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let fifo = scratch.path().join("fifo");
    let made = Command::new("mkfifo")
        .args(["-m", "666"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The reader: this process, root, whose fds nobody cannot read.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo).unwrap()
    });
    let script = format!(
        "exec 3>{}; echo ready 3; while read l; do echo alive; done",
        fifo.display()
    );
    let command = as_nobody(&["sh", "-c", &script]);
    let mut w = Workload::spawn_command("sh", command).unwrap_or_else(|e| panic!("{e}"));
    w.expect_line("ready");
    let _reader = reader.join().unwrap();
    let fd = ready_numbers(&mut w)[0];

    let out = scratch.path().join("out");
    let crdump = binaries().crdump.display().to_string();
    let mut command = as_nobody(&[&crdump, "--pid", &w.pid().to_string(), "-o"]);
    command.arg(&out);
    let r = run(command, TIMEOUT).unwrap();
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let expected = format!(
        "fd {fd} is an end of {} without its read end, and the fds of",
        fifo.display()
    );
    assert!(r.stderr.contains(&expected), "{}", r.stderr);
    assert!(
        r.stderr.contains("could not be read (run crdump as root)"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    assert_eq!(tracer_of(w.pid()), Some(0));
    w.send_line("x").unwrap();
    w.expect_line("alive");
}

#[test]
fn crdump_killed_as_it_starts_killing_takes_the_whole_tree_with_it_and_keeps_the_dump() {
    skip_unless_root!();
    if Command::new("strace").arg("-V").output().is_err() {
        println!("skipped: strace is not installed (it kills crdump at its first kill(2))");
        return;
    }
    let sh = quiet_sh("trap '' HUP; sleep 1000 & sleep 1001 & wait");
    let root = sh.pid();
    let mut guards: Vec<PidGuard> = the_sleeps_of(root)
        .into_iter()
        .map(|p| PidGuard::new(p).unwrap())
        .collect();
    guards.push(PidGuard::new(root).unwrap());
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    // SIGKILL to crdump on entry to its first kill(2): the dump is
    // published, no process of the tree has been sent its SIGKILL yet.
    let mut command = Command::new("strace");
    command.args([
        "-o",
        "/dev/null",
        "-e",
        "trace=kill",
        "-e",
        "inject=kill:signal=SIGKILL:when=1",
    ]);
    command
        .arg(&binaries().crdump)
        .arg("--pid")
        .arg(root.to_string());
    command.arg("-o").arg(&out);
    let r = run(command, TIMEOUT).unwrap();
    // strace dies of its tracee's signal.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&r.status),
        Some(libc::SIGKILL),
        "{r:?}"
    );
    // Every process dies with crdump (none resumes), and the dump stays.
    for g in &guards {
        g.wait_gone(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("pid {} survived crdump: {e}", g.pid()));
    }
    let m = manifest(&out);
    assert_eq!(m["root"], root);
    assert_eq!(m["processes"].as_array().unwrap().len(), 3, "{m:#}");
}
