//! The dump stream's container: a POSIX tar archive (ustar), so that
//! `crdump -o - | tar x -C DIR` gives the directory `crdump -o DIR` writes.
//!
//! Each member is a 512-byte header, its bytes, and zeros up to the next
//! 512-byte block; a member too large for ustar's size field (8 GiB) is
//! preceded by a pax extended header (`x`) carrying its `size`, as POSIX
//! `pax` and GNU tar write and read it. The archive ends with two zero
//! blocks: the end-of-stream mark. A receiver ([`Reader`]) tells a whole
//! stream from a cut one by it: bytes missing inside a member, or the mark
//! missing before the end of the input, are [`TarError::Cut`].
//!
//! Only what crdump writes is read back: regular members (`0`) and pax
//! headers in front of them; anything else is refused by name.

use std::io::{self, Read, Write};

/// A tar block.
pub const BLOCK: usize = 512;

/// The largest size ustar's 11 octal digits hold.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// The largest uid, gid or mtime 7 (11 for mtime) octal digits hold.
const USTAR_MAX_ID: u64 = 0o777_7777;
/// The longest member name crdump writes or reads (ustar's `name` field).
const NAME_LEN: usize = 100;
/// The largest pax extended header read.
const MAX_PAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("the stream is cut: it ends after {at} bytes, {what}; it is not a whole dump")]
    Cut { at: u64, what: String },
    #[error("reading the stream at byte {at}: {source}")]
    Read {
        at: u64,
        #[source]
        source: io::Error,
    },
    #[error("the stream is not a crimg dump stream (a tar archive): {why}, at byte {at}")]
    Malformed { at: u64, why: String },
}

/// One member's header as crdump writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

/// `value` as `field.len() - 1` octal digits and a NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// The ustar header block of `name` (`typeflag` `0` or `x`), its
/// checksum computed.
fn header_block(m: &Member, typeflag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = m.name.as_bytes();
    h[..name.len().min(NAME_LEN)].copy_from_slice(&name[..name.len().min(NAME_LEN)]);
    octal(&mut h[100..108], u64::from(m.mode & 0o7777));
    octal(&mut h[108..116], u64::from(m.uid).min(USTAR_MAX_ID));
    octal(&mut h[116..124], u64::from(m.gid).min(USTAR_MAX_ID));
    octal(&mut h[124..136], m.size.min(USTAR_MAX_SIZE));
    octal(&mut h[136..148], m.mtime.min(USTAR_MAX_SIZE));
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

/// One pax record, `"LEN key=value\n"`, whose decimal LEN counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// Zeros from `len` up to the next block.
fn padding(len: u64) -> usize {
    // Below BLOCK.
    usize::try_from(len.next_multiple_of(BLOCK as u64) - len).unwrap_or(0)
}

/// The bytes in front of member `m`'s contents: a pax header when a field
/// does not fit ustar's, then its ustar header.
pub fn member_header(m: &Member) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * BLOCK);
    let mut pax = String::new();
    if m.size > USTAR_MAX_SIZE {
        pax.push_str(&pax_record("size", &m.size.to_string()));
    }
    if u64::from(m.uid) > USTAR_MAX_ID {
        pax.push_str(&pax_record("uid", &m.uid.to_string()));
    }
    if u64::from(m.gid) > USTAR_MAX_ID {
        pax.push_str(&pax_record("gid", &m.gid.to_string()));
    }
    if !pax.is_empty() {
        let ext = Member {
            name: format!("PaxHeaders/{}", m.name),
            size: pax.len() as u64,
            mode: 0o600,
            ..m.clone()
        };
        out.extend_from_slice(&header_block(&ext, b'x'));
        out.extend_from_slice(pax.as_bytes());
        out.resize(out.len() + padding(pax.len() as u64), 0);
    }
    out.extend_from_slice(&header_block(m, b'0'));
    out
}

/// Write member `m` whose contents are `body` (all of them).
pub fn write_member(out: &mut dyn Write, m: &Member, body: &[u8]) -> io::Result<()> {
    out.write_all(&member_header(m))?;
    out.write_all(body)?;
    write_padding(out, body.len() as u64)
}

/// The zeros after a member's `len` bytes of contents.
pub fn write_padding(out: &mut dyn Write, len: u64) -> io::Result<()> {
    out.write_all(&[0u8; BLOCK][..padding(len)])
}

/// The end-of-stream mark: two zero blocks.
pub fn write_end(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(&[0u8; 2 * BLOCK])
}

/// What comes next in a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Member(Member),
    /// The end-of-stream mark, followed by nothing but zeros up to the
    /// end of the input.
    End,
}

/// Reads a dump stream member by member.
pub struct Reader<R> {
    input: R,
    /// Bytes read so far.
    at: u64,
    /// The member whose contents are being read, and how many are left.
    open: Option<(String, u64, u64)>,
}

/// A field's octal number (leading spaces, then digits up to a NUL or a
/// space).
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Self {
        Reader {
            input,
            at: 0,
            open: None,
        }
    }

    /// The input, for reading a member's contents by other means
    /// ([`Self::took_contents`]).
    pub fn input(&self) -> &R {
        &self.input
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Fill `buf` entirely; `Ok(false)` when the input ends first (the
    /// bytes read are counted).
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, TarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.input.read(&mut buf[done..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    done += n;
                    self.at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Read {
                        at: self.at,
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    fn malformed(&self, why: impl Into<String>) -> TarError {
        TarError::Malformed {
            at: self.at,
            why: why.into(),
        }
    }

    fn cut(&self, what: impl Into<String>) -> TarError {
        TarError::Cut {
            at: self.at,
            what: what.into(),
        }
    }

    /// One header block, or `None` for a zero block.
    fn header(&mut self) -> Result<Option<([u8; BLOCK], u8)>, TarError> {
        let mut h = [0u8; BLOCK];
        if !self.fill(&mut h)? {
            return Err(self.cut(if self.at == 0 {
                "before its first member (nothing was received)".to_owned()
            } else {
                "between two members, before the end-of-stream mark".to_owned()
            }));
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if &h[257..262] != b"ustar" {
            return Err(self.malformed("a header without the ustar magic"));
        }
        let recorded = parse_octal(&h[148..156]);
        let mut spaced = h;
        spaced[148..156].fill(b' ');
        let sum: u64 = spaced.iter().map(|&b| u64::from(b)).sum();
        if recorded != Some(sum) {
            return Err(self.malformed("a header whose checksum does not match"));
        }
        Ok(Some((h, h[156])))
    }

    /// The next member's header, or the end of the stream. The previous
    /// member's contents must have been read whole.
    pub fn next_entry(&mut self) -> Result<Next, TarError> {
        if let Some((name, _, left)) = &self.open {
            if *left > 0 {
                return Err(self.malformed(format!("{name}: its contents were not read")));
            }
            self.open = None;
        }
        let mut pax_size = None;
        let mut pax_ids = (None, None);
        loop {
            let Some((h, typeflag)) = self.header()? else {
                // The mark is two zero blocks; after them only zeros (a
                // tar writer's record padding) may follow.
                let mut second = [0u8; BLOCK];
                if !self.fill(&mut second)? {
                    return Err(self.cut("inside the end-of-stream mark"));
                }
                if second.iter().any(|&b| b != 0) {
                    return Err(self.malformed("a zero block followed by data"));
                }
                let mut rest = [0u8; BLOCK];
                loop {
                    let n = self
                        .input
                        .read(&mut rest)
                        .map_err(|source| TarError::Read {
                            at: self.at,
                            source,
                        })?;
                    if n == 0 {
                        return Ok(Next::End);
                    }
                    self.at += n as u64;
                    if rest[..n].iter().any(|&b| b != 0) {
                        return Err(self.malformed("data after the end-of-stream mark"));
                    }
                }
            };
            let name_end = h[..NAME_LEN]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(NAME_LEN);
            let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
            let field = |range: std::ops::Range<usize>, what: &str| {
                parse_octal(&h[range]).ok_or_else(|| self.malformed(format!("{name}: no {what}")))
            };
            let size = field(124..136, "size")?;
            match typeflag {
                b'x' => {
                    if size > MAX_PAX {
                        return Err(self.malformed(format!("{name}: a pax header of {size} bytes")));
                    }
                    let mut body = vec![0u8; usize::try_from(size).unwrap_or(0)];
                    if !self.fill(&mut body)? {
                        return Err(self.cut(format!("inside the pax header {name}")));
                    }
                    self.skip_padding(size, &name)?;
                    for (key, value) in pax_records(&body).map_err(|why| self.malformed(why))? {
                        let number = || {
                            value
                                .parse::<u64>()
                                .map_err(|_| self.malformed(format!("pax {key}={value}")))
                        };
                        match key.as_str() {
                            "size" => pax_size = Some(number()?),
                            "uid" => pax_ids.0 = Some(number()?),
                            "gid" => pax_ids.1 = Some(number()?),
                            _ => {}
                        }
                    }
                }
                b'0' | 0 => {
                    let size = pax_size.unwrap_or(size);
                    let id = |pax: Option<u64>, recorded: u64| {
                        u32::try_from(pax.unwrap_or(recorded)).unwrap_or(u32::MAX)
                    };
                    let member = Member {
                        name: name.clone(),
                        size,
                        // 12 bits.
                        mode: (field(100..108, "mode")? & 0o7777) as u32,
                        uid: id(pax_ids.0, field(108..116, "uid")?),
                        gid: id(pax_ids.1, field(116..124, "gid")?),
                        mtime: field(136..148, "mtime")?,
                    };
                    self.open = Some((name, size, size));
                    return Ok(Next::Member(member));
                }
                other => {
                    return Err(self.malformed(format!(
                        "{name}: a member of type {:?}, not a regular file",
                        char::from(other)
                    )))
                }
            }
        }
    }

    fn skip_padding(&mut self, len: u64, name: &str) -> Result<(), TarError> {
        let mut pad = [0u8; BLOCK];
        let pad = &mut pad[..padding(len)];
        if !self.fill(pad)? {
            return Err(self.cut(format!("in the padding after {name}")));
        }
        Ok(())
    }

    /// Up to `buf.len()` bytes of the open member's contents; 0 once all
    /// are read (its padding is then skipped). Input that ends first is
    /// [`TarError::Cut`].
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let Some((name, size, left)) = self.open.clone() else {
            return Ok(0);
        };
        if left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = loop {
            match self.input.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Read {
                        at: self.at,
                        source,
                    })
                }
            }
        };
        if n == 0 {
            return Err(self.cut(format!(
                "inside {name} ({} of its {size} bytes)",
                size - left
            )));
        }
        self.at += n as u64;
        let left = left - n as u64;
        self.open = Some((name.clone(), size, left));
        if left == 0 {
            self.skip_padding(size, &name)?;
        }
        Ok(n)
    }

    /// How many bytes of the open member's contents are still to read.
    pub fn contents_left(&self) -> u64 {
        self.open.as_ref().map_or(0, |(_, _, left)| *left)
    }

    /// `n` bytes of the open member's contents were taken from the input
    /// by other means (`splice` from its fd: no copy through this
    /// process); its padding follows once all are.
    pub fn took_contents(&mut self, n: u64) -> Result<(), TarError> {
        let Some((name, size, left)) = self.open.clone() else {
            return Err(self.malformed("contents taken outside a member"));
        };
        let Some(left) = left.checked_sub(n) else {
            return Err(self.malformed(format!("{name}: more contents taken than it has")));
        };
        self.at += n;
        self.open = Some((name.clone(), size, left));
        if left == 0 {
            self.skip_padding(size, &name)?;
        }
        Ok(())
    }

    /// All of the open member's contents, refused past `limit` bytes.
    pub fn read_all(&mut self, limit: u64) -> Result<Vec<u8>, TarError> {
        let (name, size) = match &self.open {
            Some((name, size, _)) => (name.clone(), *size),
            None => return Ok(Vec::new()),
        };
        if size > limit {
            return Err(self.malformed(format!("{name}: {size} bytes, more than {limit}")));
        }
        let len =
            usize::try_from(size).map_err(|_| self.malformed(format!("{name}: {size} bytes")))?;
        let mut out = vec![0u8; len];
        let mut done = 0;
        while done < out.len() {
            done += self.read_contents(&mut out[done..])?;
        }
        // A member of 0 bytes: nothing was read, so no padding either.
        self.read_contents(&mut [])?;
        Ok(out)
    }
}

/// The `(key, value)` records of a pax extended header.
fn pax_records(mut body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a pax record without a length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|&len| len > space && len <= body.len())
            .ok_or("a pax record with a bad length")?;
        let record = &body[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or("a pax record without a newline")?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a pax record without '='")?;
        out.push((
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
        ));
        body = &body[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, size: u64) -> Member {
        Member {
            name: name.into(),
            size,
            mode: 0o600,
            uid: 1000,
            gid: 1000,
            mtime: 1_700_000_000,
        }
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, body) in members {
            write_member(&mut out, &member(name, body.len() as u64), body).unwrap();
        }
        write_end(&mut out).unwrap();
        out
    }

    fn read_whole(bytes: &[u8]) -> Result<Vec<(Member, Vec<u8>)>, TarError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        loop {
            match r.next_entry()? {
                Next::Member(m) => {
                    let body = r.read_all(1 << 20)?;
                    out.push((m, body));
                }
                Next::End => return Ok(out),
            }
        }
    }

    #[test]
    fn members_read_back_as_written() {
        let bytes = archive(&[
            ("manifest.json", b"{}\n"),
            ("empty", b""),
            ("task-1.crimg", &[7u8; 1500]),
        ]);
        assert_eq!(bytes.len() % BLOCK, 0);
        let got = read_whole(&bytes).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, member("manifest.json", 3));
        assert_eq!(got[0].1, b"{}\n");
        assert_eq!(got[1].1, b"");
        assert_eq!(got[2].1, vec![7u8; 1500]);
        // Record padding after the mark (as tar writes) is accepted.
        let mut padded = bytes.clone();
        padded.resize(padded.len() + 10 * BLOCK, 0);
        assert_eq!(read_whole(&padded).unwrap().len(), 3);
    }

    #[test]
    fn every_cut_is_refused_as_cut() {
        let bytes = archive(&[("manifest.json", b"{}\n"), ("task-1.crimg", &[7u8; 1500])]);
        for len in 0..bytes.len() {
            match read_whole(&bytes[..len]) {
                Err(TarError::Cut { at, .. }) => assert_eq!(at, len as u64),
                other => panic!("cut at {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn damage_is_refused() {
        let bytes = archive(&[("manifest.json", b"{}\n")]);
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        assert!(matches!(
            read_whole(&flipped),
            Err(TarError::Malformed { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(1);
        assert!(matches!(
            read_whole(&trailing),
            Err(TarError::Malformed { .. })
        ));
        let mut link = archive(&[("x", b"")]);
        link[156] = b'2';
        link[148..156].fill(b' ');
        let sum: u32 = link[..BLOCK].iter().map(|&b| u32::from(b)).sum();
        octal(&mut link[148..155], u64::from(sum));
        let err = read_whole(&link).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_size_past_ustar_goes_in_a_pax_header() {
        let big = member("task-1.crimg", 9 << 30);
        let header = member_header(&big);
        assert_eq!(header.len(), 3 * BLOCK);
        let mut r = Reader::new(&header[..]);
        assert_eq!(r.next_entry().unwrap(), Next::Member(big));
        assert_eq!(pax_record("size", "9663676416"), "19 size=9663676416\n");
        // 9 bytes besides the length, whose own digits make it 11.
        assert_eq!(pax_record("a", "12345"), "11 a=12345\n");
    }
}
