//! The open file descriptors: what each is, where it points, its offset
//! and flags, which fds share one open file description, and the objects
//! behind them ([`crate::objects`]); the kinds crimg cannot restore are
//! refused (forced: lost).
//!
//! In three passes: every fd is listed with its link, metadata and fdinfo;
//! the fds are grouped into open file descriptions (`kcmp`, only between
//! fds on one inode); then each description's object is saved once by its
//! kind's module. The kinds whose saving looks at several fds at once have
//! a step of their own here: [`holders`] (who else holds an object),
//! [`pipes`], [`sockets`], [`epolls`], [`terminals`].

use std::os::fd::OwnedFd;

use image_format::records::{fd_flags, fd_kind, pipe_flags, EpollItemRecord, FdRecord, PipeRecord};
use image_format::text::Escaped;
use image_writer::model::{FdState, InotifyWatchState, ObjectStates, PipeState};

use super::task::{FileMeta, Held, SameWhen, Task};
use super::{CollectError, Collector};
use crate::procfs::fdinfo::FdInfo;
use crate::{fds, objects, procfs};

mod epolls;
mod holders;
mod pipes;
mod sockets;
mod terminals;

use epolls::save_epolls;
use holders::{holders, mark_shared_in_tree, refuse_shared_anon};
use pipes::save_pipes;
use sockets::save_sockets;
use terminals::save_terminals;

/// `O_CLOEXEC` is a flag of the descriptor, not of the open file: kept
/// apart in [`fd_flags::CLOEXEC`]. (The constant is a small positive bit.)
#[allow(clippy::cast_sign_loss)]
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
#[allow(clippy::cast_sign_loss)]
const O_ACCMODE: u32 = libc::O_ACCMODE as u32;
#[allow(clippy::cast_sign_loss)]
const O_WRONLY: u32 = libc::O_WRONLY as u32;
#[allow(clippy::cast_sign_loss)]
const O_RDWR: u32 = libc::O_RDWR as u32;
#[allow(clippy::cast_sign_loss)]
const O_DIRECT: u32 = libc::O_DIRECT as u32;

/// One fd as listed, before its object is saved.
struct Listed {
    fd: i32,
    link: String,
    meta: FileMeta,
    info: FdInfo,
    fdinfo: String,
    kind: u32,
    deleted: bool,
}

impl Listed {
    fn reads(&self) -> bool {
        self.info.flags & O_ACCMODE != O_WRONLY
    }
    fn writes(&self) -> bool {
        matches!(self.info.flags & O_ACCMODE, O_WRONLY | O_RDWR)
    }
}

/// The fds and the objects behind them.
pub(super) fn collect_fds<T: Task>(
    c: &mut Collector<'_, T>,
) -> Result<(Vec<FdState>, ObjectStates), CollectError> {
    let listed = list(c)?;
    let descs = descriptions(c, &listed)?;
    let mut records: Vec<FdState> = listed
        .iter()
        .zip(&descs)
        .map(|(l, &desc)| FdState {
            record: record(l, desc),
            path: l
                .link
                .strip_suffix(" (deleted)")
                .unwrap_or(&l.link)
                .to_owned(),
        })
        .collect();
    let objects = save_objects(c, &listed, &mut records)?;
    super::refusals::mark_dropped(&mut records);
    Ok((records, objects))
}

/// Pass 1: every fd's link, metadata, fdinfo and kind; the kinds that
/// cannot be kept are refused here.
fn list<T: Task>(c: &mut Collector<'_, T>) -> Result<Vec<Listed>, CollectError> {
    let dir = c.proc_path("fd");
    let names = c
        .task
        .dir_names(std::path::Path::new(&dir))
        .map_err(c.read_error(dir.clone()))?;
    let mut numbers: Vec<i32> = names.iter().filter_map(|s| s.parse().ok()).collect();
    numbers.sort_unstable();
    let mut out = Vec::with_capacity(numbers.len());
    for fd in numbers {
        let link = match c.read_link(&format!("fd/{fd}")) {
            Ok(l) => l,
            // Closed since the listing (impossible while frozen, unless the
            // fd table is shared with another process): its state is gone.
            Err(e) => {
                c.unsupported(format!("fd {fd} vanished during the dump ({e})"))?;
                continue;
            }
        };
        if super::refusals::io_uring_fd(c, fd, &link) {
            continue;
        }
        let fd_path = c.proc_path(&format!("fd/{fd}"));
        let meta = c
            .task
            .metadata(std::path::Path::new(&fd_path))
            .map_err(c.read_error(fd_path))?;
        let fdinfo = c.read_text(&format!("fdinfo/{fd}"))?;
        let info = c.parse(procfs::fdinfo::parse(&fdinfo))?;
        let deleted = link.ends_with(" (deleted)");
        // The major number: 12 bits (`MAJOR()` of the old encoding, which
        // is what the tty majors are compared in).
        let rdev_major = u32::try_from((meta.rdev >> 8) & 0xfff).unwrap_or(u32::MAX);
        let kind = fds::kind_of(&link, meta.mode, rdev_major);
        if let Some(why) = fds::unsupported_reason(fd, kind, deleted, &link) {
            c.unsupported(why)?;
        }
        out.push(Listed {
            fd,
            link,
            meta,
            info,
            fdinfo,
            kind,
            deleted,
        });
    }
    Ok(out)
}

/// Pass 2: the 1-based open file description of each fd. Two fds can
/// share one only if they are on one inode, so `kcmp` runs within those.
fn descriptions<T: Task>(
    c: &Collector<'_, T>,
    listed: &[Listed],
) -> Result<Vec<u32>, CollectError> {
    let mut descs = vec![0u32; listed.len()];
    // The first fd of each description so far.
    let mut firsts: Vec<usize> = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        let mut found = None;
        for (d, &j) in firsts.iter().enumerate() {
            let o = &listed[j];
            if o.meta.id.dev != l.meta.id.dev || o.meta.id.ino != l.meta.id.ino {
                continue;
            }
            let same =
                c.task
                    .same_description(o.fd, l.fd)
                    .map_err(|source| CollectError::Read {
                        pid: c.pid,
                        path: format!("kcmp of fds {} and {}", o.fd, l.fd),
                        source,
                    })?;
            if same {
                found = Some(d);
                break;
            }
        }
        let d = match found {
            Some(d) => d,
            None => {
                firsts.push(i);
                firsts.len() - 1
            }
        };
        descs[i] = u32::try_from(d + 1).unwrap_or(u32::MAX);
    }
    Ok(descs)
}

fn record(l: &Listed, desc: u32) -> FdRecord {
    let mut flags = 0;
    if l.info.flags & O_CLOEXEC != 0 {
        flags |= fd_flags::CLOEXEC;
    }
    if l.deleted {
        flags |= fd_flags::DELETED;
    }
    FdRecord {
        fd: l.fd,
        kind: l.kind,
        flags,
        open_flags: l.info.flags & !O_CLOEXEC,
        pos: l.info.pos,
        mnt_id: l.info.mnt_id,
        mode: l.meta.mode,
        file: l.meta.id,
        desc,
        ..FdRecord::default()
    }
}

/// Pass 3: each object saved once, and `object` set in every fd on it.
fn save_objects<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
) -> Result<ObjectStates, CollectError> {
    let mut objects = ObjectStates::default();
    let shared = holders(c, listed)?;
    refuse_shared_anon(c, listed, &shared)?;
    save_pipes(c, listed, records, &shared, &mut objects)?;
    save_sockets(c, listed, records, &shared, &mut objects)?;
    save_terminals(c, listed, records, &mut objects)?;
    for (i, l) in listed.iter().enumerate() {
        if !matches!(
            l.kind,
            fd_kind::EVENTFD | fd_kind::SIGNALFD | fd_kind::TIMERFD | fd_kind::INOTIFY
        ) {
            continue;
        }
        let desc = records[i].record.desc;
        // A dup of an earlier fd: the same object.
        if let Some(earlier) = records[..i].iter().find(|r| r.record.desc == desc) {
            records[i].record.object = earlier.record.object;
            continue;
        }
        // Inotify instances are numbered by their fds (one without
        // watches has no record).
        let instance = records[..i]
            .iter()
            .filter(|r| r.record.kind == fd_kind::INOTIFY)
            .map(|r| r.record.object)
            .max()
            .unwrap_or(0)
            + 1;
        match save_object(c, l, instance, &mut objects) {
            Ok(object) => records[i].record.object = object,
            Err(why) => c.unsupported(why)?,
        }
    }
    // Last: an item is kept only if its target fd is.
    save_epolls(c, listed, records, &mut objects)?;
    mark_shared_in_tree(c, listed, records, &shared);
    Ok(objects)
}

/// The object of one open file description of `l`'s kind, saved: its
/// 1-based index (for inotify, the instance number its watches name).
fn save_object<T: Task>(
    c: &Collector<'_, T>,
    l: &Listed,
    instance: u32,
    objects: &mut ObjectStates,
) -> Result<u32, objects::Refusal> {
    let take = || {
        c.task
            .take_fd(l.fd)
            .map_err(|e| format!("fd {}: cannot take a copy to read it: {e}", l.fd))
    };
    Ok(match l.kind {
        fd_kind::EVENTFD => {
            objects
                .eventfds
                .push(objects::eventfd::collect(l.fd, &l.fdinfo)?);
            index(objects.eventfds.len())
        }
        fd_kind::SIGNALFD => {
            objects
                .signalfds
                .push(objects::signalfd::collect(l.fd, &l.fdinfo)?);
            index(objects.signalfds.len())
        }
        fd_kind::TIMERFD => {
            let timer = objects::timerfd::collect(l.fd, &take()?)?;
            objects.timerfds.push(timer);
            index(objects.timerfds.len())
        }
        _ => {
            let watches = objects::inotify::collect(l.fd, &take()?, &l.fdinfo)?;
            objects
                .inotify_watches
                .extend(watches.into_iter().map(|(mut record, path)| {
                    record.inotify = instance;
                    InotifyWatchState { record, path }
                }));
            instance
        }
    })
}

/// A 1-based object index.
fn index(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
