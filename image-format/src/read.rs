//! Parsing and validating an image from a byte slice, without allocating.
//!
//! [`Image::parse`] checks everything that later code trusts: the ELF header
//! and crimg ident, the program header table, the bounds of every segment and
//! note, that each record note's records fit, the headers-and-notes checksum
//! and the file size. Segment *contents* are checked separately by
//! [`Image::verify_segments`], since that reads every stored page.

use core::fmt;

use zerocopy::{FromBytes, FromZeros};

use crate::elf::{self, Ehdr, FpxSwBytes, Nhdr, Phdr, Prstatus, Shdr, UserRegs, XsaveHeader};
use crate::records::{
    self, note, ChecksumRecord, CredsRecord, FdRecord, GadgetsRecord, MmRecord, NoteVersions,
    ProcessRecord, Record, RecordHeader, SegmentChecksumRecord, StrRef, ThreadRecord, VmaRecord,
    KNOWN_NOTES,
};
use crate::{is_page_aligned, FORMAT_VERSION, IDENT, OLDEST_FORMAT_VERSION, PAGE_SIZE};

/// Why an image was refused. Offsets are byte offsets in the image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The file is shorter than a structure it must contain.
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_size: u64,
    },
    /// Not an ELF64 little-endian x86_64 core file.
    NotElfCore { what: &'static str },
    /// An ELF core file, but not a crimg image (no crimg magic).
    NotCrimg,
    /// A crimg image of a format version this reader does not know.
    UnsupportedVersion { found: u8, oldest: u8, newest: u8 },
    /// A crimg note whose record version this reader does not know (most
    /// likely written by a newer crimg).
    UnsupportedRecordVersion {
        note_type: u32,
        found: u16,
        oldest: u16,
        newest: u16,
    },
    /// A crimg note type appears more than once.
    DuplicateNote { note_type: u32, offset: u64 },
    /// A header field has a value the format forbids.
    BadHeader { what: &'static str, value: u64 },
    /// A program header is malformed.
    BadSegment { index: u32, what: &'static str },
    /// A note is malformed.
    BadNote { offset: u64, what: &'static str },
    /// A required note is missing.
    MissingNote { note_type: u32 },
    /// A record note is malformed.
    BadRecords { note_type: u32, what: &'static str },
    /// A string reference points outside the string table.
    BadString { offset: u32, len: u32 },
    /// The checksum of the headers or notes does not match.
    ChecksumMismatch {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// The checksum of a segment's contents does not match.
    SegmentChecksumMismatch {
        index: u32,
        vaddr: u64,
        expected: u64,
        found: u64,
    },
    /// The recorded file size differs from the actual one.
    SizeMismatch { recorded: u64, actual: u64 },
    /// Two memory areas or segments overlap, or a segment is outside every area.
    BadLayout { what: &'static str, addr: u64 },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { what, offset, needed, file_size } => write!(
                f,
                "truncated image: {what} needs {needed} bytes at offset {offset} but the file has {file_size}"
            ),
            Self::NotElfCore { what } => write!(f, "not an x86_64 ELF core file ({what})"),
            Self::NotCrimg => write!(f, "an ELF core file but not a crimg image (no crimg magic)"),
            Self::UnsupportedVersion { found, oldest, newest } => {
                write!(f, "image format version {found} is not supported (this build reads versions {oldest} to {newest})")
            }
            Self::UnsupportedRecordVersion { note_type, found, oldest, newest } => write!(
                f,
                "note {} ({note_type:#x}) has record version {found}, which this build does not read (it reads versions {oldest} to {newest}; {})",
                note::name(note_type),
                if found > newest { "written by a newer crimg?" } else { "corrupt?" }
            ),
            Self::DuplicateNote { note_type, offset } => write!(
                f,
                "note {} ({note_type:#x}) appears twice (again at offset {offset:#x})",
                note::name(note_type)
            ),
            Self::BadHeader { what, value } => write!(f, "bad ELF header: {what} ({value:#x})"),
            Self::BadSegment { index, what } => write!(f, "bad program header {index}: {what}"),
            Self::BadNote { offset, what } => write!(f, "bad note at offset {offset:#x}: {what}"),
            Self::MissingNote { note_type } => {
                write!(f, "required note {} ({note_type:#x}) is missing", note::name(note_type))
            }
            Self::BadRecords { note_type, what } => {
                write!(f, "bad records in note {} ({note_type:#x}): {what}", note::name(note_type))
            }
            Self::BadString { offset, len } => {
                write!(f, "string reference {offset}+{len} is outside the string table")
            }
            Self::ChecksumMismatch { what, expected, found } => {
                write!(f, "checksum mismatch in {what}: recorded {expected:#018x}, computed {found:#018x}")
            }
            Self::SegmentChecksumMismatch { index, vaddr, expected, found } => write!(
                f,
                "checksum mismatch in segment {index} (memory at {vaddr:#x}): recorded {expected:#018x}, computed {found:#018x}"
            ),
            Self::SizeMismatch { recorded, actual } => {
                write!(f, "image size is {actual} bytes but {recorded} were written (truncated or extended)")
            }
            Self::BadLayout { what, addr } => write!(f, "bad memory layout at {addr:#x}: {what}"),
        }
    }
}

impl core::error::Error for ImageError {}

/// Limits that keep a hostile image from making a reader spin or overflow.
pub mod limits {
    /// Program headers (`PN_XNUM` allows more than 65 535).
    pub const MAX_SEGMENTS: u64 = 1 << 22;
    /// Total note bytes.
    pub const MAX_NOTES_SIZE: u64 = 64 << 20;
    /// Threads in one image.
    pub const MAX_THREADS: u32 = 1 << 16;
}

/// A `PT_LOAD` segment: stored page contents for `[vaddr, vaddr + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub index: u32,
    pub vaddr: u64,
    /// Offset in the image file (page-aligned).
    pub offset: u64,
    pub len: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.vaddr + self.len
    }

    /// Whether the segment's pages are in the parent image (an
    /// incremental image, [`records::PF_FROM_PARENT`]): `offset` is 0 and
    /// nothing of this file holds them.
    pub fn from_parent(&self) -> bool {
        self.flags & records::PF_FROM_PARENT != 0
    }
}

/// One note in the `PT_NOTE` segment.
#[derive(Clone, Copy, Debug)]
pub struct Note<'a> {
    /// Offset of the note header in the file.
    pub offset: u64,
    pub owner: &'a [u8],
    pub note_type: u32,
    pub desc: &'a [u8],
}

/// One thread's state, gathered from its standard and crimg notes.
#[derive(Clone, Copy, Debug)]
pub struct ThreadView<'a> {
    pub record: ThreadRecord,
    pub prstatus: Prstatus,
    /// The `NT_X86_XSTATE` payload (standard XSAVE format).
    pub xsave: &'a [u8],
}

impl ThreadView<'_> {
    pub fn regs(&self) -> UserRegs {
        self.prstatus.pr_reg
    }

    /// `XSTATE_BV` of the saved area: the features whose state it holds.
    pub fn xstate_bv(&self) -> u64 {
        read_at::<XsaveHeader>(self.xsave, elf::XSAVE_HEADER_OFFSET).map_or(0, |h| h.xstate_bv)
    }

    /// The feature mask the kernel recorded in the software-reserved bytes
    /// (`_fpx_sw_bytes.xfeatures`), i.e. the XCR0 of the dumping machine.
    pub fn xfeatures(&self) -> u64 {
        read_at::<FpxSwBytes>(self.xsave, elf::FX_SW_BYTES_OFFSET).map_or(0, |sw| sw.xfeatures)
    }
}

/// A `PT_LOAD` marked [`records::PF_FROM_PARENT`] (segment `i`, 0-based):
/// no bytes in this file, `p_memsz` bytes of memory from the parent.
fn parent_segment(i: u32, ph: &Phdr) -> Result<Segment, ImageError> {
    let bad = |what| ImageError::BadSegment { index: i + 1, what };
    if ph.p_filesz != 0 || ph.p_offset != 0 || ph.p_memsz == 0 {
        return Err(bad("pages from the parent, but with file contents or none"));
    }
    if !is_page_aligned(ph.p_vaddr) || !is_page_aligned(ph.p_memsz) {
        return Err(bad("not page-aligned"));
    }
    if ph
        .p_vaddr
        .checked_add(ph.p_memsz)
        .is_none_or(|e| e > (1 << 47))
    {
        return Err(bad("outside the user address space"));
    }
    Ok(Segment {
        index: i,
        vaddr: ph.p_vaddr,
        offset: 0,
        len: ph.p_memsz,
        flags: ph.p_flags,
    })
}

/// The `T` at `bytes[at..]`, if it fits.
fn read_at<T: FromBytes>(bytes: &[u8], at: usize) -> Option<T> {
    T::read_from_prefix(bytes.get(at..)?).ok().map(|(t, _)| t)
}

/// The crimg notes the reader looks up, found in one pass at parse: the
/// descriptor of each crimg note type [`note::FIRST`]..=[`note::LAST`] (a
/// fixed array, no allocation), so a lookup is an index, not a scan.
#[derive(Clone, Copy, Debug, Default)]
struct NoteIndex<'a> {
    crimg: [Option<&'a [u8]>; NOTE_SLOTS],
    /// `NT_AUXV`.
    auxv: Option<&'a [u8]>,
}

const NOTE_SLOTS: usize = (note::LAST - note::FIRST + 1) as usize;

/// The slot of crimg note type `note_type` in a [`NoteIndex`].
fn note_slot(note_type: u32) -> Option<usize> {
    let slot = usize::try_from(note_type.checked_sub(note::FIRST)?).ok()?;
    (slot < NOTE_SLOTS).then_some(slot)
}

impl<'a> NoteIndex<'a> {
    fn crimg(&self, note_type: u32) -> Option<&'a [u8]> {
        self.crimg[note_slot(note_type)?]
    }
}

/// A parsed, validated image borrowing its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
    ehdr: Ehdr,
    phoff: u64,
    phnum: u64,
    notes_offset: u64,
    notes_len: u64,
    index: NoteIndex<'a>,
    strtab: &'a [u8],
    process: ProcessRecord,
    mm: MmRecord,
    nthreads: u32,
    nsegments: u32,
}

/// A byte count as a file offset (`usize` is 64 bits on the only target).
fn len64(n: usize) -> u64 {
    n as u64
}

/// The size of `T` in bytes, as a file length.
const fn size64<T>() -> u64 {
    core::mem::size_of::<T>() as u64
}

fn get<'a>(
    bytes: &'a [u8],
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<&'a [u8], ImageError> {
    let file_size = len64(bytes.len());
    let truncated = ImageError::Truncated {
        what,
        offset,
        needed: len,
        file_size,
    };
    let end = offset.checked_add(len).ok_or(truncated)?;
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(end).ok())
        .ok_or(truncated)?;
    bytes.get(range.0..range.1).ok_or(truncated)
}

fn read_struct<T: FromBytes>(
    bytes: &[u8],
    what: &'static str,
    offset: u64,
) -> Result<T, ImageError> {
    let len = size64::<T>();
    let raw = get(bytes, what, offset, len)?;
    T::read_from_bytes(raw).map_err(|_| ImageError::Truncated {
        what,
        offset,
        needed: len,
        file_size: len64(bytes.len()),
    })
}

fn align4(x: u64) -> u64 {
    (x + 3) & !3
}

/// What the one pass over the notes found besides the index.
struct NoteScan<'a> {
    /// `NT_PRSTATUS` notes: one per thread.
    prstatus: u32,
    /// The last note (the checksum, in a valid image).
    last: Option<Note<'a>>,
}

/// Records of one type in a crimg note.
#[derive(Clone, Debug)]
pub struct Records<'a, T> {
    data: &'a [u8],
    record_size: usize,
    remaining: u32,
    _marker: core::marker::PhantomData<T>,
}

impl<'a, T: Record> Records<'a, T> {
    fn empty() -> Self {
        Records {
            data: &[],
            record_size: 1,
            remaining: 0,
            _marker: core::marker::PhantomData,
        }
    }

    /// Checks a record note's header (its version and size) against the
    /// note.
    fn from_desc(desc: &'a [u8]) -> Result<Self, ImageError> {
        let header = check_record_header(desc, NoteVersions::of::<T>())?;
        let bad = |what| ImageError::BadRecords {
            note_type: T::NOTE_TYPE,
            what,
        };
        let data = &desc[core::mem::size_of::<RecordHeader>()..];
        let needed = u64::from(header.record_size) * u64::from(header.count);
        let data = usize::try_from(needed)
            .ok()
            .and_then(|n| data.get(..n))
            .ok_or(bad("records extend past the note"))?;
        Ok(Records {
            data,
            record_size: usize::from(header.record_size),
            remaining: header.count,
            _marker: core::marker::PhantomData,
        })
    }

    pub fn len(&self) -> u32 {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Record `i` of those not yet iterated (0-based), if there is one.
    pub fn get(&self, i: u32) -> Option<T> {
        if i >= self.remaining {
            return None;
        }
        let at = usize::try_from(i).ok()?.checked_mul(self.record_size)?;
        let rec = self.data.get(at..at.checked_add(self.record_size)?)?;
        Some(decode(rec))
    }

    /// The record an object index names (1-based, as `FdRecord::object`).
    pub fn object(&self, index: u32) -> Option<T> {
        self.get(index.checked_sub(1)?)
    }
}

/// One record from its bytes: a longer record (from a newer writer) is
/// read as its prefix, a shorter one (an older writer) zero-filled.
fn decode<T: Record>(rec: &[u8]) -> T {
    let mut value = T::new_zeroed();
    let dst = value.as_mut_bytes();
    let n = dst.len().min(rec.len());
    dst[..n].copy_from_slice(&rec[..n]);
    value
}

impl<T: Record> Iterator for Records<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.remaining == 0 {
            return None;
        }
        let (rec, rest) = self.data.split_at(self.record_size);
        self.data = rest;
        self.remaining -= 1;
        Some(decode(rec))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// The [`RecordHeader`] of a crimg note, once its version is one this build
/// reads and its record size is not zero.
fn check_record_header(desc: &[u8], versions: NoteVersions) -> Result<RecordHeader, ImageError> {
    let note_type = versions.note_type;
    let bad = |what| ImageError::BadRecords { note_type, what };
    let header = RecordHeader::read_from_prefix(desc)
        .map_err(|_| bad("shorter than its header"))?
        .0;
    if !versions.accepts(header.version) {
        return Err(ImageError::UnsupportedRecordVersion {
            note_type,
            found: header.version,
            oldest: versions.oldest,
            newest: versions.newest,
        });
    }
    if header.record_size == 0 {
        return Err(bad("record size is zero"));
    }
    Ok(header)
}

/// Iterator over the notes of the `PT_NOTE` segment.
#[derive(Clone, Debug)]
pub struct Notes<'a> {
    bytes: &'a [u8],
    pos: u64,
    end: u64,
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<Note<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let r = self.parse_one();
        if r.is_err() {
            self.pos = self.end;
        }
        Some(r)
    }
}

impl<'a> Notes<'a> {
    /// The notes in `bytes[start..end]` (the bounds were checked by the caller).
    pub(crate) fn new(bytes: &'a [u8], start: u64, end: u64) -> Self {
        Notes {
            bytes,
            pos: start,
            end,
        }
    }

    fn parse_one(&mut self) -> Result<Note<'a>, ImageError> {
        let offset = self.pos;
        let bad = |what| ImageError::BadNote { offset, what };
        if self.end - offset < size64::<Nhdr>() {
            return Err(bad("note header runs past the note segment"));
        }
        let nhdr: Nhdr = read_struct(self.bytes, "note header", offset)?;
        let name_off = offset + size64::<Nhdr>();
        let desc_off = name_off + align4(u64::from(nhdr.n_namesz));
        let next = desc_off + align4(u64::from(nhdr.n_descsz));
        if desc_off > self.end || next > self.end {
            return Err(bad("note runs past the note segment"));
        }
        let name = get(self.bytes, "note name", name_off, u64::from(nhdr.n_namesz))?;
        // Owner names are NUL-terminated; compare without the terminator.
        let owner = match name.split_last() {
            Some((0, rest)) => rest,
            _ => name,
        };
        let desc = get(
            self.bytes,
            "note descriptor",
            desc_off,
            u64::from(nhdr.n_descsz),
        )?;
        self.pos = next;
        Ok(Note {
            offset,
            owner,
            note_type: nhdr.n_type,
            desc,
        })
    }
}

impl<'a> Image<'a> {
    /// Parses and validates an image (everything but segment contents).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let file_size = len64(bytes.len());
        let ehdr: Ehdr = read_struct(bytes, "ELF header", 0)?;
        let id = &ehdr.e_ident;
        if id[..4] != elf::ELFMAG {
            return Err(ImageError::NotElfCore {
                what: "no ELF magic",
            });
        }
        if id[4] != elf::ELFCLASS64 || id[5] != elf::ELFDATA2LSB {
            return Err(ImageError::NotElfCore {
                what: "not 64-bit little-endian",
            });
        }
        if ehdr.e_type != elf::ET_CORE {
            return Err(ImageError::NotElfCore {
                what: "not a core file",
            });
        }
        if ehdr.e_machine != elf::EM_X86_64 {
            return Err(ImageError::NotElfCore { what: "not x86_64" });
        }
        if id[9..14] != IDENT[9..14] {
            return Err(ImageError::NotCrimg);
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&id[14]) {
            return Err(ImageError::UnsupportedVersion {
                found: id[14],
                oldest: OLDEST_FORMAT_VERSION,
                newest: FORMAT_VERSION,
            });
        }
        if usize::from(ehdr.e_phentsize) != core::mem::size_of::<Phdr>() {
            return Err(ImageError::BadHeader {
                what: "e_phentsize",
                value: ehdr.e_phentsize.into(),
            });
        }
        let phnum = if ehdr.e_phnum == elf::PN_XNUM {
            if ehdr.e_shnum == 0 || usize::from(ehdr.e_shentsize) != core::mem::size_of::<Shdr>() {
                return Err(ImageError::BadHeader {
                    what: "PN_XNUM without section header 0",
                    value: 0,
                });
            }
            let sh0: Shdr = read_struct(bytes, "section header 0", ehdr.e_shoff)?;
            u64::from(sh0.sh_info)
        } else {
            u64::from(ehdr.e_phnum)
        };
        if phnum == 0 || phnum > limits::MAX_SEGMENTS {
            return Err(ImageError::BadHeader {
                what: "program header count",
                value: phnum,
            });
        }
        let phoff = ehdr.e_phoff;
        get(
            bytes,
            "program header table",
            phoff,
            phnum * size64::<Phdr>(),
        )?;

        // The first program header is the PT_NOTE; every other is a PT_LOAD.
        let pnote: Phdr = read_struct(bytes, "program header", phoff)?;
        if pnote.p_type != elf::PT_NOTE {
            return Err(ImageError::BadSegment {
                index: 0,
                what: "first program header is not PT_NOTE",
            });
        }
        if pnote.p_filesz > limits::MAX_NOTES_SIZE {
            return Err(ImageError::BadSegment {
                index: 0,
                what: "note segment too large",
            });
        }
        get(bytes, "note segment", pnote.p_offset, pnote.p_filesz)?;

        let mut img = Image {
            bytes,
            ehdr,
            phoff,
            phnum,
            notes_offset: pnote.p_offset,
            notes_len: pnote.p_filesz,
            index: NoteIndex::default(),
            strtab: &[],
            process: ProcessRecord::new_zeroed(),
            mm: MmRecord::default(),
            nthreads: 0,
            // At most MAX_SEGMENTS (checked above), which fits.
            nsegments: u32::try_from(phnum - 1).unwrap_or(u32::MAX),
        };
        let scan = img.index_notes()?;
        img.check_checksum_note(scan.last, file_size)?;
        img.check_notes(scan.prstatus)?;
        img.check_segments()?;
        Ok(img)
    }

    /// The one pass over the notes: checks every note's bounds, fills the
    /// note index, counts the threads' `NT_PRSTATUS` notes and finds the
    /// last note.
    fn index_notes(&mut self) -> Result<NoteScan<'a>, ImageError> {
        let mut prstatus = 0u32;
        let mut last = None;
        for n in self.notes() {
            let n = n?;
            last = Some(n);
            if n.owner == elf::OWNER_CORE {
                match n.note_type {
                    elf::NT_PRSTATUS => {
                        if n.desc.len() < core::mem::size_of::<Prstatus>() {
                            return Err(ImageError::BadNote {
                                offset: n.offset,
                                what: "NT_PRSTATUS too short",
                            });
                        }
                        prstatus += 1;
                    }
                    elf::NT_AUXV => {
                        self.index.auxv.get_or_insert(n.desc);
                    }
                    _ => {}
                }
                continue;
            }
            if n.owner != records::OWNER_CRIMG {
                continue;
            }
            // Note types this build does not know are skipped (a newer
            // writer's additions).
            let Some(slot) = note_slot(n.note_type) else {
                continue;
            };
            if self.index.crimg[slot].replace(n.desc).is_some() {
                return Err(ImageError::DuplicateNote {
                    note_type: n.note_type,
                    offset: n.offset,
                });
            }
        }
        Ok(NoteScan { prstatus, last })
    }

    /// The checksum note is last; it covers everything before it.
    fn check_checksum_note(
        &self,
        last: Option<Note<'a>>,
        file_size: u64,
    ) -> Result<(), ImageError> {
        let last = last.ok_or(ImageError::MissingNote {
            note_type: note::CHECKSUM,
        })?;
        if last.owner != records::OWNER_CRIMG || last.note_type != note::CHECKSUM {
            return Err(ImageError::MissingNote {
                note_type: note::CHECKSUM,
            });
        }
        // Unlike other records, the checksum record is not read by prefix: a
        // reader must know exactly how it was computed before trusting it.
        let bad_sum = |what| ImageError::BadRecords {
            note_type: note::CHECKSUM,
            what,
        };
        let header = check_record_header(last.desc, NoteVersions::of::<ChecksumRecord>())?;
        if usize::from(header.record_size) != core::mem::size_of::<ChecksumRecord>() {
            return Err(bad_sum("unknown checksum record size"));
        }
        let sum: ChecksumRecord = Records::<ChecksumRecord>::from_desc(last.desc)?
            .next()
            .ok_or(ImageError::BadRecords {
                note_type: note::CHECKSUM,
                what: "no record",
            })?;
        if sum.file_size != file_size {
            return Err(ImageError::SizeMismatch {
                recorded: sum.file_size,
                actual: file_size,
            });
        }
        let found = self.headers_checksum();
        if found != sum.headers {
            return Err(ImageError::ChecksumMismatch {
                what: "ELF and program headers",
                expected: sum.headers,
                found,
            });
        }
        let covered = get(
            self.bytes,
            "notes",
            self.notes_offset,
            last.offset - self.notes_offset,
        )?;
        let found = crate::checksum(covered);
        if found != sum.notes {
            return Err(ImageError::ChecksumMismatch {
                what: "notes",
                expected: sum.notes,
                found,
            });
        }
        Ok(())
    }

    /// Checksum of the ELF header and the program header table.
    fn headers_checksum(&self) -> u64 {
        let mut h = crate::Checksummer::new();
        // Both ranges were checked by `parse`: an empty slice cannot occur.
        h.update(get(self.bytes, "ELF header", 0, size64::<Ehdr>()).unwrap_or(&[]));
        let table = get(
            self.bytes,
            "program header table",
            self.phoff,
            self.phnum * size64::<Phdr>(),
        );
        h.update(table.unwrap_or(&[]));
        h.digest()
    }

    fn check_notes(&mut self, prstatus: u32) -> Result<(), ImageError> {
        // Every known note's record version first: a note from a newer
        // writer is refused by its name, whichever note it is.
        for versions in KNOWN_NOTES {
            if let Some(desc) = self.index.crimg(versions.note_type) {
                check_record_header(desc, *versions)?;
            }
        }
        self.strtab = self.index.crimg(note::STRTAB).unwrap_or(&[]);
        self.process = self
            .records::<ProcessRecord>()?
            .next()
            .ok_or(ImageError::MissingNote {
                note_type: note::PROCESS,
            })?;
        self.mm = self
            .records::<MmRecord>()?
            .next()
            .ok_or(ImageError::MissingNote {
                note_type: note::MM,
            })?;
        let threads = self.records::<ThreadRecord>()?;
        if threads.is_empty() || threads.len() > limits::MAX_THREADS {
            return Err(ImageError::BadRecords {
                note_type: note::THREADS,
                what: "thread count",
            });
        }
        if threads.len() != prstatus {
            return Err(ImageError::BadRecords {
                note_type: note::THREADS,
                what: "thread records and NT_PRSTATUS notes differ in number",
            });
        }
        self.nthreads = prstatus;
        // Every thread must have its xsave area; thread views are built from notes.
        for t in self.threads() {
            t?;
        }
        // Every string reference must resolve.
        let p = self.process;
        for s in [p.exe, p.cwd, p.root, p.cmdline] {
            self.string(s)?;
        }
        for v in self.vmas()? {
            self.string(v.path)?;
        }
        for f in self.fds()? {
            self.string(f.path)?;
        }
        for w in self.records::<records::WarningRecord>()? {
            self.string(w.message)?;
        }
        match self.records::<records::ParentRecord>()?.next() {
            Some(p) => {
                self.string(p.path)?;
            }
            None => {
                if let Some(s) = self.segments().find(Segment::from_parent) {
                    return Err(ImageError::BadSegment {
                        index: s.index + 1,
                        what: "pages from a parent image, but no parent note",
                    });
                }
            }
        }
        let sums = self.records::<SegmentChecksumRecord>()?;
        if sums.len() != self.nsegments {
            return Err(ImageError::BadRecords {
                note_type: note::SEGMENT_CHECKSUMS,
                what: "one checksum per PT_LOAD expected",
            });
        }
        Ok(())
    }

    fn check_segments(&self) -> Result<(), ImageError> {
        let mut prev_end = 0u64;
        let mut vmas = self.vmas()?.peekable();
        let mut vma_prev_end = 0u64;
        for v in self.vmas()? {
            if v.start >= v.end || !is_page_aligned(v.start) || !is_page_aligned(v.end) {
                return Err(ImageError::BadLayout {
                    what: "memory area empty or not page-aligned",
                    addr: v.start,
                });
            }
            if v.start < vma_prev_end {
                return Err(ImageError::BadLayout {
                    what: "memory areas overlap or are unsorted",
                    addr: v.start,
                });
            }
            vma_prev_end = v.end;
        }
        for i in 0..self.nsegments {
            let s = self.segment(i)?;
            if s.vaddr < prev_end {
                return Err(ImageError::BadLayout {
                    what: "segments overlap or are unsorted",
                    addr: s.vaddr,
                });
            }
            prev_end = s.end();
            // Each segment lies inside one memory area.
            loop {
                match vmas.peek() {
                    Some(v) if v.end <= s.vaddr => {
                        vmas.next();
                    }
                    Some(v) if v.start <= s.vaddr && s.end() <= v.end => break,
                    _ => {
                        return Err(ImageError::BadLayout {
                            what: "segment outside every memory area",
                            addr: s.vaddr,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// The `i`-th `PT_LOAD` segment (0-based, in program header order).
    pub fn segment(&self, i: u32) -> Result<Segment, ImageError> {
        if i >= self.nsegments {
            return Err(ImageError::BadSegment {
                index: i,
                what: "no such segment",
            });
        }
        let index = i + 1;
        let ph: Phdr = read_struct(
            self.bytes,
            "program header",
            self.phoff + u64::from(index) * size64::<Phdr>(),
        )?;
        let bad = |what| ImageError::BadSegment { index, what };
        if ph.p_type != elf::PT_LOAD {
            return Err(bad("not PT_LOAD"));
        }
        if ph.p_flags & records::PF_FROM_PARENT != 0 {
            return parent_segment(i, &ph);
        }
        if ph.p_filesz != ph.p_memsz || ph.p_filesz == 0 {
            return Err(bad("file size differs from memory size, or is zero"));
        }
        if !is_page_aligned(ph.p_offset)
            || !is_page_aligned(ph.p_vaddr)
            || !is_page_aligned(ph.p_filesz)
        {
            return Err(bad("not page-aligned"));
        }
        if ph
            .p_vaddr
            .checked_add(ph.p_filesz)
            .is_none_or(|e| e > (1 << 47))
        {
            return Err(bad("outside the user address space"));
        }
        get(self.bytes, "segment contents", ph.p_offset, ph.p_filesz)?;
        Ok(Segment {
            index: i,
            vaddr: ph.p_vaddr,
            offset: ph.p_offset,
            len: ph.p_filesz,
            flags: ph.p_flags,
        })
    }

    /// All `PT_LOAD` segments.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        // Bounds were checked by `parse`.
        (0..self.nsegments).filter_map(move |i| self.segment(i).ok())
    }

    pub fn segment_count(&self) -> u32 {
        self.nsegments
    }

    /// The stored bytes of a segment of this image (empty for a segment that
    /// did not come from it, or whose pages are in the parent image).
    pub fn segment_bytes(&self, s: &Segment) -> &'a [u8] {
        if s.from_parent() {
            return &[];
        }
        let range = usize::try_from(s.offset)
            .ok()
            .zip(usize::try_from(s.offset.saturating_add(s.len)).ok());
        range.and_then(|(a, b)| self.bytes.get(a..b)).unwrap_or(&[])
    }

    /// Checks the checksum of every segment's contents stored in this file
    /// (reads every stored page). The segments whose pages are in the
    /// parent image are checked with the chain (`crate::chain`).
    pub fn verify_segments(&self) -> Result<(), ImageError> {
        let mut sums = self.records::<SegmentChecksumRecord>()?;
        for s in self.segments() {
            let expected = sums
                .next()
                .ok_or(ImageError::BadRecords {
                    note_type: note::SEGMENT_CHECKSUMS,
                    what: "missing checksum",
                })?
                .checksum;
            if s.from_parent() {
                continue;
            }
            let found = crate::checksum(self.segment_bytes(&s));
            if found != expected {
                return Err(ImageError::SegmentChecksumMismatch {
                    index: s.index,
                    vaddr: s.vaddr,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// The whole image.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn header(&self) -> &Ehdr {
        &self.ehdr
    }

    /// All notes, in file order.
    pub fn notes(&self) -> Notes<'a> {
        Notes {
            bytes: self.bytes,
            pos: self.notes_offset,
            end: self.notes_offset + self.notes_len,
        }
    }

    /// The first note with this owner and type.
    pub fn find_note(&self, owner: &[u8], note_type: u32) -> Option<Note<'a>> {
        self.notes()
            .filter_map(Result::ok)
            .find(|n| n.owner == owner && n.note_type == note_type)
    }

    /// The descriptor of crimg note `note_type`, from the index built at
    /// parse (a scan only for a type outside the indexed range).
    pub fn crimg_note(&self, note_type: u32) -> Option<&'a [u8]> {
        match note_slot(note_type) {
            Some(_) => self.index.crimg(note_type),
            None => self
                .find_note(records::OWNER_CRIMG, note_type)
                .map(|n| n.desc),
        }
    }

    /// Records of type `T`; an absent note yields no records.
    pub fn records<T: Record>(&self) -> Result<Records<'a, T>, ImageError> {
        match self.crimg_note(T::NOTE_TYPE) {
            Some(desc) => Records::from_desc(desc),
            None => Ok(Records::empty()),
        }
    }

    /// A string from the string table.
    pub fn string(&self, s: StrRef) -> Result<&'a [u8], ImageError> {
        let bad = ImageError::BadString {
            offset: s.offset,
            len: s.len,
        };
        let start = usize::try_from(s.offset).map_err(|_| bad)?;
        let len = usize::try_from(s.len).map_err(|_| bad)?;
        let end = start.checked_add(len).ok_or(bad)?;
        self.strtab.get(start..end).ok_or(bad)
    }

    pub fn process(&self) -> ProcessRecord {
        self.process
    }

    pub fn mm(&self) -> MmRecord {
        self.mm
    }

    pub fn creds(&self) -> Option<CredsRecord> {
        self.records::<CredsRecord>().ok()?.next()
    }

    /// Gadgets found by the dumper (zero addresses when none).
    pub fn gadgets(&self) -> GadgetsRecord {
        self.records::<GadgetsRecord>()
            .ok()
            .and_then(|mut r| r.next())
            .unwrap_or_default()
    }

    pub fn vmas(&self) -> Result<Records<'a, VmaRecord>, ImageError> {
        self.records::<VmaRecord>()
    }

    pub fn fds(&self) -> Result<Records<'a, FdRecord>, ImageError> {
        self.records::<FdRecord>()
    }

    pub fn thread_count(&self) -> u32 {
        self.nthreads
    }

    /// The auxiliary vector (`NT_AUXV`), as raw (type, value) u64 pairs.
    pub fn auxv(&self) -> &'a [u8] {
        self.index.auxv.unwrap_or(&[])
    }

    /// Threads, leader first: each `NT_PRSTATUS` with the `NT_X86_XSTATE`
    /// that follows it, joined with the matching [`ThreadRecord`].
    pub fn threads(&self) -> impl Iterator<Item = Result<ThreadView<'a>, ImageError>> + 'a {
        let mut notes = self.notes().peekable();
        let records = self.records::<ThreadRecord>().unwrap_or(Records::empty());
        records.map(move |record| {
            // Advance to this thread's NT_PRSTATUS.
            let pr = loop {
                match notes.next() {
                    Some(Ok(n))
                        if n.owner == elf::OWNER_CORE && n.note_type == elf::NT_PRSTATUS =>
                    {
                        break n
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ImageError::BadRecords {
                            note_type: note::THREADS,
                            what: "more thread records than NT_PRSTATUS notes",
                        })
                    }
                }
            };
            let prstatus = Prstatus::read_from_prefix(pr.desc)
                .map_err(|_| ImageError::BadNote {
                    offset: pr.offset,
                    what: "NT_PRSTATUS too short",
                })?
                .0;
            if prstatus.pr_pid != record.tid {
                return Err(ImageError::BadNote {
                    offset: pr.offset,
                    what: "NT_PRSTATUS pid differs from the thread record",
                });
            }
            // Its XSTATE comes before the next thread's NT_PRSTATUS.
            let mut xsave = None;
            while let Some(Ok(n)) = notes.peek() {
                if n.owner == elf::OWNER_CORE && n.note_type == elf::NT_PRSTATUS {
                    break;
                }
                if n.owner == elf::OWNER_LINUX && n.note_type == elf::NT_X86_XSTATE {
                    xsave = Some(n.desc);
                }
                notes.next();
            }
            let xsave = xsave.ok_or(ImageError::BadNote {
                offset: pr.offset,
                what: "thread has no NT_X86_XSTATE",
            })?;
            if xsave.len() < elf::XSAVE_MIN_SIZE {
                return Err(ImageError::BadNote {
                    offset: pr.offset,
                    what: "NT_X86_XSTATE shorter than the XSAVE header",
                });
            }
            Ok(ThreadView {
                record,
                prstatus,
                xsave,
            })
        })
    }

    /// Warnings the dump recorded: state it could not keep.
    pub fn warnings(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.records::<records::WarningRecord>()
            .unwrap_or(Records::empty())
            .filter_map(move |w| self.string(w.message).ok())
    }

    /// Total bytes of page contents stored in this file.
    pub fn stored_bytes(&self) -> u64 {
        self.segments()
            .filter(|s| !s.from_parent())
            .map(|s| s.len)
            .sum()
    }

    /// The parent of an incremental image ([`note::PARENT`]).
    pub fn parent(&self) -> Option<records::ParentRecord> {
        self.records::<records::ParentRecord>().ok()?.next()
    }

    /// This image's own [`ChecksumRecord`] (the last note): what a child
    /// image records as its parent's identity.
    pub fn checksum_record(&self) -> Option<ChecksumRecord> {
        self.records::<ChecksumRecord>().ok()?.next()
    }

    /// Pages in `[start, end)` that have stored contents.
    pub fn stored_in(&self, start: u64, end: u64) -> u64 {
        // Segments are sorted and disjoint (checked by `parse`): find the
        // first that ends after `start`, then walk only those that overlap.
        let (mut lo, mut hi) = (0, self.nsegments);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.segment(mid) {
                Ok(s) if s.end() <= start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let mut bytes = 0;
        for s in (lo..self.nsegments).map_while(|i| self.segment(i).ok()) {
            if s.vaddr >= end {
                break;
            }
            bytes += s.end().min(end).saturating_sub(s.vaddr.max(start));
        }
        bytes / PAGE_SIZE
    }
}
