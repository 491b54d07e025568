//! Epoll instances with their interest lists.

use super::*;

/// Every epoll instance (one per open file description) with its
/// interest list. An item whose target fd is not restored (refused with
/// `--force`) is lost with its warning.
pub(super) fn save_epolls<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    // First every epoll its number (an epoll may watch a later one).
    let mut epolls = 0u32;
    let mut found = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        if l.kind != fd_kind::EPOLL {
            continue;
        }
        let desc = records[i].record.desc;
        if let Some(earlier) = records[..i].iter().find(|r| r.record.desc == desc) {
            records[i].record.object = earlier.record.object;
            continue;
        }
        match epoll_items(c, l) {
            Ok(items) => {
                epolls += 1;
                records[i].record.object = epolls;
                found.push((l.fd, epolls, items));
            }
            Err(why) => c.unsupported(why)?,
        }
    }
    for (fd, epoll, items) in found {
        for item in items {
            let kept = records
                .iter()
                .find(|r| r.record.fd == item.tfd)
                .is_some_and(|r| target_restored(records, &r.record));
            if !kept {
                c.unsupported(format!(
                    "fd {fd} (epoll): its item for fd {} is lost: that fd is not saved",
                    item.tfd
                ))?;
                continue;
            }
            objects.epoll_items.push(EpollItemRecord {
                epoll,
                tfd: item.tfd,
                events: item.events,
                _pad: 0,
                data: item.data,
            });
        }
    }
    Ok(())
}

/// The items of the epoll fd `l`, each checked to watch the file its fd
/// number names.
pub(super) fn epoll_items<T: Task>(
    c: &Collector<'_, T>,
    l: &Listed,
) -> Result<Vec<objects::epoll::Item>, objects::Refusal> {
    let items = objects::epoll::parse(l.fd, &l.fdinfo)?;
    if items.is_empty() {
        return Ok(items);
    }
    let epoll = c
        .task
        .take_fd(l.fd)
        .map_err(|e| format!("fd {}: cannot take a copy to read it: {e}", l.fd))?;
    objects::epoll::check_targets(l.fd, &epoll, &items, |tfd| c.task.take_fd(tfd))?;
    Ok(items)
}

/// Whether the restore brings fd record `r` back (reopened, made, the
/// caller's stdio, or a dup of one of those), rather than dropping it
/// (the loader's rule, which `refusals::mark_dropped` applies later).
pub(super) fn target_restored(records: &[FdState], r: &FdRecord) -> bool {
    let first = records
        .iter()
        .map(|o| &o.record)
        .find(|o| o.desc == r.desc && r.desc != 0)
        .unwrap_or(r);
    !binfmt_loader::rules::fd_must_be_dropped(first, None)
}
