//! Stage 1 of a tree restore (`--tree`): placed fds kept and checked,
//! their dups moved from them, stdio not inherited by the direct-run
//! rules, the orchestrator's fds checked, the barrier handed to the plan.

use super::*;
use crate::args::{Barrier, LoaderArgs};
use crate::plan::FdMove;

/// The kernel's anonymous inode, as the fake's eventfds and placed fds
/// are on it.
fn anon() -> Stat {
    Stat {
        dev: 13,
        ino: 1,
        mode: 0o600,
        ..Default::default()
    }
}

/// [`machine`] with the anonymous inode, stdio given as pipes and the
/// orchestrator's barrier fds (60, 61) and report fd (62).
fn tree_machine() -> Fake {
    let mut os = machine();
    os.add("anon_inode:[eventfd]", anon(), vec![]);
    for fd in 0..3 {
        os.give(fd, "pipe:[caller]", sys::S_IFIFO | 0o600);
    }
    os.give(60, "pipe:[ready]", sys::S_IFIFO | 0o600);
    os.give(61, "pipe:[go]", sys::S_IFIFO | 0o600);
    os.give(62, "pipe:[report]", sys::S_IFIFO | 0o600);
    os
}

fn tree_args(placed: &[i32]) -> LoaderArgs {
    let mut args = LoaderArgs::default();
    args.tree = true;
    args.barrier = Some(Barrier { ready: 60, go: 61 });
    args.report = Some(62);
    for &fd in placed {
        args.place(fd).unwrap();
    }
    args
}

#[test]
fn placed_fds_are_kept_their_dups_moved_and_nothing_is_made_for_them() {
    let mut os = tree_machine();
    // The pipe's ends and the eventfd, placed by the orchestrator.
    os.give(4, "pipe:[7]", sys::S_IFIFO | 0o600);
    os.give(5, "pipe:[7]", sys::S_IFIFO | 0o600);
    os.give(7, "anon_inode:[eventfd]", 0o600);
    let mut state = with_pipe_and_eventfd(task(), 65536, b"buffered");
    state.fds[7].record.flags |= fd_flags::CLOEXEC;
    let args = tree_args(&[0, 1, 2, 4, 5, 7]);
    let c = run_with(&os, &state, code_page(), (1000, 1000), &args).unwrap();
    let input = &c.input;
    assert_eq!(input.keep_fds, &[0, 1, 2, 4, 5, 7]);
    // No pipe made, no bytes refilled, no eventfd count written: the
    // orchestrator made them.
    assert!(os.pipes.borrow().is_empty());
    assert!(os.written.borrow().is_empty(), "{:?}", os.written.borrow());
    let moves: Vec<FdMove> = input.fd_moves.to_vec();
    // Fd 6 shares fd 5's description: a dup of the placed fd.
    assert!(moves.contains(&FdMove {
        from: 5,
        to: 6,
        cloexec: 0
    }));
    // The placed eventfd was close-on-exec: a move onto itself (F_SETFD).
    assert!(moves.contains(&FdMove {
        from: 7,
        to: 7,
        cloexec: 1
    }));
    // The log is reopened as in a direct run.
    let log = moves.iter().find(|m| m.to == 3).unwrap();
    assert_eq!(os.path_of(log.from).as_deref(), Some(LOG));
    assert_eq!(input.barrier, Some(Barrier { ready: 60, go: 61 }));
    // The plan's messages go to a copy of the report fd.
    let err = input.err_fd.unwrap();
    assert!(err > 7);
    assert_eq!(os.path_of(err).as_deref(), Some("pipe:[report]"));
}

#[test]
fn a_dup_before_its_placed_fd_is_moved_from_it() {
    let mut os = tree_machine();
    os.give(5, LOG, 0);
    let mut state = task();
    for fd in [4, 5] {
        state.fds.push(FdState {
            record: FdRecord {
                fd,
                kind: fd_kind::REGULAR,
                desc: 20,
                file: id(&log_stat()),
                ..Default::default()
            },
            path: LOG.into(),
        });
    }
    let c = run_with(
        &os,
        &state,
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2, 5]),
    )
    .unwrap();
    assert_eq!(c.input.keep_fds, &[0, 1, 2, 5]);
    let to4 = c.input.fd_moves.iter().find(|m| m.to == 4).unwrap();
    assert_eq!(
        to4.from, 5,
        "fd 4 is a dup of placed fd 5, not a second open"
    );
}

#[test]
fn stdio_is_not_inherited_in_a_tree_restore() {
    // Fd 0 is a pipe without a saved object: a direct run inherits it, a
    // tree restore has it only placed.
    let os = tree_machine();
    let direct = run(&os, &task(), code_page(), (1000, 1000)).unwrap();
    assert_eq!(direct.input.keep_fds, &[0, 1, 2]);
    let r = run_with(&os, &task(), code_page(), (1000, 1000), &tree_args(&[1, 2]));
    match r {
        Err(CheckError::ObjectMissing { fd: 0 }) => {}
        Err(e) => panic!("{e}"),
        Ok(c) => panic!("fd 0 kept: {:?}", c.input.keep_fds),
    }
}

#[test]
fn a_placed_fd_of_another_kind_or_file_is_refused() {
    // The log at fd 3, placed, but fd 3 is a FIFO.
    let mut os = tree_machine();
    os.give(3, "pipe:[9]", sys::S_IFIFO | 0o600);
    let args = tree_args(&[0, 1, 2, 3]);
    let r = run_with(&os, &task(), code_page(), (1000, 1000), &args);
    match r {
        Err(e @ CheckError::PlacedKind { fd: 3, .. }) => {
            assert_eq!(e.exit_code(), ExitCode::FileChanged);
            let text = std::format!("{e}");
            assert!(
                text.contains("placed fd 3") && text.ends_with("it is a FIFO"),
                "{e}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a FIFO accepted for a regular file"),
    }
    // Another regular file (another inode).
    let mut os = tree_machine();
    let mut other = log_stat();
    other.ino += 1;
    os.add("/other", other, vec![]);
    os.give(3, "/other", 0);
    let r = run_with(&os, &task(), code_page(), (1000, 1000), &args);
    assert!(matches!(r, Err(CheckError::PlacedKind { fd: 3, .. })));
    // The same file passes.
    let mut os = tree_machine();
    os.give(3, LOG, 0);
    let c = run_with(&os, &task(), code_page(), (1000, 1000), &args).unwrap();
    assert_eq!(c.input.keep_fds, &[0, 1, 2, 3]);
    assert!(c.input.fd_moves.is_empty());
    // An eventfd placed where a pipe was: not on the anonymous inode.
    let mut os = tree_machine();
    os.give(4, "pipe:[7]", sys::S_IFIFO | 0o600);
    os.give(5, "pipe:[7]", sys::S_IFIFO | 0o600);
    os.give(7, "pipe:[8]", sys::S_IFIFO | 0o600);
    let state = with_pipe_and_eventfd(task(), 65536, b"");
    let r = run_with(
        &os,
        &state,
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2, 4, 5, 7]),
    );
    assert!(matches!(r, Err(CheckError::PlacedKind { fd: 7, .. })));
}

#[test]
fn the_orchestrators_fds_are_checked() {
    let os = tree_machine();
    let usage = |args: &LoaderArgs, fd_wanted: i32| match run_with(
        &os,
        &task(),
        code_page(),
        (1000, 1000),
        args,
    ) {
        Err(e @ CheckError::TreeFd { fd, .. }) => {
            assert_eq!(fd, fd_wanted, "{e}");
            assert_eq!(e.exit_code(), ExitCode::Usage);
            std::format!("{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted"),
    };
    // A placed fd the image does not have.
    let text = usage(&tree_args(&[0, 1, 2, 9]), 9);
    assert!(
        text.contains("--placed") && text.contains("no such fd"),
        "{text}"
    );
    // A placed fd that is not open.
    let text = usage(&tree_args(&[0, 1, 2, 3]), 3);
    assert!(text.contains("not open"), "{text}");
    // Barrier fds at a number of the image's, or closed.
    let mut args = tree_args(&[0, 1, 2]);
    args.barrier = Some(Barrier { ready: 60, go: 3 });
    let text = usage(&args, 3);
    assert!(
        text.contains("--barrier") && text.contains("has an fd of that number"),
        "{text}"
    );
    // Below the highest fd of the image but not one of its numbers: fine.
    let mut os_gap = tree_machine();
    os_gap.give(4, "pipe:[ready]", sys::S_IFIFO | 0o600);
    let mut state = task();
    state.fds[3].record.fd = 5;
    let mut gap = tree_args(&[0, 1, 2]);
    gap.barrier = Some(Barrier { ready: 4, go: 61 });
    let c = run_with(&os_gap, &state, code_page(), (1000, 1000), &gap).unwrap();
    assert_eq!(c.input.barrier, Some(Barrier { ready: 4, go: 61 }));
    args.barrier = Some(Barrier { ready: 70, go: 61 });
    let text = usage(&args, 70);
    assert!(text.contains("not open"), "{text}");
    // Without --tree none of it applies (a direct run, the dry run).
    let mut direct = tree_args(&[9]);
    direct.tree = false;
    let c = run_with(&os, &task(), code_page(), (1000, 1000), &direct).unwrap();
    assert_eq!(c.input.barrier, None);
}

/// [`tree_machine`] with `/tmp` (for [`task_with_objects`]'s deleted file).
fn tree_machine_with_tmp() -> Fake {
    let mut os = tree_machine();
    os.add(
        "/tmp",
        Stat {
            mode: sys::S_IFDIR | 0o1777,
            ..Default::default()
        },
        vec![],
    );
    os
}

#[test]
fn a_given_shared_memory_object_is_used_as_it_is() {
    use image_format::records::seals;
    let mut state = task_with_objects();
    // Sealed against future writes: a late seal in a direct run.
    state.objects.shmem[0].record.seals |= seals::FUTURE_WRITE;
    let os = tree_machine_with_tmp();
    let direct = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert_eq!(direct.input.late_seals.len(), 1);

    let mut os = tree_machine_with_tmp();
    os.give_memfd(70, "ring", 8192, 0);
    let mut args = tree_args(&[0, 1, 2]);
    args.add_shmem(crate::args::ShmemFd { index: 1, fd: 70 })
        .unwrap();
    let c = run_with(&os, &state, code_page(), (1000, 1000), &args).unwrap();
    let v = c.input.vmas;
    // Both views of the ring are mapped from the given fd.
    assert_eq!((v[3].fd, v[4].fd), (70, 70));
    // Nothing made for it, nothing written to it, no seal added, none
    // left for the plan (the orchestrator owns it).
    assert!(!os.made.borrow().values().any(|m| m.how == "memfd:ring"));
    let given = os.made_at(70).unwrap();
    assert_eq!((given.seals, given.contents.len()), (0, 0));
    assert!(c.input.late_seals.is_empty());
    // The other objects are made as in a direct run.
    let sealed = os.made_at(v[5].fd).unwrap();
    assert_eq!(&sealed.contents[..6], b"sealed");
}

#[test]
fn a_given_object_of_another_size_kind_or_index_is_refused() {
    let state = task_with_objects();
    let refused = |os: &Fake, index: u32| {
        let mut args = tree_args(&[0, 1, 2]);
        args.add_shmem(crate::args::ShmemFd { index, fd: 70 })
            .unwrap();
        match run_with(os, &state, code_page(), (1000, 1000), &args) {
            Err(e) => e,
            Ok(_) => panic!("object {index} at fd 70 accepted"),
        }
    };
    let mut os = tree_machine_with_tmp();
    os.give_memfd(70, "ring", 4096, 0);
    let e = refused(&os, 1);
    assert!(
        matches!(
            e,
            CheckError::GivenObjectSize {
                fd: 70,
                size: 4096,
                want: 8192,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.exit_code(), ExitCode::FileChanged);
    // Not a shmem file: no seals to ask for.
    let mut os = tree_machine_with_tmp();
    os.give(70, LOG, 0);
    let e = refused(&os, 1);
    assert!(std::format!("{e}").contains("not a memfd"), "{e}");
    assert_eq!(e.exit_code(), ExitCode::Usage);
    // Object 3 is a deleted file, not shared memory; there is no object 4.
    let mut os = tree_machine_with_tmp();
    os.give_memfd(70, "ring", 4096, 0);
    assert!(matches!(refused(&os, 3), CheckError::TreeFd { fd: 70, .. }));
    let e = refused(&os, 4);
    assert!(
        std::format!("{e}").contains("no shared memory object"),
        "{e}"
    );
}

#[test]
fn a_direct_run_names_the_fds_shared_in_the_tree_once() {
    let os = tree_machine();
    let mut state = task();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert!(!os.warned("dumped tree"));
    state.fds[3].record.flags |= fd_flags::SHARED_IN_TREE;
    let os = tree_machine();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert!(os.warned(
        "warning: fd 3 was shared with other processes of the dumped tree; restored alone it is a private copy (use crrestore-tree DIR)"
    ));
    state.fds[1].record.flags |= fd_flags::SHARED_IN_TREE;
    let os = tree_machine();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let said: Vec<_> = os
        .warnings
        .borrow()
        .iter()
        .filter(|w| w.contains("dumped tree"))
        .cloned()
        .collect();
    assert_eq!(
        said,
        ["warning: fds 1, 3 were shared with other processes of the dumped tree; restored alone they are private copies (use crrestore-tree DIR)"]
    );
    // Not in a tree restore, which places them shared.
    let mut os = tree_machine();
    os.give(3, LOG, 0);
    run_with(
        &os,
        &state,
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2, 3]),
    )
    .unwrap();
    assert!(!os.warned("dumped tree"));
}

#[test]
fn an_fd_on_the_object_of_a_placed_fd_must_be_placed_too() {
    // The pipe's write end placed, its read end (fd 4) not.
    let mut os = tree_machine();
    os.give(5, "pipe:[7]", sys::S_IFIFO | 0o600);
    os.give(7, "anon_inode:[eventfd]", 0o600);
    let state = with_pipe_and_eventfd(task(), 65536, b"");
    let r = run_with(
        &os,
        &state,
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2, 5, 7]),
    );
    match r {
        Err(e @ CheckError::TreeFd { fd: 4, .. }) => {
            assert!(std::format!("{e}").contains("place every fd"), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second pipe made for fd 4"),
    }
    assert!(os.pipes.borrow().is_empty(), "refused before it is made");
}

#[test]
fn placed_stdio_is_whatever_the_caller_gives_as_in_a_direct_run() {
    // Stdio recorded as pipes, given as a regular file (`> out.txt`), a
    // terminal and a socket: all kept (`crrestore-tree --stdio inherit`).
    let mut os = tree_machine();
    os.give(0, "/dev/pts/3", sys::S_IFCHR | 0o620);
    os.give(1, LOG, 0);
    os.give(2, "socket:[5]", sys::S_IFSOCK | 0o777);
    let c = run_with(
        &os,
        &task(),
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2]),
    )
    .unwrap();
    assert_eq!(c.input.keep_fds, &[0, 1, 2]);
    // A copy of stdin at fd 10 (a pipe without an object: the caller's),
    // placed with what the caller gave at 0.
    let mut state = task();
    state.fds[0].record.desc = 30;
    let mut copy = state.fds[0].clone();
    copy.record.fd = 10;
    state.fds.push(copy);
    os.give(10, "/dev/pts/3", sys::S_IFCHR | 0o620);
    let c = run_with(
        &os,
        &state,
        code_page(),
        (1000, 1000),
        &tree_args(&[0, 1, 2, 10]),
    )
    .unwrap();
    assert_eq!(c.input.keep_fds, &[0, 1, 2, 10]);
}
