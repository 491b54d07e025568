//! Terminals: how each open file on one resumes, and its modes.

use super::*;

/// Terminals: one record per open file description on a terminal (its
/// first fd decides how it resumes, [`objects::terminal::plan_terminals`];
/// its dups follow it), the modes read once per terminal.
pub(super) fn save_terminals<T: Task>(
    c: &mut Collector<'_, T>,
    listed: &[Listed],
    records: &mut [FdState],
    objects: &mut ObjectStates,
) -> Result<(), CollectError> {
    use objects::terminal::{modes_of, plan_terminals, TerminalFd};
    let firsts: Vec<usize> = (0..listed.len())
        .filter(|&i| listed[i].kind == fd_kind::TTY)
        .filter(|&i| {
            let desc = records[i].record.desc;
            !records[..i].iter().any(|r| r.record.desc == desc)
        })
        .collect();
    if firsts.is_empty() {
        return Ok(());
    }
    // `/dev/tty` stands for the controlling terminal.
    let tty_nr = c.parse(procfs::stat::parse(&c.read_text("stat")?))?.tty_nr;
    let terminal_fds: Vec<TerminalFd> = firsts
        .iter()
        .map(|&i| TerminalFd {
            fd: listed[i].fd,
            link: listed[i].link.clone(),
            rdev: listed[i].meta.rdev,
        })
        .collect();
    let (mut plan, refusals) = plan_terminals(&terminal_fds, u64::from(tty_nr));
    for why in refusals {
        c.unsupported(why)?;
    }
    let wanted: Vec<i32> = plan.needs_modes().collect();
    for fd in wanted {
        match c.task.take_fd(fd).and_then(|file| modes_of(&file)) {
            Ok(modes) => plan.set_modes(fd, modes),
            Err(e) => c.unsupported(format!(
                "fd {fd} is a terminal whose modes cannot be read ({e})"
            ))?,
        }
    }
    for r in plan.records {
        objects.terminals.push(r);
        let object = index(objects.terminals.len());
        let Some(first) = records.iter().position(|s| s.record.fd == r.fd) else {
            continue;
        };
        let desc = records[first].record.desc;
        for s in records.iter_mut().filter(|s| s.record.desc == desc) {
            s.record.object = object;
        }
    }
    Ok(())
}
