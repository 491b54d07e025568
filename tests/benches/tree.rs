//! How fast crimg dumps and restores process trees: the shell pipeline of
//! `restore_tree_pipeline` (sh, its loop's subshell and cat) and a tree of
//! 4 processes with 64 MiB of touched memory each (`workloads/tree_mem.c`).
//!
//! ```text
//! cargo build --release --workspace &&
//!   CRIMG_BIN_DIR=target/release cargo bench -p crimg-tests --bench tree
//! ```
//!
//! Dump time: `crdump --pid ROOT` from start to exit (the tree frozen,
//! every image written, the tree killed). Restore time: from starting
//! `crrestore-tree DIR` until every process has resumed: each process of
//! the 4-process tree has written a line after the restore; for the
//! pipeline, a new number is in its LOG (the loop and cat both ran). The
//! time until `crrestore-tree` itself returned is printed too. Needs root;
//! otherwise it prints `skipped: ...` and exits 0.

use std::process::ExitCode;
use std::time::Duration;

use crimg_tests::tree::{become_subreaper, Tree, TreeGuard};
use crimg_tests::tree_rounds::{dump, restore, Pipeline};
use crimg_tests::{scratch_dir, Binaries};

const PIPELINE_ROUNDS: usize = 5;
const MEM_ROUNDS: usize = 3;

/// One round's figures: dump, restore until resumed, restore until
/// crrestore-tree returned.
type Round = (Duration, Duration, Duration);

/// Measures one round.
type Measure = fn(&Binaries) -> Result<Round, String>;

fn min_median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (v[0].as_secs_f64(), v[v.len() / 2].as_secs_f64())
}

fn summary(name: &str, rounds: Vec<Round>) -> String {
    let n = rounds.len();
    let (dmin, dmed) = min_median(rounds.iter().map(|r| r.0).collect());
    let (rmin, rmed) = min_median(rounds.iter().map(|r| r.1).collect());
    let (cmin, cmed) = min_median(rounds.iter().map(|r| r.2).collect());
    format!(
        "{name}: dump {dmin:.3} s min, {dmed:.3} s median; restore (every process resumed) {rmin:.3} s min, {rmed:.3} s median (crrestore-tree returned: {cmin:.3} s min, {cmed:.3} s median); {n} rounds"
    )
}

fn pipeline_round(bins: &Binaries) -> Result<Round, String> {
    let mut pipeline = Pipeline::start(1)?;
    let dumped = pipeline.dump(bins)?;
    let restored = pipeline.restore()?;
    Ok((dumped.took, restored.resumed, restored.returned))
}

fn mem_round(bins: &Binaries) -> Result<Round, String> {
    let scratch = scratch_dir();
    let mut tree = Tree::spawn(
        &crimg_tests::workload_path("tree_mem"),
        ["--procs", "4", "--mb", "64", "--interval-ms", "2"],
        &scratch.path().join("out"),
    )
    .map_err(|e| e.to_string())?;
    let pids: Vec<String> = tree
        .out
        .expect_lines("READY", 4)
        .iter()
        .map(|f| f.get("pid").unwrap_or_default().to_owned())
        .collect();
    let held = TreeGuard::hold_tree(tree.pid());
    if held.pids().len() != 4 {
        return Err(format!("tree_mem is {:?}, not 4 processes", held.pids()));
    }
    let dir = scratch.path().join("dump");
    let dump_time = dump(bins, &mut tree, &held, &dir)?.took;
    tree.out.mark();
    let at_dump = tree.out.lines().len();
    let out = tree.out.path().to_path_buf();
    let (resumed, returned) = restore(&dir, &held.pids(), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let new: Vec<&str> = text.lines().skip(at_dump).collect();
        pids.iter()
            .all(|p| new.iter().any(|l| l.starts_with(&format!("TICK pid={p} "))))
    })?;
    let restored = TreeGuard::hold_tree(tree.pid());
    restored.kill_and_wait().map_err(|e| e.to_string())?;
    Ok((dump_time, resumed, returned))
}

fn rounds(bins: &Binaries, n: usize, round: Measure) -> Result<Vec<Round>, String> {
    (0..n).map(|_| round(bins)).collect()
}

fn main() -> ExitCode {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("tree: not run (measure with `cargo bench -p crimg-tests --bench tree`)");
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
    let restorer = match crimg_tests::tree::crrestore_tree_binary() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "binaries: {} {} {}",
        bins.crdump.display(),
        restorer.display(),
        bins.loader.display()
    );
    become_subreaper();
    let mut failed = 0;
    let figures: [(&str, usize, Measure); 2] = [
        (
            "pipeline sh -c 'while ...; done | cat > LOG'",
            PIPELINE_ROUNDS,
            pipeline_round,
        ),
        ("4 processes x 64 MiB touched", MEM_ROUNDS, mem_round),
    ];
    for (name, n, round) in figures {
        match rounds(&bins, n, round) {
            Ok(r) => println!("{}", summary(name, r)),
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
