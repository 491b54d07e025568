//! `/proc/P/smaps`: one entry per VMA with its `VmFlags`.
//!
//! Parsed by hand, not with `procfs-core`: every `VmFlags` mnemonic is kept
//! by name (the crate's 32-bit flag set lacks several and drops what it
//! does not know, yet an unknown flag must refuse the area), and only the
//! fields crimg uses are kept, while the task is frozen.

use super::{parse_dec, parse_hex, ParseError};

const FILE: &str = "smaps";

/// One VMA as smaps shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmapsEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` in the permissions (a shared mapping), else `p`.
    pub shared: bool,
    /// File offset of `start`, bytes.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo name (`[heap]`), without a ` (deleted)` suffix; empty
    /// for anonymous memory.
    pub path: String,
    /// The path ended in ` (deleted)`.
    pub deleted: bool,
    pub rss_kb: u64,
    pub swap_kb: u64,
    /// The two-letter `VmFlags` mnemonics.
    pub vm_flags: Vec<String>,
}

impl SmapsEntry {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }
}

/// Parse the whole of `/proc/P/smaps`.
pub fn parse(text: &str) -> Result<Vec<SmapsEntry>, ParseError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(entry) = parse_header(n, line)? {
            out.push(entry);
            continue;
        }
        let Some(cur) = out.last_mut() else {
            return Err(ParseError::new(FILE, n, "field before the first mapping"));
        };
        let Some((key, value)) = line.split_once(':') else {
            return Err(ParseError::new(
                FILE,
                n,
                format!("unexpected line {line:?}"),
            ));
        };
        let value = value.trim();
        match key {
            "Rss" => cur.rss_kb = parse_kb(n, value)?,
            "Swap" => cur.swap_kb = parse_kb(n, value)?,
            "VmFlags" => cur.vm_flags = value.split_whitespace().map(str::to_owned).collect(),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_kb(n: usize, value: &str) -> Result<u64, ParseError> {
    let num = value.strip_suffix("kB").unwrap_or(value).trim();
    parse_dec(FILE, n, num)
}

/// A header line (`start-end perms offset dev inode [path]`), or `None` for a
/// `Key: value` line.
fn parse_header(n: usize, line: &str) -> Result<Option<SmapsEntry>, ParseError> {
    let mut rest = line;
    let mut fields = [""; 5];
    for f in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *f = &rest[..end];
        rest = &rest[end..];
    }
    let Some((start, end)) = fields[0].split_once('-') else {
        return Ok(None);
    };
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let perms = fields[1].as_bytes();
    if perms.len() != 4 {
        return Err(ParseError::new(
            FILE,
            n,
            format!("bad permissions {:?}", fields[1]),
        ));
    }
    let (major, minor) = fields[3]
        .split_once(':')
        .ok_or_else(|| ParseError::new(FILE, n, format!("bad device {:?}", fields[3])))?;
    let mut path = rest.trim_start_matches(' ').to_owned();
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path.truncate(path.len() - " (deleted)".len());
    }
    Ok(Some(SmapsEntry {
        start: parse_hex(FILE, n, start)?,
        end: parse_hex(FILE, n, end)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: parse_hex(FILE, n, fields[2])?,
        dev_major: u32::try_from(parse_hex(FILE, n, major)?).unwrap_or(u32::MAX),
        dev_minor: u32::try_from(parse_hex(FILE, n, minor)?).unwrap_or(u32::MAX),
        inode: parse_dec(FILE, n, fields[4])?,
        path,
        deleted,
        ..SmapsEntry::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1835045                    /usr/bin/sleep
Size:                  8 kB
Rss:                   8 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd 
55d0c9b1c000-55d0c9b3d000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                   4 kB
Swap:                 12 kB
VmFlags: rd wr mr mw me ac sd 
7f0000000000-7f0000001000 rw-s 00000000 00:01 1024                       /dev/zero (deleted)
Rss:                   0 kB
VmFlags: rd wr sh mr mw me ms sd 
7f0000002000-7f0000003000 rw-p 00001000 fe:01 77                         /tmp/a file with spaces
VmFlags: rd wr mr mw me ac sd 
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me gd ac 
";

    #[test]
    fn parses_headers_fields_and_flags() {
        let v = parse(FIXTURE).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].start, 0x55d0c8a00000);
        assert_eq!(v[0].end, 0x55d0c8a02000);
        assert!(v[0].read && !v[0].write && !v[0].exec && !v[0].shared);
        assert_eq!(
            (v[0].dev_major, v[0].dev_minor, v[0].inode),
            (0xfe, 1, 1835045)
        );
        assert_eq!(v[0].path, "/usr/bin/sleep");
        assert_eq!(v[1].path, "[heap]");
        assert_eq!((v[1].rss_kb, v[1].swap_kb), (4, 12));
        assert!(v[1].has_flag("ac"));
        assert!(v[2].shared && v[2].deleted);
        assert_eq!(v[2].path, "/dev/zero");
        assert_eq!(v[3].path, "/tmp/a file with spaces");
        assert_eq!(v[3].offset, 0x1000);
        assert_eq!(v[4].path, "");
        assert!(v[4].has_flag("gd"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("Rss: 4 kB\n").is_err());
        assert!(parse("1000-2000 rw 0 00:00 0\n").is_err());
        assert!(parse("1000-2000 rw-p zz 00:00 0\n").is_err());
    }
}
