//! An image file mapped read-only, with the path kept for messages.

use std::fs::File;
use std::path::{Path, PathBuf};

use image_format::{Image, ImageError};

/// Why an image could not be opened or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ImageError },
}

/// The bytes of an image file.
pub struct ImageFile {
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl ImageFile {
    /// Maps the whole file read-only.
    pub fn open(path: &Path) -> Result<Self, ImageFileError> {
        let open_err = |source| ImageFileError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        // An empty file cannot be mapped; it is simply a truncated image.
        let map = if len == 0 {
            None
        } else {
            Some(crate::sys::map_readonly(&file).map_err(open_err)?)
        };
        Ok(ImageFile {
            path: path.to_owned(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Parses the image (headers and notes; not segment contents).
    pub fn parse(&self) -> Result<Image<'_>, ImageFileError> {
        Image::parse(self.bytes()).map_err(|source| ImageFileError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// Parses the image and checks the XXH3 checksum of every stored page.
    pub fn verify(&self) -> Result<Image<'_>, ImageFileError> {
        let img = self.parse()?;
        img.verify_segments()
            .map_err(|source| ImageFileError::Parse {
                path: self.path.clone(),
                source,
            })?;
        Ok(img)
    }
}
