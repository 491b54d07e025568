//! The loader in tree mode, run as `crrestore-tree` runs it, without the
//! orchestrator: a dumped counter restored with `--tree --placed 0
//! --placed 1 --placed 2 --barrier R,G --report E`. The loader writes one
//! byte on R once the memory is back and waits on G: the counter does not
//! tick until a byte comes, then continues its ticks; when G reaches end
//! of file instead, the loader exits 9 (failed after the point of no
//! return) with its message on E, not on its stderr.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Binaries, ChildGuard, Workload};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Where the orchestrator's fds sit in the loader: above every fd of the
/// image (the counter's are below 10).
const READY_FD: i32 = 200;
const GO_FD: i32 = 201;
const REPORT_FD: i32 = 202;
/// Where the child parks the fds it moves before they go to their numbers.
const PARKED_FDS: i32 = 1000;
/// How long to wait for what must come.
const WAIT: Duration = Duration::from_secs(20);

fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    (File::from(r), File::from(w))
}

/// Whether `fd` becomes readable within `ms` milliseconds.
fn readable(fd: &impl AsFd, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).expect("poll") > 0
}

/// A restore in progress: the loader (the process that becomes the
/// counter), its stdio and the test's ends of R, G and E.
struct Restore {
    loader: ChildGuard,
    stdin: File,
    lines: mpsc::Receiver<String>,
    ready: File,
    go: Option<File>,
    report: File,
    stderr: File,
}

/// Start the loader on `image` in tree mode, its fds set up as the
/// orchestrator would: stdio placed, R, G, E above the image's fds, every
/// other fd closed.
fn start(bins: &Binaries, image: &Path) -> Restore {
    start_with(bins, image, Vec::new(), &[])
}

/// [`start`] with more fds of the orchestrator's (each moved to its
/// number, above [`REPORT_FD`]) and more arguments.
fn start_with(
    bins: &Binaries,
    image: &Path,
    extra_fds: Vec<(OwnedFd, i32)>,
    extra_args: &[String],
) -> Restore {
    let (stdin_r, stdin_w) = pipe();
    let (out_r, out_w) = pipe();
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    let (report_r, report_w) = pipe();
    let (err_r, err_w) = pipe();
    let mut moves = vec![
        (OwnedFd::from(ready_w), READY_FD),
        (OwnedFd::from(go_r), GO_FD),
        (OwnedFd::from(report_w), REPORT_FD),
    ];
    moves.extend(extra_fds);
    for (fd, to) in &moves {
        assert!(
            fd.as_raw_fd() < PARKED_FDS,
            "fd {} (for {to}) is above the parking numbers",
            fd.as_raw_fd()
        );
    }
    let raw: Vec<(i32, i32)> = moves.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
    let mut command = Command::new(&bins.loader);
    command
        .arg(image)
        .args(["--same-ids", "--tree", "--placed", "0", "--placed", "1"])
        .args(["--placed", "2", "--barrier"])
        .arg(format!("{READY_FD},{GO_FD}"))
        .arg("--report")
        .arg(REPORT_FD.to_string())
        .args(extra_args)
        .stdin(Stdio::from(OwnedFd::from(stdin_r)))
        .stdout(Stdio::from(OwnedFd::from(out_w)))
        .stderr(Stdio::from(OwnedFd::from(err_w)));
    // SAFETY: the closure runs in the child between fork and exec and
    // makes only raw syscalls (dup2, close_range), async-signal-safe and
    // allocation-free; `raw` is a plain copy moved into it.
    unsafe {
        command.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // Parked first (a target number may be another's source),
            // everything but stdio closed, then each to its number.
            for (k, &(from, _)) in raw.iter().enumerate() {
                if libc::dup2(from, PARKED_FDS + k as i32) < 0 {
                    return fail();
                }
            }
            if libc::syscall(libc::SYS_close_range, 3u32, PARKED_FDS as u32 - 1, 0u32) < 0 {
                return fail();
            }
            for (k, &(_, to)) in raw.iter().enumerate() {
                if libc::dup2(PARKED_FDS + k as i32, to) < 0 {
                    return fail();
                }
            }
            if libc::syscall(libc::SYS_close_range, PARKED_FDS as u32, u32::MAX, 0u32) < 0 {
                return fail();
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn the loader");
    drop(command);
    drop(moves);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out_r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Restore {
        loader: ChildGuard::new("tree-mode loader", child),
        stdin: stdin_w,
        lines,
        ready: ready_r,
        go: Some(go_w),
        report: report_r,
        stderr: err_r,
    }
}

impl Restore {
    /// The one byte the loader writes on R when it is ready.
    fn wait_ready(&mut self) {
        assert!(
            readable(&self.ready, 20_000),
            "no byte on R within {WAIT:?}"
        );
        let mut byte = [0u8; 2];
        let n = self.ready.read(&mut byte).expect("read R");
        if n == 0 {
            let status = self.loader.wait_exit(WAIT);
            panic!(
                "R at end of file: the loader ended ({status:?}); E: {:?}, stderr: {:?}",
                self.report_text(),
                self.loader_stderr()
            );
        }
        assert_eq!(&byte[..n], &[1], "R carries one byte, 1");
    }

    /// Everything on E once the loader's copies are closed.
    fn report_text(&mut self) -> String {
        let mut text = String::new();
        self.report.read_to_string(&mut text).expect("read E");
        text
    }

    /// Everything on the loader's stderr, once it has exited.
    fn loader_stderr(&mut self) -> String {
        let mut text = String::new();
        self.stderr
            .read_to_string(&mut text)
            .expect("read the loader's stderr");
        text
    }
}

#[test]
fn the_barrier_holds_the_restored_process_until_go_and_eof_fails_it() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let tmp = scratch.path().display().to_string();
    let mut counter = Workload::start(
        "counter",
        ["--tmpdir", &tmp, "--heap-mb", "2", "--anon-mb", "2"],
    );
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let last = dumped.ticks_before().last().expect("ticks before the dump");
    let image = &dumped.dump.image;

    // G closed without a byte: the orchestrator is gone. The loader is
    // past its point of no return: exit 9, its message on E.
    let mut r = start(&bins, image);
    r.wait_ready();
    drop(r.go.take());
    let status = r.loader.wait_exit(WAIT).expect("the loader exits");
    assert_eq!(status.code(), Some(9), "{status:?}");
    let report = r.report_text();
    assert!(
        report.contains(&format!("read the barrier's go byte from fd {GO_FD}"))
            && report.contains("result 0x0"),
        "E: {report:?}"
    );
    assert_eq!(r.loader_stderr(), "", "messages go to E, not stderr");
    assert!(r.lines.try_recv().is_err(), "it never ticked");

    // Ready, then held: no tick until the byte on G.
    let mut r = start(&bins, image);
    r.wait_ready();
    assert!(
        matches!(
            r.lines.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "the restored counter ticked before the barrier's go"
    );
    assert!(r.loader.try_status().is_none(), "the loader waits");
    r.go.as_mut().unwrap().write_all(&[1]).expect("write G");
    let first = r.lines.recv_timeout(WAIT).expect("a tick after go");
    assert_eq!(first, format!("TICK {}", last + 1), "ticks continue");
    r.stdin.write_all(b"check\n").expect("ask for a check");
    let pass = loop {
        let line = r.lines.recv_timeout(WAIT).expect("the check's answer");
        if !line.starts_with("TICK") {
            break line;
        }
    };
    assert!(pass.starts_with("PASS"), "{pass}");
    // R and G are closed once passed, E at the end of the plan: the test's
    // ends see end of file, nothing of the loader stays in the task.
    let mut rest = Vec::new();
    r.ready.read_to_end(&mut rest).expect("R at end of file");
    assert!(rest.is_empty());
    let report = r.report_text();
    assert!(!report.contains("failed"), "E: {report:?}");
}

/// The orchestrator's part for a shared memory object: a memfd made
/// outside the loader (`--shmem IDX=FD`). The restored process's two views
/// of its memfd are of this one: the loader fills it with the stored pages
/// (it was all zeros) and the process's own check of names, seals,
/// contents and views passes.
#[test]
fn a_given_memfd_is_the_restored_processes_memory() {
    use image_format::records::ShmemRecord;
    use image_format::Image;
    use std::os::unix::fs::{FileExt, PermissionsExt};
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut victim = Workload::start("shmem", ["--memfd"]);
    victim.expect_pass(crimg_tests::process::CheckTrigger::Stdin);
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let bytes = std::fs::read(&dumped.dump.image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let (index, record) = img
        .records::<ShmemRecord>()
        .unwrap()
        .enumerate()
        .find(|(_, r)| img.string(r.name).unwrap() == b"crimg-shmem-test")
        .expect("the memfd's object");
    // Made as the orchestrator makes it: name, size, mode, seals.
    let memfd = nix::sys::memfd::memfd_create(
        c"crimg-shmem-test",
        nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING
            | nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd_create");
    let file = File::from(memfd);
    file.set_len(record.size).unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(record.mode & 0o777))
        .unwrap();
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::from_bits_truncate(
            record.seals as i32,
        )),
    )
    .expect("F_ADD_SEALS");
    let fd = 203;
    let given = OwnedFd::from(file.try_clone().unwrap());
    let mut r = start_with(
        &bins,
        &dumped.dump.image,
        vec![(given, fd)],
        &["--shmem".to_owned(), format!("{}={fd}", index + 1)],
    );
    r.wait_ready();
    r.go.as_mut().unwrap().write_all(&[1]).expect("write G");
    r.stdin.write_all(b"check\n").expect("ask for a check");
    let pass = r.lines.recv_timeout(WAIT).expect("the check's answer");
    assert!(pass.starts_with("PASS shmem"), "{pass}");
    let mut content = vec![0u8; usize::try_from(record.size).unwrap()];
    file.read_exact_at(&mut content, 0).unwrap();
    assert!(
        content.iter().any(|&b| b != 0),
        "the given memfd holds the restored pages"
    );
}

/// Placed fds that are not stdio, on a real kernel: the writerless pipe
/// at fd 11 and the log at fd 5 are the test's (as the orchestrator gives
/// shared objects), fd 6 (one description with fd 5) is moved from the
/// placed fd 5 and fd 10 (a dup of stdin) from the placed fd 0; the
/// others are made by the loader. The restored process's check sees one
/// offset for fds 5 and 6, the pipe's bytes and end of file, and reads
/// its commands through fd 10.
#[test]
fn placed_fds_and_their_dups_are_the_restored_processes() {
    use image_format::records::FdRecord;
    use image_format::Image;
    use std::os::unix::fs::OpenOptionsExt;
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let w = Workload::start("fd_sharing", ["--dir", dir.as_str()]);
    let dumped = dump_and_kill(&bins, w, &scratch.path().join("out"));
    let bytes = std::fs::read(&dumped.dump.image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let fds: Vec<FdRecord> = img.fds().unwrap().collect();
    let record = |fd| *fds.iter().find(|f| f.fd == fd).expect("the fd's record");
    let (log, dup) = (record(5), record(6));
    assert!(
        log.desc != 0 && log.desc == dup.desc,
        "fds 5 and 6 share one description"
    );
    // The log as the task had it open: its flags, at its offset.
    let path = std::str::from_utf8(img.string(log.path).unwrap()).unwrap();
    let mut opened = std::fs::OpenOptions::new();
    let accmode = log.open_flags & 3;
    opened.read(accmode != 1).write(accmode != 0).custom_flags(
        (log.open_flags & !3 & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32) as i32,
    );
    let log_file = opened.open(path).unwrap();
    nix::unistd::lseek(
        log_file.as_raw_fd(),
        log.pos as i64,
        nix::unistd::Whence::SeekSet,
    )
    .unwrap();
    // The pipe with "tail" in it and no writer.
    let (tail_r, mut tail_w) = pipe();
    tail_w.write_all(b"tail").unwrap();
    drop(tail_w);
    let mut r = start_with(
        &bins,
        &dumped.dump.image,
        vec![(OwnedFd::from(log_file), 5), (OwnedFd::from(tail_r), 11)],
        &[
            "--placed".to_owned(),
            "5".to_owned(),
            "--placed".to_owned(),
            "11".to_owned(),
        ],
    );
    r.wait_ready();
    r.go.as_mut().unwrap().write_all(&[1]).expect("write G");
    r.stdin.write_all(b"check\n").expect("ask for a check");
    let pass = r.lines.recv_timeout(WAIT).expect("the check's answer");
    assert!(
        pass.starts_with("PASS fd_sharing"),
        "{pass}; E: {:?}",
        r.report_text()
    );
}

/// Stage 1's refusals go to E too, before anything changes: a placed fd
/// the image does not have (exit 2), a placed fd of another kind than
/// recorded (exit 5: a pipe where the log was). Nothing is written on R.
#[test]
fn stage_one_refusals_go_to_the_report_fd() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dir = scratch.path().display().to_string();
    let w = Workload::start("fd_sharing", ["--dir", dir.as_str()]);
    let dumped = dump_and_kill(&bins, w, &scratch.path().join("out"));
    let image = &dumped.dump.image;
    let placed = |fd: i32| vec!["--placed".to_owned(), fd.to_string()];
    let (not_a_log, _writer) = pipe();
    for (fds, args, code, want) in [
        (
            Vec::new(),
            placed(150),
            2,
            "fd 150 of --placed: the image has no such fd",
        ),
        (
            vec![(OwnedFd::from(not_a_log), 5)],
            placed(5),
            5,
            "placed fd 5 is not what the image had there",
        ),
    ] {
        let mut r = start_with(&bins, image, fds, &args);
        let status = r.loader.wait_exit(WAIT).expect("the loader exits");
        let report = r.report_text();
        assert_eq!(status.code(), Some(code), "{status:?}: E {report:?}");
        assert!(report.contains(want), "E: {report:?}");
        assert_eq!(r.loader_stderr(), "", "messages go to E, not stderr");
        let mut rest = Vec::new();
        r.ready.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "no byte on R");
    }
}
