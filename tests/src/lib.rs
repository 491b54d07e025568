//! crimg's test harness.
//!
//! Tests start self-checking workload programs (`workloads/`), let crimg dump
//! and restore them, and then ask the restored process to verify its own
//! state (the CRIU zdtm way). This crate provides what every such test needs:
//!
//! - [`paths`]: where the compiled workloads and the crimg binaries are;
//! - [`process`]: [`Workload`] (a started program with piped stdio and its
//!   output read line by line with timeouts), [`ChildGuard`] and [`PidGuard`]
//!   that kill what a test started, even when it panics;
//! - [`facts`]: the `KIND word key=value ...` lines workloads print;
//! - [`ticks`]: the `TICK n` stream checker (no gap, no repeat across a restore);
//! - [`binfmt`]: [`TestBinfmt`], a binfmt_misc entry for crimg images that
//!   exists only for the life of a test;
//! - [`cli`]: running `crdump`, `crimg` and the loader;
//! - [`privilege`]: [`is_root`] and [`skip_unless_root!`];
//! - [`smaps`]: the `VmFlags` of every area and `/proc/PID/status` lines,
//!   compared across a dump and restore;
//! - [`tmux`]: [`Tmux`](tmux::Tmux), a private tmux server whose pane is a
//!   terminal a test types into and reads;
//! - [`tree`]: process trees for `crrestore-tree`: started in a session of
//!   their own, listed, dumped, restored and killed by pids;
//! - [`tree_rounds`]: the benchmarks' timed tree rounds (a shell pipeline
//!   dumped and restored);
//! - [`untouched`]: a target left running, untraced and counting.
//!
//! The test command builds the whole workspace first, so the binaries exist:
//! `cargo build --workspace && cargo test --workspace`.

#![deny(unsafe_code)]

pub mod binfmt;
pub mod cli;
pub mod facts;
pub mod inspect;
pub mod java;
pub mod lazy;
pub mod lines;
pub mod paths;
pub mod privilege;
pub mod process;
pub mod programs;
pub mod roundtrip;
pub mod smaps;
mod sys;
pub mod ticks;
pub mod tmpfs;
pub mod tmux;
pub mod tree;
pub mod tree_rounds;
pub mod untouched;

pub use binfmt::TestBinfmt;
pub use cli::{Binaries, Dump};
pub use facts::Facts;
pub use paths::{binaries, scratch_dir, workload_path};
pub use privilege::is_root;
pub use process::{ChildGuard, PidGuard, Workload};
pub use sys::sigqueue;
pub use ticks::TickStream;
