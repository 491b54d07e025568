//! `crrestore-tree`: a dumped process tree restored whole.
//!
//! - [`dump`]: the dump directory read and checked before anything is
//!   created (manifest, images through the loader's rules, holders).
//! - [`plan`]: the pure plan: who forks whom, sessions, groups,
//!   stand-ins, terminal, zombies, which fd comes from which object.
//! - [`rules`]: the plan's refusals as crdump runs them before a dump.
//! - [`pids`]: which pids are taken.
//! - [`objects`]: the shared objects made once, with the loader's code.
//! - [`run`]: the forks, the exec of each loader, the barrier, the wait.
//! - [`error`]: the one error, naming the pid, fd or path.

pub mod dump;
pub mod error;
pub mod objects;
pub mod pids;
pub mod plan;
pub mod rules;
pub mod run;
#[allow(unsafe_code)]
mod sys;

pub use error::TreeError;
