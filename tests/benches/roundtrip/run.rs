//! Starting a workload, dumping it with `crdump -v`, and restoring it
//! until it says it resumed and touched all its memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crimg_tests::facts::Facts;
use crimg_tests::tree_rounds::stopped_for;
use crimg_tests::{Binaries, Workload};

/// Setup of 4 GiB, or a dump or restore of it, in a debug build.
pub const SLOW: Duration = Duration::from_secs(300);

/// Start workload `name` and wait for READY, or say why it did not get there.
pub fn start(name: &str, args: &[&str]) -> Result<Workload, String> {
    let workload = Workload::spawn(name, args).map_err(|err| err.to_string())?;
    ready(workload)
}

/// Start a python workload with interpreter `python`.
pub fn start_python(python: &str, name: &str, args: &[&str]) -> Result<Workload, String> {
    let mut command = Command::new(python);
    command
        .arg(crimg_tests::paths::try_workload_path(name).map_err(|e| e.to_string())?)
        .args(args);
    ready(Workload::spawn_command(name, command).map_err(|err| err.to_string())?)
}

fn ready(mut workload: Workload) -> Result<Workload, String> {
    if let Err(err) = workload.wait_ready(SLOW) {
        return Err(format!("{err}\n{}", workload.stderr_report()));
    }
    Ok(workload)
}

/// A finished `crdump -v`.
pub struct Dumped {
    pub took: Duration,
    /// "... stopped for N ms".
    pub frozen: Option<Duration>,
    /// A copy-on-write `--leave-running` dump's "stopped again N ms" (to
    /// reap its snapshot child).
    pub stopped_again: Option<Duration>,
    /// What `crdump -v` said of its snapshot (`snapshot by ...`), if any.
    pub snapshot_method: Option<String>,
    pub image: PathBuf,
}

/// How a dump leaves its process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Killed (crdump's default).
    Killed,
    /// `--leave-running`: frozen for the whole dump.
    Running,
    /// `--leave-running --snapshot`: frozen until a copy-on-write snapshot
    /// is made.
    RunningFromSnapshot,
}

/// `crdump -v --pid PID -o out [--leave-running [--snapshot]]`, timed from
/// spawn to exit.
pub fn dump(bins: &Binaries, pid: i32, out: &Path, leave: Leave) -> Result<Dumped, String> {
    dump_over(bins, pid, out, leave, Series::None)
}

/// Where a dump is in a series of incremental dumps.
#[derive(Clone, Copy)]
pub enum Series<'a> {
    /// Not in one.
    None,
    /// The first (`crdump --pre-dump`).
    First,
    /// Over the dump in this directory (`crdump --parent`).
    Over(&'a Path),
}

/// [`dump`], in a series of incremental dumps.
pub fn dump_over(
    bins: &Binaries,
    pid: i32,
    out: &Path,
    leave: Leave,
    series: Series<'_>,
) -> Result<Dumped, String> {
    let mut command = bins.crdump_command(pid, out, leave != Leave::Killed);
    match series {
        Series::None => {}
        Series::First => {
            command.arg("--pre-dump");
        }
        Series::Over(parent) => {
            command.arg("--parent").arg(parent);
        }
    }
    if leave == Leave::RunningFromSnapshot {
        command.arg("--snapshot");
    }
    command.arg("--verbose");
    let started = Instant::now();
    let output = crimg_tests::cli::run_ok(command, SLOW)
        .map_err(|err| format!("crdump of pid {pid}: {err}"))?;
    Ok(Dumped {
        took: started.elapsed(),
        frozen: stopped_for(&output.stdout),
        stopped_again: output
            .stdout
            .split("stopped again ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        snapshot_method: output
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("crdump: snapshot by "))
            .map(|m| m.split(" (").next().unwrap_or(m).to_owned()),
        image: out.join(format!("task-{pid}.crimg")),
    })
}

/// A restore's times from the spawn of the restoring command.
pub struct Restored {
    /// Until the workload's first clock reading after the read() it was
    /// dumped in returned.
    pub first: Duration,
    /// Until it had touched every page it wrote.
    pub populated: Duration,
    /// `AnonHugePages` of the restored process, once populated.
    pub anon_huge: u64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn stamp(line: &str) -> Result<u128, String> {
    Facts::parse(line)
        .get("t")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("no t= in {line:?}"))
}

/// Run `command` (the loader, or `crimg run ...`, on an image of a bench
/// workload), write `resume` to its stdin at once, and wait for the
/// workload's RESUMED, POPULATED and PASS lines. The clock of both sides is
/// CLOCK_REALTIME, read by this process right before the spawn and by the
/// workload right after its read() returns and after its last touch.
pub fn restore(name: &str, command: Command) -> Result<Restored, String> {
    let t0 = now_ns();
    let mut restored = Workload::spawn_command(name, command).map_err(|e| e.to_string())?;
    let fail = |restored: &mut Workload, e: String| format!("{e}\n{}", restored.stderr_report());
    if let Err(e) = restored.send_line("resume") {
        return Err(fail(&mut restored, e.to_string()));
    }
    let line = |restored: &mut Workload, prefix: &str| {
        restored
            .wait_line(prefix, SLOW)
            .map_err(|e| fail(restored, e.to_string()))
    };
    let resumed = stamp(&line(&mut restored, "RESUMED")?)?;
    let populated = stamp(&line(&mut restored, "POPULATED")?)?;
    let verdict = restored
        .stdout()
        .wait_for_any(&["PASS ", "FAIL "], SLOW)
        .map_err(|e| e.to_string())?;
    let anon_huge = anon_huge_pages(restored.pid());
    if verdict.starts_with("FAIL") {
        return Err(fail(
            &mut restored,
            format!("the restored {name}: {verdict}"),
        ));
    }
    let since = |t: u128| Duration::from_nanos(u64::try_from(t.saturating_sub(t0)).unwrap_or(0));
    Ok(Restored {
        first: since(resumed),
        populated: since(populated),
        anon_huge,
    })
}

/// `AnonHugePages` of `pid` in bytes (0 if unknown).
pub fn anon_huge_pages(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
