//! The shared objects, made once in the orchestrator at fds above every
//! image's fd numbers (close-on-exec: only the copies placed in each
//! process survive its exec), with the loader library's own object code
//! (`binfmt_loader::tree_objects`).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use binfmt_loader::check::CheckError;
use binfmt_loader::objects::MadeObject;
use binfmt_loader::tree_objects::{self, TaskIdentity};
use image_format::records::{fd_kind, FdRecord};
use image_manifest::SharedKind;

use super::dump::Dump;
use super::error::TreeError;
use super::plan::TreePlan;
use super::sys;

/// Where the root's stdio that comes from the caller comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// The orchestrator's own fds 0–2, as a direct run inherits them.
    Inherit,
    /// Reopened as saved (a terminal by its path).
    Restore,
}

/// The orchestrator's fds on the objects.
#[derive(Debug, Default)]
pub struct Objects {
    /// `(object, desc)` → fd; a `Caller` object's description is 0.
    pub descs: BTreeMap<(usize, u32), RawFd>,
    /// Shared memory object → its memfd.
    pub memfds: BTreeMap<usize, RawFd>,
    /// The caller's terminal, for `TIOCSCTTY` (when it has one and the
    /// tree may take it).
    pub terminal: Option<RawFd>,
    /// Whether `TIOCSCTTY` may take it from another session (force): only
    /// for a dump of crrestore-tree's own user, with its own terminal.
    pub force_ctty: bool,
}

impl Objects {
    /// The fd of description `desc` of `object`.
    pub fn desc(&self, object: usize, desc: u32) -> Option<RawFd> {
        self.descs
            .get(&(object, desc))
            .or_else(|| self.descs.get(&(object, 0)))
            .copied()
    }
}

const O_ACCMODE: u32 = 3;
const O_WRONLY: u32 = 1;

fn object_error(pid: i32, fd: i32, e: CheckError) -> TreeError {
    TreeError::Object {
        pid,
        fd,
        why: e.to_string(),
    }
}

/// Make every object of `plan` once.
pub fn create(dump: &Dump, plan: &TreePlan, stdio: Stdio, base: i32) -> Result<Objects, TreeError> {
    let os = tree_objects::kernel();
    let mut out = Objects::default();
    for (i, o) in plan.objects.iter().enumerate() {
        // Only what is opened by a path checks who opens it: a pipe,
        // shared memory or the caller's own fds are made alike by anyone,
        // so their holders may be different users (a root parent, its
        // child run as a user, one pipe between them).
        let by_path = match o.kind {
            SharedKind::Pipe | SharedKind::Shmem => false,
            SharedKind::Caller => stdio == Stdio::Restore,
            SharedKind::File | SharedKind::Fifo | SharedKind::Event => true,
        };
        let id = identity(dump, o, by_path)?;
        match o.kind {
            SharedKind::Caller => {
                let n = o.caller_fd.unwrap_or(0);
                let fd = caller_fd(dump, plan.root, n, stdio, base, &id)?;
                out.descs.insert((i, 0), fd);
            }
            SharedKind::Shmem => {
                let maker = o
                    .holders
                    .iter()
                    .find_map(|h| h.shmem.map(|s| (h.pid, s)))
                    .ok_or_else(|| TreeError::Shape {
                        pid: o.holders.first().map_or(0, |h| h.pid),
                        why: "a shared memory object without an index".into(),
                    })?;
                let img = &dump.images[&maker.0];
                let memfd = tree_objects::as_task(&os, &id, || {
                    tree_objects::make_shmem(&os, &img.image, maker.1, base)
                })
                .map_err(|e| TreeError::Shape {
                    pid: maker.0,
                    why: format!("shared memory object {}: {e}", maker.1),
                })?;
                out.memfds.insert(i, memfd);
                for h in &o.holders {
                    let Some(fd) = h.fd else { continue };
                    if out.descs.contains_key(&(i, h.desc)) {
                        continue;
                    }
                    let f = record(dump, h.pid, fd)?;
                    let d = tree_objects::as_task(&os, &id, || {
                        tree_objects::open_shmem_fd(&os, &f, memfd, base)
                    })
                    .map_err(|e| object_error(h.pid, fd, e))?;
                    out.descs.insert((i, h.desc), d);
                }
            }
            kind => {
                let fd_holders: Vec<_> = o.holders.iter().filter(|h| h.fd.is_some()).collect();
                let mut descs: Vec<u32> = fd_holders.iter().map(|h| h.desc).collect();
                descs.sort_unstable();
                descs.dedup();
                if kind == SharedKind::Event && descs.len() > 1 {
                    let h = fd_holders[0];
                    return Err(TreeError::Object {
                        pid: h.pid,
                        fd: h.fd.unwrap_or(-1),
                        why: "an event object with several open file descriptions cannot be made again".into(),
                    });
                }
                // A pipe is made from the image of a holder of its read
                // end: that image has its buffered bytes.
                let maker = if matches!(kind, SharedKind::Pipe | SharedKind::Fifo) {
                    fd_holders
                        .iter()
                        .find(|h| {
                            record(dump, h.pid, h.fd.unwrap_or(-1))
                                .is_ok_and(|f| f.open_flags & O_ACCMODE != O_WRONLY)
                        })
                        .or(fd_holders.first())
                        .copied()
                } else {
                    None
                };
                let maker_record = match maker {
                    Some(h) => Some((h.pid, record(dump, h.pid, h.fd.unwrap_or(-1))?)),
                    None => None,
                };
                let slots: &'static mut [MadeObject] =
                    Box::leak(vec![MadeObject::default(); descs.len().max(1)].into_boxed_slice());
                let mut made = tree_objects::made_table(slots);
                for d in descs {
                    let Some(h) = fd_holders.iter().find(|h| h.desc == d) else {
                        continue;
                    };
                    let fd = h.fd.unwrap_or(-1);
                    let mut f = record(dump, h.pid, fd)?;
                    let image = match &maker_record {
                        // The object's number in the maker's image.
                        Some((pid, mf)) => {
                            f.object = mf.object;
                            &dump.images[pid].image
                        }
                        None => &dump.images[&h.pid].image,
                    };
                    // Opened as the task would open it, never as this
                    // process: a root crrestore-tree grants nothing.
                    let opened = tree_objects::as_task(&os, &id, || {
                        tree_objects::open_description(&os, image, &f, base, &mut made)
                    })
                    .map_err(|e| object_error(h.pid, fd, e))?;
                    out.descs.insert((i, d), opened);
                }
            }
        }
    }
    out.terminal = terminal(&out, plan, stdio, base);
    // Taking the terminal from whatever session has it is the caller's
    // right over its own terminal, granted only to its own dump; any
    // other takes it only if no session has it (else it runs without one,
    // and says so: `run`).
    let caller = sys::real_uid();
    out.force_ctty = stdio == Stdio::Inherit && dump.owned_by_other(caller).is_none();
    Ok(out)
}

/// Whom object `o` is made as: its holders' identity, as the loader would
/// decide it for each; with `agree`, the holders must agree (one open file
/// description cannot be opened as two users), else the first holder's.
fn identity(
    dump: &Dump,
    o: &image_manifest::SharedObject,
    agree: bool,
) -> Result<TaskIdentity, TreeError> {
    let mut first: Option<(i32, TaskIdentity)> = None;
    for h in &o.holders {
        let Some(img) = dump.images.get(&h.pid) else {
            continue;
        };
        match first {
            None => first = Some((h.pid, img.identity)),
            Some((pid, id)) if agree && !id.same_access(&img.identity) => {
                let uid = |i: &TaskIdentity| i.creds.map_or(sys::real_uid(), |c| c.uid[1]);
                return Err(TreeError::Shape {
                    pid: h.pid,
                    why: format!(
                        "holds a shared {:?} object with pid {pid}, but they restore as different users (uid {} and uid {}; groups may differ): one object cannot be opened as both",
                        o.kind,
                        uid(&img.identity),
                        uid(&id)
                    ),
                });
            }
            Some(_) => {}
        }
    }
    // Never as this command itself: the dump's checks refuse an object
    // without a holder that has an image.
    first.map(|(_, id)| id).ok_or_else(|| TreeError::Shape {
        pid: 0,
        why: format!("a shared {:?} object has no holder with an image", o.kind),
    })
}

/// The fd record `fd` of `pid`'s image.
fn record(dump: &Dump, pid: i32, fd: i32) -> Result<FdRecord, TreeError> {
    dump.images
        .get(&pid)
        .and_then(|i| i.fd(fd))
        .ok_or_else(|| TreeError::Object {
            pid,
            fd,
            why: "not in its image".into(),
        })
}

/// The root's stdio fd `n`, from the caller (`Inherit`) or reopened as
/// saved (`Restore`: a terminal by its path, the same device node).
fn caller_fd(
    dump: &Dump,
    root: i32,
    n: i32,
    stdio: Stdio,
    base: i32,
    id: &TaskIdentity,
) -> Result<RawFd, TreeError> {
    match stdio {
        Stdio::Inherit => sys::dup_above(n, base).map_err(|source| TreeError::Object {
            pid: root,
            fd: n,
            why: format!("its stdio comes from the caller, whose fd {n} is not open ({source})"),
        }),
        Stdio::Restore => {
            let f = record(dump, root, n)?;
            let path = dump.images[&root]
                .image
                .string(f.path)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            if f.kind != fd_kind::TTY {
                return Err(TreeError::Object {
                    pid: root,
                    fd: n,
                    why: format!(
                        "{path} (kind {}) leads outside the tree and cannot be reopened; use --stdio inherit",
                        f.kind
                    ),
                });
            }
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            // The dump's word for which terminal it was is the dev and
            // ino: without them any path would do.
            if f.file.ino == 0 {
                return Err(TreeError::Object {
                    pid: root,
                    fd: n,
                    why: format!("{path}: the image does not say which terminal it was (no inode); use --stdio inherit"),
                });
            }
            // Opened as the task (root's stdio object: the root's
            // identity), as the loader opens every path.
            let os = tree_objects::kernel();
            let opened = tree_objects::as_task(&os, id, || {
                Ok(std::fs::OpenOptions::new()
                    .read(f.open_flags & O_ACCMODE != O_WRONLY)
                    .write(f.open_flags & O_ACCMODE != 0)
                    .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                    .open(&path))
            })
            .map_err(|e| TreeError::Object {
                pid: root,
                fd: n,
                why: format!("{path}: {e}"),
            })?;
            let file = opened.map_err(|e| TreeError::Object {
                pid: root,
                fd: n,
                why: format!("{path}: {e}"),
            })?;
            let meta = file.metadata().map_err(|e| TreeError::Object {
                pid: root,
                fd: n,
                why: format!("{path}: {e}"),
            })?;
            if meta.dev() != f.file.dev
                || meta.ino() != f.file.ino
                || !sys::is_terminal(std::os::fd::AsRawFd::as_raw_fd(&file))
            {
                return Err(TreeError::Object {
                    pid: root,
                    fd: n,
                    why: format!("{path} is not the terminal it was"),
                });
            }
            let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
            let high = sys::dup_above(fd, base).map_err(|source| TreeError::Os {
                what: "moving a terminal fd".into(),
                source,
            })?;
            sys::close(fd);
            Ok(high)
        }
    }
}

/// The caller's terminal: a `Caller` object that is one, else (inherit)
/// the first of the orchestrator's fds 0–2 that is one.
fn terminal(objects: &Objects, plan: &TreePlan, stdio: Stdio, base: i32) -> Option<RawFd> {
    for (i, o) in plan.objects.iter().enumerate() {
        if o.kind == SharedKind::Caller {
            if let Some(fd) = objects.desc(i, 0).filter(|&fd| sys::is_terminal(fd)) {
                return Some(fd);
            }
        }
    }
    if stdio == Stdio::Inherit {
        return (0..=2)
            .find(|&fd| sys::is_terminal(fd))
            .and_then(|fd| sys::dup_above(fd, base).ok());
    }
    None
}

/// Whether the caller has a terminal to give (before the objects exist).
pub fn caller_has_terminal() -> bool {
    (0..=2).any(sys::is_terminal)
}
