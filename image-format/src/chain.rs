//! Chains of incremental images: an image, its parent, the parent's
//! parent, … (see [`crate::records::ParentRecord`]).
//!
//! Pure functions over parsed images, without allocation, so that the
//! loader, `crimg verify` and the dumper apply the same rules: a link is
//! the exact file its child names ([`check_link`]), every page a child
//! takes from its parent is there ([`resolve`]), and the bytes the chain
//! gives for a child's parent segments match the child's own checksums
//! ([`verify_parent_segments`]).

use core::fmt;

use crate::read::Segment;
use crate::records::{SegmentChecksumRecord, MAX_CHAIN_DEPTH};
use crate::{Image, ImageError};

/// Why a chain of images was refused. `link` is the image's position in
/// the chain (0: the image run, 1: its parent, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The parent image is not the file its child recorded (`what`).
    NotTheParent { link: usize, what: &'static str },
    /// The child takes pages at `vaddr` from its parent, which has none there.
    MissingPages { link: usize, vaddr: u64 },
    /// More parents than [`MAX_CHAIN_DEPTH`].
    TooDeep { depth: u32 },
    /// The chain given ends before the image at `link` names its parent.
    ParentMissing { link: usize },
    /// The bytes the chain gives for segment `index` of image `link` do
    /// not match its checksum.
    ChecksumMismatch {
        link: usize,
        index: u32,
        vaddr: u64,
        expected: u64,
        found: u64,
    },
    /// Reading a record of the image at `link` failed.
    Image { link: usize, error: ImageError },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotTheParent { link, what } => write!(
                f,
                "link {link} of the chain is not the parent image its child recorded ({what} differ)"
            ),
            Self::MissingPages { link, vaddr } => write!(
                f,
                "link {link} of the chain lacks the pages at {vaddr:#x} its child takes from it"
            ),
            Self::TooDeep { depth } => write!(
                f,
                "the chain has {depth} parent images, more than the {MAX_CHAIN_DEPTH} a reader follows"
            ),
            Self::ParentMissing { link } => {
                write!(f, "link {link} of the chain names a parent image that is not given")
            }
            Self::ChecksumMismatch { link, index, vaddr, expected, found } => write!(
                f,
                "checksum mismatch in segment {index} (memory at {vaddr:#x}) of link {link}, whose pages come from its parents: recorded {expected:#018x}, computed {found:#018x}"
            ),
            Self::Image { link, error } => write!(f, "link {link} of the chain: {error}"),
        }
    }
}

impl core::error::Error for ChainError {}

/// Checks that `parent` is the image that `child` (at position `link` in
/// its chain) names as its parent: the same checksum record (so the same
/// headers, notes and segment checksums, and size), the same process, a
/// depth one less, within [`MAX_CHAIN_DEPTH`].
pub fn check_link(link: usize, child: &Image<'_>, parent: &Image<'_>) -> Result<(), ChainError> {
    let rec = child.parent().ok_or(ChainError::ParentMissing { link })?;
    if rec.depth == 0 || rec.depth > MAX_CHAIN_DEPTH {
        return Err(ChainError::TooDeep { depth: rec.depth });
    }
    let not = |what| ChainError::NotTheParent {
        link: link + 1,
        what,
    };
    let sum = parent.checksum_record().ok_or(not("checksum records"))?;
    if sum.file_size != rec.file_size {
        return Err(not("file sizes"));
    }
    if sum.headers != rec.headers || sum.notes != rec.notes {
        return Err(not("checksums"));
    }
    let p = parent.process();
    if p.pid != rec.pid || p.start_time != rec.start_time {
        return Err(not("processes"));
    }
    let c = child.process();
    if c.pid != p.pid || c.start_time != p.start_time {
        return Err(not("processes"));
    }
    let parent_depth = parent.parent().map_or(0, |r| r.depth);
    if parent_depth + 1 != rec.depth {
        return Err(not("chain depths"));
    }
    Ok(())
}

/// Checks every link of `chain` ([`check_link`]): `chain[0]` is the image,
/// each next one the parent of the one before, and the last one names no
/// parent.
pub fn check_links(chain: &[Image<'_>]) -> Result<(), ChainError> {
    for (link, pair) in chain.windows(2).enumerate() {
        check_link(link, &pair[0], &pair[1])?;
    }
    match chain.last() {
        Some(last) if last.parent().is_some() => Err(ChainError::ParentMissing {
            link: chain.len() - 1,
        }),
        _ => Ok(()),
    }
}

/// Where some of an image's page bytes are: `len` bytes for memory at
/// `vaddr` are at `offset` in image `link` of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub link: usize,
    pub vaddr: u64,
    pub offset: u64,
    pub len: u64,
}

impl Piece {
    /// The piece's bytes in its image.
    pub fn bytes<'a>(&self, chain: &[Image<'a>]) -> &'a [u8] {
        let s = Segment {
            index: 0,
            vaddr: self.vaddr,
            offset: self.offset,
            len: self.len,
            flags: 0,
        };
        chain
            .get(self.link)
            .map_or(&[][..], |img| img.segment_bytes(&s))
    }
}

/// The index of the first segment of `img` that ends after `addr`
/// (segments are sorted and disjoint: checked at parse).
pub fn first_after(img: &Image<'_>, addr: u64) -> u32 {
    let (mut lo, mut hi) = (0, img.segment_count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match img.segment(mid) {
            Ok(s) if s.end() <= addr => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// Calls `f` with the pieces that hold memory `[vaddr, vaddr + len)` of
/// image `link` of `chain`, in address order: its own stored pages, and
/// for its parent segments, the parent's (recursively). Every page of the
/// range must be stored somewhere in the chain.
pub fn resolve<E: From<ChainError>>(
    chain: &[Image<'_>],
    link: usize,
    vaddr: u64,
    len: u64,
    f: &mut dyn FnMut(Piece) -> Result<(), E>,
) -> Result<(), E> {
    let img = chain.get(link).ok_or(ChainError::ParentMissing {
        link: link.saturating_sub(1),
    })?;
    let end = vaddr.saturating_add(len);
    let mut at = vaddr;
    let mut i = first_after(img, vaddr);
    while at < end {
        let s = img
            .segment(i)
            .ok()
            .filter(|s| s.vaddr <= at)
            .ok_or(ChainError::MissingPages { link, vaddr: at })?;
        let stop = s.end().min(end);
        if s.from_parent() {
            resolve(chain, link + 1, at, stop - at, f)?;
        } else {
            f(Piece {
                link,
                vaddr: at,
                offset: s.offset + (at - s.vaddr),
                len: stop - at,
            })?;
        }
        at = stop;
        i += 1;
    }
    Ok(())
}

/// Checks the checksum of every parent segment of image `link` over the
/// bytes the rest of `chain` gives for it (its own stored segments are
/// checked by [`Image::verify_segments`]). Reads every page it takes.
pub fn verify_parent_segments(chain: &[Image<'_>], link: usize) -> Result<(), ChainError> {
    verify_parent_segments_but(chain, link, &mut |_| false)
}

/// [`verify_parent_segments`] of the parent segments for which `skip`
/// says no (asked in segment order): a lazy restore leaves those of the
/// areas its page server fills to the server, which verifies each one
/// before it copies a page of it.
pub fn verify_parent_segments_but(
    chain: &[Image<'_>],
    link: usize,
    skip: &mut dyn FnMut(&Segment) -> bool,
) -> Result<(), ChainError> {
    let Some(img) = chain.get(link) else {
        return Ok(());
    };
    let image_error = |error| ChainError::Image { link, error };
    let mut sums = img
        .records::<SegmentChecksumRecord>()
        .map_err(image_error)?;
    for s in img.segments() {
        let expected = sums
            .next()
            .ok_or(image_error(ImageError::BadRecords {
                note_type: crate::records::note::SEGMENT_CHECKSUMS,
                what: "missing checksum",
            }))?
            .checksum;
        if !s.from_parent() || skip(&s) {
            continue;
        }
        let mut h = crate::Checksummer::new();
        resolve::<ChainError>(chain, link + 1, s.vaddr, s.len, &mut |p| {
            h.update(p.bytes(chain));
            Ok(())
        })?;
        let found = h.digest();
        if found != expected {
            return Err(ChainError::ChecksumMismatch {
                link,
                index: s.index,
                vaddr: s.vaddr,
                expected,
                found,
            });
        }
    }
    Ok(())
}
