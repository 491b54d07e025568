//! Transparent huge pages survive a restore: an area advised
//! `MADV_HUGEPAGE` and written fully (`workloads/thp_area.c`) is backed by
//! huge pages (`AnonHugePages` in smaps) about as much after the restore
//! as before the dump. The loader gives the advice before it fills the
//! pages; given after, every page came back as a 4 KiB page.

use std::fs;

use crimg_tests::cli::CLI_TIMEOUT;
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const AREA_MB: u64 = 512;

/// The `AnonHugePages` of the area of `pid` starting at `addr` (`0x…`),
/// in KiB.
fn anon_huge_kib(pid: i32, addr: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/smaps: {err}"));
    let start = format!("{}-", addr.trim_start_matches("0x"));
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "no area of {pid} starts at {addr}");
    lines
        .take_while(|l| !l.starts_with("VmFlags:"))
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no AnonHugePages line for the area at {addr}"))
}

#[test]
fn thp_area_comes_back_with_huge_pages() {
    crimg_tests::skip_unless_root!();
    let enabled = fs::read_to_string(THP_ENABLED).unwrap_or_default();
    if enabled.is_empty() || enabled.contains("[never]") {
        eprintln!("skipped: transparent huge pages are off here ({THP_ENABLED}: {enabled:?})");
        return;
    }
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("thp_area", ["--mb", &AREA_MB.to_string()]);
    let ready = victim.ready().cloned().expect("READY");
    let addr = ready.require("addr").unwrap().to_owned();
    let before = anon_huge_kib(victim.pid(), &addr);
    let size_kib = AREA_MB * 1024;
    if before < size_kib / 2 {
        // The kernel could not give the original its huge pages (memory
        // too fragmented for compaction): nothing to compare with.
        eprintln!(
            "skipped: the original got only {before} KiB of huge pages for its {size_kib} KiB area"
        );
        return;
    }
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let mut restored = bins
        .restore("restored thp_area", &dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    // The restore reads 512 MiB of the image, from the disk when the
    // dump's writes left nothing cached: a busy machine needs more than
    // the usual line timeout.
    let pass = restored
        .check(CheckTrigger::Stdin, CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}\n{}", restored.stderr_report()));
    assert_eq!(pass.get("sum"), ready.get("sum"), "{}", pass.line());
    let after = anon_huge_kib(restored.pid(), &addr);
    assert!(
        after * 10 >= before * 9,
        "AnonHugePages of the {size_kib} KiB area: {before} KiB before the dump, {after} KiB after the restore"
    );
}
