//! Which pids are free: every pid and thread id the restore creates must
//! be, unless it runs in a new pid namespace.

use super::dump::Dump;
use super::error::TreeError;
use super::plan::TreePlan;

/// Whether a process (or thread) with id `pid` exists now.
pub fn alive(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A process other than `n` itself whose process group or session id is
/// `n`, found by reading every `/proc/P/stat` (the kernel keeps a pid
/// number while any process has it as one of them: a process group or
/// session whose leader exited lives on in its members).
fn member_of(n: i32) -> Option<dumper::procfs::stat::Stat> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != n)
        .filter_map(stat)
        .find(|st| st.pgrp == n || st.session == n)
}

/// Whether pid number `n` is in use: a process or thread has it, or a
/// process has it as its process group or session id.
pub fn in_use(n: i32) -> bool {
    alive(n) || (n > 0 && member_of(n).is_some())
}

/// The command name of `pid` (`?` when it cannot be read).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Who has pid `pid`: its command name, quoted, and when it has exited
/// but its parent has not reaped it yet (the dumped tree's root, right
/// after crdump killed it, until the shell that started it waits), that
/// parent.
/// When no process has it, but one has it as its process group or
/// session id, that one.
pub fn taken_by(pid: i32) -> String {
    let comm = comm(pid);
    match stat(pid) {
        Some(st) if st.state == b'Z' => format!(
            "{comm:?}, which has exited but is not yet reaped by its parent {}",
            st.ppid
        ),
        Some(_) => format!("{comm:?}"),
        None => match member_of(pid) {
            Some(m) => format!(
                "the {} of {:?} ({})",
                if m.pgrp == pid {
                    "process group"
                } else {
                    "session"
                },
                String::from_utf8_lossy(&m.comm),
                m.pid
            ),
            None => format!("{comm:?}"),
        },
    }
}

/// `/proc/PID/stat`, parsed (the dumper's parser); `None` when gone.
fn stat(pid: i32) -> Option<dumper::procfs::stat::Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    dumper::procfs::stat::parse(&text).ok()
}

/// How long a pid held by an exited process (a zombie) is waited for.
/// Right after crdump killed a tree, its processes are zombies until they
/// are reaped: the root by its parent, the others, orphaned, by the
/// kernel's reaper (pid 1, or a subreaper), which can take a second or
/// two on these machines (KERNEL.md).
pub const ZOMBIE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `pid` is held by an exited process not reaped yet.
fn zombie(pid: i32) -> bool {
    stat(pid).is_some_and(|st| matches!(st.state, b'Z' | b'X'))
}

/// Whether `pid` is taken, after waiting (at most until `deadline`) for
/// a zombie holding it to be reaped.
fn taken(pid: i32, deadline: std::time::Instant) -> bool {
    while alive(pid) {
        if !zombie(pid) || std::time::Instant::now() >= deadline {
            return true;
        }
        // Nothing tells of a reap: short sleeps.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// Every pid the plan creates, and every thread id of the live
/// processes, is free (a zombie's is waited for, [`ZOMBIE_WAIT`] in all);
/// the first taken one is the error.
pub fn check_free(plan: &TreePlan, dump: &Dump) -> Result<(), TreeError> {
    let deadline = std::time::Instant::now() + ZOMBIE_WAIT;
    let threads = dump
        .manifest
        .processes
        .iter()
        .filter(|p| plan.live.contains(&p.pid))
        .flat_map(|p| p.threads.iter().copied());
    for id in plan.pids().chain(threads) {
        if taken(id, deadline) {
            return Err(TreeError::PidTaken {
                pid: id,
                by: taken_by(id),
            });
        }
    }
    Ok(())
}
