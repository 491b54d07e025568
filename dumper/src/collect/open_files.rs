//! The open file descriptors: what each is, where it points, its offset
//! and flags, which fds share one open file description, and the objects
//! behind them ([`crate::objects`]); the kinds crimg cannot restore are
//! refused (forced: lost).
//!
//! In three passes: every fd is listed with its link, metadata and fdinfo;
//! the fds are grouped into open file descriptions (`kcmp`, only between
//! fds on one inode); then each description's object is saved once by its
//! kind's module.

use std::os::fd::OwnedFd;

use image_format::records::{fd_flags, fd_kind, pipe_flags, EpollItemRecord, FdRecord, PipeRecord};
use image_format::text::Escaped;
use image_writer::model::{FdState, InotifyWatchState, ObjectStates, PipeState};

use super::task::{FileMeta, Held, SameWhen, Task};
use super::{CollectError, Collector};
use crate::procfs::fdinfo::FdInfo;
use crate::{fds, objects, procfs};

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

/// Every epoll instance (one per open file description) with its
/// interest list. An item whose target fd is not restored (refused with
/// `--force`) is lost with its warning.
fn save_epolls<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    // First every epoll its number (an epoll may watch a later one).
    let mut epolls = 0u32;
    let mut found = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        if l.kind != fd_kind::EPOLL {
            continue;
        }
        let desc = records[i].record.desc;
        if let Some(earlier) = records[..i].iter().find(|r| r.record.desc == desc) {
            records[i].record.object = earlier.record.object;
            continue;
        }
        match epoll_items(c, l) {
            Ok(items) => {
                epolls += 1;
                records[i].record.object = epolls;
                found.push((l.fd, epolls, items));
            }
            Err(why) => c.unsupported(why)?,
        }
    }
    for (fd, epoll, items) in found {
        for item in items {
            let kept = records
                .iter()
                .find(|r| r.record.fd == item.tfd)
                .is_some_and(|r| target_restored(records, &r.record));
            if !kept {
                c.unsupported(format!(
                    "fd {fd} (epoll): its item for fd {} is lost: that fd is not saved",
                    item.tfd
                ))?;
                continue;
            }
            objects.epoll_items.push(EpollItemRecord {
                epoll,
                tfd: item.tfd,
                events: item.events,
                _pad: 0,
                data: item.data,
            });
        }
    }
    Ok(())
}

/// The items of the epoll fd `l`, each checked to watch the file its fd
/// number names.
fn epoll_items<T: Task>(
    c: &Collector<'_, T>,
    l: &Listed,
) -> Result<Vec<objects::epoll::Item>, objects::Refusal> {
    let items = objects::epoll::parse(l.fd, &l.fdinfo)?;
    if items.is_empty() {
        return Ok(items);
    }
    let epoll = c
        .task
        .take_fd(l.fd)
        .map_err(|e| format!("fd {}: cannot take a copy to read it: {e}", l.fd))?;
    objects::epoll::check_targets(l.fd, &epoll, &items, |tfd| c.task.take_fd(tfd))?;
    Ok(items)
}

/// Whether the restore brings fd record `r` back (reopened, made, the
/// caller's stdio, or a dup of one of those), rather than dropping it
/// (the loader's rule, which `refusals::mark_dropped` applies later).
fn target_restored(records: &[FdState], r: &FdRecord) -> bool {
    let first = records
        .iter()
        .map(|o| &o.record)
        .find(|o| o.desc == r.desc && r.desc != 0)
        .unwrap_or(r);
    !binfmt_loader::rules::fd_must_be_dropped(first, None)
}

/// Terminals: one record per open file description on a terminal (its
/// first fd decides how it resumes, [`objects::terminal::plan_terminals`];
/// its dups follow it), the modes read once per terminal.
fn save_terminals<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    use objects::terminal::{modes_of, plan_terminals, TerminalFd};
    let firsts: Vec<usize> = (0..listed.len())
        .filter(|&i| listed[i].kind == fd_kind::TTY)
        .filter(|&i| {
            let desc = records[i].record.desc;
            !records[..i].iter().any(|r| r.record.desc == desc)
        })
        .collect();
    if firsts.is_empty() {
        return Ok(());
    }
    // `/dev/tty` stands for the controlling terminal.
    let tty_nr = c.parse(procfs::stat::parse(&c.read_text("stat")?))?.tty_nr;
    let terminal_fds: Vec<TerminalFd> = firsts
        .iter()
        .map(|&i| TerminalFd {
            fd: listed[i].fd,
            link: listed[i].link.clone(),
            rdev: listed[i].meta.rdev,
        })
        .collect();
    let (mut plan, refusals) = plan_terminals(&terminal_fds, u64::from(tty_nr));
    for why in refusals {
        c.unsupported(why)?;
    }
    let wanted: Vec<i32> = plan.needs_modes().collect();
    for fd in wanted {
        match c.task.take_fd(fd).and_then(|file| modes_of(&file)) {
            Ok(modes) => plan.set_modes(fd, modes),
            Err(e) => c.unsupported(format!(
                "fd {fd} is a terminal whose modes cannot be read ({e})"
            ))?,
        }
    }
    for r in plan.records {
        objects.terminals.push(r);
        let object = index(objects.terminals.len());
        let Some(first) = records.iter().position(|s| s.record.fd == r.fd) else {
            continue;
        };
        let desc = records[first].record.desc;
        for s in records.iter_mut().filter(|s| s.record.desc == desc) {
            s.record.object = object;
        }
    }
    Ok(())
}

/// How another process's fd on the same object is recognised, for the
/// kinds that can be shared (None: not asked).
fn same_when(kind: u32) -> Option<SameWhen> {
    match kind {
        fd_kind::PIPE | fd_kind::SOCKET => Some(SameWhen::Link),
        fd_kind::FIFO | fd_kind::MEMFD => Some(SameWhen::Inode),
        fd_kind::EVENTFD
        | fd_kind::SIGNALFD
        | fd_kind::TIMERFD
        | fd_kind::EPOLL
        | fd_kind::INOTIFY => Some(SameWhen::Description),
        _ => None,
    }
}

/// For every listed fd, the other processes that hold its object (one
/// scan of `/proc` for them all).
fn holders<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
) -> Result<Vec<Vec<i32>>, CollectError> {
    let mut asked = Vec::new();
    let mut held = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        if let Some(same_when) = same_when(l.kind) {
            asked.push(i);
            held.push(Held {
                fd: l.fd,
                link: l.link.clone(),
                dev: l.meta.id.dev,
                ino: l.meta.id.ino,
                same_when,
            });
        }
    }
    let mut out = vec![Vec::new(); listed.len()];
    if held.is_empty() {
        return Ok(out);
    }
    let answer = c
        .task
        .holders_elsewhere(&held)
        .map_err(|source| CollectError::Read {
            pid: c.pid,
            path: "/proc/*/fd".into(),
            source,
        })?;
    for (k, pid) in answer.found {
        out[asked[k]].push(pid);
    }
    if answer.unreadable > 0 {
        c.warnings.push(format!(
            "the fds of {} other process(es) could not be read (run crdump as root): whether they share this process's pipes or event objects is not known",
            answer.unreadable
        ));
    }
    Ok(out)
}

/// An eventfd, epoll, timerfd, signalfd or inotify instance (or a memfd)
/// another process holds too would come back as a private copy.
fn refuse_shared_anon<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    shared: &[Vec<i32>],
) -> Result<(), CollectError> {
    for (l, others) in listed.iter().zip(shared) {
        let private_copy =
            l.kind == fd_kind::MEMFD || same_when(l.kind) == Some(SameWhen::Description);
        if others.is_empty() || !private_copy {
            continue;
        }
        c.unsupported(format!(
            "fd {} ({}) is shared with pid {}; objects shared between processes need a tree dump",
            l.fd,
            Escaped(l.link.as_bytes()),
            join(others)
        ))?;
    }
    Ok(())
}

/// A 1-based object index.
fn index(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Pipes and FIFOs: one object per pipe inode with both ends in the task
/// and no other holder. A stdio pipe whose other end is elsewhere is the
/// caller's (inherited on a direct run).
fn save_pipes<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    shared: &[Vec<i32>],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    let is_pipe = |l: &Listed| matches!(l.kind, fd_kind::PIPE | fd_kind::FIFO);
    let mut inodes: Vec<(u64, u64)> = listed
        .iter()
        .filter(|l| is_pipe(l))
        .map(|l| (l.meta.id.dev, l.meta.id.ino))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    if inodes.is_empty() {
        return Ok(());
    }
    for (dev, ino) in inodes {
        let ends: Vec<usize> = (0..listed.len())
            .filter(|&i| {
                is_pipe(&listed[i]) && listed[i].meta.id.dev == dev && listed[i].meta.id.ino == ino
            })
            .collect();
        let first = &listed[ends[0]];
        let shown = Escaped(first.link.as_bytes());
        let reader = ends.iter().copied().find(|&i| listed[i].reads());
        let has_writer = ends.iter().any(|&i| listed[i].writes());
        let mut others: Vec<i32> = ends
            .iter()
            .flat_map(|&i| shared[i].iter().copied())
            .collect();
        others.sort_unstable();
        others.dedup();
        // Stdio, or copies of stdio (`exec 5>&1`): the caller's.
        let stdio_descs: Vec<u32> = ends
            .iter()
            .filter(|&&i| (0..=2).contains(&listed[i].fd))
            .map(|&i| records[i].record.desc)
            .collect();
        let all_stdio = ends.iter().all(|&i| {
            (0..=2).contains(&listed[i].fd) || stdio_descs.contains(&records[i].record.desc)
        });
        let both_ends = reader.is_some() && has_writer;
        if !both_ends && all_stdio && !stdio_descs.is_empty() {
            // The caller's pipe (its other end is the caller's): inherited,
            // as before objects existed.
            continue;
        }
        if !others.is_empty() {
            let fds: Vec<String> = ends.iter().map(|&i| listed[i].fd.to_string()).collect();
            c.unsupported(format!(
                "fd {} {} {shown}, which pid {} holds too; pipes between processes need a tree dump",
                fds.join(", "),
                if fds.len() > 1 { "are ends of" } else { "is an end of" },
                join(&others)
            ))?;
            continue;
        }
        if first.kind == fd_kind::FIFO && first.deleted {
            c.unsupported(format!(
                "fd {} is a FIFO whose path was deleted ({shown}): it cannot be opened again",
                first.fd
            ))?;
            continue;
        }
        // No other process holds it: an end the task lacks is closed for
        // good (a reader then sees the bytes and end-of-file), and comes
        // back closed.
        let probe = reader.unwrap_or(ends[0]);
        let stolen: OwnedFd = match c.task.take_fd(listed[probe].fd) {
            Ok(f) => f,
            Err(e) => {
                c.unsupported(format!(
                    "fd {}: cannot take a copy to read {shown}: {e}",
                    listed[probe].fd
                ))?;
                continue;
            }
        };
        let buffered = match reader {
            Some(_) => objects::pipe::buffered(listed[probe].fd, &stolen),
            // Nobody can read them: the bytes do not matter, the size does.
            None => objects::pipe::size_only(listed[probe].fd, &stolen),
        };
        let buffered = match buffered {
            Ok(b) => b,
            Err(why) => {
                c.unsupported(why)?;
                continue;
            }
        };
        // A packet-mode pipe's bytes are packets: tee gives them as one
        // stream, and their boundaries would be lost.
        if !buffered.data.is_empty() && ends.iter().any(|&i| listed[i].info.flags & O_DIRECT != 0) {
            c.unsupported(format!(
                "fd {} is a packet-mode (O_DIRECT) pipe with {} bytes in it: their packet boundaries are not saved",
                first.fd,
                buffered.data.len()
            ))?;
            continue;
        }
        objects.pipes.push(PipeState {
            record: PipeRecord {
                ino,
                size: buffered.size,
                flags: if first.kind == fd_kind::FIFO {
                    pipe_flags::FIFO
                } else {
                    0
                },
                ..PipeRecord::default()
            },
            data: buffered.data,
        });
        let object = index(objects.pipes.len());
        for &i in &ends {
            records[i].record.object = object;
        }
    }
    Ok(())
}

/// Sockets: one object per socket (its first fd's description; a socket
/// cannot be opened again, so every fd on it shares that one), saved by
/// [`objects::socket`]; the two ends of a unix pair name each other.
fn save_sockets<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    shared: &[Vec<i32>],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    let socks: Vec<usize> = (0..listed.len())
        .filter(|&i| listed[i].kind == fd_kind::SOCKET)
        .collect();
    if socks.is_empty() {
        return Ok(());
    }
    let inodes: Vec<u64> = socks.iter().map(|&i| listed[i].meta.id.ino).collect();
    let task = &*c.task;
    let holders = |ino: u64| -> Vec<i32> {
        let held = Held {
            fd: -1,
            link: format!("socket:[{ino}]"),
            dev: 0,
            ino,
            same_when: SameWhen::Link,
        };
        task.holders_elsewhere(&[held])
            .map(|h| h.found.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default()
    };
    let root = c.proc_path("root");
    let path_inode = |path: &[u8]| -> Option<(u64, u32)> {
        let mut full = std::ffi::OsString::from(&root);
        full.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
        task.metadata(std::path::Path::new(&full))
            .ok()
            .map(|m| (m.id.ino, m.mode))
    };
    let mut cx = objects::socket::Context {
        pid: c.pid,
        task_sockets: &inodes,
        holders: &holders,
        unix: None,
        path_inode: &path_inode,
    };
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    // (record index of a saved socket, its peer's inode).
    let mut peers: Vec<(usize, u64)> = Vec::new();
    let first_index = objects.sockets.len();
    for &i in &socks {
        let l = &listed[i];
        let desc = records[i].record.desc;
        if let Some(earlier) = records[..i]
            .iter()
            .find(|r| r.record.desc == desc && r.record.kind == fd_kind::SOCKET)
        {
            records[i].record.object = earlier.record.object;
            continue;
        }
        let stdio = (0..=2).contains(&l.fd);
        let others = &shared[i];
        if !others.is_empty() {
            if !stdio {
                refusals.push(format!(
                    "{} (fd {}) is also held by pid {}; objects shared between processes need a tree dump",
                    Escaped(l.link.as_bytes()),
                    l.fd,
                    join(others)
                ));
            }
            continue;
        }
        let stolen: OwnedFd = match task.take_fd(l.fd) {
            Ok(f) => f,
            Err(e) => {
                refusals.push(format!(
                    "fd {}: cannot take a copy of the socket: {e}",
                    l.fd
                ));
                continue;
            }
        };
        match objects::socket::collect(
            l.fd,
            l.meta.id.ino,
            std::os::fd::AsFd::as_fd(&stolen),
            stdio,
            &mut cx,
        ) {
            Ok(objects::socket::Outcome::Saved {
                state,
                peer,
                warning,
            }) => {
                objects.sockets.push(state);
                records[i].record.object = index(objects.sockets.len());
                peers.push((objects.sockets.len() - 1, peer));
                warnings.extend(warning);
            }
            Ok(objects::socket::Outcome::Inherited) => {}
            Err(why) => refusals.push(why),
        }
    }
    // The queues go into the image's notes, which are bounded in all.
    let queued: usize = objects.sockets[first_index..]
        .iter()
        .map(|s| s.queue.len())
        .sum();
    if queued > objects::socket::MAX_TOTAL_QUEUE_BYTES {
        refusals.push(format!(
            "the process's sockets have {queued} bytes queued, more than the {} crimg saves",
            objects::socket::MAX_TOTAL_QUEUE_BYTES
        ));
    }
    // Link each pair: the peer's 1-based record index.
    for &(at, peer) in &peers {
        if peer == 0 {
            continue;
        }
        let found = objects.sockets[first_index..]
            .iter()
            .position(|s| s.record.ino == peer)
            .map(|p| index(first_index + p + 1));
        match found {
            Some(p) => objects.sockets[at].record.peer = p,
            None => refusals.push(format!(
                "socket:[{}] is connected to socket:[{peer}], which this process holds but was not saved",
                objects.sockets[at].record.ino
            )),
        }
    }
    c.warnings.extend(warnings);
    for why in refusals {
        c.unsupported(why)?;
    }
    Ok(())
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
