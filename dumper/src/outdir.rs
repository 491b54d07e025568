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
//! The output path is resolved one component at a time, each opened
//! `O_NOFOLLOW` in the directory held open before it: a symlink on the way
//! is followed only when it belongs to the dumping user or root and sits in
//! a directory nobody else can change names in (or a sticky one), so a link
//! planted by another user never redirects where root writes; such a link
//! is refused, even with `--force` (the directory it points to can be given
//! instead).
//!
//! An existing output directory that someone else can write into (or that
//! belongs to another user) is refused unless forced: they could plant
//! names there, read what lands there, or swap files after the dump. So is
//! a missing one whose parent others can write into, unless that parent is
//! sticky: they could swap the new directory. The directory crdump creates
//! is checked after it is opened (its owner, mode and emptiness) before
//! anything is written into it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use image_format::text::Escaped;

use crate::sys::{dirs, process};

#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("{}: {source}", shown(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a directory", shown(.path))]
    NotDirectory { path: PathBuf },
    #[error("{}: {why}; refusing to write a dump there (use --force to do it anyway)", shown(.path))]
    Unsafe { path: PathBuf, why: String },
    #[error(
        "{}: its file system has no anonymous files (O_TMPFILE), which crdump needs so that \
         an interrupted dump leaves nothing behind: {source}",
        shown(.path)
    )]
    NoTmpfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: created by someone else while the dump ran", shown(.path))]
    Appeared { path: PathBuf },
    #[error("{}: {why}; refusing to follow it (give the directory it points to instead)", shown(.path))]
    Link { path: PathBuf, why: String },
    #[error(
        "{}: the directory crdump created is not the one it opened (owner uid {uid}, mode \
         {mode:04o}, {nlink} links): replaced by someone else",
        shown(.path)
    )]
    Swapped {
        path: PathBuf,
        uid: u32,
        mode: u32,
        nlink: u64,
    },
}

/// A path for a message: escaped, as a link target on the way may hold
/// anything.
fn shown(path: &Path) -> Escaped<'_> {
    Escaped(path.as_os_str().as_bytes())
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

/// Symlinks followed at most while resolving the output directory, as the
/// kernel's own limit (`MAXSYMLINKS`).
const MAX_LINKS: u32 = 40;

/// Whether someone other than user `euid` (and root) can change the names
/// in directory `meta`: it is writable by group or others, or owned by
/// another user who can write it.
fn others_can_write(meta: &fs::Metadata, euid: u32) -> bool {
    let mode = meta.mode();
    mode & 0o022 != 0 || (meta.uid() != euid && meta.uid() != 0 && mode & 0o200 != 0)
}

/// Why the symlink `link` (its own metadata), found in directory `dir`,
/// must not be followed by user `euid`, if it must not. crdump's rule,
/// stricter than the kernel's `fs.protected_symlinks` (which may be off):
/// the link must belong to `euid` or root, and sit in a directory nobody
/// else can change names in, unless that directory is sticky (then nobody
/// else can replace a link they do not own). So a link someone else planted
/// (or could swap) never redirects where root writes; a link the user made
/// in their own directory works.
fn link_unsafe_reason(link: &fs::Metadata, dir: &fs::Metadata, euid: u32) -> Option<String> {
    if link.uid() != euid && link.uid() != 0 {
        return Some(format!(
            "a symlink owned by uid {}, not by uid {euid} who dumps or root",
            link.uid()
        ));
    }
    if others_can_write(dir, euid) && dir.mode() & libc::S_ISVTX == 0 {
        return Some(format!(
            "a symlink in a directory others can write into (mode {:04o}, uid {})",
            dir.mode() & 0o7777,
            dir.uid()
        ));
    }
    None
}

/// Walk `path` one component at a time from `/` or `.`, each opened
/// `O_PATH | O_NOFOLLOW` (search permission suffices, as for a path)
/// inside the directory held open before it, so that nothing
/// is resolved through a name twice. A symlink on the way is followed only
/// if [`link_unsafe_reason`] has nothing against it. Returns the nearest
/// existing directory (held open), its path as walked, and the components
/// below it that do not exist, outermost first.
fn resolve(path: &Path, euid: u32) -> Result<(File, PathBuf, Vec<OsString>), OutDirError> {
    // Components still to walk, the next one last.
    let mut todo: Vec<OsString> = Vec::new();
    let push_path = |todo: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_owned()),
                Component::ParentDir => todo.push("..".into()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
    };
    push_path(&mut todo, path);
    let absolute = path.is_absolute();
    let mut shown = if absolute {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    };
    let start_err = |source| OutDirError::Io {
        path: PathBuf::from(if absolute { "/" } else { "." }),
        source,
    };
    let mut dir = dirs::open_start(absolute).map_err(start_err)?;
    let mut links = 0;
    while let Some(name) = todo.pop() {
        let here = shown.join(&name);
        let io_err = |source| OutDirError::Io {
            path: here.clone(),
            source,
        };
        match dirs::open_walk_at(&dir, &name) {
            Ok(sub) => {
                dir = sub;
                shown = here;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                todo.push(name);
                todo.reverse();
                if todo.iter().any(|n| n == "..") {
                    // Below a directory that does not exist yet.
                    return Err(io_err(e));
                }
                return walked(&dir, shown, todo);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {}
            Err(e) => return Err(io_err(e)),
        }
        // Not a directory: a symlink (refused by O_NOFOLLOW) or a file.
        let handle = dirs::open_path_at(&dir, &name).map_err(io_err)?;
        let meta = handle.metadata().map_err(io_err)?;
        if !meta.file_type().is_symlink() {
            return Err(OutDirError::NotDirectory { path: here });
        }
        let dir_meta = dir.metadata().map_err(io_err)?;
        if let Some(why) = link_unsafe_reason(&meta, &dir_meta, euid) {
            return Err(OutDirError::Link { path: here, why });
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(io_err(io::Error::from_raw_os_error(libc::ELOOP)));
        }
        let target = PathBuf::from(dirs::read_link_of(&handle).map_err(io_err)?);
        if target.is_absolute() {
            dir = dirs::open_start(true).map_err(io_err)?;
            shown = PathBuf::from("/");
        }
        push_path(&mut todo, &target);
    }
    walked(&dir, shown, Vec::new())
}

/// The end of a walk: the directory reached, reopened for reading, with the
/// path it was reached by (`.` for none) and the components still missing.
fn walked(
    dir: &File,
    shown: PathBuf,
    missing: Vec<OsString>,
) -> Result<(File, PathBuf, Vec<OsString>), OutDirError> {
    let base_path = if shown.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        shown
    };
    let dir = dirs::reopen_dir(dir).map_err(|source| OutDirError::Io {
        path: base_path.clone(),
        source,
    })?;
    Ok((dir, base_path, missing))
}

impl OutDir {
    /// Look at `path` before anything is frozen: find the nearest existing
    /// directory, refuse it if others can write into it (unless `force`),
    /// and prove that an anonymous file can be created there.
    pub fn prepare(path: &Path, force: bool) -> Result<OutDir, OutDirError> {
        let euid = process::effective_uid();
        let (base, base_path, missing) = resolve(path, euid)?;
        let meta = base.metadata().map_err(|source| OutDirError::Io {
            path: base_path.clone(),
            source,
        })?;
        let why = if missing.is_empty() {
            unsafe_reason(&meta, euid)
        } else {
            parent_unsafe_reason(&meta, euid)
        };
        if let (Some(why), false) = (why, force) {
            return Err(OutDirError::Unsafe {
                path: base_path,
                why,
            });
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
            // Whoever can write into the parent (only allowed with --force,
            // or the user themselves) could have put another directory
            // under the name between mkdirat and openat: check what was
            // opened before anything is written into it.
            let meta = sub.metadata().map_err(io_err)?;
            if created_dir_mismatch(&meta, process::effective_uid()) {
                return Err(OutDirError::Swapped {
                    path: dir_path,
                    uid: meta.uid(),
                    mode: meta.mode() & 0o7777,
                    nlink: meta.nlink(),
                });
            }
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

/// Why the existing directory in which crdump is to create the output
/// directory is not safe for user `euid`, if it is not: someone else who
/// can change names there could replace the new directory between its
/// creation and its use, or move it afterwards. A sticky directory (a
/// shared /tmp) is fine: there nobody else can rename or remove what
/// crdump creates.
fn parent_unsafe_reason(meta: &fs::Metadata, euid: u32) -> Option<String> {
    if meta.mode() & libc::S_ISVTX != 0 || !others_can_write(meta, euid) {
        return None;
    }
    Some(format!(
        "the directory to create the output directory in can be written by other users and is \
         not sticky (mode {:04o}, uid {})",
        meta.mode() & 0o7777,
        meta.uid()
    ))
}

/// Why the directory `meta` that crdump just created and opened (by name,
/// `O_NOFOLLOW`) is not the one it created, if it is not: only user `euid`
/// can own a new directory of theirs, mode 0700 (or stricter, by the
/// umask), still empty (2 links).
fn created_dir_mismatch(meta: &fs::Metadata, euid: u32) -> bool {
    meta.uid() != euid || meta.mode() & 0o077 != 0 || meta.nlink() != 2
}

/// Why an existing output directory is not a safe place for a dump made
/// by user `euid`, if it is not.
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
        // Creating one there: the others could swap it (not sticky).
        let err = OutDir::prepare(&shared.join("new"), false).unwrap_err();
        assert!(matches!(err, OutDirError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("not sticky"), "{err}");
        OutDir::prepare(&shared.join("new"), true).unwrap();
        // In a sticky one (a shared /tmp) the directory crdump creates is
        // its own: fine.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        OutDir::prepare(&shared.join("new"), false).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn own_symlinks_in_own_directories_are_followed_and_a_file_in_them_is_not_a_directory() {
        let base = scratch("ownlink");
        let real = base.join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("real", base.join("rel")).unwrap();
        std::os::unix::fs::symlink(&real, base.join("abs")).unwrap();
        std::os::unix::fs::symlink("nowhere/../x", base.join("dangling")).unwrap();
        for via in ["rel", "abs", "rel/../real", "rel/new/deeper"] {
            let dir = OutDir::prepare(&base.join(via), false).unwrap();
            let file = dir.anonymous_file(false).unwrap();
            dir.publish(&[(&file, "manifest.json")]).unwrap().keep();
        }
        assert!(real.join("manifest.json").is_file());
        assert!(real.join("new/deeper/manifest.json").is_file());
        // Below a directory that does not exist, `..` cannot be resolved.
        let err = OutDir::prepare(&base.join("dangling"), false).unwrap_err();
        assert!(matches!(err, OutDirError::Io { .. }), "{err}");
        // A link in a directory others can write into (not sticky): refused
        // even though it is the user's own, and not by --force.
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        std::os::unix::fs::symlink(&real, open.join("out")).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = OutDir::prepare(&open.join("out"), true).unwrap_err();
        assert!(matches!(err, OutDirError::Link { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("{}: ", open.join("out").display())));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        OutDir::prepare(&open.join("out"), false).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn only_a_fresh_private_directory_of_ours_passes_as_the_created_one() {
        let base = scratch("created");
        let euid = process::effective_uid();
        let d = base.join("d");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!created_dir_mismatch(&fs::metadata(&d).unwrap(), euid));
        assert!(created_dir_mismatch(&fs::metadata(&d).unwrap(), euid + 1));
        fs::create_dir(d.join("sub")).unwrap();
        assert!(
            created_dir_mismatch(&fs::metadata(&d).unwrap(), euid),
            "not empty"
        );
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(created_dir_mismatch(&fs::metadata(&open).unwrap(), euid));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn paths_in_messages_are_escaped() {
        let base = scratch("escaped");
        fs::write(base.join("x\n\x1b[1my"), b"").unwrap();
        let err = OutDir::prepare(&base.join("x\n\x1b[1my/out"), false).unwrap_err();
        let text = err.to_string();
        assert!(text.ends_with("x\\n\\x1b[1my: not a directory"), "{text:?}");
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
