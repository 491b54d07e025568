//! The eager fill's copies (`UFFDIO_COPY` through a userfaultfd stage 1
//! makes, see `binfmt-loader/src/sys/uffd.rs`) leave nothing behind: a
//! restored process with tens of MiB of anonymous memory has its memory
//! back, exactly its own fds (no userfaultfd), the same maps (the image's
//! source mapping is gone) and the same VmFlags (no area still registered:
//! `um` in smaps). `crimg run --eager` is that restore (`--lazy` is
//! tested in `restore_lazy.rs`).

use crimg_tests::inspect::fds_of;
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::{assert_same_maps, dump_and_kill, maps_of};
use crimg_tests::smaps::{assert_same_vm_flags, vm_flags_of};
use crimg_tests::{binaries, scratch_dir, Workload};

#[test]
fn copied_fill_leaves_no_fd_mapping_or_registration() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("bigmem", ["--mb", "64", "--write-pct", "100"]);
    let ready = victim.ready().cloned().expect("READY");
    let pid = victim.pid();
    let (maps, flags) = (maps_of(pid), vm_flags_of(pid));
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut eager = bins.crimg_command(["run", "--eager"]);
    eager.arg(&dumped.dump.image);
    let mut restored =
        Workload::spawn_command("restored bigmem", eager).unwrap_or_else(|err| panic!("{err}"));
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    let rpid = restored.pid();
    let fds = fds_of(rpid);
    assert!(
        fds.iter().all(|(_, t)| !t.contains("userfaultfd")),
        "the restored process holds a userfaultfd: {fds:?}"
    );
    // The restored process got its stdio from the loader: the same fd
    // numbers as the original, nothing more.
    let numbers: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 1, 2], "{fds:?}");
    assert_same_maps(&maps, &maps_of(rpid));
    assert_same_vm_flags(&flags, &vm_flags_of(rpid));
}
