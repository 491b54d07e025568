//! Sockets.

use super::holders;
use super::*;

/// Sockets: one object per socket (its first fd's description; a socket
/// cannot be opened again, so every fd on it shares that one), saved by
/// [`objects::socket`]; the two ends of a unix pair name each other.
pub(super) fn save_sockets<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    shared: &[Vec<i32>],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    let socks: Vec<usize> = (0..listed.len())
        .filter(|&i| listed[i].kind == fd_kind::SOCKET)
        .collect();
    if socks.is_empty() {
        return Ok(());
    }
    let inodes: Vec<u64> = socks.iter().map(|&i| listed[i].meta.id.ino).collect();
    let task = &*c.task;
    let holders = |ino: u64| -> Vec<i32> {
        let held = Held {
            fd: -1,
            link: format!("socket:[{ino}]"),
            dev: 0,
            ino,
            same_when: SameWhen::Link,
        };
        task.holders_elsewhere(&[held])
            .map(|h| h.found.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default()
    };
    let root = c.proc_path("root");
    let path_inode = |path: &[u8]| -> Option<(u64, u32)> {
        let mut full = std::ffi::OsString::from(&root);
        full.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
        task.metadata(std::path::Path::new(&full))
            .ok()
            .map(|m| (m.id.ino, m.mode))
    };
    let mut cx = objects::socket::Context {
        pid: c.pid,
        task_sockets: &inodes,
        holders: &holders,
        unix: None,
        path_inode: &path_inode,
        tree: c.opts.tree.as_ref().map(|t| t.pids.as_slice()),
    };
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    // (record index of a saved socket, its peer's inode).
    let mut peers: Vec<(usize, u64)> = Vec::new();
    let first_index = objects.sockets.len();
    for &i in &socks {
        let l = &listed[i];
        let desc = records[i].record.desc;
        if let Some(earlier) = records[..i]
            .iter()
            .find(|r| r.record.desc == desc && r.record.kind == fd_kind::SOCKET)
        {
            records[i].record.object = earlier.record.object;
            continue;
        }
        let stdio = (0..=2).contains(&l.fd);
        let others = &shared[i];
        if !others.is_empty() {
            let (in_tree, outside) = c.opts.split_holders(others);
            // Stdio on a socket others hold is the caller's: a process's
            // alone, the root's, and another's of the tree where it is the
            // root's.
            let caller = stdio
                && match &c.opts.tree {
                    None => true,
                    Some(t) if t.root == c.pid => !outside.is_empty(),
                    Some(t) => t.caller_fd(l.fd).is_some(),
                };
            if caller {
                continue;
            }
            if outside.is_empty() {
                refusals.push(holders::in_tree_refusal(l, &in_tree, false));
            } else {
                refusals.push(format!(
                    "{} (fd {}) is also held by pid {}; {}",
                    Escaped(l.link.as_bytes()),
                    l.fd,
                    join(&outside),
                    holders::held_outside(c.opts, "sockets")
                ));
            }
            continue;
        }
        let stolen: OwnedFd = match task.take_fd(l.fd) {
            Ok(f) => f,
            Err(e) => {
                refusals.push(format!(
                    "fd {}: cannot take a copy of the socket: {e}",
                    l.fd
                ));
                continue;
            }
        };
        match objects::socket::collect(
            l.fd,
            l.meta.id.ino,
            std::os::fd::AsFd::as_fd(&stolen),
            stdio,
            &mut cx,
        ) {
            Ok(objects::socket::Outcome::Saved {
                state,
                peer,
                warning,
            }) => {
                objects.sockets.push(state);
                records[i].record.object = index(objects.sockets.len());
                peers.push((objects.sockets.len() - 1, peer));
                warnings.extend(warning);
            }
            Ok(objects::socket::Outcome::Inherited) => {}
            Err(why) => refusals.push(why),
        }
    }
    // The queues go into the image's notes, which are bounded in all.
    let queued: usize = objects.sockets[first_index..]
        .iter()
        .map(|s| s.queue.len())
        .sum();
    if queued > objects::socket::MAX_TOTAL_QUEUE_BYTES {
        refusals.push(format!(
            "the process's sockets have {queued} bytes queued, more than the {} crimg saves",
            objects::socket::MAX_TOTAL_QUEUE_BYTES
        ));
    }
    // Link each pair: the peer's 1-based record index.
    for &(at, peer) in &peers {
        if peer == 0 {
            continue;
        }
        let found = objects.sockets[first_index..]
            .iter()
            .position(|s| s.record.ino == peer)
            .map(|p| index(first_index + p + 1));
        match found {
            Some(p) => objects.sockets[at].record.peer = p,
            None => refusals.push(format!(
                "socket:[{}] is connected to socket:[{peer}], which this process holds but was not saved",
                objects.sockets[at].record.ino
            )),
        }
    }
    c.warnings.extend(warnings);
    for why in refusals {
        c.unsupported(why)?;
    }
    Ok(())
}
