//! inotify: a new instance with every watch added again on its file, with
//! the task's watch descriptors. Each file is opened by its saved path
//! (`O_PATH`, as the task), checked to be the same file, and watched
//! through `/proc/self/fd/N`, so the watch is on the file that was
//! checked. The kernel hands out watch descriptors in increasing order
//! (cyclically, never reusing one before it wraps): adding the watches in
//! wd order gives the same numbers, and a gap (watches removed before the
//! dump) is skipped by adding and removing a watch. Each removal queues an
//! `IN_IGNORED` event, which is read away before the task sees it (with
//! any event on the watched files in that instant).

use image_format::records::{FdRecord, InotifyWatchRecord};
use image_format::Image;

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::CheckError;
use crate::message::proc_self_fd;
use crate::sys::{self, Errno};

/// The most watch descriptors stage 1 skips to reach the task's: beyond,
/// the restore would take too long (the task added and removed that many).
pub const MAX_SKIPPED_WDS: u32 = 1 << 16;

/// `O_NOFOLLOW`: a watched symlink is watched itself.
const O_NOFOLLOW: u32 = 0o400_000;

/// The rules' part: each instance's watches in increasing wd order from
/// 1, and no more descriptors to skip than stage 1 does (the dumper then
/// refuses the image before it kills the process).
pub fn check_watches(image: &Image<'_>) -> Result<(), image_format::ImageError> {
    let bad = |what| image_format::ImageError::BadRecords {
        note_type: image_format::records::note::INOTIFY_WATCHES,
        what,
    };
    let watches = image.records::<InotifyWatchRecord>()?;
    for (k, w) in watches.clone().enumerate() {
        let earlier = watches.clone().take(k).filter(|o| o.inotify == w.inotify);
        let (count, last) = earlier.fold((0u32, 0), |(n, _), o| (n + 1, o.wd));
        if w.wd <= last {
            return Err(bad("inotify watches out of order"));
        }
        // Descriptors skipped before this one: every lower one unused.
        let skipped = u32::try_from(w.wd - 1).unwrap_or(u32::MAX) - count;
        if skipped > MAX_SKIPPED_WDS {
            return Err(bad("an inotify watch descriptor too far past the last one (more than 65536 removed watches to skip)"));
        }
    }
    Ok(())
}

/// The events the loader's own opening, reading and closing of files
/// can cause (`IN_ACCESS`, `IN_CLOSE_WRITE`, `IN_CLOSE_NOWRITE`,
/// `IN_OPEN`).
const LOADER_EVENTS: u32 = 0x01 | 0x08 | 0x10 | 0x20;

/// The instances the plan drains of the restore's own events
/// (`crate::plan::inotify`): those with a watch asking for them, at the
/// first fd of each.
pub fn drains(
    image: &Image<'static>,
    fds: &image_format::read::Records<'static, FdRecord>,
    scratch: &mut crate::check::scratch::Scratch,
) -> Result<&'static [crate::plan::InotifyDrain], CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let n = fds
        .clone()
        .filter(|f| f.kind == image_format::records::fd_kind::INOTIFY && f.object != 0)
        .count();
    let table = scratch.take::<crate::plan::InotifyDrain>("inotify drains", n)?;
    let mut len = 0;
    for f in fds.clone() {
        if f.kind != image_format::records::fd_kind::INOTIFY || f.object == 0 {
            continue;
        }
        let first = fds
            .clone()
            .find(|o| o.kind == f.kind && o.object == f.object)
            .map(|o| o.fd);
        if first != Some(f.fd) {
            continue;
        }
        let asks = image
            .records::<InotifyWatchRecord>()
            .map_err(corrupt)?
            .any(|w| w.inotify == f.object && w.mask & LOADER_EVENTS != 0);
        if let (true, Some(slot)) = (asks, table.get_mut(len)) {
            *slot = crate::plan::InotifyDrain {
                fd: f.fd,
                flags: f.open_flags,
            };
            len += 1;
        }
    }
    Ok(&table[..len])
}

/// A watch could not get its descriptor back.
fn wd_lost(f: &FdRecord) -> CheckError {
    CheckError::Object {
        fd: f.fd,
        step: "give an inotify watch its descriptor back",
        errno: Errno::EINVAL,
    }
}

pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
) -> Result<i32, CheckError> {
    // IN_CLOEXEC and IN_NONBLOCK are O_CLOEXEC and O_NONBLOCK.
    let fd = os
        .inotify_init(sys::O_CLOEXEC | sys::O_NONBLOCK)
        .map_err(failed(f, "create the inotify instance"))?;
    let fd = lift(os, fd, base).map_err(failed(f, "move the inotify instance"))?;
    match add_watches(os, image, f, fd, base) {
        Ok(()) => Ok(fd),
        Err(e) => {
            os.close(fd);
            Err(e)
        }
    }
}

fn add_watches(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    fd: i32,
    base: i32,
) -> Result<(), CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let watches = image.records::<InotifyWatchRecord>().map_err(corrupt)?;
    let mut skipped = 0u32;
    let mut last = 0;
    for w in watches.filter(|w| w.inotify == f.object) {
        // The dumper writes them in wd order; wds start at 1.
        if w.wd <= last {
            return Err(CheckError::Corrupt {
                error: image_format::ImageError::BadRecords {
                    note_type: image_format::records::note::INOTIFY_WATCHES,
                    what: "inotify watches out of order",
                },
            });
        }
        last = w.wd;
        let path = image.string(w.path).map_err(corrupt)?;
        let missing = |errno| CheckError::FileMissing {
            what: "inotify watch",
            path,
            errno,
        };
        let file = os
            .open(path, sys::O_PATH | O_NOFOLLOW | sys::O_CLOEXEC)
            .and_then(|file| lift(os, file, base))
            .map_err(missing)?;
        let watched = watch(os, f, fd, (file, path), &w, &mut skipped);
        os.close(file);
        watched?;
    }
    if skipped != 0 {
        // The IN_IGNORED events of the skipped descriptors.
        let mut buf = [0u8; 4096];
        while matches!(os.read(fd, &mut buf), Ok(n) if n > 0) {}
    }
    Ok(())
}

/// Add watch `w` on `file` (opened from its path) to inotify `fd`,
/// skipping descriptors up to its own.
fn watch(
    os: &impl Os,
    f: &FdRecord,
    fd: i32,
    (file, path): (i32, &'static [u8]),
    w: &InotifyWatchRecord,
    skipped: &mut u32,
) -> Result<(), CheckError> {
    let changed = CheckError::FileChanged {
        what: "inotify watch",
        path,
    };
    let st = os.fstat(file).map_err(|errno| CheckError::FileMissing {
        what: "inotify watch",
        path,
        errno,
    })?;
    if st.dev != w.dev || st.ino != w.ino {
        return Err(changed);
    }
    let through = proc_self_fd(file);
    let through = through.as_bytes();
    loop {
        let wd = os
            .inotify_add_watch(fd, through, w.mask)
            .map_err(failed(f, "add an inotify watch"))?;
        if wd == w.wd {
            return Ok(());
        }
        if wd > w.wd || *skipped >= MAX_SKIPPED_WDS {
            return Err(wd_lost(f));
        }
        os.inotify_rm_watch(fd, wd)
            .map_err(failed(f, "skip an inotify watch descriptor"))?;
        *skipped += 1;
    }
}
