//! Which other processes hold the task's objects, and the refusal of
//! those that would come back as a private copy.

use super::*;

/// How another process's fd on the same object is recognised, for the
/// kinds that can be shared (None: not asked).
pub(super) fn same_when(kind: u32) -> Option<SameWhen> {
    match kind {
        fd_kind::PIPE | fd_kind::SOCKET => Some(SameWhen::Link),
        fd_kind::FIFO | fd_kind::MEMFD => Some(SameWhen::Inode),
        fd_kind::EVENTFD
        | fd_kind::SIGNALFD
        | fd_kind::TIMERFD
        | fd_kind::EPOLL
        | fd_kind::INOTIFY => Some(SameWhen::Description),
        _ => None,
    }
}

/// Whether the other holders of `l` cannot change what is done with it,
/// so that they are not asked (asking waits for every process's fds to be
/// read, see `fd_index`): a pipe or FIFO of a process dumped alone, every
/// end of which the task has is a stdio fd, and not both ends. Such a pipe
/// is the caller's (`pipes::save_pipes`), whoever holds it.
fn caller_pipe<T: Task>(c: &Collector<'_, T>, listed: &[Listed], l: &Listed) -> bool {
    let is_pipe = |l: &Listed| matches!(l.kind, fd_kind::PIPE | fd_kind::FIFO);
    let alone = c.opts.tree.as_ref().is_none_or(|t| t.pids == [c.pid]);
    if !alone || !is_pipe(l) {
        return false;
    }
    let ends = || {
        listed.iter().filter(|e| {
            is_pipe(e) && e.meta.id.dev == l.meta.id.dev && e.meta.id.ino == l.meta.id.ino
        })
    };
    let both_ends = ends().any(Listed::reads) && ends().any(Listed::writes);
    ends().all(|e| (0..=2).contains(&e.fd)) && !both_ends
}

/// For every listed fd, the other processes that hold its object (one
/// scan of `/proc` for them all).
pub(super) fn holders<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
) -> Result<Vec<Vec<i32>>, CollectError> {
    let mut asked = Vec::new();
    let mut held = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        if caller_pipe(c, listed, l) {
            continue;
        }
        if let Some(same_when) = same_when(l.kind) {
            asked.push(i);
            held.push(Held {
                fd: l.fd,
                link: l.link.clone(),
                dev: l.meta.id.dev,
                ino: l.meta.id.ino,
                same_when,
            });
        }
    }
    let mut out = vec![Vec::new(); listed.len()];
    if held.is_empty() {
        return Ok(out);
    }
    let answer = c
        .task
        .holders_elsewhere(&held)
        .map_err(|source| CollectError::Read {
            pid: c.pid,
            path: "/proc/*/fd".into(),
            source,
        })?;
    for (k, pid) in answer.found {
        out[asked[k]].push(pid);
    }
    c.unreadable_holders = answer.unreadable;
    if answer.unreadable > 0 {
        c.warnings.push(format!(
            "the fds of {} other process(es) could not be read (run crdump as root): whether they share this process's event objects is not known",
            answer.unreadable
        ));
    }
    Ok(out)
}

/// An eventfd, epoll, timerfd, signalfd or inotify instance (or a memfd)
/// another process holds too would come back as a private copy: refused,
/// unless that process is of the tree and the kind is one a tree restore
/// places shared (`binfmt_loader::rules::tree_shareable_fd_kind`; a memfd
/// only without seals).
pub(super) fn refuse_shared_anon<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    shared: &[Vec<i32>],
) -> Result<(), CollectError> {
    for (l, others) in listed.iter().zip(shared) {
        let private_copy =
            l.kind == fd_kind::MEMFD || same_when(l.kind) == Some(SameWhen::Description);
        if others.is_empty() || !private_copy {
            continue;
        }
        let (in_tree, outside) = c.opts.split_holders(others);
        if !outside.is_empty() {
            c.unsupported(format!(
                "fd {} ({}) is shared with pid {}; {}",
                l.fd,
                Escaped(l.link.as_bytes()),
                join(&outside),
                held_outside(c.opts, "objects")
            ))?;
            continue;
        }
        let sealed = l.kind == fd_kind::MEMFD
            && c.task
                .seals(std::path::Path::new(&c.proc_path(&format!("fd/{}", l.fd))))
                .is_ok_and(|s| s != 0);
        if !binfmt_loader::rules::tree_shareable_fd_kind(l.kind) || sealed {
            c.unsupported(in_tree_refusal(l, &in_tree, sealed))?;
        }
    }
    Ok(())
}

/// Why `what` (a plural: "pipes", "sockets") held by other processes too
/// are refused: outside a tree, that they need a tree dump; in one, that
/// those processes are outside it.
pub(super) fn held_outside(opts: &crate::options::DumpOptions, what: &str) -> String {
    match opts.tree {
        Some(_) => format!("{what} held by processes outside the dumped tree cannot be saved"),
        None => format!("{what} shared between processes need a tree dump"),
    }
}

/// Why fd `l`, shared with the processes `in_tree` of the tree, cannot be
/// restored shared.
pub(super) fn in_tree_refusal(l: &Listed, in_tree: &[i32], sealed: bool) -> String {
    let what = match l.kind {
        fd_kind::SOCKET => "a socket",
        fd_kind::EPOLL => "an epoll instance",
        fd_kind::MEMFD if sealed => "a sealed memfd",
        fd_kind::TTY => "a terminal that is not the root's stdio",
        _ => "an object of this kind",
    };
    format!(
        "fd {} ({}): {what} shared with pid {} of the tree cannot be restored yet",
        l.fd,
        Escaped(l.link.as_bytes()),
        join(in_tree)
    )
}

/// Mark every fd whose object another process of the tree holds too
/// ([`fd_flags::SHARED_IN_TREE`]): the tree restore places it shared, a
/// direct run of the image makes a private copy (and says so). The root's
/// stdio that is the caller's is not marked: it is the caller's either way.
pub(super) fn mark_shared_in_tree<T: Task>(
    c: &Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    shared: &[Vec<i32>],
) {
    for ((l, r), others) in listed.iter().zip(records.iter_mut()).zip(shared) {
        let (in_tree, _) = c.opts.split_holders(others);
        let caller = r.record.object == 0 && binfmt_loader::rules::fd_is_inherited(&r.record);
        if !in_tree.is_empty() && binfmt_loader::rules::tree_shareable_fd_kind(l.kind) && !caller {
            r.record.flags |= fd_flags::SHARED_IN_TREE;
        }
    }
}
