//! Timed rounds of process trees for the benchmarks (`benches/tree.rs`,
//! `benches/roundtrip.rs`): a shell pipeline logging numbers, its dump by
//! `crdump --pid ROOT` and its restore by `crrestore-tree` until every
//! process ran again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::{run_ok, CliError, CLI_TIMEOUT};
use crate::tree::{kill_left_behind, restore_tree_command, Tree, TreeGuard, TREE_TIMEOUT};
use crate::Binaries;

const POLL: Duration = Duration::from_millis(1);

/// Wait until `done` holds (polling every millisecond), for at most
/// TREE_TIMEOUT.
pub fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + TREE_TIMEOUT;
    while !done() {
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {TREE_TIMEOUT:?}"));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// A finished tree dump: its wall time, and how long crdump says the tree
/// was stopped (`crdump -v`: "... stopped for N ms").
#[derive(Debug, Clone, Copy)]
pub struct TreeDump {
    pub took: Duration,
    pub frozen: Option<Duration>,
}

/// The "stopped for N ms" figure of `crdump -v`'s output.
pub fn stopped_for(report: &str) -> Option<Duration> {
    let rest = report.split("stopped for ").nth(1)?;
    let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

/// Dump the tree of `tree` into `dir` (killing it) with `crdump -v`.
pub fn dump(
    bins: &Binaries,
    tree: &mut Tree,
    held: &TreeGuard,
    dir: &Path,
) -> Result<TreeDump, String> {
    // A refusal for a process in vfork() (dash starting `sleep`) leaves the
    // tree as it was: timed again (see tree::dump_tree).
    let mut tries = 0;
    let (took, output) = loop {
        tries += 1;
        let mut command = bins.crdump_command(tree.pid(), dir, false);
        command.arg("--verbose");
        let started = Instant::now();
        match run_ok(command, CLI_TIMEOUT) {
            Ok(output) => break (started.elapsed(), output),
            Err(CliError::Failed { stderr, .. }) if tries < 20 && stderr.contains("vfork") => {}
            Err(e) => return Err(format!("crdump: {e}")),
        }
    };
    tree.wait_exit(TREE_TIMEOUT).map_err(|e| e.to_string())?;
    held.wait_gone(TREE_TIMEOUT).map_err(|e| e.to_string())?;
    Ok(TreeDump {
        took,
        frozen: stopped_for(&output.stdout),
    })
}

/// Start `crrestore-tree dir` and wait until `resumed`; (until resumed,
/// until crrestore-tree returned).
/// On failure what the restore left of the tree `pids` is killed.
pub fn restore(
    dir: &Path,
    pids: &[i32],
    mut resumed: impl FnMut() -> bool,
) -> Result<(Duration, Duration), String> {
    let result = restore_until(dir, &mut resumed);
    if result.is_err() {
        kill_left_behind(pids);
    }
    result
}

fn restore_until(
    dir: &Path,
    resumed: &mut impl FnMut() -> bool,
) -> Result<(Duration, Duration), String> {
    let started = Instant::now();
    let mut command = restore_tree_command(dir, [] as [&str; 0]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .map_err(|e| format!("crrestore-tree: {e}"))?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let returned = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "crrestore-tree failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    until("the restored tree resumes", resumed)?;
    Ok((started.elapsed(), returned))
}

/// Hold `root` and its descendants, leaving out one that exited between
/// the listing and its hold (a `sleep` of the loop). (A failed
/// `TreeGuard::hold` would drop, and so kill, the ones held before.)
fn hold_tree(root: i32) -> Result<TreeGuard, String> {
    let mut held = TreeGuard::hold(&[]).map_err(|e| e.to_string())?;
    for pid in crate::tree::tree_pids(root) {
        if let Err(e) = held.add(pid) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("cannot hold pid {pid} of the tree of {root}: {e}"));
            }
        }
    }
    Ok(held)
}

/// Complete lines of `path`.
pub fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// The shell pipeline `sh -c 'i=0; while :; do ...; echo $i; sleep 0.02;
/// done | cat [| cat ...] > LOG'`: sh, the loop's subshell and `cats`
/// cats (plus, now and then, a `sleep`).
pub struct Pipeline {
    // Declared first, dropped first: the tree dies before its directory.
    tree: Tree,
    held: TreeGuard,
    log: PathBuf,
    dir: PathBuf,
    scratch: tempfile::TempDir,
}

/// What a restored pipeline took: until a new number came through every
/// process into LOG, and until crrestore-tree returned.
#[derive(Debug, Clone, Copy)]
pub struct PipelineRestore {
    pub resumed: Duration,
    pub returned: Duration,
}

impl Pipeline {
    /// Start it and wait until it logged 5 numbers.
    pub fn start(cats: usize) -> Result<Pipeline, String> {
        let scratch = crate::scratch_dir();
        let log = scratch.path().join("LOG");
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done{} > '{}'",
            " | cat".repeat(cats.max(1)),
            log.display()
        );
        let tree = Tree::spawn(
            Path::new("sh"),
            ["-c", &script],
            &scratch.path().join("out"),
        )
        .map_err(|e| e.to_string())?;
        until("the pipeline logs", || line_count(&log) >= 5)?;
        let held = hold_tree(tree.pid())?;
        let dir = scratch.path().join("dump");
        Ok(Pipeline {
            tree,
            held,
            log,
            dir,
            scratch,
        })
    }

    /// The pids of the tree now.
    pub fn pids(&self) -> Vec<i32> {
        self.held.pids()
    }

    /// The scratch directory (the dump goes into its `dump/`).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// The dump directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Dump it (killing it).
    pub fn dump(&mut self, bins: &Binaries) -> Result<TreeDump, String> {
        dump(bins, &mut self.tree, &self.held, &self.dir)
    }

    /// Restore the dump and wait until a number logged after the dump came
    /// through; then kill the restored tree.
    pub fn restore(&mut self) -> Result<PipelineRestore, String> {
        let at_dump = line_count(&self.log);
        let log = self.log.clone();
        let (resumed, returned) =
            restore(&self.dir, &self.held.pids(), || line_count(&log) > at_dump)?;
        let restored = hold_tree(self.tree.pid())?;
        restored.kill_and_wait().map_err(|e| e.to_string())?;
        Ok(PipelineRestore { resumed, returned })
    }
}
