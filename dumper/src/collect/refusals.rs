//! The refusals and warnings decided before anything is injected into the
//! task: process-wide state crimg does not restore yet is refused (or,
//! forced, listed as lost), and what a restore will not reproduce is said
//! as a warning. A task that is refused is left untouched.

use std::fmt::Write as _;
use std::path::Path;

use image_format::records::MAX_GROUPS;

use super::task::Task;
use super::{CollectError, Collector};
use crate::procfs::{self, smaps::SmapsEntry, status::Status};
use crate::vmas;

/// `PF_IO_WORKER` in `/proc/P/task/T/stat`'s flags: an io_uring SQPOLL
/// (`iou-sqp-N`) or io-wq worker (`iou-wrk-N`) thread. It runs in the
/// kernel only: ptrace never sees it stop, so it is never seized (waiting
/// for its stop would hang), and it goes on reading and writing the
/// task's memory while the other threads are frozen.
pub const PF_IO_WORKER: u64 = 0x10;

/// One thing that stops a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// What it is and where (fd, address, thread), one line.
    pub what: String,
    /// Refused even with `--force` (its state cannot be dropped safely).
    pub even_forced: bool,
}

/// The refusal: every blocker on a line of its own, then the summary.
pub fn blocked_message(pid: i32, blockers: &[Blocker], forced: bool) -> String {
    let mut out = String::new();
    for b in blockers {
        let _ = write!(out, "pid {pid}: {}", b.what);
        if b.even_forced && !forced {
            out.push_str(" (refused even with --force)");
        }
        out.push('\n');
    }
    let n = blockers.len();
    let hard = blockers.iter().filter(|b| b.even_forced).count();
    let _ = write!(
        out,
        "pid {pid}: cannot be saved faithfully: {n} blocker{} above",
        if n == 1 { "" } else { "s" }
    );
    if forced {
        out.push_str(", refused even with --force");
    } else if hard == 0 {
        out.push_str(if n == 1 {
            " (use --force to dump anyway, losing it)"
        } else {
            " (use --force to dump anyway, losing them)"
        });
    } else if hard < n {
        let _ = write!(out, " ({hard} of them refused even with --force)");
    } else {
        out.push_str(" (refused even with --force)");
    }
    out.push_str("; the process was left running");
    out
}

/// Process-wide state crimg does not restore yet.
pub(super) fn process_checks<T: Task>(
    c: &mut Collector<'_, T>,
    status: &Status,
) -> Result<(), CollectError> {
    seccomp(c, status)?;
    io_uring_threads(c)?;
    let mut children = Vec::new();
    for &tid in c.task.tids() {
        if let Ok(text) = c.read_text(&format!("task/{tid}/children")) {
            children.extend(text.split_whitespace().map(str::to_owned));
        }
    }
    // A tree dump freezes and dumps the children too; a child that is not
    // in the tree (a process collected alone) would be left running on,
    // unsupervised, in its session and group: a tree is split only when
    // asked (--force, which lists them as lost).
    children.retain(|child| {
        let pid = child.parse::<i32>().unwrap_or(0);
        !c.opts.tree.as_ref().is_some_and(|t| t.contains(pid))
    });
    if !children.is_empty() {
        c.unsupported(format!(
            "it has child processes ({}) that are not dumped with it; forced, the image holds only this process and the children are left running",
            children.join(", ")
        ))?;
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"] {
        let theirs = c
            .task
            .read_link(Path::new(&c.proc_path(&format!("ns/{ns}"))));
        let ours = c.task.read_link(&Path::new("/proc/self/ns").join(ns));
        if let (Ok(a), Ok(b)) = (theirs, ours) {
            if a != b {
                c.warnings.push(format!(
                    "the process runs in its own {ns} namespace, which is not recreated"
                ));
            }
        }
    }
    Ok(())
}

/// Memory policies of single areas (`mbind`) are not restored: refused by
/// name. `/proc/P/numa_maps` exists only with NUMA support, and without
/// it there are no policies.
pub(super) fn numa_policies<T: Task>(c: &mut Collector<'_, T>) -> Result<(), CollectError> {
    let Ok(text) = c.read_text("numa_maps") else {
        return Ok(());
    };
    for (start, policy) in vmas::numa_policies(&text) {
        c.unsupported(format!(
            "the NUMA memory policy `{policy}` (mbind) of the area at {start:#x} is not restored"
        ))?;
    }
    Ok(())
}

/// Tagged addresses (x86 LAM) are not turned on again by the loader.
pub(super) fn tagged_addresses<T: Task>(
    c: &mut Collector<'_, T>,
    status: &Status,
) -> Result<(), CollectError> {
    if let Some(mask) = status.untag_mask.filter(|&m| m != u64::MAX) {
        c.unsupported(format!(
            "tagged addresses (x86 LAM, untag_mask {mask:#x}) are not restored"
        ))?;
    }
    Ok(())
}

/// The image keeps at most [`MAX_GROUPS`] supplementary groups.
pub(super) fn too_many_groups<T: Task>(
    c: &mut Collector<'_, T>,
    status: &Status,
) -> Result<(), CollectError> {
    if status.groups.len() > MAX_GROUPS {
        c.unsupported(format!(
            "{} supplementary groups (at most {MAX_GROUPS} are kept)",
            status.groups.len()
        ))?;
    }
    Ok(())
}

/// Refuse a task with a seccomp filter or strict mode in any thread, even
/// with `force`: the filter is not saved, and the syscalls injected into
/// the threads could trip it (killing the task, or worse, a trap that runs
/// its handler). Seccomp is per thread; `status` is the leader's.
fn seccomp<T: Task>(c: &mut Collector<'_, T>, status: &Status) -> Result<(), CollectError> {
    let pid = c.pid;
    let mut modes = vec![(pid, status.seccomp)];
    for &tid in c.task.tids().iter().filter(|&&t| t != pid) {
        let mode = c.parse(procfs::status::seccomp(
            &c.read_text(&format!("task/{tid}/status"))?,
        ))?;
        modes.push((tid, mode));
    }
    for (tid, mode) in modes.into_iter().filter(|&(_, m)| m != 0) {
        c.refuse(format!(
            "thread {tid}: seccomp mode {mode} is active: seccomp filters are not saved, and \
             injecting syscalls into a filtered task could trip its filter"
        ));
    }
    Ok(())
}

/// Refuse io_uring's kernel-side threads by name, even with `force`: they
/// cannot be stopped (the freeze leaves them alone) and run on in the
/// task's memory, and the rings they serve are not saved. Every thread of
/// `/proc/P/task` is looked at, not only the frozen ones: a worker can be
/// started after the freeze.
fn io_uring_threads<T: Task>(c: &mut Collector<'_, T>) -> Result<(), CollectError> {
    let dir = c.proc_path("task");
    let names = c
        .task
        .dir_names(Path::new(&dir))
        .map_err(c.read_error(dir))?;
    let mut tids: Vec<i32> = names.iter().filter_map(|n| n.parse().ok()).collect();
    tids.sort_unstable();
    for tid in tids {
        // Gone since the listing: nothing to refuse.
        let Ok(text) = c.read_text(&format!("task/{tid}/stat")) else {
            continue;
        };
        let stat = c.parse(procfs::stat::parse(&text))?;
        if stat.flags & PF_IO_WORKER != 0 {
            c.refuse(format!(
                "thread {tid} ({}) is an io_uring kernel thread (SQPOLL or io-wq worker): \
                 it cannot be stopped and io_uring is not saved",
                image_format::text::Escaped(&stat.comm)
            ));
        }
    }
    Ok(())
}

/// Every thread without room below its stack pointer for the injected
/// syscalls (`areas::scratch_for`), refused by name even with `force` with
/// the other blockers, before anything is injected. Reading the registers
/// borrows nothing.
pub(super) fn thread_stacks<T: Task>(
    c: &mut Collector<'_, T>,
    smaps: &[SmapsEntry],
) -> Result<(), CollectError> {
    let pid = c.pid;
    for tid in c.task.tids().to_vec() {
        let rsp = c.task.thread(tid)?.regs.rsp;
        if let Err(room) = super::areas::scratch_for(smaps, rsp) {
            let e = CollectError::NoScratch {
                pid,
                tid,
                rsp,
                room,
            };
            let text = e.to_string();
            let what = text
                .strip_prefix(&format!("pid {pid} "))
                .unwrap_or(&text)
                .to_owned();
            c.refuse(what);
        }
    }
    Ok(())
}

/// Mark every fd that a forced dump cannot keep as dropped
/// ([`image_format::records::fd_flags::DROPPED`]): the loader puts
/// `/dev/null` there. The rule is the loader's own
/// ([`binfmt_loader::rules::fd_must_be_dropped`]): what it could not
/// restore is exactly what is dropped. Without `force` such an fd is a
/// blocker and the dump is refused before the mark matters (a check shows
/// the image a forced dump would write).
pub(super) fn mark_dropped(records: &mut [image_writer::model::FdState]) {
    for i in 0..records.len() {
        let (before, rest) = records.split_at_mut(i);
        let r = &mut rest[0].record;
        let earlier = (r.desc != 0)
            .then(|| before.iter().find(|o| o.record.desc == r.desc))
            .flatten()
            .map(|o| &o.record);
        if binfmt_loader::rules::fd_must_be_dropped(r, earlier) {
            r.flags |= image_format::records::fd_flags::DROPPED;
        }
    }
}

/// io_uring rings still mapped after their fd was closed (the ring lives
/// on in its mappings): refused by name, even with `force`, like the fd.
/// Said only when no io_uring fd was refused already.
pub(super) fn io_uring_rings<T: Task>(c: &mut Collector<'_, T>, smaps: &[SmapsEntry]) {
    if c.blockers
        .iter()
        .any(|b| b.what.contains("io_uring instance"))
    {
        return;
    }
    if let Some(e) = smaps.iter().find(|e| e.path == IO_URING) {
        c.refuse(format!(
            "an io_uring instance without an fd is mapped at {:#x}-{:#x} ({IO_URING}): \
             io_uring is not saved",
            e.start, e.end
        ));
    }
}

/// What `/proc/P/fd/N` and `/proc/P/maps` show of an io_uring instance.
const IO_URING: &str = "anon_inode:[io_uring]";

/// Whether fd `fd` (`/proc/P/fd/N` reads `link`) is an io_uring instance:
/// then it is refused by name, even with `force` (its rings are shared
/// with the kernel, which may go on completing requests into them; a
/// program that finds another file there waits forever for completions).
pub(super) fn io_uring_fd<T: Task>(c: &mut Collector<'_, T>, fd: i32, link: &str) -> bool {
    if link != IO_URING {
        return false;
    }
    c.refuse(format!(
        "fd {fd} is an io_uring instance ({IO_URING}): io_uring is not saved"
    ));
    true
}
