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
/// cause, like `path: No such file…`, are not repeated). Control
/// characters are escaped (`\n`, `\u{1b}`): a message may carry names
/// from an image or a manifest another user wrote, and must stay one line
/// that cannot drive the terminal.
pub fn error_line(messages: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for text in messages {
        let text: String = text
            .trim_end()
            .chars()
            .flat_map(|c| {
                let escaped = c.is_control().then(|| c.escape_default());
                escaped
                    .into_iter()
                    .flatten()
                    .chain((!c.is_control()).then_some(c))
            })
            .collect();
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

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn an_error_line_is_one_line_without_control_characters() {
        let line = error_line([
            "image \"a\nb\u{1b}[2J\"".to_owned(),
            "loader: refused\n".to_owned(),
        ]);
        assert_eq!(line, "image \"a\\nb\\u{1b}[2J\": loader: refused");
    }
}
