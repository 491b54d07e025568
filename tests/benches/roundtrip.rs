//! How fast crimg dumps and restores, and how big its images are.
//!
//! `cargo bench -p crimg-tests --bench roundtrip` prints one line per
//! figure. Measure release binaries, the ones users run:
//!
//! ```text
//! cargo build --release --workspace &&
//!   CRIMG_BIN_DIR=target/release cargo bench -p crimg-tests --bench roundtrip
//! ```
//!
//! Without `CRIMG_BIN_DIR` the harness takes the binaries of this build
//! profile's directory first, then `target/debug`; the first output line
//! says which were measured. Needs root (crdump ptraces the workloads);
//! otherwise it prints `skipped: ...` and exits 0.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crimg_tests::process::CheckTrigger;
use crimg_tests::{scratch_dir, Binaries, Workload};

/// Setup of 1 GiB takes a while in a debug build.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A check of 1 GiB, a dump or a restore of it.
const SLOW_TIMEOUT: Duration = Duration::from_secs(300);
/// The tick period of the small process.
const TICK_MS: u64 = 10;

const MIB: f64 = 1024.0 * 1024.0;

/// Start a workload and wait for READY, or say why it did not get there.
fn start(name: &str, args: &[&str]) -> Result<Workload, String> {
    let mut workload = Workload::spawn(name, args).map_err(|err| err.to_string())?;
    if let Err(err) = workload.wait_ready(READY_TIMEOUT) {
        return Err(format!("{err}\n{}", workload.stderr_report()));
    }
    Ok(workload)
}

/// Dump `workload` into `out` (crdump kills it, `-v` reports its phases);
/// returns the dump's wall time, the image and crdump's report.
fn dump(
    bins: &Binaries,
    mut workload: Workload,
    out: &Path,
) -> Result<(Duration, std::path::PathBuf, String), String> {
    let pid = workload.pid();
    let mut command = bins.crdump_command(pid, out, false);
    command.arg("--verbose");
    let started = Instant::now();
    let output = crimg_tests::cli::run_ok(command, SLOW_TIMEOUT)
        .map_err(|err| format!("crdump of {}: {err}", workload.name()))?;
    let took = started.elapsed();
    workload
        .wait_exit(SLOW_TIMEOUT)
        .map_err(|err| format!("{} was not killed by crdump: {err}", workload.name()))?;
    let report = output
        .stdout
        .lines()
        .filter(|l| !l.starts_with("crdump:   "))
        .collect::<Vec<_>>()
        .join("\n");
    Ok((took, out.join(format!("task-{pid}.crimg")), report))
}

fn timed_check(workload: &mut Workload) -> Result<Duration, String> {
    let started = Instant::now();
    workload
        .check(CheckTrigger::Stdin, SLOW_TIMEOUT)
        .map_err(|err| format!("{err}\n{}", workload.stderr_report()))?;
    Ok(started.elapsed())
}

/// Rounds of the 1 GiB dump and restore; the figures are their medians
/// (this machine's first touches of fresh memory make single runs noisy).
const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `dump 1 GiB` and `restore 1 GiB`: bigmem with 1 GiB, all written.
fn big_roundtrip(bins: &Binaries) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    let (mut dumps, mut restores, mut warm_restores) = (Vec::new(), Vec::new(), Vec::new());
    let mut written = 0;
    for round in 1..=ROUNDS {
        let scratch = scratch_dir();
        let mut bigmem = start("bigmem", &["--mb", "1024", "--write-pct", "100"])?;
        written = bigmem
            .ready()
            .and_then(|ready| ready.number("written").ok())
            .ok_or("bigmem's READY has no written=")?;
        // What a check costs by itself, to subtract from the restore's figure.
        timed_check(&mut bigmem)?;
        let check_time = timed_check(&mut bigmem)?;
        let (dump_time, image, report) = dump(bins, bigmem, &scratch.path().join("out"))?;

        // The dump writes with O_DIRECT: the first restore reads the image
        // from the disk, the second from the page cache the first filled.
        let mut times = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let mut restored = bins
                .restore("restored bigmem", &image)
                .map_err(|err| err.to_string())?;
            restored
                .check(CheckTrigger::Stdin, SLOW_TIMEOUT)
                .map_err(|err| format!("{err}\n{}", restored.stderr_report()))?;
            times.push(started.elapsed().saturating_sub(check_time));
        }
        let (cold, warm) = (times[0], times[1]);
        lines.push(format!(
            "  round {round}: dump {:.2} s, restore {:.2} s from disk, {:.2} s from the page cache (loader start to PASS minus the check's own {:.2} s)\n    {}",
            dump_time.as_secs_f64(),
            cold.as_secs_f64(),
            warm.as_secs_f64(),
            check_time.as_secs_f64(),
            report.replace('\n', "\n    ").trim_end()
        ));
        restores.push(cold);
        warm_restores.push(warm);
        dumps.push(dump_time);
    }
    let (d, r, w) = (median(dumps), median(restores), median(warm_restores));
    let gbps = |t: Duration| written as f64 / t.as_secs_f64() / 1e9;
    lines.insert(
        0,
        format!(
            "dump 1 GiB: {:.2} s ({:.2} GB/s); restore 1 GiB: {:.2} s from disk ({:.2} GB/s), {:.2} s from the page cache ({:.2} GB/s); medians of {ROUNDS}, {:.0} MiB written by the workload",
            d.as_secs_f64(),
            gbps(d),
            r.as_secs_f64(),
            gbps(r),
            w.as_secs_f64(),
            gbps(w),
            written as f64 / MIB
        ),
    );
    Ok(lines)
}

/// `restore bash loop`: from spawning the loader to the restored script's
/// answer to a check, minus what the check costs the original.
fn small_restore(bins: &Binaries) -> Result<Vec<String>, String> {
    let scratch = scratch_dir();
    let interval = TICK_MS.to_string();
    let mut script = start("loop.sh", &["--interval-ms", &interval])?;
    script
        .wait_line("TICK 3", READY_TIMEOUT)
        .map_err(|err| err.to_string())?;
    timed_check(&mut script)?;
    let check_time = timed_check(&mut script)?;
    let (_, image, _) = dump(bins, script, &scratch.path().join("out"))?;
    let image_size = fs::metadata(&image).map_err(|err| err.to_string())?.len();
    let started = Instant::now();
    let mut restored = bins
        .restore("restored loop.sh", &image)
        .map_err(|err| err.to_string())?;
    restored
        .check(CheckTrigger::Stdin, SLOW_TIMEOUT)
        .map_err(|err| format!("{err}\n{}", restored.stderr_report()))?;
    let took = started.elapsed().saturating_sub(check_time);
    Ok(vec![format!(
        "restore bash loop.sh ({:.1} MiB image): {:.1} ms (loader start to PASS minus the check's own {:.1} ms)",
        image_size as f64 / MIB,
        took.as_secs_f64() * 1e3,
        check_time.as_secs_f64() * 1e3
    )])
}

/// `image size`: bigmem with 256 MiB, half written; only written pages
/// should be stored.
fn image_size(bins: &Binaries) -> Result<Vec<String>, String> {
    let scratch = scratch_dir();
    let bigmem = start("bigmem", &["--mb", "256", "--write-pct", "50"])?;
    let written = bigmem
        .ready()
        .and_then(|ready| ready.number("written").ok())
        .ok_or("bigmem's READY has no written=")?;
    let (_, image, _) = dump(bins, bigmem, &scratch.path().join("out"))?;
    let size = fs::metadata(&image).map_err(|err| err.to_string())?.len();
    Ok(vec![format!(
        "image of 256 MiB, 50% written: {:.1} MiB for {:.1} MiB written ({:.3}x, {:+.1} MiB overhead)",
        size as f64 / MIB,
        written as f64 / MIB,
        size as f64 / written as f64,
        (size as f64 - written as f64) / MIB
    )])
}

/// Measures something; its printed lines, or why it could not.
type Figure = fn(&Binaries) -> Result<Vec<String>, String>;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or
    // `--all-targets`) runs this without it, and should not spend a minute
    // moving gigabytes.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "roundtrip: not run (measure with `cargo bench -p crimg-tests --bench roundtrip`)"
        );
        return ExitCode::SUCCESS;
    }
    if !crimg_tests::is_root() {
        crimg_tests::privilege::report_skip("needs root (crdump ptraces the workloads)");
        return ExitCode::SUCCESS;
    }
    let bins = match crimg_tests::paths::try_binaries() {
        Ok(bins) => bins,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let profile = if bins.crdump.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug (slow; for real figures: cargo build --release --workspace && CRIMG_BIN_DIR=target/release cargo bench -p crimg-tests --bench roundtrip)"
    };
    println!(
        "binaries: {} {} {} ({profile})",
        bins.crdump.display(),
        bins.crimg.display(),
        bins.loader.display()
    );

    let mut failed = 0;
    let figures: [(&str, Figure); 3] = [
        ("dump and restore 1 GiB", big_roundtrip),
        ("restore bash loop.sh", small_restore),
        ("image size", image_size),
    ];
    for (name, figure) in figures {
        match figure(&bins) {
            Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
            Err(err) => {
                failed += 1;
                println!("{name}: FAILED: {err}");
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
