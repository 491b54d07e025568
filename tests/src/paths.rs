//! Where things are: the workload programs (built by `build.rs`), the
//! workload scripts, the crimg binaries (built by `cargo build --workspace`),
//! and scratch directories.

use std::env;
use std::path::{Path, PathBuf};

use crate::cli::Binaries;

/// Locating something failed.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("unknown workload `{name}` (known: {known})")]
    UnknownWorkload { name: String, known: String },
    #[error("`{binary}` not found in {searched}; build the workspace first: `cargo build --workspace` (or set CRIMG_BIN_DIR)")]
    BinaryMissing { binary: String, searched: String },
    #[error("cannot create a scratch directory under {parent}")]
    Scratch {
        parent: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The compiled C workloads, by name.
const COMPILED: &[(&str, &str)] = &[
    ("counter", env!("WORKLOAD_COUNTER")),
    ("bigmem", env!("WORKLOAD_BIGMEM")),
    ("thp_area", env!("WORKLOAD_THP_AREA")),
    ("bench_mem", env!("WORKLOAD_BENCH_MEM")),
    ("vmflags", env!("WORKLOAD_VMFLAGS")),
    ("seccomp_echo", env!("WORKLOAD_SECCOMP_ECHO")),
    ("sigsuspend_mask", env!("WORKLOAD_SIGSUSPEND_MASK")),
    ("cred_threads", env!("WORKLOAD_CRED_THREADS")),
    ("small_stack", env!("WORKLOAD_SMALL_STACK")),
    ("fd_objects", env!("WORKLOAD_FD_OBJECTS")),
    ("sockets", env!("WORKLOAD_SOCKETS")),
    ("shmem", env!("WORKLOAD_SHMEM")),
    ("snapshot_threads", env!("WORKLOAD_SNAPSHOT_THREADS")),
    ("posix_timers", env!("WORKLOAD_POSIX_TIMERS")),
    ("fd_sharing", env!("WORKLOAD_FD_SHARING")),
    ("blockers", env!("WORKLOAD_BLOCKERS")),
    ("tree_pipe", env!("WORKLOAD_TREE_PIPE")),
    ("tree_shared", env!("WORKLOAD_TREE_SHARED")),
    ("tree_zombies", env!("WORKLOAD_TREE_ZOMBIES")),
    ("tree_session", env!("WORKLOAD_TREE_SESSION")),
    ("tree_refused", env!("WORKLOAD_TREE_REFUSED")),
    ("tree_mem", env!("WORKLOAD_TREE_MEM")),
    ("sparse_reserve", env!("WORKLOAD_SPARSE_RESERVE")),
    ("incr_counter", env!("WORKLOAD_INCR_COUNTER")),
    ("lazy_mem", env!("WORKLOAD_LAZY_MEM")),
    ("wp_writers", env!("WORKLOAD_WP_WRITERS")),
];

/// The script workloads, by file name, in `workloads/`.
const SCRIPTS: &[&str] = &[
    "loop.py",
    "loop.sh",
    "files.py",
    "tree_http.sh",
    "bench_py.py",
    "bench_sh.sh",
];

/// The program for workload `name`: `counter`, `bigmem` (compiled C) or
/// `loop.py`, `loop.sh` (scripts run through their `#!` line).
pub fn try_workload_path(name: &str) -> Result<PathBuf, PathsError> {
    if let Some((_, path)) = COMPILED.iter().find(|(known, _)| *known == name) {
        return Ok(PathBuf::from(path));
    }
    if SCRIPTS.contains(&name) {
        return Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .join(name));
    }
    let known: Vec<&str> = COMPILED
        .iter()
        .map(|(known, _)| *known)
        .chain(SCRIPTS.iter().copied())
        .collect();
    Err(PathsError::UnknownWorkload {
        name: name.to_owned(),
        known: known.join(", "),
    })
}

/// [`try_workload_path`], panicking with the error (a test with a typo in a
/// workload name should stop at once).
pub fn workload_path(name: &str) -> PathBuf {
    try_workload_path(name).unwrap_or_else(|err| panic!("{err}"))
}

/// Directories where the crimg binaries may be, most specific first:
/// `$CRIMG_BIN_DIR`; the profile directory this test binary was built into
/// (`target/<profile>/deps/<test>` -> `target/<profile>`), so tests use the
/// binaries of the same build; `$CARGO_TARGET_DIR/{debug,release}`; and the
/// workspace's `target/{debug,release}`.
pub fn binary_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = env::var_os("CRIMG_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            dirs.push(profile_dir.to_path_buf());
        }
    }
    let mut target_dirs = Vec::new();
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(dir));
    }
    target_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for target in target_dirs {
        dirs.push(target.join("debug"));
        dirs.push(target.join("release"));
    }
    dirs.dedup();
    dirs
}

/// The first `binary` found in [`binary_dirs`].
pub fn find_binary(binary: &str) -> Result<PathBuf, PathsError> {
    let dirs = binary_dirs();
    dirs.iter()
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
        .ok_or_else(|| PathsError::BinaryMissing {
            binary: binary.to_owned(),
            searched: dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `crdump`, `crimg` and `crimg-loader`, or the first one missing.
pub fn try_binaries() -> Result<Binaries, PathsError> {
    Ok(Binaries {
        crdump: find_binary("crdump")?,
        crimg: find_binary("crimg")?,
        loader: find_binary("crimg-loader")?,
    })
}

/// [`try_binaries`], panicking with the error: a test that needs crimg cannot
/// do anything without it, and the message says how to build it.
pub fn binaries() -> Binaries {
    try_binaries().unwrap_or_else(|err| panic!("{err}"))
}

/// A fresh directory for one test (images, the counter's mapped file),
/// removed with everything in it when dropped. Mode 0700 (tempfile's
/// default), like the directories crdump writes.
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = env::temp_dir();
    tempfile::Builder::new()
        .prefix("crimg-test-")
        .tempdir_in(&parent)
        .map_err(|source| PathsError::Scratch { parent, source })
        .unwrap_or_else(|err| panic!("{err}"))
}
