//! The loader's rules where they meet the rest of crimg: the dumper runs
//! the loader's image rules (`binfmt_loader::rules`) before it kills the
//! process, so it never kills one whose image the loader would refuse; and
//! the loader never gives the restored process more than the image file's
//! owner has (an image is untrusted input, written by whoever owns it).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::cli;
use crimg_tests::process::{LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{dump_and_kill, NOBODY, NOGROUP};
use crimg_tests::{binaries, scratch_dir, Workload};

/// A Python process that maps a file and then deletes it (the fd it
/// mapped through stays open, deleted). Dumped with a ghost limit below
/// its size, neither is saved, so a dump is refused; with `--force` the fd is dropped (`/dev/null` at restore) and
/// the area kept without contents, and the image must be one the loader
/// accepts: crdump runs the loader's own rules on it before it kills the
/// process, and `crimg verify` runs the same ones.
const DELETED_MAPPING: &str = r#"
import mmap, os, sys
path = sys.argv[1]
with open(path, "w+b") as f:
    f.write(b"x" * 4096)
    f.flush()
    m = mmap.mmap(f.fileno(), 4096)
os.unlink(path)
print(f"READY pid={os.getpid()}", flush=True)
for line in sys.stdin:
    print("alive" if m[:1] == b"x" else "LOST", flush=True)
"#;

/// [`DELETED_MAPPING`] running (its file in `dir`), past its READY line.
fn start_deleted_mapping(dir: &Path) -> Workload {
    let mut command = Command::new("python3");
    command
        .args(["-c", DELETED_MAPPING])
        .arg(dir.join("mapped"));
    let mut python = Workload::spawn_command("python with a deleted mapping", command).unwrap();
    if let Err(err) = python.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", python.stderr_report());
    }
    python
}

#[test]
fn crdump_force_of_a_deleted_mapping_writes_an_image_the_loader_runs() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut python = start_deleted_mapping(scratch.path());
    let pid = python.pid();
    let out = scratch.path().join("out");
    // Refused without --force, naming both, and left running.
    let mut crdump = bins.crdump_command(pid, &out, false);
    crdump.args(["--ghost-limit", "1"]);
    let output = cli::run(crdump, LINE_TIMEOUT).unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(
        output.stderr.contains("deleted file")
            && output.stderr.contains("/mapped")
            && output.stderr.contains("above the ghost limit of 1 bytes"),
        "{}",
        output.stderr
    );
    python.send_line("x").unwrap();
    python.expect_line("alive");

    let mut crdump = bins.crdump_command(pid, &out, false);
    crdump.args(["--force", "--ghost-limit", "1"]);
    let output = cli::run_ok(crdump, LINE_TIMEOUT).unwrap();
    assert!(
        !output.stdout.contains("the loader would refuse"),
        "{}",
        output.stdout
    );
    python.wait_exit(LINE_TIMEOUT).unwrap();
    let image = out.join(format!("task-{pid}.crimg"));
    bins.verify(&image)
        .expect("crimg verify runs the same rules");
    let mut restored = bins.restore("restored python", &image).unwrap();
    let warning = restored
        .wait_stderr_containing("replaced by /dev/null", LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    assert!(warning.contains("/mapped)"), "{warning}");
    // It runs; the mapping's contents were not kept (forced), as warned.
    restored.send_line("x").unwrap();
    restored.expect_line("LOST");
}

/// `crdump --force --leave-running` and `crimg verify` agree on the image:
/// the loader's rules accept it, and the process runs on.
#[test]
fn crimg_verify_accepts_what_a_forced_dump_checked() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut python = start_deleted_mapping(scratch.path());
    let pid = python.pid();
    let out = scratch.path().join("out");
    let mut crdump = bins.crdump_command(pid, &out, true);
    crdump.args(["--force", "--ghost-limit", "1"]);
    let output = cli::run_ok(crdump, LINE_TIMEOUT).unwrap();
    assert!(
        !output.stdout.contains("the loader would refuse"),
        "{}",
        output.stdout
    );
    let image = out.join(format!("task-{pid}.crimg"));
    bins.verify(&image).expect("crimg verify accepts it");
    python.send_line("x").unwrap();
    python.expect_line("alive");
}

/// The `Uid:`, `Gid:`, `Groups:` and `CapEff:` lines of `/proc/PID/status`.
fn ids_of(pid: i32) -> [String; 4] {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["Uid:", "Gid:", "Groups:", "CapEff:"].map(|key| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// A small counter run as root, dumped by root: its image records uid 0
/// and root's capabilities.
fn dumped_root_counter(scratch: &Path) -> (crimg_tests::Binaries, crimg_tests::roundtrip::Dumped) {
    let bins = binaries();
    let args = [
        "--tmpdir",
        scratch.to_str().unwrap(),
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
    ];
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.join("out"));
    (bins, dumped)
}

/// An image that says uid 0 and every capability, but is owned by nobody
/// (who could have written any credentials into it): root running it gets
/// a process with nobody's credentials and no capabilities, and one
/// warning line says so. The same image owned by root restores root.
#[test]
fn a_uid_0_image_owned_by_nobody_runs_as_nobody() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_root_counter(scratch.path());
    let nobody = nix::unistd::User::from_name(NOBODY)
        .ok()
        .flatten()
        .expect("user nobody exists")
        .uid
        .as_raw();
    let nogroup = nix::unistd::Group::from_name(NOGROUP)
        .ok()
        .flatten()
        .expect("group nogroup exists")
        .gid
        .as_raw();
    // The loader opens every file the image names as the task (nobody):
    // the counter's mapped file must be nobody's to read.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mapped = dumped.ready.require("file").unwrap().to_owned();
    fs::set_permissions(&mapped, fs::Permissions::from_mode(0o644)).unwrap();
    let forged = dumped.dump.dir.join("forged.crimg");
    fs::copy(&dumped.dump.image, &forged).unwrap();
    chown(&forged, Some(nobody), Some(nogroup)).unwrap();
    fs::set_permissions(&forged, fs::Permissions::from_mode(0o700)).unwrap();

    let mut restored = bins.restore("restored forged image", &forged).unwrap();
    restored.expect_line("TICK ");
    let [uid, gid, groups, cap_eff] = ids_of(restored.pid());
    assert_eq!(
        (
            uid.as_str(),
            gid.as_str(),
            groups.as_str(),
            cap_eff.as_str()
        ),
        (
            format!("{nobody} {nobody} {nobody} {nobody}").as_str(),
            format!("{nogroup} {nogroup} {nogroup} {nogroup}").as_str(),
            "",
            "0000000000000000"
        ),
        "the restored process's Uid, Gid, Groups, CapEff\n{}",
        restored.stderr_report()
    );
    restored.expect_line("TICK ");
    // Printed before the restore, on another pipe than the ticks.
    let is_lowered =
        |line: &String| line.contains("warning") && line.contains("credentials lowered");
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !restored.stderr_lines().iter().any(is_lowered) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lowered: Vec<String> = restored
        .stderr_lines()
        .iter()
        .filter(|line| is_lowered(line))
        .cloned()
        .collect();
    assert_eq!(
        lowered.len(),
        1,
        "one warning that the credentials were lowered\n{}",
        restored.stderr_report()
    );
    assert!(
        lowered[0].contains(&format!("uid {nobody} gid {nogroup}"))
            && lowered[0].contains("the image says uid 0"),
        "{}",
        lowered[0]
    );
    drop(restored);

    // Owned by root, as crdump wrote it: root's credentials come back.
    let mut restored = bins
        .restore("restored root image", &dumped.dump.image)
        .unwrap();
    restored.expect_line("TICK ");
    let [uid, _, _, cap_eff] = ids_of(restored.pid());
    let [_, _, _, own_cap_eff] = ids_of(std::process::id() as i32);
    assert_eq!(uid, "0 0 0 0", "{}", restored.stderr_report());
    assert_eq!(cap_eff, own_cap_eff, "{}", restored.stderr_report());
    assert!(
        !restored
            .stderr_lines()
            .iter()
            .any(|line| line.contains("credentials lowered")),
        "{}",
        restored.stderr_report()
    );
}

/// A loader that is not root but holds CAP_SETUID and CAP_SETGID (ambient
/// capabilities) would once have given a forged uid-0 image uid 0; and
/// whatever ids it gives, a non-root switch keeps its capabilities, which
/// the image's owner does not have. Refused before any change.
#[test]
fn a_capable_non_root_loader_does_not_hand_its_capabilities_to_an_image() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_root_counter(scratch.path());
    let (nobody, nogroup) = (
        nix::unistd::User::from_name(NOBODY)
            .ok()
            .flatten()
            .expect("user nobody exists")
            .uid
            .as_raw(),
        nix::unistd::Group::from_name(NOGROUP)
            .ok()
            .flatten()
            .expect("group nogroup exists")
            .gid
            .as_raw(),
    );
    // Everything the loader opens must be readable by nobody, so that the
    // credentials are what it stops at.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mapped = dumped.ready.require("file").unwrap().to_owned();
    fs::set_permissions(&mapped, fs::Permissions::from_mode(0o644)).unwrap();
    let forged = scratch.path().join("forged.crimg");
    fs::copy(&dumped.dump.image, &forged).unwrap();
    chown(&forged, Some(nobody), Some(nogroup)).unwrap();
    fs::set_permissions(&forged, fs::Permissions::from_mode(0o700)).unwrap();

    let mut command = Command::new("setpriv");
    command.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOGROUP,
        "--clear-groups",
        "--inh-caps=+setuid,+setgid",
        "--ambient-caps=+setuid,+setgid",
        "--",
    ]);
    command.arg(&bins.loader).arg(&forged);
    let output = cli::run(command, LINE_TIMEOUT).unwrap();
    assert_eq!(output.status.code(), Some(10), "{output:?}");
    let errors: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| !line.contains(": warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", output.stderr);
    assert!(
        errors[0].contains("would keep this process's capabilities"),
        "{}",
        errors[0]
    );
}
