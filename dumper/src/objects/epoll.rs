//! epoll: the whole interest list (`tfd: … events: … data: …` lines of
//! fdinfo). An item is keyed by its file and the fd number it was added
//! with; the restore adds it again with that number once every fd is in
//! place, so the task's fd of that number must still be that file
//! (`kcmp(KCMP_EPOLL_TFD)`): an item whose fd was closed or now names
//! another file is refused by name.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::Refusal;
use crate::sys::event_objects;

/// One item as fdinfo shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    pub ino: u64,
}

/// The items in an epoll fd's fdinfo text, in the kernel's order.
pub fn parse(fd: i32, fdinfo: &str) -> Result<Vec<Item>, Refusal> {
    let mut out = Vec::new();
    for line in fdinfo.lines() {
        if !line.starts_with("tfd:") {
            continue;
        }
        let bad = || format!("fd {fd}: an epoll item fdinfo shows as {line:?}");
        // "tfd:        5 events:       19 data:  5  pos:0 ino:3a sdev:d":
        // keys and values are separated by spaces of varying width.
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let value = |key: &str| -> Option<&str> {
            let i = words.iter().position(|w| w.starts_with(key))?;
            let w = words[i].strip_prefix(key)?;
            if w.is_empty() {
                words.get(i + 1).copied()
            } else {
                Some(w)
            }
        };
        let hex = |key: &str| value(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        out.push(Item {
            tfd: value("tfd:").and_then(|v| v.parse().ok()).ok_or_else(bad)?,
            events: hex("events:")
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(bad)?,
            data: hex("data:").ok_or_else(bad)?,
            ino: hex("ino:").ok_or_else(bad)?,
        });
    }
    Ok(out)
}

/// Check that each item's fd number still names the file the item
/// watches: `take(tfd)` gives a copy of the task's fd. `epoll` is a copy
/// of the task's epoll fd `fd`.
pub fn check_targets(
    fd: i32,
    epoll: &OwnedFd,
    items: &[Item],
    take: impl Fn(i32) -> io::Result<OwnedFd>,
) -> Result<(), Refusal> {
    for (k, item) in items.iter().enumerate() {
        let tfd = item.tfd;
        // The kernel counts the items of one fd number in its own order,
        // which fdinfo shows.
        let nth = items[..k].iter().filter(|o| o.tfd == tfd).count();
        let nth = u32::try_from(nth).unwrap_or(u32::MAX);
        let target = match take(tfd) {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                return Err(format!(
                    "fd {fd} (epoll) watches a file added as fd {tfd}, which the process has closed since (the item cannot be added again without that fd)"
                ))
            }
            Err(e) => return Err(format!("fd {fd} (epoll): cannot take fd {tfd} to compare: {e}")),
        };
        let same = event_objects::epoll_item_is(target.as_fd(), epoll.as_fd(), tfd, nth)
            .map_err(|e| format!("fd {fd} (epoll): cannot compare its item for fd {tfd}: {e}"))?;
        if !same {
            return Err(format!(
                "fd {fd} (epoll) watches a file added as fd {tfd}, but fd {tfd} now names another file (closed and reused since the item was added)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::event_objects::testing;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_items() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
tfd:        5 events:       19 data:                5  pos:0 ino:3a sdev:d\n\
tfd:       12 events: 80000011 data: ffffffffffffffff  pos:0 ino:3b sdev:d\n";
        let items = parse(4, text).unwrap();
        assert_eq!(
            items,
            [
                Item {
                    tfd: 5,
                    events: 0x19,
                    data: 5,
                    ino: 0x3a
                },
                Item {
                    tfd: 12,
                    events: 0x8000_0011,
                    data: u64::MAX,
                    ino: 0x3b
                },
            ]
        );
        assert!(parse(4, "tfd: x events: 1\n").is_err());
    }

    #[test]
    fn a_replaced_target_is_refused() {
        let ep = testing::epoll();
        let a = testing::eventfd();
        let b = testing::eventfd();
        testing::epoll_add(&ep, &a, 1, 7);
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.as_raw_fd())).unwrap();
        let items = parse(3, &fdinfo).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].tfd, a.as_raw_fd());
        assert_eq!(items[0].data, 7);
        // The same fd number names the item's file: fine.
        let tfd = a.as_raw_fd();
        check_targets(3, &ep, &items, |n| {
            assert_eq!(n, tfd);
            a.try_clone()
        })
        .unwrap();
        // Another file at that number: refused.
        let e = check_targets(3, &ep, &items, |_| b.try_clone()).unwrap_err();
        assert!(e.contains("now names another file"), "{e}");
        let e = check_targets(3, &ep, &items, |_| {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        })
        .unwrap_err();
        assert!(e.contains("closed"), "{e}");
    }
}
