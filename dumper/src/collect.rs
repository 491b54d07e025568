//! Collecting the state of a frozen thread group into a plain
//! [`TaskState`]: `/proc` files, ptrace requests, and syscalls injected into
//! the stopped threads for what only the task can answer (STATE.md, loader
//! side).
//!
//! [`collect_from`] runs the named steps in order, each in its own module:
//! the refusals that must come before anything is injected (`refusals`),
//! the fds (`open_files`), the memory areas, gadgets and pages
//! (`areas`), the threads' registers, injected answers and pending
//! signals (`threads`), and the process, mm, credentials and limits
//! (`identity`). Everything they learn comes through the [`Task`] trait:
//! [`LiveTask`] for a frozen process, a fake in the unit tests.

mod areas;
#[cfg(test)]
mod fake;
pub mod fd_index;
pub(crate) mod gadget_scan;
mod identity;
mod live;
mod open_files;
mod posix_timers;
mod refusals;
mod sigactions;
pub mod task;
#[cfg(test)]
mod tests;
mod threads;

use std::fs::File;
use std::io;
use std::path::Path;

use image_writer::model::TaskState;

use crate::freeze::Frozen;
use crate::inject::InjectError;
use crate::options::DumpOptions;
use crate::procfs::{self, ParseError};
use crate::report::VmaStat;
use crate::sys::ptrace::PtraceError;
pub use live::LiveTask;
pub use refusals::{Blocker, PF_IO_WORKER};
pub use task::Task;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("pid {pid}: cannot read {path}: {source}")]
    Read {
        pid: i32,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: {source}")]
    Parse {
        pid: i32,
        #[source]
        source: ParseError,
    },
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("pid {pid} tid {tid}: injected {what} failed with errno {errno}")]
    InjectedSyscall {
        pid: i32,
        tid: i32,
        what: &'static str,
        errno: i64,
    },
    #[error(
        "pid {pid} tid {tid}: its stack has {room} bytes below rsp {rsp:#x} (and its red zone), \
         fewer than the {} that injected syscalls need there; no other memory of the task is \
         borrowed, so that a dumper killed meanwhile cannot leave live data overwritten",
        crate::inject::SCRATCH_LEN
    )]
    NoScratch {
        pid: i32,
        tid: i32,
        rsp: u64,
        room: u64,
    },
    #[error(
        "pid {pid}: cannot be saved faithfully: {what} (use --force to dump anyway, losing it)"
    )]
    Unsupported { pid: i32, what: String },
    /// Everything found before the first injected syscall that stops the
    /// dump, one per line, then the summary.
    #[error("{}", refusals::blocked_message(*pid, blockers, *forced))]
    Blocked {
        pid: i32,
        blockers: Vec<Blocker>,
        /// The warnings found so far (what a dump would say it loses).
        warnings: Vec<String>,
        /// Whether `--force` was given (the forcible ones were then taken
        /// as lost, and only those refused even forced are left).
        forced: bool,
    },
    #[error("pid {pid}: dump cancelled")]
    Cancelled { pid: i32 },
}

/// The collected state and per-VMA statistics for the report.
pub struct Collected {
    pub state: TaskState,
    pub vma_stats: Vec<VmaStat>,
    /// With `check_only`: everything that would stop a dump without
    /// `--force` (none of them refused even forced: those end collection
    /// with [`CollectError::Blocked`]).
    pub blockers: Vec<Blocker>,
    /// The areas whose pages a snapshot dump selects after the resume
    /// ([`crate::snapshot::defer_pages`]).
    pub deferred: Vec<crate::snapshot::DeferredArea>,
}

/// The steps' shared context: the task, what was asked for, and the
/// warnings gathered so far.
struct Collector<'a, T: Task> {
    task: &'a mut T,
    pid: i32,
    opts: &'a DumpOptions,
    warnings: Vec<String>,
    /// What stops the dump, gathered until [`Collector::refuse_if_blocked`].
    blockers: Vec<Blocker>,
    /// Only a check ([`crate::check`]): collected as `force` would, the
    /// blockers returned, no page looked at.
    check_only: bool,
    /// How many other processes' fds could not be read (not root): who
    /// else holds the task's pipes is then not known.
    unreadable_holders: usize,
}

impl<T: Task> Collector<'_, T> {
    fn proc_path(&self, rest: &str) -> String {
        format!("/proc/{}/{rest}", self.pid)
    }

    fn read_error(&self, path: String) -> impl FnOnce(io::Error) -> CollectError {
        let pid = self.pid;
        move |source| CollectError::Read { pid, path, source }
    }

    fn read_bytes(&self, rest: &str) -> Result<Vec<u8>, CollectError> {
        let path = self.proc_path(rest);
        self.task
            .read(Path::new(&path))
            .map_err(self.read_error(path))
    }

    fn read_text(&self, rest: &str) -> Result<String, CollectError> {
        Ok(String::from_utf8_lossy(&self.read_bytes(rest)?).into_owned())
    }

    fn read_link(&self, rest: &str) -> Result<String, CollectError> {
        let path = self.proc_path(rest);
        self.task
            .read_link(Path::new(&path))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(self.read_error(path))
    }

    fn parse<V>(&self, r: Result<V, ParseError>) -> Result<V, CollectError> {
        r.map_err(|source| CollectError::Parse {
            pid: self.pid,
            source,
        })
    }

    /// State that cannot be kept: a blocker, listed with every other one
    /// when the dump is refused, or with `force` a warning. Collection goes
    /// on (so that one refusal names them all) until
    /// [`Collector::refuse_if_blocked`]; the `Result` is for the callers'
    /// `?`, always `Ok`.
    fn unsupported(&mut self, what: String) -> Result<(), CollectError> {
        self.blockers.push(Blocker {
            what,
            even_forced: false,
        });
        Ok(())
    }

    /// State that stops the dump even with `force` (a seccomp filter,
    /// io_uring): listed with the others.
    fn refuse(&mut self, what: String) {
        self.blockers.push(Blocker {
            what,
            even_forced: true,
        });
    }

    /// The end of the scan, before anything is injected: refuse the dump
    /// naming every blocker found, unless all of them may be lost (`force`:
    /// they become warnings) or this is only a check (they are returned).
    fn refuse_if_blocked(&mut self) -> Result<Vec<Blocker>, CollectError> {
        let hard = self.blockers.iter().any(|b| b.even_forced);
        if hard || (!self.blockers.is_empty() && !self.opts.force && !self.check_only) {
            let blockers = if self.opts.force {
                // The forcible ones are lost anyway: the refusal names
                // what --force cannot help.
                self.blockers
                    .iter()
                    .filter(|b| b.even_forced)
                    .cloned()
                    .collect()
            } else {
                std::mem::take(&mut self.blockers)
            };
            return Err(CollectError::Blocked {
                pid: self.pid,
                blockers,
                warnings: std::mem::take(&mut self.warnings),
                forced: self.opts.force,
            });
        }
        let blockers = std::mem::take(&mut self.blockers);
        if self.opts.force {
            self.warnings
                .extend(blockers.iter().map(|b| b.what.clone()));
        }
        Ok(blockers)
    }

    fn check_cancel(&self) -> Result<(), CollectError> {
        if self.task.cancelled() {
            Err(CollectError::Cancelled { pid: self.pid })
        } else {
            Ok(())
        }
    }
}

/// Collect everything about the frozen thread group. `mem` is `/proc/P/mem`
/// opened read-write (injected syscalls use scratch memory in the task).
pub fn collect(
    frozen: &Frozen,
    mem: &File,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
) -> Result<Collected, CollectError> {
    collect_from(&mut LiveTask::new(frozen, mem), opts, zero_pfn)
}

/// [`collect`] for a process of a tree (`opts.tree`), whose objects'
/// other holders are looked up in `index` (read once for the tree).
pub fn collect_in_tree(
    frozen: &Frozen,
    mem: &File,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
    index: &fd_index::FdIndex,
) -> Result<Collected, CollectError> {
    collect_from(
        &mut LiveTask::with_index(frozen, mem, Some(index)),
        opts,
        zero_pfn,
    )
}

/// [`collect_for_check`] for a process of a tree (`opts.tree`; the other
/// options are those of a check).
pub fn collect_for_check_in_tree(
    frozen: &Frozen,
    mem: &File,
    opts: &DumpOptions,
    index: &fd_index::FdIndex,
) -> Result<Collected, CollectError> {
    collect_in(
        &mut LiveTask::with_index(frozen, mem, Some(index)),
        opts,
        None,
        true,
    )
}

/// What [`collect`] finds of the frozen thread group for a check: as a
/// forced dump would collect it, with the blockers in
/// [`Collected::blockers`] and no page selected or read.
pub fn collect_for_check(frozen: &Frozen, mem: &File) -> Result<Collected, CollectError> {
    collect_in(
        &mut LiveTask::new(frozen, mem),
        &DumpOptions::default(),
        None,
        true,
    )
}

/// Collect everything `task` answers into a [`TaskState`]. `zero_pfn` is
/// the page frame of the shared zero page, when known (its pages are not
/// stored).
pub fn collect_from<T: Task>(
    task: &mut T,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
) -> Result<Collected, CollectError> {
    collect_in(task, opts, zero_pfn, false)
}

/// [`collect_from`], or with `check_only` [`collect_for_check`].
fn collect_in<T: Task>(
    task: &mut T,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
    check_only: bool,
) -> Result<Collected, CollectError> {
    let pid = task.pid();
    let mut c = Collector {
        task,
        pid,
        opts,
        warnings: Vec::new(),
        blockers: Vec::new(),
        check_only,
        unreadable_holders: 0,
    };

    let stat = c.parse(procfs::stat::parse(&c.read_text("stat")?))?;
    let status_text = c.read_text("status")?;
    let status = c.parse(procfs::status::parse(&status_text))?;
    // A snapshot dump's areas as read before the freeze, when the layout
    // is unchanged: smaps walks every page table entry
    // ([`crate::snapshot::Presample`]).
    let presampled = match &opts.presample {
        Some(p) => p.at_freeze(pid, &c.read_text("maps")?, &status_text),
        None => None,
    };
    let numa_frozen = presampled
        .as_deref()
        .is_none_or(crate::snapshot::numa_needed_frozen);
    let smaps = match presampled {
        Some(entries) => entries,
        None => c.parse(procfs::smaps::parse(&c.read_text("smaps")?))?,
    };

    // Everything that can refuse the dump comes before the first injected
    // syscall: a task that is not going to be dumped is not touched (a
    // seccomp filter, for one, could kill it for a syscall it never makes).
    refusals::process_checks(&mut c, &status)?;
    let timers = posix_timers::list(&mut c)?;
    // Else the snapshot child's, after the resume.
    if numa_frozen {
        refusals::numa_policies(&mut c)?;
    }
    refusals::tagged_addresses(&mut c, &status)?;
    let (mut fds, mut objects) = open_files::collect_fds(&mut c)?;
    refusals::io_uring_rings(&mut c, &smaps);
    refusals::thread_stacks(&mut c, &smaps)?;
    refusals::too_many_groups(&mut c, &status)?;
    c.check_cancel()?;

    let mut shmem = crate::objects::shmem::ShmemObjects::default();
    let (mut vmas, mut classes) = areas::memory_areas(&mut c, &smaps, &mut shmem)?;
    areas::fd_objects(&mut c, &mut fds, &mut shmem)?;
    let lost = areas::object_contents(&mut c, &smaps, &vmas, &fds, &mut shmem)?;
    areas::forget_objects(&mut vmas, &mut classes, &mut fds, &lost);
    let blockers = c.refuse_if_blocked()?;
    // Gadgets, also those injection runs through.
    let gadgets = gadget_scan::find_gadgets(&c, &smaps, &classes);
    c.task.prepare_injection(&gadgets)?;
    c.check_cancel()?;

    let mut threads = threads::registers(&c)?;
    let questions = task::ProcessQuestions {
        sigactions: sigactions::to_ask(status.sig_ign, status.sig_cgt),
    };
    let process_wide = threads::injected_answers(&mut c, &smaps, &mut threads, questions)?;
    objects.posix_timers = posix_timers::records(&mut c, &smaps, &threads, &timers)?;
    c.check_cancel()?;
    let mut pending = threads::pending_signals(&c, &threads)?;
    posix_timers::own_pending_signals(&mut objects.posix_timers, &mut pending);

    let identity::Identity {
        exe,
        process,
        mm,
        auxv,
    } = identity::process_and_mm(&mut c, &stat, &status, threads.len(), &process_wide)?;
    let creds = identity::credentials(&status, process_wide.securebits);
    let rlimits = identity::limits(&c)?;
    c.check_cancel()?;

    // A check reads no pages (nor which ones are kept). A snapshot dump
    // selects those of the areas its copy-on-write child carries once the
    // tree runs on again, not while it is frozen.
    let (page_classes, deferred) = crate::snapshot::defer_pages(opts, &smaps, &vmas, &classes);
    let (pages, vma_stats) = if check_only {
        (Vec::new(), Vec::new())
    } else {
        areas::select_pages(&c, &smaps, &page_classes, &vmas, &mut shmem, zero_pfn)?
    };
    objects.shmem = shmem.states;

    let state = TaskState {
        process,
        exe,
        cwd: c.read_link("cwd")?,
        root: c.read_link("root")?,
        cmdline: c.read_bytes("cmdline")?,
        creds,
        mm,
        auxv,
        rlimits,
        sigactions: process_wide.sigactions,
        itimers: process_wide.itimers,
        threads: threads.into_iter().map(|(t, _)| t).collect(),
        vmas,
        fds,
        objects,
        pending,
        gadgets,
        warnings: std::mem::take(&mut c.warnings),
        pages,
    };
    Ok(Collected {
        state,
        vma_stats,
        blockers,
        deferred,
    })
}
