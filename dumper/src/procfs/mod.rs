//! Parsers for the text files of `/proc/P/`: pure functions over strings, so
//! they are unit-tested on fixtures. Reading the files is the caller's job.
//!
//! The `procfs-core` crate (the parsing half of `procfs`, no I/O, no
//! default features) parses what it covers: [`limits`] and [`status`]
//! (all but `untag_mask`, which it lacks). The rest is parsed here, for
//! reasons the crate cannot meet:
//! - [`smaps`]: its `MemoryMaps` keeps `VmFlags` as a 32-bit set that has
//!   no `lf`, `dp`, `sl`, `ss`, `ui`, `bt`, `mt`, … and drops what it does
//!   not know, while crimg must refuse an area by the flag it cannot
//!   restore, by name; it also builds a map of every field of every area
//!   (a JVM has thousands), on the path that runs while the task is frozen:
//!   python3's 115 areas parse in about 0.3 ms here, 0.5 ms with the crate.
//! - [`stat`]: the command name must be kept byte for byte (the crate
//!   decodes it lossily into a `String`).
//! - [`fdinfo`]: the crate has no parser for it.

pub mod fdinfo;
pub mod limits;
pub mod smaps;
pub mod stat;
pub mod status;
pub mod timers;

/// A `/proc` file did not look as expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: line {line}: {what}")]
pub struct ParseError {
    /// Which file (e.g. `smaps`).
    pub file: &'static str,
    /// 1-based line number (0: the whole file).
    pub line: usize,
    pub what: String,
}

impl ParseError {
    fn new(file: &'static str, line: usize, what: impl Into<String>) -> Self {
        Self {
            file,
            line,
            what: what.into(),
        }
    }
}

fn parse_hex(file: &'static str, line: usize, s: &str) -> Result<u64, ParseError> {
    u64::from_str_radix(s, 16)
        .map_err(|_| ParseError::new(file, line, format!("bad hex number {s:?}")))
}

fn parse_dec<T: std::str::FromStr>(
    file: &'static str,
    line: usize,
    s: &str,
) -> Result<T, ParseError> {
    s.parse()
        .map_err(|_| ParseError::new(file, line, format!("bad number {s:?}")))
}

/// The `key: value` lines of a `/proc` file (status, fdinfo), with their
/// 1-based line numbers and the values trimmed; other lines are skipped.
fn fields(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| line.split_once(':').map(|(k, v)| (i + 1, k, v.trim())))
}

fn parse_oct(file: &'static str, line: usize, what: &str, s: &str) -> Result<u32, ParseError> {
    u32::from_str_radix(s, 8).map_err(|_| ParseError::new(file, line, format!("bad {what} {s:?}")))
}
