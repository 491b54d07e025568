//! A dump directory read and checked before anything is created: the
//! manifest, every image parsed and passed through the loader's own rules
//! (`binfmt_loader::rules::check_image`), and every holder of a shared
//! object present in its image with a matching kind.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use binfmt_loader::rules;
use binfmt_loader::tree_objects::{self, TaskIdentity};
use image_format::records::{fd_flags, fd_kind, FdRecord, ShmemRecord};
use image_format::Image;
use image_manifest::{Manifest, SharedKind};

use super::error::TreeError;
use super::sys;

/// One live process's image, mapped for the life of the orchestrator
/// (the loader's object code takes `Image<'static>`).
pub struct TaskImage {
    /// Absolute path, for messages.
    pub path: PathBuf,
    /// The image file checked here (regular, not reached through a
    /// symbolic link, owned by the manifest's owner): the loader is given
    /// this very file (`/proc/self/fd/N`), never the path again.
    pub file: RawFd,
    /// Whom its restore acts as, as the loader decides it.
    pub identity: TaskIdentity,
    pub image: Image<'static>,
    /// The highest fd number of the task (2 at least).
    pub max_fd: i32,
}

impl TaskImage {
    /// The fd record of fd `fd`.
    pub fn fd(&self, fd: i32) -> Option<FdRecord> {
        self.image.fds().ok()?.find(|f| f.fd == fd)
    }
}

/// The largest `manifest.json` read (one of 65 536 processes with their
/// shared objects is some tens of MiB): a bigger file is refused, not
/// read into memory.
const MAX_MANIFEST: u64 = 256 << 20;

/// The dump: its manifest and the image of each live process.
pub struct Dump {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub images: BTreeMap<i32, TaskImage>,
    /// The owner of `manifest.json`, who every image must belong to too:
    /// whose dump it is, even where the loader counts an image as
    /// nobody's (a `nosuid` mount), and even when it has no image (only
    /// zombies).
    pub owner_uid: u32,
}

impl Dump {
    /// Read `dir` and check it.
    pub fn read(dir: &Path) -> Result<Dump, TreeError> {
        let dir = dir.canonicalize().map_err(|source| TreeError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let bad = |why: String| TreeError::BadManifest {
            dir: dir.clone(),
            why,
        };
        // Every file is opened relative to the directory, never through a
        // symbolic link: a name in an attacker's directory may point at
        // another user's dump.
        let dir_fd: OwnedFd = std::fs::File::open(&dir)
            .map_err(|source| TreeError::Dir {
                dir: dir.clone(),
                source,
            })?
            .into();
        let manifest_path = dir.join(image_manifest::FILE_NAME);
        let (mut manifest_file, manifest_meta) =
            open_regular(dir_fd.as_raw_fd(), image_manifest::FILE_NAME).map_err(|why| {
                TreeError::BadManifest {
                    dir: dir.clone(),
                    why: format!("file {}: {why}", manifest_path.display()),
                }
            })?;
        let mut bytes = Vec::new();
        (&mut manifest_file)
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| TreeError::Dir {
                dir: manifest_path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(bad(format!(
                "file {} is larger than {MAX_MANIFEST} bytes: not a manifest crdump writes",
                manifest_path.display()
            )));
        }
        let manifest = Manifest::parse(&bytes).map_err(|source| TreeError::Manifest {
            dir: dir.clone(),
            source,
        })?;
        let manifest_owner = (manifest_meta.uid(), manifest_meta.gid());
        let mmap_min = mmap_min_addr();
        let os = tree_objects::kernel();
        let mut images = BTreeMap::new();
        for p in &manifest.processes {
            let Some(name) = &p.image else { continue };
            // A name, not a path: the manifest cannot point outside DIR.
            if name.contains('/') || name.starts_with('.') || name.is_empty() {
                return Err(bad(format!(
                    "names image {name:?} for pid {}, not a file of the directory",
                    p.pid
                )));
            }
            let path = dir.join(name);
            let refused = |why: String| TreeError::ImageRefused {
                pid: p.pid,
                path: path.clone(),
                why,
            };
            let (file, meta) = open_regular(dir_fd.as_raw_fd(), name).map_err(&refused)?;
            // One owner for the whole dump: the manifest's writer cannot
            // borrow an image somebody else wrote (a hard link).
            if meta.uid() != manifest_owner.0 {
                return Err(refused(format!(
                    "the image belongs to uid {}, the manifest to uid {}",
                    meta.uid(),
                    manifest_owner.0
                )));
            }
            let map: &'static [u8] = if meta.len() == 0 {
                &[]
            } else {
                let map = crate::sys::map_readonly(&file)
                    .map_err(|e| refused(format!("cannot map it: {e}")))?;
                &Box::leak(Box::new(map))[..]
            };
            let file: &'static std::fs::File = Box::leak(Box::new(file));
            let image = Image::parse(map).map_err(|e| refused(format!("corrupt image: {e}")))?;
            rules::check_image(&image, mmap_min)
                .map_err(|e| refused(format!("the loader would refuse it: {e}")))?;
            let pid = image.process().pid;
            if pid != p.pid {
                return Err(refused(format!("it holds pid {pid}, not {}", p.pid)));
            }
            let tids: Vec<i32> = image
                .threads()
                .filter_map(|t| t.ok().map(|t| t.record.tid))
                .collect();
            if !p.threads.is_empty() && tids != p.threads {
                return Err(refused(format!(
                    "its threads {tids:?} are not the manifest's {:?}",
                    p.threads
                )));
            }
            let fds = image
                .fds()
                .map_err(|e| refused(format!("corrupt image: {e}")))?;
            let max_fd = fds.map(|f| f.fd).max().unwrap_or(2).max(2);
            // Whom it restores as, decided by the loader's own code (with
            // its refusals): the objects made for it are made as that.
            // Its warnings are the loader's to give (relayed with the
            // pid): not said twice.
            let quiet = std::fs::File::options().write(true).open("/dev/null").ok();
            if let Some(null) = &quiet {
                binfmt_loader::message::set_report_fd(null.as_raw_fd());
            }
            let identity = tree_objects::task_identity(
                &os,
                path.as_os_str().as_encoded_bytes(),
                &image,
                file.as_raw_fd(),
                (meta.uid(), meta.gid()),
            );
            binfmt_loader::message::set_report_fd(2);
            drop(quiet);
            let identity =
                identity.map_err(|e| refused(format!("the loader would refuse it: {e}")))?;
            images.insert(
                p.pid,
                TaskImage {
                    path,
                    file: file.as_raw_fd(),
                    identity,
                    image,
                    max_fd,
                },
            );
        }
        let dump = Dump {
            dir,
            manifest,
            images,
            owner_uid: manifest_owner.0,
        };
        dump.check_holders()?;
        Ok(dump)
    }

    /// When the dump is not `uid`'s (`(root pid, owner uid)`): such a dump
    /// may not choose pids outside a pid namespace of its own, nor take a
    /// terminal. The owner is the manifest's (every image has it too), so
    /// a manifest without images (zombies only) is its writer's as well.
    pub fn owned_by_other(&self, uid: u32) -> Option<(i32, u32)> {
        (self.owner_uid != uid).then(|| (self.manifest.root_pid().unwrap_or(0), self.owner_uid))
    }

    /// Pid choice is the owner's only in a namespace of its own: restoring
    /// with the recorded pids in this namespace (set_tid, which this
    /// process's privilege allows) is refused unless every image belongs
    /// to crrestore-tree's real user.
    pub fn check_pid_choice(&self, pidns: bool) -> Result<(), TreeError> {
        let caller = sys::real_uid();
        match self.owned_by_other(caller) {
            Some((pid, owner)) if !pidns => Err(TreeError::Shape {
                pid,
                why: format!(
                    "its image belongs to uid {owner}, not to uid {caller} who restores it: its pids are chosen only in a pid namespace of its own; restore with --pidns"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The highest fd of any image.
    pub fn max_fd(&self) -> i32 {
        self.images.values().map(|i| i.max_fd).max().unwrap_or(2)
    }

    /// Every holder is a live process whose image has that fd (of a kind
    /// the object can be) or that shared memory object.
    fn check_holders(&self) -> Result<(), TreeError> {
        let root = self.manifest.root_pid().unwrap_or(0);
        for o in &self.manifest.shared {
            // An object is made as one of its holders (never as this
            // command): one without a holder is not the dumper's.
            if o.holders.is_empty() {
                return Err(TreeError::BadManifest {
                    dir: self.dir.clone(),
                    why: format!("lists a shared {:?} object that no process holds", o.kind),
                });
            }
            // The caller's stdio is the root's: its fd `caller_fd` holds it.
            if o.kind == SharedKind::Caller
                && !o
                    .holders
                    .iter()
                    .any(|h| h.pid == root && h.fd.is_some() && h.fd == o.caller_fd)
            {
                return Err(TreeError::BadManifest {
                    dir: self.dir.clone(),
                    why: format!(
                        "lists the caller's fd {:?} as shared, but the root {root} does not hold it there",
                        o.caller_fd
                    ),
                });
            }
            for h in &o.holders {
                let Some(img) = self.images.get(&h.pid) else {
                    return Err(TreeError::Shape {
                        pid: h.pid,
                        why: format!("holds a shared {:?} object but has no image", o.kind),
                    });
                };
                if let Some(fd) = h.fd {
                    let f = img.fd(fd).ok_or_else(|| TreeError::Object {
                        pid: h.pid,
                        fd,
                        why: "the manifest places a shared object at an fd its image does not have"
                            .into(),
                    })?;
                    if !kind_fits(o.kind, &f) {
                        return Err(TreeError::Object {
                            pid: h.pid,
                            fd,
                            why: format!(
                                "the manifest's shared {:?} object is an fd of kind {} in the image",
                                o.kind, f.kind
                            ),
                        });
                    }
                }
                if let Some(index) = h.shmem {
                    let n = img
                        .image
                        .records::<ShmemRecord>()
                        .map(|r| r.len())
                        .unwrap_or(0);
                    if index == 0 || index > n {
                        return Err(TreeError::Shape {
                            pid: h.pid,
                            why: format!("its image has no shared memory object {index}"),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The root's stdio fds the loader would take from its caller and no
    /// shared object of the manifest holds (they come from the
    /// orchestrator's caller as well).
    pub fn root_stdio(&self, root: i32) -> Vec<i32> {
        let Some(img) = self.images.get(&root) else {
            return Vec::new();
        };
        let held = |fd: i32| {
            self.manifest
                .shared
                .iter()
                .any(|o| o.holders.iter().any(|h| h.pid == root && h.fd == Some(fd)))
        };
        img.image
            .fds()
            .map(|fds| {
                fds.filter(|f| rules::fd_is_inherited(f) && !held(f.fd))
                    .map(|f| f.fd)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `name` in directory `dir`, opened without following a symbolic link or
/// waiting, if it is a regular file: the file and its metadata, else why
/// not.
fn open_regular(dir: RawFd, name: &str) -> Result<(std::fs::File, std::fs::Metadata), String> {
    let file = sys::open_in(dir, name).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            "it is a symbolic link: refused (a dump's files are its own)".to_owned()
        } else {
            e.to_string()
        }
    })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file: refused".into());
    }
    Ok((file, meta))
}

/// Whether fd record `f` can be a holder of an object of kind `kind`.
fn kind_fits(kind: SharedKind, f: &FdRecord) -> bool {
    match kind {
        SharedKind::File => matches!(
            f.kind,
            fd_kind::REGULAR | fd_kind::DIRECTORY | fd_kind::CHAR
        ),
        SharedKind::Pipe => f.kind == fd_kind::PIPE,
        SharedKind::Fifo => f.kind == fd_kind::FIFO,
        SharedKind::Event => matches!(
            f.kind,
            fd_kind::EVENTFD | fd_kind::SIGNALFD | fd_kind::TIMERFD | fd_kind::INOTIFY
        ),
        SharedKind::Shmem => f.kind == fd_kind::MEMFD,
        SharedKind::Caller => {
            matches!(
                f.kind,
                fd_kind::TTY | fd_kind::PIPE | fd_kind::SOCKET | fd_kind::FIFO
            ) && f.flags & fd_flags::DROPPED == 0
        }
    }
}

/// `vm.mmap_min_addr` (65536 when unreadable), as the dumper's self-check
/// reads it.
fn mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(65536)
}
