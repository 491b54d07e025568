//! Every fd of every process, read once for a whole tree dump: who else
//! holds a process's pipes, sockets and event objects
//! ([`super::Task::holders_elsewhere`]) is then looked up here, instead of
//! reading all of `/proc/*/fd` again for each process (and each socket).
//!
//! Reading them costs a few milliseconds (an open, a `getdents` and a
//! `readlink` per fd of every process of the machine), while the target is
//! frozen. So [`FdIndex::scan`] lists the processes at once and reads their
//! fds in another thread, while the collect goes on with the target's own
//! files; the first question waits for the rest.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use super::task::{Held, Holders, SameWhen};
use crate::sys::fds;

/// The fds of every process but the dumper, as `/proc/P/fd` showed them
/// (being read until first asked, see the module doc).
#[derive(Debug, Default)]
pub struct FdIndex {
    /// The thread reading them; taken by the first question.
    pending: Mutex<Option<JoinHandle<Scanned>>>,
    /// The processes listed, for a scan in the asking thread when the
    /// reading thread could not be started or panicked.
    pids: Vec<i32>,
    scanned: OnceLock<Scanned>,
}

/// What was read.
#[derive(Debug, Default)]
struct Scanned {
    /// (pid, fd, link).
    entries: Vec<(i32, i32, String)>,
    /// Indices into `entries` by link.
    by_link: HashMap<String, Vec<usize>>,
    /// (entry, dev, ino) of the fds on paths, stat'ed when first needed
    /// (FIFOs are found by inode: they can be opened by several paths).
    inodes: OnceLock<Vec<(usize, u64, u64)>>,
    /// Processes whose fds could not be read.
    unreadable: Vec<i32>,
}

impl FdIndex {
    /// List the processes (an error here is the caller's) and start
    /// reading `/proc/P/fd` of each in another thread. A process that
    /// goes away meanwhile is skipped; one whose fds cannot be read is
    /// counted.
    pub fn scan() -> io::Result<Self> {
        let me = std::process::id();
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if u32::try_from(pid) != Ok(me) {
                pids.push(pid);
            }
        }
        let for_thread = pids.clone();
        let pending = std::thread::Builder::new()
            .name("fd-index".into())
            .spawn(move || Scanned::read(&for_thread))
            .ok();
        Ok(FdIndex {
            pending: Mutex::new(pending),
            pids,
            scanned: OnceLock::new(),
        })
    }

    /// What was read, waiting for the reading thread the first time.
    fn scanned(&self) -> &Scanned {
        self.scanned.get_or_init(|| {
            let pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            pending
                .and_then(|thread| thread.join().ok())
                .unwrap_or_else(|| Scanned::read(&self.pids))
        })
    }

    /// The (pid, fd) of every fd whose link is `link`.
    pub fn with_link<'a>(&'a self, link: &str) -> impl Iterator<Item = (i32, i32)> + 'a {
        let scanned = self.scanned();
        scanned
            .by_link
            .get(link)
            .into_iter()
            .flatten()
            .map(|&i| (scanned.entries[i].0, scanned.entries[i].1))
    }

    fn inodes(&self) -> &[(usize, u64, u64)] {
        let scanned = self.scanned();
        scanned.inodes.get_or_init(|| {
            scanned
                .entries
                .iter()
                .enumerate()
                .filter(|(_, (_, _, link))| link.starts_with('/'))
                .filter_map(|(i, &(pid, fd, _))| {
                    let m = fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
                    Some((i, m.dev(), m.ino()))
                })
                .collect()
        })
    }

    /// Which processes but `pid` hold the objects of `held` (`pid`'s fds),
    /// as [`super::Task::holders_elsewhere`] answers.
    pub fn holders(&self, pid: i32, held: &[Held]) -> Holders {
        let mut out = Holders {
            found: Vec::new(),
            unreadable: self
                .scanned()
                .unreadable
                .iter()
                .filter(|&&p| p != pid)
                .count(),
        };
        for (i, h) in held.iter().enumerate() {
            let mut add = |other: i32| {
                if other != pid && !out.found.contains(&(i, other)) {
                    out.found.push((i, other));
                }
            };
            match h.same_when {
                SameWhen::Link => self.with_link(&h.link).for_each(|(p, _)| add(p)),
                SameWhen::Description => {
                    for (p, ofd) in self.with_link(&h.link) {
                        if p != pid
                            && fds::same_description_across(pid, h.fd, p, ofd).unwrap_or(false)
                        {
                            add(p);
                        }
                    }
                }
                SameWhen::Inode => {
                    for &(e, dev, ino) in self.inodes() {
                        if dev == h.dev && ino == h.ino {
                            add(self.scanned().entries[e].0);
                        }
                    }
                }
            }
        }
        out
    }
}

impl Scanned {
    /// Read `/proc/P/fd` of each of `pids`.
    fn read(pids: &[i32]) -> Scanned {
        let mut index = Scanned::default();
        let gone = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH));
        for &pid in pids {
            let dir = match fs::read_dir(format!("/proc/{pid}/fd")) {
                Ok(d) => d,
                Err(e) if gone(&e) => continue,
                Err(_) => {
                    index.unreadable.push(pid);
                    continue;
                }
            };
            for entry in dir.flatten() {
                let Some(fd) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                let target = match fs::read_link(entry.path()) {
                    Ok(target) => target,
                    // Access to a process's fd links is decided for the
                    // process as a whole (ptrace read access): when one is
                    // refused, so are all its others. Not trying them saves
                    // a syscall each (pid 1 here: hundreds).
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => break,
                    Err(_) => continue,
                };
                let link = target.to_string_lossy().into_owned();
                index
                    .by_link
                    .entry(link.clone())
                    .or_default()
                    .push(index.entries.len());
                index.entries.push((pid, fd, link));
            }
        }
        index
    }
}
