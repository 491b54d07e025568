//! The image rules of fds and their objects that need more than one
//! record at a time: fd numbers in order, each object named from fds of
//! one kind (and, where the object is its description, from one
//! description), the objects' own fields in range. The loader creates
//! objects by these records; an image that breaks them could make it
//! write one pipe's bytes twice or grant a pipe bigger than a user may
//! have.

use image_format::read::Records;
use image_format::records::{
    eventfd_flags, fd_kind, note, pipe_flags, EventfdRecord, FdRecord, PipeRecord,
    MAX_EVENTFD_COUNT, MAX_PIPE_SIZE,
};
use image_format::{Image, ImageError};

use super::RuleError;

fn bad(what: &'static str) -> RuleError<'static> {
    RuleError::Corrupt {
        error: ImageError::BadRecords {
            note_type: note::FDS,
            what,
        },
    }
}

/// The object family an fd kind's `object` indexes (a FIFO and a pipe
/// are both in the pipes note, but never the same object).
fn family(kind: u32) -> u32 {
    match kind {
        fd_kind::FIFO => fd_kind::PIPE,
        k => k,
    }
}

/// Whether one object of `kind` is one open file description (an
/// eventfd, signalfd, timerfd, epoll or inotify instance: the loader makes
/// one per object), rather than something several descriptions can be
/// open on (a pipe).
fn object_is_description(kind: u32) -> bool {
    matches!(
        kind,
        fd_kind::EVENTFD
            | fd_kind::SIGNALFD
            | fd_kind::TIMERFD
            | fd_kind::EPOLL
            | fd_kind::INOTIFY
            | fd_kind::SOCKET
    )
}

pub fn check(image: &Image<'_>, fds: &Records<'_, FdRecord>) -> Result<(), RuleError<'static>> {
    let corrupt = |error| RuleError::Corrupt { error };
    let mut last = -1;
    for f in fds.clone() {
        // A negative number is said as such, not as out of order.
        if f.fd < 0 {
            return Err(RuleError::NegativeFd { fd: f.fd });
        }
        if f.fd <= last {
            return Err(bad("fd numbers are not in increasing order"));
        }
        last = f.fd;
        if f.object == 0 || !crate::objects::is_object(f.kind) {
            continue;
        }
        // The first fd naming the same object decides its kind and, for an
        // object that is a description, the description.
        let first = fds
            .clone()
            .find(|o| o.object == f.object && family(o.kind) == family(f.kind))
            .unwrap_or(f);
        if first.kind != f.kind {
            return Err(bad("one pipe object is named by a pipe fd and a FIFO fd"));
        }
        if object_is_description(f.kind) && first.desc != f.desc {
            return Err(bad(
                "one eventfd, signalfd, timerfd, epoll or inotify instance is named by two open file descriptions",
            ));
        }
    }
    for p in image.records::<PipeRecord>().map_err(corrupt)? {
        let data = image.string(p.data).map_err(corrupt)?;
        if p.flags & !pipe_flags::KNOWN != 0 {
            return Err(bad("a pipe record has unknown flags"));
        }
        if p.size > MAX_PIPE_SIZE {
            return Err(RuleError::PipeTooBig {
                size: p.size,
                limit: MAX_PIPE_SIZE,
            });
        }
        if data.len() > usize::try_from(p.size).unwrap_or(usize::MAX) {
            return Err(bad("a pipe holds more bytes than its size"));
        }
    }
    for e in image.records::<EventfdRecord>().map_err(corrupt)? {
        if e.flags & !eventfd_flags::KNOWN != 0 || e.count > MAX_EVENTFD_COUNT {
            return Err(bad(
                "an eventfd record has unknown flags or an impossible count",
            ));
        }
    }
    Ok(())
}
