//! A `--leave-running --snapshot` dump whose snapshot cannot be made falls
//! back to a frozen dump, and that frozen dump reads and checks everything
//! frozen, as one without `--snapshot` does: the snapshot dump had read the
//! areas before the freeze, to check them (and to read the memory policies)
//! in the snapshot child, which the fallback does not have.

use crimg_tests::cli;
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::as_nobody;
use crimg_tests::{binaries, paths::workload_path, scratch_dir, skip_unless_root, Workload};

/// An area with a memory policy of its own, in a process whose clone the
/// kernel refuses (RLIMIT_NPROC 1 for nobody): the fallback refuses the
/// policy by name, as the frozen dump does, and the process runs on.
#[test]
fn a_fallback_from_a_snapshot_still_refuses_a_memory_policy() {
    skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut command = as_nobody();
    command.arg(workload_path("vmflags")).arg("--mbind");
    let mut victim = Workload::spawn_command("vmflags", command).unwrap();
    if let Err(err) = victim.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", victim.stderr_report());
    }
    let pid = victim.pid();
    // Lowered once it runs (by nobody: another user's limits need
    // CAP_SYS_RESOURCE, which these machines withhold): the snapshot's
    // injected clone is then refused (EAGAIN), as nobody has a process.
    let lowered = as_nobody()
        .args(["prlimit", &format!("--pid={pid}"), "--nproc=1:1"])
        .status()
        .unwrap();
    assert!(lowered.success());
    let out = scratch.path().join("out");
    let mut dump = bins.crdump_command(pid, &out, true);
    dump.arg("--snapshot");
    let output = cli::run(dump, LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert!(
        !output.status.success(),
        "crdump dumped an mbind area when its snapshot fell back:\n{}{}",
        output.stdout,
        output.stderr
    );
    assert!(
        output.stderr.contains("mbind") && output.stderr.contains("bind:0"),
        "{}",
        output.stderr
    );
    assert!(!out.exists(), "a refused dump left {}", out.display());
    victim.expect_pass(CheckTrigger::Stdin);
}
