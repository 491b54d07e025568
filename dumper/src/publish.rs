//! Publishing a complete dump: the images are made durable and runnable,
//! the manifest is made durable (a tree dump's describes that tree; the
//! one-process [`publish`] keeps the other processes dumped into the same
//! directory), and only then do they all get their names
//! in the output directory ([`OutDir::publish`]: `linkat` of the anonymous
//! files, `renameat` over older ones, the directory fsynced). The returned
//! [`Published`] removes the names again unless the release of the process
//! succeeds.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use image_manifest::Manifest;

use crate::cancel::cancel_requested;
use crate::outdir::{OutDir, OutDirError, Published};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("pid {pid}: {path}: {source}")]
    Io {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: {source}")]
    OutDir {
        pid: i32,
        #[source]
        source: OutDirError,
    },
    /// Cancelled after the files were written, before they got names.
    #[error("pid {pid}: dump cancelled")]
    Cancelled { pid: i32 },
}

/// Make every image of a tree dump (anonymous files, with their names)
/// and `manifest` durable, then name them all in `out` at once. The
/// manifest describes this tree alone: it replaces the directory's
/// earlier one.
pub fn publish_tree(
    out: &OutDir,
    root: i32,
    images: &[(File, String)],
    manifest_file: &File,
    manifest: &Manifest,
) -> Result<Published, PublishError> {
    let io_err = |name: &str| {
        let path = out.path().join(name);
        move |source| PublishError::Io {
            pid: root,
            path,
            source,
        }
    };
    // Every image and the manifest made durable at once, one thread each:
    // the file system commits their journal entries together instead of
    // one commit after the other.
    // A thread that cannot be made (a thread limit) does its part here.
    let finish = |image: &File| {
        image.sync_all()?;
        // Images are runnable by their owner (binfmt_misc) and private to
        // them.
        image.set_permissions(fs::Permissions::from_mode(0o700))
    };
    let (synced, manifest_written) = std::thread::scope(|scope| {
        let syncs: Vec<_> = images
            .iter()
            .map(|(image, _)| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || finish(image))
                    .map_err(|_| finish(image))
            })
            .collect();
        let manifest_written = image_manifest::write_to(manifest_file, manifest);
        let synced: Vec<io::Result<()>> = syncs
            .into_iter()
            .map(|t| match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(done_here) => done_here,
            })
            .collect();
        (synced, manifest_written)
    });
    for (r, (_, name)) in synced.into_iter().zip(images) {
        r.map_err(io_err(name))?;
    }
    manifest_written.map_err(io_err(image_manifest::FILE_NAME))?;
    if cancel_requested() {
        return Err(PublishError::Cancelled { pid: root });
    }
    let mut files: Vec<(&File, &str)> = images.iter().map(|(f, n)| (f, n.as_str())).collect();
    files.push((manifest_file, image_manifest::FILE_NAME));
    out.publish(&files)
        .map_err(|source| PublishError::OutDir { pid: root, source })
}
