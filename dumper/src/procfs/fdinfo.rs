//! `/proc/P/fdinfo/N`: position, status flags and mount of an open file.
//! Parsed by hand: `procfs-core` has no fdinfo parser.

use super::{fields, parse_dec, parse_oct, ParseError};

const FILE: &str = "fdinfo";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// `O_*` flags (octal in the file), including `O_CLOEXEC` for the fd.
    pub flags: u32,
    pub mnt_id: u32,
}

/// Parse the common first lines of `/proc/P/fdinfo/N`; kind-specific lines
/// (eventfd counts, epoll targets, …) are ignored here.
pub fn parse(text: &str) -> Result<FdInfo, ParseError> {
    let mut info = FdInfo::default();
    for (n, key, value) in fields(text) {
        match key {
            "pos" => info.pos = parse_dec(FILE, n, value)?,
            "flags" => info.flags = parse_oct(FILE, n, "flags", value)?,
            "mnt_id" => info.mnt_id = parse_dec(FILE, n, value)?,
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture() {
        let i = parse("pos:\t42\nflags:\t02100002\nmnt_id:\t29\nino:\t123\n").unwrap();
        assert_eq!(
            i,
            FdInfo {
                pos: 42,
                flags: 0o2100002,
                mnt_id: 29
            }
        );
        assert_ne!(i.flags & libc::O_CLOEXEC as u32, 0);
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(parse("flags:\t9\n").is_err());
    }
}
