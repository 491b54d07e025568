//! Shared memory objects and deleted files round-trip
//! (`workloads/shmem.c`): memfds with their names, seals and contents, all
//! views of one object mapped from one restored memfd (a write through
//! one shows in the others), shared anonymous memory and its mremap'd
//! views, deleted files mapped shared and private; each object's pages
//! stored once. Also the `--ghost-limit` refusal.

use std::path::Path;

use crimg_tests::process::{CheckTrigger, Workload, LINE_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

/// Start the shmem victim with `args`, check it, dump it into `out`,
/// restore it and check it again.
fn round_trip(out: &Path, args: &[&str]) {
    let bins = binaries();
    let mut victim = Workload::start("shmem", args);
    let before = victim.expect_pass(CheckTrigger::Stdin);
    let dumped = dump_and_kill(&bins, victim, out);
    let mut restored = bins
        .restore("restored shmem", &dumped.dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    let after = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(
        after.number("checks"),
        before.number("checks"),
        "the restored victim made as many checks"
    );
    // And once more: the restored objects are as usable as the originals.
    restored.expect_pass(CheckTrigger::Signal);
}

#[test]
fn memfds_shared_anonymous_memory_and_deleted_files_round_trip() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let gone = scratch.path().join("deleted file");
    round_trip(
        &scratch.path().join("out"),
        &[
            "--memfd",
            "--memfd-sealed",
            "--memfd-future",
            "--memfd-private",
            "--shared-anon",
            "--deleted",
            gone.to_str().unwrap(),
        ],
    );
}

/// The same with the fds kept open: a memfd's fd and its two areas are one
/// restored memfd (a write through the fd shows in both), with its name
/// and seals; a write-sealed one refuses writes through its fd; the
/// deleted file's fd is at its offset, read-write, on the same file as its
/// shared area.
#[test]
fn fds_on_memfds_and_deleted_files_are_the_same_objects_as_their_areas() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let gone = scratch.path().join("deleted file");
    round_trip(
        &scratch.path().join("out"),
        &[
            "--keep-fds",
            "--memfd-fd-only",
            "--memfd",
            "--memfd-sealed",
            "--memfd-future",
            "--shared-anon",
            "--deleted",
            gone.to_str().unwrap(),
        ],
    );
}

/// Pages stored in the image for the areas of each shared memory object
/// (`VmaRecord::object`), by object, and the number of areas of each.
fn stored_by_object(image: &Path) -> Vec<(u32, u64, usize)> {
    use image_format::Image;
    let bytes = std::fs::read(image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let mut by: Vec<(u32, u64, usize)> = Vec::new();
    for v in img.vmas().unwrap() {
        if v.object == 0 {
            continue;
        }
        let stored = img.stored_in(v.start, v.end);
        match by.iter_mut().find(|(o, _, _)| *o == v.object) {
            Some(e) => {
                e.1 += stored;
                e.2 += 1;
            }
            None => by.push((v.object, stored, 1)),
        }
    }
    by
}

/// Two views of a 5-page memfd, 4-page shared anonymous memory and its
/// view, 2 pages of /dev/zero and its view: each object's pages are kept
/// once, in the image's segments of its first view.
#[test]
fn every_object_mapped_twice_is_stored_once() {
    skip_unless_root!();
    let scratch = scratch_dir();
    let bins = binaries();
    let mut victim = Workload::start("shmem", ["--memfd", "--shared-anon"]);
    victim.expect_pass(CheckTrigger::Stdin);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut by = stored_by_object(&dumped.dump.image);
    by.sort_by_key(|&(_, stored, _)| stored);
    println!("stored pages and areas per object: {by:?}");
    let stored: Vec<(u64, usize)> = by.iter().map(|&(_, s, n)| (s, n)).collect();
    assert_eq!(
        stored,
        [(2, 2), (4, 2), (5, 2)],
        "(pages stored, areas) of /dev/zero, the anonymous memory and the memfd"
    );
    // `crimg info` lists the objects.
    let info: serde_json::Value =
        serde_json::from_str(&bins.info_json(&dumped.dump.image).unwrap()).unwrap();
    let names: Vec<(&str, &str)> = info["shmem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["kind"].as_str().unwrap(), o["name"].as_str().unwrap()))
        .collect();
    assert!(names.contains(&("memfd", "crimg-shmem-test")), "{names:?}");
    assert!(names.contains(&("shared-anon", "dev/zero")), "{names:?}");
    let mut restored = bins
        .restore("restored shmem", &dumped.dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn a_deleted_file_above_the_ghost_limit_is_refused_by_name() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let gone = scratch.path().join("big deleted");
    let mut victim = Workload::start("shmem", ["--deleted", gone.to_str().unwrap()]);
    victim.expect_pass(CheckTrigger::Stdin);
    let mut command = bins.crdump_command(victim.pid(), &scratch.path().join("out"), false);
    command.args(["--ghost-limit", "4096"]);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "crdump succeeded: {stderr}");
    assert!(
        stderr.contains("big deleted")
            && stderr.contains("12388 bytes")
            && stderr.contains("ghost limit of 4096 bytes"),
        "{stderr}"
    );
    // Refused before anything was touched: the victim runs on, intact.
    victim.expect_pass(CheckTrigger::Stdin);
}

/// A restored victim dumps and restores again: its objects (memfds now,
/// for the shared anonymous memory too, and the unlinked files) are found
/// and made again the same way.
#[test]
fn a_restored_victim_round_trips_again() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let gone = scratch.path().join("deleted again");
    let args = [
        "--keep-fds",
        "--memfd",
        "--memfd-sealed",
        "--memfd-future",
        "--shared-anon",
        "--deleted",
        gone.to_str().unwrap(),
    ];
    let mut victim = Workload::start("shmem", args);
    let before = victim.expect_pass(CheckTrigger::Stdin);
    let first = dump_and_kill(&bins, victim, &scratch.path().join("first"));
    let mut restored = bins
        .restore("restored shmem", &first.dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_pass(CheckTrigger::Stdin);
    let second = bins
        .dump(restored.pid(), &scratch.path().join("second"), false)
        .unwrap_or_else(|e| panic!("second dump: {e}"));
    restored
        .wait_exit(LINE_TIMEOUT)
        .expect("the second crdump killed the restored victim");
    let mut again = bins
        .restore("shmem restored twice", &second.image)
        .unwrap_or_else(|e| panic!("{e}"));
    let after = again.expect_pass(CheckTrigger::Stdin);
    assert_eq!(after.number("checks"), before.number("checks"));
}
