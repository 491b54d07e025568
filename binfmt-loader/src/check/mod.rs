//! Stage 1: read and check everything, change nothing.
//!
//! Opens and maps the image, parses and verifies it (including every
//! segment's XXH3 checksum), checks that the files the task mapped or had
//! open are the same files, that this CPU has the task's register-state
//! features and that the loader can restore what the image holds (whether
//! the threads' tids are free is found by creating the threads:
//! `crate::threads`); opens everything the plan will need (so the plan
//! only uses fds); reads the loader's own layout. The result is the
//! planner's input itself ([`Checked::input`]). Every failure is a
//! [`CheckError`] with the [`ExitCode`] of its class; nothing irreversible
//! has happened when one is returned.
//!
//! The steps, in order, each in its module: [`image`] (open, lease, map,
//! parse), the rules ([`rules::check_image`]), [`cpu`] (threads, XSAVE),
//! [`limits`] (process records), [`fds`] (fd numbers), [`files`] (mapped
//! files, exe, cwd), [`fds`] again (reopening), [`credentials`],
//! [`gadgets`], [`layout`] (the loader's own maps), then the memory limits.
//! Every decision asks the OS through [`os::Os`], so the whole of stage 1
//! runs against a fake in the unit tests below. [`stable`] says why what
//! is checked is what is loaded.

use core::fmt;

use image_format::records::{vma_flags, FdRecord, VmaRecord};
use image_format::{read::Records, Image, ImageError};

use crate::args::LoaderArgs;
use crate::maps;
use crate::memlimits::{self, LimitError};
use crate::message::Lossy;
use crate::mm_state::{self, MmStateError};
use crate::plan::{PageLoad, PlanInput, Range, TargetVma};
use crate::rules::{self, RuleError};
use crate::sys::{kernel_os, startup::Startup, Errno};
use crate::validate::ValueError;
use crate::{arch, objects, ExitCode};

pub mod cpu;
pub mod credentials;
pub mod fds;
pub mod files;
pub mod gadgets;
pub mod image;
pub mod layout;
pub mod limits;
pub mod os;
pub mod posix_timers;
pub mod scratch;
pub mod stable;
pub mod status;
pub mod tree;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod stage1_tests;

pub use cpu::{cut_xsave, permitted_xsave_size, validate_xsave, XsaveFault};
pub use files::shared_file_access;
pub use gadgets::{target_code, RT_SIGRETURN, SYSCALL_RET};
pub use image::image_name;

use os::Os;
use scratch::{Scratch, Tables};

/// Why stage 1 refused the image.
#[derive(Clone, Copy, Debug)]
pub enum CheckError {
    Usage,
    OpenImage {
        errno: Errno,
    },
    MapImage {
        errno: Errno,
    },
    /// The image path names something other than a regular file (`now`:
    /// `S_IF*`); opening a FIFO or a device could block or act.
    ImageNotRegular {
        now: u32,
    },
    Corrupt {
        error: ImageError,
    },
    /// The chain of parent images of an incremental image
    /// ([`crate::parent`]).
    Parent {
        error: crate::parent::ParentError,
    },
    /// A rule the image alone decides ([`rules::check_image`], which the
    /// dumper runs too).
    Rule {
        error: RuleError<'static>,
    },
    NoThread,
    /// A file a VMA maps (or the cwd, an fd's file) cannot be opened.
    FileMissing {
        what: &'static str,
        path: &'static [u8],
        errno: Errno,
    },
    /// It opened, but is not the file the task had.
    FileChanged {
        what: &'static str,
        path: &'static [u8],
    },
    FileDeleted {
        what: &'static str,
        path: &'static [u8],
    },
    /// The path names another type of file now (`now`: `S_IF*`).
    FileType {
        what: &'static str,
        path: &'static [u8],
        now: u32,
    },
    NoXsave,
    CpuLacks {
        missing: u64,
    },
    /// The kernel will not let this process use saved features.
    NotPermitted {
        missing: u64,
    },
    /// A thread's saved XSAVE area would make `rt_sigreturn` fault (the
    /// kernel kills the task with SIGSEGV and no word).
    BadXsave {
        tid: i32,
        fault: XsaveFault,
    },
    /// An fd number this process may not have (`RLIMIT_NOFILE` hard limit).
    FdAboveLimit {
        fd: i32,
        limit: u64,
    },
    UnsupportedFd {
        fd: i32,
        kind: u32,
        path: &'static [u8],
    },
    /// Creating the object of fd `fd` (a pipe, an eventfd, …) failed at
    /// `step`.
    Object {
        fd: i32,
        step: &'static str,
        errno: Errno,
    },
    /// Fd `fd` names an object its kind's note does not have.
    ObjectMissing {
        fd: i32,
    },
    /// Fd `fd` was on the terminal of stdio fd `stdio_fd`, which this
    /// caller gave as something that is not a terminal.
    NotOnTerminal {
        fd: i32,
        stdio_fd: i32,
    },
    /// A FIFO has bytes in it already: another process holds it.
    FifoInUse {
        path: &'static [u8],
    },
    /// A pipe above `pipe-max-size` here.
    PipeTooBig {
        fd: i32,
        size: u32,
        max: u32,
    },
    /// Fd `fd` is a copy of the caller's stdio fd `of`, which the caller
    /// did not give.
    StdioMissing {
        fd: i32,
        of: i32,
    },
    /// Socket fd `fd` could not `step` its address `addr` (a `sockaddr`;
    /// `EADDRINUSE`: taken, e.g. by the dumped process still running).
    SocketAddress {
        fd: i32,
        step: &'static str,
        addr: &'static [u8],
        errno: Errno,
    },
    /// A socket option of fd `fd` could not be set.
    SocketOption {
        fd: i32,
        level: u32,
        name: u32,
        errno: Errno,
    },
    /// The path unix socket fd `fd` is bound to holds something that is
    /// not a stale socket file.
    SocketPath {
        fd: i32,
        path: &'static [u8],
        why: &'static str,
    },
    VdsoLayout,
    Scratch {
        errno: Errno,
    },
    ProcMaps {
        errno: Errno,
    },
    ProcMapsParse {
        error: maps::MapsError,
    },
    /// `/proc/self/maps` filled the whole buffer: the list may be cut.
    ProcMapsTooLong {
        limit: usize,
    },
    FdRelocate {
        errno: Errno,
    },
    /// A value the kernel would refuse after the point of no return.
    Value {
        error: ValueError,
    },
    /// The working directory opens (`O_PATH` needs no permission) but this
    /// process cannot `fchdir` into it, as the plan would.
    CwdDenied {
        path: &'static [u8],
        errno: Errno,
    },
    /// The image's credentials must be lowered to its file's owner, but
    /// the task would keep this process's capabilities (it is not root, or
    /// its securebits `SECBIT_KEEP_CAPS`/`SECBIT_NO_SETUID_FIXUP` keep them
    /// across the switch) or its uid 0 (no `CAP_SETUID` to leave it).
    CapsKept {
        securebits: u32,
    },
    /// An image not owned by root would leave the task more than its owner
    /// has: another uid (or uid 0) in `uids`, or capabilities `caps`.
    ExceedsOwner {
        owner: u32,
        uids: [u32; 3],
        caps: u64,
        securebits: u32,
    },
    /// Taking on the task's file-access identity (to open what the image
    /// names as the task), or giving it back, failed.
    Identity {
        errno: Errno,
    },
    /// The image's brk and data sizes exceed this process's RLIMIT_DATA.
    DataLimit {
        error: ValueError,
    },
    /// The task's memory does not fit this process's or machine's limits.
    MemoryLimit {
        error: LimitError,
    },
    /// This kernel refuses a kind of area or mm setting the task had.
    MmState {
        error: MmStateError,
    },
    /// The task's pending signals do not fit in this user's signal queue.
    SigQueue {
        error: crate::plan::SigQueueError,
    },
    /// A file the task mapped executable may not be mapped so here.
    ExecDenied {
        path: &'static [u8],
        start: u64,
        errno: Errno,
    },
    /// A table of stage 1 did not fit its scratch memory (a sizing bug).
    ScratchShort {
        table: &'static str,
        items: usize,
    },
    /// The image changed, or someone waits to open it for writing, since
    /// stage 1 began ([`stable`]).
    ImageBeingWritten,
    /// A shared memory object or saved file (`objects::shmem`) could not be
    /// made: `step` failed.
    ShmemObject {
        name: &'static [u8],
        step: &'static str,
        errno: Errno,
    },
    /// An object sealed against writes has an area that would need write
    /// access (stored pages, or a shared writable mapping).
    SealedObjectArea {
        name: &'static [u8],
        start: u64,
    },
    /// A record of the SHMEM note, or an area's or fd's reference to one,
    /// is inconsistent.
    BadObject {
        object: image_format::records::StrRef,
        why: &'static str,
    },
    /// This kernel or process cannot give the POSIX timers back.
    PosixTimer {
        error: crate::posix_timers::PosixTimerError,
    },
    /// An fd the tree restorer named (`what`: its option) is not one it
    /// can be ([`tree`]).
    TreeFd {
        fd: i32,
        what: &'static str,
        why: &'static str,
    },
    /// The shared memory object `name` given at `fd` (`--shmem`) has
    /// `size` bytes, not the recorded `want`.
    GivenObjectSize {
        name: &'static [u8],
        fd: i32,
        size: u64,
        want: u64,
    },
    /// Placed fd `fd` is not what the image recorded there (`now`: its
    /// `st_mode`).
    PlacedKind {
        fd: i32,
        kind: u32,
        path: &'static [u8],
        now: u32,
    },
    /// A lazy restore cannot be made here (`crate::lazy`).
    Lazy {
        error: crate::lazy::LazyError,
    },
}

impl CheckError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CheckError::Usage => ExitCode::Usage,
            CheckError::OpenImage { .. }
            | CheckError::MapImage { .. }
            | CheckError::ImageBeingWritten
            | CheckError::ImageNotRegular { .. } => ExitCode::ImageUnreadable,
            CheckError::Rule { error } => error.exit_code(),
            CheckError::Parent { error } => error.exit_code(),
            CheckError::PosixTimer { error } => error.exit_code(),
            CheckError::Lazy { error } => error.exit_code(),
            CheckError::TreeFd { .. } => ExitCode::Usage,
            CheckError::GivenObjectSize { .. } => ExitCode::FileChanged,
            CheckError::PlacedKind { .. } => ExitCode::FileChanged,
            CheckError::Corrupt { .. }
            | CheckError::NoThread
            | CheckError::BadXsave { .. }
            | CheckError::Value { .. }
            | CheckError::ObjectMissing { .. } => ExitCode::ImageCorrupt,
            CheckError::SocketPath { .. } => ExitCode::FileChanged,
            CheckError::FileMissing { .. }
            | CheckError::FileChanged { .. }
            | CheckError::FileType { .. }
            | CheckError::CwdDenied { .. } => ExitCode::FileChanged,
            CheckError::NoXsave | CheckError::CpuLacks { .. } | CheckError::NotPermitted { .. } => {
                ExitCode::CpuFeatures
            }
            CheckError::BadObject { .. } => ExitCode::ImageCorrupt,
            CheckError::SealedObjectArea { .. } => ExitCode::Unsupported,
            CheckError::ShmemObject { .. } => ExitCode::Environment,
            CheckError::FileDeleted { .. }
            | CheckError::UnsupportedFd { .. }
            | CheckError::FdAboveLimit { .. }
            | CheckError::VdsoLayout
            | CheckError::MmState { .. } => ExitCode::Unsupported,
            CheckError::ExecDenied { .. } => ExitCode::FileChanged,
            CheckError::SigQueue { .. } => ExitCode::Environment,
            CheckError::Scratch { .. }
            | CheckError::ScratchShort { .. }
            | CheckError::ProcMaps { .. }
            | CheckError::ProcMapsParse { .. }
            | CheckError::ProcMapsTooLong { .. }
            | CheckError::FdRelocate { .. }
            | CheckError::Object { .. }
            | CheckError::NotOnTerminal { .. }
            | CheckError::FifoInUse { .. }
            | CheckError::PipeTooBig { .. }
            | CheckError::StdioMissing { .. }
            | CheckError::SocketAddress { .. }
            | CheckError::SocketOption { .. }
            | CheckError::CapsKept { .. }
            | CheckError::ExceedsOwner { .. }
            | CheckError::Identity { .. }
            | CheckError::DataLimit { .. }
            | CheckError::MemoryLimit { .. } => ExitCode::Environment,
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CheckError::Usage => write!(f, "{} (or run the image through binfmt_misc)", crate::args::USAGE),
            CheckError::OpenImage { errno } => write!(f, "cannot open the image: {errno}"),
            CheckError::MapImage { errno } => write!(f, "cannot read the image: {errno}"),
            CheckError::ImageNotRegular { now } => {
                write!(f, "the image is not a regular file: it is {}", files::file_type_name(now))
            }
            CheckError::Corrupt { error } => write!(f, "corrupt image: {error}"),
            CheckError::Parent { error } => write!(f, "{error}"),
            CheckError::Rule { error } => write!(f, "{error}"),
            CheckError::NoThread => write!(f, "corrupt image: no thread"),
            CheckError::FileMissing { what, path, errno } => {
                write!(f, "{what} {} cannot be opened: {errno}", Lossy(path))
            }
            CheckError::FileChanged { what, path } => {
                write!(f, "{what} {} changed since the dump (device, inode, size or mtime differ)", Lossy(path))
            }
            CheckError::FileType { what, path, now } => write!(
                f,
                "{what} {} changed since the dump: now {}",
                Lossy(path),
                files::file_type_name(now)
            ),
            CheckError::FileDeleted { what, path } => {
                write!(f, "{what} {} was deleted before the dump; restoring deleted files is not supported yet", Lossy(path))
            }
            CheckError::NoXsave => write!(f, "this CPU or kernel has no XSAVE; the image needs it"),
            CheckError::NotPermitted { missing } => write!(
                f,
                "the kernel does not permit this process the register-state features {missing:#x} the task used"
            ),
            CheckError::CpuLacks { missing } => {
                write!(f, "this CPU lacks register-state features {missing:#x} the task used (XCR0)")
            }
            CheckError::BadXsave { tid, fault } => {
                write!(f, "corrupt image: thread {tid}'s saved XSAVE area: {fault}")
            }
            CheckError::FdAboveLimit { fd, limit } => write!(
                f,
                "fd {fd} is not below this process's RLIMIT_NOFILE hard limit {limit}; it cannot be restored"
            ),
            CheckError::UnsupportedFd { fd, kind, path } => write!(
                f,
                "fd {fd} ({}, kind {kind}) cannot be restored by the loader yet (this kind of file, or one saved without its state)",
                Lossy(path)
            ),
            CheckError::Object { fd, step, errno } => {
                write!(f, "fd {fd}: cannot {step}: {errno}")
            }
            CheckError::NotOnTerminal { fd, stdio_fd } => write!(
                f,
                "fd {fd} was on the terminal of fd {stdio_fd}, and this caller's fd {stdio_fd} is not a terminal: run the image from a terminal"
            ),
            CheckError::FifoInUse { path } => write!(
                f,
                "FIFO {} has bytes in it already: another process holds it, so its saved bytes cannot be put back",
                Lossy(path)
            ),
            CheckError::PipeTooBig { fd, size, max } => write!(
                f,
                "fd {fd}: its pipe of {size} bytes is larger than this machine's pipe-max-size {max}"
            ),
            CheckError::StdioMissing { fd, of } => write!(
                f,
                "fd {fd} is a copy of fd {of}, which the caller did not give (it is closed); run the image with fd {of} open"
            ),
            CheckError::SocketAddress {
                fd,
                step,
                addr,
                errno,
            } => {
                let addr = crate::objects::socket::SockAddr(addr);
                if errno.0 == 98 {
                    write!(f, "fd {fd}: cannot {step} {addr}: the address is in use (EADDRINUSE: by the dumped process, still running, or by connections of a listener without SO_REUSEADDR in TIME_WAIT, which end within a minute)")
                } else {
                    write!(f, "fd {fd}: cannot {step} {addr}: {errno}")
                }
            }
            CheckError::SocketOption {
                fd,
                level,
                name,
                errno,
            } => write!(
                f,
                "fd {fd}: cannot set socket option {level}/{name}: {errno}"
            ),
            CheckError::SocketPath { fd, path, why } => write!(
                f,
                "fd {fd}: cannot bind the unix socket {} again: {why}",
                Lossy(path)
            ),
            CheckError::ObjectMissing { fd } => {
                write!(f, "corrupt image: fd {fd} names an object the image does not hold")
            }
            CheckError::VdsoLayout => {
                write!(f, "the image's [vvar]/[vdso] layout differs from this kernel's (dumped on another kernel); not supported yet")
            }
            CheckError::Scratch { errno } => write!(f, "cannot allocate scratch memory: {errno}"),
            CheckError::ProcMaps { errno } => write!(f, "cannot read /proc/self/maps: {errno}"),
            CheckError::ProcMapsParse { error } => write!(f, "{error}"),
            CheckError::ProcMapsTooLong { limit } => write!(f, "/proc/self/maps is longer than the loader's {limit}-byte buffer"),
            CheckError::FdRelocate { errno } => write!(f, "cannot move the loader's fds out of the way: {errno}"),
            CheckError::Value { error } => write!(f, "corrupt image: {error}"),
            CheckError::CwdDenied { path, errno } => write!(
                f,
                "working directory {} cannot be entered by this process: {errno}",
                Lossy(path)
            ),
            CheckError::DataLimit { error } => write!(f, "{error}"),
            CheckError::CapsKept { securebits } => write!(
                f,
                "the image's credentials must be lowered to its file's owner, but the task would keep this process's capabilities or uid 0 (securebits {securebits:#x}); run it as its owner"
            ),
            CheckError::ExceedsOwner { owner, uids, caps, securebits } => write!(
                f,
                "the image file belongs to uid {owner}, but the task would run with uids {} {} {} and capabilities {caps:#x} (securebits {securebits:#x}): more than its owner has; run it as its owner",
                uids[0], uids[1], uids[2]
            ),
            CheckError::Identity { errno } => write!(
                f,
                "cannot take on the task's file-access identity to open its files (or give it back): {errno}"
            ),
            CheckError::MemoryLimit { error } => write!(f, "{error}"),
            CheckError::MmState { error } => write!(f, "{error}"),
            CheckError::SigQueue { error } => write!(f, "{error}"),
            CheckError::ExecDenied { path, start, errno } => write!(
                f,
                "mapped file {} cannot be mapped executable here (its area at {start:#x}): {errno}; a noexec mount or a security module forbids it",
                Lossy(path)
            ),
            CheckError::ScratchShort { table, items } => write!(
                f,
                "internal error: stage 1's scratch memory has no room for {items} entries of its {table} table"
            ),
            CheckError::ShmemObject { name, step, errno } => write!(
                f,
                "cannot make {} again: {step}: {errno}",
                Lossy(name)
            ),
            CheckError::SealedObjectArea { name, start } => write!(
                f,
                "memfd {} is sealed against writes, but its area at {start:#x} needs write access; not restorable",
                Lossy(name)
            ),
            CheckError::BadObject { object, why } => write!(
                f,
                "corrupt image: shared memory object (name at {}+{}): {why}",
                object.offset, object.len
            ),
            CheckError::PosixTimer { error } => write!(f, "{error}"),
            CheckError::TreeFd { fd, what, why } => write!(f, "fd {fd} of {what}: {why}"),
            CheckError::GivenObjectSize { name, fd, size, want } => write!(
                f,
                "shared memory object {} given at fd {fd} has {size} bytes, the image {want}",
                Lossy(name)
            ),
            CheckError::PlacedKind { fd, kind, path, now } => write!(
                f,
                "placed fd {fd} is not what the image had there ({}, kind {kind}): it is {}",
                Lossy(path),
                files::file_type_name(now & crate::sys::S_IFMT)
            ),
            CheckError::Lazy { error } => write!(f, "{error}"),
            CheckError::ImageBeingWritten => write!(
                f,
                "the image is being written by another process (it changed, or a writer waits for it, since it was checked); run it once it is complete"
            ),
        }
    }
}

/// Everything stage 1 prepared: the planner's input, and what the loader
/// needs besides.
pub struct Checked {
    pub name: &'static [u8],
    pub image: Image<'static>,
    pub input: PlanInput<'static>,
    /// Scratch for the window search (`vmas + maps + 4` ranges).
    pub range_scratch: &'static mut [Range],
    /// How the image is held still until the plan has loaded it.
    pub hold: stable::Hold,
    /// The image's parents (an incremental image), held still likewise.
    pub chain: crate::parent::Chain,
}

impl Checked {
    /// Whether the image is still what was checked ([`stable`]): the
    /// loader's last question before the point of no return.
    pub fn still_same(&self, os: &impl Os) -> Result<(), CheckError> {
        stable::still_same(os, self.input.image_fd, &self.hold)?;
        self.chain.still_same(os)
    }
}

/// The VMA and fd records, read from the notes once.
struct Notes {
    vmas: Records<'static, VmaRecord>,
    fds: Records<'static, FdRecord>,
}

/// Run every check; on success everything the plan needs is open and known.
/// `args`: the loader's options (a tree restore's fds).
pub fn check(startup: &Startup, args: &LoaderArgs) -> Result<Checked, CheckError> {
    let os = kernel_os();
    let (name, fd) = image::open_image(&os, startup)?;
    check_fd_with(&os, name, fd, args)
}

/// [`check`] of the image open at `fd` (`name`: for messages), as a direct
/// run.
pub fn check_fd(os: &impl Os, name: &'static [u8], fd: i32) -> Result<Checked, CheckError> {
    check_fd_with(os, name, fd, &LoaderArgs::default())
}

/// [`check_fd`] with the loader's options `args`.
pub fn check_fd_with(
    os: &impl Os,
    name: &'static [u8],
    fd: i32,
    args: &LoaderArgs,
) -> Result<Checked, CheckError> {
    let mapped = image::map_image(os, name, fd)?;
    check_mapped(os, mapped, args)
}

/// The task's userfaultfd and the server's socket for a lazy restore of
/// the image `mapped` with its `chain`, or why it cannot be made here.
fn prepare_lazy(
    mapped: &image::MappedImage,
    chain: &crate::parent::Chain,
) -> Result<crate::plan::lazy::LazyFill, crate::lazy::LazyError> {
    let fill = crate::lazy::prepare()?;
    // The server reads the image and its parents after the task runs:
    // only while a lease holds each still (and tells when a writer comes).
    let unleased = if matches!(mapped.hold, stable::Hold::Lease) {
        chain
            .unleased_parent()
            .map(|path| crate::lazy::LazyError::NoParentLease { path })
    } else {
        Some(crate::lazy::LazyError::NoLease)
    };
    match unleased {
        Some(error) => {
            crate::lazy::abandon(fill);
            Err(error)
        }
        None => Ok(fill),
    }
}

/// Every check of an image already open and mapped.
fn check_mapped(
    os: &impl Os,
    mapped: image::MappedImage,
    args: &LoaderArgs,
) -> Result<Checked, CheckError> {
    let name = mapped.name;
    let image = image::parse_unverified(mapped.bytes)?;
    // Lazy when asked, or, neither lazy nor eager asked, when it wins: a
    // page server would have much to fill. Its segments are verified
    // later, by the server, or here if the restore is eager after all.
    let lazy_wanted = args.lazy
        || (args.auto_lazy() && image::served_bytes(&image)? >= crate::plan::lazy::AUTO_LAZY_MIN);
    if lazy_wanted {
        image::verify(&image, image::Segments::ButServed)?;
    } else {
        image
            .verify_segments()
            .map_err(|error| CheckError::Corrupt { error })?;
    }
    // The parents of an incremental image, each checked like the image.
    let mut chain =
        crate::parent::open_chain(os, name, mapped.fd, image, mapped.owner.0, lazy_wanted)?;
    // What the image alone decides, first: the dumper ran the same rules
    // before it killed the process.
    let mmap_min_addr = limits::read_mmap_min_addr(os);
    rules::check_image(&image, mmap_min_addr).map_err(|error| CheckError::Rule { error })?;
    let corrupt = |error| CheckError::Corrupt { error };
    let notes = Notes {
        vmas: image.vmas().map_err(corrupt)?,
        fds: image.fds().map_err(corrupt)?,
    };

    let (threads, xfeatures) = cpu::check_threads(os, &image)?;

    let record_notes = limits::RecordNotes::find(&image)?;
    let tables = Tables {
        vmas: usize::try_from(notes.vmas.len()).unwrap_or(usize::MAX),
        // One page load per segment, or per piece of one the parents hold.
        segments: chain.load_count()?,
        fds: usize::try_from(notes.fds.len()).unwrap_or(usize::MAX),
        pending: limits::count(&record_notes.pending, usize::MAX),
        sigactions: limits::count(&record_notes.sigactions, scratch::MAX_SIGACTIONS),
        rlimits: limits::count(&record_notes.rlimits, scratch::MAX_RLIMITS),
        itimers: limits::count(&record_notes.itimers, scratch::MAX_ITIMERS),
        epoll_items: image
            .records::<image_format::records::EpollItemRecord>()
            .map_or(0, |r| usize::try_from(r.len()).unwrap_or(usize::MAX)),
        shmem: image
            .records::<image_format::records::ShmemRecord>()
            .map_or(0, |r| usize::try_from(r.len()).unwrap_or(usize::MAX)),
    };
    let mut scratch = Scratch::map(&tables)?;
    let status = status::Status::read(os);
    let records = limits::process_records(os, &image, &record_notes, &status, &mut scratch)?;
    let posix_timers = posix_timers::check_posix_timers(os, &image)?;

    // Fd numbers the task uses; everything the loader opens goes above.
    let loader_fds = fds::place_loader_fds(os, &notes.fds, mapped.fd, args.report.unwrap_or(2))?;
    let base = loader_fds.base;
    chain.place_fds(os, loader_fds.image_fd, base)?;
    if args.tree {
        tree::check_tree_fds(os, args, &notes.fds)?;
    } else {
        fds::warn_shared_in_tree(os, name, &notes.fds);
    }

    let owner = credentials::image_owner(os, name, loader_fds.image_fd, mapped.owner);
    let owner = credentials::owner_group(os, name, owner);
    // The credentials first: every path the image names is opened as the
    // task will be (`credentials::as_task`), never with this process's.
    let privilege = credentials::Privilege::of(os);
    let (creds, no_new_privs) =
        credentials::decide_creds(os, name, &image, owner, &privilege, &status)?;
    // The other threads get their tids back only with set_tid (privileged).
    // Whether a tid is free is found by creating the thread, before the
    // point of no return (`crate::threads`, which also says when they get
    // new ones): a look now would race.
    let set_tids = privilege.privileged && threads.len() > 1;
    let ((vmas, target_vdso), exe_fd, cwd_fd, (fd_moves, keep_fds), late_seals) =
        credentials::as_task(os, creds.as_ref(), || {
            // Objects first: areas and fds use them.
            let objects = crate::objects::shmem::create_objects(
                os,
                name,
                &image,
                base,
                if args.tree { args.shmem() } else { &[] },
                &mut scratch,
            )?;
            let mapped_files = files::open_mapped_files(
                os,
                name,
                &image,
                notes.vmas.clone(),
                objects.fds,
                base,
                &mut scratch,
            )?;
            let exe_fd = files::open_exe(os, name, &image, privilege.privileged, base)?;
            let cwd_fd = files::open_cwd(os, name, &image, base)?;
            let fds = fds::reopen_fds(
                os,
                name,
                &image,
                &notes.fds,
                objects.fds,
                base,
                args.tree.then(|| args.placed()),
                &mut scratch,
            )?;
            Ok((mapped_files, exe_fd, cwd_fd, fds, objects.late_seals))
        })?;
    // The terminals the task resumes on, and their SIGWINCH.
    let terminals = objects::terminal::setups(os, &image, &mut scratch, tables.fds)?;
    let pending = objects::terminal::with_sigwinch(records.pending, terminals, &mut scratch)?;
    let epoll_adds = crate::objects::epoll::adds(os, name, &image, &notes.fds, &mut scratch)?;
    let timerfd_arms = crate::objects::timerfd::arms(os, name, &image, &notes.fds, &mut scratch)?;
    let inotify_drains = crate::objects::inotify::drains(&image, &notes.fds, &mut scratch)?;
    let loads = page_loads(&chain, &mut scratch)?;
    files::check_object_areas(&image, vmas, loads)?;
    warn_read_only_shared(os, name, vmas, loads);
    limits::lower_rlimits(os, name, records.rlimits);
    let gadgets = gadgets::check_gadgets(os, name, &image, vmas);

    // Last, so every mapping made above is in the list.
    let loader = layout::read_loader_layout(os, &target_vdso, &mut scratch)?;
    let range_scratch =
        scratch.take::<Range>("window search", vmas.len() + loader.maps.len() + 4)?;

    let process = image.process();
    // A lazy restore with nothing to leave to a server is an eager one;
    // one not asked for that cannot be made here is eager too. Either
    // way, what was left to the server is verified now.
    let lazy = if lazy_wanted && crate::plan::lazy::any_lazy(vmas, loads) {
        match prepare_lazy(&mapped, &chain) {
            Ok(fill) => Some(fill),
            Err(error) if args.lazy => return Err(CheckError::Lazy { error }),
            Err(_) => None,
        }
    } else {
        None
    };
    let plan_serves_all = lazy.is_some() && image::served_agrees(&image, vmas, loads)?;
    if lazy_wanted && !plan_serves_all {
        image::verify(&image, image::Segments::Served)?;
        chain.verify_parents(Some(image::Segments::Served))?;
    }
    let input = PlanInput {
        image_fd: loader_fds.image_fd,
        fill_uffd: (lazy.is_none() && crate::plan::wants_fill_copies(vmas, loads))
            .then(crate::sys::uffd::open_for_fill)
            .flatten(),
        lazy,
        vmas,
        loads,
        loader_maps: loader.maps,
        loader_stack: loader.stack,
        loader_vdso: loader.vdso,
        target_vdso,
        mm: image.mm(),
        auxv: image.auxv(),
        exe_fd,
        sigactions: records.sigactions,
        rlimits: records.rlimits,
        personality: process.personality,
        umask: process.umask,
        cwd_fd,
        fd_moves,
        keep_fds,
        terminals,
        err_fd: loader_fds.err_fd,
        barrier: args.barrier.filter(|_| args.tree),
        epoll_adds,
        inotify_drains,
        timerfd_arms,
        threads,
        set_tids,
        xfeatures,
        pid: os.getpid(),
        pending,
        itimers: records.itimers,
        posix_timers,
        late_seals,
        creds,
        no_new_privs,
        gadgets,
        mmap_min_addr,
        mdwe: mm_state::mdwe_bits(process.flags),
        trampoline: arch::trampoline_code(),
    };
    let checked = Checked {
        name,
        image,
        input,
        range_scratch,
        hold: mapped.hold,
        chain,
    };
    check_memory(os, &checked, privilege.caps, &status)?;
    Ok(checked)
}

/// Where each segment's stored pages go (for an incremental image, the
/// pieces its parents hold, from their fds).
fn page_loads(
    chain: &crate::parent::Chain,
    scratch: &mut Scratch,
) -> Result<&'static [PageLoad], CheckError> {
    let n = chain.load_count()?;
    let loads = scratch.take::<PageLoad>("page loads", n)?;
    let filled = chain.fill_loads(loads)?;
    // Every segment has its load: a short table would restore no pages.
    if filled != n {
        return Err(CheckError::ScratchShort {
            table: "page loads",
            items: n,
        });
    }
    Ok(loads)
}

/// What the plan cannot give back as it was, said once.
fn warn_read_only_shared(os: &impl Os, name: &[u8], vmas: &[TargetVma], loads: &[PageLoad]) {
    let shared_read_only_private = vmas
        .iter()
        .filter(|v| {
            let gets_pages = loads
                .iter()
                .any(|l| l.vaddr < v.end && v.start < l.vaddr.saturating_add(l.len));
            v.fd >= 0
                && v.flags & vma_flags::MAYSHARE != 0
                && v.flags & vma_flags::SHARED == 0
                && !crate::plan::maps_read_only_shared(v, gets_pages)
        })
        .count();
    if shared_read_only_private > 0 {
        os.report(
            name,
            format_args!(
                "warning: {shared_read_only_private} read-only shared file mapping(s) hold stored pages; mapped private (later changes to the file are not seen)"
            ),
        );
    }
}

/// The kernel's limits on the areas the plan will map (with the window it
/// will run from), then the kernel's support for the area kinds they need.
fn check_memory(
    os: &impl Os,
    checked: &Checked,
    caps: u64,
    status: &status::Status,
) -> Result<(), CheckError> {
    let input = &checked.input;
    let window = crate::plan::WindowLayout::for_input(input).size;
    let locked = input.vmas.iter().any(|v| v.flags & vma_flags::LOCKED != 0);
    let facts = memlimits::read_facts(caps, locked);
    memlimits::check(input.vmas, input.loads, window, &facts)
        .map_err(|error| CheckError::MemoryLimit { error })?;
    if let Some(errno) = mm_state::thp_advice_refused(input.vmas) {
        os.report(
            checked.name,
            format_args!(
                "warning: this kernel refuses MADV_HUGEPAGE ({errno}): the task's huge-page advice (VmFlags hg/nh) is not restored"
            ),
        );
    }
    mm_state::probe_kernel(input.vmas, checked.image.process().flags)
        .map_err(|error| CheckError::MmState { error })?;
    files::check_exec_mappings(&checked.image, input.vmas)?;
    let sigq = status.text().and_then(crate::plan::parse_sigq);
    crate::plan::check_sigqueue(input.pending, input.rlimits, sigq)
        .map_err(|error| CheckError::SigQueue { error })?;
    posix_timers::fit_sigqueue(input.posix_timers.len(), input.pending, input.rlimits, sigq)
        .map_err(|error| CheckError::PosixTimer { error })?;
    // The capabilities the task ends with: its recorded ones when the
    // credentials are switched, else this process's.
    let caps = input
        .creds
        .map_or_else(|| os.effective_caps(), |c| c.cap_effective);
    crate::posix_timers::check_alarm_capability(input.posix_timers, caps)
        .map_err(|error| CheckError::PosixTimer { error })
}

/// Set the task's mm-wide memory settings (THP disabled, KSM merging) on
/// this process, whose mm the task takes over: the loader calls it once
/// [`check`] passed, before planning. Not part of [`check`], which changes
/// nothing and may run in another program.
pub fn apply_mm_settings(checked: &Checked) -> Result<(), CheckError> {
    mm_state::apply_mm(checked.image.process().flags).map_err(|error| CheckError::MmState { error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::records::vma_kind;

    #[test]
    fn shared_file_fd_mode() {
        use image_format::records::prot;
        let shared = vma_flags::SHARED | vma_flags::MAYSHARE;
        // Writable shared: read-write, required.
        assert_eq!(
            shared_file_access(shared, prot::READ | prot::WRITE),
            (true, true)
        );
        // Read-only shared of a writable fd: read-write when allowed.
        assert_eq!(
            shared_file_access(shared | vma_flags::MAYWRITE, prot::READ),
            (true, false)
        );
        // Read-only fd, or a private mapping: read-only.
        assert_eq!(shared_file_access(shared, prot::READ), (false, false));
        assert_eq!(
            shared_file_access(vma_flags::MAYWRITE, prot::READ | prot::WRITE),
            (false, false)
        );
    }

    /// AVX's place in the standard format (CPUID 0xD, 2): 256 bytes at 576.
    fn end(i: u32) -> u32 {
        match i {
            2 => 576 + 256,
            9 => 2688 + 8,
            _ => 0,
        }
    }

    fn area(len: usize, xstate_bv: u64) -> Vec<u8> {
        let mut a = std::vec![0u8; len];
        a[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        a[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
        a
    }

    #[test]
    fn a_sound_area_passes() {
        assert_eq!(validate_xsave(&area(832, 0x7), 0x7, 0xffff, end), Ok(()));
        assert_eq!(validate_xsave(&area(576, 0x3), 0x207, 0xffbf, end), Ok(()));
    }

    #[test]
    fn what_xrstor_would_fault_on_is_named() {
        assert_eq!(
            validate_xsave(&area(576, 0x3)[..500], 0x7, 0xffff, end),
            Err(XsaveFault::TooShort { len: 500 })
        );
        let mut a = area(832, 0x7);
        a[520..528].copy_from_slice(&0x8000_0000_0000_0007u64.to_le_bytes());
        assert_eq!(
            validate_xsave(&a, 0x7, 0xffff, end),
            Err(XsaveFault::XcompBv {
                value: 0x8000_0000_0000_0007
            })
        );
        let mut a = area(832, 0x7);
        a[512 + 63] = 1;
        assert_eq!(
            validate_xsave(&a, 0x7, 0xffff, end),
            Err(XsaveFault::HeaderReserved)
        );
        let mut a = area(832, 0x7);
        a[24..28].copy_from_slice(&0x1_1f80u32.to_le_bytes());
        assert_eq!(
            validate_xsave(&a, 0x7, 0xffff, end),
            Err(XsaveFault::Mxcsr {
                mxcsr: 0x1_1f80,
                mask: 0xffff
            })
        );
        // DAZ (bit 6) is outside the default mask of CPUs without it.
        let mut a = area(832, 0x7);
        a[24..28].copy_from_slice(&0x1fc0u32.to_le_bytes());
        assert!(matches!(
            validate_xsave(&a, 0x7, 0xffbf, end),
            Err(XsaveFault::Mxcsr { .. })
        ));
        assert_eq!(
            validate_xsave(&area(832, 0x207), 0x7, 0xffff, end),
            Err(XsaveFault::Feature { bit: 9 })
        );
        assert_eq!(
            validate_xsave(&area(700, 0x7), 0x7, 0xffff, end),
            Err(XsaveFault::Truncated {
                bit: 2,
                end: 832,
                len: 700
            })
        );
    }

    fn code_vma(start: u64, prot: u32, fd: i32) -> TargetVma {
        TargetVma {
            start,
            end: start + 0x2000,
            pgoff: 0x1000,
            prot,
            kind: if fd >= 0 {
                vma_kind::FILE
            } else {
                vma_kind::ANON
            },
            fd,
            ..Default::default()
        }
    }

    #[test]
    fn gadget_bytes_come_from_stored_pages_then_the_file() {
        use image_format::records::prot;
        let file: Vec<u8> = (0..0x3000u32).map(|i| i.to_le_bytes()[0]).collect();
        let read_file = |fd: i32, off: u64, buf: &mut [u8]| {
            assert_eq!(fd, 7);
            let off = usize::try_from(off).unwrap();
            buf.copy_from_slice(&file[off..off + buf.len()]);
        };
        let vmas = [
            code_vma(0x10000, prot::READ | prot::EXEC, 7),
            code_vma(0x20000, prot::READ, 7),
            code_vma(0x30000, prot::READ | prot::EXEC, -1),
        ];
        let glibc: &[u8] = RT_SIGRETURN[1];
        let stored = [(0x30ffcu64, &[0x0f, 0x05, 0xc3][..]), (0x31000, glibc)];
        let mut out = [0u8; 16];

        // From the file at pgoff + (addr - start).
        let n = target_code(0x10010, &vmas, stored.into_iter(), read_file, &mut out).unwrap();
        assert_eq!(n, 16);
        assert_eq!(out[0], 0x10);
        // Not executable, or outside every VMA.
        assert!(target_code(0x20010, &vmas, stored.into_iter(), read_file, &mut out).is_none());
        assert!(target_code(0x40000, &vmas, stored.into_iter(), read_file, &mut out).is_none());
        // Stored pages, across two segments; unstored anonymous bytes are 0.
        let n = target_code(0x30ffc, &vmas, stored.into_iter(), read_file, &mut out).unwrap();
        assert!(out[..n].starts_with(&[0x0f, 0x05, 0xc3, 0, 0x48, 0xc7, 0xc0]));
        let n = target_code(0x31000, &vmas, stored.into_iter(), read_file, &mut out).unwrap();
        assert!(RT_SIGRETURN.iter().any(|p| out[..n].starts_with(p)));
        // Clipped at the VMA's end: a pattern cannot run past it.
        let n = target_code(0x31ffd, &vmas, stored.into_iter(), read_file, &mut out).unwrap();
        assert_eq!(n, 3);
    }
}
