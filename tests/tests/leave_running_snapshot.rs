//! `crdump --leave-running --snapshot` (`--leave-running` alone is the
//! frozen dump), through a copy-on-write snapshot child (a tree,
//! `--fork-snapshot`, or a process that cannot be write-protected) or a
//! userfaultfd write-protection (a process alone; see also
//! `snapshot_protected.rs`): the image restores exactly what the original
//! held at the freeze (a second thread, MAP_SHARED, MADV_DONTFORK and
//! MADV_WIPEONFORK areas, a signal pending for the process and one for a
//! thread), the original runs on unchanged, has no child afterwards (not
//! even a zombie: its own waitid with `__WALL` finds none) and never got a
//! SIGCHLD. A snapshot that cannot be made (the clone refused by
//! RLIMIT_NPROC, for a user who may not make a userfaultfd either) falls
//! back to the frozen dump with one warning line. Needs root.

use std::path::Path;

use crimg_tests::cli::run_ok;
use crimg_tests::facts::Facts;
use crimg_tests::process::{CheckTrigger, READY_TIMEOUT};
use crimg_tests::roundtrip::as_nobody;
use crimg_tests::tree::{children_of, state_of, tracer_of};
use crimg_tests::{binaries, scratch_dir, workload_path, Binaries, PidGuard, Workload};

/// The fallback's warning, as crdump prints it.
const FALLBACK: &str = "no copy-on-write snapshot";
/// What `crdump -v` prints after a fork snapshot, and after a
/// write-protected one.
const FORKED: &str = "to reap the snapshot child";
const PROTECTED: &str = "snapshot by userfaultfd write-protection";

/// After a `--leave-running` dump of `original` (pid `pid`, READY facts
/// `ready`) into `out`: no child is left, the original passes its own
/// check with the checksum it had and no SIGCHLD, and its image verifies.
fn assert_untouched_and_complete(
    bins: &Binaries,
    original: &mut Workload,
    ready: &Facts,
    pid: i32,
    out: &Path,
) {
    assert_eq!(children_of(pid), Vec::<i32>::new(), "a child is left");
    let pass = original.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    assert_eq!(pass.get("sigchld"), Some("0"), "{}", pass.line());
    bins.verify(&out.join(format!("task-{pid}.crimg")))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `crdump --leave-running --snapshot -v` of `pid` into `out` (without
/// `--snapshot` unless `snapshot`): its stdout and stderr.
fn dump_leaving_running(pid: i32, out: &Path, snapshot: bool) -> (String, String) {
    dump_with(pid, out, if snapshot { &["--snapshot"] } else { &[] })
}

/// `crdump --leave-running -v` with `args` of `pid` into `out`: its
/// stdout and stderr.
fn dump_with(pid: i32, out: &Path, args: &[&str]) -> (String, String) {
    let bins = binaries();
    let mut command = bins.crdump_command(pid, out, true);
    command.arg("-v").args(args);
    let output =
        run_ok(command, std::time::Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.join(format!("task-{pid}.crimg")).is_file(),
        "no image\n{}",
        output.stdout
    );
    (output.stdout, output.stderr)
}

/// `crdump --leave-running --snapshot -v` of `pid` into `out`, which must
/// have been made from a snapshot (no fallback; the write-protected one,
/// or a child that was reaped): stdout.
fn dump_from_snapshot(pid: i32, out: &Path) -> String {
    dump_from_snapshot_with(pid, out, &[], &[PROTECTED, FORKED])
}

/// [`dump_from_snapshot`] with more `args`, its stdout showing one of
/// `methods`.
fn dump_from_snapshot_with(pid: i32, out: &Path, args: &[&str], methods: &[&str]) -> String {
    let args: Vec<&str> = ["--snapshot"].iter().chain(args).copied().collect();
    let (stdout, stderr) = dump_with(pid, out, &args);
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains(FALLBACK), "the dump fell back:\n{all}");
    assert!(
        methods.iter().any(|m| stdout.contains(m)),
        "no snapshot line of {methods:?}:\n{stdout}"
    );
    stdout
}

/// The frozen time crdump -v reports.
fn stopped_ms(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.contains("stopped for"))
        .unwrap_or_else(|| panic!("no 'stopped for' line:\n{stdout}"));
    let tail = line.rsplit("stopped for ").next().unwrap_or_default();
    tail.trim_end_matches(" ms")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no figure in {line:?}"))
}

#[test]
fn a_snapshot_dump_restores_exactly_and_leaves_the_original_untouched() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut original = Workload::start("snapshot_threads", ["--private-mb", "32"]);
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();

    let stdout = dump_from_snapshot_with(pid, &out, &[], &[PROTECTED]);
    assert!(stopped_ms(&stdout) > 0.0);
    restores_as_at_the_freeze(&bins, &mut original, &ready, pid, &out);
}

/// The same through the copy-on-write child (`--fork-snapshot`).
#[test]
fn a_fork_snapshot_dump_restores_exactly_and_leaves_the_original_untouched() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut original = Workload::start("snapshot_threads", ["--private-mb", "32"]);
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();

    let stdout = dump_from_snapshot_with(pid, &out, &["--fork-snapshot"], &[FORKED]);
    assert!(stopped_ms(&stdout) > 0.0);
    restores_as_at_the_freeze(&bins, &mut original, &ready, pid, &out);
}

/// After a snapshot dump of `original` (`pid`, READY facts `ready`) into
/// `out`: the original has no child, its state and no SIGCHLD; the image
/// has every area, both pending signals and the worker thread.
fn restores_as_at_the_freeze(
    bins: &Binaries,
    original: &mut Workload,
    ready: &Facts,
    pid: i32,
    out: &Path,
) {
    // The original: no child left, state as it was, no SIGCHLD.
    assert_eq!(children_of(pid), Vec::<i32>::new(), "a child is left");
    let pass = original.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    assert_eq!(pass.get("sigchld"), Some("0"), "{}", pass.line());

    // The image: every area, both pending signals and the worker thread.
    bins.verify(&out.join(format!("task-{pid}.crimg")))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut restored = bins
        .restore(
            "restored snapshot_threads",
            &out.join(format!("task-{pid}.crimg")),
        )
        .unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    assert_eq!(pass.get("usr1"), Some("worker"), "{}", pass.line());
    assert_eq!(pass.get("usr2"), Some("pending"), "{}", pass.line());
}

#[test]
fn a_refused_clone_falls_back_to_a_frozen_dump_with_one_warning() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    // As nobody, so that RLIMIT_NPROC applies to it (root's tasks pass).
    let mut command = as_nobody();
    // RLIMIT_NPROC lowered to 1 once both threads exist: the injected
    // clone is refused.
    command
        .arg(workload_path("snapshot_threads"))
        .args(["--nproc", "1"]);
    let mut original = Workload::spawn_command("snapshot_threads", command).unwrap();
    if let Err(err) = original.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();
    let (stdout, stderr) = dump_leaving_running(pid, &out, true);
    let all = format!("{stdout}{stderr}");
    let warnings: Vec<&str> = all.lines().filter(|l| l.contains(FALLBACK)).collect();
    assert_eq!(warnings.len(), 1, "not one warning line:\n{all}");
    assert!(
        warnings[0].contains("errno 11"),
        "not the clone's EAGAIN: {}",
        warnings[0]
    );
    assert_untouched_and_complete(&bins, &mut original, &ready, pid, &out);
}

/// A tree: every process is snapshotted by a child of its own, each image
/// is complete, and afterwards every process has exactly the children it
/// had (the tree's own), and runs on.
#[test]
fn every_process_of_a_tree_gets_its_own_snapshot_and_none_is_left() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut root = Workload::spawn(
        "tree_mem",
        ["--procs", "3", "--mb", "8", "--interval-ms", "50"],
    )
    .unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let line = root.expect_line("READY ");
        pids.push(crimg_tests::Facts::parse(&line).pid().unwrap());
    }
    // The two children die with the test.
    let _guards: Vec<PidGuard> = pids
        .iter()
        .filter(|&&p| p != root.pid())
        .map(|&p| PidGuard::new(p).unwrap())
        .collect();
    let mut before = children_of(root.pid());
    before.sort_unstable();

    dump_from_snapshot(root.pid(), &out);
    let mut after = children_of(root.pid());
    after.sort_unstable();
    assert_eq!(after, before, "the root's children changed");
    for &p in pids.iter().filter(|&&p| p != root.pid()) {
        assert_eq!(
            children_of(p),
            Vec::<i32>::new(),
            "pid {p} has a child left"
        );
    }
    for &p in &pids {
        bins.verify(&out.join(format!("task-{p}.crimg")))
            .unwrap_or_else(|e| panic!("{e}"));
        // Running on, untraced.
        assert!(
            matches!(state_of(p), Some('S' | 'R')),
            "pid {p}: {:?}",
            state_of(p)
        );
        assert_eq!(tracer_of(p), Some(0), "pid {p} is still traced");
    }
}

/// A process in a pid namespace of its own (a container's): the clone
/// returns the child's pid there, which is not its pid for crdump; the
/// child is still found, held and reaped, and nothing else is touched.
#[test]
fn a_process_in_its_own_pid_namespace_is_snapshotted() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(workload_path("snapshot_threads"));
    let mut original =
        Workload::spawn_command("snapshot_threads in a pid namespace", command).unwrap();
    if let Err(err) = original.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let ready = original.ready().unwrap().clone();
    assert_eq!(ready.get("pid"), Some("1"), "{}", ready.line());
    // The workload is unshare's only child.
    let target = children_of(original.pid())[0];

    dump_from_snapshot(target, &out);
    assert_untouched_and_complete(&bins, &mut original, &ready, target, &out);
}

/// `--leave-running` alone is the frozen dump: no snapshot child is made
/// (no reap line, no fallback warning), the image is complete and the
/// original runs on without a child.
#[test]
fn leave_running_without_snapshot_is_the_frozen_dump() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut original = Workload::start("snapshot_threads", ["--private-mb", "8"]);
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();

    let (stdout, stderr) = dump_leaving_running(pid, &out, false);
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains(FALLBACK), "a snapshot was tried:\n{all}");
    assert!(
        !stdout.contains("to reap the snapshot child"),
        "a snapshot child was made:\n{stdout}"
    );
    assert_untouched_and_complete(&bins, &mut original, &ready, pid, &out);
}

/// SIGSTOP and SIGCONT sent to the original over and over while it is
/// dumped (group stops arriving at any moment, the reap included): every
/// dump succeeds from a snapshot and leaves no child.
#[test]
fn group_stops_during_the_dump_do_not_make_the_reap_fail() {
    use std::sync::atomic::{AtomicBool, Ordering};
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("snapshot_threads", ["--private-mb", "8"]);
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();
    let target = nix::unistd::Pid::from_raw(pid);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use nix::sys::signal::{kill, Signal};
            while !stop.load(Ordering::Relaxed) {
                let _ = kill(target, Signal::SIGSTOP);
                std::thread::yield_now();
                let _ = kill(target, Signal::SIGCONT);
                // Mostly running: most dumps get past the check that
                // refuses a stopped process.
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        })
    };
    // Each dump: crdump's output (or why it failed) and the children the
    // original has right after it. A dump that finds the process stopped
    // before it froze it refuses it by design (that is not what is tested
    // here) and is tried again.
    let mut rounds = Vec::new();
    let mut attempts = 0;
    while rounds.len() < 6 && attempts < 100 {
        attempts += 1;
        let out = scratch.path().join(format!("out{attempts}"));
        let mut command = bins.crdump_command(pid, &out, true);
        command.args(["-v", "--snapshot"]);
        // Every other round through the child, whose reap meets the stops.
        if attempts % 2 == 1 {
            command.arg("--fork-snapshot");
        }
        let r = run_ok(command, std::time::Duration::from_secs(120))
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .map_err(|e| e.to_string());
        if r.as_ref()
            .is_err_and(|e| e.contains("is stopped by job control"))
        {
            continue;
        }
        rounds.push((r, children_of(pid), out, attempts % 2 == 1));
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(rounds.len(), 6, "the process was always stopped");
    for (r, children, out, forked) in &rounds {
        let all = r.as_ref().unwrap_or_else(|e| panic!("a dump failed: {e}"));
        assert!(!all.contains(FALLBACK), "a dump fell back:\n{all}");
        let method = if *forked { FORKED } else { PROTECTED };
        assert!(all.contains(method), "no snapshot line {method:?}:\n{all}");
        assert_eq!(children, &Vec::<i32>::new(), "a child is left:\n{all}");
        bins.verify(&out.join(format!("task-{pid}.crimg")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let pass = original.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
}

/// While its memory is read, the snapshot child is the OOM killer's first
/// choice (oom_score_adj 1000), and the original keeps its own value.
#[test]
fn the_snapshot_child_is_the_oom_killers_first_choice() {
    use std::sync::atomic::{AtomicBool, Ordering};
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let original = Workload::start("snapshot_threads", ["--private-mb", "128"]);
    let pid = original.pid();
    let adj = |p: i32| std::fs::read_to_string(format!("/proc/{p}/oom_score_adj"));
    let before = adj(pid).unwrap();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    // Every value read from a child of the original while crdump runs.
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for c in children_of(pid) {
                    if let Ok(v) = adj(c) {
                        seen.push(v.trim().to_string());
                    }
                }
                std::thread::yield_now();
            }
            seen
        })
    };
    let (stdout, stderr) = dump_with(pid, &out, &["--snapshot", "--fork-snapshot"]);
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains(FALLBACK), "the dump fell back:\n{all}");
    assert!(
        seen.iter().any(|v| v == "1000"),
        "no child with oom_score_adj 1000 seen (values: {:?})",
        seen.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(adj(pid).unwrap(), before, "the original's value changed");
    assert_eq!(children_of(pid), Vec::<i32>::new(), "a child is left");
}

/// An area whose MADV_WIPEONFORK is turned off and on again all the time
/// by a thread of its own (a change no line of `/proc/P/maps` shows, so
/// the areas read before the freeze may be stale when it comes): every
/// snapshot dump restores the contents the area had at the freeze, never
/// the empty copy a fork gives a WIPEONFORK area.
#[test]
fn an_area_flipping_wipeonfork_is_dumped_as_it_was_at_the_freeze() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("snapshot_threads", ["--flip"]);
    let ready = original.ready().unwrap().clone();
    let pid = original.pid();
    for round in 0..8 {
        let out = scratch.path().join(format!("out{round}"));
        dump_from_snapshot(pid, &out);
        let image = out.join(format!("task-{pid}.crimg"));
        bins.verify(&image).unwrap_or_else(|e| panic!("{e}"));
        let mut restored = bins
            .restore(&format!("restored snapshot_threads, round {round}"), &image)
            .unwrap();
        let pass = restored.expect_pass(CheckTrigger::Stdin);
        assert_eq!(
            pass.get("sum"),
            ready.get("sum"),
            "round {round}: {}",
            pass.line()
        );
    }
    assert_untouched_and_complete(
        &bins,
        &mut original,
        &ready,
        pid,
        &scratch.path().join("out7"),
    );
}

/// The kB of `field` in `/proc/PID/smaps_rollup`.
fn rollup_kb(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Reading the snapshot child's memory copies none of its pages: they stay
/// shared with the original (its `Private_Dirty` does not grow while the
/// child exists), where a pinning read (`process_vm_readv`) would make the
/// kernel unshare every page it reads, a second copy of the whole memory.
#[test]
fn reading_the_snapshot_copies_none_of_its_pages() {
    use std::sync::atomic::{AtomicBool, Ordering};
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let original = Workload::start("snapshot_threads", ["--private-mb", "128"]);
    let pid = original.pid();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    // The original's Private_Dirty, sampled while a child of it still
    // holds the memory (one that is exiting has released it: then every
    // page is the original's alone again).
    let living_child = move || {
        children_of(pid)
            .into_iter()
            .any(|c| rollup_kb(c, "Rss:").is_some_and(|kb| kb >= 100 * 1024))
    };
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if !living_child() {
                    std::thread::yield_now();
                    continue;
                }
                let kb = rollup_kb(pid, "Private_Dirty:");
                if let (Some(kb), true) = (kb, living_child()) {
                    seen.push(kb);
                }
            }
            seen
        })
    };
    let (stdout, stderr) = dump_with(pid, &out, &["--snapshot", "--fork-snapshot"]);
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let all = format!("{stdout}{stderr}");
    assert!(!all.contains(FALLBACK), "the dump fell back:\n{all}");
    assert!(
        !seen.is_empty(),
        "no sample while the snapshot child existed"
    );
    let most = seen.iter().copied().max().unwrap_or(0);
    assert!(
        most < 64 * 1024,
        "the original's Private_Dirty reached {most} kB while its snapshot was read: the child's \
         pages were copied ({} samples)",
        seen.len()
    );
}
