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

/// For every listed fd, the other processes that hold its object (one
/// scan of `/proc` for them all).
pub(super) fn holders<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
) -> Result<Vec<Vec<i32>>, CollectError> {
    let mut asked = Vec::new();
    let mut held = Vec::new();
    for (i, l) in listed.iter().enumerate() {
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
    if answer.unreadable > 0 {
        c.warnings.push(format!(
            "the fds of {} other process(es) could not be read (run crdump as root): whether they share this process's pipes or event objects is not known",
            answer.unreadable
        ));
    }
    Ok(out)
}

/// An eventfd, epoll, timerfd, signalfd or inotify instance (or a memfd)
/// another process holds too would come back as a private copy.
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
        c.unsupported(format!(
            "fd {} ({}) is shared with pid {}; objects shared between processes need a tree dump",
            l.fd,
            Escaped(l.link.as_bytes()),
            join(others)
        ))?;
    }
    Ok(())
}
