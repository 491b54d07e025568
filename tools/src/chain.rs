//! The chain of an incremental image for `crimg verify` and `crimg info`:
//! its parent images opened as the loader opens them (relative to the
//! directory of the image that names them, no symlink followed on the
//! recorded path, owned by the image's owner or root), every link checked
//! and every page's checksum, and a broken link named by its path.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use image_format::chain::{self, ChainError};
use image_format::records::MAX_CHAIN_DEPTH;
use image_format::{Image, ImageError};

use crate::image_file::{ImageFile, ImageFileError};

/// Why a chain was refused; `path` is the link's file as opened.
#[derive(Debug, thiserror::Error)]
pub enum ChainFileError {
    #[error("parent image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parent image {path}: a symlink on its recorded path (never followed)")]
    Symlink { path: PathBuf },
    #[error("parent image {path}: the recorded path {recorded:?} is not relative")]
    NotRelative { path: PathBuf, recorded: String },
    #[error("parent image {path} belongs to uid {uid}, neither the image's owner (uid {owner}) nor root")]
    Owner { path: PathBuf, uid: u32, owner: u32 },
    #[error("parent image {path}: {source}")]
    Parse { path: PathBuf, source: ImageError },
    #[error("parent image {path} (link {link} of the chain): {source}")]
    Link {
        path: PathBuf,
        link: usize,
        source: ChainError,
    },
    #[error("the chain is longer than the {MAX_CHAIN_DEPTH} parents a loader follows")]
    TooDeep,
    #[error(transparent)]
    Image(#[from] ImageFileError),
}

/// An image and its parents, mapped.
pub struct ChainFiles {
    /// The image first, then each parent.
    pub files: Vec<ImageFile>,
}

impl ChainFiles {
    /// Opens the image at `path` and every parent it names.
    pub fn open(path: &Path) -> Result<Self, ChainFileError> {
        let first = ImageFile::open(path)?;
        let owner = std::fs::metadata(path)
            .map_err(|source| ChainFileError::Open {
                path: path.to_owned(),
                source,
            })?
            .uid();
        let mut files = vec![first];
        loop {
            let last = files.last().expect("the image is first");
            let img = last.parse()?;
            let Some(rec) = img.parent() else { break };
            if files.len() > MAX_CHAIN_DEPTH as usize {
                return Err(ChainFileError::TooDeep);
            }
            let recorded = img
                .string(rec.path)
                .map_err(|source| ChainFileError::Parse {
                    path: last.path().to_owned(),
                    source,
                })?;
            let recorded = String::from_utf8_lossy(recorded).into_owned();
            let dir = last.path().parent().unwrap_or(Path::new("."));
            let next = open_relative(dir, &recorded, owner)?;
            files.push(next);
        }
        Ok(ChainFiles { files })
    }

    /// Parses every link.
    pub fn images(&self) -> Result<Vec<Image<'_>>, ChainFileError> {
        self.files
            .iter()
            .map(|f| f.parse().map_err(ChainFileError::from))
            .collect()
    }

    /// Checks every link and every checksum: each image's own pages, and
    /// the pages each takes from its parents.
    pub fn verify(&self) -> Result<(), ChainFileError> {
        let images = self.images()?;
        let link_error = |link: usize, source| ChainFileError::Link {
            path: self.files[link.min(self.files.len() - 1)].path().to_owned(),
            link,
            source,
        };
        for (link, pair) in images.windows(2).enumerate() {
            chain::check_link(link, &pair[0], &pair[1]).map_err(|e| link_error(link + 1, e))?;
        }
        for (link, img) in images.iter().enumerate() {
            img.verify_segments()
                .map_err(|source| ChainFileError::Parse {
                    path: self.files[link].path().to_owned(),
                    source,
                })?;
            chain::verify_parent_segments(&images, link).map_err(|e| {
                let at = match e {
                    ChainError::MissingPages { link, .. } => link,
                    _ => link + 1,
                };
                link_error(at, e)
            })?;
        }
        Ok(())
    }
}

/// Opens `recorded` under `dir` refusing a symlink on any of its
/// components, and a file of another owner than `owner` or root.
fn open_relative(dir: &Path, recorded: &str, owner: u32) -> Result<ImageFile, ChainFileError> {
    let mut path = dir.to_owned();
    let rel = Path::new(recorded);
    let mut parts = rel.components().peekable();
    if parts.peek().is_none() {
        return Err(ChainFileError::NotRelative {
            path: dir.join(rel),
            recorded: recorded.to_owned(),
        });
    }
    for c in parts {
        match c {
            Component::Normal(_) | Component::ParentDir => path.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ChainFileError::NotRelative {
                    path: dir.join(rel),
                    recorded: recorded.to_owned(),
                })
            }
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|source| ChainFileError::Open {
            path: path.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(ChainFileError::Symlink { path });
        }
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|source| ChainFileError::Open {
        path: path.clone(),
        source,
    })?;
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(ChainFileError::Owner {
            path,
            uid: meta.uid(),
            owner,
        });
    }
    Ok(ImageFile::open(&path)?)
}
