//! How fast crimg dumps and restores, and how big its images are, for the
//! workloads of issue 9, each figure beside a ceiling measured in the same
//! run.
//!
//! ```text
//! cargo build --release --workspace &&
//!   CRIMG_BIN_DIR=target/release cargo bench -p crimg-tests --bench roundtrip [-- --only tiny,1g --rounds 5]
//! ```
//!
//! It starts its own workloads (`--only` takes their names, comma
//! separated; `--rounds N`, default 5, sets the rounds of each) and prints
//! for each the median over the rounds of:
//!
//! - dump: `crdump -v --pid P -o DIR` from spawn to exit (the process
//!   frozen, its pages written and synced, the process killed);
//! - frozen: what that crdump prints as "process stopped for N ms"; and
//!   the same for a copy-on-write `--leave-running` dump once crdump has one;
//! - first instruction: from the spawn of the restoring command (the
//!   loader, or `crimg run --lazy`/`--eager` when built) to the restored
//!   workload's own CLOCK_REALTIME reading taken by its first statement
//!   after the read() of stdin it was dumped in returns (the benchmark
//!   writes its line there right after the spawn);
//! - fully populated: to its reading after it touched every page it wrote
//!   (C: one word per page; python3: a read of every private writable area
//!   through /proc/self/mem; bash: an expansion of all its variables);
//! - image size over written memory (the pages a dump stores by the
//!   dumper's own rule, counted right before the dump);
//!
//! and each time as a ratio to its ceiling (see `roundtrip/ceiling.rs`):
//! `process_vm_readv` + write + fsync of the same pages for the dump
//! figures, `pread` of the image into fresh memory for the restore figures,
//! in the page-cache state the restore meets (as the dump left it; when that
//! is "not cached", also again with the image in the page cache).
//!
//! Without `CRIMG_BIN_DIR` the harness takes the binaries of this build
//! profile's directory first, then `target/debug`; the first output line
//! says which were measured. Needs root (crdump ptraces the workloads);
//! otherwise it prints `skipped: ...` and exits 0.

#[path = "roundtrip/ceiling.rs"]
mod ceiling;
#[path = "roundtrip/criu.rs"]
mod criu;
#[path = "roundtrip/figures.rs"]
mod figures;
#[path = "roundtrip/modes.rs"]
mod modes;
#[path = "roundtrip/run.rs"]
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crimg_tests::tree_rounds::Pipeline;
use crimg_tests::{scratch_dir, Binaries, Workload};

use ceiling::{Io, Pages};
use figures::{against, mib, secs, Figures};
use modes::Modes;

/// What a workload is.
#[derive(Clone, Copy)]
enum Kind {
    /// One process: a bench workload and its arguments.
    Single(&'static str, &'static [&'static str]),
    /// The 4-process shell pipeline, restored by crrestore-tree.
    Pipeline,
    /// 10 `--leave-running` dumps of 1 GiB, 10 MiB written between each.
    Series,
}

struct Spec {
    name: &'static str,
    what: &'static str,
    kind: Kind,
}

const GIB_ARGS: &[&str] = &["--mb", "1024"];

const WORKLOADS: &[Spec] = &[
    Spec {
        name: "tiny",
        what: "C, 1 MiB written (bench_mem --mb 1)",
        kind: Kind::Single("bench_mem", &["--mb", "1"]),
    },
    Spec {
        name: "bash",
        what: "bash with two 1000-entry arrays (bench_sh.sh)",
        kind: Kind::Single("bench_sh.sh", &[]),
    },
    Spec {
        name: "python",
        what: "python3 with 14 stdlib modules (bench_py.py)",
        kind: Kind::Single("bench_py.py", &[]),
    },
    Spec {
        name: "numpy",
        what: "python3 with numpy and a 200 MB int64 array (bench_py.py --numpy-mb 200)",
        kind: Kind::Single("bench_py.py", &["--numpy-mb", "200"]),
    },
    Spec {
        name: "64m",
        what: "C, 64 MiB written (bench_mem --mb 64)",
        kind: Kind::Single("bench_mem", &["--mb", "64"]),
    },
    Spec {
        name: "1g",
        what: "C, 1 GiB written (bench_mem --mb 1024)",
        kind: Kind::Single("bench_mem", GIB_ARGS),
    },
    Spec {
        name: "4g",
        what: "C, 4 GiB written (bench_mem --mb 4096)",
        kind: Kind::Single("bench_mem", &["--mb", "4096"]),
    },
    Spec {
        name: "asan",
        what: "ASan-like: 32 MiB written one page apart in a 16 TiB MAP_NORESERVE reservation (bench_mem --reserve-gib 16384 --mb 32 --stride-pages 2)",
        kind: Kind::Single(
            "bench_mem",
            &["--reserve-gib", "16384", "--mb", "32", "--stride-pages", "2"],
        ),
    },
    Spec {
        name: "thp",
        what: "C, 512 MiB MADV_HUGEPAGE area written (bench_mem --mb 512 --thp)",
        kind: Kind::Single("bench_mem", &["--mb", "512", "--thp"]),
    },
    Spec {
        name: "pipeline",
        what: "4-process pipeline sh -c 'while ...; echo $i; sleep 0.02; done | cat | cat > LOG', dumped and restored as a tree (crrestore-tree)",
        kind: Kind::Pipeline,
    },
    Spec {
        name: "series",
        what: "periodic checkpoints: 10 dumps of a 1 GiB process (bench_mem --mb 1024) writing 10 MiB between each",
        kind: Kind::Series,
    },
];

/// What the rounds need.
struct Bench {
    bins: Binaries,
    modes: Modes,
    rounds: usize,
}

/// Why a workload cannot run here, if it cannot.
fn unmet_need(spec: &Spec) -> Option<String> {
    if let Kind::Single(_, args) = spec.kind {
        if args.contains(&"--numpy-mb") && python_with_numpy().is_none() {
            return Some(
                "no numpy (apt-get install -y python3-numpy; tools/test.sh installs it)".into(),
            );
        }
        if args == ["--mb", "4096"] {
            // The workload, its image in the page cache and the restore
            // ceiling's copy.
            let available = meminfo("MemAvailable:").unwrap_or(0);
            if available < 13 << 30 {
                return Some(format!(
                    "needs 13 GiB of available memory, {} here",
                    mib(available as f64)
                ));
            }
        }
    }
    None
}

/// The first of `python3` (on PATH) and `/usr/bin/python3` (where the
/// distribution's python3-numpy goes, if PATH has another) that imports
/// numpy.
fn python_with_numpy() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Start the workload of a round.
fn start(program: &str, args: &[&str]) -> Result<Workload, String> {
    if !program.ends_with(".py") {
        return run::start(program, args);
    }
    let python = if args.contains(&"--numpy-mb") {
        python_with_numpy().ok_or("no python3 with numpy")?
    } else {
        "python3"
    };
    run::start_python(python, program, args)
}

fn meminfo(key: &str) -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crimg"))
                .collect()
        })
        .unwrap_or_default();
    images.sort();
    images
}

fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// From this size on, the ceilings go through O_DIRECT only: on these
/// machines a buffered write and fsync, or a buffered read of a file not
/// cached, of a GiB takes 2-8 s against O_DIRECT's 1.2-1.7 s, which would
/// only lengthen the run.
const DIRECT_ONLY_FROM: u64 = 1 << 30;

/// The dump ceiling both ways (through the page cache and O_DIRECT); the
/// faster one is the ceiling.
fn dump_ceilings(f: &mut Figures, processes: &[Pages], dir: &Path) -> Result<(), String> {
    let direct = ceiling::dump_ceiling(processes, dir, Io::Direct)?;
    f.time("dump_ceiling_direct", direct);
    let bytes: u64 = processes.iter().map(Pages::bytes).sum();
    if bytes >= DIRECT_ONLY_FROM {
        f.time("dump_ceiling", direct);
        return Ok(());
    }
    let buffered = ceiling::dump_ceiling(processes, dir, Io::Buffered)?;
    f.time("dump_ceiling_buffered", buffered);
    f.time("dump_ceiling", buffered.min(direct));
    Ok(())
}

/// The restore ceiling under `key`: for an image not in the page cache the
/// faster of a buffered and an O_DIRECT pread (O_DIRECT only from 1 GiB
/// on), each from a dropped cache, which is dropped again after; for a
/// cached one a buffered pread.
fn restore_ceilings(
    f: &mut Figures,
    images: &[PathBuf],
    cold: bool,
    key: &'static str,
) -> Result<(), String> {
    if !cold {
        f.time(key, ceiling::restore_ceiling(images, Io::Buffered)?);
        return Ok(());
    }
    ceiling::drop_cached(images)?;
    let direct = ceiling::restore_ceiling(images, Io::Direct)?;
    f.time("restore_ceiling_direct", direct);
    if total_size(images) >= DIRECT_ONLY_FROM {
        f.time(key, direct);
        return Ok(());
    }
    let buffered = ceiling::restore_ceiling(images, Io::Buffered)?;
    ceiling::drop_cached(images)?;
    f.time("restore_ceiling_buffered", buffered);
    f.time(key, buffered.min(direct));
    Ok(())
}

/// The restore ceiling and the restores of `images` in the page-cache
/// state the dump left; when that was "not cached", again from the page
/// cache. `restore` runs one restore with the mode flag given (None: the
/// loader itself), recording its figures under the keys prefixed `key`.
fn restores(
    bench: &Bench,
    f: &mut Figures,
    images: &[PathBuf],
    mut restore: impl FnMut(Option<&str>, &mut Figures, &'static str) -> Result<(), String>,
) -> Result<(), String> {
    let share = ceiling::cached_share(images);
    f.add("cached", share.unwrap_or(-1.0));
    let cold = share.is_some_and(|s| s < 0.5);
    restore_ceilings(f, images, cold, "restore_ceiling")?;
    let modes = [
        (None, true, "default"),
        (Some("--eager"), bench.modes.eager, "eager"),
        (Some("--lazy"), bench.modes.lazy, "lazy"),
    ];
    for (flag, built, key) in modes {
        if built {
            if cold {
                ceiling::drop_cached(images)?;
            }
            restore(flag, f, key)?;
        }
    }
    if cold {
        // Read through the page cache (the loader may read around it).
        ceiling::restore_ceiling(images, Io::Buffered)?;
        restore_ceilings(f, images, false, "warm_ceiling")?;
        restore(None, f, "warm")?;
    }
    Ok(())
}

fn record_restore(f: &mut Figures, key: &'static str, r: &run::Restored) {
    let (first, populated, huge) = match key {
        "default" => ("first", "populated", "huge_after"),
        "eager" => ("eager_first", "eager_populated", "eager_huge"),
        "lazy" => ("lazy_first", "lazy_populated", "lazy_huge"),
        _ => ("warm_first", "warm_populated", "warm_huge"),
    };
    f.time(first, r.first);
    f.time(populated, r.populated);
    f.add(huge, r.anon_huge as f64);
}

/// The command restoring `image` in mode `flag`.
fn restore_command(bins: &Binaries, image: &Path, flag: Option<&str>) -> std::process::Command {
    match flag {
        None => bins.loader_command(image),
        Some(flag) => {
            let mut command = bins.crimg_command(["run", flag]);
            command.arg(image);
            command
        }
    }
}

/// One round of a single-process workload.
fn single_round(
    bench: &Bench,
    f: &mut Figures,
    program: &str,
    args: &[&str],
) -> Result<(), String> {
    let scratch = scratch_dir();
    let mut workload = start(program, args)?;
    let pid = workload.pid();
    let pages = ceiling::stored_pages(pid)?;
    f.add("written", pages.bytes() as f64);
    f.add("huge_before", run::anon_huge_pages(pid) as f64);
    dump_ceilings(f, &[pages], scratch.path())?;
    if bench.modes.cow {
        let out = scratch.path().join("left-running");
        let d = run::dump(&bench.bins, pid, &out, run::Leave::RunningFromSnapshot)?;
        f.time("cow_dump", d.took);
        if let Some(frozen) = d.frozen {
            f.time("cow_frozen", frozen);
        }
        if let Some(again) = d.stopped_again {
            f.time("cow_again", again);
        }
        if let Some(method) = &d.snapshot_method {
            let protected = method.contains("write-protection");
            f.add("cow_protected", if protected { 1.0 } else { 0.0 });
        }
        let _ = fs::remove_dir_all(&out);
    }
    let out = scratch.path().join("out");
    let d = run::dump(&bench.bins, pid, &out, run::Leave::Killed)?;
    workload
        .wait_exit(run::SLOW)
        .map_err(|e| format!("{program} was not killed by crdump: {e}"))?;
    f.time("dump", d.took);
    if let Some(frozen) = d.frozen {
        f.time("frozen", frozen);
    }
    let images = vec![d.image.clone()];
    f.add("image", total_size(&images) as f64);
    restores(bench, f, &images, |flag, f, key| {
        let r = run::restore(
            &format!("restored {program}"),
            restore_command(&bench.bins, &d.image, flag),
        )?;
        record_restore(f, key, &r);
        Ok(())
    })?;
    // The spawn floor: what any program started the same way pays before
    // that statement (this process's fork and the exec, and here also the
    // fresh program's start-up and its 1 MiB of writes), so that a first
    // instruction can be read as the floor plus the restore's own time.
    let path = crimg_tests::paths::try_workload_path("bench_mem").map_err(|e| e.to_string())?;
    let mut fresh = std::process::Command::new(path);
    fresh.args(["--mb", "1"]);
    let r = run::restore("a fresh bench_mem --mb 1", fresh)?;
    f.time("spawn_floor", r.first);
    Ok(())
}

/// One round of the pipeline: crrestore-tree has no mode flags, so only
/// the default restore; first instruction is when crrestore-tree returned
/// (every process released), fully populated when a number logged after
/// the dump came through all four processes into LOG (the loop sleeps
/// 20 ms between numbers: that much may be added).
fn pipeline_round(bench: &Bench, f: &mut Figures) -> Result<(), String> {
    let mut pipeline = Pipeline::start(2)?;
    // It runs: stopped, its pages stay where they were found while the
    // ceiling reads them (a `sleep` may come and go: it is skipped).
    let stopped = stop_all(&pipeline.pids());
    let processes: Vec<Pages> = stopped
        .iter()
        .filter_map(|&pid| ceiling::stored_pages(pid).ok())
        .collect();
    let measured = dump_ceilings(f, &processes, pipeline.scratch());
    for &pid in &stopped {
        let _ = dumper::sys::process::kill(pid, libc::SIGCONT);
    }
    measured?;
    f.add("processes", processes.len() as f64);
    f.add(
        "written",
        processes.iter().map(Pages::bytes).sum::<u64>() as f64,
    );
    let d = pipeline.dump(&bench.bins)?;
    f.time("dump", d.took);
    if let Some(frozen) = d.frozen {
        f.time("frozen", frozen);
    }
    let images = image_files(pipeline.dir());
    f.add("image", total_size(&images) as f64);
    let share = ceiling::cached_share(&images);
    f.add("cached", share.unwrap_or(-1.0));
    let cold = share.is_some_and(|s| s < 0.5);
    restore_ceilings(f, &images, cold, "restore_ceiling")?;
    let r = pipeline.restore()?;
    f.time("first", r.returned);
    f.time("populated", r.resumed);
    Ok(())
}

/// SIGSTOP each of `pids` and wait until it is stopped; the pids stopped
/// (a process that exited meanwhile is left out).
fn stop_all(pids: &[i32]) -> Vec<i32> {
    let mut stopped = Vec::new();
    for &pid in pids {
        if dumper::sys::process::kill(pid, libc::SIGSTOP).is_err() {
            continue;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match crimg_tests::tree::state_of(pid) {
                Some('T') => {
                    stopped.push(pid);
                    break;
                }
                None | Some('Z' | 'X') => break,
                _ if std::time::Instant::now() > deadline => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }
    stopped
}

/// The series: one 1 GiB process; 10 times: write 10 MiB, measure the
/// ceiling, dump with --leave-running: when crdump has `--parent`, the
/// first with `--pre-dump`, the others with `--parent` the dump before
/// (incremental, the chain kept; not from a snapshot, which write tracking
/// does not follow), else each in full. Then restore the last image (its
/// check verifies the last state).
fn series(bench: &Bench, f: &mut Figures) -> Result<(), String> {
    let scratch = scratch_dir();
    let mut workload = run::start("bench_mem", &["--mb", "1024", "--step-mb", "10"])?;
    let pid = workload.pid();
    let mut last = None;
    for i in 0..10 {
        step(&mut workload)?;
        let pages = ceiling::stored_pages(pid)?;
        f.add("written", pages.bytes() as f64);
        dump_ceilings(f, &[pages], scratch.path())?;
        let out = scratch.path().join(format!("dump-{i}"));
        let leave = if bench.modes.cow && !bench.modes.incremental {
            run::Leave::RunningFromSnapshot
        } else {
            run::Leave::Running
        };
        let series = match last.as_deref() {
            _ if !bench.modes.incremental => run::Series::None,
            None => run::Series::First,
            Some(parent) => run::Series::Over(parent),
        };
        let d = run::dump_over(&bench.bins, pid, &out, leave, series)?;
        f.time("dump", d.took);
        if let Some(frozen) = d.frozen {
            f.time("frozen", frozen);
        }
        if let Some(again) = d.stopped_again {
            f.time("cow_again", again);
        }
        f.add("image", total_size(std::slice::from_ref(&d.image)) as f64);
        // Only the last image is restored: the others need no disk
        // (unless they are its parents).
        if let Some(previous) = last.replace(out) {
            if !bench.modes.incremental {
                let _ = fs::remove_dir_all(previous);
            }
        }
    }
    drop(workload);
    let Some(out) = last else {
        return Err("no dump".into());
    };
    let images = image_files(&out);
    let image = images
        .first()
        .cloned()
        .ok_or("the last dump has no image")?;
    restores(bench, f, &images, |flag, f, key| {
        let r = run::restore(
            "restored bench_mem (series)",
            restore_command(&bench.bins, &image, flag),
        )?;
        record_restore(f, key, &r);
        Ok(())
    })
}

fn step(workload: &mut Workload) -> Result<(), String> {
    workload.send_line("step").map_err(|e| e.to_string())?;
    workload
        .wait_line("STEPPED", run::SLOW)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// ", then stopped again N to reap the snapshot child", if crdump said so.
fn again(f: &Figures) -> String {
    f.median("cow_again").map_or(String::new(), |t| {
        format!(
            ", then stopped again {} to reap the snapshot child",
            secs(t)
        )
    })
}

/// The lines of a workload's figures.
fn report(bench: &Bench, spec: &Spec, f: &Figures) -> Vec<String> {
    let rounds = f.count("dump");
    let mut lines = vec![format!(
        "{}: {}; medians of {rounds} {}{}",
        spec.name,
        spec.what,
        if matches!(spec.kind, Kind::Series) {
            "dump"
        } else {
            "round"
        },
        if rounds == 1 { "" } else { "s" }
    )];
    if let (Some(w), Some(i)) = (f.median("written"), f.median("image")) {
        let processes = f
            .median("processes")
            .map(|n| format!(" of {n:.0} processes"))
            .unwrap_or_default();
        lines.push(format!(
            "  image {} for {} written{processes} (pages a dump stores, by the dumper's rule): {:.3}x",
            mib(i),
            mib(w),
            i / w
        ));
    }
    let ceiling = match (
        f.median("dump_ceiling"),
        f.median("dump_ceiling_direct"),
        f.median("dump_ceiling_buffered"),
    ) {
        (Some(c), Some(d), Some(b)) => format!(
            "{}: process_vm_readv + write + fsync of the same pages, the faster of {} with O_DIRECT and {} buffered",
            secs(c),
            secs(d),
            secs(b)
        ),
        (Some(c), _, None) => format!(
            "{}: process_vm_readv + write + fsync of the same pages with O_DIRECT (buffered is not tried from 1 GiB on)",
            secs(c)
        ),
        _ => "n/a".to_owned(),
    };
    let no_frozen = "crdump -v printed no 'stopped for'";
    lines.push(format!(
        "  dump {} of its ceiling {ceiling}",
        against(f, "dump", "dump_ceiling", "failed")
    ));
    lines.push(format!(
        "  frozen {} of that ceiling",
        against(f, "frozen", "dump_ceiling", no_frozen)
    ));
    match spec.kind {
        Kind::Series if bench.modes.incremental => lines.push(
            "  the first dump --pre-dump (full), each other --parent the one before (incremental: \
             the pages written since, as the kernel's write tracking tells), all --leave-running \
             and frozen for the whole dump"
                .to_owned(),
        ),
        Kind::Series => lines.push(format!(
            "  every dump is a full --leave-running dump ({}{}): incremental dumps are not built",
            if bench.modes.cow {
                "each with --snapshot: a copy-on-write snapshot"
            } else {
                "copy-on-write not built: frozen for the whole dump"
            },
            again(f)
        )),
        Kind::Single(..) if bench.modes.cow => lines.push(format!(
            "  --leave-running --snapshot ({}): dump {}, frozen {}{}",
            match f.median("cow_protected") {
                Some(p) if p >= 0.5 => "write-protected, as crdump -v said",
                Some(_) => "a copy-on-write child, as crdump -v said",
                None => "crdump -v named no method",
            },
            against(f, "cow_dump", "dump_ceiling", "failed"),
            against(f, "cow_frozen", "dump_ceiling", no_frozen),
            again(f)
        )),
        Kind::Single(..) => {
            lines.push("  copy-on-write --leave-running: n/a (not built)".to_owned());
        }
        Kind::Pipeline => {}
    }
    let state = match f.median("cached") {
        Some(s) if s >= 0.0 => format!("{:.0}% in the page cache after the dump", s * 100.0),
        _ => "page-cache state unknown (no fincore)".to_owned(),
    };
    lines.push(format!(
        "  restore, image as the dump left it ({state}); ceiling: pread of the image into fresh memory {}",
        match (
            f.median("restore_ceiling"),
            f.median("restore_ceiling_direct"),
            f.median("restore_ceiling_buffered")
        ) {
            (Some(c), Some(d), Some(b)) => format!(
                "{}, the faster of {} with O_DIRECT and {} buffered, each from a dropped cache",
                secs(c),
                secs(d),
                secs(b)
            ),
            (Some(c), Some(_), None) => format!(
                "{} with O_DIRECT (buffered is not tried from 1 GiB on)",
                secs(c)
            ),
            (c, _, _) => c.map_or("n/a".to_owned(), secs),
        }
    ));
    let row = |label: &str, first: &str, populated: &str, ceiling: &str| {
        format!(
            "    {label:<24} first instruction {}, fully populated {}",
            against(f, first, ceiling, "failed"),
            against(f, populated, ceiling, "failed")
        )
    };
    if matches!(spec.kind, Kind::Pipeline) {
        lines.push(row(
            "crrestore-tree",
            "first",
            "populated",
            "restore_ceiling",
        ));
        lines.push("    (first instruction: crrestore-tree returned, every process released; fully populated: a number logged after the dump came through all of them into LOG, up to the loop's 20 ms sleep later; crrestore-tree has no --lazy/--eager)".to_owned());
    } else {
        lines.push(row(
            "loader (default)",
            "first",
            "populated",
            "restore_ceiling",
        ));
        for (label, built, first, populated) in [
            (
                "crimg run --eager",
                bench.modes.eager,
                "eager_first",
                "eager_populated",
            ),
            (
                "crimg run --lazy",
                bench.modes.lazy,
                "lazy_first",
                "lazy_populated",
            ),
        ] {
            if built {
                lines.push(row(label, first, populated, "restore_ceiling"));
            } else {
                lines.push(format!("    {label:<24} n/a (not built)"));
            }
        }
        if let Some(floor) = f.median("spawn_floor") {
            lines.push(format!(
                "    (the spawn floor: a fresh bench_mem --mb 1 started the same way reaches the same statement in {}; a first instruction is that floor plus the restore's own time)",
                secs(floor)
            ));
        }
        if f.count("warm_first") > 0 {
            lines.push(format!(
                "  restore, image in the page cache; ceiling {}",
                f.median("warm_ceiling").map_or("n/a".to_owned(), secs)
            ));
            lines.push(row(
                "loader (default)",
                "warm_first",
                "warm_populated",
                "warm_ceiling",
            ));
        }
        if f.median("huge_before").is_some_and(|h| h > 0.0) {
            lines.push(format!(
                "  AnonHugePages: {} before the dump, {} after the default restore",
                mib(f.median("huge_before").unwrap_or(0.0)),
                mib(f.median("huge_after").unwrap_or(0.0))
            ));
        }
    }
    lines.push(criu::line(spec.name));
    lines
}

fn measure(bench: &Bench, spec: &Spec) -> Result<Figures, String> {
    let mut figures = Figures::default();
    match spec.kind {
        Kind::Single(program, args) => {
            for _ in 0..bench.rounds {
                single_round(bench, &mut figures, program, args)?;
            }
        }
        Kind::Pipeline => {
            for _ in 0..bench.rounds {
                pipeline_round(bench, &mut figures)?;
            }
        }
        Kind::Series => series(bench, &mut figures)?,
    }
    Ok(figures)
}

/// `--only a,b` and `--rounds N` (after `cargo bench ... --`).
fn options() -> Result<(Option<Vec<String>>, usize), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut only, mut rounds) = (None, 5);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--only" => {
                let names: Vec<String> = args
                    .get(i + 1)
                    .ok_or("--only needs names")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                for n in &names {
                    if !WORKLOADS.iter().any(|s| s.name == n) {
                        return Err(format!(
                            "unknown workload {n:?} (known: {})",
                            WORKLOADS
                                .iter()
                                .map(|s| s.name)
                                .collect::<Vec<_>>()
                                .join(",")
                        ));
                    }
                }
                only = Some(names);
                i += 1;
            }
            "--rounds" => {
                rounds = args
                    .get(i + 1)
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--rounds needs a number above 0")?;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok((only, rounds))
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or
    // `--all-targets`) runs this without it, and should not spend minutes
    // moving gigabytes.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "roundtrip: not run (measure with `cargo bench -p crimg-tests --bench roundtrip`)"
        );
        return ExitCode::SUCCESS;
    }
    let (only, rounds) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let modes = modes::detect(&bins);
    println!("{}", modes.describe());
    println!("times: medians; NNx = the time over its ceiling measured in the same round (see the benchmark's doc comment)");
    let bench = Bench {
        bins,
        modes,
        rounds,
    };
    let selected: Vec<&Spec> = WORKLOADS
        .iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
        .collect();
    if selected.iter().any(|s| matches!(s.kind, Kind::Pipeline)) {
        // Orphans of a restored tree come back to this process.
        crimg_tests::tree::become_subreaper();
    }
    let mut failed = 0;
    let run_started = std::time::Instant::now();
    for spec in selected {
        if let Some(why) = unmet_need(spec) {
            println!("{}: skipped: {why}", spec.name);
            continue;
        }
        let started = std::time::Instant::now();
        match measure(&bench, spec) {
            Ok(figures) => {
                report(&bench, spec, &figures)
                    .iter()
                    .for_each(|line| println!("{line}"));
                println!(
                    "  ({} took {:.1} s)",
                    spec.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(err) => {
                failed += 1;
                println!("{}: FAILED: {err}", spec.name);
            }
        }
    }
    println!(
        "total: {:.0} s, {failed} workload(s) failed",
        run_started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
