//! Process trees for the `crrestore-tree` tests: start a tree in a session
//! of its own, list it as `ps` shows it, dump it with `crdump`, restore it
//! with `crrestore-tree DIR`, and kill every process of it, however the
//! test ends.
//!
//! A tree's stdout and stderr are one file opened with `O_APPEND`
//! ([`TreeOutput`]): every process of the tree writes its protocol lines
//! there (one `write` per line, so lines of different processes never mix),
//! and the file is restored as a file, so nothing of the tree holds a pipe
//! to the test or to `crrestore-tree`.
//!
//! The test process makes itself a child subreaper ([`become_subreaper`]):
//! a restored root whose `crrestore-tree` exited comes back to the test, as
//! the original's parent was the test, so ppids compare too. Orphans of a
//! killed tree come back to it as well: [`TreeGuard`] reaps them (by the
//! tree's process groups, never another test's children), so the pids are
//! free again for the next restore.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cli::{run, CliError, RunOutput};
use crate::facts::Facts;
use crate::paths::{find_binary, workload_path, PathsError};
use crate::process::{only_stdio, ProcessError, LINE_TIMEOUT};
use crate::sys;

/// How long a tree may take to get ready, be dumped, be gone or be back.
pub const TREE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often files and `/proc` are polled while waiting.
const POLL: Duration = Duration::from_millis(5);

/// What went wrong with a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot create {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no line starting with `{prefix}` in {path} within {waited:?}; it holds:\n{content}")]
    NoLine {
        prefix: String,
        path: PathBuf,
        waited: Duration,
        content: String,
    },
    #[error("{path}: `{line}`")]
    Failed { path: PathBuf, line: String },
    #[error("pids {pids:?} of the tree are still there after {waited:?} (not yet reaped)")]
    NotGone { pids: Vec<i32>, waited: Duration },
    #[error("no process of pid {inner} in a pid namespace of its own within {waited:?}")]
    NotInPidns { inner: i32, waited: Duration },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Paths(#[from] PathsError),
}

/// `crrestore-tree`, found like the other binaries ([`find_binary`]).
pub fn crrestore_tree_binary() -> Result<PathBuf, PathsError> {
    find_binary("crrestore-tree")
}

/// Make the test process a child subreaper (`PR_SET_CHILD_SUBREAPER`):
/// orphans of the trees it starts, a restored root among them, become its
/// children instead of init's.
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true)
        .unwrap_or_else(|e| panic!("PR_SET_CHILD_SUBREAPER: {e}"));
}

/// The stdout and stderr of a tree: one file, opened with `O_APPEND`, read
/// line by line. A mark (the lines consumed so far) lets a test wait for
/// lines written after a restore only.
#[derive(Debug)]
pub struct TreeOutput {
    path: PathBuf,
    consumed: usize,
}

impl TreeOutput {
    /// Create `path` (it must not exist); the output and the file the tree
    /// writes to.
    pub fn create(path: &Path) -> Result<(TreeOutput, File), TreeError> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(|source| TreeError::Output {
                path: path.to_path_buf(),
                source,
            })?;
        Ok((
            TreeOutput {
                path: path.to_path_buf(),
                consumed: 0,
            },
            file,
        ))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete line in the file now.
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        if complete.is_empty() && !text.starts_with('\n') {
            return Vec::new();
        }
        complete.split('\n').map(str::to_owned).collect()
    }

    /// Consume every line written so far: later waits see only newer ones.
    pub fn mark(&mut self) {
        self.consumed = self.lines().len();
    }

    /// The next unconsumed line starting with `prefix` (the lines before
    /// it are consumed too), waiting for at most `timeout`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, TreeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if let Some(at) = lines
                .iter()
                .skip(self.consumed)
                .position(|l| l.starts_with(prefix))
            {
                self.consumed += at + 1;
                return Ok(lines[self.consumed - 1].clone());
            }
            if Instant::now() >= deadline {
                return Err(TreeError::NoLine {
                    prefix: prefix.to_owned(),
                    path: self.path.clone(),
                    waited: timeout,
                    content: self.recent(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Self::wait_line`] with [`TREE_TIMEOUT`], panicking with the file.
    #[track_caller]
    pub fn expect_line(&mut self, prefix: &str) -> Facts {
        match self.wait_line(prefix, TREE_TIMEOUT) {
            Ok(line) => Facts::parse(&line),
            Err(e) => panic!("{e}"),
        }
    }

    /// Wait until `n` lines starting with `prefix` came after the mark, in
    /// whatever order the processes wrote them (none is consumed): their
    /// facts. Panics with the file when they do not come.
    #[track_caller]
    pub fn expect_lines(&self, prefix: &str, n: usize) -> Vec<Facts> {
        let deadline = Instant::now() + TREE_TIMEOUT;
        loop {
            let found: Vec<Facts> = self
                .lines()
                .iter()
                .skip(self.consumed)
                .filter(|l| l.starts_with(prefix))
                .map(|l| Facts::parse(l))
                .collect();
            if found.len() >= n {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} lines starting with `{prefix}` in {}, not {n}, within {TREE_TIMEOUT:?}; it holds:\n{}",
                    found.len(),
                    self.path.display(),
                    self.recent()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The verdict `PASS <who> ...` of a workload process, not earlier than
    /// the mark: its facts; panics on `FAIL <who> ...` or when none comes.
    #[track_caller]
    pub fn expect_pass(&mut self, who: &str) -> Facts {
        let (pass, fail) = (format!("PASS {who}"), format!("FAIL {who}"));
        let deadline = Instant::now() + TREE_TIMEOUT;
        loop {
            let lines = self.lines();
            let found = lines
                .iter()
                .enumerate()
                .skip(self.consumed)
                .find(|(_, l)| l.starts_with(&pass) || l.starts_with(&fail));
            if let Some((at, line)) = found {
                if line.starts_with(&fail) {
                    panic!(
                        "{}",
                        TreeError::Failed {
                            path: self.path.clone(),
                            line: line.clone(),
                        }
                    );
                }
                self.consumed = at + 1;
                return Facts::parse(line);
            }
            if Instant::now() >= deadline {
                panic!(
                    "no `{pass}` in {} within {TREE_TIMEOUT:?}; it holds:\n{}",
                    self.path.display(),
                    self.recent()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last lines of the file, for messages.
    pub fn recent(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(30);
        lines[from..].join("\n")
    }
}

/// A tree the test started: its root (the test's child, held by a pidfd)
/// and its output.
///
/// The root is reaped through its pidfd (`waitid(P_PIDFD)`), never by
/// std's `Child::wait`: a [`TreeGuard`] of the tree may reap it first, and
/// then nothing would remember that the pid is no longer the root's.
#[derive(Debug)]
pub struct Tree {
    pid: i32,
    pidfd: OwnedFd,
    pub out: TreeOutput,
}

impl Tree {
    /// Start `program args` as the root of a tree in a session of its own
    /// (`setsid`, which execs it without forking: the root's pid is the
    /// child's), with stdin `/dev/null` and stdout and stderr appended to
    /// `output`, and only those fds open.
    pub fn spawn<I, S>(program: &Path, args: I, output: &Path) -> Result<Tree, TreeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("setsid");
        command.arg(program).args(args);
        Tree::spawn_command(&program.display().to_string(), command, output)
    }

    /// [`Self::spawn`] of workload `name` (see [`workload_path`]).
    pub fn start_workload<I, S>(name: &str, args: I, output: &Path) -> Tree
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Tree::spawn(&workload_path(name), args, output).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start `command` (whose program calls `setsid` itself, or is the
    /// `setsid` program) with the tree's stdio.
    pub fn spawn_command(
        what: &str,
        mut command: Command,
        output: &Path,
    ) -> Result<Tree, TreeError> {
        let (out, file) = TreeOutput::create(output)?;
        let err = file.try_clone().map_err(|source| TreeError::Output {
            path: output.to_path_buf(),
            source,
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        only_stdio(&mut command);
        let child = command.spawn().map_err(|source| TreeError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        // Linux pids fit in i32 (pid_max is at most 2^22).
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // Not reaped yet (std never waits for it): the pid is the root's.
        let pidfd = sys::pidfd_open(pid).map_err(|source| ProcessError::Pidfd { pid, source })?;
        // Dropping a std Child neither kills nor waits for it.
        drop(child);
        Ok(Tree { pid, pidfd, out })
    }

    /// The root's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Wait, for at most `timeout`, until the root has exited, and reap it:
    /// its status, or `None` when something else reaped it already (a
    /// [`TreeGuard`]).
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<WaitStatus>, TreeError> {
        let pid = self.pid;
        let exited = sys::wait_readable(self.pidfd.as_raw_fd(), timeout)
            .map_err(|source| ProcessError::Wait { pid, source })?;
        if !exited {
            return Err(ProcessError::ExitTimeout {
                pid,
                waited: timeout,
            }
            .into());
        }
        match waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED) {
            Ok(status) => Ok(Some(status)),
            Err(nix::errno::Errno::ECHILD) => Ok(None),
            Err(errno) => Err(ProcessError::Wait {
                pid,
                source: errno.into(),
            }
            .into()),
        }
    }
}

impl Drop for Tree {
    /// A tree still running when its test ends (a failure before the dump)
    /// goes whole: every descendant of the root, not just the root.
    fn drop(&mut self) {
        let mut pids = tree_pids(self.pid);
        pids.retain(|&p| p != self.pid);
        let rest = TreeGuard::hold(&pids);
        let _ = sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
        drop(rest);
    }
}

/// `pid` and all its descendants (through every thread's `children`),
/// sorted.
pub fn tree_pids(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut at = 0;
    while at < all.len() {
        let p = all[at];
        at += 1;
        for child in children_of(p) {
            if !all.contains(&child) {
                all.push(child);
            }
        }
    }
    all.sort_unstable();
    all
}

/// The children of every thread of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    children
}

/// `ps -o pid,ppid,pgid,sid,comm` of `pids`: the header and a line per
/// process, in pid order.
pub fn ps_listing(pids: &[i32]) -> String {
    let list: Vec<String> = pids.iter().map(i32::to_string).collect();
    let mut c = Command::new("ps");
    c.args(["-o", "pid,ppid,pgid,sid,comm", "-p", &list.join(",")]);
    let out = run(c, LINE_TIMEOUT).unwrap_or_else(|e| panic!("ps: {e}"));
    out.stdout
}

/// [`ps_listing`] of `root` and its descendants.
pub fn ps_tree(root: i32) -> String {
    ps_listing(&tree_pids(root))
}

/// The fields of `/proc/PID/stat` after the command name (`state` first),
/// or `None` once the pid is gone.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process group of `pid` (`stat` field 5).
pub fn pgid_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// `TracerPid` of `/proc/PID/status` (0: not traced), or `None` once the
/// pid is gone.
pub fn tracer_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The process state letter of `pid` (`R`, `S`, `Z`, `t`, ...).
pub fn state_of(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The pids of `/proc/PID/status`'s `NSpid` line, outermost first.
pub fn nspids(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid in `/proc` (in the test's pid namespace).
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A tree restored with `--pidns`: the outer pid of the process that has
/// pid `inner` in a pid namespace below ours, whose parent is that
/// namespace's init (pid 1 there), a descendant of the test (so another
/// program's namespace is never taken for it); waits for it for at most
/// `timeout`. Returns (init's outer pid, the root's outer pid).
pub fn find_in_pidns(inner: i32, timeout: Duration) -> Result<(i32, i32), TreeError> {
    let deadline = Instant::now() + timeout;
    let ours = std::process::id() as i32;
    loop {
        let descendants = tree_pids(ours);
        for pid in descendants.iter().copied() {
            let ns = nspids(pid);
            if ns.len() < 2 || ns.last() != Some(&inner) {
                continue;
            }
            let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<i32>().ok()) else {
                continue;
            };
            if nspids(ppid).last() == Some(&1) && descendants.contains(&ppid) {
                return Ok((ppid, pid));
            }
        }
        if Instant::now() >= deadline {
            return Err(TreeError::NotInPidns {
                inner,
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The outer pid of each process of the tree under `outer_root` (itself
/// included), by its pid in its own namespace.
pub fn inner_to_outer(outer_root: i32) -> Vec<(i32, i32)> {
    tree_pids(outer_root)
        .into_iter()
        .filter_map(|p| Some((*nspids(p).last()?, p)))
        .collect()
}

/// A tree restored with `--pidns` whose root has pid `root` in its
/// namespace: held (its init too), with the outer pid of each process by
/// its pid in the namespace. Panics (after killing what a restore left
/// there, [`kill_left_behind`]) when it does not show up.
#[track_caller]
pub fn hold_pidns_tree(root: i32) -> (TreeGuard, Vec<(i32, i32)>) {
    let (init, outer_root) = find_in_pidns(root, TREE_TIMEOUT).unwrap_or_else(|e| {
        kill_left_behind(&[root]);
        panic!("{e}")
    });
    let mapping = inner_to_outer(outer_root);
    let mut guard = TreeGuard::hold(&[init]).unwrap_or_else(|e| panic!("{e}"));
    for (_, outer) in &mapping {
        // A process gone already is the test's to notice, not the guard's.
        let _ = guard.add(*outer);
    }
    (guard, mapping)
}

/// Every process of a tree, held by pidfds: dropping the guard SIGKILLs
/// each (a kill reaches that process or nothing) and reaps those that came
/// back to the test, through the tree's process groups.
#[derive(Debug)]
pub struct TreeGuard {
    held: Vec<(i32, OwnedFd)>,
    pgids: Vec<i32>,
}

impl TreeGuard {
    /// Hold `pids` (each must exist now, zombies included).
    pub fn hold(pids: &[i32]) -> Result<TreeGuard, TreeError> {
        let mut guard = TreeGuard {
            held: Vec::new(),
            pgids: Vec::new(),
        };
        for &pid in pids {
            guard.add(pid)?;
        }
        Ok(guard)
    }

    /// Hold `root` and its descendants now. A descendant that exits
    /// between the listing and its pidfd (a shell's short-lived `sleep`)
    /// is left out; `root` itself must exist.
    pub fn hold_tree(root: i32) -> TreeGuard {
        let mut guard = TreeGuard {
            held: Vec::new(),
            pgids: Vec::new(),
        };
        for pid in tree_pids(root) {
            if let Err(e) = guard.add(pid) {
                if pid == root || state_of(pid).is_some() {
                    panic!("{e}");
                }
            }
        }
        guard
    }

    /// Hold one more process.
    pub fn add(&mut self, pid: i32) -> Result<(), TreeError> {
        if self.held.iter().any(|(p, _)| *p == pid) {
            return Ok(());
        }
        let fd = sys::pidfd_open(pid).map_err(|source| ProcessError::Pidfd { pid, source })?;
        // The test's own group is not the tree's (a `--pidns` init made
        // by crrestore-tree stays in it): its other members are the
        // test's other children and the test itself.
        let ours = nix::unistd::getpgrp().as_raw();
        if let Some(pgid) = pgid_of(pid).filter(|&g| g != ours) {
            if !self.pgids.contains(&pgid) {
                self.pgids.push(pgid);
            }
        }
        self.held.push((pid, fd));
        Ok(())
    }

    /// The pids held, sorted.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.held.iter().map(|(p, _)| *p).collect();
        pids.sort_unstable();
        pids
    }

    /// The held pids whose process still exists (running, stopped or a
    /// zombie: not yet reaped).
    pub fn present(&self) -> Vec<i32> {
        let mut present: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, fd)| sys::pidfd_send_signal(fd.as_fd().as_raw_fd(), 0).is_ok())
            .map(|(p, _)| *p)
            .collect();
        present.sort_unstable();
        present
    }

    /// Send signal `sig` to held process `pid` (through its pidfd).
    #[track_caller]
    pub fn signal(&self, pid: i32, sig: i32) {
        let (_, fd) = self
            .held
            .iter()
            .find(|(p, _)| *p == pid)
            .unwrap_or_else(|| panic!("pid {pid} is not held (held: {:?})", self.pids()));
        sys::pidfd_send_signal(fd.as_raw_fd(), sig)
            .unwrap_or_else(|e| panic!("cannot send signal {sig} to pid {pid}: {e}"));
    }

    /// SIGKILL every held process.
    pub fn kill(&self) {
        for (_, fd) in &self.held {
            // ESRCH: already gone, the expected case after a clean test.
            let _ = sys::pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
        }
    }

    /// Reap the held processes and the zombies of the tree's process
    /// groups that are the test's children (orphans that came back to the
    /// subreaper).
    fn reap(&self) {
        for (_, fd) in &self.held {
            // ECHILD: not the test's child; its parent reaps it.
            let _ = waitid(
                Id::PIDFd(fd.as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            );
        }
        for &pgid in &self.pgids {
            // ECHILD: none of ours in that group; 0 (StillAlive): none yet.
            while let Ok(status) = waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
            }
        }
    }

    /// Wait, for at most `timeout`, until every held process is gone and
    /// reaped and no process is left in the tree's process groups (their
    /// pids are free for a restore), reaping what came back to the test.
    pub fn wait_gone(&self, timeout: Duration) -> Result<(), TreeError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap();
            let mut left = self.present();
            for pid in all_pids() {
                if pgid_of(pid).is_some_and(|g| self.pgids.contains(&g)) && !left.contains(&pid) {
                    left.push(pid);
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TreeError::NotGone {
                    pids: left,
                    waited: timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL everything and wait until it is gone ([`Self::wait_gone`]).
    pub fn kill_and_wait(&self) -> Result<(), TreeError> {
        self.kill();
        self.wait_gone(TREE_TIMEOUT)
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        self.kill();
        let _ = self.wait_gone(Duration::from_secs(10));
    }
}

/// `crrestore-tree DIR args...`, starting with only its stdio.
pub fn restore_tree_command<I, S>(dir: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let binary = crrestore_tree_binary().unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(binary);
    command.arg(dir).args(args);
    only_stdio(&mut command);
    command
}

/// Run `crrestore-tree DIR args...` to completion (stdin `/dev/null`,
/// output collected), whatever its status. When it fails, whatever it
/// left of the tree `pids` (the dump's pids) is killed
/// ([`kill_left_behind`]).
pub fn run_restore_tree<I, S>(dir: &Path, args: I, pids: &[i32]) -> Result<RunOutput, CliError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = run(restore_tree_command(dir, args), TREE_TIMEOUT);
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        kill_left_behind(pids);
    }
    out
}

/// After a failed restore: SIGKILL and reap the processes it left that
/// came back to the test (they are its descendants) with one of the
/// dump's `pids`, in the test's pid namespace or in one below it (a
/// `--pidns` restore's, whose init goes too). Nothing else is touched.
pub fn kill_left_behind(pids: &[i32]) {
    let ours = std::process::id() as i32;
    let is_tree = |p: i32| nspids(p).last().is_some_and(|inner| pids.contains(inner));
    let left: Vec<i32> = tree_pids(ours)
        .into_iter()
        .filter(|&p| {
            p != ours
                && (is_tree(p)
                    || (nspids(p).len() > 1
                        && nspids(p).last() == Some(&1)
                        && children_of(p).into_iter().any(is_tree)))
        })
        .collect();
    if let Ok(guard) = TreeGuard::hold(&left) {
        drop(guard);
    }
}

/// `crrestore-tree DIR args...` (default mode: it returns once the tree
/// runs), panicking with its stderr unless it exits 0 (after killing what
/// it left of the tree `pids`, see [`run_restore_tree`]).
#[track_caller]
pub fn restore_tree<I, S>(dir: &Path, args: I, pids: &[i32]) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let command = restore_tree_command(dir, args);
    let what = format!("{command:?}");
    let out = run(command, TREE_TIMEOUT);
    let failed = match &out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "failed ({}):\nstdout:\n{}\nstderr:\n{}",
            o.status, o.stdout, o.stderr
        )),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = failed {
        kill_left_behind(pids);
        if let Ok(o) = &out {
            panic_if_pid_taken(o.status.code(), &o.stderr);
        }
        panic!("{what} {why}");
    }
    out.unwrap_or_else(|e| panic!("{e}"))
}

/// crrestore-tree's exit code for "a pid of the dump is taken".
pub const PID_TAKEN_EXIT: i32 = 2;

/// The panic payload of a restore at the dump's own pids that found one
/// taken: between the kill of the original and the restore, the kernel
/// gave a freed pid to some other process of the machine (pid_max may be
/// as low as 32768, and CI runs compilers and other tests beside us).
/// Nothing in the test can prevent that; [`retrying_taken_pids`] runs the
/// scenario again with new pids.
pub struct PidTaken(pub String);

/// Panic with [`PidTaken`] when a crrestore-tree that exited with `code`
/// and printed `stderr` says one of the dump's pids was taken. Tests that
/// expect their restore at the original pids to succeed call it before
/// they assert on it.
pub fn panic_if_pid_taken(code: Option<i32>, stderr: &str) {
    if code == Some(PID_TAKEN_EXIT) {
        if let Some(line) = stderr.lines().find(|l| l.contains(" is taken")) {
            std::panic::panic_any(PidTaken(line.to_owned()));
        }
    }
}

/// How many times a scenario runs at most when its pids keep being taken.
const PID_TAKEN_TRIES: usize = 3;

/// Run `scenario` (a whole test: workload, dump, kill, restore) and run it
/// again from the start when it panicked with [`PidTaken`], at most
/// [`PID_TAKEN_TRIES`] times in all; its guards have cleaned up by then.
/// Any other panic is passed on as it is, and so is the last `PidTaken`,
/// as a message: a pid that is taken every time is the test's failure.
pub fn retrying_taken_pids(mut scenario: impl FnMut()) {
    for attempt in 1..=PID_TAKEN_TRIES {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut scenario));
        let Err(payload) = run else { return };
        match payload.downcast::<PidTaken>() {
            Ok(taken) if attempt < PID_TAKEN_TRIES => {
                eprintln!(
                    "another process took a pid of the dump ({}): running the scenario again (try {} of {PID_TAKEN_TRIES})",
                    taken.0,
                    attempt + 1
                );
            }
            Ok(taken) => panic!(
                "a pid of the dump was taken in each of {PID_TAKEN_TRIES} tries: {}",
                taken.0
            ),
            Err(other) => std::panic::resume_unwind(other),
        }
    }
}

/// `crdump --pid pid -o out [--leave-running]` of a tree (crdump itself
/// waits out a process of the tree that is in `vfork()` for a moment, as
/// dash's every external command is).
pub fn dump_tree(
    bins: &crate::Binaries,
    pid: i32,
    out: &Path,
    leave_running: bool,
) -> Result<crate::Dump, CliError> {
    bins.dump(pid, out, leave_running)
}

/// Dump the tree of `tree`'s root (crdump kills it) into `out` (see
/// [`dump_tree`]), and wait until every process of it is gone and reaped
/// (`held` holds them): the pids are free for the restore. Panics with
/// crdump's reasons.
#[track_caller]
pub fn dump_and_kill_tree(
    bins: &crate::Binaries,
    tree: &mut Tree,
    held: &TreeGuard,
    out: &Path,
) -> crate::Dump {
    let pid = tree.pid();
    let dump = dump_tree(bins, pid, out, false)
        .unwrap_or_else(|e| panic!("crdump refused the tree of pid {pid}: {e}"));
    tree.wait_exit(TREE_TIMEOUT)
        .unwrap_or_else(|e| panic!("crdump did not kill the root {pid}: {e}"));
    held.wait_gone(TREE_TIMEOUT)
        .unwrap_or_else(|e| panic!("crdump did not kill the whole tree: {e}"));
    dump
}

#[cfg(test)]
mod tests {
    use super::{
        become_subreaper, panic_if_pid_taken, retrying_taken_pids, state_of, tree_pids, Tree,
        TreeGuard, TreeOutput, PID_TAKEN_EXIT, PID_TAKEN_TRIES,
    };
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn output_lines_are_waited_for_after_the_mark_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut out, mut file) = TreeOutput::create(&dir.path().join("out")).unwrap();
        file.write_all(b"READY a\nPASS a x=1\npartial").unwrap();
        assert_eq!(out.lines(), ["READY a", "PASS a x=1"]);
        assert_eq!(out.expect_lines("READY", 1)[0].line(), "READY a");
        out.mark();
        assert!(out.wait_line("PASS a", Duration::from_millis(50)).is_err());
        file.write_all(b" line\nPASS b\nPASS a x=2\n").unwrap();
        assert_eq!(out.expect_pass("a").get("x"), Some("2"));
        assert!(TreeOutput::create(&dir.path().join("out")).is_err());
    }

    #[test]
    fn a_dropped_tree_and_a_dropped_guard_take_every_process_and_reap_it() {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let script = "sleep 300 & sleep 300 & echo READY; wait";
        for by_guard in [false, true] {
            let out = dir.path().join(format!("out-{by_guard}"));
            let tree = Tree::spawn(Path::new("sh"), ["-c", script], &out).unwrap();
            tree.out.expect_lines("READY", 1);
            let pids = tree_pids(tree.pid());
            assert_eq!(pids.len(), 3, "{pids:?}");
            if by_guard {
                let guard = TreeGuard::hold(&pids).unwrap();
                guard.kill_and_wait().unwrap();
                assert!(guard.present().is_empty());
                // The root came back to the test through its pidfd: none.
                assert_eq!(tree.wait_exit(Duration::from_secs(10)).unwrap(), None);
            }
            drop(tree);
            for p in pids {
                assert_eq!(state_of(p), None, "pid {p} is still there");
            }
        }
    }

    #[test]
    fn a_scenario_whose_pid_was_taken_runs_again_and_other_failures_do_not() {
        let mut runs = 0;
        retrying_taken_pids(|| {
            runs += 1;
            if runs == 1 {
                panic_if_pid_taken(
                    Some(PID_TAKEN_EXIT),
                    "crrestore-tree: pid 7 is taken (by \"x\")",
                );
            }
        });
        assert_eq!(runs, 2);
        // Exit 2 without the words, or the words with another exit: not a taken pid.
        let mut runs = 0;
        let other = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            retrying_taken_pids(|| {
                runs += 1;
                panic_if_pid_taken(Some(3), "pid 7 is taken");
                panic_if_pid_taken(Some(PID_TAKEN_EXIT), "crrestore-tree: bad manifest");
                panic!("the scenario's own failure");
            })
        }));
        assert!(other.is_err());
        assert_eq!(runs, 1);
        // Taken every time: the last try's failure is the test's, in words.
        let mut runs = 0;
        let always = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            retrying_taken_pids(|| {
                runs += 1;
                panic_if_pid_taken(Some(PID_TAKEN_EXIT), "pid 7 is taken (by \"x\")");
            })
        }));
        assert_eq!(runs, PID_TAKEN_TRIES);
        let message = always.unwrap_err();
        let text = message.downcast_ref::<String>().unwrap();
        assert!(text.contains("pid 7 is taken"), "{text}");
    }
}
