//! `crdump --leave-running --snapshot` of a process alone: the
//! write-protected snapshot (a userfaultfd armed before the freeze). The
//! image holds every page as it was at the freeze although writer threads
//! keep writing during the whole dump; a `madvise(MADV_DONTNEED)` and a
//! `munmap` right after the resume never put wrong bytes in the image (the
//! snapshot is lost and the dump tried again as a fork snapshot, or the
//! pages were read already); areas registered by crimg's incremental
//! tracking make it the fork snapshot. Afterwards the original has the
//! areas, flags and fds it had before. Needs root.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crimg_tests::cli::run_ok;
use crimg_tests::process::CheckTrigger;
use crimg_tests::{binaries, scratch_dir, Workload};

/// What `crdump -v` says of the write-protected snapshot.
const PROTECTED: &str = "snapshot by userfaultfd write-protection";
/// ... and of the fork snapshot.
const FORKED: &str = "snapshot by copy-on-write child";

/// `crdump --leave-running --snapshot -v` of `pid` into `out`: stdout and
/// stderr together.
fn dump(pid: i32, out: &Path) -> String {
    let mut command = binaries().crdump_command(pid, out, true);
    command.args(["-v", "--snapshot"]);
    let output = run_ok(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    format!("{}{}", output.stdout, output.stderr)
}

/// The frozen time crdump -v reports.
fn stopped_ms(all: &str) -> f64 {
    let line = all
        .lines()
        .find(|l| l.contains("stopped for"))
        .unwrap_or_else(|| panic!("no 'stopped for' line:\n{all}"));
    line.rsplit("stopped for ")
        .next()
        .and_then(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure in {line:?}"))
}

/// The areas of `pid` with their VmFlags, and its fds: what a dump that
/// lets it run on must leave as it found it.
fn footprint(pid: i32) -> (Vec<String>, Vec<String>) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut areas = Vec::new();
    let mut current = String::new();
    for line in smaps.lines() {
        if line.starts_with("VmFlags:") {
            areas.push(format!("{current} {line}"));
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-'))
        {
            current = line.to_owned();
        }
    }
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{} {}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    fds.sort();
    (areas, fds)
}

/// The image of `pid` in `out` verifies, restores, and the restored
/// process finds its memory as it was at the freeze.
fn restores_exactly(out: &Path, pid: i32, what: &str) -> crimg_tests::Facts {
    let bins = binaries();
    let image = out.join(format!("task-{pid}.crimg"));
    bins.verify(&image).unwrap_or_else(|e| panic!("{e}"));
    let mut restored = bins.restore(what, &image).unwrap();
    restored.expect_pass(CheckTrigger::Stdin)
}

/// A thread watching `pid` traced and untraced: true once it was untraced
/// again for the second time (the first follows the stop that made the
/// userfaultfd, the second the freeze), false if `done` came first.
fn resumes_watcher(pid: i32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let traced = || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .map(|v| v.trim() != "0")
                })
                .unwrap_or(false)
        };
        let (mut was, mut resumes) = (false, 0);
        while !done.load(Ordering::Relaxed) {
            let now = traced();
            if was && !now {
                resumes += 1;
                if resumes == 2 {
                    return true;
                }
            }
            was = now;
        }
        false
    })
}

#[test]
fn writers_running_through_the_dump_restore_as_at_the_freeze() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let mut original = Workload::start("wp_writers", ["--threads", "3", "--mb", "64"]);
    let pid = original.pid();
    let before = footprint(pid);

    let all = dump(pid, &out);
    assert!(
        all.contains(PROTECTED),
        "not the write-protected snapshot:\n{all}"
    );
    let ms = stopped_ms(&all);
    assert!(ms > 0.0, "{all}");
    eprintln!("frozen {ms} ms");

    // The kernel unregistered and unprotected everything when crdump's
    // userfaultfd closed; the task holds no fd it did not have.
    assert_eq!(
        footprint(pid),
        before,
        "the original's areas or fds changed"
    );
    let pass = original.expect_pass(CheckTrigger::Stdin);
    assert_ne!(pass.get("steps"), Some("0"), "{}", pass.line());

    let restored = restores_exactly(&out, pid, "restored wp_writers");
    assert_eq!(restored.get("dropped"), Some("0"), "{}", restored.line());
}

/// The original drops (MADV_DONTNEED) one area and unmaps another as soon
/// as it is resumed after the freeze, before crdump has read them (seen by
/// a thread here that watches it traced and untraced: the second untraced
/// is the resume after the freeze, the first followed the stop that made
/// the userfaultfd). The image restores the areas as they were at the
/// freeze, whichever way the dump went.
#[test]
fn memory_dropped_right_after_the_resume_is_never_wrong_in_the_image() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    for round in 0..3 {
        let out = scratch.path().join(format!("out{round}"));
        let mut original = Workload::start(
            "wp_writers",
            ["--threads", "2", "--mb", "16", "--drop-mb", "128"],
        );
        let pid = original.pid();
        let done = Arc::new(AtomicBool::new(false));
        let watcher = resumes_watcher(pid, done.clone());
        let dumper = {
            let done = done.clone();
            std::thread::spawn(move || {
                let all = dump(pid, &out);
                done.store(true, Ordering::Relaxed);
                all
            })
        };
        let resumed = watcher.join().unwrap();
        if resumed {
            original.send_line("drop").unwrap();
            original.expect_line("DROPPED");
        }
        let all = dumper.join().unwrap();
        assert!(
            all.contains(PROTECTED) || all.contains("write-protected snapshot was lost"),
            "round {round}: neither the write-protected snapshot nor its loss:\n{all}"
        );
        eprintln!(
            "round {round}: drop sent {resumed}, {}",
            if all.contains(PROTECTED) {
                "the write-protected snapshot held"
            } else {
                "lost, dumped again from a fork"
            }
        );
        let out = scratch.path().join(format!("out{round}"));
        let restored = restores_exactly(&out, pid, "restored wp_writers after a drop");
        // Dropped in the image only if the dump that made it froze the
        // process after the drop (the fork snapshot tried again).
        if all.contains(PROTECTED) {
            assert_eq!(restored.get("dropped"), Some("0"), "{}", restored.line());
        }
        original.expect_pass(CheckTrigger::Stdin);
    }
}

/// Areas registered with a userfaultfd already (crimg's own write
/// tracking, `--pre-dump`): the write-protection cannot register them
/// (EBUSY), and the dump is a fork snapshot, which -v says with why.
#[test]
fn areas_registered_already_make_it_a_fork_snapshot() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("wp_writers", ["--threads", "1", "--mb", "8"]);
    let pid = original.pid();
    let mut pre = bins.crdump_command(pid, &scratch.path().join("pre"), false);
    pre.arg("--pre-dump");
    run_ok(pre, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let out = scratch.path().join("out");
    let all = dump(pid, &out);
    assert!(all.contains(FORKED), "not the fork snapshot:\n{all}");
    assert!(all.contains("EBUSY"), "no reason given:\n{all}");
    original.expect_pass(CheckTrigger::Stdin);
    restores_exactly(&out, pid, "restored wp_writers, forked");
}

/// An incremental dump (`--parent`) compares each page with the parent's,
/// then writes the changed ones: it reads them twice, and a page written
/// between the two reads still goes in as it was at the freeze. The parent
/// is a `--pre-dump --snapshot` (which arms no write tracking: the next
/// dump is write-protected, not a fork snapshot).
#[test]
fn an_incremental_dump_of_writers_is_as_at_the_freeze() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("wp_writers", ["--threads", "2", "--mb", "32"]);
    let pid = original.pid();
    let pre = scratch.path().join("pre");
    let mut command = bins.crdump_command(pid, &pre, true);
    command.args(["--pre-dump", "--snapshot"]);
    run_ok(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let out = scratch.path().join("out");
    let mut command = bins.crdump_command(pid, &out, true);
    command.args(["-v", "--snapshot", "--parent"]).arg(&pre);
    let output = run_ok(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let all = format!("{}{}", output.stdout, output.stderr);
    assert!(
        all.contains(PROTECTED),
        "not the write-protected snapshot:\n{all}"
    );
    original.expect_pass(CheckTrigger::Stdin);
    let restored = restores_exactly(&out, pid, "restored incremental wp_writers");
    assert_eq!(restored.get("dropped"), Some("0"), "{}", restored.line());
}

/// A stream (`-o -`), whose writer reads every page twice (checksums
/// first): a page written between the two reads still goes out as it was
/// at the freeze, so the stream's own check of the second read passes and
/// the image restores as at the freeze.
#[test]
fn a_stream_of_writers_reads_every_page_as_at_the_freeze_twice() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("wp_writers", ["--threads", "2", "--mb", "64"]);
    let pid = original.pid();
    let stream = scratch.path().join("stream.tar");
    let err = scratch.path().join("crdump.err");
    let mut command = std::process::Command::new(&bins.crdump);
    command
        .args(["--pid", &pid.to_string(), "-o", "-"])
        .args(["--leave-running", "--snapshot", "-v"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stream).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    crimg_tests::process::only_stdio(&mut command);
    let mut crdump = crimg_tests::process::ChildGuard::new("crdump -o -", command.spawn().unwrap());
    let status = crdump
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let all = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "crdump -o - failed ({status}):\n{all}");
    assert!(
        all.contains(PROTECTED),
        "not the write-protected snapshot:\n{all}"
    );
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&stream)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(untar.success());
    original.expect_pass(CheckTrigger::Stdin);
    restores_exactly(&out, pid, "restored wp_writers from a stream");
}

/// crdump killed (SIGKILL) while it reads a write-protected process: its
/// userfaultfd closes with it, which wakes every writer waiting and clears
/// every registration: the process runs on with the areas, flags and fds
/// it had, its memory consistent.
#[test]
fn a_crdump_killed_mid_dump_leaves_the_process_running_as_before() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = Workload::start("wp_writers", ["--threads", "2", "--mb", "512"]);
    let pid = original.pid();
    let before = footprint(pid);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = resumes_watcher(pid, done.clone());
    let mut command = bins.crdump_command(pid, &scratch.path().join("out"), true);
    command.args(["-v", "--snapshot"]);
    crimg_tests::process::only_stdio(&mut command);
    command.stdout(std::process::Stdio::null());
    let mut crdump = crimg_tests::process::ChildGuard::new("crdump", command.spawn().unwrap());
    let resumed = watcher.join().unwrap();
    assert!(resumed, "the process was not resumed after the freeze");
    crdump
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = crdump
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    done.store(true, Ordering::Relaxed);
    assert!(!status.success(), "crdump finished before it was killed");
    // Closed with crdump: nothing registered or protected is left.
    assert_eq!(
        footprint(pid),
        before,
        "the original's areas or fds changed"
    );
    original.send_line("ping").unwrap();
    original.expect_line("PONG");
    original.expect_pass(CheckTrigger::Stdin);
}
