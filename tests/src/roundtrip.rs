//! What the round-trip tests share: what the kernel shows of a process
//! before its dump, the dump that kills it, and the checks that a restored
//! process continues it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{Binaries, Dump};
use crate::facts::Facts;
use crate::process::{Workload, LINE_TIMEOUT};
use crate::ticks::TickStream;

/// The unprivileged user and group of the unprivileged tests.
pub const NOBODY: &str = "nobody";
pub const NOGROUP: &str = "nogroup";

/// The uid of [`NOBODY`] and the gid of [`NOGROUP`].
pub fn nobody_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name(NOBODY)
        .ok()
        .flatten()
        .expect("user nobody exists");
    let group = nix::unistd::Group::from_name(NOGROUP)
        .ok()
        .flatten()
        .expect("group nogroup exists");
    (user.uid.as_raw(), group.gid.as_raw())
}

/// The tids in `/proc/PID/task`.
pub fn tasks_of(pid: i32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/task: {err}"))
        .map(|entry| {
            let name = entry.unwrap().file_name();
            name.to_string_lossy()
                .parse()
                .unwrap_or_else(|_| panic!("odd entry {name:?} in /proc/{pid}/task"))
        })
        .collect()
}

/// `/proc/PID/maps`, one entry per line, fields separated by one space
/// (the kernel pads the path column; the padding is not state).
pub fn maps_of(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/maps: {err}"))
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What the kernel shows of a process that must survive a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessView {
    pub maps: Vec<String>,
    pub exe: PathBuf,
    pub cmdline: Vec<u8>,
    pub tasks: BTreeSet<i32>,
}

pub fn view_of(pid: i32) -> ProcessView {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    ProcessView {
        maps: maps_of(pid),
        exe: fs::read_link(proc_dir.join("exe"))
            .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/exe: {err}")),
        cmdline: fs::read(proc_dir.join("cmdline"))
            .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/cmdline: {err}")),
        tasks: tasks_of(pid),
    }
}

/// Panics with the lines that differ unless the maps are the same, in order.
pub fn assert_same_maps(before: &[String], after: &[String]) {
    if before == after {
        return;
    }
    let only_before: Vec<&str> = before
        .iter()
        .filter(|line| !after.contains(line))
        .map(String::as_str)
        .collect();
    let only_after: Vec<&str> = after
        .iter()
        .filter(|line| !before.contains(line))
        .map(String::as_str)
        .collect();
    panic!(
        "/proc/PID/maps after the restore differs from before the dump\n\
         only before the dump:\n  {}\nonly after the restore:\n  {}\n\
         (same lines in another order if both are empty)\nfull maps after the restore:\n  {}",
        only_before.join("\n  "),
        only_after.join("\n  "),
        after.join("\n  ")
    );
}

/// A workload after its dump: crdump killed it; its READY facts, its
/// output before the dump and what the kernel showed of it are kept.
pub struct Dumped {
    pub dump: Dump,
    pub ready: Facts,
    /// Every stdout line the original printed.
    pub before: Vec<String>,
    /// `/proc/PID` of the original, read right before the dump.
    pub view: ProcessView,
    pub pid: i32,
}

impl Dumped {
    pub fn ticks_before(&self) -> TickStream {
        TickStream::from_lines(&self.before).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The tids of the original other than its main thread's.
    pub fn other_tids(&self) -> BTreeSet<i32> {
        self.view
            .tasks
            .iter()
            .copied()
            .filter(|&t| t != self.pid)
            .collect()
    }
}

/// Dumps `workload` (which printed READY) into `out`; crdump kills it, and
/// it is reaped here, which also frees its tids for a restore's `set_tid`.
pub fn dump_and_kill(bins: &Binaries, mut workload: Workload, out: &Path) -> Dumped {
    let pid = workload.pid();
    let ready = workload
        .ready()
        .cloned()
        .expect("the workload printed READY before the dump");
    let view = view_of(pid);
    let dump = bins
        .dump(pid, out, false)
        .unwrap_or_else(|err| panic!("crdump of {} (pid {pid}): {err}", workload.name()));
    let status = workload
        .wait_exit(LINE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{} was not killed by crdump: {err}", workload.name()));
    assert!(
        !status.success(),
        "{} exited by itself ({status}) instead of being killed by crdump",
        workload.name()
    );
    Dumped {
        dump,
        ready,
        before: workload.stdout_lines().to_vec(),
        view,
        pid,
    }
}

/// The restored process's ticks continue the original's exactly; returns
/// the last tick before and the first after.
pub fn assert_ticks_resume(dumped: &Dumped, restored: &mut Workload) -> (u64, u64) {
    let after = TickStream::from_lines(restored.stdout_lines()).unwrap();
    dumped
        .ticks_before()
        .check_resumed_by(&after)
        .unwrap_or_else(|err| panic!("{err}\n{}", restored.stderr_report()))
}

/// `setpriv` running the rest of the command as nobody:nogroup.
pub fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOGROUP,
        "--clear-groups",
        "--",
    ]);
    command
}
