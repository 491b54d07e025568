//! A JVM round trip: a Java program (many threads, a large reserved heap,
//! the JVM's own signal handlers) dumped, killed and resumed by the loader,
//! checking its own heap and tick stream afterwards.

use std::fs;
use std::time::Duration;

use crimg_tests::java::{assert_loop_resumed, start_java_loop, start_java_loop_with, JavaLoop};
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TickStream};

fn task_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// JVMs of these tests run one at a time: a JVM that starts deletes the
/// perf-data files (`/tmp/hsperfdata_USER/PID`) of the pids it finds not
/// running, and a restored JVM's file is named by its old, dead pid, so a
/// JVM starting in a parallel test could delete the one a test checks.
fn one_jvm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static JVMS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    JVMS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn java_loop_resumes_with_every_thread() {
    let _one_jvm = one_jvm_at_a_time();
    skip_unless_root!();
    let Some(JavaLoop {
        mut jvm,
        classes: _classes,
    }) = start_java_loop(20)
    else {
        return;
    };
    let ready = jvm.ready().expect("READY").clone();
    jvm.expect_line("TICK 5");
    let threads = task_count(jvm.pid());
    assert!(threads > 5, "a JVM has many threads, found {threads}");

    let bins = binaries();
    let scratch = scratch_dir();
    let dump = bins
        .dump(jvm.pid(), scratch.path(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let before = TickStream::from_lines(jvm.stdout_lines()).unwrap();

    let mut restored = bins
        .restore("restored loop.java", &dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    assert_eq!(
        task_count(restored.pid()),
        threads,
        "threads after the restore"
    );
    assert_loop_resumed(&ready, &before, &mut restored);
}

/// The bytes of the file at `path` that hold data (`SEEK_DATA` and
/// `SEEK_HOLE` over it).
fn data_bytes(path: &str) -> u64 {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    let fd = file.as_raw_fd();
    let (mut at, mut total) = (0i64, 0u64);
    loop {
        // SAFETY: lseek on an fd `file` owns; no memory is passed.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            return total;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        total += (hole - data).unsigned_abs();
        at = hole;
    }
}

/// ZGC maps its heap (a memfd) three times: the restored JVM maps all
/// views from one restored memfd, so it counts on with its heap intact, and
/// the image holds the heap once (about the memory the JVM uses, not three
/// times its heap).
#[test]
fn zgc_heap_mapped_three_times_is_stored_once() {
    let _one_jvm = one_jvm_at_a_time();
    skip_unless_root!();
    let Some(JavaLoop {
        mut jvm,
        classes: _classes,
    }) = start_java_loop_with(20, &["-XX:+UseZGC"])
    else {
        return;
    };
    let ready = jvm.ready().expect("READY").clone();
    jvm.expect_line("TICK 5");
    let pid = jvm.pid();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let views: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.contains("/memfd:java_heap"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    assert!(
        views.len() >= 3,
        "ZGC maps its heap in three views: {} areas",
        views.len()
    );
    // The heap's memory once: the bytes of its memfd that hold data
    // (SEEK_DATA; ZGC commits with fallocate, whose pages stay holes
    // until written), and what it committed (st_blocks).
    let (start, end) = views[0];
    let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let committed = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&link).unwrap().blocks() * 512
    };
    let heap = data_bytes(&link);

    let bins = binaries();
    let scratch = scratch_dir();
    let dump = bins
        .dump(pid, scratch.path(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let before = TickStream::from_lines(jvm.stdout_lines()).unwrap();
    let image_bytes = fs::read(&dump.image).unwrap();
    let img = image_format::Image::parse(&image_bytes).unwrap();
    let in_views: u64 = views.iter().map(|&(s, e)| img.stored_in(s, e)).sum::<u64>() * 4096;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "ZGC JVM: heap memfd holds {:.1} MiB of data ({:.1} MiB committed), mapped in {} areas; the image stores {:.1} MiB for them, {:.1} MiB in all",
        mib(heap),
        mib(committed),
        views.len(),
        mib(in_views),
        mib(image_bytes.len() as u64)
    );
    // Stored once: about the heap's data (measured just before the dump;
    // the running JVM may touch a few pages more before it is frozen),
    // where the three views stored each on their own would be three times
    // as much.
    assert!(
        in_views * 2 > heap && in_views < heap + heap / 2,
        "the heap's {heap} bytes are stored as {in_views} bytes in the image"
    );

    let mut restored = bins
        .restore("restored ZGC loop.java", &dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    assert_loop_resumed(&ready, &before, &mut restored);
}

/// The path of the JVM's perf-data file (`/tmp/hsperfdata_USER/PID`), from
/// its maps.
fn perf_data_file(pid: i32) -> std::path::PathBuf {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let path = maps
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(5)
                .filter(|p| p.contains("/hsperfdata_"))
        })
        .unwrap_or_else(|| panic!("no hsperfdata mapping in\n{maps}"));
    path.into()
}

/// Dump a ticking JVM; returns the image, the perf-data file, the READY
/// facts and the ticks before.
fn dumped_jvm(
    scratch: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf, TickStream, i64)> {
    let JavaLoop {
        mut jvm,
        classes: _classes,
    } = start_java_loop(20)?;
    let ready = jvm.ready().expect("READY").clone();
    jvm.expect_line("TICK 3");
    let perf = perf_data_file(jvm.pid());
    let dump = binaries()
        .dump(jvm.pid(), scratch, false)
        .unwrap_or_else(|e| panic!("{e}"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let before = TickStream::from_lines(jvm.stdout_lines()).unwrap();
    let sum = i64::try_from(ready.number("sum").unwrap()).unwrap_or(0);
    Some((dump.image, perf, before, sum))
}

/// Any JVM of the same user deletes the perf-data files of JVMs that are
/// not running: the image keeps the file's content, and the restore makes
/// it again (same path, its recorded mode, the task's owner) when it is
/// gone, said in a warning.
#[test]
fn a_jvm_whose_perf_data_file_was_deleted_restores() {
    let _one_jvm = one_jvm_at_a_time();
    skip_unless_root!();
    let scratch = scratch_dir();
    let Some((image, perf, before, _)) = dumped_jvm(scratch.path()) else {
        return;
    };
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(&perf).unwrap().permissions().mode() & 0o777
    };
    // What another JVM's start does to the files of JVMs it finds dead.
    fs::remove_file(&perf).unwrap();
    let mut restored = binaries()
        .restore("restored loop.java", &image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    let pass = restored
        .check(CheckTrigger::Stdin, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    assert_eq!(pass.kind(), "PASS");
    let after = TickStream::from_lines(restored.stdout_lines()).unwrap();
    before
        .check_resumed_by(&after)
        .unwrap_or_else(|e| panic!("{e}\n{}", restored.stderr_report()));
    // The file made again, as the restored JVM maps it (another JVM
    // starting meanwhile may already have deleted it again: the restored
    // one runs under a new pid).
    let area = fs::read_to_string(format!("/proc/{}/maps", restored.pid()))
        .unwrap()
        .lines()
        .find(|l| l.contains(perf.to_str().unwrap()))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .expect("the restored JVM maps its perf-data file");
    let made = fs::metadata(format!("/proc/{}/map_files/{area}", restored.pid()))
        .expect("the perf-data file was made again");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert!(made.is_file());
        assert_eq!(made.permissions().mode() & 0o777, mode);
        assert_eq!(made.uid(), 0, "made as the restored task (root)");
    }
    let stderr = restored.stderr_report();
    assert!(
        stderr.contains("was missing; made again from the image"),
        "{stderr}"
    );
    restored.send_line("quit").unwrap();
    restored.expect_line("BYE");
    restored
        .wait_exit(LINE_TIMEOUT)
        .expect("the restored JVM exits");
    let _ = fs::remove_file(&perf);
}

/// A symbolic link planted where the perf-data file was is never followed
/// (nothing is made at its target) and nothing there is overwritten: the
/// restore is refused.
#[test]
fn a_link_planted_at_a_missing_perf_data_file_is_not_followed() {
    let _one_jvm = one_jvm_at_a_time();
    skip_unless_root!();
    let scratch = scratch_dir();
    let Some((image, perf, _, _)) = dumped_jvm(scratch.path()) else {
        return;
    };
    fs::remove_file(&perf).unwrap();
    let target = scratch.path().join("planted target");
    std::os::unix::fs::symlink(&target, &perf).unwrap();
    let output = binaries().loader_command(&image).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = fs::remove_file(&perf);
    assert!(
        !output.status.success(),
        "restored through a planted link: {stderr}"
    );
    assert!(!target.exists(), "the link's target was made: {stderr}");
    assert!(
        stderr.contains(&perf.display().to_string()),
        "the refusal names the file: {stderr}"
    );
}
