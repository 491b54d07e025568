//! `/proc/self/maps` of the running loader: which ranges it occupies (all of
//! them are unmapped by the plan) and where the kernel put its fresh
//! `[vvar]`, `[vvar_vclock]` and `[vdso]` (moved, as one block, onto the
//! target's old addresses).

/// What a mapping is, as far as the loader cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapKind {
    #[default]
    Other,
    Vvar,
    VvarVclock,
    Vdso,
    Stack,
    Vsyscall,
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub kind: MapKind,
}

/// A line of `/proc/self/maps` that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapsError {
    /// Line `line` (0-based) is malformed.
    Malformed { line: usize },
    /// More than the caller's buffer holds.
    TooMany { capacity: usize },
}

impl core::fmt::Display for MapsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapsError::Malformed { line } => write!(f, "/proc/self/maps line {line} is malformed"),
            MapsError::TooMany { capacity } => {
                write!(f, "/proc/self/maps has more than {capacity} lines")
            }
        }
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

/// Parse `text` into `out`; returns the number of entries.
pub fn parse_maps(text: &[u8], out: &mut [MapsEntry]) -> Result<usize, MapsError> {
    let mut n = 0;
    for (line_no, line) in text.split(|&c| c == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = MapsError::Malformed { line: line_no };
        let range = line.split(|&c| c == b' ').next().ok_or(bad)?;
        let dash = range.iter().position(|&c| c == b'-').ok_or(bad)?;
        let start = hex(&range[..dash]).ok_or(bad)?;
        let end = hex(&range[dash + 1..]).ok_or(bad)?;
        if end <= start {
            return Err(bad);
        }
        // The path is whatever follows the fifth field; special names are
        // bracketed and contain no spaces.
        let name = line.rsplit(|&c| c == b' ').next().unwrap_or(b"");
        let kind = match name {
            b"[vvar]" => MapKind::Vvar,
            b"[vvar_vclock]" => MapKind::VvarVclock,
            b"[vdso]" => MapKind::Vdso,
            b"[stack]" => MapKind::Stack,
            b"[vsyscall]" => MapKind::Vsyscall,
            _ => MapKind::Other,
        };
        let slot = out.get_mut(n).ok_or(MapsError::TooMany { capacity: n })?;
        *slot = MapsEntry { start, end, kind };
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loader_maps() {
        let text = b"00400000-00401000 r--p 00000000 fe:00 12 /usr/bin/crimg-loader\n\
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n\
7ffd3000-7ffd7000 r--p 00000000 00:00 0                          [vvar]\n\
7ffd7000-7ffd9000 r--p 00000000 00:00 0                          [vvar_vclock]\n\
7ffd9000-7ffdb000 r-xp 00000000 00:00 0                          [vdso]\n\
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";
        let mut out = [MapsEntry::default(); 8];
        let n = parse_maps(text, &mut out).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            out[0],
            MapsEntry {
                start: 0x400000,
                end: 0x401000,
                kind: MapKind::Other
            }
        );
        assert_eq!(out[2].kind, MapKind::Vvar);
        assert_eq!(out[3].kind, MapKind::VvarVclock);
        assert_eq!(out[4].kind, MapKind::Vdso);
        assert_eq!(out[5].kind, MapKind::Vsyscall);
        assert!(parse_maps(b"zz-1 r\n", &mut out).is_err());
        assert!(parse_maps(text, &mut out[..2]).is_err());
    }
}
