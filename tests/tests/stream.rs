//! Dump streams: `crdump -o -` writes the dump to stdout (a tar archive:
//! manifest.json, then the images, then the end mark) and `crimg run -`
//! resumes the one process of a stream on its stdin, with no file on
//! disk. A stream cut anywhere, or damaged, is refused with one line and
//! nothing resumes; `tar x` of a stream gives a directory that restores; a
//! reader that goes away leaves the original running; a tree's stream is
//! refused by `crimg run -`, naming `crrestore-tree`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use crimg_tests::cli::CLI_TIMEOUT;
use crimg_tests::inspect::fds_of;
use crimg_tests::process::{only_stdio, CheckTrigger, LINE_TIMEOUT};
use crimg_tests::roundtrip::{assert_same_maps, assert_ticks_resume, view_of, Dumped};
use crimg_tests::untouched::{assert_counts_on, assert_running_untraced, next_tick, wait_until};
use crimg_tests::{binaries, scratch_dir, Binaries, ChildGuard, Dump, Workload};

/// The counter at a size that makes the image several MiB (many pipe
/// buffers' worth), its file mapping in `tmpdir`.
fn counter(tmpdir: &Path) -> Workload {
    Workload::start(
        "counter",
        [
            "--tmpdir",
            &tmpdir.display().to_string(),
            "--heap-mb",
            "16",
            "--anon-mb",
            "8",
        ],
    )
}

/// `crdump --pid PID -o - [extra]`, its stdout `stdout` (the pipe's read
/// end is returned when it is `Stdio::piped()`), its stderr into
/// `stderr_file`.
fn crdump_stream(
    bins: &Binaries,
    pid: i32,
    extra: &[&str],
    stdout: Stdio,
    stderr_file: &Path,
) -> (ChildGuard, Option<ChildStdout>) {
    let mut command = Command::new(&bins.crdump);
    command
        .args(["--pid", &pid.to_string(), "-o", "-"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(File::create(stderr_file).unwrap());
    only_stdio(&mut command);
    let mut child = command.spawn().unwrap();
    let pipe = child.stdout.take();
    (ChildGuard::new("crdump -o -", child), pipe)
}

/// Wait for crdump to exit; its status and stderr.
fn finish(mut crdump: ChildGuard, stderr_file: &Path) -> (ExitStatus, String) {
    let status = crdump
        .wait_exit(CLI_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    (status, fs::read_to_string(stderr_file).unwrap_or_default())
}

/// The stream of `pid` (left running) in a file of `dir`.
fn stream_to_file(bins: &Binaries, pid: i32, dir: &Path) -> PathBuf {
    let path = dir.join("stream.tar");
    let err = dir.join("crdump.err");
    let (crdump, _) = crdump_stream(
        bins,
        pid,
        &["--leave-running"],
        Stdio::from(File::create(&path).unwrap()),
        &err,
    );
    let (status, stderr) = finish(crdump, &err);
    assert!(status.success(), "crdump -o - failed ({status}):\n{stderr}");
    path
}

/// How `crimg run -` gets its stream.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// A pipe (the image is spliced from it).
    Pipe,
    /// A regular file (the image is read and written).
    File,
}

/// `crimg run -` with `input` on its stdin; its status, stdout and stderr.
fn run_stream_from(
    bins: &Binaries,
    input: &[u8],
    feed: Feed,
    dir: &Path,
) -> (ExitStatus, String, String) {
    let input_path = dir.join("input.tar");
    fs::write(&input_path, input).unwrap();
    let (out, err) = (dir.join("run.out"), dir.join("run.err"));
    let mut command = bins.crimg_command(["run", "-"]);
    command
        .stdin(match feed {
            Feed::Pipe => Stdio::piped(),
            Feed::File => Stdio::from(File::open(&input_path).unwrap()),
        })
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    only_stdio(&mut command);
    let mut child = command.spawn().unwrap();
    let writer = child.stdin.take().map(|mut pipe| {
        let input = input.to_vec();
        // A reader that stops early (a refusal) breaks the pipe: fine.
        std::thread::spawn(move || drop(pipe.write_all(&input)))
    });
    let mut run = ChildGuard::new("crimg run -", child);
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    let status = run.wait_exit(CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    (
        status,
        fs::read_to_string(&out).unwrap(),
        fs::read_to_string(&err).unwrap(),
    )
}

#[test]
fn a_streamed_dump_through_a_pipe_restores() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    original.expect_line("TICK 3");
    let pid = original.pid();
    let ready = original.ready().cloned().unwrap();
    let view = view_of(pid);
    let err = scratch.path().join("crdump.err");
    // crdump's stdout is the pipe crimg run - reads.
    let (crdump, pipe) = crdump_stream(&bins, pid, &[], Stdio::piped(), &err);
    let mut restored = Workload::spawn_command_with_stdin(
        "counter restored from a stream",
        bins.crimg_command(["run", "-"]),
        Stdio::from(pipe.unwrap()),
    )
    .unwrap();
    let (status, stderr) = finish(crdump, &err);
    assert!(status.success(), "crdump -o - failed ({status}):\n{stderr}");
    assert!(
        stderr.contains("into (stdout)"),
        "crdump's report goes to stderr:\n{stderr}"
    );
    let killed = original.wait_exit(LINE_TIMEOUT).unwrap();
    assert!(!killed.success(), "the original was not killed: {killed}");
    let dumped = Dumped {
        dump: Dump {
            dir: PathBuf::from("-"),
            image: PathBuf::from("-"),
            manifest: PathBuf::from("-"),
            output: crimg_tests::cli::RunOutput {
                status,
                stdout: String::new(),
                stderr,
            },
        },
        ready: ready.clone(),
        before: original.stdout_lines().to_vec(),
        view,
        pid,
    };

    next_tick(&mut restored);
    let after = view_of(restored.pid());
    let pass = restored.expect_pass(CheckTrigger::Signal);
    for key in ["heap_sum", "anon_sum", "file_sum"] {
        assert_eq!(pass.get(key), ready.get(key), "{key}: {}", pass.line());
    }
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    assert_same_maps(&dumped.view.maps, &after.maps);
    // Nothing of the stream stays in the task: no memfd, no pipe end of
    // it; its stdin (a pipe at the dump, taken from the caller) is
    // /dev/null, as the stream was crimg's stdin.
    let fds = fds_of(restored.pid());
    assert!(
        !fds.iter().any(|(_, t)| t.contains("memfd:")),
        "the image's memfd is left in the task: {fds:?}"
    );
    assert!(
        fds.iter().any(|(n, t)| *n == 0 && t == "/dev/null"),
        "stdin is not /dev/null: {fds:?}"
    );
}

#[test]
fn a_cut_or_damaged_stream_is_refused_and_nothing_resumes() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    let stream = fs::read(stream_to_file(&bins, original.pid(), scratch.path())).unwrap();
    let len = stream.len();
    assert_eq!(len % 512, 0, "a tar stream is whole blocks");
    // Cut: nothing, inside the manifest's header, inside the image's
    // pages, right before and inside the end mark.
    for cut in [0, 100, len / 2, len - 1024, len - 512, len - 1] {
        for feed in [Feed::Pipe, Feed::File] {
            let (status, stdout, stderr) =
                run_stream_from(&bins, &stream[..cut], feed, scratch.path());
            assert!(
                !status.success(),
                "a stream cut at {cut} of {len} was run ({feed:?})"
            );
            assert_eq!(stdout, "", "cut at {cut} ({feed:?})");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(
                lines.len(),
                1,
                "cut at {cut} ({feed:?}): not one line:\n{stderr}"
            );
            assert!(
                lines[0].starts_with("crimg: ") && lines[0].contains("cut"),
                "cut at {cut} ({feed:?}): {stderr}"
            );
        }
    }
    // A flipped byte in the image's last page: the loader's checksums.
    let mut damaged = stream.clone();
    damaged[len - 1024 - 100] ^= 0x40;
    let (status, stdout, stderr) = run_stream_from(&bins, &damaged, Feed::Pipe, scratch.path());
    assert!(!status.success(), "a damaged stream was run");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    // Something after the end mark.
    let mut longer = stream.clone();
    longer.extend_from_slice(b"more");
    let (status, _, stderr) = run_stream_from(&bins, &longer, Feed::File, scratch.path());
    assert!(
        !status.success(),
        "a stream with bytes after its end was run"
    );
    assert!(stderr.contains("after the end-of-stream mark"), "{stderr}");
    // An image announced larger than the machine's memory: refused before
    // anything is allocated for it.
    let mut reader = dumper::stream::tar::Reader::new(&stream[..]);
    let dumper::stream::tar::Next::Member(manifest) = reader.next_entry().unwrap() else {
        panic!("no manifest first");
    };
    let manifest_bytes = reader.read_all(1 << 20).unwrap();
    let dumper::stream::tar::Next::Member(mut image) = reader.next_entry().unwrap() else {
        panic!("no image second");
    };
    image.size = 1 << 50;
    let mut huge = Vec::new();
    dumper::stream::tar::write_member(&mut huge, &manifest, &manifest_bytes).unwrap();
    huge.extend_from_slice(&dumper::stream::tar::member_header(&image));
    huge.resize(huge.len() + (1 << 20), 0);
    let (status, _, stderr) = run_stream_from(&bins, &huge, Feed::Pipe, scratch.path());
    assert!(!status.success(), "a stream of 1 PiB was taken");
    assert!(
        stderr.contains("more than this machine's available memory"),
        "{stderr}"
    );
    // The original counts on: the stream was taken with --leave-running.
    assert_running_untraced(original.pid());
    assert_counts_on(&mut original, 0);
}

#[test]
fn a_stream_unpacked_by_tar_is_the_dump_directory_and_restores() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    original.expect_line("TICK 3");
    let pid = original.pid();
    let ready = original.ready().cloned().unwrap();
    let dir = scratch.path().join("out");
    fs::create_dir(&dir).unwrap();
    let err = scratch.path().join("crdump.err");
    let (crdump, pipe) = crdump_stream(&bins, pid, &[], Stdio::piped(), &err);
    let mut tar = Command::new("tar");
    tar.arg("x")
        .arg("-C")
        .arg(&dir)
        .stdin(Stdio::from(pipe.unwrap()));
    only_stdio(&mut tar);
    let mut tar = ChildGuard::new("tar x", tar.spawn().unwrap());
    let (status, stderr) = finish(crdump, &err);
    assert!(status.success(), "crdump -o - failed ({status}):\n{stderr}");
    let tar_status = tar.wait_exit(CLI_TIMEOUT).unwrap();
    assert!(tar_status.success(), "tar x failed: {tar_status}");
    original.wait_exit(LINE_TIMEOUT).unwrap();

    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let image = format!("task-{pid}.crimg");
    assert_eq!(names, ["manifest.json".to_owned(), image.clone()]);
    // The modes a directory dump gives them.
    let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&image), 0o700);
    assert_eq!(mode("manifest.json"), 0o600);
    bins.verify(&dir.join(&image)).unwrap();
    let mut restored = bins
        .restore(
            "counter restored from an unpacked stream",
            &dir.join(&image),
        )
        .unwrap();
    next_tick(&mut restored);
    let pass = restored.expect_pass(CheckTrigger::Signal);
    for key in ["heap_sum", "anon_sum", "file_sum"] {
        assert_eq!(pass.get(key), ready.get(key), "{key}: {}", pass.line());
    }
}

#[test]
fn a_reader_that_goes_away_leaves_the_process_running() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    let pid = original.pid();
    let err = scratch.path().join("crdump.err");
    let (crdump, pipe) = crdump_stream(&bins, pid, &[], Stdio::piped(), &err);
    let mut pipe = pipe.unwrap();
    // Some of the stream (the pipe fills up behind it), then the reader
    // goes away.
    let mut start = [0u8; 4096];
    pipe.read_exact(&mut start).unwrap();
    assert_eq!(&start[..13], b"manifest.json");
    drop(pipe);
    let (status, stderr) = finish(crdump, &err);
    assert!(!status.success(), "crdump succeeded without a reader");
    assert!(stderr.contains("Broken pipe"), "{stderr}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            crimg_tests::tree::tracer_of(pid) == Some(0)
        }),
        "pid {pid} stays traced"
    );
    assert_running_untraced(pid);
    let tick = next_tick(&mut original);
    assert_counts_on(&mut original, tick);
    original.expect_pass(CheckTrigger::Signal);
}

#[test]
fn a_tree_stream_is_refused_naming_crrestore_tree() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut command = Command::new("sh");
    command
        .args(["-c", "sleep 1000 & sleep 1000 & wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut command);
    let sh = ChildGuard::new("sh", command.spawn().unwrap());
    let root = sh.pid();
    assert!(
        wait_until(Duration::from_secs(10), || {
            crimg_tests::tree::children_of(root).len() == 2
        }),
        "the sleeps did not start"
    );
    let _tree = crimg_tests::tree::TreeGuard::hold_tree(root);
    let stream = fs::read(stream_to_file(&bins, root, scratch.path())).unwrap();
    let (status, stdout, stderr) = run_stream_from(&bins, &stream, Feed::Pipe, scratch.path());
    assert!(!status.success(), "a tree stream was run");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tree of 3 processes") && stderr.contains("crrestore-tree"),
        "{stderr}"
    );
    // The same stream through tar is the directory crrestore-tree takes.
    let dir = scratch.path().join("tree");
    fs::create_dir(&dir).unwrap();
    let status = Command::new("tar")
        .arg("x")
        .arg("-C")
        .arg(&dir)
        .arg("-f")
        .arg(scratch.path().join("stream.tar"))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let processes = value["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 3, "{manifest}");
    for p in processes {
        let image = p["image"].as_str().unwrap();
        bins.verify(&dir.join(image)).unwrap();
    }
    // crrestore-tree takes the directory, not the stream itself.
    let mut command = Command::new(crimg_tests::tree::crrestore_tree_binary().unwrap());
    command.arg("-");
    let out = crimg_tests::cli::run(command, CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("tar x -C DIR"), "{}", out.stderr);
}

#[test]
fn a_terminal_is_refused_as_a_stream_on_either_side() {
    crimg_tests::skip_unless_root!();
    if !crimg_tests::tmux::have_tmux() {
        // tools/test.sh installs tmux when it runs as root.
        crimg_tests::privilege::report_skip("no tmux");
        return;
    }
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    let tmux =
        crimg_tests::tmux::Tmux::start(scratch.path(), 200, 50, "bash", ["--norc", "--noprofile"])
            .unwrap_or_else(|e| panic!("{e}"));
    let wait_for = |what: &str, pred: &dyn Fn(&str) -> bool| {
        tmux.wait_line(what, pred).unwrap_or_else(|e| panic!("{e}"))
    };
    tmux.type_line(&format!(
        "{} --pid {} -o -; echo crdump-rc=$?",
        bins.crdump.display(),
        original.pid()
    ))
    .unwrap();
    wait_for("crdump's refusal", &|l| {
        l.starts_with("crdump: -o -: stdout is a terminal")
    });
    wait_for("crdump's exit status", &|l| l == "crdump-rc=1");
    assert_running_untraced(original.pid());
    let tick = next_tick(&mut original);
    assert_counts_on(&mut original, tick);

    tmux.type_line(&format!("{} run -; echo run-rc=$?", bins.crimg.display()))
        .unwrap();
    wait_for("crimg run's refusal", &|l| {
        l.starts_with("crimg: run -: stdin is a terminal")
    });
    wait_for("crimg run's exit status", &|l| l == "run-rc=1");
}

#[test]
fn a_snapshot_stream_restores_and_the_original_runs_on() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut original = counter(scratch.path());
    original.expect_line("TICK 3");
    let pid = original.pid();
    let ready = original.ready().cloned().unwrap();
    let path = scratch.path().join("snapshot.tar");
    let err = scratch.path().join("crdump.err");
    let (crdump, _) = crdump_stream(
        &bins,
        pid,
        &["--leave-running", "--snapshot"],
        Stdio::from(File::create(&path).unwrap()),
        &err,
    );
    let (status, stderr) = finish(crdump, &err);
    assert!(
        status.success(),
        "crdump -o - --snapshot failed ({status}):\n{stderr}"
    );
    assert!(
        !stderr.contains("no copy-on-write snapshot"),
        "not from a snapshot:\n{stderr}"
    );
    assert_running_untraced(pid);
    let tick = next_tick(&mut original);
    assert_counts_on(&mut original, tick);
    let mut restored = Workload::spawn_command_with_stdin(
        "counter restored from a snapshot stream",
        bins.crimg_command(["run", "-"]),
        Stdio::from(File::open(&path).unwrap()),
    )
    .unwrap();
    next_tick(&mut restored);
    let pass = restored.expect_pass(CheckTrigger::Signal);
    for key in ["heap_sum", "anon_sum", "file_sum"] {
        assert_eq!(pass.get(key), ready.get(key), "{key}: {}", pass.line());
    }
    original.expect_pass(CheckTrigger::Signal);
}
