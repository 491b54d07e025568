//! Whom a dump stream on stdin counts as owned by (`crimg run -`).
//!
//! The loader bounds a task's credentials by the owner of its image file
//! (`binfmt_loader::check::credentials`): another user's image never runs
//! with more than that user has. A stream is received into a memfd, which
//! belongs to whoever runs `crimg run -`; handed to the loader as it is,
//! root running `crimg run - < /home/mallory/s.tar` would grant the uid 0
//! and capabilities mallory's stream records. So the memfd is given to the
//! stream's own origin first, and the loader's one rule does the rest:
//!
//! - a regular file: its owner (nobody when it lies on a `nosuid` mount,
//!   as the loader counts an image there);
//! - a Unix socket: its peer's credentials (`SO_PEERCRED`);
//! - a pipe or FIFO: the user every process holding its write end runs
//!   as (`crdump -o - | crimg run -`: crdump's; `ssh … | crimg run -`: the
//!   ssh client's);
//! - anything else, writers of several users, or none left: nobody.
//!
//! An unprivileged runner needs nothing of this (its own memfd bounds the
//! task by itself); a privileged one gives the memfd away with `fchown`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The ids of a stream's origin, and how they were found (for `-v` and
/// the warning when it is nobody).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOwner {
    pub uid: u32,
    pub gid: u32,
    pub how: String,
}

/// The kernel's overflow ids (nobody), as the loader reads them.
fn nobody(how: String) -> StreamOwner {
    let id = |path: &str| {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(65534)
    };
    StreamOwner {
        uid: id("/proc/sys/kernel/overflowuid"),
        gid: id("/proc/sys/kernel/overflowgid"),
        how,
    }
}

/// Whom the stream on fd 0 counts as owned by. Read before the stream is,
/// while its writer still holds the pipe.
pub fn of_stdin() -> io::Result<StreamOwner> {
    let meta = fs::metadata("/proc/self/fd/0")?;
    let kind = meta.file_type();
    if kind.is_file() {
        let stdin = File::open("/proc/self/fd/0")?;
        let nosuid = nix::sys::statvfs::fstatvfs(&stdin)
            .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
            .unwrap_or(true);
        if nosuid {
            return Ok(nobody(
                "stdin is a file on a nosuid mount (or one whose mount cannot be told)".into(),
            ));
        }
        return Ok(StreamOwner {
            uid: meta.uid(),
            gid: meta.gid(),
            how: "the owner of the file on stdin".into(),
        });
    }
    if kind.is_socket() {
        return Ok(match crate::sys::peer_credentials(0) {
            Ok((uid, gid)) => StreamOwner {
                uid,
                gid,
                how: "the peer of the socket on stdin".into(),
            },
            Err(e) => nobody(format!("stdin is a socket whose peer cannot be told ({e})")),
        });
    }
    if kind.is_fifo() {
        return Ok(pipe_writers(meta.ino()));
    }
    Ok(nobody(
        "stdin is neither a file, a socket nor a pipe".into(),
    ))
}

/// The one user of every process (other than this one) holding pipe
/// `ino` open for writing, else nobody.
fn pipe_writers(ino: u64) -> StreamOwner {
    let me = std::process::id().to_string();
    let mut users: Vec<(u32, u32)> = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return nobody("/proc cannot be read to find the pipe's writer".into());
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me || !holds_for_writing(pid, ino) {
            continue;
        }
        match effective_ids(pid) {
            Some(ids) if !users.contains(&ids) => users.push(ids),
            Some(_) => {}
            None => {
                return nobody(format!(
                    "a writer of the pipe on stdin, pid {pid}, cannot be read"
                ))
            }
        }
    }
    match users[..] {
        [(uid, gid)] => StreamOwner {
            uid,
            gid,
            how: "the user of the processes writing into the pipe on stdin".into(),
        },
        [] => nobody("no process holds the write end of the pipe on stdin any more".into()),
        _ => nobody("processes of several users write into the pipe on stdin".into()),
    }
}

/// Whether process `pid` has pipe `ino` open for writing.
fn holds_for_writing(pid: &str, ino: u64) -> bool {
    let target = format!("pipe:[{ino}]");
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
            && fd
                .file_name()
                .to_str()
                .and_then(|n| fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).ok())
                .and_then(|info| {
                    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                    u32::from_str_radix(flags.trim(), 8).ok()
                })
                .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
    })
}

/// The effective uid and gid of `pid` (`/proc/P/status`).
fn effective_ids(pid: &str) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let second = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((second("Uid:")?, second("Gid:")?))
}

/// Give the received image `memfd` to `owner` when it is not already
/// theirs (`fchown`, which needs CAP_CHOWN). A runner that cannot, and
/// cannot change ids either (no CAP_SETUID/CAP_SETGID: the loader then
/// restores only as the runner itself), needs nothing given; one that
/// could raise the task's ids but cannot give the image away is refused.
pub fn give(memfd: &File, owner: &StreamOwner) -> io::Result<()> {
    let meta = memfd.metadata()?;
    if (meta.uid(), meta.gid()) == (owner.uid, owner.gid) {
        return Ok(());
    }
    match std::os::unix::fs::fchown(memfd, Some(owner.uid), Some(owner.gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !can_change_ids() => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot give the received image to uid {} gid {} ({}): {e}",
                owner.uid, owner.gid, owner.how
            ),
        )),
    }
}

/// Whether this process is root or has CAP_SETUID or CAP_SETGID (in
/// `CapEff` of `/proc/self/status`); when that cannot be read, yes.
fn can_change_ids() -> bool {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = effective_ids("self").map(|(uid, _)| uid);
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match (euid, caps) {
        (Some(uid), Some(caps)) => uid == 0 || caps & (1 << CAP_SETUID | 1 << CAP_SETGID) != 0,
        _ => true,
    }
}
