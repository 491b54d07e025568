//! What an incremental image says of its parent: the
//! [`image_format::records::ParentRecord`] and the page runs whose
//! contents the parent holds (their checksums computed by the dumper,
//! which compared them with the parent's).

use image_format::records::ParentRecord;

use crate::model::PageRun;

/// Pages the parent image holds: written as a `PT_LOAD` with no file
/// contents ([`image_format::records::PF_FROM_PARENT`]) and `checksum`
/// (of the bytes, as the chain gives them) in the segment checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentRun {
    pub run: PageRun,
    pub checksum: u64,
}

/// The parent of the image being written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentLink {
    /// `path` is filled in by the writer from [`ParentLink::path`].
    pub record: ParentRecord,
    /// The parent image's path relative to the new image's directory.
    pub path: String,
    /// Sorted, not overlapping each other nor the state's own page runs.
    pub runs: Vec<ParentRun>,
}
