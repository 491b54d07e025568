//! The refusals and warnings decided before anything is injected into the
//! task: process-wide state crimg does not restore yet is refused (or,
//! forced, listed as lost), and what a restore will not reproduce is said
//! as a warning. A task that is refused is left untouched.

use std::path::Path;

use image_format::records::MAX_GROUPS;

use super::task::Task;
use super::{CollectError, Collector};
use crate::procfs::{self, status::Status};
use crate::vmas;

/// Process-wide state crimg does not restore yet.
pub(super) fn process_checks<T: Task>(
    c: &mut Collector<'_, T>,
    status: &Status,
) -> Result<(), CollectError> {
    seccomp(c, status)?;
    let mut children = Vec::new();
    for &tid in c.task.tids() {
        if let Ok(text) = c.read_text(&format!("task/{tid}/children")) {
            children.extend(text.split_whitespace().map(str::to_owned));
        }
    }
    if !children.is_empty() {
        // Killing the parent alone would leave its children running on,
        // unsupervised, in its session and group: a tree is split only
        // when asked (--force, which lists them as lost).
        c.unsupported(format!(
            "it has child processes ({}): dumping a process tree is not supported yet; forced, the image holds only this process and the children are left running",
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
fn seccomp<T: Task>(c: &Collector<'_, T>, status: &Status) -> Result<(), CollectError> {
    let pid = c.pid;
    if status.seccomp != 0 {
        return Err(CollectError::Seccomp {
            pid,
            tid: pid,
            mode: status.seccomp,
        });
    }
    for &tid in c.task.tids().iter().filter(|&&t| t != pid) {
        let mode = c.parse(procfs::status::seccomp(
            &c.read_text(&format!("task/{tid}/status"))?,
        ))?;
        if mode != 0 {
            return Err(CollectError::Seccomp { pid, tid, mode });
        }
    }
    Ok(())
}
