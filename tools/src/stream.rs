//! `crimg run -`: a dump stream (`crdump -o -`, a tar archive:
//! `dumper::stream`) received on stdin and held in memory for the loader,
//! with no file on disk.
//!
//! The stream must be whole and hold one process: `manifest.json` naming
//! one image, that image, the end-of-stream mark, then the end of the
//! input (the sender kills the original only once it has written the
//! mark, and exits after that, so waiting for the end of the input also
//! waits for the original to be gone). A cut stream, a corrupt one or a
//! tree is refused with one line before anything is resumed. The image
//! goes into a sealed memfd (nobody can change it after the receipt, and
//! it is gone once the loader has closed it: the memory the image takes
//! is held until the restore is done, in addition to the process's own).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use dumper::stream::tar::{Next, Reader, TarError};
use image_manifest::{Manifest, ManifestError};

/// The largest manifest read from a stream.
const MAX_MANIFEST: u64 = 64 << 20;
/// How much of the image is copied at a time.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("stdin: {0}")]
    Tar(#[from] TarError),
    #[error(
        "stdin: the stream begins with {found}, not {}: not a stream written by crdump -o -",
        image_manifest::FILE_NAME
    )]
    NoManifest { found: String },
    #[error("stdin: its manifest.json: {0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "stdin: the stream holds a tree of {processes} processes (root pid {root}); crimg run \
         resumes one process: restore a tree with crrestore-tree (crdump -o - | tar x -C DIR, \
         then crrestore-tree DIR)"
    )]
    Tree { processes: usize, root: i32 },
    #[error("stdin: its {} names no image", image_manifest::FILE_NAME)]
    NoImage,
    #[error("stdin: the stream holds {found} where its manifest says {expected} comes")]
    Unexpected { found: String, expected: String },
    #[error("stdin: the stream goes on after {image}: {found}")]
    Extra { image: String, found: String },
    #[error(
        "stdin: the image {image} is {size} bytes, more than this machine's available memory \
         ({available} bytes, MemAvailable): it cannot be held in memory for the restore"
    )]
    TooLarge {
        image: String,
        size: u64,
        available: u64,
    },
    #[error("cannot hold the image {image} in memory (memfd): {source}")]
    Memory {
        image: String,
        #[source]
        source: io::Error,
    },
}

/// A whole stream's one image, in a sealed memfd.
#[derive(Debug)]
pub struct Received {
    /// The memfd, not close-on-exec.
    pub image: File,
    /// Its name in the stream (`task-PID.crimg`).
    pub name: String,
    pub size: u64,
}

/// Take stdout for a dump stream: see `crate::sys::take_stdout`; a pipe
/// is grown to 1 MiB (`crate::sys::grow_pipe`).
pub fn take_stdout() -> io::Result<File> {
    let out = crate::sys::take_stdout()?;
    crate::sys::grow_pipe(&out);
    Ok(out)
}

/// Grow the pipe `input` is, if it is one, for a stream to be received
/// (`crate::sys::grow_pipe`).
pub fn grow_pipe(input: &impl std::os::fd::AsRawFd) {
    crate::sys::grow_pipe(input);
}

/// Receive a whole dump stream of one process from `input`; the image is
/// moved with `splice` when `input` is a pipe. `input` must not buffer
/// (not `Stdin`: a `File` of its fd): what is spliced from its fd must
/// follow exactly what was read.
pub fn receive(input: impl Read + AsRawFd) -> Result<Received, ReceiveError> {
    let mut reader = Reader::new(input);
    let manifest = match reader.next_entry()? {
        Next::Member(m) if m.name == image_manifest::FILE_NAME => {
            Manifest::parse(&reader.read_all(MAX_MANIFEST)?)?
        }
        Next::Member(m) => return Err(ReceiveError::NoManifest { found: m.name }),
        Next::End => {
            return Err(ReceiveError::NoManifest {
                found: "the end-of-stream mark".into(),
            })
        }
    };
    let images: Vec<&str> = manifest
        .processes
        .iter()
        .filter_map(|p| p.image.as_deref())
        .collect();
    let name = match images[..] {
        [one] => one.to_owned(),
        [] => return Err(ReceiveError::NoImage),
        _ => {
            return Err(ReceiveError::Tree {
                processes: images.len(),
                root: manifest.root_pid().unwrap_or(0),
            })
        }
    };
    let member = match reader.next_entry()? {
        Next::Member(m) if m.name == name => m,
        Next::Member(m) => {
            return Err(ReceiveError::Unexpected {
                found: m.name,
                expected: name,
            })
        }
        Next::End => {
            return Err(ReceiveError::Unexpected {
                found: "the end-of-stream mark".into(),
                expected: name,
            })
        }
    };
    // Allocated at once below: a stream announcing more than there is
    // must not take the machine's memory (memfds are not accounted up
    // front) before its bytes even come.
    if let Some(available) = available_memory().filter(|&a| member.size > a) {
        return Err(ReceiveError::TooLarge {
            image: name,
            size: member.size,
            available,
        });
    }
    let memory = |source| ReceiveError::Memory {
        image: name.clone(),
        source,
    };
    let c_name = CString::new(name.clone()).map_err(|e| memory(io::Error::other(e)))?;
    let file = crate::sys::memfd_inherited(&c_name).map_err(memory)?;
    // All of its memory at once, while the sender is still reading the
    // pages for their checksums (it sends the header first): the copy
    // then fills pages that exist. Too little memory fails here, before
    // the stream is read on.
    crate::sys::allocate(&file, member.size).map_err(memory)?;
    copy_contents(&mut reader, &file).map_err(|e| match e {
        Copy::Stream(e) => ReceiveError::Tar(e),
        Copy::Memory(source) => memory(source),
    })?;
    match reader.next_entry()? {
        Next::End => {}
        Next::Member(m) => {
            return Err(ReceiveError::Extra {
                image: name,
                found: m.name,
            })
        }
    }
    crate::sys::seal_all(&file).map_err(memory)?;
    Ok(Received {
        image: file,
        name,
        size: member.size,
    })
}

/// Why the image could not be copied: the stream, or the memfd.
enum Copy {
    Stream(TarError),
    Memory(io::Error),
}

/// The open member's contents into `file`: spliced from the pipe (no copy
/// through this process: about 2.5 times as fast here), else read and
/// written. A stream cut in the middle is [`TarError::Cut`] either way
/// (the splice meets the end of the input, the read then says so).
fn copy_contents<R: Read + AsRawFd>(reader: &mut Reader<R>, file: &File) -> Result<(), Copy> {
    let mut splice = true;
    let mut buf = Vec::new();
    let mut out = file;
    while reader.contents_left() > 0 {
        let want = usize::try_from(reader.contents_left()).map_or(CHUNK, |n| n.min(CHUNK));
        if splice {
            match crate::sys::splice_to_file(reader.input(), file, want) {
                Ok(0) => splice = false,
                Ok(n) => {
                    reader.took_contents(n as u64).map_err(Copy::Stream)?;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => splice = false,
                Err(e) => return Err(Copy::Memory(e)),
            }
        }
        buf.resize(CHUNK, 0);
        let n = reader
            .read_contents(&mut buf[..want])
            .map_err(Copy::Stream)?;
        out.write_all(&buf[..n]).map_err(Copy::Memory)?;
    }
    Ok(())
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
