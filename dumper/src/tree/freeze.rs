//! Freezing a whole tree: the root, then its children (of every thread:
//! `/proc/X/task/T/children`), theirs, … re-read until a pass finds no
//! process that is not frozen yet (a frozen process cannot fork; a child
//! forked just before its parent stopped is found by the next pass).
//! Zombies are recorded, not seized. What a tree dump cannot take is
//! refused by name before the process is seized: a process in `vfork()`
//! waiting for its child, a thread-group leader that exited while its
//! other threads run, a process in another pid namespace than the root,
//! one of another user when the dumper is not root, one stopped by job
//! control. [`FrozenTree`] detaches every process it holds when dropped,
//! so any error leaves the whole tree running as it was.

use std::collections::BTreeSet;
use std::io;
use std::time::{Duration, Instant};

use crate::freeze::{FreezeError, Frozen};
use crate::procfs::stat::{self, Stat};
use crate::sys::{fds, process};

use super::TreeError;

/// A process of the tree that has exited and waits for its parent's
/// `wait`: nothing of it is left but its `/proc/P/stat`.
#[derive(Clone, Debug)]
pub struct Zombie {
    pub pid: i32,
    pub stat: Stat,
}

/// Every live process of a tree frozen (the root first, each parent
/// before its children) and its zombies. Dropping it detaches every
/// process.
#[derive(Debug)]
pub struct FrozenTree {
    pub processes: Vec<Frozen>,
    pub zombies: Vec<Zombie>,
}

impl FrozenTree {
    /// The pids of the tree, zombies too, sorted.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .processes
            .iter()
            .map(Frozen::pid)
            .chain(self.zombies.iter().map(|z| z.pid))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Let every process run on exactly as before.
    pub fn detach(self) -> Result<(), FreezeError> {
        let mut first_error = None;
        for f in self.processes {
            if let Err(e) = f.detach() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Set `PTRACE_O_EXITKILL` on every thread of every process, before
    /// the kill phase: if crdump dies from then on (even by SIGKILL), the
    /// kernel kills every process it still traces, so no parent runs on
    /// after its children died. On error nothing is killed (dropping the
    /// tree detaches every process, which clears the option).
    pub fn arm_exit_kill(&self) -> Result<(), FreezeError> {
        arm_all(&mut RealKill, &self.members())
    }

    /// Kill every process while it is still frozen: SIGKILL to every one
    /// first (children first, so that no parent is told of a child's
    /// death: they all die stopped), then their exits collected. None is
    /// detached any more, even on error: one that could not be killed stays
    /// traced and dies when crdump exits ([`Self::arm_exit_kill`]).
    pub fn kill(mut self) -> Result<(), FreezeError> {
        let members = self.members();
        for f in std::mem::take(&mut self.processes) {
            f.keep_traced();
        }
        kill_all(&mut RealKill, &members)
    }

    /// Every live process and its seized threads.
    fn members(&self) -> Vec<(i32, Vec<i32>)> {
        self.processes
            .iter()
            .map(|f| (f.pid(), f.tids().to_vec()))
            .collect()
    }
}

/// The steps of the kill phase, on the real processes ([`RealKill`]) or,
/// in the unit tests, on a fake that records their order.
trait KillSteps {
    fn arm(&mut self, pid: i32, tid: i32) -> Result<(), FreezeError>;
    fn kill(&mut self, pid: i32) -> Result<(), FreezeError>;
    fn reap(&mut self, pid: i32, tids: &[i32]);
}

struct RealKill;

impl KillSteps for RealKill {
    fn arm(&mut self, pid: i32, tid: i32) -> Result<(), FreezeError> {
        crate::freeze::arm_exit_kill(pid, tid)
    }
    fn kill(&mut self, pid: i32) -> Result<(), FreezeError> {
        crate::freeze::send_kill(pid)
    }
    fn reap(&mut self, pid: i32, tids: &[i32]) {
        crate::freeze::reap_killed(pid, tids);
    }
}

/// EXITKILL on every thread of every process, stopping at the first error.
fn arm_all(steps: &mut dyn KillSteps, members: &[(i32, Vec<i32>)]) -> Result<(), FreezeError> {
    for (pid, tids) in members {
        for &tid in tids {
            steps.arm(*pid, tid)?;
        }
    }
    Ok(())
}

/// SIGKILL to every process (the last first: children after their
/// parents in `members`), then every one killed reaped. A failed kill
/// does not stop the others; the first error is returned.
fn kill_all(steps: &mut dyn KillSteps, members: &[(i32, Vec<i32>)]) -> Result<(), FreezeError> {
    let mut first_error = None;
    let mut killed = Vec::with_capacity(members.len());
    for (pid, tids) in members.iter().rev() {
        match steps.kill(*pid) {
            Ok(()) => killed.push((*pid, tids)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    for (pid, tids) in killed {
        steps.reap(pid, tids);
    }
    first_error.map_or(Ok(()), Err)
}

/// What the root is, that every other process of the tree must match.
struct RootFacts {
    pid: i32,
    uid_line: String,
    pid_ns: Option<std::path::PathBuf>,
    nspid_levels: usize,
}

/// The `Name:\tvalue` line of a status text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn read(pid: i32, rest: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{rest}"))
}

fn root_facts(pid: i32) -> Result<RootFacts, TreeError> {
    let status = read(pid, "status").map_err(|source| TreeError::Read {
        pid,
        path: format!("/proc/{pid}/status"),
        source,
    })?;
    Ok(RootFacts {
        pid,
        uid_line: status_field(&status, "Uid:").unwrap_or("").to_owned(),
        pid_ns: std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok(),
        nspid_levels: status_field(&status, "NSpid:").map_or(1, |v| v.split_whitespace().count()),
    })
}

/// The children of every thread of `pid`.
fn children(pid: i32, tids: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for &tid in tids {
        if let Ok(text) = read(pid, &format!("task/{tid}/children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// The thread ids listed in `/proc/P/task`.
fn task_ids(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// What a child found in its parent's list is.
enum Member {
    /// Gone since the listing (reaped by the kernel: its parent ignores
    /// SIGCHLD).
    Gone,
    Zombie(Box<Stat>),
    Live,
}

/// Look at child `pid` of `parent` before it is seized: refuse what a tree
/// dump cannot take, by name.
fn member(parent: i32, pid: i32, root: &RootFacts) -> Result<Member, TreeError> {
    let refuse = |why: String| Err(TreeError::Refused { pid, why });
    let Ok(text) = read(pid, "stat") else {
        return Ok(Member::Gone);
    };
    let stat = stat::parse(&text).map_err(|e| TreeError::Refused {
        pid,
        why: e.to_string(),
    })?;
    let tids = task_ids(pid);
    match stat.state {
        b'Z' | b'X' if tids.len() > 1 => {
            return refuse(format!(
                "its thread-group leader has exited while {} other thread(s) run on (a zombie \
                 leader cannot be restored)",
                tids.len() - 1
            ))
        }
        b'Z' | b'X' => return Ok(Member::Zombie(Box::new(stat))),
        b'T' => {
            return refuse(format!(
                "(a child of pid {parent}) is stopped by job control; continue it (SIGCONT) first"
            ))
        }
        _ => {}
    }
    // A vfork() parent sleeps uninterruptibly until its child calls
    // execve or exits (it would not stop for ptrace): known by its wchan
    // where the kernel shows it, and by the child sharing its memory.
    for &tid in &tids {
        let wchan = read(pid, &format!("task/{tid}/wchan")).unwrap_or_default();
        if wchan.trim() == "wait_for_vfork_done" {
            return Err(TreeError::InVfork {
                pid,
                waiter: pid,
                why: format!(
                    "thread {tid} is in vfork(), waiting for its child to exec or exit: a process \
                 sharing its memory with a child cannot be dumped"
                ),
            });
        }
    }
    for child in children(pid, &tids) {
        if fds::same_address_space(pid, child).unwrap_or(false) {
            return Err(TreeError::InVfork {
                pid,
                waiter: pid,
                why: format!(
                    "is in vfork() (or clone(CLONE_VM)): its child pid {child} shares its memory \
                     and has not called execve; a process sharing its memory with a child cannot \
                     be dumped"
                ),
            });
        }
    }
    let status = read(pid, "status").unwrap_or_default();
    if process::effective_uid() != 0 {
        let uid = status_field(&status, "Uid:").unwrap_or("");
        if uid != root.uid_line {
            return refuse(format!(
                "belongs to another user than the root pid {} (Uid {uid}, the root's {}): run \
                 crdump as root",
                root.pid, root.uid_line
            ));
        }
    }
    let levels = status_field(&status, "NSpid:").map_or(1, |v| v.split_whitespace().count());
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    if levels != root.nspid_levels || (ns.is_some() && root.pid_ns.is_some() && ns != root.pid_ns) {
        return refuse(format!(
            "runs in another pid namespace than the root pid {} (a child in its own pid \
             namespace cannot be restored yet)",
            root.pid
        ));
    }
    Ok(Member::Live)
}

/// How many times the tree is frozen again after a `vfork()` that ended
/// (a shell running commands keeps starting new ones).
const VFORK_RETRIES: usize = 20;

/// How long a `vfork()` may last before the tree is refused.
pub const VFORK_LIMIT: Duration = Duration::from_secs(2);

/// Freeze `root` and all its descendants. A cancel request stops it,
/// everything frozen so far detached. A process found in `vfork()` (dash
/// and sh start commands so) does not stop for ptrace and shares its
/// memory with its child until the child calls execve or exits: the whole
/// tree is detached, the vfork waited for (at most [`VFORK_LIMIT`]), and
/// the tree frozen again, a bounded number of times; only a vfork that
/// lasts is refused, by name.
pub fn freeze_tree(root: i32) -> Result<FrozenTree, TreeError> {
    let mut retries = 0;
    loop {
        match freeze_tree_once(root) {
            Err(TreeError::InVfork { pid, waiter, why }) => {
                if crate::cancel_requested() {
                    return Err(FreezeError::Cancelled { pid }.into());
                }
                if !vfork_ends(waiter, VFORK_LIMIT) {
                    return Err(TreeError::InVfork {
                        pid,
                        waiter,
                        why: format!("{why} (still so after {} s)", VFORK_LIMIT.as_secs()),
                    });
                }
                if retries == VFORK_RETRIES {
                    return Err(TreeError::InVfork {
                        pid,
                        waiter,
                        why: format!(
                            "{why} (found in vfork() again at each of {} tries)",
                            VFORK_RETRIES + 1
                        ),
                    });
                }
                retries += 1;
            }
            r => return r,
        }
    }
}

/// Whether process `pid` is in `vfork()`: a thread of it waits for its
/// child there, or a child of it shares its memory.
fn in_vfork(pid: i32) -> bool {
    let tids = task_ids(pid);
    tids.iter().any(|tid| {
        read(pid, &format!("task/{tid}/wchan")).is_ok_and(|w| w.trim() == "wait_for_vfork_done")
    }) || children(pid, &tids)
        .into_iter()
        .any(|child| fds::same_address_space(pid, child).unwrap_or(false))
}

/// Wait (short sleeps: nothing signals it) until `pid` is out of
/// `vfork()` or gone, for at most `limit`. False when it still is, or on a
/// cancel request.
fn vfork_ends(pid: i32, limit: Duration) -> bool {
    let started = Instant::now();
    while in_vfork(pid) {
        if started.elapsed() >= limit || crate::cancel_requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn freeze_tree_once(root: i32) -> Result<FrozenTree, TreeError> {
    let facts = root_facts(root)?;
    let mut tree = FrozenTree {
        processes: vec![Frozen::freeze(root)?],
        zombies: Vec::new(),
    };
    let mut seen: BTreeSet<i32> = BTreeSet::from([root]);
    loop {
        let mut new = Vec::new();
        for f in &tree.processes {
            for child in children(f.pid(), f.tids()) {
                if seen.insert(child) {
                    new.push((f.pid(), child));
                }
            }
        }
        if new.is_empty() {
            break;
        }
        for (parent, pid) in new {
            if crate::cancel_requested() {
                return Err(FreezeError::Cancelled { pid }.into());
            }
            match member(parent, pid, &facts)? {
                Member::Gone => continue,
                Member::Zombie(stat) => tree.zombies.push(Zombie { pid, stat: *stat }),
                Member::Live => match Frozen::freeze(pid) {
                    Ok(frozen) => {
                        // A vfork() child before its execve, or a
                        // clone(CLONE_VM) child: one address space for two.
                        if fds::same_address_space(parent, pid).unwrap_or(false) {
                            return Err(TreeError::InVfork {
                                pid,
                                waiter: parent,
                                why: format!(
                                    "shares its address space with its parent pid {parent} (a \
                                     vfork() child that has not called execve, or \
                                     clone(CLONE_VM)): it cannot be dumped"
                                ),
                            });
                        }
                        tree.processes.push(frozen);
                    }
                    // It exited meanwhile (the parent is frozen: it is a
                    // zombie now, unless the kernel reaped it).
                    Err(FreezeError::Exited { .. }) => match member(parent, pid, &facts)? {
                        Member::Zombie(stat) => tree.zombies.push(Zombie { pid, stat: *stat }),
                        Member::Gone => {}
                        Member::Live => return Err(FreezeError::Exited { pid }.into()),
                    },
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }
    tree.zombies.sort_by_key(|z| z.pid);
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every step; `arm` fails for `bad_arm`, `kill` for `bad_kill`.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<String>,
        bad_arm: Option<i32>,
        bad_kill: Option<i32>,
    }

    impl KillSteps for Recorder {
        fn arm(&mut self, pid: i32, tid: i32) -> Result<(), FreezeError> {
            self.steps.push(format!("arm {tid}"));
            if self.bad_arm == Some(tid) {
                return Err(FreezeError::Exited { pid });
            }
            Ok(())
        }
        fn kill(&mut self, pid: i32) -> Result<(), FreezeError> {
            self.steps.push(format!("kill {pid}"));
            if self.bad_kill == Some(pid) {
                return Err(FreezeError::Kill {
                    pid,
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            Ok(())
        }
        fn reap(&mut self, pid: i32, tids: &[i32]) {
            self.steps.push(format!("reap {pid} {tids:?}"));
        }
    }

    fn tree() -> Vec<(i32, Vec<i32>)> {
        vec![(10, vec![10, 11]), (20, vec![20]), (30, vec![30, 31])]
    }

    #[test]
    fn every_thread_is_armed_then_every_process_killed_then_each_reaped() {
        let mut r = Recorder::default();
        arm_all(&mut r, &tree()).unwrap();
        kill_all(&mut r, &tree()).unwrap();
        assert_eq!(
            r.steps,
            [
                "arm 10",
                "arm 11",
                "arm 20",
                "arm 30",
                "arm 31",
                "kill 30",
                "kill 20",
                "kill 10",
                "reap 30 [30, 31]",
                "reap 20 [20]",
                "reap 10 [10, 11]",
            ]
        );
    }

    #[test]
    fn a_failed_arm_kills_nothing_and_a_failed_kill_stops_no_other() {
        let mut r = Recorder {
            bad_arm: Some(20),
            ..Recorder::default()
        };
        assert!(arm_all(&mut r, &tree()).is_err());
        assert!(
            r.steps.iter().all(|s| s.starts_with("arm")),
            "{:?}",
            r.steps
        );

        let mut r = Recorder {
            bad_kill: Some(20),
            ..Recorder::default()
        };
        let e = kill_all(&mut r, &tree()).unwrap_err();
        assert!(e.to_string().contains("pid 20"), "{e}");
        assert_eq!(
            r.steps,
            [
                "kill 30",
                "kill 20",
                "kill 10",
                "reap 30 [30, 31]",
                "reap 10 [10, 11]",
            ]
        );
    }
}
