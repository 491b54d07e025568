//! Recomputing an image's header and note checksums after a deliberate
//! edit: tests that change one field on purpose (to check that the reader
//! or the loader refuses what it means, not a checksum), and the fuzz
//! target, whose mutations would otherwise all stop at the checksum.

use zerocopy::{FromBytes, IntoBytes};

use crate::elf::{self, Ehdr, Phdr, Shdr};
use crate::read::{ImageError, Note, Notes};
use crate::records::{note, ChecksumRecord, RecordHeader, OWNER_CRIMG};

fn bad(what: &'static str) -> ImageError {
    ImageError::BadRecords {
        note_type: note::CHECKSUM,
        what,
    }
}

/// Rewrites the checksum record of an edited image so that its headers and
/// notes verify again. The file size in the record is kept, so truncation
/// is still caught. Fails when the image is too damaged to find its notes.
pub fn reseal(bytes: &mut [u8]) -> Result<(), ImageError> {
    let ehdr = Ehdr::read_from_prefix(bytes)
        .map_err(|_| bad("no ELF header"))?
        .0;
    let phnum = if ehdr.e_phnum == elf::PN_XNUM {
        let at = usize::try_from(ehdr.e_shoff).map_err(|_| bad("e_shoff"))?;
        let sh0 = bytes
            .get(at..)
            .and_then(|b| Shdr::read_from_prefix(b).ok())
            .ok_or(bad("no section header 0"))?
            .0;
        u64::from(sh0.sh_info)
    } else {
        u64::from(ehdr.e_phnum)
    };
    let phoff = usize::try_from(ehdr.e_phoff).map_err(|_| bad("e_phoff"))?;
    let phlen = usize::try_from(phnum)
        .ok()
        .and_then(|n| n.checked_mul(core::mem::size_of::<Phdr>()))
        .ok_or(bad("program header count"))?;
    let phend = phoff.checked_add(phlen).ok_or(bad("program headers"))?;
    let pnote = bytes
        .get(phoff..phend)
        .and_then(|b| Phdr::read_from_prefix(b).ok())
        .ok_or(bad("no program headers"))?
        .0;
    let notes_start = pnote.p_offset;
    let notes_end = notes_start
        .checked_add(pnote.p_filesz)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or(bad("note segment outside the file"))?;

    // Where the checksum note is; copied out so `bytes` can be written.
    let (last_offset, desc_at, desc_len) = {
        let last: Note = Notes::new(bytes, notes_start, notes_end)
            .last()
            .ok_or(bad("no notes"))??;
        if last.owner != OWNER_CRIMG || last.note_type != note::CHECKSUM {
            return Err(bad("the last note is not the checksum"));
        }
        let desc_at = last.desc.as_ptr() as usize - bytes.as_ptr() as usize;
        let last_offset = usize::try_from(last.offset).map_err(|_| bad("note offset"))?;
        (last_offset, desc_at, last.desc.len())
    };
    // Inside `bytes` (checked against its length above), so it fits.
    let notes_start = usize::try_from(notes_start).map_err(|_| bad("note segment offset"))?;
    let record_at = desc_at + core::mem::size_of::<RecordHeader>();
    if desc_len < core::mem::size_of::<RecordHeader>() + core::mem::size_of::<ChecksumRecord>() {
        return Err(bad("checksum note too short"));
    }
    let notes_sum = crate::checksum(&bytes[notes_start..last_offset]);
    let mut h = crate::Checksummer::new();
    h.update(&bytes[..core::mem::size_of::<Ehdr>()]);
    h.update(&bytes[phoff..phend]);
    let headers_sum = h.digest();

    let mut record = ChecksumRecord::read_from_prefix(&bytes[record_at..])
        .map_err(|_| bad("checksum record"))?
        .0;
    record.headers = headers_sum;
    record.notes = notes_sum;
    bytes[record_at..record_at + core::mem::size_of::<ChecksumRecord>()]
        .copy_from_slice(record.as_bytes());
    Ok(())
}
