//! The loader's stage-1 rules that depend on the image alone: one pure
//! function, [`check_image`], that the loader's stage 1 runs first and the
//! dumper runs on the image it wrote before it kills the process or names
//! the image. A limit or an "unsupported" decision lives here once, so the
//! two can never disagree: a dump that succeeds is an image the loader
//! accepts (as far as the image decides; files, the CPU and the caller's
//! privileges are checked again where the image runs).
//!
//! No system calls, no allocation: the machine's facts it needs
//! (`vm.mmap_min_addr`) are arguments.

use core::fmt;

use image_format::read::limits::MAX_THREADS;
use image_format::read::Records;
use image_format::records::{
    fd_flags, fd_kind, vma_flags, vma_kind, FdRecord, ItimerRecord, PendingSignalRecord,
    PosixTimerRecord, RlimitRecord, ThreadRecord,
};
use image_format::{Image, ImageError};

use crate::posix_timers::PosixTimerError;
use crate::validate::{check_segment_bases, validate_values, ValueError};

mod fd_objects;
use crate::{frame, ExitCode};

/// Why the image is refused, whatever machine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleError<'a> {
    /// The notes or records do not hold together.
    Corrupt {
        error: ImageError,
    },
    /// More threads than a reader accepts ([`MAX_THREADS`], shared with the
    /// image writer and reader).
    Threads {
        count: u32,
    },
    NoThread,
    /// A thread's XSAVE area is in compacted format (XSAVES), which
    /// `rt_sigreturn` does not take.
    CompactedXsave {
        tid: i32,
    },
    /// A value the kernel would refuse after the point of no return.
    Value {
        error: ValueError,
    },
    /// An fd number below zero.
    NegativeFd {
        fd: i32,
    },
    /// An fd of a kind the loader cannot open again.
    UnsupportedFd {
        fd: i32,
        kind: u32,
        path: &'a [u8],
    },
    /// A mapped or open file that was deleted before the dump.
    FileDeleted {
        what: &'static str,
        path: &'a [u8],
    },
    /// The POSIX timers' records ([`crate::posix_timers::validate`]).
    PosixTimer {
        error: PosixTimerError,
    },
    /// A pipe larger than crimg restores (and than a user may make).
    PipeTooBig {
        size: u32,
        limit: u32,
    },
}

impl RuleError<'_> {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RuleError::Corrupt { .. }
            | RuleError::NoThread
            | RuleError::Value { .. }
            | RuleError::NegativeFd { .. } => ExitCode::ImageCorrupt,
            RuleError::Threads { .. }
            | RuleError::CompactedXsave { .. }
            | RuleError::UnsupportedFd { .. }
            | RuleError::FileDeleted { .. }
            | RuleError::PipeTooBig { .. } => ExitCode::Unsupported,
            RuleError::PosixTimer { error } => error.exit_code(),
        }
    }
}

impl fmt::Display for RuleError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::message::Lossy;
        match *self {
            RuleError::Corrupt { error } => write!(f, "corrupt image: {error}"),
            RuleError::Threads { count } => write!(
                f,
                "images of more than {MAX_THREADS} threads ({count}) are not supported"
            ),
            RuleError::NoThread => write!(f, "corrupt image: no thread"),
            RuleError::CompactedXsave { tid } => write!(
                f,
                "thread {tid}'s saved XSAVE area is in compacted format, not supported"
            ),
            RuleError::Value { error } => write!(f, "corrupt image: {error}"),
            RuleError::NegativeFd { fd } => write!(f, "corrupt image: fd number {fd}"),
            RuleError::PipeTooBig { size, limit } => write!(
                f,
                "a pipe of {size} bytes is larger than the {limit} crimg restores"
            ),
            RuleError::UnsupportedFd { fd, kind, path } => write!(
                f,
                "fd {fd} ({}, kind {kind}) cannot be restored by the loader yet (this kind of file, or one saved without its state)",
                Lossy(path)
            ),
            RuleError::FileDeleted { what, path } => write!(
                f,
                "{what} {} was deleted before the dump; restoring deleted files is not supported yet",
                Lossy(path)
            ),
            RuleError::PosixTimer { error } => write!(f, "{error}"),
        }
    }
}

/// Whether an object of fd kind `kind` that several processes of a tree
/// hold can be restored shared by `crrestore-tree` (created once, placed
/// in every holder). The dumper refuses the other kinds when they are
/// shared within a tree, so a tree dump that succeeds restores.
pub fn tree_shareable_fd_kind(kind: u32) -> bool {
    matches!(
        kind,
        fd_kind::REGULAR
            | fd_kind::DIRECTORY
            | fd_kind::CHAR
            | fd_kind::PIPE
            | fd_kind::FIFO
            | fd_kind::MEMFD
            | fd_kind::EVENTFD
            | fd_kind::SIGNALFD
            | fd_kind::TIMERFD
            | fd_kind::INOTIFY
    )
}

/// Whether the loader keeps fd `f` as the caller has it (stdio that was
/// a terminal, pipe or socket, and not an object the image saved)
/// instead of opening it again.
pub fn fd_is_inherited(f: &FdRecord) -> bool {
    // A terminal's object holds its modes, not how to make it: stdio on a
    // terminal is the caller's all the same.
    (0..=2).contains(&f.fd)
        && (f.object == 0 || f.kind == fd_kind::TTY)
        && matches!(
            f.kind,
            fd_kind::TTY | fd_kind::PIPE | fd_kind::SOCKET | fd_kind::FIFO
        )
}

/// Whether fd record `f` was dropped by a forced dump (its object not
/// saved): the loader puts `/dev/null` there whatever its kind, so no rule
/// of its kind applies.
pub fn fd_is_dropped(f: &FdRecord) -> bool {
    f.flags & fd_flags::DROPPED != 0
}

/// Whether a forced dump must drop fd record `f` (`crdump --force`): it
/// is neither inherited from the caller nor restorable (its object was not
/// saved, or it is a deleted file). A copy of an earlier fd of its open
/// file description (`earlier`, already decided) is restored as a dup of
/// it, so it is dropped with it. The dumper marks fds with this rule, the
/// loader's own, so a forced image is one the loader accepts.
pub fn fd_must_be_dropped(f: &FdRecord, earlier: Option<&FdRecord>) -> bool {
    match earlier {
        Some(first) => fd_is_dropped(first),
        // A deleted file is restored only with its content saved.
        None => {
            !fd_is_inherited(f)
                && (!fd_restorable(f)
                    || (f.flags & fd_flags::DELETED != 0 && !crate::objects::shmem::backs_fd(f)))
        }
    }
}

/// Whether the loader can open an fd of `kind` again by its path.
pub fn fd_kind_reopenable(kind: u32) -> bool {
    matches!(kind, fd_kind::REGULAR | fd_kind::DIRECTORY | fd_kind::CHAR)
}

/// Whether the loader can restore fd record `f`: by its path, or as an
/// object the image saved (`object` names it).
pub fn fd_restorable(f: &FdRecord) -> bool {
    fd_kind_reopenable(f.kind)
        || (crate::objects::is_object(f.kind) && f.object != 0)
        || crate::objects::shmem::backs_fd(f)
}

/// The fd whose open file description `f` shares and that comes before it
/// (the loader makes one description and duplicates it), if any.
pub fn earlier_same_description(fds: &Records<'_, FdRecord>, f: &FdRecord) -> Option<FdRecord> {
    if f.desc == 0 {
        return None;
    }
    fds.clone()
        .take_while(|o| o.fd != f.fd)
        .find(|o| o.desc == f.desc)
}

/// Every rule of the loader that the image alone decides. `mmap_min_addr`
/// is `vm.mmap_min_addr` of the machine that asks.
pub fn check_image<'a>(image: &Image<'a>, mmap_min_addr: u64) -> Result<(), RuleError<'a>> {
    let corrupt = |error| RuleError::Corrupt { error };
    let count = image.thread_count();
    if count > MAX_THREADS {
        return Err(RuleError::Threads { count });
    }
    if count == 0 {
        return Err(RuleError::NoThread);
    }
    for t in image.threads() {
        let t = t.map_err(corrupt)?;
        if frame::xcomp_bv(t.xsave).unwrap_or(0) & (1 << 63) != 0 {
            return Err(RuleError::CompactedXsave { tid: t.record.tid });
        }
        let regs = t.regs();
        check_segment_bases(t.record.tid, regs.fs_base, regs.gs_base)
            .map_err(|error| RuleError::Value { error })?;
    }

    let vmas = image.vmas().map_err(corrupt)?;
    validate_values(
        vmas.clone(),
        &image.mm(),
        image.auxv().len(),
        image.records::<RlimitRecord>().map_err(corrupt)?,
        image.records::<ItimerRecord>().map_err(corrupt)?,
        image.records::<PendingSignalRecord>().map_err(corrupt)?,
        image.records::<ThreadRecord>().map_err(corrupt)?,
        mmap_min_addr,
    )
    .map_err(|error| RuleError::Value { error })?;
    let timers = image.records::<PosixTimerRecord>().map_err(corrupt)?;
    let tids = image.records::<ThreadRecord>().map_err(corrupt)?;
    crate::posix_timers::validate(timers.clone(), u64::from(timers.len()), tids.map(|t| t.tid))
        .map_err(|error| RuleError::PosixTimer { error })?;

    for v in vmas {
        if v.kind != vma_kind::FILE {
            continue;
        }
        let path = image.string(v.path).map_err(corrupt)?;
        // A deleted file with its content saved (`objects::shmem`) is made
        // again; one without is not restorable.
        if v.flags & vma_flags::FILE_DELETED != 0 && v.object == 0 {
            return Err(RuleError::FileDeleted {
                what: "mapped file",
                path,
            });
        }
    }

    fd_objects::check(image, &image.fds().map_err(corrupt)?)?;
    for f in image.fds().map_err(corrupt)? {
        let path = image.string(f.path).map_err(corrupt)?;
        if f.fd < 0 {
            return Err(RuleError::NegativeFd { fd: f.fd });
        }
        if fd_is_inherited(&f) || fd_is_dropped(&f) {
            continue;
        }
        let fds = image.fds().map_err(corrupt)?;
        if let Some(first) = earlier_same_description(&fds, &f) {
            // A copy of an earlier fd: restored as a dup of it, whatever
            // its kind (stdio inherited from the caller included).
            if first.kind != f.kind {
                return Err(RuleError::Corrupt {
                    error: ImageError::BadRecords {
                        note_type: image_format::records::note::FDS,
                        what: "two fds of one open file description have different kinds",
                    },
                });
            }
            continue;
        }
        let shmem = crate::objects::shmem::backs_fd(&f);
        if (crate::objects::is_object(f.kind) || shmem) && f.object != 0 {
            let held = if shmem {
                image
                    .records::<image_format::records::ShmemRecord>()
                    .map_err(corrupt)?
                    .len()
            } else {
                crate::objects::count(image, f.kind).map_err(corrupt)?
            };
            if f.object > held {
                return Err(RuleError::Corrupt {
                    error: ImageError::BadRecords {
                        note_type: image_format::records::note::FDS,
                        what: "an fd names an object its kind's note does not hold",
                    },
                });
            }
        }
        if !fd_restorable(&f) {
            return Err(RuleError::UnsupportedFd {
                fd: f.fd,
                kind: f.kind,
                path,
            });
        }
        // A deleted file with its content saved is made again.
        if f.flags & fd_flags::DELETED != 0 && !shmem {
            return Err(RuleError::FileDeleted {
                what: "open file",
                path,
            });
        }
    }
    // Every epoll item names an epoll and a target the restore brings back.
    crate::objects::epoll::check_items(image).map_err(corrupt)?;
    crate::objects::inotify::check_watches(image).map_err(corrupt)?;
    Ok(())
}
