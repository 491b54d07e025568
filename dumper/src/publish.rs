//! Publishing a complete dump: the image is made durable and runnable,
//! the manifest is composed (keeping the other processes dumped into the
//! same directory) and made durable, and only then do both get their names
//! in the output directory ([`OutDir::publish`]: `linkat` of the anonymous
//! files, `renameat` over older ones, the directory fsynced). The returned
//! [`Published`] removes the names again unless the release of the process
//! succeeds.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use image_manifest::{Manifest, ManifestProcess};

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

/// Make `image` (the anonymous file the image was written into) and the
/// manifest listing `process` durable, then name both in `out`.
pub fn publish(
    out: &OutDir,
    image: &File,
    manifest_file: &File,
    process: ManifestProcess,
) -> Result<Published, PublishError> {
    let pid = process.pid;
    let io_err = |name: &str| {
        let path = out.path().join(name);
        move |source| PublishError::Io { pid, path, source }
    };
    let image_name = process.image.clone();
    image.sync_all().map_err(io_err(&image_name))?;
    // Images are runnable by their owner (binfmt_misc) and private to them.
    image
        .set_permissions(fs::Permissions::from_mode(0o700))
        .map_err(io_err(&image_name))?;
    // Other processes dumped into this directory before stay listed.
    let manifest = Manifest::with_process(out.path(), process);
    image_manifest::write_to(manifest_file, &manifest)
        .map_err(io_err(image_manifest::FILE_NAME))?;
    if cancel_requested() {
        return Err(PublishError::Cancelled { pid });
    }
    // Both files are complete and durable; now they get their names (and
    // the directory is created if it was missing). Until the release
    // succeeds, the guard removes them again, so that a failed dump leaves
    // no new file. An older image or manifest of the same name is replaced
    // and is not brought back.
    out.publish(&[
        (image, &image_name),
        (manifest_file, image_manifest::FILE_NAME),
    ])
    .map_err(|source| PublishError::OutDir { pid, source })
}
