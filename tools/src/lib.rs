//! The work behind crimg's command-line tools; the binaries in `src/bin/`
//! only parse arguments and print.
//!
//! - [`image_file`]: opening and mapping an image read-only.
//! - [`summary`]: what `crimg info` shows, as plain serialisable data.
//! - [`binfmt`]: registering the loader with binfmt_misc.
//! - [`check`]: what this machine's kernel allows, found by trying.
//! - [`loader_path`]: finding the loader binary.
//! - [`stream`]: a dump stream (`crdump -o -`) received for `crimg run -`.
//! - [`tree`]: `crrestore-tree`, a dumped process tree restored whole.
//! - [`signals`]: turning Ctrl-C into a clean cancel of a dump.
//! - [`error_line`]: an error and its causes as one line.

#![deny(unsafe_code)]

pub mod binfmt;
pub mod chain;
pub mod check;
pub mod image_file;
pub mod loader_path;
pub mod stream;
pub mod stream_owner;
pub mod summary;
pub mod tree;

/// An error and its causes as one line, `top: cause: cause`, leaving out a
/// cause whose text the line already holds (messages that spell out their
/// cause, like `path: No such file…`, are not repeated).
pub fn error_line(messages: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for text in messages {
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The messages of `e` and its sources, outermost first.
pub fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = String> + 'a {
    std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string())
}

/// Signal handling for the binaries.
pub mod signals {
    pub use crate::sys::{cancel_dump_on_interrupt, exec_with_signals_blocked};
}
#[allow(unsafe_code)]
mod sys;
