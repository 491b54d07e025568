//! The collection steps on a fake task: each test changes one fixture and
//! checks the decision that follows from it, so that changing a decision
//! (which refusal fires, what the restart fix-up and masks record, which
//! areas and pages are kept) fails here, without root.

// Fixtures: small constants, and negative errnos written as the register
// bits the kernel leaves (`-514i64 as u64`), on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use image_format::records::{fd_flags, fd_kind, restart, vma_kind, MAX_GROUPS};
use image_format::PAGE_SIZE;
use image_writer::model::PageRun;

use super::fake::{self, FakeTask};
use super::{collect_from, collect_in, CollectError, Collected};
use crate::options::DumpOptions;

const PID: i32 = 4242;

fn run(task: &mut FakeTask, force: bool) -> Result<Collected, CollectError> {
    let opts = DumpOptions {
        force,
        leave_running: false,
        ..DumpOptions::default()
    };
    collect_from(task, &opts, Some(fake::ZERO_PFN))
}

/// The refusal's text: every blocker on its line.
fn unsupported(r: Result<Collected, CollectError>) -> String {
    match r {
        Err(CollectError::Unsupported { what, .. }) => what,
        Err(e @ CollectError::Blocked { .. }) => e.to_string(),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a dump"),
    }
}

#[test]
fn a_sleeping_task_is_collected_whole() {
    let mut task = FakeTask::sleeping(PID);
    let c = run(&mut task, false).unwrap();
    let s = &c.state;
    assert_eq!(s.process.pid, PID);
    assert_eq!(
        (s.process.ppid, s.process.pgid, s.process.sid),
        (1, PID, PID)
    );
    assert_eq!(s.process.nthreads, 1);
    assert_eq!(s.process.umask, 0o027);
    assert_eq!(&s.process.comm[..5], b"fake\0");
    assert_eq!(s.exe, "/usr/bin/fake");
    assert_eq!(s.process.exe_id.ino, 1234);
    assert_eq!(s.process.cwd_id.ino, 99);
    assert_eq!(s.cwd, "/home/fake");
    assert_eq!(s.mm.brk, fake::HEAP + 0x3000);
    assert_eq!(s.mm.start_brk, fake::HEAP);
    // Cut after AT_NULL.
    assert_eq!(s.auxv, vec![6, 4096, 0, 0]);
    assert_eq!(s.creds.uid, [1000; 4]);
    assert_eq!(s.creds.ngroups, 2);
    assert_eq!(&s.creds.groups[..3], &[100, 27, 0]);
    // Every limit, in RLIMIT_* order, `unlimited` as RLIM_INFINITY.
    assert_eq!(s.rlimits.len(), 16);
    assert_eq!(
        (s.rlimits[3].resource, s.rlimits[3].cur, s.rlimits[3].max),
        (3, 8 << 20, u64::MAX)
    );
    assert_eq!((s.rlimits[7].cur, s.rlimits[7].max), (1024, 524_288));
    // Every signal but SIGKILL and SIGSTOP has its action; only those
    // status names (the handler of SIGUSR1) and SIGCHLD were asked.
    assert_eq!(s.sigactions.len(), 62);
    assert_eq!(task.asked_sigactions, Some((1 << 9) | (1 << 16)));
    let usr1 = s.sigactions.iter().find(|a| a.signo == 10).unwrap();
    assert_eq!(*usr1, task.process_wide.sigactions[0]);
    assert!(s
        .sigactions
        .iter()
        .filter(|a| a.signo != 10)
        .all(|a| (a.handler, a.flags, a.restorer, a.mask) == (0, 0, 0, 0)));
    assert_eq!(s.gadgets.syscall_ret, fake::SYSCALL_RET_AT);
    assert_eq!(s.gadgets.rt_sigreturn, fake::RT_SIGRETURN_AT);
    // Injection got the gadgets found, and the one thread was asked the
    // process-wide questions too.
    assert_eq!(task.prepared, Some(s.gadgets));
    assert_eq!(task.asked.len(), 1);
    assert!(task.asked[0].2);
    assert_eq!(s.threads[0].record.altstack_size, PID as u64);
    assert_eq!(s.threads[0].record.altstack_flags, 2);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.fds.len(), 3);
    assert_eq!(s.fds[1].record.kind, fd_kind::CHAR);
}

#[test]
fn seccomp_in_any_thread_refuses_even_forced_and_nothing_is_injected() {
    let mut task = FakeTask::sleeping(PID);
    task.add_thread(PID + 1, fake::nanosleep_regs());
    task.file(
        &format!("task/{}/status", PID + 1),
        fake::status_text(PID, &[], 2),
    );
    match run(&mut task, true) {
        Err(CollectError::Blocked { blockers, .. }) => {
            assert_eq!(blockers.len(), 1, "{blockers:?}");
            assert!(blockers[0].even_forced);
            assert!(
                blockers[0]
                    .what
                    .starts_with(&format!("thread {}: seccomp mode 2", PID + 1)),
                "{blockers:?}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a filtered task was dumped"),
    }
    assert!(task.asked.is_empty());
    assert!(task.prepared.is_none());
}

#[test]
fn posix_timers_are_recorded_with_what_the_task_answered() {
    use super::posix_timers::TimerAnswer;
    use image_format::records::{sigev_notify, PosixTimerRecord, TimerSpec};
    let mut task = FakeTask::sleeping(PID);
    task.file(
        "timers",
        "ID: 5\nsignal: 14/00000000000000ab\nnotify: signal/pid.4242\nClockID: 1\n\
         ID: 2\nsignal: 0/0\nnotify: none/pid.4242\nClockID: -6\n",
    );
    let spec = |sec, nsec| TimerSpec { sec, nsec };
    task.posix_timers.insert(
        5,
        TimerAnswer {
            interval: spec(0, 20_000_000),
            left: spec(0, 7_000_000),
            overrun: 3,
        },
    );
    task.posix_timers.insert(2, TimerAnswer::default());
    let c = run(&mut task, false).unwrap();
    // One borrow, of the leader, for both; the records sorted by id.
    assert_eq!(task.asked_timers, vec![(PID, vec![5, 2])]);
    assert_eq!(
        c.state.objects.posix_timers,
        vec![
            PosixTimerRecord {
                id: 2,
                clock: 2,
                notify: sigev_notify::NONE,
                ..PosixTimerRecord::default()
            },
            PosixTimerRecord {
                id: 5,
                clock: 1,
                signo: 14,
                notify: sigev_notify::SIGNAL,
                overrun: 3,
                value: 0xab,
                interval: spec(0, 20_000_000),
                left: spec(0, 7_000_000),
                ..PosixTimerRecord::default()
            },
        ]
    );
    // The overrun cannot be restored: said, for the timer that had one.
    let said: Vec<_> = c
        .state
        .warnings
        .iter()
        .filter(|w| w.contains("overrun"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("POSIX timer 5") && said[0].contains('3'));
}

#[test]
fn posix_timers_that_cannot_be_restored_are_refused_untouched_unless_forced() {
    let mut task = FakeTask::sleeping(PID);
    task.file(
        "timers",
        "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/tid.999\nClockID: 1\n",
    );
    let why = unsupported(run(&mut task, false));
    assert!(
        why.contains("POSIX timer 0") && why.contains("thread 999"),
        "{why}"
    );
    assert!(task.asked.is_empty(), "a refused task was borrowed");
    assert!(task.asked_timers.is_empty());
    // Forced: dropped, said, and not asked about.
    let c = run(&mut task, true).unwrap();
    assert!(c.state.warnings.iter().any(|w| w.contains("POSIX timer 0")));
    assert!(c.state.objects.posix_timers.is_empty());
    assert!(task.asked_timers.is_empty());
}

#[test]
fn a_missing_timers_file_is_a_warning() {
    let mut task = FakeTask::sleeping(PID);
    task.files.remove(&task.path("timers"));
    let c = run(&mut task, false).unwrap();
    assert!(c
        .state
        .warnings
        .iter()
        .any(|w| w.contains("cannot check for POSIX timers")));
}

#[test]
fn children_are_refused_and_namespaces_are_warnings() {
    let mut task = FakeTask::sleeping(PID);
    task.file(&format!("task/{PID}/children"), "777 778 ");
    assert!(unsupported(run(&mut task, false)).contains("child processes (777, 778)"));
    let c = run(&mut task, true).unwrap();
    let w = &c.state.warnings;
    assert!(
        w.iter().any(|w| w.contains("child processes (777, 778)")),
        "{w:?}"
    );
    let mut task = FakeTask::sleeping(PID);
    task.link("ns/net", "net:[1]");
    let c = run(&mut task, false).unwrap();
    let w = &c.state.warnings;
    assert!(w.iter().any(|w| w.contains("own net namespace")), "{w:?}");
    assert!(!w.iter().any(|w| w.contains("own pid namespace")), "{w:?}");
}

#[test]
fn numa_policies_and_tagged_addresses_are_refused() {
    let mut task = FakeTask::sleeping(PID);
    task.file(
        "numa_maps",
        "00600000 bind:0 anon=1 dirty=1\n00400000 default file=/usr/bin/fake\n",
    );
    assert!(unsupported(run(&mut task, false)).contains("`bind:0`"));
    let mut task = FakeTask::sleeping(PID);
    let status = fake::status_text(PID, &[], 0).replace("0xffffffffffffffff", "0x807fffffffffffff");
    task.file("status", status);
    assert!(unsupported(run(&mut task, false)).contains("untag_mask 0x807fffffffffffff"));
}

#[test]
fn too_many_groups_are_refused_and_forced_are_cut() {
    let mut task = FakeTask::sleeping(PID);
    let groups: Vec<u32> = (1..=70).collect();
    task.file("status", fake::status_text(PID, &groups, 0));
    assert!(unsupported(run(&mut task, false)).contains("70 supplementary groups"));
    let c = run(&mut task, true).unwrap();
    assert_eq!(c.state.creds.ngroups as usize, MAX_GROUPS);
    assert_eq!(c.state.creds.groups[MAX_GROUPS - 1], MAX_GROUPS as u32);
}

#[test]
fn an_interrupted_syscall_is_stored_to_restart_and_injection_sees_the_real_registers() {
    let mut task = FakeTask::sleeping(PID);
    // Frozen in poll(7), which returned -ERESTARTNOHAND.
    let found = image_format::elf::UserRegs {
        orig_rax: 7,
        rax: (-514i64) as u64,
        ..fake::nanosleep_regs()
    };
    task.add_thread(PID, found);
    // ptrace shows the temporary mask; the borrowed thread tells the real one.
    task.threads.get_mut(&PID).unwrap().sigmask = !0x100;
    task.answers.get_mut(&PID).unwrap().original_mask = 0x4000;
    let c = run(&mut task, false).unwrap();
    let t = &c.state.threads[0];
    assert_eq!(t.record.restart, restart::RESTART);
    assert_eq!(t.regs.rip, found.rip - 2);
    assert_eq!(t.regs.rax, 7);
    assert_eq!((t.record.syscall_nr, t.record.syscall_ret), (7, -514));
    assert_eq!(t.record.sigmask, 0x4000);
    // The live thread is borrowed as it is, not as it will be restored.
    assert_eq!(task.asked[0].1, found);

    // -ERESTART_RESTARTBLOCK: the restart state is the kernel's, EINTR.
    let mut task = FakeTask::sleeping(PID);
    task.add_thread(
        PID,
        image_format::elf::UserRegs {
            orig_rax: 35,
            rax: (-516i64) as u64,
            ..fake::nanosleep_regs()
        },
    );
    let t = &run(&mut task, false).unwrap().state.threads[0];
    assert_eq!(t.record.restart, restart::EINTR);
    assert_eq!(t.regs.rax, (-4i64) as u64);
    assert_eq!(t.regs.rip, fake::nanosleep_regs().rip);

    // A completed syscall is left alone.
    let mut task = FakeTask::sleeping(PID);
    let t = &run(&mut task, false).unwrap().state.threads[0];
    assert_eq!(t.record.restart, restart::NONE);
    assert_eq!(t.regs, fake::nanosleep_regs());
}

#[test]
fn the_process_wide_questions_are_asked_in_one_thread_only() {
    let mut task = FakeTask::sleeping(PID);
    task.add_thread(PID + 1, fake::nanosleep_regs());
    task.add_thread(PID + 2, fake::nanosleep_regs());
    let c = run(&mut task, false).unwrap();
    let asked: Vec<(i32, bool)> = task.asked.iter().map(|a| (a.0, a.2)).collect();
    assert_eq!(asked, vec![(PID, true), (PID + 1, false), (PID + 2, false)]);
    assert_eq!(c.state.process.nthreads, 3);
    let sizes: Vec<u64> = c
        .state
        .threads
        .iter()
        .map(|t| t.record.altstack_size)
        .collect();
    assert_eq!(sizes, vec![PID as u64, PID as u64 + 1, PID as u64 + 2]);
}

#[test]
fn a_cancelled_dump_stops_before_any_thread_is_borrowed() {
    let mut task = FakeTask::sleeping(PID);
    task.cancelled = true;
    assert!(matches!(
        run(&mut task, false),
        Err(CollectError::Cancelled { pid: PID })
    ));
    assert!(task.asked.is_empty());
}

#[test]
fn areas_and_pages_kept() {
    let mut task = FakeTask::sleeping(PID);
    let c = run(&mut task, false).unwrap();
    let kinds: Vec<u32> = c.state.vmas.iter().map(|v| v.record.kind).collect();
    assert_eq!(kinds, vec![vma_kind::FILE, vma_kind::HEAP, vma_kind::STACK]);
    assert_eq!(c.state.vmas[0].record.file.ino, 1234);
    assert_eq!(c.state.vmas[0].path, "/usr/bin/fake");
    // Heap: the written page and the swapped one, not the zero page; the
    // executable's unmodified page comes from the file.
    assert_eq!(
        c.state.pages,
        vec![
            PageRun {
                start: fake::HEAP,
                len: PAGE_SIZE
            },
            PageRun {
                start: fake::HEAP + 2 * PAGE_SIZE,
                len: PAGE_SIZE
            },
            PageRun {
                start: fake::STACK_END - PAGE_SIZE,
                len: PAGE_SIZE
            },
        ]
    );
    let stored: Vec<u64> = c.vma_stats.iter().map(|s| s.stored_pages).collect();
    assert_eq!(stored, vec![0, 2, 1]);
}

#[test]
fn an_area_that_cannot_be_kept_is_refused_and_forced_kept_without_contents() {
    let mut task = FakeTask::sleeping(PID);
    let smaps = String::from_utf8(task.files[&task.path("smaps")].clone()).unwrap()
        + "7f0000000000-7f0000001000 rw-s 00000000 00:05 77                         /dev/fb0\n\
           Rss:                   4 kB\nSwap:                  0 kB\nVmFlags: rd wr sh mr mw me ms io pf\n";
    task.file("smaps", smaps);
    task.pagemap
        .insert(0x7f00_0000_0000, crate::pages::PM_PRESENT | 1);
    assert!(unsupported(run(&mut task, false)).contains("/dev/fb0"));
    let c = run(&mut task, true).unwrap();
    let fb = c.state.vmas.last().unwrap();
    assert_eq!(fb.record.kind, vma_kind::ANON);
    assert_eq!(c.vma_stats.last().unwrap().stored_pages, 0);
    assert!(c.state.warnings.iter().any(|w| w.contains("/dev/fb0")));
}

#[test]
fn fd_flags_and_refusals() {
    let mut task = FakeTask::sleeping(PID);
    // O_RDWR | O_APPEND | O_CLOEXEC, at offset 42.
    task.fd(
        3,
        "/tmp/data",
        0o100_644,
        0,
        "pos:\t42\nflags:\t02002002\nmnt_id:\t31\n",
    );
    let c = run(&mut task, false).unwrap();
    let fd = &c.state.fds[3].record;
    assert_eq!(fd.kind, fd_kind::REGULAR);
    assert_eq!(fd.flags, fd_flags::CLOEXEC);
    assert_eq!(fd.open_flags, 0o2002);
    assert_eq!((fd.pos, fd.mnt_id), (42, 31));
    assert_eq!(fd.file.ino, 13);

    task.fd(
        4,
        "/tmp/gone (deleted)",
        0o100_644,
        0,
        "pos:\t0\nflags:\t00\nmnt_id:\t31\n",
    );
    // A deleted file is saved with its content, as a shared memory object.
    task.file("fd/4", b"gone".to_vec());
    let c = run(&mut task, false).unwrap();
    let gone = &c.state.fds[4];
    assert_eq!(gone.path, "/tmp/gone");
    assert_eq!(gone.record.flags, fd_flags::DELETED);
    assert_eq!(gone.record.object, 1);
    let ghost = &c.state.objects.shmem[0];
    assert_eq!(ghost.record.kind, image_format::records::shmem_kind::GHOST);
    assert_eq!(ghost.name, b"/tmp/gone");

    let mut task = FakeTask::sleeping(PID);
    task.fd(
        5,
        "socket:[123]",
        0o140_777,
        0,
        "pos:\t0\nflags:\t02\nmnt_id:\t9\n",
    );
    // A socket is an object: its module reads it through a copy of the fd.
    assert!(unsupported(run(&mut task, false)).contains("fd 5: cannot take a copy of the socket"));
    // An established TCP connection (both ends here; the task's fd 5 is
    // the connecting end) is refused by name.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    task.stolen.insert(5, std::os::fd::OwnedFd::from(conn));
    let why = unsupported(run(&mut task, false));
    assert!(
        why.contains("fd 5 is an established TCP connection 127.0.0.1:")
            && why.contains(&format!("-> {}: not saved yet", l.local_addr().unwrap())),
        "{why}"
    );
}

#[test]
fn the_dumper_as_root_is_recorded() {
    let mut task = FakeTask::sleeping(PID);
    let flags = run(&mut task, false).unwrap().state.process.flags;
    assert_eq!(flags & image_format::records::PROCESS_DUMPED_AS_ROOT, 0);
    task.euid = 0;
    let flags = run(&mut task, false).unwrap().state.process.flags;
    assert_ne!(flags & image_format::records::PROCESS_DUMPED_AS_ROOT, 0);
}

#[test]
fn a_large_area_reads_pagemap_only_where_the_scan_found_pages() {
    const BIG: u64 = 0x7f00_0000_0000;
    const GIB: u64 = 1 << 30;
    let with_reservation = |task: &mut FakeTask| {
        let smaps = String::from_utf8(task.files[&task.path("smaps")].clone()).unwrap()
            + "7f0000000000-7f0040000000 rw-p 00000000 00:00 0 \n\
               Rss:                   8 kB\nSwap:                  0 kB\nVmFlags: rd wr mr mw me nr\n";
        task.file("smaps", smaps);
        task.pagemap
            .insert(BIG + 0x10_0000, crate::pages::PM_PRESENT | 3);
        task.pagemap
            .insert(BIG + 0x10_1000, crate::pages::PM_PRESENT | 4);
    };
    let big_run = PageRun {
        start: BIG + 0x10_0000,
        len: 2 * PAGE_SIZE,
    };
    // Without PAGEMAP_SCAN, the whole GiB is read.
    let mut task = FakeTask::sleeping(PID);
    with_reservation(&mut task);
    let c = run(&mut task, false).unwrap();
    assert_eq!(c.state.pages.last(), Some(&big_run));
    assert!(task.pagemap_reads.get() >= GIB / PAGE_SIZE);
    // With it, only what it found.
    let mut plain = FakeTask::sleeping(PID);
    run(&mut plain, false).unwrap();
    let mut task = FakeTask::sleeping(PID);
    with_reservation(&mut task);
    task.scan = Some(vec![(BIG + 0x10_0000, BIG + 0x10_2000)]);
    let c = run(&mut task, false).unwrap();
    assert_eq!(c.state.pages.last(), Some(&big_run));
    assert_eq!(task.pagemap_reads.get() - plain.pagemap_reads.get(), 2);
}

#[test]
fn every_area_locked_warns_of_mlockall() {
    let mut task = FakeTask::sleeping(PID);
    let smaps = String::from_utf8(task.files[&task.path("smaps")].clone()).unwrap();
    task.file("smaps", smaps.replace("VmFlags: rd", "VmFlags: lo rd"));
    let c = run(&mut task, false).unwrap();
    assert!(c.state.warnings.iter().any(|w| w.contains("mlockall")));
    assert!(c
        .state
        .vmas
        .iter()
        .all(|v| v.record.flags & image_format::records::vma_flags::LOCKED != 0));
}

#[test]
fn pending_signals_the_shared_queue_once_then_each_thread() {
    let mut task = FakeTask::sleeping(PID);
    task.add_thread(PID + 1, fake::nanosleep_regs());
    let siginfo = |signo: u8| {
        let mut s = [0u8; 128];
        s[0] = signo;
        s
    };
    // More than one batch of the 32 peeked at a time.
    task.pending
        .insert((PID, true), (0..40).map(|_| siginfo(10)).collect());
    task.pending.insert((PID, false), vec![siginfo(12)]);
    task.pending.insert((PID + 1, false), vec![siginfo(14)]);
    // Each thread would show the shared queue; only the first one's is kept.
    task.pending.insert((PID + 1, true), vec![siginfo(10)]);
    let c = run(&mut task, false).unwrap();
    let got: Vec<(i32, u8)> = c
        .state
        .pending
        .iter()
        .map(|p| (p.tid, p.siginfo[0]))
        .collect();
    let mut want = vec![(0, 10); 40];
    want.extend([(PID, 12), (PID + 1, 14)]);
    assert_eq!(got, want);
}

#[test]
fn no_scratch_memory_refuses_before_any_thread_is_borrowed() {
    let mut task = FakeTask::sleeping(PID);
    let smaps = String::from_utf8(task.files[&task.path("smaps")].clone()).unwrap();
    // Without the stack, the 12 KiB heap is the only writable private area:
    // too small for the scratch.
    let cut = smaps.find("7ffd0000-").unwrap();
    task.file("smaps", &smaps[..cut]);
    task.threads.get_mut(&PID).unwrap().regs.rsp = 0x1000;
    // Named with every other blocker, even forced.
    for force in [false, true] {
        match run(&mut task, force) {
            Err(CollectError::Blocked { blockers, .. }) => {
                assert_eq!(blockers.len(), 1, "{blockers:?}");
                assert!(blockers[0].even_forced);
                assert!(
                    blockers[0].what.starts_with(&format!(
                        "tid {PID}: its stack has 0 bytes below rsp 0x1000"
                    )),
                    "{blockers:?}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a task without stack room was dumped"),
        }
    }
    assert!(task.asked.is_empty());
}

#[test]
fn scratch_lies_below_rsp_inside_its_own_area_or_nowhere() {
    let smaps = crate::procfs::smaps::parse(
        "00600000-00640000 rw-p 00000000 00:00 0 [heap]\n\
         VmFlags: rd wr mr mw me ac\n\
         7f0000000000-7f0000004000 rw-p 00000000 00:00 0\n\
         VmFlags: rd wr mr mw me ac\n\
         7f0000005000-7f0000009000 rw-p 00000000 00:00 0\n\
         VmFlags: rd wr mr mw me ac\n\
         7ffd0000-7fff0000 rw-p 00000000 00:00 0 [stack]\n\
         VmFlags: rd wr mr mw me gd ac\n",
    )
    .unwrap();
    let len = crate::inject::SCRATCH_LEN as u64;
    // Room enough: right below the red zone, all inside the stack.
    let rsp = 0x7ffe_f008;
    let s = super::areas::scratch_for(&smaps, rsp).unwrap();
    assert!(s >= 0x7ffd_0000 && s + len <= rsp - crate::inject::RED_ZONE);
    // A fresh stack (rsp at its end) of enough size.
    assert!(super::areas::scratch_for(&smaps, 0x7fff_0000).is_ok());
    // A 16 KiB thread stack whose rsp is 3 KiB below its top: neither the
    // heap nor the area right below it is borrowed; the room is said.
    let rsp = 0x7f00_0000_8400;
    assert_eq!(
        super::areas::scratch_for(&smaps, rsp),
        Err(0x3400 - crate::inject::RED_ZONE)
    );
    // rsp in no writable area.
    assert_eq!(super::areas::scratch_for(&smaps, 0x1000), Err(0));
}

/// A memfd held only by an fd: saved as an object with its name, seals and
/// whole content (no area carries its pages), and the fd refers to it; one
/// above `--ghost-limit` is refused with its fd, size and the limit.
#[test]
fn a_memfd_fd_is_saved_with_its_name_seals_and_content() {
    use image_format::records::{shmem_flags, shmem_kind, FileId};
    let mut task = FakeTask::sleeping(PID);
    task.fd(
        5,
        "/memfd:buf (deleted)",
        0o100_600,
        0,
        "pos:\t3\nflags:\t02\nmnt_id:\t1\n",
    );
    task.meta(
        "fd/5",
        super::task::FileMeta {
            id: FileId {
                dev: 1,
                ino: 77,
                size: 4,
                ..FileId::default()
            },
            mode: 0o100_600,
            ..Default::default()
        },
    );
    task.file("fd/5", b"data".to_vec());
    task.seals.insert(task.path("fd/5"), 0x4 | 0x1);
    let c = run(&mut task, false).unwrap();
    let fd = c.state.fds.iter().find(|f| f.record.fd == 5).unwrap();
    assert_eq!((fd.record.kind, fd.record.object), (fd_kind::MEMFD, 1));
    let o = &c.state.objects.shmem[0];
    assert_eq!(o.record.kind, shmem_kind::MEMFD);
    assert_eq!(o.name, b"buf");
    assert_eq!(o.record.seals, 0x5);
    assert_ne!(o.record.flags & shmem_flags::WHOLE_CONTENT, 0);
    assert_eq!(o.content, b"data");

    let opts = DumpOptions {
        ghost_limit: Some(3),
        ..DumpOptions::default()
    };
    let Err(err) = collect_from(&mut task, &opts, Some(fake::ZERO_PFN)) else {
        panic!("a memfd above the ghost limit was dumped");
    };
    let err = err.to_string();
    assert!(
        err.contains("fd 5 is a memfd buf: 4 bytes, above the ghost limit of 3 bytes"),
        "{err}"
    );
}

/// A fake task whose stdio is one open file of `/dev/pts/5` and whose fd 3
/// is the same pty opened again; `extra` adds fd 4 at that path and device.
/// The modes are read from a real pty master standing for the terminal.
fn task_in_a_terminal(
    extra: Option<(&str, u64)>,
) -> (FakeTask, image_format::records::KernelTermios) {
    use super::task::FileMeta;
    use std::os::fd::OwnedFd;
    let pts5 = (136 << 8) | 5;
    let mut t = FakeTask::sleeping(PID);
    let ptmx: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx")
        .into();
    let termios = crate::sys::tty::termios(&ptmx).expect("TCGETS on a pty master");
    let tty = |t: &mut FakeTask, fd: i32, path: &str, rdev: u64, ino: u64| {
        t.fd(
            fd,
            path,
            0o020_620,
            rdev,
            "pos:\t0\nflags:\t0100002\nmnt_id:\t26\n",
        );
        t.meta(
            &format!("fd/{fd}"),
            FileMeta {
                id: image_format::records::FileId {
                    dev: 24,
                    ino,
                    ..Default::default()
                },
                mode: 0o020_620,
                rdev,
                ..Default::default()
            },
        );
    };
    for fd in 0..3 {
        tty(&mut t, fd, "/dev/pts/5", pts5, 8);
    }
    tty(&mut t, 3, "/dev/pts/5", pts5, 8);
    if let Some((path, rdev)) = extra {
        tty(&mut t, 4, path, rdev, 12);
    }
    t.shared_descs = vec![vec![0, 1, 2]];
    t.stolen.insert(0, ptmx);
    (t, termios)
}

#[test]
fn terminal_fds_get_one_record_per_open_file_and_the_modes_once() {
    use image_format::records::{terminal_flags, terminal_resume};
    let (mut t, termios) = task_in_a_terminal(None);
    let c = run(&mut t, false).unwrap();
    let fds = &c.state.fds;
    let objects: Vec<(i32, u32)> = fds.iter().map(|f| (f.record.fd, f.record.object)).collect();
    assert_eq!(objects, [(0, 1), (1, 1), (2, 1), (3, 2)]);
    let terminals = &c.state.objects.terminals;
    assert_eq!(terminals.len(), 2);
    assert_eq!(terminals[0].resume, terminal_resume::STDIO);
    assert_eq!(
        terminals[0].flags & terminal_flags::MODES,
        terminal_flags::MODES
    );
    assert_eq!(terminals[0].termios, termios);
    assert_eq!(
        (
            terminals[1].resume,
            terminals[1].stdio_fd,
            terminals[1].flags
        ),
        (terminal_resume::DUP_STDIO, 0, 0)
    );
}

#[test]
fn a_terminal_the_stdio_is_not_on_is_refused_by_name() {
    let (mut t, _) = task_in_a_terminal(Some(("/dev/pts/9", (136 << 8) | 9)));
    let why = unsupported(run(&mut t, false));
    assert!(
        why.contains("fd 4 is a terminal (/dev/pts/9, device 136:9)"),
        "{why}"
    );
    let (mut t, _) = task_in_a_terminal(Some(("/dev/ptmx", (5 << 8) | 2)));
    let why = unsupported(run(&mut t, false));
    assert!(why.contains("fd 4 is a pty master (/dev/ptmx)"), "{why}");
}

#[test]
fn one_refusal_names_every_blocker_and_nothing_is_injected() {
    let mut task = FakeTask::sleeping(PID);
    task.fd(
        5,
        "socket:[77]",
        0o140777,
        0,
        "pos:\t0\nflags:\t02\nmnt_id:\t8\n",
    );
    task.fd(
        6,
        "/tmp/gone (deleted)",
        0o100644,
        0,
        "pos:\t0\nflags:\t02\nmnt_id:\t8\n",
    );
    // Deleted files are saved up to --ghost-limit: this one is above.
    task.meta(
        "fd/6",
        super::task::FileMeta {
            id: image_format::records::FileId {
                dev: 5,
                ino: 16,
                size: 5 << 20,
                ..Default::default()
            },
            mode: 0o100644,
            ..Default::default()
        },
    );
    task.fd(
        7,
        "anon_inode:[io_uring]",
        0o600,
        0,
        "pos:\t0\nflags:\t02\nmnt_id:\t8\n",
    );
    task.add_io_worker(PID + 7, "iou-sqp-4242");
    let e = run(&mut task, false).err().expect("a refusal");
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    for want in [
        // The fake has no copy of the socket to read (sockets are objects).
        "fd 5: cannot take a copy of the socket",
        "fd 6 is a deleted file /tmp/gone: 5242880 bytes, above the ghost limit",
        "fd 7 is an io_uring instance",
        "thread 4249 (iou-sqp-4242) is an io_uring kernel thread",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("pid 4242: ") && l.contains(want)),
            "{want} missing in {text}"
        );
    }
    assert!(lines[4].contains("4 blockers above (2 of them refused even with --force)"));
    assert!(task.asked.is_empty(), "a refused task was borrowed");
    assert!(task.prepared.is_none());

    // Forced: what may be lost is a warning; io_uring still refuses.
    match run(&mut task, true) {
        Err(CollectError::Blocked {
            blockers, forced, ..
        }) => {
            assert!(forced);
            assert_eq!(blockers.len(), 2, "{blockers:?}");
            assert!(blockers
                .iter()
                .all(|b| b.even_forced && b.what.contains("io_uring")));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("io_uring was dumped"),
    }
    assert!(task.asked.is_empty());
}

#[test]
fn a_check_collects_as_forced_returns_the_blockers_and_reads_no_pages() {
    let mut task = FakeTask::sleeping(PID);
    task.fd(
        5,
        "socket:[77]",
        0o140777,
        0,
        "pos:\t0\nflags:\t02\nmnt_id:\t8\n",
    );
    let c = collect_in(
        &mut task,
        &DumpOptions::default(),
        Some(fake::ZERO_PFN),
        true,
    )
    .unwrap();
    assert_eq!(c.blockers.len(), 1);
    assert!(c.blockers[0]
        .what
        .contains("fd 5: cannot take a copy of the socket"));
    assert!(c.state.pages.is_empty());
    assert!(c.state.warnings.iter().all(|w| !w.contains("socket")));
    // The image a forced dump would write: the socket is dropped.
    let f = c.state.fds.iter().find(|f| f.record.fd == 5).unwrap();
    assert_ne!(f.record.flags & fd_flags::DROPPED, 0);
}

#[test]
fn io_uring_rings_mapped_without_their_fd_are_refused_even_forced() {
    let mut task = FakeTask::sleeping(PID);
    let smaps = String::from_utf8(task.files[&task.path("smaps")].clone()).unwrap()
        + "7f0000000000-7f0000004000 rw-s 00000000 00:0f 1077                       anon_inode:[io_uring]\n\
           Rss:                   4 kB\nSwap:                  0 kB\nVmFlags: rd wr sh mr mw me ms de\n";
    task.file("smaps", smaps);
    match run(&mut task, true) {
        Err(CollectError::Blocked { blockers, .. }) => {
            assert_eq!(blockers.len(), 1, "{blockers:?}");
            assert!(blockers[0].what.contains(
                "an io_uring instance without an fd is mapped at 0x7f0000000000-0x7f0000004000"
            ));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("io_uring rings were dumped"),
    }
    assert!(task.asked.is_empty());
}

mod event_objects;
mod tree;
