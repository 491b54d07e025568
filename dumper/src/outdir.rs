//! The output directory of a dump, checked before anything is frozen and
//! written so that a dumper killed at any instant leaves nothing behind.
//!
//! The image and the manifest are written as anonymous files (`O_TMPFILE`)
//! in the nearest directory that already exists; a missing output directory
//! is created only when both are complete and durable, right before they are
//! linked into it. Every name is created relative to a directory held open
//! (`mkdirat`, `linkat`, `renameat`), never through a path, and never by
//! opening an existing name for writing: a symlink planted at any name
//! crdump uses is replaced or makes the dump fail, it is never followed.
//!
//! An existing output directory that someone else can write into (or that
//! belongs to another user) is refused unless forced: they could plant
//! names there, read what lands there, or swap files after the dump.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys::{dirs, process};

#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{path}: {why}; refusing to write a dump there (use --force to do it anyway)")]
    Unsafe { path: PathBuf, why: String },
    #[error(
        "{path}: its file system has no anonymous files (O_TMPFILE), which crdump needs so that \
         an interrupted dump leaves nothing behind: {source}"
    )]
    NoTmpfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: created by someone else while the dump ran")]
    Appeared { path: PathBuf },
}

/// Where a dump goes: the nearest existing directory, held open, and the
/// directories still to create below it.
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    base: File,
    base_path: PathBuf,
    /// Components below `base` to create at publication, outermost first.
    missing: Vec<OsString>,
}

/// The nearest existing ancestor of `path` (itself if it exists) and the
/// components below it that do not exist, outermost first.
fn split_existing(path: &Path) -> Result<(PathBuf, Vec<OsString>), OutDirError> {
    let mut missing = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        let here = if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.clone()
        };
        match fs::metadata(&here) {
            Ok(m) if m.is_dir() => {
                missing.reverse();
                return Ok((here, missing));
            }
            Ok(_) => return Err(OutDirError::NotDirectory { path: here }),
            // ENOTDIR: a file further up is in the way; it is found there.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                let (Some(name), Some(parent)) = (p.file_name(), p.parent()) else {
                    return Err(OutDirError::Io {
                        path: here,
                        source: e,
                    });
                };
                missing.push(name.to_owned());
                p = parent.to_path_buf();
            }
            Err(source) => return Err(OutDirError::Io { path: here, source }),
        }
    }
}

impl OutDir {
    /// Look at `path` before anything is frozen: find the nearest existing
    /// directory, refuse it if others can write into it (unless `force`),
    /// and prove that an anonymous file can be created there.
    pub fn prepare(path: &Path, force: bool) -> Result<OutDir, OutDirError> {
        let (base_path, missing) = split_existing(path)?;
        let io_err = |source| OutDirError::Io {
            path: base_path.clone(),
            source,
        };
        let base = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&base_path)
            .map_err(io_err)?;
        let meta = base.metadata().map_err(io_err)?;
        if !force && missing.is_empty() {
            if let Some(why) = unsafe_reason(&meta, process::effective_uid()) {
                return Err(OutDirError::Unsafe {
                    path: base_path,
                    why,
                });
            }
        }
        let out = OutDir {
            path: path.to_path_buf(),
            base,
            base_path,
            missing,
        };
        // Writable (and on a file system with anonymous files): checked by
        // creating one, which also catches a read-only mount (root passes
        // every access() check).
        drop(out.anonymous_file(false)?);
        Ok(out)
    }

    /// The output directory as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new anonymous file, mode 0600, on the output directory's file
    /// system; with `direct`, `O_DIRECT` where the file system has it.
    pub fn anonymous_file(&self, direct: bool) -> Result<File, OutDirError> {
        let open = |extra| dirs::tmpfile_in(&self.base, extra);
        let r = if direct {
            match open(libc::O_DIRECT) {
                // tmpfs refuses O_DIRECT.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0),
                other => other,
            }
        } else {
            open(0)
        };
        r.map_err(|source| match source.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::EISDIR) => OutDirError::NoTmpfile {
                path: self.base_path.clone(),
                source,
            },
            _ => OutDirError::Io {
                path: self.base_path.clone(),
                source,
            },
        })
    }

    /// Give each complete, durable anonymous file its name in the output
    /// directory, creating the directory (mode 0700) first if it is missing,
    /// and make the names durable. Dropping the result without
    /// [`Published::keep`] removes the names again, and the directories
    /// created.
    pub fn publish(&self, files: &[(&File, &str)]) -> Result<Published, OutDirError> {
        let mut published = Published {
            dir: None,
            names: Vec::new(),
            created: Vec::new(),
            keep: false,
        };
        let mut dir = self.base.try_clone().map_err(|source| OutDirError::Io {
            path: self.base_path.clone(),
            source,
        })?;
        let mut dir_path = self.base_path.clone();
        for name in &self.missing {
            dir_path.push(name);
            let io_err = |source| OutDirError::Io {
                path: dir_path.clone(),
                source,
            };
            match dirs::mkdir_at(&dir, name, 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    return Err(OutDirError::Appeared { path: dir_path });
                }
                Err(e) => return Err(io_err(e)),
            }
            let sub = dirs::open_dir_at(&dir, name).map_err(io_err)?;
            published.created.push((dir, name.clone()));
            dir = sub;
        }
        let new_dir = !self.missing.is_empty();
        for &(file, name) in files {
            let name = OsStr::new(name);
            let io_err = |source| OutDirError::Io {
                path: dir_path.join(name),
                source,
            };
            match dirs::link_at(file, &dir, name) {
                Ok(()) => {}
                // An older dump (or anything else) has the name: link under
                // a free temporary name, then replace it in one step.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !new_dir => {
                    let tmp = link_temporary(file, &dir, name).map_err(io_err)?;
                    if let Err(e) = dirs::rename_at(&dir, &tmp, name) {
                        let _ = dirs::unlink_at(&dir, &tmp, false);
                        return Err(io_err(e));
                    }
                }
                Err(e) => return Err(io_err(e)),
            }
            published.names.push(name.to_owned());
        }
        let sync = |d: &File, path: &Path| {
            d.sync_all().map_err(|source| OutDirError::Io {
                path: path.to_owned(),
                source,
            })
        };
        sync(&dir, &dir_path)?;
        if new_dir {
            sync(&self.base, &self.base_path)?;
        }
        published.dir = Some(dir);
        Ok(published)
    }
}

/// Link `file` into `dir` under a free name `.NAME.tmp-PID-N`.
fn link_temporary(file: &File, dir: &File, name: &OsStr) -> io::Result<OsString> {
    let me = std::process::id();
    for n in 0..100 {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp-{me}-{n}"));
        match dirs::link_at(file, dir, &tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Why an existing output directory is not a safe place for a dump made
/// by user `euid`, if it is not. A missing one is created by crdump, mode
/// 0700, inside its parent held open: whoever can write into that parent
/// (a shared /tmp, say) cannot redirect what crdump writes, so the parent
/// is not judged.
fn unsafe_reason(meta: &fs::Metadata, euid: u32) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if meta.uid() != euid {
        return Some(format!(
            "the output directory belongs to uid {}, not to uid {euid} who dumps",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "the output directory is writable by other users (mode {mode:04o})"
        ));
    }
    None
}

/// The names a dump gave its files, removed again on drop unless kept.
#[derive(Debug)]
pub struct Published {
    dir: Option<File>,
    names: Vec<OsString>,
    /// Directories created: (parent, name), outermost first.
    created: Vec<(File, OsString)>,
    keep: bool,
}

impl Published {
    /// The dump succeeded: the files stay.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(dir) = &self.dir {
            for name in &self.names {
                let _ = dirs::unlink_at(dir, name, false);
            }
        }
        for (parent, name) in self.created.iter().rev() {
            // Not empty (someone else put something there): stop.
            if dirs::unlink_at(parent, name, true).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("crimg-outdir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    #[test]
    fn nothing_is_created_before_publication_and_a_failure_removes_it() {
        let base = scratch("late");
        let out = base.join("a/b");
        let dir = OutDir::prepare(&out, false).unwrap();
        assert!(!base.join("a").exists(), "created before publication");
        let file = dir.anonymous_file(false).unwrap();
        io::Write::write_all(&mut &file, b"image").unwrap();
        let published = dir.publish(&[(&file, "task-1.crimg")]).unwrap();
        assert_eq!(fs::read(out.join("task-1.crimg")).unwrap(), b"image");
        assert_eq!(fs::metadata(base.join("a")).unwrap().mode() & 0o777, 0o700);
        drop(published);
        assert!(!base.join("a").exists(), "left behind after a failure");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn an_existing_name_is_replaced_not_followed() {
        let base = scratch("replace");
        let victim = base.join("victim");
        fs::write(&victim, b"victim").unwrap();
        let out = base.join("out");
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("manifest.json")).unwrap();
        let dir = OutDir::prepare(&out, false).unwrap();
        let file = dir.anonymous_file(false).unwrap();
        io::Write::write_all(&mut &file, b"new").unwrap();
        dir.publish(&[(&file, "manifest.json")]).unwrap().keep();
        assert_eq!(fs::read(&victim).unwrap(), b"victim");
        assert_eq!(fs::read(out.join("manifest.json")).unwrap(), b"new");
        assert!(!fs::symlink_metadata(out.join("manifest.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1, "temporary left");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn shared_directories_are_refused_unless_forced() {
        let base = scratch("shared");
        let shared = base.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err = OutDir::prepare(&shared, false).unwrap_err();
        assert!(matches!(err, OutDirError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        OutDir::prepare(&shared, true).unwrap();
        // A directory crdump creates there is its own: fine.
        OutDir::prepare(&shared.join("new"), false).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let base = scratch("file");
        fs::write(base.join("f"), b"").unwrap();
        let err = OutDir::prepare(&base.join("f/out"), false).unwrap_err();
        assert!(matches!(err, OutDirError::NotDirectory { .. }), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }
}
