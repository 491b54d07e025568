//! Compiles the C workloads in `workloads/*.c` into `OUT_DIR` and tells the
//! harness where they are through `WORKLOAD_<NAME>` environment variables
//! (read with `env!` in `src/paths.rs`).
//!
//! The C compiler is called directly: the `cc` crate builds static libraries
//! to link into Rust, and these are standalone programs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workloads written in C; each `workloads/<name>.c` becomes a program.
const C_WORKLOADS: &[&str] = &[
    "counter",
    "bigmem",
    "thp_area",
    "bench_mem",
    "vmflags",
    "seccomp_echo",
    "sigsuspend_mask",
    "cred_threads",
    "small_stack",
    "fd_objects",
    "sockets",
    "shmem",
    "snapshot_threads",
    "posix_timers",
    "fd_sharing",
    "blockers",
    "tree_pipe",
    "tree_shared",
    "tree_zombies",
    "tree_session",
    "tree_refused",
    "tree_mem",
    "sparse_reserve",
    "incr_counter",
    "lazy_mem",
    "wp_writers",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let workloads = manifest_dir.join("workloads");
    let compiler = env::var("CC").unwrap_or_else(|_| "cc".to_owned());

    println!("cargo:rerun-if-changed=workloads");
    println!("cargo:rerun-if-env-changed=CC");
    println!(
        "cargo:rerun-if-changed={}",
        workloads.join("workload.h").display()
    );
    for name in C_WORKLOADS {
        let source = workloads.join(format!("{name}.c"));
        let program = out_dir.join(name);
        println!("cargo:rerun-if-changed={}", source.display());
        compile(&compiler, &source, &program);
        println!(
            "cargo:rustc-env=WORKLOAD_{}={}",
            name.to_uppercase(),
            program.display()
        );
    }
}

/// `cc -O1 -g -pthread -Wall -Wextra -Werror -o program source`; a failure
/// stops the build with the compiler's own messages.
fn compile(compiler: &str, source: &Path, program: &Path) {
    let status = Command::new(compiler)
        .args(["-O1", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(program)
        .arg(source)
        .status()
        .unwrap_or_else(|err| panic!("cannot run the C compiler `{compiler}`: {err}"));
    assert!(
        status.success(),
        "`{compiler}` failed to compile {} ({status})",
        source.display()
    );
}
