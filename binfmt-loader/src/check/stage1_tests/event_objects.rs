//! Stage 1 of the event-loop fds: signalfd, timerfd, inotify and epoll
//! made, inotify watches given their descriptors back, and the plan's late
//! steps (epoll items, timerfd arming) in the input.

use super::*;
use image_format::records::{
    EpollItemRecord, InotifyWatchRecord, SignalfdRecord, StrRef, TimerfdRecord,
};
use image_writer::model::InotifyWatchState;

const WATCHED_A: &str = "/watch/a";
const WATCHED_B: &str = "/watch/b";

fn dir(ino: u64) -> Stat {
    Stat {
        dev: 9,
        ino,
        mode: sys::S_IFDIR | 0o755,
        ..Default::default()
    }
}

fn object_fd(fd: i32, kind: u32, object: u32, link: &str) -> FdState {
    FdState {
        record: FdRecord {
            fd,
            kind,
            object,
            desc: u32::try_from(fd).unwrap() + 1,
            ..Default::default()
        },
        path: link.into(),
    }
}

fn item(epoll: u32, tfd: i32, events: u32, data: u64) -> EpollItemRecord {
    EpollItemRecord {
        epoll,
        tfd,
        events,
        _pad: 0,
        data,
    }
}

fn watch(wd: i32, ino: u64, path: &str) -> InotifyWatchState {
    InotifyWatchState {
        record: InotifyWatchRecord {
            inotify: 1,
            wd,
            mask: 0x100,
            _pad: 0,
            dev: 9,
            ino,
            path: StrRef::default(),
        },
        path: path.as_bytes().to_vec(),
    }
}

/// The task with a signalfd (4), a timerfd (5) with two unread
/// expirations, an inotify (6) watching two directories as wd 1 and 3,
/// and two epolls: 7 watches 4, stdin and the epoll 8, which watches 5.
fn event_task() -> TaskState {
    let mut state = task();
    state.fds.extend([
        object_fd(4, fd_kind::SIGNALFD, 1, "anon_inode:[signalfd]"),
        object_fd(5, fd_kind::TIMERFD, 1, "anon_inode:[timerfd]"),
        object_fd(6, fd_kind::INOTIFY, 1, "anon_inode:inotify"),
        object_fd(7, fd_kind::EPOLL, 1, "anon_inode:[eventpoll]"),
        object_fd(8, fd_kind::EPOLL, 2, "anon_inode:[eventpoll]"),
    ]);
    state.objects.signalfds = vec![SignalfdRecord { mask: 1 << 9 }];
    state.objects.timerfds = vec![TimerfdRecord {
        clockid: 1,
        flags: 0,
        ticks: 2,
        value_sec: 0,
        value_nsec: 250_000_000,
        interval_sec: 1,
        interval_nsec: 0,
    }];
    state.objects.inotify_watches = vec![watch(1, 30, WATCHED_A), watch(3, 31, WATCHED_B)];
    state.objects.epoll_items = vec![
        item(1, 4, 1, 0x44),
        item(1, 0, 0x19, 0x99),
        item(1, 8, 1, 0x88),
        item(2, 5, 0x8000_0001, 0x55),
    ];
    state
}

fn event_machine() -> Fake {
    let mut os = machine();
    for link in [
        "anon_inode:[signalfd]",
        "anon_inode:[timerfd]",
        "anon_inode:inotify",
        "anon_inode:[eventpoll]",
    ] {
        os.add(link, Stat::default(), vec![]);
    }
    os.add(WATCHED_A, dir(30), vec![]);
    os.add(WATCHED_B, dir(31), vec![]);
    os
}

#[test]
fn event_loop_fds_are_made_with_their_late_steps_planned() {
    let os = event_machine();
    let c = run(&os, &event_task(), code_page(), (1000, 1000)).unwrap();
    let calls = os.object_calls.borrow().clone();
    let text = calls.join("\n");
    assert!(text.contains("signalfd 0x200"), "{text}");
    assert!(text.contains("timerfd_create 1 "), "{text}");
    // wd 1, then 2 skipped (added and removed), then 3; the IN_IGNORED
    // of the skipped one read away.
    let watches: Vec<&String> = calls
        .iter()
        .filter(|l| {
            l.starts_with("add_watch") || l.starts_with("rm_watch") || l.starts_with("read")
        })
        .collect();
    assert_eq!(watches.len(), 5, "{text}");
    assert!(watches[0].ends_with("0x100 -> 1"), "{text}");
    assert!(
        watches[1].ends_with("-> 2") && watches[2].ends_with(" 2"),
        "{text}"
    );
    assert!(
        watches[3].ends_with("-> 3") && watches[4].starts_with("read"),
        "{text}"
    );
    // Each watch was added through the fd its path was checked on.
    assert!(watches[0].contains("/proc/self/fd/"), "{text}");

    // The items at the task's fd numbers, the inner epoll's first; the
    // one on stdin (the caller's) was tried first.
    let adds = c.input.epoll_adds;
    assert_eq!(adds.len(), 4);
    assert_eq!((adds[0].epfd, adds[0].tfd, adds[0].data), (8, 5, 0x55));
    assert_eq!(adds[0].events, 0x8000_0001);
    assert!(adds[1..].iter().all(|a| a.epfd == 7));
    assert!(adds.iter().any(|a| a.tfd == 0 && a.data == 0x99));
    assert!(
        text.contains("epoll_add") && text.contains(" 0 0x1 0x0"),
        "{text}"
    );

    // The timerfd is armed by the plan at fd 5, its count given back.
    let arms = c.input.timerfd_arms;
    assert_eq!(arms.len(), 1);
    assert_eq!(arms[0].fd, 5);
    assert_eq!(
        (arms[0].value, arms[0].interval),
        ([0, 250_000_000], [1, 0])
    );
    assert_eq!((arms[0].ticks, arms[0].set_ticks), (2, 1));
    assert!(!os.warned("TFD_IOC_SET_TICKS"));
}

#[test]
fn without_set_ticks_a_timer_with_unread_expirations_fires_at_once_and_says_so() {
    let mut os = event_machine();
    os.set_ticks_probe = Errno(25);
    let c = run(&os, &event_task(), code_page(), (1000, 1000)).unwrap();
    let arms = c.input.timerfd_arms;
    assert_eq!((arms[0].value, arms[0].set_ticks), ([0, 1], 0));
    assert!(os.warned("2 unread expiration(s) read as one"));
}

#[test]
fn an_inotify_watch_whose_path_names_another_file_is_refused() {
    let mut os = event_machine();
    os.add(WATCHED_B, dir(77), vec![]);
    let r = run(&os, &event_task(), code_page(), (1000, 1000));
    assert!(
        matches!(r, Err(CheckError::FileChanged { what: "inotify watch", path }) if path == WATCHED_B.as_bytes()),
        "{:?}",
        r.err()
    );
}

#[test]
fn an_item_on_a_caller_fd_that_cannot_be_watched_is_left_out_with_a_warning() {
    let mut os = event_machine();
    // The caller's stdin is, say, a regular file: epoll refuses it.
    os.unwatchable = Some(0);
    let c = run(&os, &event_task(), code_page(), (1000, 1000)).unwrap();
    assert_eq!(c.input.epoll_adds.len(), 3);
    assert!(c.input.epoll_adds.iter().all(|a| a.tfd != 0));
    assert!(os.warned("its item for fd 0 is left out"));
}

#[test]
fn an_epoll_item_on_an_fd_the_image_lacks_is_refused() {
    let os = event_machine();
    let mut state = event_task();
    state.objects.epoll_items.push(item(1, 42, 1, 0));
    let r = run(&os, &state, code_page(), (1000, 1000));
    assert_eq!(exit_of(r), ExitCode::ImageCorrupt);
}

#[test]
fn watch_descriptors_out_of_order_or_too_far_apart_are_refused() {
    let os = event_machine();
    let mut state = event_task();
    state.objects.inotify_watches[1].record.wd = 1;
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::ImageCorrupt
    );
    let mut state = event_task();
    state.objects.inotify_watches[1].record.wd = 3 + 65_536;
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::ImageCorrupt
    );
    // Exactly the most stage 1 skips (wd 2 to 65537): accepted.
    let mut state = event_task();
    state.objects.inotify_watches[1].record.wd = 2 + 65_536;
    assert!(run(&os, &state, code_page(), (1000, 1000)).is_ok());
    assert!(os
        .object_calls
        .borrow()
        .iter()
        .any(|l| l.ends_with("-> 65538")));
}

#[test]
fn an_epoll_item_with_epollwakeup_warns_without_cap_block_suspend() {
    let os = event_machine();
    let mut state = event_task();
    state.objects.epoll_items[0].events |= 1 << 29;
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert_eq!(c.input.epoll_adds.len(), 4);
    assert!(os.warned("EPOLLWAKEUP"));
}

#[test]
fn an_inotify_watching_for_opens_is_drained_of_the_restores_own_events() {
    let os = event_machine();
    let c = run(&os, &event_task(), code_page(), (1000, 1000)).unwrap();
    // IN_CREATE only: nothing the loader does shows there.
    assert!(c.input.inotify_drains.is_empty());
    let mut state = event_task();
    state.objects.inotify_watches[1].record.mask |= 0x20;
    state.fds[6].record.open_flags = sys::O_NONBLOCK;
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let drains = c.input.inotify_drains;
    assert_eq!(drains.len(), 1);
    assert_eq!((drains[0].fd, drains[0].flags), (6, sys::O_NONBLOCK));
}

#[test]
fn an_epoll_item_on_a_dropped_fd_is_refused() {
    // A forced dump put /dev/null at fd 4, which epoll cannot watch: the
    // dumper leaves such items out, and an image with one is refused.
    let mut os = event_machine();
    let mut state = event_task();
    state.fds[4].record.flags = image_format::records::fd_flags::DROPPED;
    state.fds[4].record.object = 0;
    state.objects.signalfds.clear();
    let r = run(&os, &state, code_page(), (1000, 1000));
    assert_eq!(exit_of(r), ExitCode::ImageCorrupt);
    state.objects.epoll_items.remove(0);
    os.add(
        "/dev/null",
        Stat {
            mode: sys::S_IFCHR | 0o666,
            ..Default::default()
        },
        vec![],
    );
    assert!(run(&os, &state, code_page(), (1000, 1000)).is_ok());
}
