//! The decisions of a process's collection as a process of a tree: its
//! children are dumped with it; what other processes of the tree hold is
//! kept as its own and marked shared; what processes outside hold is
//! refused as before, and so is what is shared in the tree but cannot be
//! restored shared; the root's stdio that is the caller's stays the
//! caller's, in the root and in the processes that hold it too.

use std::os::fd::{AsRawFd, OwnedFd};

use super::*;
use crate::options::TreeView;
use crate::sys::event_objects::testing;

/// A child of the fake task, in the tree.
const CHILD: i32 = 5000;
/// A process outside the tree.
const STRANGER: i32 = 9000;

/// Collect `task` as the process of a tree of `pids` rooted at `root`.
fn run_in_tree(
    task: &mut FakeTask,
    root: i32,
    pids: &[i32],
    caller_fds: &[(i32, i32)],
) -> Result<Collected, CollectError> {
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    let opts = DumpOptions {
        tree: Some(TreeView {
            root,
            pids,
            caller_fds: caller_fds.to_vec(),
        }),
        ..DumpOptions::default()
    };
    collect_from(task, &opts, Some(fake::ZERO_PFN))
}

/// Fd `fd` of the fake task is the real `real` (a copy the object modules
/// read), with this process's fdinfo for it.
fn real_fd(task: &mut FakeTask, fd: i32, real: &OwnedFd, link: &str, mode: u32) {
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", real.as_raw_fd())).unwrap();
    task.fd(fd, link, mode, 0, &fdinfo);
    task.stolen.insert(fd, real.try_clone().unwrap());
}

fn fd(c: &Collected, n: i32) -> image_format::records::FdRecord {
    c.state
        .fds
        .iter()
        .find(|f| f.record.fd == n)
        .unwrap()
        .record
}

#[test]
fn children_in_the_tree_are_dumped_with_it_others_are_refused() {
    let mut task = FakeTask::sleeping(PID);
    task.file(&format!("task/{PID}/children"), "777 778 ");
    run_in_tree(&mut task, PID, &[PID, 777, 778], &[]).unwrap();
    let why = unsupported(run_in_tree(&mut task, PID, &[PID, 777], &[]));
    assert!(
        why.contains("child processes (778) that are not dumped with it"),
        "{why}"
    );
}

#[test]
fn a_pipe_another_process_of_the_tree_holds_is_kept_whole_and_marked_shared() {
    let (r, w) = crate::sys::fds::pipe().unwrap();
    write_all(&w, b"abc");
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 3, &r, "pipe:[77]", 0o010_600);
    task.elsewhere.push(("pipe:[77]".into(), CHILD));
    let c = run_in_tree(&mut task, PID, &[PID, CHILD], &[]).unwrap();
    let rec = fd(&c, 3);
    assert_eq!(rec.object, 1);
    assert_ne!(rec.flags & fd_flags::SHARED_IN_TREE, 0);
    // With its bytes: this process holds the read end.
    assert_eq!(c.state.objects.pipes[0].data, b"abc");
    // The fds nobody else holds are not marked.
    assert_eq!(fd(&c, 0).flags & fd_flags::SHARED_IN_TREE, 0);

    // Held outside the tree too: refused as before, naming that pid only.
    task.elsewhere.push(("pipe:[77]".into(), STRANGER));
    let why = unsupported(run_in_tree(&mut task, PID, &[PID, CHILD], &[]));
    assert!(
        why.contains(&format!("which pid {STRANGER} holds too"))
            && why.contains("held by processes outside the dumped tree cannot be saved")
            && !why.contains("need a tree dump"),
        "{why}"
    );
    // Alone (no tree), the child is a stranger.
    let why = unsupported(run(&mut task, false));
    assert!(
        why.contains(&format!("which pid {CHILD}, {STRANGER} holds too")),
        "{why}"
    );
}

/// `write(2)` of all of `bytes`.
fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

#[test]
fn shared_event_objects_are_kept_but_epoll_and_sockets_are_refused_by_pid_fd_and_kind() {
    let counter = testing::eventfd();
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 3, &counter, "anon_inode:[eventfd]", 0o600);
    task.elsewhere.push(("anon_inode:[eventfd]".into(), CHILD));
    let c = run_in_tree(&mut task, PID, &[PID, CHILD], &[]).unwrap();
    assert_ne!(fd(&c, 3).flags & fd_flags::SHARED_IN_TREE, 0);
    assert_eq!(fd(&c, 3).object, 1);

    let ep = testing::epoll();
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 4, &ep, "anon_inode:[eventpoll]", 0o600);
    task.elsewhere
        .push(("anon_inode:[eventpoll]".into(), CHILD));
    let why = unsupported(run_in_tree(&mut task, PID, &[PID, CHILD], &[]));
    assert!(
        why.contains(&format!(
            "pid {PID}: fd 4 (anon_inode:[eventpoll]): an epoll instance shared with pid {CHILD} of the tree cannot be restored yet"
        )),
        "{why}"
    );

    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock = OwnedFd::from(sock);
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 5, &sock, "socket:[999]", 0o140_777);
    task.elsewhere.push(("socket:[999]".into(), CHILD));
    let why = unsupported(run_in_tree(&mut task, PID, &[PID, CHILD], &[]));
    assert!(
        why.contains(&format!(
            "fd 5 (socket:[999]): a socket shared with pid {CHILD} of the tree cannot be restored yet"
        )),
        "{why}"
    );
}

#[test]
fn the_roots_stdio_pipe_stays_the_callers_in_every_process_that_holds_it() {
    // The root's stdout: a pipe to a reader outside the tree, which a
    // child holds too.
    let stdout = |task: &mut FakeTask| {
        task.fd(
            1,
            "pipe:[88]",
            0o010_600,
            0,
            "pos:\t0\nflags:\t01\nmnt_id:\t12\n",
        );
        task.elsewhere.push(("pipe:[88]".into(), STRANGER));
    };
    let mut root = FakeTask::sleeping(PID);
    stdout(&mut root);
    root.elsewhere.push(("pipe:[88]".into(), CHILD));
    let c = run_in_tree(&mut root, PID, &[PID, CHILD], &[]).unwrap();
    let rec = fd(&c, 1);
    assert_eq!((rec.object, rec.flags & fd_flags::SHARED_IN_TREE), (0, 0));
    assert!(binfmt_loader::rules::fd_is_inherited(&rec));

    // The child: the caller's where it is the root's (fd 1 on the root's
    // fd 1), else a pipe held outside the tree, refused.
    let mut child = FakeTask::sleeping(CHILD);
    stdout(&mut child);
    child.elsewhere.push(("pipe:[88]".into(), PID));
    let c = run_in_tree(&mut child, PID, &[PID, CHILD], &[(1, 1)]).unwrap();
    assert_eq!(fd(&c, 1).object, 0);
    let why = unsupported(run_in_tree(&mut child, PID, &[PID, CHILD], &[]));
    assert!(
        why.contains(&format!("which pid {STRANGER} holds too")),
        "{why}"
    );

    // A stdio pipe only processes of the tree hold is the tree's, even
    // the root's: saved (with its size), marked shared.
    let (_r, w) = crate::sys::fds::pipe().unwrap();
    let mut root = FakeTask::sleeping(PID);
    real_fd(&mut root, 1, &w, "pipe:[89]", 0o010_600);
    root.elsewhere.push(("pipe:[89]".into(), CHILD));
    let c = run_in_tree(&mut root, PID, &[PID, CHILD], &[]).unwrap();
    let rec = fd(&c, 1);
    assert_eq!(rec.object, 1);
    assert_ne!(rec.flags & fd_flags::SHARED_IN_TREE, 0);
}

/// The state of a fake process `pid` with only the fds `fds`: (fd, kind,
/// its own description, inode, path).
fn state_with(pid: i32, fds: &[(i32, u32, u32, u64, &str)]) -> image_writer::model::TaskState {
    let mut s = run(&mut FakeTask::sleeping(pid), false).unwrap().state;
    s.fds = fds
        .iter()
        .map(
            |&(fd, kind, desc, ino, path)| image_writer::model::FdState {
                record: image_format::records::FdRecord {
                    fd,
                    kind,
                    desc,
                    file: image_format::records::FileId {
                        dev: 9,
                        ino,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                path: path.into(),
            },
        )
        .collect();
    s
}

#[test]
fn shared_objects_are_grouped_by_object_then_by_description_across_processes() {
    use crate::tree::shared;
    use image_manifest::{Holder, SharedKind};
    const A: i32 = 10;
    const B: i32 = 11;
    const C: i32 = 12;
    let tty = fd_kind::TTY;
    let mut a = state_with(
        A,
        &[
            (2, tty, 1, 700, "/dev/pts/1"),
            (3, fd_kind::REGULAR, 2, 600, "/tmp/log"),
            (255, tty, 1, 700, "/dev/pts/1"),
        ],
    );
    let mut b = state_with(
        B,
        &[
            (1, fd_kind::PIPE, 1, 500, "pipe:[500]"),
            (2, tty, 2, 700, "/dev/pts/1"),
            (3, fd_kind::REGULAR, 3, 600, "/tmp/log"),
            (7, tty, 4, 701, "/dev/pts/2"),
        ],
    );
    let c = state_with(
        C,
        &[
            (0, fd_kind::PIPE, 2, 500, "pipe:[500]"),
            (4, fd_kind::REGULAR, 1, 600, "/tmp/log"),
            (7, tty, 3, 701, "/dev/pts/2"),
        ],
    );
    // Shared anonymous memory both A and B map (object 1 of each).
    for s in [&mut a, &mut b] {
        s.objects.shmem.push(image_writer::model::ShmemState {
            record: image_format::records::ShmemRecord {
                kind: image_format::records::shmem_kind::SHARED_ANON,
                file: image_format::records::FileId {
                    dev: 1,
                    ino: 800,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        });
        s.vmas[1].record.object = 1;
    }
    // One description: A's and B's fd 3 (opened before fork), the
    // terminal of A's and B's fd 2, B's and C's fd 7. C's fd 4 is an open
    // of its own; the pipe's ends are two.
    let one = [[(A, 3), (B, 3)], [(A, 2), (B, 2)], [(B, 7), (C, 7)]];
    let mut asked = 0;
    let mut same = |x: (i32, i32), y: (i32, i32)| {
        asked += 1;
        one.iter().any(|p| p.contains(&x) && p.contains(&y))
    };
    let found = shared::find(&[(A, &a), (B, &b), (C, &c)], &mut same);
    let holder = |pid, fd, desc| Holder {
        pid,
        fd: Some(fd),
        desc,
        shmem: None,
    };
    let kinds: Vec<SharedKind> = found.objects.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            SharedKind::Shmem,
            SharedKind::Caller,
            SharedKind::File,
            SharedKind::Pipe
        ],
        "{found:#?}"
    );
    let shmem = &found.objects[0];
    assert_eq!(
        shmem
            .holders
            .iter()
            .map(|h| (h.pid, h.fd, h.shmem))
            .collect::<Vec<_>>(),
        [(A, None, Some(1)), (B, None, Some(1))]
    );
    assert_eq!(found.objects[1].caller_fd, Some(2));
    // With the root's other fd on that terminal (bash's 255).
    assert_eq!(
        found.objects[1].holders,
        [holder(A, 2, 1), holder(A, 255, 1), holder(B, 2, 1)]
    );
    assert_eq!(found.objects[2].holders, [holder(A, 3, 1), holder(B, 3, 1)]);
    assert_eq!(found.objects[3].holders, [holder(B, 1, 1), holder(C, 0, 2)]);
    // Marked: the file's and the pipe's holders, not the caller's.
    assert_eq!(found.marks, [(0, 1), (1, 0), (1, 2), (2, 0)]);
    // A terminal that is not the root's stdio, in two processes: refused,
    // in each, by fd.
    assert_eq!(found.refusals.len(), 2, "{:?}", found.refusals);
    assert_eq!(found.refusals[0].0, B);
    assert!(
        found.refusals[0].1.starts_with(&format!(
            "fd 7 (/dev/pts/2): a terminal that is not the root's stdio, shared with pid {C}"
        )),
        "{:?}",
        found.refusals
    );
    assert!(asked > 0);

    // A sealed memfd in two processes cannot be shared: refused.
    a.objects.shmem[0].record.seals = 1;
    let found = shared::find(&[(A, &a), (B, &b), (C, &c)], &mut |_, _| false);
    assert!(
        found
            .refusals
            .iter()
            .any(|(p, w)| *p == A && w.contains("a sealed memfd shared with pid 11")),
        "{:?}",
        found.refusals
    );
}

#[test]
fn a_pipe_end_whose_other_holders_could_not_be_read_is_refused_unless_the_tree_has_it() {
    let (r, w) = crate::sys::fds::pipe().unwrap();
    write_all(&w, b"abc");
    drop(w);
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 3, &r, "pipe:[78]", 0o010_600);
    // Root: every process's fds read, nobody else holds it: kept, with
    // its write end closed for good (as it is).
    let c = run_in_tree(&mut task, PID, &[PID], &[]).unwrap();
    assert_eq!(fd(&c, 3).object, 1);

    // Not root: some process's fds could not be read, and may hold the
    // write end.
    task.unreadable_elsewhere = 2;
    let why = unsupported(run_in_tree(&mut task, PID, &[PID], &[]));
    assert!(
        why.contains("fd 3 is an end of pipe:[78] without its write end")
            && why.contains("the fds of 2 other process(es) could not be read"),
        "{why}"
    );
    // Another process of the tree holds it (its other end, say): the
    // tree's, kept.
    task.elsewhere.push(("pipe:[78]".into(), CHILD));
    let c = run_in_tree(&mut task, PID, &[PID, CHILD], &[]).unwrap();
    assert_eq!(fd(&c, 3).object, 1);
}

#[test]
fn a_pipe_with_both_ends_in_the_process_is_kept_when_other_fds_could_not_be_read() {
    let (r, w) = crate::sys::fds::pipe().unwrap();
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 3, &r, "pipe:[79]", 0o010_600);
    real_fd(&mut task, 4, &w, "pipe:[79]", 0o010_600);
    // One pipe inode for both (the fake numbers each fd's inode apart).
    task.meta(
        "fd/4",
        crate::collect::task::FileMeta {
            id: image_format::records::FileId {
                dev: 5,
                ino: 13,
                ..Default::default()
            },
            mode: 0o010_600,
            ..Default::default()
        },
    );
    task.unreadable_elsewhere = 1;
    let c = run_in_tree(&mut task, PID, &[PID], &[]).unwrap();
    assert_eq!(fd(&c, 3).object, 1);
    assert_eq!(fd(&c, 4).object, 1);
}

#[test]
fn stdio_pipes_of_a_process_dumped_alone_do_not_ask_for_other_holders() {
    let (r, w) = crate::sys::fds::pipe().unwrap();
    let mut task = FakeTask::sleeping(PID);
    // The caller's pipes (held elsewhere too): whoever holds them, they
    // are inherited, so the holders (every process's fds) are not asked.
    real_fd(&mut task, 0, &r, "pipe:[91]", 0o010_600);
    real_fd(&mut task, 1, &w, "pipe:[92]", 0o010_600);
    task.elsewhere.push(("pipe:[91]".into(), 77));
    let c = run_in_tree(&mut task, PID, &[PID], &[]).unwrap();
    assert_eq!(task.holders_asked.get(), 0);
    assert_eq!((fd(&c, 0).object, fd(&c, 1).object), (0, 0));
    // In a tree of two, the other process may hold the other end: asked.
    let c = run_in_tree(&mut task, PID, &[PID, PID + 1], &[]).unwrap();
    assert_eq!(task.holders_asked.get(), 1);
    assert_eq!(fd(&c, 0).object, 0);
    // A pipe end on fd 3: asked.
    let mut task = FakeTask::sleeping(PID);
    real_fd(&mut task, 3, &r, "pipe:[93]", 0o010_600);
    run_in_tree(&mut task, PID, &[PID], &[]).unwrap();
    assert_eq!(task.holders_asked.get(), 1);
}
