//! Copy-on-write snapshots for `--leave-running --snapshot` (opt-in; the
//! default of `--leave-running` is the frozen dump): the frozen time of a
//! dump that lets the tree run on does not grow with its memory.
//!
//! ```text
//! frozen tree, everything collected (registers, signals, fds, VMAs, mm)
//!   → each process: inject clone(CLONE_FILES | CLONE_FS | CLONE_PTRACE,
//!     exit signal 0) into one of its threads: the child is a copy-on-write
//!     copy of its memory, stopped and traced by crdump from its birth
//!   → copy what the child does not carry from the original
//!   → resume the tree (the frozen time ends here)
//!   → select the child's pages (pagemap), write the image from the child
//!   → kill the child; the original reaps it (an injected waitid)
//! ```
//!
//! Only page contents come from the child, and only for the areas whose
//! pages a fork copies as they are: private areas without `MADV_DONTFORK`
//! (absent in the child), `MADV_WIPEONFORK` (empty in the child) or
//! `MAP_DROPPABLE`. Shared memory is shared with the child and keeps
//! changing once the tree runs: those pages, like every page of the other
//! areas, are copied from the original while it is frozen. Everything
//! else of the image (every thread's registers, masks, pending signals of
//! the process and of each thread, handlers, the VMA list, the mm fields,
//! fds) was collected from the original before the clone, so nothing the
//! child differs in (one thread, its own pid, no pending signals, a fresh
//! signal queue) reaches the image. The child's copy of the borrowed
//! scratch bytes (below the injecting thread's red zone, holding crdump's
//! return frame at the clone) is overwritten with the original bytes.
//!
//! The child shares the fd table and fs state (no new reference to a pipe
//! or socket: peers see no change) and has exit signal 0: its death sends
//! no SIGCHLD, and a `waitpid` without `__WALL`/`__WCLONE` in the original
//! does not see it. It starts in a ptrace stop (the tracer's seize is
//! inherited through `CLONE_PTRACE`) and never returns to user mode: it is
//! killed there. Its stack pointer is an unmapped address and every signal
//! is blocked in it (the borrowed thread's mask), so if crdump died before
//! the child is armed with `PTRACE_O_EXITKILL`, the child's first user
//! instruction faults and the forced SIGSEGV ends it instead of letting a
//! duplicate of the process run on.
//!
//! A child that exits with exit signal 0 stays a zombie until its parent
//! reaps it with `__WALL`: once crdump has collected its death as tracer,
//! every thread of the original is stopped for a moment again (as by the
//! freeze), and one runs `waitid(P_PID, child, WEXITED | __WALL | WNOHANG)`
//! (see [`child`]).
//!
//! When the clone fails (RLIMIT_NPROC, the pids cgroup, memory), or no
//! thread of a process can be borrowed for it, the dump goes on as a
//! frozen dump, with one warning line.
//!
//! The areas are read before the freeze ([`presample`]): what is left of
//! the frozen time is a few milliseconds of collection and the clone,
//! whose copy of the page tables costs about 27–30 ms per GiB of 4 KiB
//! pages on these machines (0.5 ms per GiB of transparent huge pages).
//! Write-protecting the same memory with userfaultfd while frozen costs
//! 21 ms per GiB, no better. So a process alone (no children) is instead
//! write-protected before the freeze, while it runs ([`protected`]):
//!
//! ```text
//! running: stopped for a moment: userfaultfd() injected, the fd copied
//!          here and closed there; resumed
//!          its private anonymous areas registered (MODE_WP, sync: a
//!          write waits for crdump's handler thread) and protected; pages
//!          written meanwhile noted and protected again in a few passes
//! frozen:  collected as above; the pages noted since protected again
//!          (the snapshot point); the areas not registered whole (made,
//!          grown, moved or emptied since, shared, DONTFORK, WIPEONFORK,
//!          DROPPABLE) copied now
//! resumed: the registered areas' pages selected (pagemap, as for a child)
//!          and read from the running task; the handler saves each page
//!          before its first write and the saved copy wins
//! written: the uffd closed: the kernel unregisters and unprotects
//! ```
//!
//! The frozen time then no longer grows with the memory; the stop that
//! makes the uffd counts in the stopped time crdump reports. What it costs
//! the task: its first write to each page during the dump waits for the
//! handler to copy the page. An `madvise(MADV_DONTNEED)`, `munmap` or
//! `mremap` of pages not read yet after the resume may have taken the
//! snapshot's content with it: the dump goes again (a fork snapshot).
//! Without a child to ask, the areas' flags at the freeze are checked
//! against the task's own after the resume (an area's `madvise` in between
//! that is undone by then is not seen). A task with areas registered with
//! a userfaultfd already (its own, or crimg's write tracking), one whose
//! credentials may not make a userfaultfd for kernel faults, a tree, or
//! `--fork-snapshot` gets the fork snapshot; `crdump -v` says which was
//! used and why.

mod child;
mod pages;
mod presample;
pub mod protected;
mod source;

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use image_format::records::{vma_flags, vma_kind};
use image_writer::model::{PageRun, TaskState, VmaState};

use crate::freeze::Frozen;
use crate::memory::TaskMemory;
use crate::options::DumpOptions;
use crate::pages::PagePolicy;
use crate::procfs::smaps::SmapsEntry;
use crate::progress::NoProgress;
use crate::report::VmaStat;
use crate::vmas::VmaClass;

pub use child::SnapshotChild;
pub use presample::{check_child, check_original, numa_needed_frozen, ChildCheckError, Presample};
pub use protected::Protected;
pub use source::SnapshotMemory;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("pid {pid}: reading {path}: {source}")]
    Read {
        pid: i32,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: copying {len} bytes at {addr:#x} while frozen: {source}")]
    Copy {
        pid: i32,
        addr: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
}

/// An area whose pages are selected later, from the snapshot child (or
/// from the original, frozen, when there is no child).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredArea {
    pub start: u64,
    pub end: u64,
    pub policy: PagePolicy,
}

/// Whether a dump with `opts` takes its pages from a snapshot child (asked
/// for: `--leave-running --snapshot`; the default is the frozen dump).
pub fn wanted(opts: &DumpOptions) -> bool {
    opts.leave_running && opts.snapshot
}

/// Whether process `pid` has children (a tree: the fork snapshot).
pub fn has_children(pid: i32) -> bool {
    !presample::children(pid).is_empty()
}

/// Whether a fork gives the child area `v`'s pages as they are.
fn child_carries(v: &VmaState, class: &VmaClass) -> bool {
    let not_copied =
        vma_flags::SHARED | vma_flags::DONTFORK | vma_flags::WIPEONFORK | vma_flags::DROPPABLE;
    class.policy != PagePolicy::Nothing
        && class.kind != vma_kind::SHARED_ANON
        && v.record.flags & not_copied == 0
}

/// For a snapshot dump (`wanted(opts)`): the classes with which pages are
/// selected while frozen (the areas the child carries get
/// [`PagePolicy::Nothing`]: their pages are selected after the resume, so
/// the frozen time does not read page tables), and those areas. Otherwise
/// the classes as they are and none.
pub fn defer_pages(
    opts: &DumpOptions,
    smaps: &[SmapsEntry],
    vmas: &[VmaState],
    classes: &[VmaClass],
) -> (Vec<VmaClass>, Vec<DeferredArea>) {
    let mut frozen = classes.to_vec();
    let mut deferred = Vec::new();
    if !wanted(opts) {
        return (frozen, deferred);
    }
    for ((e, v), class) in smaps.iter().zip(vmas).zip(frozen.iter_mut()) {
        if !child_carries(v, class) || (e.rss_kb == 0 && e.swap_kb == 0) {
            continue;
        }
        deferred.push(DeferredArea {
            start: e.start,
            end: e.end,
            policy: class.policy,
        });
        class.policy = PagePolicy::Nothing;
    }
    (frozen, deferred)
}

/// Select the deferred areas' pages of process `pid` (the child, or the
/// original itself), merge them into `state.pages` (kept in address
/// order) and count them in `stats`.
pub fn select_deferred(
    pid: i32,
    deferred: &[DeferredArea],
    zero_pfn: Option<u64>,
    state: &mut TaskState,
    stats: &mut [VmaStat],
) -> Result<(), SnapshotError> {
    select_deferred_but(pid, deferred, zero_pfn, None, state, stats)
}

/// [`select_deferred`], where a pagemap entry equal to `marker` (a
/// userfaultfd write-protect marker of a page that is not there, which
/// pagemap shows as swapped) is a page not there.
fn select_deferred_but(
    pid: i32,
    deferred: &[DeferredArea],
    zero_pfn: Option<u64>,
    marker: Option<u64>,
    state: &mut TaskState,
    stats: &mut [VmaStat],
) -> Result<(), SnapshotError> {
    if deferred.is_empty() {
        return Ok(());
    }
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&path).map_err(|source| SnapshotError::Read {
        pid,
        path: path.clone(),
        source,
    })?;
    let mut runs = Vec::new();
    for area in deferred {
        let stored =
            pages::select_area(&pagemap, area, zero_pfn, marker, &mut runs).map_err(|source| {
                SnapshotError::Read {
                    pid,
                    path: path.clone(),
                    source,
                }
            })?;
        if let Some(s) = stats.iter_mut().find(|s| s.start == area.start) {
            s.stored_pages += stored;
        }
    }
    state.pages = merge_runs(std::mem::take(&mut state.pages), runs);
    Ok(())
}

/// Two lists of runs in address order (of different areas) as one.
fn merge_runs(a: Vec<PageRun>, b: Vec<PageRun>) -> Vec<PageRun> {
    if b.is_empty() {
        return a;
    }
    let mut out = a;
    out.extend(b);
    out.sort_by_key(|r| r.start);
    out
}

/// The pages of `state` that are in it already (selected while frozen:
/// every area the child does not carry), copied from the original
/// process `pid` now, while it is frozen.
fn copy_frozen_pages(
    pid: i32,
    mem: &File,
    state: &TaskState,
) -> Result<source::Copied, SnapshotError> {
    let mut from = TaskMemory {
        pid,
        mem,
        progress: &mut NoProgress,
    };
    let mut copied = source::Copied::default();
    for run in &state.pages {
        let len = usize::try_from(run.len).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len];
        image_writer::PageSource::read_pages(&mut from, run.start, &mut buf).map_err(|source| {
            SnapshotError::Copy {
                pid,
                addr: run.start,
                len: run.len,
                source,
            }
        })?;
        copied.push(run.start, buf);
    }
    Ok(copied)
}

/// What a snapshot's pages come from after the resume.
pub enum Held {
    /// A copy-on-write child.
    Child(SnapshotChild),
    /// The original, write-protected.
    Protected(Protected),
}

/// The snapshot of one process: its child (or its write-protection) and
/// the pages copied from it while frozen.
pub struct ProcessSnapshot {
    pub held: Held,
    copied: source::Copied,
}

impl ProcessSnapshot {
    /// Why its write-protected snapshot was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        match &self.held {
            Held::Protected(p) => p.lost(),
            Held::Child(_) => None,
        }
    }

    /// The process whose memory is read for the image's other pages.
    pub fn read_pid(&self) -> i32 {
        match &self.held {
            Held::Child(c) => c.pid(),
            Held::Protected(p) => p.pid(),
        }
    }

    /// The page source for the image: the copied pages, the rest from the
    /// child (`child_mem`: the `/proc/P/mem` of [`Self::read_pid`]).
    pub fn memory<'a>(
        &'a self,
        child_mem: &'a File,
        progress: &'a mut dyn crate::progress::Progress,
    ) -> SnapshotMemory<'a> {
        let protected = match &self.held {
            Held::Protected(p) => Some(p),
            Held::Child(_) => None,
        };
        SnapshotMemory::new(
            TaskMemory {
                pid: self.read_pid(),
                mem: child_mem,
                progress,
            },
            &self.copied,
            protected,
        )
    }
}

/// The write-protected snapshot of frozen process `f` (`p`, armed before
/// the freeze): the snapshot point passed, the deferred areas that are not
/// registered whole selected and copied now with the rest of
/// `state.pages`. Returns it and the areas to select after the resume;
/// on error (the tree still frozen) `p` is closed.
pub fn take_protected(
    f: &Frozen,
    p: Protected,
    deferred: &[DeferredArea],
    zero_pfn: Option<u64>,
    state: &mut TaskState,
    stats: &mut [VmaStat],
) -> Result<(ProcessSnapshot, Vec<DeferredArea>), String> {
    let pid = f.pid();
    let (live, now) = p
        .snapshot_point(deferred)
        .map_err(|e| format!("pid {pid}: protecting the pages written before the freeze: {e}"))?;
    select_deferred_but(pid, &now, zero_pfn, Some(p.marker()), state, stats)
        .map_err(|e| e.to_string())?;
    let mem = crate::open_mem(pid).map_err(|e| e.to_string())?;
    let copied = copy_frozen_pages(pid, &mem, state).map_err(|e| e.to_string())?;
    Ok((
        ProcessSnapshot {
            held: Held::Protected(p),
            copied,
        },
        live,
    ))
}

/// After the resume: the pages of the `live` areas of process `pid`
/// (write-protected since the freeze) selected from it into `state`, and
/// only those left to be read from it.
pub fn select_live(
    pid: i32,
    p: &Protected,
    live: &[DeferredArea],
    zero_pfn: Option<u64>,
    state: &mut TaskState,
    stats: &mut [VmaStat],
) -> Result<(), SnapshotError> {
    select_deferred_but(pid, live, zero_pfn, Some(p.marker()), state, stats)?;
    let runs = state
        .pages
        .iter()
        .filter(|r| live.iter().any(|a| a.start <= r.start && r.start < a.end))
        .map(|r| (r.start, r.start + r.len))
        .collect();
    p.set_live(runs);
    Ok(())
}

/// Every process of a frozen tree snapshotted (and how long that took),
/// or `Err` with why not (a warning: the dump goes on frozen). On error
/// the children made so far are killed and reaped, while the tree is
/// still frozen.
pub fn take_tree(
    frozen: &[Frozen],
    states: &[TaskState],
) -> Result<(Vec<ProcessSnapshot>, Duration), String> {
    let t = Instant::now();
    let mut out: Vec<ProcessSnapshot> = Vec::with_capacity(frozen.len());
    for (f, state) in frozen.iter().zip(states) {
        match take_one(f, state) {
            Ok(s) => out.push(s),
            Err(why) => {
                for (s, f) in out.into_iter().zip(frozen) {
                    if let Held::Child(c) = s.held {
                        let _ = c.release(Some(f));
                    }
                }
                return Err(why);
            }
        }
    }
    Ok((out, t.elapsed()))
}

fn take_one(f: &Frozen, state: &TaskState) -> Result<ProcessSnapshot, String> {
    let pid = f.pid();
    let mem = crate::open_mem(pid).map_err(|e| e.to_string())?;
    let child = SnapshotChild::clone_from(f, &mem, state).map_err(|e| e.to_string())?;
    match copy_frozen_pages(pid, &mem, state) {
        Ok(copied) => Ok(ProcessSnapshot {
            held: Held::Child(child),
            copied,
        }),
        Err(e) => {
            let _ = child.release(Some(f));
            Err(e.to_string())
        }
    }
}

/// The warning a dump that could not snapshot carries.
pub fn fallback_warning(why: &str) -> String {
    format!(
        "--leave-running: no copy-on-write snapshot ({why}); the process was frozen for the whole \
         memory copy"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::records::VmaRecord;

    fn area(start: u64, flags: u32, kind: u32) -> (SmapsEntry, VmaState, VmaClass) {
        let e = SmapsEntry {
            start,
            end: start + 0x1000,
            rss_kb: 4,
            ..SmapsEntry::default()
        };
        let v = VmaState {
            record: VmaRecord {
                start,
                end: start + 0x1000,
                flags,
                kind,
                ..VmaRecord::default()
            },
            path: String::new(),
        };
        let policy = if kind == vma_kind::SHARED_ANON {
            PagePolicy::Nothing
        } else {
            PagePolicy::Anonymous
        };
        let c = VmaClass {
            kind,
            policy,
            warning: None,
        };
        (e, v, c)
    }

    #[test]
    fn only_areas_a_fork_copies_are_deferred() {
        let list = [
            area(0x10000, 0, vma_kind::ANON),
            area(0x20000, vma_flags::DONTFORK, vma_kind::ANON),
            area(0x30000, vma_flags::WIPEONFORK, vma_kind::ANON),
            area(0x40000, vma_flags::SHARED, vma_kind::SHARED_ANON),
            area(0x50000, vma_flags::DROPPABLE, vma_kind::ANON),
            area(0x60000, 0, vma_kind::HEAP),
        ];
        let smaps: Vec<_> = list.iter().map(|a| a.0.clone()).collect();
        let vmas: Vec<_> = list.iter().map(|a| a.1.clone()).collect();
        let classes: Vec<_> = list.iter().map(|a| a.2.clone()).collect();
        let opts = DumpOptions {
            leave_running: true,
            snapshot: true,
            ..DumpOptions::default()
        };
        let (frozen, deferred) = defer_pages(&opts, &smaps, &vmas, &classes);
        let starts: Vec<u64> = deferred.iter().map(|d| d.start).collect();
        assert_eq!(starts, [0x10000, 0x60000]);
        assert_eq!(frozen[0].policy, PagePolicy::Nothing);
        assert_eq!(frozen[1].policy, PagePolicy::Anonymous);
        assert_eq!(frozen[2].policy, PagePolicy::Anonymous);
        assert_eq!(frozen[5].policy, PagePolicy::Nothing);
        // Not a snapshot dump: nothing deferred.
        let (same, none) = defer_pages(&DumpOptions::default(), &smaps, &vmas, &classes);
        assert_eq!(same, classes);
        assert!(none.is_empty());
        // --leave-running alone: the frozen dump.
        let no = DumpOptions {
            snapshot: false,
            ..opts
        };
        assert!(defer_pages(&no, &smaps, &vmas, &classes).1.is_empty());
    }

    #[test]
    fn runs_of_two_selections_come_out_in_address_order() {
        let r = |start, len| PageRun { start, len };
        let merged = merge_runs(
            vec![r(0x1000, 0x1000), r(0x9000, 0x2000)],
            vec![r(0x4000, 0x1000), r(0x20000, 0x1000)],
        );
        assert_eq!(
            merged,
            [
                r(0x1000, 0x1000),
                r(0x4000, 0x1000),
                r(0x9000, 0x2000),
                r(0x20000, 0x1000)
            ]
        );
    }
}
