//! Lazy restores (`crimg run --lazy`) as tests drive them: the restored
//! `lazy_mem`-style workload, a command it runs at its first instruction,
//! and whether the page server still has areas registered.

use std::path::Path;
use std::time::Duration;

use crate::cli::CLI_TIMEOUT;
use crate::roundtrip::Dumped;
use crate::smaps::vm_flags_of;
use crate::untouched::wait_until;
use crate::{Binaries, Workload};

/// `crimg run --lazy IMAGE` of `dumped`, as a workload.
pub fn run_lazy(bins: &Binaries, dumped: &Dumped, name: &str) -> Workload {
    run_lazy_image(bins, &dumped.dump.image, name)
}

/// `crimg run --lazy IMAGE`, as a workload.
pub fn run_lazy_image(bins: &Binaries, image: &Path, name: &str) -> Workload {
    let mut lazy = bins.crimg_command(["run", "--lazy"]);
    lazy.arg(image);
    Workload::spawn_command(name, lazy).unwrap_or_else(|err| panic!("{err}"))
}

/// Send `command` to the restored workload (sent before it resumes, it
/// runs at the first instruction, while the fill is young) and expect its
/// `PASS command ...` line, which is returned.
pub fn expect_pass_of(restored: &mut Workload, command: &str) -> String {
    restored
        .send_line(command)
        .unwrap_or_else(|err| panic!("{err}"));
    let line = restored
        .stdout()
        .wait_for_any(&["PASS ", "FAIL "], CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{command}: {err}\n{}", restored.stderr_report()));
    assert!(
        line.starts_with(&format!("PASS {command} ")),
        "{line}\n{}",
        restored.stderr_report()
    );
    line
}

/// The areas of `pid` still registered with a userfaultfd (`um`: missing
/// mode, the page server's), by their smaps header line.
pub fn registered_areas(pid: i32) -> Vec<String> {
    vm_flags_of(pid)
        .into_iter()
        .filter(|a| a.flags.iter().any(|f| f == "um"))
        .map(|a| a.header)
        .collect()
}

/// Wait until the page server is done with `pid`: no area registered.
pub fn wait_fill_done(pid: i32) {
    let done = wait_until(Duration::from_secs(30), || registered_areas(pid).is_empty());
    assert!(
        done,
        "areas of {pid} still registered after 30 s: {:?}",
        registered_areas(pid)
    );
}

/// Wait for `restored` to be killed by its page server for a checksum
/// mismatch found after the resume; its stderr report, which says so.
pub fn expect_killed_for_a_mismatch(restored: &mut Workload) -> String {
    let status = restored
        .wait_exit(CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    let report = restored.stderr_report();
    assert!(!status.success(), "{status:?}: {report}");
    assert!(
        report.contains("lazy restore: checksum mismatch in segment")
            && report.contains("was killed"),
        "not killed by the page server for a mismatch: {report}"
    );
    report
}
