//! Stage 1 for an incremental image: open its chain of parent images,
//! check each link, and say where every page comes from.
//!
//! An image that names a parent ([`image_format::records::ParentRecord`])
//! takes some pages from it. Each parent is opened relative to the
//! directory of the image that names it, one path component at a time
//! with `O_NOFOLLOW` (no symlink on the recorded path is followed, a
//! planted one is refused); it must be a regular file owned by the
//! image's owner or by root; it is held still and mapped as the image
//! is (`check::image::map_image`), parsed, and must be the exact file
//! the child recorded ([`image_format::chain::check_link`]). The bytes the
//! chain gives for the image's parent segments are checked against the
//! image's own checksums before anything is torn down, except, in a lazy
//! restore, those of the areas the page server fills: the server verifies
//! each of those segments, its pieces read from their links' fds, before
//! it copies a page of it (`crate::lazy::server`). Then the plan (or the
//! server) reads those pages from the parent's fd
//! ([`crate::plan::PageLoad::fd`]).

use core::fmt;

use image_format::chain::{self, ChainError};
use image_format::records::MAX_CHAIN_DEPTH;
use image_format::{Image, ImageError};

use crate::check::image::{map_image, LazyAreas, Segments};
use crate::check::os::Os;
use crate::check::stable::{self, Hold};
use crate::check::CheckError;
use crate::message::Lossy;
use crate::plan::PageLoad;
use crate::sys::{self, Errno};
use crate::ExitCode;

/// Images in a chain at most: the image and its parents.
pub const MAX_LINKS: usize = MAX_CHAIN_DEPTH as usize + 1;

/// `O_NOFOLLOW`.
const O_NOFOLLOW: u32 = 0o400_000;

/// Why the chain of parent images was refused; `path` is the parent's
/// recorded path (relative to its child's directory).
#[derive(Clone, Copy, Debug)]
pub enum ParentError {
    /// The parent cannot be opened (missing, or a directory on the way).
    Open { path: &'static [u8], errno: Errno },
    /// A component of the recorded path is a symlink (never followed).
    Symlink { path: &'static [u8] },
    /// The parent (or a component on the way) is not the kind it must be.
    NotRegular { path: &'static [u8], now: u32 },
    /// The parent belongs to another user than the image's owner or root.
    Owner {
        path: &'static [u8],
        uid: u32,
        image_owner: u32,
    },
    /// The parent is no valid image (it cannot be read or is corrupt).
    Unreadable {
        path: &'static [u8],
        error: ImageError,
    },
    /// The parent cannot be mapped.
    Map { path: &'static [u8], errno: Errno },
    /// The chain's rule broken at the link `path` names.
    Chain {
        path: &'static [u8],
        error: ChainError,
    },
    /// A recorded path too long for the loader's buffer.
    PathTooLong { path: &'static [u8] },
}

impl ParentError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ParentError::Chain {
                error: ChainError::TooDeep { .. },
                ..
            } => ExitCode::Unsupported,
            ParentError::Chain {
                error: ChainError::ChecksumMismatch { .. } | ChainError::MissingPages { .. },
                ..
            }
            | ParentError::Unreadable { .. } => ExitCode::ImageCorrupt,
            ParentError::Map { .. } => ExitCode::ImageUnreadable,
            _ => ExitCode::FileChanged,
        }
    }
}

impl fmt::Display for ParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParentError::Open { path, errno } => {
                write!(f, "parent image {} cannot be opened: {errno}", Lossy(path))
            }
            ParentError::Symlink { path } => write!(
                f,
                "parent image {}: a symlink on its path (not followed)",
                Lossy(path)
            ),
            ParentError::NotRegular { path, now } => write!(
                f,
                "parent image {}: not a regular file (or a non-directory on its path): {}",
                Lossy(path),
                crate::check::files::file_type_name(now)
            ),
            ParentError::Owner {
                path,
                uid,
                image_owner,
            } => write!(
                f,
                "parent image {} belongs to uid {uid}, neither the image's owner (uid {image_owner}) nor root",
                Lossy(path)
            ),
            ParentError::Unreadable { path, error } => {
                write!(f, "parent image {} is corrupt: {error}", Lossy(path))
            }
            ParentError::Map { path, errno } => {
                write!(f, "parent image {} cannot be read: {errno}", Lossy(path))
            }
            ParentError::Chain { path, error } => match error {
                ChainError::NotTheParent { what, .. } => write!(
                    f,
                    "parent image {} is not the one this chain was dumped with ({what} differ): changed or replaced",
                    Lossy(path)
                ),
                error => write!(f, "parent image {}: {error}", Lossy(path)),
            },
            ParentError::PathTooLong { path } => {
                write!(f, "parent image {}: path too long", Lossy(path))
            }
        }
    }
}

/// An image and its parents, open, mapped and checked.
pub struct Chain {
    images: [Image<'static>; MAX_LINKS],
    /// The fd of each image (`fds[0]`: the image's own, set by
    /// [`Chain::place_fds`]).
    fds: [i32; MAX_LINKS],
    holds: [Option<Hold>; MAX_LINKS],
    /// Each link's recorded path (`[0]`: the image's name).
    paths: [&'static [u8]; MAX_LINKS],
    len: usize,
}

impl Chain {
    /// The images, the image run first.
    pub fn images(&self) -> &[Image<'static>] {
        &self.images[..self.len]
    }

    /// Parent images (0 for a full image).
    pub fn parents(&self) -> usize {
        self.len - 1
    }

    /// The recorded path of parent `link` (1-based).
    pub fn path(&self, link: usize) -> &'static [u8] {
        self.paths.get(link).copied().unwrap_or(b"?")
    }

    /// The fd of image `link` (0: the image's own, once
    /// [`Chain::place_fds`] set it).
    pub fn fd(&self, link: usize) -> i32 {
        self.fds[..self.len].get(link).copied().unwrap_or(-1)
    }

    /// The recorded path of the first parent not held by a read lease
    /// (`None`: every parent is; a lazy restore needs them all to be).
    pub fn unleased_parent(&self) -> Option<&'static [u8]> {
        (1..self.len)
            .find(|&link| !matches!(self.holds[link], Some(Hold::Lease)))
            .map(|link| self.path(link))
    }

    /// Moves the parents' fds above `base` (above every fd of the task:
    /// they are closed with the loader's own by the plan's fd step) and
    /// records the image's own fd.
    pub fn place_fds(&mut self, os: &impl Os, image_fd: i32, base: i32) -> Result<(), CheckError> {
        self.fds[0] = image_fd;
        for fd in &mut self.fds[1..self.len] {
            if *fd < base {
                let moved = os
                    .dup_above(*fd, base)
                    .map_err(|errno| CheckError::FdRelocate { errno })?;
                os.close(*fd);
                *fd = moved;
            }
        }
        Ok(())
    }

    /// The number of [`PageLoad`]s [`Chain::fill_loads`] makes.
    pub fn load_count(&self) -> Result<usize, CheckError> {
        let mut n = 0usize;
        self.each_load(|_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Every page load of the image, in address order: its own segments
    /// from its fd, its parent segments from the parents' fds.
    pub fn fill_loads(&self, loads: &mut [PageLoad]) -> Result<usize, CheckError> {
        let mut i = 0;
        self.each_load(|l| {
            let slot = loads.get_mut(i).ok_or(CheckError::ScratchShort {
                table: "page loads",
                items: i + 1,
            })?;
            *slot = l;
            i += 1;
            Ok(())
        })?;
        Ok(i)
    }

    fn each_load(
        &self,
        mut f: impl FnMut(PageLoad) -> Result<(), CheckError>,
    ) -> Result<(), CheckError> {
        let images = self.images();
        for s in images[0].segments() {
            let mut piece = |p: chain::Piece| -> Result<(), LoadError> {
                f(PageLoad {
                    vaddr: p.vaddr,
                    offset: p.offset,
                    len: p.len,
                    fd: self.fds[p.link],
                    _pad: 0,
                })
                .map_err(LoadError::Check)
            };
            chain::resolve(images, 0, s.vaddr, s.len, &mut piece).map_err(|e| match e {
                LoadError::Check(e) => e,
                LoadError::Chain(error) => self.chain_error(error),
            })?;
        }
        Ok(())
    }

    fn chain_error(&self, error: ChainError) -> CheckError {
        let link = match error {
            ChainError::NotTheParent { link, .. }
            | ChainError::MissingPages { link, .. }
            | ChainError::ParentMissing { link }
            | ChainError::ChecksumMismatch { link, .. }
            | ChainError::Image { link, .. } => link,
            ChainError::TooDeep { .. } => self.len - 1,
        };
        CheckError::Parent {
            error: ParentError::Chain {
                path: self.path(link.max(1)),
                error,
            },
        }
    }

    /// The image's parent segments, verified against its own checksums:
    /// all of them (`None`), or, for a lazy restore, `which` of them by
    /// the areas its page server fills (all but those before the task
    /// runs, [`open_chain`]; those when the restore is eager after all).
    pub fn verify_parents(&self, which: Option<Segments>) -> Result<(), CheckError> {
        if self.parents() == 0 {
            return Ok(());
        }
        let verified = match which {
            None => chain::verify_parent_segments(self.images(), 0),
            Some(which) => {
                let mut areas = LazyAreas::new(self.images[0])
                    .map_err(|error| CheckError::Corrupt { error })?;
                let skipped = which == Segments::ButServed;
                chain::verify_parent_segments_but(self.images(), 0, &mut |s| {
                    areas.served(s) == skipped
                })
            }
        };
        verified.map_err(|e| self.chain_error(e))
    }

    /// Whether every parent is still as it was checked (as the image:
    /// [`stable::still_same`]).
    pub fn still_same(&self, os: &impl Os) -> Result<(), CheckError> {
        for (fd, hold) in self.fds[1..self.len].iter().zip(&self.holds[1..self.len]) {
            if let Some(hold) = hold {
                stable::still_same(os, *fd, hold)?;
            }
        }
        Ok(())
    }
}

/// A [`Chain::fill_loads`] failure: the table's, or the chain's.
enum LoadError {
    Check(CheckError),
    Chain(ChainError),
}

impl From<ChainError> for LoadError {
    fn from(e: ChainError) -> Self {
        LoadError::Chain(e)
    }
}

/// Where `name` lies: its directory (`.` for a bare name).
fn directory_of(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &name[..i],
        None => b".",
    }
}

/// `/proc/self/fd/<dir>/<component>` for [`Os::open`], in `buf`.
fn proc_path<'b>(buf: &'b mut [u8; 4096], dir: i32, component: &[u8]) -> Option<&'b [u8]> {
    let mut prefix = crate::message::proc_self_fd(dir);
    let _ = fmt::Write::write_str(&mut prefix, "/");
    let p = prefix.as_bytes();
    let len = p.len() + component.len();
    if len > buf.len() {
        return None;
    }
    buf[..p.len()].copy_from_slice(p);
    buf[p.len()..len].copy_from_slice(component);
    Some(&buf[..len])
}

/// Opens `path` (recorded, relative) under the directory `dir`, one
/// component at a time without following a symlink. Returns the file,
/// open for reading, and the directory it is in (open `O_PATH`).
fn walk(os: &impl Os, dir: i32, path: &'static [u8]) -> Result<(i32, i32), ParentError> {
    let mut buf = [0u8; 4096];
    let mut at = os
        .dup_above(dir, 3)
        .map_err(|errno| ParentError::Open { path, errno })?;
    let components: &[u8] = path;
    let mut parts = components
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .peekable();
    if path.first() == Some(&b'/') || parts.peek().is_none() {
        os.close(at);
        return Err(ParentError::Open {
            path,
            errno: Errno::EINVAL,
        });
    }
    while let Some(c) = parts.next() {
        let last = parts.peek().is_none();
        let Some(p) = proc_path(&mut buf, at, c) else {
            os.close(at);
            return Err(ParentError::PathTooLong { path });
        };
        let opened = os.open(p, sys::O_PATH | O_NOFOLLOW | sys::O_CLOEXEC);
        let next = match opened {
            Ok(fd) => fd,
            Err(errno) => {
                os.close(at);
                return Err(ParentError::Open { path, errno });
            }
        };
        let kind = os.fstat(next).map(|st| st.mode & sys::S_IFMT);
        let want = if last { sys::S_IFREG } else { sys::S_IFDIR };
        match kind {
            Ok(k) if k == want => {}
            Ok(sys::S_IFLNK) => {
                os.close(next);
                os.close(at);
                return Err(ParentError::Symlink { path });
            }
            Ok(now) => {
                os.close(next);
                os.close(at);
                return Err(ParentError::NotRegular { path, now });
            }
            Err(errno) => {
                os.close(next);
                os.close(at);
                return Err(ParentError::Open { path, errno });
            }
        }
        if last {
            // The same inode again, now for reading (the type is known:
            // no FIFO or device is opened).
            let again = crate::message::proc_self_fd(next);
            let file = os.open(again.as_bytes(), sys::O_RDONLY | sys::O_CLOEXEC);
            os.close(next);
            return match file {
                Ok(fd) => Ok((fd, at)),
                Err(errno) => {
                    os.close(at);
                    Err(ParentError::Open { path, errno })
                }
            };
        }
        os.close(at);
        at = next;
    }
    os.close(at);
    Err(ParentError::Open {
        path,
        errno: Errno::ENOENT,
    })
}

/// Opens, maps and checks the chain of `image` (open at `fd`, named
/// `name`, owned by `owner`); a full image gives a chain of one. `lazy`:
/// for a lazy restore, whose page server verifies the parent segments of
/// the areas it fills ([`crate::check::image::LazyAreas`]): those are not
/// read now.
///
/// The parents are looked for beside the image file itself: its path as
/// the kernel knows it (`/proc/self/fd/N`), which also holds when the
/// image is named by an fd (`crrestore-tree`, `execveat`); the name given
/// is the fallback.
pub fn open_chain(
    os: &impl Os,
    name: &'static [u8],
    fd: i32,
    image: Image<'static>,
    owner: u32,
    lazy: bool,
) -> Result<Chain, CheckError> {
    let mut chain = Chain {
        images: [image; MAX_LINKS],
        fds: [-1; MAX_LINKS],
        holds: [None; MAX_LINKS],
        paths: [name; MAX_LINKS],
        len: 1,
    };
    if image.parent().is_none() {
        return Ok(chain);
    }
    let parent_error = |error| CheckError::Parent { error };
    let mut link = [0u8; 4096];
    let at = crate::message::proc_self_fd(fd);
    let dir_path = match sys::readlink(at.as_bytes(), &mut link) {
        Ok(n) if n > 0 && n < link.len() && link[0] == b'/' => directory_of(&link[..n]),
        _ => directory_of(name),
    };
    let dir = os
        .open(dir_path, sys::O_PATH | sys::O_DIRECTORY | sys::O_CLOEXEC)
        .map_err(|errno| {
            parent_error(ParentError::Open {
                path: directory_of(name),
                errno,
            })
        })?;
    let result = open_parents(os, &mut chain, dir, owner);
    if result.is_err() {
        for &fd in &chain.fds[1..chain.len] {
            os.close(fd);
        }
    }
    result?;
    chain.verify_parents(lazy.then_some(Segments::ButServed))?;
    Ok(chain)
}

/// The parents of `chain`'s last image, one by one, from directory `dir`
/// (which is closed).
fn open_parents(os: &impl Os, chain: &mut Chain, dir: i32, owner: u32) -> Result<(), CheckError> {
    let parent_error = |error| CheckError::Parent { error };
    let mut dir = dir;
    while let Some(rec) = chain.images[chain.len - 1].parent() {
        let child = chain.images[chain.len - 1];
        let path = child.string(rec.path).map_err(|error| {
            os.close(dir);
            CheckError::Corrupt { error }
        })?;
        if chain.len >= MAX_LINKS {
            os.close(dir);
            return Err(parent_error(ParentError::Chain {
                path,
                error: ChainError::TooDeep { depth: rec.depth },
            }));
        }
        let walked = walk(os, dir, path);
        os.close(dir);
        let (fd, next_dir) = walked.map_err(parent_error)?;
        dir = next_dir;
        let link = chain.len;
        chain.fds[link] = fd;
        chain.paths[link] = path;
        chain.len += 1;
        let checked = (|| {
            let st = os
                .fstat(fd)
                .map_err(|errno| ParentError::Open { path, errno })?;
            if st.uid != owner && st.uid != 0 {
                return Err(ParentError::Owner {
                    path,
                    uid: st.uid,
                    image_owner: owner,
                });
            }
            Ok(())
        })();
        if let Err(e) = checked {
            os.close(dir);
            return Err(parent_error(e));
        }
        let mapped = match map_image(os, path, fd) {
            Ok(m) => m,
            Err(CheckError::MapImage { errno }) => {
                os.close(dir);
                return Err(parent_error(ParentError::Map { path, errno }));
            }
            Err(e) => {
                os.close(dir);
                return Err(e);
            }
        };
        chain.holds[link] = Some(mapped.hold);
        let parent = match Image::parse(mapped.bytes) {
            Ok(p) => p,
            Err(error) => {
                os.close(dir);
                return Err(parent_error(ParentError::Unreadable { path, error }));
            }
        };
        if let Err(error) = chain::check_link(link - 1, &child, &parent) {
            os.close(dir);
            return Err(parent_error(ParentError::Chain { path, error }));
        }
        chain.images[link] = parent;
    }
    os.close(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_of_a_name() {
        assert_eq!(directory_of(b"task-1.crimg"), b".");
        assert_eq!(directory_of(b"/task-1.crimg"), b"/");
        assert_eq!(directory_of(b"out/2/task-1.crimg"), b"out/2");
        assert_eq!(directory_of(b"/tmp/x/task-1.crimg"), b"/tmp/x");
    }
}
