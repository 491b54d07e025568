//! The objects several processes of a tree hold, found across their
//! collected states for the manifest's `shared` list: holders grouped by
//! object (the same pipe, FIFO, file or memfd inode; the same anonymous
//! inode), then within an object by open file description (`kcmp` across
//! processes). What is shared but cannot be restored shared (a terminal
//! that is not the root's stdio, a sealed memfd) is refused here, by pid,
//! fd and kind. Pure bookkeeping over plain states: the description
//! comparison is the caller's closure, so it is unit-tested without
//! processes.

use std::collections::BTreeMap;

use image_format::records::{fd_flags, fd_kind, shmem_kind, FdRecord};
use image_format::text::Escaped;
use image_manifest::{Holder, SharedKind, SharedObject};
use image_writer::model::{FdState, TaskState};

/// Whether fd `a.1` of process `a.0` and fd `b.1` of process `b.0` are
/// one open file description (`kcmp(KCMP_FILE)`).
pub type SameDescription<'a> = dyn FnMut((i32, i32), (i32, i32)) -> bool + 'a;

/// What [`find`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub objects: Vec<SharedObject>,
    /// (process index, fd record index) of every fd to mark
    /// [`fd_flags::SHARED_IN_TREE`].
    pub marks: Vec<(usize, usize)>,
    /// (pid, what): shared, but not restorable shared.
    pub refusals: Vec<(i32, String)>,
}

/// How the fds on one object are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Pipe,
    Fifo,
    /// Regular files, directories, devices: each description its own
    /// object.
    File,
    Tty,
    Socket,
    Memfd,
    /// Eventfd, signalfd, timerfd, inotify, epoll: one anonymous inode for
    /// all of a kind; each description its own object.
    Event(u32),
}

fn class_of(kind: u32) -> Option<Class> {
    Some(match kind {
        fd_kind::PIPE => Class::Pipe,
        fd_kind::FIFO => Class::Fifo,
        fd_kind::REGULAR | fd_kind::DIRECTORY | fd_kind::CHAR => Class::File,
        fd_kind::TTY => Class::Tty,
        fd_kind::SOCKET => Class::Socket,
        fd_kind::MEMFD => Class::Memfd,
        fd_kind::EVENTFD
        | fd_kind::SIGNALFD
        | fd_kind::TIMERFD
        | fd_kind::INOTIFY
        | fd_kind::EPOLL => Class::Event(kind),
        _ => return None,
    })
}

/// One fd of one process on a candidate object.
#[derive(Clone, Copy, Debug)]
struct Fd {
    proc: usize,
    rec: usize,
    pid: i32,
    fd: i32,
    /// The process's own description number.
    desc: u32,
}

/// Whether `r`, an fd of the root, is stdio the loader takes from the
/// caller.
fn caller_stdio(r: &FdRecord) -> bool {
    binfmt_loader::rules::fd_is_inherited(r)
}

/// Group `fds` (one object) into open file descriptions: fds of one
/// process by their own numbers, across processes by `same`.
fn descriptions(fds: &[Fd], same: &mut SameDescription<'_>) -> Vec<Vec<Fd>> {
    let mut out: Vec<Vec<Fd>> = Vec::new();
    'next: for &f in fds {
        for d in &mut out {
            if let Some(m) = d.iter().find(|m| m.proc == f.proc) {
                if m.desc == f.desc && f.desc != 0 {
                    d.push(f);
                    continue 'next;
                }
                continue;
            }
            let first = d[0];
            if same((first.pid, first.fd), (f.pid, f.fd)) {
                d.push(f);
                continue 'next;
            }
        }
        out.push(vec![f]);
    }
    out
}

fn distinct_pids(fds: &[Fd]) -> usize {
    let mut pids: Vec<i32> = fds.iter().map(|f| f.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    pids.len()
}

fn holder(f: &Fd, desc: usize, shmem: Option<u32>) -> Holder {
    Holder {
        pid: f.pid,
        fd: Some(f.fd),
        desc: u32::try_from(desc + 1).unwrap_or(u32::MAX),
        shmem,
    }
}

/// Find the shared objects of the tree whose processes are `procs` (pid
/// and collected state; `procs[0]` is the root).
pub fn find(procs: &[(i32, &TaskState)], same: &mut SameDescription<'_>) -> Found {
    let mut found = Found::default();
    if procs.is_empty() {
        return found;
    }
    // Every fd by object.
    let mut groups: BTreeMap<(Class, u64, u64), Vec<Fd>> = BTreeMap::new();
    for (proc, (pid, state)) in procs.iter().enumerate() {
        for (rec, f) in state.fds.iter().enumerate() {
            let r = &f.record;
            if r.flags & fd_flags::DROPPED != 0 {
                continue;
            }
            let Some(class) = class_of(r.kind) else {
                continue;
            };
            groups
                .entry((class, r.file.dev, r.file.ino))
                .or_default()
                .push(Fd {
                    proc,
                    rec,
                    pid: *pid,
                    fd: r.fd,
                    desc: r.desc,
                });
        }
    }
    // Memfd fds, by inode, with their descriptions (for the shmem objects).
    let mut memfd_descs: BTreeMap<(u64, u64), Vec<Vec<Fd>>> = BTreeMap::new();
    for ((class, dev, ino), fds) in &groups {
        if distinct_pids(fds) < 2 {
            continue;
        }
        let descs = descriptions(fds, same);
        let record = |f: &Fd| &procs[f.proc].1.fds[f.rec];
        // The root's stdio the caller gives: one Caller object per root fd.
        let mut rest = Vec::new();
        for d in descs {
            let roots: Vec<i32> = d
                .iter()
                .filter(|f| f.proc == 0 && caller_stdio(&record(f).record))
                .map(|f| f.fd)
                .collect();
            if roots.is_empty() {
                rest.push(d);
                continue;
            }
            if distinct_pids(&d) < 2 {
                continue;
            }
            for &n in &roots {
                let holders: Vec<Holder> = d
                    .iter()
                    .filter(|f| {
                        // Each holder goes to the root fd of its number,
                        // else to the root's first (the root's other fds on
                        // it too: bash's fd 255).
                        let home = if roots.contains(&f.fd) {
                            f.fd
                        } else {
                            roots[0]
                        };
                        home == n
                    })
                    .map(|f| holder(f, 0, None))
                    .collect();
                found.objects.push(SharedObject {
                    kind: SharedKind::Caller,
                    caller_fd: Some(n),
                    holders,
                });
            }
        }
        let mark_all = |found: &mut Found, fds: &[Fd]| {
            found.marks.extend(fds.iter().map(|f| (f.proc, f.rec)));
        };
        match class {
            Class::Pipe | Class::Fifo => {
                let all: Vec<Fd> = rest.iter().flatten().copied().collect();
                if distinct_pids(&all) < 2 {
                    continue;
                }
                let holders = rest
                    .iter()
                    .enumerate()
                    .flat_map(|(i, d)| d.iter().map(move |f| holder(f, i, None)))
                    .collect();
                found.objects.push(SharedObject {
                    kind: if *class == Class::Pipe {
                        SharedKind::Pipe
                    } else {
                        SharedKind::Fifo
                    },
                    caller_fd: None,
                    holders,
                });
                mark_all(&mut found, &all);
            }
            Class::File | Class::Event(_) => {
                for d in rest.iter().filter(|d| distinct_pids(d) >= 2) {
                    found.objects.push(SharedObject {
                        kind: if *class == Class::File {
                            SharedKind::File
                        } else {
                            SharedKind::Event
                        },
                        caller_fd: None,
                        holders: d.iter().map(|f| holder(f, 0, None)).collect(),
                    });
                    mark_all(&mut found, d);
                }
            }
            Class::Tty => {
                for d in rest.iter().filter(|d| distinct_pids(d) >= 2) {
                    for f in d {
                        let others: Vec<String> = d
                            .iter()
                            .filter(|o| o.pid != f.pid)
                            .map(|o| o.pid.to_string())
                            .collect();
                        found.refusals.push((
                            f.pid,
                            format!(
                                "fd {} ({}): a terminal that is not the root's stdio, shared \
                                 with pid {} of the tree, cannot be restored yet",
                                f.fd,
                                Escaped(record(f).path.as_bytes()),
                                others.join(", ")
                            ),
                        ));
                    }
                }
            }
            // Refused by each process's collection (a socket shared in the
            // tree), unless it is the caller's.
            Class::Socket => {}
            Class::Memfd => {
                memfd_descs.insert((*dev, *ino), rest);
            }
        }
    }
    shmem_objects(procs, &memfd_descs, &mut found);
    found.objects.sort_by_key(|o| {
        o.holders
            .first()
            .map(|h| (h.pid, h.fd.unwrap_or(-1)))
            .unwrap_or_default()
    });
    found.marks.sort_unstable();
    found.marks.dedup();
    found
}

/// Shared memory (memfds and shared anonymous memory) several processes
/// map or hold: one Shmem object per inode, its holders each process's
/// areas (by its SHMEM note index) and fds.
fn shmem_objects(
    procs: &[(i32, &TaskState)],
    memfd_descs: &BTreeMap<(u64, u64), Vec<Vec<Fd>>>,
    found: &mut Found,
) {
    // (dev, ino) -> (process index, 1-based object index).
    let mut by_inode: BTreeMap<(u64, u64), Vec<(usize, u32)>> = BTreeMap::new();
    for (proc, (_, state)) in procs.iter().enumerate() {
        for (i, o) in state.objects.shmem.iter().enumerate() {
            if !matches!(o.record.kind, shmem_kind::MEMFD | shmem_kind::SHARED_ANON) {
                continue;
            }
            by_inode
                .entry((o.record.file.dev, o.record.file.ino))
                .or_default()
                .push((proc, u32::try_from(i + 1).unwrap_or(u32::MAX)));
        }
    }
    for (key, objs) in by_inode {
        let mut pids: Vec<usize> = objs.iter().map(|&(p, _)| p).collect();
        pids.dedup();
        if pids.len() < 2 {
            continue;
        }
        let mut holders = Vec::new();
        let mut sealed = false;
        for &(proc, index) in &objs {
            let (pid, state) = procs[proc];
            let o = &state.objects.shmem[usize::try_from(index - 1).unwrap_or(0)];
            sealed |= o.record.seals != 0;
            if state.vmas.iter().any(|v| v.record.object == index) {
                holders.push(Holder {
                    pid,
                    fd: None,
                    desc: 0,
                    shmem: Some(index),
                });
            }
        }
        if let Some(descs) = memfd_descs.get(&key) {
            for (i, d) in descs.iter().enumerate() {
                for f in d {
                    let index = procs[f.proc].1.fds[f.rec].record.object;
                    holders.push(holder(f, i, Some(index)));
                    found.marks.push((f.proc, f.rec));
                }
            }
        }
        if sealed {
            let (pid, state) = procs[objs[0].0];
            let name = &state.objects.shmem[usize::try_from(objs[0].1 - 1).unwrap_or(0)].name;
            let others: Vec<String> = objs[1..]
                .iter()
                .map(|&(p, _)| procs[p].0.to_string())
                .collect();
            found.refusals.push((
                pid,
                format!(
                    "memfd {}: a sealed memfd shared with pid {} of the tree cannot be restored \
                     yet",
                    Escaped(name),
                    others.join(", ")
                ),
            ));
            continue;
        }
        found.objects.push(SharedObject {
            kind: SharedKind::Shmem,
            caller_fd: None,
            holders,
        });
    }
}

/// Mark the fds `found` names as shared in the tree.
pub fn apply_marks(states: &mut [&mut TaskState], marks: &[(usize, usize)]) {
    for &(proc, rec) in marks {
        if let Some(f) = states
            .get_mut(proc)
            .and_then(|s| s.fds.get_mut(rec))
            .map(|f: &mut FdState| &mut f.record)
        {
            f.flags |= fd_flags::SHARED_IN_TREE;
        }
    }
}
