//! Writing an image in file order, to a stream that cannot seek (a pipe,
//! a socket: `crdump -o -`).
//!
//! [`write::write_image`](crate::write::write_image) writes the pages
//! first and the headers last, because the notes hold the pages'
//! checksums. A stream must begin with the headers, so the pages are read
//! twice: [`prepare`] reads them once for their checksums alone (nothing
//! is written; the task is frozen, or its snapshot is, so the second read
//! gives the same bytes) and lays out the headers; [`Sequential::write_to`]
//! then writes the headers and the pages in order, hashing them again on
//! the way: memory that changed between the two reads (a shared mapping
//! another process writes) stops the write with
//! [`WriteError::PagesChanged`], so a stream never carries pages that do
//! not match its checksums. The image has the very bytes
//! [`write_image`](crate::write::write_image) writes.

use std::io;

use image_format::records::SegmentChecksumRecord;

use crate::model::TaskState;
use crate::write::{copy_pages, head, laid_out, Layout, PageSink, WriteError};
use crate::PageSource;

/// An image laid out and checksummed, ready to be written in file order.
pub struct Sequential<'s> {
    state: &'s TaskState,
    lay: Layout,
    head: Vec<u8>,
    sums: Vec<SegmentChecksumRecord>,
}

/// The size of the image of `state`, laid out as [`prepare`] lays it out
/// (known before a page is read: a stream can announce it first).
pub fn size_of(state: &TaskState) -> Result<u64, WriteError> {
    laid_out(state).map(|(_, lay)| lay.file_size())
}

/// Lay out the image of `state` and checksum its pages, read once from
/// `source` (the first of the two reads).
pub fn prepare<'s>(
    state: &'s TaskState,
    source: &mut dyn PageSource,
) -> Result<Sequential<'s>, WriteError> {
    let (notes, lay) = laid_out(state)?;
    let sums = copy_pages(state, &lay, PageSink::Discard, source)?;
    let head = head(state, &lay, notes, &sums)?;
    Ok(Sequential {
        state,
        lay,
        head,
        sums,
    })
}

impl Sequential<'_> {
    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.lay.file_size()
    }

    /// Everything before the first page: headers and notes (enough for a
    /// reader to parse the image and check its rules, with the pages
    /// read as zeros).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Write the whole image to `out` in file order, the pages read from
    /// `source` again; returns the bytes written ([`Self::size`]).
    pub fn write_to(
        &self,
        out: &mut (dyn io::Write + Send),
        source: &mut dyn PageSource,
    ) -> Result<u64, WriteError> {
        out.write_all(&self.head)
            .map_err(|source| WriteError::Write { offset: 0, source })?;
        let at = self.head.len() as u64;
        let sums = copy_pages(self.state, &self.lay, PageSink::Stream { out, at }, source)?;
        let changed = self
            .sums
            .iter()
            .zip(&sums)
            .position(|(before, now)| before.checksum != now.checksum);
        if let Some(i) = changed {
            return Err(WriteError::PagesChanged {
                addr: self.state.pages[i].start,
            });
        }
        Ok(self.size())
    }
}
