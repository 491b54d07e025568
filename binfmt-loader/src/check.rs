//! Stage 1: read and check everything, change nothing.
//!
//! Opens and maps the image, parses and verifies it (including every
//! segment's CRC), checks that the files the task mapped or had open are the
//! same files, that this CPU has the task's register-state features and
//! that the loader can restore what the image holds (whether the threads'
//! tids are free is found by creating the threads: `crate::threads`); opens everything the
//! plan will need (so the plan only uses fds); reads the loader's own
//! layout. Every failure is a [`CheckError`] with the [`ExitCode`] of its
//! class; nothing irreversible has happened when one is returned.

use core::fmt;

use image_format::records::{
    fd_flags, fd_kind, vma_flags, vma_kind, CredsRecord, FdRecord, FileId, ItimerRecord,
    PendingSignalRecord, RlimitRecord, SigactionRecord,
};
use image_format::{Image, ImageError};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::creds;
use crate::maps::{self, MapKind, MapsEntry};
use crate::memlimits::{self, LimitError};
use crate::message::{self, Lossy};
use crate::mm_state::{self, MmStateError};
use crate::plan::{FdMove, PageLoad, PlanInput, Range, TargetVma, ThreadInput, VdsoBlock};
use crate::rules::{self, RuleError};
use crate::sys::{self, startup::Startup, CPath, Errno};
use crate::validate::{self, ValueError};
use crate::{arch, frame, ExitCode};

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
}

impl CheckError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CheckError::Usage => ExitCode::Usage,
            CheckError::OpenImage { .. }
            | CheckError::MapImage { .. }
            | CheckError::ImageNotRegular { .. } => ExitCode::ImageUnreadable,
            CheckError::Rule { error } => error.exit_code(),
            CheckError::Corrupt { .. }
            | CheckError::NoThread
            | CheckError::BadXsave { .. }
            | CheckError::Value { .. } => ExitCode::ImageCorrupt,
            CheckError::FileMissing { .. }
            | CheckError::FileChanged { .. }
            | CheckError::FileType { .. }
            | CheckError::CwdDenied { .. } => ExitCode::FileChanged,
            CheckError::NoXsave | CheckError::CpuLacks { .. } | CheckError::NotPermitted { .. } => {
                ExitCode::CpuFeatures
            }
            CheckError::FileDeleted { .. }
            | CheckError::UnsupportedFd { .. }
            | CheckError::FdAboveLimit { .. }
            | CheckError::VdsoLayout
            | CheckError::MmState { .. } => ExitCode::Unsupported,
            CheckError::Scratch { .. }
            | CheckError::ProcMaps { .. }
            | CheckError::ProcMapsParse { .. }
            | CheckError::ProcMapsTooLong { .. }
            | CheckError::FdRelocate { .. }
            | CheckError::CapsKept { .. }
            | CheckError::DataLimit { .. }
            | CheckError::MemoryLimit { .. } => ExitCode::Environment,
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CheckError::Usage => write!(f, "usage: crimg-loader IMAGE [--same-ids] (or run the image through binfmt_misc)"),
            CheckError::OpenImage { errno } => write!(f, "cannot open the image: {errno}"),
            CheckError::MapImage { errno } => write!(f, "cannot read the image: {errno}"),
            CheckError::ImageNotRegular { now } => {
                write!(f, "the image is not a regular file: it is {}", file_type_name(now))
            }
            CheckError::Corrupt { error } => write!(f, "corrupt image: {error}"),
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
                file_type_name(now)
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
                "fd {fd} ({}, kind {kind}) cannot be restored by the loader yet; restore it with crrestore-tree",
                Lossy(path)
            ),
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
            CheckError::MemoryLimit { error } => write!(f, "{error}"),
            CheckError::MmState { error } => write!(f, "{error}"),
        }
    }
}

/// A bump allocator over zeroed scratch memory (no heap in the loader).
struct Scratch {
    rest: &'static mut [u8],
}

impl Scratch {
    fn take<T: FromBytes + IntoBytes + KnownLayout + Immutable>(
        &mut self,
        n: usize,
    ) -> &'static mut [T] {
        let rest = core::mem::take(&mut self.rest);
        let pad = (rest.as_ptr() as usize).wrapping_neg() & (core::mem::align_of::<T>() - 1);
        let (_, rest) = rest.split_at_mut(pad.min(rest.len()));
        match <[T]>::mut_from_prefix_with_elems(rest, n) {
            Ok((items, rest)) => {
                self.rest = rest;
                items
            }
            // Sized by `scratch_bytes`, so this cannot happen; an empty slice
            // makes the caller's loop stop short instead of panicking.
            Err(_) => <[T]>::mut_from_prefix_with_elems(&mut [], 0)
                .map(|(s, _)| s)
                .unwrap_or_default(),
        }
    }
}

/// A file stage 1 opened for VMAs: its identity, whether the fd is
/// read-write, and the fd.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct OpenedFile {
    dev: u64,
    ino: u64,
    rw: u32,
    fd: i32,
}

/// Everything stage 1 prepared; `input()` makes the planner's view of it.
pub struct Checked {
    pub name: &'static [u8],
    pub image: Image<'static>,
    pub image_fd: i32,
    vmas: &'static [TargetVma],
    loads: &'static [PageLoad],
    loader_maps: &'static [Range],
    loader_stack: Option<Range>,
    loader_vdso: VdsoBlock,
    target_vdso: VdsoBlock,
    exe_fd: Option<i32>,
    sigactions: &'static [SigactionRecord],
    rlimits: &'static [RlimitRecord],
    cwd_fd: Option<i32>,
    fd_moves: &'static [FdMove],
    keep_fds: &'static [i32],
    err_fd: Option<i32>,
    /// Leader first; `nthreads` of them are valid.
    threads: &'static mut [ThreadInput<'static>],
    nthreads: usize,
    set_tids: bool,
    xfeatures: u64,
    pid: i32,
    pending: &'static [PendingSignalRecord],
    itimers: &'static [ItimerRecord],
    creds: Option<CredsRecord>,
    no_new_privs: bool,
    /// The recorded gadgets are where they say, with the right bytes.
    gadgets_ok: bool,
    pub mmap_min_addr: u64,
    /// Scratch for the window search (`vmas + maps + 4` ranges).
    pub range_scratch: &'static mut [Range],
}

impl Checked {
    pub fn input(&self) -> PlanInput<'_> {
        let g = self.image.gadgets();
        PlanInput {
            image_fd: self.image_fd,
            vmas: self.vmas,
            loads: self.loads,
            loader_maps: self.loader_maps,
            loader_stack: self.loader_stack,
            loader_vdso: self.loader_vdso,
            target_vdso: self.target_vdso,
            mm: self.image.mm(),
            auxv: self.image.auxv(),
            exe_fd: self.exe_fd,
            sigactions: self.sigactions,
            rlimits: self.rlimits,
            personality: self.image.process().personality,
            umask: self.image.process().umask,
            cwd_fd: self.cwd_fd,
            fd_moves: self.fd_moves,
            keep_fds: self.keep_fds,
            err_fd: self.err_fd,
            threads: &self.threads[..self.nthreads],
            set_tids: self.set_tids,
            xfeatures: self.xfeatures,
            pid: self.pid,
            pending: self.pending,
            itimers: self.itimers,
            creds: self.creds,
            no_new_privs: self.no_new_privs,
            gadgets: self.gadgets_ok.then_some(g),
            mmap_min_addr: self.mmap_min_addr,
            mdwe: mm_state::mdwe_bits(self.image.process().flags),
            trampoline: arch::trampoline_code(),
        }
    }
}

/// Open a file and move its fd to `>= base`, clear of every fd number the
/// task uses, so the plan's `dup3`s never clobber an fd it still needs.
fn open_high(path: &[u8], flags: u32, base: i32) -> Result<i32, Errno> {
    let cpath = CPath::new(path).ok_or(Errno::ENOENT)?;
    let fd = sys::openat(sys::AT_FDCWD, &cpath, flags | sys::O_CLOEXEC)?;
    if fd >= base {
        return Ok(fd);
    }
    let high = sys::dup_above(fd, base);
    let _ = sys::close(fd);
    high
}

fn same_file(st: &sys::Stat, id: &FileId) -> bool {
    st.dev == id.dev
        && st.ino == id.ino
        && st.size == id.size
        && st.mtime_sec == id.mtime_sec
        && st.mtime_nsec == id.mtime_nsec
}

/// The image to run: its display name and an open fd.
fn open_image(startup: &Startup) -> Result<(&'static [u8], i32), CheckError> {
    if let Some(fd) = startup.aux(sys::startup::AT_EXECFD) {
        // binfmt_misc `O` flag: the kernel opened it; argv[1] is its path.
        let name = startup.arg(1).unwrap_or(b"(AT_EXECFD)");
        return Ok((name, fd as i32));
    }
    let name = startup.arg(1).ok_or(CheckError::Usage)?;
    let fd = open_regular(name)?;
    Ok((name, fd))
}

/// Open `path` for reading only if it is a regular file: first `O_PATH`
/// (which opens nothing: a FIFO would wait for a writer, a device could
/// act), then, the type known, the same inode again through
/// `/proc/self/fd` (no window for another file to take the path).
fn open_regular(path: &[u8]) -> Result<i32, CheckError> {
    let open_error = |errno| CheckError::OpenImage { errno };
    let cpath = CPath::new(path).ok_or(open_error(Errno::ENOENT))?;
    let at =
        sys::openat(sys::AT_FDCWD, &cpath, sys::O_PATH | sys::O_CLOEXEC).map_err(open_error)?;
    let opened = sys::fstat(at).map_err(open_error).and_then(|st| {
        let now = st.mode & sys::S_IFMT;
        if now != sys::S_IFREG {
            return Err(CheckError::ImageNotRegular { now });
        }
        let mut again = message::Line::default();
        let _ = fmt::Write::write_fmt(&mut again, format_args!("/proc/self/fd/{at}"));
        let again = CPath::new(again.as_bytes()).ok_or(open_error(Errno::ENOENT))?;
        sys::openat(sys::AT_FDCWD, &again, sys::O_RDONLY | sys::O_CLOEXEC).map_err(open_error)
    });
    let _ = sys::close(at);
    opened
}

/// The image's name for messages, known before anything else can fail.
pub fn image_name(startup: &Startup) -> &'static [u8] {
    startup.arg(1).unwrap_or(b"crimg-loader")
}

pub(crate) fn read_small_file(path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
    let p = CPath::new(path).ok_or(Errno::ENOENT)?;
    let fd = sys::openat(sys::AT_FDCWD, &p, sys::O_RDONLY | sys::O_CLOEXEC)?;
    let mut n = 0;
    let r = loop {
        match sys::read(fd, &mut buf[n..]) {
            Ok(0) => break Ok(n),
            Ok(k) => {
                n += k;
                if n == buf.len() {
                    break Ok(n);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = sys::close(fd);
    r
}

fn warn(name: &[u8], what: fmt::Arguments<'_>) {
    message::report(name, format_args!("warning: {what}"));
}

/// Run every check; on success everything the plan needs is open and known.
pub fn check(startup: &Startup) -> Result<Checked, CheckError> {
    let (name, raw_fd) = open_image(startup)?;
    let st = sys::fstat(raw_fd).map_err(|errno| CheckError::MapImage { errno })?;
    let image_owner = (st.uid, st.gid);
    let bytes = sys::map_file_readonly(raw_fd, st.size as usize)
        .map_err(|errno| CheckError::MapImage { errno })?;
    let image = Image::parse(bytes).map_err(|error| CheckError::Corrupt { error })?;
    image
        .verify_segments()
        .map_err(|error| CheckError::Corrupt { error })?;
    let corrupt = |error| CheckError::Corrupt { error };
    // What the image alone decides, first: the dumper ran the same rules
    // before it killed the process.
    let mmap_min_addr = read_mmap_min_addr();
    rules::check_image(&image, mmap_min_addr).map_err(|error| CheckError::Rule { error })?;

    // Threads, leader first (as many as the rules allow).
    let threads = sys::map_table::<ThreadInput<'static>>(image.thread_count() as usize)
        .map_err(|errno| CheckError::Scratch { errno })?;
    let mut nthreads = 0;
    for (slot, tv) in threads.iter_mut().zip(image.threads()) {
        let tv = tv.map_err(corrupt)?;
        *slot = ThreadInput {
            record: tv.record,
            regs: tv.regs(),
            xsave: tv.xsave,
        };
        nthreads += 1;
    }
    if nthreads == 0 {
        return Err(CheckError::NoThread);
    }
    let threads_found = &mut threads[..nthreads];

    // CPU: every feature the saved state holds must be enabled here.
    let xcr0 = arch::xcr0().ok_or(CheckError::NoXsave)?;
    let mut bv = 0;
    for t in threads_found.iter() {
        bv |= frame::xstate_bv(t.xsave).unwrap_or(0);
    }
    if bv & !xcr0 != 0 {
        return Err(CheckError::CpuLacks {
            missing: bv & !xcr0,
        });
    }
    // ... and permitted to this process. Dynamic features (AMX tile data)
    // must be asked for, as the task once did; a kernel without the
    // permission API has no dynamic features, so XCR0 is the answer there.
    let mut permitted = sys::xcomp_perm().unwrap_or(xcr0);
    let wanted = bv & !permitted;
    if wanted != 0 {
        let highest = 63 - wanted.leading_zeros();
        if sys::request_xcomp_perm(highest).is_ok() {
            permitted = sys::xcomp_perm().unwrap_or(permitted);
        }
        if bv & !permitted != 0 {
            return Err(CheckError::NotPermitted {
                missing: bv & !permitted,
            });
        }
    }
    let features = xcr0 & permitted;
    let user_size = permitted_xsave_size(features);
    let mxcsr_mask = arch::mxcsr_mask();
    for t in threads_found.iter_mut() {
        t.xsave = cut_xsave(t.xsave, user_size);
        validate_xsave(t.xsave, features, mxcsr_mask, arch::xsave_component_end).map_err(
            |fault| CheckError::BadXsave {
                tid: t.record.tid,
                fault,
            },
        )?;
    }

    // Scratch memory for the planner's tables.
    let nvmas = image.vmas().map_err(corrupt)?.len() as usize;
    let nfds = image.fds().map_err(corrupt)?.len() as usize;
    let nsegs = image.segment_count() as usize;
    let npending = image
        .records::<PendingSignalRecord>()
        .map_err(corrupt)?
        .len() as usize;
    const MAX_MAPS: usize = 512;
    let bytes_needed = nvmas * (40 + 16 + core::mem::size_of::<OpenedFile>())
        + nsegs * 24
        + MAX_MAPS * (24 + 16)
        + nfds * (12 + 4)
        + npending * 136
        + 64 * 40
        + 16 * 24
        + 3 * 40
        + 64 * 8
        + 4096;
    let scratch_mem =
        sys::map_scratch(bytes_needed).map_err(|errno| CheckError::Scratch { errno })?;
    let mut scratch = Scratch { rest: scratch_mem };

    let sigactions = copy_records::<SigactionRecord>(&image, &mut scratch, 64)?;
    let rlimits = copy_records::<RlimitRecord>(&image, &mut scratch, 16)?;
    let itimers = copy_records::<ItimerRecord>(&image, &mut scratch, 3)?;
    let pending = copy_records::<PendingSignalRecord>(&image, &mut scratch, npending)?;
    // PR_SET_MM_MAP checks the brk and data sizes against RLIMIT_DATA
    // before the plan sets the image's own limits: this process's.
    let (data_limit, _) = sys::get_rlimit(RLIMIT_DATA).unwrap_or((u64::MAX, u64::MAX));
    validate::check_mm_data_limit(&image.mm(), data_limit)
        .map_err(|error| CheckError::DataLimit { error })?;

    // Fd numbers the task uses; everything the loader opens goes above.
    // Each must be one this process may have, or its dup3 would fail after
    // the point of no return.
    let (nofile_cur, nofile_max) =
        sys::get_rlimit(RLIMIT_NOFILE).map_err(|errno| CheckError::FdRelocate { errno })?;
    // Stage 1 opens one fd per mapped file and open file above the task's
    // highest fd: the soft limit must not stop it. The plan's rlimit ops
    // set the image's limit back later (an image without an RLIMIT_NOFILE
    // record keeps the raised one).
    if nofile_cur < nofile_max {
        sys::set_rlimit(RLIMIT_NOFILE, nofile_max, nofile_max)
            .map_err(|errno| CheckError::FdRelocate { errno })?;
    }
    let mut max_fd = 2;
    // (Negative fd numbers are refused by the rules.)
    for f in image.fds().map_err(corrupt)? {
        if f.fd as u64 >= nofile_max {
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
    let image_fd = if raw_fd >= base {
        raw_fd
    } else {
        let fd = sys::dup_above(raw_fd, base).map_err(|errno| CheckError::FdRelocate { errno })?;
        let _ = sys::close(raw_fd);
        fd
    };

    // The caller's stderr, apart from every fd the task will have: the
    // plan's failure messages must reach the caller, not what the task has
    // at fd 2. No stderr: messages go to fd 2 as it is then.
    let err_fd = sys::dup_above(2, base).ok();

    // VMAs and the files they map.
    let vmas = scratch.take::<TargetVma>(nvmas);
    let mut target_vdso = VdsoBlock::default();
    // One entry per file opened, so VMAs of one file share one fd.
    let opened = scratch.take::<OpenedFile>(nvmas);
    let mut nopened = 0;
    for (slot, v) in vmas.iter_mut().zip(image.vmas().map_err(corrupt)?) {
        let mut fd = -1;
        let has_file = v.kind == vma_kind::FILE;
        if has_file {
            let path = image.string(v.path).map_err(corrupt)?;
            if v.flags & vma_flags::FILE_DELETED != 0 {
                return Err(CheckError::FileDeleted {
                    what: "mapped file",
                    path,
                });
            }
            let (rw, must_rw) = shared_file_access(v.flags, v.prot);
            let known = opened[..nopened]
                .iter()
                .find(|o| o.dev == v.file.dev && o.ino == v.file.ino && o.rw == u32::from(rw));
            fd = match known {
                Some(o) => o.fd,
                None => {
                    let flags = if rw { sys::O_RDWR } else { sys::O_RDONLY };
                    let mut opened_rw = rw;
                    let (f, st) = match open_typed("mapped file", path, flags, sys::S_IFREG, base) {
                        // Read-write only for VM_MAYWRITE: a file this caller
                        // may not open so (EPERM, EACCES, ETXTBSY, EROFS) is
                        // mapped as it may, and said.
                        Err(CheckError::FileMissing { errno, .. })
                            if rw && !must_rw && matches!(errno.0, 1 | 13 | 26 | 30) =>
                        {
                            warn(
                                name,
                                format_args!(
                                    "{} cannot be opened read-write here ({errno}); its shared mapping at {:#x} is restored without VM_MAYWRITE (mprotect(PROT_WRITE) on it will fail)",
                                    Lossy(path),
                                    v.start
                                ),
                            );
                            opened_rw = false;
                            open_typed("mapped file", path, sys::O_RDONLY, sys::S_IFREG, base)?
                        }
                        r => r?,
                    };
                    if !same_file(&st, &v.file) {
                        return Err(CheckError::FileChanged {
                            what: "mapped file",
                            path,
                        });
                    }
                    if let Some(slot) = opened.get_mut(nopened) {
                        *slot = OpenedFile {
                            dev: v.file.dev,
                            ino: v.file.ino,
                            rw: u32::from(opened_rw),
                            fd: f,
                        };
                        nopened += 1;
                    }
                    f
                }
            };
        }
        if matches!(
            v.kind,
            vma_kind::VVAR | vma_kind::VVAR_VCLOCK | vma_kind::VDSO
        ) {
            target_vdso.push(Range {
                start: v.start,
                end: v.end,
            });
        }
        *slot = TargetVma {
            start: v.start,
            end: v.end,
            pgoff: v.pgoff,
            prot: v.prot,
            flags: v.flags,
            kind: v.kind,
            fd,
        };
    }

    let loads = scratch.take::<PageLoad>(nsegs);
    for (slot, s) in loads.iter_mut().zip(image.segments()) {
        *slot = PageLoad {
            vaddr: s.vaddr,
            offset: s.offset,
            len: s.len,
        };
    }

    // What the plan cannot give back as it was, said once each.
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
        warn(
            name,
            format_args!(
                "{shared_read_only_private} read-only shared file mapping(s) hold stored pages; mapped private (later changes to the file are not seen)"
            ),
        );
    }

    let process = image.process();
    let (uids, gids) = sys::get_ids();
    // What the kernel will check, not euid 0: root in a container may lack
    // these, and would then fail clone3 or PR_SET_MM_MAP after the point of
    // no return.
    let caps = sys::effective_caps();
    let has = |cap: u32| caps & (1 << cap) != 0;
    let privileged = has(CAP_CHECKPOINT_RESTORE) || has(CAP_SYS_ADMIN);
    let may_set_ids = has(CAP_SETUID) && has(CAP_SETGID);

    // The other threads get their tids back only with set_tid (privileged).
    // Whether a tid is free is found by creating the thread, before the
    // point of no return (`crate::threads`, which also says when they get
    // new ones): a look now would race.
    let set_tids = privileged && nthreads > 1;

    // The exe link: only a privileged loader can set it.
    let exe_fd = if privileged {
        let path = image.string(process.exe).map_err(corrupt)?;
        match open_typed("executable", path, sys::O_RDONLY, sys::S_IFREG, base) {
            Ok((fd, st)) if same_file(&st, &process.exe_id) => Some(fd),
            _ => {
                warn(
                    name,
                    format_args!(
                        "executable {} missing or changed; /proc/PID/exe not restored",
                        Lossy(path)
                    ),
                );
                None
            }
        }
    } else {
        warn(
            name,
            format_args!(
                "not privileged: /proc/PID/exe not restored (setting it needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN); it names the loader"
            ),
        );
        None
    };

    let cwd = image.string(process.cwd).map_err(corrupt)?;
    let cwd_fd = if cwd.is_empty() {
        None
    } else {
        let fd = open_high(cwd, sys::O_PATH | sys::O_DIRECTORY, base).map_err(|errno| {
            CheckError::FileMissing {
                what: "working directory",
                path: cwd,
                errno,
            }
        })?;
        // The same directory, not another one at the same path (a
        // directory's size and mtime change with its entries: not compared).
        let id = process.cwd_id;
        if id.ino != 0 && sys::fstat(fd).is_ok_and(|st| st.dev != id.dev || st.ino != id.ino) {
            return Err(CheckError::FileChanged {
                what: "working directory",
                path: cwd,
            });
        }
        // `O_PATH` needs no search permission; the plan's fchdir does.
        enter_and_return(fd).map_err(|errno| CheckError::CwdDenied { path: cwd, errno })?;
        Some(fd)
    };
    let root = image.string(process.root).map_err(corrupt)?;
    if !root.is_empty() && root != b"/" {
        warn(
            name,
            format_args!("root directory {} not restored (chroot)", Lossy(root)),
        );
    }

    // Fds: regular files, directories and plain character devices are
    // reopened; stdio that was a terminal, pipe or socket is inherited.
    let fd_moves = scratch.take::<FdMove>(nfds);
    let keep_fds = scratch.take::<i32>(nfds);
    let (mut nmoves, mut nkeep) = (0, 0);
    for f in image.fds().map_err(corrupt)? {
        let path = image.string(f.path).map_err(corrupt)?;
        if rules::fd_is_inherited(f.fd, f.kind) {
            keep_fds[nkeep] = f.fd;
            nkeep += 1;
            continue;
        }
        let from = reopen_fd(&f, path, base)?;
        fd_moves[nmoves] = FdMove {
            from,
            to: f.fd,
            cloexec: u32::from(f.flags & fd_flags::CLOEXEC != 0),
        };
        nmoves += 1;
    }
    // Two fds of one regular file may have shared one open file
    // description (dup, fork): each is reopened on its own, so they no
    // longer share an offset. The image cannot tell dups from two opens.
    let regular = || {
        image
            .fds()
            .into_iter()
            .flatten()
            .filter(|f| f.kind == fd_kind::REGULAR)
    };
    let same_file_pair = regular().enumerate().find_map(|(i, a)| {
        regular()
            .skip(i + 1)
            .find(|b| b.file.dev == a.file.dev && b.file.ino == a.file.ino)
            .map(|b| (a.fd, b.fd))
    });
    if let Some((a, b)) = same_file_pair {
        warn(
            name,
            format_args!(
                "fds {a} and {b} open the same file; if they shared one open file description (dup), they now have separate offsets"
            ),
        );
    }

    // Signal state, limits, timers.
    let mut lowered = 0;
    for r in rlimits.iter_mut() {
        if let Ok((_, max_now)) = sys::get_rlimit(r.resource) {
            // Hard limits cannot be raised without CAP_SYS_RESOURCE.
            if r.max > max_now {
                r.max = max_now;
                lowered += 1;
            }
            r.cur = r.cur.min(r.max);
        }
    }
    if lowered > 0 {
        warn(
            name,
            format_args!(
                "{lowered} hard resource limit(s) are higher than this process may set; lowered"
            ),
        );
    }

    // This process's capabilities and groups: what the task will have,
    // but for what the plan's setgroups/setresuid change.
    let mut status = [0u8; 4096];
    let now_creds = read_small_file(b"/proc/self/status", &mut status)
        .ok()
        .and_then(|n| creds::parse_status(&status[..n], sys::securebits()));
    // Never more than the image file's owner has, as with a setuid file:
    // the image is untrusted input, and its owner wrote (or could write)
    // every byte of it.
    // A loader that cannot set ids leaves the task its caller's own
    // credentials (said below); those it must not hand over when they
    // exceed the owner's (uid 0, capabilities).
    let recorded = image.creds();
    let bounded = creds::limit_to_owner(recorded, image_owner.0, image_owner.1, (uids, gids));
    let image_creds = if bounded.lowered && !may_set_ids {
        recorded
    } else {
        bounded.creds
    };
    if let (true, Some(c)) = (bounded.lowered, bounded.creds) {
        // The owner has no capabilities: the task must not keep this
        // process's, nor its uid 0 when the switch is not possible.
        let securebits = sys::securebits();
        let permitted = now_creds.map_or(caps, |now| now.cap_permitted);
        let stays_root = !may_set_ids && uids.contains(&0);
        if stays_root || creds::switch_keeps_caps(&c, uids, permitted, securebits) {
            return Err(CheckError::CapsKept { securebits });
        }
    }
    if bounded.lowered && may_set_ids {
        let (owner_uid, owner_gid) = image_owner;
        match recorded {
            Some(r) => warn(
                name,
                format_args!(
                    "the image file belongs to uid {owner_uid} gid {owner_gid}: credentials lowered to theirs (the image says uid {} gid {}), no capabilities",
                    r.uid[0], r.gid[0]
                ),
            ),
            None => warn(
                name,
                format_args!(
                    "the image file belongs to uid {owner_uid} gid {owner_gid} and records no credentials: credentials lowered to theirs, no capabilities"
                ),
            ),
        }
    }
    let creds = match image_creds {
        Some(c)
            if c.uid[..3] != uids[..]
                || c.gid[..3] != gids[..]
                || now_creds.is_some_and(|now| creds::groups_differ(&c, &now)) =>
        {
            if may_set_ids {
                Some(c)
            } else {
                warn(
                    name,
                    format_args!(
                        "credentials not changed (that needs CAP_SETUID and CAP_SETGID): running as uid {}, the task had uid {}",
                        uids[0], c.uid[0]
                    ),
                );
                None
            }
        }
        _ => None,
    };
    if let (Some(c), Some(now)) = (image_creds, now_creds) {
        let gap = creds::creds_gap(&c, &now, uids, creds.is_some());
        if !gap.is_empty() {
            warn(
                name,
                format_args!(
                    "the task's {gap} differ from what the loader can give it; not restored"
                ),
            );
        }
    }
    // Set last in every thread, after the credentials (it needs no
    // privilege, and would stop nothing the plan does before it).
    let no_new_privs = image_creds.is_some_and(|c| c.no_new_privs != 0);
    // The image does not record whether the task was dumpable; a
    // setresuid that changes the ids resets it to fs.suid_dumpable, and
    // the loader leaves it so.

    let g = image.gadgets();
    // The threads jump to the gadgets with the window gone: they must be
    // executable code with the recorded bytes once the VMAs are rebuilt,
    // or the task dies there with nothing left to say why.
    let mut gadgets_ok = g.syscall_ret != 0 && g.rt_sigreturn != 0;
    if gadgets_ok {
        let stored = || image.segments().map(|s| (s.vaddr, image.segment_bytes(&s)));
        let read_file = |fd: i32, off: u64, buf: &mut [u8]| {
            let mut n = 0;
            while n < buf.len() {
                match sys::pread(fd, &mut buf[n..], off + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        };
        for (what, addr, patterns) in [
            ("syscall; ret", g.syscall_ret, &SYSCALL_RET[..]),
            ("rt_sigreturn", g.rt_sigreturn, &RT_SIGRETURN[..]),
        ] {
            let mut code = [0u8; 16];
            let fits = target_code(addr, vmas, stored(), read_file, &mut code)
                .is_some_and(|n| patterns.iter().any(|p| code[..n].starts_with(p)));
            if !fits {
                warn(
                    name,
                    format_args!(
                        "the recorded {what} gadget at {addr:#x} is not that code in executable memory; not used"
                    ),
                );
                gadgets_ok = false;
            }
        }
    }
    // Multi-threaded tasks leave the window through the gadgets too (the
    // plan counts the threads out with FUTEX_WAKE_OP made from outside it).
    if !gadgets_ok {
        warn(name, format_args!("the image records no gadgets: the loader's bootstrap window stays mapped in the task"));
    }

    // Last, so every mapping made above is in the list.
    let mut text = [0u8; 32 * 1024];
    let n = read_small_file(b"/proc/self/maps", &mut text)
        .map_err(|errno| CheckError::ProcMaps { errno })?;
    // A full buffer may have cut the list: a mapping the window search
    // does not know of would be unmapped or overlapped after the point of
    // no return.
    if n == text.len() {
        return Err(CheckError::ProcMapsTooLong { limit: text.len() });
    }
    let mut parsed = [MapsEntry::default(); MAX_MAPS];
    let count = maps::parse_maps(&text[..n], &mut parsed)
        .map_err(|error| CheckError::ProcMapsParse { error })?;
    let loader_maps = scratch.take::<Range>(count);
    let mut loader_vdso = VdsoBlock::default();
    let mut loader_stack = None;
    let mut nmaps = 0;
    for e in &parsed[..count] {
        match e.kind {
            MapKind::Vsyscall => continue,
            MapKind::Stack => {
                loader_stack = Some(Range {
                    start: e.start,
                    end: e.end,
                });
            }
            MapKind::Vvar | MapKind::VvarVclock | MapKind::Vdso => {
                loader_vdso.push(Range {
                    start: e.start,
                    end: e.end,
                });
            }
            _ => {}
        }
        loader_maps[nmaps] = Range {
            start: e.start,
            end: e.end,
        };
        nmaps += 1;
    }
    if !target_vdso.parts().is_empty() && !loader_vdso.same_shape(&target_vdso) {
        return Err(CheckError::VdsoLayout);
    }
    let range_scratch = scratch.take::<Range>(nvmas + nmaps + 4);

    let checked = Checked {
        name,
        image,
        image_fd,
        vmas,
        loads,
        loader_maps: &loader_maps[..nmaps],
        loader_stack,
        loader_vdso,
        target_vdso,
        exe_fd,
        sigactions,
        rlimits,
        cwd_fd,
        fd_moves: &fd_moves[..nmoves],
        keep_fds: &keep_fds[..nkeep],
        err_fd,
        threads,
        nthreads,
        set_tids,
        xfeatures: features,
        pid: sys::getpid(),
        pending,
        itimers,
        creds,
        no_new_privs,
        gadgets_ok,
        mmap_min_addr,
        range_scratch,
    };
    check_memory(&checked, caps)?;
    Ok(checked)
}

/// The kernel's limits on the areas the plan will map (with the window it
/// will run from), then the kernel's support for the area kinds they need.
fn check_memory(checked: &Checked, caps: u64) -> Result<(), CheckError> {
    let window = crate::plan::WindowLayout::for_input(&checked.input()).size;
    let facts = memlimits::read_facts(caps);
    memlimits::check(checked.vmas, checked.loads, window, &facts)
        .map_err(|error| CheckError::MemoryLimit { error })?;
    if let Some(errno) = mm_state::thp_advice_refused(checked.vmas) {
        warn(
            checked.name,
            format_args!(
                "this kernel refuses MADV_HUGEPAGE ({errno}): the task's huge-page advice (VmFlags hg/nh) is not restored"
            ),
        );
    }
    mm_state::probe_kernel(checked.vmas, checked.image.process().flags)
        .map_err(|error| CheckError::MmState { error })
}

/// Set the task's mm-wide memory settings (THP disabled, KSM merging) on
/// this process, whose mm the task takes over: the loader calls it once
/// [`check`] passed, before planning. Not part of [`check`], which changes
/// nothing and may run in another program.
pub fn apply_mm_settings(checked: &Checked) -> Result<(), CheckError> {
    mm_state::apply_mm(checked.image.process().flags).map_err(|error| CheckError::MmState { error })
}

/// How a mapped file is opened for area `flags`/`prot`: `(read-write,
/// read-write required)`. A shared mapping that is writable needs a
/// writable fd; one that is not, but had `VM_MAYWRITE` (the task's fd was
/// writable, so it could `mprotect(PROT_WRITE)`), gets one too when this
/// caller may open the file so.
pub fn shared_file_access(flags: u32, prot: u32) -> (bool, bool) {
    let shared = flags & vma_flags::SHARED != 0;
    let must = shared && prot & image_format::records::prot::WRITE != 0;
    (must || (shared && flags & vma_flags::MAYWRITE != 0), must)
}

/// Capability numbers (`linux/capability.h`).
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// `RLIMIT_NOFILE`.
const RLIMIT_NOFILE: u32 = 7;
/// `RLIMIT_DATA`.
const RLIMIT_DATA: u32 = 2;

/// The most threads an image may have: the reader's and the writer's
/// limit (the loader's table of them is sized from the image, and the
/// window from the table).
pub const MAX_THREADS: usize = image_format::read::limits::MAX_THREADS as usize;

/// The size of the XSAVE frame `rt_sigreturn` restores in full for
/// `features` (XCR0 ∩ what this process is permitted). A larger frame (e.g.
/// sized for AMX it was not granted) gets only the legacy SSE state back.
pub fn permitted_xsave_size(features: u64) -> usize {
    (2..63)
        .filter(|i| features & (1 << i) != 0)
        .map(arch::xsave_component_end)
        .max()
        .unwrap_or(0)
        .max(frame::XSAVE_MIN as u32) as usize
}

/// A thread's saved XSAVE area cut to `user_size`: the standard format puts
/// components at fixed offsets, so the permitted prefix holds all of them.
pub fn cut_xsave(xsave: &[u8], user_size: usize) -> &[u8] {
    let len = xsave
        .len()
        .min(user_size)
        .max(frame::XSAVE_MIN.min(xsave.len()));
    &xsave[..len]
}

/// What is wrong with a saved XSAVE area (see [`validate_xsave`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsaveFault {
    /// Shorter than the legacy region and the XSAVE header.
    TooShort { len: usize },
    /// `XCOMP_BV` is not zero (standard format has none).
    XcompBv { value: u64 },
    /// The header's reserved bytes 16..64 are not zero.
    HeaderReserved,
    /// MXCSR sets bits this CPU's MXCSR_MASK does not allow.
    Mxcsr { mxcsr: u32, mask: u32 },
    /// `XSTATE_BV` names a component not enabled and permitted here.
    Feature { bit: u32 },
    /// A component in `XSTATE_BV` ends past the saved area.
    Truncated { bit: u32, end: u32, len: usize },
}

impl fmt::Display for XsaveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            XsaveFault::TooShort { len } => {
                write!(f, "{len} bytes, shorter than legacy area + header")
            }
            XsaveFault::XcompBv { value } => write!(f, "XCOMP_BV is {value:#x}, not 0"),
            XsaveFault::HeaderReserved => write!(f, "reserved header bytes are not zero"),
            XsaveFault::Mxcsr { mxcsr, mask } => {
                write!(
                    f,
                    "MXCSR {mxcsr:#x} sets bits outside this CPU's MXCSR_MASK {mask:#x}"
                )
            }
            XsaveFault::Feature { bit } => {
                write!(
                    f,
                    "XSTATE_BV holds component {bit}, not enabled and permitted here"
                )
            }
            XsaveFault::Truncated { bit, end, len } => write!(
                f,
                "component {bit} ends at byte {end}, past the {len} bytes saved"
            ),
        }
    }
}

/// Check a standard-format XSAVE area the way XRSTOR will (a #GP in
/// `rt_sigreturn` kills the task silently): `XCOMP_BV` zero, the header's
/// reserved bytes zero, MXCSR within `mxcsr_mask`, and every component in
/// `XSTATE_BV` among `features` and inside the area (`component_end(i)`:
/// where component `i` ends, CPUID leaf 0xD).
pub fn validate_xsave(
    xsave: &[u8],
    features: u64,
    mxcsr_mask: u32,
    component_end: impl Fn(u32) -> u32,
) -> Result<(), XsaveFault> {
    use image_format::elf::XSAVE_HEADER_OFFSET as HDR;
    let too_short = XsaveFault::TooShort { len: xsave.len() };
    let header = xsave.get(HDR..HDR + 64).ok_or(too_short)?;
    let u64_at = |b: &[u8], off: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(w)
    };
    let xstate_bv = u64_at(header, 0);
    let xcomp_bv = u64_at(header, 8);
    if xcomp_bv != 0 {
        return Err(XsaveFault::XcompBv { value: xcomp_bv });
    }
    if header[16..].iter().any(|&b| b != 0) {
        return Err(XsaveFault::HeaderReserved);
    }
    let mxcsr = u32::from_le_bytes([xsave[24], xsave[25], xsave[26], xsave[27]]);
    if mxcsr & !mxcsr_mask != 0 {
        return Err(XsaveFault::Mxcsr {
            mxcsr,
            mask: mxcsr_mask,
        });
    }
    for bit in 0..64 {
        if xstate_bv & (1 << bit) == 0 {
            continue;
        }
        if features & (1 << bit) == 0 {
            return Err(XsaveFault::Feature { bit });
        }
        // x87 and SSE live in the legacy region, present by the length check.
        if bit >= 2 {
            let end = component_end(bit);
            if end as usize > xsave.len() {
                return Err(XsaveFault::Truncated {
                    bit,
                    end,
                    len: xsave.len(),
                });
            }
        }
    }
    Ok(())
}

/// `syscall; ret`.
pub const SYSCALL_RET: [&[u8]; 1] = [&[0x0f, 0x05, 0xc3]];
/// `mov $15, %eax; syscall`, and glibc's `__restore_rt` form `mov $15,
/// %rax; syscall`.
pub const RT_SIGRETURN: [&[u8]; 2] = [
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];

/// The bytes the restored task will have at `addr` (up to `out.len()`, not
/// past its VMA): the stored pages (`stored`: address and bytes) where they
/// cover it, else the mapped file's (`read_file(fd, offset, buf)`), else
/// zero. `None` unless `addr` lies in an executable VMA the plan builds.
pub fn target_code<'a>(
    addr: u64,
    vmas: &[TargetVma],
    stored: impl Iterator<Item = (u64, &'a [u8])>,
    mut read_file: impl FnMut(i32, u64, &mut [u8]),
    out: &mut [u8],
) -> Option<usize> {
    let v = vmas.iter().find(|v| v.start <= addr && addr < v.end)?;
    let special = matches!(
        v.kind,
        vma_kind::VDSO | vma_kind::VVAR | vma_kind::VVAR_VCLOCK | vma_kind::VSYSCALL
    );
    if special || v.prot & image_format::records::prot::EXEC == 0 {
        return None;
    }
    let n = (out.len() as u64).min(v.end - addr) as usize;
    let out = &mut out[..n];
    out.fill(0);
    if v.fd >= 0 {
        read_file(v.fd, v.pgoff.checked_add(addr - v.start)?, out);
    }
    let end = addr + n as u64;
    for (vaddr, bytes) in stored {
        let from = vaddr.max(addr);
        let to = vaddr.saturating_add(bytes.len() as u64).min(end);
        if from < to {
            out[(from - addr) as usize..(to - addr) as usize]
                .copy_from_slice(&bytes[(from - vaddr) as usize..(to - vaddr) as usize]);
        }
    }
    Some(n)
}

/// `vm.mmap_min_addr`: the lowest address `mmap` and `PR_SET_MM_MAP`
/// accept (65536 when unreadable, the usual value).
fn read_mmap_min_addr() -> u64 {
    let mut buf = [0u8; 32];
    if let Ok(n) = read_small_file(b"/proc/sys/vm/mmap_min_addr", &mut buf) {
        let v = buf[..n]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .fold(0u64, |a, c| a * 10 + u64::from(c - b'0'));
        if v > 0 {
            return v;
        }
    }
    65536
}

fn copy_records<T: image_format::records::Record>(
    image: &Image<'static>,
    scratch: &mut Scratch,
    max: usize,
) -> Result<&'static mut [T], CheckError> {
    let recs = image
        .records::<T>()
        .map_err(|error| CheckError::Corrupt { error })?;
    let n = (recs.len() as usize).min(max);
    let out = scratch.take::<T>(n);
    for (slot, r) in out.iter_mut().zip(recs) {
        *slot = r;
    }
    Ok(out)
}

/// The name of a file type (`st_mode & S_IFMT`) for messages.
fn file_type_name(t: u32) -> &'static str {
    match t {
        sys::S_IFREG => "a regular file",
        sys::S_IFDIR => "a directory",
        sys::S_IFCHR => "a character device",
        sys::S_IFBLK => "a block device",
        sys::S_IFIFO => "a FIFO",
        sys::S_IFLNK => "a symbolic link",
        sys::S_IFSOCK => "a socket",
        _ => "an unknown file type",
    }
}

/// The type of what `path` names now (through an `O_PATH` fd, which opens
/// nothing: no FIFO rendezvous, no device open).
fn file_type_at(path: &[u8]) -> Option<u32> {
    let cpath = CPath::new(path)?;
    let fd = sys::openat(sys::AT_FDCWD, &cpath, sys::O_PATH | sys::O_CLOEXEC).ok()?;
    let st = sys::fstat(fd);
    let _ = sys::close(fd);
    st.ok().map(|st| st.mode & sys::S_IFMT)
}

/// Open a file the image names, expecting file type `want` (`S_IF*`), with
/// `O_NONBLOCK | O_NOCTTY` so that stage 1 can neither block (a path that
/// is now a FIFO waits forever for a writer) nor take a controlling
/// terminal; then the status flags go back to `flags` (the recorded ones).
fn open_typed(
    what: &'static str,
    path: &'static [u8],
    flags: u32,
    want: u32,
    base: i32,
) -> Result<(i32, sys::Stat), CheckError> {
    let missing = |errno| CheckError::FileMissing { what, path, errno };
    let fd = match open_high(path, flags | sys::O_NONBLOCK | sys::O_NOCTTY, base) {
        Ok(fd) => fd,
        Err(errno) => {
            // A FIFO without a reader refuses a non-blocking writer (ENXIO),
            // a socket refuses any open: say what the path is now.
            return Err(match file_type_at(path) {
                Some(now) if now != want => CheckError::FileType { what, path, now },
                _ => missing(errno),
            });
        }
    };
    let checked = sys::fstat(fd).map_err(missing).and_then(|st| {
        let now = st.mode & sys::S_IFMT;
        if now != want {
            return Err(CheckError::FileType { what, path, now });
        }
        sys::set_status_flags(fd, flags).map_err(missing)?;
        Ok(st)
    });
    match checked {
        Ok(st) => Ok((fd, st)),
        Err(e) => {
            let _ = sys::close(fd);
            Err(e)
        }
    }
}

/// Whether this process can `fchdir` into `dir`, as the plan will (with
/// the same credentials: they change last): tried, then the old working
/// directory is entered again (nothing of this process's sees it, the
/// image and every file were opened by absolute path or fd).
fn enter_and_return(dir: i32) -> Result<(), Errno> {
    let here = CPath::new(b".").ok_or(Errno::ENOENT)?;
    let old = sys::openat(
        sys::AT_FDCWD,
        &here,
        sys::O_PATH | sys::O_DIRECTORY | sys::O_CLOEXEC,
    );
    let entered = sys::fchdir(dir);
    if let Ok(old) = old {
        if entered.is_ok() {
            let _ = sys::fchdir(old);
        }
        let _ = sys::close(old);
    }
    entered
}

/// Open an fd's file again as the task had it, at its offset.
fn reopen_fd(f: &FdRecord, path: &'static [u8], base: i32) -> Result<i32, CheckError> {
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
    let (fd, st) = open_typed("open file", path, flags, want, base)?;
    let kind_ok = match f.kind {
        fd_kind::REGULAR => st.mode & sys::S_IFMT == sys::S_IFREG,
        fd_kind::DIRECTORY => st.mode & sys::S_IFMT == sys::S_IFDIR,
        _ => st.mode & sys::S_IFMT == sys::S_IFCHR,
    };
    // Open files may have grown since (a log); device and inode must match.
    let same =
        kind_ok && (f.kind == fd_kind::CHAR || (st.dev == f.file.dev && st.ino == f.file.ino));
    if !same {
        return Err(CheckError::FileChanged {
            what: "open file",
            path,
        });
    }
    if f.kind == fd_kind::REGULAR {
        sys::seek_to(fd, f.pos).map_err(|errno| CheckError::FileMissing {
            what: "open file",
            path,
            errno,
        })?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let file: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
        let read_file = |fd: i32, off: u64, buf: &mut [u8]| {
            assert_eq!(fd, 7);
            let off = off as usize;
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
