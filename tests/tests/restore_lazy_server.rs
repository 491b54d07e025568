//! The page server of a lazy restore (`crimg run --lazy`): what it may do
//! and how long it stays. Root restoring another user's image must not
//! leave that user's task a privileged helper: the server runs with the
//! task's ids, no capability, `no_new_privs`, not dumpable; and it is gone
//! once the fill is done.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crimg_tests::cli::CLI_TIMEOUT;
use crimg_tests::inspect::corrupt_page_at;
use crimg_tests::lazy::{expect_pass_of, registered_areas, run_lazy};
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::{as_nobody, dump_and_kill, nobody_ids, Dumped};
use crimg_tests::untouched::wait_until;
use crimg_tests::{binaries, scratch_dir, Binaries, Workload};

/// The processes other than `not` with an fd open on `image`: the page
/// server keeps the image open while it fills.
fn holders_of(image: &Path, not: i32) -> Vec<i32> {
    let image = fs::canonicalize(image).expect("canonical image path");
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != not)
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == image))
            })
        })
        .collect()
}

/// The value of `field:` in `/proc/PID/status`, or "" once it is gone.
fn status_field(pid: i32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map_or_else(String::new, |v| {
            v.split_whitespace().collect::<Vec<_>>().join(" ")
        })
}

/// Is `pid` gone (reaped, or a zombie waiting for its new parent)?
fn gone(pid: i32) -> bool {
    let state = status_field(pid, "State");
    state.is_empty() || state.starts_with('Z')
}

/// Root restores nobody's 512 MiB image lazily: while the server fills it,
/// it has nobody's ids, no capability, `no_new_privs` and is not dumpable
/// (its /proc files are root's); once the fill is done it has exited.
#[test]
fn the_page_server_has_the_tasks_ids_and_no_privilege_then_exits() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let (uid, gid) = nobody_ids();
    let mut command = as_nobody();
    command
        .arg(crimg_tests::workload_path("bigmem"))
        .args(["--mb", "512", "--write-pct", "100"]);
    let mut original = Workload::spawn_command("bigmem as nobody", command).unwrap();
    if let Err(err) = original.wait_ready(CLI_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let ready = original.ready().cloned().expect("READY");
    let dumped = dump_and_kill(&bins, original, &scratch.path().join("out"));
    let mut restored = run_lazy(&bins, &dumped, "bigmem as nobody, lazily restored by root");
    let rpid = restored.pid();
    // The server exists from before the task resumes until the fill ends
    // (512 MiB, each segment hashed before it is copied): catch it.
    // The intermediate of its double fork holds the image too until it
    // exits (a zombie until the loader reaps it, with the loader's ids):
    // the server is the holder that is running and has made its drop
    // (no_new_privs comes with it). One never dropping is not found.
    let mut server = None;
    wait_until(Duration::from_secs(20), || {
        server = holders_of(&dumped.dump.image, rpid)
            .into_iter()
            .find(|&p| !gone(p) && status_field(p, "NoNewPrivs") == "1");
        server.is_some()
    });
    let server = server.unwrap_or_else(|| {
        panic!(
            "no page server with no_new_privs seen in 20 s\n{}",
            restored.stderr_report()
        )
    });
    let ids = |field| status_field(server, field);
    let (uids, gids, caps) = (ids("Uid"), ids("Gid"), ids("CapEff"));
    let (permitted, nnp) = (ids("CapPrm"), ids("NoNewPrivs"));
    // Its /proc files (not the directory) belong to root once it is not dumpable (the last
    // step of its drop, just after no_new_privs).
    let owner = || {
        fs::metadata(format!("/proc/{server}/environ"))
            .map(|m| m.uid())
            .ok()
    };
    wait_until(Duration::from_secs(2), || {
        owner() == Some(0) || gone(server)
    });
    let (owner, alive) = (owner(), !gone(server));
    assert_eq!(
        uids,
        format!("{uid} {uid} {uid} {uid}"),
        "server {server}'s uids"
    );
    assert_eq!(
        gids,
        format!("{gid} {gid} {gid} {gid}"),
        "server {server}'s gids"
    );
    assert_eq!(ids("Groups"), "", "server {server}'s groups");
    assert_eq!(caps, "0000000000000000", "server {server}'s effective caps");
    assert_eq!(
        permitted, "0000000000000000",
        "server {server}'s permitted caps"
    );
    assert_eq!(nnp, "1", "server {server}'s no_new_privs");
    if alive {
        assert_eq!(
            owner,
            Some(0),
            "owner of /proc/{server}/environ (not dumpable)"
        );
    }
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    assert!(
        wait_until(Duration::from_secs(30), || registered_areas(rpid)
            .is_empty()),
        "areas of {rpid} still registered after 30 s"
    );
    assert!(
        wait_until(Duration::from_secs(10), || gone(server)),
        "the page server {server} still runs after the fill: {}",
        status_field(server, "State")
    );
    assert_eq!(holders_of(&dumped.dump.image, rpid), Vec::<i32>::new());
}

/// 24 children forked at the first instruction of a lazy restore (more
/// than the server once served: it killed the task and left the children
/// reading zeros) each read the whole image; once the fill is done and the
/// server gone, they read it all again.
#[test]
fn children_forked_right_after_a_lazy_restore_keep_their_memory() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("lazy_mem", ["--mb", "32"]);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut restored = run_lazy(&bins, &dumped, "lazy_mem forks");
    let rpid = restored.pid();
    println!("{}", expect_pass_of(&mut restored, "forks"));
    // Every child's fill done: the server (the last holder of the image)
    // has exited.
    assert!(
        wait_until(Duration::from_secs(30), || holders_of(
            &dumped.dump.image,
            rpid
        )
        .is_empty()),
        "the page server still runs: {:?}\n{}",
        holders_of(&dumped.dump.image, rpid),
        restored.stderr_report()
    );
    println!("{}", expect_pass_of(&mut restored, "release"));
    restored.expect_pass(CheckTrigger::Stdin);
    restored
        .send_line("quit")
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_line("BYE");
}

/// 64 `mremap`s of lazily filled memory during the fill (realloc does as
/// much): once more than 16 killed the task.
#[test]
fn many_mremaps_during_the_fill() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("lazy_mem", ["--mb", "256"]);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut restored = run_lazy(&bins, &dumped, "lazy_mem mremaps");
    let rpid = restored.pid();
    println!("{}", expect_pass_of(&mut restored, "mremaps"));
    assert!(
        wait_until(Duration::from_secs(30), || registered_areas(rpid)
            .is_empty()),
        "areas of {rpid} still registered after 30 s"
    );
    restored.expect_pass(CheckTrigger::Stdin);
    restored
        .send_line("quit")
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_line("BYE");
}

/// A corrupt page the task has not touched, and the task forks at its
/// first instruction: the mismatch is found at the first fork (every lazy
/// segment verified then), the task is killed and no child runs on with
/// the pages not yet in reading zeros (it once did: the server killed the
/// task only, and its exit unregistered every child's areas).
#[test]
fn a_corrupt_page_found_after_a_fork_leaves_no_child_reading_zeros() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("lazy_mem", ["--mb", "32"]);
    let ready = victim.ready().cloned().expect("READY");
    let hex = |k: &str| ready.get(k).expect(k).trim_start_matches("0x").to_owned();
    let addr = u64::from_str_radix(&hex("addr"), 16).expect("hex addr");
    let size: u64 = ready.get("size").expect("size").parse().expect("size");
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    corrupt_page_at(&dumped.dump.image, addr + size / 4 * 3);
    let mut restored = run_lazy(&bins, &dumped, "corrupt lazy_mem forks");
    restored
        .send_line("forks")
        .unwrap_or_else(|err| panic!("{err}"));
    let status = restored
        .wait_exit(CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(!status.success(), "{status:?}");
    // The children share its stdout: it closes once the last is gone.
    match restored
        .stdout()
        .wait_for_any(&["FAIL ", "PASS "], CLI_TIMEOUT)
    {
        Err(crimg_tests::lines::LineError::Closed { .. }) => {}
        other => panic!("{other:?}\n{}", restored.stderr_report()),
    }
    let report = restored.stderr_report();
    assert!(
        report.contains("lazy restore: checksum mismatch in segment")
            && report.contains("was killed"),
        "{report}"
    );
}

/// No read lease on the image (here: it is open for writing elsewhere):
/// the server, which reads it after the task resumes, could serve what a
/// writer put there, so `--lazy` is refused before anything changes (exit
/// 7, one line); an eager restore, which reads all before, still runs it.
#[test]
fn lazy_restore_without_a_lease_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("bigmem", ["--mb", "16", "--write-pct", "100"]);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(&dumped.dump.image)
        .expect("open the image for writing");
    let mut lazy = bins.crimg_command(["run", "--lazy"]);
    lazy.arg(&dumped.dump.image);
    let out = crimg_tests::cli::run(lazy, CLI_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(
        out.stderr
            .contains("--lazy needs a read lease on the image"),
        "{}",
        out.stderr
    );
    let mut eager = run_eager(&bins, &dumped);
    eager.expect_pass(CheckTrigger::Stdin);
    drop(writer);
}

/// `crimg run IMAGE` (eager), as a workload.
fn run_eager(bins: &Binaries, dumped: &Dumped) -> Workload {
    let mut eager = bins.crimg_command(["run"]);
    eager.arg(&dumped.dump.image);
    Workload::spawn_command("eagerly restored bigmem", eager).unwrap_or_else(|err| panic!("{err}"))
}
