//! What `crimg info` says of an event-loop fd's object: a signalfd's
//! mask, a timerfd's setting, an inotify's watches, an epoll's items.

use image_format::records::{
    fd_kind, timerfd_flags, EpollItemRecord, FdRecord, InotifyWatchRecord, SignalfdRecord,
    TimerfdRecord,
};
use image_format::{Image, ImageError};

/// One line per piece of state of `f`'s object (none for other kinds,
/// and for the second fd of one open file description).
pub fn object_lines(img: &Image, f: &FdRecord) -> Result<Vec<String>, ImageError> {
    if f.object == 0 {
        return Ok(Vec::new());
    }
    let first = img
        .fds()?
        .find(|o| o.kind == f.kind && o.object == f.object)
        .map(|o| o.fd);
    if first != Some(f.fd) {
        return Ok(Vec::new());
    }
    Ok(match f.kind {
        fd_kind::SIGNALFD => img
            .records::<SignalfdRecord>()?
            .object(f.object)
            .map(|s| vec![format!("mask {:#018x}", s.mask)])
            .unwrap_or_default(),
        fd_kind::TIMERFD => img
            .records::<TimerfdRecord>()?
            .object(f.object)
            .map(|t| vec![timerfd_line(&t)])
            .unwrap_or_default(),
        fd_kind::INOTIFY => {
            let mut lines = Vec::new();
            for w in img.records::<InotifyWatchRecord>()? {
                if w.inotify == f.object {
                    lines.push(format!(
                        "watch wd {} mask {:#x} {}",
                        w.wd,
                        w.mask,
                        String::from_utf8_lossy(img.string(w.path)?)
                    ));
                }
            }
            lines
        }
        fd_kind::EPOLL => img
            .records::<EpollItemRecord>()?
            .filter(|i| i.epoll == f.object)
            .map(|i| {
                format!(
                    "item fd {} events {:#x} data {:#x}",
                    i.tfd, i.events, i.data
                )
            })
            .collect(),
        _ => Vec::new(),
    })
}

fn timerfd_line(t: &TimerfdRecord) -> String {
    let value = format!("{}.{:09}", t.value_sec, t.value_nsec);
    let next = if (t.value_sec, t.value_nsec) == (0, 0) {
        "disarmed".to_owned()
    } else if t.flags & timerfd_flags::ABSTIME != 0 {
        format!("expires at {value}")
    } else {
        format!("left {value}")
    };
    format!(
        "clock {} {next} interval {}.{:09} unread {}{}",
        t.clockid,
        t.interval_sec,
        t.interval_nsec,
        t.ticks,
        if t.flags & timerfd_flags::CANCEL_ON_SET != 0 {
            " cancel-on-set"
        } else {
            ""
        }
    )
}
