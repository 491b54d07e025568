//! The task's fds: the numbers it uses (everything stage 1 opens goes
//! above them), and each fd reopened as it was or inherited from the caller.

use image_format::records::{fd_flags, fd_kind, FdRecord};
use image_format::{read::Records, Image};

use super::files::open_typed;
use super::os::Os;
use super::scratch::{DescFrom, FdFile, Scratch};
use super::CheckError;
use crate::objects::{self, Made, MadeObject};
use crate::plan::FdMove;
use crate::rules;
use crate::sys;

/// `RLIMIT_NOFILE`.
const RLIMIT_NOFILE: u32 = 7;

/// The fds the loader holds through the plan, numbered above the task's.
pub struct LoaderFds {
    /// The first fd number above every fd of the task.
    pub base: i32,
    pub image_fd: i32,
    /// The caller's stderr (or `--report` fd), for the plan's failure
    /// messages.
    pub err_fd: Option<i32>,
}

/// Check the task's fd numbers against `RLIMIT_NOFILE` and move the image
/// fd and a copy of stderr (`report_fd`: 2, or the `--report` fd) above
/// them.
pub fn place_loader_fds(
    os: &impl Os,
    fds: &Records<'static, FdRecord>,
    raw_image_fd: i32,
    report_fd: i32,
) -> Result<LoaderFds, CheckError> {
    // Each must be one this process may have, or its dup3 would fail after
    // the point of no return.
    let (nofile_cur, nofile_max) = os
        .get_rlimit(RLIMIT_NOFILE)
        .map_err(|errno| CheckError::FdRelocate { errno })?;
    // Stage 1 opens one fd per mapped file and open file above the task's
    // highest fd: the soft limit must not stop it. The plan's rlimit ops
    // set the image's limit back later (an image without an RLIMIT_NOFILE
    // record keeps the raised one).
    if nofile_cur < nofile_max {
        os.set_rlimit(RLIMIT_NOFILE, nofile_max, nofile_max)
            .map_err(|errno| CheckError::FdRelocate { errno })?;
    }
    let mut max_fd = 2;
    for f in fds.clone() {
        // Negative fd numbers are refused by the rules; `try_from` fails
        // for them all the same.
        if u64::try_from(f.fd).map_or(true, |fd| fd >= nofile_max) {
            return Err(CheckError::FdAboveLimit {
                fd: f.fd,
                limit: nofile_max,
            });
        }
        max_fd = max_fd.max(f.fd);
    }
    let base = max_fd.checked_add(1).ok_or(CheckError::FdAboveLimit {
        fd: max_fd,
        limit: nofile_max,
    })?;
    let image_fd = if raw_image_fd >= base {
        raw_image_fd
    } else {
        let fd = os
            .dup_above(raw_image_fd, base)
            .map_err(|errno| CheckError::FdRelocate { errno })?;
        os.close(raw_image_fd);
        fd
    };
    // The caller's stderr, apart from every fd the task will have: the
    // plan's failure messages must reach the caller, not what the task has
    // at fd 2. No stderr: messages go to fd 2 as it is then. With
    // `--report E` the copy is of E, which the close_range of the plan's
    // fd step then closes: the copy is the one kept.
    let err_fd = os.dup_above(report_fd, base).ok();
    Ok(LoaderFds {
        base,
        image_fd,
        err_fd,
    })
}

/// `/dev/null` in place of an fd a forced dump did not save
/// ([`rules::fd_is_dropped`]), opened with the fd's access mode: reads see
/// end of file, writes succeed, which most programs survive.
fn open_dropped(os: &impl Os, f: &FdRecord, base: i32) -> Result<i32, CheckError> {
    const O_ACCMODE: u32 = 3;
    let (fd, _) = open_typed(
        os,
        "replacement for a dropped fd",
        b"/dev/null",
        f.open_flags & O_ACCMODE,
        sys::S_IFCHR,
        base,
    )?;
    Ok(fd)
}

/// The fds a forced dump dropped, as `5 (socket:[123]), 7 (...)`.
struct DroppedList<'a> {
    image: &'a Image<'static>,
    fds: &'a Records<'static, FdRecord>,
}

impl core::fmt::Display for DroppedList<'_> {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for f in self.fds.clone().filter(rules::fd_is_dropped) {
            let path = self.image.string(f.path).unwrap_or(b"?");
            write!(
                out,
                "{}{} ({})",
                if first { "" } else { ", " },
                f.fd,
                crate::message::Escaped(path)
            )?;
            first = false;
        }
        Ok(())
    }
}

/// The fds of a list, as `3, 4`.
struct FdList<'a> {
    fds: &'a Records<'static, FdRecord>,
    which: fn(&FdRecord) -> bool,
}

impl core::fmt::Display for FdList<'_> {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, f) in self.fds.clone().filter(|f| (self.which)(f)).enumerate() {
            write!(out, "{}{}", if i == 0 { "" } else { ", " }, f.fd)?;
        }
        Ok(())
    }
}

fn shared_in_tree(f: &FdRecord) -> bool {
    f.flags & fd_flags::SHARED_IN_TREE != 0
}

/// A direct run of one image of a tree dump: the fds the dumped process
/// shared with others of its tree (`fd_flags::SHARED_IN_TREE`) get
/// private copies; said once, naming them.
pub fn warn_shared_in_tree(os: &impl Os, name: &[u8], fds: &Records<'static, FdRecord>) {
    let n = fds.clone().filter(shared_in_tree).count();
    if n == 0 {
        return;
    }
    let list = FdList {
        fds,
        which: shared_in_tree,
    };
    if n == 1 {
        os.report(
            name,
            format_args!(
                "warning: fd {list} was shared with other processes of the dumped tree; restored alone it is a private copy (use crrestore-tree DIR)"
            ),
        );
    } else {
        os.report(
            name,
            format_args!(
                "warning: fds {list} were shared with other processes of the dumped tree; restored alone they are private copies (use crrestore-tree DIR)"
            ),
        );
    }
}

/// Open an fd's file again as the task had it, at its offset.
pub fn reopen_fd(
    os: &impl Os,
    f: &FdRecord,
    path: &'static [u8],
    base: i32,
) -> Result<i32, CheckError> {
    let unsupported = CheckError::UnsupportedFd {
        fd: f.fd,
        kind: f.kind,
        path,
    };
    if !rules::fd_kind_reopenable(f.kind) {
        return Err(unsupported);
    }
    if f.flags & fd_flags::DELETED != 0 {
        return Err(CheckError::FileDeleted {
            what: "open file",
            path,
        });
    }
    let flags = f.open_flags & !(sys::O_CREAT | sys::O_EXCL | sys::O_TRUNC | sys::O_CLOEXEC)
        | sys::O_NOCTTY;
    let want = match f.kind {
        fd_kind::REGULAR => sys::S_IFREG,
        fd_kind::DIRECTORY => sys::S_IFDIR,
        _ => sys::S_IFCHR,
    };
    let (fd, st) = open_typed(os, "open file", path, flags, want, base)?;
    let kind_ok = match f.kind {
        fd_kind::REGULAR => st.mode & sys::S_IFMT == sys::S_IFREG,
        fd_kind::DIRECTORY => st.mode & sys::S_IFMT == sys::S_IFDIR,
        _ => st.mode & sys::S_IFMT == sys::S_IFCHR,
    };
    // Open files may have grown since (a log); device and inode must match,
    // for a character device too: its node's inode, the same node (an
    // image whose path now names another device, /dev/kmsg for
    // /dev/zero, is refused; the record holds no st_rdev to compare).
    let same = kind_ok && st.dev == f.file.dev && st.ino == f.file.ino;
    if !same {
        return Err(CheckError::FileChanged {
            what: "open file",
            path,
        });
    }
    if f.kind == fd_kind::REGULAR {
        os.seek_to(fd, f.pos)
            .map_err(|errno| CheckError::FileMissing {
                what: "open file",
                path,
                errno,
            })?;
    }
    Ok(fd)
}

/// The task's fds: regular files, directories and plain character devices
/// are reopened, objects (pipes, eventfds, …) made ([`crate::objects`]),
/// each open file description once (`FdMove`s from one fd to every fd
/// sharing it); stdio that was a terminal, pipe or socket is inherited
/// (kept).
///
/// A tree restore (`placed`: the `--placed` fds) inherits no stdio by
/// that rule: the placed fds are kept as they are (each checked:
/// [`super::tree::check_placed`]), every fd sharing a description with a
/// placed fd is a dup of it, and the others are opened as in a direct
/// run. A placed fd recorded close-on-exec gets an `FdMove` onto itself,
/// which the plan makes an `F_SETFD` (the orchestrator's `dup2` cleared
/// the flag, or `execve` would have closed it).
#[allow(clippy::too_many_arguments)] // The stage-1 tables, each its own.
pub fn reopen_fds(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    fds: &Records<'static, FdRecord>,
    shmem: &[i32],
    base: i32,
    placed: Option<&[i32]>,
    scratch: &mut Scratch,
) -> Result<(&'static [FdMove], &'static [i32]), CheckError> {
    let n = usize::try_from(fds.len()).unwrap_or(usize::MAX);
    let moves = scratch.take::<FdMove>("fd moves", n)?;
    let keep = scratch.take::<i32>("kept fds", n)?;
    let files = scratch.take::<FdFile>("fd files", n)?;
    let descs = scratch.take::<DescFrom>("descriptions", n)?;
    let mut made = Made {
        slots: scratch.take::<MadeObject>("objects", n)?,
        len: 0,
    };
    let (mut nmoves, mut nkeep, mut nfiles, mut ndescs) = (0, 0, 0, 0);
    let mut anon = None;
    for f in fds.clone() {
        let path = image
            .string(f.path)
            .map_err(|error| CheckError::Corrupt { error })?;
        let is_placed = placed.is_some_and(|p| p.contains(&f.fd));
        // A placed fd of the description comes first, wherever its record
        // is: the others are its dups, never a second object.
        let known = (f.desc != 0)
            .then(|| {
                let placed_of_desc = placed.and_then(|p| {
                    fds.clone()
                        .find(|g| g.desc == f.desc && p.contains(&g.fd))
                        .map(|g| g.fd)
                });
                placed_of_desc.or_else(|| {
                    descs[..ndescs]
                        .iter()
                        .find(|d| d.desc == f.desc)
                        .map(|d| d.from)
                })
            })
            .flatten()
            .filter(|_| !is_placed);
        let from = if is_placed {
            super::tree::check_placed(os, &f, path, &mut anon)?;
            if let Some(slot) = keep.get_mut(nkeep) {
                *slot = f.fd;
                nkeep += 1;
            }
            if f.flags & fd_flags::CLOEXEC != 0 {
                if let Some(slot) = moves.get_mut(nmoves) {
                    *slot = FdMove {
                        from: f.fd,
                        to: f.fd,
                        cloexec: 1,
                    };
                    nmoves += 1;
                }
            }
            f.fd
        // Stdio the caller gives is kept as the caller has it, even when
        // two of them shared a description (the caller's say which); not
        // in a tree restore, where the orchestrator places what is kept.
        } else if placed.is_none() && rules::fd_is_inherited(&f) {
            // One slot per record: `nkeep` < `n`.
            if let Some(slot) = keep.get_mut(nkeep) {
                *slot = f.fd;
                nkeep += 1;
            }
            f.fd
        } else if let Some(from) = known {
            // A copy of the caller's stdio must find it there, or its dup3
            // would fail after the point of no return.
            if keep[..nkeep].contains(&from) && os.fstat(from).is_err() {
                return Err(CheckError::StdioMissing { fd: f.fd, of: from });
            }
            if f.kind == fd_kind::TTY {
                objects::terminal::check_copy_of_stdio(os, &f, from)?;
            }
            from
        } else if rules::fd_is_dropped(&f) {
            open_dropped(os, &f, base)?
        } else if objects::shmem::backs_fd(&f) {
            objects::shmem::open_fd(os, &f, shmem, base)?
        } else if objects::is_object(f.kind) {
            if let Some(p) = placed {
                super::tree::check_not_on_placed_object(&f, fds, p)?;
            }
            objects::open(os, image, &f, path, base, &mut made)?
        } else {
            reopen_fd(os, &f, path, base)?
        };
        if known.is_none() && f.desc != 0 {
            if let Some(slot) = descs.get_mut(ndescs) {
                *slot = DescFrom { desc: f.desc, from };
                ndescs += 1;
            }
        }
        if from == f.fd {
            continue;
        }
        if let Some(slot) = moves.get_mut(nmoves) {
            *slot = FdMove {
                from,
                to: f.fd,
                cloexec: u32::from(f.flags & fd_flags::CLOEXEC != 0),
            };
            nmoves += 1;
        }
        // Images from before descriptions were recorded cannot tell dups
        // from two opens: say so for the files that might have been.
        if f.kind == fd_kind::REGULAR && f.desc == 0 && !rules::fd_is_dropped(&f) {
            if let Some(slot) = files.get_mut(nfiles) {
                *slot = FdFile {
                    dev: f.file.dev,
                    ino: f.file.ino,
                    fd: f.fd,
                    _pad: 0,
                };
                nfiles += 1;
            }
        }
    }
    let dropped = fds.clone().filter(rules::fd_is_dropped).count();
    if dropped > 0 {
        os.report(
            name,
            format_args!(
                "warning: {dropped} fd{} not saved (crdump --force) replaced by /dev/null: {}",
                if dropped == 1 { "" } else { "s" },
                DroppedList { image, fds }
            ),
        );
    }
    if let Some((a, b)) = same_file_pair(&mut files[..nfiles]) {
        os.report(
            name,
            format_args!(
                "warning: fds {a} and {b} open the same file; if they shared one open file description (dup), they now have separate offsets"
            ),
        );
    }
    Ok((&moves[..nmoves], &keep[..nkeep]))
}

/// Two fds of one regular file, the lowest such pair (sorted: n log n).
/// They may have shared one open file description (dup, fork): each is
/// reopened on its own, so they no longer share an offset. The image cannot
/// tell dups from two opens.
fn same_file_pair(files: &mut [FdFile]) -> Option<(i32, i32)> {
    files.sort_unstable_by_key(|f| (f.dev, f.ino, f.fd));
    files
        .windows(2)
        .filter(|w| w[0].dev == w[1].dev && w[0].ino == w[1].ino)
        .map(|w| (w[0].fd, w[1].fd))
        .min()
}
