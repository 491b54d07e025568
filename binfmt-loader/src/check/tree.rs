//! Stage 1 of a tree restore (`--tree`, run by `crrestore-tree`): the fds
//! the orchestrator handed over, checked before anything is torn down.
//!
//! * `--placed N`: fd N of the image is already in place (a shared object,
//!   or the caller's stdio). It must be an fd the image has, open, and of
//!   the recorded kind ([`check_placed`]); the plan keeps it as it is.
//! * `--barrier R,G`, `--report E`, `--shmem IDX=FD`: fds of the
//!   orchestrator's own, which must be open and not at a number of an fd
//!   of the image (the plan's `dup3`s to the image's numbers would replace
//!   them; the orchestrator puts them above all of them).

use image_format::read::Records;
use image_format::records::{fd_kind, FdRecord};

use super::os::Os;
use super::CheckError;
use crate::args::LoaderArgs;
use crate::rules;
use crate::sys::{self, Stat};

/// Check the orchestrator's fds of `args` against the image's fd records.
pub fn check_tree_fds(
    os: &impl Os,
    args: &LoaderArgs,
    fds: &Records<'static, FdRecord>,
) -> Result<(), CheckError> {
    for &fd in args.placed() {
        if !fds.clone().any(|f| f.fd == fd) {
            return Err(CheckError::TreeFd {
                fd,
                what: "--placed",
                why: "the image has no such fd",
            });
        }
    }
    let own = args
        .barrier
        .iter()
        .flat_map(|b| [(b.ready, "--barrier"), (b.go, "--barrier")])
        .chain(args.report.map(|e| (e, "--report")))
        .chain(args.shmem().iter().map(|s| (s.fd, "--shmem")));
    for (fd, what) in own {
        if fds.clone().any(|f| f.fd == fd) {
            return Err(CheckError::TreeFd {
                fd,
                what,
                why: "the image has an fd of that number (the restore would replace it)",
            });
        }
        if os.fstat(fd).is_err() {
            return Err(CheckError::TreeFd {
                fd,
                what,
                why: "it is not open",
            });
        }
    }
    Ok(())
}

/// The `(dev, ino)` of the kernel's shared anonymous inode, found on an
/// eventfd made for the purpose: eventfds, signalfds, timerfds and inotify
/// instances are all files on that one inode, whatever their kind, so a
/// placed fd of those kinds must be on it.
/// (`fd`: the placed fd being checked, for the message.)
pub fn anon_inode(os: &impl Os, fd: i32) -> Result<(u64, u64), CheckError> {
    let probe = |errno| CheckError::Object {
        fd,
        step: "make an eventfd to compare the placed fd's inode with",
        errno,
    };
    let fd = os.eventfd(sys::O_CLOEXEC).map_err(probe)?;
    let st = os.fstat(fd);
    os.close(fd);
    let st = st.map_err(probe)?;
    Ok((st.dev, st.ino))
}

/// Whether record `f`'s kind is one of the anonymous-inode objects.
fn on_anon_inode(kind: u32) -> bool {
    matches!(
        kind,
        fd_kind::EVENTFD | fd_kind::SIGNALFD | fd_kind::TIMERFD | fd_kind::INOTIFY | fd_kind::EPOLL
    )
}

/// Check placed fd `f.fd`: open, and what the image recorded there: a
/// FIFO for a pipe or FIFO, the same regular file or directory (device
/// and inode), a character device for a terminal or device, a memfd's
/// regular file, a socket, an object on the anonymous inode (`anon`, from
/// [`anon_inode`], asked for only when needed). Stdio the direct run
/// would inherit from its caller (`rules::fd_is_inherited`) may be
/// whatever the caller gives, as in a direct run (a terminal, a pipe, a
/// file it was redirected to): with `crrestore-tree --stdio inherit` the
/// root gets the caller's. So may a copy of such stdio at another number
/// (`dup(0)`, in the root or a process that inherited it): a pipe, FIFO
/// or socket whose object the image does not hold, which only the
/// caller's stdio and its copies lack (any other is saved, or refused).
pub fn check_placed(
    os: &impl Os,
    f: &FdRecord,
    path: &'static [u8],
    anon: &mut Option<(u64, u64)>,
) -> Result<(), CheckError> {
    let st: Stat = os.fstat(f.fd).map_err(|_| CheckError::TreeFd {
        fd: f.fd,
        what: "--placed",
        why: "it is not open",
    })?;
    let ty = st.mode & sys::S_IFMT;
    let same_file = st.dev == f.file.dev && st.ino == f.file.ino;
    let callers = rules::fd_is_inherited(f)
        || (f.object == 0 && matches!(f.kind, fd_kind::PIPE | fd_kind::FIFO | fd_kind::SOCKET));
    let ok = if callers {
        true
    } else {
        match f.kind {
            fd_kind::PIPE | fd_kind::FIFO => ty == sys::S_IFIFO,
            fd_kind::REGULAR => ty == sys::S_IFREG && same_file,
            fd_kind::DIRECTORY => ty == sys::S_IFDIR && same_file,
            fd_kind::CHAR | fd_kind::TTY => ty == sys::S_IFCHR,
            fd_kind::MEMFD => ty == sys::S_IFREG,
            fd_kind::SOCKET => ty == sys::S_IFSOCK,
            k if on_anon_inode(k) => {
                let a = match *anon {
                    Some(a) => a,
                    None => *anon.insert(anon_inode(os, f.fd)?),
                };
                (st.dev, st.ino) == a
            }
            _ => false,
        }
    };
    if ok {
        Ok(())
    } else {
        Err(CheckError::PlacedKind {
            fd: f.fd,
            kind: f.kind,
            path,
            now: st.mode,
        })
    }
}

/// In a tree restore, fd `f` (not placed, not a dup of a placed fd) must
/// not be on an object a placed fd is on (the other end of a placed pipe,
/// another description of a placed eventfd): the loader would make a
/// second object, and the two fds the task had on one would be on two.
/// The tree restorer places every fd of a shared object.
pub fn check_not_on_placed_object(
    f: &FdRecord,
    fds: &Records<'static, FdRecord>,
    placed: &[i32],
) -> Result<(), CheckError> {
    // Pipes and FIFOs are numbered in one note; a terminal's object is
    // its modes, not the terminal: a second description of a placed
    // terminal is opened on it as in a direct run (`objects::terminal`).
    let note = |kind| match kind {
        fd_kind::FIFO => fd_kind::PIPE,
        k => k,
    };
    let same_object = |g: &FdRecord| {
        placed.contains(&g.fd)
            && f.kind != fd_kind::TTY
            && g.object != 0
            && g.object == f.object
            && note(g.kind) == note(f.kind)
    };
    match fds.clone().find(same_object) {
        Some(_) => Err(CheckError::TreeFd {
            fd: f.fd,
            what: "--placed",
            why: "it is not placed, but a placed fd is on its object (place every fd of a shared object)",
        }),
        None => Ok(()),
    }
}
