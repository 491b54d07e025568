//! Lazy restore (`--lazy`): the task resumes as soon as its areas exist;
//! the stored pages of its private anonymous areas come in afterwards,
//! through a userfaultfd, from a page server.
//!
//! - Stage 1 ([`prepare`]) makes the task's userfaultfd (not
//!   `UFFD_USER_MODE_ONLY`: a fault the kernel takes on the task's behalf,
//!   as a `read(2)` into a page not in yet, must wait for the server too;
//!   that needs `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd`, else
//!   `--lazy` is refused, exit 7) and a socketpair. It verifies every
//!   checksum except the lazily filled segments'. `UFFD_FEATURE_EVENT_FORK`
//!   needs `CAP_SYS_PTRACE` whatever `vm.unprivileged_userfaultfd` says
//!   (measured on 6.18: `EPERM` for nobody from `UFFDIO_API`), so without
//!   the capability `--lazy` is always refused. It also needs a read lease
//!   on the image and on each of its parent images, if it is incremental
//!   (stage 1's `Hold::Lease`, `crate::parent::Chain::unleased_parent`),
//!   else it is refused, exit 7.
//! - Before the point of no return, [`start_server`] forks the server
//!   twice over (the intermediate exits at once and is reaped here, so the
//!   server is nobody's child in the task; it has a session of its own and
//!   keeps only the fds of the image and its parents, the message fd, the
//!   task's pidfd and its socket).
//! - The plan (`crate::plan::lazy`) registers the areas, sends the fd to
//!   the server and closes its own copies; the task then runs.
//! - The server ([`server`]) fills faults first, the rest in the
//!   background, verifying each segment's checksum before it copies a page
//!   of it (a segment an incremental image takes from its parents is read
//!   piece by piece from the links that hold it), and exits when every page
//!   is in. A mismatch kills the task (it already runs: eager restores
//!   check everything before they change anything). Without `--lazy` or
//!   `--eager` a direct run is lazy from `plan::lazy::AUTO_LAZY_MIN` bytes
//!   for the server, when [`prepare`] and the leases allow it.
//!
//! What the task sees once the fill is done: nothing of it (no fd, thread,
//! child or mapping; its areas no longer registered). While it runs, a
//! `SIGKILL` of the server would leave the pages not yet in reading zeros
//! (closing a userfaultfd unregisters its areas); the server blocks every
//! other signal and is out of the terminal's process group.

pub mod server;

use core::fmt;

use crate::check::Checked;
use crate::message;
use crate::plan::lazy::{lazy_pieces, LazyFill};
use crate::sys::{self, uffd, Errno};
use crate::ExitCode;
use image_format::records::CredsRecord;
use server::{Link, Run, SegmentSum, Server};

/// Why a lazy restore cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyError {
    /// This process may not have a userfaultfd that catches the kernel's
    /// faults too.
    NoUserfaultfd { errno: Errno },
    /// The socketpair, the tables or the fork of the server failed.
    Server { step: &'static str, errno: Errno },
    /// No read lease could be taken on the image: the server reads it
    /// after the task runs, and nothing would keep it from changing.
    NoLease,
    /// Likewise for the parent image `path` (recorded, relative to its
    /// child's directory) of an incremental image.
    NoParentLease { path: &'static [u8] },
}

impl LazyError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            LazyError::NoUserfaultfd { .. }
            | LazyError::NoLease
            | LazyError::NoParentLease { .. } => ExitCode::Unsupported,
            LazyError::Server { .. } => ExitCode::Environment,
        }
    }
}

impl fmt::Display for LazyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LazyError::NoUserfaultfd { errno } => write!(
                f,
                "--lazy needs a userfaultfd that also waits on the kernel's own accesses and follows the process's forks, which takes CAP_SYS_PTRACE (vm.unprivileged_userfaultfd = 1 is not enough: UFFD_FEATURE_EVENT_FORK needs the capability): {errno}; run without --lazy for an eager restore"
            ),
            LazyError::Server { step, errno } => {
                write!(f, "--lazy: cannot start the page server: {step}: {errno}")
            }
            LazyError::NoLease => write!(
                f,
                "--lazy needs a read lease on the image, which its pages are read from after the process resumes (none could be taken: the image is open for writing somewhere, or is another user's, or its file system has no leases); run without --lazy for an eager restore"
            ),
            LazyError::NoParentLease { path } => write!(
                f,
                "--lazy needs a read lease on parent image {}, which pages are read from after the process resumes (none could be taken: it is open for writing somewhere, or is another user's, or its file system has no leases); run without --lazy for an eager restore",
                message::Lossy(path)
            ),
        }
    }
}

/// Stage 1 of a lazy restore: the task's userfaultfd and the socketpair
/// to the server.
pub fn prepare() -> Result<LazyFill, LazyError> {
    let uffd = uffd::open_for_lazy().map_err(|errno| LazyError::NoUserfaultfd { errno })?;
    match uffd::socketpair() {
        Ok([sock, server]) => Ok(LazyFill { uffd, sock, server }),
        Err(errno) => {
            let _ = sys::close(uffd);
            Err(LazyError::Server {
                step: "socketpair",
                errno,
            })
        }
    }
}

/// A prepared lazy restore given up before the server exists: its fds
/// closed.
pub fn abandon(fill: LazyFill) {
    for fd in [fill.uffd, fill.sock, fill.server] {
        let _ = sys::close(fd);
    }
}

/// The server's tables, built before the fork (a few entries per area):
/// the chain's links (the image, its parents), the lazily filled runs,
/// and every segment's checksum.
struct Tables {
    links: &'static [Link],
    runs: &'static [Run],
    segs: &'static [SegmentSum],
}

fn tables(checked: &Checked) -> Result<Tables, LazyError> {
    let no_memory = |errno| LazyError::Server {
        step: "tables",
        errno,
    };
    let chain = &checked.chain;
    let links = sys::map_table::<Link>(chain.images().len()).map_err(no_memory)?;
    for (i, slot) in links.iter_mut().enumerate() {
        *slot = Link {
            fd: chain.fd(i),
            path: if i == 0 { checked.name } else { chain.path(i) },
        };
    }
    let input = &checked.input;
    let image = &checked.image;
    let n = lazy_pieces(input).count();
    let runs = sys::map_table::<Run>(n).map_err(no_memory)?;
    let mut bit = 0;
    for (slot, p) in runs.iter_mut().zip(lazy_pieces(input)) {
        *slot = Run {
            vaddr: p.vaddr,
            len: p.len,
            offset: p.offset,
            // Its segment's (every run lies in one: a piece of it the
            // chain resolved, `crate::parent::Chain::fill_loads`).
            seg: image_format::chain::first_after(image, p.vaddr),
            fd: p.fd,
            bit,
        };
        bit += p.len / crate::plan::PAGE;
    }
    let nseg = usize::try_from(image.segment_count()).unwrap_or(0);
    let segs = sys::map_table::<SegmentSum>(nseg).map_err(no_memory)?;
    let sums = image
        .records::<image_format::records::SegmentChecksumRecord>()
        .map_err(|_| no_memory(Errno::EINVAL))?;
    for ((slot, s), sum) in segs.iter_mut().zip(image.segments()).zip(sums) {
        *slot = SegmentSum {
            vaddr: s.vaddr,
            offset: s.offset,
            len: s.len,
            sum: sum.checksum,
            from_parent: s.from_parent(),
        };
    }
    Ok(Tables { links, runs, segs })
}

/// Fork the page server (twice over; the intermediate is reaped here),
/// then close this process's end of its socket. Before the point of no
/// return: a failure leaves everything as it was.
pub fn start_server(checked: &Checked, lazy: LazyFill) -> Result<(), LazyError> {
    let Tables { links, runs, segs } = tables(checked)?;
    let verified = sys::map_table::<bool>(segs.len()).map_err(|errno| LazyError::Server {
        step: "tables",
        errno,
    })?;
    let fork_failed = |errno| LazyError::Server {
        step: "fork",
        errno,
    };
    // The task, named by an fd: the server kills it (on a bad checksum)
    // through this, never by a number the task's pid may have been
    // reused for once it is gone.
    let pidfd = uffd::pidfd_open(checked.input.pid, 0).map_err(|errno| LazyError::Server {
        step: "pidfd_open",
        errno,
    })?;
    let middle = match uffd::fork() {
        Ok(m) => m,
        Err(errno) => {
            let _ = sys::close(pidfd);
            return Err(fork_failed(errno));
        }
    };
    if middle == 0 {
        // The intermediate: out of the caller's session, then gone.
        let _ = uffd::setsid();
        match uffd::fork() {
            Ok(0) => {}
            Ok(_) => uffd::exit_thread(0),
            Err(_) => uffd::exit_thread(1),
        }
        let mut server = Server::new(
            checked.name,
            checked.input.pid,
            links,
            checked.input.loads,
            runs,
            segs,
            verified,
        );
        server.pidfd = pidfd;
        serve(server, lazy, checked.input.creds)
    }
    let status = uffd::wait_child(middle).map_err(fork_failed)?;
    let _ = sys::close(pidfd);
    let _ = sys::close(lazy.server);
    if status != 0 {
        return Err(fork_failed(Errno::EIO));
    }
    Ok(())
}

/// The server process: only its fds kept (its socket, the chain's links,
/// the message fd, the task's pidfd), the task's credentials taken
/// (`creds`: what the plan switches the task to; `None`: it keeps the
/// loader's) with no capability, the task's userfaultfd received once the
/// plan has registered the areas, then served.
fn serve(server: Server, lazy: LazyFill, creds: Option<CredsRecord>) -> ! {
    let mut keep = [-1; 3 + crate::parent::MAX_LINKS];
    keep[..3].copy_from_slice(&[lazy.server, message::report_fd(), server.pidfd]);
    for (slot, link) in keep[3..].iter_mut().zip(server.links) {
        *slot = link.fd;
    }
    keep.sort_unstable();
    let mut next = 0u32;
    for fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd > next {
            let _ = uffd::close_range(next, fd - 1);
        }
        next = next.max(fd + 1);
    }
    let _ = uffd::close_range(next, u32::MAX);
    // No more than the task may do, before it holds the task's memory:
    // root restoring another user's image must not leave that user's
    // task a root helper.
    let ids = creds.as_ref().map(|c| {
        let n = usize::try_from(c.ngroups).map_or(c.groups.len(), |n| n.min(c.groups.len()));
        (
            &c.groups[..n],
            [c.gid[0], c.gid[1], c.gid[2]],
            [c.uid[0], c.uid[1], c.uid[2]],
        )
    });
    if let Err((step, errno)) = uffd::drop_privileges(ids) {
        message::report(
            server.name,
            format_args!(
                "lazy restore: the page server cannot drop its privileges: {step}: {errno}; the task (pid {}) was killed",
                server.pid
            ),
        );
        uffd::kill_task(server.pidfd);
        uffd::exit_thread(1)
    }
    match uffd::recv_fd(lazy.server) {
        Ok(Some(fd)) => {
            let _ = sys::close(lazy.server);
            server.serve(fd)
        }
        // The loader stopped before the switch (and said why).
        Ok(None) => uffd::exit_thread(0),
        Err(e) => {
            message::report(
                server.name,
                format_args!("lazy restore: the page server got no userfaultfd: {e}"),
            );
            uffd::kill_task(server.pidfd);
            uffd::exit_thread(1)
        }
    }
}
