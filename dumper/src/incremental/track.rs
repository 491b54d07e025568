//! Write tracking for incremental dumps: which pages a task wrote since
//! its last dump, from the kernel (`PAGEMAP_SCAN` with `PAGE_IS_WRITTEN`
//! over areas registered with a userfaultfd in async write-protect mode;
//! soft-dirty is not built into the kernels crimg runs on).
//!
//! The uffd must be the task's (a uffd tracks the mm that made it): the
//! dump makes it by injecting `userfaultfd()` into the stopped task, takes
//! a copy with `pidfd_getfd` and closes the task's (the task keeps no
//! extra fd). Once the dump is published, still with the task stopped,
//! every private anonymous area is registered (`UFFDIO_REGISTER_MODE_WP`)
//! and write-protected, and the uffd goes to its [`holder`]. A later
//! `--parent` dump takes the uffd from the holder and trusts what it
//! reports only when its parent is the image that protected it
//! ([`holder::Identity`]); per area, only where the kernel says the area
//! is registered (`PM_SCAN_CHECK_WPASYNC`: an area made or moved since is
//! not, and is compared page by page instead).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use image_format::records::{vma_flags, vma_kind, GadgetsRecord};
use image_writer::model::VmaState;

use super::holder::{self, Holder, Identity, NO_IDENTITY};
use super::sys;
use crate::inject::{self, Borrowed, Gadgets, InjectError};

/// Why write tracking could not be set up or kept.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("pid {pid}: write tracking: {what}: {source}")]
    Io {
        pid: i32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("pid {pid}: write tracking: {what}")]
    Unsupported { pid: i32, what: &'static str },
}

/// `UFFD_USER_MODE_ONLY`: what an unprivileged task may make.
const UFFD_USER_MODE_ONLY: u64 = 1;

/// Whether area `v` is tracked: private anonymous memory.
pub(crate) fn tracked_area(v: &VmaState) -> bool {
    matches!(
        v.record.kind,
        vma_kind::ANON | vma_kind::HEAP | vma_kind::STACK
    ) && v.record.flags & (vma_flags::SHARED | vma_flags::MAYSHARE) == 0
}

/// Write tracking of one process during a dump.
pub struct Tracking {
    pid: i32,
    start_time: u64,
    uffd: OwnedFd,
    holder: Option<Holder>,
    /// What the uffd reports are the writes since the parent's dump.
    trusted: bool,
}

impl Tracking {
    /// The process's tracking: its holder's uffd, or (`create`: the task
    /// runs on after the dump) a new one made in the task (stopped), else
    /// none. `parent`: the identity of the dump's parent image.
    pub fn start(
        pid: i32,
        start_time: u64,
        gadgets: &GadgetsRecord,
        vmas: &[VmaState],
        parent: Option<&Identity>,
        create: bool,
    ) -> Result<Option<Tracking>, TrackError> {
        let io = |what| move |source| TrackError::Io { pid, what, source };
        if let Some(mut h) = Holder::connect(pid, start_time).map_err(io("the holder"))? {
            let (id, uffd) = h.take().map_err(io("the holder's uffd"))?;
            let trusted = id != NO_IDENTITY && parent == Some(&id);
            return Ok(Some(Tracking {
                pid,
                start_time,
                uffd,
                holder: Some(h),
                trusted,
            }));
        }
        if !create {
            return Ok(None);
        }
        let uffd = make_uffd(pid, gadgets, vmas, false)?;
        sys::enable_wp_async(uffd.as_fd()).map_err(io("UFFDIO_API with WP_ASYNC"))?;
        Ok(Some(Tracking {
            pid,
            start_time,
            uffd,
            holder: None,
            trusted: false,
        }))
    }

    /// The tracked process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the writes it reports are those since the parent's dump.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// The areas registered for write tracking now (`VmFlags` `uw` in
    /// smaps: an area made since, or moved by `mremap`, which drops the
    /// registration, is not).
    pub fn registered_areas(&self) -> Vec<(u64, u64)> {
        std::fs::read_to_string(format!("/proc/{}/smaps", self.pid))
            .ok()
            .and_then(|t| crate::procfs::smaps::parse(&t).ok())
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e.has_flag("uw"))
                    .map(|e| (e.start, e.end))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The written ranges of `[start, end)` (one area registered for
    /// tracking): `None` when not trusted, or the scan fails.
    pub fn written(&self, pagemap: &File, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        if !self.trusted {
            return None;
        }
        crate::sys::pagemap_scan::written(pagemap, start, end).ok()
    }

    /// Once the image of identity `id` is published, with the task still
    /// stopped: protect every tracked area from now on and leave the uffd
    /// with the holder (a new one when there was none), tracking from `id`.
    pub fn rearm(mut self, vmas: &[VmaState], id: &Identity) -> Result<(), TrackError> {
        let pid = self.pid;
        let io = |what| move |source| TrackError::Io { pid, what, source };
        if let Some(h) = &mut self.holder {
            h.set(&NO_IDENTITY)
                .map_err(io("clearing the holder's identity"))?;
        }
        for v in vmas.iter().filter(|v| tracked_area(v)) {
            let (start, len) = (v.record.start, v.record.end - v.record.start);
            // An area the kernel will not register (EINVAL) stays
            // untracked: it is compared at the next dump.
            if sys::register_wp(self.uffd.as_fd(), start, len).is_ok() {
                sys::write_protect(self.uffd.as_fd(), start, len)
                    .map_err(io("UFFDIO_WRITEPROTECT"))?;
            }
        }
        match &mut self.holder {
            Some(h) => h.set(id).map_err(io("setting the holder's identity")),
            None => holder::spawn(&self.uffd, pid, self.start_time, id)
                .map_err(io("starting the holder")),
        }
    }
}

/// A userfaultfd of the task `pid` (stopped), made by an injected
/// `userfaultfd()` in its leader, copied here and closed there.
/// `kernel_faults`: it must also report faults in kernel mode (a `read()`
/// into a protected buffer), which a task without `CAP_SYS_PTRACE` may not
/// ask for (`vm.unprivileged_userfaultfd` 0): then it is refused (EPERM),
/// not made for user-mode faults only.
pub(crate) fn make_uffd(
    pid: i32,
    gadgets: &GadgetsRecord,
    vmas: &[VmaState],
    kernel_faults: bool,
) -> Result<OwnedFd, TrackError> {
    let io = |what| move |source| TrackError::Io { pid, what, source };
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(io("/proc/PID/mem"))?;
    let gadgets = Gadgets::for_task(pid, gadgets)?;
    let regs = crate::sys::ptrace::get_regs(pid).map_err(io("PTRACE_GETREGSET"))?;
    let scratch = inject::scratch_below(regs.rsp);
    let fits = vmas.iter().any(|v| {
        let rw = image_format::records::prot::READ | image_format::records::prot::WRITE;
        tracked_area(v)
            && v.record.prot & rw == rw
            && v.record.start <= scratch
            && regs.rsp <= v.record.end
    });
    if !fits {
        return Err(TrackError::Unsupported {
            pid,
            what: "the leader's stack has no room for an injected syscall",
        });
    }
    let read_u64 = |addr: u64| {
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let temporary_mask = inject::uses_temporary_sigmask(&regs, read_u64);
    let pidfd = crate::sys::fds::pidfd_open(pid).map_err(io("pidfd_open"))?;
    let mut b = Borrowed::begin(pid, pid, &mem, gadgets, scratch, temporary_mask)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let nr = libc::SYS_userfaultfd as u64;
    let mut fd = b.syscall(nr, [flags, 0, 0, 0, 0, 0])?;
    if fd == -i64::from(libc::EPERM) && !kernel_faults {
        // Without CAP_SYS_PTRACE: one for faults in user mode only, which
        // async write-protect does not need (the kernel resolves them).
        fd = b.syscall(nr, [flags | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0])?;
    }
    let copied = i32::try_from(fd)
        .ok()
        .filter(|&fd| fd >= 0)
        .map(|fd| (fd, crate::sys::fds::pidfd_getfd(pidfd.as_fd(), fd)));
    if let Some((task_fd, _)) = copied {
        b.syscall(
            libc::SYS_close as u64,
            [u64::from(task_fd.unsigned_abs()), 0, 0, 0, 0, 0],
        )?;
    }
    b.finish()?;
    match copied {
        Some((_, Ok(ours))) => Ok(ours),
        Some((_, Err(source))) => Err(TrackError::Io {
            pid,
            what: "pidfd_getfd of the task's userfaultfd",
            source,
        }),
        None => Err(TrackError::Io {
            pid,
            what: "userfaultfd() in the task",
            source: io::Error::from_raw_os_error(i32::try_from(-fd).unwrap_or(libc::EIO)),
        }),
    }
}
