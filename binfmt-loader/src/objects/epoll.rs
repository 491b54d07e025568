//! epoll: the instance is created in stage 1; its items are added by the
//! plan once every fd of the task is at its number (an item is keyed by
//! its file and that number: `crate::plan::epoll`). Here: the table of
//! items the plan adds, inner instances first (an epoll watching an epoll
//! gets it with its items in), and a look at each item on an fd the
//! caller gives (inherited stdio): it is added on the caller's file, and
//! left out with a warning when that one cannot be watched (a regular
//! file as stdin, which epoll refuses).
//!
//! A one-shot item that had fired shows only its flag bits; added again
//! like that it stays off until `EPOLL_CTL_MOD` re-arms it, except that
//! the kernel adds `EPOLLERR | EPOLLHUP` to every item it is given, so an
//! error or hang-up on its file reports it once more.

use image_format::read::Records;
use image_format::records::{fd_kind, EpollItemRecord, FdRecord};
use image_format::{Image, ImageError};

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::scratch::Scratch;
use crate::check::CheckError;
use crate::plan::EpollAdd;
use crate::rules;
use crate::sys::O_CLOEXEC;

/// `EPOLLIN`: what the look at a caller's fd asks for.
const EPOLLIN: u32 = 1;
/// `EPOLLWAKEUP`: kept only with CAP_BLOCK_SUSPEND (the kernel drops it
/// silently otherwise).
const EPOLLWAKEUP: u32 = 1 << 29;
const CAP_BLOCK_SUSPEND: u32 = 36;
/// The kernel nests epoll instances at most this deep (`EP_MAX_NESTS`).
const MAX_NESTS: u32 = 4;

pub fn open(os: &impl Os, f: &FdRecord, base: i32) -> Result<i32, CheckError> {
    // EPOLL_CLOEXEC is O_CLOEXEC.
    let fd = os
        .epoll_create(O_CLOEXEC)
        .map_err(failed(f, "create the epoll instance"))?;
    lift(os, fd, base).map_err(failed(f, "move the epoll instance"))
}

fn bad(what: &'static str) -> ImageError {
    ImageError::BadRecords {
        note_type: image_format::records::note::EPOLL_ITEMS,
        what,
    }
}

/// The first fd of epoll instance `epoll`, and the fd record of `tfd`.
fn ends(
    fds: &Records<'static, FdRecord>,
    item: &EpollItemRecord,
) -> Result<(i32, FdRecord), ImageError> {
    let epfd = fds
        .clone()
        .find(|f| f.kind == fd_kind::EPOLL && f.object == item.epoll)
        .ok_or(bad("an epoll item names an epoll the image has no fd of"))?;
    let target = fds
        .clone()
        .find(|f| f.fd == item.tfd)
        .ok_or(bad("an epoll item watches an fd the image does not have"))?;
    Ok((epfd.fd, target))
}

/// The rules' part: every item names an epoll fd and a target fd of the
/// image, and its target is one the restore brings back.
pub fn check_items(image: &Image<'_>) -> Result<(), ImageError> {
    let fds = image.fds()?;
    for item in image.records::<EpollItemRecord>()? {
        let epfd = fds
            .clone()
            .any(|f| f.kind == fd_kind::EPOLL && f.object == item.epoll);
        let target = fds.clone().find(|f| f.fd == item.tfd);
        if !epfd {
            return Err(bad("an epoll item names an epoll the image has no fd of"));
        }
        let Some(target) = target else {
            return Err(bad("an epoll item watches an fd the image does not have"));
        };
        // The first fd of its description decides how it comes back; a
        // dropped one is /dev/null, which epoll cannot watch.
        let first = (target.desc != 0)
            .then(|| fds.clone().find(|o| o.desc == target.desc))
            .flatten()
            .unwrap_or(target);
        let back = !rules::fd_is_dropped(&target)
            && !rules::fd_is_dropped(&first)
            && (rules::fd_restorable(&first) || rules::fd_is_inherited(&first));
        if !back {
            return Err(bad(
                "an epoll item watches an fd the restore does not bring back",
            ));
        }
    }
    Ok(())
}

/// The caller's fd a target is (inherited stdio, or a dup of it), if it is.
fn inherited(fds: &Records<'static, FdRecord>, target: &FdRecord) -> Option<i32> {
    if rules::fd_is_inherited(target) {
        return Some(target.fd);
    }
    if target.desc == 0 {
        return None;
    }
    fds.clone()
        .find(|o| o.desc == target.desc && rules::fd_is_inherited(o))
        .map(|o| o.fd)
}

/// The items the plan adds, inner epolls' first.
pub fn adds(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    fds: &Records<'static, FdRecord>,
    scratch: &mut Scratch,
) -> Result<&'static [EpollAdd], CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let items = image.records::<EpollItemRecord>().map_err(corrupt)?;
    let n = usize::try_from(items.len()).unwrap_or(usize::MAX);
    let table = scratch.take::<EpollAdd>("epoll items", n)?;
    let mut len = 0;
    let mut wakeups = 0;
    for item in items {
        let (epfd, target) = ends(fds, &item).map_err(corrupt)?;
        if item.events & EPOLLWAKEUP != 0 {
            wakeups += 1;
        }
        if let Some(caller) = inherited(fds, &target) {
            let probe = os
                .epoll_create(O_CLOEXEC)
                .map_err(failed(&target, "create an epoll instance to try it in"))?;
            let tried = os.epoll_add(probe, caller, EPOLLIN, 0);
            os.close(probe);
            if let Err(errno) = tried {
                os.report(
                    name,
                    format_args!(
                        "warning: fd {epfd} (epoll): its item for fd {} is left out: the fd the caller gives cannot be watched ({errno})",
                        target.fd
                    ),
                );
                continue;
            }
        }
        if let Some(slot) = table.get_mut(len) {
            *slot = EpollAdd {
                epfd,
                tfd: item.tfd,
                events: item.events,
                depth: 0,
                data: item.data,
            };
            len += 1;
        }
    }
    if wakeups != 0 && os.effective_caps() & (1 << CAP_BLOCK_SUSPEND) == 0 {
        os.report(
            name,
            format_args!(
                "warning: {wakeups} epoll item(s) had EPOLLWAKEUP, which this process may not set (no CAP_BLOCK_SUSPEND): they come back without it"
            ),
        );
    }
    let table = &mut table[..len];
    order_nested(table, fds);
    Ok(table)
}

/// Give each item its epoll's nesting depth (0: it watches no epoll that
/// watches others…) and sort by it, so that an inner epoll has its items
/// before it is added to an outer one.
fn order_nested(table: &mut [EpollAdd], fds: &Records<'static, FdRecord>) {
    let is_epoll = |fd: i32| fds.clone().any(|f| f.fd == fd && f.kind == fd_kind::EPOLL);
    for _ in 0..=MAX_NESTS {
        for i in 0..table.len() {
            let t = table[i];
            if !is_epoll(t.tfd) {
                continue;
            }
            // The inner epoll's depth, found from any of its items.
            let inner = table
                .iter()
                .filter(|o| o.epfd == t.tfd)
                .map(|o| o.depth)
                .max()
                .unwrap_or(0);
            let depth = (inner + 1).min(MAX_NESTS + 1);
            for o in table.iter_mut().filter(|o| o.epfd == t.epfd) {
                o.depth = o.depth.max(depth);
            }
        }
    }
    table.sort_unstable_by_key(|a| a.depth);
}
