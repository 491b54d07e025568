//! Open and map the image: by `AT_EXECFD` (binfmt_misc `O` flag) or by
//! path, only if it is a regular file; then take the lease that keeps its
//! bytes still ([`super::stable`]), map it and parse it.

use image_format::Image;

use super::os::Os;
use super::CheckError;
use crate::message;
use crate::sys::{self, startup::Startup, Errno};

/// The image to run: its display name and an open fd.
pub fn open_image(os: &impl Os, startup: &Startup) -> Result<(&'static [u8], i32), CheckError> {
    if let Some(fd) = startup.aux(sys::startup::AT_EXECFD) {
        // binfmt_misc `O` flag: the kernel opened it; argv[1] is its path.
        let name = startup.arg(1).unwrap_or(b"(AT_EXECFD)");
        let fd = i32::try_from(fd).map_err(|_| CheckError::OpenImage {
            errno: Errno::EINVAL,
        })?;
        return Ok((name, fd));
    }
    let name = startup.arg(1).ok_or(CheckError::Usage)?;
    let fd = open_regular(os, name)?;
    Ok((name, fd))
}

/// Open `path` for reading only if it is a regular file: first `O_PATH`
/// (which opens nothing: a FIFO would wait for a writer, a device could
/// act), then, the type known, the same inode again through
/// `/proc/self/fd` (no window for another file to take the path).
pub fn open_regular(os: &impl Os, path: &[u8]) -> Result<i32, CheckError> {
    let open_error = |errno| CheckError::OpenImage { errno };
    let at = os
        .open(path, sys::O_PATH | sys::O_CLOEXEC)
        .map_err(open_error)?;
    let opened = os.fstat(at).map_err(open_error).and_then(|st| {
        let now = st.mode & sys::S_IFMT;
        if now != sys::S_IFREG {
            return Err(CheckError::ImageNotRegular { now });
        }
        let again = message::proc_self_fd(at);
        os.open(again.as_bytes(), sys::O_RDONLY | sys::O_CLOEXEC)
            .map_err(open_error)
    });
    os.close(at);
    opened
}

/// The image's name for messages, known before anything else can fail.
pub fn image_name(startup: &Startup) -> &'static [u8] {
    startup.arg(1).unwrap_or(b"crimg-loader")
}

/// An image file opened and mapped, its bytes held still.
pub struct MappedImage {
    pub name: &'static [u8],
    pub fd: i32,
    /// The file's owner `(uid, gid)`: the most the task may get.
    pub owner: (u32, u32),
    pub bytes: &'static [u8],
    pub hold: super::stable::Hold,
}

/// Lease, then map the image open at `fd` (the lease first: what is read
/// through the mapping from then on is what the plan will load).
pub fn map_image(os: &impl Os, name: &'static [u8], fd: i32) -> Result<MappedImage, CheckError> {
    let st = os
        .fstat(fd)
        .map_err(|errno| CheckError::MapImage { errno })?;
    let hold = super::stable::hold_still(os, fd)?;
    let len = usize::try_from(st.size).map_err(|_| CheckError::MapImage {
        errno: Errno::EINVAL,
    })?;
    let bytes = sys::map_file_readonly(fd, len).map_err(|errno| CheckError::MapImage { errno })?;
    Ok(MappedImage {
        name,
        fd,
        owner: (st.uid, st.gid),
        bytes,
        hold,
    })
}

/// Which segments [`verify`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segments {
    /// All but those the page server of a lazy restore fills, which it
    /// verifies itself before it copies a page of them (so the time to the
    /// task's first instruction does not grow with its memory).
    ButServed,
    /// Only those: a restore that was to be lazy and is eager after all.
    Served,
}

/// Parse the image, verifying no checksum yet ([`verify`] does).
pub fn parse_unverified(bytes: &'static [u8]) -> Result<Image<'static>, CheckError> {
    Image::parse(bytes).map_err(|error| CheckError::Corrupt { error })
}

/// Verify the XXH3 checksums of the image's own `which` segments (a
/// parent image's pages are checked with the chain, `crate::parent`).
pub fn verify(image: &Image<'static>, which: Segments) -> Result<(), CheckError> {
    use image_format::records::{note, SegmentChecksumRecord};
    use image_format::ImageError;
    let corrupt = |error| CheckError::Corrupt { error };
    let mut areas = LazyAreas::new(*image).map_err(corrupt)?;
    let mut sums = image.records::<SegmentChecksumRecord>().map_err(corrupt)?;
    for s in image.segments() {
        let expected = sums
            .next()
            .ok_or(corrupt(ImageError::BadRecords {
                note_type: note::SEGMENT_CHECKSUMS,
                what: "missing checksum",
            }))?
            .checksum;
        // Asked of every segment, in order (as `LazyAreas` wants).
        let served = areas.served(&s);
        if s.from_parent() || served != (which == Segments::Served) {
            continue;
        }
        let found = image_format::checksum(image.segment_bytes(&s));
        if found != expected {
            return Err(corrupt(ImageError::SegmentChecksumMismatch {
                index: s.index,
                vaddr: s.vaddr,
                expected,
                found,
            }));
        }
    }
    Ok(())
}

/// The stored bytes (the image's own and its parents') that the page
/// server of a lazy restore would fill.
pub fn served_bytes(image: &Image<'static>) -> Result<u64, CheckError> {
    let mut areas = LazyAreas::new(*image).map_err(|error| CheckError::Corrupt { error })?;
    Ok(image
        .segments()
        .filter(|s| areas.served(s))
        .map(|s| s.len)
        .sum())
}

/// Whether every segment [`LazyAreas`] counts as served (whose checksum
/// stage 1 left to the server) lies in an area the plan's own rule
/// (`plan::lazy::is_lazy_area`, on the areas and loads these became)
/// leaves to the server: where it did not, the plan would read that
/// segment in unverified. Two codings of one rule, held to each other.
pub fn served_agrees(
    image: &Image<'static>,
    vmas: &[crate::plan::TargetVma],
    loads: &[crate::plan::PageLoad],
) -> Result<bool, CheckError> {
    let mut areas = LazyAreas::new(*image).map_err(|error| CheckError::Corrupt { error })?;
    for s in image.segments() {
        if !areas.served(&s) {
            continue;
        }
        let at = vmas.partition_point(|v| v.end <= s.vaddr);
        let agrees = vmas.get(at).is_some_and(|v| {
            v.start <= s.vaddr
                && s.vaddr + s.len <= v.end
                && crate::plan::lazy::is_lazy_area(v, loads)
        });
        if !agrees {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which segments of an image the page server of a lazy restore fills,
/// by the rule of `plan::lazy::is_lazy_area` applied to the image's
/// records and segments (the plan applies it to the areas and loads
/// these become). Asked in segment order, about every segment or only
/// some (the chain asks about parent segments only).
pub struct LazyAreas<'a> {
    image: Image<'a>,
    vmas: core::iter::Peekable<image_format::read::Records<'a, image_format::records::VmaRecord>>,
    /// The last area's start and whether the server fills it.
    last: Option<(u64, bool)>,
}

impl<'a> LazyAreas<'a> {
    pub fn new(image: Image<'a>) -> Result<Self, image_format::ImageError> {
        Ok(LazyAreas {
            image,
            vmas: image.vmas()?.peekable(),
            last: None,
        })
    }

    /// Is segment `s` (after every one asked before) in an area the
    /// server fills?
    pub fn served(&mut self, s: &image_format::read::Segment) -> bool {
        // Both sorted; parse checked that each segment lies in one area.
        while self.vmas.next_if(|v| v.end <= s.vaddr).is_some() {}
        match self.vmas.peek() {
            Some(v) if self.last.is_some_and(|(start, _)| start == v.start) => {
                self.last.is_some_and(|(_, lazy)| lazy)
            }
            Some(v) => {
                let area = crate::plan::TargetVma {
                    start: v.start,
                    end: v.end,
                    pgoff: v.pgoff,
                    prot: v.prot,
                    flags: v.flags,
                    kind: v.kind,
                    fd: if v.object == 0 { -1 } else { 0 },
                };
                // Its stored bytes (its own or its parents'): the
                // segments inside it, from its first one (not always `s`).
                let stored: u64 = (image_format::chain::first_after(&self.image, v.start)
                    ..self.image.segment_count())
                    .map_while(|i| self.image.segment(i).ok())
                    .take_while(|t| t.vaddr < v.end)
                    .map(|t| t.len)
                    .sum();
                let lazy = crate::plan::lazy::is_lazy_vma(&area)
                    && stored >= crate::plan::lazy::LAZY_WORTH;
                self.last = Some((v.start, lazy));
                lazy
            }
            None => false,
        }
    }
}
