//! Where a dump goes: an output directory ([`crate::outdir`], published
//! by [`crate::publish`]), or a stream (`crdump -o -`: stdout, a pipe or a
//! socket; `ssh host crdump --pid P -o - | crimg run -`).
//!
//! A stream is a tar archive ([`tar`]): `manifest.json` first (a receiver
//! knows at once what it gets: one process, or a tree), then every image
//! as `task-PID.crimg`, then the end-of-stream mark, so that `crdump -o - |
//! tar x -C DIR` gives the directory `crdump -o DIR` would have written.
//! Nothing is written to disk on the way: each image is written in file
//! order (`image_writer::sequential`: its pages are read once for their
//! checksums, then again for the copy). Its tar header goes out first
//! (the receiver makes room for it during the first read); before its
//! own first byte does, its headers are checked against the loader's
//! rules as a directory dump's image is (on a sparse in-memory copy of
//! them, no page in it).
//!
//! A stream cannot be taken back: a write that fails (the reader went
//! away: `EPIPE`) fails the dump and leaves the tree running as it was,
//! and the stream then lacks its end mark, which a receiver takes for a
//! cut stream. The tree is killed only once the last byte, the mark, is
//! written. Written is not received: the reader may still fail after it
//! (`--leave-running` keeps the original until the copy is known to run).

pub mod tar;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image_manifest::Manifest;
use image_writer::model::TaskState;
use image_writer::{PageSource, WriteError};

use crate::outdir::{OutDir, Published};
use crate::publish::{self, PublishError};
use crate::{sys, DumpError, DumpOptions};

/// Where [`crate::dump_to`] writes the dump.
#[derive(Debug)]
pub enum Target<'a> {
    /// A directory: one file per image and the manifest, published only
    /// when complete.
    Dir(&'a Path),
    /// A stream (a pipe, a socket, a file opened by the caller): the tar
    /// archive described above, written from its start.
    Stream(File),
}

/// How the dump's output is shown in reports and messages when it is a
/// stream.
pub const STREAM_SHOWN: &str = "(stdout)";

/// The output of a dump under way.
pub(crate) enum Output {
    Dir {
        out: OutDir,
        manifest_file: File,
        /// Each image written (an anonymous file) and its name.
        images: Vec<(File, String)>,
    },
    Stream(StreamOut),
}

/// A dump stream being written.
pub(crate) struct StreamOut {
    out: File,
    /// The members' owner and time.
    uid: u32,
    gid: u32,
    mtime: u64,
}

/// Why an image could not be written: the writer's error (which the caller
/// names with the process and the image), or another error of the dump.
pub(crate) enum ImageFailure {
    Write(WriteError),
    Dump(DumpError),
}

/// The written output, removed again (a directory's names) unless kept.
pub(crate) enum Kept {
    Dir(Published),
    /// A stream cannot be taken back.
    Stream,
}

impl Kept {
    /// The dump succeeded: the files stay.
    pub(crate) fn keep(self) {
        if let Kept::Dir(published) = self {
            published.keep();
        }
    }
}

impl Output {
    /// Before anything is frozen: check the output directory (and prove an
    /// anonymous file can be made there), or take the stream.
    pub(crate) fn prepare(pid: i32, target: Target<'_>, force: bool) -> Result<Self, DumpError> {
        let out_err = |source| DumpError::OutDir { pid, source };
        match target {
            Target::Dir(dir) => {
                let out = OutDir::prepare(dir, force).map_err(out_err)?;
                let manifest_file = out.anonymous_file(false).map_err(out_err)?;
                Ok(Output::Dir {
                    out,
                    manifest_file,
                    images: Vec::new(),
                })
            }
            Target::Stream(out) => Ok(Output::Stream(StreamOut {
                out,
                uid: sys::process::effective_uid(),
                gid: sys::process::effective_gid(),
                mtime: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })),
        }
    }

    /// Whether the dump goes to a stream, which cannot be taken back once
    /// its end is written.
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self, Output::Stream(_))
    }

    /// The output directory as given, or [`STREAM_SHOWN`].
    pub(crate) fn shown_dir(&self) -> PathBuf {
        match self {
            Output::Dir { out, .. } => out.path().to_owned(),
            Output::Stream(_) => PathBuf::from(STREAM_SHOWN),
        }
    }

    /// Right before the first image: a stream begins with the manifest.
    pub(crate) fn begin(&mut self, pid: i32, manifest: &Manifest) -> Result<(), DumpError> {
        match self {
            Output::Dir { .. } => Ok(()),
            Output::Stream(s) => {
                let bytes = manifest.to_bytes();
                let member = s.member(image_manifest::FILE_NAME, bytes.len() as u64, 0o600);
                tar::write_member(&mut s.out, &member, &bytes)
                    .map_err(|source| s.error(pid, source))
            }
        }
    }

    /// Write the image of process `pid` (`state`, pages from `source`),
    /// named `image` in messages, incremental over `link`'s parent when it
    /// has one, and check it by the loader's rules (`crate::self_check`).
    pub(crate) fn write_image(
        &mut self,
        pid: i32,
        state: &TaskState,
        source: &mut dyn PageSource,
        image: &Path,
        opts: &DumpOptions,
        link: crate::incremental::Link<'_>,
    ) -> Result<crate::incremental::WrittenImage, ImageFailure> {
        match self {
            Output::Dir { out, images, .. } => {
                let (written, file) =
                    write_dir_image(out, pid, state, source, image, opts, link)?;
                images.push((file, crate::image_name(pid)));
                Ok(written)
            }
            Output::Stream(_) if link.parent.is_some() => {
                Err(ImageFailure::Dump(DumpError::Refused {
                    pid,
                    why: "an incremental dump (--parent) is written into a directory, not a stream: its image names its parent's file".into(),
                }))
            }
            Output::Stream(s) => {
                // The member's header first: the receiver learns the size
                // and makes room for the image while the pages are read for
                // their checksums. A refusal after it leaves a stream
                // without its end mark, which the receiver refuses.
                let size = image_writer::sequential::size_of(state).map_err(ImageFailure::Write)?;
                let member = s.member(&crate::image_name(pid), size, 0o700);
                tar::write_member(&mut s.out, &member, &[])
                    .map_err(|source| ImageFailure::Dump(s.error(pid, source)))?;
                let prepared = image_writer::sequential::prepare(state, source)
                    .map_err(ImageFailure::Write)?;
                let warning =
                    check_head(pid, image, &prepared, opts).map_err(ImageFailure::Dump)?;
                if prepared.size() != size {
                    return Err(ImageFailure::Write(WriteError::InvalidState {
                        what: "image size differs from the one announced",
                        addr: prepared.size(),
                    }));
                }
                let bytes = prepared
                    .write_to(&mut s.out, source)
                    .map_err(ImageFailure::Write)?;
                tar::write_padding(&mut s.out, bytes)
                    .map_err(|source| ImageFailure::Dump(s.error(pid, source)))?;
                Ok(crate::incremental::WrittenImage {
                    bytes,
                    warning,
                    split: None,
                    identity: None,
                })
            }
        }
    }

    /// The output directory, when the images are files (which may be
    /// written in parallel with [`write_dir_image`], then added in the
    /// tree's order with [`Self::add_image`]).
    pub(crate) fn dir(&self) -> Option<&OutDir> {
        match self {
            Output::Dir { out, .. } => Some(out),
            Output::Stream(_) => None,
        }
    }

    /// The image of process `pid`, written into `file` by
    /// [`write_dir_image`].
    pub(crate) fn add_image(&mut self, pid: i32, file: File) {
        if let Output::Dir { images, .. } = self {
            images.push((file, crate::image_name(pid)));
        }
    }

    /// Every image written: publish the directory (images and the manifest
    /// made durable, then named), or end the stream with its mark.
    pub(crate) fn publish(self, pid: i32, manifest: &Manifest) -> Result<Kept, DumpError> {
        match self {
            Output::Dir {
                out,
                manifest_file,
                images,
            } => publish::publish_tree(&out, pid, &images, &manifest_file, manifest)
                .map(Kept::Dir)
                .map_err(|e| match e {
                    PublishError::Cancelled { pid } => DumpError::Cancelled { pid },
                    e => DumpError::Publish(e),
                }),
            Output::Stream(mut s) => {
                if crate::cancel_requested() {
                    return Err(DumpError::Cancelled { pid });
                }
                tar::write_end(&mut s.out)
                    .and_then(|()| s.out.flush())
                    .map_err(|source| s.error(pid, source))?;
                Ok(Kept::Stream)
            }
        }
    }
}

/// Write the image of process `pid` into a new anonymous file of `out`
/// and check it by the loader's rules: its size, the loader's warning and
/// the file (named at publication).
pub(crate) fn write_dir_image(
    out: &OutDir,
    pid: i32,
    state: &TaskState,
    source: &mut dyn PageSource,
    image: &Path,
    opts: &DumpOptions,
    link: crate::incremental::Link<'_>,
) -> Result<(crate::incremental::WrittenImage, File), ImageFailure> {
    // Through the page cache (not O_DIRECT), so that a restore right
    // after the dump reads the image from memory; the writer starts
    // each chunk's writeback as soon as it is written, so the disk
    // works while pages are copied and the fsync before publication
    // (durability as with O_DIRECT) has little left to wait for.
    let file = out
        .anonymous_file(false)
        .map_err(|source| ImageFailure::Dump(DumpError::OutDir { pid, source }))?;
    let write_opts = image_writer::WriteOptions {
        after_write: Some(sys::process::start_writeback),
        reserve: Some(sys::process::reserve_blocks),
    };
    // Incremental over `link`'s parent when it has one, else in full.
    let (bytes, split) = crate::incremental::write_image(state, link, &file, source, write_opts)
        .map_err(ImageFailure::Write)?;
    let warning = crate::self_check(pid, image, &file, opts).map_err(ImageFailure::Dump)?;
    let identity = crate::incremental::identity_of_file(&file);
    Ok((
        crate::incremental::WrittenImage {
            bytes,
            warning,
            split,
            identity,
        },
        file,
    ))
}

impl StreamOut {
    fn member(&self, name: &str, size: u64, mode: u32) -> tar::Member {
        tar::Member {
            name: name.to_owned(),
            size,
            mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
        }
    }

    fn error(&self, pid: i32, source: io::Error) -> DumpError {
        DumpError::Io {
            pid,
            path: PathBuf::from(STREAM_SHOWN),
            source,
        }
    }
}

/// The loader's rules on an image about to be streamed: its headers and
/// notes in a sparse memfd of the image's size (the pages read as zeros,
/// which the rules do not look at), checked as `crate::self_check` checks
/// a written image.
fn check_head(
    pid: i32,
    image: &Path,
    prepared: &image_writer::sequential::Sequential<'_>,
    opts: &DumpOptions,
) -> Result<Option<String>, DumpError> {
    let io_err = |source| DumpError::Io {
        pid,
        path: PathBuf::from("memfd:crimg-stream-check"),
        source,
    };
    let file = sys::process::memfd(c"crimg-stream-check").map_err(io_err)?;
    (&file).write_all(prepared.head()).map_err(io_err)?;
    file.set_len(prepared.size()).map_err(io_err)?;
    crate::self_check(pid, image, &file, opts)
}
