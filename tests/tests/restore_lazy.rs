//! Lazy restore (`crimg run --lazy`): the process resumes before its
//! anonymous memory is in, a page server fills it through a userfaultfd
//! (faults first, the rest in the background) and exits. The workload
//! checks all of its memory; once the fill is done the process has no
//! extra fd, thread, child or mapping and no area is still registered
//! (`um` in smaps); a corrupted page kills it with one line.

use std::fs;
use std::time::Duration;

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::inspect::{corrupt_page_at, fds_of};
use crimg_tests::lazy::{
    expect_killed_for_a_mismatch, expect_pass_of, registered_areas, run_lazy, wait_fill_done,
};
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::{assert_same_maps, dump_and_kill, maps_of, tasks_of, Dumped};
use crimg_tests::smaps::{assert_same_vm_flags, vm_flags_of};
use crimg_tests::tree::children_of;
use crimg_tests::untouched::wait_until;
use crimg_tests::{binaries, scratch_dir, Binaries, Workload};

#[test]
fn lazy_restore_checks_all_memory_and_leaves_nothing() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start(
        "bigmem",
        ["--mb", "96", "--write-pct", "60", "--layout", "interleaved"],
    );
    let ready = victim.ready().cloned().expect("READY");
    let pid = victim.pid();
    let (maps, flags) = (maps_of(pid), vm_flags_of(pid));
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut restored = run_lazy(&bins, &dumped, "lazily restored bigmem");
    // The first check touches every page, most of them still out.
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    let rpid = restored.pid();
    wait_fill_done(rpid);
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    let fds = fds_of(rpid);
    let numbers: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 1, 2], "{fds:?}");
    assert_eq!(tasks_of(rpid).len(), 1, "threads of {rpid}");
    assert_eq!(children_of(rpid), Vec::<i32>::new(), "children of {rpid}");
    assert_same_maps(&maps, &maps_of(rpid));
    assert_same_vm_flags(&flags, &vm_flags_of(rpid));
}

#[test]
fn lazy_restore_of_a_corrupt_page_kills_with_a_line() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("bigmem", ["--mb", "16", "--write-pct", "100"]);
    let ready = victim.ready().cloned().expect("READY");
    let addr = ready.get("addr").expect("addr");
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex address");
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    corrupt_page_at(&dumped.dump.image, addr);
    let mut restored = run_lazy(&bins, &dumped, "corrupt lazily restored bigmem");
    expect_killed_for_a_mismatch(&mut restored);
    // The eager restore refuses the same image before anything changes.
    let mut eager = bins.crimg_command(["run", "--eager"]);
    eager.arg(&dumped.dump.image);
    let out = cli::run(eager, CLI_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);
}

/// Run `command` of `lazy_mem` at the restored process's first
/// instruction (sent before it resumes), then its full check, then wait
/// for the fill to end and check again; the PASS line of the command.
fn command_at_resume(bins: &Binaries, dumped: &Dumped, command: &str) -> String {
    let mut restored = run_lazy(bins, dumped, &format!("lazy_mem {command}"));
    let line = expect_pass_of(&mut restored, command);
    let rpid = restored.pid();
    restored.expect_pass(CheckTrigger::Stdin);
    wait_fill_done(rpid);
    restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(children_of(rpid), Vec::<i32>::new(), "children of {rpid}");
    restored
        .send_line("quit")
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_line("BYE");
    line
}

/// `MADV_DONTNEED`, a fork, an `mremap` and a read by the kernel, each
/// right after a lazy restore of 256 MiB (while the server is filling it,
/// as `during_fill=1` in their lines says): dropped pages read zeros, not
/// the image, a child sees the same memory, moved pages are found at their
/// new place, and a page the kernel reads first is the image's.
#[test]
fn memory_map_changes_during_the_fill() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("lazy_mem", ["--mb", "256"]);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    for command in ["dontneed", "fork", "mremap", "kread"] {
        let line = command_at_resume(&bins, &dumped, command);
        println!("{line}");
    }
}

/// Without `CAP_SYS_PTRACE` no userfaultfd can follow the task's forks
/// (`UFFD_FEATURE_EVENT_FORK` needs the capability even with
/// `vm.unprivileged_userfaultfd` 1, and with it 0 none can catch the
/// kernel's own accesses either): `--lazy` is refused before anything
/// changes (exit 7, one line saying how to go on).
#[test]
fn lazy_restore_unprivileged_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (dumped, _, _) = bigmem_dumped(&bins, As::Nobody, "4", &scratch.path().join("out"));
    let mut lazy = crimg_tests::roundtrip::as_nobody();
    lazy.arg(&bins.loader).arg(&dumped.dump.image).arg("--lazy");
    let out = cli::run(lazy, CLI_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(
        out.stderr
            .contains("--lazy needs a userfaultfd that also waits on the kernel's own accesses"),
        "{}",
        out.stderr
    );
}

/// A counter with three worker threads and 64 MiB of heap (lazily
/// filled, used by all four threads at once), restored lazily: it checks
/// every piece of its state and counts on without a gap; once the fill is
/// done nothing of the server is left.
#[test]
fn lazy_restore_of_a_threaded_counter() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let mut counter = Workload::start(
        "counter",
        ["--tmpdir", &dir, "--threads", "3", "--heap-mb", "64"],
    );
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let mut restored = run_lazy(&bins, &dumped, "lazily restored counter");
    // Signals only once it runs (the loader holds them; before its exec,
    // crimg itself would take one).
    restored.expect_line("TICK ");
    crimg_tests::roundtrip::assert_ticks_resume(&dumped, &mut restored);
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(pass.pid().ok(), Some(restored.pid()), "{}", pass.line());
    let rpid = restored.pid();
    wait_fill_done(rpid);
    restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(tasks_of(rpid).len(), 4, "threads of {rpid}");
    assert_eq!(children_of(rpid), Vec::<i32>::new(), "children of {rpid}");
    assert!(
        fds_of(rpid)
            .iter()
            .all(|(_, t)| !t.contains("userfaultfd") && !t.contains("socket")),
        "{:?}",
        fds_of(rpid)
    );
}

/// `crdump -o - | crimg run --lazy -`: the image received into a memfd
/// is filled from lazily, by a server that holds the memfd until it is
/// done; all the memory is there, and then no memfd or fd of the server.
#[test]
fn a_streamed_dump_restores_lazily() {
    use std::process::{Command, Stdio};
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let victim = Workload::start("bigmem", ["--mb", "24", "--write-pct", "100"]);
    let ready = victim.ready().cloned().expect("READY");
    let pid = victim.pid();
    let mut crdump = Command::new(&bins.crdump);
    crdump
        .args(["--pid", &pid.to_string(), "-o", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    crimg_tests::process::only_stdio(&mut crdump);
    let mut child = crdump.spawn().expect("crdump");
    let pipe = child.stdout.take().expect("crdump's stdout");
    let mut crdump = crimg_tests::ChildGuard::new("crdump -o -", child);
    let mut restored = Workload::spawn_command_with_stdin(
        "bigmem restored lazily from a stream",
        bins.crimg_command(["run", "--lazy", "-"]),
        Stdio::from(pipe),
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let status = crdump
        .wait_exit(CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(status.success(), "crdump -o - failed: {status}");
    drop(victim);
    let rpid = restored.pid();
    // It is bigmem once its exe link is bigmem's (crimg would die of the
    // check's signal before).
    let bigmem = fs::canonicalize(crimg_tests::workload_path("bigmem")).expect("bigmem's path");
    let resumed = wait_until(Duration::from_secs(30), || {
        fs::read_link(format!("/proc/{rpid}/exe")).is_ok_and(|p| p == bigmem)
    });
    assert!(resumed, "{}", restored.stderr_report());
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    wait_fill_done(rpid);
    let fds = fds_of(rpid);
    assert!(
        fds.iter().all(|(_, t)| !t.contains("memfd:")
            && !t.contains("userfaultfd")
            && !t.contains("socket")),
        "{fds:?}"
    );
}

/// Who runs a command: this test (root), or nobody (`setpriv`).
#[derive(Clone, Copy)]
enum As {
    Root,
    Nobody,
}

impl As {
    /// A command that runs `program` as this user.
    fn command(self, program: &std::path::Path) -> std::process::Command {
        match self {
            As::Root => std::process::Command::new(program),
            As::Nobody => {
                let mut command = crimg_tests::roundtrip::as_nobody();
                command.arg(program);
                command
            }
        }
    }
}

/// `bigmem --mb MB --write-pct 100` run by `who`, its `addr` and its
/// memory's sum; dumped (and killed) into `out`, which nobody can read
/// when it was nobody's.
fn bigmem_dumped(
    bins: &Binaries,
    who: As,
    mb: &str,
    out: &std::path::Path,
) -> (Dumped, u64, String) {
    use std::os::unix::fs::PermissionsExt;
    let mut command = who.command(&crimg_tests::workload_path("bigmem"));
    command.args(["--mb", mb, "--write-pct", "100"]);
    let mut original = Workload::spawn_command(&format!("bigmem --mb {mb}"), command).unwrap();
    let ready = match original.wait_ready(CLI_TIMEOUT) {
        Ok(facts) => facts.clone(),
        Err(err) => panic!("{err}\n{}", original.stderr_report()),
    };
    let addr = ready.get("addr").expect("addr");
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex address");
    let sum = ready.get("sum").expect("sum").to_owned();
    let dumped = dump_and_kill(bins, original, out);
    if let As::Nobody = who {
        let image = dumped.dump.image.as_path();
        for (path, mode) in [(image.parent().unwrap(), 0o755), (image, 0o644)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    (dumped, addr, sum)
}

/// `crimg run [FILL] IMAGE`, run by `who`.
fn crimg_run(
    bins: &Binaries,
    who: As,
    fill: &[&str],
    image: &std::path::Path,
) -> std::process::Command {
    let mut command = who.command(&bins.crimg);
    command.arg("run").args(fill).arg(image);
    command
}

/// Without `--lazy` or `--eager`, an image with 256 MiB or more for a page
/// server restores lazily (a corrupt page is found by the server after
/// the resume, and kills it), `--eager` and a smaller image eagerly (the
/// same corruption refused before anything changes, exit 4); the intact
/// image restores by default with all its memory, and nothing is left.
#[test]
fn a_large_image_restores_lazily_by_default_and_eagerly_when_asked() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let (dumped, addr, sum) = bigmem_dumped(&bins, As::Root, "272", &scratch.path().join("big"));
    let image = &dumped.dump.image;
    let command = crimg_run(&bins, As::Root, &[], image);
    let mut restored = Workload::spawn_command("bigmem restored by default", command).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), Some(sum.as_str()), "{}", pass.line());
    let rpid = restored.pid();
    wait_fill_done(rpid);
    let numbers: Vec<i32> = fds_of(rpid).iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 1, 2]);
    assert_eq!(children_of(rpid), Vec::<i32>::new(), "children of {rpid}");
    drop(restored);

    corrupt_page_at(image, addr);
    let command = crimg_run(&bins, As::Root, &[], image);
    let mut restored = Workload::spawn_command("corrupt bigmem by default", command).unwrap();
    expect_killed_for_a_mismatch(&mut restored);
    let out = cli::run(crimg_run(&bins, As::Root, &["--eager"], image), CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);

    let (small, addr, _) = bigmem_dumped(&bins, As::Root, "16", &scratch.path().join("small"));
    corrupt_page_at(&small.dump.image, addr);
    let out = cli::run(
        crimg_run(&bins, As::Root, &[], &small.dump.image),
        CLI_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "a 16 MiB image is restored eagerly: {out:?}"
    );
}

/// Unprivileged, no lazy restore can be made (no userfaultfd that follows
/// forks, no lease on root's file): a large image restores eagerly by
/// default, and every page left for the server is verified before
/// anything changes (a corrupt one is refused, exit 4).
#[test]
fn unprivileged_a_large_image_restores_eagerly_by_default_and_is_verified_first() {
    use std::os::unix::fs::PermissionsExt;
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (dumped, addr, sum) = bigmem_dumped(&bins, As::Nobody, "272", &scratch.path().join("out"));
    let image = &dumped.dump.image;
    let command = crimg_run(&bins, As::Nobody, &[], image);
    let mut restored = Workload::spawn_command("bigmem restored as nobody", command).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), Some(sum.as_str()), "{}", pass.line());
    assert_eq!(registered_areas(restored.pid()), Vec::<String>::new());
    drop(restored);

    corrupt_page_at(image, addr);
    let out = cli::run(crimg_run(&bins, As::Nobody, &[], image), CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);
}
