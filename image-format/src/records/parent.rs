//! Incremental images: the record that names an image's parent, and the
//! mark of the `PT_LOAD` segments whose pages the parent holds.
//!
//! An incremental image stores only the pages written since its parent
//! was dumped. Its other pages are `PT_LOAD` segments with `p_filesz` 0
//! and `p_memsz` the length (valid ELF: a debugger sees no contents there)
//! marked [`PF_FROM_PARENT`]; their [`super::SegmentChecksumRecord`] is the
//! checksum of the bytes the chain gives for them, so a reader checks the
//! parent's pages with the child's own record. A reader that does not know
//! this note refuses such segments (`p_filesz != p_memsz`), never restoring
//! zeros in their place.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{note, Record, StrRef};

/// `p_flags` bit (in `PF_MASKOS`) of a `PT_LOAD` whose pages are in the
/// parent image: `p_filesz` and `p_offset` are 0, `p_memsz` is the length.
pub const PF_FROM_PARENT: u32 = 0x0010_0000;

/// Parent images below one image at most: a chain longer than this is
/// refused (a dump at the bound writes a full image instead).
pub const MAX_CHAIN_DEPTH: u32 = 32;

/// The parent of an incremental image ([`note::PARENT`], one record).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ParentRecord {
    /// The parent image's path relative to this image's directory
    /// (components `..` and names; no symlink is followed on it).
    pub path: StrRef,
    /// The parent's own [`super::ChecksumRecord`], copied: the identity
    /// of the exact parent file (its headers, every note, so every
    /// segment's checksum, and its size).
    pub headers: u64,
    pub notes: u64,
    pub file_size: u64,
    /// Images below this one in the chain (1: the parent is a full image).
    pub depth: u32,
    /// The process the parent was dumped from (`ProcessRecord::pid` and
    /// `start_time`): the same as this image's.
    pub pid: i32,
    pub start_time: u64,
}
const _: () = assert!(core::mem::size_of::<ParentRecord>() == 48);
impl Record for ParentRecord {
    const NOTE_TYPE: u32 = note::PARENT;
}
