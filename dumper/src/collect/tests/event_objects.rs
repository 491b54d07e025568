//! The epoll pass of the fd collection on a fake task whose fds are real
//! objects of this process: an item is kept only with its target, and
//! one on an fd that is not saved is refused (forced: lost, and said).

use std::os::fd::{AsRawFd, OwnedFd};

use super::*;
use crate::sys::event_objects::testing;

/// Fd `fd` of the fake task: `real` (this process's fd of the same
/// number) with its link and this process's fdinfo text for it.
fn real_fd(task: &mut FakeTask, real: &OwnedFd, link: &str, mode: u32) {
    let fd = real.as_raw_fd();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    task.fd(fd, link, mode, 0, &fdinfo);
    task.stolen.insert(fd, real.try_clone().unwrap());
}

#[test]
fn an_epoll_item_on_an_fd_that_is_not_saved_is_refused_or_lost() {
    let ep = testing::epoll();
    let counter = testing::eventfd();
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock = OwnedFd::from(sock);
    testing::epoll_add(&ep, &counter, 1, 0x11);
    testing::epoll_add(&ep, &sock, 1, 0x22);
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, &counter, "anon_inode:[eventfd]", 0o600);
    // A kind that is never saved (sockets are, now).
    real_fd(&mut task, &sock, "anon_inode:[pidfd]", 0o600);
    // Last: its fdinfo lists both items.
    real_fd(&mut task, &ep, "anon_inode:[eventpoll]", 0o600);

    assert!(unsupported(run(&mut task, false)).contains("is anon_inode:[pidfd]"));
    let c = run(&mut task, true).unwrap();
    let items = &c.state.objects.epoll_items;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!((items[0].tfd, items[0].data), (counter.as_raw_fd(), 0x11));
    assert_eq!(items[0].epoll, 1);
    let lost = format!(
        "fd {} (epoll): its item for fd {} is lost",
        ep.as_raw_fd(),
        sock.as_raw_fd()
    );
    assert!(
        c.state.warnings.iter().any(|w| w.contains(&lost)),
        "{:?}",
        c.state.warnings
    );
    // The epoll fd names its instance.
    let epoll_fd = c
        .state
        .fds
        .iter()
        .find(|f| f.record.fd == ep.as_raw_fd())
        .unwrap();
    assert_eq!(
        (epoll_fd.record.kind, epoll_fd.record.object),
        (fd_kind::EPOLL, 1)
    );
}
