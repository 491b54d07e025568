//! The open file descriptors: what each is, where it points, its offset
//! and flags; the kinds crimg cannot restore are refused (forced: lost).

use image_format::records::{fd_flags, FdRecord};
use image_writer::model::FdState;

use super::task::Task;
use super::{CollectError, Collector};
use crate::{fds, procfs};

/// `O_CLOEXEC` is a flag of the descriptor, not of the open file: kept
/// apart in [`fd_flags::CLOEXEC`]. (The constant is a small positive bit.)
#[allow(clippy::cast_sign_loss)]
const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;

pub(super) fn collect_fds<T: Task>(c: &mut Collector<'_, T>) -> Result<Vec<FdState>, CollectError> {
    let dir = c.proc_path("fd");
    let names = c
        .task
        .dir_names(std::path::Path::new(&dir))
        .map_err(c.read_error(dir.clone()))?;
    let mut numbers: Vec<i32> = names.iter().filter_map(|s| s.parse().ok()).collect();
    numbers.sort_unstable();
    let mut out = Vec::with_capacity(numbers.len());
    for fd in numbers {
        let link = match c.read_link(&format!("fd/{fd}")) {
            Ok(l) => l,
            // Closed since the listing (impossible while frozen, unless the
            // fd table is shared with another process): its state is gone.
            Err(e) => {
                c.unsupported(format!("fd {fd} vanished during the dump ({e})"))?;
                continue;
            }
        };
        if super::refusals::io_uring_fd(c, fd, &link) {
            continue;
        }
        let fd_path = c.proc_path(&format!("fd/{fd}"));
        let meta = c
            .task
            .metadata(std::path::Path::new(&fd_path))
            .map_err(c.read_error(fd_path))?;
        let info = c.parse(procfs::fdinfo::parse(
            &c.read_text(&format!("fdinfo/{fd}"))?,
        ))?;
        let deleted = link.ends_with(" (deleted)");
        let path = link.strip_suffix(" (deleted)").unwrap_or(&link).to_owned();
        // The major number: 12 bits (`MAJOR()` of the old encoding, which
        // is what the tty majors are compared in).
        let rdev_major = u32::try_from((meta.rdev >> 8) & 0xfff).unwrap_or(u32::MAX);
        let kind = fds::kind_of(&link, meta.mode, rdev_major);
        let mut flags = 0;
        if let Some(why) = fds::unsupported_reason(fd, kind, deleted, &link) {
            c.unsupported(why)?;
            // Only a forced dump gets this far with it: not saved.
            flags |= fd_flags::DROPPED;
        }
        if info.flags & O_CLOEXEC != 0 {
            flags |= fd_flags::CLOEXEC;
        }
        if deleted {
            flags |= fd_flags::DELETED;
        }
        let record = FdRecord {
            fd,
            kind,
            flags,
            open_flags: info.flags & !O_CLOEXEC,
            pos: info.pos,
            mnt_id: info.mnt_id,
            mode: meta.mode,
            file: meta.id,
            ..FdRecord::default()
        };
        out.push(FdState { record, path });
    }
    Ok(out)
}
