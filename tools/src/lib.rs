//! The work behind crimg's command-line tools; the binaries in `src/bin/`
//! only parse arguments and print.
//!
//! - [`image_file`]: opening and mapping an image read-only.
//! - [`summary`]: what `crimg info` shows, as plain serialisable data.
//! - [`binfmt`]: registering the loader with binfmt_misc.
//! - [`check`]: what this machine's kernel allows, found by trying.
//! - [`loader_path`]: finding the loader binary.
//! - [`signals`]: turning Ctrl-C into a clean cancel of a dump.

#![deny(unsafe_code)]

pub mod binfmt;
pub mod check;
pub mod image_file;
pub mod loader_path;
pub mod summary;

/// Signal handling for the binaries.
pub mod signals {
    pub use crate::sys::{cancel_dump_on_interrupt, exec_with_signals_blocked};
}
#[allow(unsafe_code)]
mod sys;
