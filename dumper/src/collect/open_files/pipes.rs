//! Pipes and FIFOs.

use super::holders;
use super::*;

/// Pipes and FIFOs: one object per pipe inode with both ends in the task
/// and no other holder. A stdio pipe whose other end is elsewhere is the
/// caller's (inherited on a direct run).
pub(super) fn save_pipes<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    shared: &[Vec<i32>],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    let is_pipe = |l: &Listed| matches!(l.kind, fd_kind::PIPE | fd_kind::FIFO);
    let mut inodes: Vec<(u64, u64)> = listed
        .iter()
        .filter(|l| is_pipe(l))
        .map(|l| (l.meta.id.dev, l.meta.id.ino))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    for (dev, ino) in inodes {
        let ends: Vec<usize> = (0..listed.len())
            .filter(|&i| {
                is_pipe(&listed[i]) && listed[i].meta.id.dev == dev && listed[i].meta.id.ino == ino
            })
            .collect();
        let first = &listed[ends[0]];
        let shown = Escaped(first.link.as_bytes());
        let reader = ends.iter().copied().find(|&i| listed[i].reads());
        let has_writer = ends.iter().any(|&i| listed[i].writes());
        let mut others: Vec<i32> = ends
            .iter()
            .flat_map(|&i| shared[i].iter().copied())
            .collect();
        others.sort_unstable();
        others.dedup();
        // Stdio, or copies of stdio (`exec 5>&1`): the caller's.
        let stdio_descs: Vec<u32> = ends
            .iter()
            .filter(|&&i| (0..=2).contains(&listed[i].fd))
            .map(|&i| records[i].record.desc)
            .collect();
        let all_stdio = ends.iter().all(|&i| {
            (0..=2).contains(&listed[i].fd) || stdio_descs.contains(&records[i].record.desc)
        });
        let both_ends = reader.is_some() && has_writer;
        let (in_tree, outside) = c.opts.split_holders(&others);
        if !both_ends && all_stdio && !stdio_descs.is_empty() {
            // The caller's pipe (its other end is the caller's): inherited,
            // as before objects existed. In a tree: the root's, unless only
            // processes of the tree hold it (then it is the tree's), and
            // another process's where it is the root's caller's pipe.
            let caller = match &c.opts.tree {
                None => true,
                Some(t) if t.root == c.pid => !outside.is_empty() || in_tree.is_empty(),
                Some(t) => ends.iter().all(|&i| t.caller_fd(listed[i].fd).is_some()),
            };
            if caller {
                continue;
            }
        }
        if !outside.is_empty() {
            let fds: Vec<String> = ends.iter().map(|&i| listed[i].fd.to_string()).collect();
            c.unsupported(format!(
                "fd {} {} {shown}, which pid {} holds too; {}",
                fds.join(", "),
                if fds.len() > 1 {
                    "are ends of"
                } else {
                    "is an end of"
                },
                join(&outside),
                holders::held_outside(c.opts, "pipes")
            ))?;
            continue;
        }
        // Not root: an end missing here may be held by a process whose fds
        // could not be read, and would come back closed (a writer whose
        // reader is gone, a reader that sees end-of-file): refused rather
        // than published so.
        if !both_ends && in_tree.is_empty() && c.unreadable_holders > 0 {
            let fds: Vec<String> = ends.iter().map(|&i| listed[i].fd.to_string()).collect();
            c.unsupported(format!(
                "fd {} {} {shown} without its {} end, and the fds of {} other process(es) could not be read (run crdump as root): whether another process holds that end is not known, and restored it would be closed",
                fds.join(", "),
                if fds.len() > 1 { "are ends of" } else { "is an end of" },
                if reader.is_some() { "write" } else { "read" },
                c.unreadable_holders
            ))?;
            continue;
        }
        if first.kind == fd_kind::FIFO && first.deleted {
            c.unsupported(format!(
                "fd {} is a FIFO whose path was deleted ({shown}): it cannot be opened again",
                first.fd
            ))?;
            continue;
        }
        // No other process holds it: an end the task lacks is closed for
        // good (a reader then sees the bytes and end-of-file), and comes
        // back closed. Held by other processes of the tree too, it is
        // saved as if it were this process's alone (with its bytes when
        // this process holds a read end): the tree restore makes it once
        // and places it in every holder, with the other ends.
        let probe = reader.unwrap_or(ends[0]);
        let stolen: OwnedFd = match c.task.take_fd(listed[probe].fd) {
            Ok(f) => f,
            Err(e) => {
                c.unsupported(format!(
                    "fd {}: cannot take a copy to read {shown}: {e}",
                    listed[probe].fd
                ))?;
                continue;
            }
        };
        let buffered = match reader {
            Some(_) => objects::pipe::buffered(listed[probe].fd, &stolen),
            // Nobody can read them: the bytes do not matter, the size does.
            None => objects::pipe::size_only(listed[probe].fd, &stolen),
        };
        let buffered = match buffered {
            Ok(b) => b,
            Err(why) => {
                c.unsupported(why)?;
                continue;
            }
        };
        // A packet-mode pipe's bytes are packets: tee gives them as one
        // stream, and their boundaries would be lost.
        if !buffered.data.is_empty() && ends.iter().any(|&i| listed[i].info.flags & O_DIRECT != 0) {
            c.unsupported(format!(
                "fd {} is a packet-mode (O_DIRECT) pipe with {} bytes in it: their packet boundaries are not saved",
                first.fd,
                buffered.data.len()
            ))?;
            continue;
        }
        objects.pipes.push(PipeState {
            record: PipeRecord {
                ino,
                size: buffered.size,
                flags: if first.kind == fd_kind::FIFO {
                    pipe_flags::FIFO
                } else {
                    0
                },
                ..PipeRecord::default()
            },
            data: buffered.data,
        });
        let object = index(objects.pipes.len());
        for &i in &ends {
            records[i].record.object = object;
        }
    }
    Ok(())
}
