//! crimg's binfmt_misc interpreter, as a library the binary (`src/main.rs`)
//! runs and the host tests exercise.
//!
//! * [`check`] — stage 1: open and map the image, parse and verify it, check
//!   the files it maps, the CPU, the fds; collect the plan's input.
//! * [`plan`] — stage 2: choose the bootstrap window and build the flat
//!   [`plan::Op`] list in it (pure, tested on the host).
//! * [`arch`] — stage 3/4: the trampoline that runs the plan from the window
//!   and ends in `rt_sigreturn` ([`frame`] builds the signal frame).
//! * [`validate`] — stage 1's check of every value the plan passes to the
//!   kernel as it is (addresses, limits, signal numbers, lengths).
//! * [`rules`] — the stage-1 rules the image alone decides, in one pure
//!   function the dumper runs too before it kills the process.
//! * [`threads`] — the other threads, created before the point of no
//!   return so that their tids are held (a taken one is found then).
//! * [`args`] — the arguments after the image (`--same-ids`, and a tree
//!   restore's `--tree`, `--placed`, `--shmem`, `--barrier`, `--report`).
//! * [`memlimits`] — stage 1's check of the kernel's memory limits
//!   (overcommit, `RLIMIT_AS`/`DATA`/`MEMLOCK`) against the task's areas.
//! * [`mm_state`] — VMA flags beyond mapping and protections (no-reserve,
//!   droppable, mergeable, locked, commit charge) and the mm-wide THP/KSM
//!   settings.
//! * [`run`] — the sequence, and one-line errors with an exit code per class
//!   ([`ExitCode`]).

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
// Casts that could truncate, wrap or lose a sign are bugs waiting for an
// odd image: convert with `try_from`/`from`, or allow one with a reason.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

#[allow(unsafe_code)]
pub mod arch;
pub mod args;
pub mod check;
pub mod creds;
pub mod frame;
pub mod lazy;
pub mod maps;
pub mod memlimits;
pub mod message;
pub mod mm_state;
pub mod objects;
pub mod parent;
pub mod plan;
pub mod posix_timers;
pub mod rules;
pub mod run;
#[allow(unsafe_code)]
pub mod sys;
pub mod threads;
pub mod tree_objects;
pub mod validate;

/// The loader's exit codes, one per class of failure. Everything up to
/// [`ExitCode::NoWindow`] happens before anything is changed: the caller's
/// process is intact and can report the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// Bad command line (no image given).
    Usage = 2,
    /// The image cannot be opened, read or mapped.
    ImageUnreadable = 3,
    /// The image is corrupt (header, notes, checksums, layout).
    ImageCorrupt = 4,
    /// A file the task mapped or had open is missing or changed
    /// (also the exe and the working directory).
    FileChanged = 5,
    /// This CPU lacks a register-state feature the task used.
    CpuFeatures = 6,
    /// The image holds state this loader cannot restore yet (more than
    /// `image_format::read::limits::MAX_THREADS` threads, fd kinds, a different vDSO layout, …).
    Unsupported = 7,
    /// No address range is free for the bootstrap window.
    NoWindow = 8,
    /// A plan op failed after the point of no return (printed by the
    /// trampoline: `restore failed at op N (...): errno E`, or `result 0xV` for an
    /// unexpected value).
    RestoreFailed = 9,
    /// The loader's own environment failed it before any change
    /// (`/proc/self/maps` unreadable, out of memory for scratch space, a
    /// thread that cannot be created, or, with `--same-ids`, a thread id
    /// the image needs that is taken or cannot be asked for).
    Environment = 10,
}
